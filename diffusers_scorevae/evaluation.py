"""Reconstruction evaluation shared by the `scorevae` command and the scripts: reconstruct a set of images with a
ScoreVAE pipeline (and optionally a β-VAE) and measure distortion (L2 / PSNR / SSIM), sharpness, class_kept, realism
(the Fréchet distance of classifier features) and the rate (KL of the encoder's posterior to N(0, I), nats/image)."""

from __future__ import annotations

import itertools

import torch
from tqdm.auto import tqdm

from . import metrics
from .noise import kl_to_standard_normal


@torch.no_grad()
def kl_rate(encoder, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
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

    Returns:
        `torch.Tensor` of shape `(N,)`: nats per image (summed over the latent dimension), float32 on the CPU.
    """
    rates = []
    for chunk in images.split(batch_size):
        sample = (chunk * 2 - 1).to(encoder.device, encoder.dtype)
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
            Images in [0, 1].
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
            decodes.append(out.images.float().cpu())
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
