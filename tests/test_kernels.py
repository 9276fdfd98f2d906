"""The fused C++ CPU kernels (mindport/csrc/cpu_kernels.cc) against PyTorch and against the MindSpore-ops path they
replace, over several shapes; the fallback when they cannot be built."""

from pathlib import Path

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor

from mindport import backend, kernels

from helpers import assert_close, both

t = torch.from_numpy


@pytest.mark.parametrize("shape, groups", [((2, 64, 3, 9, 7), 8), ((3, 12, 5, 4), 3), ((1, 32, 17), 32)])
def test_group_norm(shape, groups, rng, ops_path):
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    w, b = (rng.standard_normal(shape[1]).astype(np.float32) for _ in range(2))
    fast, slow = both(lambda: backend.group_norm(Tensor(x), groups, Tensor(w), Tensor(b), 1e-6), ops_path)
    ref = torch.nn.functional.group_norm(t(x).double(), groups, t(w).double(), t(b).double(), 1e-6)
    assert_close(fast, ref, rel_l2=2e-7, where="kernel")
    assert_close(fast, slow, rel_l2=1e-6, where="kernel vs ops")


@pytest.mark.parametrize("shape", [(5, 7, 96), (3, 1024), (2, 1, 13)])
def test_layer_norm_with_and_without_affine(shape, rng, ops_path):
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    w, b = (rng.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    fast, slow = both(lambda: backend.layer_norm(Tensor(x), Tensor(w), Tensor(b), 1e-5), ops_path)
    assert_close(fast, torch.nn.functional.layer_norm(t(x).double(), shape[-1:], t(w).double(), t(b).double(), 1e-5),
                 rel_l2=2e-7, where="kernel")
    assert_close(fast, slow, rel_l2=1e-6, where="kernel vs ops")
    plain = backend.layer_norm(Tensor(x), None, None, 1e-5)
    assert_close(plain, torch.nn.functional.layer_norm(t(x), shape[-1:], eps=1e-5), rel_l2=1e-6, where="no affine")


def test_gelu_and_geglu_over_the_whole_range(rng, ops_path):
    x = np.concatenate([np.linspace(-40, 40, 20001), rng.standard_normal(4000) * 3, [0.0]]).astype(np.float32)
    fast, slow = both(lambda: backend.gelu(Tensor(x)), ops_path)
    ref = torch.nn.functional.gelu(t(x).double()).numpy()
    assert np.abs(fast - ref).max() < 1e-6 * np.maximum(1, np.abs(ref)).max()
    assert_close(fast, ref, rel_l2=2e-7, where="gelu")
    assert_close(fast, slow, rel_l2=5e-7, where="gelu kernel vs ops")
    h = (rng.standard_normal((37, 2 * 45)) * 3).astype(np.float32)  # 45: a row that is not a multiple of 8
    fast, slow = both(lambda: backend.geglu(Tensor(h)), ops_path)
    a, g = t(h).double().chunk(2, -1)
    assert_close(fast, a * torch.nn.functional.gelu(g), rel_l2=2e-7, where="geglu")
    assert_close(fast, slow, rel_l2=5e-7, where="geglu kernel vs ops")


def test_silu(rng, ops_path):
    x = np.concatenate([np.linspace(-100, 100, 4001), rng.standard_normal(1003) * 3]).astype(np.float32)
    fast, slow = both(lambda: backend.silu(Tensor(x)), ops_path)
    assert_close(fast, torch.nn.functional.silu(t(x).double()), rel_l2=2e-7, where="silu")
    assert_close(fast, slow, rel_l2=5e-7, where="silu kernel vs ops")


@pytest.mark.parametrize("lq, lk, d", [(50, 40, 16), (4, 4, 64), (300, 77, 8)])
def test_attention_softmax_kernel(lq, lk, d, rng, ops_path):
    q, k, v = (rng.standard_normal((2, 3, n, d)).astype(np.float32) * 2 for n in (lq, lk, lk))
    fast, slow = both(lambda: backend.attention(Tensor(q), Tensor(k), Tensor(v), d ** -0.5), ops_path)
    ref = torch.nn.functional.scaled_dot_product_attention(t(q).double(), t(k).double(), t(v).double())
    assert_close(fast, ref, rel_l2=1e-6, where="attention")
    assert_close(fast, slow, rel_l2=1e-6, where="attention kernel vs ops")


@pytest.mark.parametrize("shape, alpha_shape", [((2, 8, 4, 5, 6), (2, 1, 4, 1, 1)), ((16, 20, 6), (16, 1, 1)),
                                                 ((3, 5, 7), (1, 1, 1)), ((2, 3, 4, 5, 6), (1,)), ((4, 6), (6,))])
def test_blend(shape, alpha_shape, rng, ops_path):
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    alpha = rng.random(alpha_shape).astype(np.float32)
    fast, slow = both(lambda: backend.blend(Tensor(a), Tensor(b), Tensor(alpha)), ops_path)
    assert_close(fast, alpha * a.astype(np.float64) + (1 - alpha) * b, rel_l2=1e-7, where="blend")
    assert_close(fast, slow, rel_l2=1e-6, where="blend kernel vs ops")


@pytest.mark.parametrize("perm", [(0, 2, 1, 3, 4), (0, 3, 4, 2, 1), (0, 2, 3, 4, 1), (4, 3, 2, 1, 0), (1, 0, 2, 3, 4),
                                  (0, 1, 3, 2, 4), (0, 1, 2, 4, 3), (0, 3, 4, 1, 2), (0, 1, 2, 3, 4)])
def test_permute_is_exact(perm, rng):
    x = rng.standard_normal((2, 3, 4, 37, 35)).astype(np.float32)
    np.testing.assert_array_equal(backend.permute(Tensor(x), perm).asnumpy(), x.transpose(perm))


def test_merge_axes():
    assert backend._merge_axes((2, 3, 4, 5, 6), (0, 2, 1, 3, 4)) == ([2, 3, 4, 30], (0, 2, 1, 3))
    assert backend._merge_axes((2, 3, 4, 5), (0, 2, 3, 1)) == ([2, 3, 20], (0, 2, 1))
    assert backend._merge_axes((2, 3), (0, 1)) == ([6], (0,))


def test_fp16_inputs_use_the_kernels_in_float32(rng):
    import mindspore as ms

    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    half = backend.group_norm(Tensor(x).astype(ms.float16), 4, Tensor(w).astype(ms.float16),
                              Tensor(b).astype(ms.float16), 1e-5)
    assert half.dtype == ms.float16
    assert_close(half, torch.nn.functional.group_norm(t(x), 4, eps=1e-5), rel_l2=2e-3, where="fp16 group norm")
    h = rng.standard_normal((4, 16)).astype(np.float32)
    out = backend.geglu(Tensor(h).astype(ms.float16))
    assert out.dtype == ms.float16 and out.shape == (4, 8)


def test_no_compiler_falls_back_with_one_warning(monkeypatch, tmp_path, rng):
    monkeypatch.setenv("CXX", "no-such-compiler-mindport")
    monkeypatch.setenv("MINDPORT_CACHE", str(tmp_path))
    backend.kernel_library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no C\\+\\+ compiler .*no-such-compiler-mindport"):
            assert backend.kernel_library() is None
        x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
        got = backend.group_norm(Tensor(x), 2, None, None, 1e-5)
        assert_close(got, torch.nn.functional.group_norm(t(x), 2, eps=1e-5), rel_l2=1e-6, where="fallback")
    finally:
        monkeypatch.undo()
        backend.kernel_library.cache_clear()


def test_compile_error_falls_back(monkeypatch, tmp_path):
    compiler = tmp_path / "failing-cxx"  # a "compiler" that reports an error among other lines and fails
    compiler.write_text("#!/bin/sh\necho 'In function x:' >&2\necho 'k.cc:3:1: error: boom' >&2\necho '  ^~~' >&2\n"
                        "exit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("MINDPORT_CACHE", str(tmp_path))
    backend.kernel_library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="building the fused CPU kernels failed .*error: boom"):
            assert backend.kernel_library() is None
        assert not list(tmp_path.rglob("*.so")), "a failed build must leave no library behind"
    finally:
        monkeypatch.undo()
        backend.kernel_library.cache_clear()


def test_settings_that_change_the_shape_are_not_mixed_up(rng):
    # same input shapes, different stride / permutation / size: a kernel's cached layout (keyed by input shapes) must
    # not hand one setting the other's output shape
    x = rng.standard_normal((2, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    for stride, padding in [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((2, 2), (0, 0)), ((1, 1), (1, 1))]:
        got = backend.conv2d(Tensor(x), Tensor(w), None, stride, padding)
        ref = torch.nn.functional.conv2d(t(x), t(w), None, stride, padding)
        assert got.shape == tuple(ref.shape)
        assert_close(got, ref, rel_l2=1e-6, where=f"conv stride {stride} padding {padding}")
    y = rng.standard_normal((2, 3, 4)).astype(np.float32)
    for perm in [(0, 2, 1), (1, 0, 2), (2, 1, 0), (0, 2, 1)]:
        np.testing.assert_array_equal(backend.permute(Tensor(y), perm).asnumpy(), y.transpose(perm))
    for size in [(32, 32), (48, 16), (32, 32)]:
        np.testing.assert_array_equal(backend.interpolate_nearest(Tensor(x), size=size).asnumpy(),
                                      torch.nn.functional.interpolate(t(x), size=size, mode="nearest").numpy())


# (batch, in, out, size, kernel, stride, padding, groups): Winograd (3x3 stride 1, also odd sizes and padding 0 or 2),
# im2col (strided, grouped, rectangular), pointwise (1x1)
CONV2D = [(2, 16, 24, 9, 3, 1, 1, 1), (1, 32, 16, 7, 3, 1, 0, 1), (2, 16, 16, 6, 3, 1, 2, 1),
          (2, 8, 8, 11, 3, 2, 1, 1), (1, 32, 64, 9, 3, 1, 1, 4), (2, 8, 4, 5, (2, 3), (2, 1), (1, 0), 1),
          (2, 24, 40, 6, 1, 1, 0, 1)]


@pytest.mark.parametrize("b, cin, cout, size, k, s, p, g", CONV2D)
def test_conv2d_kernel_paths(b, cin, cout, size, k, s, p, g, rng, ops_path):
    x = rng.standard_normal((b, cin, size, size + 1)).astype(np.float32)
    kk = k if isinstance(k, tuple) else (k, k)
    w = rng.standard_normal((cout, cin // g, *kk)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    ss, pp = (s, s) if isinstance(s, int) else s, (p, p) if isinstance(p, int) else p
    fast, slow = both(lambda: backend.conv2d(Tensor(x), Tensor(w), Tensor(bias), ss, pp, g), ops_path)
    ref = torch.nn.functional.conv2d(t(x).double(), t(w).double(), t(bias).double(), ss, pp, groups=g)
    assert fast.shape == tuple(ref.shape)
    assert_close(fast, ref, rel_l2=1e-6, where="conv2d kernel")
    assert_close(fast, slow, rel_l2=2e-6, where="conv2d kernel vs ops")


@pytest.mark.parametrize("kernel, padding", [((3, 1, 1), (1, 0, 0)), ((3, 1, 1), (0, 0, 0)), ((3, 3, 3), (1, 1, 1)),
                                             ((1, 1, 1), (0, 0, 0))])
def test_conv3d_kernel_paths(kernel, padding, rng, ops_path):
    x = rng.standard_normal((2, 12, 5, 6, 7)).astype(np.float32)
    w = rng.standard_normal((10, 12, *kernel)).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)
    fast, slow = both(lambda: backend.conv3d(Tensor(x), Tensor(w), Tensor(bias), padding), ops_path)
    ref = torch.nn.functional.conv3d(t(x).double(), t(w).double(), t(bias).double(), padding=padding)
    assert_close(fast, ref, rel_l2=1e-6, where=f"conv3d {kernel}")
    assert_close(fast, slow, rel_l2=2e-6, where="conv3d kernel vs ops")


@pytest.mark.parametrize("mask_shape", [(2, 1, 9, 9), (1, 1, 9, 9), (2, 1, 1, 9), (2, 3, 9, 9), (9, 9)])
def test_attention_heads_with_additive_mask(mask_shape, rng, ops_path):
    heads, d = 3, 8
    q, k, v = (rng.standard_normal((2, 9, heads * d)).astype(np.float32) for _ in range(3))
    mask = np.where(rng.random(mask_shape) < 0.3, -1e9, 0.0).astype(np.float32)
    mask[..., 0] = 0.0  # every query sees at least one key
    fast, slow = both(lambda: backend.attention_heads(Tensor(q), Tensor(k), Tensor(v), heads, d ** -0.5,
                                                      Tensor(mask)), ops_path)

    def split(x):
        return t(x).double().reshape(2, 9, heads, d).transpose(1, 2)

    ref = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v),
                                                           attn_mask=t(mask).double()).transpose(1, 2).reshape(2, 9, -1)
    assert_close(fast, ref, rel_l2=1e-6, where=f"masked attention {mask_shape}")
    assert_close(fast, slow, rel_l2=1e-6, where="masked attention kernel vs ops")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _peak_growth(fn):
    """fn()'s result and how far the process's peak resident memory rose above its resident size before the call
    (VmHWM reset through /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    before = _status_bytes("VmRSS")
    out = fn()
    return out, _status_bytes("VmHWM") - before


def _attention_rows_float64(q, k, v, heads, rows):
    """Reference attention of the given query rows, per head, in float64: (len(rows), heads * dv)."""
    d, dv = q.shape[-1] // heads, v.shape[-1] // heads
    out = []
    for h in range(heads):
        qh, kh, vh = (x[0, :, h * n:(h + 1) * n].astype(np.float64) for x, n in ((q, d), (k, d), (v, dv)))
        s = qh[rows] @ kh.T * d ** -0.5
        p = np.exp(s - s.max(-1, keepdims=True))
        out.append((p / p.sum(-1, keepdims=True)) @ vh)
    return np.concatenate(out, -1)


@pytest.mark.parametrize("dtype, rel", [(np.float32, 1e-6), (np.float16, 1e-3)])
def test_attention_at_the_seeds_length_keeps_scores_bounded(dtype, rel, rng):
    # SVD at 576x1024 attends over 72 x 128 = 9,216 tokens per frame: one head's whole score matrix would be 324 MiB
    # (both heads 648 MiB); the kernel holds one block of query rows per thread (at most 2^20 scores, 4 MiB)
    heads, d, n = 2, 16, 9216
    q, k, v = (rng.standard_normal((1, n, heads * d)).astype(dtype) for _ in range(3))
    tq, tk, tv = Tensor(q), Tensor(k), Tensor(v)
    backend.attention_heads(tq[:, :2048], tk, tv, heads, d ** -0.5).asnumpy()  # BLAS buffers, scratch: allocated now
    out, grew = _peak_growth(lambda: backend.attention_heads(tq, tk, tv, heads, d ** -0.5).asnumpy())
    assert out.shape == (1, n, heads * d) and out.dtype == dtype
    assert grew < 48 * 2**20, f"peak RSS rose {grew / 2**20:.0f} MiB during the call (a score matrix: 324 MiB)"
    rows = np.r_[0:24, n // 2:n // 2 + 8, n - 24:n]
    assert_close(out[0, rows].astype(np.float64), _attention_rows_float64(q, k, v, heads, rows), rel_l2=rel,
                 where=f"attention over {n} tokens, {np.dtype(dtype).name}")


def test_attention_ops_path_chunks_long_sequences(rng, ops_path, monkeypatch):
    # off the kernel path queries go in chunks of at most ATTENTION_SCORES scores (here 4 rows of 300 keys per head),
    # a mask broadcast over queries serving every chunk, a full mask sliced with them
    monkeypatch.setattr(backend, "ATTENTION_SCORES", 2 * 3 * 4 * 300)
    q, k, v = (rng.standard_normal((2, 3, n, 8)).astype(np.float32) for n in (37, 300, 300))
    for mask_shape in [(2, 1, 1, 300), (2, 3, 37, 300)]:
        mask = np.where(rng.random(mask_shape) < 0.3, -1e9, 0.0).astype(np.float32)
        mask[..., 0] = 0.0
        with ops_path:
            out = backend.attention(Tensor(q), Tensor(k), Tensor(v), 8 ** -0.5, Tensor(mask)).asnumpy()
        ref = torch.nn.functional.scaled_dot_product_attention(t(q).double(), t(k).double(), t(v).double(),
                                                               attn_mask=t(mask).double())
        assert_close(out, ref, rel_l2=1e-6, where=f"chunked attention, mask {mask_shape}")


def _conv_case(ws, stride=(1, 1, 1), padding=(0, 1, 1)):
    w = (np.random.default_rng(1).standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float16)
    b = np.linspace(-1, 1, ws[0]).astype(np.float16)
    return lambda x: backend.conv3d(x, Tensor(w), Tensor(b), padding, stride)


def _conv2d_case(ws, stride, padding, groups):
    w = (np.random.default_rng(2).standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float16)
    return lambda x: backend.conv2d(x, Tensor(w), Tensor(np.ones(ws[0], np.float16)), stride, padding, groups)


def _second(shape, dtype=np.float16):
    return Tensor(np.random.default_rng(3).standard_normal(shape).astype(dtype))


# (name, x shape, fn of the float16 (or widened) input, whether the kernel reads x as float16 itself): the kernels
# that take half precision in place (transposes and upsampling copy it), their odd sizes and paths (the temporal
# convolution in blocks of 4096 positions: 4,140 per frame here); layer norm widens x first
HALF = [
    ("silu", (3, 4099), backend.silu, True),
    ("group_norm 5D", (2, 8, 3, 9, 7), lambda x: backend.group_norm(x, 4, _second(8), _second(8), 1e-6), True),
    ("add", (5, 1029), lambda x: backend.add(x, _second((5, 1029))), True),
    ("add float32 second", (5, 1029), lambda x: backend.add(x, _second((5, 1029), np.float32)), True),
    ("blend", (2, 6, 3, 4, 5), lambda x: backend.blend(x, _second((2, 6, 3, 4, 5)), _second((2, 1, 3, 1, 1))), True),
    ("upsample", (2, 3, 5, 7), lambda x: backend.interpolate_nearest(x, scale_factor=2.0), True),
    ("permute tiled", (2, 40, 3, 37), lambda x: backend.permute(x, (0, 2, 3, 1)), True),
    ("permute rows", (3, 4, 5, 6), lambda x: backend.permute(x, (1, 0, 2, 3)), True),
    ("conv winograd 2D", (2, 16, 1, 9, 12), _conv_case((16, 16, 1, 3, 3)), True),
    ("conv winograd 3D odd", (1, 16, 3, 33, 31), _conv_case((16, 16, 3, 3, 3), padding=(1, 1, 1)), True),
    ("conv im2col strided", (2, 8, 1, 11, 10), _conv_case((6, 8, 1, 3, 3), stride=(1, 2, 2)), True),
    ("conv2d grouped", (1, 32, 9, 10), _conv2d_case((64, 8, 3, 3), (1, 1), (1, 1), 4), True),
    ("conv2d 1x1", (2, 24, 6, 7), _conv2d_case((40, 24, 1, 1), (1, 1), (0, 0), 1), True),
    ("conv temporal", (2, 12, 5, 46, 90), _conv_case((10, 12, 3, 1, 1), padding=(1, 0, 0)), True),
    ("conv temporal strided", (1, 8, 6, 5, 7), _conv_case((6, 8, 3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0)), True),
    ("layer norm", (3, 7, 40), lambda x: backend.layer_norm(x, _second(40), _second(40), 1e-5), False),
]


@pytest.mark.parametrize("name, shape, fn, in_place", HALF, ids=[h[0] for h in HALF])
def test_half_precision_is_read_and_written_by_the_kernel(name, shape, fn, in_place, rng, monkeypatch):
    # float32 arithmetic on the float16 values, rounded once: the same numbers as widening x first, bit for bit;
    # a kernel that reads float16 itself never widens the whole input (its weights, a few values, still are)
    x = (rng.standard_normal(shape) * 2).astype(np.float16)
    ref = fn(Tensor(x.astype(np.float32))).asnumpy().astype(np.float16)
    widen = kernels.kernel("mp_f16_to_f32")
    real, widened = widen.fn, []

    def spy(n, ptrs, ndims, dims, *rest):
        widened.append(tuple(dims[0][i] for i in range(ndims[0])))
        return real(n, ptrs, ndims, dims, *rest)

    monkeypatch.setattr(widen, "fn", spy)
    out = fn(Tensor(x))
    assert out.dtype == ms.float16
    np.testing.assert_array_equal(out.asnumpy(), ref, err_msg=name)
    assert any(np.prod(w) == x.size for w in widened) != in_place, (name, widened)  # x in any (merged) shape


def test_fallback_transposes_do_not_crash_mindspore_at_exit(tmp_path):
    # MindSpore 2.8 crashed at interpreter exit (memory-pool teardown) after a reshaped transposed view; permute()
    # hands back contiguous tensors on every path. This ran 4 of 4 times into SIGSEGV / abort before the fix.
    import subprocess
    import sys

    script = ("import numpy as np\nfrom mindspore import Tensor\nfrom mindport import backend\n"
              "x = Tensor(np.ones((2, 9, 24), np.float32))\n"
              "print(backend.attention_heads(x, x, x, 3, 0.35, None).asnumpy().shape)\n")
    env = {**__import__("os").environ, "MINDPORT_KERNELS": "0", "GLOG_v": "3"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(2, 9, 24)" in done.stdout


@pytest.mark.parametrize("shape, size", [((2, 5, 4, 3), (8, 6)), ((1, 3, 5, 7), (15, 7)), ((3, 2, 1, 1), (2, 3))])
def test_upsample_nearest_kernel_is_exact(shape, size, rng, ops_path):
    x = rng.standard_normal(shape).astype(np.float32)
    fast, slow = both(lambda: backend.interpolate_nearest(Tensor(x), size=size), ops_path)
    ref = torch.nn.functional.interpolate(t(x), size=size, mode="nearest").numpy()
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(slow, ref)


@pytest.mark.parametrize("shape, size", [((2, 3, 9, 7), (4, 3)), ((1, 2, 8, 8), (4, 4)), ((1, 4, 3, 5), (7, 6)),
                                         ((2, 2, 32, 40), (32, 32))])
def test_adaptive_avg_pool_kernel(shape, size, rng, ops_path):
    x = rng.standard_normal(shape).astype(np.float32)
    fast, slow = both(lambda: backend.adaptive_avg_pool2d(Tensor(x), size), ops_path)
    ref = torch.nn.functional.adaptive_avg_pool2d(t(x).double(), size)
    assert_close(fast, ref, rel_l2=1e-6, where=f"adaptive avg pool {shape} -> {size}")
    assert_close(fast, slow, rel_l2=1e-6, where="adaptive avg pool kernel vs ops")
    if shape[2] % 2 == 0 and shape[3] % 2 == 0:
        fast, slow = both(lambda: backend.avg_pool2d(Tensor(x), 2, 2), ops_path)
        assert_close(fast, torch.nn.functional.avg_pool2d(t(x).double(), 2, 2), rel_l2=1e-6, where="avg pool 2x2")
        assert_close(fast, slow, rel_l2=1e-6, where="avg pool kernel vs ops")


def test_kernels_read_strided_views_and_wait_for_asynchronous_launch(rng):
    # a strided view is made contiguous before the kernel reads its memory; with MindSpore's asynchronous launch
    # (MINDPORT_PYNATIVE_ASYNC=1) a kernel waits for the ops that produce its inputs
    x = rng.standard_normal((4, 6, 10)).astype(np.float32)
    view = Tensor(x)[:, ::2, 1:]
    assert not view.is_contiguous()
    ref = torch.nn.functional.silu(t(x)[:, ::2, 1:]).numpy()
    assert_close(backend.silu(view), ref, rel_l2=1e-6, where="silu of a strided view")
    import subprocess
    import sys

    script = ("import numpy as np\nimport mindspore as ms\nfrom mindspore import Tensor\nfrom mindport import backend\n"
              "assert not ms.get_context('pynative_synchronize')\n"
              "x = Tensor(np.linspace(-3, 3, 4096, dtype=np.float32).reshape(64, 64))\n"
              "y = backend.silu(backend.linear(x * 2.0 + 1.0, x, None))\n"
              "a = np.linspace(-3, 3, 4096, dtype=np.float64).reshape(64, 64)\n"
              "h = (a * 2 + 1) @ a.T\n"
              "print(float(np.abs(y.asnumpy() - h / (1 + np.exp(-h))).max() / np.abs(h).max()))\n")
    env = {**__import__("os").environ, "MINDPORT_PYNATIVE_ASYNC": "1", "GLOG_v": "3"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


@pytest.mark.parametrize("shape, other", [((3, 5, 7), (3, 5, 7)), ((4097,), (4097,)), ((2, 4, 6), (4, 6))])
def test_residual_add(shape, other, rng, ops_path):
    a, b = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(other).astype(np.float32)
    fast, slow = both(lambda: backend.add(Tensor(a), Tensor(b)), ops_path)
    np.testing.assert_array_equal(fast, a + b)  # one float32 add per element: exact
    np.testing.assert_array_equal(slow, a + b)


def test_half_casts_match_numpy_bit_for_bit(rng):
    # every float16 bit pattern widens exactly; float32 -> float16 rounds to nearest even like NumPy / MindSpore,
    # including ties, subnormals, overflow to inf and NaN (odd lengths exercise the scalar tail)
    every_half = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    wide = backend.cast(Tensor(every_half), ms.float32).asnumpy()
    nan = np.isnan(every_half)
    np.testing.assert_array_equal(wide[~nan], every_half[~nan].astype(np.float32))
    assert np.isnan(wide[nan]).all()
    with np.errstate(invalid="ignore", over="ignore"):
        ties = (every_half[:-1].astype(np.float64) + every_half[1:].astype(np.float64)) / 2  # exact midpoints
    ties = ties[np.isfinite(ties)].astype(np.float32)
    x = np.concatenate([ties, rng.standard_normal(10001).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 10001),
                        np.array([65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf, 0.0, -0.0, 1e-8, -6e-8],
                                 np.float32)])
    narrow = backend.cast(Tensor(x), ms.float16).asnumpy()
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(narrow.view(np.uint16), x.astype(np.float16).view(np.uint16))
    assert np.isnan(backend.cast(Tensor(np.array([np.nan] * 9, np.float32)), ms.float16).asnumpy()).all()


def test_half_precision_inputs_run_the_kernels_in_float32(rng, ops_path):
    x = rng.standard_normal((2, 8, 6, 5)).astype(np.float16)
    w = (rng.standard_normal((12, 8, 3, 3)) * 0.2).astype(np.float16)
    b = rng.standard_normal(12).astype(np.float16)
    fast, slow = both(lambda: backend.conv2d(Tensor(x), Tensor(w), Tensor(b), (1, 1), (1, 1)), ops_path)
    ref = torch.nn.functional.conv2d(t(x).double(), t(w).double(), t(b).double(), padding=1).float().half().numpy()
    assert fast.dtype == np.float16
    # float32 arithmetic and one rounding to float16: within one float16 step of the correctly rounded value
    assert np.all(np.abs(fast.astype(np.float32) - ref.astype(np.float32)) <= np.spacing(np.abs(ref)).astype(np.float32))
    assert_close(fast, ref, rel_l2=5e-4, where="fp16 conv through the float32 kernel")
    assert_close(slow, ref, rel_l2=2e-3, where="MindSpore fp16 conv")
    h = rng.standard_normal((3, 7, 16)).astype(np.float16)
    lw = (rng.standard_normal((10, 16)) * 0.25).astype(np.float16)
    out = backend.silu(backend.linear(Tensor(h), Tensor(lw), None))
    assert out.dtype == ms.float16
    lin = t(h).float() @ t(lw).float().T
    assert_close(out, torch.nn.functional.silu(lin.half().float()).half(), rel_l2=1e-3, where="fp16 linear + silu")


# (kernel, input shapes, settings): caller bugs each kernel must refuse (a ValueError naming it and the shapes)
BAD_SHAPES = [
    ("mp_linear", [(4, 8), (3, 7), (3,)], (0.0,)),  # K differs
    ("mp_linear", [(2, 4, 8), (3, 8), (3,)], (0.0,)),  # x not 2D
    ("mp_linear", [(4, 8), (3, 8), (2,)], (1.0,)),  # bias length
    ("mp_linear", [(4, 8), (3, 8)], (0.0,)),  # an input missing
    ("mp_attention", [(2, 5, 16), (2, 6, 8), (2, 6, 16)], (0.5, 2)),  # q and k rows differ
    ("mp_attention", [(2, 5, 16), (2, 6, 16), (2, 7, 16)], (0.5, 2)),  # k and v lengths differ
    ("mp_attention", [(2, 5, 16), (3, 6, 16), (3, 6, 16)], (0.5, 2)),  # batch differs
    ("mp_attention", [(2, 5, 16), (2, 6, 16), (2, 6, 10)], (0.5, 4)),  # heads do not divide v's rows
    ("mp_attention_masked", [(2, 5, 16), (2, 6, 16), (2, 6, 16), (2, 1, 5, 5)], (0.5, 2)),  # mask's Lk
    ("mp_attention_masked", [(2, 5, 16), (2, 6, 16), (2, 6, 16), (3, 1, 5, 6)], (0.5, 2)),  # mask's batch
    ("mp_conv", [(1, 4, 1, 5, 5), (6, 3, 1, 3, 3), (6,)], (1, 1, 1, 0, 1, 1, 1, 0.0)),  # input channels
    ("mp_conv", [(1, 4, 1, 5, 5), (5, 2, 1, 3, 3), (5,)], (1, 1, 1, 0, 1, 1, 2, 0.0)),  # O not divisible by groups
    ("mp_conv", [(1, 4, 1, 2, 2), (6, 4, 1, 3, 3), (6,)], (1, 1, 1, 0, 0, 0, 1, 0.0)),  # kernel > input
    ("mp_conv", [(1, 4, 5, 5), (6, 4, 3, 3), (6,)], (1, 1, 1, 0, 1, 1, 1, 0.0)),  # 4D, not 5D
    ("mp_conv", [(1, 4, 1, 5, 5), (6, 4, 1, 3, 3), (4,)], (1, 1, 1, 0, 1, 1, 1, 1.0)),  # bias length
    ("mp_group_norm", [(2, 6, 4), (6,), (6,)], (4, 1e-5)),  # groups do not divide C
    ("mp_group_norm", [(2, 6, 4), (5,), (6,)], (3, 1e-5)),  # weight length
    ("mp_layer_norm", [(3, 8), (8,), (7,)], (1e-5,)),  # bias length
    ("mp_add", [(3, 4), (4, 3)], ()),
    ("mp_blend", [(2, 3, 4), (2, 3, 4), (2, 2, 1)], ()),  # alpha axis neither 1 nor a's
    ("mp_blend", [(2, 3, 4), (2, 3, 4), (3, 4)], ()),  # alpha's rank
    ("mp_geglu", [(3, 7)], ()),  # odd last axis
    ("mp_permute", [(2, 3, 4)], (0, 2, 2)),  # not a permutation
    ("mp_permute", [(2, 3)], (1, 0, 2)),  # more axes than x
    ("mp_upsample_nearest", [(1, 2, 3, 3)], (0, 2)),
    ("mp_adaptive_avg_pool", [(1, 2, 3, 3)], (0, 2)),
]


@pytest.mark.parametrize("name, shapes, settings", BAD_SHAPES)
def test_kernels_refuse_shapes_they_cannot_take(name, shapes, settings):
    inputs = [Tensor(np.zeros(s, np.float32)) for s in shapes]
    with pytest.raises(ValueError, match=name) as caught:
        kernels.kernel(name)(*inputs, settings=settings)
    assert str(tuple(tuple(s) for s in shapes)) in str(caught.value)


@pytest.mark.parametrize("name, shapes, settings", BAD_SHAPES)
def test_cpp_kernels_check_shapes_too(name, shapes, settings):
    """Called directly (past the Python rules), each kernel returns status 2 instead of reading out of bounds."""
    import ctypes

    bufs = [np.zeros(int(np.prod(s)) + 64, np.float32) for s in shapes]
    bufs += [np.array(settings or (0.0,), np.float32), np.zeros(int(np.prod(shapes[0])) + 64, np.float32)]
    every = [*shapes, (max(1, len(settings)),), shapes[0]]  # output declared as the first input's shape
    ptrs = (ctypes.c_void_p * len(bufs))(*[b.ctypes.data for b in bufs])
    ndims = (ctypes.c_int * len(every))(*[len(s) for s in every])
    rows = [(ctypes.c_int64 * max(1, len(s)))(*s) for s in every]
    dims = (ctypes.POINTER(ctypes.c_int64) * len(every))(*rows)
    assert kernels.kernel(name).fn(len(bufs), ptrs, ndims, dims, None, None, None) == kernels.BAD_SHAPE


def test_kernel_status_becomes_an_exception_and_dtypes_are_checked():
    lax = kernels.Kernel("mp_add")
    lax.spec = kernels._Spec(2, 0, lambda a, b, settings: a)  # a rule that checks nothing: C++ must refuse
    with pytest.raises(ValueError, match="mp_add rejected input shapes"):
        lax(Tensor(np.zeros((3, 4), np.float32)), Tensor(np.zeros((4, 3), np.float32)))
    for dtype in (np.float64, np.int32, np.uint8):
        with pytest.raises(ValueError, match="mp_silu takes Float32"):
            kernels.kernel("mp_silu")(Tensor(np.zeros(5, dtype)))


def test_empty_tensors_do_not_reach_the_kernels():
    out = kernels.kernel("mp_group_norm")(Tensor(np.zeros((0, 4, 3), np.float32)), Tensor(np.ones(4, np.float32)),
                                          Tensor(np.zeros(4, np.float32)), settings=(2, 1e-5))
    assert out.shape == (0, 4, 3)
    with pytest.raises(ValueError, match="an input is empty"):  # K = 0 would give a non-empty output
        kernels.kernel("mp_linear")(Tensor(np.zeros((3, 0), np.float32)), Tensor(np.zeros((2, 0), np.float32)),
                                    Tensor(np.zeros(2, np.float32)), settings=(1.0,))
