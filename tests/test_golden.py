"""Golden references (issue 18): saved with the PyTorch side of a live run, compared later with the MindSpore side
only, in a process where torch and diffusers cannot be imported; the committed goldens of the tiny cases are this
repository's own CI regression checks; JUnit output; mindport.testing.assert_parity."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from converters.safetensors_io import load_safetensors, save_arrays
from mindport.loading import convert_checkpoint
from parity.fixtures import build
from parity.golden import SAMPLE, compare_sampled, sample_positions
from parity.harness import run_parity
from parity.make_reports import GOLDEN_DIR, GOLDENS

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("torch", "functorch", "torchgen", "diffusers", "accelerate", "peft")


@pytest.fixture(scope="module")
def no_torch_site(tmp_path_factory):
    """A site-packages view without torch and diffusers (what an Ascend server without PyTorch has)."""
    import site

    src = Path(next(p for p in site.getsitepackages() if p.endswith("site-packages")))
    view = tmp_path_factory.mktemp("site-no-torch")
    for entry in src.iterdir():
        name = entry.name.split("-")[0].split(".")[0]
        if name not in BLOCKED:
            (view / entry.name).symlink_to(entry.resolve())
    return view


def run_without_torch(view, *argv, code: str | None = None):
    """`python -S -m mindport.cli ARGV` (or `python -S -c CODE`) with only `view` and the project on the path."""
    env = {**os.environ, "PYTHONPATH": f"{view}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-S"] + (["-c", code] if code else ["-m", "mindport.cli", *argv])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_the_view_really_has_no_torch(no_torch_site):
    r = run_without_torch(no_torch_site, code="import importlib.util as u; "
                          "print(u.find_spec('torch'), u.find_spec('diffusers'))")
    assert r.stdout.strip() == "None None", r.stderr


@pytest.fixture(scope="module")
def wan_case(tmp_path_factory):
    """A live wan-t2v-tiny run that saved its golden, its converted checkpoint, and one with a planted swap."""
    tmp = tmp_path_factory.mktemp("golden")
    src = build("wan-t2v-tiny")
    converted = tmp / "converted"
    convert_checkpoint(src, converted, progress=False)
    live = run_parity(src, tmp / "live", converted=converted, steps=2, weight_samples=0, save_golden=tmp / "golden",
                      golden_inputs=("transformer.blocks.1*",), log=lambda m: None)
    bad = tmp / "bad"
    shutil.copytree(converted, bad)
    f = bad / "transformer" / "mindspore_model.safetensors"
    arrays = load_safetensors(f)
    a, b = "blocks.1.attn1.to_q.weight", "blocks.1.attn1.to_k.weight"
    arrays[a], arrays[b] = arrays[b].copy(), arrays[a].copy()
    save_arrays(f, arrays)
    return tmp, live, converted, bad


def test_golden_verdict_equals_live(wan_case):
    tmp, live, converted, _ = wan_case
    g = live["golden"]
    assert g["bytes"] < g["full_capture_bytes"] and (tmp / "golden" / "golden.json").exists()
    gold = run_parity(None, tmp / "from-golden", converted=converted, golden=tmp / "golden", log=lambda m: None)
    assert gold["passed"] == live["passed"] is True
    assert [(x["name"], x["passed"]) for x in gold["gates"]] == [(x["name"], x["passed"]) for x in live["gates"]]
    assert {(x["component"], x["module"]) for x in gold["layers"]} == {(x["component"], x["module"])
                                                                       for x in live["layers"]}
    assert gold["frames"]["rel_l2"] == pytest.approx(live["frames"]["rel_l2"], rel=1e-6)
    assert gold["steps"]["blocks"] == live["steps"]["blocks"]
    assert gold["settings"]["golden"] and "--golden-inputs" in gold["settings"]["isolation"]
    assert gold["isolation"]["passed"] and gold["isolation"]["isolated"] > 20
    # whole-stored outputs give the live numbers; sampled ones are estimates of the same size
    live_rows = {(x["component"], x["module"]): x["rel_l2"] for x in live["layers"]}
    for x in gold["layers"]:
        assert x["rel_l2"] <= 10 * live_rows[(x["component"], x["module"])] + 1e-7


def test_without_torch_pass_and_planted_swap(wan_case, no_torch_site, tmp_path):
    tmp, _, converted, bad = wan_case
    ok = run_without_torch(no_torch_site, "parity", "--golden", str(tmp / "golden"), "--converted", str(converted),
                           "--out", str(tmp_path / "ok"), "--junit-xml", str(tmp_path / "ok.xml"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "parity PASSED" in ok.stdout
    suite = ET.parse(tmp_path / "ok.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) > 100 and suite.get("failures") == "0"
    fail = run_without_torch(no_torch_site, "parity", "--golden", str(tmp / "golden"), "--converted", str(bad),
                             "--out", str(tmp_path / "bad"), "--junit-xml", str(tmp_path / "bad.xml"))
    assert fail.returncode == 1, fail.stderr[-2000:]
    assert "first divergence: transformer.blocks.1.attn1" in fail.stdout, fail.stdout
    # teacher forcing of the modules saved with --golden-inputs, still without torch
    assert "isolation: transformer.blocks.1.attn1.to_q introduces" in fail.stdout, fail.stdout
    failures = [c for c in ET.parse(tmp_path / "bad.xml").getroot().iter("testcase") if c.find("failure") is not None]
    assert any(c.get("name").startswith("blocks.1.attn1") for c in failures)


def test_assert_parity(wan_case):
    from mindport.testing import assert_parity

    tmp, _, converted, bad = wan_case
    assert assert_parity(tmp / "golden", converted)["passed"]
    with pytest.raises(AssertionError, match=r"first diverging module transformer\.blocks\.1\.attn1"):
        assert_parity(tmp / "golden", bad)
    with pytest.raises(AssertionError, match="frames rel L2"):
        assert_parity(tmp / "golden", converted, frames=1e-12)


@pytest.mark.parametrize("case", [c for c in GOLDENS if (GOLDEN_DIR / c / "golden.json").exists()])
def test_committed_goldens_hold_without_torch(case, no_torch_site, tmp_path):
    """This repository's own CI recipe (docs/ci.md): convert, compare against the committed golden, no PyTorch."""
    converted = tmp_path / "converted"
    convert_checkpoint(build(case), converted, progress=False)
    code = (f"from mindport.testing import assert_parity; "
            f"r = assert_parity({str(GOLDEN_DIR / case)!r}, {str(converted)!r}, junit_xml={str(tmp_path / 'j.xml')!r}); "
            f"print('frames', r['frames']['rel_l2'])")
    r = run_without_torch(no_torch_site, code=code)
    assert r.returncode == 0, (r.stdout[-1000:], r.stderr[-3000:])
    assert float(r.stdout.split("frames")[-1]) <= 1e-4


def test_sampled_comparison():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, 64, 100)).astype(np.float32)
    key = ("transformer", "blocks.0", 0)
    pos = sample_positions(key, ref.size)
    assert np.array_equal(pos, sample_positions(key, ref.size)) and len(pos) <= SAMPLE
    norm = float(np.linalg.norm(ref.astype(np.float64)))
    same = compare_sampled(ref, key, ref.ravel()[pos], norm)
    assert same["rel_l2"] <= 1e-12 and same["sampled"] == len(pos)
    swapped = ref.copy()
    swapped[:, :32], swapped[:, 32:] = ref[:, 32:], ref[:, :32]  # same norm: only the sample sees it
    assert compare_sampled(swapped, key, ref.ravel()[pos], norm)["rel_l2"] > 1.0
    scaled = ref * np.float32(1.001)  # a uniform 0.1% scale: the exact norm gap is the true rel L2
    assert compare_sampled(scaled, key, ref.ravel()[pos], norm)["rel_l2"] == pytest.approx(1e-3, rel=1e-3)


def test_bad_goldens_exit_2(wan_case, tmp_path, capsys):
    from mindport.cli import main

    tmp, _, converted, _ = wan_case
    assert main(["parity", "--golden", str(tmp_path), "--converted", str(converted), "--out", str(tmp_path / "r")]) == 2
    assert "not a golden reference" in capsys.readouterr().err
    other = tmp_path / "v2"
    shutil.copytree(tmp / "golden", other)
    meta = json.loads((other / "golden.json").read_text())
    (other / "golden.json").write_text(json.dumps({**meta, "schema_version": 99}))
    assert main(["parity", "--golden", str(other), "--converted", str(converted), "--out", str(tmp_path / "r")]) == 2
    assert "schema version 99" in capsys.readouterr().err
    assert main(["parity", "--golden", str(tmp / "golden"), "--converted", str(converted), "--frames", "9",
                 "--out", str(tmp_path / "r")]) == 2
    assert "--frames 9 (golden: 5)" in capsys.readouterr().err
    assert main(["parity", "--golden", str(tmp / "golden"), "--out", str(tmp_path / "r")]) == 2
    assert "needs --converted" in capsys.readouterr().err
