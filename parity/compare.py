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


def compare_modules(ref: Capture, ours: Capture, module_bar: float) -> tuple[list[dict], list[dict], dict]:
    """Returns (per-call rows in PyTorch execution order, per-module summary rows, coverage)."""
    calls = []
    for key, a_ref in ref.records.items():
        comp, mod, n = key
        row = {"component": comp, "module": mod or "(root)", "call": n, "shape": list(a_ref.shape)}
        a_ours = ours.records.get(key)
        if a_ours is None:
            continue
        if a_ours.shape != a_ref.shape:
            row.update({"passed": False, "error": f"shape {list(a_ours.shape)} != reference {list(a_ref.shape)}",
                        "rel_l2": float("inf"), "max_abs": float("inf"), "cosine": 0.0})
        else:
            m = compare(a_ours, a_ref)
            row.update(m)
            row["passed"] = bool(m["finite"] and m["rel_l2"] <= module_bar)
        calls.append(row)
    summary: dict[tuple[str, str], dict] = {}
    for row in calls:
        k = (row["component"], row["module"])
        s = summary.get(k)
        if s is None:
            summary[k] = s = {"component": row["component"], "module": row["module"], "shape": row["shape"],
                              "calls": 0, "max_abs": 0.0, "rel_l2": 0.0, "cosine": 1.0, "passed": True,
                              "worst_call": row["call"], "order": len(summary)}
        s["calls"] += 1
        if row["rel_l2"] >= s["rel_l2"]:
            s["rel_l2"], s["worst_call"], s["shape"] = row["rel_l2"], row["call"], row["shape"]
        s["max_abs"] = max(s["max_abs"], row["max_abs"])
        s["cosine"] = min(s["cosine"], row["cosine"])
        s["passed"] = s["passed"] and row["passed"]
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
    """The first module call, in PyTorch execution order (children before parents), beyond its bar."""
    for row in calls:
        if not row["passed"]:
            return {k: row[k] for k in ("component", "module", "call", "shape", "rel_l2", "max_abs", "cosine") if k in row}
    return None


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
