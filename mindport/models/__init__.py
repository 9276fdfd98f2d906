"""Ported models, named as in diffusers/transformers: `mindport.models.<DiffusersClassName>` (the registry's
`MODELS` rows say which module defines each)."""

from converters.registry import MODEL_ROWS

from .. import lazy_classes

model_class, __getattr__, __all__ = lazy_classes(__name__, MODEL_ROWS, "model")
