from .encoder import ScoreVAEEncoder, ScoreVAEEncoderOutput

__all__ = ["ScoreVAEEncoder", "ScoreVAEEncoderOutput"]
