"""LoRAs on both sides of a parity run (`mindport parity SRC --lora FILE[:SCALE] ...`).

The reference loads each file with diffusers' own `load_lora_weights`, sets the scales with `set_adapters`, fuses
them (`fuse_lora`) and drops the peft wrappers (`unload_lora_weights` keeps fused weights), so its module tree keeps
diffusers' names and every module still compares one to one. Our side is the source converted with the same LoRAs
fused (`mindport.lora.convert_with_lora`), or a `--converted` folder whose manifest records exactly these files
(sha256) and scales."""

from __future__ import annotations

import json
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
