"""Comparison metrics, computed in float64."""

from __future__ import annotations

import numpy as np

TINY = 1e-30


def compare(actual: np.ndarray, reference: np.ndarray) -> dict:
    """relative L2 ||a-b|| / max(||b||, tiny), max abs, cosine similarity."""
    a = np.asarray(actual, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    diff = a - b
    # sums of products, not BLAS dot: BLAS threads spin against the frameworks' own threads on a busy CPU
    nb = float(np.sqrt(np.sum(b * b)))
    na = float(np.sqrt(np.sum(a * a)))
    return {
        "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
        "rel_l2": float(np.sqrt(np.sum(diff * diff)) / max(nb, TINY)),
        "cosine": float(np.sum(a * b) / max(na * nb, TINY)) if diff.size else 1.0,
        "ref_norm": float(nb),
        "finite": bool(np.isfinite(a).all()),
    }


def psnr(actual: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(actual, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak * peak / mse))


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (H, W, C) with the 1-D window g along H, then W."""
    k = len(g)
    h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
    x = sum(g[i] * x[i:i + h] for i in range(k))
    return sum(g[j] * x[:, j:j + w] for j in range(k))


def ssim(actual: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity of two frames (H, W, C) in [0, data_range] (Wang, Bovik, Sheikh, Simoncelli 2004).

    Local statistics under an 11x11 Gaussian window (sigma 1.5, normalised to sum 1), evaluated only where the
    window fits inside the frame ('valid', as the authors' reference code); C1 = (0.01 L)^2, C2 = (0.03 L)^2 with
    L = data_range; the SSIM map is averaged over positions, then over channels. Frames smaller than 11 pixels
    use a window as wide as their smaller side (odd), same sigma. Identical frames give 1.
    """
    a = np.asarray(actual, np.float64)
    b = np.asarray(reference, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim expects two frames of one shape (H, W, C); got {a.shape} and {b.shape}")
    size = min(11, a.shape[0] - (1 - a.shape[0] % 2), a.shape[1] - (1 - a.shape[1] % 2))
    g = _gaussian_window(size, 1.5)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a * mu_a
    var_b = _filter_valid(b * b, g) - mu_b * mu_b
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(smap.mean(axis=(0, 1)).mean())
