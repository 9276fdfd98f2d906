"""StableVideoDiffusionPipeline: image -> video, as diffusers' pipeline of the same name, on MindSpore.

Random numbers come from a numpy Generator (`mindport.utils.randn`), drawn in diffusers' order: first the
noise-augmentation noise (image shape), then the initial latents."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import PIL.Image
from mindspore import Tensor, ops

from .. import backend
from .. import image_processing as ip
from ..lora import LoraLoaderMixin
from ..modeling import required_config
from ..utils import randn
from .pipeline_utils import DiffusionPipeline, PipelineOutput


def _as_image_list(image) -> list:
    if isinstance(image, PIL.Image.Image):
        return [image]
    if isinstance(image, np.ndarray):
        return list(image[None] if image.ndim == 3 else image)
    if isinstance(image, list) and image and all(isinstance(i, (PIL.Image.Image, np.ndarray)) for i in image):
        return image
    raise ValueError(f"`image` must be a PIL image, a list of PIL images or an HxWx3 / BxHxWx3 numpy array in [0, 1], "
                     f"got {type(image).__name__}")


def postprocess_video(video: np.ndarray, output_type: str):
    """(B, 3, F, H, W) in [-1, 1] -> "np": (B, F, H, W, 3) in [0, 1]; "pil": one list of PIL frames per video."""
    frames = np.clip(video / 2 + 0.5, 0, 1).transpose(0, 2, 3, 4, 1)
    if output_type == "np":
        return frames
    return [ip.numpy_to_pil(v) for v in frames]


class StableVideoDiffusionPipeline(LoraLoaderMixin, DiffusionPipeline):
    def __init__(self, vae, image_encoder, unet, scheduler, feature_extractor=None):
        super().__init__(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                         feature_extractor=feature_extractor or {})
        self.vae_scale_factor = ip.vae_scale_factor(vae.config)

    # 1. CLIP image embedding: antialiased resize to 224, CLIP normalisation, image encoder
    def _encode_image(self, images: list, num_videos_per_prompt: int, do_cfg: bool) -> Tensor:
        pixels = ip.pil_to_numpy(images).transpose(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W), [0, 1]
        pixels = ip.resize_with_antialiasing(pixels * 2.0 - 1.0, (224, 224))
        pixels = (pixels + 1.0) / 2.0
        # (absent or null: CLIPImageProcessor's OpenAI CLIP defaults)
        mean = np.asarray(self.feature_extractor.get("image_mean") or ip.CLIP_MEAN, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.feature_extractor.get("image_std") or ip.CLIP_STD, np.float32).reshape(1, 3, 1, 1)
        pixels = ((pixels - mean) / std).astype(np.float32)
        dtype = self.image_encoder.dtype
        emb = self.image_encoder(Tensor(pixels).astype(dtype)).image_embeds  # (B, D)
        emb = emb.expand_dims(1)  # (B, 1, D)
        emb = ops.repeat_interleave(emb, num_videos_per_prompt, 0)
        if do_cfg:
            emb = ops.cat([ops.zeros_like(emb), emb])
        return emb

    # 2. VAE image latents (mode of the posterior), as conditioning concatenated to every frame
    def _encode_vae_image(self, image: np.ndarray, num_videos_per_prompt: int, do_cfg: bool) -> Tensor:
        latents = self.vae.encode(Tensor(image).astype(self.vae.dtype)).latent_dist.mode()
        latents = ops.repeat_interleave(latents, num_videos_per_prompt, 0)
        if do_cfg:
            latents = ops.cat([ops.zeros_like(latents), latents])
        return latents

    def _get_add_time_ids(self, fps, motion_bucket_id, noise_aug_strength, dtype, batch, do_cfg) -> Tensor:
        ids = [fps, motion_bucket_id, noise_aug_strength]
        expected = self.unet.add_embedding.linear_1.in_features
        if self.unet.config.addition_time_embed_dim * len(ids) != expected:
            raise ValueError(f"the UNet expects an added time embedding of length {expected}, but "
                             f"{self.unet.config.addition_time_embed_dim * len(ids)} was created")
        arr = np.tile(np.asarray([ids], np.float32), (batch, 1))
        if do_cfg:
            arr = np.concatenate([arr, arr])
        return Tensor(arr).astype(dtype)

    def decode_latents(self, latents: Tensor, num_frames: int, decode_chunk_size: int = 14) -> Tensor:
        # (B, F, C, h, w) -> (B*F, C, h, w), decoded `decode_chunk_size` frames at a time
        latents = latents.reshape(-1, *latents.shape[2:])
        latents = latents / required_config(self.vae, "scaling_factor", "StableVideoDiffusionPipeline")
        frames = []
        for i in range(0, latents.shape[0], decode_chunk_size):
            chunk = latents[i : i + decode_chunk_size]
            frames.append(self.vae.decode(chunk.astype(self.vae.dtype), num_frames=chunk.shape[0]).sample)
        frames = ops.cat(frames, axis=0)
        # (B*F, 3, H, W) -> (B, 3, F, H, W)
        frames = backend.permute(frames.reshape(-1, num_frames, *frames.shape[1:]), (0, 2, 1, 3, 4))
        return frames.astype(ms.float32)

    def __call__(
        self,
        image,
        height: int = 576,
        width: int = 1024,
        num_frames: int | None = None,
        num_inference_steps: int = 25,
        sigmas: list[float] | None = None,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug_strength: float = 0.02,
        decode_chunk_size: int | None = None,
        num_videos_per_prompt: int = 1,
        generator: np.random.Generator | None = None,
        latents=None,
        output_type: str = "pil",
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=("latents",),
        return_dict: bool = False,
    ):
        # 0. defaults and checks
        # (a config saved with diffusers' defaults has sample_size null: the documented 576 x 1024 then)
        height, width = ip.pipeline_output_size(height, width, self.unet.config, self.vae_scale_factor,
                                                fallback=(576, 1024),
                                                owner="StableVideoDiffusionPipeline")
        if num_frames is None:  # the UNet's; null there: UNetSpatioTemporalConditionModel's default, 25
            num_frames = self.unet.config.get("num_frames") or 25
        decode_chunk_size = decode_chunk_size if decode_chunk_size is not None else num_frames
        if height % 8 or width % 8:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}")
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type {output_type!r} is not supported; expected 'pil', 'np' or 'latent'")
        if output_type != "latent":  # decoding divides by it: refuse a null one before denoising
            required_config(self.vae, "scaling_factor", "StableVideoDiffusionPipeline")
        images = _as_image_list(image)
        batch = len(images)
        do_cfg = max_guidance_scale > 1

        # 1. image embedding (B*n [x2], 1, D)
        image_embeddings = self._encode_image(images, num_videos_per_prompt, do_cfg)
        dtype = image_embeddings.dtype
        fps = fps - 1

        # 2. noise-augmented conditioning image -> VAE latents (B*n [x2], F, C, h, w)
        pixels = ip.preprocess(images, height=height, width=width)  # (B, 3, H, W) in [-1, 1]
        pixels = pixels + noise_aug_strength * randn(generator, pixels.shape)
        needs_upcasting = self.vae.dtype == ms.float16 and self.vae.config.force_upcast
        if needs_upcasting:
            self.vae.to_dtype(ms.float32)
        image_latents = self._encode_vae_image(pixels, num_videos_per_prompt, do_cfg).astype(dtype)
        if needs_upcasting:
            self.vae.to_dtype(ms.float16)
        image_latents = ops.tile(image_latents.expand_dims(1), (1, num_frames, 1, 1, 1))

        # 3. micro-conditioning: fps-1, motion bucket, noise augmentation strength
        added_time_ids = self._get_add_time_ids(fps, motion_bucket_id, noise_aug_strength, dtype,
                                                batch * num_videos_per_prompt, do_cfg)

        # 4. timesteps and initial latents (B*n, F, C/2, h, w), scaled by the initial sigma
        self.scheduler.set_timesteps(num_inference_steps, sigmas=sigmas)
        timesteps = self.scheduler.timesteps
        shape = (batch * num_videos_per_prompt, num_frames, self.unet.config.in_channels // 2,
                 height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn(generator, shape)
        latents = latents if isinstance(latents, Tensor) else Tensor(np.asarray(latents, np.float32))
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.astype(dtype) * float(self.scheduler.init_noise_sigma)

        # 5. per-frame guidance scale, from min (first frame) to max (last frame): (B, F, 1, 1, 1)
        guidance = np.linspace(min_guidance_scale, max_guidance_scale, num_frames, dtype=np.float32)[None]
        guidance = np.tile(guidance, (batch * num_videos_per_prompt, 1)).reshape(-1, num_frames, 1, 1, 1)
        guidance = Tensor(guidance).astype(dtype)

        # 6. denoising loop
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                model_input = ops.cat([latents, latents]) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_input = ops.cat([model_input, image_latents], axis=2)
                noise_pred = self.unet(model_input, t, encoder_hidden_states=image_embeddings,
                                       added_time_ids=added_time_ids, return_dict=False)[0]
                if do_cfg:
                    uncond, cond = ops.chunk(noise_pred, 2)
                    noise_pred = uncond + guidance * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents).prev_sample
                if callback_on_step_end is not None:
                    local = {"latents": latents}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = out.pop("latents", latents)
                bar.update()

        # 7. decode (in the VAE's dtype, as diffusers does) and post-process
        if output_type == "latent":
            frames = latents
        else:
            video = self.decode_latents(latents, num_frames, decode_chunk_size).asnumpy()  # (B, 3, F, H, W)
            frames = postprocess_video(video, output_type)
        if return_dict:
            return PipelineOutput(frames=frames)
        return frames
