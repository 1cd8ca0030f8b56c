from .beta_vae import BetaVAE, BetaVAEOutput
from .classifier import FashionMNISTClassifier
from .encoder import ScoreVAEEncoder, ScoreVAEEncoderOutput

__all__ = ["BetaVAE", "BetaVAEOutput", "FashionMNISTClassifier", "ScoreVAEEncoder", "ScoreVAEEncoderOutput"]
