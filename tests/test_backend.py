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


@pytest.mark.parametrize("shape, out_features, bias", [((2, 5, 8), 6, True), ((7, 3), 4, False), ((2, 3, 4, 8), 16, True)])
def test_linear_matches_torch_and_dense(shape, out_features, bias, rng):
    from mindspore import ops

    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((out_features, shape[-1])).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32) if bias else None
    t = torch.from_numpy
    ref = torch.nn.functional.linear(t(x), t(w), None if b is None else t(b))
    got = backend.linear(Tensor(x), Tensor(w), None if b is None else Tensor(b))
    assert_close(got, ref, rel_l2=1e-6, where=f"linear {shape}->{out_features}")
    native = ops.dense(Tensor(x), Tensor(w), None if b is None else Tensor(b))
    assert_close(got, native, rel_l2=1e-6, where="linear vs ops.dense")


@pytest.mark.parametrize("x_shape, v_shape", [((2, 8, 5, 3), (2, 8)), ((2, 4, 3, 2, 2), (2, 4, 3)), ((3, 6), (3,))])
def test_add_leading_is_broadcast_add(x_shape, v_shape, rng):
    x = rng.standard_normal(x_shape).astype(np.float32)
    v = rng.standard_normal(v_shape).astype(np.float32)
    expected = x + v.reshape(v_shape + (1,) * (len(x_shape) - len(v_shape)))
    got = backend.add_leading(Tensor(x), Tensor(v)).asnumpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", [1000, (1 << 17) + 1])
def test_gelu_matches_torch_and_native(size, rng):
    from mindspore import ops

    # wide range, both tails and exact zero
    x = np.concatenate([rng.standard_normal(size - 3) * 4, [0.0, -9.0, 9.0]]).astype(np.float32)
    got = backend.gelu(Tensor(x))
    assert_close(got, torch.nn.functional.gelu(torch.from_numpy(x).double()), rel_l2=2e-7, where=f"gelu n={size}")
    assert_close(got, ops.gelu(Tensor(x)), rel_l2=2e-7, where="gelu vs ops.gelu")
    assert np.abs(got.asnumpy() - torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()).max() < 2e-6
    tanh = backend.gelu(Tensor(x), approximate="tanh")
    assert_close(tanh, torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh"), rel_l2=1e-6, where="tanh")


def test_group_norm_4d_and_fp16_match_torch(rng):
    import mindspore as ms

    x = rng.standard_normal((2, 12, 6, 5)).astype(np.float32) * 2 - 1
    w, b = rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    t = torch.from_numpy
    ref = torch.nn.functional.group_norm(t(x), 3, t(w), t(b), 1e-5)
    assert_close(backend.group_norm(Tensor(x), 3, Tensor(w), Tensor(b), 1e-5), ref, where="group_norm 4D")
    half = backend.group_norm(Tensor(x).astype(ms.float16), 3, Tensor(w).astype(ms.float16),
                              Tensor(b).astype(ms.float16), 1e-5)
    assert half.dtype == ms.float16
    assert_close(half, ref, rel_l2=2e-3, where="group_norm fp16")


@pytest.mark.parametrize("shape, kwargs", [((2, 3, 5, 4), dict(scale_factor=2)), ((1, 2, 3, 5), dict(size=(7, 9)))])
def test_interpolate_nearest_matches_torch(shape, kwargs, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), mode="nearest", **kwargs)
    np.testing.assert_array_equal(backend.interpolate_nearest(Tensor(x), **kwargs).asnumpy(), ref.numpy())


@pytest.mark.parametrize("shape, size", [((2, 3, 8, 6), (4, 3)), ((1, 2, 5, 7), (3, 4)), ((1, 2, 3, 3), (6, 5))])
def test_pooling_matches_torch(shape, size, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    t = torch.from_numpy(x)
    assert_close(backend.adaptive_avg_pool2d(Tensor(x), size), torch.nn.functional.adaptive_avg_pool2d(t, size),
                 rel_l2=1e-6, where=f"adaptive_avg_pool2d {shape}->{size}")
    if shape[2] % 2 == 0 and shape[3] % 2 == 0:
        assert_close(backend.avg_pool2d(Tensor(x), 2, 2), torch.nn.functional.avg_pool2d(t, 2, 2), rel_l2=1e-6,
                     where="avg_pool2d")


@pytest.mark.parametrize("heads, dim_head, cross", [(2, 64, None), (8, 16, 24), (1, 128, None)])
def test_attention_and_geglu_match_diffusers_with_and_without_kernels_and_hooks(heads, dim_head, cross, rng,
                                                                                 monkeypatch):
    """Attention (heads side by side through the fused kernel) and GEGLU match diffusers with the CPU kernels, with
    MindSpore ops only, and with a forward hook on a projection (the parity harness sees it called)."""
    import mindspore as ms
    from diffusers.models.attention import FeedForward as TorchFeedForward
    from diffusers.models.attention_processor import Attention as TorchAttention

    from mindport.models import attention
    from parity.fixtures import randomise
    from tests.helpers import torch_state_to_numpy

    dim = 128
    x = rng.standard_normal((2, 300, dim)).astype(np.float32)
    context = None if cross is None else rng.standard_normal((2, 7, cross)).astype(np.float32)
    pairs = [(attention.Attention(dim, cross, heads=heads, dim_head=dim_head, bias=True),
              TorchAttention(dim, cross, heads=heads, dim_head=dim_head, bias=True), "to_q"),
             (attention.FeedForward(dim, activation_fn="geglu"), TorchFeedForward(dim, activation_fn="geglu"),
              "net.0.proj")]
    for ours, ref, watched in pairs:
        randomise(ref, 3)
        for name, p in ours.parameters_and_names():
            p.set_data(Tensor(torch_state_to_numpy(ref)[name]))
        args = (x,) if isinstance(ours, attention.FeedForward) else (x, context)
        with torch.no_grad():
            expected = ref(*[None if a is None else torch.from_numpy(a) for a in args])
        fast = ours(*[None if a is None else Tensor(a) for a in args])
        monkeypatch.setenv("MINDPORT_KERNELS", "0")
        backend.kernel_library.cache_clear()
        plain = ours(*[None if a is None else Tensor(a) for a in args])
        monkeypatch.delenv("MINDPORT_KERNELS")
        backend.kernel_library.cache_clear()
        seen = []
        handle = dict(ours.cells_and_names())[watched].register_forward_hook(lambda c, i, o: seen.append(o.shape))
        hooked = ours(*[None if a is None else Tensor(a) for a in args])
        handle.remove()
        assert seen, f"{watched}: the hook did not see the watched cell"
        for got, path in ((fast, "kernels"), (plain, "MindSpore ops"), (hooked, "hooked")):
            assert_close(got, expected, rel_l2=1e-6, where=f"{type(ours).__name__} {path}")
            assert got.dtype == ms.float32


def test_models_share_one_load_primitive_while_built_and_parameters_still_read():
    from mindspore.ops.operations import other_ops

    from mindport.layers import Linear

    before = other_ops.Load
    with backend.shared_parameter_load():
        a, b = Linear(3, 4), Linear(4, 2)
    assert other_ops.Load is before
    assert a.weight.load is b.bias.load
    a.weight.set_data(Tensor(np.arange(12, dtype=np.float32).reshape(4, 3)))
    np.testing.assert_array_equal(a.weight.value().asnumpy(), np.arange(12, dtype=np.float32).reshape(4, 3))
    assert Linear(2, 2).weight.load is not a.weight.load
