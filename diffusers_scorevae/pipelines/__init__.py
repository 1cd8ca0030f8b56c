from .pipeline_scorevae import ScoreVAEPipeline, ScoreVAEPipelineOutput

__all__ = ["ScoreVAEPipeline", "ScoreVAEPipelineOutput"]
