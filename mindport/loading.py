"""Loading and converting checkpoints: the glue between the ported models and the `converters` library."""

from __future__ import annotations

from pathlib import Path

import mindspore as ms

from converters import ConversionError
from converters.convert import DEFAULT_KEEP_FP32, load_component_arrays
from converters.convert import convert as _convert
from converters.sources import resolve

from . import backend
from .models import model_class


def _spec_builder(expected_cls=None, overrides=None, keep=None):
    """The converters' callback: build the target model from the converted config and report its parameters."""

    def spec_fn(component, class_name, config):
        cls = expected_cls or model_class(class_name)
        if expected_cls is not None and cls.diffusers_class != class_name:
            raise ConversionError(
                f"{component}: checkpoint holds a {class_name}, but {cls.__name__}.from_pretrained was called"
            )
        model = cls.from_config(config, **(overrides or {}))
        if keep is not None:
            keep[component] = model
        return model.parameter_spec()

    return spec_fn


def check_runnable_dtype(dtype) -> None:
    """bf16 weights can be stored, but MindSpore has no CPU bf16 matmul/conv kernels: refuse to build a bf16 model
    on CPU, naming the dtypes that run (bf16 checkpoints load exactly as fp32, or rounded to fp16)."""
    if backend.resolve_dtype(dtype) == ms.bfloat16 and backend.device_target() == "CPU":
        raise ConversionError("bf16 cannot run on CPU in MindSpore (no bf16 matmul/conv kernels); load with "
                              "mindspore_dtype=ms.float32 (bf16 weights widen exactly) or ms.float16, or run on Ascend")


def load_component(cls, path, subfolder=None, dtype=None, variant=None, overrides=None):
    """Build `cls` from the checkpoint's config and fill it (converting PyTorch names on the fly if needed). In a
    mixed-precision checkpoint (`mindport convert --dtype fp16` keeps norms in fp32) the float32 parameters stay
    float32 when a lower `dtype` is asked for."""
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
