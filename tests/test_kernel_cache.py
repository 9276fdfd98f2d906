"""The kernel cache never breaks a run (mindport/kernels.py): a truncated, garbage or foreign library under the cache
name is load-tested, rebuilt, and the run's numbers are a clean run's; a failing rebuild warns once and runs
MindSpore's ops; the cache key follows the instruction sets -march=native enables; the kernels' OpenBLAS leaves
NumPy's thread count alone; a missing BLAS warns once.

Each end-to-end case is a fresh process (a library this process has loaded stays loaded whatever the file becomes)
with MINDPORT_CACHE in a temporary folder. They share one compile: the compiler they are given caches its outputs
(the arguments, the source key among them, name the output), so a rebuild costs a copy instead of ~5 s."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mindport import kernels

from helpers import assert_close

CACHING_CXX = f"""#!{sys.executable} -I
# g++ whose compiles are cached by their arguments (less the output path); probes (-dM) go straight to g++
import hashlib, os, shutil, subprocess, sys
args = sys.argv[1:]
if "-dM" in args:
    os.execvp("g++", ["g++", *args])
out = args[args.index("-o") + 1]
stored = os.path.join(os.path.dirname(__file__), hashlib.sha256(" ".join(a for a in args if a != out).encode())
                      .hexdigest()[:16] + ".so")
if not os.path.exists(stored):
    subprocess.run(["g++", *args], check=True)
    shutil.copy(out, stored)
shutil.copy(stored, out)
"""

FAILING_CXX = """#!/bin/sh
# probes (-dM) work, compiles fail
case " $* " in *" -dM "*) exec g++ "$@";; esac
echo "cpu_kernels.cc:1:1: error: this compiler builds nothing" >&2
exit 1
"""

# A small conv and linear through backend (the kernels where they load), plus what the run warned and NumPy's
# OpenBLAS thread count before and after: printed as JSON, outputs saved to argv[1].
RUN = textwrap.dedent("""
    import ctypes, glob, json, os, sys, warnings
    import numpy as np
    from mindspore import Tensor
    from mindport import backend

    def numpy_blas_threads():
        try:
            from threadpoolctl import threadpool_info
            return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"
                    and "numpy" in i["filepath"]][0]
        except (ImportError, IndexError):
            libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libopenblas*"))
            if not libs:
                return None
            lib = ctypes.CDLL(libs[0])
            get = getattr(lib, "openblas_get_num_threads64_", None) or lib.openblas_get_num_threads
            return get()

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 8, 9, 9)).astype(np.float32), rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    h, lw = rng.standard_normal((5, 12)).astype(np.float32), rng.standard_normal((7, 12)).astype(np.float32)
    before = numpy_blas_threads()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # a second round must not warn again
            conv = backend.conv2d(Tensor(x), Tensor(w), None, (1, 1), (1, 1)).asnumpy()
            lin = backend.silu(backend.linear(Tensor(h), Tensor(lw), None)).asnumpy()
    np.savez(sys.argv[1], conv=conv, linear=lin)
    print(json.dumps({"library": backend.kernel_library(), "numpy_threads": [before, numpy_blas_threads()],
                      "warnings": [str(w.message) for w in caught if "mindport" in str(w.message)]}))
""")


def run(tmp: Path, cxx: Path, cache: Path) -> dict:
    """RUN in a fresh process with CXX and MINDPORT_CACHE: its report, and its outputs under "out"."""
    env = {**os.environ, "CXX": str(cxx), "MINDPORT_CACHE": str(cache), "GLOG_v": "3"}
    env.pop("MINDPORT_KERNELS", None)
    out = tmp / f"out-{len(list(tmp.glob('out-*')))}.npz"
    done = subprocess.run([sys.executable, "-c", RUN, str(out)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["out"] = dict(np.load(out))
    return report


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One clean run: the caching compiler, the library it built (path, key) and the run's report."""
    tmp = tmp_path_factory.mktemp("kernel-cache")
    (tmp / "cc").mkdir()
    cxx = executable(tmp / "cc" / "caching-cxx", CACHING_CXX)
    report = run(tmp, cxx, tmp / "clean")
    assert report["library"] and not report["warnings"], report
    lib = Path(report["library"])
    return {"tmp": tmp, "cxx": cxx, "lib": lib, "key": lib.stem.split("-")[-1], "report": report}


def test_clean_run_leaves_numpys_blas_threads_alone(clean):
    before, after = clean["report"]["numpy_threads"]
    if before is None:
        pytest.skip("NumPy has no OpenBLAS of its own here")
    assert before == after, f"the kernels changed NumPy's OpenBLAS thread count from {before} to {after}"
    found = kernels.blas()
    assert found is not None and "scipy_openblas" in Path(found[0]).name


def foreign_library(folder: Path) -> Path:
    """A valid shared library with none of our symbols (what another program might leave under the name)."""
    src = folder / "foreign.cc"
    src.write_text('extern "C" int mp_gelu_v0() { return 7; }\n')
    subprocess.run(["g++", "-shared", "-fPIC", str(src), "-o", str(folder / "foreign.so")], check=True)
    return folder / "foreign.so"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_damaged_cached_library_is_rebuilt_with_the_same_numbers(damage, clean, tmp_path):
    lib = tmp_path / "cache" / "kernels" / clean["lib"].name  # the exact name this machine's runs look for
    lib.parent.mkdir(parents=True)
    good = clean["lib"].read_bytes()
    if damage == "truncated":
        lib.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        lib.write_bytes(np.random.default_rng(1).bytes(len(good)))
    else:
        shutil.copy(foreign_library(tmp_path), lib)
    report = run(clean["tmp"], clean["cxx"], tmp_path / "cache")
    assert report["library"] == str(lib) and not report["warnings"], report
    assert lib.read_bytes() == good, "the rebuilt library replaced the damaged one"
    for name, expected in clean["report"]["out"].items():
        np.testing.assert_array_equal(report["out"][name], expected, err_msg=f"{damage}: {name}")
    assert not [p for p in lib.parent.iterdir() if p != lib], "the rebuild left temporary files behind"


def test_failing_rebuild_warns_once_and_runs_mindspores_ops(clean, tmp_path, monkeypatch):
    cxx = executable(tmp_path / "failing-cxx", FAILING_CXX)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("MINDPORT_CACHE", str(tmp_path / "cache"))
    lib = kernels.library_path()[0]  # this compiler's cache name (the key names the compiler)
    lib.parent.mkdir(parents=True)
    lib.write_bytes(clean["lib"].read_bytes()[:4096])
    report = run(clean["tmp"], cxx, tmp_path / "cache")
    assert report["library"] is None
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "failed its load test" in report["warnings"][0] and "this compiler builds nothing" in report["warnings"][0]
    for name, expected in clean["report"]["out"].items():
        assert_close(report["out"][name], expected, rel_l2=2e-6, where=f"MindSpore ops vs kernels: {name}")


def test_load_test_names_what_is_wrong(clean, tmp_path):
    copy = tmp_path / "ours.so"
    shutil.copy(clean["lib"], copy)
    garbage = tmp_path / "garbage.so"
    garbage.write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    assert "missing symbols mp_build_key" in kernels.load_test(foreign_library(tmp_path), clean["key"], True)
    assert kernels.load_test(garbage, clean["key"], True)  # the child's OSError: not an ELF it can map
    assert "built for key" in kernels.load_test(copy, "0123456789abcdef", True)  # other source or machine
    assert kernels.load_test(copy, clean["key"], True) is None


def test_cache_key_follows_the_native_instruction_sets(monkeypatch):
    flags = list(kernels.KERNEL_FLAGS)
    monkeypatch.setattr(kernels, "native_isa", lambda compiler: "#define __AVX2__ 1\n#define __AVX512F__ 1")
    full = kernels.cache_key("g++", flags)
    assert kernels.cache_key("g++", flags) == full
    monkeypatch.setattr(kernels, "native_isa", lambda compiler: "#define __AVX2__ 1")  # a VM masking AVX-512
    assert kernels.cache_key("g++", flags) != full
    assert kernels.cache_key("clang++", flags) != kernels.cache_key("g++", flags)


def test_native_probe_runs_once_per_process_and_sees_the_instruction_sets():
    first = kernels.native_isa("g++")
    hits = kernels.native_isa.cache_info().hits
    assert kernels.native_isa("g++") is first and kernels.native_isa.cache_info().hits == hits + 1
    assert "__SSE2__" in first  # x86-64's baseline; AVX-512 etc. appear where the CPU offers them


def test_missing_blas_warns_once_and_matrix_products_run_mindspores_ops(monkeypatch, rng):
    from mindspore import Tensor

    from mindport import backend

    def no_blas():
        raise OSError("the scipy-openblas32 package is not installed")

    kernels.kernel_library()  # loaded (with BLAS) before: only the BLAS lookup fails below
    monkeypatch.setattr(kernels, "_find_blas", no_blas)
    kernels.blas.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no BLAS .*linear, attention and convolution run MindSpore's ops") as rec:
            assert kernels.blas() is None and kernels.blas() is None
        assert len([w for w in rec if "no BLAS" in str(w.message)]) == 1
        assert not kernels.has_blas()
        x, w = rng.standard_normal((5, 12)).astype(np.float32), rng.standard_normal((7, 12)).astype(np.float32)
        assert_close(backend.linear(Tensor(x), Tensor(w), None), x.astype(np.float64) @ w.T, rel_l2=1e-6,
                     where="linear without BLAS")
    finally:
        monkeypatch.undo()
        kernels.blas.cache_clear()
