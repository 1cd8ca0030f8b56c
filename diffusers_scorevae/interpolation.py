"""Interpolation between two images through a ScoreVAE pipeline, as diffusion autoencoders (DiffAE) do it.

- `mode="z+xT"`: both images are DDIM-inverted ([`ScoreVAEPipeline.invert`]) to their codes z and initial noise x_T;
  the codes are interpolated linearly and the noise spherically (slerp keeps x_T's norm typical of N(0, I)), then each
  point is decoded with the same DDIM steps. The endpoints reconstruct the two images.
- `mode="z"`: linear in z alone, every point decoded from the same fresh noise (one x_T, and for stochastic schedulers
  the same per-step noise): what changes along the row is what z carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import PIL.Image
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .inversion import inversion_scheduler
from .noise import append_dims
from .visualization import make_rows

MODES = ("z+xT", "z")


@dataclass
class InterpolationOutput(BaseOutput):
    """
    Output of [`interpolate`].

    Args:
        images (`torch.Tensor` of shape `(num_points, num_channels, height, width)`):
            The decoded interpolants in [0, 1], from image A (first) to image B (last).
        latent_codes (`torch.Tensor` of shape `(num_points, latent_dim)`):
            The codes z that were decoded.
        latents (`torch.Tensor` of shape `(num_points, num_channels, height, width)`):
            The initial noise x_T of each point (inverted and slerped, or the one shared draw), in the UNet's sample
            shape (the autoencoder's latents for a latent-diffusion prior).
    """

    images: torch.Tensor
    latent_codes: torch.Tensor
    latents: torch.Tensor


def slerp(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `a` to `b` (`[B, ...]`) by `weight` (`[B]` in [0, 1]), per sample, over the angle
    between the flattened vectors; linear where they are (anti)parallel to float precision."""
    a_flat, b_flat = a.flatten(1).double(), b.flatten(1).double()
    cos = (a_flat * b_flat).sum(1) / (a_flat.norm(dim=1) * b_flat.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))
    w = torch.as_tensor(weight, dtype=torch.float64, device=a.device).expand(a.shape[0])
    parallel = theta.sin() < 1e-6
    sin_theta = torch.where(parallel, torch.ones_like(theta), theta.sin())
    coef_a = torch.where(parallel, 1 - w, ((1 - w) * theta).sin() / sin_theta)
    coef_b = torch.where(parallel, w, (w * theta).sin() / sin_theta)
    return (append_dims(coef_a, a.ndim) * a.double() + append_dims(coef_b, a.ndim) * b.double()).to(a.dtype)


def _one_image(pipe, image, name: str) -> torch.Tensor:
    sample = pipe.preprocess(image)
    if sample.shape[0] != 1:
        raise ValueError(f"{name} holds {sample.shape[0]} images; interpolate takes one image at each end.")
    return (sample + 1) / 2  # back to [0, 1], as the pipeline's methods take images


@torch.no_grad()
def interpolate(
    pipe,
    image_a,
    image_b,
    num_points: int = 8,
    num_inference_steps: int | None = None,
    mode: str = "z+xT",
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    guidance_log_snr_range: tuple[float, float] | None = None,
) -> InterpolationOutput:
    r"""
    Decode `num_points` evenly spaced points between two images (endpoints included).

    Args:
        pipe ([`ScoreVAEPipeline`]):
            The pipeline. `mode="z+xT"` inverts and decodes with DDIM (η = 0, no x̂_0 clipping): the pipeline's
            scheduler when it is such a `DDIMScheduler`, else one built from its config (see
            [`ScoreVAEPipeline.invert`]); `mode="z"` decodes with the pipeline's scheduler.
        image_a, image_b (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
            One image each, in [0, 1].
        num_points (`int`, *optional*, defaults to 8):
            Number of interpolants, at weights `linspace(0, 1, num_points)`; at least 2.
        num_inference_steps (`int`, *optional*):
            Scheduler steps of the inversion and of every decode. `None`: the pipeline's saved default.
        mode (`str`, *optional*, defaults to `"z+xT"`):
            `"z+xT"`: linear in z, spherical in the DDIM-inverted x_T. `"z"`: linear in z, one shared fresh x_T.
        guidance_scale (`float`, *optional*):
            γ, the weight of the encoder's score, for the inversion and the decodes. `None`: the encoder's saved γ.
        generator (`torch.Generator`, *optional*):
            Draws the shared noise of `mode="z"` (unused by the deterministic `"z+xT"`).
        guidance_log_snr_range (`Tuple[float, float]`, *optional*):
            Guide only the steps whose log-SNR lies in this closed range, in the inversion and the decodes (see
            [`ScoreVAEPipeline.__call__`]). `None`: the encoder's saved `inversion_log_snr_range` (both modes, so
            that they compare like with like).

    Returns:
        [`InterpolationOutput`]: images in [0, 1], codes and initial noise of every point.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not supported; choose one of {MODES}.")
    if not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an integer >= 2, got {num_points!r}.")
    images = torch.cat([_one_image(pipe, image_a, "image_a"), _one_image(pipe, image_b, "image_b")])
    settings = pipe.resolve_settings(num_inference_steps, guidance_scale, guidance_log_snr_range, inversion=True)
    num_inference_steps, guidance_scale = settings["num_inference_steps"], settings["guidance_scale"]
    guidance_log_snr_range = settings["guidance_log_snr_range"]
    decoder = pipe
    weights = torch.linspace(0, 1, num_points, dtype=torch.float64, device=images.device)

    if mode == "z+xT":
        inverted = pipe.invert(
            images,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            guidance_log_snr_range=guidance_log_snr_range,
        )
        codes, ends = inverted.latent_codes, inverted.latents
        latents = slerp(
            ends[:1].expand(num_points, *ends.shape[1:]), ends[1:].expand(num_points, *ends.shape[1:]), weights
        )
        generators = None
        # decode the slerped noise with the DDIM pass the inversion inverted (the same modules)
        decoder = type(pipe)(
            unet=pipe.unet,
            scheduler=inversion_scheduler(pipe.scheduler),
            encoder=pipe.encoder,
            vae=getattr(pipe, "vae", None),
            num_inference_steps=pipe.config.get("num_inference_steps"),
        )
        decoder.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        if "progress_bar" in vars(pipe):  # a progress bar set on the instance (the app's) follows the decodes
            decoder.progress_bar = pipe.progress_bar
    else:
        codes = pipe.encode(images)
        noise = randn_tensor((1, *pipe.latent_shape), generator=generator, device=images.device, dtype=pipe.unet.dtype)
        latents = noise.expand(num_points, *noise.shape[1:]).clone()
        # one seed, one generator per point: stochastic schedulers draw the same per-step noise for every point
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        generators = [torch.Generator().manual_seed(seed) for _ in range(num_points)]

    w = append_dims(weights, codes.ndim).to(codes.dtype)
    latent_codes = (1 - w) * codes[:1] + w * codes[1:]
    decoded = decoder(
        latent_codes=latent_codes,
        latents=latents,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        guidance_log_snr_range=guidance_log_snr_range,
        generator=generators,
        output_type="pt",
        realism=1.0,
    ).images
    return InterpolationOutput(images=decoded, latent_codes=latent_codes, latents=latents)


def interpolation_grid(
    pipe,
    image_a,
    image_b,
    num_points: int = 8,
    num_inference_steps: int = 50,
    modes: tuple[str, ...] = MODES,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    scale: int = 2,
    guidance_log_snr_range: tuple[float, float] | None = None,
) -> PIL.Image.Image:
    """A labelled grid (`visualization.make_rows`): one row per mode in `modes`, each `A | interpolants | B` with the
    two original images at its ends. Arguments as for [`interpolate`]."""
    ends = [_one_image(pipe, image_a, "image_a").cpu(), _one_image(pipe, image_b, "image_b").cpu()]
    labels = {"z+xT": "z lerp + x_T slerp", "z": "z lerp, shared noise"}
    rows = []
    for mode in modes:
        out = interpolate(
            pipe, image_a, image_b, num_points, num_inference_steps, mode, guidance_scale, generator,
            guidance_log_snr_range=guidance_log_snr_range,
        )  # fmt: skip
        rows.append(torch.cat([ends[0], out.images.cpu(), ends[1]]))
    return make_rows(rows, [labels[mode] for mode in modes], scale=scale)
