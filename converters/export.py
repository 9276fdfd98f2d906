"""MindSpore -> PyTorch: a folder written by `mindport convert` (or by mindport's `save_pretrained`, the same format)
exported as a diffusers pipeline / component folder, or as the original single-file layouts the converters read.

There is no second name table. Every output name comes from the converters' own rule rows read backwards
(`base.invert_rule`): a row `source regex -> target template` becomes `target regex -> source template`, its
transform is undone by the transform's declared inverse (`base.INVERSE_TRANSFORMS`: a split row's parts are
concatenated, a transpose transposed back, a reshape reshaped back) and every name so produced is run forwards
through the same rows again: it must map to exactly the parameter it came from, or the export stops. In a diffusers
layout a parameter keeps its name (the identity) unless that name is one a row rewrites; in an original layout the
rows are the only spelling (no identity fallthrough).

Tensors the PyTorch side stores but the MindSpore model does not hold (keys the converters drop with a
`target None` row) are written back only where the PyTorch model needs them, by the explicit `BUFFERS` rows below:
AnimateDiff's sinusoidal position tables and CLIP's `position_ids` in the SD 1.5 file. Their bytes come from the
`buffers.safetensors` that `mindport convert` keeps beside the weights (the source's own bytes); without it (a
`save_pretrained` folder) they are recomputed from the config: float64 sin/cos of PyTorch's float32 angles, rounded
once. PyTorch's own float32 `sin`/`cos` are less exact at large angles: its tables differ from the correctly rounded
ones on about 5% of the entries, by up to 1.9e-6 (measured for 32 positions x 32-1280 channels). Everything else a drop row removed (EMA copies,
schedule buffers, OpenCLIP's text tower, fp8 scales) is not restored and is listed in the manifest.

Streaming as `convert`: safetensors read through memory maps with numpy (no torch), tensors written one at a time
(unchanged bytes copied file to file), to a temporary sibling folder renamed into place only after every
component's audit passed (`convert.publish`), with a manifest of sources and sha256 (`convert.new_manifest`)."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import converter_for
from .base import IDENTITY, INVERSE_TRANSFORMS, TRANSFORMS, ConversionError, forward_target, invert_rule
from .convert import _copy_plain, check_dtype, new_manifest, pipeline_components, publish
from .safetensors_io import RawSpan, TensorRef, read_header, write_safetensors
from .single_file import SD15, SVD
from .sources import CONVERTED_WEIGHTS, MANIFEST, file_records, read_json
from . import wan_original as wan

FORMATS = ("diffusers", "original")
EXPORT_MANIFEST = "mindport_export.json"  # sources, sha256, rows applied, audit (not `manifest.json`: a converted folder's)
BUFFERS_FILE = "buffers.safetensors"  # written by `mindport convert`: the source's bytes of the BUFFERS tensors
EXPORT_TAGS = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
_STORE_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.float32, "F64": np.float64}


# ----------------------------------------------------------------------------------------------------------------
# Buffers: what the PyTorch layout stores that the MindSpore model does not hold, written back explicitly
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Buffer:
    """One kind of tensor a layout stores and a drop row removes. `anchor`: a regex over MindSpore parameter names,
    one buffer (or several, `names`) per match, the names being `re` templates over the anchor's groups; `make`:
    how its values are recomputed (a name in `_make`) when the converted folder did not keep the source's bytes;
    `same_as`: the names the same values have in the other layout (kept bytes are taken from those too)."""

    anchor: str
    names: tuple[str, ...]
    make: str
    reason: str
    same_as: tuple[str, ...] = ()


_MOTION_BLOCK = (r"((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)\.transformer_blocks\.(\d+)"
                 r"\.attn1\.to_q\.weight")
_DIFFUSERS_PE = r"\1.motion_modules.\2.transformer_blocks.\3.pos_embed.pe"
_ORIGINAL_PE = tuple(rf"\1.motion_modules.\2.temporal_transformer.transformer_blocks.\3.attention_blocks.{i}.pos_encoder.pe"
                     for i in (0, 1))
DIFFUSERS_PE = Buffer(_MOTION_BLOCK, (_DIFFUSERS_PE,), "sinusoid",
                      "diffusers' SinusoidalPositionalEmbedding.pe is a persistent buffer: from_pretrained expects it",
                      same_as=_ORIGINAL_PE)
ORIGINAL_PE = Buffer(_MOTION_BLOCK, _ORIGINAL_PE, "sinusoid",
                     "the original release stores a pos_encoder table in both attention blocks", same_as=(_DIFFUSERS_PE,))
LDM_POSITION_IDS = Buffer(r"embeddings\.position_embedding\.weight",
                          ("cond_stage_model.transformer.text_model.embeddings.position_ids",), "position_ids",
                          "SD 1.5 releases store the CLIP text embeddings' position_ids buffer",
                          same_as=("embeddings.position_ids", "text_model.embeddings.position_ids"))

# (format, class name) -> its buffers. transformers 5 does not persist CLIP's position_ids, so a diffusers export
# has none; diffusers persists the motion modules' position tables.
BUFFERS = {
    ("diffusers", "MotionAdapter"): (DIFFUSERS_PE,),
    ("diffusers", "UNetMotionModel"): (DIFFUSERS_PE,),
    ("original", "MotionAdapter"): (ORIGINAL_PE,),
    ("ldm-sd15", "CLIPTextModel"): (LDM_POSITION_IDS,),
}


def sinusoid_table(length: int, dim: int) -> np.ndarray:
    """diffusers' SinusoidalPositionalEmbedding.pe (1, length, dim), float32: the same float32 angles, with sin/cos
    evaluated in float64 and rounded once (PyTorch's float32 kernels differ on ~5% of entries, by up to 1.9e-6)."""
    div = np.exp((np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim)).astype(np.float64))
    angle = (np.arange(length, dtype=np.float32)[:, None] * div.astype(np.float32)).astype(np.float64)
    pe = np.zeros((1, length, dim), np.float32)
    pe[0, :, 0::2] = np.sin(angle).astype(np.float32)
    pe[0, :, 1::2] = np.cos(angle).astype(np.float32)
    return pe


def _dominant_float(params: dict[str, TensorRef]) -> str:
    """The dtype most of a component's parameters are stored in (a recomputed table is stored alike, as
    diffusers' `save_pretrained` of a model in that dtype does)."""
    tags = [r.dtype for r in params.values() if r.dtype in ("F32", "F16", "BF16")]
    return max(("F32", "F16", "BF16"), key=tags.count) if tags else "F32"


def _make(kind: str, config: dict, anchor_shape: tuple[int, ...], where: str) -> np.ndarray:
    if kind == "sinusoid":
        length = config.get("motion_max_seq_length", 32)
        return sinusoid_table(int(length), int(anchor_shape[1]))
    if kind == "position_ids":
        return np.arange(int(anchor_shape[0]), dtype=np.int64)[None]
    raise ConversionError(f"{where}: no way to recompute a {kind!r} buffer")


# ----------------------------------------------------------------------------------------------------------------
# Planning: MindSpore parameters -> output tensors, through the rows read backwards
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class OutTensor:
    """One tensor of the exported file: its name and shape, the MindSpore parameters it is made of (several: the
    parts of a split row, concatenated in order), the inverse transform, and where it came from."""

    name: str
    shape: tuple[int, ...]
    refs: list[TensorRef]
    transform: str = IDENTITY
    rule: str = IDENTITY
    array: object = None  # a recomputed buffer's values (then `refs` is empty)
    origin: str = ""
    tag: str | None = None  # a recomputed buffer's stored dtype (the component's)

    @property
    def source_tag(self) -> str:
        return self.refs[0].dtype if self.refs else (self.tag or _tag_of(self.array))


def _tag_of(arr) -> str:
    return {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}[np.asarray(arr).dtype]


class _Inverse:
    """A rule table read backwards, indexed by each inverse pattern's literal head (a few thousand LDM rows would
    otherwise be tried on every parameter)."""

    def __init__(self, rules):
        self.rules = tuple(rules)
        self.rows = [ir for r in self.rules for ir in invert_rule(r)]
        self.by_head: dict[str, list] = {}
        for ir in self.rows:
            head = re.match(r"(?:[^\\()\[.*+?|{^$]|\\.)*", ir.pattern).group(0)
            self.by_head.setdefault(re.sub(r"\\(.)", r"\1", head)[:12], []).append(ir)

    def candidates(self, name: str):
        for head, rows in self.by_head.items():
            if name.startswith(head):
                for ir in rows:
                    s = ir.source_for(name)
                    if s is not None:
                        yield ir, s


def plan_names(rules, params: dict[str, TensorRef], strict: bool, where: str, layout: str) -> list[OutTensor]:
    """Every MindSpore parameter -> the output tensor it belongs to. `strict`: the layout's rows are its only
    spelling (original layouts); otherwise a name that no row rewrites is kept (diffusers layouts). Each name is
    checked forwards through the same rows; a parameter no row writes back, or one two rows write back, is refused
    naming it."""
    inverse = _Inverse(rules)
    groups: dict[str, dict] = {}
    for name, ref in params.items():
        valid = []
        if not strict:
            rule, targets = forward_target(inverse.rules, name)
            if rule is None:
                valid.append((None, name))
        if not valid:
            for ir, source in inverse.candidates(name):
                rule, targets = forward_target(inverse.rules, source)
                if rule is ir.rule and targets is not None and targets[ir.part[0] if ir.part else 0] == name:
                    valid.append((ir, source))
        if not valid:
            raise ConversionError(f"{where}: no row of the {layout} layout writes parameter {name!r} back "
                                  "(the rule table cannot export it)")
        if len({s for _, s in valid}) > 1:
            raise ConversionError(f"{where}: parameter {name!r} could be written back as "
                                  f"{', '.join(sorted({s for _, s in valid}))} (ambiguous rows)")
        ir, source = valid[0]
        entry = groups.setdefault(source, {"parts": {}, "ir": ir})
        index, count = ir.part if ir is not None and ir.part else (0, 1)
        if index in entry["parts"]:
            raise ConversionError(f"{where}: output tensor {source!r} is written twice, from "
                                  f"{entry['parts'][index].name!r} and {name!r}")
        entry["parts"][index] = ref
        entry["count"] = count
    outs = []
    for source, entry in groups.items():
        ir, parts, count = entry["ir"], entry["parts"], entry["count"]
        if sorted(parts) != list(range(count)):
            missing = sorted(set(range(count)) - set(parts))
            raise ConversionError(f"{where}: output tensor {source!r} is split over {count} parameters, but part(s) "
                                  f"{missing} are missing")
        refs = [parts[i] for i in range(count)]
        first = refs[0].shape
        if any(r.shape[1:] != first[1:] or r.shape[0] != first[0] for r in refs[1:]):
            raise ConversionError(f"{where}: the parts of {source!r} have different shapes "
                                  f"{[list(r.shape) for r in refs]}")
        if count > 1:
            shape = (first[0] * count, *first[1:])
            transform = ir.transform
        else:
            rule_transform = ir.rule.transform if ir is not None else IDENTITY
            shape = INVERSE_TRANSFORMS[rule_transform][1](first)
            transform = INVERSE_TRANSFORMS[rule_transform][0]
        outs.append(OutTensor(source, tuple(shape), refs, transform, ir.rule.source if ir is not None else IDENTITY,
                              origin=" + ".join(r.name for r in refs)))
    return outs


def plan_buffers(kind: str, class_name: str, rules, params: dict[str, TensorRef], config: dict, kept: dict,
                 where: str) -> list[OutTensor]:
    """The BUFFERS of (kind, class): values from the converted folder's `buffers.safetensors` when it holds that
    name and shape (the source's own bytes), else recomputed. Each buffer name must be one a drop row of the same
    table removes (else the table and BUFFERS disagree)."""
    outs = []
    for buf in BUFFERS.get((kind, class_name), ()):
        for pname, ref in params.items():
            m = re.fullmatch(buf.anchor, pname)
            if not m:
                continue
            for template in buf.names:
                name = m.expand(template)
                rule, targets = forward_target(rules, name)
                if rule is None or targets is not None:
                    raise ConversionError(f"{where}: buffer {name!r} is not one the {kind} rows drop; BUFFERS and "
                                          "the rule table disagree")
                fresh = _make(buf.make, config, tuple(ref.shape), where)
                candidates = [kept.get(n) for n in (name, *(m.expand(t) for t in buf.same_as))]
                kept_ref = next((r for r in candidates if r is not None and tuple(r.shape) == fresh.shape), None)
                if kept_ref is not None:
                    outs.append(OutTensor(name, fresh.shape, [kept_ref], rule=rule.source,
                                          origin=f"{BUFFERS_FILE} (the source's bytes)"))
                else:
                    outs.append(OutTensor(name, fresh.shape, [], rule=rule.source, array=fresh,
                                          origin=f"recomputed ({buf.make}): {buf.reason}",
                                          tag=_dominant_float(params) if fresh.dtype.kind == "f" else None))
    return outs


# ----------------------------------------------------------------------------------------------------------------
# Reading a mindport folder
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    folder: Path
    class_name: str
    config: dict
    params: dict[str, TensorRef]
    kept: dict[str, TensorRef]
    files: list[Path]
    library: str | None = None


def open_mindport_component(folder: Path, name: str, library: str | None = None) -> Component:
    weights = folder / CONVERTED_WEIGHTS
    if not weights.is_file():
        what = "a PyTorch checkpoint, which needs no export" if any(
            folder.glob("*.safetensors")) or any(folder.glob("*.bin")) else "no weights"
        raise ConversionError(f"{folder}: not a mindport folder (no {CONVERTED_WEIGHTS}: {what}); expected a "
                              "folder written by `mindport convert` or `save_pretrained`")
    config = read_json(folder / "config.json")
    cls = config.get("_class_name")
    if not isinstance(cls, str):
        raise ConversionError(f"{folder / 'config.json'}: no '_class_name'; a mindport folder's config names its class")
    converter_for(cls, str(folder / "config.json"))  # a registered architecture
    params, meta = read_header(weights)
    if meta.get("format") != "mindport":
        raise ConversionError(f"{weights}: not written by mindport (metadata format {meta.get('format')!r}, "
                              "expected 'mindport')")
    kept = read_header(folder / BUFFERS_FILE)[0] if (folder / BUFFERS_FILE).is_file() else {}
    files = [weights] + ([folder / BUFFERS_FILE] if kept else [])
    return Component(name, folder, cls, {k: v for k, v in config.items() if k != "_class_name"}, params, kept, files,
                     library)


def open_source(root: Path) -> tuple[dict | None, dict[str, Component], dict[str, tuple[str, Path]], dict]:
    """(model_index or None, model components, plain components {name: (class, folder)}, source manifest)."""
    root = Path(root)
    if not root.exists():
        raise ConversionError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise ConversionError(f"{root}: a file; expected a folder written by `mindport convert` or `save_pretrained`")
    manifest = read_json(root / MANIFEST) if (root / MANIFEST).is_file() else {}
    if (root / "model_index.json").is_file():
        index = read_json(root / "model_index.json")
        models, plain = {}, {}
        for name, (lib, cls) in pipeline_components(root).items():
            folder = root / name
            if lib is None or cls is None or not folder.is_dir():  # as convert: an entry without a folder is skipped
                continue
            if (folder / "config.json").is_file():
                models[name] = open_mindport_component(folder, name, lib)
            else:
                plain[name] = (cls, folder)
        if not models:
            raise ConversionError(f"{root}: model_index.json lists no model component with a folder")
        return index, models, plain, manifest
    if (root / "config.json").is_file():
        return None, {".": open_mindport_component(root, ".")}, {}, manifest
    raise ConversionError(f"{root}: not a mindport folder (neither model_index.json nor config.json)")


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _out_tag(out: OutTensor, dtype: str | None) -> str:
    tag = out.source_tag
    if dtype is None or tag not in ("F32", "F16", "BF16", "F64"):
        return tag
    return EXPORT_TAGS[dtype]


def _producer(out: OutTensor, tag: str):
    if out.array is not None:
        return lambda: np.asarray(out.array, dtype=_STORE_NP.get(tag, out.array.dtype))
    refs = out.refs
    if len(refs) == 1 and out.transform == IDENTITY and refs[0].dtype == tag and refs[0].loader is None:
        return lambda: RawSpan(refs[0].file, refs[0].offset, refs[0].nbytes)

    def produce():
        arrays = [r.load() for r in refs]  # bf16 widens exactly to float32, and rounds back exactly when stored
        arr = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        arr = TRANSFORMS[out.transform](arr, out.shape)
        return np.asarray(arr, dtype=_STORE_NP.get(tag, arr.dtype))

    return produce


def write_file(path: Path, outs: list[OutTensor], dtype: str | None, metadata: dict) -> dict:
    """Stream the tensors to `path` in MindSpore file order; each output name written once. Returns the manifest's
    per-tensor records."""
    seen: dict[str, str] = {}
    for o in outs:
        if o.name in seen:
            raise ConversionError(f"{path}: tensor {o.name!r} would be written twice ({seen[o.name]} and {o.origin})")
        seen[o.name] = o.origin
    order = sorted(outs, key=lambda o: (0, o.refs[0].file, o.refs[0].offset) if o.refs else (1, "", 0))
    entries, records = [], {}
    for o in order:
        tag = _out_tag(o, dtype)
        entries.append((o.name, o.shape, tag, _producer(o, tag)))
        records[o.name] = {"from": [r.name for r in o.refs] or None, "rule": o.rule, "transform": o.transform,
                           **({"concatenated": "rows of the parts, in order (a split row read backwards)"}
                              if len(o.refs) > 1 else {}),
                           "dtype": tag, "shape": list(o.shape), **({"origin": o.origin} if not o.refs or
                                                                    o.origin.startswith(BUFFERS_FILE) else {})}
    write_safetensors(path, entries, metadata)
    return records


def _audit(comp: Component, outs: list[OutTensor], buffers: list[OutTensor]) -> dict:
    used: dict[str, int] = {}
    for o in outs:
        for r in o.refs:
            used[r.name] = used.get(r.name, 0) + 1
    twice = sorted(k for k, n in used.items() if n > 1)
    unused = sorted(set(comp.params) - set(used))
    if twice or unused:
        raise ConversionError(f"{comp.folder}: export audit failed: {len(unused)} parameter(s) unused "
                              f"({', '.join(unused[:4])}), {len(twice)} used twice ({', '.join(twice[:4])})")
    return {"parameters": len(comp.params), "used_once": len(used), "tensors_written": len(outs) + len(buffers),
            "buffers_written": len(buffers), "passed": True}


def _component_manifest(comp: Component, root: Path, files: list[str], records: dict, audit: dict) -> dict:
    return {"class_name": comp.class_name, "source_files": file_records(comp.files, root), "files": files,
            "audit": audit, "tensors": records}


# ----------------------------------------------------------------------------------------------------------------
# diffusers layout
# ----------------------------------------------------------------------------------------------------------------


def _is_transformers(comp: Component) -> bool:
    if comp.library is not None:
        return comp.library == "transformers"
    return "model_type" in comp.config or "architectures" in comp.config


def _diffusers_config(comp: Component) -> dict:
    if _is_transformers(comp):
        cfg = dict(comp.config)
        cfg.setdefault("architectures", [comp.class_name])
        return cfg
    return {"_class_name": comp.class_name, **comp.config}


def respell_as_recorded(outs: list[OutTensor], recorded: dict) -> int:
    """A converter's `normalise_keys` accepts whole-checkpoint spellings no row names (CLIP's `text_model.` /
    `vision_model.` prefix, present or not): the rows give the installed libraries' spelling. When the conversion
    recorded the source's name of a tensor (manifest `tensors[parameter].source`) and it is that name with a prefix
    added or removed, the export takes the source's spelling back. Returns how many names changed."""
    changed = 0
    for o in outs:
        rec = recorded.get(o.refs[0].name) if len(o.refs) == 1 and o.rule == IDENTITY else None
        if not isinstance(rec, dict) or rec.get("rule") != IDENTITY or rec.get("part"):
            continue
        source = rec.get("source")
        if isinstance(source, str) and source != o.name and (source.endswith("." + o.name) or
                                                             o.name.endswith("." + source)):
            o.name, o.origin, changed = source, f"{o.origin} (spelled as the source: {source})", changed + 1
    return changed


def _plan_diffusers_component(comp: Component, recorded: dict) -> tuple[list[OutTensor], dict, int]:
    where = str(comp.folder)
    conv = converter_for(comp.class_name, where)
    outs = plan_names(conv.rules, comp.params, strict=False, where=where, layout=f"diffusers {comp.class_name}")
    respelled = respell_as_recorded(outs, recorded)
    buffers = plan_buffers("diffusers", comp.class_name, conv.rules, comp.params, comp.config, comp.kept, where)
    return outs + buffers, _audit(comp, outs, buffers), respelled


def _export_diffusers(root: Path, tmp: Path, manifest: dict, dtype) -> dict:
    """Every component planned and audited first; then each written (weights streamed, config, plain folders)."""
    index, models, plain, source_manifest = open_source(root)
    recorded = {name: ((source_manifest.get("components") or {}).get(name) or {}).get("tensors") or {}
                for name in models}
    plans = {name: _plan_diffusers_component(comp, recorded[name]) for name, comp in models.items()}
    for name, comp in models.items():
        outs, audit, respelled = plans[name]
        out = tmp if name == "." else tmp / name
        out.mkdir(parents=True, exist_ok=True)
        weights = "model.safetensors" if _is_transformers(comp) else "diffusion_pytorch_model.safetensors"
        records = write_file(out / weights, outs, dtype, {"format": "pt"})
        (out / "config.json").write_text(json.dumps(_diffusers_config(comp), indent=2, sort_keys=True))
        manifest["components"][name] = {**_component_manifest(comp, root, [weights, "config.json"], records, audit),
                                        **({"respelled_as_source": respelled} if respelled else {})}
    for name, (cls, folder) in plain.items():
        _copy_plain(folder, tmp / name)
        manifest["components"][name] = {"class_name": cls, "copied": True}
    if index is not None:
        shutil.copy2(root / "model_index.json", tmp / "model_index.json")
    _not_restored(manifest, source_manifest)
    return manifest


def _not_restored(manifest: dict, source_manifest: dict) -> None:
    """What the conversion dropped and this export does not write back (the source manifest's lists): recorded,
    so nobody mistakes the export for the whole original file."""
    written = {name for c in manifest["components"].values() for name in c.get("tensors", {})}
    written |= {f for c in manifest["components"].values() for t in c.get("tensors", {}).values()
                for f in (t.get("from") or [])}  # kept buffers written under the other layout's names
    out = {}
    for row, entry in (source_manifest.get("dropped") or {}).items():
        keys = [k for k in entry.get("keys", []) if k not in written]
        if keys:
            out[row] = {"reason": entry.get("reason", ""), "keys": keys}
    for name, comp in (source_manifest.get("components") or {}).items():
        keys = [k for k in (comp.get("audit") or {}).get("dropped", []) if k not in written]
        if keys:
            out[name] = {"reason": "dropped by a row of the conversion; not held by the MindSpore model", "keys": keys}
    if out:
        manifest["not_restored"] = out


# ----------------------------------------------------------------------------------------------------------------
# original layouts
# ----------------------------------------------------------------------------------------------------------------

# Wan-AI release file names (their pickles written as safetensors: no torch here)
WAN_FILES = {"WanTransformer3DModel": "diffusion_pytorch_model.safetensors",
             "AutoencoderKLWan": Path(wan.RELEASE_FILES["vae"]).with_suffix(".safetensors").name,
             "UMT5EncoderModel": Path(wan.RELEASE_FILES["text_encoder"]).with_suffix(".safetensors").name,
             "CLIPVisionModel": Path(wan.RELEASE_FILES["image_encoder"]).with_suffix(".safetensors").name}
WHOLE_FILE_LAYOUTS = (SD15, SVD)
MOTION_MODULE_FILE = "motion_module.safetensors"


def _wan_rows(comp: Component):
    if comp.class_name == "WanTransformer3DModel":
        return wan.TRANSFORMER_ROWS
    if comp.class_name == "UMT5EncoderModel":
        return wan.UMT5_ROWS
    if comp.class_name == "AutoencoderKLWan":
        return tuple(wan.vae_rows(comp.config))
    return wan.CLIP_ROWS


def wan_release_config(config: dict) -> dict:
    """Wan-AI's WanModel config.json fields for a diffusers WanTransformer3DModel config (what `wan_original`
    reads back: the heads, which no shape shows, and the cross-checked sizes)."""
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    kind = "t2v" if config.get("image_dim") is None else ("flf2v" if config.get("pos_embed_seq_len") else "i2v")
    return {"_class_name": "WanModel", "model_type": kind, "patch_size": list(config["patch_size"]),
            "dim": heads * head_dim, "ffn_dim": config["ffn_dim"], "freq_dim": config["freq_dim"],
            "text_dim": config["text_dim"], "in_dim": config["in_channels"], "out_dim": config["out_channels"],
            "num_heads": heads, "num_layers": config["num_layers"], "window_size": [-1, -1], "text_len": 512,
            "qk_norm": config.get("qk_norm") is not None, "cross_attn_norm": bool(config.get("cross_attn_norm")),
            "eps": config.get("eps", 1e-6)}


def _original_units(index: dict | None, models: dict[str, Component], root: Path):
    """Group the components into the original files that hold them: [(file name, layout label, [(component,
    rows)])]. Components without an original layout are refused by name."""
    units, done = [], set()
    for layout in WHOLE_FILE_LAYOUTS:
        want = {name: cls for name, (cls, _, _) in layout.components.items()}
        if all(name in models and models[name].class_name == cls for name, cls in want.items()):
            parts = [(models[name], tuple(rows(models[name].config)))
                     for name, (_, _, rows) in layout.components.items()]
            units.append((f"{layout.name}.safetensors", layout.name, parts))
            done |= set(want)
    for name, comp in models.items():
        if name in done:
            continue
        if comp.class_name == "MotionAdapter":
            units.append((MOTION_MODULE_FILE, "original", [(comp, converter_for("MotionAdapter").rules)]))
        elif comp.class_name in WAN_FILES and (comp.class_name != "CLIPVisionModel" or name in (".", "image_encoder")):
            if name == "transformer_2":
                raise ConversionError(f"{root}: transformer_2 (Wan 2.2's second expert) has no place in a Wan 2.1 "
                                      "release folder; export it as its own component folder")
            units.append((WAN_FILES[comp.class_name], f"wan {comp.class_name}", [(comp, _wan_rows(comp))]))
        else:
            layouts = ", ".join(f"{lay.pipeline} ({', '.join(lay.components)})" for lay in WHOLE_FILE_LAYOUTS)
            raise ConversionError(f"{comp.folder}: {name if name != '.' else 'the component'} ({comp.class_name}) has "
                                  f"no original single-file layout here; original layouts: {layouts}, MotionAdapter "
                                  "motion modules, Wan 2.1 transformer / VAE / UMT5 / CLIP; use --format diffusers")
    return units


def _export_original(root: Path, tmp: Path, manifest: dict, dtype) -> dict:
    """Every file's components planned and audited first; then each file written."""
    index, models, plain, source_manifest = open_source(root)
    files = []
    for file_name, layout, parts in _original_units(index, models, root):
        outs, owners, audits = [], {}, {}
        for comp, rows in parts:
            where = str(comp.folder)
            kind = layout if layout in ("ldm-sd15", "sgm-svd") else "original"
            comp_outs = plan_names(rows, comp.params, strict=True, where=where, layout=layout)
            buffers = plan_buffers(kind, comp.class_name, rows, comp.params, comp.config, comp.kept, where)
            audits[comp.name] = (_audit(comp, comp_outs, buffers), comp)
            owners.update({o.name: comp.name for o in comp_outs + buffers})
            outs += comp_outs + buffers
        files.append((file_name, layout, parts, outs, owners, audits))
    for file_name, layout, parts, outs, owners, audits in files:
        records = write_file(tmp / file_name, outs, dtype, {"format": "pt"})
        for name, (audit, comp) in audits.items():
            mine = {k: v for k, v in records.items() if owners[k] == name}
            manifest["components"][name] = {**_component_manifest(comp, root, [file_name], mine, audit),
                                            "layout": layout}
        if layout == "wan WanTransformer3DModel":
            (tmp / "config.json").write_text(json.dumps(wan_release_config(parts[0][0].config), indent=2))
    if "tokenizer" in plain and any(c.class_name.startswith("Wan") for c in models.values()):
        _copy_plain(plain["tokenizer"][1], tmp / wan.RELEASE_FILES["tokenizer"])
    _not_restored(manifest, source_manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------------


def export(src, out, fmt: str = "diffusers", dtype: str | None = None, overwrite: bool = False) -> dict:
    """Export the mindport folder SRC to OUT in `fmt` ("diffusers": a diffusers pipeline / component folder;
    "original": the original single-file layouts, in a folder). Published atomically (`convert.publish`); returns
    the manifest."""
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r} is not supported; expected one of {', '.join(FORMATS)}")
    check_dtype(dtype)
    src = Path(src)
    open_source(src)  # refuse a bad SRC before OUT is looked at or anything is written
    if Path(out).exists() and not overwrite:
        raise ConversionError(f"{out}: already exists (pass --overwrite to replace it)")
    if Path(out).resolve() == src.resolve():
        raise ConversionError(f"{out}: is SRC itself; choose another output folder")

    def build(tmp: Path) -> dict:
        manifest = new_manifest(src, src.resolve(), None, dtype, exported_format=fmt)
        manifest["format"] = f"{fmt} (exported by mindport)"
        return (_export_diffusers if fmt == "diffusers" else _export_original)(src, tmp, manifest, dtype)

    return publish(out, overwrite, build, manifest_name=EXPORT_MANIFEST)
