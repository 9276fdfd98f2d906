"""parity.metrics: SSIM against an independent torch implementation (full 2-D window, conv2d) and closed forms."""

import numpy as np
import pytest
import torch

from parity.metrics import compare, psnr, ssim


def torch_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 with an explicit 11x11 Gaussian kernel (sigma 1.5) applied by depthwise conv2d ('valid')."""
    x = torch.tensor(a, dtype=torch.float64).permute(2, 0, 1)[None]
    y = torch.tensor(b, dtype=torch.float64).permute(2, 0, 1)[None]
    c = x.shape[1]
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r ** 2) / (2 * 1.5 ** 2))
    w = torch.outer(g, g)
    w = (w / w.sum()).expand(c, 1, 11, 11)

    def blur(t):
        return torch.nn.functional.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(m.mean(dim=(2, 3)).mean())


@pytest.mark.parametrize("shape,noise", [((32, 40, 3), 0.05), ((16, 16, 3), 0.2), ((24, 17, 1), 0.03), ((64, 48, 3), 0.5)])
def test_ssim_matches_torch_reference(rng, shape, noise):
    ref = rng.random(shape)
    ours = np.clip(ref + noise * rng.standard_normal(shape), 0, 1)
    expected = torch_ssim(ours, ref)
    assert ssim(ours, ref) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert expected < 0.999  # the case is not trivially identical


def test_ssim_closed_form_for_constant_frames():
    # constant frames have zero variance: SSIM reduces to the luminance term (2pq + C1) / (p^2 + q^2 + C1)
    p, q, c1 = 0.3, 0.7, 0.01 ** 2
    a, b = np.full((20, 20, 3), p), np.full((20, 20, 3), q)
    assert ssim(a, b) == pytest.approx((2 * p * q + c1) / (p * p + q * q + c1), rel=1e-12)


def test_ssim_properties(rng):
    ref = rng.random((32, 32, 3))
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    scores = [ssim(np.clip(ref + s * rng.standard_normal(ref.shape), 0, 1), ref) for s in (0.01, 0.05, 0.2)]
    assert 1 > scores[0] > scores[1] > scores[2] > 0
    noisy = np.clip(ref + 0.1 * rng.standard_normal(ref.shape), 0, 1)
    assert ssim(noisy, ref) == pytest.approx(ssim(ref, noisy), rel=1e-12)  # symmetric
    # a small frame (smaller than the 11-pixel window) still gets a score, 1 when identical
    small = ref[:6, :9]
    assert ssim(small, small) == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(8, 8, 3\) and \(8, 9, 3\)"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="expects two frames"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_compare_and_psnr():
    ref = np.array([3.0, 4.0])
    m = compare(ref + np.array([0.3, -0.4]), ref)
    assert m["rel_l2"] == pytest.approx(0.1) and m["max_abs"] == pytest.approx(0.4)
    assert psnr(np.full(4, 0.1), np.zeros(4)) == pytest.approx(20.0)
    assert psnr(ref, ref) == float("inf")
