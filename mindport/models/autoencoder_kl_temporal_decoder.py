"""Stable Video Diffusion's VAE: the SD image encoder with a temporal decoder (diffusers
`AutoencoderKLTemporalDecoder`). Encodes frames independently; decodes chunks of `num_frames` consecutive frames
(the batch axis holds B*F frames, frame-major within each video)."""

from __future__ import annotations

from mindspore import Tensor, ops

from .. import backend
from ..layers import Conv2d
from ..modeling import ModelMixin
from .vae import (
    AutoencoderKLOutput,
    DecoderOutput,
    DiagonalGaussianDistribution,
    Encoder,
    TemporalDecoder,
)


class AutoencoderKLTemporalDecoder(ModelMixin):
    diffusers_class = "AutoencoderKLTemporalDecoder"
    # unused by the model (diffusers builds with them null; a pipeline needs scaling_factor, force_upcast null = off)
    nullable_config = frozenset({"sample_size", "scaling_factor", "force_upcast"})

    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 1, latent_channels: int = 4,
                 sample_size: int = 32, scaling_factor: float = 0.18215, force_upcast: bool = True):
        super().__init__()
        if len(down_block_types) != len(block_out_channels):
            raise ValueError(f"AutoencoderKLTemporalDecoder: {len(down_block_types)} down_block_types but "
                             f"{len(block_out_channels)} block_out_channels; expected one type per block")
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels,
                               down_block_types=tuple(down_block_types), block_out_channels=tuple(block_out_channels),
                               layers_per_block=layers_per_block, double_z=True)
        self.decoder = TemporalDecoder(in_channels=latent_channels, out_channels=out_channels,
                                       block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block)
        self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, 1)

    def encode(self, x, return_dict: bool = True):
        """Images (B, C, H, W) -> posterior over latents (B, latent_channels, H/2^(n-1), W/2^(n-1))."""
        x = backend.to_tensor(x, self.dtype)
        # 1. encoder: (B, C, H, W) -> moments (B, 2*latent, h, w)
        moments = self.quant_conv(self.encoder(x))
        # 2. split into mean / clamped logvar
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z, num_frames: int, return_dict: bool = True):
        """Latents (B*F, latent, h, w), F = num_frames consecutive frames per video -> frames (B*F, C, H, W)."""
        z = backend.to_tensor(z, self.dtype)
        if num_frames < 1 or z.shape[0] % num_frames:
            raise ValueError(f"AutoencoderKLTemporalDecoder.decode: batch {z.shape[0]} is not a multiple of "
                             f"num_frames={num_frames}")
        # 1. every frame is a video frame (never image-only): (B, F) zeros
        image_only_indicator = ops.zeros((z.shape[0] // num_frames, num_frames), z.dtype)
        # 2. temporal decoder: (B*F, latent, h, w) -> (B*F, C, H, W)
        decoded = self.decoder(z, image_only_indicator=image_only_indicator, num_frames=num_frames)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def construct(self, sample: Tensor, sample_posterior: bool = False, return_dict: bool = True,
                  num_frames: int = 1, noise=None, generator=None):
        """Encode, take the posterior mode (or mean + std * `noise` when sample_posterior; `noise` is a caller
        array, or drawn from the numpy `generator`), decode in chunks of `num_frames`."""
        # 1. encode: (B*F, C, H, W) -> posterior (B*F, latent, h, w)
        posterior = self.encode(sample).latent_dist
        # 2. latent
        z = posterior.sample(noise=noise, generator=generator) if sample_posterior else posterior.mode()
        # 3. decode: -> (B*F, C, H, W)
        dec = self.decode(z, num_frames=num_frames).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)
