"""I2VGen-XL adapter for the harness: how to build both pipelines, where each draws noise, how to call them with
identical arguments.

Two things differ from the SVD adapter:
- diffusers 0.42's I2VGenXLPipeline applies the text encoder's final layer norm to the penultimate hidden state
  through `text_encoder.text_model.final_layer_norm`; transformers 5's CLIPTextModel has no `text_model` (its
  modules sit at the top). `load_reference` gives the loaded text encoder a plain attribute `text_model` holding
  only `final_layer_norm` - the very same LayerNorm module, not a copy and not a registered submodule - so the
  reference computes exactly what it computed with transformers 4, and its state_dict, module paths and hooks are
  unchanged.
- diffusers' I2VGenXLPipeline takes no `callback_on_step_end`; the reference's latents after each step are read off
  the scheduler: `run_reference` wraps `pipe.scheduler.step` (functools.wraps keeps its signature, which the
  pipeline inspects for `eta` / `generator`) and records each `prev_sample`, unfolded from (B*F, C, h, w) to
  (B, C, F, h, w) as the pipeline does right after.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from mindport.image_processing import pipeline_output_size, vae_scale_factor

from .adapter import PipelineAdapter
from .fixtures import randomise, synthetic_image, tiny_clip_text

PROMPT = "the cat in a hat"
NEGATIVE_PROMPT = "blurry, static"

# Named tiny I2VGen-XL configs. `run` holds the parity settings (pixels, frames) that fit the config, and the
# sampler settings the adapter reads itself (guidance_scale, eta, decode_chunk_size).
# - i2vgen-xl-tiny: 16x24 pixels, latents 8x12 (the image-latent context pool to 32x32 enlarges), 3 frames;
# - i2vgen-xl-tiny-large: latents 40x24 (the pool shrinks the height, enlarges the width), 2 frames, a VAE with one
#   block level (latents at pixel size), DDIM without set_alpha_to_one;
# - i2vgen-xl-tiny-3level: three UNet levels on 10x14 latents (not divisible by 4: the up blocks take the skips'
#   sizes), 5 frames, DDIM eta 0.5 (one variance draw per step), decoded 2 frames at a time.
PRESETS: dict[str, dict] = {
    "i2vgen-xl-tiny": {
        "unet": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
                     down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                     up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")),
        "vae": dict(block_out_channels=(32, 64), layers_per_block=1),
        "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                     hidden_act="quick_gelu"),
        "vision": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       patch_size=14, image_size=28),
        "scheduler": dict(set_alpha_to_one=True),
        "run": dict(height=16, width=24, frames=3, guidance_scale=9.0),
    },
    "i2vgen-xl-tiny-large": {
        "unet": dict(block_out_channels=(32, 32), layers_per_block=1, attention_head_dim=8, cross_attention_dim=24,
                     down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"),
                     up_block_types=("CrossAttnUpBlock3D", "UpBlock3D")),
        "vae": dict(block_out_channels=(32,), layers_per_block=1),
        "text": dict(hidden_size=24, intermediate_size=30, num_hidden_layers=2, num_attention_heads=2),
        "vision": dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
                       patch_size=16, image_size=32),
        "scheduler": dict(set_alpha_to_one=False),
        "run": dict(height=40, width=24, frames=2, guidance_scale=7.5),
    },
    "i2vgen-xl-tiny-3level": {
        "unet": dict(block_out_channels=(32, 32, 64), layers_per_block=1, attention_head_dim=8, cross_attention_dim=32,
                     down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                     up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")),
        "vae": dict(block_out_channels=(32, 32, 64), layers_per_block=1),
        "text": dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2),
        "vision": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                       patch_size=14, image_size=28),
        "scheduler": dict(set_alpha_to_one=True),
        "run": dict(height=40, width=56, frames=5, guidance_scale=6.0, eta=0.5, decode_chunk_size=2),
    },
}


def expose_text_model(text_encoder) -> None:
    """Give a transformers-5 CLIPTextModel the `text_model.final_layer_norm` path diffusers' I2VGenXLPipeline uses:
    a plain (unregistered) attribute holding the encoder's own final_layer_norm. No-op when it already has one."""
    if not hasattr(text_encoder, "text_model"):
        text_encoder.text_model = types.SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm)


class I2VGenXLAdapter(PipelineAdapter):
    pipeline = "I2VGenXLPipeline"
    presets = PRESETS

    def make_fixture(self, spec: dict, seed: int):
        """A tiny I2VGenXLPipeline (diffusers, random weights), with a DDIM scheduler configured as the released
        checkpoint's (v-prediction, zero-SNR rescaled cosine betas, leading spacing)."""
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(seed)
        u = spec["unet"]
        unet = I2VGenXLUNet(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **u)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=32, scaling_factor=0.18125,
                            down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
                            up_block_types=("UpDecoderBlock2D",) * len(spec["vae"]["block_out_channels"]), **spec["vae"])
        tokenizer, text_encoder = tiny_clip_text(spec["text"], u["cross_attention_dim"], "gelu")
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            projection_dim=u["cross_attention_dim"], hidden_act="gelu", **spec["vision"]))
        for i, m in enumerate((unet, vae, text_encoder, image_encoder)):
            randomise(m, seed * 10 + i)
        size = spec["vision"]["image_size"]
        feature_extractor = CLIPImageProcessor(crop_size={"height": size, "width": size}, size={"shortest_edge": size},
                                               do_center_crop=True, do_normalize=True, do_resize=True, do_rescale=True,
                                               resample=3)
        scheduler = DDIMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02,
            clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True, steps_offset=1,
            timestep_spacing="leading", **spec.get("scheduler", {}),
        )
        return I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                                feature_extractor=feature_extractor, unet=unet, scheduler=scheduler)

    def load_reference(self, src):
        pipe = super().load_reference(src)
        expose_text_model(pipe.text_encoder)
        return pipe

    # where the VAE posterior sample, the initial latents and (eta > 0) DDIM's variance noise come from
    reference_noise_modules = (
        "diffusers.models.autoencoders.vae",
        "diffusers.pipelines.deprecated.i2vgen_xl.pipeline_i2vgen_xl",
        "diffusers.schedulers.scheduling_ddim",
    )
    our_noise_modules = ("mindport.pipelines.i2vgen_xl", "mindport.schedulers.scheduling_ddim")

    def call_kwargs(self, settings: dict) -> dict:
        """Identical arguments for both pipelines; the image is synthesised from the seed (larger than the output,
        and of another aspect ratio, so both centre crops and resizes do work)."""
        w, h = settings["width"], settings["height"]
        return dict(
            prompt=PROMPT,
            negative_prompt=NEGATIVE_PROMPT,
            image=synthetic_image(w + w // 2 + 3, h + h // 3 + 1, settings["seed"]),
            height=h,
            width=w,
            target_fps=16,
            num_frames=settings["frames"],
            num_inference_steps=settings["steps"],
            guidance_scale=float(settings.get("guidance_scale", 9.0)),
            eta=float(settings.get("eta", 0.0)),
            decode_chunk_size=settings.get("decode_chunk_size") or 1,
            output_type="np",
        )

    def run_reference(self, pipe, kwargs, callback=None) -> np.ndarray:
        """`callback(step, latents) -> numpy array or None` sees the latents (B, C, F, h, w) after every step (numpy) and
        may replace them."""
        import torch

        frames = kwargs["num_frames"]
        if callback is not None:
            step = pipe.scheduler.step
            count = [0]

            @functools.wraps(step)
            def recording_step(*args, **kw):
                out = step(*args, **kw)
                prev = out.prev_sample if hasattr(out, "prev_sample") else out[0]
                bf, c, h, w = prev.shape
                lat = prev.detach().float().numpy().reshape(bf // frames, frames, c, h, w).transpose(0, 2, 1, 3, 4)
                new = callback(count[0], np.ascontiguousarray(lat))
                count[0] += 1
                if new is None:
                    return out
                new = torch.from_numpy(np.ascontiguousarray(np.asarray(new).transpose(0, 2, 1, 3, 4).reshape(bf, c, h, w)))
                if hasattr(out, "prev_sample"):
                    out.prev_sample = new.to(prev.dtype)
                    return out
                return (new.to(prev.dtype), *out[1:])

            pipe.scheduler.step = recording_step
        try:
            with torch.no_grad():
                out = pipe(**kwargs, return_dict=True)
        finally:
            if callback is not None:
                del pipe.scheduler.step
        return np.asarray(out.frames, dtype=np.float32)

    def default_settings(self, config) -> dict:
        """As the pipeline: the UNet's sample_size times the VAE factor (704 x 1280 when null); 16 frames."""
        height, width = pipeline_output_size(None, None, config("unet"), vae_scale_factor(config("vae")),
                                             fallback=(704, 1280))
        return {"height": height, "width": width, "frames": 16}


ADAPTER = I2VGenXLAdapter()
