"""`mindport inspect`: what a checkpoint folder or file holds, without loading a model: the architecture detected
(pipeline / component class, or a single file's layout), parameters, dtypes and size, and whether it is a PyTorch
checkpoint or one written by `mindport convert`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from converters import ConversionError
from converters.animatediff import is_original_format
from converters.base import Rule
from converters.safetensors_io import read_header
from converters.single_file import detect_layout
from converters.sources import MANIFEST, open_component, read_json, read_tensors

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def _summarise(refs) -> dict:
    return {"tensors": len(refs), "parameters": sum(int(np.prod(r.shape, dtype=np.int64)) for r in refs.values()),
            "bytes": sum(r.nbytes for r in refs.values()), "dtypes": dict(Counter(r.dtype for r in refs.values()))}


def _line(name: str, c: dict) -> str:
    if "tensors" not in c:
        return f"  {name:18s} {c['class_name']}"
    return (f"  {name:18s} {c['class_name']:36s} {c['parameters']:>14,} params  {c['bytes'] / 2**20:9.1f} MiB  "
            f"{c['dtypes']}")


def _describe_file(p: Path) -> dict:
    if p.suffix not in CHECKPOINT_SUFFIXES:
        raise ConversionError(f"{p}: not a checkpoint file; inspect reads {', '.join(CHECKPOINT_SUFFIXES)} files and "
                              "checkpoint folders")
    meta = read_header(p)[1] if p.suffix == ".safetensors" else {}
    refs = read_tensors([p])
    if meta.get("format") == "mindport":
        kind, arch = "mindport converted", f"component {meta.get('component', '?')} (MindSpore parameter names)"
        comps = {}
    else:
        kind = "PyTorch"
        layout = detect_layout(refs)
        comps = {}
        if layout is not None:
            arch = f"{layout.pipeline} single file ({layout.name})"
            groups: dict[str, dict] = {}
            split = [(n, Rule(pat, n)) for n, (_, pat, _) in layout.components.items()]
            for key, ref in refs.items():
                name = next((n for n, row in split if row.match(key)), "(not used: dropped)")
                groups.setdefault(name, {})[key] = ref
            for name, part in groups.items():
                cls = layout.components[name][0] if name in layout.components else "-"
                comps[name] = {"class_name": cls, **_summarise(part)}
        elif any(".motion_modules." in k for k in refs):
            arch = "AnimateDiff motion module (MotionAdapter), " + (
                "original release naming" if is_original_format(refs) else "diffusers naming")
        else:
            arch = "unknown layout"
    info = {"path": str(p), "kind": kind, "architecture": arch, **_summarise(refs), "components": comps}
    lines = [f"{p}: {kind} checkpoint file, {arch}",
             f"  {info['tensors']} tensors, {info['parameters']:,} parameters, {info['bytes'] / 2**20:.1f} MiB, "
             f"{info['dtypes']}"]
    lines += [_line(n, c) for n, c in comps.items()]
    info["text"] = "\n".join(lines)
    return info


def describe(path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConversionError(f"{p}: no such file or folder")
    if p.is_file():
        return _describe_file(p)
    kind = "mindport converted" if (p / MANIFEST).exists() else "PyTorch diffusers"
    comps = {}
    if (p / "model_index.json").exists():
        index = read_json(p / "model_index.json")
        arch = index.get("_class_name")
        for name, entry in index.items():
            if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
                continue
            if (p / name / "config.json").exists():
                src = open_component(p / name)
                comps[name] = {"class_name": src.class_name, **_summarise(src.tensors)}
            else:
                comps[name] = {"class_name": entry[1]}
    elif (p / "config.json").exists():
        src = open_component(p)
        arch = src.class_name
        comps["."] = {"class_name": src.class_name, **_summarise(src.tensors)}
    else:
        raise ConversionError(f"{p}: neither a pipeline folder (model_index.json) nor a component folder (config.json)")
    models = [c for c in comps.values() if "tensors" in c]
    total = {"parameters": sum(c["parameters"] for c in models), "bytes": sum(c["bytes"] for c in models)}
    lines = [f"{p}: {kind} checkpoint, {arch}; {total['parameters']:,} parameters, {total['bytes'] / 2**20:.1f} MiB"]
    lines += [_line(n, c) for n, c in comps.items()]
    return {"path": str(p), "kind": kind, "architecture": arch, "pipeline": arch if comps.keys() - {"."} else None,
            "components": comps, **total, "text": "\n".join(lines)}
