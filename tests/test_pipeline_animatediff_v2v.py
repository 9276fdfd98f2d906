"""AnimateDiffVideoToVideoPipeline against diffusers (two configs, strengths, enforce_inference_steps, fp16), the
harness on it, bad inputs, and `mindport generate --video`."""

import numpy as np
import PIL.Image
import pytest
import torch

from helpers import rel_l2, run_with_shared_noise
from mindport.pipelines import AnimateDiffVideoToVideoPipeline
from parity.adapter import adapter_for, quiet_reference_libraries
from parity.fixtures import build, synthetic_image
from parity.harness import run_parity

quiet_reference_libraries()


def _video(n, w=37, h=29, seed=0):
    return [synthetic_image(w, h, seed + i) for i in range(n)]


def _run_both(preset, dtype=None, seed=5, **kw):
    """Frames of both pipelines with every random draw from one numpy stream per side (the harness's noise)."""
    import diffusers

    root = build(preset)
    adapter = adapter_for("AnimateDiffVideoToVideoPipeline")
    ref = diffusers.AnimateDiffVideoToVideoPipeline.from_pretrained(str(root), torch_dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    ours = AnimateDiffVideoToVideoPipeline.from_pretrained(str(root), mindspore_dtype=dtype)
    ours.set_progress_bar_config(disable=True)
    got, expected, _ = run_with_shared_noise(adapter, seed, lambda: ref(**kw, output_type="np").frames,
                                             lambda: ours(**kw, output_type="np")[0])
    return np.asarray(got), np.asarray(expected)


@pytest.mark.parametrize("preset, kw", [
    ("animatediff-v2v-tiny", dict(height=16, width=24, strength=0.7, decode_chunk_size=3, num_inference_steps=3)),
    ("animatediff-v2v-tiny", dict(height=32, width=16, strength=0.5, decode_chunk_size=2, num_inference_steps=4,
                                  enforce_inference_steps=True)),
    ("animatediff-v2v-tiny-3level", dict(height=24, width=40, strength=1.0, eta=0.5, num_inference_steps=2)),
])
def test_video_to_video_matches_diffusers(preset, kw):
    got, expected = _run_both(preset, video=_video(5), prompt="a cat", negative_prompt="blurry", **kw)
    assert got.shape == expected.shape == (1, 5, kw["height"], kw["width"], 3)
    assert rel_l2(got, expected) <= 1e-4, rel_l2(got, expected)


def test_video_to_video_fp16_against_torch_fp32():
    import mindspore as ms

    got, expected = _run_both("animatediff-v2v-tiny", dtype=ms.float16, video=_video(4), prompt="a cat", height=16,
                              width=24, num_inference_steps=3, strength=0.8)
    assert rel_l2(got, expected) <= 1e-2


def test_harness_on_video_to_video(tmp_path):
    r = run_parity(build("animatediff-v2v-tiny"), tmp_path / "r", steps=3, weight_samples=4, log=lambda m: None)
    assert r["passed"] and r["frames"]["rel_l2"] <= 1e-4, r["first_divergence"]
    draws = [d["who"] for d in r["noise"]["runs"][0]["draws"]]
    assert draws == ["sample", "sample", "prepare_latents"]  # two encoded chunks, then the add-noise draw


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=1.5), "strength"),
    (dict(strength=0.1), "leaves no timestep"),
    (dict(video="clip.mp4"), "`video` has to be"),
    (dict(latents=np.zeros((1, 4, 3, 2, 3), np.float32)), "either `video` or `latents`"),
])
def test_bad_inputs(kwargs, message):
    pipe = AnimateDiffVideoToVideoPipeline.from_pretrained(str(build("animatediff-v2v-tiny")))
    kw = dict(video=_video(3), prompt="a cat", height=16, width=24, num_inference_steps=3)
    with pytest.raises(ValueError, match=message):
        pipe(**{**kw, **kwargs})


def test_generate_video_to_video(tmp_path, capsys):
    from mindport.cli import main
    from mindport.utils import export_to_gif

    src = tmp_path / "in.gif"
    export_to_gif(_video(4, 48, 32), str(src), fps=4)
    out = tmp_path / "out.gif"
    assert main(["generate", str(build("animatediff-v2v-tiny")), "--video", str(src), "--prompt", "a cat",
                 "--strength", "0.6", "--steps", "3", "--height", "16", "--width", "24", "--out", str(out)]) == 0
    gif = PIL.Image.open(out)
    assert gif.n_frames == 4 and gif.size == (24, 16)
    capsys.readouterr()
    assert main(["generate", str(build("animatediff-tiny")), "--video", str(src), "--prompt", "a",
                 "--out", str(tmp_path / "x.gif")]) == 2
    assert "does not take --video" in capsys.readouterr().err
