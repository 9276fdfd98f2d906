"""Loading and converting checkpoints: the glue between the ported models and the `converters` library."""

from __future__ import annotations

from pathlib import Path

from converters import ConversionError
from converters.convert import convert as _convert
from converters.convert import load_component_arrays
from converters.sources import resolve

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


def load_component(cls, path, subfolder=None, dtype=None, variant=None, overrides=None):
    """Build `cls` from the checkpoint's config and fill it (converting PyTorch names on the fly if needed)."""
    root = resolve(path, variant)
    folder = Path(root) / subfolder if subfolder else Path(root)
    built = {}
    _, arrays, _ = load_component_arrays(folder, _spec_builder(cls, overrides, built), variant, name=subfolder or ".")
    model = built[subfolder or "."]
    model.load_arrays(arrays, dtype)
    return model


def convert_checkpoint(src, dst, variant=None, dtype=None, overwrite=False, progress=True) -> dict:
    """`mindport convert`: PyTorch diffusers checkpoint -> MindSpore folder (see converters.convert.convert)."""
    factory = None
    if progress:
        from tqdm import tqdm

        factory = lambda total: tqdm(total=total, desc="converting", unit="tensor", leave=False)  # noqa: E731
    return _convert(src, dst, _spec_builder(), variant=variant, dtype=dtype, overwrite=overwrite, progress_factory=factory)
