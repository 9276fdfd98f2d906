"""PyTorch checkpoint -> MindSpore parameters, audited. Pure library: imports neither mindport nor parity.

Each architecture's converter (an ArchitectureConverter subclass: class name, config conversion, rule table) lives
in the module its registry row names (`converters/registry.py`) and is imported on first use."""

from importlib import import_module

from . import registry
from .base import ArchitectureConverter, Audit, Rule, map_tensors
from .errors import ConversionError

_CACHE: dict[str, ArchitectureConverter] = {}


def converter_for(class_name: str, where: str = "") -> ArchitectureConverter:
    """The converter of a registered model class; a ConversionError naming `where` and the supported classes
    otherwise."""
    row = registry.MODEL_ROWS.get(class_name)
    if row is None:
        raise ConversionError(f"{where}: unknown architecture {class_name!r}; supported: "
                              f"{', '.join(sorted(registry.MODEL_ROWS))}")
    if class_name not in _CACHE:
        module = import_module(f"{__name__}.{row.converter}")
        found = [obj for obj in vars(module).values() if isinstance(obj, type)
                 and issubclass(obj, ArchitectureConverter) and obj.class_name == class_name]
        if not found:
            raise ConversionError(f"{where}: converters.{row.converter} defines no converter for {class_name!r} "
                                  "(the registry row names that module)")
        _CACHE[class_name] = found[0]()
    return _CACHE[class_name]


__all__ = ["ArchitectureConverter", "Audit", "Rule", "map_tensors", "ConversionError", "converter_for", "registry"]
