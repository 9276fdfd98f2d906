"""Schedulers (float64 numpy math), named as in diffusers."""

from .scheduling_euler_discrete import EulerDiscreteScheduler

SCHEDULERS = {cls.__name__: cls for cls in (EulerDiscreteScheduler,)}

__all__ = ["EulerDiscreteScheduler", "SCHEDULERS"]
