"""End-to-end parity of the Stable Video Diffusion pipeline against diffusers, through the `mindport parity` CLI
and its report, on several tiny configs; and a planted mapping bug that parity must catch and locate."""

import json
import shutil

import pytest

from converters.safetensors_io import load_safetensors, save_arrays
from mindport.cli import main
from mindport.loading import convert_checkpoint
from parity.fixtures import build

# (preset, dtype, steps, extra flags): the parity table. fp32 bars: modules 1e-5, frames 1e-4; fp16 frames 1e-2.
# svd-tiny: 2 levels, 32x40 pixels, 3 frames; 3level: three resolution levels, 48x32, 5 frames decoded 2 at a time;
# wide: 64 channels, heads (8, 1), 2 transformer layers, 24x40.
CASES = [
    ("svd-tiny", "fp32", 3, []),
    ("svd-tiny", "fp16", 3, []),
    ("svd-tiny-3level", "fp32", 3, ["--decode-chunk-size", "2", "--weight-samples", "3"]),
    ("svd-tiny-wide", "fp32", 3, ["--weight-samples", "3"]),
]


@pytest.mark.parametrize("preset, dtype, steps, extra", CASES)
def test_parity_cli(preset, dtype, steps, extra, tmp_path, capsys):
    src = build(preset)
    out = tmp_path / "report"
    code = main(["parity", str(src), "--steps", str(steps), "--dtype", dtype, "--out", str(out), *extra])
    report = json.loads((out / "report.json").read_text())
    assert code == 0, capsys.readouterr().out + json.dumps(report["first_divergence"]) + str(report["problems"])
    assert report["passed"] is True and report["first_divergence"] is None
    assert report["settings"]["steps"] == steps >= 3
    assert report["noise"]["mismatches"] == []
    assert [len(r["draws"]) for r in report["noise"]["runs"]] == [2] * 6
    if dtype == "fp32":
        assert report["frames"]["rel_l2"] <= 1e-4
        assert max(r["rel_l2"] for r in report["layers"]) <= 1e-5
    else:
        assert report["frames"]["rel_l2"] <= 1e-2
    comps = {r["component"] for r in report["layers"]}
    assert comps == {"unet", "vae", "image_encoder"}
    assert len(report["layers"]) > 100
    assert report["coverage"]["reference_only"] == [], report["coverage"]["reference_only"][:10]
    assert (out / "report.md").read_text().startswith("# Parity report")
    assert (out / "frames.png").exists()


@pytest.fixture(scope="module")
def converted_tiny(tmp_path_factory):
    dst = tmp_path_factory.mktemp("conv") / "svd"
    convert_checkpoint(build("svd-tiny"), dst, progress=False)
    return dst


@pytest.mark.parametrize("component, a, b", [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"),
    ("vae", "decoder.up_blocks.0.resnets.0.spatial_res_block.conv1.weight",
     "decoder.up_blocks.0.resnets.0.spatial_res_block.conv2.weight"),
])
def test_swapped_weights_fail_and_are_located(converted_tiny, tmp_path, capsys, component, a, b):
    bad = tmp_path / "bad"
    shutil.copytree(converted_tiny, bad)
    f = bad / component / "mindspore_model.safetensors"
    arrays = load_safetensors(f)
    assert arrays[a].shape == arrays[b].shape
    arrays[a], arrays[b] = arrays[b].copy(), arrays[a].copy()
    save_arrays(f, arrays)
    out = tmp_path / "report"
    code = main(["parity", str(build("svd-tiny")), "--converted", str(bad), "--steps", "3", "--out", str(out)])
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    fd = report["first_divergence"]
    assert report["passed"] is False and fd["component"] == component
    module = a.rsplit(".", 2)[0]  # the layer holding the swapped weights, or its parent
    assert fd["module"] in (a.rsplit(".", 1)[0], b.rsplit(".", 1)[0]) or module.startswith(fd["module"]), fd
    assert fd["module"] in capsys.readouterr().out


def test_parity_bad_input(tmp_path, capsys):
    assert main(["parity", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["parity", str(build("svd-tiny")), "--steps", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--steps" in capsys.readouterr().err
