"""The numpy safetensors reader/writer: round trips against the `safetensors` package, and a fuzzed header reader
that either parses or raises ConversionError — never another exception, never a read outside the file."""

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters.errors import ConversionError
from converters.safetensors_io import bf16_to_float32, float32_to_bf16, load_safetensors, read_header, save_arrays


def test_round_trip_against_safetensors_package(tmp_path, rng):
    from safetensors.numpy import load_file, save_file

    arrays = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
              "c": rng.standard_normal((2, 1, 3)).astype(np.float16), "empty": np.zeros((0, 3), np.float32),
              "scalar": np.array(2.5, np.float32)}
    save_arrays(tmp_path / "ours.safetensors", arrays)
    theirs = load_file(str(tmp_path / "ours.safetensors"))
    save_file(arrays, str(tmp_path / "theirs.safetensors"))
    ours = load_safetensors(tmp_path / "theirs.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(theirs[k], v)
        np.testing.assert_array_equal(ours[k], v)
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape


def test_tensors_of_a_file_share_one_read_only_map(tmp_path, rng):
    arrays = {f"t{i}": rng.standard_normal((3, i + 1)).astype(np.float32) for i in range(4)}
    save_arrays(tmp_path / "m.safetensors", arrays)
    refs, _ = read_header(tmp_path / "m.safetensors")
    assert len({id(r.mapping) for r in refs.values()}) == 1
    loaded = {k: r.load() for k, r in refs.items()}
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)
        assert not loaded[k].flags.writeable  # a view of the file: callers copy before they change anything
    del refs
    np.testing.assert_array_equal(loaded["t3"], arrays["t3"])  # the arrays keep the map alive


def test_bf16_matches_torch_rounding(rng):
    import torch

    x = (rng.standard_normal(10000) * 10.0 ** rng.integers(-8, 8, 10000)).astype(np.float32)
    x[:3] = [np.inf, -np.inf, 0.0]
    ours = float32_to_bf16(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(bf16_to_float32(ours), torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def _file(tmp_path, header_bytes: bytes, data: bytes = b"", declared=None):
    p = tmp_path / "f.safetensors"
    n = len(header_bytes) if declared is None else declared
    p.write_bytes(struct.pack("<Q", n) + header_bytes + data)
    return p


@pytest.mark.parametrize("header, data, needle", [
    (b"{", b"", "not valid JSON"),
    (b"[1, 2]", b"", "expected a JSON object"),
    (json.dumps({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode(), b"\0" * 4, "truncated"),
    (json.dumps({"t": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 2]}}).encode(), b"\0" * 2, "unsupported dtype"),
    (json.dumps({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(), b"\0" * 4, "invalid shape"),
    (json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode(), b"\0" * 12, "overlap"),
])
def test_corrupt_headers_are_named(tmp_path, header, data, needle):
    with pytest.raises(ConversionError, match=needle):
        read_header(_file(tmp_path, header, data))


def test_header_length_beyond_file(tmp_path):
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        read_header(_file(tmp_path, b"{}", declared=10**9))
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ConversionError, match="not a safetensors file"):
        read_header(tmp_path / "short.safetensors")


entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "X"]),
    "shape": st.lists(st.integers(-2, 6), max_size=3),
    "data_offsets": st.lists(st.integers(-4, 80), min_size=0, max_size=3),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.one_of(st.dictionaries(st.text(max_size=5), entry, max_size=4), st.binary(max_size=40)),
       data_len=st.integers(0, 64), declared_delta=st.integers(-3, 3))
def test_fuzzed_headers_parse_or_raise_conversion_error(tmp_path, header, data_len, declared_delta):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = _file(tmp_path, raw, b"\x01" * data_len, declared=max(0, len(raw) + declared_delta))
    try:
        refs, _ = read_header(p)
    except ConversionError:
        return
    size = p.stat().st_size
    for r in refs.values():  # whatever parsed must lie inside the file and load
        assert 0 <= r.offset and r.offset + r.nbytes <= size
        assert r.load().shape == r.shape
