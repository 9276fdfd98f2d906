"""LoRAs on both sides of a parity run (`mindport parity SRC --lora FILE[:SCALE] ...`).

The reference loads each file with diffusers' own `load_lora_weights`, sets the scales with `set_adapters`, fuses
them (`fuse_lora`) and drops the peft wrappers (`unload_lora_weights` keeps fused weights), so its module tree keeps
diffusers' names and every module still compares one to one. Our side is the source converted with the same LoRAs
fused (`mindport.lora.convert_with_lora`), or a `--converted` folder whose manifest records exactly these files
(sha256) and scales."""

from __future__ import annotations

import json
import re
from pathlib import Path

from converters import ConversionError
from converters.sources import MANIFEST, sha256


def lora_records(loras) -> list[dict]:
    out = []
    for file, scale in loras:
        if not Path(file).is_file():
            raise ConversionError(f"{file}: LoRA file not found")
        out.append({"file": str(file), "sha256": sha256(Path(file)), "scale": float(scale)})
    return out


def check_converted(converted, records: list[dict]) -> None:
    """A given --converted folder must hold exactly these LoRAs, fused at these scales."""
    path = Path(converted) / MANIFEST
    try:
        fused = json.loads(path.read_text()).get("lora", [])
    except (OSError, ValueError):
        fused = None
    got = [(r.get("sha256"), r.get("scale")) for r in fused] if fused is not None else None
    want = [(r["sha256"], r["scale"]) for r in records]
    if got != want:
        raise ConversionError(f"{path}: records LoRAs {got} (sha256, scale), but --lora asks for {want}; convert with "
                              "the same --lora flags, or leave out --converted")


def apply_reference(pipe, loras) -> None:
    """diffusers: load, set scales, fuse, unload the wrappers (the fused weights stay)."""
    names = []
    for i, (file, _) in enumerate(loras):
        names.append(f"lora_{i}")
        pipe.load_lora_weights(str(file), adapter_name=names[-1])
    pipe.set_adapters(names, adapter_weights=[float(s) for _, s in loras])
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()


# `make reports`' LoRA case: a kohya/A1111 style LoRA (UNet attention, feed-forward, proj_in/out, time_emb_proj and
# LoCon on the resnet 3x3 convs, motion modules excluded; CLIP attention) and a motion LoRA in the layout of the
# diffusers-converted releases (every motion-module attention), both drawn from a seeded generator over the fixture's
# own weight shapes, so that the files (and their sha256 in the report) are the same on every machine.
STYLE_UNET = re.compile(r"^(?!.*motion_modules).*\.(to_q|to_k|to_v|to_out\.0|ff\.net\.0\.proj|ff\.net\.2|proj_in"
                        r"|proj_out|conv1|conv2|time_emb_proj)\.weight$")
STYLE_TEXT = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.weight$")
MOTION = re.compile(r"^(.*\.motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12])\.(to_q|to_k|to_v|to_out\.0)\.weight$")
TINY_LORA_NAMES = ("style_kohya.safetensors", "motion_diffusers.safetensors")


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in sorted(f.keys())}


def tiny_loras(fixture, seed: int = 0) -> tuple[Path, Path]:
    """(style, motion) LoRA files for an AnimateDiff fixture folder, written once next to it (`<fixture>-loras/`,
    temporary folder then rename, like the fixtures) and reused."""
    import os
    import shutil

    import numpy as np
    from safetensors.numpy import save_file

    fixture = Path(fixture)
    out = fixture.parent / f"{fixture.name}-loras-{seed}"
    if all((out / n).is_file() for n in TINY_LORA_NAMES):
        return tuple(out / n for n in TINY_LORA_NAMES)
    rng = np.random.Generator(np.random.PCG64(seed))

    def pair(shape, rank, scale_up):
        out_ch, in_ch, *kernel = shape
        down = rng.standard_normal((rank, in_ch, *kernel)) / np.sqrt(in_ch * int(np.prod(kernel or [1])))
        up = rng.standard_normal((out_ch, rank) + (1,) * len(kernel)) * scale_up
        return down.astype(np.float32), up.astype(np.float32)

    style = {}
    sources = (("lora_unet_", fixture / "unet" / "diffusion_pytorch_model.safetensors", STYLE_UNET, 4),
               ("lora_te_", fixture / "text_encoder" / "model.safetensors", STYLE_TEXT, 2))
    for prefix, path, pattern, rank in sources:
        for key, shape in _shapes(path).items():
            if not pattern.match(key) or len(shape) not in (2, 4):
                continue
            module = key[: -len(".weight")]
            if prefix == "lora_te_" and not module.startswith("text_model."):
                module = "text_model." + module
            name = prefix + module.replace(".", "_")
            down, up = pair(shape, rank, 0.15)
            style[f"{name}.lora_down.weight"], style[f"{name}.lora_up.weight"] = down, up
            style[f"{name}.alpha"] = np.asarray(3.0, dtype=np.float32)
    motion = {}
    for key, shape in _shapes(fixture / "motion_adapter" / "diffusion_pytorch_model.safetensors").items():
        m = MOTION.match(key)
        if m:
            proj = m.group(2).split(".")[0]
            down, up = pair(shape, 2, 0.2)
            motion[f"unet.{m.group(1)}.processor.{proj}_lora.down.weight"] = down
            motion[f"unet.{m.group(1)}.processor.{proj}_lora.up.weight"] = up
    if not style or not motion:
        raise ConversionError(f"{fixture}: no LoRA targets found (style {len(style)}, motion {len(motion)} tensors); "
                              "expected an AnimateDiff fixture folder")
    tmp = fixture.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(style, str(tmp / TINY_LORA_NAMES[0]))
    save_file(motion, str(tmp / TINY_LORA_NAMES[1]))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return tuple(out / n for n in TINY_LORA_NAMES)
