"""ScoreVAE for diffusers: a VAE whose decoder is a frozen, pretrained, unconditional diffusion model."""

__version__ = "0.1.0"

from .models import ScoreVAEEncoder, ScoreVAEEncoderOutput
from .pipelines import ScoreVAEPipeline, ScoreVAEPipelineOutput

__all__ = ["ScoreVAEEncoder", "ScoreVAEEncoderOutput", "ScoreVAEPipeline", "ScoreVAEPipelineOutput"]
