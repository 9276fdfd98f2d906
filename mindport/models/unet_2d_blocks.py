"""Down / mid / up blocks of the Stable Diffusion 1.5 UNet (diffusers' `unet_2d_blocks.py`): resnets on
(B, C, H, W), `Transformer2DModel` cross-attention after each resnet in the CrossAttn variants, stride-2 conv
downsamplers (`downsamplers.0.conv`) and nearest x2 + conv upsamplers (`upsamplers.0.conv`).

Not ported: dual cross-attention, FreeU, the Simple/KCrossAttn/Attn*/Skip/ResnetDownsample block families."""

from __future__ import annotations

from mindspore import Tensor, nn, ops

from ..modeling import per_entry
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .transformer_2d import Transformer2DModel

DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn",)




def _refuse_dual(dual_cross_attention: bool, where: str) -> None:
    if dual_cross_attention:
        raise NotImplementedError(f"{where}: dual_cross_attention=True is not ported; expected False")


def _resnet(in_channels, out_channels, temb_channels, eps, groups, act, time_scale_shift, output_scale_factor,
            dropout=0.0, groups_out=None, pre_norm=True) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, eps=eps,
                         groups=groups, groups_out=groups_out, dropout=dropout, time_embedding_norm=time_scale_shift,
                         non_linearity=act, output_scale_factor=output_scale_factor, pre_norm=pre_norm)


def _transformer(out_channels, heads, layers, cross_attention_dim, groups, use_linear_projection,
                 only_cross_attention, upcast_attention, attention_type) -> Transformer2DModel:
    if out_channels % heads:
        raise ValueError(f"Transformer2DModel: {out_channels} channels are not divisible by num_attention_heads={heads}")
    return Transformer2DModel(heads, out_channels // heads, in_channels=out_channels, num_layers=layers,
                              cross_attention_dim=cross_attention_dim, norm_num_groups=groups,
                              use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
                              upcast_attention=upcast_attention, attention_type=attention_type)


# ----------------------------------------------------------------------------------------------------------------
# mid block
# ----------------------------------------------------------------------------------------------------------------


class UNetMidBlock2DCrossAttn(nn.Cell):
    """resnet, then (Transformer2DModel, resnet) x num_layers."""

    def __init__(self, in_channels: int, temb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block=1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_groups_out: int | None = None, resnet_pre_norm: bool = True, num_attention_heads: int = 1,
                 output_scale_factor: float = 1.0, cross_attention_dim: int = 1280,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        _refuse_dual(dual_cross_attention, "UNetMidBlock2DCrossAttn")
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        resnet_groups_out = resnet_groups_out or resnet_groups
        layers = per_entry(transformer_layers_per_block, num_layers)
        common = dict(temb_channels=temb_channels, eps=resnet_eps, act=resnet_act_fn,
                      time_scale_shift=resnet_time_scale_shift, output_scale_factor=output_scale_factor,
                      dropout=dropout, pre_norm=resnet_pre_norm)
        resnets = [_resnet(in_channels, out_channels, groups=resnet_groups, groups_out=resnet_groups_out, **common)]
        attentions = []
        for i in range(num_layers):
            attentions.append(_transformer(out_channels, num_attention_heads, layers[i], cross_attention_dim,
                                           resnet_groups_out, use_linear_projection, False, upcast_attention,
                                           attention_type))
            resnets.append(_resnet(out_channels, out_channels, groups=resnet_groups_out, **common))
        self.attentions = nn.CellList(attentions)
        self.resnets = nn.CellList(resnets)

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                  attention_mask: Tensor | None = None, cross_attention_kwargs: dict | None = None,
                  encoder_attention_mask: Tensor | None = None) -> Tensor:
        # (B, C, H, W) throughout
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, list(self.resnets)[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                 return_dict=False)[0]
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# down blocks
# ----------------------------------------------------------------------------------------------------------------


class DownBlock2D(nn.Cell):
    """num_layers resnets, then an optional stride-2 conv downsampler; returns (hidden_states, skip states)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        self.has_cross_attention = False
        self.resnets = nn.CellList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps, resnet_groups,
                    resnet_act_fn, resnet_time_scale_shift, output_scale_factor, dropout, pre_norm=resnet_pre_norm)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nn.CellList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                      padding=downsample_padding, name="op")])
            if add_downsample else None
        )

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None):
        output_states = ()
        # 1. resnets: (B, Cin, H, W) -> (B, Cout, H, W), each output kept as a skip
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            output_states = output_states + (hidden_states,)
        # 2. downsample: (B, Cout, H, W) -> (B, Cout, H/2, W/2)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states = output_states + (hidden_states,)
        return hidden_states, output_states


class CrossAttnDownBlock2D(nn.Cell):
    """(resnet, Transformer2DModel) x num_layers, then an optional downsampler; returns (hidden_states, skips).
    `additional_residuals` (T2I-Adapter) is added to the last layer's output."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block=1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, downsample_padding: int = 1, add_downsample: bool = True,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        _refuse_dual(dual_cross_attention, "CrossAttnDownBlock2D")
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        layers = per_entry(transformer_layers_per_block, num_layers)
        resnets, attentions = [], []
        for i in range(num_layers):
            resnets.append(_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps,
                                   resnet_groups, resnet_act_fn, resnet_time_scale_shift, output_scale_factor,
                                   dropout, pre_norm=resnet_pre_norm))
            attentions.append(_transformer(out_channels, num_attention_heads, layers[i], cross_attention_dim,
                                           resnet_groups, use_linear_projection, only_cross_attention,
                                           upcast_attention, attention_type))
        self.attentions = nn.CellList(attentions)
        self.resnets = nn.CellList(resnets)
        self.downsamplers = (
            nn.CellList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                      padding=downsample_padding, name="op")])
            if add_downsample else None
        )

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                  attention_mask: Tensor | None = None, cross_attention_kwargs: dict | None = None,
                  encoder_attention_mask: Tensor | None = None, additional_residuals: Tensor | None = None):
        output_states = ()
        n = len(self.resnets)
        # 1. (resnet, transformer) pairs: (B, Cin, H, W) -> (B, Cout, H, W), each output kept as a skip
        for i, (resnet, attn) in enumerate(zip(self.resnets, self.attentions)):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                 return_dict=False)[0]
            if i == n - 1 and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals
            output_states = output_states + (hidden_states,)
        # 2. downsample: (B, Cout, H, W) -> (B, Cout, H/2, W/2)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states = output_states + (hidden_states,)
        return hidden_states, output_states


# ----------------------------------------------------------------------------------------------------------------
# up blocks
# ----------------------------------------------------------------------------------------------------------------


def _up_resnet_channels(i: int, num_layers: int, in_channels: int, prev_output_channel: int, out_channels: int) -> int:
    """Input width of up-block resnet i: the running hidden state concatenated with the matching skip."""
    res_skip_channels = in_channels if i == num_layers - 1 else out_channels
    resnet_in_channels = prev_output_channel if i == 0 else out_channels
    return resnet_in_channels + res_skip_channels


class UpBlock2D(nn.Cell):
    """Per layer: concatenate the last skip on channels, resnet; then an optional nearest x2 + conv upsampler."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_upsample: bool = True):
        super().__init__()
        self.has_cross_attention = False
        self.resolution_idx = resolution_idx
        self.resnets = nn.CellList([
            _resnet(_up_resnet_channels(i, num_layers, in_channels, prev_output_channel, out_channels), out_channels,
                    temb_channels, resnet_eps, resnet_groups, resnet_act_fn, resnet_time_scale_shift,
                    output_scale_factor, dropout, pre_norm=resnet_pre_norm)
            for i in range(num_layers)
        ])
        self.upsamplers = (
            nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )

    def construct(self, hidden_states: Tensor, res_hidden_states_tuple: tuple, temb: Tensor | None = None,
                  upsample_size=None) -> Tensor:
        # 1. per resnet: (B, C, H, W) ++ skip (B, Cs, H, W) -> (B, C + Cs, H, W) -> (B, Cout, H, W)
        for resnet in self.resnets:
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = ops.cat((hidden_states, res_hidden_states), axis=1)
            hidden_states = resnet(hidden_states, temb)
        # 2. upsample: (B, Cout, H, W) -> (B, Cout, 2H, 2W) (or upsample_size)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlock2D(nn.Cell):
    """Per layer: concatenate the last skip, resnet, Transformer2DModel; then an optional upsampler."""

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 transformer_layers_per_block=1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 num_attention_heads: int = 1, cross_attention_dim: int = 1280, output_scale_factor: float = 1.0,
                 add_upsample: bool = True, dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        _refuse_dual(dual_cross_attention, "CrossAttnUpBlock2D")
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        self.resolution_idx = resolution_idx
        layers = per_entry(transformer_layers_per_block, num_layers)
        resnets, attentions = [], []
        for i in range(num_layers):
            resnets.append(_resnet(_up_resnet_channels(i, num_layers, in_channels, prev_output_channel, out_channels),
                                   out_channels, temb_channels, resnet_eps, resnet_groups, resnet_act_fn,
                                   resnet_time_scale_shift, output_scale_factor, dropout, pre_norm=resnet_pre_norm))
            attentions.append(_transformer(out_channels, num_attention_heads, layers[i], cross_attention_dim,
                                           resnet_groups, use_linear_projection, only_cross_attention,
                                           upcast_attention, attention_type))
        self.attentions = nn.CellList(attentions)
        self.resnets = nn.CellList(resnets)
        self.upsamplers = (
            nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None
        )

    def construct(self, hidden_states: Tensor, res_hidden_states_tuple: tuple, temb: Tensor | None = None,
                  encoder_hidden_states: Tensor | None = None, cross_attention_kwargs: dict | None = None,
                  upsample_size=None, attention_mask: Tensor | None = None,
                  encoder_attention_mask: Tensor | None = None) -> Tensor:
        # 1. per layer: cat skip on channels -> resnet -> transformer, (B, Cout, H, W)
        for resnet, attn in zip(self.resnets, self.attentions):
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = ops.cat((hidden_states, res_hidden_states), axis=1)
            hidden_states = resnet(hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                 return_dict=False)[0]
        # 2. upsample: (B, Cout, H, W) -> (B, Cout, 2H, 2W) (or upsample_size)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# factories (diffusers' get_down_block / get_up_block for the ported types)
# ----------------------------------------------------------------------------------------------------------------


def _strip_unetres(block_type: str) -> str:
    return block_type.removeprefix("UNetRes")


def get_down_block(down_block_type: str, num_layers: int, in_channels: int, out_channels: int, temb_channels: int,
                   add_downsample: bool, resnet_eps: float, resnet_act_fn: str, transformer_layers_per_block=1,
                   num_attention_heads: int | None = None, resnet_groups: int | None = None,
                   cross_attention_dim: int | None = None, downsample_padding: int | None = None,
                   dual_cross_attention: bool = False, use_linear_projection: bool = False,
                   only_cross_attention: bool = False, upcast_attention: bool = False,
                   resnet_time_scale_shift: str = "default", attention_type: str = "default",
                   resnet_skip_time_act: bool = False, resnet_out_scale_factor: float = 1.0,
                   cross_attention_norm: str | None = None, attention_head_dim: int | None = None,
                   downsample_type: str | None = None, dropout: float = 0.0) -> nn.Cell:
    kind = _strip_unetres(down_block_type)
    if kind == "DownBlock2D":
        return DownBlock2D(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels,
                           temb_channels=temb_channels, dropout=dropout, add_downsample=add_downsample,
                           resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                           downsample_padding=downsample_padding, resnet_time_scale_shift=resnet_time_scale_shift)
    if kind == "CrossAttnDownBlock2D":
        if cross_attention_dim is None:
            raise ValueError("CrossAttnDownBlock2D: cross_attention_dim must be set")
        return CrossAttnDownBlock2D(num_layers=num_layers, transformer_layers_per_block=transformer_layers_per_block,
                                    in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels,
                                    dropout=dropout, add_downsample=add_downsample, resnet_eps=resnet_eps,
                                    resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                                    downsample_padding=downsample_padding, cross_attention_dim=cross_attention_dim,
                                    num_attention_heads=num_attention_heads, dual_cross_attention=dual_cross_attention,
                                    use_linear_projection=use_linear_projection,
                                    only_cross_attention=only_cross_attention, upcast_attention=upcast_attention,
                                    resnet_time_scale_shift=resnet_time_scale_shift, attention_type=attention_type)
    raise ValueError(f"unknown down_block_type {down_block_type!r}; ported: {list(DOWN_BLOCK_TYPES)}")


def get_up_block(up_block_type: str, num_layers: int, in_channels: int, out_channels: int, prev_output_channel: int,
                 temb_channels: int, add_upsample: bool, resnet_eps: float, resnet_act_fn: str,
                 resolution_idx: int | None = None, transformer_layers_per_block=1,
                 num_attention_heads: int | None = None, resnet_groups: int | None = None,
                 cross_attention_dim: int | None = None, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False, resnet_time_scale_shift: str = "default",
                 attention_type: str = "default", resnet_skip_time_act: bool = False,
                 resnet_out_scale_factor: float = 1.0, cross_attention_norm: str | None = None,
                 attention_head_dim: int | None = None, upsample_type: str | None = None,
                 dropout: float = 0.0) -> nn.Cell:
    kind = _strip_unetres(up_block_type)
    if kind == "UpBlock2D":
        return UpBlock2D(num_layers=num_layers, in_channels=in_channels, out_channels=out_channels,
                         prev_output_channel=prev_output_channel, temb_channels=temb_channels,
                         resolution_idx=resolution_idx, dropout=dropout, add_upsample=add_upsample,
                         resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                         resnet_time_scale_shift=resnet_time_scale_shift)
    if kind == "CrossAttnUpBlock2D":
        if cross_attention_dim is None:
            raise ValueError("CrossAttnUpBlock2D: cross_attention_dim must be set")
        return CrossAttnUpBlock2D(num_layers=num_layers, transformer_layers_per_block=transformer_layers_per_block,
                                  in_channels=in_channels, out_channels=out_channels,
                                  prev_output_channel=prev_output_channel, temb_channels=temb_channels,
                                  resolution_idx=resolution_idx, dropout=dropout, add_upsample=add_upsample,
                                  resnet_eps=resnet_eps, resnet_act_fn=resnet_act_fn, resnet_groups=resnet_groups,
                                  cross_attention_dim=cross_attention_dim, num_attention_heads=num_attention_heads,
                                  dual_cross_attention=dual_cross_attention,
                                  use_linear_projection=use_linear_projection,
                                  only_cross_attention=only_cross_attention, upcast_attention=upcast_attention,
                                  resnet_time_scale_shift=resnet_time_scale_shift, attention_type=attention_type)
    raise ValueError(f"unknown up_block_type {up_block_type!r}; ported: {list(UP_BLOCK_TYPES)}")


__all__ = [
    "DOWN_BLOCK_TYPES",
    "MID_BLOCK_TYPES",
    "UP_BLOCK_TYPES",
    "CrossAttnDownBlock2D",
    "CrossAttnUpBlock2D",
    "DownBlock2D",
    "UNetMidBlock2DCrossAttn",
    "UpBlock2D",
    "get_down_block",
    "get_up_block",
]
