"""The image VAE of Stable Diffusion 1.5 / I2VGen-XL / AnimateDiff (diffusers `AutoencoderKL`): SD encoder,
optional 1x1 quant / post-quant convs, 2D decoder. Tiling and slicing are not ported (whole-batch only)."""

from __future__ import annotations

from mindspore import Tensor

from .. import backend
from ..layers import Conv2d
from ..modeling import ModelMixin
from .vae import (
    AutoencoderKLOutput,
    Decoder,
    DecoderOutput,
    DiagonalGaussianDistribution,
    Encoder,
)


class AutoencoderKL(ModelMixin):
    diffusers_class = "AutoencoderKL"
    # diffusers builds with these null: the switches mean off (no quant convs, no mid-block attention, no upcast);
    # scaling_factor is the pipeline's business (it needs one). sample_size is not here: diffusers' tiling setup
    # divides it, so a null one is refused.
    nullable_config = frozenset({"scaling_factor", "force_upcast", "use_quant_conv", "use_post_quant_conv",
                                 "mid_block_add_attention"})
    config_choices = {"act_fn": ("silu", "swish", "gelu")}

    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block: int = 1,
                 act_fn: str = "silu", latent_channels: int = 4, norm_num_groups: int = 32, sample_size: int = 32,
                 scaling_factor: float = 0.18215, shift_factor: float | None = None, latents_mean=None,
                 latents_std=None, force_upcast: bool = True, use_quant_conv: bool = True,
                 use_post_quant_conv: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        for field, types in (("down_block_types", down_block_types), ("up_block_types", up_block_types)):
            if len(types) != len(block_out_channels):
                raise ValueError(f"AutoencoderKL: {len(types)} {field} but {len(block_out_channels)} "
                                 "block_out_channels; expected one type per block")
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels,
                               down_block_types=tuple(down_block_types), block_out_channels=tuple(block_out_channels),
                               layers_per_block=layers_per_block, act_fn=act_fn, norm_num_groups=norm_num_groups,
                               double_z=True, mid_block_add_attention=mid_block_add_attention)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels,
                               up_block_types=tuple(up_block_types), block_out_channels=tuple(block_out_channels),
                               layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, act_fn=act_fn,
                               mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    def encode(self, x, return_dict: bool = True):
        """Images (B, C, H, W) -> posterior over latents (B, latent_channels, H/2^(n-1), W/2^(n-1))."""
        x = backend.to_tensor(x, self.dtype)
        # 1. encoder: (B, C, H, W) -> moments (B, 2*latent, h, w)
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        # 2. split into mean / clamped logvar
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z, return_dict: bool = True):
        """Latents (B, latent, h, w) -> images (B, C, H, W)."""
        z = backend.to_tensor(z, self.dtype)
        # 1. post-quant 1x1 conv
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        # 2. decoder: (B, latent, h, w) -> (B, C, H, W)
        decoded = self.decoder(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def construct(self, sample: Tensor, sample_posterior: bool = False, return_dict: bool = True, noise=None,
                  generator=None):
        """Encode, take the posterior mode (or mean + std * `noise` when sample_posterior; `noise` is a caller
        array, or drawn from the numpy `generator`), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(noise=noise, generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)
