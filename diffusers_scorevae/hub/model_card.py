"""Model cards: the README a pushed ScoreVAE pipeline or encoder gets (metadata, usage, the prior it was trained
against, the decode settings saved with it, training settings, evaluation), and the comparison of an encoder's
recorded prior with another prior."""

from __future__ import annotations

import argparse
import functools
import json
import os
import types
import warnings

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

PAPER_URL = "https://arxiv.org/abs/2304.12141"
CARD_TAGS = ["diffusers", "scorevae", "vae", "arxiv:2304.12141"]


def is_hub_repo_id(name) -> bool:
    """Whether `name` looks like a Hub model id (`"org/name"`) rather than a local path."""
    if not isinstance(name, str) or name.count("/") != 1 or name.startswith((".", "/", "~")) or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def create_model_card(
    model,
    repo_id: str,
    metrics: dict | None = None,
    training: dict | None = None,
    datasets: list[str] | None = None,
    license: str | None = "apache-2.0",
    base_model: str | None = None,
) -> ModelCard:
    r"""
    The model card of a ScoreVAE pipeline or encoder pushed to `repo_id`: YAML metadata (`library_name: diffusers`,
    tags, `base_model` = the prior, `datasets`, `license`), what the model is, a usage snippet that loads it, the prior
    it was trained against, the training settings and the evaluation numbers.

    Args:
        model ([`ScoreVAEPipeline`], [`ScoreVAEEncoder`], `str` or `os.PathLike`):
            What is pushed: a pipeline, an encoder, or the folder a ScoreVAE pipeline was saved in (read from its
            configs; nothing is loaded).
        repo_id (`str`):
            The repo the card is for (named by the usage snippet).
        metrics (`dict`, *optional*):
            Evaluation numbers, e.g. `{"reconstruction L2": 3.1, "class kept": 0.93}`.
        training (`dict`, *optional*):
            Training settings, e.g. `{"beta": 0.01, "loss_weighting": "simple", "max_train_steps": 20000}`.
        datasets (`List[str]`, *optional*):
            Hub dataset ids of the training data.
        license (`str`, *optional*, defaults to `"apache-2.0"`):
            The weights' license.
        base_model (`str`, *optional*):
            The prior's Hub id; defaults to the `name_or_path` the encoder's config records when it is a Hub id.

    Returns:
        [`huggingface_hub.ModelCard`]: save it with `.save(path)`; `str(card)` is the README text.
    """
    # a pipeline's card lists how its prior differs from the one its encoder was trained against
    vae_config = None  # a latent-diffusion prior's autoencoder: the pipeline's images are its pixels
    pipeline_config = {}  # model_index.json: the pipeline-level decode settings (`num_inference_steps`)
    if isinstance(model, (str, os.PathLike)):
        encoder_config, unet_config, scheduler_config = _saved_pipeline_configs(model)
        prior_notes = _describe_prior_compatibility(encoder_config.get("prior"), unet_config, scheduler_config)
        vae_path = os.path.join(model, "vae", "config.json")
        if os.path.isfile(vae_path):
            with open(vae_path, encoding="utf-8") as f:
                vae_config = json.load(f)
        with open(os.path.join(model, "model_index.json"), encoding="utf-8") as f:
            pipeline_config = json.load(f)
    elif hasattr(model, "encoder"):
        encoder_config = model.encoder.config
        prior_notes = describe_prior_compatibility(model.encoder, model.unet, model.scheduler)
        vae_config = model.vae.config if getattr(model, "vae", None) is not None else None
        pipeline_config = model.config
    else:
        encoder_config, prior_notes = model.config, None
    is_pipeline = prior_notes is not None
    prior = dict(encoder_config.get("prior") or {})
    if base_model is None and is_hub_repo_id(prior.get("name_or_path")):
        base_model = prior["name_or_path"]
    training = dict(training or {})
    card_data = ModelCardData(
        license=license,
        library_name="diffusers",
        tags=list(CARD_TAGS),
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
    )

    size, channels, latent_dim = (encoder_config[key] for key in ("sample_size", "in_channels", "latent_dim"))
    through = ""
    if vae_config is not None and isinstance(size, int):  # images at the autoencoder's resolution
        size, channels = size * 2 ** (len(vae_config["block_out_channels"]) - 1), vae_config["in_channels"]
        through = f" (through the frozen autoencoder `vae/`, a {vae_config.get('_class_name', 'VQModel')})"
    size = size if isinstance(size, int) else "x".join(map(str, size))
    prior_text = f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model else "an unconditional prior"
    if is_pipeline:
        title = f"ScoreVAE pipeline: {repo_id}"
        what = (
            f"A [ScoreVAE]({PAPER_URL}) (Batzolis et al., 2023): a variational autoencoder whose decoder is the "
            f"frozen, pretrained, unconditional diffusion model {prior_text}. The encoder `encoder/` maps a "
            f"{channels}-channel {size}x{size} image{through} to a {latent_dim}-dimensional latent code; "
            "decoding samples the prior (`unet/`, `scheduler/`) with the encoder's score added at every step "
            "(Bayes' rule for scores), so reconstructions are sharp samples of the prior that keep the code's content."
        )
        usage = f"""```python
import torch
from diffusers_scorevae import ScoreVAEPipeline

pipe = ScoreVAEPipeline.from_pretrained("{repo_id}")
images = torch.rand(4, {channels}, {size}, {size})  # (batch, channels, height, width) in [0, 1]
codes = pipe.encode(images)  # (4, {latent_dim})
reconstructions = pipe(latent_codes=codes, generator=torch.manual_seed(0)).images  # the saved decode settings
samples = pipe(batch_size=4, generator=torch.manual_seed(0)).images  # z ~ N(0, I)
```"""
        plain = f"""```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)  # the same calls as above
```"""
        ships = "`pipeline_scorevae.py` and `encoder/modeling_scorevae_encoder.py`"
    else:
        title = f"ScoreVAE encoder: {repo_id}"
        what = (
            f"The encoder of a [ScoreVAE]({PAPER_URL}) (Batzolis et al., 2023), trained against {prior_text}: a "
            f"Gaussian q(z | x_t, λ) over {latent_dim}-dimensional latent codes of "
            f"{channels}-channel {size}x{size} images, conditioned on the noise level as log-SNR λ, so it "
            "works beside any scheduler of a prior over the same data. Wrap it around the prior with "
            "`ScoreVAEPipeline` to encode and decode."
        )
        prior_id = base_model or "PRIOR_REPO_OR_FOLDER"
        usage = f"""```python
import torch
from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

encoder = ScoreVAEEncoder.from_pretrained("{repo_id}")
pipe = ScoreVAEPipeline.from_pretrained("{prior_id}", encoder=encoder)  # the prior: unet + scheduler
images = torch.rand(4, {channels}, {size}, {size})  # (batch, channels, height, width) in [0, 1]
codes = pipe.encode(images)  # (4, {latent_dim})
reconstructions = pipe(latent_codes=codes, generator=torch.manual_seed(0)).images  # the encoder's decode settings
```"""
        plain = f"""```python
from diffusers import AutoModel

encoder = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
```"""
        ships = "`modeling_scorevae_encoder.py`"

    lines = [
        f"# {title}",
        "",
        what,
        "",
        "## Usage",
        "",
        "With the `diffusers_scorevae` package installed:",
        "",
        usage,
        "",
        f"With diffusers alone: the repo ships its code ({ships}, generated from the package's own source; "
        "it imports only torch, numpy, PIL and diffusers), which diffusers runs once you trust it:",
        "",
        plain,
        "",
        "Offline, diffusers cannot load remote code by repo id (it asks the Hub for the commit): pass the downloaded "
        f'folder instead, `snapshot_download("{repo_id}", local_files_only=True)` (from `huggingface_hub`). '
        "Weights are safetensors.",
        "",
    ]
    if prior:
        lines += ["## The prior it was trained against", "", "| | |", "|---|---|"]
        lines += [f"| {key} | {_format(value)} |" for key, value in sorted(prior.items())]
        lines += ["", _PRIOR_NOTE + "".join(f"\n- {note}" for note in prior_notes or ()), ""]
    lines += decode_settings_section(encoder_config, pipeline_config)
    settings = {"latent size": latent_dim, "clean-image log-SNR": encoder_config["clean_log_snr"]}
    for key, label in _TRAINING_LABELS.items():
        if training.get(key) is not None:
            settings[label] = training.pop(key)
    settings.update({key: value for key, value in training.items() if value is not None})
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_format(value)} |" for key, value in settings.items()]
    lines += [""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_format(value)} |" for key, value in metrics.items()]
        lines += [""]
    lines += [
        "## Citation",
        "",
        "```bibtex",
        "@article{batzolis2023scorevae,",
        "  title={Variational Diffusion Auto-encoder: Latent Space Extraction from Pre-trained Diffusion Models},",
        '  author={Batzolis, Georgios and Stanczuk, Jan and Sch{\\"o}nlieb, Carola-Bibiane},',
        "  journal={arXiv preprint arXiv:2304.12141},",
        "  year={2023}",
        "}",
        "```",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


_TRAINING_LABELS = {
    "beta": "β (KL weight)",
    "loss_weighting": "loss weighting",
    "timestep_sampling": "timestep sampling",
    "max_train_steps": "training steps (planned)",
    "steps": "training steps (done)",
    "final_loss": "final loss (last logged)",
    "learning_rate": "learning rate",
    "train_batch_size": "batch size per process",
    "use_ema": "EMA weights",
}
# The decode settings a model is saved with, as the card labels them: the encoder's config carries what the encoder
# was tuned for (so they survive a prior swap and an encoder-only push), model_index.json the pipeline-level ones.
ENCODER_DECODE_SETTINGS = {
    "guidance_scale": "guidance scale γ",
    "guidance_log_snr_range": "encoder term at log-SNR in",
    "inversion_log_snr_range": "inversion guided at log-SNR in",
    "realism": "realism (1: a posterior sample from noise; 0: the mean estimate)",
}
PIPELINE_DECODE_SETTINGS = {"num_inference_steps": "inference steps"}
_NO_DECODE_SETTINGS = (
    "This model saves no decode settings: a decode uses the pipeline's defaults (50 steps, guidance scale 1, the "
    "encoder term at every step) unless you pass them."
)
_DECODE_NOTE = (
    "Saved with the model: `pipe(...)` with these arguments left unset decodes with them, an explicit argument wins, "
    "and `pipe.decode_defaults` returns them resolved. Guided decodes do not clip x̂_0 unless `clip_sample=True` is "
    "passed."
)

_PRIOR_NOTE = (
    "The encoder is conditioned on log-SNR, so any scheduler, noise schedule or prediction type of a prior over the "
    "same data works with it; the prior's image size and channels must match."
)


def decode_settings_section(encoder_config, pipeline_config=None) -> list[str]:
    """The card's "Decoding" section: the decode settings saved in an encoder's config and (for a pipeline) its
    `model_index.json`, as markdown lines; keys the configs lack are left out, and a model with none says so."""
    sources = ((pipeline_config or {}, PIPELINE_DECODE_SETTINGS), (encoder_config, ENCODER_DECODE_SETTINGS))
    rows = [
        f"| {label} | {_format_range(config[key]) if key.endswith('_range') else _format(config[key])} |"
        for config, labels in sources
        for key, label in labels.items()
        if config.get(key) is not None
    ]
    if not rows:
        return ["## Decoding", "", _NO_DECODE_SETTINGS, ""]
    return ["## Decoding", "", _DECODE_NOTE, "", "| setting | value |", "|---|---|", *rows, ""]


def _format_range(value) -> str:
    """A log-SNR range `[low, high]` (JSON `null` or ±inf for an unbounded end) as `[low, high]` with ∞."""
    low, high = (None if v is None or abs(float(v)) == float("inf") else float(v) for v in value)
    return f"[{'−∞' if low is None else f'{low:g}'}, {'∞' if high is None else f'{high:g}'}]"


def _saved_pipeline_configs(folder) -> tuple[dict, dict, dict]:
    """The configs of the encoder, the UNet and the scheduler of a ScoreVAE pipeline saved in `folder`."""
    configs = []
    for path in ("encoder/config.json", "unet/config.json", "scheduler/scheduler_config.json"):
        with open(os.path.join(folder, path), encoding="utf-8") as f:
            configs.append(json.load(f))
    return tuple(configs)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "–" if value is None else str(value).replace("|", "\\|")


# ---------------------------------------------------------------------------------------------------------------------
# the prior record and the training script


def describe_prior_compatibility(encoder, unet, scheduler=None) -> list[str]:
    """
    Compare the prior an encoder was trained against (its config's `prior` record) with a UNet and scheduler.

    Different schedules, schedulers, numbers of training timesteps or prediction types are fine (the encoder is
    conditioned on log-SNR); a different image size or channel count is not (`ScoreVAEPipeline` refuses it). What the
    record cannot show is whether the data are the same: a prior over other images decodes codes into its own images.

    Args:
        encoder ([`ScoreVAEEncoder`]): the encoder.
        unet ([`UNet2DModel`]): the prior's UNet.
        scheduler ([`SchedulerMixin`], *optional*): the scheduler decoding will use.

    Returns:
        `List[str]`: one line per difference, starting with `"incompatible:"` for what cannot work; empty when the
        record matches (or the encoder records no prior, which is the first line then).
    """
    scheduler_config = None if scheduler is None else {**scheduler.config, "_class_name": type(scheduler).__name__}
    return _describe_prior_compatibility(encoder.config.get("prior"), unet.config, scheduler_config)


def _describe_prior_compatibility(prior: dict | None, unet_config, scheduler_config: dict | None) -> list[str]:
    if not prior:
        return ["the encoder's config records no prior (`prior` is unset); its compatibility is unknown."]
    notes = []
    current = {"sample_size": unet_config["sample_size"], "in_channels": unet_config["in_channels"]}
    if scheduler_config is not None:
        current.update(
            scheduler=scheduler_config["_class_name"],
            beta_schedule=scheduler_config.get("beta_schedule"),
            num_train_timesteps=scheduler_config.get("num_train_timesteps"),
            prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        )
    for key, value in current.items():
        trained = prior.get(key)
        if trained is None or _normalise(trained) == _normalise(value):
            continue
        if key in ("sample_size", "in_channels"):
            notes.append(f"incompatible: {key} is {value!r}, the encoder was trained at {trained!r}.")
        else:
            notes.append(f"{key} is {value!r}, trained with {trained!r}: fine (log-SNR conditioning).")
    return notes


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def _accepts_namespace(position: int, to_kwargs, later: tuple[str, ...] = ()):
    """Keep a function's old argparse call working for one release: an `argparse.Namespace` at `position` is replaced
    by the keyword arguments `to_kwargs(namespace)` returns, with a `FutureWarning`. `later` names the old call's
    positional parameters after the namespace, which the new signature takes by keyword."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if len(args) > position and isinstance(args[position], (argparse.Namespace, types.SimpleNamespace)):
                warnings.warn(
                    f"Passing the training script's argparse namespace to `{function.__name__}` is deprecated and "
                    "will be removed in the next release; pass its keyword arguments instead.",
                    FutureWarning,
                    stacklevel=2,
                )
                namespace, rest = args[position], args[position + 1 :]
                kwargs = {**to_kwargs(namespace), **dict(zip(later, rest)), **kwargs}
                args = args[:position]
            return function(*args, **kwargs)

        return wrapper

    return decorate


def _read_keys(*keys):
    """A `to_kwargs` for [`_accepts_namespace`]: the attributes `keys` of a namespace (missing ones as `None`)."""
    return lambda namespace: {key: getattr(namespace, key, None) for key in keys}


TRAINING_SUMMARY_KEYS = (
    "beta",
    "loss_weighting",
    "timestep_sampling",
    "max_train_steps",
    "learning_rate",
    "train_batch_size",
    "use_ema",
)


@_accepts_namespace(0, _read_keys(*TRAINING_SUMMARY_KEYS), later=("output_dir",))
def training_summary(
    output_dir: str | os.PathLike | None = None,
    *,
    beta: float | None = None,
    loss_weighting: str | None = None,
    timestep_sampling: str | None = None,
    max_train_steps: int | None = None,
    learning_rate: float | None = None,
    train_batch_size: int | None = None,
    use_ema: bool | None = None,
) -> dict:
    r"""
    The training settings a model card shows (the `training` argument of [`create_model_card`]).

    Args:
        output_dir (`str` or `os.PathLike`, *optional*):
            A training run's folder: the last logged step and loss of its `train_log.jsonl`, when it exists, are added
            as `steps` and `final_loss`.
        beta, loss_weighting, timestep_sampling, max_train_steps, learning_rate, train_batch_size, use_ema:
            The run's settings; `None` ones are left off the card.

    Returns:
        `dict`: the settings by name, in the card's order.
    """
    summary = dict(
        beta=beta,
        loss_weighting=loss_weighting,
        timestep_sampling=timestep_sampling,
        max_train_steps=max_train_steps,
        learning_rate=learning_rate,
        train_batch_size=train_batch_size,
        use_ema=use_ema,
    )
    log_path = os.path.join(output_dir, "train_log.jsonl") if output_dir else None
    if log_path and os.path.isfile(log_path):
        with open(log_path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        if records:
            summary["steps"] = records[-1].get("step")
            summary["final_loss"] = records[-1].get("loss")
    return summary


@_accepts_namespace(0, _read_keys("dataset_name", "fashion_mnist_dir"))
def training_datasets(dataset_name: str | None = None, fashion_mnist_dir: str | None = None) -> list[str] | None:
    """Hub ids of a training run's data: `dataset_name`, or Fashion-MNIST's when it was read from `fashion_mnist_dir`
    (a local copy); `None` when neither is given."""
    if dataset_name:
        return [dataset_name]
    if fashion_mnist_dir:
        return ["zalando-datasets/fashion_mnist"]
    return None
