"""AnimateDiffVideoToVideoPipeline: video + text -> video, as diffusers' pipeline of the same name (0.42.1), on
MindSpore. The components, prompt encoding, denoising loop and decoding are AnimateDiff's; what differs:

- the input video (a list of PIL frames, a list of such lists, or (F, H, W, 3) / (B, F, H, W, 3) numpy frames in
  [0, 1]) is resized to (width, height) (Pillow LANCZOS, as diffusers' VideoProcessor), encoded `decode_chunk_size`
  frames at a time, a posterior *sample* per chunk, times the VAE's scaling factor;
- `strength` keeps the last int(steps * strength) timesteps; the encoded video is noised to the first of them by the
  scheduler's `add_noise` (with `enforce_inference_steps`, the schedule is built for steps / strength and its last
  `steps` timesteps run);
- random numbers, from a numpy Generator in diffusers' order: one posterior draw per encoded chunk, then the add-noise
  draw, then (DDIM eta > 0) one draw per step.

FreeNoise (`enable_free_noise`, as AnimateDiff's) windows the motion modules and encodes the prompt per frame; the
latents are the encoded video's, so its noise type is not used.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
from mindspore import Tensor, ops

from .. import backend
from .. import image_processing as ip
from ..lora import accepts_lora_scale
from ..modeling import required_config
from ..utils import randn
from .animatediff import AnimateDiffPipeline, prompt_batch_size


def _videos(video) -> list:
    """The input as a list of videos, each a list of PIL frames or an (F, H, W, 3) array."""
    if isinstance(video, np.ndarray):
        return [video] if video.ndim == 4 else list(video) if video.ndim == 5 else _bad(video)
    if isinstance(video, (list, tuple)) and video:
        if all(isinstance(f, PIL.Image.Image) for f in video):
            return [list(video)]
        if all(isinstance(v, (list, tuple)) and v and all(isinstance(f, PIL.Image.Image) for f in v) for v in video):
            return [list(v) for v in video]
        if all(isinstance(v, np.ndarray) and v.ndim == 4 for v in video):
            return list(video)
    return _bad(video)


def _bad(video):
    raise ValueError("`video` has to be a list of PIL images (one video), a list of such lists, or an (F, H, W, 3) / "
                     f"(B, F, H, W, 3) numpy array in [0, 1], got {type(video).__name__}")


class AnimateDiffVideoToVideoPipeline(AnimateDiffPipeline):
    def get_timesteps(self, num_inference_steps: int, timesteps, strength: float):
        """The last int(steps * strength) timesteps, as diffusers' get_timesteps."""
        init = min(int(num_inference_steps * strength), num_inference_steps)
        start = max(num_inference_steps - init, 0)
        return timesteps[start * self.scheduler.order:], num_inference_steps - start

    def encode_video(self, frames: np.ndarray, generator, decode_chunk_size: int) -> Tensor:
        """(F, 3, H, W) in [-1, 1] -> (F, C, h, w): posterior samples, `decode_chunk_size` frames at a time."""
        out = []
        for i in range(0, frames.shape[0], decode_chunk_size):
            posterior = self.vae.encode(Tensor(frames[i:i + decode_chunk_size]).astype(self.vae.dtype)).latent_dist
            out.append(posterior.sample(noise=randn(generator, tuple(posterior.mean.shape))))
        return ops.cat(out, axis=0)

    def prepare_video_latents(self, videos: list, height: int, width: int, batch_size: int, timestep, dtype,
                              generator, decode_chunk_size: int) -> Tensor:
        """(B, C, F, h, w): each video encoded, scaled, noised to `timestep`."""
        scaling = float(required_config(self.vae, "scaling_factor", type(self).__name__))
        encoded = []
        for vid in videos:
            frames = ip.preprocess(vid if isinstance(vid, list) else np.asarray(vid, np.float32), height, width,
                                   self.vae_scale_factor)
            encoded.append(self.encode_video(frames, generator, decode_chunk_size).expand_dims(0))
        init = backend.cast(ops.cat(encoded, axis=0), dtype) * scaling  # (B, F, C, h, w)
        if batch_size != init.shape[0]:
            raise ValueError(f"got {init.shape[0]} video(s) for an effective batch of {batch_size} (prompts x "
                             "num_videos_per_prompt); pass one video per generated video")
        noise = randn(generator, tuple(init.shape))
        noisy = self.scheduler.add_noise(init, Tensor(noise).astype(init.dtype), np.repeat(timestep, batch_size))
        return backend.permute(backend.to_tensor(noisy, dtype), (0, 2, 1, 3, 4))

    @accepts_lora_scale
    def __call__(self, video=None, prompt=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, enforce_inference_steps: bool = False, guidance_scale: float = 7.5,
                 strength: float = 0.8, negative_prompt=None, num_videos_per_prompt: int | None = 1, eta: float = 0.0,
                 generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 output_type: str = "pil", return_dict: bool = False, clip_skip: int | None = None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 decode_chunk_size: int = 16):
        name = type(self).__name__
        height, width = ip.pipeline_output_size(height, width, self.unet.config, self.vae_scale_factor,
                                                vae_config=self.vae.config if self.vae is not None else None,
                                                owner=name)
        num_videos_per_prompt = num_videos_per_prompt or 1
        if not 0 <= strength <= 1:
            raise ValueError(f"`strength` should be in [0.0, 1.0] but is {strength}")
        if (video is None) == (latents is None):
            raise ValueError("pass either `video` or `latents`, not both")
        videos = _videos(video) if video is not None else None
        num_frames = len(videos[0]) if videos is not None else latents.shape[2]
        self.check_inputs(prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs, output_type, num_frames, decode_chunk_size)
        self._guidance_scale = guidance_scale
        total = prompt_batch_size(prompt, prompt_embeds) * num_videos_per_prompt

        # 1. timesteps: the last int(steps * strength) (or, enforced, `steps` of a longer schedule)
        if not enforce_inference_steps:
            self.scheduler.set_timesteps(num_inference_steps)
            timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, self.scheduler.timesteps,
                                                                strength)
        else:
            self.scheduler.set_timesteps(int(num_inference_steps / strength))
            timesteps = self.scheduler.timesteps[-num_inference_steps:]
        if len(timesteps) == 0:
            raise ValueError(f"strength {strength} with {num_inference_steps} steps leaves no timestep to run; "
                             "raise one of them")

        # 2. latents: the encoded video noised to the first timestep (or the given latents, noised when enforced)
        dtype = self.unet.dtype
        if latents is None:
            latents = self.prepare_video_latents(videos, height, width, total, timesteps[0], dtype, generator,
                                                 decode_chunk_size)
        else:
            latents = backend.to_tensor(latents, dtype)
            if enforce_inference_steps:
                noise = Tensor(randn(generator, tuple(latents.shape))).astype(dtype)
                latents = backend.to_tensor(self.scheduler.add_noise(latents, noise, np.repeat(timesteps[0], total)),
                                            dtype)

        # 3. text, denoising, decoding as AnimateDiff
        context, prompt_embeds, negative_prompt_embeds = self.encode_prompt_per_frame(
            prompt, num_frames, num_videos_per_prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            clip_skip)
        latents = self.denoise(latents, timesteps, context, prompt_embeds, negative_prompt_embeds,
                               self.prepare_extra_step_kwargs(generator, eta), callback_on_step_end,
                               callback_on_step_end_tensor_inputs)
        return self.finish(latents, output_type, decode_chunk_size, return_dict)


__all__ = ["AnimateDiffVideoToVideoPipeline"]
