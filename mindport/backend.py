"""Every MindSpore framework gap mindport works around, in one place.

Each function names why it exists. Layers call these instead of `mindspore.ops` / `mindspore.mint` directly, so a
new MindSpore release or device target changes this file only.

Facts behind the choices (measured, see shared/design.md):
- `mindspore.mint` has no CPU kernels for conv, LayerNorm, gelu, pad, interpolate...: we use classic `ops`.
- MindSpore 2.8 CPU convolution is fast; 2.9+ made it 100-400x slower, so on CPU with >= 2.9 convolutions run as
  matmuls (im2col for 2D, a sum of shifted 2D convs-as-matmuls for temporal 3D kernels).
- fp16 norms/softmax lose precision; they are computed in fp32 and cast back.
- MindSpore 2.8 CPU elementwise ops that broadcast are 10-30x slower than same-shape ones (a (B, C, H, W) + (C,)
  add: 7 ms against BiasAdd's 0.8 ms; Linear's (M, N) + (N,) bias 100+ ms at M=8192, N=1024), and a Python-float
  division broadcasts too: biases go through BiasAdd, per-(batch, channel) adds through `add_leading`, divisions by
  constants become multiplications.
- `ops.gelu` / `ops.erf` run single-threaded and slowly (110 ms for 4 M values, 60x PyTorch): exact GELU is
  computed from fast elementwise ops with an erf approximation accurate to 1.5e-7.
- `ops.matmul(q, k.swapaxes(-1, -2))` copies k; `BatchMatMul(transpose_b=True)` reads it in place (2x faster).
"""

from __future__ import annotations

import os
from functools import lru_cache

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

SUPPORTED_MINDSPORE = ("2.8", "2.9", "2.10")


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
        import warnings

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
    1.3 s synchronous, on 2 cores): launch synchronously unless MINDPORT_PYNATIVE_ASYNC=1."""
    if ms.get_context("device_target") == "CPU" and os.environ.get("MINDPORT_PYNATIVE_ASYNC") != "1":
        ms.set_context(pynative_synchronize=True)


configure_cpu_launch()


@lru_cache(maxsize=None)
def device_target() -> str:
    return ms.get_context("device_target")


@lru_cache(maxsize=None)
def native_conv_is_fast() -> bool:
    """Native convolution is fast everywhere except the CPU backend of MindSpore >= 2.9 (100-400x regression)."""
    override = os.environ.get("MINDPORT_CONV")
    if override in ("native", "matmul"):
        return override == "native"
    return not (device_target() == "CPU" and MS_VERSION[:2] >= (2, 9))


# ----------------------------------------------------------------------------------------------------------------
# Linear and broadcasting adds
# ----------------------------------------------------------------------------------------------------------------

_MATMUL_NT = ops.MatMul(transpose_b=True)


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x @ w.T + b over the last axis, as one 2D MatMul(transpose_b) and a BiasAdd (`ops.dense` broadcasts its
    bias: 3-4x slower on CPU)."""
    lead = x.shape[:-1]
    y = _MATMUL_NT(x.reshape(-1, x.shape[-1]), w)
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


def conv2d(x: Tensor, w: Tensor, b: Tensor | None, stride=(1, 1), padding=(0, 0), groups: int = 1) -> Tensor:
    if native_conv_is_fast():
        y = ops.conv2d(x, w, None, stride=stride, pad_mode="pad", padding=padding, groups=groups)
    else:
        y = _conv2d_matmul(x, w, stride, padding, groups)
    return y if b is None else ops.bias_add(y, b)


def conv3d(x: Tensor, w: Tensor, b: Tensor | None, padding=(0, 0, 0)) -> Tensor:
    """3D convolution (stride 1). Off the fast native path, a temporal kernel (kt, kh, kw) runs as kt 2D convolutions
    over frame-shifted inputs summed: frames fold into the batch, so it reuses conv2d's fast path."""
    if native_conv_is_fast():
        y = ops.conv3d(x, w, None, pad_mode="pad", padding=tuple(padding))
        return y if b is None else ops.bias_add(y, b)
    bsz, c, f, h, wd = x.shape
    o, _, kt, kh, kw = w.shape
    pt = padding[0]
    if pt:
        x = ops.pad(x, (0, 0, 0, 0, pt, pt))
    fo = x.shape[2] - kt + 1
    out = None
    for k in range(kt):
        xs = x[:, :, k : k + fo].transpose(0, 2, 1, 3, 4).reshape(bsz * fo, c, h, wd)
        term = conv2d(xs, w[:, :, k], None, padding=(padding[1], padding[2]))
        out = term if out is None else out + term
    out = out.reshape(bsz, fo, o, out.shape[-2], out.shape[-1]).transpose(0, 2, 1, 3, 4)
    return out if b is None else ops.bias_add(out, b)


# ----------------------------------------------------------------------------------------------------------------
# Normalisation and activations
# ----------------------------------------------------------------------------------------------------------------


def _upcast(x: Tensor) -> tuple[Tensor, ms.dtype.Type]:
    """Half-precision norms/softmax are computed in fp32 (reductions over thousands of values lose digits in fp16)."""
    dt = x.dtype
    if dt in (ms.float16, ms.bfloat16):
        return x.astype(ms.float32), dt
    return x, dt


def group_norm(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """GroupNorm over (B, C, *) - 4D and 5D; `ops.group_norm` has CPU kernels, `mint.group_norm` does not."""
    x, dt = _upcast(x)
    c = x.shape[1]
    w = weight.astype(ms.float32) if weight is not None else ops.ones(c, ms.float32)
    bb = bias.astype(ms.float32) if bias is not None else ops.zeros(c, ms.float32)
    return ops.group_norm(x, groups, w, bb, eps).astype(dt)


@lru_cache(maxsize=None)
def _layer_norm_primitive(eps: float):
    # The functional ops.layer_norm is LayerNormExt, which has no CPU kernel; the classic primitive has one.
    return ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    x, dt = _upcast(x)
    d = x.shape[-1]
    w = weight.astype(ms.float32) if weight is not None else ops.ones(d, ms.float32)
    bb = bias.astype(ms.float32) if bias is not None else ops.zeros(d, ms.float32)
    return _layer_norm_primitive(float(eps))(x, w, bb)[0].astype(dt)


# Abramowitz & Stegun 7.1.26: erf(z) = 1 - t (a1 + t (a2 + ... a5)) exp(-z^2), t = 1 / (1 + p z), z >= 0;
# absolute error <= 1.5e-7
_ERF_P = 0.3275911
GELU_COMPOSITE_MIN_SIZE = 1 << 17  # below this the composite's ~20 op launches cost more than the slow kernel
_ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)


def _gelu_exact_composite(x: Tensor) -> Tensor:
    """0.5 x (1 + erf(x / sqrt 2)) = relu(x) - |x| / 2 * (1 - erf(|x| / sqrt 2)), from fast same-shape and scalar ops
    only (select, sign, neg and Python-scalar divisions are slow kernels too)."""
    z = ops.abs(x) * 0.7071067811865476
    t = ops.reciprocal(z * _ERF_P + 1.0)
    poly = t * _ERF_A[0] + _ERF_A[1]
    for a in _ERF_A[2:]:
        poly = poly * t + a
    tail = poly * t * ops.exp((z * z) * -1.0)  # 1 - erf(|x| / sqrt 2)
    return ops.relu(x) - (z * 0.7071067811865476) * tail


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    # mint.gelu has no CPU kernel; ops.gelu matches torch's exact GELU to 8e-7 but is slow on CPU
    if approximate == "none" and device_target() == "CPU" and x.size >= GELU_COMPOSITE_MIN_SIZE:
        return _gelu_exact_composite(x)
    return ops.gelu(x, approximate=approximate)


def quick_gelu(x: Tensor) -> Tensor:
    return x * ops.sigmoid(1.702 * x)


def silu(x: Tensor) -> Tensor:
    return ops.silu(x)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    x, dt = _upcast(x)
    return ops.softmax(x, axis=axis).astype(dt)


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------

ATTENTION_CHUNK = int(os.environ.get("MINDPORT_ATTENTION_CHUNK", "4096"))
_BATCH_MATMUL_NT = ops.BatchMatMul(transpose_b=True)


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + mask) v over (B, heads, L, d). Queries are processed in chunks so the score matrix
    stays bounded for long sequences; scores and softmax run in fp32 for half-precision inputs."""
    lq = q.shape[2]
    if lq > ATTENTION_CHUNK:
        parts = [
            attention(q[:, :, s : s + ATTENTION_CHUNK], k, v, scale, None if mask is None else mask[..., s : s + ATTENTION_CHUNK, :])
            for s in range(0, lq, ATTENTION_CHUNK)
        ]
        return ops.cat(parts, axis=2)
    scores = _BATCH_MATMUL_NT(q, k)
    scores, dt = _upcast(scores)
    scores = scores * scale
    if mask is not None:
        scores = scores + mask.astype(scores.dtype)
    probs = ops.softmax(scores, axis=-1).astype(dt)
    return ops.matmul(probs, v)


# ----------------------------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------------------------


def interpolate_nearest(x: Tensor, scale_factor: float | None = None, size=None) -> Tensor:
    """Nearest-neighbour upsampling; `ops.interpolate(mode="nearest")` is bit-exact with torch on CPU."""
    if size is None:
        size = tuple(int(s * scale_factor) for s in x.shape[2:])
    dt = x.dtype
    if dt == ms.bfloat16:
        x = x.astype(ms.float32)
    return ops.interpolate(x, size=tuple(size), mode="nearest").astype(dt)


def avg_pool2d(x: Tensor, kernel: int, stride: int) -> Tensor:
    return ops.avg_pool2d(x, kernel_size=kernel, stride=stride)


def adaptive_avg_pool2d(x: Tensor, size) -> Tensor:
    """Matches torch for shrinking and enlarging on CPU (2e-7)."""
    return ops.adaptive_avg_pool2d(x, size)


def to_tensor(a, dtype=None) -> Tensor:
    if isinstance(a, Tensor):
        return a if dtype is None else a.astype(dtype)
    arr = np.asarray(a)
    t = Tensor(arr)
    return t if dtype is None else t.astype(dtype)


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
