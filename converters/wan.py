"""Wan 2.1 / 2.2: the diffusion transformer. (Original Wan-AI release names and the VAE / UMT5 converters follow with
issue 16.)

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
