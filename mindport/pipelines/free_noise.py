"""FreeNoise (Qiu et al. 2023) for AnimateDiff pipelines, as diffusers' `AnimateDiffFreeNoiseMixin`
(pipelines/free_noise_utils.py, 0.42.1) spells it: videos longer than the motion modules' position table.

    pipe.enable_free_noise(context_length=16, context_stride=4, weighting_scheme="pyramid",
                           noise_type="shuffle_context")
    frames = pipe(prompt={0: "a cat sitting", 24: "a cat running"}, num_frames=48, ...)[0][0]
    pipe.disable_free_noise()

Enabling swaps every motion transformer block for the windowed block (mindport.models.free_noise), holding the same
weights; disabling puts the plain blocks back. While enabled, the pipeline:
- draws the initial noise for all frames from the numpy generator (as the other noise), then with "shuffle_context"
  refills frames context_length.. window by window with a shuffle of the `context_stride` frames one context earlier
  (each permutation is the argsort of standard normal draws from the same generator); "repeat_context" tiles
  `latents` given with context_length frames (noise it draws itself is kept as drawn: diffusers 0.42.1 draws all
  frames and its tiling then changes nothing); "random" keeps the draw;
- takes `prompt` (and `negative_prompt`) as a str or a dict {frame index: str} starting at frame 0: each prompt's
  embedding is held at its frame and interpolated between them (linearly, or by `prompt_interpolation_callback(
  start_frame, end_frame, start_embeds (1, L, D), end_embeds (1, L, D)) -> (end - start + 1, L, D)`), one per frame.
`enable_free_noise_split_inference(spatial_split_size=256, temporal_split_size=16)` saves memory on long videos: the
motion modules' parts run on `spatial_split_size` pixel sequences at a time, the spatial attentions, resnets and
down / up samplers on `temporal_split_size` frames at a time (diffusers' SplitInferenceModule wrappers and module
paths); the numbers stay the same. It stays on after disable_free_noise, as in diffusers.
"""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, ops

from ..models.free_noise import (
    WEIGHTING_SCHEMES,
    SplitInferenceModule,
    input_names,
    replace,
    unwrap,
    use_plain_blocks,
    use_windowed_blocks,
)
from ..utils import randn

NOISE_TYPES = ("shuffle_context", "repeat_context", "random")


class AnimateDiffFreeNoiseMixin:
    """For pipelines with a `unet` (UNetMotionModel), `encode_prompt` and `vae_scale_factor`."""

    _free_noise_context_length: int | None = None

    # -- switching -------------------------------------------------------------------------------------------------
    def enable_free_noise(self, context_length: int | None = 16, context_stride: int = 4,
                          weighting_scheme: str = "pyramid", noise_type: str = "shuffle_context",
                          prompt_interpolation_callback=None) -> None:
        """Generate more frames than the motion modules hold, in windows of `context_length` frames (None: the
        motion modules' motion_max_seq_length) every `context_stride` frames, blended by `weighting_scheme`
        ("flat", "pyramid", "delayed_reverse_sawtooth"); `noise_type` "shuffle_context", "repeat_context" or
        "random" (see the module docstring)."""
        if prompt_interpolation_callback is not None and not callable(prompt_interpolation_callback):
            raise ValueError(f"enable_free_noise: prompt_interpolation_callback must be callable, got "
                             f"{type(prompt_interpolation_callback).__name__}")
        settings = free_noise_settings(self.unet.config.motion_max_seq_length, context_length, context_stride,
                                       weighting_scheme, noise_type)
        length, context_stride = settings["context_length"], settings["context_stride"]
        use_windowed_blocks(self.unet.motion_transformers(), length, context_stride, weighting_scheme)
        self._free_noise_context_length = length
        self._free_noise_context_stride = context_stride
        self._free_noise_weighting_scheme = weighting_scheme
        self._free_noise_noise_type = noise_type
        self._free_noise_prompt_interpolation_callback = prompt_interpolation_callback or self._lerp

    def disable_free_noise(self) -> None:
        """The plain motion blocks back (the pipeline's frames are then exactly those before enabling)."""
        self._free_noise_context_length = None
        use_plain_blocks(self.unet.motion_transformers())

    def enable_free_noise_split_inference(self, spatial_split_size: int = 256, temporal_split_size: int = 16) -> None:
        """Run the UNet's blocks on slices of their batch (see the module docstring); again: new sizes."""
        for name, value in (("spatial_split_size", spatial_split_size), ("temporal_split_size", temporal_split_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"enable_free_noise_split_inference: {name}={value!r} is not a positive integer")

        def split(parent, key, size: int, names) -> None:
            cell = parent[key] if isinstance(key, int) else getattr(parent, key)
            if isinstance(cell, SplitInferenceModule):
                cell.split_size = size
            else:
                replace(parent, key, lambda c: SplitInferenceModule(c, size, 0, names))

        unet = self.unet
        for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
            # motion modules: (B*H*W, F, C) sequences, split over pixels
            for module in getattr(block, "motion_modules", None) or ():
                for key in ("proj_in", "proj_out"):
                    split(module, key, spatial_split_size, input_names(unwrap(getattr(module, key)), 1))
                for i in range(len(module.transformer_blocks)):
                    split(module.transformer_blocks, i, spatial_split_size, ("hidden_states", "encoder_hidden_states"))
            # spatial parts: (B*F, C, H, W) frames, split over frames (resnets: with their time embedding)
            for attr, count in (("attentions", 2), ("resnets", 2), ("downsamplers", 1), ("upsamplers", 1)):
                cells = getattr(block, attr, None) or ()
                for i in range(len(cells)):
                    names = ("hidden_states", "encoder_hidden_states") if attr == "attentions" else \
                        input_names(unwrap(cells[i]), count)
                    split(cells, i, temporal_split_size, names)

    @property
    def free_noise_enabled(self) -> bool:
        return self._free_noise_context_length is not None

    def _check_free_noise_frames(self, num_frames: int) -> None:
        if num_frames < self._free_noise_context_length:
            raise ValueError(f"`num_frames`={num_frames} is fewer than FreeNoise's context_length="
                             f"{self._free_noise_context_length}; give at least that many frames, or a shorter "
                             "context_length")

    # -- noise -----------------------------------------------------------------------------------------------------
    def _prepare_latents_free_noise(self, shape: tuple, generator, latents=None) -> np.ndarray:
        """(B, C, F, h, w) initial noise (before the scheduler's sigma) for `noise_type`."""
        num_frames, length = shape[2], self._free_noise_context_length
        if latents is None:
            latents = randn(generator, shape)
            if self._free_noise_noise_type == "random":
                return latents
        else:
            latents = latents.asnumpy() if isinstance(latents, Tensor) else np.asarray(latents, np.float32)
            if latents.ndim == 5 and latents.shape[2] == num_frames:
                return latents
            if latents.ndim != 5 or latents.shape[2] != length or self._free_noise_noise_type != "repeat_context":
                frames = latents.shape[2] if latents.ndim == 5 else None
                raise ValueError(f"`latents` with FreeNoise has {frames} frames; expected num_frames={num_frames}"
                                 f" (or, with noise_type='repeat_context', context_length={length}, tiled)")
        if self._free_noise_noise_type == "shuffle_context":
            latents = latents.copy()
            stride = self._free_noise_context_stride
            # (one permutation per window for the whole batch: from the first generator of a list)
            perm_generator = generator[0] if isinstance(generator, (list, tuple)) else generator
            for i in range(length, num_frames, stride):
                # the `stride` frames one context earlier, shuffled, become frames i .. i + stride
                start = i - length
                n = min(num_frames, start + stride) - start
                order = start + np.argsort(randn(perm_generator, (n,)), kind="stable")
                end = min(num_frames, i + n)
                latents[:, :, i:end] = latents[:, :, order[: end - i]]
        elif self._free_noise_noise_type == "repeat_context":
            latents = np.concatenate([latents] * -(-num_frames // latents.shape[2]), axis=2)
        return latents[:, :, :num_frames]

    # -- prompts ---------------------------------------------------------------------------------------------------
    def _lerp(self, start_index: int, end_index: int, start_tensor: Tensor, end_tensor: Tensor) -> Tensor:
        """(end - start + 1, L, D): from start_tensor to end_tensor (each (1, L, D)), both ends included."""
        n = end_index - start_index + 1
        return ops.cat([(1 - i / (n - 1)) * start_tensor + (i / (n - 1)) * end_tensor for i in range(n)], axis=0)

    def _frame_embeds(self, frame_prompts: dict, num_frames: int, negative: bool, clip_skip) -> Tensor:
        """(F, L, D): each prompt's embedding at its frame, interpolated in between."""
        frames, texts = list(frame_prompts), list(frame_prompts.values())
        if negative:  # as diffusers: the negative prompts encoded as negatives (no clip_skip)
            _, embeds = self.encode_prompt([""] * len(texts), 1, True, texts)
        else:
            embeds, _ = self.encode_prompt(texts, 1, False, clip_skip=clip_skip)
        parts = [embeds] if len(frames) == 1 else []  # one frame
        for i in range(len(frames) - 1):
            seg = self._free_noise_prompt_interpolation_callback(frames[i], frames[i + 1], embeds[i:i + 1],
                                                                 embeds[i + 1:i + 2])
            seg = seg if isinstance(seg, Tensor) else Tensor(np.asarray(seg, np.float32))
            want = (frames[i + 1] - frames[i] + 1, *embeds.shape[1:])
            if tuple(seg.shape) != want:
                raise ValueError(f"prompt_interpolation_callback returned shape {tuple(seg.shape)} for frames "
                                 f"{frames[i]}..{frames[i + 1]}; expected {want}")
            # a segment's last frame is the next segment's first
            parts.append(seg if i == len(frames) - 2 else seg[:-1])
        return ops.cat(parts, axis=0).astype(embeds.dtype)

    def _encode_prompt_free_noise(self, prompt, num_frames: int, num_videos_per_prompt: int,
                                  do_classifier_free_guidance: bool, negative_prompt=None, prompt_embeds=None,
                                  negative_prompt_embeds=None, clip_skip=None) -> tuple[Tensor, Tensor | None]:
        """Per-frame embeddings (n*F, L, D) and, with guidance, the negative ones (n*F, L, D), each video's F frames
        in a row."""
        if prompt_embeds is not None or negative_prompt_embeds is not None:
            raise ValueError("FreeNoise encodes `prompt` per frame: `prompt_embeds` / `negative_prompt_embeds` are "
                             "not supported with it; pass `prompt` (a str or a {frame: str} dict)")
        out = []
        for name, value, negative in (("prompt", prompt, False), ("negative_prompt", negative_prompt, True)):
            if negative and not do_classifier_free_guidance:
                out.append(None)
                continue
            frame_prompts = _frame_prompts(name, "" if value is None else value, num_frames)
            embeds = self._frame_embeds(frame_prompts, num_frames, negative, clip_skip)
            out.append(ops.tile(embeds, (num_videos_per_prompt, 1, 1)))
        return out[0], out[1]


def free_noise_settings(motion_max_seq_length: int, context_length: int | None = 16, context_stride: int = 4,
                        weighting_scheme: str = "pyramid", noise_type: str = "shuffle_context") -> dict:
    """enable_free_noise's arguments checked (one-line ValueErrors naming the value and what is valid) and complete:
    context_length None becomes the motion modules' motion_max_seq_length."""
    limit = int(motion_max_seq_length)
    length = limit if context_length is None else context_length
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= limit:
        raise ValueError(f"enable_free_noise: context_length={context_length!r} is not an integer in [1, {limit}] "
                         f"(the motion modules' motion_max_seq_length={limit})")
    if isinstance(context_stride, bool) or not isinstance(context_stride, int) or not 1 <= context_stride <= length:
        raise ValueError(f"enable_free_noise: context_stride={context_stride!r} is not an integer in [1, "
                         f"context_length={length}] (a longer stride leaves frames outside every window)")
    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"enable_free_noise: unknown weighting_scheme {weighting_scheme!r}; expected one of "
                         f"{list(WEIGHTING_SCHEMES)}")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"enable_free_noise: unknown noise_type {noise_type!r}; expected one of {list(NOISE_TYPES)}")
    return {"context_length": length, "context_stride": context_stride, "weighting_scheme": weighting_scheme,
            "noise_type": noise_type}


def _frame_prompts(name: str, value, num_frames: int) -> dict:
    """A str or {frame: str} prompt as a dict sorted by frame, its last entry repeated at the last frame."""
    if isinstance(value, str):
        value = {0: value}
    if not isinstance(value, dict) or not value:
        raise ValueError(f"`{name}` with FreeNoise has to be a str or a non-empty {{frame index: str}} dict, got "
                         f"{type(value).__name__}")
    bad = [k for k, v in value.items() if isinstance(k, bool) or not isinstance(k, int) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"`{name}` dict: entries {bad} are not int frame index -> str prompt")
    frames = sorted(value)
    if frames[0] != 0 or frames[-1] >= num_frames:
        raise ValueError(f"`{name}` dict frames {frames}: the first must be 0 and all below num_frames={num_frames}")
    out = {f: value[f] for f in frames}
    out[num_frames - 1] = out[frames[-1]]
    return out


__all__ = ["AnimateDiffFreeNoiseMixin", "NOISE_TYPES", "free_noise_settings"]
