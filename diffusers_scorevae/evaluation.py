"""Reconstruction evaluation shared by the `scorevae` command and the scripts: reconstruct a set of images with a
ScoreVAE pipeline (and optionally a β-VAE) and measure distortion (L2 / PSNR / SSIM), sharpness, class_kept, realism
(the Fréchet distance of classifier features) and the rate (KL of the encoder's posterior to N(0, I), nats/image)."""

from __future__ import annotations

import itertools

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


@torch.no_grad()
def scorevae_decode_samples(
    pipe,
    images: torch.Tensor,
    batch_size: int = 256,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    num_samples_per_code: int = 1,
    progress: bool = True,
    guidance_log_snr_range: tuple[float, float] | None = None,
    pipeline_kwargs: dict | None = None,
) -> torch.Tensor:
    r"""
    Decode each image's code z = E[q(z | x_0)] `num_samples_per_code` times, with different noise.

    Batch by batch, one generator seeded `seed + start` (the batch's first index) draws the K decodes one after
    another: results are reproducible, and the first decode is what [`scorevae_reconstruct`] returns.

    Args:
        pipe ([`ScoreVAEPipeline`]):
            The pipeline. Its progress bar is configured here: with `progress`, one bar over the denoising steps of
            each decode (cleared when the decode ends), below a bar over the batches; without, none.
        images (`torch.Tensor` of shape `(N, C, H, W)`):
            Images in [0, 1]: the pipeline's [`~ScoreVAEPipeline.image_shape`], or smaller (then padded centrally with
            black for the pipeline and the decodes cropped back to `(H, W)`; see [`fit_to_pipeline`]).
        num_samples_per_code (`int`, *optional*, defaults to 1):
            K, the decodes per code (at least 1).
        progress (`bool`, *optional*, defaults to `True`):
            Show progress bars (tqdm, on stderr).
        guidance_log_snr_range (`Tuple[float, float]`, *optional*):
            Guide only the steps whose log-SNR lies in this closed range (see [`ScoreVAEPipeline.__call__`]).
        pipeline_kwargs (`dict`, *optional*):
            Further arguments for every pipeline call, e.g. `{"eta": 1.0}`.

    Returns:
        `torch.Tensor` of shape `(K, N, C, H, W)`: the decodes in [0, 1], float32 on the CPU.
    """
    if num_samples_per_code < 1:
        raise ValueError(f"`num_samples_per_code` must be at least 1, got {num_samples_per_code}.")
    height, width = images.shape[-2:]
    images = fit_to_pipeline(pipe, images)
    outputs = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="ScoreVAE reconstruction", unit="batch", disable=not progress):
        latent_codes = pipe.encode(images[start : start + batch_size])
        generator = torch.Generator(device="cpu").manual_seed(seed + start)
        decodes = []
        for k in range(num_samples_per_code):
            desc = "denoising" if num_samples_per_code == 1 else f"denoising (decode {k + 1}/{num_samples_per_code})"
            pipe.set_progress_bar_config(desc=desc, unit="step", leave=False, disable=not progress)
            out = pipe(
                latent_codes=latent_codes,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                guidance_log_snr_range=guidance_log_snr_range,
                generator=generator,
                output_type="pt",
                **(pipeline_kwargs or {}),
            )
            decodes.append(center_crop(out.images.float().cpu(), height, width))
        outputs.append(torch.stack(decodes))
    return torch.cat(outputs, dim=1)


def scorevae_reconstruct(
    pipe,
    images: torch.Tensor,
    batch_size: int = 256,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    guidance_log_snr_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Reconstructions `(N, C, H, W)` in [0, 1] of `images` (in [0, 1]), decoded batch by batch with fixed seeds (one
    decode per code: [`scorevae_decode_samples`] with K = 1)."""
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
    How the decodes of one code spread, from K ≥ 2 decodes per image (MATH.md §8): `l2_mean_of_k`, the mean L2 of the
    average of the K decodes (the MMSE proxy: for a decoder sampling p(x | z) its squared error is (1 + 1/K) × the
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
