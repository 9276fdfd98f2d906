"""mindport: PyTorch diffusers video-diffusion checkpoints on MindSpore, with numerical proof of parity.

    from mindport import StableVideoDiffusionPipeline
    pipe = StableVideoDiffusionPipeline.from_pretrained(path_or_hub_id, mindspore_dtype=ms.float16, variant="fp16")

Every pipeline, model and scheduler of the registry (`converters/registry.py`) is exported here, imported on first
use so that `import mindport` stays light (no MindSpore until a class is touched).
"""

import os
from importlib import import_module
from pathlib import Path

from converters.registry import MODEL_ROWS, PIPELINE_ROWS, SCHEDULER_ROWS

__version__ = "0.1.0"


def cache_dir(name: str) -> Path:
    """$MINDPORT_CACHE (default ~/.cache/mindport)/`name`: the CPU kernels' builds ("kernels"), the conversions'
    parameter lists ("specs")."""
    return Path(os.environ.get("MINDPORT_CACHE", Path.home() / ".cache" / "mindport")) / name


def lazy_classes(package: str, rows: dict, kind: str):
    """For a subpackage whose classes the registry names (`rows`: class name -> row with `.runtime`, a module of
    `package`): (resolve(name) -> class, the package's `__getattr__`, its `__all__`)."""

    def resolve(name: str):
        if name not in rows:
            raise ValueError(f"no MindSpore port of {kind} {name!r}; ported: {', '.join(sorted(rows))}")
        return getattr(import_module(f"{package}.{rows[name].runtime}"), name)

    def __getattr__(name):
        if name in rows:
            return resolve(name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return resolve, __getattr__, sorted(rows)


_EXPORTS = {"DiffusionPipeline": "mindport.pipelines",
            **{name: "mindport.pipelines" for name in PIPELINE_ROWS},
            **{name: "mindport.models" for name in MODEL_ROWS},
            **{name: "mindport.schedulers" for name in SCHEDULER_ROWS}}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mindport' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
