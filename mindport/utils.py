"""User-facing helpers, as in diffusers.utils: load_image, export_to_video, export_to_gif; and the numpy noise source
every mindport pipeline draws from (so the parity harness can feed PyTorch the very same numbers)."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import PIL.Image
import PIL.ImageOps


def randn(generator, shape, dtype=np.float32) -> np.ndarray:
    """Standard normal noise from a numpy Generator (float64 draws, cast to `dtype`). A list of generators draws one
    sample per generator along the first axis, as diffusers' randn_tensor does with a list of torch generators."""
    shape = tuple(int(s) for s in shape)
    if generator is None:
        generator = np.random.default_rng()
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per sample")
        return np.concatenate([g.standard_normal((1, *shape[1:])) for g in generator]).astype(dtype)
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator (or a list of them), got {type(generator).__name__}")
    return generator.standard_normal(shape).astype(dtype)


def load_video(path) -> list:
    """A .gif / .mp4 (any format imageio reads) or a folder of image files (sorted by name) -> a list of RGB PIL
    frames."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such video file or frame folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        if not files:
            raise ValueError(f"{p}: a frame folder with no .png / .jpg / .webp / .bmp files")
        return [PIL.Image.open(f).convert("RGB") for f in files]
    import imageio.v3 as iio

    try:
        frames = iio.imread(p, index=None)
    except Exception as e:  # imageio raises many kinds for unreadable files
        raise ValueError(f"{p}: cannot be read as a video ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    frames = frames if frames.ndim == 4 else frames[None]
    return [PIL.Image.fromarray(np.asarray(f)[..., :3]).convert("RGB") for f in frames]


def load_image(image, convert_method=None) -> PIL.Image.Image:
    """A path, an http(s) URL or a PIL image -> an RGB PIL image (EXIF orientation applied)."""
    if isinstance(image, str):
        if image.startswith(("http://", "https://")):
            import urllib.request

            try:
                with urllib.request.urlopen(image, timeout=30) as r:
                    data = r.read()
            except OSError as e:
                raise ValueError(f"cannot download image {image}: {e}") from None
            image = PIL.Image.open(io.BytesIO(data))
        elif os.path.isfile(image):
            image = PIL.Image.open(image)
        else:
            raise ValueError(f"{image}: not a file path or an http(s) URL")
    elif not isinstance(image, PIL.Image.Image):
        raise ValueError(f"load_image takes a path, URL or PIL image, got {type(image).__name__}")
    image = PIL.ImageOps.exif_transpose(image)
    return convert_method(image) if convert_method is not None else image.convert("RGB")


def _frames_uint8(frames) -> list[np.ndarray]:
    """PIL images, float arrays in [0, 1] or uint8 arrays -> list of HxWx3 uint8 arrays."""
    out = []
    for f in frames:
        if isinstance(f, PIL.Image.Image):
            out.append(np.asarray(f.convert("RGB")))
            continue
        a = np.asarray(f)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        out.append(a)
    return out


def export_to_video(video_frames, output_video_path: str | None = None, fps: int = 10) -> str:
    """Write frames to an MP4 (H.264 via imageio-ffmpeg). Returns the path."""
    import imageio

    if output_video_path is None:
        output_video_path = tempfile.NamedTemporaryFile(suffix=".mp4", delete=False).name
    frames = _frames_uint8(video_frames)
    # H.264 with yuv420p needs even sizes; macro_block_size=1 keeps odd tiny sizes working
    with imageio.get_writer(output_video_path, fps=fps, codec="libx264", macro_block_size=1,
                            ffmpeg_log_level="error", output_params=["-pix_fmt", "yuv420p"]) as w:
        for f in frames:
            w.append_data(f)
    return str(output_video_path)


def export_to_gif(image, output_gif_path: str | None = None, fps: int = 10) -> str:
    if output_gif_path is None:
        output_gif_path = tempfile.NamedTemporaryFile(suffix=".gif", delete=False).name
    frames = [PIL.Image.fromarray(f) for f in _frames_uint8(image)]
    frames[0].save(output_gif_path, save_all=True, append_images=frames[1:], optimize=False,
                   duration=int(1000 / fps), loop=0)
    return str(output_gif_path)


__all__ = ["load_image", "export_to_video", "export_to_gif", "randn"]
