"""PyTorch checkpoint -> MindSpore parameters, audited. Pure library: imports neither mindport nor parity."""

from .base import ArchitectureConverter, Audit, Rule, map_tensors
from .errors import ConversionError
from .svd import (
    AutoencoderKLTemporalDecoderConverter,
    CLIPVisionModelWithProjectionConverter,
    UNetSpatioTemporalConditionConverter,
)

CONVERTERS: dict[str, ArchitectureConverter] = {
    c.class_name: c()
    for c in (
        UNetSpatioTemporalConditionConverter,
        AutoencoderKLTemporalDecoderConverter,
        CLIPVisionModelWithProjectionConverter,
    )
}


def converter_for(class_name: str, where: str = "") -> ArchitectureConverter:
    if class_name not in CONVERTERS:
        raise ConversionError(f"{where}: unknown architecture {class_name!r}; supported: {', '.join(sorted(CONVERTERS))}")
    return CONVERTERS[class_name]


__all__ = ["ArchitectureConverter", "Audit", "Rule", "map_tensors", "ConversionError", "CONVERTERS", "converter_for"]
