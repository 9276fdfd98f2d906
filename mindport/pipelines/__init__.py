"""Pipelines, named as in diffusers (the registry's `PIPELINES` rows say which module defines each)."""

from converters.registry import PIPELINE_ROWS

from .. import lazy_classes
from .pipeline_utils import DiffusionPipeline

pipeline_class, __getattr__, _all = lazy_classes(__name__, PIPELINE_ROWS, "pipeline")
__all__ = ["DiffusionPipeline", *_all]
