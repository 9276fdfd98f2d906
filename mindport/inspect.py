"""`mindport inspect`: what a checkpoint folder or file holds, without loading a model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from converters import ConversionError
from converters.safetensors_io import read_header
from converters.sources import MANIFEST, class_name_of, open_component, read_json


def _summarise(refs) -> dict:
    count = sum(int(__import__("numpy").prod(r.shape)) for r in refs.values())
    return {"tensors": len(refs), "parameters": count, "bytes": sum(r.nbytes for r in refs.values()),
            "dtypes": dict(Counter(r.dtype for r in refs.values()))}


def describe(path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConversionError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ConversionError(f"{p}: inspect reads .safetensors files and checkpoint folders")
        refs, meta = read_header(p)
        info = {"path": str(p), "kind": "converted" if meta.get("format") == "mindport" else "safetensors file",
                **_summarise(refs)}
        info["text"] = f"{p}: {info['kind']}, {info['tensors']} tensors, {info['parameters']:,} parameters, {info['dtypes']}"
        return info
    kind = "mindport converted" if (p / MANIFEST).exists() else "PyTorch diffusers"
    comps = {}
    if (p / "model_index.json").exists():
        index = read_json(p / "model_index.json")
        pipeline = index.get("_class_name")
        for name, entry in index.items():
            if name.startswith("_") or not isinstance(entry, list):
                continue
            if (p / name / "config.json").exists():
                src = open_component(p / name)
                comps[name] = {"class_name": src.class_name, **_summarise(src.tensors)}
            else:
                comps[name] = {"class_name": entry[1]}
    elif (p / "config.json").exists():
        pipeline = None
        src = open_component(p)
        comps["."] = {"class_name": class_name_of(src.config, p / "config.json"), **_summarise(src.tensors)}
    else:
        raise ConversionError(f"{p}: neither a pipeline folder (model_index.json) nor a component folder (config.json)")
    lines = [f"{p}: {kind} checkpoint" + (f", pipeline {pipeline}" if pipeline else "")]
    for name, c in comps.items():
        if "tensors" in c:
            lines.append(f"  {name:18s} {c['class_name']:36s} {c['parameters']:>14,} params  {c['bytes'] / 2**20:8.1f} MiB  {c['dtypes']}")
        else:
            lines.append(f"  {name:18s} {c['class_name']}")
    return {"path": str(p), "kind": kind, "pipeline": pipeline, "components": comps, "text": "\n".join(lines)}
