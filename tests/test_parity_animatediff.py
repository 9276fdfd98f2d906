"""AnimateDiff parity beyond the CLI table (tests/test_parity_cli.py): an original-release motion-module file must
give the same frames as its diffusers-format twin."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from parity import animatediff as adapter_module  # noqa: E402
from parity.noise import SharedNoise  # noqa: E402


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

    adapter = adapter_module.ADAPTER
    kwargs = adapter.call_kwargs({**spec["run"], "steps": 3})
    noise = SharedNoise(0)
    undo = adapter.patch_noise(noise)
    try:
        noise.start("torch", "reference")
        ref = RefPipeline.from_pretrained(str(tmp_path / "sd15"), motion_adapter=t_adapter, torch_dtype=torch.float32)
        ref.set_progress_bar_config(disable=True)
        expected = adapter.run_reference(ref, kwargs)
        frames = {}
        for name, make in (("diffusers-format", lambda: MotionAdapter.from_pretrained(str(tmp_path / "adapter"))),
                           ("original .ckpt", lambda: MotionAdapter.from_single_file(
                               tmp_path / "mm_sd_v15.ckpt", motion_num_attention_heads=8, motion_norm_num_groups=4))):
            noise.start("mindspore", name)
            pipe = AnimateDiffPipeline.from_pretrained(str(tmp_path / "sd15"), motion_adapter=make())
            pipe.set_progress_bar_config(disable=True)
            frames[name] = adapter.run_ours(pipe, kwargs)
    finally:
        undo()
    assert noise.mismatches() == []
    np.testing.assert_array_equal(frames["original .ckpt"], frames["diffusers-format"])
    err = np.linalg.norm(frames["original .ckpt"] - expected) / np.linalg.norm(expected)
    assert err <= 1e-4, f"original-format adapter frames vs diffusers: rel L2 {err:.3e}"
