"""FreeNoise on AnimateDiff against diffusers' (enable_free_noise on the same tiny checkpoints, every random draw from
one numpy stream per side, diffusers' window permutations included): frames for more frames than the motion modules
hold, three configs and every weighting scheme and noise type, per-frame prompt dicts, video-to-video, LoRAs, split
inference, fp16; the windowed block alone; disable_free_noise giving the plain frames back; bad arguments; the harness
and the CLI."""

import mindspore as ms
import numpy as np
import PIL.Image
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from helpers import assert_close, rel_l2, run_with_shared_noise  # noqa: E402
from mindport.cli import main  # noqa: E402
from mindport.models.free_noise import FreeNoiseTransformerBlock, frame_weights, window_ranges  # noqa: E402
from mindport.pipelines import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline  # noqa: E402
from parity.adapter import adapter_for, quiet_reference_libraries  # noqa: E402
from parity.fixtures import build, synthetic_image  # noqa: E402

quiet_reference_libraries()


def _pipes(preset, cls="AnimateDiffPipeline", dtype=None):
    root = str(build(preset))
    ref = getattr(diffusers, cls).from_pretrained(root, torch_dtype=torch.float32)
    ours = {"AnimateDiffPipeline": AnimateDiffPipeline,
            "AnimateDiffVideoToVideoPipeline": AnimateDiffVideoToVideoPipeline}[cls].from_pretrained(
        root, mindspore_dtype=dtype)
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


@pytest.fixture(scope="module")
def tiny():
    """animatediff-tiny (motion modules of 8 positions) on both sides."""
    return _pipes("animatediff-tiny")


def _run_both(ref, ours, free_noise, seed=3, disable_reference=True, **call):
    """Frames of both pipelines with FreeNoise enabled alike, each side's random draws from one numpy stream."""
    ref.enable_free_noise(**free_noise)
    ours.enable_free_noise(**free_noise)
    try:
        got, expected, noise = run_with_shared_noise(adapter_for(type(ref).__name__), seed,
                                                     lambda: ref(**call, output_type="np").frames,
                                                     lambda: ours(**call, output_type="np")[0])
    finally:
        ours.disable_free_noise()
        # (diffusers 0.42.1's disable fails without a motion mid block, and after a motion LoRA)
        if disable_reference and hasattr(ref.unet.mid_block, "motion_modules"):
            ref.disable_free_noise()
    return np.asarray(got), np.asarray(expected), noise.runs[0]["draws"]


# two steps: DDIM's only step at one step is t=0, which leaves the latents as they are
CALL = dict(prompt="a cat walking", negative_prompt="blurry", num_inference_steps=2)


@pytest.mark.parametrize("scheme", ["flat", "pyramid", "delayed_reverse_sawtooth"])
def test_frames_match_diffusers_every_weighting_scheme(tiny, scheme):
    """13 frames (motion modules of 8) at 8x16, windows of 8 every 3 plus the tail window, shuffled context noise
    (the shuffles drawn on both sides: latents, then one permutation per window)."""
    got, expected, draws = _run_both(*tiny, dict(context_length=8, context_stride=3, weighting_scheme=scheme),
                                     num_frames=13, height=16, width=8, **CALL)
    assert got.shape == expected.shape == (1, 13, 16, 8, 3)
    assert_close(got, expected, rel_l2=1e-4, where=f"FreeNoise {scheme}")
    assert [d["shape"] for d in draws] == [[1, 4, 13, 8, 4], [3], [3]]  # frames 8-10 and 11-12 refilled


@pytest.mark.parametrize("preset, free_noise, call", [
    # three levels, two motion layers per block, 6 positions, DDIM eta 0.5 (its draw shared too): 11 frames of
    # 40x24, odd windows of 5 every 4 (tail), tiled context noise
    ("animatediff-tiny-3level", dict(context_length=5, context_stride=4, weighting_scheme="pyramid",
                                     noise_type="repeat_context"),
     dict(num_frames=11, height=24, width=40, eta=0.5, guidance_scale=6.0)),
    # no motion mid block, 24 positions: 15 frames of 8x16 in windows of 6 every 6 (then the tail), random noise,
    # a prompt per frame range and a negative prompt dict, interpolated
    ("animatediff-tiny-nomid", dict(context_length=6, context_stride=6, weighting_scheme="flat", noise_type="random"),
     dict(num_frames=15, height=16, width=8, prompt={0: "a cat", 7: "a dog at night", 12: "the cat"},
          negative_prompt={0: "blurry", 10: "static"})),
])
def test_frames_match_diffusers_other_configs(preset, free_noise, call):
    got, expected, _ = _run_both(*_pipes(preset), free_noise, **{**CALL, **call})
    assert got.shape == expected.shape == (1, call["num_frames"], call["height"], call["width"], 3)
    assert_close(got, expected, rel_l2=1e-4, where=f"FreeNoise {preset}")


def test_noise_types_against_diffusers(tiny):
    """The initial noise itself: shuffle_context refills frames 8.. with shuffles of earlier frames, repeat_context
    tiles `latents` given with context_length frames (and, as diffusers, keeps drawn noise as drawn)."""
    ref, ours = tiny
    adapter = adapter_for("AnimateDiffPipeline")
    for noise_type, given in (("shuffle_context", None), ("repeat_context", None), ("repeat_context", 8),
                              ("random", None)):
        ref.enable_free_noise(context_length=8, context_stride=2, noise_type=noise_type)
        ours.enable_free_noise(context_length=8, context_stride=2, noise_type=noise_type)
        lat = None if given is None else np.random.default_rng(1).standard_normal((1, 4, given, 3, 5), np.float32)
        got, expected, noise = run_with_shared_noise(
            adapter, 7,
            lambda: ref.prepare_latents(1, 4, 13, 6, 10, torch.float32, "cpu", None,
                                        None if lat is None else torch.from_numpy(lat.copy())),
            lambda: ours.prepare_latents(1, 4, 13, 6, 10, ms.float32, None, lat).asnumpy())
        np.testing.assert_array_equal(got, expected.numpy())
        if noise_type == "shuffle_context":  # frames 8, 9 are frames 0, 1 in some order; 10, 11 are 2, 3; 12 is 4 or 5
            assert sorted(got[0, 0, 8:10, 0, 0]) == sorted(got[0, 0, 0:2, 0, 0])
            assert sorted(got[0, 0, 10:12, 0, 0]) == sorted(got[0, 0, 2:4, 0, 0])
            assert [d["shape"] for d in noise.runs[0]["draws"]] == [[1, 4, 13, 3, 5], [2], [2], [2]]
        if given:
            np.testing.assert_array_equal(got[0, :, 8:], lat[0, :, :5])
    ref.disable_free_noise()
    ours.disable_free_noise()


def test_prompt_interpolation_against_diffusers(tiny):
    """Per-frame embeddings of {frame: prompt} dicts (positive and negative), with the default linear interpolation
    and with a callback; several videos per prompt repeat them; a callback of the wrong shape is refused."""
    from mindspore import ops

    ref, ours = tiny
    prompt, negative = {0: "a cat", 4: "a dog at night", 9: "the cat"}, {0: "blurry", 6: "static"}

    def hold(cat):  # the start prompt until the next one's frame
        return lambda start, end, a, b: cat([a] * (end - start) + [b])

    try:
        for ref_cb, our_cb in ((None, None), (hold(torch.cat), hold(ops.cat))):
            ref.enable_free_noise(context_length=8, prompt_interpolation_callback=ref_cb)
            ours.enable_free_noise(context_length=8, prompt_interpolation_callback=our_cb)
            with torch.no_grad():
                both, ref_negative = ref._encode_prompt_free_noise(prompt, 12, "cpu", 1, True, negative)
            got, got_negative = ours._encode_prompt_free_noise(prompt, 12, 1, True, negative)
            assert tuple(got.shape) == (12, 16, 32)
            assert_close(got, both[12:], rel_l2=1e-5, where="per-frame prompt embeddings")
            assert_close(got_negative, ref_negative, rel_l2=1e-5, where="per-frame negative embeddings")
        two, _ = ours._encode_prompt_free_noise(prompt, 12, 2, False)
        np.testing.assert_array_equal(two.asnumpy(), np.concatenate([got.asnumpy()] * 2))
        ours.enable_free_noise(context_length=8, prompt_interpolation_callback=lambda s, e, a, b: a)
        with pytest.raises(ValueError, match=r"returned shape \(1, 16, 32\) for frames 0..4; expected \(5, 16, 32\)"):
            ours._encode_prompt_free_noise(prompt, 12, 1, False)
    finally:
        ref.disable_free_noise()
        ours.disable_free_noise()


def test_windowed_block_alone_matches_diffusers(tiny):
    """One motion block on (B*H*W, F, C) sequences: 19 frames, every scheme, windows with and without a tail; the
    schemes give different outputs (a wrong weight would show)."""
    ref, ours = tiny
    x = np.random.default_rng(2).standard_normal((6, 19, 64)).astype(np.float32)
    outputs = []
    for length, stride, scheme in ((8, 4, "pyramid"), (8, 4, "delayed_reverse_sawtooth"), (8, 4, "flat"),
                                   (6, 6, "flat"), (7, 3, "pyramid"), (5, 2, "delayed_reverse_sawtooth")):
        ref.enable_free_noise(context_length=length, context_stride=stride, weighting_scheme=scheme)
        ours.enable_free_noise(context_length=length, context_stride=stride, weighting_scheme=scheme)
        r_block = ref.unet.up_blocks[0].motion_modules[0].transformer_blocks[0]
        o_block = ours.unet.up_blocks[0].motion_modules[0].transformer_blocks[0]
        assert isinstance(o_block, FreeNoiseTransformerBlock)
        if length % 2 and scheme == "delayed_reverse_sawtooth":  # diffusers fails there (see frame_weights)
            expected = None
        else:
            with torch.no_grad():
                expected = r_block(torch.from_numpy(x))
        got = o_block(ms.Tensor(x)).asnumpy()
        if expected is not None:
            assert_close(got, expected, rel_l2=1e-5, where=f"block {length}/{stride}/{scheme}")
        outputs.append(got)
    assert min(rel_l2(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1:]) > 1e-3
    ref.disable_free_noise()
    ours.disable_free_noise()


def test_weights_and_windows_follow_diffusers():
    block = diffusers.models.attention.FreeNoiseTransformerBlock(8, 2, 4, context_length=8, context_stride=3)
    for scheme in ("flat", "pyramid", "delayed_reverse_sawtooth"):
        for length in (1, 2, 4, 5, 8, 16):
            if scheme == "delayed_reverse_sawtooth" and length % 2:  # diffusers builds length + 1 weights there
                continue
            assert frame_weights(length, scheme) == pytest.approx(block._get_frame_weights(length, scheme))
    assert frame_weights(5, "delayed_reverse_sawtooth") == [0.01, 0.01, 3, 2, 1]  # diffusers' docstring
    assert window_ranges(13, 8, 3) == block._get_frame_indices(13) + [(5, 13)]
    assert window_ranges(25, 16, 4) == [(0, 16), (4, 20), (8, 24), (9, 25)]
    assert window_ranges(16, 8, 4) == [(0, 8), (4, 12), (8, 16)]


def test_disable_gives_the_plain_frames_and_weights_are_shared(tiny):
    _, ours = tiny
    kw = dict(CALL, num_frames=6, height=16, width=24, output_type="np")
    lat = np.random.default_rng(4).standard_normal((1, 4, 6, 8, 12)).astype(np.float32)
    plain = ours(**kw, latents=lat)[0]
    blocks = ours.unet.down_blocks[0].motion_modules[0].transformer_blocks
    before = blocks[0]
    names = sorted(p.name for p in ours.unet.get_parameters())
    ours.enable_free_noise(context_length=4, context_stride=2)
    assert ours.free_noise_enabled and ours.unet.free_noise_enabled
    windowed = blocks[0]
    assert isinstance(windowed, FreeNoiseTransformerBlock) and windowed.plain is before
    assert windowed.attn1.to_q.weight is before.attn1.to_q.weight and windowed.ff is before.ff  # shared, not copied
    assert sorted(p.name for p in ours.unet.get_parameters()) == names
    assert rel_l2(ours(**kw, latents=lat)[0], plain) > 1e-4  # the windows change the frames
    ours.disable_free_noise()
    assert not ours.free_noise_enabled and blocks[0] is before
    assert sorted(p.name for p in ours.unet.get_parameters()) == names
    np.testing.assert_array_equal(ours(**kw, latents=lat)[0], plain)


def test_video_to_video_with_free_noise():
    """11 input frames (the motion modules hold 8): windows of 8 every 2, strength 0.7, a per-frame prompt."""
    video = [synthetic_image(37, 29, i) for i in range(11)]
    got, expected, _ = _run_both(*_pipes("animatediff-v2v-tiny", "AnimateDiffVideoToVideoPipeline"),
                                 dict(context_length=8, context_stride=2), video=video,
                                 **dict(CALL, prompt={0: "a cat", 6: "a dog"}, num_inference_steps=3), height=16,
                                 width=24, strength=0.7, decode_chunk_size=4)
    assert got.shape == (1, 11, 16, 24, 3)
    assert_close(got, expected, rel_l2=1e-4, where="video-to-video FreeNoise")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_with_loras_against_diffusers():
    """A style and a motion LoRA loaded before FreeNoise is enabled (diffusers can enable it only before loading a
    motion LoRA: its block swap copies state dicts, which peft has renamed)."""
    from parity.lora import tiny_loras

    ref, ours = _pipes("animatediff-tiny")
    style, motion = tiny_loras(build("animatediff-tiny"))
    ref.enable_free_noise(context_length=8, context_stride=2)
    for pipe in (ref, ours):
        pipe.load_lora_weights(str(style), adapter_name="style")
        pipe.load_lora_weights(str(motion), adapter_name="motion")
        pipe.set_adapters(["style", "motion"], [0.8, 1.2])
    got, expected, _ = _run_both(ref, ours, dict(context_length=8, context_stride=2), disable_reference=False,
                                 num_frames=11, height=16, width=8, **CALL)
    assert_close(got, expected, rel_l2=1e-4, where="FreeNoise with LoRAs")


def test_split_inference_against_diffusers():
    """enable_free_noise_split_inference on both sides: the same wrapped module paths, the same frames (and ours
    within float rounding of the unsplit run); FreeNoise still switches through the wrappers."""
    ref, ours = _pipes("animatediff-tiny")
    kw = dict(CALL, num_frames=11, height=16, width=8, output_type="np")
    lat = np.random.default_rng(5).standard_normal((1, 4, 11, 8, 4)).astype(np.float32)
    names = sorted(p.name for p in ours.unet.get_parameters())
    for pipe in (ref, ours):
        pipe.enable_free_noise(context_length=6, context_stride=2)
    whole = ours(**kw, latents=lat)[0]
    for pipe in (ref, ours):
        pipe.enable_free_noise_split_inference(spatial_split_size=40, temporal_split_size=4)
    wrapped = sorted(n for n, _ in ours.unet.cells_and_names() if n.endswith(".module"))
    assert wrapped == sorted(n for n, _ in ref.unet.named_modules() if n.endswith(".module")) and len(wrapped) == 35
    assert sorted(p.name for p in ours.unet.get_parameters()) == names
    got = ours(**kw, latents=lat)[0]
    with torch.no_grad():
        expected = ref(**kw, latents=torch.from_numpy(lat)).frames
    assert_close(got, expected, rel_l2=1e-4, where="FreeNoise split inference")
    assert_close(got, whole, rel_l2=1e-5, where="split vs whole")
    ours.disable_free_noise()
    assert not ours.unet.free_noise_enabled
    with pytest.raises(ValueError, match="enable_free_noise_split_inference: temporal_split_size=0 is not a positive "
                                         "integer"):
        ours.enable_free_noise_split_inference(temporal_split_size=0)


def test_fp16_against_torch_fp32(tiny):
    ref, _ = tiny
    _, ours16 = _pipes("animatediff-tiny", dtype=ms.float16)
    got, expected, _ = _run_both(ref, ours16, dict(context_length=8, context_stride=4), num_frames=10, height=16,
                                 width=8, **CALL)
    assert rel_l2(got, expected) <= 1e-2


@pytest.mark.parametrize("free_noise, message", [
    (dict(context_length=9), r"context_length=9 is not an integer in \[1, 8\] \(the motion modules' "
                             r"motion_max_seq_length=8\)"),
    (dict(context_length=0), r"context_length=0 is not an integer in \[1, 8\]"),
    (dict(context_length=8, context_stride=9), r"context_stride=9 is not an integer in \[1, context_length=8\]"),
    (dict(context_length=4, context_stride=0), r"context_stride=0 is not an integer in \[1, context_length=4\]"),
    (dict(context_length=8, weighting_scheme="triangle"),
     r"unknown weighting_scheme 'triangle'; expected one of \['flat', 'pyramid', 'delayed_reverse_sawtooth'\]"),
    (dict(context_length=8, noise_type="gaussian"),
     r"unknown noise_type 'gaussian'; expected one of \['shuffle_context', 'repeat_context', 'random'\]"),
])
def test_bad_arguments(tiny, free_noise, message):
    _, ours = tiny
    with pytest.raises(ValueError, match=message) as e:
        ours.enable_free_noise(**free_noise)
    assert "\n" not in str(e.value) and not ours.free_noise_enabled
    assert not ours.unet.free_noise_enabled  # nothing swapped


@pytest.mark.parametrize("call, message", [
    (dict(num_frames=7), r"`num_frames`=7 is fewer than FreeNoise's context_length=8"),
    (dict(prompt={2: "a cat"}), r"`prompt` dict frames \[2\]: the first must be 0 and all below num_frames=9"),
    (dict(prompt={0: "a cat", 9: "a dog"}), r"the first must be 0 and all below num_frames=9"),
    (dict(prompt={0: 3}), r"`prompt` dict: entries \[0\] are not int frame index -> str prompt"),
    (dict(prompt=["a cat"]), r"`prompt` with FreeNoise has to be a str or a non-empty \{frame index: str\} dict"),
    (dict(prompt=None, prompt_embeds=np.zeros((1, 16, 32), np.float32)), "`prompt_embeds` / `negative_prompt_embeds` "
                                                                          "are not supported"),
    (dict(latents=np.zeros((1, 4, 5, 8, 8), np.float32)), r"`latents` with FreeNoise has 5 frames; expected "
                                                          r"num_frames=9 \(or, with noise_type='repeat_context'"),
])
def test_bad_calls(tiny, call, message):
    _, ours = tiny
    ours.enable_free_noise(context_length=8, context_stride=4)
    try:
        with pytest.raises(ValueError, match=message):
            ours(**{"prompt": "a cat", "num_frames": 9, "num_inference_steps": 1, "height": 16, "width": 16, **call})
    finally:
        ours.disable_free_noise()


def test_harness_with_free_noise(tmp_path):
    """`run_parity(..., free_noise=...)`: both sides enable it, the per-module comparison and the gates pass."""
    from parity.harness import run_parity

    r = run_parity(build("animatediff-tiny"), tmp_path / "r", steps=2, frames=11, height=16, width=24,
                   free_noise=dict(context_length=8, context_stride=2, weighting_scheme="delayed_reverse_sawtooth"),
                   floor=False, isolate=False, weight_samples=0, log=lambda m: None)
    assert r["passed"] and r["frames"]["rel_l2"] <= 1e-4, r["first_divergence"]
    assert r["settings"]["free_noise"] == dict(context_length=8, context_stride=2, noise_type="shuffle_context",
                                               weighting_scheme="delayed_reverse_sawtooth")
    assert [d["shape"] for d in r["noise"]["runs"][0]["draws"]] == [[1, 4, 11, 8, 12], [2], [2]]
    assert any(".transformer_blocks.0.attn1" in row["module"] for row in r["layers"])


def test_cli(tmp_path, capsys):
    tiny = str(build("animatediff-tiny"))
    out = tmp_path / "long.gif"
    assert main(["generate", tiny, "--prompt", "a cat", "--frames", "11", "--steps", "1", "--height", "16",
                 "--width", "24", "--free-noise", "--context-stride", "3", "--weighting-scheme", "flat",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    gif = PIL.Image.open(out)
    assert gif.n_frames == 11 and gif.size == (24, 16)
    capsys.readouterr()
    for argv, message in (
        ([tiny, "--prompt", "a", "--frames", "11"],
         "`num_frames`=11 exceeds the motion modules' motion_max_seq_length=8"),
        ([tiny, "--prompt", "a", "--context-length", "4"], "--context-length set up FreeNoise: give --free-noise too"),
        ([tiny, "--prompt", "a", "--free-noise", "--context-length", "12"], "context_length=12 is not an integer in"),
        ([str(build("svd-tiny")), "--image", "x.png", "--free-noise"], "StableVideoDiffusionPipeline does not take "
                                                                         "--free-noise"),
    ):
        assert main(["generate", *argv, "--out", str(tmp_path / "x.gif")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert main(["parity", tiny, "--context-stride", "2", "--out", str(tmp_path / "p")]) == 2
    assert "--context-stride set up FreeNoise: give --free-noise too" in capsys.readouterr().err
    assert main(["parity", tiny, "--free-noise", "--context-length", "5", "--weighting-scheme",
                 "delayed_reverse_sawtooth", "--out", str(tmp_path / "p")]) == 2  # diffusers fails there
    assert "cannot run delayed_reverse_sawtooth with an odd context_length (5" in capsys.readouterr().err
    assert main(["parity", str(build("svd-tiny")), "--free-noise", "--out", str(tmp_path / "p")]) == 2
    assert "StableVideoDiffusionPipeline has no FreeNoise" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    assert not (tmp_path / "x.gif").exists()
