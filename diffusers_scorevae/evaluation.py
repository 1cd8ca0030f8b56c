"""Reconstruction evaluation shared by the `scorevae` command and the scripts: reconstruct a set of images with a
ScoreVAE pipeline (and optionally a β-VAE) and measure L2 / PSNR / SSIM / sharpness / class_kept."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import metrics


@torch.no_grad()
def scorevae_reconstruct(
    pipe,
    images: torch.Tensor,
    batch_size: int = 256,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Reconstructions `(N, C, H, W)` in [0, 1] of `images` (in [0, 1]), decoded batch by batch with fixed seeds."""
    pipe.set_progress_bar_config(disable=True)
    outputs = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="ScoreVAE reconstruction", disable=not progress):
        batch = images[start : start + batch_size]
        generator = torch.Generator(device="cpu").manual_seed(seed + start)
        out = pipe(
            image=batch,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
        )
        outputs.append(out.images.float().cpu())
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


def reconstruction_metrics(originals: torch.Tensor, reconstructions: torch.Tensor, classifier=None) -> dict:
    """Means over images of L2 (per-image Euclidean norm in [0, 1] units), PSNR, SSIM and sharpness, and class_kept
    (when a classifier is given)."""
    originals, reconstructions = originals.float().cpu(), reconstructions.float().cpu()
    result = {
        "l2": metrics.l2(originals, reconstructions).mean().item(),
        "psnr": metrics.psnr(originals, reconstructions).mean().item(),
        "ssim": metrics.ssim(originals, reconstructions).mean().item(),
        "sharpness": metrics.sharpness(reconstructions).mean().item(),
    }
    if classifier is not None:
        result["class_kept"] = metrics.class_kept(classifier, originals, reconstructions)
    return result
