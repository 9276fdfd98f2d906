"""Wan 2.1 text-to-video adapter for the harness: how to build both pipelines, where each draws noise, how to call
them with identical arguments. (`parity/wan_i2v.py` extends it for image-to-video.)

Fixtures are built as Wan-AI's diffusers repositories are laid out: a UMT5 text encoder with a T5 (Unigram)
tokenizer, an AutoencoderKLWan with Wan 2.1's latents statistics (its `latents_mean` / `latents_std`, cut to z_dim),
a WanTransformer3DModel, and the UniPC scheduler Wan ships (flow prediction, flow sigmas, `flow_shift`) or
flow-matching Euler. The only random draw of WanPipeline is the initial latents (`prepare_latents`).
The transformer runs twice per step (text, then negative prompt): the harness compares every call.
"""

from __future__ import annotations

from .adapter import PipelineAdapter
from .fixtures import randomise, tiny_t5_tokenizer

PROMPT = "the cat walking at night"
NEGATIVE_PROMPT = "blurry, static"

# UniPCMultistepScheduler as Wan-AI/Wan2.1-*-Diffusers ship it (flow_shift 3.0 for 480p, 5.0 for 720p)
WAN_UNIPC = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000, solver_order=2,
                 prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, predict_x0=True,
                 solver_type="bh2", lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
                 steps_offset=0, disable_corrector=[])

# Named tiny Wan configs. `transformer` / `vae` / `text` are the component configs (over the defaults below);
# `scheduler` names the class and its config; `run` the parity settings (pixels, frames, guidance).
# - wan-t2v-tiny: patch (1, 2, 2), 2 heads of 12, a 3-level VAE (spatial x4, temporal x4), 48x32 pixels (non-square),
#   5 frames (2 latent frames), UniPC as Wan ships it;
# - wan-t2v-tiny-varied: patch (2, 2, 2) (latent frames in pairs), 3 heads of 8, no cross-attention norm, qk_norm
#   null (diffusers always applies its RMS q/k norm), eps 1e-5, 4-level VAE (spatial x8), 13 frames (4 latent frames),
#   80x48 pixels, flow-matching Euler with shift 5.
PRESETS: dict[str, dict] = {
    "wan-t2v-tiny": {
        "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, ffn_dim=40,
                            num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads"),
        "vae": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
                    scale_factor_spatial=4, scale_factor_temporal=4),
        "text": dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4),
        "scheduler": ("UniPCMultistepScheduler", WAN_UNIPC),
        "run": dict(height=32, width=48, frames=5, guidance_scale=5.0),
    },
    "wan-t2v-tiny-varied": {
        "transformer": dict(patch_size=(2, 2, 2), num_attention_heads=3, attention_head_dim=8, ffn_dim=36,
                            num_layers=3, cross_attn_norm=False, qk_norm=None, eps=1e-5),
        "vae": dict(base_dim=8, z_dim=6, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                    temperal_downsample=[False, True, True], scale_factor_spatial=8, scale_factor_temporal=4),
        "text": dict(d_model=24, d_kv=6, d_ff=40, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                     relative_attention_max_distance=20),
        "scheduler": ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=5.0)),
        "run": dict(height=48, width=80, frames=13, guidance_scale=4.0),
    },
}

# Wan 2.1's released latents statistics (16 channels); tiny VAEs take the first z_dim of each
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                      -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                     1.6382, 1.1253, 2.8251, 1.916)


def tiny_components(spec: dict, seed: int) -> dict:
    """The diffusers / transformers components every Wan pipeline has (random weights): tokenizer, text_encoder,
    vae, scheduler, transformer. The transformer's in_channels is the VAE's z_dim plus `extra_in_channels`
    (I2V: 4 mask channels and the condition's z_dim)."""
    import diffusers
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer) + 13, feed_forward_proj="gated-gelu",
                                               **spec["text"]))
    z = spec["vae"]["z_dim"]
    vae = diffusers.AutoencoderKLWan(attn_scales=[], latents_mean=list(WAN21_LATENTS_MEAN[:z]),
                                     latents_std=list(WAN21_LATENTS_STD[:z]), **spec["vae"])
    in_channels = z + spec.get("extra_in_channels", 0)
    transformer = diffusers.WanTransformer3DModel(
        in_channels=in_channels, out_channels=z, text_dim=spec["text"]["d_model"], freq_dim=32, rope_max_seq_len=64,
        **spec["transformer"])
    for i, m in enumerate((text_encoder, vae, transformer)):
        randomise(m, seed * 10 + i)
    scheduler_class, scheduler_config = spec["scheduler"]
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_config)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer)


class WanAdapter(PipelineAdapter):
    pipeline = "WanPipeline"
    presets = PRESETS
    denoiser = "transformer"

    def make_fixture(self, spec: dict, seed: int):
        from diffusers import WanPipeline

        return WanPipeline(**tiny_components(spec, seed))

    # where the initial latents come from
    reference_noise_modules = ("diffusers.pipelines.wan.pipeline_wan",)
    our_noise_modules = ("mindport.pipelines.wan",)

    def call_kwargs(self, settings: dict) -> dict:
        return dict(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, height=settings["height"],
                    width=settings["width"], num_frames=settings["frames"], num_inference_steps=settings["steps"],
                    guidance_scale=float(settings.get("guidance_scale", 5.0)), output_type="np",
                    max_sequence_length=512)

    def default_settings(self, config) -> dict:
        """diffusers' WanPipeline defaults: 480 x 832, 81 frames."""
        return {"height": 480, "width": 832, "frames": 81}


ADAPTER = WanAdapter()
