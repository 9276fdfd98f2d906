"""Stable Diffusion 1.x family: the UNet, the image VAE and the CLIP text encoders.

Our cells keep diffusers' and transformers' module paths, so these tables list only the exceptions:
- AutoencoderKL: checkpoints saved before diffusers 0.14 name the mid-block attention `query`, `key`, `value`,
  `proj_attn` (diffusers renames them on load; so do we).
- CLIPTextModel: released checkpoints (and transformers < 5) prefix every key with `text_model.`; transformers 5
  saves the bare module tree, which is our layout. Either spelling is accepted, a checkpoint mixing both is refused.
  Older files also persist the `position_ids` buffer, which is dropped.
"""

from .base import ArchitectureConverter, Rule
from .errors import ConversionError

POSITION_IDS_REASON = "buffer arange(max_position_embeddings); older transformers files store it"


class UNet2DConditionConverter(ArchitectureConverter):
    class_name = "UNet2DConditionModel"
    rules = ()  # every tensor keeps its name: the port mirrors diffusers' module paths one to one


class Transformer2DModelConverter(ArchitectureConverter):
    class_name = "Transformer2DModel"
    rules = ()


# the VAE's deprecated attention names (diffusers' `_convert_deprecated_attention_blocks`), one row per projection
_VAE_ATTN = r"((?:encoder|decoder)\.mid_block\.attentions\.\d+)"


class AutoencoderKLConverter(ArchitectureConverter):
    class_name = "AutoencoderKL"
    rules = (
        Rule(_VAE_ATTN + r"\.query\.(weight|bias)", r"\1.to_q.\2", reason="pre-0.14 diffusers name of to_q"),
        Rule(_VAE_ATTN + r"\.key\.(weight|bias)", r"\1.to_k.\2", reason="pre-0.14 diffusers name of to_k"),
        Rule(_VAE_ATTN + r"\.value\.(weight|bias)", r"\1.to_v.\2", reason="pre-0.14 diffusers name of to_v"),
        Rule(_VAE_ATTN + r"\.proj_attn\.(weight|bias)", r"\1.to_out.0.\2", reason="pre-0.14 diffusers name of to_out.0"),
    )


TEXT_PREFIX = "text_model."


class CLIPTextModelConverter(ArchitectureConverter):
    class_name = "CLIPTextModel"
    rules = (
        Rule(r"embeddings\.position_ids", None, reason=POSITION_IDS_REASON),
    )

    def convert_config(self, config: dict) -> dict:
        # a full CLIPConfig nests the text tower's fields under `text_config`
        cfg = dict(config.get("text_config") or config)
        return {k: v for k, v in cfg.items() if not k.startswith("_")}

    def normalise_keys(self, keys: list[str], target_names: set[str]) -> dict[str, str]:
        """`text_model.` prefixed (released checkpoints) or bare (transformers 5) keys -> bare names. All keys must
        use one spelling: a file mixing both could fill one parameter from either, so it is refused."""
        prefixed = [k for k in keys if k.startswith(TEXT_PREFIX)]
        bare = [k for k in keys if not k.startswith(TEXT_PREFIX)]
        if prefixed and bare:
            raise ConversionError(
                f"CLIPTextModel checkpoint mixes two key spellings: {len(prefixed)} key(s) with the "
                f"{TEXT_PREFIX!r} prefix (e.g. {prefixed[0]!r}) and {len(bare)} without (e.g. {bare[0]!r}); "
                "expected all keys prefixed (released checkpoints) or none (transformers 5)"
            )
        if prefixed:
            return {k: k[len(TEXT_PREFIX):] for k in keys}
        return {k: k for k in keys}


class CLIPTextModelWithProjectionConverter(ArchitectureConverter):
    class_name = "CLIPTextModelWithProjection"
    rules = (
        Rule(r"text_model\.embeddings\.position_ids", None, reason=POSITION_IDS_REASON),
    )

    def convert_config(self, config: dict) -> dict:
        cfg = dict(config.get("text_config") or config)
        if "projection_dim" not in cfg and "projection_dim" in config:  # CLIPConfig keeps it at the top level
            cfg["projection_dim"] = config["projection_dim"]
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
