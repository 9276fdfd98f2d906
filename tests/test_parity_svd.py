"""End-to-end parity of the Stable Video Diffusion pipeline against diffusers: a planted mapping bug that parity must
catch and locate (the CLI table of tiny configs is tests/test_parity_cli.py)."""

import json
import shutil

import pytest

from converters.safetensors_io import load_safetensors, save_arrays
from mindport.cli import main
from mindport.loading import convert_checkpoint
from parity.fixtures import build


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


def test_parity_on_a_unet_config_with_null_sample_size(tmp_path, capsys):
    """`UNetSpatioTemporalConditionModel()` saves `"sample_size": null`; parity runs (it used to die with a
    TypeError in the adapter's default settings) and takes the sizes given on the command line."""
    src = tmp_path / "svd"
    shutil.copytree(build("svd-tiny"), src)
    (src / "mindport_fixture.json").unlink()
    cfg_path = src / "unet" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "sample_size": None}))
    out = tmp_path / "report"
    code = main(["parity", str(src), "--frames", "3", "--height", "32", "--width", "40", "--steps", "1", "--no-floor",
                 "--no-isolation", "--weight-samples", "0", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert code == 0, capsys.readouterr().out + json.dumps(report["first_divergence"])
    assert (report["settings"]["frames"], report["settings"]["height"], report["settings"]["width"]) == (3, 32, 40)
