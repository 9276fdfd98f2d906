"""Ported models, named as in diffusers/transformers: `mindport.models.<DiffusersClassName>`."""

from importlib import import_module

# diffusers / transformers class name -> module in this package that ports it
MODEL_MODULES = {
    "UNetSpatioTemporalConditionModel": "unet_spatio_temporal_condition",
    "AutoencoderKLTemporalDecoder": "autoencoder_kl_temporal_decoder",
    "CLIPVisionModelWithProjection": "clip",
    "CLIPTextModel": "clip",
    "CLIPTextModelWithProjection": "clip",
    "AutoencoderKL": "autoencoder_kl",
    "UNet2DConditionModel": "unet_2d_condition",
    "Transformer2DModel": "transformer_2d",
    "MotionAdapter": "unet_motion_model",
    "UNetMotionModel": "unet_motion_model",
    "I2VGenXLUNet": "unet_i2vgen_xl",
}


def model_class(name: str):
    if name not in MODEL_MODULES:
        raise ValueError(f"no MindSpore port of {name!r}; ported models: {', '.join(sorted(MODEL_MODULES))}")
    return getattr(import_module(f"{__name__}.{MODEL_MODULES[name]}"), name)


def __getattr__(name):
    if name in MODEL_MODULES:
        return model_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(MODEL_MODULES)
