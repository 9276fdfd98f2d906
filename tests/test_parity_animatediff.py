"""End-to-end parity of the AnimateDiff pipeline against diffusers, through the `mindport parity` CLI and its
report, on tiny configs (prompt + negative prompt, guidance > 1); and an original-release motion-module file that
must give the same frames as its diffusers-format twin."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mindport.cli import main  # noqa: E402
from parity import animatediff as adapter_module  # noqa: E402
from parity.fixtures import build  # noqa: E402
from parity.noise import SharedNoise  # noqa: E402

# (preset, dtype, steps, draws per run): fp32 bars: modules 1e-5, frames 1e-4; fp16 frames 1e-2.
# animatediff-tiny: 2 levels, conv proj_in, 4 frames; 3level: linear proj_in, heads (1, 2, 4) in time, 6 frames =
# motion_max_seq_length, latents 6x10, DDIM eta 0.5 (a variance draw per step), decoded 4 frames at a time;
# nomid: an adapter without a motion mid block (the plain SD mid block), 8 heads in time, a one-level VAE.
CASES = [
    ("animatediff-tiny", "fp32", 3, 1),
    ("animatediff-tiny", "fp16", 3, 1),
    ("animatediff-tiny-3level", "fp32", 3, 4),
    ("animatediff-tiny-nomid", "fp32", 3, 1),
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
    assert {r["component"] for r in report["layers"]} == {"text_encoder", "unet", "vae"}
    modules = {r["module"] for r in report["layers"]}
    assert "down_blocks.0.motion_modules.0.transformer_blocks.0.attn2" in modules
    assert report["coverage"]["reference_only"] == [], report["coverage"]["reference_only"][:10]
    print(f"{preset} {dtype}: frames rel L2 {report['frames']['rel_l2']:.3e}, worst module "
          f"{max(r['rel_l2'] for r in report['layers']):.3e} ({len(report['layers'])} modules)")


def _to_original(state: dict) -> dict:
    """diffusers MotionAdapter names -> the original release's (see tests/test_animatediff_convert.py)."""
    from tests.test_animatediff_convert import to_original

    return to_original(state)


def test_original_motion_module_gives_the_same_frames(tmp_path):
    """SD base + the adapter as an original-release .ckpt (converted by our rows) gives the very frames of SD base +
    the diffusers-format adapter, and both match diffusers' pipeline built from the same parts."""
    from diffusers import AnimateDiffPipeline as RefPipeline
    from diffusers import StableDiffusionPipeline

    from mindport import AnimateDiffPipeline, MotionAdapter

    spec = adapter_module.PRESETS["animatediff-tiny-nomid"]
    comps = adapter_module.make_components(spec, seed=5)
    t_adapter = comps.pop("motion_adapter")
    StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "sd15")
    t_adapter.save_pretrained(tmp_path / "adapter")
    torch.save(_to_original(t_adapter.state_dict()), tmp_path / "mm_sd_v15.ckpt")

    run = spec["run"]
    settings = {"width": run["width"], "height": run["height"], "frames": run["num_frames"], "steps": 3, "source": ""}
    kwargs = adapter_module.call_kwargs(settings)
    kwargs["guidance_scale"] = run["guidance_scale"]
    noise = SharedNoise(0)
    undo = adapter_module.patch_noise(noise)
    try:
        noise.start("torch", "reference")
        ref = RefPipeline.from_pretrained(str(tmp_path / "sd15"), motion_adapter=t_adapter, torch_dtype=torch.float32)
        ref.set_progress_bar_config(disable=True)
        expected = adapter_module.run_reference(ref, kwargs)
        frames = {}
        for name, make in (("diffusers-format", lambda: MotionAdapter.from_pretrained(str(tmp_path / "adapter"))),
                           ("original .ckpt", lambda: MotionAdapter.from_single_file(
                               tmp_path / "mm_sd_v15.ckpt", motion_num_attention_heads=8, motion_norm_num_groups=4))):
            noise.start("mindspore", name)
            pipe = AnimateDiffPipeline.from_pretrained(str(tmp_path / "sd15"), motion_adapter=make())
            pipe.set_progress_bar_config(disable=True)
            frames[name] = adapter_module.run_ours(pipe, kwargs)
    finally:
        undo()
    assert noise.mismatches() == []
    np.testing.assert_array_equal(frames["original .ckpt"], frames["diffusers-format"])
    err = np.linalg.norm(frames["original .ckpt"] - expected) / np.linalg.norm(expected)
    assert err <= 1e-4, f"original-format adapter frames vs diffusers: rel L2 {err:.3e}"
