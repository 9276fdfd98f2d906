"""VAE building blocks (diffusers `models/autoencoders/vae.py`, the VAE blocks of `unet_2d_blocks.py` and
`unet_3d_blocks.py`): the SD encoder, the 2D decoder, the diagonal Gaussian posterior and SVD's temporal decoder.

Attribute paths follow diffusers so parameter names equal the PyTorch state_dict keys and the parity harness finds
the same module at the same path. Randomness never comes from MindSpore: posterior samples take caller noise.
"""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops

from .. import backend
from ..layers import Conv2d, Conv3d, GroupNorm, SiLU
from ..modeling import Output
from .attention import Attention
from .resnet import Downsample2D, ResnetBlock2D, SpatioTemporalResBlock, Upsample2D


class AutoencoderKLOutput(Output):
    """`latent_dist`: a DiagonalGaussianDistribution."""


class DecoderOutput(Output):
    """`sample`: the decoded images, (B, C, H, W)."""


# ----------------------------------------------------------------------------------------------------------------
# Posterior
# ----------------------------------------------------------------------------------------------------------------


class DiagonalGaussianDistribution:
    """N(mean, exp(logvar)) from moments (B, 2*C, H, W) split along channels; logvar clamped to [-30, 20]."""

    def __init__(self, parameters: Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, self.logvar = ops.chunk(parameters, 2, axis=1)
        self.logvar = ops.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = ops.exp(0.5 * self.logvar)
        self.var = ops.exp(self.logvar)
        if deterministic:
            self.var = self.std = ops.zeros_like(self.mean)

    def sample(self, noise=None, generator: np.random.Generator | None = None) -> Tensor:
        """mean + std * noise. `noise` (numpy or Tensor, shape of `mean`) comes from the caller; without it a standard
        normal is drawn from the numpy `generator` (never from MindSpore's RNG, so both frameworks can share it)."""
        shape = tuple(self.mean.shape)
        if noise is None:
            if generator is None:
                raise ValueError("DiagonalGaussianDistribution.sample needs `noise` (an array of shape "
                                 f"{shape}) or a numpy `generator`")
            noise = generator.standard_normal(shape).astype(np.float32)
        noise = backend.to_tensor(noise, self.mean.dtype)
        if tuple(noise.shape) != shape:
            raise ValueError(f"DiagonalGaussianDistribution.sample: noise has shape {tuple(noise.shape)}, expected {shape}")
        return self.mean + self.std * noise

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> Tensor:
        if self.deterministic:
            return Tensor(np.zeros(1, np.float32))
        if other is None:
            terms = self.mean**2 + self.var - 1.0 - self.logvar
        else:
            terms = (self.mean - other.mean) ** 2 / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
        return 0.5 * terms.sum(axis=(1, 2, 3))

    def nll(self, sample: Tensor, dims=(1, 2, 3)) -> Tensor:
        if self.deterministic:
            return Tensor(np.zeros(1, np.float32))
        terms = float(np.log(2.0 * np.pi)) + self.logvar + (sample - self.mean) ** 2 / self.var
        return 0.5 * terms.sum(axis=tuple(dims))

    def mode(self) -> Tensor:
        return self.mean


# ----------------------------------------------------------------------------------------------------------------
# 2D blocks (unet_2d_blocks.py): DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D
# ----------------------------------------------------------------------------------------------------------------


def _check_time_scale_shift(block: str, value: str) -> None:
    if value != "default":
        raise ValueError(f"{block}: resnet_time_scale_shift={value!r} is not ported; expected 'default'")


class DownEncoderBlock2D(nn.Cell):
    """num_layers ResnetBlock2D (no time embedding), then an optional strided-conv Downsample2D (`downsamplers.0`)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        _check_time_scale_shift("DownEncoderBlock2D", resnet_time_scale_shift)
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=None, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                          output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm)
            for i in range(num_layers)
        ])
        self.downsamplers = None
        if add_downsample:
            self.downsamplers = nn.CellList([
                Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op")
            ])

    def construct(self, hidden_states: Tensor) -> Tensor:
        # 1. resnets: (B, Cin, H, W) -> (B, Cout, H, W)
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, None)
        # 2. downsample: (B, Cout, H, W) -> (B, Cout, H/2, W/2)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Cell):
    """num_layers ResnetBlock2D, then an optional nearest-x2 + conv Upsample2D (`upsamplers.0`)."""

    def __init__(self, in_channels: int, out_channels: int, resolution_idx: int | None = None, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_upsample: bool = True, temb_channels: int | None = None):
        super().__init__()
        _check_time_scale_shift("UpDecoderBlock2D", resnet_time_scale_shift)
        self.resolution_idx = resolution_idx
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                          output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm)
            for i in range(num_layers)
        ])
        self.upsamplers = None
        if add_upsample:
            self.upsamplers = nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None) -> Tensor:
        # 1. resnets: (B, Cin, H, W) -> (B, Cout, H, W)
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
        # 2. upsample: (B, Cout, H, W) -> (B, Cout, 2H, 2W)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states)
        return hidden_states


class UNetMidBlock2D(nn.Cell):
    """resnets.0, then num_layers x (attentions.i, resnets.i+1). The VAE attention is the group-normed, residual,
    single-head spatial self-attention over H*W tokens (diffusers' `_from_deprecated_attn_block`).
    With add_attention=False `attentions` is empty (diffusers keeps parameter-free None entries)."""

    def __init__(self, in_channels: int, temb_channels: int | None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, attn_groups: int | None = None, resnet_pre_norm: bool = True,
                 add_attention: bool = True, attention_head_dim: int | None = 1, output_scale_factor: float = 1.0):
        super().__init__()
        _check_time_scale_shift("UNetMidBlock2D", resnet_time_scale_shift)
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        attn_groups = resnet_groups if attn_groups is None else attn_groups
        attention_head_dim = in_channels if attention_head_dim is None else attention_head_dim
        self.add_attention = add_attention

        def resnet():
            return ResnetBlock2D(in_channels=in_channels, out_channels=in_channels, temb_channels=temb_channels,
                                 eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                                 time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                                 output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm)

        self.resnets = nn.CellList([resnet() for _ in range(num_layers + 1)])
        self.attentions = nn.CellList([
            Attention(in_channels, heads=in_channels // attention_head_dim, dim_head=attention_head_dim,
                      rescale_output_factor=output_scale_factor, eps=resnet_eps, norm_num_groups=attn_groups,
                      residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)
            for _ in range(num_layers if add_attention else 0)
        ])

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None) -> Tensor:
        # 1. first resnet: (B, C, H, W) -> (B, C, H, W)
        hidden_states = self.resnets[0](hidden_states, temb)
        # 2. (attention, resnet) pairs, shapes unchanged
        for i in range(1, len(self.resnets)):
            if self.add_attention:
                hidden_states = self.attentions[i - 1](hidden_states)
            hidden_states = self.resnets[i](hidden_states, temb)
        return hidden_states


_DOWN_BLOCKS = {"DownEncoderBlock2D": DownEncoderBlock2D}
_UP_BLOCKS = {"UpDecoderBlock2D": UpDecoderBlock2D}


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"{kind} {name!r} is not ported; expected one of {sorted(table)}")
    return table[name]


# ----------------------------------------------------------------------------------------------------------------
# Encoder / Decoder (2D)
# ----------------------------------------------------------------------------------------------------------------


class Encoder(nn.Cell):
    """Images (B, Cin, H, W) -> moments (B, 2*out_channels, H/2^(n-1), W/2^(n-1)) when double_z."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 2, norm_num_groups: int = 32,
                 act_fn: str = "silu", double_z: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)

        blocks = []
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            blocks.append(_lookup(_DOWN_BLOCKS, "down block type", block_type)(
                num_layers=layers_per_block, in_channels=input_channel, out_channels=output_channel,
                add_downsample=i != len(block_out_channels) - 1, resnet_eps=1e-6, downsample_padding=0,
                resnet_act_fn=act_fn, resnet_groups=norm_num_groups))
        self.down_blocks = nn.CellList(blocks)

        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default", attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups, temb_channels=None, add_attention=mid_block_add_attention)

        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = SiLU()
        conv_out_channels = 2 * out_channels if double_z else out_channels
        self.conv_out = Conv2d(block_out_channels[-1], conv_out_channels, 3, padding=1)

    def construct(self, sample: Tensor) -> Tensor:
        # 1. stem: (B, Cin, H, W) -> (B, C0, H, W)
        sample = self.conv_in(sample)
        # 2. down: -> (B, C_last, h, w), h = H / 2^(levels-1)
        for down_block in self.down_blocks:
            sample = down_block(sample)
        # 3. middle (resnet, attention, resnet), shapes unchanged
        sample = self.mid_block(sample)
        # 4. head: (B, C_last, h, w) -> (B, 2*latent, h, w)
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        return self.conv_out(sample)


class Decoder(nn.Cell):
    """Latents (B, Cin, h, w) -> images (B, out_channels, h*2^(n-1), w*2^(n-1)); the SD1.5 VAE decoder.
    Only norm_type="group" (the "spatial" MoVQ variant is not ported)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, up_block_types=("UpDecoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 2, norm_num_groups: int = 32,
                 act_fn: str = "silu", norm_type: str = "group", mid_block_add_attention: bool = True):
        super().__init__()
        if norm_type != "group":
            raise ValueError(f"Decoder: norm_type={norm_type!r} is not ported; expected 'group'")
        self.layers_per_block = layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)

        self.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], resnet_eps=1e-6, resnet_act_fn=act_fn, output_scale_factor=1,
            resnet_time_scale_shift="default", attention_head_dim=block_out_channels[-1],
            resnet_groups=norm_num_groups, temb_channels=None, add_attention=mid_block_add_attention)

        blocks = []
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            blocks.append(_lookup(_UP_BLOCKS, "up block type", block_type)(
                num_layers=layers_per_block + 1, in_channels=prev_output_channel, out_channels=output_channel,
                add_upsample=i != len(block_out_channels) - 1, resnet_eps=1e-6, resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups, temb_channels=None, resnet_time_scale_shift="default"))
        self.up_blocks = nn.CellList(blocks)

        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def construct(self, sample: Tensor, latent_embeds: Tensor | None = None) -> Tensor:
        if latent_embeds is not None:
            raise ValueError("Decoder: latent_embeds is only used by norm_type='spatial', which is not ported")
        # 1. stem: (B, Cin, h, w) -> (B, C_last, h, w)
        sample = self.conv_in(sample)
        # 2. middle, shapes unchanged
        sample = self.mid_block(sample)
        # 3. up: -> (B, C0, H, W)
        for up_block in self.up_blocks:
            sample = up_block(sample)
        # 4. head: (B, C0, H, W) -> (B, Cout, H, W)
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        return self.conv_out(sample)


# ----------------------------------------------------------------------------------------------------------------
# SVD temporal decoder (unet_3d_blocks.py MidBlockTemporalDecoder / UpBlockTemporalDecoder, TemporalDecoder)
# ----------------------------------------------------------------------------------------------------------------


def _video_res_block(in_channels: int, out_channels: int) -> SpatioTemporalResBlock:
    # VAE flavour: no time embedding, temporal eps 1e-5, learned mix (sigmoid), spatial/temporal weights switched
    return SpatioTemporalResBlock(in_channels=in_channels, out_channels=out_channels, temb_channels=None, eps=1e-6,
                                  temporal_eps=1e-5, merge_factor=0.0, merge_strategy="learned",
                                  switch_spatial_to_temporal_mix=True)


class MidBlockTemporalDecoder(nn.Cell):
    """resnets.0, then (attentions.0, resnets.1), then resnets.2..: only one attention whatever num_layers
    (diffusers zips resnets[1:] with a single attention, so resnets beyond the second are built but never run)."""

    def __init__(self, in_channels: int, out_channels: int, attention_head_dim: int = 512, num_layers: int = 1,
                 upcast_attention: bool = False):
        super().__init__()
        self.resnets = nn.CellList([
            _video_res_block(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        ])
        self.attentions = nn.CellList([
            Attention(query_dim=in_channels, heads=in_channels // attention_head_dim, dim_head=attention_head_dim,
                      eps=1e-6, upcast_attention=upcast_attention, norm_num_groups=32, bias=True,
                      residual_connection=True)
        ])

    def construct(self, hidden_states: Tensor, image_only_indicator: Tensor) -> Tensor:
        # 1. first video resnet: (B*F, Cin, h, w) -> (B*F, C, h, w)
        hidden_states = self.resnets[0](hidden_states, image_only_indicator=image_only_indicator)
        # 2. zip(resnets[1:], attentions): at most one (attention, resnet) pair, per frame spatial attention
        for i in range(min(len(self.resnets) - 1, len(self.attentions))):
            hidden_states = self.attentions[i](hidden_states)
            hidden_states = self.resnets[i + 1](hidden_states, image_only_indicator=image_only_indicator)
        return hidden_states


class UpBlockTemporalDecoder(nn.Cell):
    """num_layers SpatioTemporalResBlock, then an optional Upsample2D (`upsamplers.0`) applied per frame."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int = 1, add_upsample: bool = True):
        super().__init__()
        self.resnets = nn.CellList([
            _video_res_block(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)
        ])
        self.upsamplers = None
        if add_upsample:
            self.upsamplers = nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])

    def construct(self, hidden_states: Tensor, image_only_indicator: Tensor) -> Tensor:
        # 1. video resnets: (B*F, Cin, h, w) -> (B*F, Cout, h, w)
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, image_only_indicator=image_only_indicator)
        # 2. upsample: -> (B*F, Cout, 2h, 2w)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states)
        return hidden_states


class TemporalDecoder(nn.Cell):
    """Latents (B*F, Cin, h, w) -> frames (B*F, out_channels, H, W); ends with a (3, 1, 1) temporal conv."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, block_out_channels=(128, 256, 512, 512),
                 layers_per_block: int = 2):
        super().__init__()
        self.layers_per_block = layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.mid_block = MidBlockTemporalDecoder(num_layers=layers_per_block, in_channels=block_out_channels[-1],
                                                 out_channels=block_out_channels[-1],
                                                 attention_head_dim=block_out_channels[-1])
        blocks = []
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i in range(len(block_out_channels)):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            blocks.append(UpBlockTemporalDecoder(num_layers=layers_per_block + 1, in_channels=prev_output_channel,
                                                 out_channels=output_channel,
                                                 add_upsample=i != len(block_out_channels) - 1))
        self.up_blocks = nn.CellList(blocks)

        self.conv_norm_out = GroupNorm(32, block_out_channels[0], eps=1e-6)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)
        self.time_conv_out = Conv3d(out_channels, out_channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))

    def construct(self, sample: Tensor, image_only_indicator: Tensor, num_frames: int = 1) -> Tensor:
        # 1. stem: (B*F, Cin, h, w) -> (B*F, C_last, h, w)
        sample = self.conv_in(sample)
        # 2. middle, shapes unchanged; then the up blocks' dtype (diffusers' upscale_dtype; a weight's, since a
        #    mixed-precision checkpoint keeps norm parameters in fp32)
        sample = self.mid_block(sample, image_only_indicator=image_only_indicator)
        sample = sample.astype(next(p for p in self.up_blocks.get_parameters() if p.ndim > 1).dtype)
        # 3. up: -> (B*F, C0, H, W)
        for up_block in self.up_blocks:
            sample = up_block(sample, image_only_indicator=image_only_indicator)
        # 4. per-frame head: (B*F, C0, H, W) -> (B*F, Cout, H, W)
        sample = self.conv_norm_out(sample)
        sample = self.conv_act(sample)
        sample = self.conv_out(sample)
        # 5. temporal conv over frames: (B*F, C, H, W) -> (B, C, F, H, W) -> (B*F, C, H, W)
        batch_frames, channels, height, width = sample.shape
        batch_size = batch_frames // num_frames
        sample = backend.permute(sample.reshape(batch_size, num_frames, channels, height, width), (0, 2, 1, 3, 4))
        sample = self.time_conv_out(sample)
        return backend.permute(sample, (0, 2, 1, 3, 4)).reshape(batch_frames, channels, height, width)
