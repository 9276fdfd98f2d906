"""Wan 2.1's video VAE (diffusers `AutoencoderKLWan`): a causal 3D encoder / decoder run frame-chunk by frame-chunk.

Layout, as in diffusers 0.42.1: every 3D convolution is causal in time (all its time padding on the left), and the
video is not processed at once. `encode` runs the encoder on the first frame alone, then on chunks of 4 frames;
`decode` runs the decoder on one latent frame at a time. Between chunks each causal convolution keeps the last
CACHE_T = 2 frames of its input in a feature cache (one slot per convolution, in the order they run), which stands
in for the frames a whole-video convolution would see; the temporal resamplers keep their own slots. The chunking
and the cache decide the numbers (a whole-video pass gives different ones), so both follow diffusers exactly.

Not ported: Wan 2.2's residual blocks (`is_residual`), patchified inputs (`patch_size`), tiling and slicing.
"""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import Tensor, nn, ops

from .. import backend
from ..layers import Conv2d, _param
from ..modeling import ModelMixin
from .vae import AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution

F32 = ms.float32

# frames of a convolution's input kept between chunks (diffusers' CACHE_T)
CACHE_T = 2
# encoder chunk length after the first frame (diffusers' _encode)
ENCODE_CHUNK = 4


def _triple(v) -> tuple[int, int, int]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * 3


# ----------------------------------------------------------------------------------------------------------------
# The feature cache
# ----------------------------------------------------------------------------------------------------------------


class FeatureCache:
    """diffusers' `feat_cache` list and `feat_idx` counter as one object: `slots[i]` holds what the i-th cached layer
    (in the order the layers run) kept from the previous chunk; `rewind()` starts a new chunk."""

    REPEAT = "Rep"  # an upsample3d slot after the first chunk: its time_conv has not run yet

    def __init__(self):
        self.slots: list = []
        self.position = 0

    def rewind(self) -> None:
        self.position = 0

    @classmethod
    def of(cls, cache, feat_cache=None, feat_idx=None) -> "FeatureCache":
        """`cache`, else one built from diffusers' call form (`feat_cache` list, `feat_idx` [position]), so the
        encoder and decoder also run on the arguments diffusers passes them (the harness replays those)."""
        if cache is not None:
            return cache
        out = cls()
        out.slots = [s if isinstance(s, Tensor) or s == cls.REPEAT else None for s in (feat_cache or [])]
        out.position = int(feat_idx[0]) if feat_idx else 0
        return out

    def take(self) -> tuple[int, object]:
        """The next slot's index and content (None the first time)."""
        i = self.position
        self.position += 1
        if i == len(self.slots):
            self.slots.append(None)
        return i, self.slots[i]


def _last_frames(x: Tensor, previous) -> Tensor:
    """What a causal conv keeps of its input x (B, C, T, H, W): the last CACHE_T frames; with fewer than CACHE_T,
    the last frame of what it kept before goes in front."""
    keep = backend.take_frames(x, -CACHE_T)
    if keep.shape[2] < CACHE_T and isinstance(previous, Tensor):
        keep = ops.cat([backend.take_frames(previous, -1), keep], axis=2)
    return keep


def cached_conv(conv: "WanCausalConv3d", x: Tensor, cache: FeatureCache) -> Tensor:
    """conv(x) with the frames cached from the previous chunk in front, then x's last frames into the slot."""
    i, previous = cache.take()
    keep = _last_frames(x, previous)
    out = conv(x, previous)
    cache.slots[i] = keep
    return out


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class WanCausalConv3d(nn.Cell):
    """Conv3d whose time padding (2 * padding[0]) all goes on the left, filled first by the frames cached from the
    previous chunk; spatial padding symmetric. A time stride (downsample3d's (2, 1, 1)) is computed directly (the
    kernel's strided path: not the stride-1 result subsampled, which did the work twice)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        k, s, p = _triple(kernel_size), _triple(stride), _triple(padding)
        if s[1:] != (1, 1):
            raise ValueError(f"WanCausalConv3d: spatial stride {s[1:]} is not ported; expected (1, 1)")
        self.time_pad, self.spatial_pad, self.time_stride = 2 * p[0], p[1:], s[0]
        self.weight = _param((out_channels, in_channels, *k))
        self.bias = _param((out_channels,))

    def construct(self, x: Tensor, cache=None) -> Tensor:
        # 1. causal time padding: cached frames first, zeros for the rest (B, C, T, H, W) -> (B, C, T + pad, H, W)
        pad = self.time_pad
        if pad and isinstance(cache, Tensor):
            x = ops.cat([backend.cast(cache, x.dtype), x], axis=2)
            pad -= cache.shape[2]
        if pad > 0:
            x = backend.pad_frames(x, pad)
        # 2. convolution, time stride as configured, spatial padding symmetric: -> (B, O, T', H', W')
        return backend.conv3d(x, self.weight, self.bias, padding=(0, *self.spatial_pad),
                              stride=(self.time_stride, 1, 1))


def channel_rms_norm(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.normalize(x, dim=1) * sqrt(C) * gamma (+ bias) in float32 on (B, C, *) (backend.channel_rms_norm)."""
    return backend.channel_rms_norm(x, weight, bias)


class WanRMS_norm(nn.Cell):  # noqa: N801 (diffusers' name)
    """Channel-first RMS norm: `gamma` (C, 1, 1, 1) for videos, (C, 1, 1) for images (`images=True`), optional
    `bias`; computed in float32, returned in the input's dtype."""

    def __init__(self, dim: int, channel_first: bool = True, images: bool = True, bias: bool = False):
        super().__init__()
        if not channel_first:
            raise ValueError("WanRMS_norm: channel_first=False is not ported (the VAE normalises channels)")
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.gamma = _param(shape, "ones")
        self.bias = _param(shape) if bias else None

    def construct(self, x: Tensor) -> Tensor:
        return backend.cast(channel_rms_norm(x, self.gamma, self.bias), x.dtype)


class ZeroPad2d(nn.Cell):
    """Pads (left, right, top, bottom) with zeros (`resample.0` of the downsamplers: no parameters)."""

    def __init__(self, padding):
        super().__init__()
        self.padding = tuple(int(p) for p in padding)

    def construct(self, x: Tensor) -> Tensor:
        return ops.pad(x, self.padding)


class WanUpsample(nn.Cell):
    """Nearest-exact 2x spatial upsampling (`resample.0`); for an integer factor nearest-exact is nearest."""

    def construct(self, x: Tensor) -> Tensor:
        return backend.interpolate_nearest(x, 2.0)


class WanResample(nn.Cell):
    """Spatial 2x up/down sampling per frame (`resample`: upsample then 3x3 conv, or zero pad then stride-2 3x3 conv),
    with a causal time conv for the 3D modes: upsample3d doubles the frames (a (3,1,1) conv to 2C channels, the two
    halves interleaved in time) from the second chunk on, downsample3d halves them (stride-2 (3,1,1) conv over the
    previous chunk's last frame and this chunk) from the second chunk on."""

    MODES = ("none", "upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"WanResample: mode={mode!r}; expected one of {', '.join(self.MODES)}")
        self.dim, self.mode = dim, mode
        upsample_out_dim = dim // 2 if upsample_out_dim is None else upsample_out_dim
        self.time_conv = None
        if mode.startswith("upsample"):
            self.resample = nn.CellList([WanUpsample(), Conv2d(dim, upsample_out_dim, 3, padding=1)])
            if mode == "upsample3d":
                self.time_conv = WanCausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode.startswith("downsample"):
            self.resample = nn.CellList([ZeroPad2d((0, 1, 0, 1)), Conv2d(dim, dim, 3, stride=2)])
            if mode == "downsample3d":
                self.time_conv = WanCausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            self.resample = None

    def _upsample_time(self, x: Tensor, cache: FeatureCache) -> Tensor:
        """upsample3d's time doubling: (B, C, T, H, W) -> (B, C, 2T, H, W), except on the first chunk."""
        i, previous = cache.take()
        if previous is None:  # first chunk: frames pass as they are, the slot says "seen"
            cache.slots[i] = FeatureCache.REPEAT
            return x
        b, c, t, h, w = x.shape
        # 1. what to keep: the last CACHE_T frames (after the first chunk, zeros stand in for missing ones)
        keep = backend.take_frames(x, -CACHE_T)
        if keep.shape[2] < CACHE_T:
            front = ops.zeros_like(keep) if isinstance(previous, str) else backend.take_frames(previous, -1)
            keep = ops.cat([front, keep], axis=2)
        # 2. (3, 1, 1) causal conv to 2C channels: the second chunk pads with zeros, later ones with the cache
        y = self.time_conv(x, None if isinstance(previous, str) else previous)
        cache.slots[i] = keep
        # 3. interleave the halves in time: (B, 2, C, T, HW) -> (B, C, T, 2, HW) -> (B, C, 2T, H, W)
        y = backend.permute(y.reshape(b, 2, c, t, h * w), (0, 2, 3, 1, 4))
        return y.reshape(b, c, 2 * t, h, w)

    def _downsample_time(self, x: Tensor, cache: FeatureCache) -> Tensor:
        """downsample3d's time halving: (B, C, T, H, W) -> (B, C, T', H, W), except on the first chunk."""
        i, previous = cache.take()
        if previous is None:  # first chunk: frames pass, all of them kept
            cache.slots[i] = x
            return x
        keep = backend.take_frames(x, -1)
        # stride-2 (3, 1, 1) conv over [previous chunk's last frame, this chunk]
        y = self.time_conv(ops.cat([backend.take_frames(previous, -1), x], axis=2))
        cache.slots[i] = keep
        return y

    def construct(self, x: Tensor, cache: FeatureCache) -> Tensor:
        if self.resample is None:
            return x
        # 1. upsample3d: double the frames
        if self.mode == "upsample3d":
            x = self._upsample_time(x, cache)
        # 2. per frame, spatial resampling: (B, C, T, H, W) -> (B*T, C, H, W) -> (B, C', T, H', W')
        b, c, t, h, w = x.shape
        y = backend.permute(x, (0, 2, 1, 3, 4)).reshape(b * t, c, h, w)
        for layer in self.resample:
            y = layer(y)
        y = backend.permute(y.reshape(b, t, *y.shape[1:]), (0, 2, 1, 3, 4))
        # 3. downsample3d: halve the frames
        if self.mode == "downsample3d":
            y = self._downsample_time(y, cache)
        return y


class WanResidualBlock(nn.Cell):
    """RMS norm, SiLU, causal 3x3x3 conv, twice, plus a (1x1x1 conv) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, non_linearity: str = "silu"):
        super().__init__()
        if non_linearity not in ("silu", "swish"):
            raise ValueError(f"WanResidualBlock: non_linearity={non_linearity!r} is not ported; expected 'silu'")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.norm1 = WanRMS_norm(in_dim, images=False)
        self.conv1 = WanCausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = WanRMS_norm(out_dim, images=False)
        self.conv2 = WanCausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = WanCausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def construct(self, x: Tensor, cache: FeatureCache) -> Tensor:
        # 1. shortcut: (B, in, T, H, W) -> (B, out, T, H, W)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        # 2. norm, SiLU, cached causal conv
        h = cached_conv(self.conv1, backend.silu(self.norm1(x)), cache)
        # 3. norm, SiLU, (dropout: identity at inference), cached causal conv
        h = cached_conv(self.conv2, backend.silu(self.norm2(h)), cache)
        return backend.add(h, shortcut)


class WanAttentionBlock(nn.Cell):
    """Single-head self-attention over each frame's H*W positions (no attention across frames), 1x1-conv q/k/v and
    output projections, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.norm = WanRMS_norm(dim)
        self.to_qkv = Conv2d(dim, dim * 3, 1)
        self.proj = Conv2d(dim, dim, 1)

    def construct(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        # 1. frames folded into the batch as diffusers does (so `norm` sees its (B*T, C, H, W) input), norm over
        # channels, positions as tokens: (B, C, T, H, W) -> (B*T, C, H, W) -> (B*T, H*W, C)
        frames = backend.permute(x, (0, 2, 1, 3, 4)).reshape(b * t, c, h, w)
        tokens = backend.permute(self.norm(frames), (0, 2, 3, 1)).reshape(b * t, h * w, c)
        # 2. q, k, v: the 1x1 conv as three linears over the channels, (B*T, H*W, C) each
        wqkv = self.to_qkv.weight.reshape(3 * c, c)
        q, k, v = (backend.linear(tokens, wqkv[i * c : (i + 1) * c], self.to_qkv.bias[i * c : (i + 1) * c])
                   for i in range(3))
        # 3. one head, scale 1/sqrt(C)
        out = backend.attention_heads(q, k, v, 1, 1.0 / math.sqrt(c))
        # 4. output projection, back to (B, C, T, H, W), residual
        out = backend.linear(out, self.proj.weight.reshape(c, c), self.proj.bias)
        out = backend.permute(out.reshape(b, t, h, w, c), (0, 4, 1, 2, 3))
        return backend.add(out, x)


class WanMidBlock(nn.Cell):
    """resnets[0], then (attention, resnet) num_layers times."""

    def __init__(self, dim: int, dropout: float = 0.0, non_linearity: str = "silu", num_layers: int = 1):
        super().__init__()
        self.dim = dim
        self.resnets = nn.CellList([WanResidualBlock(dim, dim, dropout, non_linearity)
                                    for _ in range(num_layers + 1)])
        self.attentions = nn.CellList([WanAttentionBlock(dim) for _ in range(num_layers)])

    def construct(self, x: Tensor, cache: FeatureCache) -> Tensor:
        x = self.resnets[0](x, cache)
        for attn, resnet in zip(self.attentions, list(self.resnets)[1:]):
            x = resnet(attn(x), cache)
        return x


class WanEncoder3d(nn.Cell):
    """conv_in, down_blocks (a flat list: residual blocks, attention where the scale is in attn_scales, resamplers),
    mid block, RMS norm + SiLU + conv_out to z_dim channels (the encoder is built with 2 * z_dim: mean, logvar)."""

    def __init__(self, in_channels: int = 3, dim: int = 128, z_dim: int = 4, dim_mult=(1, 2, 4, 4),
                 num_res_blocks: int = 2, attn_scales=(), temperal_downsample=(True, True, False), dropout: float = 0.0,
                 non_linearity: str = "silu"):
        super().__init__()
        dims = [dim * u for u in [1, *dim_mult]]
        scale = 1.0
        self.conv_in = WanCausalConv3d(in_channels, dims[0], 3, padding=1)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(WanResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    blocks.append(WanAttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(WanResample(out_dim, mode="downsample3d" if temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = WanMidBlock(dims[-1], dropout, non_linearity, num_layers=1)
        self.norm_out = WanRMS_norm(dims[-1], images=False)
        self.conv_out = WanCausalConv3d(dims[-1], z_dim, 3, padding=1)

    def construct(self, x: Tensor, cache: FeatureCache | None = None, feat_cache=None, feat_idx=None,
                  first_chunk=None) -> Tensor:
        """`feat_cache` / `feat_idx` / `first_chunk`: diffusers' call form (see FeatureCache.of); Wan 2.1's encoder
        does not use first_chunk."""
        cache = FeatureCache.of(cache, feat_cache, feat_idx)
        # 1. conv_in: (B, C_in, T, H, W) -> (B, dim, T, H, W)
        x = cached_conv(self.conv_in, x, cache)
        # 2. down blocks: spatial / temporal downsampling
        for layer in self.down_blocks:
            x = layer(x) if isinstance(layer, WanAttentionBlock) else layer(x, cache)
        # 3. mid block
        x = self.mid_block(x, cache)
        # 4. head: norm, SiLU, conv_out -> (B, z_dim, t, h, w)
        return cached_conv(self.conv_out, backend.silu(self.norm_out(x)), cache)


class WanUpBlock(nn.Cell):
    """num_res_blocks + 1 residual blocks, then an optional resampler (`upsamplers.0`)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, dropout: float = 0.0,
                 upsample_mode: str | None = None, non_linearity: str = "silu"):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        dims = [in_dim] + [out_dim] * num_res_blocks
        self.resnets = nn.CellList([WanResidualBlock(d, out_dim, dropout, non_linearity) for d in dims])
        self.upsamplers = nn.CellList([WanResample(out_dim, mode=upsample_mode)]) if upsample_mode else None

    def construct(self, x: Tensor, cache: FeatureCache) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


class WanDecoder3d(nn.Cell):
    """conv_in from z_dim, mid block, up_blocks (Wan 2.1: each after the first takes half the previous width, the
    upsampler having halved it), RMS norm + SiLU + conv_out to out_channels."""

    def __init__(self, dim: int = 128, z_dim: int = 4, dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2, attn_scales=(),
                 temperal_upsample=(False, True, True), dropout: float = 0.0, non_linearity: str = "silu",
                 out_channels: int = 3):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv_in = WanCausalConv3d(z_dim, dims[0], 3, padding=1)
        self.mid_block = WanMidBlock(dims[0], dropout, non_linearity, num_layers=1)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2
            mode = None
            if i != len(dim_mult) - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
            blocks.append(WanUpBlock(in_dim, out_dim, num_res_blocks, dropout, mode, non_linearity))
        self.up_blocks = nn.CellList(blocks)
        self.norm_out = WanRMS_norm(dims[-1], images=False)
        self.conv_out = WanCausalConv3d(dims[-1], out_channels, 3, padding=1)

    def construct(self, x: Tensor, cache: FeatureCache | None = None, feat_cache=None, feat_idx=None,
                  first_chunk=False) -> Tensor:
        """`feat_cache` / `feat_idx` / `first_chunk`: diffusers' call form (see FeatureCache.of); Wan 2.1's up blocks
        do not use first_chunk (only Wan 2.2's residual ones do)."""
        cache = FeatureCache.of(cache, feat_cache, feat_idx)
        # 1. conv_in: (B, z_dim, t, h, w) -> (B, dims[0], t, h, w)
        x = cached_conv(self.conv_in, x, cache)
        # 2. mid block
        x = self.mid_block(x, cache)
        # 3. up blocks: spatial / temporal upsampling
        for block in self.up_blocks:
            x = block(x, cache)
        # 4. head: norm, SiLU, conv_out -> (B, out_channels, T, H, W)
        return cached_conv(self.conv_out, backend.silu(self.norm_out(x)), cache)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------

_WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                       -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
_WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                      1.6382, 1.1253, 2.8251, 1.9160]


class AutoencoderKLWan(ModelMixin):
    """Videos (B, C, 1 + 4k, H, W) -> posterior over latents (B, z_dim, 1 + k, H/8, W/8) (Wan 2.1's factors; in
    general 2^(levels-1) spatially and 2^(temporal downsamples) in time), and back; decoded videos are clamped to
    [-1, 1] as diffusers does. `latents_mean` / `latents_std` are the pipeline's (kept in the config)."""

    diffusers_class = "AutoencoderKLWan"
    # diffusers builds and runs with these null: is_residual -> Wan 2.1's blocks; scale_factor_temporal and the
    # latents statistics are the pipeline's business (it needs them). scale_factor_spatial is not here: diffusers'
    # decode divides by it.
    nullable_config = frozenset({"is_residual", "scale_factor_temporal", "latents_mean", "latents_std"})

    def __init__(self, base_dim: int = 96, decoder_base_dim: int | None = None, z_dim: int = 16,
                 dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2, attn_scales=(),
                 temperal_downsample=(False, True, True), dropout: float = 0.0, latents_mean=_WAN21_LATENTS_MEAN,
                 latents_std=_WAN21_LATENTS_STD, is_residual: bool = False, in_channels: int = 3,
                 out_channels: int = 3, patch_size: int | None = None, scale_factor_temporal: int | None = 4,
                 scale_factor_spatial: int | None = 8, clip_output: bool = True):
        super().__init__()
        # 1. Wan 2.2-only layouts
        if is_residual:
            raise NotImplementedError("AutoencoderKLWan: is_residual=true (Wan 2.2's residual blocks) is not ported")
        if patch_size is not None:
            raise NotImplementedError(f"AutoencoderKLWan: patch_size={patch_size} (Wan 2.2's patchified input) is "
                                      "not ported; expected null")
        dim_mult, temperal_downsample = list(dim_mult), list(temperal_downsample)
        if list(attn_scales):
            # diffusers builds the encoder's attention blocks but its chunked encode calls them with the feature
            # cache, which they do not take (TypeError): no reference to port against
            raise ValueError(f"AutoencoderKLWan: attn_scales={list(attn_scales)} cannot run in diffusers 0.42.1 "
                             "(its encoder's attention blocks reject the feature cache); expected [] as Wan ships")
        if len(temperal_downsample) < len(dim_mult) - 1:
            raise ValueError(f"AutoencoderKLWan: temperal_downsample={temperal_downsample} has "
                             f"{len(temperal_downsample)} entries, expected {len(dim_mult) - 1} (one per dim_mult "
                             "level but the last)")
        self.z_dim, self.in_channels, self.out_channels = z_dim, in_channels, out_channels
        self.clip_output = clip_output
        self.temperal_downsample = temperal_downsample
        self.temperal_upsample = temperal_downsample[::-1]
        # 2. encoder (to mean and logvar), the 1x1x1 quant convs, decoder
        self.encoder = WanEncoder3d(in_channels, base_dim, z_dim * 2, dim_mult, num_res_blocks, list(attn_scales),
                                    temperal_downsample, dropout)
        self.quant_conv = WanCausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.post_quant_conv = WanCausalConv3d(z_dim, z_dim, 1)
        self.decoder = WanDecoder3d(base_dim if decoder_base_dim is None else decoder_base_dim, z_dim, dim_mult,
                                    num_res_blocks, list(attn_scales), self.temperal_upsample, dropout,
                                    out_channels=out_channels)

    # -- input checks (one line each, naming the value) -------------------------------------------------------------
    def _check(self, x: Tensor, channels: int, field: str, what: str) -> None:
        if x.ndim != 5:
            raise ValueError(f"AutoencoderKLWan: {what} must be (B, C, F, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"AutoencoderKLWan: {what} has {x.shape[1]} channels, expected {field}={channels} "
                             f"(shape {tuple(x.shape)})")
        if min(x.shape) == 0:
            raise ValueError(f"AutoencoderKLWan: {what} is empty, shape {tuple(x.shape)}")

    def _encode(self, x: Tensor) -> Tensor:
        num_frames = x.shape[2]
        cache = FeatureCache()
        # 1. the first frame alone, then chunks of 4 frames, the cache carrying each conv's last input frames
        outs = []
        for i in range(1 + (num_frames - 1) // ENCODE_CHUNK):
            cache.rewind()
            chunk = (backend.take_frames(x, 0, 1) if i == 0
                     else backend.take_frames(x, 1 + ENCODE_CHUNK * (i - 1), 1 + ENCODE_CHUNK * i))
            outs.append(self.encoder(chunk, cache))
        # 2. chunks joined in time, quant conv: (B, 2*z_dim, t, h, w)
        out = outs[0] if len(outs) == 1 else ops.cat(outs, axis=2)
        return self.quant_conv(out)

    def encode(self, x, return_dict: bool = True):
        """Videos (B, in_channels, F, H, W) -> posterior (mean, std: (B, z_dim, 1 + (F-1)//4, h, w) for Wan 2.1)."""
        x = backend.to_tensor(x, self.dtype)
        self._check(x, self.in_channels, "in_channels", "encode input")
        posterior = DiagonalGaussianDistribution(self._encode(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def _decode(self, z: Tensor) -> Tensor:
        cache = FeatureCache()
        # 1. post-quant conv: (B, z_dim, t, h, w)
        x = self.post_quant_conv(z)
        # 2. one latent frame at a time, the cache carrying each conv's last input frames
        outs = []
        for i in range(x.shape[2]):
            cache.rewind()
            outs.append(self.decoder(backend.take_frames(x, i, i + 1), cache))
        out = outs[0] if len(outs) == 1 else ops.cat(outs, axis=2)
        # 3. clamp to [-1, 1]
        return ops.clamp(out, -1.0, 1.0) if self.clip_output else out

    def decode(self, z, return_dict: bool = True):
        """Latents (B, z_dim, t, h, w) -> videos (B, out_channels, T, H, W) in [-1, 1]."""
        z = backend.to_tensor(z, self.dtype)
        self._check(z, self.z_dim, "z_dim", "decode input")
        decoded = self._decode(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def construct(self, sample: Tensor, sample_posterior: bool = False, return_dict: bool = True, noise=None,
                  generator=None):
        """Encode, take the posterior mode (or mean + std * `noise` when sample_posterior; `noise` a caller array or
        drawn from the numpy `generator`), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(noise=noise, generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)
