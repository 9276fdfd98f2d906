"""The fused C++ CPU kernels (csrc/cpu_kernels.cc): their build, cache, load test, and calls through ctypes.

backend.py decides where a kernel runs; this module knows how to build, check and call them. It imports nothing of
mindport's (backend -> kernels, never back), and nothing happens at import: the library is built or loaded on the
first kernel call.

Build: the machine's C++ compiler ($CXX, default g++) compiles the source with -march=native into
$MINDPORT_CACHE (default ~/.cache/mindport)/kernels/cpu_kernels-<key>.so. The key hashes the source, the compiler,
the flags and the instruction-set macros -march=native turns on (not the CPU model name: a VM that masks AVX-512
under the same model name would otherwise load a library that dies of SIGILL). The build writes a temporary file,
load-tests it, and renames it into place (os.replace: atomic; concurrent first uses each build, one file wins).

Load test: a cached file may be truncated (a full disk, a killed copy), built elsewhere, or not ours at all. Before
this process loads it, a short subprocess does (a crash there, SIGILL or SIGSEGV, costs the child only), checks the
exported symbols and the key the library was compiled for (mp_build_key), and runs its self-test (a few kernels on
tiny inputs against scalar arithmetic). A library that fails is rebuilt once; if that fails too, one warning, and
backend.py runs MindSpore's ops (same numbers, slower).

BLAS: linear, attention and convolution call sgemm of scipy-openblas32 (the OpenBLAS wheel NumPy and SciPy build
against; its symbols carry a `scipy_` prefix). It is a copy of its own: the kernels set it to one thread (each of
their pool's threads runs its own block) and NumPy's OpenBLAS keeps its thread count. Without it (one warning) those
three kernels are not built and backend.py runs MindSpore's matrix products.

Shapes: each kernel has a rule that checks the input shapes and settings its C++ code relies on and gives the
output's shape; a caller's bug raises ValueError naming the kernel and the shapes before any memory is read (the C++
side checks again where it would read out of bounds, and returns a status that becomes the same ValueError).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor

from . import cache_dir as package_cache_dir

KERNEL_SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.cc"
KERNEL_FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-pthread", "-shared", "-fPIC", "-std=c++17")
CHECK_TIMEOUT_S = 60  # the load test takes ~30 ms; a hung child must not hang the caller


@lru_cache(maxsize=None)
def device_target() -> str:
    return ms.get_context("device_target")


def cache_dir() -> Path:
    return package_cache_dir("kernels")


# ----------------------------------------------------------------------------------------------------------------
# BLAS, compiler probe, cache key
# ----------------------------------------------------------------------------------------------------------------


def _find_blas() -> str:
    """Path of scipy-openblas32's library (what its get_lib_dir() / get_library(fullname=True) name), found without
    importing the package: its import dlopens the library RTLD_GLOBAL, putting a few unprefixed LAPACK helper symbols
    into the process's global namespace; the kernels need only the path and open it RTLD_LOCAL."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        raise OSError("the scipy-openblas32 package is not installed (pip install scipy-openblas32)")
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    found = sorted(lib_dir.glob("libscipy_openblas*.so*"))
    if not found:
        raise OSError(f"no libscipy_openblas*.so in {lib_dir}")
    return str(found[0])


@lru_cache(maxsize=None)
def blas() -> tuple[str, str, str, str] | None:
    """scipy-openblas32 for the matrix-product kernels: (path, sgemm symbol, set-threads symbol, C integer type), or
    None (warned once) when it cannot be loaded. Loaded here (RTLD_LOCAL) to check it is a working library with the
    symbols the kernels call; the kernels dlopen the same file again, which hands back this copy."""
    try:
        path = _find_blas()
        lib = ctypes.CDLL(path)
        for symbol in ("scipy_cblas_sgemm", "scipy_openblas_set_num_threads"):
            getattr(lib, symbol)  # AttributeError when missing
    except (OSError, AttributeError) as e:
        warnings.warn(f"mindport: no BLAS for the CPU kernels ({e}); linear, attention and convolution run "
                      "MindSpore's ops instead (slower)", stacklevel=2)
        return None
    return path, "scipy_cblas_sgemm", "scipy_openblas_set_num_threads", "int"


def _blas_flags() -> list[str]:
    found = blas()
    if found is None:
        return []
    path, gemm, threads, int_type = found
    return [f'-DMP_BLAS_LIB="{path}"', f'-DMP_SGEMM="{gemm}"', f'-DMP_SET_THREADS="{threads}"',
            f"-DMP_BLASINT={int_type}", "-ldl"]


@lru_cache(maxsize=None)
def native_isa(compiler: str) -> str:
    """The predefined macros of `compiler -march=native` (sorted lines): the instruction sets the library's code may
    use (__AVX2__, __AVX512F__, __F16C__, ...) and the compiler's version. What the CPU offers, as seen by the
    compiler, is what matters: a model name says nothing about features a VM masks. Once per process (~20 ms).
    Raises subprocess.CalledProcessError / OSError when the compiler cannot run."""
    done = subprocess.run([compiler, "-march=native", "-dM", "-E", "-x", "c++", os.devnull], check=True,
                          capture_output=True, text=True)
    return "\n".join(sorted(done.stdout.splitlines()))


def cache_key(compiler: str, flags) -> str:
    """16 hex digits naming one build: source, compiler, flags and the native instruction-set macros."""
    text = "\n".join((compiler, *flags, native_isa(compiler)))
    return hashlib.sha256(KERNEL_SOURCE.read_bytes() + text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Build and load test
# ----------------------------------------------------------------------------------------------------------------

# The load test, run by a fresh interpreter (-I -S: no site packages, nothing of the caller's environment's Python
# settings): argv = library, expected build key, expected symbols. Exit status 0 = usable; else stderr says why.
_LOAD_TEST = """
import ctypes, sys
path, key, *symbols = sys.argv[1:]
lib = ctypes.CDLL(path)
missing = [s for s in symbols if not hasattr(lib, s)]
if missing:
    sys.exit("missing symbols " + " ".join(missing))
lib.mp_build_key.restype = ctypes.c_char_p
built = lib.mp_build_key().decode()
if built != key:
    sys.exit(f"built for key {built}, expected {key}")
status = lib.mp_self_test()
if status:
    sys.exit(f"self-test failed at check {status}")
"""

_checked: set[str] = set()  # libraries this process has load-tested (and then loaded: a path is never re-read)
_with_blas: dict[str, bool] = {}  # library path -> built with the matrix-product kernels


def _expected_symbols(with_blas: bool) -> list[str]:
    return ["mp_build_key", "mp_self_test", *(n for n, spec in _SPECS.items() if with_blas or not spec.blas)]


def load_test(lib: Path, key: str, with_blas: bool) -> str | None:
    """None if `lib` loads in a subprocess, exports our symbols, was built for `key` and passes its self-test; else
    a one-line reason."""
    if str(lib) in _checked:
        return None
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _LOAD_TEST, str(lib), key,
                               *_expected_symbols(with_blas)], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"load test did not run: {e}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"load test died (status {done.returncode})"
    _checked.add(str(lib))
    return None


class BuildError(Exception):
    """The compiler (or its probe) failed, or the library it made failed the load test."""


def _first_error(e: Exception) -> str:
    lines = (getattr(e, "stderr", "") or str(e)).strip().splitlines()
    return next((ln for ln in lines if "error" in ln), lines[-1] if lines else str(e)).strip()


def _build(compiler: str, flags: list[str], key: str, lib: Path, with_blas: bool) -> None:
    """Compile into a temporary file next to `lib`, load-test it, rename it into place (atomic)."""
    try:
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
            out = Path(tmp) / lib.name
            subprocess.run([compiler, *flags, f'-DMP_BUILD_KEY="{key}"', str(KERNEL_SOURCE), "-o", str(out)],
                           check=True, capture_output=True, text=True)
            problem = load_test(out, key, with_blas)
            if problem:
                raise BuildError(f"the new library failed its load test: {problem}")
            os.replace(out, lib)
            _checked.add(str(lib))
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(_first_error(e)) from e


def library_path() -> tuple[Path, str, list[str]]:
    """(cache file, key, compile flags) of the library for this source, compiler, BLAS and CPU. Probes the
    compiler (once per process)."""
    compiler = os.environ.get("CXX", "g++")
    flags = [*KERNEL_FLAGS, *_blas_flags()]
    key = cache_key(compiler, flags)
    return cache_dir() / f"cpu_kernels-{key}.so", key, flags


@lru_cache(maxsize=None)
def kernel_library() -> str | None:
    """Path of the load-tested kernel library (built on first use, rebuilt once if the cached file fails its load
    test); None (MindSpore ops are used) off CPU, with MINDPORT_KERNELS=0, or when no working library can be had
    (warned once)."""
    if os.environ.get("MINDPORT_KERNELS") == "0" or device_target() != "CPU":
        return None
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return _fall_back(f"no C++ compiler ({compiler!r}) to build the fused CPU kernels", "install g++ or set CXX")
    try:
        lib, key, flags = library_path()
    except (OSError, subprocess.CalledProcessError) as e:
        return _fall_back(f"building the fused CPU kernels failed ({_first_error(e)})")
    with_blas = blas() is not None
    problem = load_test(lib, key, with_blas) if lib.exists() else None
    if problem or not lib.exists():  # a missing or failing cached file: build (once)
        try:
            _build(compiler, flags, key, lib, with_blas)
        except BuildError as e:
            cached = f"the cached {lib.name} failed its load test ({problem}), and " if problem else ""
            return _fall_back(f"{cached}building the fused CPU kernels failed ({e})")
    _with_blas[str(lib)] = with_blas
    return str(lib)


def _fall_back(why: str, hint: str = "") -> None:
    warnings.warn(f"mindport: {why}; running MindSpore's slower CPU ops instead" + (f" ({hint})" if hint else ""),
                  stacklevel=3)
    return None


def has_blas() -> bool:
    """Whether the matrix-product kernels can run: the library was built with them and BLAS still loads."""
    lib = kernel_library()
    return lib is not None and _with_blas.get(lib, False) and blas() is not None


# ----------------------------------------------------------------------------------------------------------------
# Shape rules: (input shapes..., settings) -> output shape; ValueError where the C++ code would misread memory
# ----------------------------------------------------------------------------------------------------------------


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _elementwise(x, settings):
    return x


def _pair(a, b, settings):
    _require(a == b, "a and b must have the same shape")
    return a


def _group_norm(x, w, b, settings):
    groups = int(settings[0])
    _require(len(x) >= 2 and groups >= 1 and x[1] % groups == 0, f"x must be (N, C, ...) with C divisible by "
             f"groups={groups}")
    _require(w == b == x[1:2], "weight and bias must be (C,)")
    return x


def _channel_norm(x, w, b, settings):
    _require(len(x) >= 2 and w == b == x[1:2], "x must be (B, C, ...) and gamma, bias (C,)")
    return x


def _rms_norm(x, w, settings):
    _require(len(x) >= 1 and w == x[-1:], "weight must be (D,) for x (..., D)")
    return x


def _rotary(x, cos, sin, settings):
    _require(x == cos == sin and len(x) >= 1 and x[-1] % 2 == 0, "x, cos and sin must share one shape (..., 2n)")
    return x


def _layer_norm(x, w, b, settings):
    _require(len(x) >= 1 and w == b == x[-1:], "weight and bias must be (D,) for x (..., D)")
    return x


def _geglu(h, settings):
    _require(len(h) >= 1 and h[-1] % 2 == 0, "h must be (..., 2n)")
    return (*h[:-1], h[-1] // 2)


def _blend(a, b, alpha, settings):
    _require(a == b, "a and b must have the same shape")
    _require(len(alpha) == len(a) and all(n in (1, m) for n, m in zip(alpha, a)),
             "alpha must have a's rank, each axis 1 or a's")
    return a


def _permute(x, perm):
    perm = [int(p) for p in perm]
    _require(1 <= len(x) <= 8 and sorted(perm) == list(range(len(x))), f"perm {perm} must order x's axes (at most 8)")
    return tuple(x[p] for p in perm)


def _upsample(x, factors):
    fh, fw = (int(f) for f in factors)
    _require(len(x) >= 2 and fh >= 1 and fw >= 1, f"x must be (..., H, W), factors {fh, fw} at least 1")
    return (*x[:-2], x[-2] * fh, x[-1] * fw)


def _pool(x, size):
    ho, wo = (int(s) for s in size)
    _require(len(x) >= 2 and ho >= 1 and wo >= 1, f"x must be (..., H, W), output size {ho, wo} at least 1")
    return (*x[:-2], ho, wo)


def _linear(x, w, b, settings):
    _require(len(x) == 2 and len(w) == 2 and x[1] == w[1], "x (M, K) and w (N, K) must share K")
    _require(b == w[:1], "bias must be (N,)")
    return x[0], w[0]


def _attention(q, k, v, *rest):
    *mask, (scale, heads) = rest
    heads = int(heads)
    _require(len(q) == len(k) == len(v) >= 2 and q[:-2] == k[:-2] == v[:-2],
             "q, k, v must be (..., L, heads*d) with the same leading axes")
    _require(k[-1] == q[-1] and k[-2] == v[-2], "k must match q's last axis and v's length")
    _require(heads >= 1 and q[-1] % heads == 0 and v[-1] % heads == 0,
             f"heads={heads} must divide q's and v's last axes")
    _require(scale > 0, "scale must be positive")
    if mask:
        m, groups = mask[0], math.prod(q[:-2])
        _require(len(m) == 4 and m[0] in (1, groups) and m[1] in (1, heads) and m[2] in (1, q[-2]) and m[3] == k[-2],
                 "mask must be (1|groups, 1|heads, 1|Lq, Lk)")
    return (*q[:-1], v[-1])


def _conv(x, w, b, settings):
    st, sh, sw, pt, ph, pw, groups = (int(s) for s in settings[:7])
    _require(len(x) == len(w) == 5, "x must be (B, C, T, H, W) and w (O, C/groups, kt, kh, kw)")
    _require(groups >= 1 and x[1] == w[1] * groups and w[0] % groups == 0,
             f"input channels must be w's times groups={groups}, output channels divisible by groups")
    _require(b == w[:1], "bias must be (O,)")
    _require(min(st, sh, sw) >= 1 and min(pt, ph, pw) >= 0, "strides must be at least 1, padding not negative")
    out = [(n + 2 * p - kk) // s + 1 for n, kk, s, p in zip(x[2:], w[2:], (st, sh, sw), (pt, ph, pw))]
    _require(min(out) >= 1 and min(w[2:]) >= 1, "the kernel must fit the padded input")
    return (x[0], w[0], *out)


class _Spec:
    """A kernel's signature: tensor inputs (the attrs tensor of settings comes after them), settings, shape rule,
    output dtype, whether it calls BLAS, and how many leading inputs it reads as float16 itself (`half`: then a
    float16 first input gives a float16 output written by the kernel, and no whole tensor is widened or rounded)."""

    def __init__(self, inputs: int, settings: int, rule, out_dtype=np.float32, blas: bool = False, half: int = 0):
        self.inputs, self.settings, self.rule, self.out_dtype, self.blas = inputs, settings, rule, out_dtype, blas
        self.half = half


_SPECS = {
    "mp_group_norm": _Spec(3, 2, _group_norm, half=1),  # x, weight, bias; groups, eps
    "mp_layer_norm": _Spec(3, 1, _layer_norm),  # x, weight, bias; eps
    "mp_channel_rms_norm": _Spec(3, 1, _channel_norm),  # x, gamma, bias; has_bias
    "mp_rms_norm": _Spec(2, 2, _rms_norm),  # x, weight; eps, has_weight
    "mp_rotary_pairs": _Spec(3, 0, _rotary),  # x, cos, sin
    "mp_gelu_tanh": _Spec(1, 0, _elementwise),
    "mp_geglu": _Spec(1, 0, _geglu),
    "mp_gelu": _Spec(1, 0, _elementwise),
    "mp_silu": _Spec(1, 0, _elementwise, half=1),
    "mp_add": _Spec(2, 0, _pair, half=2),
    "mp_f16_to_f32": _Spec(1, 0, _elementwise),
    "mp_f32_to_f16": _Spec(1, 0, _elementwise, np.float16),
    "mp_blend": _Spec(3, 0, _blend, half=2),  # a, b, alpha
    "mp_permute": _Spec(1, None, _permute, half=1),  # x; the permutation (as many as x's axes)
    "mp_upsample_nearest": _Spec(1, 2, _upsample, half=1),  # x; fh, fw
    "mp_adaptive_avg_pool": _Spec(1, 2, _pool),  # x; Ho, Wo
    "mp_linear": _Spec(3, 1, _linear, blas=True),  # x, w, bias; has_bias
    "mp_attention": _Spec(3, 2, _attention, blas=True),  # q, k, v; scale, heads
    "mp_attention_masked": _Spec(4, 2, _attention, blas=True),  # q, k, v, mask; scale, heads
    "mp_conv": _Spec(3, 8, _conv, blas=True, half=1),  # x, w, bias; st, sh, sw, pt, ph, pw, groups, has_bias
}

BAD_SHAPE = 2  # the C++ kernels' status for shapes or settings they cannot take (1: no BLAS)
_DTYPE_NAMES = {ms.float16: b"float16", ms.float32: b"float32"}


# ----------------------------------------------------------------------------------------------------------------
# Calls
# ----------------------------------------------------------------------------------------------------------------

_synchronous_launch = False
_synchronize_armed = False


def set_synchronous_launch(synchronous: bool) -> None:
    """backend.configure_cpu_launch reports MindSpore's launch mode: with asynchronous launch a kernel first waits
    for the ops that write its inputs."""
    global _synchronous_launch
    _synchronous_launch = synchronous


def _wait_for_launched_ops() -> None:
    """ms.runtime.synchronize(), called twice the first time: on CPU (2.8) its first call in a process only logs
    "CPU device is not supported" and returns; later calls wait."""
    global _synchronize_armed
    if not _synchronize_armed:
        ms.runtime.synchronize()
        _synchronize_armed = True
    ms.runtime.synchronize()


@lru_cache(maxsize=None)
def _attrs(*values: float) -> Tensor:
    """A kernel's settings as a small float32 tensor (its last input), one per distinct setting."""
    return Tensor(np.array(values or (0.0,), np.float32))


class Kernel:
    """One kernel of the compiled library, called on the tensors' host memory through ctypes: inputs are made
    contiguous, the output is a fresh NumPy buffer wrapped as a Tensor without a copy. Same entry point and
    arguments as MindSpore's aot custom-op interface, without PyNative's launch cost (~90 us per ops.Custom call on
    CPU against ~10 us here; the tiny pipelines make ~1,300 kernel calls per run). The kernels compute in float32,
    and the output is float16 when the first input was (half-precision storage, single-precision arithmetic inside
    each op): the kernels whose spec says `half` read their leading float16 inputs and write the float16 output
    themselves, in runs (a whole-tensor widening and rounding around every activation kernel was a quarter of a
    fp16 SVD run at 576x1024); for the others float16 inputs are widened on the way in (the cast kernel) and the
    output rounded back."""

    def __init__(self, name: str):
        if kernel_library() is None:
            raise RuntimeError(f"mindport kernel {name}: the kernel library is not available on this machine")
        self.name, self.spec = name, _SPECS[name]
        self.fn = getattr(ctypes.CDLL(kernel_library()), name)
        self.fn.restype = ctypes.c_int
        self.converts = name in ("mp_f16_to_f32", "mp_f32_to_f16")
        self.takes = ms.float16 if name == "mp_f16_to_f32" else ms.float32
        self._layouts = {}

    def __call__(self, *inputs: Tensor, settings=()) -> Tensor:
        half = not self.converts and inputs[0].dtype == ms.float16
        keep = self.spec.half if half else 0  # leading float16 inputs the kernel reads (and a float16 output)
        if not self.converts:
            inputs = [kernel("mp_f16_to_f32")(t) if t.dtype == ms.float16 and i >= keep else t
                      for i, t in enumerate(inputs)]
        shapes = tuple(tuple(t.shape) for t in inputs)
        if any(t.dtype != self.takes and not (i < keep and t.dtype == ms.float16) for i, t in enumerate(inputs)):
            raise ValueError(f"mindport kernel {self.name} takes {self.takes} (or float16) tensors, got "
                             f"{[t.dtype for t in inputs]} of shapes {shapes}")
        layout = self._layouts.get((shapes, settings))  # checked on every call above: layouts are cached by shape
        if layout is None:
            layout = self._layouts[shapes, settings] = self._layout(shapes, settings)
        out_shape, n, ndims, dims = layout
        result = Tensor.from_numpy(np.empty(out_shape, np.float16 if keep else self.spec.out_dtype))
        if n:  # else the output is empty: nothing to compute
            inputs = [t if t.is_contiguous() else t.contiguous() for t in inputs]
            if not _synchronous_launch:  # ops launched asynchronously may not have written their outputs yet
                _wait_for_launched_ops()
            ptrs = (ctypes.c_void_p * n)(*[t.data_ptr() for t in inputs], _attrs(*settings).data_ptr(),
                                         result.data_ptr())
            dtypes = None
            if keep:
                names = [_DTYPE_NAMES[t.dtype] for t in inputs] + [b"float32", b"float16"]
                dtypes = (ctypes.c_char_p * n)(*names)
            status = self.fn(n, ptrs, ndims, dims, dtypes, None, None)
            if status == BAD_SHAPE:
                raise ValueError(f"mindport kernel {self.name} rejected input shapes {shapes}, settings {settings}")
            if status:
                raise RuntimeError(f"mindport kernel {self.name} failed (status {status}) on input shapes {shapes}")
        return kernel("mp_f32_to_f16")(result) if half and not keep else result

    def _layout(self, shapes, settings):
        """Checks one set of input shapes and settings; gives the output shape and the ctypes shape arrays (cached:
        shapes repeat). n = 0 when the output is empty."""
        spec = self.spec
        try:
            _require(len(shapes) == spec.inputs, f"takes {spec.inputs} tensors, got {len(shapes)}")
            _require(spec.settings is None or len(settings) == spec.settings,
                     f"takes {spec.settings} settings, got {len(settings)}")
            out_shape = tuple(int(n) for n in spec.rule(*shapes, settings))
            _require(not math.prod(out_shape) or all(math.prod(s) for s in shapes), "an input is empty")
        except ValueError as e:
            raise ValueError(f"mindport kernel {self.name}: {e}; input shapes {shapes}, settings {settings}") from None
        every = [*shapes, (max(1, len(settings)),), out_shape]
        ndims = (ctypes.c_int * len(every))(*[len(s) for s in every])
        rows = [(ctypes.c_int64 * max(1, len(s)))(*s) for s in every]
        dims = (ctypes.POINTER(ctypes.c_int64) * len(every))(*rows)
        dims._rows = rows  # keep the rows alive with the array of pointers to them
        return out_shape, len(every) if math.prod(out_shape) else 0, ndims, dims


@lru_cache(maxsize=None)
def kernel(name: str) -> Kernel:
    """The callable for one kernel of the library (which must be available: check kernel_library() / has_blas())."""
    return Kernel(name)
