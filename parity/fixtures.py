"""Tiny random-weight diffusers checkpoints, built offline with seeded torch and `save_pretrained`.

Every parameter is re-drawn from a seeded normal after construction: diffusers zero-initialises some layers
(output convolutions, blend factors), and a mapping bug in a zero layer would be invisible."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image

CACHE = Path(os.environ.get("MINDPORT_CACHE", Path(__file__).resolve().parent.parent / "build" / "fixtures"))

# Named tiny SVD configs. `run` holds the parity settings (pixels, frames) that fit the config.
SVD_PRESETS: dict[str, dict] = {
    "svd-tiny": {
        "unet": dict(block_out_channels=(32, 64), num_attention_heads=(2, 4), layers_per_block=1, cross_attention_dim=32,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                     up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_frames=3),
        "vae": dict(block_out_channels=(32, 64), layers_per_block=1),
        "clip": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, patch_size=32),
        "run": dict(height=32, width=40, num_frames=3),
    },
    "svd-tiny-3level": {
        "unet": dict(block_out_channels=(32, 32, 64), num_attention_heads=2, layers_per_block=2, cross_attention_dim=48,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 2 + ("DownBlockSpatioTemporal",),
                     up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 2, num_frames=4),
        "vae": dict(block_out_channels=(32, 32, 64), layers_per_block=1),
        "clip": dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=32),
        "run": dict(height=48, width=32, num_frames=5),
    },
    "svd-tiny-wide": {
        "unet": dict(block_out_channels=(64, 64), num_attention_heads=(8, 1), layers_per_block=1, cross_attention_dim=24,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
                     up_block_types=("CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                     transformer_layers_per_block=(2, 1), num_frames=2),
        "vae": dict(block_out_channels=(32, 64), layers_per_block=2),
        "clip": dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, patch_size=56),
        "run": dict(height=24, width=40, num_frames=2),
    },
}


def _randomise(module, seed: int) -> None:
    """Re-draw every parameter from a seeded normal; norms around 1, the rest scaled by fan-in."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("mix_factor")):
                base = 1.0 if "weight" in name else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif p.ndim == 0:
                p.copy_(torch.randn((), generator=g))
            else:
                fan_in = max(1, int(np.prod(p.shape[1:])))
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _key(preset: str, spec: dict, seed: int) -> str:
    import diffusers
    import transformers

    blob = json.dumps([preset, spec, seed, diffusers.__version__, transformers.__version__, 2], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_svd(preset: str = "svd-tiny", seed: int = 0, cache: Path | None = None, variants=("fp16",)) -> Path:
    """A tiny StableVideoDiffusionPipeline folder (diffusers layout, safetensors, plus fp16 variant files)."""
    if preset not in SVD_PRESETS:
        raise ValueError(f"unknown SVD preset {preset!r}; expected one of {', '.join(SVD_PRESETS)}")
    spec = SVD_PRESETS[preset]
    cache = Path(cache or CACHE)
    out = cache / f"{preset}-{_key(preset, spec, seed)}"
    if (out / "model_index.json").exists():
        return out

    import torch
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from diffusers import UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

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
        _randomise(m, seed * 10 + i)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
    )
    fe = CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}, do_center_crop=True, do_normalize=True,
                            do_resize=True, do_rescale=True, resample=3)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=clip, unet=unet, scheduler=scheduler, feature_extractor=fe)
    tmp = cache / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for v in variants:  # fp16 variant files beside the fp32 ones, as the Hub repos have them
        for name in ("unet", "vae", "image_encoder"):
            getattr(pipe, name).to(torch.float16).save_pretrained(tmp / name, variant=v, safe_serialization=True)
            getattr(pipe, name).to(torch.float32)
    (tmp / "mindport_fixture.json").write_text(json.dumps({"preset": preset, "seed": seed, "spec": spec}, default=list))
    try:
        os.replace(tmp, out)
    except OSError:  # built concurrently by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def fixture_run_settings(path) -> dict:
    """The parity settings a tiny fixture was built for (empty for other checkpoints)."""
    meta = Path(path) / "mindport_fixture.json"
    if meta.exists():
        return dict(json.loads(meta.read_text())["spec"].get("run", {}))
    return {}


def test_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """A deterministic, smooth-plus-detail RGB test picture (no files, no network)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([
        0.5 + 0.5 * np.sin(x / max(width, 1) * 2 * np.pi + rng.uniform(0, 6)),
        0.5 + 0.5 * np.cos(y / max(height, 1) * 3 * np.pi + rng.uniform(0, 6)),
        ((x + y) / (width + height)),
    ], axis=-1)
    img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
    return PIL.Image.fromarray((img * 255).round().astype(np.uint8))
