"""mindport.image_processing against diffusers / torch (the reference side of these tests only)."""

import warnings

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (  # noqa: E402
    _resize_with_antialiasing,
)
from diffusers.video_processor import VideoProcessor  # noqa: E402

from mindport import image_processing as ip  # noqa: E402


def _max_abs(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize(
    "shape",
    [
        (1, 3, 576, 1024),  # SVD's frame size, downscale (sigma ~ 0.8 / 1.8)
        (2, 3, 300, 700),  # non-square, two images
        (1, 3, 224, 224),  # identity size
        (1, 3, 100, 60),  # upscale both axes
        (1, 3, 50, 400),  # upscale one axis, downscale the other
    ],
)
def test_resize_with_antialiasing_matches_diffusers(shape, rng):
    x = (rng.random(shape, dtype=np.float32) * 2 - 1).astype(np.float32)
    expected = _resize_with_antialiasing(torch.from_numpy(x), (224, 224)).numpy()
    got = ip.resize_with_antialiasing(x, (224, 224))
    assert got.dtype == np.float32 and got.shape == expected.shape
    err = _max_abs(got, expected)
    assert err <= 1e-5, f"{shape}: max abs {err:.3e}"


def test_resize_with_antialiasing_other_sizes(rng):
    x = rng.random((1, 2, 123, 77), dtype=np.float32)
    expected = _resize_with_antialiasing(torch.from_numpy(x), (40, 96)).numpy()
    assert _max_abs(ip.resize_with_antialiasing(x, (40, 96)), expected) <= 1e-5


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("n_in,n_out", [(7, 13), (13, 7), (5, 5), (1, 4), (4, 1), (224, 100), (3, 224), (1024, 224)])
def test_bicubic_matrix_matches_torch_interpolate(n_in, n_out, align_corners, rng):
    x = rng.standard_normal((2, 3, n_in, 6)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(n_out, 6), mode="bicubic", align_corners=align_corners
    ).numpy()
    m = ip.bicubic_matrix(n_in, n_out, align_corners=align_corners)
    assert m.shape == (n_out, n_in) and m.dtype == np.float32
    got = np.matmul(m.astype(np.float64), x.astype(np.float64))
    # data ~N(0,1) up to |x| ~ 4: float32 arithmetic on the torch side accounts for ~1e-6
    assert _max_abs(got, expected) <= 5e-6, f"{n_in}->{n_out} align_corners={align_corners}"
    # and the 2D helper, non-square
    expected2 = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(n_out, 9), mode="bicubic", align_corners=align_corners
    ).numpy()
    assert _max_abs(ip.resize_bicubic(x, (n_out, 9), align_corners), expected2) <= 5e-6


@pytest.mark.parametrize("size", [(7, 5), (16, 16), (3, 11)])
def test_resize_nearest_matches_torch(size, rng):
    x = rng.standard_normal((1, 2, 9, 6)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=size).numpy()
    np.testing.assert_array_equal(ip.resize_nearest(x, size), expected)


def _pil_image(rng, w=97, h=61):
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("hw", [(48, 64), (61, 97), (50, 70), (None, None), (128, 40)])
def test_preprocess_pil_matches_video_processor(hw, rng):
    image = _pil_image(rng)
    vp = VideoProcessor(do_resize=True, vae_scale_factor=8)
    expected = vp.preprocess(image, height=hw[0], width=hw[1]).numpy()
    got = ip.preprocess(image, height=hw[0], width=hw[1], vae_scale_factor=8)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_preprocess_list_and_numpy_match_video_processor(rng):
    images = [_pil_image(rng), _pil_image(rng)]
    vp = VideoProcessor(do_resize=True, vae_scale_factor=8)
    np.testing.assert_array_equal(ip.preprocess(images, 40, 56), vp.preprocess(images, height=40, width=56).numpy())
    arr = rng.random((2, 30, 44, 3), dtype=np.float32)
    np.testing.assert_array_equal(ip.preprocess(arr, 24, 40), vp.preprocess(arr, height=24, width=40).numpy())
    one = rng.random((30, 44, 3), dtype=np.float32)
    np.testing.assert_array_equal(ip.preprocess(one), vp.preprocess(one).numpy())


def test_conversions_match_diffusers(rng):
    from diffusers.image_processor import VaeImageProcessor as V

    image = _pil_image(rng)
    np.testing.assert_array_equal(ip.pil_to_numpy(image), V.pil_to_numpy(image))
    arr = rng.random((2, 5, 7, 3), dtype=np.float32)
    for a, b in zip(ip.numpy_to_pil(arr), V.numpy_to_pil(arr)):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    gray = ip.numpy_to_pil(rng.random((5, 7, 1), dtype=np.float32))[0]
    assert gray.mode == "L"
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(ip.normalize(x), V.normalize(torch.from_numpy(x)).numpy())
    np.testing.assert_array_equal(ip.denormalize(x), V.denormalize(torch.from_numpy(x)).numpy())
    assert ip.normalize(x).dtype == ip.denormalize(x).dtype == np.float32


def test_svd_clip_input_matches_pipeline_steps(rng):
    """The SVD pipeline's `_encode_image` for a PIL image, up to the CLIP pixel_values."""
    from transformers import CLIPImageProcessor

    image = _pil_image(rng, w=320, h=180)
    vp = VideoProcessor(do_resize=True, vae_scale_factor=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fe = CLIPImageProcessor()  # defaults = SVD's feature_extractor config (OpenAI CLIP mean/std)
    x = vp.numpy_to_pt(vp.pil_to_numpy(image)) * 2.0 - 1.0
    x = (_resize_with_antialiasing(x, (224, 224)) + 1.0) / 2.0
    expected = fe(images=x, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False,
                  return_tensors="pt").pixel_values.numpy()
    got = ip.svd_clip_input(image)
    assert got.shape == (1, 3, 224, 224)
    assert _max_abs(got, expected) <= 1e-5 * 4  # /std (~0.27) scales the 1e-5 resize bar by ~3.8
    assert tuple(fe.image_mean) == pytest.approx(ip.CLIP_MEAN) and tuple(fe.image_std) == pytest.approx(ip.CLIP_STD)


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="shape"):
        ip.resize_with_antialiasing(np.zeros((3, 8, 8), np.float32), (4, 4))
    with pytest.raises(ValueError, match="'box2'"):
        ip.resize(Image.new("RGB", (8, 8)), 4, 4, resample="box2")
    with pytest.raises(ValueError, match="str"):
        ip.preprocess("image.png")
