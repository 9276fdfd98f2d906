from .pipeline_utils import DiffusionPipeline
from .stable_video_diffusion import StableVideoDiffusionPipeline

PIPELINES = {cls.__name__: cls for cls in (StableVideoDiffusionPipeline,)}

__all__ = ["DiffusionPipeline", "StableVideoDiffusionPipeline", "PIPELINES"]
