"""Turn two captures and two sets of frames into the report's numbers: per-module metrics, the first and the worst
diverging module, and frame metrics."""

from __future__ import annotations

import numpy as np

from .capture import Capture
from .metrics import compare, psnr, ssim

# Relative-L2 bars by the MindSpore side's dtype (the reference is always PyTorch fp32).
BARS = {
    "fp32": {"module": 1e-5, "frames": 1e-4},
    "fp16": {"module": 5e-2, "frames": 1e-2},
}


# Noise floor: PyTorch float64 against PyTorch float32 gives each module call's rounding floor; a fp32 module call
# fails when its MindSpore error exceeds FLOOR_FACTOR times that floor and the absolute FLOOR_MIN (for modules that
# round nothing, whose floor is ~0). fp16 is judged against its dtype bar: its rounding is not fp32's.
FLOOR_FACTOR = 10.0
FLOOR_MIN = 1e-6


def bound_for(dtype: str, floor: float | None) -> float:
    if dtype != "fp32" or floor is None:
        return BARS[dtype]["module"]
    return max(FLOOR_FACTOR * floor, FLOOR_MIN)


def compare_modules(ref: Capture, ours: Capture, dtype: str, floor: Capture | None = None, introduces=None
                    ) -> tuple[list[dict], list[dict], dict]:
    """Per-call rows in PyTorch execution order, per-module summary rows (worst call = largest rel_l2 / bound), and
    coverage. `ours` (and `floor`) compared on the fly against `ref`.

    The floor underestimates where the reference computes in float32 even in its float64 pass (diffusers' timestep
    sinusoids): such a module's floor is not used (fixed bar instead), and a call beyond its floor bound but within the
    fixed bar passes as *inherited* when `introduces(component, module)` - teacher forcing - says that neither the
    module nor anything inside it introduces error on the reference's own inputs."""
    calls, bar = [], BARS[dtype]["module"]
    for key, ref_row in ref.records.items():
        comp, mod, n = key
        row = ours.records.get(key)
        if row is None or "rel_l2" not in row:
            continue
        frow = floor.records.get(key, {}) if floor is not None else {}
        fl = frow.get("rel_l2") if frow.get("float64") else None
        bound = bound_for(dtype, fl)
        ok = bool(row.get("finite", False) and row["rel_l2"] <= bound)
        inherited = bool(not ok and row.get("finite", False) and row["rel_l2"] <= bar and introduces is not None
                         and introduces(comp, mod) is False)
        calls.append({"component": comp, "module": mod or "(root)", "call": n, "step": ref_row["step"],
                      "shape": ref_row["shape"], "rel_l2": row["rel_l2"], "max_abs": row["max_abs"],
                      "cosine": row["cosine"], "floor": fl, "bound": bound, "passed": ok or inherited,
                      **({"inherited": True} if inherited else {}),
                      **({"error": row["error"]} if "error" in row else {})})
    summary: dict[tuple[str, str], dict] = {}
    for row in calls:
        k = (row["component"], row["module"])
        s = summary.get(k)
        if s is None:
            depth = 0 if row["module"] == "(root)" else row["module"].count(".") + 1
            summary[k] = s = {"component": row["component"], "module": row["module"], "order": len(summary),
                              "depth": depth, "calls": 0, "max_abs": 0.0, "cosine": 1.0, "passed": True, "ratio": -1.0}
        s["calls"] += 1
        ratio = row["rel_l2"] / row["bound"]
        if ratio > s["ratio"]:
            s.update({"ratio": ratio, "rel_l2": row["rel_l2"], "floor": row["floor"], "bound": row["bound"],
                      "shape": row["shape"], "worst_call": row["call"], "worst_step": row["step"]})
        s["max_abs"] = max(s["max_abs"], row["max_abs"])
        s["cosine"] = min(s["cosine"], row["cosine"])
        s["passed"] = s["passed"] and row["passed"]
        if row.get("inherited"):
            s["inherited"] = True
        if "error" in row:
            s["error"] = row["error"]
    ref_mods, our_mods = ref.modules(), ours.modules()
    coverage = {
        "compared_modules": len(summary),
        "compared_calls": len(calls),
        "reference_only": sorted(f"{c}.{m}" if m else c for c, m in ref_mods - our_mods),
        "mindspore_only": sorted(f"{c}.{m}" if m else c for c, m in our_mods - ref_mods),
    }
    return calls, list(summary.values()), coverage


def first_divergence(calls: list[dict]) -> dict | None:
    """The first module call, in PyTorch execution order (children before parents), beyond its bound."""
    for row in calls:
        if not row["passed"]:
            keys = ("component", "module", "call", "step", "shape", "rel_l2", "max_abs", "cosine", "floor", "bound")
            return {"kind": "module", **{k: row[k] for k in keys if k in row}}
    return None


def step_matrix(calls: list[dict], component: str, steps: int) -> dict:
    """The error of each top-level block of `component` (the denoiser) at each denoising step: the worst call of
    that block in that step, measured with latents re-synchronised to the reference before every step."""
    called = [r["module"] for r in calls if r["component"] == component and r["module"] != "(root)"]
    names = set(called)

    def is_block(m):  # a called module none of whose ancestors (below the root) was called: down_blocks.0, mid_block
        parts = m.split(".")
        return not any(".".join(parts[:i]) in names for i in range(1, len(parts)))

    blocks = [m for m in dict.fromkeys(called) if is_block(m)]
    index = {b: i for i, b in enumerate(blocks)}
    matrix = [[None] * len(blocks) for _ in range(steps)]
    for r in calls:
        i = index.get(r["module"]) if r["component"] == component else None
        if i is not None and 0 <= r["step"] < steps:
            cur = matrix[r["step"]][i]
            matrix[r["step"]][i] = r["rel_l2"] if cur is None else max(cur, r["rel_l2"])
    return {"component": component, "blocks": [f"{component}.{b}" for b in blocks], "steps": list(range(steps)),
            "rel_l2": matrix}


def frame_metrics(ours: np.ndarray, ref: np.ndarray) -> dict:
    """Frames as (B, F, H, W, C) floats in [0, 1]."""
    m = compare(ours, ref)
    per_frame = []
    for b in range(ref.shape[0]):
        for f in range(ref.shape[1]):
            per_frame.append({"video": b, "frame": f, "psnr": psnr(ours[b, f], ref[b, f]),
                              "ssim": ssim(ours[b, f], ref[b, f]), "rel_l2": compare(ours[b, f], ref[b, f])["rel_l2"]})
    return {"rel_l2": m["rel_l2"], "max_abs": m["max_abs"], "cosine": m["cosine"], "psnr": psnr(ours, ref),
            "ssim": float(np.mean([r["ssim"] for r in per_frame])), "shape": list(ref.shape), "per_frame": per_frame}
