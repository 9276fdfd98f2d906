"""Every MindSpore framework gap mindport works around, in one place.

Each function names why it exists. Layers call these instead of `mindspore.ops` / `mindspore.mint` directly, so a
new MindSpore release or device target changes this file only. The fused CPU kernels' build, cache and ctypes calls
live in kernels.py (imported from here, never importing back); this module decides where they run.

What `import mindport.backend` does, and nothing more (nothing is compiled or loaded: the kernel library is built or
load-tested on the first kernel call):
1. warns if the installed MindSpore is outside the tested 2.8-2.10;
2. on the CPU target, calls `mindspore.runtime.launch_blocking()` (PyNative launches ops synchronously;
   `configure_cpu_launch` says why): opt out with MINDPORT_PYNATIVE_ASYNC=1;
3. reads MINDPORT_ATTENTION_CHUNK and creates three MindSpore matmul primitives (no settings change).
Settings read later, at first use: MINDPORT_KERNELS=0 (no kernels: MindSpore ops only), MINDPORT_CONV
(kernel | native | matmul), MINDPORT_NUM_THREADS (the kernels' threads), MINDPORT_CACHE (where the kernels are
built), CXX (the compiler). `init_context` (called by the CLI, not at import) sets PyNative mode and
MINDPORT_DEVICE.

Facts behind the choices (measured, see shared/design.md and bench/README.md):
- `mindspore.mint` has no CPU kernels for conv, LayerNorm, gelu, pad, interpolate...: we use classic `ops`.
- On CPU, MindSpore's own kernels are slow where PyTorch's are not: `ops.group_norm` 7-13 ms on (8, 128, 32, 32)
  (PyTorch 0.24 ms), the LayerNorm primitive 6 ms on (8192, 128) (0.5 ms), any broadcasting elementwise op 10-30x
  a same-shape one, transposes 4x, `ops.gelu` 60x, MatMul 1.6-2x slower than NumPy's OpenBLAS on conv-like shapes,
  and native convolution on 2.9+ 100-400x slower than on 2.8. So on CPU the hot layers run as fused C++ kernels
  (csrc/cpu_kernels.cc: norms, GELU / GEGLU / SiLU, blend, transpose, nearest upsampling, average pooling, and
  linear, attention and convolution on scipy-openblas32's OpenBLAS), compiled once with the machine's C++ compiler
  into a cache (kernels.py). They keep MindSpore's aot custom-op signature but are called directly on the tensors'
  memory (ctypes), not through `ops.Custom`: PyNative launched each custom op in ~90 us (a tiny pipeline makes
  ~1,300 calls).
  Without a compiler (or with MINDPORT_KERNELS=0) the MindSpore-ops paths below run: same numbers, slower (and
  convolution on >= 2.9 as matmuls: im2col for 2D, shifted 2D convs for temporal 3D).
- On those paths: biases go through BiasAdd, per-(batch, channel) adds through `add_leading` (broadcasting is the
  slow case); `ops.matmul(q, k.swapaxes(-1, -2))` copies k where `BatchMatMul(transpose_b=True)` reads it in place,
  and `BatchMatMul()` runs probs @ v 1.6x faster than `ops.matmul`.
- Half precision on CPU: the kernels compute in fp32; the activations' kernels (SiLU, add, blend, group norm,
  nearest upsampling, transposes, convolution) read and write float16 in place, the others get float16 inputs
  widened by a cast kernel and outputs rounded back (kernels.Kernel); on the MindSpore-ops paths fp16 norms/softmax
  are computed in fp32 and cast back (reductions over thousands of values lose digits in fp16).
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from functools import lru_cache

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from . import kernels
from .kernels import device_target, has_blas, kernel_library  # noqa: F401 (callers and tests use them from here)
from .kernels import kernel as _kernel


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


MS_VERSION = _version_tuple(ms.__version__)


def check_mindspore_version() -> None:
    """Warn (once, at import) about MindSpore releases outside the tested range."""
    if not ((2, 8) <= MS_VERSION[:2] <= (2, 10)):
        warnings.warn(f"mindport is tested with mindspore 2.8 to 2.10, found {ms.__version__}; "
                      "pip install mindspore==2.8.0 is the tested CPU setup", stacklevel=2)


check_mindspore_version()


def init_context() -> None:
    """PyNative mode (forward hooks for the parity harness need it); device from MINDPORT_DEVICE, default CPU."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    target = os.environ.get("MINDPORT_DEVICE")
    if target:
        ms.set_device(target)
    configure_cpu_launch()


def configure_cpu_launch() -> None:
    """On CPU, PyNative's asynchronous op launch costs more than it saves (measured: tiny SVD pipeline 6-10 s async,
    1.3 s synchronous, on 2 cores): launch synchronously unless MINDPORT_PYNATIVE_ASYNC=1. The kernels read their
    inputs' memory, so they learn the mode: under asynchronous launch they wait for the ops before them.
    `ms.runtime.launch_blocking()` is what `set_context(pynative_synchronize=True)` became (deprecated, with a
    warning, since 2.8); it cannot be undone in a process, and `get_context` does not report it."""
    blocking = bool(ms.get_context("pynative_synchronize"))  # the caller's own setting
    if ms.get_context("device_target") == "CPU" and os.environ.get("MINDPORT_PYNATIVE_ASYNC") != "1":
        ms.runtime.launch_blocking()
        blocking = True
    kernels.set_synchronous_launch(blocking)


configure_cpu_launch()


@lru_cache(maxsize=None)
def native_conv_is_fast() -> bool:
    """Native convolution is fast everywhere except the CPU backend of MindSpore >= 2.9 (100-400x regression)."""
    override = os.environ.get("MINDPORT_CONV")  # "kernel" (default where the kernels build), "native", "matmul"
    if override in ("native", "matmul"):
        return override == "native"
    return not (device_target() == "CPU" and MS_VERSION[:2] >= (2, 9))


@contextmanager
def shared_parameter_load():
    """While a model is built: every new Parameter gets one shared `Load` primitive. Parameter.__init__ constructs a
    fresh stateless Load (used only by `Parameter.value()`) for each parameter, ~70 us of its ~100 us (a tiny
    AnimateDiff pipeline has 730 parameters: 50 ms of its 0.2 s load). Without that hook in a MindSpore release,
    a no-op."""
    from mindspore.ops.operations import other_ops

    make = getattr(other_ops, "Load", None)
    if make is None:
        yield
        return
    shared = make()
    other_ops.Load = lambda: shared
    try:
        yield
    finally:
        other_ops.Load = make


def _kernels_for(*tensors: Tensor) -> bool:
    return all(t.dtype in (ms.float32, ms.float16) for t in tensors) and kernel_library() is not None


def _gemm_for(*tensors: Tensor) -> bool:
    """The matrix-product kernels also need BLAS (scipy-openblas32)."""
    return _kernels_for(*tensors) and has_blas()


@lru_cache(maxsize=None)
def _constant(value: float, n: int) -> Tensor:
    return Tensor(np.full(n, value, np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Linear and broadcasting adds
# ----------------------------------------------------------------------------------------------------------------

_MATMUL_NT = ops.MatMul(transpose_b=True)


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x @ w.T + b over the last axis: the mp_linear kernel (sgemm + bias) on CPU, elsewhere one 2D
    MatMul(transpose_b) and a BiasAdd (`ops.dense` broadcasts its bias: 3-4x slower on CPU)."""
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    if _gemm_for(x, w) and (b is None or _kernels_for(b)):
        bias = b if b is not None else _constant(0.0, w.shape[0])
        y = _kernel("mp_linear")(x, w, bias, settings=(float(b is not None),))
    else:
        y = _MATMUL_NT(x, w)
        if b is not None:
            y = ops.bias_add(y, b)
    return y.reshape(*lead, w.shape[0])


def add_leading(x: Tensor, v: Tensor) -> Tensor:
    """x + v broadcast over x's trailing axes, where v.shape == x.shape[:v.ndim] (a per-(batch, channel) time
    embedding added to feature maps): one BiasAdd over (1, v.size, rest)."""
    return ops.bias_add(x.reshape(1, v.size, -1), v.reshape(-1)).reshape(x.shape)


# ----------------------------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------------------------


def _conv2d_matmul(x: Tensor, w: Tensor, stride: tuple[int, int], padding: tuple[int, int], groups: int) -> Tensor:
    """im2col + matmul: the 2D convolution as kh*kw shifted 1x1 convolutions (fast CPU path for MindSpore >= 2.9)."""
    b, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if padding[0] or padding[1]:
        x = ops.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    hp, wp = x.shape[2], x.shape[3]
    ho = (hp - kh) // stride[0] + 1
    wo = (wp - kw) // stride[1] + 1
    og = o // groups
    out = None
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride[0] * (ho - 1) + 1 : stride[0], j : j + stride[1] * (wo - 1) + 1 : stride[1]]
            # (B, C, Ho, Wo) -> (B, G, C/G, Ho*Wo)
            patch = patch.reshape(b, groups, cg, ho * wo)
            wij = w[:, :, i, j].reshape(groups, og, cg)
            term = ops.matmul(wij, patch)  # (B, G, O/G, Ho*Wo)
            out = term if out is None else out + term
    return out.reshape(b, o, ho, wo)


def _conv_kernel(x: Tensor, w: Tensor, b: Tensor | None, stride, padding, groups: int) -> Tensor:
    """mp_conv on (B, C, T, H, W) and (O, C/G, kt, kh, kw): im2col blocks + OpenBLAS sgemm."""
    stride, padding = tuple(int(v) for v in stride), tuple(int(v) for v in padding)
    bias = b if b is not None else _constant(0.0, w.shape[0])
    return _kernel("mp_conv")(x, w, bias, settings=(*stride, *padding, int(groups), float(b is not None)))


def _use_conv_kernel(x: Tensor, w: Tensor, b: Tensor | None) -> bool:
    return os.environ.get("MINDPORT_CONV") in (None, "", "kernel") and _gemm_for(x, w) and (
        b is None or _kernels_for(b))


def conv2d(x: Tensor, w: Tensor, b: Tensor | None, stride=(1, 1), padding=(0, 0), groups: int = 1) -> Tensor:
    """The mp_conv kernel on CPU (Winograd for 3x3 stride 1, else im2col blocks; sgemm), else native convolution
    where it is fast, else im2col as matmuls (MindSpore >= 2.9 on CPU without the kernels)."""
    if _use_conv_kernel(x, w, b):
        y = _conv_kernel(x.reshape(x.shape[0], x.shape[1], 1, *x.shape[2:]), w.reshape(*w.shape[:2], 1, *w.shape[2:]),
                         b, (1, *stride), (0, *padding), groups)
        return y.reshape(y.shape[0], y.shape[1], *y.shape[3:])
    if native_conv_is_fast():
        y = ops.conv2d(x, w, None, stride=stride, pad_mode="pad", padding=padding, groups=groups)
    else:
        y = _conv2d_matmul(x, w, stride, padding, groups)
    return y if b is None else ops.bias_add(y, b)


def conv3d(x: Tensor, w: Tensor, b: Tensor | None, padding=(0, 0, 0), stride=(1, 1, 1)) -> Tensor:
    """3D convolution: the mp_conv kernel on CPU ((kt, 3, 3) kernels on frames of 32x32 and up as Winograd
    F(2x2, 3x3) per frame, temporal (kt, 1, 1) kernels as frame-shifted sgemms, strides computed directly, not
    subsampled); without it and where native conv is slow, kt 2D convolutions over frame-shifted inputs summed
    (frames folded into the batch, reusing conv2d's path; a time stride keeps every stride-th frame)."""
    stride = tuple(int(s) for s in stride)
    if _use_conv_kernel(x, w, b):
        return _conv_kernel(x, w, b, stride, padding, 1)
    if native_conv_is_fast():
        y = ops.conv3d(x, w, None, stride=stride, pad_mode="pad", padding=tuple(padding))
        return y if b is None else ops.bias_add(y, b)
    bsz, c, f, h, wd = x.shape
    o, _, kt, kh, kw = w.shape
    pt = padding[0]
    if pt:
        x = ops.pad(x, (0, 0, 0, 0, pt, pt))
    fo = x.shape[2] - kt + 1
    out = None
    for k in range(kt):
        xs = permute(x[:, :, k : k + fo : stride[0]], (0, 2, 1, 3, 4))
        xs = xs.reshape(-1, c, h, wd)
        term = conv2d(xs, w[:, :, k], None, stride=stride[1:], padding=(padding[1], padding[2]))
        out = term if out is None else out + term
    out = permute(out.reshape(bsz, -1, o, out.shape[-2], out.shape[-1]), (0, 2, 1, 3, 4))
    return out if b is None else ops.bias_add(out, b)


def take_frames(x: Tensor, start: int, stop: int | None = None) -> Tensor:
    """x[:, :, start:stop] (B, C, T, ...) as a tensor of its own. On CPU with the kernels (host memory) a NumPy
    copy: MindSpore's slice + contiguous took 21 ms for 2M values, the copy ~1 ms."""
    if kernel_library() is not None and x.dtype in (ms.float32, ms.float16):
        return Tensor.from_numpy(np.array(x.asnumpy()[:, :, start:stop], order="C", copy=True))
    return x[:, :, start:stop].contiguous()


def pad_frames(x: Tensor, front: int) -> Tensor:
    """(B, C, T, ...) -> (B, C, front + T, ...), zeros in front (a causal convolution's time padding). On CPU with
    the kernels a NumPy copy into a zeroed buffer (`ops.pad` took 53 ms on 4M values)."""
    if kernel_library() is not None and x.dtype in (ms.float32, ms.float16):
        a = x.asnumpy()
        out = np.zeros((a.shape[0], a.shape[1], front + a.shape[2], *a.shape[3:]), a.dtype)
        out[:, :, front:] = a
        return Tensor.from_numpy(out)
    return ops.pad(x, (0, 0) * (x.ndim - 3) + (front, 0))


# ----------------------------------------------------------------------------------------------------------------
# Normalisation and activations
# ----------------------------------------------------------------------------------------------------------------


def cast(x: Tensor, dtype) -> Tensor:
    """x as `dtype`; x itself when it already is (MindSpore's astype costs ~20 us even then). Between float16 and
    float32 on CPU a kernel converts (MindSpore's CPU cast took ~400 us for 30k values)."""
    if x.dtype == dtype:
        return x
    if {x.dtype, dtype} == {ms.float16, ms.float32} and kernel_library() is not None:
        if dtype == ms.float32:
            return _kernel("mp_f16_to_f32")(x)
        return _kernel("mp_f32_to_f16")(x)
    return x.astype(dtype)


def _upcast(x: Tensor) -> tuple[Tensor, ms.dtype.Type]:
    """Half-precision norms/softmax are computed in fp32 (reductions over thousands of values lose digits in fp16)."""
    dt = x.dtype
    if dt in (ms.float16, ms.bfloat16):
        return cast(x, ms.float32), dt
    return x, dt


def group_norm(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """GroupNorm over (B, C, *) - 4D and 5D; `ops.group_norm` has CPU kernels, `mint.group_norm` does not. The
    kernel reads and writes float16 itself (float32 arithmetic, no widened copy of x); elsewhere half precision is
    computed in float32 and cast back."""
    dt, c = x.dtype, x.shape[1]
    if dt != ms.float16:  # bfloat16 widened; float16 as it is (the kernel reads it, the ops path widens it below)
        x, _ = _upcast(x)
    w = cast(weight, ms.float32) if weight is not None else _constant(1.0, c)
    bb = cast(bias, ms.float32) if bias is not None else _constant(0.0, c)
    if _kernels_for(x):
        return cast(_kernel("mp_group_norm")(x, w, bb, settings=(int(groups), float(eps))), dt)
    x, _ = _upcast(x)
    return cast(ops.group_norm(x, groups, w, bb, eps), dt)


def channel_rms_norm(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.normalize(x, dim=1) * sqrt(C) * weight (+ bias) on (B, C, *) in float32 (Wan's VAE RMS norm; weight and
    bias hold C values): the mp_channel_rms_norm kernel on CPU (one pass per block of positions: the matmul
    formulation below took 14 ms on (1, 64, 4, 128, 128)). Elsewhere the channel sums of squares and the
    per-position factor sqrt(C) * gamma / ||x|| are matmuls (a K = 1 product is exact), so every op on the full
    tensor is same-shape (broadcasting is the slow case on CPU)."""
    x32 = cast(x, ms.float32)
    b, c = x32.shape[0], x32.shape[1]
    if _kernels_for(x32):
        gamma = cast(weight, ms.float32).reshape(c)
        beta = cast(bias, ms.float32).reshape(c) if bias is not None else _constant(0.0, c)
        return _kernel("mp_channel_rms_norm")(x32, gamma, beta, settings=(float(bias is not None),))
    flat = x32.reshape(b, c, -1)  # (B, C, N)
    # 1. per-position L2 norm over channels: (1, C) @ (B, C, N) -> (B, 1, N), clamped as F.normalize does (1e-12)
    sq = ops.matmul(ops.ones((1, c), ms.float32), flat * flat)
    inv = 1.0 / ops.maximum(ops.sqrt(sq), 1e-12)
    # 2. factor sqrt(C) * gamma / ||x||: (C, 1) @ (B, 1, N) -> (B, C, N)
    gamma = cast(weight, ms.float32).reshape(c, 1) * float(np.sqrt(c))
    y = flat * ops.matmul(gamma, inv)
    if bias is not None:
        y = add_leading(y.reshape(b * c, -1), ops.tile(cast(bias, ms.float32).reshape(-1), (b,)))
    return y.reshape(x.shape)


@lru_cache(maxsize=None)
def _layer_norm_primitive(eps: float):
    # The functional ops.layer_norm is LayerNormExt, which has no CPU kernel; the classic primitive has one.
    return ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    x, dt = _upcast(x)
    d = x.shape[-1]
    w = cast(weight, ms.float32) if weight is not None else _constant(1.0, d)
    bb = cast(bias, ms.float32) if bias is not None else _constant(0.0, d)
    if _kernels_for(x):
        return cast(_kernel("mp_layer_norm")(x, w, bb, settings=(float(eps),)), dt)
    return cast(_layer_norm_primitive(float(eps))(x, w, bb)[0], dt)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    # mint.gelu has no CPU kernel; ops.gelu matches torch's exact GELU to 8e-7 but is slow on CPU
    if approximate == "none" and _kernels_for(x):
        return _kernel("mp_gelu")(x)
    return ops.gelu(x, approximate=approximate)


def gelu_tanh(x: Tensor) -> Tensor:
    """torch's GELU(approximate="tanh"), 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), computed in
    float32 as x * sigmoid(2u) (the same function), returned in x's dtype: the mp_gelu_tanh kernel on CPU (one pass;
    the ops below took ~0.12 s per (3200, 3072) call), elsewhere those ops (`ops.gelu(approximate="tanh")` took 9.3 ms
    on 512k values on CPU, they 0.9 ms, and match torch to 5e-8 relative where the tanh form through ops.tanh lost
    1.4e-5 near tanh = -1)."""
    x32 = cast(x, ms.float32)
    if _kernels_for(x32):
        return cast(_kernel("mp_gelu_tanh")(x32), x.dtype)
    u = x32 + (x32 * x32 * x32) * 0.044715
    return cast(x32 * ops.sigmoid(u * float(2.0 * np.sqrt(2.0 / np.pi))), x.dtype)


@lru_cache(maxsize=None)
def _mean_row(d: int) -> Tensor:
    return Tensor(np.full((1, d), 1.0 / d, np.float32))


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """x * rsqrt(mean(x^2, -1) + eps) (* weight) in float32 (torch.nn.RMSNorm), returned as float32: the mp_rms_norm
    kernel on CPU; elsewhere the row means are a (D -> 1) matmul and rsqrt * weight an outer product (K = 1 matmul,
    exact), so every op on the full tensor is same-shape (broadcasting is the slow case on CPU)."""
    x = cast(x, ms.float32)
    d = x.shape[-1]
    if _kernels_for(x):
        w = cast(weight, ms.float32).reshape(d) if weight is not None else _constant(1.0, d)
        return _kernel("mp_rms_norm")(x, w, settings=(float(eps), float(weight is not None)))
    inv = ops.rsqrt(linear(x * x, _mean_row(d), None) + eps)  # (..., 1)
    if weight is None:
        return x * ops.tile(inv, (1,) * (x.ndim - 1) + (d,))
    return x * linear(inv, cast(weight, ms.float32).reshape(d, 1), None)  # (..., 1) x (1, D) -> (..., D)


# (x0, x1) -> (-x1, x0) for each pair of channels, as x @ _SWAP^T: exact (one non-zero product per output)
_SWAP = Tensor(np.array([[0.0, -1.0], [1.0, 0.0]], np.float32))


def rotary_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary positions on interleaved pairs, (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos), float32 x, cos, sin of
    one shape: the mp_rotary_pairs kernel on CPU (one pass), elsewhere x * cos + swap(x) * sin with the swap as a
    (2, 2) matmul. The same products and sums either way."""
    if x.shape == cos.shape == sin.shape and _kernels_for(x, cos, sin):
        return _kernel("mp_rotary_pairs")(x, cos, sin)
    swapped = linear(x.reshape(-1, 2), _SWAP, None).reshape(x.shape)
    return add(x * cos, swapped * sin)


def geglu(h: Tensor) -> Tensor:
    """h[..., :n] * gelu(h[..., n:]) for a projection output h (..., 2n); one pass on CPU (slices of h are strided
    views there, every op on them slow)."""
    x, dt = _upcast(h)
    if _kernels_for(x):
        return cast(_kernel("mp_geglu")(x), dt)
    hidden, gate = ops.chunk(h, 2, axis=-1)
    return hidden * gelu(gate)


def add(a: Tensor, b: Tensor) -> Tensor:
    """a + b for the residual connections: the mp_add kernel on same-shape float32 CPU tensors (MindSpore's add took
    70-150 us right after a kernel, ~200 times per tiny pipeline run), else MindSpore's add."""
    if a.shape == b.shape and _kernels_for(a, b):
        return _kernel("mp_add")(a, b)
    return a + b


def blend(a: Tensor, b: Tensor, alpha: Tensor) -> Tensor:
    """alpha * a + (1 - alpha) * b, alpha broadcast against a (numpy rules: trailing axes aligned)."""
    alpha = cast(alpha, a.dtype)
    if alpha.ndim < a.ndim:
        alpha = alpha.reshape((1,) * (a.ndim - alpha.ndim) + tuple(alpha.shape))
    if _kernels_for(a, b) and a.shape == b.shape and all(n in (1, m) for n, m in zip(alpha.shape, a.shape)):
        return _kernel("mp_blend")(a, b, alpha)
    return b + alpha * (a - b)


def _merge_axes(shape, perm):
    """Merge input axes that stay adjacent and in order under `perm`: (merged input shape, merged perm)."""
    groups = [[perm[0]]]
    for p in perm[1:]:
        if p == groups[-1][-1] + 1:
            groups[-1].append(p)
        else:
            groups.append([p])
    order = sorted(range(len(groups)), key=lambda i: groups[i][0])
    merged_shape = [int(np.prod([shape[a] for a in groups[i]])) for i in order]
    rank = {g: r for r, g in enumerate(order)}
    return merged_shape, tuple(rank[i] for i in range(len(groups)))


def permute(x: Tensor, perm) -> Tensor:
    """x.transpose(perm) as a contiguous tensor (a tiled copy on CPU: MindSpore's transpose is 4x PyTorch's).
    Elsewhere the transposed view is made contiguous: MindSpore 2.8 crashed at interpreter exit (SIGSEGV / heap
    corruption in its memory pool's teardown) after reshaping such a view."""
    perm = tuple(int(p) for p in perm)
    if perm == tuple(range(len(perm))):
        return x
    shape, mperm = _merge_axes(x.shape, perm)
    if not _kernels_for(x) or x.size < 2 or not 1 < len(mperm) <= 8:  # the kernel takes up to 8 merged axes
        return x.transpose(perm).contiguous()
    out = _kernel("mp_permute")(x.reshape(shape), settings=mperm)
    return out.reshape([x.shape[p] for p in perm])


def quick_gelu(x: Tensor) -> Tensor:
    return x * ops.sigmoid(1.702 * x)


def silu(x: Tensor) -> Tensor:
    if _kernels_for(x):
        return _kernel("mp_silu")(x)
    return ops.silu(x)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    x, dt = _upcast(x)
    return cast(ops.softmax(x, axis=axis), dt)


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------

ATTENTION_CHUNK = int(os.environ.get("MINDPORT_ATTENTION_CHUNK", "4096"))
ATTENTION_SCORES = 1 << 24  # at most this many score values (64 MiB in float32) per query chunk off the kernel path
_BATCH_MATMUL_NT = ops.BatchMatMul(transpose_b=True)
_BATCH_MATMUL = ops.BatchMatMul()


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + mask) v over (B, heads, L, d). Queries are processed in chunks of at most
    ATTENTION_CHUNK rows and ATTENTION_SCORES score values, so the score matrix stays bounded for long sequences (SVD
    at 576x1024: 9,216 tokens, a (10, 2, 4096, 9216) chunk would be 2.8 GiB); scores and softmax run in fp32 for
    half-precision inputs."""
    if mask is None:
        fused = _fused_attention(q, k, v, scale, 1)
        if fused is not None:
            return fused
    lq = q.shape[2]
    rows = max(1, min(ATTENTION_CHUNK, ATTENTION_SCORES // (q.shape[0] * q.shape[1] * k.shape[2])))
    if lq > rows:
        def mask_rows(s):  # a mask broadcast over queries (one row) serves every chunk
            return mask if mask is None or mask.shape[-2] == 1 else mask[..., s : s + rows, :]

        parts = [attention(q[:, :, s : s + rows], k, v, scale, mask_rows(s)) for s in range(0, lq, rows)]
        return ops.cat(parts, axis=2)
    scores, dt = _upcast(_BATCH_MATMUL_NT(q, k))
    scores = scores * scale
    if mask is not None:
        scores = scores + cast(mask, scores.dtype)
    return _BATCH_MATMUL(cast(ops.softmax(scores, axis=-1), dt), v)


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, heads: int,
                     mask: Tensor | None = None) -> Tensor | None:
    """The mp_attention kernel on the heads-side-by-side layout (scores in fp32 for half-precision inputs), or None
    where it cannot run. `mask` must already be (1|G, 1|heads, 1|Lq, Lk)."""
    if scale <= 0 or not q.dtype == k.dtype == v.dtype:
        return None
    (q32, dt), (k32, _), (v32, _) = _upcast(q), _upcast(k), _upcast(v)
    if not _gemm_for(q32, k32, v32):
        return None
    if mask is None:
        return cast(_kernel("mp_attention")(q32, k32, v32, settings=(float(scale), int(heads))), dt)
    out = _kernel("mp_attention_masked")(q32, k32, v32, cast(mask, ms.float32), settings=(float(scale), int(heads)))
    return cast(out, dt)


def _kernel_mask(mask: Tensor | None, q: Tensor, k: Tensor, heads: int):
    """An additive mask as the kernel takes it, (1|B, 1|heads, 1|Lq, Lk), or False where it has another shape."""
    if mask is None:
        return None
    shape = (1,) * (4 - mask.ndim) + tuple(mask.shape) if mask.ndim <= 4 else None
    if shape is None or shape[0] not in (1, q.shape[0]) or shape[1] not in (1, heads) or shape[2] not in (
            1, q.shape[1]) or shape[3] != k.shape[1]:
        return False
    return mask.reshape(shape)


def attention_heads(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float, mask: Tensor | None = None) -> Tensor:
    """Multi-head attention on the projections' layout: q (B, Lq, heads*d), k (B, Lk, heads*d), v (B, Lk, heads*dv)
    -> (B, Lq, heads*dv); `mask` additive, broadcastable to (B, heads, Lq, Lk). One fused kernel on CPU (no head
    transposes); elsewhere heads are split, attended and merged."""
    kernel_mask = _kernel_mask(mask, q, k, heads)
    if kernel_mask is not False:
        fused = _fused_attention(q, k, v, scale, heads, kernel_mask)
        if fused is not None:
            return fused
    b, lq = q.shape[0], q.shape[1]

    def split(x):  # (B, L, heads*d) -> (B, heads, L, d)
        return permute(x.reshape(b, x.shape[1], heads, x.shape[2] // heads), (0, 2, 1, 3))

    out = attention(split(q), split(k), split(v), scale, mask)
    return permute(out, (0, 2, 1, 3)).reshape(b, lq, -1)


# ----------------------------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------------------------


def interpolate_nearest(x: Tensor, scale_factor: float | None = None, size=None) -> Tensor:
    """Nearest-neighbour upsampling of (N, C, H, W): the mp_upsample_nearest kernel for integer factors on CPU (a
    copy; ops.interpolate took 13 ms where PyTorch takes 6 on the mid-size SVD UNet's upsampler), else
    `ops.interpolate(mode="nearest")`, bit-exact with torch on CPU."""
    if size is None:
        size = tuple(int(s * scale_factor) for s in x.shape[2:])
    factors = tuple(o // i for o, i in zip(size, x.shape[2:]))
    if x.ndim == 4 and _kernels_for(x) and all(f >= 1 and f * i == o for f, i, o in zip(factors, x.shape[2:], size)):
        return _kernel("mp_upsample_nearest")(x, settings=factors)
    dt = x.dtype
    if dt == ms.bfloat16:
        x = cast(x, ms.float32)
    return cast(ops.interpolate(x, size=tuple(size), mode="nearest"), dt)


def avg_pool2d(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Average pooling, no padding: windows that tile the input exactly are the adaptive kernel's case."""
    h, w = x.shape[-2:]
    if kernel == stride and h % kernel == 0 and w % kernel == 0 and x.ndim == 4 and _kernels_for(x):
        return adaptive_avg_pool2d(x, (h // kernel, w // kernel))
    return ops.avg_pool2d(x, kernel_size=kernel, stride=stride)


def adaptive_avg_pool2d(x: Tensor, size) -> Tensor:
    """torch's adaptive average pooling (windows [floor(i H / Ho), ceil((i + 1) H / Ho))): the mp_adaptive_avg_pool
    kernel on CPU; `ops.adaptive_avg_pool2d` matches torch for shrinking and enlarging (2e-7) elsewhere."""
    size = tuple(int(s) for s in size)
    if x.ndim == 4 and _kernels_for(x):
        return _kernel("mp_adaptive_avg_pool")(x, settings=size)
    return ops.adaptive_avg_pool2d(x, size)


def to_tensor(a, dtype=None) -> Tensor:
    if isinstance(a, Tensor):
        return a if dtype is None else cast(a, dtype)
    arr = np.asarray(a)
    t = Tensor(arr)
    return t if dtype is None else cast(t, dtype)


DTYPES = {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}


def resolve_dtype(dtype) -> ms.dtype.Type | None:
    """Accept ms dtypes, numpy dtypes and the names fp32/fp16/bf16/float32/float16/bfloat16."""
    if dtype is None or isinstance(dtype, ms.dtype.Type):
        return dtype
    names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    key = names.get(str(dtype), str(dtype))
    if key not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)} or a mindspore dtype")
    return DTYPES[key]
