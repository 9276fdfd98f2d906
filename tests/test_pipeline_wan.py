"""WanPipeline / WanImageToVideoPipeline against diffusers' on the tiny fixtures (several sizes, frame counts and
configs), their call conventions, bad inputs, and `mindport generate` on Wan folders."""

import numpy as np
import PIL.Image
import pytest
import torch

from mindport.pipelines import WanImageToVideoPipeline, WanPipeline
from mindport.pipelines.wan import prompt_clean
from parity.adapter import quiet_reference_libraries
from parity.fixtures import build, synthetic_image

from helpers import rel_l2

quiet_reference_libraries()


@pytest.fixture(scope="module")
def t2v():
    return build("wan-t2v-tiny")


@pytest.fixture(scope="module")
def i2v():
    return build("wan-i2v-tiny")


def _reference(cls_name, root):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(str(root), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _both(cls, cls_name, root, latent_shape, dtype=None, **kw):
    """(ours, reference) frames from the same initial latents."""
    lat = _latents(1, latent_shape)
    with torch.no_grad():
        ref = _reference(cls_name, root)(**kw, latents=torch.from_numpy(lat), output_type="np").frames
    ours = cls.from_pretrained(str(root), mindspore_dtype=dtype)
    ours.set_progress_bar_config(disable=True)
    return np.asarray(ours(**kw, latents=lat, output_type="np")[0]), np.asarray(ref)


@pytest.mark.parametrize("preset, size, frames, latent", [
    ("wan-t2v-tiny", (32, 48), 5, (1, 4, 2, 8, 12)),
    ("wan-t2v-tiny", (48, 16), 9, (1, 4, 3, 12, 4)),  # tall, 3 latent frames
    ("wan-t2v-tiny-varied", (48, 80), 13, (1, 6, 4, 6, 10)),  # patch (2, 2, 2), 3 heads, flow-match Euler
])
def test_t2v_matches_diffusers(preset, size, frames, latent):
    h, w = size
    ours, ref = _both(WanPipeline, "WanPipeline", build(preset), latent, prompt="the cat in a hat",
                      negative_prompt="blurry", height=h, width=w, num_frames=frames, num_inference_steps=3,
                      guidance_scale=5.0)
    assert ours.shape == ref.shape == (1, frames, h, w, 3)
    assert rel_l2(ours, ref) <= 1e-4, rel_l2(ours, ref)


def test_t2v_batch_of_prompts_and_videos_per_prompt(t2v):
    ours, ref = _both(WanPipeline, "WanPipeline", t2v, (4, 4, 2, 8, 12), prompt=["the cat", "a dog at night"],
                      negative_prompt=["static", "blurry"], height=32, width=48, num_frames=5,
                      num_inference_steps=2, num_videos_per_prompt=2)
    assert ours.shape == ref.shape == (4, 5, 32, 48, 3)
    assert rel_l2(ours, ref) <= 1e-4


def test_t2v_fp16_against_torch_fp32(t2v):
    import mindspore as ms

    ours, ref = _both(WanPipeline, "WanPipeline", t2v, (1, 4, 2, 8, 12), dtype=ms.float16, prompt="the cat",
                      height=32, width=48, num_frames=5, num_inference_steps=3)
    assert rel_l2(ours, ref) <= 1e-2, rel_l2(ours, ref)


@pytest.mark.parametrize("size, frames, latent", [((32, 64), 9, (1, 4, 3, 8, 16)), ((48, 32), 5, (1, 4, 2, 12, 8))])
def test_i2v_matches_diffusers(i2v, size, frames, latent):
    h, w = size
    image = synthetic_image(w + 21, h + 13, seed=3)
    ours, ref = _both(WanImageToVideoPipeline, "WanImageToVideoPipeline", i2v, latent, image=image,
                      prompt="the cat walking", negative_prompt="static", height=h, width=w, num_frames=frames,
                      num_inference_steps=3, guidance_scale=4.0)
    assert ours.shape == ref.shape == (1, frames, h, w, 3)
    assert rel_l2(ours, ref) <= 1e-4, rel_l2(ours, ref)


def test_call_conventions(t2v):
    pipe = WanPipeline.from_pretrained(str(t2v))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="the cat", height=32, width=48, num_frames=5, num_inference_steps=1,
              generator=np.random.Generator(np.random.PCG64(0)))
    # mindone's convention: pipe(...)[0][0] is the first video; default output "np"
    video = pipe(**kw)[0][0]
    assert video.shape == (5, 32, 48, 3) and 0 <= video.min() and video.max() <= 1
    pil = pipe(**kw, output_type="pil")[0]
    assert isinstance(pil[0][0], PIL.Image.Image) and len(pil[0]) == 5 and pil[0][0].size == (48, 32)
    latent = pipe(**kw, output_type="latent", return_dict=True).frames
    assert tuple(latent.shape) == (1, 4, 2, 8, 12)
    # the same numpy generator seed gives the same video
    again = pipe(**{**kw, "generator": np.random.Generator(np.random.PCG64(0))})[0][0]
    assert np.array_equal(video, again)
    # num_frames not 4k+1: rounded down, with diffusers' warning
    with pytest.warns(UserWarning, match="divisible by 4"):
        assert pipe(**{**kw, "num_frames": 7})[0][0].shape[0] == 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=40), "divisible by 16"),
    (dict(output_type="jpg"), "expected one of"),
    (dict(prompt_embeds=np.zeros((1, 512, 32), np.float32)), "either `prompt` or `prompt_embeds`"),
    (dict(guidance_scale_2=3.0), "boundary_ratio"),
    (dict(prompt=3), "str or a list of str"),
    (dict(negative_prompt=["a", "b"]), "batch size"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "not allowed"),
])
def test_bad_inputs(t2v, kwargs, message):
    pipe = WanPipeline.from_pretrained(str(t2v))
    kw = dict(prompt="the cat", height=32, width=48, num_frames=5, num_inference_steps=1)
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(**{**kw, **kwargs})


def test_i2v_needs_an_image(i2v):
    pipe = WanImageToVideoPipeline.from_pretrained(str(i2v))
    with pytest.raises(ValueError, match="`image`"):
        pipe(prompt="the cat", height=32, width=48, num_frames=5, num_inference_steps=1)
    with pytest.raises(ValueError, match="PIL"):
        pipe(image=np.zeros((32, 48, 3)), prompt="the cat", height=32, width=48, num_frames=5)


def test_models_load_alone(t2v):
    from mindport.models import AutoencoderKLWan, UMT5EncoderModel, WanTransformer3DModel

    tr = WanTransformer3DModel.from_pretrained(str(t2v), subfolder="transformer")
    assert tr.num_attention_heads == 2 and tr.patch_size == (1, 2, 2)
    assert AutoencoderKLWan.from_pretrained(str(t2v), subfolder="vae").z_dim == 4
    assert UMT5EncoderModel.from_pretrained(str(t2v), subfolder="text_encoder").vocab_size > 60


@pytest.mark.parametrize("text", ["  the   cat\n in a\that ", "caf&amp;amp;e &lt;b&gt;", "â€œquotedâ€\x9d mojibake",
                                  "plain"])
def test_prompt_clean_as_diffusers(text):
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean as reference

    assert prompt_clean(text) == reference(text)


def test_generate_cli(t2v, i2v, tmp_path, capsys):
    from mindport.cli import main

    out = tmp_path / "t2v.gif"
    assert main(["generate", str(t2v), "--prompt", "a cat", "--frames", "5", "--steps", "1", "--height", "32",
                 "--width", "48", "--out", str(out)]) == 0
    assert PIL.Image.open(out).n_frames == 5 and "WanPipeline" in capsys.readouterr().out
    synthetic_image(70, 50).save(tmp_path / "in.png")
    out = tmp_path / "i2v.gif"
    assert main(["generate", str(i2v), "--image", str(tmp_path / "in.png"), "--prompt", "a cat", "--frames", "5",
                 "--steps", "1", "--out", str(out)]) == 0
    assert PIL.Image.open(out).size == (64, 48)  # the image's size rounded down to 16
    capsys.readouterr()
    assert main(["generate", str(t2v), "--image", str(tmp_path / "in.png"), "--out", str(out)]) == 2
    assert "WanPipeline does not take --image" in capsys.readouterr().err
    assert main(["generate", str(t2v), "--out", str(out)]) == 2
    assert "give --prompt" in capsys.readouterr().err


def _saved(pipe, tmp_path):
    pipe.save_pretrained(str(tmp_path / "ref"))
    pipe.set_progress_bar_config(disable=True)
    return tmp_path / "ref"


@pytest.mark.parametrize("variant", ["two-experts", "flf2v", "i2v-no-image-tokens"])
def test_wan_variants_match_diffusers(variant, tmp_path):
    """Wan 2.2 A14B's two experts (boundary_ratio, guidance_scale_2), FLF2V (first and last frame: pos_embed_seq_len,
    last_image), and an I2V transformer without image tokens (image_dim null, as Wan 2.2 I2V)."""
    import copy

    import diffusers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from parity.fixtures import randomise
    from parity.wan import PRESETS, tiny_components
    from parity.wan_i2v import PRESETS as I2V_PRESETS

    if variant == "two-experts":
        parts = tiny_components(PRESETS["wan-t2v-tiny"], 3)
        second = randomise(copy.deepcopy(parts["transformer"]), 99)
        ref, cls = diffusers.WanPipeline(**parts, transformer_2=second, boundary_ratio=0.875), WanPipeline
        kw = dict(prompt="the cat", height=32, width=48, num_frames=5, num_inference_steps=4, guidance_scale=5.0,
                  guidance_scale_2=3.0)
        lat = _latents(0, (1, 4, 2, 8, 12))
    else:
        spec = I2V_PRESETS["wan-i2v-tiny"]
        z = spec["vae"]["z_dim"]
        tr = dict(spec["transformer"], pos_embed_seq_len=10) if variant == "flf2v" else \
            {k: v for k, v in spec["transformer"].items() if k not in ("image_dim", "added_kv_proj_dim")}
        parts = tiny_components({**spec, "transformer": tr, "extra_in_channels": 4 + z}, 5)
        encoder = processor = None
        if variant == "flf2v":
            encoder = randomise(CLIPVisionModel(CLIPVisionConfig(hidden_act="gelu", **spec["vision"])), 55)
            processor = CLIPImageProcessor(crop_size={"height": 28, "width": 28}, size={"shortest_edge": 28})
        ref, cls = diffusers.WanImageToVideoPipeline(**parts, image_encoder=encoder, image_processor=processor), \
            WanImageToVideoPipeline
        kw = dict(image=synthetic_image(90, 50, 1), prompt="the cat", height=32, width=64, num_frames=9,
                  num_inference_steps=3)
        if variant == "flf2v":
            kw["last_image"] = synthetic_image(90, 50, 2)
        lat = _latents(1, (1, 4, 3, 8, 16))
    root = _saved(ref, tmp_path)
    with torch.no_grad():
        expected = np.asarray(ref(**kw, latents=torch.from_numpy(lat), output_type="np").frames)
    ours = cls.from_pretrained(str(root))
    ours.set_progress_bar_config(disable=True)
    got = np.asarray(ours(**kw, latents=lat, output_type="np")[0])
    assert got.shape == expected.shape and rel_l2(got, expected) <= 1e-4, rel_l2(got, expected)
