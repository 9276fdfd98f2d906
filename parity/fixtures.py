"""Tiny random-weight diffusers checkpoints, built offline with seeded torch and `save_pretrained`.

Every parameter is re-drawn from a seeded normal after construction: diffusers zero-initialises some layers
(output convolutions, blend factors), and a mapping bug in a zero layer would be invisible."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image

from converters.registry import pipeline_for_fixture

from .adapter import FIXTURE_META, adapter_for, check_run_settings, quiet_reference_libraries

CACHE = Path(os.environ.get("MINDPORT_CACHE", Path(__file__).resolve().parent.parent / "build" / "fixtures"))

def randomise(module, seed: int, vector_std: float = 0.1):
    """Re-draw every floating parameter and buffer from a seeded normal: matrices N(0, 1/fan_in), norm scales (any
    shape with one non-unit axis) 1 + N(0, std^2), other vectors N(0, std^2), blend factors +-U(0.5, 2) (sigmoid far
    from 0.5, so a swap of the spatial and temporal paths shows). Returns the module in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in [*module.named_parameters(), *module.named_buffers()]:
            # index and position tables, and computed rotary tables (Wan's rope.freqs_cos / freqs_sin), stay
            if not p.is_floating_point() or name.endswith(("position_ids", ".pe")) or ".freqs_" in f".{name}":
                continue
            n = torch.randn(p.shape, generator=g)
            if name.endswith("mix_factor"):
                sign = 1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0
                p.copy_(sign * (0.5 + 1.5 * torch.rand(p.shape, generator=g)))
            elif "norm" in name and name.endswith(("weight", "gamma")) and p.numel() == max(p.shape, default=1):
                p.copy_(1.0 + vector_std * n)  # a norm scale, also when shaped to broadcast (Wan's (C, 1, 1, 1))
            elif p.ndim >= 2:
                p.copy_(n / math.sqrt(max(1, p[0].numel())))
            else:
                p.copy_(vector_std * n)
    return module.eval()


def _key(preset: str, spec: dict, seed: int) -> str:
    import diffusers
    import transformers

    blob = json.dumps([preset, spec, seed, diffusers.__version__, transformers.__version__, 5], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build(preset: str, seed: int = 0, cache: Path | None = None) -> Path:
    """A tiny random-weight pipeline folder in diffusers layout (cached by preset, seed and library versions); the
    presets are the registry's fixtures, defined in each pipeline's parity adapter."""
    adapter = adapter_for(pipeline_for_fixture(preset).name)
    if preset not in adapter.presets:
        raise ValueError(f"fixture preset {preset!r} is registered for {adapter.pipeline} but parity/"
                         f"{adapter.row.adapter}.py does not define it; defined: {', '.join(adapter.presets)}")
    spec = adapter.presets[preset]
    check_run_settings(preset, spec.get("run", {}))
    return cached_build(preset, spec, seed, adapter.make_fixture, cache)


def cached_build(preset: str, spec: dict, seed: int, make_pipeline, cache: Path | None = None,
                 variants=("fp16",)) -> Path:
    """Build with `make_pipeline(spec, seed)` (a diffusers pipeline, weights randomised), save it with
    `save_pretrained` plus fp16 variant files for every model, as Hub repos have them; temp folder, then rename."""
    import torch

    cache = Path(cache or CACHE)
    out = cache / f"{preset}-{_key(preset, spec, seed)}"
    if (out / "model_index.json").exists():
        return out
    quiet_reference_libraries()
    pipe = make_pipeline(spec, seed)
    tmp = cache / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # fp16 variants from copies (a round trip through fp16 would round the fp32 weights and buffers), written first:
    # transformers records the dtype in config.json, so the fp32 save must come last
    for name, comp in pipe.components.items():
        if isinstance(comp, torch.nn.Module) and variants:
            for v in variants:
                copy.deepcopy(comp).to(torch.float16).save_pretrained(tmp / name, variant=v, safe_serialization=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / FIXTURE_META).write_text(json.dumps({"preset": preset, "seed": seed, "spec": spec}, default=list))
    try:
        os.replace(tmp, out)
    except OSError:  # built concurrently by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_tiny_clip_vocab(folder) -> tuple[Path, int]:
    """A byte-level BPE vocabulary in CLIP's format (every byte symbol alone and word-final, a few merges, the two
    special tokens) written as vocab.json / merges.txt. Returns (folder, vocabulary size)."""
    from tokenizers import pre_tokenizers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "c a", "ca t</w>", "i n</w>", "a t</w>", "h at</w>", "s t", "r e", "o n</w>",
              "o f</w>", "t o", "w a", "l k", "i n", "in g</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder, len(vocab)


def tiny_clip_text(text: dict, projection_dim: int, hidden_act: str):
    """(tokenizer, transformers CLIPTextModel) for a tiny pipeline: the byte-level vocabulary above, 16 positions,
    `text` (hidden_size, layers, heads, ...) over the given defaults."""
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder, vocab_size = write_tiny_clip_vocab(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, max_position_embeddings=16, projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **{"hidden_act": hidden_act, **text}))
    return tokenizer, text_encoder


def tiny_t5_tokenizer():
    """A small UMT5-style (T5) tokenizer built in code (no files, no network): a Unigram vocabulary of pad / eos /
    unk, the lowercase letters and digits as word-initial ("\u2581x") and inner pieces, and a few whole words, with
    log-probability scores: 67 ids, all below any UMT5 vocab_size used here."""
    from transformers import T5Tokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-"
    words = ["the", "cat", "dog", "at", "in", "a", "night", "walking", "static", "blurry", "hat"]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{w}", -3.0 - 0.1 * i) for i, w in enumerate(words)]
    pieces += [(c, -5.0 - 0.01 * i) for i, c in enumerate(chars)]
    pieces += [(f"\u2581{c}", -6.0 - 0.01 * i) for i, c in enumerate(chars[:10])]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def synthetic_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
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
