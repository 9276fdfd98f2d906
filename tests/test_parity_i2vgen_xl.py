"""End-to-end parity of the I2VGen-XL pipeline (text + image -> video) against diffusers, through the `mindport
parity` CLI and its report, on tiny configs; and a planted mapping bug that parity must catch and locate.

Every random draw of both sides goes through the shared noise source: the VAE posterior sample, the initial
latents and, with eta > 0, one DDIM variance draw per step."""

import json
import shutil

import pytest

from converters.safetensors_io import load_safetensors, save_arrays
from mindport.cli import main
from mindport.loading import convert_checkpoint
from parity.fixtures import build

# (preset, dtype, steps, draws per run): the parity table. fp32 bars: modules 1e-5, frames 1e-4; fp16 frames 1e-2.
# i2vgen-xl-tiny: 16x24 pixels (non-square), 3 frames, latents 8x12 (the context pool enlarges), guidance 9;
# -large: 40x24 pixels = latents (the pool shrinks the height, enlarges the width), 2 frames;
# -3level: three UNet levels, 40x56 pixels -> 10x14 latents (not divisible by 4), 5 frames, eta 0.5 (a variance
# draw per step), decoded 2 frames at a time. The last two take minutes on a shared 2-core CPU: marked slow.
CASES = [
    ("i2vgen-xl-tiny", "fp32", 3, 2),
    ("i2vgen-xl-tiny", "fp16", 3, 2),
    pytest.param("i2vgen-xl-tiny-large", "fp32", 3, 2, marks=pytest.mark.slow),
    pytest.param("i2vgen-xl-tiny-3level", "fp32", 3, 5, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("preset, dtype, steps, draws", CASES)
def test_parity_cli(preset, dtype, steps, draws, tmp_path, capsys):
    src = build(preset)
    out = tmp_path / "report"
    code = main(["parity", str(src), "--steps", str(steps), "--dtype", dtype, "--weight-samples", "4", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert code == 0, capsys.readouterr().out + json.dumps(report["first_divergence"]) + str(report["problems"])
    assert report["passed"] is True and report["first_divergence"] is None
    assert report["settings"]["steps"] == steps >= 3
    assert report["noise"]["mismatches"] == []
    assert [len(r["draws"]) for r in report["noise"]["runs"]] == [draws] * 6
    if dtype == "fp32":
        assert report["frames"]["rel_l2"] <= 1e-4
        assert max(r["rel_l2"] for r in report["layers"]) <= 1e-5
    else:
        assert report["frames"]["rel_l2"] <= 1e-2
    assert {r["component"] for r in report["layers"]} == {"unet", "vae", "text_encoder", "image_encoder"}
    assert len(report["layers"]) > 300
    assert report["coverage"]["reference_only"] == [], report["coverage"]["reference_only"][:10]
    # the penultimate-layer text path: final_layer_norm runs twice per prompt (inside the encoder, then on the
    # penultimate hidden state), for the prompt and the negative prompt
    (norm,) = [r for r in report["layers"] if (r["component"], r["module"]) == ("text_encoder", "final_layer_norm")]
    assert norm["calls"] == 4


@pytest.fixture(scope="module")
def converted_tiny(tmp_path_factory):
    dst = tmp_path_factory.mktemp("conv") / "i2vgen"
    convert_checkpoint(build("i2vgen-xl-tiny"), dst, progress=False)
    return dst


@pytest.mark.slow
def test_planted_swap_is_caught_and_located(converted_tiny, tmp_path):
    """Swap two same-shaped tensors of a temporal convolution in the converted UNet: parity fails (exit 1) and the
    first divergence names that temporal conv stage."""
    bad = tmp_path / "bad"
    shutil.copytree(converted_tiny, bad)
    (weights,) = list((bad / "unet").glob("*.safetensors"))
    arrays = load_safetensors(weights)
    a, b = "down_blocks.0.temp_convs.0.conv2.3.weight", "down_blocks.0.temp_convs.0.conv3.3.weight"
    arrays[a], arrays[b] = arrays[b], arrays[a]
    save_arrays(weights, arrays)
    out = tmp_path / "report"
    code = main(["parity", str(build("i2vgen-xl-tiny")), "--converted", str(bad), "--steps", "3", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert code == 1 and report["passed"] is False
    first = report["first_divergence"]
    assert first["component"] == "unet" and first["module"].startswith("down_blocks.0.temp_convs.0.conv2"), first
