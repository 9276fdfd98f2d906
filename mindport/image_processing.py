"""Image preprocessing for the pipelines, in numpy (float32 in, float32 out; no torch).

- `bicubic_matrix`: torch's bicubic interpolation (cubic convolution, a = -0.75, clamped border taps, no antialias)
  as an (out, in) resampling matrix, for align_corners True and False. MindSpore's bicubic differs from torch's by
  4e-3 (align_corners=True) to 0.4 (False), so we never call it.
- `resize_with_antialiasing`: diffusers' SVD `_resize_with_antialiasing` (separable Gaussian blur with reflect
  padding, then bicubic resize). Blur and resize are both linear maps along each axis, so they fold into one
  (out, in) matrix per axis, applied with two matmuls in float64.
- `preprocess`: diffusers' VaeImageProcessor/VideoProcessor `.preprocess` for PIL images and NHWC numpy arrays
  (PIL resize with LANCZOS by default, size rounded down to a multiple of vae_scale_factor, [0, 1] -> [-1, 1]).
- `svd_clip_input`: SVD's `_encode_image` preprocessing up to the CLIP encoder's pixel_values.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from PIL import Image

# OpenAI CLIP normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, used by SVD's feature_extractor)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# diffusers' PIL_INTERPOLATION names -> Pillow filters
PIL_RESAMPLE = {
    "linear": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}

_CUBIC_A = -0.75  # torch's (and OpenCV's) cubic convolution coefficient


# ----------------------------------------------------------------------------------------------------------------
# Resampling matrices
# ----------------------------------------------------------------------------------------------------------------


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t in [0, 1): shape (n, 4)."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@lru_cache(maxsize=64)
def _bicubic_matrix64(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    # Source coordinates follow torch's float32 arithmetic (scale and position rounded to float32): at position ~200
    # a float32 ulp is 1.5e-5, which moves the cubic weights visibly (8e-5 on unit-range data) if computed in float64.
    f32 = np.float32
    dst = np.arange(out_size, dtype=f32)
    if align_corners:
        scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0.0)
        src = dst * scale
    else:
        # torch does not clamp negative source coordinates for cubic; out-of-range taps are clamped instead
        scale = f32(in_size) / f32(out_size)
        src = scale * (dst + f32(0.5)) - f32(0.5)
    src = src.astype(np.float64)
    base = np.floor(src)
    w = _cubic_weights(src - base)  # (out, 4)
    idx = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)  # (out, 4)
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.repeat(np.arange(out_size), 4), idx.ravel()), w.ravel())
    m.flags.writeable = False
    return m


def bicubic_matrix(in_size: int, out_size: int, align_corners: bool = False, dtype=np.float32) -> np.ndarray:
    """(out_size, in_size) matrix M with `M @ x` = torch.nn.functional.interpolate(x, mode="bicubic",
    align_corners=align_corners) along one axis (size given, no scale_factor, no antialias)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bicubic_matrix: sizes must be positive, got in_size={in_size}, out_size={out_size}")
    return _bicubic_matrix64(int(in_size), int(out_size), bool(align_corners)).astype(dtype)


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_blur_matrix(size: int, kernel_size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix of a 1D Gaussian blur with reflect padding (torch `F.pad(mode="reflect")`, edge not
    repeated), padding (k-1)//2 in front and the rest behind, as diffusers' `_filter2d` does."""
    kernel = _gaussian_kernel(kernel_size, sigma)
    front = (kernel_size - 1) // 2
    m = np.zeros((size, size), np.float64)
    for i in range(size):
        for j in range(kernel_size):
            p = i + j - front  # position in the unpadded signal
            # reflect (without repeating the edge); repeated for pads longer than the signal
            period = 2 * (size - 1) if size > 1 else 1
            p = abs(p) % period if size > 1 else 0
            if p >= size:
                p = period - p
            m[i, p] += kernel[j]
    return m


def _antialias_params(in_size: int, out_size: int) -> tuple[int, float]:
    """diffusers/skimage rule: sigma = max((in/out - 1) / 2, 0.001); kernel = int(max(4 sigma, 3)), made odd."""
    sigma = max((in_size / out_size - 1.0) / 2.0, 0.001)
    ks = int(max(2.0 * 2 * sigma, 3))
    if ks % 2 == 0:
        ks += 1
    return ks, sigma


def antialias_resize_matrix(in_size: int, out_size: int, align_corners: bool = True) -> np.ndarray:
    """Blur-then-bicubic along one axis as one float64 (out, in) matrix."""
    ks, sigma = _antialias_params(in_size, out_size)
    return _bicubic_matrix64(in_size, out_size, align_corners) @ gaussian_blur_matrix(in_size, ks, sigma)


def _apply_axes(x: np.ndarray, mh: np.ndarray, mw: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (..., Ho, Wo) = mh @ x @ mw^T, in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    return np.matmul(np.matmul(mh, x64), mw.T)


def resize_bicubic(x: np.ndarray, size, align_corners: bool = False) -> np.ndarray:
    """torch.nn.functional.interpolate(x, size, mode="bicubic", align_corners=...) for (..., H, W) arrays."""
    h, w = x.shape[-2:]
    oh, ow = _size_pair(size)
    out = _apply_axes(x, _bicubic_matrix64(h, oh, bool(align_corners)), _bicubic_matrix64(w, ow, bool(align_corners)))
    return out.astype(np.float32)


def resize_with_antialiasing(x: np.ndarray, size, align_corners: bool = True) -> np.ndarray:
    """diffusers' `_resize_with_antialiasing(x, size)` (SVD's CLIP-side resize) for (B, C, H, W) float arrays:
    Gaussian blur (sigma and kernel size from the scale factor, reflect padding), then bicubic resize."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"resize_with_antialiasing expects a (B, C, H, W) array, got shape {x.shape}")
    h, w = x.shape[-2:]
    oh, ow = _size_pair(size)
    mh = antialias_resize_matrix(h, oh, align_corners)
    mw = antialias_resize_matrix(w, ow, align_corners)
    return _apply_axes(x, mh, mw).astype(np.float32)


def _size_pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size}")
    return size


def resize_nearest(x: np.ndarray, size) -> np.ndarray:
    """torch.nn.functional.interpolate(x, size, mode="nearest") for (..., H, W): src = floor(dst * in/out) computed
    in float32 as torch does, clamped to the last row/column."""
    h, w = x.shape[-2:]
    oh, ow = _size_pair(size)

    def index(n_in, n_out):
        if n_in == n_out:
            return np.arange(n_out)
        if n_out == 2 * n_in:
            return np.arange(n_out) >> 1
        scale = np.float32(n_in) / np.float32(n_out)
        return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)

    return np.asarray(x)[..., index(h, oh)[:, None], index(w, ow)[None, :]]


# ----------------------------------------------------------------------------------------------------------------
# Conversions and normalisation (diffusers VaeImageProcessor static methods)
# ----------------------------------------------------------------------------------------------------------------


def pil_to_numpy(images) -> np.ndarray:
    """PIL image or list -> (B, H, W, C) float32 in [0, 1] (grayscale images give (B, H, W))."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    return np.stack([np.array(im).astype(np.float32) / 255.0 for im in images], axis=0)


def numpy_to_pil(images: np.ndarray) -> list:
    """(B, H, W, C) or (H, W, C) in [0, 1] -> list of PIL images (rounded to uint8; one channel gives mode "L")."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    images = (images * 255).round().astype(np.uint8)
    if images.shape[-1] == 1:
        return [Image.fromarray(im.squeeze(), mode="L") for im in images]
    return [Image.fromarray(im) for im in images]


def to_nchw(images: np.ndarray) -> np.ndarray:
    """(B, H, W, C) -> (B, C, H, W); (B, H, W) gets a channel axis (diffusers `numpy_to_pt` without torch)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def to_nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(images).transpose(0, 2, 3, 1)).astype(np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
    """[0, 1] -> [-1, 1]."""
    return (2.0 * np.asarray(images, dtype=np.float32) - 1.0).astype(np.float32)


def denormalize(images: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1], clipped."""
    return np.clip(np.asarray(images, dtype=np.float32) * 0.5 + 0.5, 0.0, 1.0).astype(np.float32)


def clip_normalize(images: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (x - mean) / std per channel (CLIPImageProcessor's do_normalize)."""
    images = np.asarray(images, dtype=np.float32)
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return ((images - m) / s).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Pipeline-level preprocessing
# ----------------------------------------------------------------------------------------------------------------


def default_height_width(image, height=None, width=None, vae_scale_factor: int = 8) -> tuple[int, int]:
    """diffusers `get_default_height_width`: missing sizes from the image, both rounded down to a multiple of
    vae_scale_factor. `image` is a PIL image or an (B, H, W[, C]) array."""
    if height is None:
        height = image.height if isinstance(image, Image.Image) else image.shape[1]
    if width is None:
        width = image.width if isinstance(image, Image.Image) else image.shape[2]
    return height - height % vae_scale_factor, width - width % vae_scale_factor


def vae_scale_factor(vae_config: dict | None) -> int:
    """2^(levels - 1) of a VAE config, as diffusers' pipelines compute it; 8 (their default) without a VAE or its
    block_out_channels."""
    channels = (vae_config or {}).get("block_out_channels")
    return 2 ** (len(channels) - 1) if channels else 8


def _pixel_pair(size, scale: int = 1) -> tuple[int, int]:
    """A config `sample_size`, an int or [height, width], as (height, width) times `scale`."""
    h, w = (size, size) if isinstance(size, (int, float)) else tuple(size)
    return int(h) * scale, int(w) * scale


def pipeline_output_size(height, width, unet_config: dict, vae_scale_factor: int, fallback=None,
                         vae_config: dict | None = None, owner: str = "pipeline") -> tuple[int, int]:
    """The (height, width) a pipeline generates when `height` / `width` are not given: as diffusers, the UNet's
    `sample_size` (an int or [h, w], in latent pixels) times the VAE scale factor. A config saved with diffusers'
    defaults has `"sample_size": null` (diffusers' pipelines then fail on `None * vae_scale_factor`); then the
    pipeline's documented default `fallback` ((height, width) in pixels) is used, else the VAE's own `sample_size`
    (pixels), else the caller is asked for both sizes."""
    if height and width:
        return int(height), int(width)
    sample_size = unet_config.get("sample_size")
    vae_size = (vae_config or {}).get("sample_size")
    if sample_size is not None:
        default = _pixel_pair(sample_size, vae_scale_factor)
    elif fallback is not None:
        default = tuple(fallback)
    elif vae_size is not None:
        default = _pixel_pair(vae_size)
    else:
        raise ValueError(f"{owner}: unet.config.sample_size and vae.config.sample_size are null, so there is no "
                         "default size; pass height and width")
    return int(height or default[0]), int(width or default[1])


def resize(image, height: int, width: int, resample: str = "lanczos", reducing_gap=None):
    """diffusers `VaeImageProcessor.resize` (resize_mode "default"): PIL images with Pillow's filter (LANCZOS by
    default, as diffusers' VideoProcessor/VaeImageProcessor are configured); (B, C, H, W) arrays with torch's
    nearest rule."""
    if isinstance(image, Image.Image):
        if resample not in PIL_RESAMPLE:
            raise ValueError(f"unsupported resample {resample!r}; expected one of {sorted(PIL_RESAMPLE)}")
        return image.resize((width, height), resample=PIL_RESAMPLE[resample], reducing_gap=reducing_gap)
    return resize_nearest(np.asarray(image), (height, width))


def preprocess(
    image,
    height: int | None = None,
    width: int | None = None,
    vae_scale_factor: int = 8,
    resample: str = "lanczos",
    do_resize: bool = True,
    do_normalize: bool = True,
) -> np.ndarray:
    """diffusers `VaeImageProcessor.preprocess` / `VideoProcessor.preprocess` for a PIL image, a list of PIL images,
    or NHWC numpy images in [0, 1] ((H, W, C), (B, H, W, C) or a list of them). Returns (B, C, H, W) float32 in
    [-1, 1]. As in diffusers, input that already has negative values is taken to be in [-1, 1] and left as is (with a
    FutureWarning), and numpy input is resized with torch's nearest rule rather than a PIL filter."""
    images = image if isinstance(image, (list, tuple)) else [image]
    if not images:
        raise ValueError("preprocess: got an empty list of images")
    if isinstance(images[0], Image.Image):
        if do_resize:
            height, width = default_height_width(images[0], height, width, vae_scale_factor)
            images = [resize(im, height, width, resample=resample) for im in images]
        out = to_nchw(pil_to_numpy(list(images)))
    elif isinstance(images[0], np.ndarray):
        arr = np.concatenate(images, axis=0) if images[0].ndim == 4 else np.stack(images, axis=0)
        out = to_nchw(arr.astype(np.float32))
        if do_resize:
            height, width = default_height_width(arr, height, width, vae_scale_factor)
            out = resize_nearest(out, (height, width))
    else:
        raise ValueError(f"preprocess: unsupported image type {type(images[0]).__name__}; expected PIL.Image.Image or numpy.ndarray")
    out = out.astype(np.float32)
    if do_normalize and out.min() < 0:
        warnings.warn(
            f"preprocess: image values already reach {out.min():.3g} < 0; expected [0, 1], leaving them unnormalised",
            FutureWarning,
        )
        do_normalize = False
    return normalize(out) if do_normalize else out


def svd_clip_input(image, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """Stable Video Diffusion `_encode_image` up to the CLIP pixel_values, for PIL / NHWC numpy images in [0, 1]:
    [-1, 1], antialiased bicubic resize to size x size, back to [0, 1], CLIP mean/std. -> (B, 3, size, size)."""
    if isinstance(image, np.ndarray) or (isinstance(image, (list, tuple)) and isinstance(image[0], np.ndarray)):
        arr = np.asarray(image, dtype=np.float32)
        arr = arr[None] if arr.ndim == 3 else arr
    else:
        arr = pil_to_numpy(image)
    x = to_nchw(arr) * 2.0 - 1.0
    x = resize_with_antialiasing(x, (size, size))
    x = (x + 1.0) / 2.0
    return clip_normalize(x, mean, std)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PIL_RESAMPLE",
    "antialias_resize_matrix",
    "bicubic_matrix",
    "clip_normalize",
    "default_height_width",
    "pipeline_output_size",
    "vae_scale_factor",
    "denormalize",
    "gaussian_blur_matrix",
    "normalize",
    "numpy_to_pil",
    "pil_to_numpy",
    "preprocess",
    "resize",
    "resize_bicubic",
    "resize_nearest",
    "resize_with_antialiasing",
    "svd_clip_input",
    "to_nchw",
    "to_nhwc",
]


# ----------------------------------------------------------------------------------------------------------------
# I2VGen-XL
# ----------------------------------------------------------------------------------------------------------------


def center_crop_wide(images, resolution) -> list:
    """diffusers' I2VGen-XL `_center_crop_wide` for a PIL image or a list of them: scale so the image covers
    `resolution` = (width, height) (factor from the first image; sizes `round(size // scale)`), Pillow BOX resize,
    then a centred crop. Returns a list of PIL images."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("center_crop_wide: expected a PIL image or a non-empty list of PIL images")
    rw, rh = int(resolution[0]), int(resolution[1])
    scale = min(images[0].size[0] / rw, images[0].size[1] / rh)
    images = [im.resize((round(im.width // scale), round(im.height // scale)), resample=Image.Resampling.BOX)
              for im in images]
    x1 = (images[0].width - rw) // 2
    y1 = (images[0].height - rh) // 2
    return [im.crop((x1, y1, x1 + rw, y1 + rh)) for im in images]


__all__ += ["center_crop_wide"]


# ----------------------------------------------------------------------------------------------------------------
# CLIPImageProcessor (Wan I2V's image_processor)
# ----------------------------------------------------------------------------------------------------------------


def _hw(size, what: str) -> tuple[int, int]:
    if isinstance(size, dict) and size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        return int(size), int(size)
    raise ValueError(f"CLIPImageProcessor: {what}={size!r} is not supported; expected {{'height': H, 'width': W}} "
                     "or an int")


def clip_image_processor(images, config: dict) -> np.ndarray:
    """transformers' CLIPImageProcessor (its PIL backend) for PIL images, from a preprocessor_config.json dict (absent
    or null fields take transformers' defaults): RGB, resize (shortest edge to `size["shortest_edge"]`, the long
    edge int(s * long / short); or to `size`'s height x width) with Pillow's `resample` (3 = BICUBIC), centre crop
    to `crop_size` (top/left = (size - crop) // 2), rescale (float64 times rescale_factor, then float32), CLIP
    mean/std. -> (B, 3, h, w) float32."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("CLIPImageProcessor: expected a PIL image or a non-empty list of PIL images")

    def get(key, default):
        value = config.get(key)
        return default if value is None else value

    size = get("size", {"shortest_edge": 224})
    crop = _hw(get("crop_size", {"height": 224, "width": 224}), "crop_size")
    resample = Image.Resampling(int(get("resample", 3)))
    mean = np.asarray(get("image_mean", CLIP_MEAN), np.float32).reshape(-1, 1, 1)
    std = np.asarray(get("image_std", CLIP_STD), np.float32).reshape(-1, 1, 1)
    out = []
    for im in images:
        if get("do_convert_rgb", True):
            im = im.convert("RGB")
        if get("do_resize", True):
            if isinstance(size, dict) and size.get("shortest_edge"):
                s = int(size["shortest_edge"])
                w, h = im.size
                short, long = min(w, h), max(w, h)
                new_short, new_long = s, int(s * long / short)
                im = im.resize((new_short, new_long) if w <= h else (new_long, new_short), resample=resample)
            else:
                h, w = _hw(size, "size")
                im = im.resize((w, h), resample=resample)
        x = np.asarray(im).transpose(2, 0, 1)  # (C, H, W) uint8
        if get("do_center_crop", True):
            ch, cw = crop
            top, left = (x.shape[1] - ch) // 2, (x.shape[2] - cw) // 2
            if top < 0 or left < 0:
                raise ValueError(f"CLIPImageProcessor: the resized image is {x.shape[1]}x{x.shape[2]}, smaller than "
                                 f"crop_size {ch}x{cw}; expected a size at least the crop size")
            x = x[:, top:top + ch, left:left + cw]
        x = x.astype(np.float32)
        if get("do_rescale", True):
            x = (x.astype(np.float64) * float(get("rescale_factor", 1 / 255))).astype(np.float32)
        if get("do_normalize", True):
            x = (x - mean) / std
        out.append(x.astype(np.float32))
    return np.stack(out)


__all__ += ["clip_image_processor"]
