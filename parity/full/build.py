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
    # Wan 2.1: 480p's aspect (480x832) at 64x112 pixels, 5 frames (2 latent frames of 8x14: 56 tokens); the text
    # context is the pipelines' 512 UMT5 tokens (+ 257 CLIP tokens for I2V)
    "wan2.1-t2v-1.3b": dict(height=64, width=112, frames=5, steps=2),
    "wan2.1-i2v-14b-480p": dict(height=64, width=112, frames=5, steps=2),
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
    "wan2.1-t2v-1.3b": [("transformer", "diffusers", "WanTransformer3DModel"),
                        ("vae", "diffusers", "AutoencoderKLWan"),
                        ("text_encoder", "transformers", "UMT5EncoderModel")],
    "wan2.1-i2v-14b-480p": [("transformer", "diffusers", "WanTransformer3DModel"),
                            ("vae", "diffusers", "AutoencoderKLWan"),
                            ("text_encoder", "transformers", "UMT5EncoderModel"),
                            ("image_encoder", "transformers", "CLIPVisionModel")],
}

# Components too large to build in memory (UMT5-XXL: 23 GB float32; the 14B transformer: 66 GB): `build` leaves them
# out of the pipeline folder; `streamed_checkpoint` writes each as a sharded bf16 checkpoint (as Wan ships them),
# tensor by tensor, for the streamed comparison (parity/full/streamed.py), which deletes it afterwards.
STREAMED: dict[str, set[str]] = {
    "wan2.1-t2v-1.3b": {"text_encoder"},
    "wan2.1-i2v-14b-480p": {"transformer", "text_encoder"},
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
        if folder in STREAMED.get(name, ()):
            continue
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
    for folder in ("scheduler", "feature_extractor", "image_processor"):
        if (src / folder).is_dir():
            shutil.copytree(src / folder, tmp / folder)
    if "tokenizer" in index and index["tokenizer"][1].startswith("T5"):
        write_tiny_t5_tokenizer(tmp / "tokenizer", model_max_length=512)
    elif "tokenizer" in index:
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


def streamed_checkpoint_path(name: str, folder: str, seed: int = 0, cache: Path | None = None) -> Path:
    return Path(cache or CACHE) / f"{check_name(name)}-{folder}-seed{seed}-bf16"


def streamed_checkpoint(name: str, folder: str, seed: int = 0, cache: Path | None = None, log=print) -> Path:
    """The random-weight bf16 checkpoint of a streamed component (written tensor by tensor; reused if complete).
    Each tensor is drawn from a generator seeded by (seed, its name): the same config gives the same weights in
    either pipeline (the two Wan pipelines' identical text encoders)."""
    from .streamed import write_checkpoint

    class_name = next(cls for f, _l, cls in MODELS[check_name(name)] if f == folder)
    cfg = {k: v for k, v in read_config(name, folder).items() if not k.startswith("_")}
    return write_checkpoint(class_name, cfg, streamed_checkpoint_path(name, folder, seed, cache), seed, "bf16", log=log)


def write_tiny_t5_tokenizer(out: Path, model_max_length: int = 512) -> Path:
    """A tiny T5 (Unigram) tokenizer: pad 0, eos 1, unk 2, then lowercase letters, digits, punctuation and the words
    of the comparison prompts; all ids far below UMT5's 256384 rows. The released spiece model cannot be downloaded
    here; a tokenizer is not architecture."""
    import string

    from transformers import T5Tokenizer

    words = "the a cat dog walking at night static".split()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + ",.!?'-"]
    pieces += [("\u2581" + w, -1.0) for w in words]
    T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length).save_pretrained(str(out))
    return out


def prepare(name: str, seed: int = 0) -> tuple[Path, dict]:
    """`mindport parity --config-only NAME`: the built folder and its reduced run settings."""
    return build(name, seed), dict(SETTINGS[check_name(name)], seed=seed)
