"""The user-facing AnimateDiff API: the seed snippet on an SD 1.5-like base folder + a motion adapter (fp16 frames
against diffusers fp32), loading a saved AnimateDiffPipeline folder, output types, `latents=`, several videos per
prompt, and argument errors.

Tiny models: the snippet runs with small height / width, 8 of 16 frames and 3 of 50 steps."""

import inspect

import mindspore as ms
import numpy as np
import PIL.Image
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mindport import AnimateDiffPipeline, DDIMScheduler, MotionAdapter  # noqa: E402
from mindport.utils import export_to_gif  # noqa: E402
from parity.animatediff import PRESETS, make_components  # noqa: E402
from parity.fixtures import build  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

SPEC = dict(PRESETS["animatediff-tiny"], adapter=dict(PRESETS["animatediff-tiny"]["adapter"], motion_max_seq_length=16))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """An SD 1.5-like base pipeline folder (StableDiffusionPipeline, UNet2DConditionModel) and a motion adapter
    folder, as on the Hub."""
    root = tmp_path_factory.mktemp("animatediff")
    comps = make_components(SPEC, seed=3)
    adapter = comps.pop("motion_adapter")
    base = diffusers.StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    base.save_pretrained(root / "sd15")
    adapter.save_pretrained(root / "adapter")
    return root / "sd15", root / "adapter"


def test_seed_snippet(folders, tmp_path):
    """The seed's code with only the import line and the paths changed (a tiny model: 16x16 pixels, 8 frames,
    3 steps), then the same latents through diffusers fp32: fp16 frames within 1e-2."""
    base, path_or_id = folders
    adapter = MotionAdapter.from_pretrained(str(path_or_id), mindspore_dtype=ms.float16)
    pipeline = AnimateDiffPipeline.from_pretrained(str(base), motion_adapter=adapter, mindspore_dtype=ms.float16)
    scheduler = DDIMScheduler.from_pretrained(str(base), subfolder="scheduler", clip_sample=False,
                                              timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
    pipeline.scheduler = scheduler
    pipeline.set_progress_bar_config(disable=True)
    output = pipeline(prompt="a cat walking at night", negative_prompt="blurry, static", num_frames=8,
                      guidance_scale=7.5, num_inference_steps=3, generator=np.random.Generator(np.random.PCG64(49)),
                      height=16, width=16)
    frames = output[0][0]
    gif = export_to_gif(frames, str(tmp_path / "animation.gif"))
    assert type(pipeline.unet).__name__ == "UNetMotionModel" and pipeline.unet.dtype == ms.float16
    assert len(frames) == 8 and all(isinstance(f, PIL.Image.Image) and f.size == (16, 16) for f in frames)
    assert PIL.Image.open(gif).n_frames == 8

    # the reference: diffusers from the same folders, fp32, on the latents our generator drew
    t_adapter = diffusers.MotionAdapter.from_pretrained(str(path_or_id))
    ref = diffusers.AnimateDiffPipeline.from_pretrained(str(base), motion_adapter=t_adapter, torch_dtype=torch.float32)
    ref.scheduler = diffusers.DDIMScheduler.from_pretrained(str(base), subfolder="scheduler", clip_sample=False,
                                                            timestep_spacing="linspace", beta_schedule="linear",
                                                            steps_offset=1)
    ref.set_progress_bar_config(disable=True)
    latents = np.random.Generator(np.random.PCG64(49)).standard_normal((1, 4, 8, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = ref(prompt="a cat walking at night", negative_prompt="blurry, static", num_frames=8,
                       guidance_scale=7.5, num_inference_steps=3, latents=torch.from_numpy(latents), height=16,
                       width=16, output_type="np").frames
    ours = np.stack([np.asarray(f, np.float32) / 255 for f in frames])[None]
    assert_close(ours, expected, rel_l2=1e-2, where="seed snippet fp16 (PIL) vs diffusers fp32")


@pytest.fixture(scope="module")
def pipe():
    p = AnimateDiffPipeline.from_pretrained(str(build("animatediff-tiny")))
    p.set_progress_bar_config(disable=True)
    return p


def test_saved_pipeline_folder_loads(pipe):
    assert type(pipe.unet).__name__ == "UNetMotionModel" and type(pipe.motion_adapter).__name__ == "MotionAdapter"
    assert pipe.feature_extractor is None and pipe.image_encoder is None
    assert type(pipe.tokenizer).__name__ in ("CLIPTokenizer", "CLIPTokenizerFast")


def test_output_types_latents_and_videos(pipe):
    kw = dict(prompt="a cat", num_frames=3, num_inference_steps=2, height=16, width=16, guidance_scale=2.0)
    lat = np.random.Generator(np.random.PCG64(1)).standard_normal((1, 4, 3, 8, 8)).astype(np.float32)
    a = pipe(**kw, latents=lat, output_type="np")[0]
    assert isinstance(a, np.ndarray) and a.shape == (1, 3, 16, 16, 3) and 0 <= a.min() and a.max() <= 1
    b = pipe(**kw, latents=ms.Tensor(lat), output_type="np", return_dict=True, decode_chunk_size=2).frames
    np.testing.assert_allclose(b, a, atol=1e-6)  # chunked decoding and tensor latents change nothing
    pil = pipe(**kw, latents=lat)[0]
    assert len(pil) == 1 and len(pil[0]) == 3 and pil[0][0].size == (16, 16)
    np.testing.assert_array_equal(np.asarray(pil[0][1]), (a[0, 1] * 255).round().astype(np.uint8))
    latent = pipe(**kw, latents=lat, output_type="latent")[0]
    assert tuple(latent.shape) == (1, 4, 3, 8, 8)
    two = pipe(**dict(kw, prompt=["a cat", "a dog"]), num_videos_per_prompt=2, output_type="np",
               generator=np.random.default_rng(0))[0]
    assert two.shape == (4, 3, 16, 16, 3)
    seen = []
    pipe(**kw, latents=lat, output_type="latent", callback_on_step_end=lambda p, i, t, d: seen.append((i, int(t), *d)) or {},
         callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert [s[:2] for s in seen] == [(0, int(pipe.scheduler.timesteps[0])), (1, int(pipe.scheduler.timesteps[1]))]


def test_defaults_follow_diffusers():
    ours = inspect.signature(AnimateDiffPipeline.__call__).parameters
    ref = inspect.signature(diffusers.AnimateDiffPipeline.__call__).parameters
    for name in ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "num_videos_per_prompt",
                 "eta", "output_type", "decode_chunk_size", "negative_prompt", "clip_skip"):
        assert ours[name].default == ref[name].default, name
    assert ours["return_dict"].default is False  # mindone.diffusers' default, which our users' code relies on


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(height=20), ValueError, "divisible by 8 but are 20 and 16"),
    (dict(num_frames=9), ValueError, r"`num_frames`=9 exceeds the motion modules' motion_max_seq_length=8"),
    (dict(output_type="pt"), ValueError, r"output_type 'pt' is not supported; expected one of \['pil', 'np', 'latent'\]"),
    (dict(prompt_embeds=np.zeros((1, 16, 32), np.float32)), ValueError, "either `prompt` or `prompt_embeds`"),
    (dict(negative_prompt=["x"]), TypeError, "`negative_prompt` should be the same type as `prompt`"),
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), ValueError, r"\['noise_pred'\] not allowed"),
    (dict(latents=np.zeros((1, 4, 3, 4, 4), np.float32)), ValueError, r"`latents` has shape \(1, 4, 3, 4, 4\), expected"),
    (dict(generator=np.random.RandomState(0)), TypeError, "numpy.random.Generator"),
])
def test_argument_errors(pipe, kwargs, error, message):
    call = dict(prompt="a cat", num_frames=3, num_inference_steps=1, height=16, width=16)
    call.update(kwargs)
    with pytest.raises(error, match=message):
        pipe(**call)


def test_construction_errors(folders):
    base, _ = folders
    with pytest.raises(ValueError, match="a motion_adapter .* is needed to build the UNetMotionModel"):
        AnimateDiffPipeline.from_pretrained(str(base))
    from converters import ConversionError

    with pytest.raises(ConversionError, match="holds a AnimateDiffPipeline, but StableVideoDiffusionPipeline"):
        from mindport import StableVideoDiffusionPipeline

        StableVideoDiffusionPipeline.from_pretrained(str(build("animatediff-tiny")))
