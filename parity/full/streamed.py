"""Streamed comparison of a component too large to hold on both sides (UMT5-XXL: 5.7 B parameters, 23 GB float32;
Wan 2.1 I2V 14B: 16.4 B, 66 GB float32), with peak memory near one block's.

The weights live in files: a sharded safetensors checkpoint in diffusers / transformers layout (a released one, or
the random bf16 one `write_checkpoint` draws, as Wan ships its weights). Nothing reads the whole checkpoint:

1. **Skeleton**: each side builds the model with zero blocks (`num_layers` 0) and loads only the tensors outside the
   blocks (patch, time, text and image embeddings, output head; for UMT5 the embedding rows the run's token ids use,
   gathered from the memory-mapped table, with the ids renumbered). Its block list is replaced by a *stream*: block
   `i` is built empty, its tensors read from the files (memory-mapped), run, and dropped before block `i + 1`.
2. **Reference pass** (PyTorch float32): the skeleton's forward with streamed reference blocks; every module's
   output goes to the on-disk activation store under its full-model path (`blocks.7.attn2.to_k`), and so do each
   block's inputs. For the noise floor each block is then cast to float64 and re-run on the same inputs, and the
   skeleton once more in float64 with the blocks replaying the reference's outputs (float64 vs float32: each
   module's rounding floor, as `parity.full.components` measures it).
3. **MindSpore pass** (per dtype): our skeleton, loaded through our converter (its rule table and audit, per
   block), with streamed MindSpore blocks. With `feed="reference"` (default) every block gets the reference's
   captured inputs (hidden states, and the context and time projection where both sides pass the same tensor; the
   rotary / position-bias tables stay each side's own, they depend on shapes only) and hands the reference's output
   on: each module is judged on the reference's inputs, and the error a block introduces is not mixed with the
   error it inherits. `feed="own"` chains our own outputs instead, which is numerically the whole-model run.
4. `parity.compare.compare_modules` judges every module call, exactly as for a whole component.

Peak anonymous memory = skeleton + one block on the larger side (+ its float64 copy during the floor pass).

Usage, on a real checkpoint (e.g. a downloaded `Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`):

    python -m parity.full stream WAN_DIR/transformer  --out reports/wan14b/transformer            # fp32
    python -m parity.full stream WAN_DIR/text_encoder --out reports/wan14b/text_encoder --dtype fp32 --dtype fp16
        [--feed own]       chain our own block outputs (the whole-model run) instead of the reference's
        [--no-floor]       skip the float64 passes (about half the time)
        [--height 64 --width 112 --frames 5]   the latent video the transformer sees (seeded inputs)

It writes `streamed.json` (the rows of `parity.full.components`, plus per-block results and timings) and
`streamed.md`; exit 0 when every module is within its bound. For the released configs with random weights,
`python -m parity.full components NAME --only COMPONENT` (or `make parity-full-wan-umt5` /
`make parity-full-wan-i2v-transformer`) writes the bf16 checkpoint first (`write_checkpoint`), runs this, and
deletes the checkpoint (`--keep` keeps it).

In Python: `run_streamed(folder, component, inputs, field, dtypes)` with the model's forward arguments as numpy
arrays; `write_checkpoint(class_name, config, out, seed)` for a random one. A new architecture needs a `StreamSpec`
row (where its block list lives, which block arguments both libraries pass alike) and its block constructors in
`reference_block` / `our_block`."""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import shutil
import time
import types
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..capture import Capture, to_numpy
from ..compare import BARS, compare_modules, first_divergence
from ..memory import PeakMemory
from ..metrics import compare
from ..store import ActivationStore


# ----------------------------------------------------------------------------------------------------------------
# What differs between architectures
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSpec:
    library: str  # the reference: "diffusers" | "transformers"
    blocks: str  # attribute path of the block list, the same on both sides
    count: str  # config field holding the number of blocks
    weights: str  # checkpoint file stem (diffusion_pytorch_model | model)
    shared_args: tuple[int, ...]  # positional block arguments both sides pass in the same form (teacher-forced)
    # reference module path -> ours, where the two libraries name one module differently
    aliases: tuple[tuple[str, str], ...] = ()


SPECS = {
    "WanTransformer3DModel": StreamSpec(
        "diffusers", "blocks", "num_layers", "diffusion_pytorch_model", (0, 1, 2)),
    "UMT5EncoderModel": StreamSpec(
        "transformers", "encoder.block", "num_layers", "model", (0,),
        aliases=(("encoder.embed_tokens", "shared"),)),
}


def spec_for(class_name: str) -> StreamSpec:
    if class_name not in SPECS:
        raise ValueError(f"no streamed comparison for {class_name!r}; expected one of {', '.join(SPECS)}")
    return SPECS[class_name]


def _block_prefix(spec: StreamSpec, i: int) -> str:
    return f"{spec.blocks}.{i}"


def _is_block_key(spec: StreamSpec, key: str) -> bool:
    return key.startswith(spec.blocks + ".")


# ----------------------------------------------------------------------------------------------------------------
# Reference-side construction (diffusers / transformers)
# ----------------------------------------------------------------------------------------------------------------
def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype") and not k.startswith("_")}


def reference_model(class_name: str, cfg: dict):
    """The reference model built from `cfg` (default initialisation; call under torch.device("meta") for shapes)."""
    spec = spec_for(class_name)
    if spec.library == "diffusers":
        import diffusers

        return getattr(diffusers, class_name).from_config(cfg)
    import transformers

    cls = getattr(transformers, class_name)
    return cls(cls.config_class(**_clean(cfg)))


def reference_block(class_name: str, cfg: dict, i: int, skeleton=None):
    """Block i of the reference, parameters on the meta device (filled by `load_state_dict(assign=True)`). For
    transformers the block takes the skeleton's own (encoder) config: its attention implementation decides the
    mask format the stack hands the blocks."""
    import torch

    with torch.device("meta"):
        if class_name == "WanTransformer3DModel":
            from diffusers.models.transformers.transformer_wan import WanTransformerBlock

            dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
            return WanTransformerBlock(dim, cfg["ffn_dim"], cfg["num_attention_heads"], cfg.get("qk_norm"),
                                       cfg.get("cross_attn_norm", False), cfg.get("eps", 1e-6),
                                       cfg.get("added_kv_proj_dim"))
        from transformers import UMT5Config
        from transformers.models.umt5.modeling_umt5 import UMT5Block

        if skeleton is not None:
            config = skeleton.encoder.config
        else:
            config = UMT5Config(**_clean(cfg))
            config.is_decoder = False
        return UMT5Block(config, layer_idx=i)


def our_block(class_name: str, cfg: dict, i: int):
    """Block i of our port (mindport), built from the converted config."""
    if class_name == "WanTransformer3DModel":
        from mindport.models.transformer_wan import WanTransformerBlock

        dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        return WanTransformerBlock(dim, cfg["ffn_dim"], cfg["num_attention_heads"], cfg.get("qk_norm"),
                                   cfg.get("cross_attn_norm", False), cfg.get("eps", 1e-6), cfg.get("added_kv_proj_dim"))
    from mindport.models.umt5 import UMT5Block, parse_feed_forward_proj

    act, gated = parse_feed_forward_proj(cfg.get("feed_forward_proj", "gated-gelu"))
    return UMT5Block(cfg["d_model"], cfg["d_kv"], cfg["d_ff"], cfg["num_heads"], cfg["relative_attention_num_buckets"],
                     cfg["relative_attention_max_distance"], cfg.get("layer_norm_epsilon", 1e-6), act, gated)


# ----------------------------------------------------------------------------------------------------------------
# Random-weight checkpoints, written tensor by tensor (never the whole model in memory)
# ----------------------------------------------------------------------------------------------------------------
def draw(name: str, shape: tuple[int, ...], seed: int, vector_std: float = 0.1, rows_per_chunk: int | None = None):
    """The tensor `name` as `parity.fixtures.randomise` draws it (matrices N(0, 1/fan_in), norm scales 1 + N(0, std^2),
    other vectors N(0, std^2)), from a generator seeded by (seed, name): any tensor can be re-drawn alone. Yields
    float32 row chunks (a 1 GB table is never held twice)."""
    import torch

    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    rows = shape[0] if shape else 1
    step = rows_per_chunk or max(1, (64 << 20) // max(1, math.prod(shape[1:]) if len(shape) > 1 else 1))
    numel = math.prod(shape) if shape else 1
    for start in range(0, rows, step):
        chunk = (min(step, rows - start), *shape[1:]) if shape else ()
        n = torch.randn(chunk, generator=g)
        if "norm" in name and name.endswith(("weight", "gamma")) and numel == max(shape, default=1):
            yield 1.0 + vector_std * n
        elif len(shape) >= 2:
            yield n / math.sqrt(max(1, numel // shape[0]))
        else:
            yield vector_std * n


def write_checkpoint(class_name: str, cfg: dict, out, seed: int = 0, dtype: str = "bf16",
                     shard_bytes: int = 2 << 30, log=print) -> Path:
    """A random-weight checkpoint of `class_name` at `cfg` in the library's sharded layout (`<stem>-0000i-of-0000n.
    safetensors` + `<stem>.safetensors.index.json` + config.json), drawn and written tensor by tensor. Written to a
    temporary sibling, renamed into place when complete; an existing complete folder is reused."""
    import torch
    from safetensors.torch import save_file

    log = log or (lambda *_: None)
    spec = spec_for(class_name)
    out = Path(out)
    index_name = f"{spec.weights}.safetensors.index.json"
    if (out / index_name).exists():
        return out
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    with torch.device("meta"):
        shapes = [(n, tuple(p.shape)) for n, p in reference_model(class_name, cfg).named_parameters()]
    item = torch.empty((), dtype=torch_dtype).element_size()
    shards, size = [[]], 0
    for n, s in shapes:  # plan the shards first: file names carry the count
        b = math.prod(s) * item
        if shards[-1] and size + b > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((n, s))
        size += b
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map, total, t0 = {}, 0, time.perf_counter()
    for k, shard in enumerate(shards):
        fname = f"{spec.weights}-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for n, s in shard:
            tensors[n] = torch.cat([c.to(torch_dtype) for c in draw(n, s, seed)]).reshape(s) if s else \
                next(draw(n, s, seed)).to(torch_dtype)
            weight_map[n] = fname
            total += tensors[n].numel() * item
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        del tensors
        log(f"  {out.name}: shard {k + 1}/{len(shards)} written ({total / 2**30:.1f} GiB, "
            f"{time.perf_counter() - t0:.0f} s)")
    (tmp / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (tmp / "config.json").write_text(json.dumps(
        {"_class_name": class_name, **cfg} if spec.library == "diffusers" else {"architectures": [class_name], **cfg},
        indent=2))
    (tmp / "mindport_streamed.json").write_text(json.dumps({"class": class_name, "seed": seed, "dtype": dtype,
                                                            "parameters": sum(math.prod(s) for _, s in shapes)}))
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reading a checkpoint folder (both sides read the same files, each with its own reader)
# ----------------------------------------------------------------------------------------------------------------
class Checkpoint:
    """A sharded (or single-file) safetensors folder: headers only until a tensor is asked for."""

    def __init__(self, folder, spec: StreamSpec):
        from converters.safetensors_io import read_header

        self.folder = Path(folder)
        index = self.folder / f"{spec.weights}.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.folder / f"{spec.weights}.safetensors").exists():
            files = [f"{spec.weights}.safetensors"]
        else:
            raise ValueError(f"{self.folder}: no {spec.weights}.safetensors or its index; expected a diffusers / "
                             "transformers checkpoint folder")
        self.refs = {}  # ours: converters' TensorRef (memory-mapped numpy)
        self.file_of = {}
        for f in files:
            refs, _ = read_header(self.folder / f)
            self.refs.update(refs)
            self.file_of.update({k: self.folder / f for k in refs})
        self._torch = {}
        self.config = json.loads((self.folder / "config.json").read_text())
        self.nbytes = sum((self.folder / f).stat().st_size for f in files)

    def torch_tensor(self, key: str, rows=None):
        """The reference's read: safetensors' own memory-mapped reader, widened to float32."""
        from safetensors import safe_open

        path = str(self.file_of[key])
        if path not in self._torch:
            self._torch[path] = safe_open(path, framework="pt")
        f = self._torch[path]
        if rows is None:
            return f.get_tensor(key).float()
        import torch

        sl = f.get_slice(key)
        return torch.cat([sl[int(r):int(r) + 1] for r in rows]).float()

    def keys(self):
        return self.refs.keys()

    def release(self) -> None:
        """Unmap the files (both readers): the pages a block read leave the process's resident set with it, so RSS
        (not only anonymous RSS) stays near one block; the next read maps the file again."""
        self._torch.clear()
        for ref in self.refs.values():
            if ref.mapping is not None:
                ref.mapping._map = None


def _rows_ref(ref, rows: np.ndarray):
    """A TensorRef whose load() gathers `rows` of a memory-mapped table (the rest of the table is never read)."""
    from dataclasses import replace

    from converters.safetensors_io import DTYPES, FileMapping, bf16_to_float32

    def load():
        np_dtype, _ = DTYPES[ref.dtype]
        table = (ref.mapping or FileMapping(ref.file)).array(np_dtype, ref.offset, math.prod(ref.shape)).reshape(ref.shape)
        part = np.ascontiguousarray(table[rows])
        return bf16_to_float32(part) if ref.dtype == "BF16" else part

    return replace(ref, shape=(len(rows), *ref.shape[1:]), nbytes=0, loader=load)


# ----------------------------------------------------------------------------------------------------------------
# The stream: a block list that builds, runs and drops one block at a time
# ----------------------------------------------------------------------------------------------------------------
def _prefixed(named, prefix: str):
    return ((prefix + ("." + n if n else ""), m) for n, m in named)


def _attach(capture: Capture, component: str, named) -> list:
    start = len(capture.handles)
    capture._attach(component, named)
    return capture.handles[start:]


def _remove(capture: Capture, handles: list) -> None:
    for h in handles:
        h.remove()
        capture.handles.remove(h)


class _Stream:
    """Iterates as the model's block list: yields one callable per block."""

    def __init__(self, n: int, run_block):
        self.n, self.run_block = n, run_block

    def __iter__(self):
        for i in range(self.n):
            yield lambda *args, _i=i, **kwargs: self.run_block(_i, args, kwargs)

    def __len__(self):
        return self.n


def _install(model, path: str, stream, torch_side: bool):
    parts = path.split(".")
    owner = model
    for p in parts[:-1]:
        owner = getattr(owner, p)
    if torch_side:
        import torch

        class StreamModule(torch.nn.Module):  # a module so torch's __setattr__ accepts it; never called itself
            def __iter__(self):
                return iter(stream)

            def __len__(self):
                return len(stream)

        owner._modules.pop(parts[-1], None)
        setattr(owner, parts[-1], StreamModule())
    else:
        from mindspore import nn

        class StreamCell(nn.Cell):
            def __iter__(self):
                return iter(stream)

            def __len__(self):
                return len(stream)

        setattr(owner, parts[-1], StreamCell())


# ----------------------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------------------
def _torch_inputs(inputs: dict, double: bool):
    import torch

    out = {}
    for k, v in inputs.items():
        if isinstance(v, np.ndarray):
            t = torch.from_numpy(v)
            out[k] = t.double() if double and t.is_floating_point() else t
        else:
            out[k] = v
    return out


def _cast_args(obj, fn):
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_args(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: _cast_args(v, fn) for k, v in obj.items()}
    return fn(obj)


def _field(out, path: str):
    for part in path.split("."):
        out = out[part] if isinstance(out, dict) else getattr(out, part)
    return out


def run_streamed(folder, component: str, inputs: dict, field: str = "sample", dtypes=("fp32",), floor: bool = True,
                 feed: str = "reference", renumber_ids: bool = True, store_dir=None, log=print) -> dict:
    """Compare the checkpoint in `folder` (its config.json names the class) streamed, block by block, on `inputs`
    (numpy arrays, the model's forward arguments). Returns one result row per dtype, keyed by dtype, in the schema of
    `parity.full.components.run_component` plus a `streamed` record."""
    import mindspore as ms
    import torch

    from converters import converter_for

    log = log or (lambda *_: None)
    from converters.base import map_tensors, materialise
    from mindport.modeling import ModelMixin
    from mindport.models import model_class

    if feed not in ("reference", "own"):
        raise ValueError(f"feed {feed!r}: expected 'reference' or 'own'")
    for d in dtypes:
        if d not in BARS:
            raise ValueError(f"dtype {d!r} is not supported; expected one of {', '.join(BARS)}")
    folder = Path(folder)
    cfg_file = json.loads((folder / "config.json").read_text())
    class_name = cfg_file.get("_class_name") or (cfg_file.get("architectures") or [None])[0]
    spec = spec_for(class_name)
    # import our side now: the run is long, and the code it compares is the code present when it starts
    conv = converter_for(class_name, str(folder))
    cls = model_class(class_name)
    for module in ("mindport.models.transformer_wan", "mindport.models.umt5"):  # our blocks' modules
        importlib.import_module(module)
    ckpt = Checkpoint(folder, spec)
    cfg = {k: v for k, v in cfg_file.items() if not k.startswith("_")}
    n_blocks = int(cfg[spec.count])
    n_params = sum(math.prod(r.shape) for r in ckpt.refs.values())
    mem = PeakMemory()
    timings: dict[str, float] = {}
    phase_peaks: dict[str, float] = {}
    store = ActivationStore(store_dir)
    inputs = dict(inputs)

    # 0. the skeleton's config and tensors: no blocks; UMT5's embedding only for the rows the ids use
    skel_cfg = {**cfg, spec.count: 0}
    skel_keys = [k for k in ckpt.keys() if not _is_block_key(spec, k)]
    rows = None
    if class_name == "UMT5EncoderModel" and renumber_ids:
        ids = np.asarray(inputs["input_ids"])
        rows, inv = np.unique(ids, return_inverse=True)
        inputs["input_ids"] = inv.reshape(ids.shape).astype(ids.dtype)
        skel_cfg["vocab_size"] = len(rows)

    def phase(name, t0):
        timings[name] = time.perf_counter() - t0
        phase_peaks[name] = round(mem.peak_mb - mem.baseline_mb, 1)

    # 1. reference skeleton (float32), its blocks streamed from the files
    t0 = time.perf_counter()
    ref_model = reference_model(class_name, skel_cfg).eval()
    sd = {}
    for k in skel_keys:
        sd[k] = ckpt.torch_tensor(k, rows if (rows is not None and k == "shared.weight") else None)
    if class_name == "UMT5EncoderModel":
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    missing, unexpected = ref_model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith(("freqs_cos", "freqs_sin"))]
    if missing or unexpected:
        raise ValueError(f"{folder}: reference skeleton: missing {missing[:5]}, unexpected {unexpected[:5]}")
    del sd
    ckpt.release()
    ref_model = ref_model.float()
    phase("torch_skeleton_load_s", t0)
    ref = Capture("torch", store=store)
    floor_cap = Capture("torch", reference=ref) if floor else None
    module_types: dict[str, str] = {}
    block_times: list[dict] = []

    def block_state(i):
        prefix = _block_prefix(spec, i) + "."
        return {k[len(prefix):]: ckpt.torch_tensor(k) for k in ckpt.keys() if k.startswith(prefix)}

    skeleton = {"model": ref_model}  # the blocks take its config (dropped with it after the reference passes)

    def ref_block(i, args, kwargs):
        t = time.perf_counter()
        block = reference_block(class_name, cfg, i, skeleton["model"])
        block.load_state_dict(block_state(i), strict=True, assign=True)
        block.eval()
        name = _block_prefix(spec, i)
        named = list(_prefixed(block.named_modules(), name))
        module_types.update({n: type(m).__name__ for n, m in named})
        for j in spec.shared_args:
            store.put(("block_input", i, j), to_numpy(args[j]))
        handles = _attach(ref, component, named)
        with torch.no_grad():
            out = block(*args, **kwargs)
        _remove(ref, handles)
        row = {"block": i, "torch_s": time.perf_counter() - t}
        if floor_cap is not None:
            t = time.perf_counter()
            block.double()
            handles = _attach(floor_cap, component, _prefixed(block.named_modules(), name))
            to64 = (lambda v: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            with torch.no_grad():
                block(*_cast_args(args, to64), **_cast_args(kwargs, to64))
            _remove(floor_cap, handles)
            row["torch_float64_s"] = time.perf_counter() - t
        del block
        ckpt.release()
        gc.collect()
        block_times.append(row)
        log(f"  reference block {i}: {row}, peak RssAnon {mem.peak_mb / 1024:.2f} GB")
        return out

    _install(ref_model, spec.blocks, _Stream(n_blocks, ref_block), torch_side=True)
    module_types.update({n: type(m).__name__ for n, m in ref_model.named_modules()})
    ref.attach_torch(component, ref_model)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref_out = _field(ref_model(**_torch_inputs(inputs, False)), field).float().numpy()
    ref.detach()
    phase("torch_forward_s", t0)

    # 2. float64 floor of the skeleton's own modules: blocks replay the reference's outputs
    if floor_cap is not None:
        t0 = time.perf_counter()
        ref_model.double()

        def replay64(i, args, kwargs):
            return torch.from_numpy(np.array(store.get((component, _block_prefix(spec, i), 0)))).double()

        _install(ref_model, spec.blocks, _Stream(n_blocks, replay64), torch_side=True)
        floor_cap.attach_torch(component, ref_model)
        with torch.no_grad():
            ref_model(**_torch_inputs(inputs, True))
        floor_cap.detach()
        phase("torch_float64_skeleton_s", t0)
    ref_peak = max(((float(np.abs(store.get(k)).max()), f"{k[0]}.{k[1]}" if k[1] else k[0]) for k in ref.records
                    if np.prod(ref.records[k]["shape"]) > 0), default=(0.0, ""))
    del ref_model, skeleton["model"]
    gc.collect()
    aliases = dict(spec.aliases)
    if aliases:  # name the reference's modules as ours where the libraries differ
        from collections import OrderedDict

        for cap in [c for c in (ref, floor_cap) if c is not None]:
            cap.records = OrderedDict(((c, aliases.get(m, m), n), v) for (c, m, n), v in cap.records.items())
        store._index = {((k[0], aliases.get(k[1], k[1]), k[2]) if isinstance(k, tuple) and len(k) == 3
                         and isinstance(k[1], str) else k): v for k, v in store._index.items()}

    # 3. ours, per dtype: skeleton through our converter, blocks streamed and fed the reference's inputs
    results = {}
    for dtype in dtypes:
        t0 = time.perf_counter()
        ours_model = cls.from_config(conv.convert_config(skel_cfg))
        pspec = ours_model.parameter_spec()
        tensors = {k: (_rows_ref(ckpt.refs[k], rows) if rows is not None and k == "shared.weight" else ckpt.refs[k])
                   for k in skel_keys}
        mapped, audit = map_tensors(conv, tensors, pspec, f"{folder} (skeleton)")
        ours_model.load_arrays({mp.target: materialise(mp, pspec[mp.target][0], np.float32) for mp in mapped}, dtype)
        audits = [audit.as_dict()]
        ckpt.release()
        phase(f"mindspore_{dtype}_skeleton_load_s", t0)
        ours = Capture("mindspore", reference=ref)

        def our_block_run(i, args, kwargs, ours=ours, dtype=dtype, audits=audits):
            t = time.perf_counter()
            block = our_block(class_name, conv.convert_config(cfg), i)
            prefix = _block_prefix(spec, i)
            bspec = {f"{prefix}.{n}": (tuple(p.shape), str(p.dtype).lower()) for n, p in block.parameters_and_names()}
            btensors = {k: ckpt.refs[k] for k in ckpt.keys() if k.startswith(prefix + ".")}
            bmapped, baudit = map_tensors(conv, btensors, bspec, f"{folder} ({prefix})")
            audits.append(baudit.as_dict())
            # our model's load (dtype policy, keep-in-fp32 modules) applied to the block alone
            object.__setattr__(block, "_keep_in_fp32_modules", cls._keep_in_fp32_modules)
            object.__setattr__(block, "fp32_parameter_names", types.MethodType(ModelMixin.fp32_parameter_names, block))
            ModelMixin.load_arrays(block, {mp.target[len(prefix) + 1:]: materialise(mp, bspec[mp.target][0], np.float32)
                                           for mp in bmapped}, dtype)
            args = list(args)
            if feed == "reference":
                for j in spec.shared_args:
                    args[j] = ms.Tensor(np.array(store.get(("block_input", i, j)))).astype(args[j].dtype)
            handles = _attach(ours, component, _prefixed(block.cells_and_names(), prefix))
            out = block(*args, **kwargs)
            _remove(ours, handles)
            if feed == "reference":
                out = ms.Tensor(np.array(store.get((component, prefix, 0)))).astype(out.dtype)
            del block
            ckpt.release()
            gc.collect()
            block_times[i][f"mindspore_{dtype}_s"] = time.perf_counter() - t
            log(f"  mindspore {dtype} block {i}: {block_times[i][f'mindspore_{dtype}_s']:.1f} s, "
                f"peak RssAnon {mem.peak_mb / 1024:.2f} GB")
            return out

        _install(ours_model, spec.blocks, _Stream(n_blocks, our_block_run), torch_side=False)
        ours.attach_mindspore(component, ours_model)
        t0 = time.perf_counter()
        our_out = _field(ours_model(**{k: ms.Tensor(v) if isinstance(v, np.ndarray) else v
                                       for k, v in inputs.items()}), field)
        our_out = our_out.astype(ms.float32).asnumpy()
        ours.detach()
        phase(f"mindspore_{dtype}_forward_s", t0)
        del ours_model
        gc.collect()
        results[dtype] = _result(component, class_name, n_params, dtype, inputs, ref, ours,
                                 floor_cap if dtype == "fp32" else None, ref_out, our_out, ref_peak, module_types,
                                 spec, audits)
    memory = mem.stop()
    memory["activation_store_mb"] = round(store.nbytes / 2**20, 1)
    store.close()
    for dtype, r in results.items():
        r["timings"] = {k: round(v, 2) for k, v in timings.items()}
        r["memory"] = {**memory, "phase_peak_anon_mb": phase_peaks}
        r["streamed"] = {"blocks": n_blocks, "feed": feed, "floor": floor, "checkpoint": str(folder),
                         "checkpoint_gb": round(ckpt.nbytes / 1e9, 2),
                         "checkpoint_dtypes": sorted({ref.dtype for ref in ckpt.refs.values()}),
                         "embedding_rows": None if rows is None else int(len(rows)),
                         "block_times_s": [{k: round(v, 2) if isinstance(v, float) else v for k, v in b.items()}
                                           for b in block_times]}
    return results


def explain_reference_only(coverage: dict, component: str, layers: list[dict], module_types: dict | None = None,
                           ref_called: set | None = None) -> None:
    """Reference modules that our side never calls as modules are accepted (moved to `reference_only_accepted`) when
    their parent module (the nearest ancestor the reference calls) is compared on both sides: they are computed inside that parent (a norm or activation
    written as functions for CPU speed, an identity dropout, rotary tables built on the host), so the parent's
    output judges them. Any other reference-only module stays in `reference_only` and fails the run."""
    compared = {r["module"] for r in layers}
    accepted, unexplained = [], []
    for full in coverage["reference_only"]:
        mod = full[len(component) + 1:] if full.startswith(component + ".") else ""
        parent = mod
        while True:
            parent = parent.rsplit(".", 1)[0] if "." in parent else "(root)"
            if parent == "(root)" or ref_called is None or parent in ref_called:
                break
        if mod and parent in compared:
            kind = (module_types or {}).get(mod)
            accepted.append(f"{mod}{f' ({kind})' if kind else ''}")
        else:
            unexplained.append(full)
    coverage["reference_only_accepted"] = accepted
    coverage["reference_only"] = unexplained


def per_block(layers: list[dict], spec: StreamSpec) -> list[dict]:
    """Per streamed block: modules compared, the worst module (rel L2) and whether all passed."""
    blocks: dict[int, dict] = {}
    head = spec.blocks + "."
    for r in layers:
        if not r["module"].startswith(head):
            continue
        i = int(r["module"][len(head):].split(".")[0])
        b = blocks.setdefault(i, {"block": i, "modules": 0, "passed": True, "worst_module": None, "worst_rel_l2": -1.0})
        b["modules"] += 1
        b["passed"] = b["passed"] and r["passed"]
        if r["rel_l2"] > b["worst_rel_l2"]:
            b["worst_module"], b["worst_rel_l2"] = r["module"][len(head):], r["rel_l2"]
    return [blocks[i] for i in sorted(blocks)]


FP16_MAX = 65504.0


def judge_component(component, class_name, n_params, dtype, inputs, ref, ours, floor_cap, ref_out, our_out,
                    ref_peak, module_types=None) -> dict:
    """Every module and the output of one component comparison against its bars: the row both the whole and the
    streamed comparisons report."""
    bars = BARS[dtype]
    calls, layers, coverage = compare_modules(ref, ours, dtype, floor_cap)
    explain_reference_only(coverage, component, layers, module_types, {m for _, m in ref.modules()})
    out = compare(our_out, ref_out) if our_out.shape == ref_out.shape else {
        "rel_l2": float("inf"), "max_abs": float("inf"), "cosine": 0.0, "finite": False}
    out["shape"] = list(ref_out.shape)
    nonfinite = [f"{c}.{m}" if m else c for (c, m, _), row in ours.records.items() if not row.get("finite", True)]
    keys = ("module", "rel_l2", "max_abs", "shape", "floor", "bound")
    worst = max(layers, key=lambda r: r["rel_l2"], default=None)
    return {
        "component": component, "class": class_name, "parameters": n_params, "dtype": dtype,
        "inputs": {k: list(v.shape) if isinstance(v, np.ndarray) else v for k, v in inputs.items()},
        "modules_compared": coverage["compared_modules"], "calls_compared": coverage["compared_calls"],
        "modules_failed": sum(not r["passed"] for r in layers),
        "failed_modules": [{k: r.get(k) for k in keys} for r in layers if not r["passed"]][:20],
        "coverage": coverage,
        "worst_module": None if worst is None else {k: worst.get(k) for k in keys},
        "worst_vs_bound": max(({k: r.get(k) for k in (*keys, "ratio")} for r in layers), key=lambda r: r["ratio"],
                              default=None),
        "first_divergence": first_divergence(calls),
        "output": out,
        "nonfinite_modules": nonfinite[:20], "nonfinite_count": len(nonfinite),
        "reference_absmax": {"value": ref_peak[0], "module": ref_peak[1], "exceeds_fp16": ref_peak[0] > FP16_MAX},
        "passed": bool(all(r["passed"] for r in layers) and out["finite"] and out["rel_l2"] <= bars["frames"]
                       and not coverage["reference_only"]),
        "worst_modules": sorted(({k: r.get(k) for k in keys} for r in layers), key=lambda r: -r["rel_l2"])[:15],
        "layers": layers,
    }


def _result(component, class_name, n_params, dtype, inputs, ref, ours, floor_cap, ref_out, our_out, ref_peak,
            module_types, spec, audits) -> dict:
    row = judge_component(component, class_name, n_params, dtype, inputs, ref, ours, floor_cap, ref_out, our_out,
                          ref_peak, module_types)
    layers = row.pop("layers")
    return {**row, "per_block": per_block(layers, spec),
            "per_module": [{k: r.get(k) for k in ("module", "rel_l2", "max_abs", "floor", "bound", "passed")}
                           for r in layers],
            "converter_audit_passed": all(a.get("passed", False) for a in audits)}
