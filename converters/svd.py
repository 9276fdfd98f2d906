"""Stable Video Diffusion: the UNet, the temporal-decoder VAE and the CLIP image encoder.

Our cells keep diffusers' and transformers' module paths, so these tables list only the exceptions."""

from .base import ArchitectureConverter, Rule


class UNetSpatioTemporalConditionConverter(ArchitectureConverter):
    class_name = "UNetSpatioTemporalConditionModel"
    rules = ()  # every tensor keeps its name: the port mirrors diffusers' module paths one to one


class AutoencoderKLTemporalDecoderConverter(ArchitectureConverter):
    class_name = "AutoencoderKLTemporalDecoder"
    rules = ()


class CLIPVisionModelWithProjectionConverter(ArchitectureConverter):
    class_name = "CLIPVisionModelWithProjection"
    rules = (
        Rule(r"vision_model\.embeddings\.position_ids", None, reason="buffer arange(num_positions); older files store it"),
    )

    def convert_config(self, config: dict) -> dict:
        # transformers nests nothing for a vision-only config, but a full CLIPConfig carries `vision_config`
        cfg = dict(config.get("vision_config") or config)
        return {k: v for k, v in cfg.items() if not k.startswith("_")}


class CLIPVisionModelConverter(CLIPVisionModelWithProjectionConverter):
    """The vision tower without the projection (Wan 2.1 I2V's image encoder): the same module paths."""

    class_name = "CLIPVisionModel"
