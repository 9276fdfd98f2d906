"""The Wan speed paths in backend / kernels (issue 16): Winograd (kt, 3, 3) convolutions, strided 3D convolutions,
the channel RMS norm kernel, the frame slicing / padding helpers; each against PyTorch (float64) and against the
MindSpore-ops path that runs where the kernels do not (what Ascend runs)."""

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor

from mindport import backend

from helpers import assert_close, both

t = torch.from_numpy


# (x shape, w shape, padding, stride): Winograd over frames ((3, 3, 3), 16+ channels in and out, 256+ output tiles of
# 2x2; time padding; odd sizes), the same below 256 tiles (im2col), few output channels as conv_out's 3 (im2col),
# one frame (2D Winograd), time-strided temporal (3, 1, 1) and strided (3, 3, 3) (im2col)
CONV3D = [((1, 16, 3, 34, 32), (16, 16, 3, 3, 3), (0, 1, 1), (1, 1, 1)),
          ((2, 24, 5, 32, 20), (20, 24, 3, 3, 3), (1, 1, 1), (1, 1, 1)),
          ((1, 16, 2, 33, 31), (16, 16, 3, 3, 3), (2, 0, 2), (1, 1, 1)),
          ((1, 16, 3, 9, 7), (16, 16, 3, 3, 3), (0, 1, 1), (1, 1, 1)),
          ((1, 32, 4, 6, 5), (3, 32, 3, 3, 3), (0, 1, 1), (1, 1, 1)),
          ((1, 17, 1, 5, 5), (33, 17, 1, 3, 3), (0, 1, 1), (1, 1, 1)),
          ((2, 12, 5, 4, 6), (10, 12, 3, 1, 1), (0, 0, 0), (2, 1, 1)),
          ((1, 16, 6, 5, 7), (8, 16, 3, 1, 1), (1, 0, 0), (2, 1, 1)),
          ((1, 16, 5, 7, 6), (16, 16, 3, 3, 3), (0, 1, 1), (2, 1, 1))]


@pytest.mark.parametrize("xs, ws, padding, stride", CONV3D)
def test_conv3d_winograd_and_strided(xs, ws, padding, stride, rng, ops_path):
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    bias = rng.standard_normal(ws[0]).astype(np.float32)
    fast, slow = both(lambda: backend.conv3d(Tensor(x), Tensor(w), Tensor(bias), padding, stride), ops_path)
    ref = torch.nn.functional.conv3d(t(x).double(), t(w).double(), t(bias).double(), stride=stride, padding=padding)
    assert fast.shape == tuple(ref.shape)
    assert_close(fast, ref, rel_l2=1e-6, where=f"conv3d {ws} stride {stride}")
    assert_close(fast, slow, rel_l2=2e-6, where="conv3d kernel vs ops")


@pytest.mark.parametrize("shape, with_bias", [((2, 16, 3, 5, 7), False), ((1, 8, 2, 33, 40), True),
                                              ((3, 5, 4, 6), True)])
def test_channel_rms_norm(shape, with_bias, rng, ops_path):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    x[0, :, 0] = 0.0  # zero vectors: F.normalize's clamp
    c = shape[1]
    gamma = (1 + 0.1 * rng.standard_normal((c,) + (1,) * (len(shape) - 2))).astype(np.float32)
    bias = rng.standard_normal(gamma.shape).astype(np.float32) if with_bias else None

    def run():
        return backend.channel_rms_norm(Tensor(x), Tensor(gamma), None if bias is None else Tensor(bias))

    fast, slow = both(run, ops_path)
    ref = torch.nn.functional.normalize(t(x).double(), dim=1) * c ** 0.5 * t(gamma).double()
    if bias is not None:
        ref = ref + t(bias).double()
    assert_close(fast, ref, rel_l2=3e-7, where="channel rms norm kernel")
    assert_close(fast, slow, rel_l2=1e-6, where="channel rms norm kernel vs ops")


def test_take_and_pad_frames(rng, ops_path):
    x = rng.standard_normal((2, 3, 5, 4, 6)).astype(np.float32)
    for args in [(-2,), (1, 3), (4, 5), (0, 1)]:
        fast, slow = both(lambda: backend.take_frames(Tensor(x), *args), ops_path)
        want = x[:, :, slice(*args) if len(args) == 2 else slice(args[0], None)]
        np.testing.assert_array_equal(fast, want)
        np.testing.assert_array_equal(slow, want)
    fast, slow = both(lambda: backend.pad_frames(Tensor(x), 2), ops_path)
    want = np.concatenate([np.zeros_like(x[:, :, :2]), x], axis=2)
    np.testing.assert_array_equal(fast, want)
    np.testing.assert_array_equal(slow, want)
    # a copy of its own: writing the source afterwards changes nothing
    src = Tensor(x.copy())
    got = backend.take_frames(src, 0, 5)
    src.asnumpy()[...] = 0.0
    np.testing.assert_array_equal(got.asnumpy(), x)


@pytest.mark.parametrize("shape, with_weight", [((2, 7, 96), True), ((3, 40), False), ((1, 5, 1), True)])
def test_rms_norm(shape, with_weight, rng, ops_path):
    x = (rng.standard_normal(shape) * 3 + 0.5).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(shape[-1])).astype(np.float32) if with_weight else None
    fast, slow = both(lambda: backend.rms_norm(Tensor(x), None if w is None else Tensor(w), 1e-6), ops_path)
    ref = torch.nn.functional.rms_norm(t(x).double(), shape[-1:], None if w is None else t(w).double(), 1e-6)
    assert_close(fast, ref, rel_l2=2e-7, where="rms norm kernel")
    assert_close(fast, slow, rel_l2=1e-6, where="rms norm kernel vs ops")
    half = backend.rms_norm(Tensor(x).astype(ms.float16), None, 1e-6)
    assert half.dtype == ms.float32


def test_rotary_pairs_exact(rng, ops_path):
    x, cos, sin = (rng.standard_normal((2, 9, 24)).astype(np.float32) for _ in range(3))
    cos[..., 1::2], sin[..., 1::2] = cos[..., 0::2], sin[..., 0::2]  # tables repeat each value per pair
    fast, slow = both(lambda: backend.rotary_pairs(Tensor(x), Tensor(cos), Tensor(sin)), ops_path)
    # diffusers' apply_rotary_emb, in float32
    x1, x2 = t(x)[..., 0::2], t(x)[..., 1::2]
    c, s = t(cos)[..., 0::2], t(sin)[..., 1::2]
    want = torch.empty_like(t(x))
    want[..., 0::2], want[..., 1::2] = x1 * c - x2 * s, x1 * s + x2 * c
    np.testing.assert_array_equal(fast, want.numpy())
    np.testing.assert_array_equal(slow, want.numpy())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gelu_tanh(dtype, rng, ops_path):
    x = np.concatenate([rng.standard_normal(1000) * 4, [-100.0, -20.0, -9.0, 0.0, 9.0, 20.0, 100.0]])
    x = x.astype(np.float32)
    fast, slow = both(lambda: backend.gelu_tanh(Tensor(x).astype(getattr(ms, dtype))), ops_path)
    ref = torch.nn.functional.gelu(t(x).double(), approximate="tanh")
    if dtype == "float32":
        assert_close(fast, ref, rel_l2=2e-7, where="gelu tanh kernel")
        assert_close(fast, slow, rel_l2=2e-7, where="gelu tanh kernel vs ops")
    else:
        assert fast.dtype == np.float16
        assert_close(fast.astype(np.float32), ref, rel_l2=1e-3, where="gelu tanh kernel fp16")
    assert np.isfinite(fast).all()
