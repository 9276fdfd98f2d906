"""The parity harness on the Wan pipelines: every tiny config passes with its gates and per-module bounds, fp16
against PyTorch fp32 holds its bar, and a same-shape swap planted in a Wan block's converted weights is named."""

import json
import shutil
import subprocess
import sys

import pytest

from converters.safetensors_io import load_safetensors, save_arrays
from mindport.cli import main
from mindport.loading import convert_checkpoint
from parity.fixtures import build
from parity.harness import run_parity

GATES_T2V = {"scheduler", "tokenizer", "guidance_batching", "sampler_step", "noise"}


@pytest.mark.parametrize("preset, gates", [
    ("wan-t2v-tiny", GATES_T2V),
    ("wan-t2v-tiny-varied", GATES_T2V),
    ("wan-i2v-tiny", GATES_T2V | {"image_preprocessing"}),
])
def test_tiny_wan_parity(preset, gates, tmp_path):
    r = run_parity(build(preset), tmp_path / "report", steps=3, weight_samples=6, log=lambda m: None)
    assert r["passed"], (r["first_divergence"], [g for g in r["gates"] if not g["passed"]], r["problems"])
    assert {g["name"] for g in r["gates"]} == gates
    assert r["frames"]["rel_l2"] <= 1e-4
    assert all(x["passed"] for x in r["layers"])
    components = {x["component"] for x in r["layers"]}
    assert {"text_encoder", "transformer", "vae"} <= components
    assert ("image_encoder" in components) == ("i2v" in preset)
    # the transformer runs twice per step (text, negative prompt): both calls of every step compared
    root = [x for x in r["layers"] if x["component"] == "transformer" and x["module"] == "(root)"][0]
    assert root["calls"] == 2 * 3
    assert r["weight_check"]["checked"] == 6 and r["weight_check"]["passed"]
    assert "transformer.blocks.0" in r["steps"]["blocks"]


def test_wan_fp16_against_torch_fp32(tmp_path):
    r = run_parity(build("wan-i2v-tiny"), tmp_path / "report", dtype="fp16", steps=3, floor=False, isolate=False,
                   weight_samples=0, log=lambda m: None)
    assert r["passed"] and r["frames"]["rel_l2"] <= 1e-2, r["frames"]


def test_planted_swap_in_a_wan_block_is_named(tmp_path, capsys):
    src = build("wan-t2v-tiny")
    good = tmp_path / "good"
    convert_checkpoint(src, good, progress=False)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    f = bad / "transformer" / "mindspore_model.safetensors"
    arrays = load_safetensors(f)
    a, b = "blocks.1.attn1.to_q.weight", "blocks.1.attn1.to_k.weight"
    assert arrays[a].shape == arrays[b].shape
    arrays[a], arrays[b] = arrays[b].copy(), arrays[a].copy()
    save_arrays(f, arrays)
    code = main(["parity", str(src), "--converted", str(bad), "--out", str(tmp_path / "report"), "--steps", "2",
                 "--no-floor", "--weight-tensor", f"transformer.{a}"])
    out = capsys.readouterr().out
    assert code == 1
    first = [line for line in out.splitlines() if line.startswith("parity FAILED")][0]
    assert "transformer.blocks.1.attn1" in first, out
    assert "isolation: transformer.blocks.1.attn1" in out, out
    assert f"weight mapping: transformer.{a}" in out, out
    # the first diverging module alone reproduces the error: R/repro/run.py
    assert "repro: transformer.blocks.1.attn1" in out, out
    repro = tmp_path / "report" / "repro"
    run = subprocess.run([sys.executable, str(repro / "run.py")], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads((tmp_path / "report" / "report.json").read_text())["first_divergence"]["rel_l2"]
    ms_line = [line for line in run.stdout.splitlines() if line.startswith("MindSpore")][0]
    assert float(ms_line.rsplit(" ", 1)[-1]) == pytest.approx(measured, rel=0.05), run.stdout
    assert "the weights themselves differ" in run.stdout  # PyTorch on the same (swapped) weights errs the same way
    assert sum(f.stat().st_size for f in repro.iterdir()) < 100_000
