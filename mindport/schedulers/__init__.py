"""Schedulers (float64/float32 numpy math mirroring diffusers), named as in diffusers."""

from importlib import import_module

# diffusers class name -> module in this package
SCHEDULER_MODULES = {
    "EulerDiscreteScheduler": "scheduling_euler_discrete",
    "DDIMScheduler": "scheduling_ddim",
}


def scheduler_class(name: str):
    if name not in SCHEDULER_MODULES:
        raise ValueError(f"no port of scheduler {name!r}; ported: {', '.join(sorted(SCHEDULER_MODULES))}")
    return getattr(import_module(f"{__name__}.{SCHEDULER_MODULES[name]}"), name)


def __getattr__(name):
    if name in SCHEDULER_MODULES:
        return scheduler_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(SCHEDULER_MODULES)
