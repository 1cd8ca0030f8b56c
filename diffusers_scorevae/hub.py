"""The Hugging Face Hub: loading ScoreVAE pipelines and encoders by repo id, and pushing them with a model card.

diffusers resolves pipelines from repo ids in ways that break a third-party package; each trap and what this module
does about it:

1. `DiffusionPipeline.download` refuses any component whose `model_index.json` entry names a module outside diffusers
   and transformers (`"encoder": ["diffusers_scorevae.models.encoder", "ScoreVAEEncoder"]`) unless the repo ships that
   module as a remote-code file. It only checks when it can list the repo's files: always online, and offline once
   `snapshot_download` has cached the listing (`trees/<commit>.json`), so a test without that listing passes while
   every real user fails. [`ScoreVAEPipelineHubMixin.download`] replaces it: it picks the files itself and fetches them
   with `huggingface_hub.snapshot_download`, online and offline alike.
2. `DiffusionPipeline.from_pretrained` (the base class itself) looks `_class_name` up as `getattr(diffusers, name)`, so
   `DiffusionPipeline.from_pretrained("org/scorevae")` cannot find `ScoreVAEPipeline` without mutating diffusers'
   namespace; we do not. Load with `ScoreVAEPipeline.from_pretrained`, which skips the lookup.
3. A component's library is never imported by diffusers (importing runs code); it must already be in `sys.modules`.
   Importing `diffusers_scorevae` imports `diffusers_scorevae.models.encoder`, so the class is found.
4. The loader finds a component's load method by looking up diffusers' base class names (`ModelMixin`, ...) as
   attributes of the component's module: `diffusers_scorevae.models.encoder` must keep `ModelMixin` importable.
5. A repo whose `_class_name` is another pipeline (`DDPMPipeline` of `google/ddpm-cifar10-32`) loads into
   `ScoreVAEPipeline` (the calling class wins); only folders named in its `model_index.json` are fetched, weights
   plus `config.json` for model folders, everything for the others (the scheduler), the root `*.json` for a flat
   (root-level) layout. A passed component (`encoder=`) is not fetched.
6. diffusers' default `use_safetensors=None` silently falls back to pickled `.bin` weights. ScoreVAE loads
   safetensors only unless `use_safetensors=False` is passed; a missing file is an error that says so.
7. `push_to_hub` / `save_pretrained(push_to_hub=True)` call `load_or_create_model_card`, which needs the network to
   read the remote card and writes a generic one. Ours write [`create_model_card`]'s card and upload safetensors only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from diffusers.utils import logging
from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

try:  # recent huggingface_hub: the file listing that an earlier `snapshot_download` cached
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
except ImportError:  # pragma: no cover - older huggingface_hub: list the cached snapshot instead
    get_cached_repo_tree = CachedRepoTreeNotFoundError = None

logger = logging.get_logger(__name__)

PAPER_URL = "https://arxiv.org/abs/2304.12141"
CARD_TAGS = ["diffusers", "scorevae", "vae", "arxiv:2304.12141"]
PICKLE_HINT = (
    "ScoreVAE loads only safetensors weights by default: `.bin` files are pickles, which can run code when loaded. If "
    "you trust this model's source, pass `use_safetensors=False` to load its `.bin` weights (or `use_safetensors=None`"
    " for safetensors where present and `.bin` elsewhere)."
)
# "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
# "diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model.fp16-00001-of-00002.bin", ...
_WEIGHTS_RE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>[\w-]+?))?(?:-\d{5}-of-\d{5})?"
    r"\.(?P<format>safetensors|bin)$"
)
# "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.fp16.json"
_INDEX_RE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)\.(?P<format>safetensors|bin)\.index(?:\.(?P<variant>[\w-]+))?"
    r"\.json$"
)
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


# ---------------------------------------------------------------------------------------------------------------------
# loading


def select_pipeline_files(
    files,
    model_index: dict,
    required_components=(),
    passed_components=(),
    variant: str | None = None,
    use_safetensors: bool | None = True,
    name: str = "the repository",
) -> list[str]:
    """
    The files of a pipeline repo (or folder) that loading it needs, from the list of all its files.

    Args:
        files (`Iterable[str]`):
            Every file of the repo, as `/`-separated paths relative to its root.
        model_index (`dict`):
            The repo's `model_index.json`.
        required_components (`Iterable[str]`, *optional*):
            Components the loading pipeline needs (its `__init__` arguments): each must be in `model_index` or passed.
        passed_components (`Iterable[str]`, *optional*):
            Components given to `from_pretrained` as objects: their files are not needed.
        variant (`str`, *optional*):
            Weights variant (`"fp16"`): `diffusion_pytorch_model.fp16.safetensors` where a component has one, the
            plain weights elsewhere.
        use_safetensors (`bool`, *optional*, defaults to `True`):
            `True`: safetensors only; `False`: `.bin` (pickle) only; `None`: safetensors where present, else `.bin`.
        name (`str`, *optional*):
            The repo id or folder, for error messages.

    Returns:
        `List[str]`: sorted paths: `model_index.json`, the chosen weights, and the configs.
    """
    files = set(files)
    components = {
        key: value
        for key, value in model_index.items()
        if not key.startswith("_") and isinstance(value, (list, tuple)) and value and value[0] is not None
    }
    missing = sorted(set(required_components) - set(components) - set(passed_components))
    if missing:
        raise ValueError(
            f"{name} has no {missing} (its model_index.json names {model_index.get('_class_name')} with "
            f"{sorted(components)}): pass them to `from_pretrained`, e.g. "
            f"`{missing[0]}={_EXAMPLE_COMPONENT.get(missing[0], '...')}`."
        )

    selected, found_variant = {"model_index.json"}, False
    for component in sorted(set(components) - set(passed_components)):
        folder = component if any(f.startswith(component + "/") for f in files) else ""  # "": flat, root layout
        in_folder = {f for f in files if os.path.dirname(f) == folder}
        matches = {
            f: _WEIGHTS_RE.match(os.path.basename(f)) or _INDEX_RE.match(os.path.basename(f)) for f in in_folder
        }
        weights = {f: match for f, match in matches.items() if match}
        if not weights:  # a scheduler (or any component without weights): all its files
            selected |= {f for f in files if f.startswith(component + "/")} if folder else _root_json(files)
            continue
        formats = {True: {"safetensors"}, False: {"bin"}}.get(use_safetensors)
        if formats is None:
            formats = {"safetensors"} if any(m["format"] == "safetensors" for m in weights.values()) else {"bin"}
        usable = {f: m for f, m in weights.items() if m["format"] in formats}
        if not usable:
            raise OSError(
                f"{name} has no {' or '.join(sorted(formats))} weights for `{component}` (found "
                f"{sorted(weights)}). {PICKLE_HINT if use_safetensors else ''}".rstrip()
            )
        chosen = [f for f, m in usable.items() if variant is not None and m["variant"] == variant]
        found_variant |= bool(chosen)
        chosen = chosen or [f for f, m in usable.items() if m["variant"] is None]
        if not chosen:
            variants = sorted({m["variant"] for m in usable.values()})
            raise ValueError(
                f"{name} has only variant weights {variants} for `{component}`; pass `variant` as one of {variants}."
            )
        selected |= set(chosen) | ({f"{component}/config.json"} & files if folder else _root_json(files))
    if variant is not None and not found_variant:
        raise ValueError(
            f"variant={variant!r}, but no component of {name} has `{variant}` weights (files like "
            f"`diffusion_pytorch_model.{variant}.safetensors`); leave `variant` unset to load the plain weights."
        )
    return sorted(selected)


_EXAMPLE_COMPONENT = {"encoder": 'ScoreVAEEncoder.from_pretrained("org/encoder")', "scheduler": "DDIMScheduler()"}


def _root_json(files) -> set[str]:
    return {f for f in files if "/" not in f and f.endswith(".json")}


def download_pipeline(
    repo_id: str,
    required_components=(),
    passed_components=(),
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = True,
) -> str:
    """
    Download what loading a pipeline from Hub repo `repo_id` needs, and return the local snapshot folder.

    The same code runs online and offline: `huggingface_hub` answers from its cache when it cannot reach the Hub (or
    with `HF_HUB_OFFLINE=1` / `local_files_only=True`), and the file list comes from the Hub, else from the listing
    cached by an earlier download, else from the cached snapshot itself. See [`select_pipeline_files`] for the
    arguments.

    Returns:
        `str`: the snapshot folder, pinned to the commit `revision` resolved to.
    """
    local_files_only = bool(local_files_only)
    download_kwargs = {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
    index_file = hf_hub_download(
        repo_id, "model_index.json", revision=revision, force_download=force_download, **download_kwargs
    )
    snapshot_folder = Path(index_file).parent
    # every later file comes from the commit this model_index.json came from
    commit = snapshot_folder.name if _COMMIT_RE.match(snapshot_folder.name) else revision
    with open(index_file, encoding="utf-8") as f:
        model_index = json.load(f)

    files = _list_repo_files(repo_id, commit, snapshot_folder, **download_kwargs)
    allow_patterns = select_pipeline_files(
        files,
        model_index,
        required_components=required_components,
        passed_components=passed_components,
        variant=variant,
        use_safetensors=use_safetensors,
        name=repo_id,
    )
    return snapshot_download(
        repo_id, revision=commit, allow_patterns=allow_patterns, force_download=force_download, **download_kwargs
    )


def _list_repo_files(repo_id, revision, snapshot_folder: Path, cache_dir, local_files_only, token) -> list[str]:
    """All files of `repo_id` at `revision`: from the Hub, else the cached listing, else the cached snapshot."""
    if not local_files_only:
        try:
            return HfApi(token=token).list_repo_files(repo_id, revision=revision)
        except Exception as e:  # offline mode, no connection, Hub down (transport errors vary across versions)
            logger.info(f"Could not list the files of {repo_id} on the Hub ({e}); using the local cache.")
    if get_cached_repo_tree is not None:
        try:
            return [f.path for f in get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)]
        except CachedRepoTreeNotFoundError as e:
            logger.info(f"No cached file listing for {repo_id} ({e}); using the cached snapshot.")
    return [p.relative_to(snapshot_folder).as_posix() for p in snapshot_folder.rglob("*") if p.is_file()]


def _local_files(folder: str) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------------------------------------------
# mixins: what ScoreVAEEncoder and ScoreVAEPipeline add to diffusers' loading and pushing


class ScoreVAEHubMixin:
    """
    Hub behaviour of [`ScoreVAEEncoder`] and [`ScoreVAEPipeline`] on top of diffusers' `from_pretrained` /
    `save_pretrained` / `push_to_hub`: safetensors-only loading by default, and pushes that upload safetensors weights
    with a ScoreVAE model card ([`create_model_card`]).
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""
        Load from a Hub repo id or a local folder, as diffusers' `from_pretrained` (see it for every argument), except:

        Args:
            use_safetensors (`bool`, *optional*, defaults to `True`):
                Load safetensors weights only; a model with only `.bin` (pickle) weights is an error. Pass `False` to
                load `.bin` weights from a source you trust, `None` for diffusers' fall-back behaviour.
        """
        kwargs.setdefault("use_safetensors", True)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError as error:
            if kwargs["use_safetensors"] and ".safetensors" in str(error) and PICKLE_HINT not in str(error):
                raise OSError(f"{error}\n{PICKLE_HINT}") from error
            raise

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        r"""
        Save to `save_directory` as diffusers does (see its `save_pretrained` for every argument). With
        `push_to_hub=True`, also write the ScoreVAE model card to `save_directory/README.md` and upload the folder to
        `repo_id` (`commit_message`, `private`, `token`, `create_pr`, and the card's `metrics`, `training`,
        `datasets`, `license` are read from `kwargs`); the weights must then be safetensors.
        """
        # named arguments, not *args: diffusers' pipeline saving inspects this signature for `variant` & co
        save_kwargs = {"safe_serialization": safe_serialization, "variant": variant, **kwargs}
        if max_shard_size is not None:
            save_kwargs["max_shard_size"] = max_shard_size
        if not push_to_hub:
            return super().save_pretrained(save_directory, **save_kwargs)
        _check_safe_serialization(safe_serialization)
        hub_keys = ("repo_id", "commit_message", "private", "token", "create_pr")
        hub_kwargs = {k: save_kwargs.pop(k) for k in hub_keys if k in save_kwargs}
        card_kwargs = {
            k: save_kwargs.pop(k) for k in ("metrics", "training", "datasets", "license") if k in save_kwargs
        }
        api = HfApi(token=hub_kwargs.get("token"))
        repo_id = hub_kwargs.get("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
        repo_id = api.create_repo(repo_id, private=hub_kwargs.get("private"), exist_ok=True).repo_id
        super().save_pretrained(save_directory, **save_kwargs)
        create_model_card(self, repo_id, **card_kwargs).save(os.path.join(save_directory, "README.md"))
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=save_directory,
            commit_message=hub_kwargs.get("commit_message") or f"Upload {type(self).__name__}",
            create_pr=hub_kwargs.get("create_pr", False),
        )

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
        metrics: dict | None = None,
        training: dict | None = None,
        datasets: list[str] | None = None,
        license: str | None = "apache-2.0",
    ):
        r"""
        Upload the safetensors weights, the configs and a ScoreVAE model card (`README.md`) to the Hub repo `repo_id`,
        creating it if needed.

        Args:
            repo_id (`str`):
                The repo to push to (`"name"` pushes to your namespace).
            commit_message (`str`, *optional*):
                Defaults to `"Upload <class name>"`.
            private (`bool`, *optional*):
                Whether a newly created repo is private.
            token (`str`, *optional*):
                Hub token; defaults to the stored one.
            create_pr (`bool`, *optional*, defaults to `False`):
                Open a pull request instead of committing to the main branch.
            safe_serialization (`bool`, *optional*, defaults to `True`):
                Must be `True`: ScoreVAE publishes safetensors only.
            variant (`str`, *optional*):
                Save the weights as `diffusion_pytorch_model.<variant>.safetensors`.
            subfolder (`str`, *optional*):
                Upload into this folder of the repo (then no model card is written, as in diffusers).
            metrics (`dict`, *optional*):
                Evaluation numbers for the card (e.g. `{"reconstruction L2": 3.1}`).
            training (`dict`, *optional*):
                Training settings for the card (`beta`, `loss_weighting`, `max_train_steps`, `final_loss`, ...).
            datasets (`List[str]`, *optional*):
                Hub ids of the training data, for the card's metadata.
            license (`str`, *optional*, defaults to `"apache-2.0"`):
                The weights' license; set it to the prior's when that is more restrictive.

        Returns:
            The `huggingface_hub` commit info of the upload.
        """
        _check_safe_serialization(safe_serialization)
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmpdir:
            self.save_pretrained(tmpdir, safe_serialization=True, variant=variant)
            if not subfolder:
                card = create_model_card(
                    self, repo_id, metrics=metrics, training=training, datasets=datasets, license=license
                )
                card.save(os.path.join(tmpdir, "README.md"))
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmpdir,
                path_in_repo=subfolder,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                create_pr=create_pr,
            )


class ScoreVAEPipelineHubMixin(ScoreVAEHubMixin):
    """
    [`ScoreVAEHubMixin`] plus pipeline loading by repo id: [`~ScoreVAEPipelineHubMixin.download`] replaces diffusers'
    (see this module's docstring for why), and a pipeline folder is checked for safetensors weights before loading.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""
        Load a pipeline from a Hub repo id or a local folder: a saved ScoreVAE pipeline, or any repo or folder with
        `unet` and `scheduler` (a `DDPMPipeline` such as `google/ddpm-cifar10-32`) plus `encoder=` a
        [`ScoreVAEEncoder`]. Takes diffusers' `from_pretrained` arguments (`revision`, `variant`, `torch_dtype`,
        `local_files_only`, `cache_dir`, `token`, components as objects, ...), except:

        Args:
            use_safetensors (`bool`, *optional*, defaults to `True`):
                Load safetensors weights only; a component with only `.bin` (pickle) weights is an error. Pass `False`
                to load `.bin` weights from a source you trust.

        Example:

        ```py
        >>> from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

        >>> pipe = ScoreVAEPipeline.from_pretrained("org/scorevae-cifar10")  # doctest: +SKIP
        >>> # an encoder beside a plain unconditional prior (any scheduler)
        >>> encoder = ScoreVAEEncoder.from_pretrained("org/scorevae-cifar10", subfolder="encoder")  # doctest: +SKIP
        >>> pipe = ScoreVAEPipeline.from_pretrained("google/ddpm-cifar10-32", encoder=encoder)  # doctest: +SKIP
        ```
        """
        if kwargs.get("custom_pipeline") is not None:
            raise ValueError(
                f"custom_pipeline={kwargs['custom_pipeline']!r} is not supported: {cls.__name__}.from_pretrained "
                "always loads a ScoreVAE pipeline."
            )
        kwargs.setdefault("use_safetensors", True)
        index_path = os.path.join(pretrained_model_name_or_path, "model_index.json")
        if os.path.isfile(
            index_path
        ):  # a local pipeline folder; a repo id goes through `download`, which checks the same
            with open(index_path, encoding="utf-8") as f:
                model_index = json.load(f)
            expected, _ = cls._get_signature_keys(cls)
            select_pipeline_files(
                _local_files(pretrained_model_name_or_path),
                model_index,
                required_components=expected,
                passed_components=[k for k in expected if k in kwargs],
                variant=kwargs.get("variant"),
                use_safetensors=kwargs["use_safetensors"],
                name=str(pretrained_model_name_or_path),
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        r"""
        Download (or find in the cache) what loading `pretrained_model_name` needs and return the snapshot folder:
        `model_index.json`, the configs, and the safetensors weights (of `variant` where present) of the components
        not passed as objects. Called by `from_pretrained` for repo ids; see [`download_pipeline`].
        """
        expected, _ = cls._get_signature_keys(cls)
        return download_pipeline(
            pretrained_model_name,
            required_components=expected,
            passed_components=[k for k in expected if k in kwargs],
            cache_dir=kwargs.get("cache_dir"),
            force_download=kwargs.get("force_download", False),
            local_files_only=kwargs.get("local_files_only"),
            token=kwargs.get("token"),
            revision=kwargs.get("revision"),
            variant=kwargs.get("variant"),
            use_safetensors=kwargs.get("use_safetensors", True),
        )


def _check_safe_serialization(safe_serialization: bool):
    if not safe_serialization:
        raise ValueError(
            "safe_serialization=False: ScoreVAE publishes safetensors weights only (pickled `.bin` files can run code "
            "when loaded); leave it at True."
        )


# ---------------------------------------------------------------------------------------------------------------------
# model cards


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
        model ([`ScoreVAEPipeline`] or [`ScoreVAEEncoder`]):
            What is pushed.
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
    encoder = getattr(model, "encoder", model)
    is_pipeline = encoder is not model
    prior = dict(encoder.config.get("prior") or {})
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

    config = encoder.config
    size = config.sample_size if isinstance(config.sample_size, int) else "x".join(map(str, config.sample_size))
    prior_text = f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model else "an unconditional prior"
    if is_pipeline:
        title = f"ScoreVAE pipeline: {repo_id}"
        what = (
            f"A [ScoreVAE]({PAPER_URL}) (Batzolis et al., 2023): a variational autoencoder whose decoder is the "
            f"frozen, pretrained, unconditional diffusion model {prior_text}. The encoder `encoder/` maps a "
            f"{config.in_channels}-channel {size}x{size} image to a {config.latent_dim}-dimensional latent code; "
            "decoding samples the prior (`unet/`, `scheduler/`) with the encoder's score added at every step "
            "(Bayes' rule for scores), so reconstructions are sharp samples of the prior that keep the code's content."
        )
        usage = f"""```python
import torch
from diffusers_scorevae import ScoreVAEPipeline

pipe = ScoreVAEPipeline.from_pretrained("{repo_id}")
images = torch.rand(4, {config.in_channels}, {size}, {size})  # (batch, channels, height, width) in [0, 1]
codes = pipe.encode(images)  # (4, {config.latent_dim})
reconstructions = pipe(latent_codes=codes, num_inference_steps=50, generator=torch.manual_seed(0)).images
samples = pipe(batch_size=4, generator=torch.manual_seed(0)).images  # z ~ N(0, I)
```"""
    else:
        title = f"ScoreVAE encoder: {repo_id}"
        what = (
            f"The encoder of a [ScoreVAE]({PAPER_URL}) (Batzolis et al., 2023), trained against {prior_text}: a "
            f"Gaussian q(z | x_t, λ) over {config.latent_dim}-dimensional latent codes of "
            f"{config.in_channels}-channel {size}x{size} images, conditioned on the noise level as log-SNR λ, so it "
            "works beside any scheduler of a prior over the same data. Wrap it around the prior with "
            "`ScoreVAEPipeline` to encode and decode."
        )
        prior_id = base_model or "PRIOR_REPO_OR_FOLDER"
        usage = f"""```python
import torch
from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

encoder = ScoreVAEEncoder.from_pretrained("{repo_id}")
pipe = ScoreVAEPipeline.from_pretrained("{prior_id}", encoder=encoder)  # the prior: unet + scheduler
images = torch.rand(4, {config.in_channels}, {size}, {size})  # (batch, channels, height, width) in [0, 1]
codes = pipe.encode(images)  # (4, {config.latent_dim})
reconstructions = pipe(latent_codes=codes, num_inference_steps=50, generator=torch.manual_seed(0)).images
```"""

    lines = [
        f"# {title}",
        "",
        what,
        "",
        "## Usage",
        "",
        "Install the `diffusers_scorevae` package, then:",
        "",
        usage,
        "",
    ]
    lines += [
        "Load it with `ScoreVAEPipeline` / `ScoreVAEEncoder`: `DiffusionPipeline.from_pretrained` only resolves "
        "pipeline classes that diffusers itself defines. Weights are safetensors.",
        "",
    ]
    if prior:
        lines += ["## The prior it was trained against", "", "| | |", "|---|---|"]
        lines += [f"| {key} | {_format(value)} |" for key, value in prior.items()]
        lines += ["", _prior_note(model) if is_pipeline else _PRIOR_NOTE, ""]
    settings = {"latent size": config.latent_dim, "clean-image log-SNR": config.clean_log_snr}
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
_PRIOR_NOTE = (
    "The encoder is conditioned on log-SNR, so any scheduler, noise schedule or prediction type of a prior over the "
    "same data works with it; the prior's image size and channels must match."
)


def _prior_note(pipe) -> str:
    notes = describe_prior_compatibility(pipe.encoder, pipe.unet, pipe.scheduler)
    return _PRIOR_NOTE + ("".join(f"\n- {note}" for note in notes) if notes else "")


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "–" if value is None else str(value).replace("|", "\\|")


# ---------------------------------------------------------------------------------------------------------------------
# compatibility and the training script


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
    prior = encoder.config.get("prior")
    notes = []
    if not prior:
        return ["the encoder's config records no prior (`prior` is unset); its compatibility is unknown."]
    current = {"sample_size": unet.config.sample_size, "in_channels": unet.config.in_channels}
    if scheduler is not None:
        current.update(
            scheduler=type(scheduler).__name__,
            beta_schedule=scheduler.config.get("beta_schedule"),
            num_train_timesteps=scheduler.config.get("num_train_timesteps"),
            prediction_type=scheduler.config.get("prediction_type", "epsilon"),
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


def training_summary(args, output_dir: str | None = None) -> dict:
    """The training settings the model card shows, from the training script's `args` and `output_dir/train_log.jsonl`
    (the last logged step and loss, when the log exists)."""
    keys = ("beta", "loss_weighting", "timestep_sampling", "max_train_steps", "learning_rate", "train_batch_size")
    summary = {key: getattr(args, key, None) for key in keys + ("use_ema",)}
    log_path = os.path.join(output_dir, "train_log.jsonl") if output_dir else None
    if log_path and os.path.isfile(log_path):
        with open(log_path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        if records:
            summary["steps"] = records[-1].get("step")
            summary["final_loss"] = records[-1].get("loss")
    return summary


def training_datasets(args) -> list[str] | None:
    """Hub ids of the data the training script used: `--dataset_name`, or Fashion-MNIST for `--fashion_mnist_dir`."""
    if getattr(args, "dataset_name", None):
        return [args.dataset_name]
    if getattr(args, "fashion_mnist_dir", None):
        return ["zalando-datasets/fashion_mnist"]
    return None


def push_pipeline_to_hub(output_dir: str, repo_id: str, args, metrics: dict | None = None):
    """
    Push the pipeline the training script saved in `output_dir` to `repo_id`, with a model card of its training
    settings (`args`: `beta`, `latent_dim`, `loss_weighting`, `max_train_steps`, the dataset, `hub_token`) and of the
    last logged step and loss of `output_dir/train_log.jsonl`.

    Only the pipeline is uploaded (`model_index.json`, `unet/`, `scheduler/`, `encoder/`, README.md), not the
    checkpoints or logs beside it.

    Returns:
        The `huggingface_hub` commit info of the upload.
    """
    from .pipelines.pipeline_scorevae import ScoreVAEPipeline

    pipe = ScoreVAEPipeline.from_pretrained(output_dir)
    training = training_summary(args, output_dir)
    latent_dim = getattr(args, "latent_dim", None)
    if latent_dim is not None and latent_dim != pipe.encoder.config.latent_dim:  # --init_encoder decides otherwise
        logger.warning(f"args.latent_dim={latent_dim} but the saved encoder has {pipe.encoder.config.latent_dim}.")
    return pipe.push_to_hub(
        repo_id,
        token=getattr(args, "hub_token", None),
        commit_message=f"ScoreVAE encoder, step {training.get('steps') or training.get('max_train_steps')}",
        training=training,
        datasets=training_datasets(args),
        metrics=metrics,
    )
