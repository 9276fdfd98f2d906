"""Whole-checkpoint conversion: a pipeline or component folder (or Hub id) -> a MindSpore folder, audited, written
to a temporary folder and renamed into place only when every component passed its audit."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from . import converter_for
from .animatediff import is_original_format, open_motion_module_file
from .base import IDENTITY, Audit, Mapped, map_tensors, materialise
from .errors import ConversionError
from .safetensors_io import RawSpan, write_safetensors
from .single_file import PLAIN_FILES
from .wan_original import is_release as is_wan_release
from .wan_original import open_release as open_wan_release
from .wan_original import open_release_transformer as open_wan_release_transformer
from .wan_original import open_single_file as open_wan_file
from .sources import (
    CONVERTED_WEIGHTS,
    MANIFEST,
    ComponentSource,
    file_records,
    open_component,
    read_json,
    read_tensors,
    resolve,
    cancel_hashes,
    sha256_async,
    wait_hashed,
)

# the caller (mindport) builds the target model and reports its parameters: (component, class, config) -> spec
SpecFn = Callable[[str, str, dict], dict]

DTYPE_TAGS = {"fp32": ("F32", np.float32), "fp16": ("F16", np.float16), "bf16": ("BF16", np.float32)}
SOURCE_TAG_NP = {"F32": np.float32, "F16": np.float16, "F64": np.float32, "BF16": np.float32}
FORMAT_VERSION = 1

# --keep-fp32: which parameters stay float32 when --dtype asks for fp16/bf16. "norms": GroupNorm/LayerNorm scales
# and shifts and AlphaBlender mix factors. The runtime computes all of them in float32 anyway (backend.group_norm /
# layer_norm upcast, AlphaBlender casts mix_factor), so storing them rounded only loses precision, for about 0.1% of
# the bytes. "auto" (the default) keeps them for bf16 (8 mantissa bits: a norm scale moves by up to 2e-3) but not
# for fp16 (11 bits: at most 2.4e-4, under fp16 activations' own error), so an fp16 file stays uniformly fp16 as
# diffusers' `torch_dtype` makes it. Embedding tables and projections always follow --dtype.
NORMS = re.compile(r"(?:^|.*\.)(?:[a-z_]*norm[a-z_0-9]*)\.(?:weight|bias)|(?:^|.*\.)mix_factor")
KEEP_FP32 = {"auto": {"bf16": NORMS}, "norms": {"fp16": NORMS, "bf16": NORMS}, "none": {}}
DEFAULT_KEEP_FP32 = "auto"


def check_dtype(dtype: str | None, keep_fp32: str = DEFAULT_KEEP_FP32) -> None:
    if dtype is not None and dtype not in DTYPE_TAGS:
        raise ConversionError(f"--dtype {dtype!r} is not supported; expected one of {', '.join(DTYPE_TAGS)}")
    if keep_fp32 not in KEEP_FP32:
        raise ConversionError(f"--keep-fp32 {keep_fp32!r} is not supported; expected one of {', '.join(KEEP_FP32)}")


def dtype_decision(name: str, shape, source_tag: str, dtype: str | None, keep_fp32: str) -> tuple[str, str]:
    """(stored dtype tag, why) for one parameter."""
    if dtype is None:
        tag = source_tag if source_tag in ("F32", "F16", "BF16") else "F32"
        return tag, "source dtype" if tag == source_tag else f"{source_tag} stored as F32"
    pattern = KEEP_FP32[keep_fp32].get(dtype)
    if pattern is not None and len(shape) <= 1 and pattern.fullmatch(name):
        return "F32", f"kept fp32 (--keep-fp32 {keep_fp32})"
    return DTYPE_TAGS[dtype][0], f"--dtype {dtype}"


def plan_component(name: str, src: ComponentSource, spec_fn: SpecFn) -> tuple[dict, list[Mapped], Audit, dict]:
    """Map one component's tensors onto the parameters of the model built from its converted config."""
    where = str(src.files[0]) if len(src.files) == 1 else str(src.folder)  # name the file when there is one
    conv = src.converter or converter_for(src.class_name, f"{src.folder / 'config.json'}")
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


def load_component_arrays(folder, spec_fn: SpecFn, variant: str | None = None, name: str = "."):
    """In-memory conversion for `from_pretrained`: returns (config, {parameter: array}, audit dict,
    {parameter: stored dtype tag}) — the tags tell a mixed-precision checkpoint (bf16 arrays arrive widened). An
    original Wan release folder gives its transformer (Wan-AI names)."""
    src = open_wan_release_transformer(folder) if is_wan_release(folder) else open_component(folder, variant)
    config, mapped, audit, spec = plan_component(name, src, spec_fn)
    arrays = {m.target: materialise(m, spec[m.target][0], None) for m in mapped}
    return config, arrays, audit.as_dict(), {m.target: m.ref.dtype for m in mapped}


def load_motion_module_file_arrays(path, spec_fn: SpecFn, config: dict | None = None, **given):
    """In-memory conversion of a single motion-module file for `MotionAdapter.from_single_file`: returns
    (config, {parameter: array}, audit dict)."""
    config, mapped, audit, spec = plan_component(".", open_motion_module_file(path, config, **given), spec_fn)
    arrays = {m.target: materialise(m, spec[m.target][0], None) for m in mapped}
    return config, arrays, audit.as_dict()


def _producer(mp: Mapped, shape, tag: str, progress):
    """What the writer calls for one tensor: a RawSpan when the stored bytes do not change (kernel copy), else the
    decoded, transformed and cast array."""
    if mp.raw and mp.ref.loader is None and mp.ref.dtype == tag:
        span = RawSpan(mp.ref.file, mp.ref.offset, mp.ref.nbytes)
        return lambda: _tick(progress, span)
    np_dtype = SOURCE_TAG_NP.get(tag, np.float32)
    return lambda: _tick(progress, materialise(mp, shape, np_dtype))


def _write_weights(name: str, out: Path, mapped: list[Mapped], shapes: dict, dtype: str | None, keep_fp32: str,
                   progress) -> dict:
    """Write one component's `mindspore_model.safetensors`, tensors in source order (raw runs coalesce into one
    kernel copy); returns the manifest's per-tensor records."""
    out.mkdir(parents=True, exist_ok=True)
    entries, tensors = [], {}
    for mp in sorted(mapped, key=lambda m: (m.ref.file, m.ref.offset, m.target)):
        shape = tuple(shapes[mp.target])
        tag, why = dtype_decision(mp.target, shape, mp.ref.dtype, dtype, keep_fp32)
        entries.append((mp.target, shape, tag, _producer(mp, shape, tag, progress)))
        tensors[mp.target] = {"source": mp.source, "rule": mp.rule, "transform": mp.transform,
                              **({"part": list(mp.part)} if mp.part else {}),
                              "source_dtype": mp.ref.dtype, "dtype": tag, "dtype_reason": why, "shape": list(shape)}
    kept = sum(1 for t in tensors.values() if t["dtype_reason"].startswith("kept"))
    meta = {"format": "mindport", "component": name, **({"kept_fp32": keep_fp32} if kept else {})}
    write_safetensors(out / CONVERTED_WEIGHTS, entries, meta, before_copy=wait_hashed)
    return tensors


# Dropped keys whose bytes are kept beside the weights (`buffers.safetensors`, the source's bytes unchanged): buffers
# the PyTorch models persist but ours recompute (AnimateDiff's sinusoidal tables, CLIP's position_ids). The MindSpore
# side never reads them; `mindport export` writes them back, so an export is the source bit for bit (PyTorch's
# float32 sin/cos tables cannot be recomputed exactly in NumPy: they differ from correctly rounded ones by up to 2e-6).
KEPT_BUFFERS = re.compile(r"(?:.+\.)?(?:pos_embed\.pe|pos_encoder\.pe|embeddings\.position_ids)")
KEPT_BUFFERS_FILE = "buffers.safetensors"


def _write_kept_buffers(src: ComponentSource, out: Path, audit: Audit) -> list[str]:
    keys = [k for k in audit.dropped if KEPT_BUFFERS.fullmatch(k) and k in src.tensors]
    if not keys:
        return []
    entries = []
    for k in keys:
        ref = src.tensors[k]
        if ref.loader is None:
            entries.append((k, tuple(ref.shape), ref.dtype, lambda r=ref: RawSpan(r.file, r.offset, r.nbytes)))
        else:  # a pickle: its array (bf16 / fp8 widened to float32)
            arr = np.asarray(ref.load())
            entries.append((k, tuple(arr.shape), {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                                                  np.dtype(np.int64): "I64"}.get(arr.dtype, "F32"), lambda a=arr: a))
    write_safetensors(out / KEPT_BUFFERS_FILE, entries, {"format": "mindport-buffers"})
    return keys


def _component_record(name: str, src: ComponentSource, out: Path, plan, tensors: dict, dtype, keep_fp32) -> dict:
    config, _, audit, _ = plan
    kept = _write_kept_buffers(src, out, audit)
    (out / "config.json").write_text(json.dumps({"_class_name": src.class_name, **config}, indent=2, sort_keys=True))
    return {
        "class_name": src.class_name,
        "source_files": file_records(src.files, src.folder.parent if name != "." else src.folder),
        "dtype_policy": {"dtype": dtype or "keep source dtype", "keep_fp32": keep_fp32 if dtype else None,
                         "kept_fp32_tensors": sum(1 for t in tensors.values() if t["dtype_reason"].startswith("kept"))},
        "audit": audit.as_dict(),
        **({"notes": src.notes} if src.notes else {}),
        **({"kept_buffers": {"file": KEPT_BUFFERS_FILE, "keys": kept}} if kept else {}),
        "tensors": tensors,
    }


def _write_component(name: str, src: ComponentSource, out: Path, spec_fn: SpecFn, dtype: str | None, progress,
                     keep_fp32: str = DEFAULT_KEEP_FP32) -> dict:
    plan = plan_component(name, src, spec_fn)
    _, mapped, _, spec = plan
    tensors = _write_weights(name, out, mapped, {k: v[0] for k, v in spec.items()}, dtype, keep_fp32, progress)
    return _component_record(name, src, out, plan, tensors, dtype, keep_fp32)


SPECULATE_BYTES = 256 << 20
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy")


def _identity_copy(src: ComponentSource, dtype, keep_fp32) -> list[Mapped] | None:
    """The mapping of a large component whose every tensor keeps its name, shape and bytes (no rule row matches,
    no dtype change): it can be written before the model is built, from the source's own header. The audit against
    the model still decides, before anything is published. None when that does not hold."""
    refs = src.tensors
    if src.converted or sum(r.nbytes for r in refs.values()) < SPECULATE_BYTES:
        return None
    conv = src.converter or converter_for(src.class_name, f"{src.folder / 'config.json'}")
    keys = list(refs)
    try:
        if conv.normalise_keys(keys, set()) != {k: k for k in keys}:
            return None
    except ConversionError:
        return None
    if any(r.loader is not None or any(rule.match(k) for rule in conv.rules) or
           dtype_decision(k, r.shape, r.dtype, dtype, keep_fp32)[0] != r.dtype for k, r in refs.items()):
        return None
    return [Mapped(k, k, IDENTITY, IDENTITY, r) for k, r in refs.items()]


def _tick(progress, arr, n: int = 1):
    if progress is not None:
        progress.update(n)
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


@contextmanager
def staged(dst: Path, tag: str = "partial"):
    """A staging path beside `dst` (not created) that replaces `dst` when the block succeeds and is removed when it
    fails or is interrupted: `dst` appears complete or stays as it was."""
    stage = dst.parent / f".{dst.name}.{tag}-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        yield stage
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(stage, dst)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def publish(dst, overwrite: bool, build: Callable[[Path], dict], manifest_name: str = MANIFEST) -> dict:
    """Write through a temporary sibling folder (`staged`): `build(tmp)` fills it and returns the manifest's
    components; the folder is renamed to DST only when every component passed its audit. Any failure (or an
    interrupt) removes the temporary folder and leaves DST untouched; an existing DST is refused unless `overwrite`.
    The manifest is written as `manifest_name` (`mindport export` names its own, so that an exported PyTorch folder
    is not taken for a converted one)."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass --overwrite to replace it)")
    with staged(dst) as tmp:
        tmp.mkdir(parents=True)
        manifest = build(tmp)
        failed = [n for n, c in manifest["components"].items() if "audit" in c and not c["audit"]["passed"]]
        if failed:
            raise ConversionError(f"{dst}: audit failed for {', '.join(failed)}")
        (tmp / manifest_name).write_text(json.dumps(manifest, indent=2))
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


def _write_single_file(path: Path, tmp: Path, manifest: dict, config_dir, write_all, motion_adapter=None) -> dict:
    """A checkpoint file on its own: its keys tell what it holds. Whole-pipeline releases (SD 1.5, SVD) become a
    pipeline folder; a motion-module file becomes a MotionAdapter folder; a Wan component file (transformer, UMT5,
    VAE in Wan-AI names, or a transformers-named fp8 UMT5) becomes that component's folder."""
    from .single_file import detect_layout, split_single_file

    tensors = read_tensors([path])
    wan = open_wan_file(path, tensors, config_dir)  # one Wan component in Wan-AI's (or an fp8) layout
    if wan is not None:
        if motion_adapter is not None:
            raise ConversionError(f"--motion-adapter {motion_adapter}: only an SD 1.5 base takes a motion adapter; "
                                  f"{path} is a {wan.notes['layout']} file")
        manifest["source_format"] = wan.notes["layout"]
        manifest["config_source"] = str(config_dir) if config_dir else "inferred from the tensor shapes"
        return write_all(tmp, {".": wan}, manifest)
    layout = detect_layout(tensors)
    if layout is None:
        if any(".motion_modules." in k for k in tensors):
            manifest["source_format"] = "animatediff-original" if is_original_format(tensors) else "diffusers"
            return write_all(tmp, {".": _motion_adapter_source(path, config_dir)}, manifest)
        raise ConversionError(f"{path}: unknown single-file layout (first key {next(iter(tensors), None)!r}); supported: "
                              "SD 1.5 (model.diffusion_model / first_stage_model / cond_stage_model.transformer), "
                              "Stable Video Diffusion (generative-models), AnimateDiff motion modules, Wan 2.1 "
                              "transformer / UMT5 / VAE (Wan-AI names, fp8 included)")
    single = split_single_file(path, tensors, layout, config_dir)
    manifest["source_format"] = layout.name
    manifest["config_source"] = str(config_dir) if config_dir else "built-in defaults"
    manifest["dropped"] = single.dropped
    for name, plain in single.plain.items():
        if not isinstance(plain, dict) and (plain / "config.json").exists():
            raise ConversionError(f"{plain}: {name} is a model, but {path} (a {layout.name} checkpoint) does not hold it")
        _write_plain(tmp, name, plain, single.model_index[name][1], manifest)
    sources, index = dict(single.sources), dict(single.model_index)
    if motion_adapter is not None:  # an SD 1.5 base plus a motion module: an AnimateDiff pipeline folder
        if layout.name != "ldm-sd15":
            raise ConversionError(f"--motion-adapter {motion_adapter}: only an SD 1.5 base takes a motion adapter; "
                                  f"{path} is a {layout.name} checkpoint")
        sources["motion_adapter"] = _motion_adapter_source(Path(motion_adapter), config_dir)
        index.update({"_class_name": "AnimateDiffPipeline", "motion_adapter": ["diffusers", "MotionAdapter"]})
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return write_all(tmp, sources, manifest)


def _write_plain(tmp: Path, name: str, plain, class_name: str, manifest: dict) -> None:
    """A component without weights: a built-in config (dict) written to its file, or a folder copied."""
    if isinstance(plain, dict):
        (tmp / name).mkdir(parents=True)
        (tmp / name / PLAIN_FILES[name]).write_text(json.dumps(plain, indent=2, sort_keys=True))
    else:
        _copy_plain(plain, tmp / name)
    manifest["components"][name] = {"class_name": class_name, "copied": True}


def _write_wan_release(root: Path, tmp: Path, manifest: dict, write_all) -> dict:
    """An original Wan 2.1 release folder (Wan-AI layout): a diffusers-layout Wan pipeline folder, or a
    WanTransformer3DModel component folder when the folder holds only the transformer."""
    sources, index, plain, notes = open_wan_release(root)
    manifest.update(notes)
    for name, cfg in plain.items():
        _write_plain(tmp, name, cfg, index[name][1], manifest)
    if index is not None:
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return write_all(tmp, sources, manifest)


def _motion_adapter_source(path: Path, config_dir=None) -> ComponentSource:
    """A MotionAdapter from a diffusers adapter folder or a single motion-module file (original or diffusers names;
    its config from `config_dir/motion_adapter/config.json` if there is one, else inferred from the shapes)."""
    cfg = Path(config_dir) / "motion_adapter" / "config.json" if config_dir else None
    if path.is_dir():
        src = open_component(path)
    else:
        src = open_motion_module_file(path, read_json(cfg) if cfg is not None and cfg.exists() else None)
    if src.class_name != "MotionAdapter":
        raise ConversionError(f"--motion-adapter {path}: holds a {src.class_name}, expected a MotionAdapter")
    return src


def convert(src, dst, spec_fn: SpecFn, variant: str | None = None, dtype: str | None = None,
            overwrite: bool = False, progress_factory=None, config_dir=None, keep_fp32: str = DEFAULT_KEEP_FP32,
            motion_adapter=None) -> dict:
    """Convert SRC (Hub id, pipeline folder, component folder, an original Wan 2.1 release folder, or a single file:
    SD 1.5 / SVD original release, motion module, one Wan component in Wan-AI names) into DST, audited and published atomically (see `publish`). `config_dir`: the diffusers folder
    whose configs a single-file pipeline checkpoint uses (default: built-in); `motion_adapter`: an adapter folder or
    motion-module file added to an SD 1.5 single file, making an AnimateDiff pipeline folder. Returns the manifest."""
    check_dtype(dtype, keep_fp32)
    if Path(dst).exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass --overwrite to replace it)")
    root = resolve(src, variant)
    for flag, value in (("--config", config_dir), ("--motion-adapter", motion_adapter)):
        if value is not None and not root.is_file():
            raise ConversionError(f"{flag} {value}: only a single-file checkpoint takes it; {root} is a folder")

    def write_all(tmp: Path, sources: dict[str, ComponentSource], manifest: dict) -> dict:
        for s in sources.values():  # hash the sources in the background while the tensors stream
            for f in s.files:
                sha256_async(f)
        # large identity components start copying in a thread while their model is built for the audit
        early = {name: m for name, s in sources.items() if (m := _identity_copy(s, dtype, keep_fp32))}
        outs = {name: tmp if name == "." else tmp / name for name in sources}
        copying = {name: _POOL.submit(_write_weights, name, outs[name], m, {x.target: x.ref.shape for x in m}, dtype,
                                      keep_fp32, None) for name, m in early.items()}
        progress = None
        try:
            plans = {name: plan_component(name, s, spec_fn) for name, s in sources.items()}  # every audit
            if progress_factory:  # shown once the audits passed: a refused input prints one line, nothing else
                progress = progress_factory(sum(len(s.tensors) for s in sources.values()))
            for name, s in sources.items():
                if name in copying and sorted((m.target, m.transform, m.part) for m in plans[name][1]) == sorted(
                        (m.target, m.transform, m.part) for m in early[name]):
                    tensors = copying.pop(name).result()
                    _tick(progress, None, len(tensors))
                else:
                    if name in copying:  # the model's mapping differs from the guess: wait, then write it properly
                        copying.pop(name).exception()
                    tensors = _write_weights(name, outs[name], plans[name][1],
                                             {k: v[0] for k, v in plans[name][3].items()}, dtype, keep_fp32, progress)
                manifest["components"][name] = _component_record(name, s, outs[name], plans[name], tensors, dtype,
                                                                 keep_fp32)
        finally:
            for f in copying.values():  # an audit failed: let the copy end before the temporary folder goes
                f.cancel() or f.exception()
            if progress is not None:
                progress.close()
        return manifest

    def build(tmp: Path) -> dict:
        manifest = new_manifest(src, root, variant, dtype)
        if root.is_file():
            return _write_single_file(root, tmp, manifest, config_dir, write_all, motion_adapter)
        if is_wan_release(root):
            return _write_wan_release(root, tmp, manifest, write_all)
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

    try:
        return publish(dst, overwrite, build)
    except BaseException:
        cancel_hashes()
        raise
