"""The user-facing I2VGen-XL API: the seed snippet, output types, `latents=`, determinism, the tokenizer component,
and argument errors. A tiny random model (the `i2vgen-xl-tiny` parity fixture) stands in for the released one, so
the snippet runs with a 24x16 image, 2 steps and 3 frames instead of 50 steps and 25 frames."""

import inspect

import mindspore as ms
import numpy as np
import PIL.Image
import pytest

from mindport import I2VGenXLPipeline
from mindport.utils import export_to_gif, load_image
from parity.fixtures import build, synthetic_image

H, W, F = 16, 24, 3  # one size for every call: each new shape costs MindSpore a first-call kernel setup


@pytest.fixture(scope="module")
def src():
    return build("i2vgen-xl-tiny")


@pytest.fixture(scope="module")
def pipe(src):
    p = I2VGenXLPipeline.from_pretrained(src)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def image():
    return synthetic_image(37, 21, 3)


def _call(pipe, image, **kw):
    args = dict(prompt="the cat in a hat", image=image, height=H, width=W, num_frames=F, num_inference_steps=2,
                negative_prompt="blurry", guidance_scale=9.0, generator=np.random.Generator(np.random.PCG64(0)))
    return pipe(**{**args, **kw})


def test_seed_snippet_fp16_variant(src, tmp_path):
    """The seed's code with only the import line and the path changed; a tiny model: 2 steps, 3 frames, 24x16 image."""
    synthetic_image(W, H, 1).save(tmp_path / "in.png")
    image = load_image(str(tmp_path / "in.png"))
    pipeline = I2VGenXLPipeline.from_pretrained(str(src), mindspore_dtype=ms.float16, variant="fp16")
    assert pipeline.unet.dtype == ms.float16 and pipeline.text_encoder.dtype == ms.float16
    frames = pipeline(prompt="the cat in a hat", image=image, height=image.height, width=image.width,
                      num_inference_steps=2, negative_prompt="blurry, static", guidance_scale=9.0,
                      generator=np.random.Generator(np.random.PCG64(8888)), num_frames=F)[0][0]
    assert len(frames) == F and all(isinstance(f, PIL.Image.Image) and f.size == (W, H) for f in frames)
    assert all(np.isfinite(np.asarray(f, np.float32)).all() for f in frames)
    gif = export_to_gif(frames, str(tmp_path / "i2v.gif"))
    assert PIL.Image.open(gif).n_frames == F


def test_components_and_defaults(pipe):
    from transformers import CLIPTokenizer

    assert isinstance(pipe.tokenizer, CLIPTokenizer) and pipe.tokenizer.model_max_length == 16
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18125)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.scheduler.config.rescale_betas_zero_snr
    from diffusers import I2VGenXLPipeline as Ref

    ours = inspect.signature(I2VGenXLPipeline.__call__).parameters
    ref = inspect.signature(Ref.__call__).parameters
    for name in ("height", "width", "target_fps", "num_frames", "num_inference_steps", "guidance_scale", "eta",
                 "num_videos_per_prompt", "decode_chunk_size", "output_type", "clip_skip"):
        assert ours[name].default == ref[name].default, name
    assert ours["return_dict"].default is False  # mindone's convention: a tuple, `pipe(...)[0][0]` is the first video


def test_output_types_latents_argument_and_determinism(pipe, image):
    """"np" frames; the same call with the initial latents passed as `latents=` (the second draw: the VAE posterior
    sample comes first) and return_dict=True gives the same frames; "latent" returns the final latents."""
    video = _call(pipe, image, output_type="np", generator=np.random.Generator(np.random.PCG64(5)))[0]
    assert isinstance(video, np.ndarray) and video.shape == (1, F, H, W, 3)
    assert 0.0 <= video.min() and video.max() <= 1.0
    g = np.random.Generator(np.random.PCG64(5))
    g.standard_normal((1, 4, H // 2, W // 2))  # the VAE posterior draw
    latents = g.standard_normal((1, 4, F, H // 2, W // 2)).astype(np.float32)
    again = _call(pipe, image, output_type="np", generator=np.random.Generator(np.random.PCG64(5)), latents=latents,
                  return_dict=True)
    np.testing.assert_array_equal(again.frames, video)
    final = _call(pipe, image, output_type="latent")[0]
    assert isinstance(final, ms.Tensor) and tuple(final.shape) == (1, 4, F, H // 2, W // 2)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(height=20), ValueError, "divisible by 8 but are 20 and 24"),
    (dict(output_type="pt"), ValueError, "output_type 'pt' is not supported"),
    (dict(prompt=None), ValueError, "provide either `prompt` or `prompt_embeds`"),
    (dict(prompt=3), ValueError, "`prompt` has to be of type `str` or `list` but is int"),
    (dict(negative_prompt=["a"]), TypeError, "`negative_prompt` should be the same type to `prompt`"),
    (dict(image="not an image"), ValueError, "`image` has to be a PIL.Image.Image"),
    (dict(latents=np.zeros((1, 4, 2, 8, 12), np.float32)), ValueError, r"`latents` has shape \(1, 4, 2, 8, 12\)"),
    (dict(decode_chunk_size=0), ValueError, "decode_chunk_size must be a positive int"),
])
def test_argument_errors(pipe, image, kwargs, error, message):
    with pytest.raises(error, match=message):
        args = {"output_type": "latent", **kwargs}
        _call(pipe, args.pop("image", image), **args)


@pytest.mark.parametrize("size, resolution", [((37, 21), (24, 16)), ((20, 40), (24, 24)), ((64, 48), (56, 40))])
def test_center_crop_wide_matches_diffusers(size, resolution):
    from diffusers.pipelines.deprecated.i2vgen_xl.pipeline_i2vgen_xl import (
        _center_crop_wide,
    )

    from mindport.image_processing import center_crop_wide

    img = synthetic_image(*size, seed=7)
    (ours,) = center_crop_wide(img, resolution)
    ref = _center_crop_wide(img, resolution)
    assert ours.size == ref.size == resolution
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
