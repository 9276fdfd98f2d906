"""Schedulers (float64/float32 numpy math mirroring diffusers), named as in diffusers (the registry's `SCHEDULERS`
rows say which module defines each)."""

from converters.registry import SCHEDULER_ROWS

from .. import lazy_classes

scheduler_class, __getattr__, __all__ = lazy_classes(__name__, SCHEDULER_ROWS, "scheduler")
