"""FashionMNISTClassifier: a small CNN used to judge samples and reconstructions (class kept, Fréchet distance)."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class FashionMNISTClassifier(ModelMixin, ConfigMixin):
    r"""
    A small convolutional classifier for 28x28 grayscale images. It is an evaluation tool, not part of ScoreVAE: its
    argmax tells whether a reconstruction kept the class of the original, and its penultimate features are the
    embedding for a Fréchet distance between image sets (the role Inception plays in FID).

    Each block is a 3x3 convolution, batch norm, ReLU and a 2x2 max-pool (28 -> 14 -> 7 -> 3 with the defaults); the
    flattened map goes through a linear layer to `feature_dim` features (ReLU) and a linear head to the logits. The
    defaults have about 0.24M parameters and reach about 92% Fashion-MNIST test accuracy after a few CPU minutes of
    `examples/train_classifier.py`.

    Parameters:
        sample_size (`int`, *optional*, defaults to 28):
            Height and width of the (square) input images.
        in_channels (`int`, *optional*, defaults to 1):
            Number of image channels.
        num_classes (`int`, *optional*, defaults to 10):
            Number of classes.
        block_out_channels (`Tuple[int]`, *optional*, defaults to `(32, 64, 128)`):
            Output channels of each convolutional block; each block halves the resolution.
        feature_dim (`int`, *optional*, defaults to 128):
            Size of the penultimate features returned by [`~FashionMNISTClassifier.features`].
        dropout (`float`, *optional*, defaults to 0.3):
            Dropout on the features during training.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        feature_dim: int = 128,
        dropout: float = 0.3,
    ):
        super().__init__()

        # conv blocks
        blocks = []
        channels, size = in_channels, sample_size
        for out_channels in block_out_channels:
            blocks += [
                nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels, size = out_channels, size // 2
        self.blocks = nn.Sequential(*blocks)

        # features
        self.feature_proj = nn.Linear(channels * size * size, feature_dim)
        self.feature_dropout = nn.Dropout(dropout)

        # out
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        r"""
        The penultimate features.

        Args:
            images (`torch.Tensor` of shape `(batch_size, in_channels, sample_size, sample_size)`):
                Images in [0, 1].

        Returns:
            `torch.Tensor` of shape `(batch_size, feature_dim)`.
        """
        # 1. center the input: [0, 1] -> [-1, 1]
        hidden = self.blocks(images * 2 - 1)
        # 2. flatten and project
        return torch.relu(self.feature_proj(hidden.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        r"""
        The class logits.

        Args:
            images (`torch.Tensor` of shape `(batch_size, in_channels, sample_size, sample_size)`):
                Images in [0, 1].

        Returns:
            `torch.Tensor` of shape `(batch_size, num_classes)`.
        """
        return self.head(self.feature_dropout(self.features(images)))
