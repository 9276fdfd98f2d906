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
    import numpy as np

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
    return _write_once(out, {TINY_LORA_NAMES[0]: (style, None), TINY_LORA_NAMES[1]: (motion, None)})


def _write_once(out: Path, files: dict) -> tuple[Path, ...]:
    """{name: (tensors, metadata)} written into `out` through a temporary folder and a rename."""
    import os
    import shutil

    from safetensors.numpy import save_file

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, (tensors, metadata) in files.items():
        save_file(tensors, str(tmp / name), metadata=metadata)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return tuple(out / n for n in files)


# The Wan LoRA case: a diffusers/peft file (rank 4, lora_alpha 8 and lora_bias in its adapter metadata: every
# attention projection, the feed-forward and proj_out, with lora_B biases) and a file in the original Wan layout
# (`diffusion_model.`, rank 2, alpha 3 on the blocks' modules, diff_b bias deltas, I2V image projections, the time,
# text and image embedders, head.head, and zero norm diffs, which are skipped), seeded from the fixture's shapes.
WAN_LORA_NAMES = ("wan_peft.safetensors", "wan_original.safetensors")
WAN_PEFT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "net.0.proj", "net.2",
                    "proj_out")


def tiny_wan_loras(fixture, seed: int = 0) -> tuple[Path, Path]:
    """(peft, original) LoRA files for a Wan fixture folder, written once next to it (`<fixture>-wan-loras-<seed>/`)."""
    import numpy as np

    from converters.lora import wan_module

    fixture = Path(fixture)
    out = fixture.parent / f"{fixture.name}-wan-loras-{seed}"
    if all((out / n).is_file() for n in WAN_LORA_NAMES):
        return tuple(out / n for n in WAN_LORA_NAMES)
    shapes = {k[: -len(".weight")]: v for k, v in
              _shapes(fixture / "transformer" / "diffusion_pytorch_model.safetensors").items()
              if k.endswith(".weight") and len(v) == 2}
    blocks = sorted({int(m.split(".")[1]) for m in shapes if m.startswith("blocks.")})
    if not blocks:
        raise ConversionError(f"{fixture}: no Wan transformer blocks found; expected a Wan fixture folder")
    rng = np.random.Generator(np.random.PCG64(seed))

    def pair(shape, rank, up_std):
        down = rng.standard_normal((rank, shape[1])) / np.sqrt(shape[1])
        return down.astype(np.float32), (rng.standard_normal((shape[0], rank)) * up_std).astype(np.float32)

    peft = {}
    for module, shape in shapes.items():
        if module.endswith(WAN_PEFT_TARGETS) and not module.startswith("condition_embedder."):
            down, up = pair(shape, 4, 0.15)
            peft[f"transformer.{module}.lora_A.weight"], peft[f"transformer.{module}.lora_B.weight"] = down, up
            peft[f"transformer.{module}.lora_B.bias"] = (rng.standard_normal(shape[0]) * 0.02).astype(np.float32)
    config = {"r": 4, "lora_alpha": 8, "lora_bias": True,
              "target_modules": sorted(k.split("transformer.", 1)[1].rsplit(".lora_", 1)[0] for k in peft)}
    meta = {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    original = {}
    names = [f"blocks.{i}.{m}" for i in blocks for m in (
        *(f"self_attn.{o}" for o in "qkvo"), *(f"cross_attn.{o}" for o in (*"qkvo", "k_img", "v_img")), "ffn.0",
        "ffn.2")]
    names += ["time_projection.1", "head.head", "text_embedding.0", "text_embedding.2", "time_embedding.0",
              "time_embedding.2", "img_emb.proj.1", "img_emb.proj.3"]
    for name in names:
        module = wan_module(name)
        if module not in shapes:  # T2V: no image projections
            continue
        key = f"diffusion_model.{name}"
        original[f"{key}.lora_down.weight"], original[f"{key}.lora_up.weight"] = pair(shapes[module], 2, 0.2)
        if name.startswith("blocks."):  # (diffusers refuses alphas on the other modules)
            original[f"{key}.alpha"] = np.asarray(3.0, np.float32)
        # (every module, as in released files: diffusers gives all or none of them a bias)
        original[f"{key}.diff_b"] = (rng.standard_normal(shapes[module][0]) * 0.02).astype(np.float32)
    for i in blocks:
        original[f"diffusion_model.blocks.{i}.norm3.diff"] = np.zeros(shapes[f"blocks.{i}.attn1.to_q"][0], np.float32)
        original[f"diffusion_model.blocks.{i}.norm3.diff_b"] = np.zeros(shapes[f"blocks.{i}.attn1.to_q"][0],
                                                                        np.float32)
    return _write_once(out, {WAN_LORA_NAMES[0]: (peft, meta), WAN_LORA_NAMES[1]: (original, None)})


def case_loras(fixture, seed: int = 0) -> tuple[Path, Path]:
    """The seeded LoRA pair of a report case for this fixture folder: Wan's (peft, original) when it holds a
    transformer, else AnimateDiff's (style, motion)."""
    return tiny_wan_loras(fixture, seed) if (Path(fixture) / "transformer").is_dir() else tiny_loras(fixture, seed)
