"""Planted faults of several kinds, each reported with the right module or gate first: weights swapped, a square
weight transposed, a norm weight scaled (all in a converted checkpoint), a wrong group-norm eps in a port, a wrong
scheduler option; plus the baseline regression mode. Runs on the tiny SVD fixture (one conversion shared)."""

import json
import shutil

import numpy as np
import pytest

from converters.safetensors_io import load_safetensors, save_arrays
from mindport.cli import main
from mindport.loading import convert_checkpoint
from parity.svd import ADAPTER as svd_adapter
from parity.fixtures import build
from parity.harness import run_parity

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dst = tmp_path_factory.mktemp("conv") / "svd"
    convert_checkpoint(build("svd-tiny"), dst, progress=False)
    return dst


def _tamper(converted, tmp_path, component, edit):
    bad = tmp_path / "bad"
    shutil.copytree(converted, bad)
    f = bad / component / "mindspore_model.safetensors"
    arrays = load_safetensors(f)
    edit(arrays)
    save_arrays(f, arrays)
    return bad


def _run(converted, tmp_path, **kw):
    kw = {"steps": 2, "weight_samples": 4, **kw}
    return run_parity(build("svd-tiny"), tmp_path / "report", converted=converted, log=lambda m: None, **kw)


def _isolation_first(report):
    first = report["isolation"]["first"]
    return f"{first['component']}.{first['module']}"


def test_clean_run_has_every_section(converted, tmp_path):
    r = _run(converted, tmp_path)
    assert r["passed"], (r["first_divergence"], [g for g in r["gates"] if not g["passed"]])
    assert {g["name"] for g in r["gates"]} == {"scheduler", "image_preprocessing", "guidance_batching",
                                               "sampler_step", "noise"}
    assert r["isolation"]["isolated"] > 500 and r["isolation"]["not_isolated"] == []
    # the noise floor is measured for (nearly) every module and sets its bound
    floors = [x["floor"] for x in r["layers"] if x["floor"] is not None]
    assert len(floors) > 0.95 * len(r["layers"]) and 0 < np.median(floors) < 1e-5
    assert all(x["bound"] >= 1e-6 for x in r["layers"])
    m = r["steps"]
    assert "unet.down_blocks.0" in m["blocks"] and "unet.mid_block" in m["blocks"]
    assert len(m["rel_l2"]) == 2 and all(v is not None for v in m["rel_l2"][0])
    assert r["weight_check"]["checked"] == 4 and r["weight_check"]["passed"]
    assert [run["label"] for run in r["noise"]["runs"]] == ["plain", "reference", "inputs", "float64", "free-running", "captured"]
    # growth above the run's starting RssAnon: in a test process that already holds freed heap from earlier tests
    # a tiny run may not grow it at all, so only its presence and sign are checked here
    assert r["timings"]["peak_anon_mb"] >= 0 and r["timings"]["peak_rss_mb"] > 0 and r["timings"]["overhead"] > 0


@pytest.mark.parametrize("kind", ["swap", "transpose", "scale_norm"])
def test_converted_checkpoint_fault_is_located(converted, tmp_path, kind):
    a, b = f"{ATTN}.to_q.weight", f"{ATTN}.to_k.weight"
    norm = "up_blocks.1.resnets.0.spatial_res_block.norm2.weight"

    def edit(arrays):
        if kind == "swap":
            arrays[a], arrays[b] = arrays[b].copy(), arrays[a].copy()
        elif kind == "transpose":
            assert arrays[f"{ATTN}.to_v.weight"].shape[0] == arrays[f"{ATTN}.to_v.weight"].shape[1]
            arrays[f"{ATTN}.to_v.weight"] = np.ascontiguousarray(arrays[f"{ATTN}.to_v.weight"].T)
        else:
            arrays[norm] = arrays[norm] * np.float32(1.02)

    r = _run(_tamper(converted, tmp_path, "unet", edit), tmp_path,
             weight_tensors=[f"unet.{a}", f"unet.{b}"] if kind == "swap" else ())
    expected = {"swap": {f"unet.{ATTN}.to_q", f"unet.{ATTN}.to_k"}, "transpose": {f"unet.{ATTN}.to_v"},
                "scale_norm": {f"unet.{norm.rsplit('.', 1)[0]}"}}[kind]
    assert not r["passed"]
    fd = r["first_divergence"]
    assert fd["kind"] == "module" and f"{fd['component']}.{fd['module']}" in expected, fd
    assert _isolation_first(r) in expected, r["isolation"]["blocks"][:3]
    assert all(g["passed"] for g in r["gates"])
    if kind == "swap":  # the perturbation check sees each tensor act in its swapped twin
        moved = {(m["tensor"], m["expected_module"], m["first_moved"]) for m in r["weight_check"]["mismatches"]}
        assert moved == {(a, a.rsplit(".", 1)[0], b.rsplit(".", 1)[0]), (b, b.rsplit(".", 1)[0], a.rsplit(".", 1)[0])}


def test_wrong_group_norm_eps_in_port(converted, tmp_path, monkeypatch):
    """A port that reads GroupNorm eps from the wrong place (1e-5 where the block's config says 1e-6): a change of
    about 1e-5 in relative terms, below the old fixed 1e-5 bar, above 10x the module's noise floor."""
    module = "down_blocks.0.resnets.0.temporal_res_block.norm1"
    load = svd_adapter.load_ours

    def load_with_bug(path, dtype):
        pipe = load(path, dtype)
        cell = dict(pipe.unet.cells_and_names())[module]
        assert cell.eps == 1e-6
        cell.eps = 1e-5
        return pipe

    monkeypatch.setattr(svd_adapter, "load_ours", load_with_bug)
    r = _run(converted, tmp_path)
    assert not r["passed"]
    assert _isolation_first(r) == f"unet.{module}", r["isolation"]["blocks"][:3]
    fd = r["first_divergence"]
    assert f"{fd['component']}.{fd['module']}" == f"unet.{module}", fd


def test_wrong_scheduler_option_fails_the_scheduler_gate(converted, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(converted, bad)
    cfg_path = bad / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["prediction_type"] == "v_prediction"
    cfg["prediction_type"] = "epsilon"
    cfg_path.write_text(json.dumps(cfg))
    r = _run(bad, tmp_path, isolate=False, weight_samples=0)
    assert not r["passed"]
    assert r["first_divergence"] == {"kind": "gate", "gate": "scheduler",
                                     "detail": next(g["detail"] for g in r["gates"] if g["name"] == "scheduler")}
    assert "prediction_type = 'epsilon', reference 'v_prediction'" in r["first_divergence"]["detail"]


def test_baseline_mode(converted, tmp_path, capsys):
    src = str(build("svd-tiny"))
    base = tmp_path / "base"
    quick = ["--steps", "2", "--no-isolation", "--weight-samples", "0"]

    def parity(conv, out, *extra):
        return main(["parity", src, "--converted", str(conv), *quick, "--out", str(tmp_path / out), *extra])

    assert parity(converted, "base") == 0
    assert parity(converted, "same", "--baseline", str(base / "report.json")) == 0
    same = json.loads((tmp_path / "same" / "report.json").read_text())
    assert same["baseline"]["passed"] and same["baseline"]["regressions"] == []
    # one norm weight scaled by 1.0005: that module's error grows far beyond its recorded spread
    norm = "mid_block.resnets.0.spatial_res_block.norm1.weight"
    bad = _tamper(converted, tmp_path, "unet", lambda arrays: arrays.__setitem__(norm, arrays[norm] * np.float32(1.0005)))
    capsys.readouterr()
    assert parity(bad, "worse", "--baseline", str(base / "report.json")) == 1
    worse = json.loads((tmp_path / "worse" / "report.json").read_text())
    assert not worse["baseline"]["passed"]
    assert any(r["module"] == norm.rsplit(".", 1)[0] for r in worse["baseline"]["regressions"])
    assert "regression: unet." in capsys.readouterr().out
    # a baseline recorded with other settings is refused before anything runs (exit 2), naming the setting
    code = main(["parity", src, "--converted", str(converted), "--steps", "3", "--out", str(tmp_path / "x"),
                 "--baseline", str(base / "report.json")])
    assert code == 2 and "steps=2" in capsys.readouterr().err
    assert parity(converted, "y", "--baseline", str(tmp_path / "nope.json")) == 2
    assert "baseline report not found" in capsys.readouterr().err
