"""Reconstruction evaluation shared by the `scorevae` command and the scripts: reconstruct a set of images with a
ScoreVAE pipeline (and optionally a β-VAE) and measure distortion (L2 / PSNR / SSIM), sharpness, class_kept, realism
(the Fréchet distance of classifier features) and the rate (KL of the encoder's posterior to N(0, I), nats/image)."""

from __future__ import annotations

import inspect
import itertools
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics
from .noise import kl_to_standard_normal


def center_pad(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad images `(N, C, h, w)` in [0, 1] centrally with black (0) to `(N, C, height, width)`; an odd difference puts
    the extra row / column at the bottom / right (as [`~diffusers_scorevae.data.pad_images`]). Never resizes."""
    h, w = images.shape[-2:]
    if h > height or w > width:
        raise ValueError(f"images of {h}x{w} cannot be padded to {height}x{width}; they are never resized or cropped.")
    top, left = (height - h) // 2, (width - w) // 2
    return torch.nn.functional.pad(images, (left, width - w - left, top, height - h - top), value=0.0)


def center_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central `height` × `width` of images `(..., H, W)`: undoes [`center_pad`]."""
    top, left = (images.shape[-2] - height) // 2, (images.shape[-1] - width) // 2
    return images[..., top : top + height, left : left + width]


def fit_to_pipeline(pipe, images: torch.Tensor) -> torch.Tensor:
    r"""
    `images` (`(N, C, h, w)`, [0, 1]) as the pipeline reads them: unchanged when they have its
    [`~ScoreVAEPipeline.image_shape`], padded centrally with black when they are smaller (28×28 Fashion-MNIST for a
    32×32 latent pipeline: 2 pixels on each side); decodes are cropped back with [`center_crop`]. Other channel
    counts, or images larger than the pipeline's, are a `ValueError` (nothing is resized).
    """
    channels, height, width = pipe.image_shape
    if images.ndim != 4 or images.shape[1] != channels or images.shape[2] > height or images.shape[3] > width:
        raise ValueError(
            f"images have shape {tuple(images.shape)}; the pipeline reads (N, {channels}, {height}, {width}) images "
            f"(smaller ones are padded centrally with black; nothing is resized)."
        )
    if tuple(images.shape[2:]) == (height, width):
        return images
    return center_pad(images, height, width)


@torch.no_grad()
def kl_rate(encoder, images: torch.Tensor, batch_size: int = 512, vae=None) -> torch.Tensor:
    r"""
    The rate of each image's code: KL(q(z | x_0) ‖ N(0, I)) in nats, with the encoder at its clean noise level
    (`encoder.config.clean_log_snr`, as [`ScoreVAEPipeline.encode`] and [`BetaVAE.encode`] use it).

    Args:
        encoder ([`ScoreVAEEncoder`]):
            A ScoreVAE pipeline's `encoder`, or a [`BetaVAE`]'s `encoder`.
        images (`torch.Tensor` of shape `(N, C, H, W)`):
            Images in [0, 1].
        batch_size (`int`, *optional*, defaults to 512):
            Images per encoder call.
        vae ([`AutoencoderKL`] or [`VQModel`], *optional*):
            A latent pipeline's autoencoder (`pipe.vae`): the encoder reads the images' latents
            ([`~diffusers_scorevae.autoencoders.vae_encode`]), so `images` are at the autoencoder's resolution.

    Returns:
        `torch.Tensor` of shape `(N,)`: nats per image (summed over the latent dimension), float32 on the CPU.
    """
    rates = []
    for chunk in images.split(batch_size):
        sample = chunk * 2 - 1
        if vae is not None:
            from .autoencoders import vae_encode

            sample = vae_encode(vae, sample)
        sample = sample.to(encoder.device, encoder.dtype)
        mean, logvar = encoder(sample, encoder.config.clean_log_snr, return_dict=False)
        rates.append(kl_to_standard_normal(mean.float(), logvar.float()).cpu())
    return torch.cat(rates)


def image_seed(seed: int, index: int) -> int:
    """The noise seed of image `index` (its place in the whole evaluation set) in a run seeded `seed`: a function of
    the pair alone, so an image gets the same noise whatever the batch size, the slice it sits in or the number of
    processes that share the work."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def image_generators(seed: int, indices, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One `torch.Generator` per image, seeded [`image_seed`]`(seed, index)`, as the pipeline takes them (a list)."""
    return [torch.Generator(device=device).manual_seed(image_seed(seed, index)) for index in indices]


def _call_parameters(pipe) -> set[str] | None:
    """The keyword arguments the pipeline's `__call__` takes; `None` when it takes any (`**kwargs`)."""
    parameters = inspect.signature(type(pipe).__call__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)


def decode_call_kwargs(pipe, **settings) -> dict:
    r"""
    The decoding settings that are set (not `None`), as keyword arguments of the pipeline's `__call__`; `None` leaves
    a setting to the pipeline (the value saved with the model). A setting the pipeline does not take (`realism` or
    `clip_sample` on a pipeline without them) is a `ValueError` when set, and dropped when `None`.
    """
    parameters = _call_parameters(pipe)
    kwargs = {}
    for key, value in settings.items():
        if value is None:
            continue
        if parameters is not None and key not in parameters:
            raise ValueError(f"{type(pipe).__name__}.__call__ does not take `{key}` (got {key}={value!r}).")
        kwargs[key] = tuple(value) if key == "guidance_log_snr_range" else value
    return kwargs


def decode_settings(pipe, **settings) -> dict:
    r"""
    The decoding settings a decode actually uses, for the record: each given one; for a `None` the value saved with
    the model (`pipe.decode_defaults`, where the pipeline has it), else the default of its `__call__`. `clip_sample`
    `None` is whether x̂_0 is clipped: a guided decode clips only when asked, an unguided one (γ = 0) as the
    scheduler's config says. Ranges are lists (as JSON writes them).
    """
    saved = dict(getattr(pipe, "decode_defaults", None) or {})
    signature = inspect.signature(type(pipe).__call__).parameters
    used = {}
    for key, value in settings.items():
        if value is None and key != "clip_sample":
            if key in saved:
                value = saved[key]
            elif key in signature and signature[key].default is not inspect.Parameter.empty:
                value = signature[key].default
        used[key] = value
    guidance_scale = used.get("guidance_scale", settings.get("guidance_scale", saved.get("guidance_scale")))
    if "realism" in used and settings.get("realism") is None and guidance_scale == 0:
        used["realism"] = 1.0  # an unguided decode is a sample of the prior, whatever realism the model saved
    if "clip_sample" in used and used["clip_sample"] is None:
        clips = bool(pipe.scheduler.config.get("clip_sample", False))
        # a pipeline that takes `clip_sample` clips a guided decode only when asked; older ones follow the scheduler
        used["clip_sample"] = clips and ("clip_sample" not in signature or guidance_scale == 0)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in used.items()}


@torch.no_grad()
def scorevae_decode_samples(
    pipe,
    images: torch.Tensor,
    batch_size: int = 256,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    num_samples_per_code: int = 1,
    progress: bool = True,
    guidance_log_snr_range: tuple[float, float] | None = None,
    pipeline_kwargs: dict | None = None,
    indices=None,
) -> torch.Tensor:
    r"""
    Decode each image's code z = E[q(z | x_0)] `num_samples_per_code` times, with different noise.

    Each image has its own generator, seeded from `seed` and the image's index ([`image_generators`]), which draws
    its K decodes one after another: an image's decodes do not depend on the batch size or on which other images are
    decoded with it (a slice of the set, or one process's share, decodes its images as the whole run does), and the
    first decode is what [`scorevae_reconstruct`] returns.

    Args:
        pipe ([`ScoreVAEPipeline`]):
            The pipeline. Its progress bar is configured here: with `progress`, one bar over the denoising steps of
            each decode (cleared when the decode ends), below a bar over the batches; without, none.
        images (`torch.Tensor` of shape `(N, C, H, W)`):
            Images in [0, 1]: the pipeline's [`~ScoreVAEPipeline.image_shape`], or smaller (then padded centrally with
            black for the pipeline and the decodes cropped back to `(H, W)`; see [`fit_to_pipeline`]).
        num_inference_steps (`int`, *optional*), guidance_scale (`float`, *optional*):
            As in [`ScoreVAEPipeline.__call__`]; `None` (default) decodes with the settings saved with the model.
        seed (`int`, *optional*, defaults to 0):
            The run's seed; with `indices`, it seeds every image's generator.
        num_samples_per_code (`int`, *optional*, defaults to 1):
            K, the decodes per code (at least 1).
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars (tqdm, on stderr).
        guidance_log_snr_range (`Tuple[float, float]`, *optional*):
            Guide only the steps whose log-SNR lies in this closed range (see [`ScoreVAEPipeline.__call__`]); `None`:
            the model's.
        pipeline_kwargs (`dict`, *optional*):
            Further arguments for every pipeline call, e.g. `{"eta": 1.0}` or `{"realism": 0.5}`.
        indices (`Sequence[int]`, *optional*):
            Each image's index in the whole evaluation set, for its seed; defaults to `0 … N-1`.

    Returns:
        `torch.Tensor` of shape `(K, N, C, H, W)`: the decodes in [0, 1], float32 on the CPU.
    """
    if num_samples_per_code < 1:
        raise ValueError(f"`num_samples_per_code` must be at least 1, got {num_samples_per_code}.")
    indices = list(range(len(images))) if indices is None else [int(i) for i in indices]
    if len(indices) != len(images):
        raise ValueError(f"`indices` has {len(indices)} entries for {len(images)} images.")
    channels, height, width = images.shape[-3:]
    if len(images) == 0:  # e.g. a process whose share of a small set is empty
        return torch.zeros(num_samples_per_code, 0, channels, height, width)
    images = fit_to_pipeline(pipe, images)
    call_kwargs = decode_call_kwargs(
        pipe,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        guidance_log_snr_range=guidance_log_snr_range,
    )
    call_kwargs.update(pipeline_kwargs or {})
    outputs = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="ScoreVAE reconstruction", unit="batch", disable=not progress):
        latent_codes = pipe.encode(images[start : start + batch_size])
        generators = image_generators(seed, indices[start : start + batch_size])
        decodes = []
        for k in range(num_samples_per_code):
            desc = "denoising" if num_samples_per_code == 1 else f"denoising (decode {k + 1}/{num_samples_per_code})"
            pipe.set_progress_bar_config(desc=desc, unit="step", leave=False, disable=not progress)
            out = pipe(latent_codes=latent_codes, generator=generators, output_type="pt", **call_kwargs)
            decodes.append(center_crop(out.images.float().cpu(), height, width))
        outputs.append(torch.stack(decodes))
    return torch.cat(outputs, dim=1)


def scorevae_reconstruct(
    pipe,
    images: torch.Tensor,
    batch_size: int = 256,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: bool = True,
    guidance_log_snr_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Reconstructions `(N, C, H, W)` in [0, 1] of `images` (in [0, 1]), decoded batch by batch with fixed per-image
    seeds (one decode per code: [`scorevae_decode_samples`] with K = 1)."""
    return scorevae_decode_samples(
        pipe,
        images,
        batch_size,
        num_inference_steps,
        guidance_scale,
        seed,
        num_samples_per_code=1,
        progress=progress,
        guidance_log_snr_range=guidance_log_snr_range,
    )[0]


def process_state(device: str | torch.device | None = None):
    r"""
    accelerate's `PartialState` of this process: one process of several when started by `accelerate launch` or
    `torchrun` (each on its own GPU, or CPU processes on gloo), else the only one. With `device` a CPU device, or
    without any accelerator, the processes are CPU processes (accelerate needs to be told so).
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = torch.cuda.is_available() or (accelerator is not None and accelerator.is_available())
    wants_cpu = device is not None and torch.device(device).type == "cpu"
    return PartialState(cpu=wants_cpu or parse_flag_from_env("ACCELERATE_USE_CPU") or not has_accelerator)


def process_device(state, device: str | torch.device | None = None) -> torch.device:
    """Where this process computes: `device` when it names one (`cuda:1`), else this process's device of `state`
    (`cuda:<local rank>` on several GPUs; `--device cuda` too means each process's own GPU)."""
    if device is None:
        return state.device
    device = torch.device(device)
    return state.device if device.index is None and device.type == state.device.type else device


def process_share(num_items: int, state=None) -> range:
    """The contiguous run of `range(num_items)` this process works on (accelerate's `split_between_processes`: the
    first `num_items % num_processes` processes take one more); all of it without `state` or in a single process."""
    if state is None or state.num_processes == 1:
        return range(num_items)
    with state.split_between_processes(list(range(num_items))) as share:
        share = list(share)
    return range(share[0], share[-1] + 1) if share else range(0)


def gather_in_order(part: torch.Tensor, start: int, state=None, dim: int = 0) -> torch.Tensor | None:
    """Join every process's `part` (which starts at item `start` of the whole along `dim`) on the main process, in
    the order of the items: each item once, whatever the split (no padding). The other processes get `None`."""
    if state is None or state.num_processes == 1:
        return part
    from accelerate.utils import gather_object

    parts = gather_object([(start, part.cpu())])
    if not state.is_main_process:
        return None
    return torch.cat([p for _, p in sorted(parts, key=lambda item: item[0])], dim=dim)


def _load(model_or_path, cls, device):
    if model_or_path is None or not isinstance(model_or_path, (str, os.PathLike)):
        return model_or_path
    from .loading import resolve

    return cls.from_pretrained(resolve(str(model_or_path))).to(device).eval()


def compare(
    pipe,
    images: torch.Tensor,
    *,
    beta_vae="fashion-mnist-beta-vae",
    classifier="fashion-mnist-classifier",
    batch_size: int = 256,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_log_snr_range: tuple[float, float] | None = None,
    realism: float | None = None,
    clip_sample: bool | None = None,
    seed: int = 0,
    num_samples_per_code: int = 1,
    fd: bool = False,
    prior: str | None = None,
    state=None,
    progress: bool = True,
):
    r"""
    Reconstruct `images` with ScoreVAE and the β-VAE and measure both: what `scorevae demo` and `scorevae evaluate`
    report.

    A pipeline whose `image_shape` is larger than the images (the 32×32 latent pipeline) reads them padded centrally
    with black and its decodes are cropped back ([`fit_to_pipeline`]): every metric is on the images' pixels, the
    rate is its encoder's KL on the autoencoder's latents, and the `autoencoder` row (vae.decode(vae.encode(x))) is
    the floor of any reconstruction through those latents. The β-VAE is the 28×28 pixel one.

    Args:
        pipe ([`ScoreVAEPipeline`]):
            The pipeline, on its device.
        images (`torch.Tensor` of shape `(N, 1, 28, 28)`):
            Images in [0, 1]; image `i` is decoded with the noise of [`image_seed`]`(seed, i)`.
        beta_vae (`str` or [`BetaVAE`], *optional*, defaults to `"fashion-mnist-beta-vae"`):
            The baseline: a model, or a bundled name / folder / Hub id to load.
        classifier (`str` or [`FashionMNISTClassifier`], *optional*, defaults to `"fashion-mnist-classifier"`):
            The classifier of `class_kept` and of the Fréchet distance's features: a model, or a name to load.
        batch_size (`int`, *optional*, defaults to 256):
            Images per pipeline call.
        num_inference_steps, guidance_scale, guidance_log_snr_range, realism, clip_sample (*optional*):
            The decode's settings, as in [`ScoreVAEPipeline.__call__`]; `None` (default) is the value saved with the
            model. Only the set ones are passed to the pipeline; the metrics record the values used.
        seed (`int`, *optional*, defaults to 0):
            The run's seed.
        num_samples_per_code (`int`, *optional*, defaults to 1):
            K ≥ 2 decodes each code K times (`l2` stays the first decode's) and adds [`same_code_metrics`].
        fd (`bool`, *optional*, defaults to `False`):
            Also the Fréchet distance of the classifier's features to the originals'.
        prior (`str`, *optional*):
            What to record as the prior (the name the pipeline's prior was loaded from).
        state (`accelerate.PartialState`, *optional*):
            Share the decodes among the processes of a distributed run (`accelerate launch`, `torchrun`): each
            decodes a contiguous share of the images, the main process gathers them and computes every metric.
        progress (`bool`, *optional*, defaults to `True`):
            Progress bars (on the main process only).

    Returns:
        `(scorevae, beta_vae, metrics)`: the first ScoreVAE decode and the β-VAE's reconstructions, `(N, 1, 28, 28)`
        in [0, 1], and the metrics (`dict`); `(None, None, None)` on processes other than the main one.
    """
    from .models.beta_vae import BetaVAE
    from .models.classifier import FashionMNISTClassifier

    is_main = state is None or state.is_main_process
    num_processes = 1 if state is None else state.num_processes
    settings = {
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "guidance_log_snr_range": guidance_log_snr_range,
    }
    extra = decode_call_kwargs(pipe, realism=realism, clip_sample=clip_sample)
    share = process_share(len(images), state)
    start = time.time()
    part = scorevae_decode_samples(
        pipe,
        images[share.start : share.stop],
        batch_size,
        seed=seed,
        num_samples_per_code=num_samples_per_code,
        progress=progress and is_main,
        pipeline_kwargs=extra,
        indices=share,
        **settings,
    )
    decodes = gather_in_order(part, share.start, state, dim=1)
    seconds = (time.time() - start) / num_samples_per_code
    if not is_main:
        return None, None, None

    device = pipe.device
    classifier = _load(classifier, FashionMNISTClassifier, device)
    beta_vae = _load(beta_vae, BetaVAE, device)
    scorevae = decodes[0]
    scorevae_metrics = decode_metrics(images, decodes, classifier, fd=fd)
    vae = getattr(pipe, "vae", None)
    scorevae_metrics["kl"] = kl_rate(pipe.encoder, fit_to_pipeline(pipe, images), vae=vae).mean().item()
    metrics = {"num_images": len(images)}
    metrics.update(decode_settings(pipe, realism=realism, clip_sample=clip_sample, **settings))
    metrics.update(
        scheduler=type(pipe.scheduler).__name__,
        prior=prior,
        seed=seed,
        num_samples_per_code=num_samples_per_code,
        num_processes=num_processes,
        scorevae=scorevae_metrics,
    )
    baseline = None
    if beta_vae is not None:
        baseline, metrics["beta_vae"] = beta_vae_metrics(beta_vae, images, classifier, fd=fd)
    metrics["originals"] = {"sharpness": reconstruction_metrics(images, images)["sharpness"]}
    metrics["scorevae_seconds"] = seconds  # one decode of every image (the K decodes' time / K), wall time
    if vae is not None:
        metrics["autoencoder"] = reconstruction_metrics(images, autoencoder_reconstruct(pipe, images), classifier)
        metrics["image_shape"] = list(pipe.image_shape)
    return scorevae, baseline, metrics


@torch.no_grad()
def bits_per_dim_metrics(
    pipe, images: torch.Tensor, *, batch_size: int = 256, seed: int = 0, num_sampled_timesteps: int | None = None
) -> dict:
    """Negative ELBO of ScoreVAE and the DDPM bound of the prior alone, in bits/dim, on `images` (in [0, 1]) and on
    as many (at most 64) uniform-noise images, which must score worse; one generator seeded `seed` draws all the
    randomness. `num_sampled_timesteps` estimates each bound from that many of the T steps (default: all)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, images.shape, generator=generator).float() / 255.0
    results = {}
    for name, data in (("data", images), ("uniform_noise", noise[: min(len(images), 64)])):
        scorevae, prior = [], []
        for start in tqdm(range(0, len(data), batch_size), desc=f"bits/dim ({name})"):
            batch = data[start : start + batch_size]
            kwargs = {"generator": generator, "num_sampled_timesteps": num_sampled_timesteps}
            scorevae.append(pipe.bits_per_dim(batch, **kwargs).cpu())
            prior.append(pipe.prior_bits_per_dim(batch, **kwargs).cpu())
        scorevae, prior = torch.cat(scorevae), torch.cat(prior)
        results[f"scorevae_bits_per_dim_{name}"] = scorevae.mean().item()
        results[f"prior_bits_per_dim_{name}"] = prior.mean().item()
        results[f"num_images_{name}"] = len(data)
    results["num_sampled_timesteps"] = num_sampled_timesteps or "all"
    return results


@torch.no_grad()
def autoencoder_reconstruct(pipe, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """A latent pipeline's autoencoder alone: `vae.decode(vae.encode(x))` (posterior mean / pre-quantisation latents,
    [`~diffusers_scorevae.autoencoders.latent_scaling`]'s rule) of `images` (in [0, 1], padded and cropped as
    [`scorevae_decode_samples`]), in [0, 1], `(N, C, H, W)`: the floor of any reconstruction through its latents."""
    from .autoencoders import vae_decode, vae_encode

    if getattr(pipe, "vae", None) is None:
        raise ValueError("pipe has no vae: autoencoder_reconstruct needs a latent-diffusion pipeline.")
    height, width = images.shape[-2:]
    outputs = []
    for chunk in fit_to_pipeline(pipe, images).split(batch_size):
        decoded = vae_decode(pipe.vae, vae_encode(pipe.vae, chunk * 2 - 1))
        outputs.append(center_crop(((decoded.float() + 1) / 2).clamp(0, 1).cpu(), height, width))
    return torch.cat(outputs)


@torch.no_grad()
def beta_vae_reconstruct(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """β-VAE reconstructions (decoder mean at the posterior mean) `(N, C, H, W)` in [0, 1] of `images` in [0, 1]."""
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device) * 2 - 1
        sample = model(batch, sample_posterior=False).sample
        outputs.append(((sample + 1) / 2).clamp(0, 1).float().cpu())
    return torch.cat(outputs)


def reconstruction_metrics(
    originals: torch.Tensor, reconstructions: torch.Tensor, classifier=None, fd: bool = False
) -> dict:
    """Means over images of L2 (per-image Euclidean norm in [0, 1] units), PSNR, SSIM and sharpness; class_kept when a
    classifier is given; with `fd=True` (needs the classifier) also `fd`, the Fréchet distance between the classifier's
    features of the reconstructions and of the originals (a realism measure; trust it for N well above the feature
    size, e.g. ≥ 1,000 images for the bundled classifier's 128 features)."""
    originals, reconstructions = originals.float().cpu(), reconstructions.float().cpu()
    result = {
        "l2": metrics.l2(originals, reconstructions).mean().item(),
        "psnr": metrics.psnr(originals, reconstructions).mean().item(),
        "ssim": metrics.ssim(originals, reconstructions).mean().item(),
        "sharpness": metrics.sharpness(reconstructions).mean().item(),
    }
    if classifier is not None:
        result["class_kept"] = metrics.class_kept(classifier, originals, reconstructions)
    if fd:
        if classifier is None:
            raise ValueError("`fd=True` needs a `classifier` for the features, got None.")
        features = [metrics.classifier_features(classifier, x) for x in (reconstructions, originals)]
        result["fd"] = metrics.frechet_distance(*features)
    return result


def decode_metrics(originals: torch.Tensor, decodes: torch.Tensor, classifier=None, fd: bool = False) -> dict:
    """[`reconstruction_metrics`] of the first of K decodes `(K, N, C, H, W)` (e.g. from [`scorevae_decode_samples`]),
    plus [`same_code_metrics`] when K ≥ 2."""
    result = reconstruction_metrics(originals, decodes[0], classifier, fd)
    if decodes.shape[0] > 1:
        result.update(same_code_metrics(originals, decodes))
    return result


@torch.no_grad()
def beta_vae_metrics(model, originals: torch.Tensor, classifier=None, fd: bool = False) -> tuple[torch.Tensor, dict]:
    """The β-VAE baseline on `originals` (in [0, 1]): its reconstructions ([`beta_vae_reconstruct`]) and their
    [`reconstruction_metrics`] with its rate `kl` (mean KL of its posterior to N(0, I), nats per image)."""
    reconstructions = beta_vae_reconstruct(model, originals)
    result = reconstruction_metrics(originals, reconstructions, classifier, fd)
    result["kl"] = kl_rate(model.encoder, originals).mean().item()
    return reconstructions, result


def same_code_metrics(originals: torch.Tensor, decodes: torch.Tensor) -> dict:
    r"""
    How the decodes of one code spread, from K ≥ 2 decodes per image (docs/math.md §8): `l2_mean_of_k`, the mean L2 of
    the average of the K decodes (the MMSE proxy: for a decoder sampling p(x | z) its squared error is (1 + 1/K) × the
    MMSE given z), and `l2_between_decodes`, the mean L2 between two decodes of the same code (over all pairs).

    Args:
        originals (`torch.Tensor` of shape `(N, C, H, W)`):
            The original images in [0, 1].
        decodes (`torch.Tensor` of shape `(K, N, C, H, W)`):
            K decodes of each original's code, e.g. from [`scorevae_decode_samples`].

    Returns:
        `dict` with `l2_mean_of_k` and `l2_between_decodes`.
    """
    if decodes.ndim != 5 or decodes.shape[0] < 2 or decodes.shape[1:] != originals.shape:
        raise ValueError(
            f"`decodes` must be (K, N, C, H, W) with K ≥ 2 and (N, C, H, W) = {tuple(originals.shape)}, got "
            f"{tuple(decodes.shape)}."
        )
    originals, decodes = originals.float().cpu(), decodes.float().cpu()
    pairs = itertools.combinations(range(decodes.shape[0]), 2)
    between = torch.stack([metrics.l2(decodes[i], decodes[j]) for i, j in pairs])
    return {
        "l2_mean_of_k": metrics.l2(originals, decodes.mean(dim=0)).mean().item(),
        "l2_between_decodes": between.mean().item(),
    }
