"""ScoreVAEPipeline: encode images to latent codes with a ScoreVAE encoder, and decode codes by sampling a frozen
unconditional diffusion prior with the encoder's score added at every scheduler step (docs/math.md §3)."""

from __future__ import annotations

import inspect
import math
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from ..autoencoders import (
    check_autoencoder,
    check_autoencoder_matches_unet,
    resolve_vqmodel_scaling,
    vae_decode,
    vae_encode,
    vae_scale_factor,
)
from ..bound import DiffusionBound, check_8bit, diffusion_bound, nats_to_bits_per_dim
from ..hub.mixins import ScoreVAEPipelineHubMixin
from ..inversion import ddim_invert, flow_invert, inversion_scheduler
from ..models.encoder import ScoreVAEEncoder, check_decode_settings
from ..noise import (
    encoder_score,
    flow_encoder_term,
    flow_log_snr,
    flow_sigma,
    guide_velocity,
    guided_epsilon,
    guided_model_output,
    guided_steps,
    guided_velocity,
    is_flow_scheduler,
    kl_to_standard_normal,
    log_snr_range,
    scheduler_log_snr,
)

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_NUM_INFERENCE_STEPS = 50
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import DDIMScheduler, UNet2DModel
        >>> from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

        >>> # any unconditional UNet2DModel (e.g. UNet2DModel.from_pretrained("google/ddpm-cifar10-32"))
        >>> unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        ...                    norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...                    up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> encoder = ScoreVAEEncoder(sample_size=8, in_channels=3, latent_dim=16)
        >>> pipe = ScoreVAEPipeline(unet=unet, scheduler=DDIMScheduler(), encoder=encoder)

        >>> images = torch.rand(2, 3, 8, 8)  # [B, C, H, W] in [0, 1]; PIL images and numpy arrays work too
        >>> codes = pipe.encode(images)  # [2, 16]
        >>> out = pipe(latent_codes=codes, num_inference_steps=10, generator=torch.manual_seed(0), output_type="pt")
        >>> out.images.shape
        torch.Size([2, 3, 8, 8])
        ```
"""


# Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.retrieve_timesteps (importing that module
# would import transformers, which this package does not need)
def retrieve_timesteps(
    scheduler,
    num_inference_steps: int | None = None,
    device: str | torch.device | None = None,
    timesteps: list[int] | None = None,
    sigmas: list[float] | None = None,
    **kwargs,
):
    """Call `scheduler.set_timesteps` with `num_inference_steps`, or custom `timesteps` or `sigmas` (a `ValueError`
    when the scheduler does not take them), and return `(scheduler.timesteps, the number of steps)`."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is not None:
        accepts_timesteps = "timesteps" in set(inspect.signature(scheduler.set_timesteps).parameters.keys())
        if not accepts_timesteps:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" timestep schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(timesteps=timesteps, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    elif sigmas is not None:
        accept_sigmas = "sigmas" in set(inspect.signature(scheduler.set_timesteps).parameters.keys())
        if not accept_sigmas:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" sigmas schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
        timesteps = scheduler.timesteps
    return timesteps, num_inference_steps


@dataclass
class ScoreVAEPipelineOutput(BaseOutput):
    """
    Output of [`ScoreVAEPipeline`].

    Args:
        images (`List[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The decoded images: PIL images, a numpy array `(batch_size, height, width, num_channels)` or a tensor
            `(batch_size, num_channels, height, width)` in [0, 1], or for `output_type="latent"` the final sample in
            model space ([-1, 1] scale).
        latent_codes (`torch.Tensor` of shape `(batch_size, latent_dim)` or `None`):
            The latent codes z that were decoded (the encoder means of the input images, the given codes, or codes
            drawn from N(0, I)). `None` when `guidance_scale=0` and no image or codes were given: then no code is
            drawn and the pipeline is the unconditional sampler.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    latent_codes: torch.Tensor | None


@dataclass
class ScoreVAEInversionOutput(BaseOutput):
    """
    Output of [`ScoreVAEPipeline.invert`].

    Args:
        latents (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            The initial noise x_T from which the DDIM decode of `latent_codes` returns the images: pass it as `latents`
            to the pipeline.
        latent_codes (`torch.Tensor` of shape `(batch_size, latent_dim)`):
            The latent codes z the inversion was conditioned on (the encoder means, or the given codes).
        num_inference_steps (`int`), guidance_scale (`float`), guidance_log_snr_range (`Tuple[float, float]`):
            The settings the inversion used. A decode of these very `latents` takes them as its defaults (and the
            inversion's DDIM scheduler, η = 0, realism 1), so
            `pipe(latent_codes=inv.latent_codes, latents=inv.latents)` reconstructs the images with no other argument.
    """

    latents: torch.Tensor
    latent_codes: torch.Tensor
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_log_snr_range: tuple[float, float] | None = None


class ScoreVAEPipeline(ScoreVAEPipelineHubMixin, DiffusionPipeline):
    r"""
    Pipeline for ScoreVAE (arXiv 2304.12141): a VAE whose decoder is a frozen, pretrained, unconditional diffusion
    model.

    Decoding a latent code z samples the prior's reverse process with Bayes' rule for scores,
    ∇ log p(x_t | z) = ∇ log p(x_t) + ∇ log q_φ(z | x_t): at every scheduler step the UNet's noise prediction is
    shifted by the encoder's score, ε̂_cond = ε̂ − γ · σ_t · ∇_{x_t} log q_φ(z | x_t, λ_t), converted back to the UNet's
    `prediction_type` and handed to `scheduler.step` unchanged, so every diffusers scheduler decodes the same way.

    This model inherits from [`DiffusionPipeline`]. Check the superclass documentation for the generic methods
    implemented for all pipelines (downloading, saving, running on a particular device, etc.).
    `ScoreVAEPipeline.from_pretrained` loads a ScoreVAE pipeline, or a plain prior plus `encoder=`, by Hub repo id or
    folder, with `DiffusionPipeline.from_pretrained`'s arguments and weights rules; `push_to_hub` uploads safetensors
    with a model card ([`~diffusers_scorevae.hub.ScoreVAEPipelineHubMixin`]).

    Parameters:
        unet ([`UNet2DModel`]):
            A pretrained unconditional UNet (the prior). Frozen: the pipeline sets `requires_grad_(False)` on it.
        scheduler ([`SchedulerMixin`]):
            Any diffusers scheduler with a variance-preserving training schedule (`alphas_cumprod`): DDPM, DDIM, PNDM,
            DPM-Solver (multistep/singlestep), UniPC, DEIS, Euler, Euler ancestral, Heun, KDPM2, LMS, ...; or, for a
            flow-matching prior (a UNet that predicts the velocity, called with σ · num_train_timesteps),
            `FlowMatchEulerDiscreteScheduler`, `FlowMatchHeunDiscreteScheduler` or the ancestral
            `LTXEulerAncestralRFScheduler` (docs/math.md §10).
        encoder ([`ScoreVAEEncoder`]):
            The ScoreVAE encoder q_φ(z | x_t, λ), trained against a prior over the same data (not necessarily this
            one). With a `vae`, it works on the UNet's latents (its `sample_size` / `in_channels` are the UNet's).
        vae ([`VQModel`] or [`AutoencoderKL`], *optional*):
            For a latent-diffusion prior (e.g. CompVis/ldm-celebahq-256, a `UNet2DModel` over the latents of a
            `VQModel`): images are encoded to the UNet's latents with it and decoded from them
            ([`~diffusers_scorevae.autoencoders.latent_scaling`] gives the scaling rule). Frozen. `None` (default): the
            UNet models pixels.
        num_inference_steps (`int`, *optional*):
            The pipeline's default number of decoding steps, saved in `model_index.json` (as diffusers pipelines keep
            `requires_safety_checker`). `None`: 50. The encoder's config carries the other decode settings (γ, the
            log-SNR ranges, realism), so that they travel with it; see [`~ScoreVAEPipeline.decode_defaults`].
    """

    model_cpu_offload_seq = "vae->encoder->unet"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "latent_codes"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        encoder: ScoreVAEEncoder,
        vae=None,
        num_inference_steps: int | None = None,
    ):
        super().__init__()
        steps = num_inference_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"num_inference_steps must be a positive integer or None, got {num_inference_steps!r}.")
        check_prior(unet, scheduler)
        check_encoder_matches_unet(encoder, unet)
        check_autoencoder(vae)
        check_autoencoder_matches_unet(vae, unet)
        unet.requires_grad_(False)
        if vae is not None:
            vae.requires_grad_(False)
            resolve_vqmodel_scaling(vae)
        self.register_modules(unet=unet, scheduler=scheduler, encoder=encoder, vae=vae)
        self.register_to_config(num_inference_steps=num_inference_steps)
        self._inversions = {}  # id(latents) -> (weakref to them, the settings `invert` used)
        self._warned_clipping = False

    @property
    def decode_defaults(self) -> dict:
        """The decode settings an argument left at `None` takes: `num_inference_steps` from the pipeline's config
        (`model_index.json`), `guidance_scale`, `guidance_log_snr_range`, `inversion_log_snr_range` and `realism` from
        the encoder's config (they travel with the encoder). Keys a model was saved without fall back to 50 steps,
        γ = 1, every step guided, the inversion guided where the decode is, and realism 1 (a posterior sample)."""
        encoder = self.encoder.config
        steps = self.config.get("num_inference_steps")
        guidance_scale = encoder.get("guidance_scale")
        guidance_range = log_snr_range(encoder.get("guidance_log_snr_range")) or (-math.inf, math.inf)
        inversion_range = log_snr_range(encoder.get("inversion_log_snr_range"), "inversion_log_snr_range")
        realism = encoder.get("realism")
        return {
            "num_inference_steps": DEFAULT_NUM_INFERENCE_STEPS if steps is None else steps,
            "guidance_scale": 1.0 if guidance_scale is None else float(guidance_scale),
            "guidance_log_snr_range": guidance_range,
            "inversion_log_snr_range": inversion_range or guidance_range,
            "realism": 1.0 if realism is None else float(realism),
        }

    def resolve_settings(
        self,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_log_snr_range: tuple[float, float] | None = None,
        realism: float | None = None,
        defaults: dict | None = None,
        inversion: bool = False,
    ) -> dict:
        """The decode settings a call uses: each argument as given, or where `None` its default (`defaults`, else
        [`~ScoreVAEPipeline.decode_defaults`]); with `inversion=True` the log-SNR range defaults to the inversion's."""
        defaults = dict(self.decode_defaults if defaults is None else defaults)
        if inversion:
            defaults["guidance_log_snr_range"] = defaults["inversion_log_snr_range"]
        given = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "guidance_log_snr_range": guidance_log_snr_range,
            "realism": realism,
        }
        return {key: defaults[key] if value is None else value for key, value in given.items()}

    def _remember_inversion(self, latents: torch.Tensor, settings: dict):
        key = id(latents)
        forget = lambda _, key=key, records=self._inversions: records.pop(key, None)  # noqa: E731
        self._inversions[key] = (weakref.ref(latents, forget), settings)

    def _inversion_of(self, latents) -> dict | None:
        """The settings `invert` used to produce exactly this `latents` tensor (the same object), else `None`."""
        entry = self._inversions.get(id(latents)) if latents is not None else None
        if entry is None or entry[0]() is not latents:
            return None
        return entry[1]

    def _decode_scheduler(self, guidance_scale: float, clip_sample: bool | None) -> SchedulerMixin:
        """The scheduler a decode steps with: `self.scheduler`, or a copy of it with x̂_0 clipping switched.

        `clip_sample=None` (default): guided decodes (γ > 0) do not clip x̂_0 nor threshold it, whatever the
        scheduler's config says (clipping pulls x̂_0 back inside [-1, 1] at every step against the encoder term; the
        measurements are in docs/results.md); it is logged once. With γ = 0 the scheduler is used as it is, so the
        pipeline is the unconditional sampler bit for bit. `True` / `False` clip (as `clip_sample=True` in the
        scheduler's config) or not, for any γ."""
        scheduler = self.scheduler
        config = scheduler.config
        clips = bool(config.get("clip_sample", False)) or bool(config.get("thresholding", False))
        if clip_sample is None:
            if guidance_scale == 0 or not clips:
                return scheduler
            if not self._warned_clipping:
                logger.warning(
                    f"The scheduler's config asks to clip x̂_0 ({type(scheduler).__name__}: clip_sample="
                    f"{config.get('clip_sample')}, thresholding={config.get('thresholding')}); guided decodes do not "
                    "clip, because clipping fights the encoder term. Pass clip_sample=True to clip."
                )
                self._warned_clipping = True
            clip_sample = False
        if clip_sample:
            if "clip_sample" not in config:
                raise ValueError(
                    f"clip_sample=True, but {type(scheduler).__name__} has no x̂_0 clipping (no `clip_sample` in its "
                    "config); use a scheduler that has one (DDPM, DDIM, ...) or leave clip_sample at None."
                )
            if config.get("clip_sample"):
                return scheduler
            return type(scheduler).from_config(config, clip_sample=True)
        if not clips:
            return scheduler
        return type(scheduler).from_config(
            config, **{name: False for name in ("clip_sample", "thresholding") if name in config}
        )

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_log_snr_range(self) -> tuple[float, float] | None:
        return self._guidance_log_snr_range

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the samples the UNet models (the autoencoder's latents with a `vae`)."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, height, width)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the pipeline reads and writes: the UNet's samples, or with a `vae`
        its pixel images (`sample_size` × 2^(blocks − 1), the autoencoder's `in_channels`)."""
        channels, height, width = self.latent_shape
        vae = getattr(self, "vae", None)
        if vae is None:
            return (channels, height, width)
        factor = vae_scale_factor(vae)
        return (vae.config.in_channels, height * factor, width * factor)

    def prepare_image_latents(self, image) -> torch.Tensor:
        """x_0 in the UNet's space for `image`: [`~ScoreVAEPipeline.preprocess`], then with a `vae` its encoding
        (the UNet's latents, [`~diffusers_scorevae.autoencoders.vae_encode`]); float32 on the execution device."""
        sample = self.preprocess(image)
        if getattr(self, "vae", None) is None:
            return sample
        return vae_encode(self.vae, sample).float().to(sample.device)

    def preprocess(self, image) -> torch.Tensor:
        """Turn `image` into a float tensor `(batch_size, C, H, W)` in model space [-1, 1] on the execution device
        (with a `vae`: pixel images at its resolution, before the autoencoder).

        Accepts a PIL image (any mode; converted to the UNet's channel count) or a list of them, a numpy array
        `(H, W, C)` / `(B, H, W, C)` (float in [0, 1], or uint8 in [0, 255]), a tensor `(C, H, W)` / `(B, C, H, W)` in
        [0, 1], or a list of arrays/tensors. Nothing is resized or clipped: a wrong size, channel count, range or a
        non-finite value is a `ValueError`.
        """
        channels, height, width = self.image_shape
        if isinstance(image, (list, tuple)):
            if len(image) == 0:
                raise ValueError("image is an empty list; pass at least one image.")
            return torch.cat([self.preprocess(item) for item in image])
        if isinstance(image, PIL.Image.Image):
            if channels not in _PIL_MODES:
                raise ValueError(f"PIL images can be converted to 1, 3 or 4 channels, but the UNet has {channels}.")
            if image.size != (width, height):
                raise ValueError(
                    f"image has size {image.size[0]}x{image.size[1]} (width x height); the UNet models "
                    f"{width}x{height} images. Resize or pad it first (nothing is resized silently; "
                    "`diffusers_scorevae.evaluation.center_pad` pads with black)."
                )
            array = np.asarray(image.convert(_PIL_MODES[channels]), dtype=np.float32) / 255.0
            tensor = torch.from_numpy(array.reshape(height, width, channels)).permute(2, 0, 1)[None]
        elif isinstance(image, np.ndarray):
            array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
            if array.ndim == 3:
                array = array[None]
            if array.ndim != 4:
                raise ValueError(f"image is a numpy array of shape {image.shape}; expected (H, W, C) or (B, H, W, C).")
            tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
        elif isinstance(image, torch.Tensor):
            tensor = image[None] if image.ndim == 3 else image
            if tensor.ndim != 4:
                raise ValueError(
                    f"image is a tensor of shape {tuple(image.shape)}; expected (C, H, W) or (B, C, H, W)."
                )
        else:
            raise TypeError(
                f"image has type {type(image).__name__}; expected a PIL image, a numpy array, a torch tensor or a "
                "list of them."
            )
        if tuple(tensor.shape[1:]) != (channels, height, width):
            raise ValueError(
                f"image has (channels, height, width) = {tuple(tensor.shape[1:])}; the UNet models "
                f"{(channels, height, width)}. Nothing is resized, padded or converted silently "
                "(`diffusers_scorevae.evaluation.center_pad` pads smaller images with black)."
            )
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise ValueError("image contains NaN or infinite values.")
        low, high = tensor.min().item(), tensor.max().item()
        if low < 0 or high > 1:
            raise ValueError(f"image values span [{low:.4g}, {high:.4g}]; expected images in [0, 1].")
        return (tensor * 2 - 1).to(self._execution_device)

    @torch.no_grad()
    def encode(
        self,
        image,
        sample_posterior: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        r"""
        Encode images to latent codes with q_φ(z | x_0) at the encoder's clean noise level (`clean_log_snr`); with a
        `vae`, x_0 is the images' autoencoder latents.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                Images in [0, 1] (see [`~ScoreVAEPipeline.preprocess`]).
            sample_posterior (`bool`, *optional*, defaults to `False`):
                Return a sample z ~ q_φ(z | x_0) instead of its mean.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Randomness for `sample_posterior=True`; a list means one generator per image.

        Returns:
            `torch.Tensor`: latent codes of shape `(batch_size, latent_dim)`.
        """
        sample = self.prepare_image_latents(image).to(self.encoder.dtype)
        posterior = self.encoder(sample, self.encoder.config.clean_log_snr)
        if not sample_posterior:
            return posterior.mean
        self._check_generator(generator, sample.shape[0])
        noise = randn_tensor(posterior.mean.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return posterior.mean + torch.exp(0.5 * posterior.logvar) * noise

    def prepare_latent_codes(self, latent_codes) -> torch.Tensor:
        """Validate `latent_codes` (`(B, latent_dim)`, or a list of `(1, latent_dim)` / `(latent_dim,)` tensors)."""
        latent_dim = self.encoder.config.latent_dim
        if isinstance(latent_codes, (list, tuple)):
            if len(latent_codes) == 0 or not all(isinstance(z, torch.Tensor) for z in latent_codes):
                raise ValueError("latent_codes as a list must hold one or more torch tensors.")
            latent_codes = torch.cat([z.reshape(1, -1) if z.ndim == 1 else z for z in latent_codes])
        if not isinstance(latent_codes, torch.Tensor):
            raise TypeError(f"latent_codes has type {type(latent_codes).__name__}; expected a torch.Tensor.")
        if latent_codes.ndim != 2 or latent_codes.shape[1] != latent_dim:
            raise ValueError(
                f"latent_codes has shape {tuple(latent_codes.shape)}; expected (batch_size, {latent_dim}) for this "
                f"encoder's latent_dim={latent_dim}."
            )
        if not torch.isfinite(latent_codes).all():
            raise ValueError("latent_codes contains NaN or infinite values.")
        return latent_codes.to(self._execution_device, self.encoder.dtype)

    def prepare_extra_step_kwargs(self, generator, eta: float = 0.0, scheduler=None) -> dict:
        # not all schedulers' `step` take a generator (DDIM, DDPM, Euler ancestral, ... do; PNDM, LMS, ... do not);
        # eta (η) is DDIM's: passed where `step` accepts it, and a non-zero η for a scheduler without it is an error
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}.")
        scheduler = scheduler or self.scheduler
        parameters = set(inspect.signature(scheduler.step).parameters.keys())
        extra_step_kwargs = {"generator": generator} if "generator" in parameters else {}
        if "eta" in parameters:
            extra_step_kwargs["eta"] = eta
        elif eta != 0:
            raise ValueError(
                f"eta={eta!r} is only used by schedulers whose `step` takes `eta` (DDIMScheduler and its relatives); "
                f"{type(scheduler).__name__} does not. Leave eta at 0 or use DDIMScheduler."
            )
        return extra_step_kwargs

    def check_inputs(
        self,
        image,
        latent_codes,
        batch_size,
        num_inference_steps,
        guidance_scale,
        output_type,
        callback_on_step_end_tensor_inputs,
        guidance_log_snr_range=None,
        realism=None,
    ):
        if image is not None and latent_codes is not None:
            raise ValueError(
                "Pass either `image` (to reconstruct) or `latent_codes` (to decode), not both; with neither, codes "
                "are drawn from N(0, I)."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        check_decode_settings(guidance_scale, guidance_log_snr_range, None, realism)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not supported; choose one of {OUTPUT_TYPES}.")
        check_prior(self.unet, self.scheduler)  # components can be swapped after construction
        check_autoencoder(getattr(self, "vae", None))
        check_autoencoder_matches_unet(getattr(self, "vae", None), self.unet)
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be a subset of {self._callback_tensor_inputs}, got "
                f"{callback_on_step_end_tensor_inputs}."
            )

    @staticmethod
    def _check_generator(generator, batch_size: int):
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators, but the batch size is {batch_size}: pass one "
                "generator, or one per image."
            )

    def prepare_latents(self, batch_size, dtype, device, generator, latents=None, scheduler=None) -> torch.Tensor:
        """The initial noise x_T ~ N(0, I) (or `latents`), scaled by the scheduler's `init_noise_sigma`."""
        shape = (batch_size, *self.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"latents has shape {got}; expected {shape} (batch_size, channels, height, width).")
            if not torch.isfinite(latents).all():
                raise ValueError("latents contains NaN or infinite values.")
            latents = latents.to(device=device, dtype=dtype)
        return latents * init_noise_sigma(scheduler or self.scheduler)

    def guide(self, model_output, model_input, timestep, latent_codes) -> torch.Tensor:
        """Add the encoder's score to a UNet output: ε̂ − γ σ_t ∇_{x_t} log q_φ(z | x_t, λ_t), in the scheduler's
        `prediction_type` (docs/math.md §3). `model_input` is the VP-scaled sample the UNet saw. At steps
        `noise.guided_steps` does not select (outside `guidance_log_snr_range`, or of zero SNR) the UNet output is
        returned unchanged and the encoder does not run.

        With a flow prior the UNet output is the velocity and `model_input` the flow-scale sample x_σ: the result is
        v̂ − γ σ / (1 − σ) ∇_{x_σ} log q_φ(z | x_σ / c, λ) (docs/math.md §10), the same shift in ε-space, and at σ = 1
        the term's finite limit (guided when the range's low end is −∞)."""
        scheduler = getattr(self, "_scheduler_in_use", None) or self.scheduler
        if is_flow_scheduler(scheduler):
            sigma = flow_sigma(scheduler, timestep)
            log_snr = flow_log_snr(sigma)
            if not bool(guided_steps(log_snr, self.guidance_log_snr_range, zero_snr=True).all()):
                return model_output
            term = flow_encoder_term(self.encoder, model_input, sigma, latent_codes)
            return guide_velocity(model_output, term, log_snr, self.guidance_scale)
        log_snr = scheduler_log_snr(scheduler, timestep)
        if not bool(guided_steps(log_snr, self.guidance_log_snr_range).all()):
            return model_output
        score = encoder_score(self.encoder, model_input, log_snr.float(), latent_codes)
        prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        return guided_model_output(model_output, model_input, score, log_snr, self.guidance_scale, prediction_type)

    def postprocess(self, sample: torch.Tensor, output_type: str):
        """The final sample as `output_type`: `"latent"` returns it as is; otherwise it is decoded by the `vae` (if
        any) and mapped from [-1, 1] to images in [0, 1]."""
        if output_type == "latent":
            return sample
        if getattr(self, "vae", None) is not None:
            sample = vae_decode(self.vae, sample)
        image = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return self.numpy_to_pil(image) if output_type == "pil" else image

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image=None,
        latent_codes: torch.Tensor | list[torch.Tensor] | None = None,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
        guidance_log_snr_range: tuple[float, float] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        realism: float | None = None,
        clip_sample: bool | None = None,
    ) -> ScoreVAEPipelineOutput | tuple:
        r"""
        Reconstruct images (`image`), decode latent codes (`latent_codes`), or sample the ScoreVAE generative model
        (neither: z ~ N(0, I)).

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*):
                Images in [0, 1] to reconstruct: encoded to the mean code, then decoded. PIL images of any mode are
                converted to the UNet's channel count; sizes must match the UNet's `sample_size` (with a `vae`: its
                pixel resolution and channels, [`~ScoreVAEPipeline.image_shape`]).
            latent_codes (`torch.Tensor` of shape `(batch_size, latent_dim)` or a list of tensors, *optional*):
                Codes to decode. A list of `(1, latent_dim)` or `(latent_dim,)` tensors is concatenated.
            batch_size (`int`, *optional*, defaults to 1):
                Number of images to sample when neither `image` nor `latent_codes` is given.
            num_inference_steps (`int`, *optional*):
                Number of scheduler steps; ignored when `timesteps` or `sigmas` is given. `None`: the pipeline's saved
                default ([`~ScoreVAEPipeline.decode_defaults`]; 50 when none was saved).
            timesteps (`List[int]`, *optional*):
                Custom timesteps (descending) for schedulers whose `set_timesteps` accepts `timesteps` (e.g.
                [`DDPMScheduler`]), as in diffusers' pipelines; a scheduler that does not is a `ValueError`.
            sigmas (`List[float]`, *optional*):
                Custom sigmas for schedulers whose `set_timesteps` accepts `sigmas`; at most one of `timesteps` and
                `sigmas`.
            guidance_scale (`float`, *optional*):
                γ, the weight of the encoder's score. 1 is the ScoreVAE model; larger values act as an inverse
                temperature on q_φ(z | x_t) (as in classifier guidance); 0 (with realism 1, its default then) is the
                unconditional sampler, bit for bit. `None`: the value saved in the encoder's config (1 when none).
            guidance_log_snr_range (`Tuple[float, float]`, *optional*):
                `(low, high)`: apply the encoder term only at model calls whose log-SNR λ_t lies in the closed range
                [low, high] (either end may be infinite); the other steps are the prior's own and the encoder does not
                run there. Guidance in a limited interval of noise levels can improve samples (Kynkäänniemi et al.
                2024), and here it also saves the encoder's cost at unguided steps. `None`: the range saved in the
                encoder's config; every step when none was saved.
            eta (`float`, *optional*, defaults to 0.0):
                η of the DDIM paper (0: deterministic DDIM; 1: DDPM-like noise), passed to `scheduler.step` for
                [`DDIMScheduler`] and other schedulers whose `step` takes `eta`; a non-zero η with any other scheduler
                is a `ValueError`.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Makes decoding deterministic; a list means one generator per image. It draws the initial noise, then
                the codes when none are given, and is passed on to `scheduler.step`.
            latents (`torch.Tensor` of shape `(batch_size, C, H, W)`, *optional*):
                Initial noise x_T ~ N(0, I) in the UNet's sample shape ([`~ScoreVAEPipeline.latent_shape`]; scaled by
                `scheduler.init_noise_sigma` inside, as diffusers does). At realism < 1 it is the noise added to the
                mean estimate. The `latents` of a [`ScoreVAEInversionOutput`] (that very tensor) make the decode the
                deterministic DDIM pass the inversion inverted: the inversion's steps, γ and range are then the
                defaults, with its DDIM scheduler (η = 0) and realism 1.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` (images in [0, 1], decoded by the `vae` if there is one) or `"latent"` (the
                final sample in the UNet's space, not decoded).
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`ScoreVAEPipelineOutput`] instead of a tuple `(images, latent_codes)`.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; it may return
                replacements for the tensors in `callback_kwargs`.
            callback_on_step_end_tensor_inputs (`List[str]`, *optional*, defaults to `["latents"]`):
                Tensors passed to the callback, from `._callback_tensor_inputs` (`"latents"`, `"latent_codes"`).
            realism (`float`, *optional*):
                Where the decode sits between distortion and realism, in [0, 1] (docs/math.md §9). 1 is a posterior
                sample of p(x | z) from pure noise. Below 1 the decode starts from the encoder's mean decoder, its
                estimate of E[x_0 | z], noised to the level a fraction s of the way down the schedule (img2img's
                `strength`, s = s_0 + (1 − s_0) · realism, [`~ScoreVAEPipeline.realism_strength`]), and refines it
                with the guided reverse process over the last `int(num_inference_steps * s)` steps: fewer UNet
                evaluations, lower L2, less realism. At realism 0 with s_0 = 0 it returns the mean estimate itself (no
                UNet call). `None`: the value saved in the encoder's config (1 when none
                was saved, or when `guidance_scale=0` is passed). Below 1 needs an encoder with a mean decoder
                (`ScoreVAEEncoder.has_decoder`); otherwise it is a `ValueError`.
            clip_sample (`bool`, *optional*):
                `None`: guided decodes do not clip or threshold x̂_0, whatever the scheduler's config says (logged once
                when it asks to); with γ = 0 the scheduler runs as configured. `True` / `False`: clip x̂_0 to the
                scheduler's `clip_sample_range` or not.

        Examples:

        Returns:
            [`ScoreVAEPipelineOutput`] or `tuple`: the images and the latent codes that were decoded.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. resolve the settings (an explicit argument wins; `None` takes the inversion's for its latents, else the
        #    model's saved defaults) and check the inputs
        inversion = self._inversion_of(latents)
        defaults = dict(self.decode_defaults, **(inversion or {}))
        if guidance_scale is not None and guidance_scale == 0:
            defaults["realism"] = 1.0  # γ = 0 asks for the prior's own sampler
        settings = self.resolve_settings(
            num_inference_steps, guidance_scale, guidance_log_snr_range, realism, defaults=defaults
        )
        num_inference_steps, guidance_scale = settings["num_inference_steps"], settings["guidance_scale"]
        guidance_log_snr_range, realism = settings["guidance_log_snr_range"], settings["realism"]
        self.check_inputs(
            image,
            latent_codes,
            batch_size,
            num_inference_steps,
            guidance_scale,
            output_type,
            callback_on_step_end_tensor_inputs,
            guidance_log_snr_range,
            realism,
        )
        check_encoder_matches_unet(self.encoder, self.unet)
        if realism < 1 and not self.encoder.has_decoder:
            raise ValueError(
                f"realism={realism!r} starts the decode from the encoder's mean decoder (an estimate of E[x_0 | z]), "
                "but this pipeline's encoder has none (decoder_block_out_channels=None). Decode at realism=1, or use "
                "an encoder with a mean decoder (`encoder.with_decoder(beta_vae)`, docs/math.md §9)."
            )
        if clip_sample is not None and not isinstance(clip_sample, bool):
            raise ValueError(f"clip_sample must be None, True or False, got {clip_sample!r}.")
        self._guidance_scale = guidance_scale
        self._guidance_log_snr_range = log_snr_range(guidance_log_snr_range)
        self._interrupt = False
        device = self._execution_device
        scheduler = inversion["scheduler"] if inversion else self._decode_scheduler(guidance_scale, clip_sample)
        if inversion and clip_sample:
            raise ValueError("clip_sample=True cannot decode inverted latents: the inversion ran without clipping.")
        self._scheduler_in_use = scheduler

        # 2. encode the images, or take the given codes
        if image is not None:
            latent_codes = self.encode(image)
        elif latent_codes is not None:
            latent_codes = self.prepare_latent_codes(latent_codes)
        if latent_codes is not None:
            if batch_size not in (1, latent_codes.shape[0]):
                raise ValueError(
                    f"batch_size={batch_size} but {latent_codes.shape[0]} images/codes were given; leave batch_size "
                    "at 1 or make it match."
                )
            batch_size = latent_codes.shape[0]
        self._check_generator(generator, batch_size)

        # 3. set the timesteps (before the noise: `init_noise_sigma` depends on them); at realism < 1 keep the last
        #    int(num_inference_steps · realism) of them, as img2img keeps the last `strength` of the schedule
        timesteps, num_inference_steps = retrieve_timesteps(
            scheduler, num_inference_steps, device, timesteps=timesteps, sigmas=sigmas
        )
        flow = is_flow_scheduler(scheduler)
        if flow:
            check_flow_timesteps(scheduler)
        if realism < 1:
            timesteps = self.get_timesteps(scheduler, num_inference_steps, self.realism_strength(realism))
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta, scheduler)

        # 4. prepare the initial noise, then (with no image or codes) draw the codes z ~ N(0, I); at realism < 1 the
        #    start is the mean estimate of x_0 given z, noised to the first kept timestep
        latents = self.prepare_latents(batch_size, self.unet.dtype, device, generator, latents, scheduler)
        if latent_codes is None and (guidance_scale > 0 or realism < 1):
            latent_shape = (batch_size, self.encoder.config.latent_dim)
            latent_codes = randn_tensor(latent_shape, generator=generator, device=device, dtype=self.encoder.dtype)
        if realism < 1:
            latents = self.prepare_start(latent_codes, latents / init_noise_sigma(scheduler), timesteps, scheduler)

        # 5. denoising loop: UNet, encoder term, scheduler step
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_input = latents if flow else scheduler.scale_model_input(latents, t)
            model_output = self.unet(model_input, t).sample  # a flow prior's t: σ · num_train_timesteps (float)
            if guidance_scale > 0:
                model_output = self.guide(model_output, model_input, t, latent_codes)
            latents = scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample

            if callback_on_step_end is not None:
                callback_kwargs = {}
                for k in callback_on_step_end_tensor_inputs:
                    callback_kwargs[k] = locals()[k]
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                latents = callback_outputs.pop("latents", latents)
                latent_codes = callback_outputs.pop("latent_codes", latent_codes)

        # 6. post-process
        self._scheduler_in_use = None
        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images, latent_codes)
        return ScoreVAEPipelineOutput(images=images, latent_codes=latent_codes)

    def realism_strength(self, realism: float) -> float:
        """The fraction of the schedule a decode at `realism` < 1 refines (img2img's `strength`):
        s = s_0 + (1 − s_0) · realism, with s_0 the encoder's saved `strength_at_realism_zero` (the refinement of the
        mean estimate with the lowest L2, measured; 0 when none is saved)."""
        s_0 = self.encoder.config.get("strength_at_realism_zero") or 0.0
        return s_0 + (1 - s_0) * realism

    @staticmethod
    def get_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
        """The last `int(num_inference_steps · strength)` steps of `scheduler.timesteps` (set already), as diffusers'
        img2img pipelines keep the last `strength` of the schedule (`set_begin_index` where the scheduler has it)."""
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return scheduler.timesteps[t_start * scheduler.order :]

    def prepare_start(self, latent_codes, noise, timesteps, scheduler) -> torch.Tensor:
        """The start of a decode at realism < 1: the encoder's mean estimate x̂_0 = E[x_0 | z] (its mean decoder),
        noised to the first of `timesteps` by `scheduler.add_noise` with `noise` ~ N(0, I) (a flow prior's
        `scheduler.scale_noise`: (1 − σ) x̂_0 + σ ε); x̂_0 itself when no step is left (realism 0)."""
        mean = self.encoder.decode(latent_codes).to(noise.dtype)
        if len(timesteps) == 0:
            return mean
        if is_flow_scheduler(scheduler):
            if hasattr(scheduler, "scale_noise"):
                return scheduler.scale_noise(mean, timesteps[:1].repeat(mean.shape[0]), noise)
            sigma = flow_sigma(scheduler, timesteps[0]).item()  # the flow path itself, as `scale_noise` writes it
            return (1 - sigma) * mean + sigma * noise
        return scheduler.add_noise(mean, noise, timesteps[:1].repeat(mean.shape[0]))

    @torch.no_grad()
    def invert(
        self,
        image,
        latent_codes: torch.Tensor | list[torch.Tensor] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_log_snr_range: tuple[float, float] | None = None,
        num_fixed_point_iterations: int = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> ScoreVAEInversionOutput | tuple:
        r"""
        Invert the deterministic DDIM decode: run the probability-flow ODE of the *conditional* model backwards from
        the images to the initial noise x_T (DDIM inversion, with the same encoder term
        ε̂ − γ σ_t ∇ log q_φ(z | x_t, λ_t) at every guided step as the decode). `pipe(latent_codes=out.latent_codes,
        latents=out.latents)` then reconstructs the images with no other argument (the decode of these latents takes
        the inversion's settings and scheduler), up to the inversion's first-order error, which shrinks as the number
        of steps grows, and much faster with `num_fixed_point_iterations`.

        The inversion runs DDIM (η = 0) without x̂_0 clipping: the pipeline's scheduler when it is such a
        [`DDIMScheduler`], else a `DDIMScheduler` built from its config (same schedule, spacing and offset) with
        `clip_sample=False, thresholding=False` (a decode that clips x̂_0 at every step is many-to-one and cannot be
        inverted). The pipeline's scheduler is left unchanged.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                Images in [0, 1] (see [`~ScoreVAEPipeline.preprocess`]).
            latent_codes (`torch.Tensor` of shape `(batch_size, latent_dim)` or a list of tensors, *optional*):
                Codes to condition on; defaults to the encoder means of `image`.
            num_inference_steps (`int`, *optional*):
                Number of DDIM steps. `None`: the pipeline's saved default (`decode_defaults`).
            guidance_scale (`float`, *optional*):
                γ, the weight of the encoder's score (0 inverts the unconditional prior). `None`: the encoder's saved
                value.
            guidance_log_snr_range (`Tuple[float, float]`, *optional*):
                Apply the encoder term only at steps whose log-SNR lies in the closed range [low, high], by the same
                rule as the decode (the encoder does not run at the other steps). `None`: the encoder's saved
                `inversion_log_snr_range` (inverting the conditional ODE can need a narrower range than sampling).
            num_fixed_point_iterations (`int`, *optional*, defaults to 0):
                Refine each step by this many fixed-point iterations x_t ← DDIM⁻¹(x_prev; ε̂_cond(x_t, t)), which solve
                the DDIM step exactly where they converge (one more UNet and encoder call per step each). 0 is plain
                DDIM inversion, ε̂_cond taken at the sample in hand.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Unused (the inversion is deterministic); accepted so that calls mirror the pipeline's.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`ScoreVAEInversionOutput`] instead of a tuple `(latents, latent_codes)`.

        Returns:
            [`ScoreVAEInversionOutput`] or `tuple`: the initial noise x_T and the codes (and, in the output, the
            settings used).
        """
        # 1. resolve the settings (`None`: the saved defaults, the inversion's own log-SNR range) and check inputs
        settings = self.resolve_settings(num_inference_steps, guidance_scale, guidance_log_snr_range, inversion=True)
        num_inference_steps, guidance_scale = settings["num_inference_steps"], settings["guidance_scale"]
        guidance_log_snr_range = settings["guidance_log_snr_range"]
        self.check_inputs(
            None, latent_codes, 1, num_inference_steps, guidance_scale, "pt", None, guidance_log_snr_range
        )
        guidance_log_snr_range = log_snr_range(guidance_log_snr_range)
        scheduler = inversion_scheduler(self.scheduler)
        check_encoder_matches_unet(self.encoder, self.unet)
        if not isinstance(num_fixed_point_iterations, int) or num_fixed_point_iterations < 0:
            raise ValueError(
                f"num_fixed_point_iterations must be a non-negative integer, got {num_fixed_point_iterations!r}."
            )

        # 2. encode the images, or take the given codes
        sample = self.prepare_image_latents(image)  # float32: the inversion's arithmetic stays in full precision
        latent_codes = self.encode(image) if latent_codes is None else self.prepare_latent_codes(latent_codes)
        if latent_codes.shape[0] != sample.shape[0]:
            raise ValueError(
                f"{sample.shape[0]} images but {latent_codes.shape[0]} latent_codes; pass one code per image."
            )

        # 3. the decode's DDIM steps (a flow prior's Euler steps) in reverse, each solved for x_t with the conditional
        #    noise prediction (velocity)
        def epsilon_fn(x, t):
            timesteps = t.to(x.device).expand(x.shape[0])
            x = x.to(self.unet.dtype)
            epsilon, _ = guided_epsilon(
                self.unet, self.encoder, scheduler, x, timesteps, latent_codes, guidance_scale, guidance_log_snr_range
            )
            return epsilon

        def velocity_fn(x, t):
            timesteps = t.to(x.device).expand(x.shape[0])
            x = x.to(self.unet.dtype)
            return guided_velocity(
                self.unet, self.encoder, scheduler, x, timesteps, latent_codes, guidance_scale, guidance_log_snr_range
            )

        invert = flow_invert if is_flow_scheduler(scheduler) else ddim_invert
        model_fn = velocity_fn if is_flow_scheduler(scheduler) else epsilon_fn
        latents = invert(
            model_fn, sample, scheduler, num_inference_steps, num_fixed_point_iterations, self.progress_bar
        )
        latents = (latents / init_noise_sigma(scheduler)).to(self.unet.dtype)
        self.maybe_free_model_hooks()
        # x_T of a converged inversion looks like N(0, I) noise: per-image std ≈ 1 (± a few % for image-sized tensors)
        stds = latents.float().flatten(1).std(dim=1)
        if not torch.isfinite(stds).all() or stds.max() > 2.0:
            logger.warning(
                f"The inversion diverged: x_T has per-image std up to {stds.max().item():.3g} "
                "(N(0, I) noise has ≈ 1), so decoding it will not reproduce the images. "
                "The encoder's guidance is unstable along the inverse ODE at "
                "these noise levels; try a smaller guidance_scale, a guidance_log_snr_range that leaves out the noisy "
                "steps (e.g. (4.0, float('inf'))), or more num_inference_steps."
            )

        settings = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "guidance_log_snr_range": guidance_log_snr_range or (-math.inf, math.inf),
        }
        self._remember_inversion(latents, dict(settings, scheduler=scheduler, realism=1.0))
        if not return_dict:
            return (latents, latent_codes)
        return ScoreVAEInversionOutput(latents=latents, latent_codes=latent_codes, **settings)

    @torch.no_grad()
    def bits_per_dim(
        self,
        image,
        num_latent_samples: int = 1,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        num_sampled_timesteps: int | None = None,
    ) -> torch.Tensor:
        r"""
        An upper bound on −log p(x) of the ScoreVAE model (the negative ELBO), in bits per dimension, per image:

            −log p(x) ≤ E_q(z|x)[−log p(x | z)] + KL(q_φ(z | x) ‖ N(0, I))

        with −log p(x | z) bounded by the DDPM variational bound (Ho et al. 2020, eq. 5) of the conditional model over
        all T training steps of `scheduler.alphas_cumprod`: KL(q(x_T | x_0) ‖ N(0, I)), the per-step KLs with the
        guided noise prediction ε̂ − σ_t ∇ log q_φ(z | x_t, λ_t) and the scheduler's `variance_type` (default
        fixed_small, β̃_t), and a discretised Gaussian decoder for 8-bit data. Bits per dimension = nats / (C·H·W·ln 2),
        data scaled to [-1, 1] with bins of width 2/255. Compare with [`~ScoreVAEPipeline.prior_bits_per_dim`].

        The estimate is stochastic (one x_t per step and image, `num_latent_samples` codes z ~ q_φ(z | x)) and unbiased
        for the bound; the KL term is exact.

        With a `vae` (a latent-diffusion prior) this raises a `ValueError`: the prior then models continuous
        autoencoder latents, and no bound on the images' 8-bit likelihood follows from it.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                8-bit images in [0, 1] (values multiples of 1/255; anything else raises a `ValueError`).
            num_latent_samples (`int`, *optional*, defaults to 1):
                Codes z ~ q_φ(z | x) per image averaged in E_q[−log p(x | z)].
            generator (`torch.Generator`, *optional*):
                One generator for all randomness (codes, x_t, sampled timesteps).
            batch_size (`int`, *optional*, defaults to 256):
                (image, timestep) pairs per UNet call.
            num_sampled_timesteps (`int`, *optional*):
                Estimate the T−1 per-step KL terms from this many timesteps per image, drawn uniformly without
                replacement and weighted by (T−1)/n (unbiased, faster, noisier). Defaults to all of them.

        Returns:
            `torch.Tensor` of shape `(batch_size,)` (float64): the bound in bits per dimension.
        """
        # 1. check inputs
        x_start = self._check_bound_inputs(image, generator, batch_size, num_sampled_timesteps)
        if not isinstance(num_latent_samples, int) or num_latent_samples < 1:
            raise ValueError(f"num_latent_samples must be a positive integer, got {num_latent_samples!r}.")

        # 2. encode: q_φ(z | x_0) at the clean noise level, its KL to N(0, I), and codes z ~ q_φ(z | x_0)
        posterior = self.encoder(x_start.to(self.encoder.dtype), self.encoder.config.clean_log_snr)
        kl = kl_to_standard_normal(posterior.mean.double(), posterior.logvar.double())
        mean = posterior.mean.repeat_interleave(num_latent_samples, 0)
        std = torch.exp(0.5 * posterior.logvar).repeat_interleave(num_latent_samples, 0)
        latent_codes = mean + std * randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)

        # 3. the diffusion bound on −log p(x_0 | z) of the conditional model, averaged over the codes
        x_repeated = x_start.repeat_interleave(num_latent_samples, 0)
        nats = self._diffusion_bound_nats(x_repeated, latent_codes, generator, batch_size, num_sampled_timesteps)
        nats = nats.view(-1, num_latent_samples).mean(1) + kl.to(nats.device)
        return nats_to_bits_per_dim(nats, math.prod(self.image_shape))

    @torch.no_grad()
    def prior_bits_per_dim(
        self,
        image,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        num_sampled_timesteps: int | None = None,
    ) -> torch.Tensor:
        r"""
        The DDPM variational bound on −log p(x) of the unconditional prior alone (no encoder, no KL term), in bits per
        dimension, per image: the same bound as [`~ScoreVAEPipeline.bits_per_dim`] with the UNet's own noise
        prediction. Arguments as there.

        Returns:
            `torch.Tensor` of shape `(batch_size,)` (float64): the bound in bits per dimension.
        """
        x_start = self._check_bound_inputs(image, generator, batch_size, num_sampled_timesteps)
        nats = self._diffusion_bound_nats(x_start, None, generator, batch_size, num_sampled_timesteps)
        return nats_to_bits_per_dim(nats, math.prod(self.image_shape))

    def _check_bound_inputs(self, image, generator, batch_size, num_sampled_timesteps) -> torch.Tensor:
        if is_flow_scheduler(self.scheduler):
            raise ValueError(
                "bits_per_dim / prior_bits_per_dim compute the DDPM variational bound over the T discrete steps of a "
                "variance-preserving training schedule (`alphas_cumprod`), but this pipeline's prior is a "
                f"flow-matching model ({type(self.scheduler).__name__}): it has no such discrete-time bound, and none "
                "is computed. Use a DDPM-family prior for the bound."
            )
        if getattr(self, "vae", None) is not None:
            raise ValueError(
                f"bits_per_dim / prior_bits_per_dim bound the likelihood of 8-bit pixel data (a discretised decoder "
                f"on the pixel bins), but this pipeline's prior models the continuous latents of its vae "
                f"({type(self.vae).__name__}): there the bound would be a density of latents, not a likelihood of the "
                f"images, and it is not computed. Use a pixel-space pipeline (vae=None)."
            )
        check_encoder_matches_unet(self.encoder, self.unet)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be one torch.Generator or None, got {type(generator).__name__}.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        num_kl = len(self.scheduler.alphas_cumprod) - 1
        if num_sampled_timesteps is not None and (
            not isinstance(num_sampled_timesteps, int) or not 1 <= num_sampled_timesteps <= num_kl
        ):
            raise ValueError(
                f"num_sampled_timesteps must be an integer in [1, {num_kl}] (or None for all), got "
                f"{num_sampled_timesteps!r}."
            )
        return check_8bit(self.preprocess(image))

    def _diffusion_bound_nats(self, x_start, latent_codes, generator, batch_size, num_sampled_timesteps):
        guidance_scale = 0.0 if latent_codes is None else 1.0

        def epsilon_fn(sample, timesteps, rows):
            codes = None if latent_codes is None else latent_codes[rows]
            return guided_epsilon(self.unet, self.encoder, self.scheduler, sample, timesteps, codes, guidance_scale)

        bound = DiffusionBound.from_scheduler(self.scheduler)
        nats = diffusion_bound(
            epsilon_fn, x_start, bound, generator, batch_size or 256, num_sampled_timesteps, self.unet.dtype
        )
        self.maybe_free_model_hooks()
        return nats


SUPPORTED_PRIORS = (
    "an unconditional UNet2DModel (num_class_embeds=None, class_embed_type=None, time_embedding_type not "
    "'fourier') that predicts epsilon, v or the sample, with a variance-preserving diffusers scheduler that has "
    "`alphas_cumprod` (DDPM, DDIM, PNDM, DPM-Solver, UniPC, DEIS, Euler, Heun, KDPM2, LMS, ...), or one that predicts "
    "the flow-matching velocity with FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler, in pixel "
    "space or over the latents of a VQModel / AutoencoderKL (`vae=`)"
)
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "LTXEulerAncestralRFScheduler")


def init_noise_sigma(scheduler) -> float:
    """The scale of a scheduler's initial noise (`init_noise_sigma`; flow schedulers start from N(0, I): 1)."""
    return getattr(scheduler, "init_noise_sigma", 1.0)


def check_flow_scheduler(scheduler: SchedulerMixin):
    """Raise a `ValueError` for a flow-matching scheduler the pipeline cannot guide exactly (docs/math.md §10): a class
    other than `FLOW_SCHEDULERS`, resolution-dependent `use_dynamic_shifting` (the pipeline passes no `mu`),
    `stochastic_sampling` (its step replaces x_σ by fresh noise around the mean x̂_0, which samples no model's
    distribution), `s_noise` other than 1 and `invert_sigmas` (timesteps that are not σ · num_train_timesteps)."""
    name = type(scheduler).__name__
    if name not in FLOW_SCHEDULERS:
        raise ValueError(
            f"scheduler is a {name}, a flow-matching scheduler whose step the pipeline cannot guide exactly; use one "
            f"of {FLOW_SCHEDULERS} (e.g. `FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)`)."
        )
    config = scheduler.config
    refused = {
        "use_dynamic_shifting": "resolution-dependent shifting needs `mu`, which this pipeline does not take: set "
        "use_dynamic_shifting=False and a fixed `shift`",
        "stochastic_sampling": "its step draws x at the next level as fresh noise around x̂_0, a mean and not a "
        "sample, which does not sample the model's distribution even unguided (it suits models whose output is a "
        "sample): set stochastic_sampling=False, or use LTXEulerAncestralRFScheduler for ancestral sampling",
        "invert_sigmas": "its timesteps are not σ · num_train_timesteps: set invert_sigmas=False",
    }
    for key, reason in refused.items():
        if config.get(key):
            raise ValueError(f"scheduler {name} has {key}=True, which ScoreVAEPipeline does not support: {reason}.")
    if config.get("s_noise", 1.0) != 1.0:
        raise ValueError(
            f"scheduler {name} has s_noise={config.get('s_noise')!r}: noise scaled away from 1 no longer samples the "
            "model's distribution, guided or not; ScoreVAEPipeline supports s_noise=1.0."
        )


def check_flow_timesteps(scheduler: SchedulerMixin):
    """Raise a `ValueError` unless every timestep of a flow scheduler (set already) is σ · num_train_timesteps of the
    σ its step uses: custom `timesteps` passed without their `sigmas` break it (diffusers warns), and the encoder
    term would be taken at the wrong noise level."""
    sigmas = scheduler.sigmas[:-1].to(scheduler.timesteps.device)  # Heun's too: both hold each inner level twice
    expected = sigmas.float() * scheduler.config.num_train_timesteps
    if expected.shape != scheduler.timesteps.shape or not torch.allclose(
        scheduler.timesteps.float(), expected, rtol=1e-4, atol=1e-3
    ):
        raise ValueError(
            f"The flow scheduler's timesteps {scheduler.timesteps.tolist()} are not σ · num_train_timesteps of its "
            f"sigmas {scheduler.sigmas.tolist()} (custom `timesteps` without `sigmas`?): pass `sigmas` instead, so "
            "that the encoder term is taken at the noise level each step uses."
        )


def check_prior(unet: UNet2DModel, scheduler: SchedulerMixin):
    """Raise a `ValueError` for a prior the pipeline cannot decode with: a class-conditional UNet
    (`num_class_embeds` / `class_embed_type`), a variance-exploding score model (`time_embedding_type="fourier"`, as
    google/ncsnpp-*, whose UNet outputs the score), or a scheduler without a variance-preserving training schedule
    (`ScoreSdeVeScheduler`, ...)."""
    if unet is None or scheduler is None:
        raise ValueError("ScoreVAEPipeline needs both a `unet` and a `scheduler`; got None.")
    config = unet.config
    num_class_embeds = getattr(config, "num_class_embeds", None)
    class_embed_type = getattr(config, "class_embed_type", None)
    if num_class_embeds is not None or class_embed_type is not None:
        raise ValueError(
            f"unet is class-conditional (num_class_embeds={num_class_embeds!r}, class_embed_type={class_embed_type!r})"
            f"; ScoreVAE decodes with an unconditional prior. Supported: {SUPPORTED_PRIORS}."
        )
    time_embedding_type = getattr(config, "time_embedding_type", "positional")
    if time_embedding_type == "fourier":
        raise ValueError(
            "unet has time_embedding_type='fourier': a variance-exploding score model (as google/ncsnpp-*, whose "
            "UNet2DModel divides its output by the noise level sigma and returns the score, not a noise prediction), "
            f"which this pipeline does not support. Supported: {SUPPORTED_PRIORS}."
        )
    if is_flow_scheduler(scheduler):
        check_flow_scheduler(scheduler)
        return
    flow_config = {key: scheduler.config.get(key) for key in ("use_flow_sigmas", "prediction_type")}
    if flow_config["use_flow_sigmas"] or flow_config["prediction_type"] == "flow_prediction":
        raise ValueError(
            f"scheduler is a {type(scheduler).__name__} in flow-sigma mode ({flow_config}): its timesteps follow flow "
            "sigmas while its `alphas_cumprod` table still follows its betas, so the noise level of a step cannot be "
            "read from it and the encoder term would be taken at the wrong log-SNR. Decode a flow prior with "
            "FlowMatchEulerDiscreteScheduler or FlowMatchHeunDiscreteScheduler."
        )
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise ValueError(
            f"scheduler is a {type(scheduler).__name__}, which has no variance-preserving training schedule "
            f"(`alphas_cumprod`); variance-exploding (ScoreSdeVeScheduler) and continuous-time score-SDE schedulers "
            f"are not supported. Supported: {SUPPORTED_PRIORS}."
        )


def check_encoder_matches_unet(encoder: ScoreVAEEncoder, unet: UNet2DModel):
    """Raise a `ValueError` unless `encoder` models images of the UNet's channel count and size."""
    if encoder is None or unet is None:
        raise ValueError("ScoreVAEPipeline needs both a `unet` and an `encoder`; got None.")

    def hw(size):
        return (size, size) if isinstance(size, int) else tuple(size)

    encoder_shape = (encoder.config.in_channels, *hw(encoder.config.sample_size))
    unet_shape = (unet.config.in_channels, *hw(unet.config.sample_size))
    if encoder_shape != unet_shape:
        raise ValueError(
            f"encoder models images of (channels, height, width) = {encoder_shape} but the unet models {unet_shape}; "
            "use an encoder trained for this UNet's image size and channels."
        )
