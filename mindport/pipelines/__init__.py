"""Pipelines, named as in diffusers."""

from importlib import import_module

from .pipeline_utils import DiffusionPipeline

PIPELINE_MODULES = {
    "StableVideoDiffusionPipeline": "stable_video_diffusion",
    "AnimateDiffPipeline": "animatediff",
    "I2VGenXLPipeline": "i2vgen_xl",
}


def pipeline_class(name: str):
    if name not in PIPELINE_MODULES:
        raise ValueError(f"no port of pipeline {name!r}; ported: {', '.join(sorted(PIPELINE_MODULES))}")
    return getattr(import_module(f"{__name__}.{PIPELINE_MODULES[name]}"), name)


def __getattr__(name):
    if name in PIPELINE_MODULES:
        return pipeline_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DiffusionPipeline", *sorted(PIPELINE_MODULES)]
