"""A convolutional decoder from latent codes to images, built from diffusers blocks: the β-VAE's decoder, and the mean
decoder a ScoreVAE encoder may carry (an estimate of E[x_0 | z], the start of a decode at realism < 1)."""

from __future__ import annotations

import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn


def feature_sizes(sample_size: int, num_blocks: int) -> list[int]:
    """The down path's feature-map sizes, largest first (diffusers' stride-2 Downsample2D: n -> ceil(n / 2))."""
    sizes = [sample_size]
    for _ in range(num_blocks - 1):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def add_conv_decoder(
    module: nn.Module, sample_size: int, in_channels: int, latent_dim: int, block_out_channels, norm_num_groups: int
):
    """Give `module` the decoder's layers (`proj_in`, `resnets`, `upsamplers`, `conv_norm_out`, `conv_act`,
    `conv_out`): linear -> smallest feature map -> (resnet, upsample to the next size) ... -> conv out, mirroring an
    encoder of widths `block_out_channels`. `conv_decode(module, z)` runs them."""
    module.sizes = feature_sizes(sample_size, len(block_out_channels))
    channels = list(reversed(block_out_channels))
    module.proj_in = nn.Linear(latent_dim, channels[0] * module.sizes[-1] * module.sizes[-1])
    module.resnets = nn.ModuleList([])
    module.upsamplers = nn.ModuleList([])
    for i, (c_in, c_out) in enumerate(zip(channels, channels[1:] + [channels[-1]])):
        module.resnets.append(
            ResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=None, groups=norm_num_groups)
        )
        if i < len(channels) - 1:
            module.upsamplers.append(Upsample2D(c_out, use_conv=True))
    module.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[-1])
    module.conv_act = nn.SiLU()
    module.conv_out = nn.Conv2d(channels[-1], in_channels, kernel_size=3, padding=1)


def conv_decode(module: nn.Module, latent_codes: torch.Tensor) -> torch.Tensor:
    """Run the layers `add_conv_decoder` gave `module`: codes `(B, latent_dim)` -> images `(B, C, H, W)`."""
    sizes = list(reversed(module.sizes))
    hidden = module.proj_in(latent_codes).reshape(latent_codes.shape[0], -1, sizes[0], sizes[0])
    for i, resnet in enumerate(module.resnets):
        hidden = resnet(hidden, None)
        if i < len(module.upsamplers):
            hidden = module.upsamplers[i](hidden, output_size=(sizes[i + 1], sizes[i + 1]))
    return module.conv_out(module.conv_act(module.conv_norm_out(hidden)))


class ConvDecoder(nn.Module):
    """Codes `(B, latent_dim)` -> images `(B, in_channels, sample_size, sample_size)` in model space; the layers and
    parameter names of [`BetaVAE`]'s decoder, so a β-VAE's decoder weights load into it unchanged."""

    def __init__(self, sample_size: int, in_channels: int, latent_dim: int, block_out_channels, norm_num_groups: int):
        super().__init__()
        add_conv_decoder(self, sample_size, in_channels, latent_dim, block_out_channels, norm_num_groups)

    def forward(self, latent_codes: torch.Tensor) -> torch.Tensor:
        return conv_decode(self, latent_codes)
