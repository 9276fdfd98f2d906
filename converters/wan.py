"""Wan 2.1 / 2.2 in the diffusers layout: the diffusion transformer, the VAE and the UMT5 text encoder. (Wan-AI's
original release names, fp8 files and release folders: `wan_original.py`.)

The port mirrors diffusers' module paths one to one; diffusers itself ignores one stored tensor."""

from .base import ArchitectureConverter, Rule


class WanTransformer3DConverter(ArchitectureConverter):
    class_name = "WanTransformer3DModel"
    rules = (
        Rule(r"blocks\.\d+\.attn2\.norm_added_q\.weight", None,
             reason="unused by the model; diffusers ignores it on load (_keys_to_ignore_on_load_unexpected)"),
    )


class AutoencoderKLWanConverter(ArchitectureConverter):
    class_name = "AutoencoderKLWan"
    rules = ()


TIED_EMBEDDING = "encoder.embed_tokens.weight"


class UMT5EncoderModelConverter(ArchitectureConverter):
    """transformers' UMT5EncoderModel (Wan's `text_encoder`): keys are our parameter names. transformers ties the
    stack's `encoder.embed_tokens` to `shared`; its safetensors hold `shared.weight` only (Wan-AI's releases too), a
    full state_dict (a `.bin`) both. The alias is dropped; a file holding only the alias fills `shared.weight`."""

    class_name = "UMT5EncoderModel"
    rules = (
        Rule(r"encoder\.embed_tokens\.weight", None,
             reason="tied alias of shared.weight (transformers' _tied_weights_keys); the model holds the table once"),
    )

    def normalise_keys(self, keys: list[str], target_names: set[str]) -> dict[str, str]:
        if TIED_EMBEDDING in keys and "shared.weight" not in keys:
            return {k: "shared.weight" if k == TIED_EMBEDDING else k for k in keys}
        return {k: k for k in keys}
