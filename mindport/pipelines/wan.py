"""WanPipeline (text -> video) and WanImageToVideoPipeline (image + text -> video), as diffusers' pipelines of the
same names (0.42.1), on MindSpore.

What diffusers does, and so do we:
- prompt: cleaned (ftfy when installed, HTML unescaped twice, whitespace collapsed), tokenised to
  `max_sequence_length` (default 512) with the attention mask, UMT5 `last_hidden_state`, cut to each prompt's real
  length and zero-padded back (so the padding positions hold exact zeros);
- latents: (B, z_dim, 1 + (F-1)/4, H/8, W/8) standard normal float32; the transformer runs the text-conditioned and
  the negative-prompt pass as two calls (batch B each), guidance `uncond + g * (cond - uncond)`;
- scheduler: whatever the folder holds (Wan ships UniPC with flow prediction); `set_begin_index(0)`;
- Wan 2.2 A14B: with `boundary_ratio` (model_index.json) and a `transformer_2`, steps with t < boundary_ratio *
  num_train_timesteps run `transformer_2` with `guidance_scale_2` (default: guidance_scale);
- decoding: latents * std + mean (diffusers divides by 1/std; we do the same float32 operations), VAE decode
  (clamped to [-1, 1]), frames as (B, F, H, W, 3) in [0, 1] ("np"), lists of PIL frames ("pil") or the latents.
- I2V: the image's CLIP embedding is the vision tower's second-to-last hidden state (CLIPImageProcessor
  preprocessing, `image_processing.clip_image_processor`); the VAE encodes the image followed by F-1 black frames
  (or the image, black frames, `last_image`), takes the posterior's mode, normalises it with the latents
  statistics and prepends a 4-channel first-frame mask: the transformer sees [latents, mask, condition].

LoRA (mindport.lora, as diffusers' WanLoraLoaderMixin): `load_lora_weights` into the transformer (or, with
`load_into_transformer_2=True`, the second expert), `set_adapters`, `fuse_lora` / `unfuse_lora` (default: the
transformer), `unload_lora_weights`; `attention_kwargs={"scale": s}` scales the unfused LoRA paths in the
transformer's calls.

mindone's return convention: `return_dict=False` by default, so `pipe(...)[0][0]` is the first video. Random
numbers come from a numpy Generator through `mindport.utils.randn` (the initial latents are the only draw).
"""

from __future__ import annotations

import html
import re
import warnings

import mindspore as ms
import numpy as np
import PIL.Image
from mindspore import Tensor, ops

from .. import backend
from .. import image_processing as ip
from ..lora import LoraLoaderMixin
from ..utils import randn
from .pipeline_utils import DiffusionPipeline, PipelineOutput
from .stable_video_diffusion import postprocess_video

OUTPUT_TYPES = ("np", "pil", "latent")
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")


def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt cleaning: ftfy.fix_text (when ftfy is installed), HTML unescaped twice, stripped,
    whitespace runs collapsed to one space."""
    try:
        import ftfy
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


class _WanPipelineBase(LoraLoaderMixin, DiffusionPipeline):
    """What both Wan pipelines share: prompt encoding, latents, the two-pass guided denoising loop, decoding, LoRA."""

    config_keys = ("boundary_ratio", "expand_timesteps")
    _lora_components = ("transformer", "transformer_2")
    _lora_fuse_components = ("transformer",)

    def __init__(self, boundary_ratio=None, expand_timesteps=False, **components):
        super().__init__(**components)
        name = type(self).__name__
        if expand_timesteps:
            raise NotImplementedError(f"{name}: expand_timesteps=true (Wan 2.2 TI2V-5B, whose VAE is not ported) is "
                                      "not supported; expected false")
        if self.transformer is None and self.transformer_2 is None:
            raise ValueError(f"{name}: needs a transformer (model_index.json's `transformer` is null)")
        if boundary_ratio is not None and (self.transformer is None or self.transformer_2 is None):
            raise ValueError(f"{name}: boundary_ratio={boundary_ratio} needs both `transformer` and `transformer_2`")
        self.boundary_ratio, self.expand_timesteps = boundary_ratio, bool(expand_timesteps)
        vae_cfg = self.vae.config if self.vae is not None else {}
        # config values, else what the VAE's layout implies (diffusers' default 4 / 8 when there is no VAE)
        down = vae_cfg.get("temperal_downsample")
        mult = vae_cfg.get("dim_mult")
        self.vae_scale_factor_temporal = int(vae_cfg.get("scale_factor_temporal")
                                             or (2 ** sum(bool(d) for d in down) if down else 4))
        self.vae_scale_factor_spatial = int(vae_cfg.get("scale_factor_spatial")
                                            or (2 ** (len(mult) - 1) if mult else 8))

    @property
    def _denoiser(self):
        return self.transformer if self.transformer is not None else self.transformer_2

    # 1. text ---------------------------------------------------------------------------------------------------------
    def _t5_prompt_embeds(self, prompts: list[str], num_videos_per_prompt: int, max_sequence_length: int) -> Tensor:
        """-> (B*n, max_sequence_length, D): UMT5 states of the cleaned prompts, zero past each prompt's length."""
        name = type(self).__name__
        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError(f"{name}: a prompt needs the pipeline's tokenizer and text_encoder; pass prompt_embeds "
                             "instead")
        tokens = self.tokenizer([prompt_clean(p) for p in prompts], padding="max_length",
                                max_length=max_sequence_length, truncation=True, add_special_tokens=True,
                                return_attention_mask=True, return_tensors="np")
        ids = np.asarray(tokens["input_ids"], np.int64)
        mask = np.asarray(tokens["attention_mask"], np.int64)
        states = self.text_encoder(ids, attention_mask=mask).last_hidden_state
        lengths = (mask > 0).sum(axis=1)
        keep = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.float32)[:, :, None]
        states = states * Tensor(keep).astype(states.dtype)  # exact zeros past the real length
        return ops.repeat_interleave(states, num_videos_per_prompt, 0)

    def encode_prompt(self, prompt, negative_prompt=None, do_classifier_free_guidance: bool = True,
                      num_videos_per_prompt: int = 1, prompt_embeds=None, negative_prompt_embeds=None,
                      max_sequence_length: int = 226):
        """-> (prompt_embeds, negative_prompt_embeds or None), as diffusers' `encode_prompt`."""
        prompt = [prompt] if isinstance(prompt, str) else prompt
        batch = len(prompt) if prompt is not None else prompt_embeds.shape[0]
        if prompt_embeds is None:
            prompt_embeds = self._t5_prompt_embeds(prompt, num_videos_per_prompt, max_sequence_length)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negative_prompt = batch * [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if prompt is not None and type(prompt) is not type(negative_prompt):
                raise TypeError(f"`negative_prompt` should be the same type to `prompt`, but got "
                                f"{type(negative_prompt).__name__} != {type(prompt).__name__}")
            if batch != len(negative_prompt):
                raise ValueError(f"`negative_prompt` has batch size {len(negative_prompt)}, but `prompt` has batch "
                                 f"size {batch}; expected the same")
            negative_prompt_embeds = self._t5_prompt_embeds(negative_prompt, num_videos_per_prompt,
                                                            max_sequence_length)
        return prompt_embeds, negative_prompt_embeds

    # 2. checks and sizes -----------------------------------------------------------------------------------------------
    def _check_common(self, prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                      callback_on_step_end_tensor_inputs, guidance_scale_2, output_type):
        if height % 16 != 0 or width % 16 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 16 but are {height} and {width}")
        bad = [k for k in (callback_on_step_end_tensor_inputs or ()) if k not in CALLBACK_TENSOR_INPUTS]
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` {bad} not allowed; expected some of "
                             f"{list(CALLBACK_TENSOR_INPUTS)}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either `negative_prompt` or `negative_prompt_embeds`, not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("provide either `prompt` or `prompt_embeds`")
        for label, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not (isinstance(value, str) or
                                          (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                raise ValueError(f"`{label}` has to be a str or a list of str, got {type(value).__name__}")
        if self.boundary_ratio is None and guidance_scale_2 is not None:
            raise ValueError("`guidance_scale_2` is only supported when the pipeline's `boundary_ratio` is not None")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not supported; expected one of {list(OUTPUT_TYPES)}")

    def _sizes(self, height: int, width: int, num_frames: int) -> tuple[int, int, int]:
        """num_frames rounded down to 4k+1 (Wan 2.1's factor) and the pixel size to whole patches, with diffusers'
        warnings."""
        tf = self.vae_scale_factor_temporal
        if num_frames % tf != 1:
            warnings.warn(f"`num_frames - 1` has to be divisible by {tf}; rounding {num_frames} to "
                          f"{num_frames // tf * tf + 1}", stacklevel=3)
            num_frames = num_frames // tf * tf + 1
        num_frames = max(num_frames, 1)
        patch = self._denoiser.patch_size
        hm, wm = self.vae_scale_factor_spatial * patch[1], self.vae_scale_factor_spatial * patch[2]
        if height % hm or width % wm:
            warnings.warn(f"`height` and `width` must be multiples of ({hm}, {wm}) for whole patches; adjusting "
                          f"({height}, {width}) -> ({height // hm * hm}, {width // wm * wm})", stacklevel=3)
            height, width = height // hm * hm, width // wm * wm
        return height, width, num_frames

    def _latent_shape(self, batch: int, channels: int, height: int, width: int, num_frames: int) -> tuple:
        return (batch, channels, (num_frames - 1) // self.vae_scale_factor_temporal + 1,
                height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)

    def _initial_latents(self, shape, generator, latents) -> Tensor:
        if latents is not None:
            return backend.to_tensor(latents, ms.float32)
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for an effective batch size of {shape[0]}; pass one "
                             "per video")
        return Tensor(randn(generator, shape, np.float32))

    # 3. VAE latents statistics -------------------------------------------------------------------------------------
    def _latents_stats(self, dtype) -> tuple[Tensor, Tensor]:
        """(mean, 1/std) as (1, z_dim, 1, 1, 1) tensors, as diffusers builds them."""
        cfg = self.vae.config
        z = int(cfg.get("z_dim") or self.vae.z_dim)
        for key in ("latents_mean", "latents_std"):
            if cfg.get(key) is None or len(cfg[key]) != z:
                raise ValueError(f"{type(self).__name__}: the VAE config's {key} is {cfg.get(key)!r}; expected "
                                 f"{z} values (z_dim)")
        mean = _f32(cfg["latents_mean"]).reshape(1, z, 1, 1, 1)
        inv_std = (np.float32(1.0) / _f32(cfg["latents_std"])).reshape(1, z, 1, 1, 1)
        return Tensor(mean).astype(dtype), Tensor(inv_std).astype(dtype)

    def _decode(self, latents: Tensor, output_type: str):
        if output_type == "latent":
            return latents
        lat = backend.cast(latents, self.vae.dtype)
        mean, inv_std = self._latents_stats(lat.dtype)
        video = self.vae.decode(lat / inv_std + mean).sample
        return postprocess_video(backend.cast(video, ms.float32).asnumpy(), output_type)

    # 4. the denoising loop ---------------------------------------------------------------------------------------------
    def _denoise(self, latents: Tensor, timesteps, prompt_embeds, negative_prompt_embeds, guidance_scale: float,
                 guidance_scale_2, model_inputs, image_embeds, attention_kwargs, callback_on_step_end,
                 callback_on_step_end_tensor_inputs, num_inference_steps: int) -> Tensor:
        """`model_inputs(latents) -> the transformer's hidden_states` (T2V: the latents; I2V: latents + condition)."""
        boundary = (self.boundary_ratio * self.scheduler.config.num_train_timesteps
                    if self.boundary_ratio is not None else None)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                if boundary is None or t >= boundary:
                    model, scale = self.transformer, guidance_scale
                else:
                    model, scale = self.transformer_2, guidance_scale_2
                dtype = model.dtype
                hidden = backend.cast(model_inputs(latents), dtype)
                timestep = np.full((latents.shape[0],), t)
                noise_pred = model(hidden_states=hidden, timestep=timestep, encoder_hidden_states=prompt_embeds,
                                   encoder_hidden_states_image=image_embeds, attention_kwargs=attention_kwargs,
                                   return_dict=False)[0]
                if self.do_classifier_free_guidance:
                    noise_uncond = model(hidden_states=hidden, timestep=timestep,
                                         encoder_hidden_states=negative_prompt_embeds,
                                         encoder_hidden_states_image=image_embeds, attention_kwargs=attention_kwargs,
                                         return_dict=False)[0]
                    noise_pred = noise_uncond + scale * (noise_pred - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    out = out or {}
                    latents = backend.to_tensor(out.pop("latents", latents), ms.float32)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
                bar.update()
        return latents

    def _prepare_call(self, prompt, negative_prompt, height, width, num_frames, guidance_scale, guidance_scale_2,
                      num_videos_per_prompt, prompt_embeds, negative_prompt_embeds, max_sequence_length):
        """Sizes, guidance settings, text embeddings in the transformer's dtype: -> (height, width, num_frames,
        batch, guidance_scale_2, prompt_embeds, negative_prompt_embeds)."""
        height, width, num_frames = self._sizes(int(height), int(width), int(num_frames))
        if self.boundary_ratio is not None and guidance_scale_2 is None:
            guidance_scale_2 = guidance_scale
        self._guidance_scale = guidance_scale
        batch = 1 if isinstance(prompt, str) else (len(prompt) if prompt is not None else prompt_embeds.shape[0])
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, negative_prompt, self.do_classifier_free_guidance, num_videos_per_prompt,
            prompt_embeds, negative_prompt_embeds, max_sequence_length)
        dtype = self._denoiser.dtype
        prompt_embeds = backend.to_tensor(prompt_embeds, dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = backend.to_tensor(negative_prompt_embeds, dtype)
        return height, width, num_frames, batch, guidance_scale_2, prompt_embeds, negative_prompt_embeds

    @staticmethod
    def _output(video, return_dict: bool):
        return PipelineOutput(frames=video) if return_dict else (video,)


class WanPipeline(_WanPipelineBase):
    def __init__(self, tokenizer, text_encoder, vae, scheduler, transformer=None, transformer_2=None,
                 boundary_ratio=None, expand_timesteps=False):
        super().__init__(boundary_ratio, expand_timesteps, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                         scheduler=scheduler, transformer=transformer, transformer_2=transformer_2)

    def check_inputs(self, prompt, negative_prompt, height, width, prompt_embeds=None, negative_prompt_embeds=None,
                     callback_on_step_end_tensor_inputs=None, guidance_scale_2=None, output_type="np"):
        self._check_common(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                           callback_on_step_end_tensor_inputs, guidance_scale_2, output_type)

    def __call__(self, prompt=None, negative_prompt=None, height: int = 480, width: int = 832, num_frames: int = 81,
                 num_inference_steps: int = 50, guidance_scale: float = 5.0, guidance_scale_2: float | None = None,
                 num_videos_per_prompt: int | None = 1, generator=None, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, output_type: str = "np", return_dict: bool = False,
                 attention_kwargs: dict | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",), max_sequence_length: int = 512):
        self.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs, guidance_scale_2, output_type)
        num_videos_per_prompt = num_videos_per_prompt or 1
        height, width, num_frames, batch, guidance_scale_2, prompt_embeds, negative_prompt_embeds = \
            self._prepare_call(prompt, negative_prompt, height, width, num_frames, guidance_scale, guidance_scale_2,
                               num_videos_per_prompt, prompt_embeds, negative_prompt_embeds, max_sequence_length)
        self.scheduler.set_timesteps(num_inference_steps)
        shape = self._latent_shape(batch * num_videos_per_prompt, self._denoiser.in_channels, height, width,
                                   num_frames)
        latents = self._initial_latents(shape, generator, latents)
        latents = self._denoise(latents, self.scheduler.timesteps, prompt_embeds, negative_prompt_embeds,
                                guidance_scale, guidance_scale_2, lambda x: x, None, attention_kwargs,
                                callback_on_step_end, callback_on_step_end_tensor_inputs, num_inference_steps)
        return self._output(self._decode(latents, output_type), return_dict)


class WanImageToVideoPipeline(_WanPipelineBase):
    def __init__(self, tokenizer, text_encoder, vae, scheduler, image_processor=None, image_encoder=None,
                 transformer=None, transformer_2=None, boundary_ratio=None, expand_timesteps=False):
        super().__init__(boundary_ratio, expand_timesteps, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                         scheduler=scheduler, image_processor=image_processor or {}, image_encoder=image_encoder,
                         transformer=transformer, transformer_2=transformer_2)

    # image -------------------------------------------------------------------------------------------------------------
    def encode_image(self, image) -> Tensor:
        """PIL image(s) -> the CLIP vision tower's second-to-last hidden state (N, tokens, D)."""
        if self.image_encoder is None:
            raise ValueError("WanImageToVideoPipeline: the transformer takes image tokens (image_dim is set), but the "
                             "pipeline has no image_encoder; pass image_embeds instead")
        pixels = ip.clip_image_processor(image, self.image_processor)
        out = self.image_encoder(Tensor(pixels).astype(self.image_encoder.dtype), output_hidden_states=True)
        return out.hidden_states[-2]

    def _video_condition(self, image: np.ndarray, last_image: np.ndarray | None, num_frames: int) -> np.ndarray:
        """(1, 3, H, W) in [-1, 1] -> (1, 3, F, H, W): the image, black (zero) frames, [last_image]."""
        b, c, h, w = image.shape
        middle = num_frames - 1 if last_image is None else num_frames - 2
        parts = [image[:, :, None], np.zeros((b, c, middle, h, w), np.float32)]
        if last_image is not None:
            parts.append(last_image[:, :, None])
        return np.concatenate(parts, axis=2)

    def _first_frame_mask(self, batch: int, num_frames: int, lh: int, lw: int, last: bool) -> np.ndarray:
        """(B, 4, T, h, w): 1 at the given frames (the first, and the last with last_image), the first frame's value
        repeated 4 times so frames group by 4 into latent frames."""
        tf = self.vae_scale_factor_temporal
        mask = np.zeros((batch, 1, num_frames, lh, lw), np.float32)
        mask[:, :, 0] = 1
        if last:
            mask[:, :, -1] = 1
        mask = np.concatenate([np.repeat(mask[:, :, :1], tf, axis=2), mask[:, :, 1:]], axis=2)
        return np.ascontiguousarray(mask.reshape(batch, -1, tf, lh, lw).transpose(0, 2, 1, 3, 4))

    def prepare_condition(self, image: np.ndarray, last_image: np.ndarray | None, batch: int, num_frames: int,
                          height: int, width: int) -> Tensor:
        """-> (B, 4 + z_dim, T, h, w): first-frame mask, then the normalised posterior mode of the conditioning
        video."""
        video = self._video_condition(image, last_image, num_frames)
        z = self.vae.encode(Tensor(video).astype(self.vae.dtype)).latent_dist.mode()
        z = backend.cast(z, ms.float32)
        if z.shape[0] != batch:
            z = ops.tile(z, (batch // z.shape[0], 1, 1, 1, 1))
        mean, inv_std = self._latents_stats(ms.float32)
        z = (z - mean) * inv_std
        lh, lw = height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial
        mask = self._first_frame_mask(batch, num_frames, lh, lw, last_image is not None)
        return ops.cat([Tensor(mask), z], axis=1)

    def check_inputs(self, prompt, negative_prompt, image, height, width, prompt_embeds=None,
                     negative_prompt_embeds=None, image_embeds=None, callback_on_step_end_tensor_inputs=None,
                     guidance_scale_2=None, output_type="np"):
        if image is not None and image_embeds is not None:
            raise ValueError("pass either `image` or `image_embeds`, not both")
        if image is None and image_embeds is None:
            raise ValueError("provide either `image` or `image_embeds`")
        if image is not None and not isinstance(image, PIL.Image.Image):
            raise ValueError(f"`image` has to be a PIL.Image.Image, but is {type(image).__name__}")
        self._check_common(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                           callback_on_step_end_tensor_inputs, guidance_scale_2, output_type)

    def __call__(self, image=None, prompt=None, negative_prompt=None, height: int = 480, width: int = 832,
                 num_frames: int = 81, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 guidance_scale_2: float | None = None, num_videos_per_prompt: int | None = 1, generator=None,
                 latents=None, prompt_embeds=None, negative_prompt_embeds=None, image_embeds=None, last_image=None,
                 output_type: str = "np", return_dict: bool = False, attention_kwargs: dict | None = None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",),
                 max_sequence_length: int = 512):
        self.check_inputs(prompt, negative_prompt, image, height, width, prompt_embeds, negative_prompt_embeds,
                          image_embeds, callback_on_step_end_tensor_inputs, guidance_scale_2, output_type)
        if image is None:
            raise ValueError("WanImageToVideoPipeline: `image` is needed for the VAE condition (image_embeds replaces "
                             "only the CLIP embedding)")
        num_videos_per_prompt = num_videos_per_prompt or 1
        height, width, num_frames, batch, guidance_scale_2, prompt_embeds, negative_prompt_embeds = \
            self._prepare_call(prompt, negative_prompt, height, width, num_frames, guidance_scale, guidance_scale_2,
                               num_videos_per_prompt, prompt_embeds, negative_prompt_embeds, max_sequence_length)
        total = batch * num_videos_per_prompt
        dtype = self._denoiser.dtype

        # 1. CLIP image tokens (image and last_image), once per video
        if self._denoiser.image_dim is not None:
            if image_embeds is None:
                image_embeds = self.encode_image(image if last_image is None else [image, last_image])
            image_embeds = backend.to_tensor(image_embeds, dtype)
            image_embeds = ops.tile(image_embeds, (total, 1, 1))
        else:
            image_embeds = None

        # 2. timesteps, initial latents (B, z, T, h, w), the condition (B, 4 + z, T, h, w)
        self.scheduler.set_timesteps(num_inference_steps)
        z_dim = int(self.vae.config.get("z_dim") or self.vae.z_dim)
        latents = self._initial_latents(self._latent_shape(total, z_dim, height, width, num_frames), generator,
                                        latents)
        pixels = ip.preprocess(image, height, width, self.vae_scale_factor_spatial)
        last = ip.preprocess(last_image, height, width, self.vae_scale_factor_spatial) if last_image is not None \
            else None
        condition = self.prepare_condition(pixels, last, total, num_frames, height, width)

        # 3. denoise on [latents, condition], decode
        latents = self._denoise(latents, self.scheduler.timesteps, prompt_embeds, negative_prompt_embeds,
                                guidance_scale, guidance_scale_2, lambda x: ops.cat([x, condition], axis=1),
                                image_embeds, attention_kwargs, callback_on_step_end,
                                callback_on_step_end_tensor_inputs, num_inference_steps)
        return self._output(self._decode(latents, output_type), return_dict)


__all__ = ["WanImageToVideoPipeline", "WanPipeline", "prompt_clean"]
