"""Latent-diffusion priors: the autoencoder (`VQModel` or `AutoencoderKL`) whose latents an unconditional `UNet2DModel`
models, and the one rule by which images become the UNet's latents and back.

The rule ([`latent_scaling`]) mirrors the diffusers pipeline each autoencoder comes with:

- `VQModel` (LDMPipeline, e.g. CompVis/ldm-celebahq-256): the UNet's latents are `vae.encode(x).latents` (before
  quantisation) times `scaling_factor`; decoding divides by it and calls `vae.decode`, which quantises. LDMPipeline
  (diffusers 0.42.1) divides by `vqvae.config.scaling_factor`, which `VQModel` fills with 0.18215 when the saved config
  has no such key; CompVis/ldm-celebahq-256's config has none and its UNet was trained on unscaled latents, so
  LDMPipeline decodes garbage (diffusers issue #6725). Here a `VQModel` whose *given* config lacks `scaling_factor`
  (diffusers records it in `config._use_default_values`) is unscaled: scale 1.0. [`ScoreVAEPipeline`] writes that 1.0
  into the autoencoder's config, so a saved pipeline states it explicitly.
- `AutoencoderKL` (Stable Diffusion pipelines): latents are `(vae.encode(x).latent_dist.mode() - shift_factor) *
  scaling_factor` (`shift_factor` 0 when unset; the mean of the posterior, so encoding is deterministic), decoded by
  `vae.decode(latents / scaling_factor + shift_factor)`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, VQModel
from diffusers.utils import logging

logger = logging.get_logger(__name__)

SUPPORTED_AUTOENCODERS = (VQModel, AutoencoderKL)
_SUPPORTED_NAMES = "a diffusers VQModel (LDMPipeline's `vqvae`) or AutoencoderKL"


def check_autoencoder(vae) -> None:
    """Raise a `ValueError` unless `vae` is `None` or a `VQModel` / `AutoencoderKL`."""
    if vae is not None and not isinstance(vae, SUPPORTED_AUTOENCODERS):
        raise ValueError(f"vae is a {type(vae).__name__}; expected None (a pixel-space prior) or {_SUPPORTED_NAMES}.")


def scaling_factor_given(vae) -> bool:
    """Whether `scaling_factor` was in the config `vae` was built or loaded from (not filled with the default)."""
    return "scaling_factor" not in (vae.config.get("_use_default_values") or [])


def latent_scaling(vae) -> tuple[float, float]:
    """
    `(scaling_factor, shift_factor)` mapping the autoencoder's latents to the UNet's: `latents = (h - shift) * scale`,
    `h = latents / scale + shift`.

    - `VQModel`: `(config.scaling_factor, 0.0)` when the given config has `scaling_factor`, else `(1.0, 0.0)` (trained
      unscaled, as CompVis/ldm-celebahq-256; see the module docstring).
    - `AutoencoderKL`: `(config.scaling_factor, config.shift_factor or 0.0)`, as Stable Diffusion pipelines use them.
    """
    check_autoencoder(vae)
    if vae is None:
        raise ValueError("vae is None: a pixel-space prior has no latent scaling.")
    if isinstance(vae, VQModel):
        scale = float(vae.config.scaling_factor) if scaling_factor_given(vae) else 1.0
        return scale, 0.0
    shift = vae.config.get("shift_factor")
    return float(vae.config.scaling_factor), float(shift or 0.0)


def resolve_vqmodel_scaling(vae) -> None:
    """For a `VQModel` whose config lacks `scaling_factor`, write the 1.0 that [`latent_scaling`] uses into its config
    (so that `save_pretrained` records it, and LDMPipeline given this model decodes the same), with a warning."""
    if isinstance(vae, VQModel) and not scaling_factor_given(vae):
        logger.warning(
            "The VQModel's config has no `scaling_factor` (as CompVis/ldm-celebahq-256): its latents are taken as "
            "unscaled (scaling_factor=1.0, not VQModel's default 0.18215, which LDMPipeline would use), and 1.0 is "
            "written to its config."
        )
        defaults = [k for k in vae.config.get("_use_default_values") or [] if k != "scaling_factor"]
        vae.register_to_config(scaling_factor=1.0, _use_default_values=defaults)


def vae_scale_factor(vae) -> int:
    """How many pixels one latent spans per side: 2 ** (encoder blocks − 1), as diffusers pipelines compute it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_encode(vae, sample: torch.Tensor) -> torch.Tensor:
    """Images in model space ([-1, 1], `(B, C, H, W)`) → the UNet's latents, by [`latent_scaling`]'s rule."""
    scale, shift = latent_scaling(vae)
    sample = sample.to(vae.device, vae.dtype)
    if isinstance(vae, VQModel):
        h = vae.encode(sample).latents  # before quantisation, as the LDM prior was trained
    else:
        h = vae.encode(sample).latent_dist.mode()
    return (h - shift) * scale


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's latents → images in model space ([-1, 1] scale, not clipped): `vae.decode(latents / scale + shift)`
    (a `VQModel` quantises first, as LDMPipeline decodes)."""
    scale, shift = latent_scaling(vae)
    return vae.decode((latents / scale + shift).to(vae.dtype)).sample


def check_autoencoder_matches_unet(vae, unet) -> None:
    """Raise a `ValueError` unless the UNet models `vae`'s latents: `unet.in_channels == vae.latent_channels`."""
    if vae is None:
        return
    check_autoencoder(vae)
    latent_channels = vae.config.latent_channels
    if unet.config.in_channels != latent_channels:
        raise ValueError(
            f"the unet models {unet.config.in_channels}-channel samples but the vae ({type(vae).__name__}) has "
            f"latent_channels={latent_channels}; use the autoencoder the prior was trained on."
        )


def load_autoencoder(path: str):
    """A saved `AutoencoderKL` / `VQModel` (the class its config names): a model folder, or a pipeline folder with
    `vae/` (or an LDMPipeline's `vqvae/`). Frozen, in eval mode, float32."""
    import os

    import diffusers

    subfolder = next((name for name in ("vae", "vqvae") if os.path.isdir(os.path.join(path, name))), None)
    # the folder itself, not `subfolder=`: diffusers prefers weights at the root of a local folder over the subfolder's
    folder = os.path.join(path, subfolder) if subfolder is not None else path
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(
            f"vae path {path!r} holds neither config.json nor vae/config.json; pass a saved AutoencoderKL."
        )
    class_name = diffusers.AutoencoderKL.load_config(folder).get("_class_name")
    if class_name not in ("AutoencoderKL", "VQModel"):
        raise ValueError(f"vae path {path!r} holds a {class_name}; expected {_SUPPORTED_NAMES}.")
    vae = getattr(diffusers, class_name).from_pretrained(folder, torch_dtype=torch.float32)
    return vae.requires_grad_(False).eval()


@torch.no_grad()
def encode_to_latents(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in model space (`(N, C, H, W)`, [-1, 1]) → the UNet's latents by [`vae_encode`], batch by batch: float32
    on the CPU (to cache a dataset once)."""
    return torch.cat([vae_encode(vae, chunk).float().cpu() for chunk in images.split(batch_size)])
