"""Stable Video Diffusion: the UNet, the temporal-decoder VAE and the CLIP image encoder.

Our cells keep diffusers' and transformers' module paths, so these tables list only the exceptions."""

from .base import ArchitectureConverter, Rule
from .errors import ConversionError


class UNetSpatioTemporalConditionConverter(ArchitectureConverter):
    class_name = "UNetSpatioTemporalConditionModel"
    rules = ()  # every tensor keeps its name: the port mirrors diffusers' module paths one to one


class AutoencoderKLTemporalDecoderConverter(ArchitectureConverter):
    class_name = "AutoencoderKLTemporalDecoder"
    rules = ()


VISION_PREFIX = "vision_model."


class CLIPVisionModelWithProjectionConverter(ArchitectureConverter):
    class_name = "CLIPVisionModelWithProjection"
    rules = (
        Rule(r"(?:vision_model\.)?embeddings\.position_ids", None,
             reason="buffer arange(num_positions); older files store it"),
    )

    def convert_config(self, config: dict) -> dict:
        # transformers nests nothing for a vision-only config, but a full CLIPConfig carries `vision_config`
        cfg = dict(config.get("vision_config") or config)
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    def normalise_keys(self, keys: list[str], target_names: set[str]) -> dict[str, str]:
        """The vision tower's keys with the `vision_model.` prefix (released checkpoints, transformers 4, and
        CLIPVisionModelWithProjection in transformers 5) or without it (CLIPVisionModel saved by transformers 5) ->
        the spelling of the target model's parameters (ours: bare for CLIPVisionModel, prefixed for
        CLIPVisionModelWithProjection). `visual_projection` sits outside the tower in both. A file mixing the two
        spellings is refused (one parameter could be filled from either)."""
        tower = [k for k in keys if not k.startswith("visual_projection.")]
        prefixed = [k for k in tower if k.startswith(VISION_PREFIX)]
        bare = [k for k in tower if not k.startswith(VISION_PREFIX)]
        if prefixed and bare:
            raise ConversionError(
                f"{self.class_name} checkpoint mixes two key spellings: {len(prefixed)} key(s) with the "
                f"{VISION_PREFIX!r} prefix (e.g. {prefixed[0]!r}) and {len(bare)} without (e.g. {bare[0]!r}); "
                "expected all vision-tower keys prefixed (released checkpoints) or none (transformers 5 CLIPVisionModel)")
        if not target_names:  # asked without a model (speculative identity copy): keys as they are
            return {k: k for k in keys}
        want_prefix = any(t.startswith(VISION_PREFIX) for t in target_names)
        if want_prefix and bare:
            return {k: k if k in prefixed or k.startswith("visual_projection.") else VISION_PREFIX + k for k in keys}
        if not want_prefix and prefixed:
            return {k: k[len(VISION_PREFIX):] if k.startswith(VISION_PREFIX) else k for k in keys}
        return {k: k for k in keys}


class CLIPVisionModelConverter(CLIPVisionModelWithProjectionConverter):
    """The vision tower without the projection (Wan 2.1 I2V's image encoder): the same module paths."""

    class_name = "CLIPVisionModel"
