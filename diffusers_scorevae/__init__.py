"""ScoreVAE for diffusers: a VAE whose decoder is a frozen, pretrained, unconditional diffusion model."""

__version__ = "0.1.0"

from .bundled import pretrained_path
from .data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    images_to_tensor,
    load_fashion_mnist,
    load_fashion_mnist_from_hub,
)
from .hub import create_model_card, describe_prior_compatibility
from .models import BetaVAE, FashionMNISTClassifier, ScoreVAEEncoder, ScoreVAEEncoderOutput
from .pipelines import ScoreVAEPipeline, ScoreVAEPipelineOutput
from .pipelines.pipeline_scorevae import ScoreVAEInversionOutput
from .training import PosteriorLossOutput, ScoreVAELossOutput, posterior_loss, scorevae_loss

__all__ = [
    "BetaVAE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FashionMNISTClassifier",
    "PosteriorLossOutput",
    "ScoreVAEEncoder",
    "ScoreVAEEncoderOutput",
    "ScoreVAELossOutput",
    "ScoreVAEPipeline",
    "ScoreVAEPipelineOutput",
    "ScoreVAEInversionOutput",
    "create_model_card",
    "describe_prior_compatibility",
    "images_to_tensor",
    "load_fashion_mnist",
    "load_fashion_mnist_from_hub",
    "posterior_loss",
    "pretrained_path",
    "scorevae_loss",
]
