"""Loading and converting checkpoints: the glue between the ported models and the `converters` library.

MindSpore is imported on first use, not with this module: `mindport convert` starts copying and hashing the source
before it needs the model (the import alone takes 1.5-2.5 s), and a conversion whose architecture and config were
audited before reads the parameter list from the spec cache and never imports MindSpore at all."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

from converters import ConversionError
from converters.convert import DEFAULT_KEEP_FP32, load_component_arrays
from converters.convert import convert as _convert
from converters.registry import MODEL_ROWS
from converters.sources import resolve

from . import cache_dir
from .models import model_class


# what decides a ported model's parameter names and shapes (pipelines, LoRA, the CLI do not)
SPEC_SOURCES = ("models/*.py", "layers.py", "modeling.py")


@lru_cache(maxsize=None)
def _ports_fingerprint() -> str:
    """The sources that define the ported models' parameters, and the MindSpore version: a cached spec is used only
    under the fingerprint it was built with."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256(version("mindspore").encode())
    for f in sorted(f for pattern in SPEC_SOURCES for f in here.glob(pattern)):
        h.update(f.relative_to(here).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _cached_spec(key: str, build):
    """The spec under `key`, from the cache, else built (and stored: written aside and renamed, so a reader never
    sees half a file; an unreadable entry is rebuilt)."""
    path = cache_dir("specs") / f"{key}.json"  # {parameter: (shape, dtype)} of models built before
    try:
        return {k: (tuple(shape), dtype) for k, (shape, dtype) in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError):
        pass
    spec = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(spec))
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the next conversion the build
        pass
    return spec


def _spec_builder(expected_cls=None, overrides=None, keep=None):
    """The converters' callback: build the target model from the converted config and report its parameters. A
    conversion (`keep` None: no model wanted) takes the parameter list from the spec cache when it can."""

    def spec_fn(component, class_name, config):
        if expected_cls is not None and expected_cls.diffusers_class != class_name:
            raise ConversionError(
                f"{component}: checkpoint holds a {class_name}, but {expected_cls.__name__}.from_pretrained was called"
            )
        if expected_cls is None and class_name not in MODEL_ROWS:
            model_class(class_name)  # raises, naming the ported classes

        def build():
            model = (expected_cls or model_class(class_name)).from_config(config, **(overrides or {}))
            if keep is not None:
                keep[component] = model
            return model.parameter_spec()

        if keep is not None:
            return build()
        key = hashlib.sha256(json.dumps([class_name, config, overrides, _ports_fingerprint()], sort_keys=True,
                                        default=str).encode()).hexdigest()
        return _cached_spec(key, build)

    return spec_fn


def check_runnable_dtype(dtype) -> None:
    """bf16 weights can be stored, but MindSpore has no CPU bf16 matmul/conv kernels: refuse to build a bf16 model
    on CPU, naming the dtypes that run (bf16 checkpoints load exactly as fp32, or rounded to fp16)."""
    import mindspore as ms

    from . import backend

    if backend.resolve_dtype(dtype) == ms.bfloat16 and backend.device_target() == "CPU":
        raise ConversionError("bf16 cannot run on CPU in MindSpore (no bf16 matmul/conv kernels); load with "
                              "mindspore_dtype=ms.float32 (bf16 weights widen exactly) or ms.float16, or run on Ascend")


def load_component(cls, path, subfolder=None, dtype=None, variant=None, overrides=None):
    """Build `cls` from the checkpoint's config and fill it (converting PyTorch names on the fly if needed). In a
    mixed-precision checkpoint (`mindport convert --dtype fp16` keeps norms in fp32) the float32 parameters stay
    float32 when a lower `dtype` is asked for."""
    import mindspore as ms

    from . import backend

    check_runnable_dtype(dtype)
    root = resolve(path, variant)
    folder = Path(root) / subfolder if subfolder else Path(root)
    built = {}
    _, arrays, _, tags = load_component_arrays(folder, _spec_builder(cls, overrides, built), variant, name=subfolder or ".")
    model = built[subfolder or "."]
    low = backend.resolve_dtype(dtype) in (ms.float16, ms.bfloat16)
    mixed = "F32" in set(tags.values()) and bool(set(tags.values()) & {"F16", "BF16"})
    model.load_arrays(arrays, dtype, keep_fp32={k for k, t in tags.items() if t == "F32"} if low and mixed else ())
    return model


def convert_checkpoint(src, dst, variant=None, dtype=None, overwrite=False, progress=True, config_dir=None,
                       keep_fp32=DEFAULT_KEEP_FP32, motion_adapter=None) -> dict:
    """`mindport convert`: PyTorch diffusers checkpoint -> MindSpore folder (see converters.convert.convert)."""
    factory = None
    if progress:
        from tqdm import tqdm

        factory = lambda total: tqdm(total=total, desc="converting", unit="tensor", leave=False)  # noqa: E731
    return _convert(src, dst, _spec_builder(), variant=variant, dtype=dtype, overwrite=overwrite, progress_factory=factory,
                    config_dir=config_dir, keep_fp32=keep_fp32, motion_adapter=motion_adapter)
