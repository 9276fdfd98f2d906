"""I2VGenXLPipeline: text + image -> video, as diffusers' pipeline of the same name (0.42.1), on MindSpore.

What diffusers does, and so do we:
- prompt: CLIP text encoder; with `clip_skip` (default 1) the hidden state `clip_skip + 1` from the end goes through
  the encoder's `final_layer_norm` (diffusers reaches it as `text_encoder.text_model.final_layer_norm`; our
  CLIPTextModel has the transformers-5 layout, `final_layer_norm` at the top);
- image, CLIP path: `_center_crop_wide` to (width, width) (Pillow BOX), Pillow BILINEAR resize to the feature
  extractor's crop size, CLIP mean/std, image encoder; zeros for the unconditional half;
- image, VAE path: `_center_crop_wide` to (width, height), [-1, 1], `vae.encode(...).latent_dist.sample()` times
  the VAE's scaling factor, then a frame-position ramp (1/(F-1), ..., 1) for frames 2..F;
- DDIM denoising with classifier-free guidance, the scheduler stepping on (B*F, C, h, w);
- decoding `decode_chunk_size` frames at a time (default 1).

Random numbers come from a numpy Generator through `mindport.utils.randn`, in diffusers' order: the VAE posterior
sample (image-latent shape), the initial latents, then (eta > 0) one DDIM variance draw per step.
"""

from __future__ import annotations

import inspect

import mindspore as ms
import numpy as np
import PIL.Image
from mindspore import Tensor, ops

from .. import backend
from .. import image_processing as ip
from ..lora import LoraLoaderMixin
from ..modeling import required_config
from ..utils import randn
from .pipeline_utils import DiffusionPipeline, PipelineOutput, encode_text
from .stable_video_diffusion import postprocess_video

OUTPUT_TYPES = ("pil", "np", "latent")


def _as_pil_list(image) -> list:
    """PIL image / list of PIL images / HxWx3 or BxHxWx3 numpy array in [0, 1] -> list of PIL images (arrays are
    converted as diffusers converts tensors: x * 255 rounded)."""
    if isinstance(image, PIL.Image.Image):
        return [image]
    if isinstance(image, np.ndarray) and image.ndim in (3, 4):
        return ip.numpy_to_pil(image)
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image):
        return list(image)
    raise ValueError("`image` has to be a PIL.Image.Image, a list of PIL images or an HxWx3 / BxHxWx3 numpy array in "
                     f"[0, 1], but is {type(image).__name__}")


def _crop_size(feature_extractor: dict) -> tuple[int, int]:
    """(width, height) of the CLIP input from preprocessor_config.json's crop_size (dict or int; default 224)."""
    cs = feature_extractor.get("crop_size") or 224  # absent or null: CLIPImageProcessor's default 224 x 224
    if isinstance(cs, dict):
        return int(cs["width"]), int(cs["height"])
    return int(cs), int(cs)


class I2VGenXLPipeline(LoraLoaderMixin, DiffusionPipeline):
    def __init__(self, vae, text_encoder, tokenizer, image_encoder, feature_extractor, unet, scheduler):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                         feature_extractor=feature_extractor or {}, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = ip.vae_scale_factor(vae.config if vae is not None else None)

    # 1. text ---------------------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt, num_videos_per_prompt: int, negative_prompt=None, prompt_embeds=None,
                      negative_prompt_embeds=None, clip_skip: int | None = None):
        """-> (prompt_embeds (B*n, L, D), negative_prompt_embeds or None), in the text encoder's dtype."""
        batch = 1 if isinstance(prompt, str) else len(prompt) if isinstance(prompt, list) else prompt_embeds.shape[0]
        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = encode_text(self.tokenizer, self.text_encoder, texts,
                                        self.tokenizer.model_max_length, clip_skip, "I2VGenXLPipeline")
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = ops.repeat_interleave(backend.to_tensor(prompt_embeds, dtype), num_videos_per_prompt, 0)

        if self.do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                uncond = [""] * batch
            elif prompt is not None and type(prompt) is not type(negative_prompt):
                raise TypeError(f"`negative_prompt` should be the same type to `prompt`, but got "
                                f"{type(negative_prompt).__name__} != {type(prompt).__name__}")
            elif isinstance(negative_prompt, str):
                uncond = [negative_prompt]
            elif batch != len(negative_prompt):
                raise ValueError(f"`negative_prompt` has batch size {len(negative_prompt)}, but `prompt` has batch "
                                 f"size {batch}; expected the same")
            else:
                uncond = list(negative_prompt)
            negative_prompt_embeds = encode_text(self.tokenizer, self.text_encoder, uncond,
                                                 prompt_embeds.shape[1], clip_skip, "I2VGenXLPipeline")
        if self.do_classifier_free_guidance:
            negative_prompt_embeds = ops.repeat_interleave(backend.to_tensor(negative_prompt_embeds, dtype),
                                                           num_videos_per_prompt, 0)
        return prompt_embeds, negative_prompt_embeds

    # 2. image: CLIP embedding and VAE latents ----------------------------------------------------------------------
    def _encode_image(self, images: list, num_videos_per_prompt: int) -> Tensor:
        """PIL images at the CLIP crop size -> (B*n [x2], 1, D) image embeddings (zeros first under guidance)."""
        pixels = ip.to_nchw(ip.pil_to_numpy(images))
        mean = self.feature_extractor.get("image_mean") or ip.CLIP_MEAN  # absent or null: OpenAI CLIP's
        std = self.feature_extractor.get("image_std") or ip.CLIP_STD
        pixels = ip.clip_normalize(pixels, mean, std)
        emb = self.image_encoder(Tensor(pixels).astype(self.image_encoder.dtype)).image_embeds  # (B, D)
        emb = ops.repeat_interleave(emb.expand_dims(1), num_videos_per_prompt, 0)
        if self.do_classifier_free_guidance:
            emb = ops.cat([ops.zeros_like(emb), emb])
        return emb

    def prepare_image_latents(self, pixels: np.ndarray, num_frames: int, num_videos_per_prompt: int, dtype,
                              generator) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B*n [x2], 4, F, h, w): a posterior sample of the first frame, scaled, then
        constant frames (k / (F-1)) for k = 1..F-1."""
        posterior = self.vae.encode(Tensor(pixels).astype(dtype)).latent_dist
        latents = posterior.sample(noise=randn(generator, posterior.mean.shape))
        scale = float(required_config(self.vae, "scaling_factor", "I2VGenXLPipeline"))
        latents = (latents * scale).expand_dims(2)  # (B, 4, 1, h, w)
        if num_frames > 1:
            b, c, _, h, w = latents.shape
            ramp = np.asarray([(k + 1) / (num_frames - 1) for k in range(num_frames - 1)], np.float64)
            ramp = np.broadcast_to(ramp.reshape(1, 1, -1, 1, 1), (b, c, num_frames - 1, h, w))
            latents = ops.cat([latents, Tensor(ramp.astype(np.float32)).astype(latents.dtype)], axis=2)
        latents = ops.tile(latents, (num_videos_per_prompt, 1, 1, 1, 1))
        if self.do_classifier_free_guidance:
            latents = ops.cat([latents, latents])
        return latents

    # 3. decoding -------------------------------------------------------------------------------------------------------
    def decode_latents(self, latents: Tensor, decode_chunk_size: int | None = None) -> np.ndarray:
        """(B, C, F, h, w) -> (B, 3, F, H, W) float32 frames in [-1, 1]."""
        latents = latents * (1 / float(required_config(self.vae, "scaling_factor", "I2VGenXLPipeline")))
        b, c, f, h, w = latents.shape
        latents = backend.permute(latents, (0, 2, 1, 3, 4)).reshape(b * f, c, h, w).astype(self.vae.dtype)
        if decode_chunk_size is None:
            image = self.vae.decode(latents).sample
        else:
            image = ops.cat([self.vae.decode(latents[i : i + decode_chunk_size]).sample
                             for i in range(0, b * f, decode_chunk_size)], axis=0)
        video = backend.permute(image.reshape(b, f, *image.shape[1:]), (0, 2, 1, 3, 4))
        return video.astype(ms.float32).asnumpy()

    def check_inputs(self, prompt, image, height, width, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None, output_type="pil", decode_chunk_size=1):
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("provide either `prompt` or `prompt_embeds`; both are undefined")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt).__name__}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either `negative_prompt` or `negative_prompt_embeds`, not both")
        if (prompt_embeds is not None and negative_prompt_embeds is not None
                and tuple(prompt_embeds.shape) != tuple(negative_prompt_embeds.shape)):
            raise ValueError(f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                             f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not supported; expected one of {list(OUTPUT_TYPES)}")
        if decode_chunk_size is not None and int(decode_chunk_size) < 1:
            raise ValueError(f"decode_chunk_size must be a positive int or None, got {decode_chunk_size!r}")
        return _as_pil_list(image)

    def __call__(
        self,
        prompt=None,
        image=None,
        height: int | None = 704,
        width: int | None = 1280,
        target_fps: int | None = 16,
        num_frames: int = 16,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        negative_prompt=None,
        eta: float = 0.0,
        num_videos_per_prompt: int | None = 1,
        decode_chunk_size: int | None = 1,
        generator: np.random.Generator | None = None,
        latents=None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        output_type: str = "pil",
        return_dict: bool = False,
        cross_attention_kwargs=None,
        clip_skip: int | None = 1,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
    ):
        # 0. defaults and checks
        # (a config saved with diffusers' defaults has sample_size null: the documented 704 x 1280 then)
        height, width = ip.pipeline_output_size(height, width, self.unet.config, self.vae_scale_factor,
                                                fallback=(704, 1280),
                                                owner="I2VGenXLPipeline")
        required_config(self.vae, "scaling_factor", "I2VGenXLPipeline")  # the image latents are scaled by it
        images = self.check_inputs(prompt, image, height, width, negative_prompt, prompt_embeds,
                                   negative_prompt_embeds, output_type, decode_chunk_size)
        batch = 1 if isinstance(prompt, str) else len(prompt) if isinstance(prompt, list) else prompt_embeds.shape[0]
        nv = num_videos_per_prompt or 1
        self._guidance_scale = guidance_scale

        # 1. text embeddings (B*n [x2], L, D): unconditional first under guidance
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, nv, negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, clip_skip=clip_skip)
        if self.do_classifier_free_guidance:
            prompt_embeds = ops.cat([negative_prompt_embeds, prompt_embeds])

        # 2. CLIP image embedding of the (width x width) centre crop at the CLIP crop size: (B*n [x2], 1, D)
        crop = ip.center_crop_wide(images, (width, width))
        cw, ch = _crop_size(self.feature_extractor)
        crop = [ip.resize(im, ch, cw, resample="bilinear") for im in crop]
        image_embeddings = self._encode_image(crop, nv)

        # 3. VAE latents of the (width x height) centre crop, with the frame-position ramp: (B*n [x2], 4, F, h, w)
        pixels = ip.preprocess(ip.center_crop_wide(images, (width, height)), do_resize=False)
        image_latents = self.prepare_image_latents(pixels, num_frames, nv, image_embeddings.dtype, generator)

        # 4. fps micro-condition (B*n [x2],)
        fps = np.tile(np.asarray([target_fps] * (2 if self.do_classifier_free_guidance else 1), np.int64),
                      batch * nv)

        # 5. timesteps and initial latents (B*n, C, F, h, w)
        self.scheduler.set_timesteps(num_inference_steps)
        timesteps = self.scheduler.timesteps
        dtype = prompt_embeds.dtype
        shape = (batch * nv, self.unet.config.in_channels, num_frames, height // self.vae_scale_factor,
                 width // self.vae_scale_factor)
        if latents is None:
            latents = randn(generator, shape)
        latents = latents if isinstance(latents, Tensor) else Tensor(np.asarray(latents, np.float32))
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.astype(dtype) * float(self.scheduler.init_noise_sigma)
        step_params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_params}

        # 6. denoising loop; the scheduler steps on frames folded into the batch: (B*F, C, h, w)
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                model_input = ops.cat([latents, latents]) if self.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(model_input, t, encoder_hidden_states=prompt_embeds, fps=fps,
                                       image_latents=image_latents, image_embeddings=image_embeddings,
                                       cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]
                if self.do_classifier_free_guidance:
                    uncond, cond = ops.chunk(noise_pred, 2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                b, c, f, h, w = latents.shape
                folded = backend.permute(latents, (0, 2, 1, 3, 4)).reshape(b * f, c, h, w)
                noise_pred = backend.permute(noise_pred, (0, 2, 1, 3, 4)).reshape(b * f, c, h, w)
                latents = self.scheduler.step(noise_pred, t, folded, **extra).prev_sample
                latents = backend.permute(latents.reshape(b, f, c, h, w), (0, 2, 1, 3, 4))
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                bar.update()

        # 7. decode and post-process
        if output_type == "latent":
            frames = latents
        else:
            frames = postprocess_video(self.decode_latents(latents, decode_chunk_size), output_type)
        if return_dict:
            return PipelineOutput(frames=frames)
        return (frames,)


__all__ = ["I2VGenXLPipeline"]
