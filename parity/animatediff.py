"""AnimateDiff adapter for the harness: how to build both pipelines, where each draws noise, how to call them with
identical arguments.

The fixture is built as users build AnimateDiff: an SD 1.5-like `UNet2DConditionModel` and a `MotionAdapter` (both
randomised) handed to diffusers' AnimateDiffPipeline, which merges them into a `UNetMotionModel`; the saved folder
holds that UNet plus the adapter. Random draws: the initial latents (`prepare_latents`) and, with eta > 0, one DDIM
variance draw per step (`step`). With FreeNoise (the run setting `free_noise`: enable_free_noise's arguments, on both
sides) the latents are drawn by its own function on each side, and with noise_type "shuffle_context" each window's
permutation is the argsort of a shared draw on both sides (diffusers' `torch.randperm` replaced for the run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters import ConversionError
from converters.sources import read_json
from mindport.image_processing import pipeline_output_size, vae_scale_factor

from .adapter import PipelineAdapter
from .fixtures import randomise, tiny_clip_text

PROMPT = "the cat walking at night"
NEGATIVE_PROMPT = "a dog, static"

# Named tiny AnimateDiff configs. `unet` is the SD 1.5-like base UNet, `adapter` the MotionAdapter; `run` holds the
# parity settings (pixels, frames) and the sampler settings the adapter reads itself (guidance_scale, eta,
# decode_chunk_size).
# - animatediff-tiny: two levels, conv proj_in, spatial heads (2, 4), 2 motion heads, 4 of 8 frames, latents 8x8;
# - animatediff-tiny-3level: three levels, linear proj_in, one head per level for space and (1, 2, 4) in time,
#   two temporal transformer layers, 6 = motion_max_seq_length frames, a three-level VAE, latents 6x10 (not
#   divisible by 4: the up blocks take the skips' sizes), DDIM eta 0.5, decoded 4 frames at a time;
# - animatediff-tiny-nomid: an adapter without a motion mid block (AnimateDiff v1), 8 heads in time, heads (4, 1) in
#   space, two resnets per level, 3 frames, a one-level VAE (latents at pixel size, 16x8).
PRESETS: dict[str, dict] = {
    "animatediff-tiny": {
        "unet": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(2, 4), cross_attention_dim=32,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8),
        "adapter": dict(motion_layers_per_block=1, motion_num_attention_heads=2, motion_norm_num_groups=8,
                        motion_max_seq_length=8),
        "vae": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
        "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        "run": dict(height=16, width=16, frames=4, guidance_scale=7.5),
    },
    "animatediff-tiny-3level": {
        "unet": dict(block_out_channels=(16, 32, 32), layers_per_block=1, attention_head_dim=1, cross_attention_dim=24,
                     down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
                     use_linear_projection=True),
        "adapter": dict(motion_layers_per_block=1, motion_num_attention_heads=(1, 2, 4), motion_norm_num_groups=8,
                        motion_transformer_layers_per_block=2, motion_max_seq_length=6),
        "vae": dict(block_out_channels=(16, 16, 16), layers_per_block=1, norm_num_groups=8),
        "text": dict(hidden_size=24, intermediate_size=30, num_hidden_layers=1, num_attention_heads=2),
        "run": dict(height=24, width=40, frames=6, guidance_scale=6.0, eta=0.5, decode_chunk_size=4),
    },
    "animatediff-tiny-nomid": {
        "unet": dict(block_out_channels=(32, 32), layers_per_block=2, attention_head_dim=(4, 1), cross_attention_dim=16,
                     down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8),
        "adapter": dict(motion_layers_per_block=2, motion_num_attention_heads=8, motion_norm_num_groups=4,
                        use_motion_mid_block=False, motion_max_seq_length=24),
        "vae": dict(block_out_channels=(16,), layers_per_block=1, norm_num_groups=8),
        "text": dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2),
        "run": dict(height=16, width=8, frames=3, guidance_scale=4.0),
    },
}


def make_components(spec: dict, seed: int) -> dict:
    """The diffusers / transformers components of a tiny AnimateDiff (random weights): vae, text_encoder,
    tokenizer, unet (an SD 1.5-like UNet2DConditionModel), motion_adapter, scheduler (DDIM as AnimateDiff's
    examples configure it)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        MotionAdapter,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    u = spec["unet"]
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, **u)
    adapter = MotionAdapter(block_out_channels=u["block_out_channels"], **spec["adapter"])
    levels = len(spec["vae"]["block_out_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
                        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                        **spec["vae"])
    tokenizer, text_encoder = tiny_clip_text(spec["text"], u["cross_attention_dim"], "quick_gelu")
    for i, m in enumerate((unet, adapter, vae, text_encoder)):
        randomise(m, seed * 10 + i)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                              clip_sample=False, timestep_spacing="linspace", steps_offset=1, set_alpha_to_one=False)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, motion_adapter=adapter,
                scheduler=scheduler)


class AnimateDiffAdapter(PipelineAdapter):
    pipeline = "AnimateDiffPipeline"
    presets = PRESETS

    def make_fixture(self, spec: dict, seed: int):
        """A tiny AnimateDiffPipeline (diffusers): the pipeline builds its UNetMotionModel from the UNet2D + adapter."""
        from diffusers import AnimateDiffPipeline

        return AnimateDiffPipeline(**make_components(spec, seed))

    # where the initial latents and (eta > 0) DDIM's variance noise come from
    reference_noise_modules = (
        "diffusers.pipelines.animatediff.pipeline_animatediff",
        "diffusers.pipelines.free_noise_utils",
        "diffusers.schedulers.scheduling_ddim",
    )
    our_noise_modules = ("mindport.pipelines.animatediff", "mindport.pipelines.free_noise",
                         "mindport.schedulers.scheduling_ddim")

    def patch_noise(self, noise, reference: bool = True):
        """The shared noise, and diffusers' FreeNoise permutations as ours: the argsort of a shared draw."""
        undo = super().patch_noise(noise, reference)
        if not reference:
            return undo
        from diffusers.pipelines import free_noise_utils

        saved = free_noise_utils.torch
        free_noise_utils.torch = _SharedRandperm(saved, free_noise_utils)

        def undo_all():
            free_noise_utils.torch = saved
            undo()

        return undo_all

    def free_noise_settings(self, root, free_noise: dict) -> dict:
        from mindport.pipelines.free_noise import free_noise_settings

        limit = read_json(Path(root) / "unet" / "config.json").get("motion_max_seq_length", 32)
        settings = free_noise_settings(limit, **free_noise)
        if settings["weighting_scheme"] == "delayed_reverse_sawtooth" and settings["context_length"] % 2:
            raise ConversionError(f"--free-noise: diffusers {_diffusers_version()} cannot run delayed_reverse_sawtooth "
                                  f"with an odd context_length ({settings['context_length']}: it builds one weight too "
                                  "many); use an even one")
        return settings

    def call_kwargs(self, settings: dict) -> dict:
        """Identical arguments for both pipelines: a prompt and a negative prompt with guidance."""
        return dict(
            prompt=PROMPT,
            negative_prompt=NEGATIVE_PROMPT,
            height=settings["height"],
            width=settings["width"],
            num_frames=settings["frames"],
            num_inference_steps=settings["steps"],
            guidance_scale=float(settings.get("guidance_scale", 7.5)),
            eta=float(settings.get("eta", 0.0)),
            decode_chunk_size=settings.get("decode_chunk_size") or settings["frames"],
            output_type="np",
        )

    def default_settings(self, config) -> dict:
        """As the pipeline: the UNet's sample_size times the VAE factor (512 for SD 1.5; the VAE's own sample_size
        when null), 16 frames (fewer if the motion modules hold fewer positions)."""
        unet, vae = config("unet"), config("vae")
        height, width = pipeline_output_size(None, None, unet, vae_scale_factor(vae), vae_config=vae,
                                             owner="mindport parity (--height, --width)")
        return {"height": height, "width": width, "frames": min(16, unet.get("motion_max_seq_length") or 32)}


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


class _SharedRandperm:
    """diffusers' free_noise_utils sees this as `torch`: torch itself, but randperm(n) is the argsort of n values drawn
    through the module's (shared-noise) randn_tensor, as mindport draws its FreeNoise permutations."""

    def __init__(self, torch, module):
        self._torch, self._module = torch, module

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def randperm(self, n, generator=None, **_):
        values = self._module.randn_tensor((n,), generator=generator).numpy()
        return self._torch.from_numpy(np.argsort(values, kind="stable"))


ADAPTER = AnimateDiffAdapter()
