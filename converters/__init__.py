"""PyTorch checkpoint -> MindSpore parameters, audited. Pure library: imports neither mindport nor parity.

Each architecture's converter (an ArchitectureConverter subclass: class name, config conversion, rule table) lives
in the module named here and is imported on first use."""

from importlib import import_module

from .base import ArchitectureConverter, Audit, Rule, map_tensors
from .errors import ConversionError

# diffusers / transformers class name -> module (in this package) defining its converter
CONVERTER_MODULES = {
    "UNetSpatioTemporalConditionModel": "svd",
    "AutoencoderKLTemporalDecoder": "svd",
    "CLIPVisionModelWithProjection": "svd",
    "AutoencoderKL": "sd",
    "CLIPTextModel": "sd",
    "CLIPTextModelWithProjection": "sd",
    "UNet2DConditionModel": "sd",
    "MotionAdapter": "animatediff",
    "UNetMotionModel": "animatediff",
    "I2VGenXLUNet": "i2vgen_xl",
}
_CACHE: dict[str, ArchitectureConverter] = {}


def converter_for(class_name: str, where: str = "") -> ArchitectureConverter:
    if class_name not in CONVERTER_MODULES:
        raise ConversionError(f"{where}: unknown architecture {class_name!r}; supported: {', '.join(sorted(CONVERTER_MODULES))}")
    if class_name not in _CACHE:
        module = import_module(f"{__name__}.{CONVERTER_MODULES[class_name]}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, ArchitectureConverter) and obj.class_name:
                _CACHE.setdefault(obj.class_name, obj())
    return _CACHE[class_name]


__all__ = ["ArchitectureConverter", "Audit", "Rule", "map_tensors", "ConversionError", "CONVERTER_MODULES", "converter_for"]
