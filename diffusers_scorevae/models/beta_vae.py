"""A β-VAE baseline: the ScoreVAE encoder architecture (at its clean noise level) plus a convolutional decoder built
from diffusers blocks. It exists to compare ScoreVAE against, as the paper's table does."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from .decoder import add_conv_decoder, conv_decode
from .encoder import ScoreVAEEncoder


@dataclass
class BetaVAEOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch_size, C, H, W)`): the decoded mean image, model space [-1, 1].
        mean (`torch.Tensor` of shape `(batch_size, latent_dim)`): the posterior mean.
        logvar (`torch.Tensor` of shape `(batch_size, latent_dim)`): the posterior log-variance.
        latent_codes (`torch.Tensor` of shape `(batch_size, latent_dim)`): the decoded codes.
    """

    sample: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor
    latent_codes: torch.Tensor


class BetaVAE(ModelMixin, ConfigMixin):
    r"""
    A Gaussian β-VAE over images: q(z | x) is a [`ScoreVAEEncoder`] evaluated at its clean noise level (so the two
    models have encoders of the same architecture and size), and p(x | z) = N(decoder(z), I) in model space [-1, 1].
    The objective, `loss`, uses ScoreVAE's convention: sums over pixels and latent dims, ½‖x − x̂‖² + β · KL.

    Parameters:
        sample_size (`int`): image height and width.
        in_channels (`int`): image channels.
        latent_dim (`int`): latent dimension.
        block_out_channels (`Tuple[int]`, *optional*, defaults to `(32, 64, 128, 128)`): encoder widths; the decoder
            mirrors them.
        norm_num_groups (`int`, *optional*, defaults to 8): group-norm groups.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 28,
        in_channels: int = 1,
        latent_dim: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
        norm_num_groups: int = 8,
    ):
        super().__init__()
        # encoder
        self.encoder = ScoreVAEEncoder(
            sample_size=sample_size,
            in_channels=in_channels,
            latent_dim=latent_dim,
            block_out_channels=block_out_channels,
            down_block_types=("DownBlock2D",) * len(block_out_channels),
            norm_num_groups=norm_num_groups,
        )
        # decoder: linear -> smallest feature map -> (resnet, upsample to the next size) ... -> conv out
        add_conv_decoder(self, sample_size, in_channels, latent_dim, block_out_channels, norm_num_groups)

    def encode(self, sample: torch.Tensor):
        """q(z | x): `(mean, logvar)`, each `(batch_size, latent_dim)`, for images in [-1, 1]."""
        return self.encoder(sample, self.encoder.config.clean_log_snr, return_dict=False)

    def decode(self, latent_codes: torch.Tensor) -> torch.Tensor:
        """The decoder mean, `(batch_size, C, H, W)` in model space."""
        return conv_decode(self, latent_codes)

    def forward(
        self, sample: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> BetaVAEOutput:
        mean, logvar = self.encode(sample)
        latent_codes = mean
        if sample_posterior:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            latent_codes = mean + torch.exp(0.5 * logvar) * noise
        return BetaVAEOutput(sample=self.decode(latent_codes), mean=mean, logvar=logvar, latent_codes=latent_codes)

    def loss(self, sample: torch.Tensor, beta: float = 0.01, generator: torch.Generator | None = None):
        """(loss, reconstruction, kl): batch means of ½‖x − x̂‖² (summed over pixels) and KL (summed over dims)."""
        out = self(sample, sample_posterior=True, generator=generator)
        reconstruction = 0.5 * (out.sample - sample).pow(2).flatten(1).sum(dim=1)
        kl = 0.5 * (out.mean**2 + out.logvar.exp() - 1 - out.logvar).sum(dim=1)
        return (reconstruction + beta * kl).mean(), reconstruction.mean(), kl.mean()
