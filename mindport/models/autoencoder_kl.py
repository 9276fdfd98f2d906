"""The image VAE of Stable Diffusion 1.5 / I2VGen-XL / AnimateDiff (diffusers `AutoencoderKL`): SD encoder,
optional 1x1 quant / post-quant convs, 2D decoder; diffusers' slicing (one sample at a time) and tiling (overlapping
tiles of `sample_size` pixels, blended linearly over a quarter of a tile, for decode memory on large frames)."""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, ops

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
        # slicing / tiling, off by default, as diffusers (a [h, w] sample_size tiles by its first entry)
        self.use_slicing = self.use_tiling = False
        size = int(sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size)
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / (2 ** (len(block_out_channels) - 1)))
        self.tile_overlap_factor = 0.25

    def enable_slicing(self) -> None:
        """Encode and decode one sample of a batch at a time."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Encode / decode frames larger than `sample_size` pixels in overlapping tiles (diffusers' tiling: tiles
        overlap by a quarter, blended linearly; the result differs slightly from untiled, exactly as diffusers')."""
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # -- tiling (diffusers' tiled_encode / tiled_decode) --------------------------------------------------------------
    @staticmethod
    def _blend(a: np.ndarray, b: np.ndarray, extent: int, axis: int) -> np.ndarray:
        """b's first `extent` rows (axis 2) or columns (axis 3) blended with a's last: a * (1 - k/extent) +
        b * k/extent, each weight rounded to b's dtype as torch rounds a Python scalar."""
        extent = min(a.shape[axis], b.shape[axis], extent)
        if extent <= 0:
            return b
        k = np.arange(extent, dtype=np.float64)
        shape = [1, 1, 1, 1]
        shape[axis] = extent
        wa = (1 - k / extent).astype(b.dtype).reshape(shape)
        wb = (k / extent).astype(b.dtype).reshape(shape)
        b = b.copy()
        head = [slice(None)] * 4
        tail = [slice(None)] * 4
        head[axis], tail[axis] = slice(0, extent), slice(a.shape[axis] - extent, a.shape[axis])
        b[tuple(head)] = a[tuple(tail)] * wa + b[tuple(head)] * wb
        return b

    def _tiled(self, x: Tensor, tile_in: int, tile_out: int, run) -> Tensor:
        """Overlapping tiles of `tile_in` (stride tile_in * 3/4) through `run`, blended over a quarter of `tile_out`,
        each tile cut to tile_out - blend: diffusers' tiling for encode (pixels -> moments) and decode."""
        overlap = int(tile_in * (1 - self.tile_overlap_factor))
        blend = int(tile_out * self.tile_overlap_factor)
        limit = tile_out - blend
        rows = [[run(x[:, :, i:i + tile_in, j:j + tile_in]).asnumpy() for j in range(0, x.shape[3], overlap)]
                for i in range(0, x.shape[2], overlap)]
        out_rows = []
        for i, row in enumerate(rows):
            cut = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = self._blend(rows[i - 1][j], tile, blend, 2)
                if j > 0:
                    tile = self._blend(row[j - 1], tile, blend, 3)
                row[j] = tile
                cut.append(tile[:, :, :limit, :limit])
            out_rows.append(np.concatenate(cut, axis=3))
        return Tensor(np.ascontiguousarray(np.concatenate(out_rows, axis=2)))

    def _encode_moments(self, x: Tensor) -> Tensor:
        if self.use_tiling and (x.shape[-1] > self.tile_sample_min_size or x.shape[-2] > self.tile_sample_min_size):
            return self._tiled(x, self.tile_sample_min_size, self.tile_latent_min_size, self._moments)
        return self._moments(x)

    def _moments(self, x: Tensor) -> Tensor:
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _decode_one(self, z: Tensor) -> Tensor:
        if self.use_tiling and (z.shape[-1] > self.tile_latent_min_size or z.shape[-2] > self.tile_latent_min_size):
            return self._tiled(z, self.tile_latent_min_size, self.tile_sample_min_size, self._decode_tile)
        return self._decode_tile(z)

    def _decode_tile(self, z: Tensor) -> Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode(self, x, return_dict: bool = True):
        """Images (B, C, H, W) -> posterior over latents (B, latent_channels, H/2^(n-1), W/2^(n-1))."""
        x = backend.to_tensor(x, self.dtype)
        # 1. encoder (+ quant conv): (B, C, H, W) -> moments (B, 2*latent, h, w); per sample / per tile when enabled
        if self.use_slicing and x.shape[0] > 1:
            moments = ops.cat([self._encode_moments(x[i:i + 1]) for i in range(x.shape[0])])
        else:
            moments = self._encode_moments(x)
        # 2. split into mean / clamped logvar
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z, return_dict: bool = True):
        """Latents (B, latent, h, w) -> images (B, C, H, W): post-quant 1x1 conv, decoder; per sample / per tile
        when enabled."""
        z = backend.to_tensor(z, self.dtype)
        if self.use_slicing and z.shape[0] > 1:
            decoded = ops.cat([self._decode_one(z[i:i + 1]) for i in range(z.shape[0])])
        else:
            decoded = self._decode_one(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def construct(self, sample: Tensor, sample_posterior: bool = False, return_dict: bool = True, noise=None,
                  generator=None):
        """Encode, take the posterior mode (or mean + std * `noise` when sample_posterior; `noise` is a caller
        array, or drawn from the numpy `generator`), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(noise=noise, generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)
