"""Comparison metrics, computed in float64."""

from __future__ import annotations

import numpy as np

TINY = 1e-30


def compare(actual: np.ndarray, reference: np.ndarray) -> dict:
    """relative L2 ||a-b|| / max(||b||, tiny), max abs, cosine similarity."""
    a = np.asarray(actual, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    diff = a - b
    nb = np.linalg.norm(b)
    na = np.linalg.norm(a)
    return {
        "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
        "rel_l2": float(np.linalg.norm(diff) / max(nb, TINY)),
        "cosine": float(a @ b / max(na * nb, TINY)) if diff.size else 1.0,
        "ref_norm": float(nb),
        "finite": bool(np.isfinite(a).all()),
    }


def psnr(actual: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(actual, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak * peak / mse))
