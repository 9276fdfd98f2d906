"""Wan 2.1 image-to-video adapter for the harness: the text-to-video adapter's fixtures plus a CLIP vision tower
(its second-to-last hidden state feeds the transformer's image tokens through the added k/v projections) and the
CLIPImageProcessor config; the call adds a synthetic image larger than the output and of another aspect ratio, so
both the CLIP resize/crop and the VAE-side resize do work. The only random draw is the initial latents (the image
latents are the posterior's mode).
"""

from __future__ import annotations

from .fixtures import randomise, synthetic_image
from .wan import PRESETS as T2V_PRESETS
from .wan import WanAdapter, tiny_components

# - wan-i2v-tiny: wan-t2v-tiny's sizes with image tokens (CLIP ViT: 28 px, patch 14, 5 tokens), in_channels
#   z + 4 + z, 64x32 pixels, 9 frames (3 latent frames).
PRESETS: dict[str, dict] = {
    "wan-i2v-tiny": {
        **T2V_PRESETS["wan-t2v-tiny"],
        "transformer": dict(T2V_PRESETS["wan-t2v-tiny"]["transformer"], image_dim=32, added_kv_proj_dim=24),
        "vision": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                       image_size=28, patch_size=14),
        "run": dict(height=32, width=64, frames=9, guidance_scale=5.0),
    },
}


class WanI2VAdapter(WanAdapter):
    pipeline = "WanImageToVideoPipeline"
    presets = PRESETS

    def make_fixture(self, spec: dict, seed: int):
        from diffusers import WanImageToVideoPipeline
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        z = spec["vae"]["z_dim"]
        parts = tiny_components({**spec, "extra_in_channels": 4 + z}, seed)
        image_encoder = randomise(CLIPVisionModel(CLIPVisionConfig(hidden_act="gelu", **spec["vision"])),
                                  seed * 10 + 5)
        size = spec["vision"]["image_size"]
        image_processor = CLIPImageProcessor(crop_size={"height": size, "width": size}, size={"shortest_edge": size},
                                             resample=3, do_center_crop=True, do_normalize=True, do_resize=True,
                                             do_rescale=True)
        return WanImageToVideoPipeline(**parts, image_encoder=image_encoder, image_processor=image_processor)

    # where the initial latents come from
    reference_noise_modules = ("diffusers.pipelines.wan.pipeline_wan_i2v",)
    our_noise_modules = ("mindport.pipelines.wan",)

    def call_kwargs(self, settings: dict) -> dict:
        w, h = settings["width"], settings["height"]
        return dict(super().call_kwargs(settings), image=synthetic_image(w + w // 3 + 5, h + h // 2 + 3, settings["seed"]))


ADAPTER = WanI2VAdapter()
