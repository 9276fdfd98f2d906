"""Stable Video Diffusion adapter for the harness: how to build both pipelines, where each draws noise, how to call
them with identical arguments."""

from __future__ import annotations

import numpy as np

from .fixtures import test_image

PIPELINE = "StableVideoDiffusionPipeline"
COMPONENTS = ("image_encoder", "vae", "unet")


def load_reference(src):
    import torch
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(str(src), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_ours(converted, dtype):
    from mindport import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(str(converted), mindspore_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def patch_noise(noise):
    """Route every random draw of both pipelines through the shared numpy noise source. Returns an undo function."""
    import sys

    import torch
    from diffusers.pipelines.stable_video_diffusion import pipeline_stable_video_diffusion as ref_mod

    from mindport.pipelines import stable_video_diffusion as our_mod

    def ref_randn(shape, generator=None, device=None, dtype=None, layout=None):
        who = sys._getframe(1).f_code.co_name
        return torch.from_numpy(noise.draw("torch", who, shape)).to(dtype or torch.float32)

    def our_randn(generator, shape, dtype=np.float32):
        who = sys._getframe(1).f_code.co_name
        return noise.draw("mindspore", who, shape).astype(dtype)

    saved = (ref_mod.randn_tensor, our_mod.randn)
    ref_mod.randn_tensor, our_mod.randn = ref_randn, our_randn

    def undo():
        ref_mod.randn_tensor, our_mod.randn = saved

    return undo


def call_kwargs(settings: dict) -> dict:
    """Identical arguments for both pipelines; the image is synthesised from the seed."""
    return dict(
        image=test_image(settings["width"], settings["height"], settings["seed"]),
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


def run_reference(pipe, kwargs, callback=None) -> np.ndarray:
    """`callback(step, latents) -> None` sees the latents after every step (numpy)."""
    import torch

    def on_step(_pipe, i, _t, tensors):
        callback(i, tensors["latents"].detach().float().numpy())
        return {}

    with torch.no_grad():
        out = pipe(**kwargs, callback_on_step_end=on_step if callback else None, return_dict=True)
    return np.asarray(out.frames, dtype=np.float32)


def run_ours(pipe, kwargs, callback=None) -> np.ndarray:
    """`callback(step, latents) -> numpy array or None`: replaces the latents after a step (re-synchronisation)."""
    from mindspore import Tensor

    def on_step(_pipe, i, _t, tensors):
        new = callback(i, tensors["latents"])
        return {} if new is None else {"latents": Tensor(new).astype(tensors["latents"].dtype)}

    return np.asarray(pipe(**kwargs, callback_on_step_end=on_step if callback else None), dtype=np.float32)


def default_settings(unet_config: dict) -> dict:
    return {"height": unet_config.get("sample_size", 8) * 8, "width": unet_config.get("sample_size", 8) * 8,
            "frames": unet_config.get("num_frames", 3)}
