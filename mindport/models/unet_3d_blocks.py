"""Down / mid / up blocks of the Stable Video Diffusion UNet (diffusers' `*SpatioTemporal` blocks in
`unet_3d_blocks.py`). Hidden states are (B*F, C, H, W) throughout; `image_only_indicator` (B, F) carries F."""

from __future__ import annotations

from mindspore import Tensor, nn, ops

from ..modeling import per_entry
from .resnet import Downsample2D, SpatioTemporalResBlock, Upsample2D
from .transformer_temporal import TransformerSpatioTemporalModel

DOWN_BLOCK_TYPES = ("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal")
UP_BLOCK_TYPES = ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")




class UNetMidBlockSpatioTemporal(nn.Cell):
    """resnet, then (transformer, resnet) x num_layers, all at `in_channels`."""

    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, num_layers: int = 1,
                 transformer_layers_per_block=1, num_attention_heads: int = 1, cross_attention_dim: int = 1280):
        super().__init__()
        layers = per_entry(transformer_layers_per_block, num_layers)
        self.resnets = nn.CellList([
            SpatioTemporalResBlock(in_channels, in_channels, temb_channels, eps=1e-5) for _ in range(num_layers + 1)
        ])
        self.attentions = nn.CellList([
            TransformerSpatioTemporalModel(num_attention_heads, in_channels // num_attention_heads, in_channels=in_channels,
                                           num_layers=layers[i], cross_attention_dim=cross_attention_dim)
            for i in range(num_layers)
        ])

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                  image_only_indicator: Tensor | None = None) -> Tensor:
        hidden_states = self.resnets[0](hidden_states, temb, image_only_indicator)
        for attn, resnet in zip(self.attentions, list(self.resnets)[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states, image_only_indicator, return_dict=False)[0]
            hidden_states = resnet(hidden_states, temb, image_only_indicator)
        return hidden_states


class DownBlockSpatioTemporal(nn.Cell):
    """num_layers spatio-temporal resnets (eps 1e-5), then an optional stride-2 conv downsampler."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 add_downsample: bool = True):
        super().__init__()
        self.resnets = nn.CellList([
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, eps=1e-5)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nn.CellList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels, name="op")])
            if add_downsample else None
        )

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, image_only_indicator: Tensor | None = None):
        output_states = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb, image_only_indicator)
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class CrossAttnDownBlockSpatioTemporal(nn.Cell):
    """(spatio-temporal resnet (eps 1e-6), transformer) x num_layers, then an optional downsampler."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
                 transformer_layers_per_block=1, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 add_downsample: bool = True):
        super().__init__()
        layers = per_entry(transformer_layers_per_block, num_layers)
        self.resnets = nn.CellList([
            SpatioTemporalResBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels, eps=1e-6)
            for i in range(num_layers)
        ])
        self.attentions = nn.CellList([
            TransformerSpatioTemporalModel(num_attention_heads, out_channels // num_attention_heads,
                                           in_channels=out_channels, num_layers=layers[i],
                                           cross_attention_dim=cross_attention_dim)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nn.CellList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")])
            if add_downsample else None
        )

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                  image_only_indicator: Tensor | None = None):
        output_states = ()
        for resnet, attn in zip(self.resnets, self.attentions):
            hidden_states = resnet(hidden_states, temb, image_only_indicator)
            hidden_states = attn(hidden_states, encoder_hidden_states, image_only_indicator, return_dict=False)[0]
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class UpBlockSpatioTemporal(nn.Cell):
    """num_layers spatio-temporal resnets on [hidden, skip] concatenations, then an optional nearest-x2 upsampler."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, num_layers: int = 1, resnet_eps: float = 1e-6,
                 add_upsample: bool = True):
        super().__init__()
        self.resolution_idx = resolution_idx
        resnets = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            res_in = prev_output_channel if i == 0 else out_channels
            resnets.append(SpatioTemporalResBlock(res_in + skip, out_channels, temb_channels, eps=resnet_eps))
        self.resnets = nn.CellList(resnets)
        self.upsamplers = (
            nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )

    def construct(self, hidden_states: Tensor, res_hidden_states_tuple: tuple, temb: Tensor | None = None,
                  image_only_indicator: Tensor | None = None, upsample_size=None) -> Tensor:
        for resnet in self.resnets:
            # pop the last skip: (B*F, C, H, W) ++ (B*F, Cs, H, W) -> (B*F, C+Cs, H, W)
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = ops.cat([hidden_states, res_hidden_states], axis=1)
            hidden_states = resnet(hidden_states, temb, image_only_indicator)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlockSpatioTemporal(nn.Cell):
    """(resnet on [hidden, skip], transformer) x num_layers, then an optional upsampler."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: int | None = None, num_layers: int = 1, transformer_layers_per_block=1,
                 resnet_eps: float = 1e-6, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 add_upsample: bool = True):
        super().__init__()
        self.resolution_idx = resolution_idx
        layers = per_entry(transformer_layers_per_block, num_layers)
        resnets, attentions = [], []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            res_in = prev_output_channel if i == 0 else out_channels
            resnets.append(SpatioTemporalResBlock(res_in + skip, out_channels, temb_channels, eps=resnet_eps))
            attentions.append(TransformerSpatioTemporalModel(
                num_attention_heads, out_channels // num_attention_heads, in_channels=out_channels,
                num_layers=layers[i], cross_attention_dim=cross_attention_dim))
        self.resnets = nn.CellList(resnets)
        self.attentions = nn.CellList(attentions)
        self.upsamplers = (
            nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )

    def construct(self, hidden_states: Tensor, res_hidden_states_tuple: tuple, temb: Tensor | None = None,
                  encoder_hidden_states: Tensor | None = None, image_only_indicator: Tensor | None = None,
                  upsample_size=None) -> Tensor:
        for resnet, attn in zip(self.resnets, self.attentions):
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = ops.cat([hidden_states, res_hidden_states], axis=1)
            hidden_states = resnet(hidden_states, temb, image_only_indicator)
            hidden_states = attn(hidden_states, encoder_hidden_states, image_only_indicator, return_dict=False)[0]
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


def get_down_block(down_block_type: str, num_layers: int, in_channels: int, out_channels: int, temb_channels: int,
                   add_downsample: bool, num_attention_heads: int = 1, cross_attention_dim: int | None = None,
                   transformer_layers_per_block=1, **_ignored) -> nn.Cell:
    """Build an SVD down block by diffusers' type name. Arguments other SVD blocks ignore (resnet_eps,
    resnet_act_fn, ...) are accepted and ignored, as in diffusers. I2VGen-XL's 3D block types are built by
    `_get_down_block_3d`, which uses those arguments."""
    if down_block_type in DOWN_BLOCK_TYPES_3D:
        return _get_down_block_3d(down_block_type, num_layers, in_channels, out_channels, temb_channels, add_downsample,
                                  num_attention_heads=num_attention_heads, cross_attention_dim=cross_attention_dim,
                                  **_ignored)
    if down_block_type == "DownBlockSpatioTemporal":
        return DownBlockSpatioTemporal(in_channels, out_channels, temb_channels, num_layers=num_layers,
                                       add_downsample=add_downsample)
    if down_block_type == "CrossAttnDownBlockSpatioTemporal":
        if cross_attention_dim is None:
            raise ValueError("get_down_block: cross_attention_dim must be given for CrossAttnDownBlockSpatioTemporal")
        return CrossAttnDownBlockSpatioTemporal(in_channels, out_channels, temb_channels, num_layers=num_layers,
                                                transformer_layers_per_block=transformer_layers_per_block,
                                                num_attention_heads=num_attention_heads,
                                                cross_attention_dim=cross_attention_dim, add_downsample=add_downsample)
    raise ValueError(f"unknown down_block_type {down_block_type!r}; expected one of {[*DOWN_BLOCK_TYPES, *DOWN_BLOCK_TYPES_3D]}")


def get_up_block(up_block_type: str, num_layers: int, in_channels: int, out_channels: int, prev_output_channel: int,
                 temb_channels: int, add_upsample: bool, num_attention_heads: int = 1, resolution_idx: int | None = None,
                 cross_attention_dim: int | None = None, transformer_layers_per_block=1, **_ignored) -> nn.Cell:
    """Build an SVD up block by diffusers' type name (resnet eps stays at the blocks' default 1e-6, as in diffusers);
    I2VGen-XL's 3D block types are built by `_get_up_block_3d`."""
    if up_block_type in UP_BLOCK_TYPES_3D:
        return _get_up_block_3d(up_block_type, num_layers, in_channels, out_channels, prev_output_channel,
                                temb_channels, add_upsample, num_attention_heads=num_attention_heads,
                                resolution_idx=resolution_idx, cross_attention_dim=cross_attention_dim, **_ignored)
    if up_block_type == "UpBlockSpatioTemporal":
        return UpBlockSpatioTemporal(in_channels, prev_output_channel, out_channels, temb_channels,
                                     resolution_idx=resolution_idx, num_layers=num_layers, add_upsample=add_upsample)
    if up_block_type == "CrossAttnUpBlockSpatioTemporal":
        if cross_attention_dim is None:
            raise ValueError("get_up_block: cross_attention_dim must be given for CrossAttnUpBlockSpatioTemporal")
        return CrossAttnUpBlockSpatioTemporal(in_channels, out_channels, prev_output_channel, temb_channels,
                                              resolution_idx=resolution_idx, num_layers=num_layers,
                                              transformer_layers_per_block=transformer_layers_per_block,
                                              num_attention_heads=num_attention_heads,
                                              cross_attention_dim=cross_attention_dim, add_upsample=add_upsample)
    raise ValueError(f"unknown up_block_type {up_block_type!r}; expected one of {[*UP_BLOCK_TYPES, *UP_BLOCK_TYPES_3D]}")


# ----------------------------------------------------------------------------------------------------------------
# I2VGen-XL / ModelScope 3D blocks: hidden states are (B*F, C, H, W); `num_frames` carries F. Each layer is a
# ResnetBlock2D per frame, a TemporalConvLayer across frames, and (cross-attention blocks) a Transformer2DModel per
# frame followed by a TransformerTemporalModel across frames.
# ----------------------------------------------------------------------------------------------------------------

from .resnet import ResnetBlock2D, TemporalConvLayer  # noqa: E402
from .transformer_2d import Transformer2DModel  # noqa: E402
from .transformer_temporal import TransformerTemporalModel  # noqa: E402

DOWN_BLOCK_TYPES_3D = ("DownBlock3D", "CrossAttnDownBlock3D")
UP_BLOCK_TYPES_3D = ("UpBlock3D", "CrossAttnUpBlock3D")


def _resnet_3d(in_channels, out_channels, temb_channels, eps, groups, act_fn, time_scale_shift, output_scale_factor):
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, eps=eps,
                         groups=groups, non_linearity=act_fn, time_embedding_norm=time_scale_shift,
                         output_scale_factor=output_scale_factor)


def _attentions_3d(channels, num_attention_heads, cross_attention_dim, groups, use_linear_projection,
                   only_cross_attention=False, upcast_attention=False):
    """(spatial Transformer2DModel, temporal TransformerTemporalModel) at `channels`, heads of channels // heads."""
    if channels % num_attention_heads:
        raise ValueError(f"3D block: {channels} channels are not divisible by num_attention_heads={num_attention_heads}")
    spatial = Transformer2DModel(num_attention_heads=channels // num_attention_heads,
                                 attention_head_dim=num_attention_heads, in_channels=channels, num_layers=1,
                                 cross_attention_dim=cross_attention_dim, norm_num_groups=groups,
                                 use_linear_projection=use_linear_projection,
                                 only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)
    # diffusers passes (channels // heads, heads) positionally to (num_attention_heads, attention_head_dim): same split
    temporal = TransformerTemporalModel(num_attention_heads=channels // num_attention_heads,
                                        attention_head_dim=num_attention_heads, in_channels=channels, num_layers=1,
                                        cross_attention_dim=cross_attention_dim, norm_num_groups=groups)
    return spatial, temporal


class UNetMidBlock3DCrossAttn(nn.Cell):
    """resnet + temporal conv, then (spatial transformer, temporal transformer, resnet, temporal conv) x num_layers."""

    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int | None = 32, resnet_pre_norm: bool = True, num_attention_heads: int = 1,
                 output_scale_factor: float = 1.0, cross_attention_dim: int = 1280, dual_cross_attention: bool = False,
                 use_linear_projection: bool = True, upcast_attention: bool = False):
        super().__init__()
        groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        self.num_attention_heads = num_attention_heads
        resnet = lambda: _resnet_3d(in_channels, in_channels, temb_channels, resnet_eps, groups, resnet_act_fn,  # noqa: E731
                                    resnet_time_scale_shift, output_scale_factor)
        resnets, temp_convs = [resnet()], [TemporalConvLayer(in_channels, in_channels, norm_num_groups=groups)]
        attentions, temp_attentions = [], []
        for _ in range(num_layers):
            spatial, temporal = _attentions_3d(in_channels, num_attention_heads, cross_attention_dim, groups,
                                               use_linear_projection, upcast_attention=upcast_attention)
            attentions.append(spatial)
            temp_attentions.append(temporal)
            resnets.append(resnet())
            temp_convs.append(TemporalConvLayer(in_channels, in_channels, norm_num_groups=groups))
        self.resnets = nn.CellList(resnets)
        self.temp_convs = nn.CellList(temp_convs)
        self.attentions = nn.CellList(attentions)
        self.temp_attentions = nn.CellList(temp_attentions)

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                  attention_mask: Tensor | None = None, num_frames: int = 1, cross_attention_kwargs=None) -> Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        hidden_states = self.temp_convs[0](hidden_states, num_frames=num_frames)
        for attn, temp_attn, resnet, temp_conv in zip(self.attentions, self.temp_attentions, list(self.resnets)[1:],
                                                      list(self.temp_convs)[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            hidden_states = temp_attn(hidden_states, num_frames=num_frames, return_dict=False)[0]
            hidden_states = resnet(hidden_states, temb)
            hidden_states = temp_conv(hidden_states, num_frames=num_frames)
        return hidden_states


class CrossAttnDownBlock3D(nn.Cell):
    """(resnet, temporal conv, spatial transformer, temporal transformer) x num_layers, then an optional stride-2
    conv downsampler; returns (hidden_states, every layer's output [+ the downsampled one])."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 num_attention_heads: int = 1, cross_attention_dim: int = 1280, output_scale_factor: float = 1.0,
                 downsample_padding: int = 1, add_downsample: bool = True, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        resnets, temp_convs, attentions, temp_attentions = [], [], [], []
        for i in range(num_layers):
            resnets.append(_resnet_3d(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps,
                                      resnet_groups, resnet_act_fn, resnet_time_scale_shift, output_scale_factor))
            temp_convs.append(TemporalConvLayer(out_channels, out_channels, norm_num_groups=resnet_groups))
            spatial, temporal = _attentions_3d(out_channels, num_attention_heads, cross_attention_dim, resnet_groups,
                                               use_linear_projection, only_cross_attention, upcast_attention)
            attentions.append(spatial)
            temp_attentions.append(temporal)
        self.resnets = nn.CellList(resnets)
        self.temp_convs = nn.CellList(temp_convs)
        self.attentions = nn.CellList(attentions)
        self.temp_attentions = nn.CellList(temp_attentions)
        self.downsamplers = (
            nn.CellList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                      padding=downsample_padding, name="op")])
            if add_downsample else None
        )

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                  attention_mask: Tensor | None = None, num_frames: int = 1, cross_attention_kwargs=None):
        output_states = ()
        for resnet, temp_conv, attn, temp_attn in zip(self.resnets, self.temp_convs, self.attentions,
                                                      self.temp_attentions):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = temp_conv(hidden_states, num_frames=num_frames)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            hidden_states = temp_attn(hidden_states, num_frames=num_frames, return_dict=False)[0]
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class DownBlock3D(nn.Cell):
    """(resnet, temporal conv) x num_layers, then an optional stride-2 conv downsampler."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        self.resnets = nn.CellList([
            _resnet_3d(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps,
                       resnet_groups, resnet_act_fn, resnet_time_scale_shift, output_scale_factor)
            for i in range(num_layers)
        ])
        self.temp_convs = nn.CellList([
            TemporalConvLayer(out_channels, out_channels, norm_num_groups=resnet_groups) for _ in range(num_layers)
        ])
        self.downsamplers = (
            nn.CellList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                      padding=downsample_padding, name="op")])
            if add_downsample else None
        )

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, num_frames: int = 1):
        output_states = ()
        for resnet, temp_conv in zip(self.resnets, self.temp_convs):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = temp_conv(hidden_states, num_frames=num_frames)
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class CrossAttnUpBlock3D(nn.Cell):
    """(resnet on [hidden, skip], temporal conv, spatial transformer, temporal transformer) x num_layers, then an
    optional nearest-x2 + conv upsampler. FreeU is not ported."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 dropout: float = 0.0, num_layers: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, add_upsample: bool = True, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, resolution_idx: int | None = None):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.resolution_idx = resolution_idx
        resnets, temp_convs, attentions, temp_attentions = [], [], [], []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            res_in = prev_output_channel if i == 0 else out_channels
            resnets.append(_resnet_3d(res_in + skip, out_channels, temb_channels, resnet_eps, resnet_groups,
                                      resnet_act_fn, resnet_time_scale_shift, output_scale_factor))
            temp_convs.append(TemporalConvLayer(out_channels, out_channels, norm_num_groups=resnet_groups))
            spatial, temporal = _attentions_3d(out_channels, num_attention_heads, cross_attention_dim, resnet_groups,
                                               use_linear_projection, only_cross_attention, upcast_attention)
            attentions.append(spatial)
            temp_attentions.append(temporal)
        self.resnets = nn.CellList(resnets)
        self.temp_convs = nn.CellList(temp_convs)
        self.attentions = nn.CellList(attentions)
        self.temp_attentions = nn.CellList(temp_attentions)
        self.upsamplers = (
            nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )

    def construct(self, hidden_states: Tensor, res_hidden_states_tuple: tuple, temb: Tensor | None = None,
                  encoder_hidden_states: Tensor | None = None, upsample_size=None, attention_mask=None,
                  num_frames: int = 1, cross_attention_kwargs=None) -> Tensor:
        for resnet, temp_conv, attn, temp_attn in zip(self.resnets, self.temp_convs, self.attentions,
                                                      self.temp_attentions):
            # pop the last skip: (B*F, C, H, W) ++ (B*F, Cs, H, W) -> (B*F, C+Cs, H, W)
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = ops.cat([hidden_states, res_hidden_states], axis=1)
            hidden_states = resnet(hidden_states, temb)
            hidden_states = temp_conv(hidden_states, num_frames=num_frames)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            hidden_states = temp_attn(hidden_states, num_frames=num_frames, return_dict=False)[0]
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


class UpBlock3D(nn.Cell):
    """(resnet on [hidden, skip], temporal conv) x num_layers, then an optional upsampler. FreeU is not ported."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 dropout: float = 0.0, num_layers: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, output_scale_factor: float = 1.0, add_upsample: bool = True,
                 resolution_idx: int | None = None):
        super().__init__()
        self.resolution_idx = resolution_idx
        resnets = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            res_in = prev_output_channel if i == 0 else out_channels
            resnets.append(_resnet_3d(res_in + skip, out_channels, temb_channels, resnet_eps, resnet_groups,
                                      resnet_act_fn, resnet_time_scale_shift, output_scale_factor))
        self.resnets = nn.CellList(resnets)
        self.temp_convs = nn.CellList([
            TemporalConvLayer(out_channels, out_channels, norm_num_groups=resnet_groups) for _ in range(num_layers)
        ])
        self.upsamplers = (
            nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )

    def construct(self, hidden_states: Tensor, res_hidden_states_tuple: tuple, temb: Tensor | None = None,
                  upsample_size=None, num_frames: int = 1) -> Tensor:
        for resnet, temp_conv in zip(self.resnets, self.temp_convs):
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = ops.cat([hidden_states, res_hidden_states], axis=1)
            hidden_states = resnet(hidden_states, temb)
            hidden_states = temp_conv(hidden_states, num_frames=num_frames)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


def _get_down_block_3d(down_block_type: str, num_layers: int, in_channels: int, out_channels: int,
                       temb_channels: int, add_downsample: bool, num_attention_heads: int = 1,
                       cross_attention_dim: int | None = None, resnet_eps: float = 1e-6,
                       resnet_act_fn: str = "swish", resnet_groups: int | None = 32, downsample_padding: int = 1,
                       use_linear_projection: bool = True, only_cross_attention: bool = False,
                       upcast_attention: bool = False, resnet_time_scale_shift: str = "default", **_ignored):
    common = dict(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels,
                  temb_channels=temb_channels, add_downsample=add_downsample, resnet_eps=resnet_eps,
                  resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups, downsample_padding=downsample_padding,
                  resnet_time_scale_shift=resnet_time_scale_shift)
    if down_block_type == "DownBlock3D":
        return DownBlock3D(**common)
    if cross_attention_dim is None:
        raise ValueError("get_down_block: cross_attention_dim must be given for CrossAttnDownBlock3D")
    return CrossAttnDownBlock3D(**common, cross_attention_dim=cross_attention_dim,
                                num_attention_heads=num_attention_heads, use_linear_projection=use_linear_projection,
                                only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)


def _get_up_block_3d(up_block_type: str, num_layers: int, in_channels: int, out_channels: int,
                     prev_output_channel: int, temb_channels: int, add_upsample: bool, num_attention_heads: int = 1,
                     resolution_idx: int | None = None, cross_attention_dim: int | None = None,
                     resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", resnet_groups: int | None = 32,
                     use_linear_projection: bool = True, only_cross_attention: bool = False,
                     upcast_attention: bool = False, resnet_time_scale_shift: str = "default", **_ignored):
    common = dict(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels,
                  prev_output_channel=prev_output_channel, temb_channels=temb_channels, add_upsample=add_upsample,
                  resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                  resnet_time_scale_shift=resnet_time_scale_shift, resolution_idx=resolution_idx)
    if up_block_type == "UpBlock3D":
        return UpBlock3D(**common)
    if cross_attention_dim is None:
        raise ValueError("get_up_block: cross_attention_dim must be given for CrossAttnUpBlock3D")
    return CrossAttnUpBlock3D(**common, cross_attention_dim=cross_attention_dim,
                              num_attention_heads=num_attention_heads, use_linear_projection=use_linear_projection,
                              only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)
