"""End-to-end parity of every registered pipeline against diffusers, through the `mindport parity` CLI and its
report, on tiny configs: one table (preset x dtype), one test.

fp32 bars: modules 1e-5, frames 1e-4; fp16 frames 1e-2. Presets (declared in parity/<adapter>.py):
- svd-tiny: 2 levels, 32x40 pixels, 3 frames; -3level: three levels, 48x32, 5 frames decoded 2 at a time; -wide: 64
  channels, heads (8, 1), 2 transformer layers, 24x40;
- animatediff-tiny: 2 levels, conv proj_in, 4 frames; -3level: linear proj_in, heads (1, 2, 4) in time, 6 frames =
  motion_max_seq_length, latents 6x10, DDIM eta 0.5 (a variance draw per step), decoded 4 frames at a time; -nomid:
  an adapter without a motion mid block, 8 heads in time, a one-level VAE;
- i2vgen-xl-tiny: 16x24 pixels, 3 frames, latents 8x12 (the context pool enlarges), guidance 9; -large: 40x24 pixels =
  latents (the pool shrinks the height, enlarges the width); -3level: 10x14 latents, 5 frames, eta 0.5, decoded 2
  frames at a time. The last two take minutes on a shared 2-core CPU: marked slow.
"""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from converters import registry  # noqa: E402
from mindport.cli import main  # noqa: E402
from parity.adapter import adapter_for  # noqa: E402
from parity.fixtures import build  # noqa: E402

slow = pytest.mark.slow
# (preset, dtype, extra flags, random draws per run)
CASES = [
    ("svd-tiny", "fp32", [], 2),
    # a blend factor in the weight check: in fp16 its perturbation must still move its module's output
    ("svd-tiny", "fp16", ["--weight-tensor", "unet.mid_block.resnets.0.time_mixer.mix_factor"], 2),
    ("svd-tiny-3level", "fp32", ["--decode-chunk-size", "2", "--weight-samples", "3"], 2),
    ("svd-tiny-wide", "fp32", ["--weight-samples", "3"], 2),
    ("animatediff-tiny", "fp32", ["--weight-samples", "4"], 1),
    ("animatediff-tiny", "fp16", ["--weight-samples", "4"], 1),
    ("animatediff-tiny-3level", "fp32", ["--weight-samples", "4"], 4),
    ("animatediff-tiny-nomid", "fp32", ["--weight-samples", "4"], 1),
    ("i2vgen-xl-tiny", "fp32", ["--weight-samples", "4"], 2),
    ("i2vgen-xl-tiny", "fp16", ["--weight-samples", "4"], 2),
    pytest.param("i2vgen-xl-tiny-large", "fp32", ["--weight-samples", "4"], 2, marks=slow),
    pytest.param("i2vgen-xl-tiny-3level", "fp32", ["--weight-samples", "4"], 5, marks=slow),
]
STEPS = 3


def pipeline_specific(pipeline: str, report: dict) -> None:
    modules = {(r["component"], r["module"]): r for r in report["layers"]}
    if pipeline == "AnimateDiffPipeline":
        assert ("unet", "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2") in modules
    if pipeline == "I2VGenXLPipeline":
        # the penultimate-layer text path: final_layer_norm runs twice per prompt (inside the encoder, then on the
        # penultimate hidden state), for the prompt and the negative prompt
        assert modules[("text_encoder", "final_layer_norm")]["calls"] == 4


@pytest.mark.parametrize("preset, dtype, extra, draws", CASES)
def test_parity_cli(preset, dtype, extra, draws, tmp_path, capsys):
    row = registry.pipeline_for_fixture(preset)
    out = tmp_path / "report"
    code = main(["parity", str(build(preset)), "--steps", str(STEPS), "--dtype", dtype, "--out", str(out), *extra])
    report = json.loads((out / "report.json").read_text())
    assert code == 0, capsys.readouterr().out + json.dumps(report["first_divergence"]) + str(report["problems"])
    assert report["passed"] is True and report["first_divergence"] is None
    declared = adapter_for(row.name).presets[preset]["run"]
    assert {k: report["settings"][k] for k in declared} == declared, "the run is the one the preset declares"
    assert report["settings"]["steps"] == STEPS
    assert report["noise"]["mismatches"] == []
    assert [len(r["draws"]) for r in report["noise"]["runs"]] == [draws] * 6
    if dtype == "fp32":
        assert report["frames"]["rel_l2"] <= 1e-4
        assert max(r["rel_l2"] for r in report["layers"]) <= 1e-5
    else:
        assert report["frames"]["rel_l2"] <= 1e-2
    assert {r["component"] for r in report["layers"]} == set(row.compared)
    assert len(report["layers"]) > 100
    assert report["coverage"]["reference_only"] == [], report["coverage"]["reference_only"][:10]
    assert (out / "report.md").read_text().startswith("# Parity report")
    assert (out / "frames.png").exists()
    assert report["weight_check"] is None or report["weight_check"]["passed"], report["weight_check"]["mismatches"]
    pipeline_specific(row.name, report)
