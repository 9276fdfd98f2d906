"""mindport: PyTorch diffusers video-diffusion checkpoints on MindSpore, with numerical proof of parity.

    from mindport import StableVideoDiffusionPipeline
    pipe = StableVideoDiffusionPipeline.from_pretrained(path_or_hub_id, mindspore_dtype=ms.float16, variant="fp16")
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> submodule that defines it; imported on first use so `import mindport` stays light
_EXPORTS = {
    "DiffusionPipeline": "mindport.pipelines",
    "StableVideoDiffusionPipeline": "mindport.pipelines",
    "AnimateDiffPipeline": "mindport.pipelines",
    "I2VGenXLPipeline": "mindport.pipelines",
    "EulerDiscreteScheduler": "mindport.schedulers",
    "DDIMScheduler": "mindport.schedulers",
    "MotionAdapter": "mindport.models",
    "UNetMotionModel": "mindport.models",
    "UNet2DConditionModel": "mindport.models",
    "I2VGenXLUNet": "mindport.models",
    "UNetSpatioTemporalConditionModel": "mindport.models",
    "AutoencoderKLTemporalDecoder": "mindport.models",
    "AutoencoderKL": "mindport.models",
    "CLIPVisionModelWithProjection": "mindport.models",
    "CLIPTextModel": "mindport.models",
    "CLIPTextModelWithProjection": "mindport.models",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mindport' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
