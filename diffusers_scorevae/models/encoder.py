"""ScoreVAEEncoder: the time-dependent Gaussian encoder q_φ(z | x_t, λ) of ScoreVAE (arXiv 2304.12141)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin  # keep: diffusers' pipeline loader looks it up here
from diffusers.models.unets.unet_2d_blocks import get_down_block
from diffusers.utils import BaseOutput
from torch import nn

from ..hub.mixins import ScoreVAEHubMixin
from ..noise import check_log_snr_range, log_snr_range_to_config
from .decoder import ConvDecoder


@dataclass
class ScoreVAEEncoderOutput(BaseOutput):
    """
    The output of [`ScoreVAEEncoder`]: the Gaussian q_φ(z | x_t, λ) = N(mean, diag exp(logvar)).

    Args:
        mean (`torch.Tensor` of shape `(batch_size, latent_dim)`):
            The mean μ_φ(x_t, λ).
        logvar (`torch.Tensor` of shape `(batch_size, latent_dim)`):
            The log-variance ℓ_φ(x_t, λ) of the diagonal covariance.
    """

    mean: torch.Tensor
    logvar: torch.Tensor


def _downsampled_size(size: int, num_downsamples: int) -> int:
    # diffusers' Downsample2D is a 3x3 convolution with stride 2 and padding 1: n -> ceil(n / 2)
    for _ in range(num_downsamples):
        size = (size + 1) // 2
    return size


class ScoreVAEEncoder(ScoreVAEHubMixin, ModelMixin, ConfigMixin):
    r"""
    The encoder of ScoreVAE: a Gaussian q_φ(z | x_t, λ) over latent codes z, conditioned on a noisy image x_t (the
    VP-scaled input a diffusers UNet sees) and its noise level λ = log(ᾱ / (1 − ᾱ)) (log-SNR). Conditioning on λ rather
    than on a timestep index makes one encoder usable with any prior and scheduler over the same data
    (docs/math.md §1).

    Built from diffusers' own blocks: a sinusoidal embedding of λ feeds a `TimestepEmbedding`, a stack of down blocks
    (`get_down_block`, as `UNet2DModel` builds its encoder half) reduces the image, and a linear head maps the final
    feature map to the mean and log-variance. The head starts at zero, so an untrained encoder is q = N(0, I) for every
    input: its score is zero and decoding starts as unconditional sampling.

    Sizing: the cost that matters is one forward and one backward of the encoder per decoding step, next to one UNet
    forward. The defaults (4 blocks of widths 32-64-128-128, one layer each, about 0.8M parameters plus the head) cost
    a few percent of `google/ddpm-cifar10-32`'s 35.7M-parameter UNet per step; scale `block_out_channels` with the UNet
    you wrap and check `benchmarks/bench_decode.py`.

    Loading and pushing: `from_pretrained` takes a Hub repo id or a folder (with `subfolder="encoder"` for a pipeline's
    encoder), as any diffusers model; `push_to_hub` uploads safetensors and a model card
    ([`~diffusers_scorevae.hub.ScoreVAEHubMixin`]).

    Parameters:
        sample_size (`int` or `Tuple[int, int]`, *optional*, defaults to 32):
            Height and width of the input images; must match the UNet's `sample_size`.
        in_channels (`int`, *optional*, defaults to 3):
            Number of image channels; must match the UNet's `in_channels`.
        latent_dim (`int`, *optional*, defaults to 32):
            Dimension of the latent code z.
        down_block_types (`Tuple[str]`, *optional*, defaults to four `"DownBlock2D"`):
            diffusers down block types (`"DownBlock2D"`, `"AttnDownBlock2D"`, ...); all but the last downsample by 2.
        block_out_channels (`Tuple[int]`, *optional*, defaults to `(32, 64, 128, 128)`):
            Output channels of each down block.
        layers_per_block (`int`, *optional*, defaults to 1):
            ResNet layers per down block.
        norm_num_groups (`int`, *optional*, defaults to 8):
            Groups of the group normalisations.
        norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the group normalisations.
        act_fn (`str`, *optional*, defaults to `"silu"`):
            Activation function.
        attention_head_dim (`int`, *optional*, defaults to 8):
            Head dimension of attention blocks, when `down_block_types` has any.
        log_snr_embedding_scale (`float`, *optional*, defaults to 20.0):
            λ is multiplied by this before the sinusoidal embedding (whose frequencies are made for values of order
            1-1000, like timestep indices).
        clean_log_snr (`float`, *optional*, defaults to 10.0):
            The noise level λ at which clean images are encoded (the code of an image is q_φ(z | x_0, clean_log_snr)).
            ᾱ = sigmoid(10) ≈ 0.99995, beyond the first step of the usual DDPM schedules.
        prior (`dict`, *optional*):
            A JSON-friendly record of the prior this encoder was trained against (repo id or description, noise
            schedule, resolution), written by the training script; informational only (model cards and
            [`~diffusers_scorevae.hub.describe_prior_compatibility`] read it).
        guidance_scale (`float`, *optional*):
            The γ this encoder decodes best with: [`ScoreVAEPipeline`] uses it whenever its `guidance_scale` argument
            is `None`. Saved here, not with the pipeline, so that it survives a prior swap
            (`ScoreVAEPipeline.from_pretrained(prior, encoder=encoder)`) and an encoder pushed alone. `None`: γ = 1.
        guidance_log_snr_range (`Tuple[float, float]`, *optional*):
            The log-SNR range where the decode applies the encoder term by default (`None` for an end: unbounded).
            `None`: every step.
        inversion_log_snr_range (`Tuple[float, float]`, *optional*):
            The same for [`~ScoreVAEPipeline.invert`] and interpolation (inverting the conditional ODE can need a
            narrower range than sampling). `None`: `guidance_log_snr_range`.
        realism (`float`, *optional*):
            The default realism of a decode, in [0, 1] (docs/math.md §9); below 1 it needs the mean decoder
            (`decoder_block_out_channels`). `None`: 1, a posterior sample.
        decoder_block_out_channels (`Tuple[int]`, *optional*):
            Widths of an optional mean decoder, codes -> an estimate of E[x_0 | z] in model space (the layers of
            [`BetaVAE`]'s decoder, so a β-VAE's decoder loads into it). It travels with the encoder because it reads
            the encoder's codes; [`ScoreVAEPipeline`] starts decodes at realism < 1 from it. `None`: no decoder.
        strength_at_realism_zero (`float`, *optional*):
            s_0, the fraction of the schedule over which a decode at realism 0 refines the mean estimate (the
            refinement of lowest L2, measured for this encoder and decoder); realism r refines over
            s_0 + (1 − s_0) · r. `None`: 0, the mean estimate itself.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] = 32,
        in_channels: int = 3,
        latent_dim: int = 32,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"),
        block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        norm_eps: float = 1e-5,
        act_fn: str = "silu",
        attention_head_dim: int = 8,
        log_snr_embedding_scale: float = 20.0,
        clean_log_snr: float = 10.0,
        prior: dict | None = None,
        guidance_scale: float | None = None,
        guidance_log_snr_range: tuple[float | None, float | None] | None = None,
        inversion_log_snr_range: tuple[float | None, float | None] | None = None,
        realism: float | None = None,
        decoder_block_out_channels: tuple[int, ...] | None = None,
        strength_at_realism_zero: float | None = None,
    ):
        super().__init__()
        check_decode_settings(guidance_scale, guidance_log_snr_range, inversion_log_snr_range, realism)
        if strength_at_realism_zero is not None and (
            isinstance(strength_at_realism_zero, bool)
            or not isinstance(strength_at_realism_zero, (int, float))
            or not 0 <= strength_at_realism_zero < 1
        ):
            raise ValueError(
                f"strength_at_realism_zero must be a number in [0, 1) or None, got {strength_at_realism_zero!r}."
            )
        if realism is not None and realism < 1 and decoder_block_out_channels is None:
            raise ValueError(
                f"realism={realism!r} below 1 starts decodes from the mean decoder, but this encoder has none "
                "(decoder_block_out_channels=None); save realism=None (or 1), or give it a decoder."
            )
        if len(down_block_types) != len(block_out_channels):
            raise ValueError(
                f"down_block_types has {len(down_block_types)} entries and "
                f"block_out_channels {len(block_out_channels)}"
                "; they must have the same length."
            )
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}.")
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        time_embed_dim = block_out_channels[0] * 4

        # input
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)

        # noise level
        self.log_snr_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.log_snr_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)

        # down
        self.down_blocks = nn.ModuleList([])
        output_channel = block_out_channels[0]
        for i, down_block_type in enumerate(down_block_types):
            input_channel = output_channel
            output_channel = block_out_channels[i]
            is_final_block = i == len(block_out_channels) - 1
            self.down_blocks.append(
                get_down_block(
                    down_block_type,
                    num_layers=layers_per_block,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final_block,
                    resnet_eps=norm_eps,
                    resnet_act_fn=act_fn,
                    resnet_groups=norm_num_groups,
                    attention_head_dim=attention_head_dim,
                    downsample_padding=1,
                )
            )

        # out
        num_downsamples = len(block_out_channels) - 1
        final_size = _downsampled_size(height, num_downsamples) * _downsampled_size(width, num_downsamples)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.proj_out = nn.Linear(block_out_channels[-1] * final_size, 2 * latent_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

        # decode settings as JSON stores them (`null` for an unbounded end of a range)
        self.register_to_config(
            guidance_log_snr_range=log_snr_range_to_config(guidance_log_snr_range),
            inversion_log_snr_range=log_snr_range_to_config(inversion_log_snr_range),
        )

        # mean decoder (optional)
        self.decoder = None
        if decoder_block_out_channels is not None:
            if height != width:
                raise ValueError(f"the mean decoder makes square images; sample_size is {sample_size!r}.")
            self.decoder = ConvDecoder(height, in_channels, latent_dim, decoder_block_out_channels, norm_num_groups)

    def forward(
        self, sample: torch.Tensor, log_snr: torch.Tensor | float, return_dict: bool = True
    ) -> ScoreVAEEncoderOutput | tuple:
        r"""
        Args:
            sample (`torch.Tensor` of shape `(batch_size, in_channels, height, width)`):
                The VP-scaled noisy image x_t = α x_0 + σ ε (what the UNet sees), or a clean image in [-1, 1].
            log_snr (`float` or `torch.Tensor` of shape `()` or `(batch_size,)`):
                The noise level λ = log(α² / σ²) of `sample`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`ScoreVAEEncoderOutput`] instead of a tuple `(mean, logvar)`.

        Returns:
            [`ScoreVAEEncoderOutput`] or `tuple`: the mean and log-variance, each `(batch_size, latent_dim)`.
        """
        expected = (self.config.in_channels, *self._sample_hw())
        if sample.ndim != 4 or tuple(sample.shape[1:]) != expected:
            raise ValueError(
                f"sample has shape {tuple(sample.shape)}; the encoder expects "
                f"(batch_size, {', '.join(map(str, expected))})."
            )
        batch_size = sample.shape[0]

        # 1. noise level
        log_snr = torch.as_tensor(log_snr, device=sample.device)
        if log_snr.ndim == 0:
            log_snr = log_snr.expand(batch_size)
        elif log_snr.shape != (batch_size,):
            raise ValueError(
                f"log_snr has shape {tuple(log_snr.shape)}; expected a float, a 0-d tensor or shape ({batch_size},)."
            )
        emb = self.log_snr_proj(log_snr.float() * self.config.log_snr_embedding_scale)
        emb = self.log_snr_embedding(emb.to(dtype=self.dtype))

        # 2. input
        hidden_states = self.conv_in(sample.to(self.dtype))

        # 3. down
        for down_block in self.down_blocks:
            hidden_states, _ = down_block(hidden_states=hidden_states, temb=emb)

        # 4. out
        hidden_states = self.conv_act(self.conv_norm_out(hidden_states))
        mean, logvar = self.proj_out(hidden_states.flatten(1)).chunk(2, dim=1)

        if not return_dict:
            return (mean, logvar)
        return ScoreVAEEncoderOutput(mean=mean, logvar=logvar)

    @property
    def has_decoder(self) -> bool:
        """Whether the encoder carries a mean decoder (`decoder_block_out_channels`)."""
        return self.decoder is not None

    def decode(self, latent_codes: torch.Tensor) -> torch.Tensor:
        """The mean decoder's estimate of E[x_0 | z] for codes `(batch_size, latent_dim)`: images
        `(batch_size, C, H, W)` in model space (the UNet's; with a latent prior, its latents). A `ValueError` without
        a decoder."""
        if self.decoder is None:
            raise ValueError(
                "this encoder has no mean decoder (decoder_block_out_channels=None): decodes at realism < 1 start "
                "from its estimate of E[x_0 | z]. Attach one (`encoder.with_decoder(beta_vae)`) or decode at "
                "realism=1."
            )
        return self.decoder(latent_codes.to(self.dtype))

    def with_decoder(self, beta_vae, **settings) -> "ScoreVAEEncoder":
        """A copy of this encoder that carries `beta_vae`'s decoder as its mean decoder (same weights), with config
        `settings` (e.g. `realism=0.1`) updated. The β-VAE must decode codes of this encoder's size and images of its
        shape; its decoder then reads this encoder's codes (best when it is the β-VAE this encoder was fitted to)."""
        beta_config = beta_vae.config
        wanted = (self.config.latent_dim, self.config.in_channels, self._sample_hw()[0])
        got = (beta_config.latent_dim, beta_config.in_channels, beta_config.sample_size)
        if wanted != got:
            raise ValueError(
                f"beta_vae decodes (latent_dim, channels, size) = {got}, but this encoder needs {wanted}."
            )
        if beta_config.norm_num_groups != self.config.norm_num_groups:
            raise ValueError(
                f"beta_vae's norm_num_groups {beta_config.norm_num_groups} differs from the encoder's "
                f"{self.config.norm_num_groups}; the mean decoder shares the encoder's."
            )
        encoder = self.with_config(decoder_block_out_channels=tuple(beta_config.block_out_channels), **settings)
        decoder = {k: v for k, v in beta_vae.state_dict().items() if not k.startswith("encoder.")}
        encoder.decoder.load_state_dict(decoder)
        return encoder

    def with_config(self, **changes) -> "ScoreVAEEncoder":
        """A copy of this encoder with config `changes` (decode settings, or `decoder_block_out_channels` to add or
        reshape the mean decoder), on the same device and dtype, with this encoder's weights: all of them, except a
        mean decoder that is new or of another shape, which starts from its initialisation."""
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        config.update(changes)
        encoder = type(self)(**config).to(self.device, self.dtype)
        state = self.state_dict()
        widths = tuple(self.config.decoder_block_out_channels or ())
        if self.decoder is not None and tuple(config["decoder_block_out_channels"] or ()) == widths:
            encoder.load_state_dict(state)
        else:
            encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("decoder.")}, strict=False)
        return encoder

    def _sample_hw(self) -> tuple[int, int]:
        size = self.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)


def check_decode_settings(
    guidance_scale=None, guidance_log_snr_range=None, inversion_log_snr_range=None, realism=None
):
    """Raise a `ValueError` naming the setting unless each decode setting is `None` or valid: γ a finite number >= 0,
    the ranges `(low, high)` (`noise.log_snr_range`), realism a number in [0, 1]."""
    if guidance_scale is not None and (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, (int, float))
        or not math.isfinite(guidance_scale)
        or guidance_scale < 0
    ):
        raise ValueError(
            f"guidance_scale must be a finite number >= 0 (0 = unconditional, 1 = the ScoreVAE model), got "
            f"{guidance_scale!r}."
        )
    check_log_snr_range(guidance_log_snr_range, "guidance_log_snr_range")
    check_log_snr_range(inversion_log_snr_range, "inversion_log_snr_range")
    if realism is not None and (
        isinstance(realism, bool) or not isinstance(realism, (int, float)) or not 0 <= realism <= 1
    ):
        raise ValueError(
            f"realism must be a number in [0, 1] (1 = a posterior sample, 0 = the lowest-L2 reconstruction), got "
            f"{realism!r}."
        )
