"""Golden references: the PyTorch side of a parity run saved, so the MindSpore side can be judged later, on another
machine, where torch and diffusers are not installed (`mindport parity SRC --save-golden G`, then
`mindport parity --golden G --converted DST --out R`). Schema: docs/golden_schema.md.

A golden folder holds `golden.json` (schema version, the run's settings, the reference's library versions, its noise
draw log, the scheduler's schedule in float64, and one row per module call: component, module, call, step, shape,
the output's exact float64 norm, how it is stored, its noise floor) and `golden.safetensors` (plain arrays, no
pickles): the latents after every step and the frames, whole (the MindSpore run is re-synchronised to the latents,
and the frame metrics need every pixel); each module output whole when it has at most FULL_MAX elements, else
SAMPLE elements at positions drawn from a numpy PCG64 stream seeded by the call's key (both sides draw the same
positions, so they are not stored); the first-call inputs the gates read (token ids and masks, preprocessed images,
the denoiser's first inputs), whole when at most INPUT_MAX elements, else left out (that gate is then not run),
and, for the modules named by `--golden-inputs` patterns, their first-call inputs and float64 isolation floors, so
a comparison against the golden can teacher-force those modules.

What a sampled comparison means: relative L2 is max(||a_s - b_s|| / ||b_s|| over the sampled elements, the exact
norm gap | ||a|| - ||b|| | / ||b||) (the gap is a lower bound of the true relative L2, so a fault that changes the
norm is never under-reported); max abs and cosine are over the sample. A fault confined to a few elements of a large
output can fall between the samples; the live run, and every whole-stored output, sees it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from converters import ConversionError
from converters.safetensors_io import load_safetensors, save_arrays

from .capture import Capture, leaves
from .metrics import TINY, compare

SCHEMA_VERSION = 1
FULL_MAX = 1024  # module outputs with at most this many elements are stored whole
SAMPLE = 1024  # elements sampled from a larger output
INPUT_MAX = 1 << 22  # gate inputs stored whole up to 4M elements (16 MB in float32)
JSON_NAME, TENSORS_NAME = "golden.json", "golden.safetensors"


def sample_positions(key, size: int) -> np.ndarray:
    """The sorted, distinct element positions sampled from an output of `size` elements for the call `key`."""
    rng = np.random.Generator(np.random.PCG64(zlib.crc32(repr(tuple(key)).encode())))
    return np.unique(rng.integers(0, size, SAMPLE, dtype=np.int64))


def _norm(a: np.ndarray) -> float:
    a = np.asarray(a).ravel().astype(np.float64)
    return float(np.sqrt(np.sum(a * a)))


def compare_sampled(actual: np.ndarray, key, reference_values: np.ndarray, reference_norm: float) -> dict:
    """The metrics of `actual` (whole) against a sampled reference output (see the module docstring)."""
    flat = np.asarray(actual).ravel()
    m = compare(flat[sample_positions(key, flat.size)], reference_values)
    gap = abs(_norm(flat) - reference_norm) / max(reference_norm, TINY)
    m.update(rel_l2=max(m["rel_l2"], gap), ref_norm=reference_norm, finite=bool(np.isfinite(flat).all()),
             sampled=int(reference_values.size))
    return m


# -- saving ------------------------------------------------------------------------------------------------------------
def _gate_input_keys(capture: Capture, denoiser: str) -> list:
    from .gates import PREPROCESSED_INPUTS, TEXT_ENCODERS

    keys = [(c, "") for c in TEXT_ENCODERS] + list(PREPROCESSED_INPUTS) + [(denoiser, "")]
    return [k for k in keys if k in capture.inputs]


def _matches(key, patterns) -> bool:
    name = f"{key[0]}.{key[1]}" if key[1] else key[0]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def save(path, settings: dict, versions: dict, noise_run: dict, schedule: dict, reference: Capture,
         floor: Capture | None, latents: list, frames: np.ndarray, denoiser: str, input_patterns=(),
         isolation_floors: dict | None = None) -> dict:
    """Write the golden folder (to a temporary sibling, renamed into place when complete). Returns its summary.
    `input_patterns`: "component.module" glob patterns whose modules' first-call inputs are saved whole (and their
    float64 isolation floors), so a comparison against the golden can teacher-force them."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays = {"frames": np.asarray(frames, np.float32)}
    for i, lat in enumerate(latents):
        arrays[f"latents/{i}"] = np.asarray(lat, np.float32)
    rows, full_bytes = [], 0
    for i, (key, rec) in enumerate(reference.records.items()):
        out = np.asarray(reference.store.get(key))
        full_bytes += out.nbytes
        frow = floor.records.get(key, {}) if floor is not None else {}
        row = {"component": key[0], "module": key[1], "call": key[2], "step": rec["step"], "shape": rec["shape"],
               "dtype": out.dtype.str, "norm": _norm(out), "stored": "full" if out.size <= FULL_MAX else "sample",
               "floor": frow.get("rel_l2") if frow.get("float64") else None}
        flat = out.ravel()
        arrays[f"out/{i}"] = np.array(flat if row["stored"] == "full" else flat[sample_positions(key, flat.size)])
        rows.append(row)
    inputs = {}
    forced = [k for k in reference.inputs if input_patterns and _matches(k, input_patterns)]
    for key in dict.fromkeys(_gate_input_keys(reference, denoiser) + forced):
        skel = reference.inputs[key]
        keys = leaves(skel)
        if key in forced or all(reference.store.get(k).size <= INPUT_MAX for k in keys):
            inputs[f"{key[0]}|{key[1]}"] = skel
            for k in keys:
                arrays[f"in/{k}"] = np.ascontiguousarray(reference.store.get(k))
    meta = {"schema_version": SCHEMA_VERSION, "settings": settings, "versions": versions, "noise": noise_run,
            "schedule": {**schedule, "arrays": {k: v.tolist() for k, v in schedule["arrays"].items()}},
            "full_max": FULL_MAX, "sample": SAMPLE, "records": rows, "inputs": inputs,
            "isolation": {"patterns": list(input_patterns), "modules": [f"{c}|{m}" for c, m in forced],
                          "floors": {f"{c}|{m}": v for (c, m), v in (isolation_floors or {}).items()
                                     if (c, m) in forced and isinstance(v, float)}},
            "steps_saved": len(latents), "full_capture_bytes": full_bytes}
    save_arrays(tmp / TENSORS_NAME, arrays)
    (tmp / JSON_NAME).write_text(json.dumps(meta, indent=1, default=_plain))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    size = sum(f.stat().st_size for f in path.iterdir())
    return {"path": str(path), "bytes": size, "full_capture_bytes": full_bytes,
            "fraction": size / full_bytes if full_bytes else None}


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


# -- loading -------------------------------------------------------------------------------------------------------
class _Arrays:
    """The golden's input tensors, by the capture's store keys (what `gates` reads through `store.get`)."""

    def __init__(self, arrays: dict):
        self._arrays = arrays

    def get(self, key):
        return self._arrays[f"in/{key}"]

    def __contains__(self, key) -> bool:
        """Inputs only: a golden holds no whole module outputs by the capture's keys (so no R/repro/ from it)."""
        return isinstance(key, str) and f"in/{key}" in self._arrays


class GoldenCapture(Capture):
    """A reference capture rebuilt from a golden: records, first-call inputs, and outputs compared whole or
    sampled."""

    def __init__(self, meta: dict, arrays: dict):
        super().__init__("torch", _Arrays(arrays))
        self.outputs_by_key = {}
        self.records = OrderedDict()
        for i, row in enumerate(meta["records"]):
            key = (row["component"], row["module"], row["call"])
            self.records[key] = {"step": row["step"], "shape": row["shape"]}
            self.outputs_by_key[key] = (row, arrays[f"out/{i}"])
        self.inputs = {tuple(k.split("|", 1)): _as_skeleton(v) for k, v in meta["inputs"].items()}

    def compare_with(self, key, arr: np.ndarray) -> dict:
        if key not in self.outputs_by_key:
            return {}
        row, ref = self.outputs_by_key[key]
        if list(arr.shape) != list(row["shape"]):
            return {"rel_l2": float("inf"), "max_abs": float("inf"), "cosine": 0.0, "finite": False,
                    "error": f"shape {list(arr.shape)} != reference {list(row['shape'])}"}
        if row["stored"] == "full":
            return compare(arr, ref.reshape(row["shape"]))
        return compare_sampled(arr, key, ref, row["norm"])


def _as_skeleton(v):
    """JSON turned the capture's (kind, value) tuples into lists: back to tuples."""
    kind, value = v
    if kind in ("list", "tuple"):
        return (kind, [_as_skeleton(x) for x in value])
    if kind == "dict":
        return (kind, {k: _as_skeleton(x) for k, x in value.items()})
    return (kind, value)


class _FloorRecords:
    """The floors as compare_modules reads them from a float64 capture."""

    def __init__(self, meta: dict):
        self.records = {(r["component"], r["module"], r["call"]): {"rel_l2": r["floor"], "float64": True}
                        for r in meta["records"] if r.get("floor") is not None}

    def detach(self) -> None:
        """Nothing hooked."""


class Golden:
    """A loaded golden reference: settings, versions, the noise draw log, the schedule, the reference capture, the
    floors, the latents after each step and the frames."""

    def __init__(self, path):
        path = Path(path)
        meta_path, tensors_path = path / JSON_NAME, path / TENSORS_NAME
        if not meta_path.is_file() or not tensors_path.is_file():
            raise ConversionError(f"{path}: not a golden reference (expected {JSON_NAME} and {TENSORS_NAME}, written "
                                  "by `mindport parity SRC --save-golden DIR`)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ConversionError(f"{meta_path}: not valid JSON ({e})") from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ConversionError(f"{meta_path}: golden schema version {meta.get('schema_version')!r}; this mindport "
                                  f"reads version {SCHEMA_VERSION}")
        arrays = load_safetensors(tensors_path)
        self.path, self.meta = path, meta
        self.settings, self.versions, self.noise_run = meta["settings"], meta["versions"], meta["noise"]
        sched = meta["schedule"]
        self.schedule = {**sched, "arrays": {k: np.asarray(v, np.float64) for k, v in sched["arrays"].items()}}
        self.capture = GoldenCapture(meta, arrays)
        self.floor = _FloorRecords(meta)
        self.latents = [np.asarray(arrays[f"latents/{i}"]) for i in range(meta["steps_saved"])]
        iso = meta.get("isolation") or {}
        self.isolation_modules = [tuple(k.split("|", 1)) for k in iso.get("modules", [])]
        self.isolation_floors = {tuple(k.split("|", 1)): v for k, v in iso.get("floors", {}).items()}
        self.frames = np.asarray(arrays["frames"])
