"""End-to-end parity of the I2VGen-XL pipeline (text + image -> video) against diffusers: a planted mapping
bug that parity must catch and locate (the CLI table of tiny configs is tests/test_parity_cli.py).

Every random draw of both sides goes through the shared noise source: the VAE posterior sample, the initial
latents and, with eta > 0, one DDIM variance draw per step."""

import json
import shutil

import pytest

from converters.safetensors_io import load_safetensors, save_arrays
from mindport.cli import main
from mindport.loading import convert_checkpoint
from parity.fixtures import build


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
