"""Whole-checkpoint conversion: a pipeline or component folder (or Hub id) -> a MindSpore folder, audited, written
to a temporary folder and renamed into place only when every component passed its audit."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from . import converter_for
from .base import Audit, Mapped, map_tensors, materialise
from .errors import ConversionError
from .safetensors_io import write_safetensors
from .sources import (
    CONVERTED_WEIGHTS,
    MANIFEST,
    ComponentSource,
    file_records,
    open_component,
    read_json,
    read_tensors,
    resolve,
)

# the caller (mindport) builds the target model and reports its parameters: (component, class, config) -> spec
SpecFn = Callable[[str, str, dict], dict]

DTYPE_TAGS = {"fp32": ("F32", np.float32), "fp16": ("F16", np.float16), "bf16": ("BF16", np.float32)}
SOURCE_TAG_NP = {"F32": np.float32, "F16": np.float16, "F64": np.float32, "BF16": np.float32}
FORMAT_VERSION = 1


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in DTYPE_TAGS:
        raise ConversionError(f"--dtype {dtype!r} is not supported; expected one of {', '.join(DTYPE_TAGS)}")


def plan_component(name: str, src: ComponentSource, spec_fn: SpecFn) -> tuple[dict, list[Mapped], Audit, dict]:
    """Map one component's tensors onto the parameters of the model built from its converted config."""
    where = str(src.files[0]) if len(src.files) == 1 else str(src.folder)  # name the file when there is one
    conv = converter_for(src.class_name, f"{src.folder / 'config.json'}")
    config = conv.convert_config(src.config)
    spec = spec_fn(name, src.class_name, config)
    if src.converted:  # already MindSpore names: identity, but still fully audited
        mapped, audit = map_tensors(_IDENTITY, src.tensors, spec, where)
    else:
        mapped, audit = map_tensors(conv, src.tensors, spec, where)
    return config, mapped, audit, spec


class _Identity:
    rules = ()

    @staticmethod
    def normalise_keys(keys, _targets):
        return {k: k for k in keys}


_IDENTITY = _Identity()


def load_component_arrays(folder, spec_fn: SpecFn, variant: str | None = None, name: str = ".") -> tuple[dict, dict, dict]:
    """In-memory conversion for `from_pretrained`: returns (config, {parameter: array}, audit dict)."""
    src = open_component(folder, variant)
    config, mapped, audit, spec = plan_component(name, src, spec_fn)
    arrays = {m.target: materialise(m, spec[m.target][0], None) for m in mapped}
    return config, arrays, audit.as_dict()


def _target_tag(ref_tag: str, dtype: str | None) -> tuple[str, type]:
    if dtype is None:
        tag = ref_tag if ref_tag in ("F32", "F16", "BF16") else "F32"
        return tag, SOURCE_TAG_NP[tag] if tag != "BF16" else np.float32
    return DTYPE_TAGS[dtype]


def _write_component(name: str, src: ComponentSource, out: Path, spec_fn: SpecFn, dtype: str | None, progress) -> dict:
    config, mapped, audit, spec = plan_component(name, src, spec_fn)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"_class_name": src.class_name, **config}, indent=2, sort_keys=True))
    entries, tensors = [], {}
    for mp in sorted(mapped, key=lambda m: m.target):
        tag, np_dtype = _target_tag(mp.ref.dtype, dtype)
        shape = tuple(spec[mp.target][0])
        entries.append((mp.target, shape, tag, lambda mp=mp, shape=shape, npd=np_dtype: _tick(progress, materialise(mp, shape, npd))))
        tensors[mp.target] = {"source": mp.source, "rule": mp.rule, "transform": mp.transform,
                              "source_dtype": mp.ref.dtype, "dtype": tag, "shape": list(shape)}
    write_safetensors(out / CONVERTED_WEIGHTS, entries, {"format": "mindport", "component": name})
    return {
        "class_name": src.class_name,
        "source_files": file_records(src.files, src.folder.parent if name != "." else src.folder),
        "dtype_policy": dtype or "keep source dtype",
        "audit": audit.as_dict(),
        "tensors": tensors,
    }


def _tick(progress, arr):
    if progress is not None:
        progress.update(1)
    return arr


def _copy_plain(src_dir: Path, out: Path) -> None:
    """Scheduler, feature extractor, tokenizer: small text files copied verbatim."""
    out.mkdir(parents=True, exist_ok=True)
    for f in src_dir.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model"):
            shutil.copy2(f, out / f.name)


def pipeline_components(root: Path) -> dict[str, tuple[str | None, str | None]]:
    index = read_json(root / "model_index.json")
    comps = {}
    for k, v in index.items():
        if k.startswith("_"):
            continue
        if isinstance(v, list) and len(v) == 2:
            comps[k] = (v[0], v[1])
    return comps


def publish(dst, overwrite: bool, build: Callable[[Path], dict]) -> dict:
    """Write through a temporary sibling folder: `build(tmp)` fills it and returns the manifest's components; the
    folder is renamed to DST only when every component passed its audit. Any failure (or an interrupt) removes the
    temporary folder and leaves DST untouched; an existing DST is refused unless `overwrite`."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass --overwrite to replace it)")
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        manifest = build(tmp)
        failed = [n for n, c in manifest["components"].items() if "audit" in c and not c["audit"]["passed"]]
        if failed:
            raise ConversionError(f"{dst}: audit failed for {', '.join(failed)}")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def new_manifest(src, resolved, variant, dtype, **extra) -> dict:
    return {
        "format": "mindport",
        "format_version": FORMAT_VERSION,
        "source": str(src),
        "resolved_source": str(resolved),
        "variant": variant,
        "dtype": dtype,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
        "components": {},
    }


def _single_file_source(path: Path) -> ComponentSource:
    """A checkpoint file on its own: which architecture it holds is told by its keys."""
    from .animatediff import open_motion_module_file

    keys = list(read_tensors([path]))
    if any(".motion_modules." in k for k in keys):
        return open_motion_module_file(path)
    raise ConversionError(f"{path}: single-file checkpoints of this kind are not supported yet; supported: AnimateDiff "
                          "motion-module files (original release or diffusers naming). Pass a diffusers folder or Hub id")


def convert(src, dst, spec_fn: SpecFn, variant: str | None = None, dtype: str | None = None,
            overwrite: bool = False, progress_factory=None) -> dict:
    """Convert SRC (Hub id, pipeline folder, component folder or single motion-module file) into DST, audited and
    published atomically (see `publish`). Returns the manifest."""
    check_dtype(dtype)
    if Path(dst).exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass --overwrite to replace it)")
    root = resolve(src, variant)

    def write_all(tmp: Path, sources: dict[str, ComponentSource], manifest: dict) -> dict:
        progress = progress_factory(sum(len(s.tensors) for s in sources.values())) if progress_factory else None
        for name, s in sources.items():
            out = tmp if name == "." else tmp / name
            manifest["components"][name] = _write_component(name, s, out, spec_fn, dtype, progress)
        if progress is not None:
            progress.close()
        return manifest

    def build(tmp: Path) -> dict:
        manifest = new_manifest(src, root, variant, dtype)
        if root.is_file():
            return write_all(tmp, {".": _single_file_source(root)}, manifest)
        if (root / "model_index.json").exists():
            sources = {}
            for name, (lib, cls) in pipeline_components(root).items():
                folder = root / name
                if lib is None or not folder.is_dir():
                    continue
                if (folder / "config.json").exists():  # a model; schedulers/processors/tokenizers have other files
                    sources[name] = open_component(folder, variant)
                else:
                    _copy_plain(folder, tmp / name)
                    manifest["components"][name] = {"class_name": cls, "copied": True}
            shutil.copy2(root / "model_index.json", tmp / "model_index.json")
            return write_all(tmp, sources, manifest)
        if (root / "config.json").exists():
            return write_all(tmp, {".": open_component(root, variant)}, manifest)
        raise ConversionError(f"{root}: neither a pipeline folder (model_index.json) nor a component folder (config.json)")

    return publish(dst, overwrite, build)
