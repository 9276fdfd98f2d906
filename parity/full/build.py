"""Full-size random-weight pipelines from the released configs shipped in `configs/`.

Each model component is constructed from its released config.json with diffusers / transformers, every parameter
re-drawn by `parity.fixtures.randomise` (seeded), saved with `save_pretrained` and freed before the next one is built,
so at most one model (plus, for AnimateDiff, the SD 1.5 UNet and the adapter being merged) is in memory at a time.
The folder is written to a temporary sibling and renamed into place when complete; later calls reuse it.

Tokenizers are not architecture: the released vocabularies cannot be downloaded here, so the CLIP tokenizer is the
tiny byte-level vocabulary of `parity.fixtures.write_tiny_clip_vocab` (its ids stay below the released
vocab_size 49408, so every id indexes the full-size embedding table)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from pathlib import Path

from ..fixtures import randomise, write_tiny_clip_vocab

CONFIGS = Path(__file__).resolve().parent / "configs"
CACHE = Path(os.environ.get("MINDPORT_FULL_CACHE", Path(__file__).resolve().parents[2] / "build" / "full"))
NAMES = tuple(sorted(p.name for p in CONFIGS.iterdir() if (p / "model_index.json").exists()))
# bump when the way weights are drawn or saved changes (cached folders are keyed by it)
BUILD_VERSION = 1

# Reduced run settings that fit 2 CPU cores: 64x64 pixels (8x8 latents), 2 frames, 2 steps.
SETTINGS: dict[str, dict] = {
    "svd-xt": dict(height=64, width=64, frames=2, steps=2, decode_chunk_size=2),
    "i2vgen-xl": dict(height=64, width=64, frames=2, steps=2, decode_chunk_size=2),
    "animatediff-v1-5-2": dict(height=64, width=64, frames=2, steps=2, decode_chunk_size=2),
}

# model components in build order: (folder, library, class name); weights are drawn with seed * 10 + position
MODELS: dict[str, list[tuple[str, str, str]]] = {
    "svd-xt": [("unet", "diffusers", "UNetSpatioTemporalConditionModel"),
               ("vae", "diffusers", "AutoencoderKLTemporalDecoder"),
               ("image_encoder", "transformers", "CLIPVisionModelWithProjection")],
    "i2vgen-xl": [("unet", "diffusers", "I2VGenXLUNet"),
                  ("vae", "diffusers", "AutoencoderKL"),
                  ("text_encoder", "transformers", "CLIPTextModel"),
                  ("image_encoder", "transformers", "CLIPVisionModelWithProjection")],
    # the SD 1.5 UNet and the motion adapter are merged into a UNetMotionModel, as AnimateDiffPipeline does
    "animatediff-v1-5-2": [("motion_adapter", "diffusers", "MotionAdapter"),
                           ("unet", "diffusers", "UNet2DConditionModel"),
                           ("vae", "diffusers", "AutoencoderKL"),
                           ("text_encoder", "transformers", "CLIPTextModel")],
}


def check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown released config {name!r}; expected one of {', '.join(NAMES)}")
    return name


def read_config(name: str, folder: str) -> dict:
    return json.loads((CONFIGS / check_name(name) / folder / "config.json").read_text())


def construct(name: str, folder: str):
    """The component built from its released config, default initialisation (not randomised)."""
    library, class_name = next((lib, cls) for f, lib, cls in MODELS[check_name(name)] if f == folder)
    config = read_config(name, folder)
    if library == "diffusers":
        import diffusers

        return getattr(diffusers, class_name).from_config(config)
    import transformers

    cls = getattr(transformers, class_name)
    return cls(cls.config_class(**{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}))


def build(name: str, seed: int = 0, cache: Path | None = None, log=print) -> Path:
    """The full-size random-weight pipeline folder for `name` (diffusers layout, fp32 safetensors), cached."""
    check_name(name)
    cache = Path(cache or CACHE)
    out = cache / f"{name}-seed{seed}-v{BUILD_VERSION}"
    if (out / "model_index.json").exists():
        return out
    from ..adapter import quiet_reference_libraries

    quiet_reference_libraries()
    tmp = cache / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    src = CONFIGS / name
    index = json.loads((src / "model_index.json").read_text())
    adapter = None
    for i, (folder, _lib, class_name) in enumerate(MODELS[name]):
        t0 = time.perf_counter()
        model = randomise(construct(name, folder), seed * 10 + i)
        if class_name == "MotionAdapter":
            adapter = model
        elif class_name == "UNet2DConditionModel" and adapter is not None:
            from diffusers import UNetMotionModel

            model = UNetMotionModel.from_unet2d(model, adapter)
            index["unet"] = ["diffusers", "UNetMotionModel"]
        model.save_pretrained(tmp / folder, safe_serialization=True)
        n = sum(p.numel() for p in model.parameters())
        if model is not adapter:
            del model
        if folder == "unet":
            adapter = None
        gc.collect()
        log(f"  {name}/{folder}: {n / 1e6:.1f} M parameters, {time.perf_counter() - t0:.0f} s")
    for folder in ("scheduler", "feature_extractor"):
        if (src / folder).is_dir():
            shutil.copytree(src / folder, tmp / folder)
    if "tokenizer" in index:
        from transformers import CLIPTokenizer

        vocab, _ = write_tiny_clip_vocab(tmp / ".vocab")
        max_len = read_config(name, "text_encoder")["max_position_embeddings"]
        CLIPTokenizer.from_pretrained(str(vocab), model_max_length=max_len).save_pretrained(tmp / "tokenizer")
        shutil.rmtree(vocab)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    (tmp / "mindport_full.json").write_text(json.dumps({"name": name, "seed": seed, "version": BUILD_VERSION}))
    try:
        os.replace(tmp, out)
    except OSError:  # built concurrently by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare(name: str, seed: int = 0) -> tuple[Path, dict]:
    """`mindport parity --config-only NAME`: the built folder and its reduced run settings."""
    return build(name, seed), dict(SETTINGS[check_name(name)], seed=seed)
