"""Finding a checkpoint's files: Hub ids, pipeline folders, component folders; safetensors (single or sharded with an
index), `.bin` pickles (loaded with torch, weights_only, lazily imported) and `variant` files (`*.fp16.safetensors`)."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConversionError
from .safetensors_io import TensorRef, read_header

# weight file stems: diffusers models, transformers models
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
CONVERTED_WEIGHTS = "mindspore_model.safetensors"
MANIFEST = "manifest.json"


@dataclass
class ComponentSource:
    """One model component's config and tensors (not yet read)."""

    folder: Path
    config: dict
    class_name: str
    files: list[Path]
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    converted: bool = False  # a folder written by `mindport convert` (keys already MindSpore names)
    converter: object = None  # an ArchitectureConverter for this source's layout (default: by class name)
    notes: dict = field(default_factory=dict)  # what the manifest should say about this source (layout, fp8 scales)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def class_name_of(config: dict, config_path) -> str:
    if "_class_name" in config:
        return str(config["_class_name"])
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        return str(archs[0])
    raise ConversionError(f"{config_path}: cannot tell the architecture (no '_class_name' or 'architectures' field)")


class _HashJob:
    """A source file read once from disk by a prefetch thread (sendfile to /dev/null: into the page cache, no copy
    to user space), hashed by another thread, and copied by the writer, both from the cache behind the prefetch."""

    def __init__(self, path: Path):
        self.path = path
        self.cached = 0
        self.cancelled = False  # the conversion failed: stop reading (the process is not kept alive for a hash)
        self.cond = threading.Condition()
        self.future: Future | None = None

    def prefetch(self, piece: int = 64 << 20) -> None:
        try:
            with open(self.path, "rb", buffering=0) as f, open(os.devnull, "wb", buffering=0) as null:
                size = os.fstat(f.fileno()).st_size
                while self.cached < size and not self.cancelled:
                    n = os.sendfile(null.fileno(), f.fileno(), self.cached, min(piece, size - self.cached))
                    if n <= 0:
                        break
                    with self.cond:
                        self.cached += n
                        self.cond.notify_all()
        except OSError:
            pass
        finally:  # done, or failed: either way nobody waits any longer (readers then read for themselves)
            with self.cond:
                self.cached = 1 << 62
                self.cond.notify_all()

    def wait_cached(self, end: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.cached >= end)


def sha256(path: Path, chunk: int = 16 << 20, job: _HashJob | None = None) -> str:
    """The file's sha256, read through a memory map (no copy into user space: a third less CPU than reading it, which
    is what bounds a conversion when the source is already cached), behind `job`'s prefetch when given."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return h.hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            m.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(m)
            try:
                for done in range(0, size, chunk):
                    if job is not None:
                        job.wait_cached(min(done + chunk, size))
                        if job.cancelled:
                            raise ConversionError(f"{path}: hashing cancelled")
                    h.update(view[done:done + chunk])  # hashlib releases the GIL on large blocks: it overlaps the copy
            finally:
                view.release()
    return h.hexdigest()


_HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")
_PREFETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")  # one file at a time: sequential disk reads
_JOBS: dict[tuple, _HashJob] = {}


def _job_key(path) -> tuple:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def hub_cache_sha256(path) -> str | None:
    """The sha256 a Hub download already names: in huggingface_hub's cache a snapshot file links to
    `blobs/<etag>`, and an LFS file's etag is its content's sha256 (what the Hub lists for the file). None for
    anything else (local files, git-stored small files, whose etag is a 40-digit git hash)."""
    p = Path(path)
    if not p.is_symlink():
        return None
    target = p.resolve()
    return target.name if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name) else None


def sha256_async(path) -> Future:
    """sha256 of a file: the Hub cache's own name for it, else computed once per (path, size, mtime) in a background
    thread, behind a prefetch."""
    known = hub_cache_sha256(path)
    if known is not None:
        done = Future()
        done.set_result(known)
        return done
    key = _job_key(path)
    if key not in _JOBS:
        job = _JOBS[key] = _HashJob(Path(path))
        _PREFETCH.submit(job.prefetch)
        job.future = _HASHER.submit(sha256, Path(path), job=job)
    return _JOBS[key].future


def cancel_hashes() -> None:
    """Stop every background prefetch and hash (after a failed conversion) and forget them."""
    for job in _JOBS.values():
        job.cancelled = True
    _JOBS.clear()


def wait_hashed(path, end: int) -> None:
    """Block until the prefetch of `path` (started with its hash) has its first `end` bytes in the page cache, so a
    copy reads from memory, behind a single sequential disk read (no-op when none is running)."""
    job = _JOBS.get(_job_key(path))
    if job is not None:
        job.wait_cached(end)


# ----------------------------------------------------------------------------------------------------------------
# Hub
# ----------------------------------------------------------------------------------------------------------------


def looks_like_hub_id(src: str) -> bool:
    parts = str(src).split("/")
    return len(parts) == 2 and all(parts) and not Path(src).exists() and not str(src).startswith((".", "/", "~"))


def resolve(src, variant: str | None = None) -> Path:
    """A local path, or a Hub id fetched with huggingface_hub (honours HF_HUB_OFFLINE and the local cache)."""
    p = Path(os.path.expanduser(str(src)))
    if p.exists():
        return p
    if not looks_like_hub_id(str(src)):
        raise ConversionError(f"{src}: no such file or folder (and not a Hub repo id of the form owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - base dependency
        raise ConversionError(f"{src}: looks like a Hub id but huggingface_hub is not installed") from None
    patterns = hub_patterns(str(src), variant)
    try:
        return Path(snapshot_download(str(src), allow_patterns=patterns))
    except Exception as e:  # huggingface_hub raises many kinds: offline, not found, gated, network
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ConversionError(f"{src}: cannot fetch from the Hub ({why})") from None


PLAIN_PATTERNS = ["*.json", "*.txt", "*.model"]  # configs, scheduler, tokenizer and processor files


def hub_patterns(repo: str, variant: str | None) -> list[str]:
    """allow_patterns for snapshot_download: the configs plus, per component folder, only the weights that
    `choose_weights` would read (the variant's, else the default's; shards of a chosen index). Not the other
    variant, not the original single-file releases many repos also hold. When the repo cannot be listed (offline:
    the cache is all there is), every weight file of the variant (with the default as fallback) is allowed."""
    from huggingface_hub import list_repo_files

    suffix = f".{variant}" if variant else ""
    try:
        files = list_repo_files(repo)
    except Exception:  # offline, gated, not found: snapshot_download says which, with the cache as fallback
        fallback = [f"*{suffix}.safetensors", f"*{suffix}.safetensors.index.json"]
        return PLAIN_PATTERNS + fallback + (["*.safetensors", "*.safetensors.index.json"] if variant else ["*.bin"])
    folders: dict[str, list[str]] = {}
    for f in files:
        folder, _, name = f.rpartition("/")
        folders.setdefault(folder, []).append(name)
    pipeline = "model_index.json" in folders.get("", [])
    weights = []
    # an original Wan-AI release (Wan-AI/Wan2.1-*): its pickled VAE / T5 / CLIP next to the transformer, and the T5
    # tokenizer folder (whose *.json / *.model the plain patterns already take)
    wan_pickles = ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth",
                   "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    if not pipeline and "Wan2.1_VAE.pth" in folders.get("", []):
        weights += [name for name in wan_pickles if name in folders[""]]
    for folder, names in folders.items():
        if pipeline and folder == "":  # a pipeline repo's top level holds single-file releases, not components
            continue
        prefix = f"{folder}/" if folder else ""
        for name in choose_weights(names, variant)[0]:
            weights.append(prefix + name)
            if name.endswith(".index.json"):
                stem, ext = name[: -len(".index.json")].rsplit(".", 1)
                weights.append(f"{prefix}{stem}-*-of-*.{ext}")
    return PLAIN_PATTERNS + weights


# ----------------------------------------------------------------------------------------------------------------
# Component folders
# ----------------------------------------------------------------------------------------------------------------


def choose_weights(names, variant: str | None) -> tuple[list[str], bool]:
    """Which of a component folder's file names hold its weights, preferring the variant, then safetensors, then
    `.bin`: ([a shard index] or [a single file] or [], whether the variant was missing and the default taken)."""
    names = set(names)

    def pick(var):
        suffix = f".{var}" if var else ""
        for stem in WEIGHT_STEMS:
            for ext in ("safetensors", "bin"):
                for name in (f"{stem}{suffix}.{ext}.index.json", f"{stem}{suffix}.{ext}"):
                    if name in names:
                        return [name]
        return []

    chosen = pick(variant) if variant else []
    if chosen or not variant:
        return chosen or pick(None), False
    chosen = pick(None)
    return chosen, bool(chosen)


def _weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The weight files of one component (see `choose_weights`); a shard index is resolved to its shards."""
    chosen, fell_back = choose_weights(os.listdir(folder), variant)
    if fell_back:
        warnings.warn(f"{folder}: no '{variant}' variant weights; loading {chosen[0]} instead", stacklevel=3)
    if not chosen or not chosen[0].endswith(".index.json"):
        return [folder / n for n in chosen]
    index = folder / chosen[0]
    wm = read_json(index).get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise ConversionError(f"{index}: no 'weight_map' in shard index")
    shards = sorted(set(wm.values()))
    missing = [s for s in shards if not (folder / s).exists()]
    if missing:
        raise ConversionError(f"{index}: shard file(s) {missing} listed in the index are missing")
    return [folder / s for s in shards]


def _bin_tensors(path: Path) -> dict[str, TensorRef]:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: .bin checkpoints are pickles and need PyTorch to read (pip install torch), "
                              "or convert them to safetensors") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ConversionError(f"{path}: cannot read .bin checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    tags = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64",
            torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
    refs = {}
    for k, t in sd.items():
        if not hasattr(t, "dtype") or t.dtype not in tags:
            raise ConversionError(f"{path}: entry {k!r} is not a supported tensor ({type(t).__name__} {getattr(t, 'dtype', '')})")
        load = (lambda t=t: t.float().numpy() if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
                else t.numpy())  # bf16 and fp8 widen exactly to float32
        refs[k] = TensorRef(str(path), k, tags[t.dtype], tuple(t.shape), 0, t.numel() * t.element_size(), load)
    return refs


def read_tensors(files: list[Path]) -> dict[str, TensorRef]:
    refs: dict[str, TensorRef] = {}
    for f in files:
        part = read_header(f)[0] if f.suffix == ".safetensors" else _bin_tensors(f)
        dup = set(part) & set(refs)
        if dup:
            raise ConversionError(f"{f}: key {sorted(dup)[0]!r} also appears in {refs[sorted(dup)[0]].file}")
        refs.update(part)
    return refs


def open_component(folder, variant: str | None = None, read: bool = True) -> ComponentSource:
    """A component folder: config.json plus weights (PyTorch names) or mindspore_model.safetensors (converted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: component folder not found")
    cfg_path = folder / "config.json"
    config = read_json(cfg_path)
    cls = class_name_of(config, cfg_path)
    converted = (folder / CONVERTED_WEIGHTS).exists()
    files = [folder / CONVERTED_WEIGHTS] if converted else _weight_files(folder, variant)
    if not files:
        want = f"{variant} variant or default " if variant else ""
        raise ConversionError(f"{folder}: no {want}weights (expected diffusion_pytorch_model/model[.{variant or 'VARIANT'}]"
                              ".safetensors, a sharded index, or a .bin)")
    src = ComponentSource(folder, config, cls, files, converted=converted)
    if read:
        src.tensors = read_tensors(files)
    return src


def file_records(files: list[Path], root: Path) -> list[dict]:
    out = []
    for f in files:
        try:
            rel = str(Path(f).absolute().relative_to(Path(root).absolute()))  # not resolved: Hub files link to blobs
        except ValueError:
            rel = str(f)
        out.append({"path": rel, "bytes": Path(f).stat().st_size, "sha256": sha256_async(f).result()})
    return out

