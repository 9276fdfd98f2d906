"""AnimateDiffPipeline: text -> video with an SD 1.5 checkpoint plus a motion adapter, as diffusers' pipeline of the
same name, on MindSpore.

    adapter = MotionAdapter.from_pretrained(adapter_path, mindspore_dtype=ms.float16)
    pipe = AnimateDiffPipeline.from_pretrained(sd15_path, motion_adapter=adapter, mindspore_dtype=ms.float16)
    frames = pipe(prompt="...", num_frames=16, generator=np.random.Generator(np.random.PCG64(49)))[0][0]

Given an SD 1.5 `UNet2DConditionModel`, the pipeline builds the `UNetMotionModel` from it and the adapter (as
diffusers does); a saved AnimateDiffPipeline folder already holds the UNetMotionModel. Random numbers come from a
numpy Generator (`mindport.utils.randn`): the initial latents, then the scheduler's own draws (DDIM with eta > 0).

LoRA (mindport.lora): `load_lora_weights`, `set_adapters`, `fuse_lora`, `unfuse_lora`, `unload_lora_weights`, style
LoRAs (peft/diffusers, kohya/A1111, LoCon) and motion LoRAs (diffusers and original AnimateDiff layouts).

`cross_attention_kwargs={"scale": s}` scales the unfused LoRA paths for one call, as in diffusers.

FreeNoise (mindport.pipelines.free_noise): `enable_free_noise`, `disable_free_noise`, `free_noise_enabled`; more
frames than the motion modules hold, and per-frame prompts {frame: prompt}.

Not ported: IP-Adapter images, FreeInit.
Deviation: diffusers 0.42 ignores `num_videos_per_prompt` (always 1); here it is honoured (each prompt's videos are
consecutive in the batch).
"""

from __future__ import annotations

import inspect

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from .. import backend
from .. import image_processing as ip
from ..lora import LoraLoaderMixin, accepts_lora_scale
from ..modeling import required_config
from ..models.unet_2d_condition import UNet2DConditionModel
from ..models.unet_motion_model import MotionAdapter, UNetMotionModel
from ..utils import randn
from .free_noise import AnimateDiffFreeNoiseMixin
from .pipeline_utils import DiffusionPipeline, PipelineOutput, encode_text
from .stable_video_diffusion import postprocess_video

CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")
OUTPUT_TYPES = ("pil", "np", "latent")


class AnimateDiffPipeline(AnimateDiffFreeNoiseMixin, LoraLoaderMixin, DiffusionPipeline):
    # components and loads_from from the registry row: an SD 1.5 pipeline folder is a valid base, its UNet becomes a
    # UNetMotionModel with the given adapter
    def __init__(self, vae, text_encoder, tokenizer, unet, motion_adapter: MotionAdapter | None = None,
                 scheduler=None, feature_extractor=None, image_encoder=None):
        if isinstance(unet, UNet2DConditionModel):
            if motion_adapter is None:
                raise ValueError("AnimateDiffPipeline: unet is a UNet2DConditionModel, so a motion_adapter (a "
                                 "MotionAdapter) is needed to build the UNetMotionModel")
            unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
        elif unet is not None and not isinstance(unet, UNetMotionModel):
            raise ValueError(f"AnimateDiffPipeline: unet must be a UNetMotionModel or a UNet2DConditionModel, got "
                             f"{type(unet).__name__}")
        if scheduler is None:
            raise ValueError("AnimateDiffPipeline: a scheduler is required (e.g. DDIMScheduler)")
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                         motion_adapter=motion_adapter, scheduler=scheduler, feature_extractor=feature_extractor,
                         image_encoder=image_encoder)
        self.vae_scale_factor = ip.vae_scale_factor(vae.config if vae is not None else None)
        self._guidance_scale = 7.5

    # 1. text embeddings ------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt, num_videos_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                      clip_skip: int | None = None) -> tuple[Tensor, Tensor | None]:
        """(B*n, L, D) prompt embeddings and, with guidance, the negative ones (B*n, L, D), in the text encoder's
        dtype (the UNet's when there is no text encoder)."""
        if prompt is not None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            batch = len(texts)
        else:
            batch = prompt_embeds.shape[0]
        if prompt_embeds is None:
            prompt_embeds = encode_text(self.tokenizer, self.text_encoder, texts,
                                        self.tokenizer.model_max_length, clip_skip, "AnimateDiffPipeline")
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = _as_tensor(prompt_embeds).astype(dtype)
        # each prompt's embedding n times in a row: (B, L, D) -> (B*n, L, D)
        prompt_embeds = ops.repeat_interleave(prompt_embeds, num_videos_per_prompt, 0)

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                uncond = [""] * batch
            elif prompt is not None and type(prompt) is not type(negative_prompt):
                raise TypeError(f"`negative_prompt` should be the same type as `prompt`, but got "
                                f"{type(negative_prompt).__name__} != {type(prompt).__name__}")
            elif isinstance(negative_prompt, str):
                uncond = [negative_prompt]
            elif len(negative_prompt) != batch:
                raise ValueError(f"`negative_prompt` has batch size {len(negative_prompt)}, but `prompt` has batch "
                                 f"size {batch}; they must match")
            else:
                uncond = list(negative_prompt)
            negative_prompt_embeds = encode_text(self.tokenizer, self.text_encoder, uncond,
                                                 prompt_embeds.shape[1], None, "AnimateDiffPipeline")
        if do_classifier_free_guidance:
            negative_prompt_embeds = _as_tensor(negative_prompt_embeds).astype(dtype)
            negative_prompt_embeds = ops.repeat_interleave(negative_prompt_embeds, num_videos_per_prompt, 0)
        return prompt_embeds, negative_prompt_embeds

    def encode_prompt_per_frame(self, prompt, num_frames: int, num_videos_per_prompt: int = 1, negative_prompt=None,
                                prompt_embeds=None, negative_prompt_embeds=None, clip_skip: int | None = None):
        """The UNet's text context for every frame: ([negative;] positive) (2*B*n*F, L, D) with guidance, else
        (B*n*F, L, D); then the positive and negative embeddings (per frame with FreeNoise, per video without)."""
        encode = self._encode_prompt_free_noise if self.free_noise_enabled else self.encode_prompt
        args = (num_frames,) if self.free_noise_enabled else ()
        prompt_embeds, negative_prompt_embeds = encode(prompt, *args, num_videos_per_prompt,
                                                       self.do_classifier_free_guidance, negative_prompt,
                                                       prompt_embeds, negative_prompt_embeds, clip_skip)
        return self._frame_context(prompt_embeds, negative_prompt_embeds, num_frames), prompt_embeds, \
            negative_prompt_embeds

    def _frame_context(self, prompt_embeds: Tensor, negative_prompt_embeds, num_frames: int) -> Tensor:
        context = (ops.cat([negative_prompt_embeds, prompt_embeds]) if self.do_classifier_free_guidance
                   else prompt_embeds)
        # per video -> per frame: (B*n, L, D) -> (B*n*F, L, D) (FreeNoise's embeddings are per frame already)
        return context if self.free_noise_enabled else ops.repeat_interleave(context, num_frames, 0)

    # 2. latents --------------------------------------------------------------------------------------------------
    def prepare_latents(self, batch_size: int, num_channels_latents: int, num_frames: int, height: int, width: int,
                        dtype, generator, latents=None) -> Tensor:
        """Initial noise (B, C, F, h, w), drawn from the numpy `generator` unless given (with FreeNoise: its noise
        types), times the scheduler's initial sigma."""
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for an effective batch size of {batch_size}; "
                             "pass one per video")
        shape = (batch_size, num_channels_latents, num_frames, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        if self.free_noise_enabled:
            latents = self._prepare_latents_free_noise(shape, generator, latents)
        if latents is None:
            latents = randn(generator, shape)
        latents = _as_tensor(latents)
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}")
        return latents.astype(dtype) * float(self.scheduler.init_noise_sigma)

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    # 3. decoding -------------------------------------------------------------------------------------------------
    def decode_latents(self, latents: Tensor, decode_chunk_size: int = 16) -> np.ndarray:
        """(B, C, F, h, w) latents -> (B, 3, F, H, W) float32 video in [-1, 1], `decode_chunk_size` frames at a time."""
        latents = latents * (1.0 / float(required_config(self.vae, "scaling_factor", "AnimateDiffPipeline")))
        b, c, f, h, w = latents.shape
        # (B, C, F, h, w) -> (B*F, C, h, w)
        latents = backend.permute(latents, (0, 2, 1, 3, 4)).reshape(b * f, c, h, w)
        video = []
        for i in range(0, latents.shape[0], decode_chunk_size):
            video.append(self.vae.decode(latents[i : i + decode_chunk_size].astype(self.vae.dtype)).sample)
        video = ops.cat(video, axis=0)
        # (B*F, 3, H, W) -> (B, F, 3, H, W) -> (B, 3, F, H, W)
        video = backend.permute(video.reshape(b, f, *video.shape[1:]), (0, 2, 1, 3, 4))
        return video.astype(ms.float32).asnumpy()

    def check_inputs(self, prompt, height: int, width: int, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None, callback_on_step_end_tensor_inputs=None, output_type="pil",
                     num_frames: int = 16, decode_chunk_size: int = 16) -> None:
        if height % 8 or width % 8:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("provide either `prompt` or `prompt_embeds`")
        if self.free_noise_enabled:  # prompts per frame (checked when encoded)
            self._check_free_noise_frames(num_frames)
        elif prompt is not None and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and
                                                                     all(isinstance(p, str) for p in prompt))):
            raise ValueError(f"`prompt` has to be a str or a non-empty list of str, got {type(prompt).__name__}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either `negative_prompt` or `negative_prompt_embeds`, not both")
        if prompt_embeds is not None and negative_prompt_embeds is not None and \
                tuple(prompt_embeds.shape) != tuple(negative_prompt_embeds.shape):
            raise ValueError(f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                             f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
        bad = [k for k in (callback_on_step_end_tensor_inputs or ()) if k not in CALLBACK_TENSOR_INPUTS]
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` {bad} not allowed; expected some of "
                             f"{list(CALLBACK_TENSOR_INPUTS)}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not supported; expected one of {list(OUTPUT_TYPES)}")
        if output_type != "latent":  # decoding divides by it: refuse a null one before denoising
            required_config(self.vae, "scaling_factor", "AnimateDiffPipeline")
        if num_frames < 1:
            raise ValueError(f"`num_frames` must be at least 1, got {num_frames}")
        limit = self.unet.config.motion_max_seq_length
        if num_frames > limit and not self.free_noise_enabled:
            raise ValueError(f"`num_frames`={num_frames} exceeds the motion modules' motion_max_seq_length={limit} "
                             "(enable_free_noise generates longer videos)")
        if decode_chunk_size < 1:
            raise ValueError(f"`decode_chunk_size` must be at least 1, got {decode_chunk_size}")

    # 4. the call -------------------------------------------------------------------------------------------------
    @accepts_lora_scale
    def __call__(
        self,
        prompt=None,
        num_frames: int | None = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt=None,
        num_videos_per_prompt: int | None = 1,
        eta: float = 0.0,
        generator: np.random.Generator | None = None,
        latents=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        output_type: str = "pil",
        return_dict: bool = False,
        clip_skip: int | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
        decode_chunk_size: int = 16,
    ):
        # 0. defaults and checks
        # (a config saved with diffusers' defaults has sample_size null: the VAE's sample_size, in pixels, then)
        height, width = ip.pipeline_output_size(height, width, self.unet.config, self.vae_scale_factor,
                                                vae_config=self.vae.config if self.vae is not None else None,
                                                owner="AnimateDiffPipeline")
        num_frames = 16 if num_frames is None else int(num_frames)
        num_videos_per_prompt = num_videos_per_prompt or 1
        self.check_inputs(prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs, output_type, num_frames, decode_chunk_size)
        self._guidance_scale = guidance_scale
        batch_size = prompt_batch_size(prompt, prompt_embeds)

        # 1. text embeddings per frame: ([negative;] positive) (2*B*n*F, L, D)
        context, prompt_embeds, negative_prompt_embeds = self.encode_prompt_per_frame(
            prompt, num_frames, num_videos_per_prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            clip_skip)

        # 2. timesteps and initial latents (B*n, C, F, h, w)
        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(batch_size * num_videos_per_prompt, self.unet.config.in_channels, num_frames,
                                       height, width, prompt_embeds.dtype, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 3. denoising loop, 4. decode and post-process
        latents = self.denoise(latents, timesteps, context, prompt_embeds, negative_prompt_embeds, extra_step_kwargs,
                               callback_on_step_end, callback_on_step_end_tensor_inputs)
        return self.finish(latents, output_type, decode_chunk_size, return_dict)

    def denoise(self, latents: Tensor, timesteps, context: Tensor, prompt_embeds, negative_prompt_embeds,
                extra_step_kwargs: dict, callback_on_step_end=None,
                callback_on_step_end_tensor_inputs=("latents",)) -> Tensor:
        """The guided denoising loop over `timesteps` from `latents` (B, C, F, h, w) with the per-frame text
        `context` (shared with video-to-video)."""
        num_frames = latents.shape[2]
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                model_input = ops.cat([latents, latents]) if self.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(model_input, t, encoder_hidden_states=context).sample
                if self.do_classifier_free_guidance:
                    uncond, cond = ops.chunk(noise_pred, 2)
                    noise_pred = uncond + self.guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    out = out or {}
                    latents = _as_tensor(out.pop("latents", latents))
                    if "prompt_embeds" in out or "negative_prompt_embeds" in out:
                        prompt_embeds = _as_tensor(out.pop("prompt_embeds", prompt_embeds))
                        negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
                        context = self._frame_context(prompt_embeds, _as_tensor(negative_prompt_embeds)
                                                      if negative_prompt_embeds is not None else None, num_frames)
                bar.update()
        return latents

    def finish(self, latents: Tensor, output_type: str, decode_chunk_size: int, return_dict: bool):
        """Decode and post-process (or the latents), in the pipeline's return convention."""
        if output_type == "latent":
            frames = latents
        else:
            frames = postprocess_video(self.decode_latents(latents, decode_chunk_size), output_type)
        if return_dict:
            return PipelineOutput(frames=frames)
        return (frames,)


def prompt_batch_size(prompt, prompt_embeds) -> int:
    """Prompts in the batch: a str or a FreeNoise {frame: prompt} dict is one."""
    if prompt is None:
        return prompt_embeds.shape[0]
    return 1 if isinstance(prompt, (str, dict)) else len(prompt)


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x, np.float32))


__all__ = ["AnimateDiffPipeline"]
