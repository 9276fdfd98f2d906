"""safetensors read/write with numpy only (no torch): memory-mapped reads, streamed one-tensor-at-a-time writes.

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
"__metadata__": {...}}, then the data block. Every header field is validated before any data is touched.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import ConversionError

# safetensors dtype tag -> (numpy storage dtype, bytes per element). BF16 is stored as uint16 and widened on load.
DTYPES = {
    "F64": (np.float64, 8),
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.uint16, 2),
    "I64": (np.int64, 8),
    "I32": (np.int32, 4),
    "I16": (np.int16, 2),
    "I8": (np.int8, 1),
    "U8": (np.uint8, 1),
    "BOOL": (np.bool_, 1),
    # 8-bit floats (fp8 checkpoints): stored as bytes, decoded exactly to float32 on load (see `fp8_to_float32`)
    "F8_E4M3": (np.uint8, 1),
    "F8_E5M2": (np.uint8, 1),
}
FP8_TAGS = ("F8_E4M3", "F8_E5M2")
FLOAT_TAGS = ("F64", "F32", "F16", "BF16") + FP8_TAGS
NUMPY_TO_TAG = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
                np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
MAX_HEADER = 100 * 1024 * 1024


def bf16_to_float32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


def _fp8_table(exp_bits: int, man_bits: int, ieee_specials: bool) -> np.ndarray:
    """float32 value of each of the 256 bit patterns of an 8-bit float (1 sign bit, `exp_bits`, `man_bits`).
    `ieee_specials`: the all-ones exponent holds inf (mantissa 0) and NaN, as in IEEE (E5M2); otherwise (E4M3 "fn",
    finite) only S.1111.111 is NaN and the rest of that exponent are ordinary numbers."""
    bias = (1 << (exp_bits - 1)) - 1
    bits = np.arange(256, dtype=np.int64)
    sign = np.where(bits >> 7, -1.0, 1.0)
    exp = (bits >> man_bits) & ((1 << exp_bits) - 1)
    man = bits & ((1 << man_bits) - 1)
    frac = man / float(1 << man_bits)
    value = np.where(exp == 0, frac * 2.0 ** (1 - bias), (1.0 + frac) * 2.0 ** (exp - bias))  # subnormal / normal
    top = exp == (1 << exp_bits) - 1
    if ieee_specials:
        value = np.where(top & (man == 0), np.inf, np.where(top, np.nan, value))
    else:
        value = np.where(top & (man == (1 << man_bits) - 1), np.nan, value)
    return (sign * value).astype(np.float32)  # every value is exact in float32 (float64 arithmetic above, exact too)


FP8_TABLES = {"F8_E4M3": _fp8_table(4, 3, ieee_specials=False), "F8_E5M2": _fp8_table(5, 2, ieee_specials=True)}


def fp8_to_float32(u8: np.ndarray, tag: str) -> np.ndarray:
    """Decode fp8 bytes (`F8_E4M3` = torch.float8_e4m3fn, `F8_E5M2` = torch.float8_e5m2) to float32, exactly."""
    return FP8_TABLES[tag][np.asarray(u8, dtype=np.uint8)]


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16), as torch does."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    out = ((u + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


@dataclass(frozen=True)
class TensorRef:
    """A tensor inside a file, not yet read. `load()` returns a numpy array (bf16 and fp8 widened to float32)."""

    file: str
    name: str
    dtype: str  # safetensors tag: F32, F16, BF16, ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int
    loader: object = None  # for non-safetensors sources: a callable returning the array
    mapping: "FileMapping | None" = field(default=None, compare=False, repr=False)  # shared by a file's tensors

    def load(self) -> np.ndarray:
        if self.loader is not None:
            return self.loader()
        np_dtype, _ = DTYPES[self.dtype]
        count = int(np.prod(self.shape)) if self.shape else 1
        if count == 0:
            arr = np.zeros(self.shape, dtype=np_dtype)
        else:
            mapping = self.mapping or FileMapping(self.file)
            arr = mapping.array(np_dtype, self.offset, count).reshape(self.shape)
        if self.dtype in FP8_TAGS:
            return fp8_to_float32(arr, self.dtype)
        return bf16_to_float32(arr) if self.dtype == "BF16" else arr


class FileMapping:
    """One read-only memory map of a whole file, opened on first use and shared by the file's tensors (a map per
    tensor cost ~30 us each: a third of a tiny pipeline's read time). Arrays keep the map alive."""

    def __init__(self, path: str):
        self.path, self._map = path, None

    def array(self, np_dtype, offset: int, count: int) -> np.ndarray:
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._map, dtype=np_dtype, count=count, offset=offset)


def read_header(path) -> tuple[dict[str, TensorRef], dict]:
    """Parse and validate a safetensors header. Returns ({name: TensorRef}, metadata)."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: not a safetensors file (only {size} bytes, the 8-byte header length is missing)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise ConversionError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size})")
            raw = f.read(n)
    except OSError as e:
        raise ConversionError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConversionError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: corrupt safetensors header (expected a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ConversionError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    data_start = 8 + n
    data_len = size - data_start
    refs: dict[str, TensorRef] = {}
    spans = []
    mapping = FileMapping(path)
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise ConversionError(f"{path}: corrupt header entry for {name!r} (needs dtype, shape, data_offsets)")
        tag, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if tag not in DTYPES:
            raise ConversionError(f"{path}: tensor {name!r} has unsupported dtype {tag!r}; expected one of {sorted(DTYPES)}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ConversionError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ConversionError(f"{path}: tensor {name!r} has invalid data_offsets {offs!r}")
        begin, end = offs
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[tag][1] if shape else DTYPES[tag][1]
        if not (0 <= begin <= end <= data_len) or end - begin != expected:
            raise ConversionError(
                f"{path}: tensor {name!r} data_offsets {offs} do not fit shape {shape} {tag} "
                f"({expected} bytes) in a data block of {data_len} bytes (truncated or corrupt file)"
            )
        spans.append((begin, end, name))
        refs[name] = TensorRef(path, name, tag, tuple(shape), data_start + begin, end - begin, mapping=mapping)
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ConversionError(f"{path}: tensors {n0!r} and {n1!r} overlap in the data block (corrupt file)")
    return refs, meta


@dataclass(frozen=True)
class RawSpan:
    """Bytes to copy unchanged from another file (a tensor whose dtype, shape and layout stay as they are)."""

    file: str
    offset: int
    nbytes: int


COPY_PIECE = 256 << 20


def _copy_span(span: RawSpan, out_fd: int, before_copy=None) -> None:
    """Copy a byte range file-to-file in the kernel (copy_file_range, else sendfile), never through Python memory,
    in large pieces (small calls are slow); `before_copy(file, end)` may wait until that much of the file is cached."""
    with open(span.file, "rb", buffering=0) as src:
        offset, left = span.offset, span.nbytes
        while left > 0:
            if before_copy is not None:
                before_copy(span.file, offset + min(left, COPY_PIECE))
            try:
                n = os.copy_file_range(src.fileno(), out_fd, min(left, COPY_PIECE), offset)
            except OSError:  # e.g. across file systems on old kernels
                n = os.sendfile(out_fd, src.fileno(), offset, min(left, COPY_PIECE))
            if n <= 0:
                raise ConversionError(f"{span.file}: ends before byte {offset + left} (truncated while converting)")
            offset, left = offset + n, left - n


def write_safetensors(path, entries, metadata: dict | None = None, before_copy=None) -> None:
    """Stream tensors to `path`. `entries`: list of (name, shape, tag, produce) where `produce()` returns the array,
    or a RawSpan to copy unchanged (`before_copy`: see `_copy_span`). The header is written from the shapes first; each array is then produced,
    written and dropped in turn, so peak memory is one tensor, not the model."""
    header = {}
    offset = 0
    for name, shape, tag, _ in entries:
        if tag not in DTYPES:
            raise ConversionError(f"{path}: cannot store tensor {name!r} as {tag!r}; expected one of {sorted(DTYPES)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[tag][1] if shape else DTYPES[tag][1]
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data block to 8 bytes
    with open(path, "wb", buffering=0) as f:  # unbuffered: raw copies write through the same descriptor
        _write_all(f, struct.pack("<Q", len(raw)) + raw)
        pending = None  # consecutive raw spans of one file are copied in one call (small calls are slow)
        for name, shape, tag, produce in entries:
            arr = produce()
            if isinstance(arr, RawSpan):
                if pending is not None and pending.file == arr.file and pending.offset + pending.nbytes == arr.offset:
                    pending = RawSpan(arr.file, pending.offset, pending.nbytes + arr.nbytes)
                    continue
                if pending is not None:
                    _copy_span(pending, f.fileno(), before_copy)
                pending = arr
                continue
            if pending is not None:
                _copy_span(pending, f.fileno(), before_copy)
                pending = None
            if tuple(arr.shape) != tuple(shape):
                raise ConversionError(f"{path}: tensor {name!r} produced shape {tuple(arr.shape)}, expected {tuple(shape)}")
            data = float32_to_bf16(arr) if tag == "BF16" else np.ascontiguousarray(arr, dtype=DTYPES[tag][0])
            _write_all(f, memoryview(data.reshape(-1)).cast("B"))
            del arr, data
        if pending is not None:
            _copy_span(pending, f.fileno(), before_copy)


def _write_all(f, data) -> None:
    view = memoryview(data)
    while view:  # an unbuffered write may be partial
        view = view[f.write(view):]


def save_arrays(path, arrays: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Convenience: write a dict of in-memory arrays."""
    entries = []
    for name, arr in arrays.items():
        tag = NUMPY_TO_TAG.get(np.dtype(arr.dtype))
        if tag is None:
            raise ConversionError(f"{path}: cannot store tensor {name!r} of dtype {arr.dtype}")
        entries.append((name, tuple(arr.shape), tag, (lambda a=arr: a)))
    write_safetensors(path, entries, metadata)


def load_safetensors(path) -> dict[str, np.ndarray]:
    refs, _ = read_header(path)
    return {k: np.array(r.load()) for k, r in refs.items()}
