"""The backend's fast paths against PyTorch and against MindSpore's native ops (both paths are tested whatever the
installed MindSpore version picks)."""

import numpy as np
import pytest
import torch
from mindspore import Tensor

from mindport import backend
from tests.helpers import assert_close


@pytest.mark.parametrize("shape, weight, stride, padding, groups", [
    ((2, 8, 9, 7), (16, 8, 3, 3), (1, 1), (1, 1), 1),
    ((1, 8, 10, 10), (8, 8, 3, 3), (2, 2), (1, 1), 1),
    ((1, 8, 10, 11), (8, 8, 3, 3), (2, 2), (0, 0), 1),
    ((2, 6, 5, 5), (12, 2, 3, 3), (1, 1), (1, 1), 3),
    ((1, 4, 6, 6), (5, 4, 1, 1), (1, 1), (0, 0), 1),
    ((1, 3, 14, 14), (6, 3, 7, 7), (7, 7), (0, 0), 1),
])
def test_conv2d_paths_match_torch(shape, weight, stride, padding, groups, rng, monkeypatch):
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(weight).astype(np.float32) / np.sqrt(np.prod(weight[1:]))
    b = rng.standard_normal(weight[0]).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding,
                                     groups=groups)
    for path in ("native", "matmul"):
        monkeypatch.setenv("MINDPORT_CONV", path)
        backend.native_conv_is_fast.cache_clear()
        got = backend.conv2d(Tensor(x), Tensor(w), Tensor(b), stride, padding, groups)
        assert_close(got, ref, rel_l2=1e-6, where=f"conv2d {path}")
    backend.native_conv_is_fast.cache_clear()


@pytest.mark.parametrize("kernel, padding", [((3, 1, 1), (1, 0, 0)), ((3, 3, 3), (1, 1, 1)), ((1, 3, 3), (0, 1, 1))])
def test_conv3d_paths_match_torch(kernel, padding, rng, monkeypatch):
    x = rng.standard_normal((2, 6, 5, 4, 3)).astype(np.float32)
    w = rng.standard_normal((4, 6, *kernel)).astype(np.float32) / 6
    b = rng.standard_normal(4).astype(np.float32)
    ref = torch.nn.functional.conv3d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=padding)
    for path in ("native", "matmul"):
        monkeypatch.setenv("MINDPORT_CONV", path)
        backend.native_conv_is_fast.cache_clear()
        assert_close(backend.conv3d(Tensor(x), Tensor(w), Tensor(b), padding), ref, rel_l2=1e-6, where=f"conv3d {path}")
    backend.native_conv_is_fast.cache_clear()


def test_norms_activations_and_attention_match_torch(rng):
    x = rng.standard_normal((2, 8, 3, 4, 5)).astype(np.float32) * 3 + 1
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    t = torch.from_numpy
    assert_close(backend.group_norm(Tensor(x), 4, Tensor(w), Tensor(b), 1e-6),
                 torch.nn.functional.group_norm(t(x), 4, t(w), t(b), 1e-6), where="group_norm 5D")
    y = x.reshape(2, 8, -1).transpose(0, 2, 1).copy()
    assert_close(backend.layer_norm(Tensor(y), Tensor(w), Tensor(b), 1e-5),
                 torch.nn.functional.layer_norm(t(y), (8,), t(w), t(b), 1e-5), where="layer_norm")
    assert_close(backend.gelu(Tensor(x)), torch.nn.functional.gelu(t(x)), rel_l2=1e-6, where="gelu")
    q, k, v = (rng.standard_normal((2, 3, 10, 4)).astype(np.float32) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v))
    assert_close(backend.attention(Tensor(q), Tensor(k), Tensor(v), 0.5), ref, rel_l2=1e-6, where="attention")


def test_attention_chunking_is_exact(rng, monkeypatch):
    q, k, v = (rng.standard_normal((1, 2, 37, 8)).astype(np.float32) for _ in range(3))
    full = backend.attention(Tensor(q), Tensor(k), Tensor(v), 0.3).asnumpy()
    monkeypatch.setattr(backend, "ATTENTION_CHUNK", 8)
    chunked = backend.attention(Tensor(q), Tensor(k), Tensor(v), 0.3).asnumpy()
    np.testing.assert_allclose(chunked, full, rtol=1e-6, atol=1e-7)


def test_resolve_dtype_names_choices():
    with pytest.raises(ValueError, match="fp16"):
        backend.resolve_dtype("int8")
