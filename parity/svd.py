"""Stable Video Diffusion adapter for the harness: how to build both pipelines, where each draws noise, how to call
them with identical arguments."""

from __future__ import annotations

from mindport.image_processing import pipeline_output_size, vae_scale_factor

from .adapter import PipelineAdapter
from .fixtures import randomise, synthetic_image

# Named tiny SVD configs. `run` holds the parity settings (pixels, frames) that fit the config.
PRESETS: dict[str, dict] = {
    "svd-tiny": {
        "unet": dict(block_out_channels=(32, 64), num_attention_heads=(2, 4), layers_per_block=1, cross_attention_dim=32,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                     up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_frames=3),
        "vae": dict(block_out_channels=(32, 64), layers_per_block=1),
        "clip": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, patch_size=32),
        "run": dict(height=32, width=40, frames=3),
    },
    "svd-tiny-3level": {
        "unet": dict(block_out_channels=(32, 32, 64), num_attention_heads=2, layers_per_block=2, cross_attention_dim=48,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
                     up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2, num_frames=4),
        "vae": dict(block_out_channels=(32, 32, 64), layers_per_block=1),
        "clip": dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=32),
        "run": dict(height=48, width=32, frames=5),
    },
    "svd-tiny-wide": {
        "unet": dict(block_out_channels=(64, 64), num_attention_heads=(8, 1), layers_per_block=1, cross_attention_dim=24,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
                     up_block_types=("CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                     transformer_layers_per_block=(2, 1), num_frames=2),
        "vae": dict(block_out_channels=(32, 64), layers_per_block=2),
        "clip": dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, patch_size=56),
        "run": dict(height=24, width=40, frames=2),
    },
}


class StableVideoDiffusionAdapter(PipelineAdapter):
    pipeline = "StableVideoDiffusionPipeline"
    presets = PRESETS
    returns_frames = True

    def make_fixture(self, spec: dict, seed: int):
        """A tiny StableVideoDiffusionPipeline (diffusers, random weights)."""
        import torch
        from diffusers import (
            AutoencoderKLTemporalDecoder,
            EulerDiscreteScheduler,
            StableVideoDiffusionPipeline,
            UNetSpatioTemporalConditionModel,
        )
        from transformers import (
            CLIPImageProcessor,
            CLIPVisionConfig,
            CLIPVisionModelWithProjection,
        )

        torch.manual_seed(seed)
        u = spec["unet"]
        unet = UNetSpatioTemporalConditionModel(
            sample_size=8, in_channels=8, out_channels=4, addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=24, **u,
        )
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
            down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]["block_out_channels"]), **spec["vae"],
        )
        c = spec["clip"]
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
            image_size=224, projection_dim=u["cross_attention_dim"], hidden_act="gelu", **c,
        ))
        for i, m in enumerate((unet, vae, clip)):
            randomise(m, seed * 10 + i)
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
            num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
            steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
        )
        fe = CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}, do_center_crop=True, do_normalize=True,
                                do_resize=True, do_rescale=True, resample=3)
        return StableVideoDiffusionPipeline(vae=vae, image_encoder=clip, unet=unet, scheduler=scheduler,
                                            feature_extractor=fe)

    # where the noise augmentation, the initial latents (and the Euler scheduler's churn noise, which SVD's settings
    # never draw) come from
    reference_noise_modules = (
        "diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion",
        "diffusers.schedulers.scheduling_euler_discrete",
    )
    our_noise_modules = ("mindport.pipelines.stable_video_diffusion", "mindport.schedulers.scheduling_euler_discrete")

    def call_kwargs(self, settings: dict) -> dict:
        """Identical arguments for both pipelines; the image is synthesised from the seed."""
        return dict(
            image=synthetic_image(settings["width"], settings["height"], settings["seed"]),
            height=settings["height"],
            width=settings["width"],
            num_frames=settings["frames"],
            num_inference_steps=settings["steps"],
            min_guidance_scale=settings.get("min_guidance_scale", 1.0),
            max_guidance_scale=settings.get("max_guidance_scale", 3.0),
            decode_chunk_size=settings.get("decode_chunk_size") or settings["frames"],
            motion_bucket_id=127,
            fps=7,
            noise_aug_strength=0.02,
            output_type="np",
        )

    def default_settings(self, config) -> dict:
        """As the pipeline: the UNet's sample_size times the VAE factor (576 x 1024 when null) and its num_frames
        (25, the class default, when null)."""
        unet = config("unet")
        height, width = pipeline_output_size(None, None, unet, vae_scale_factor(config("vae")), fallback=(576, 1024))
        return {"height": height, "width": width, "frames": unet.get("num_frames") or 25}


ADAPTER = StableVideoDiffusionAdapter()
