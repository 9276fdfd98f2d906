"""bench/graph_mode.py (`make bench-graph`): the graph-friendly rewrites compile under ms.jit and match the ports'
PyNative kernel path, so the recorded comparison stays a comparison of equal computations."""

import importlib.util
import math
import sys
from pathlib import Path


def test_jitted_rewrites_match_the_kernel_path(monkeypatch):
    path = Path(__file__).resolve().parent.parent / "bench" / "graph_mode.py"
    spec = importlib.util.spec_from_file_location("graph_mode", path)
    graph_mode = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "graph_mode", graph_mode)  # ms.jit resolves a function's module by name
    monkeypatch.delenv("MINDPORT_KERNELS", raising=False)  # measure() switches it; restored after the test
    spec.loader.exec_module(graph_mode)
    rows = graph_mode.measure(repeats=1)
    jitted = [r for r in rows if r[1] == "graph-friendly rewrite, ms.jit (AST)"]
    assert len(jitted) == 2, rows
    for block, _, compile_s, steady, diff in jitted:
        assert float(compile_s) > 0 and steady > 0, (block, compile_s, steady)
        assert diff < 1e-5, f"{block}: jitted rewrite differs from the kernel path by {diff:.2e}"
    for block, path_name, _, _, diff in rows:  # every path that ran computes the same block
        assert math.isnan(diff) or diff < 1e-5, f"{block} / {path_name}: {diff:.2e}"
