"""AnimateDiff (diffusers' `unet_motion_model.py`): the motion transformer, its container `MotionModules`, the
`MotionAdapter` that stores them, the motion down / mid / up blocks and `UNetMotionModel`, an SD 1.5 UNet with a
motion module after every resnet (+ spatial transformer).

Module paths follow diffusers, so a MotionAdapter's parameters and the UNetMotionModel's motion parameters share
names below the block: `down_blocks.{i}.motion_modules.{j}.{norm, proj_in, transformer_blocks.{k}.{norm1, attn1,
norm2, attn2, norm3, ff.net.0.proj, ff.net.2, pos_embed}, proj_out}`, `mid_block.motion_modules.{j}...`,
`up_blocks.{i}.motion_modules.{j}...`. Hidden states inside the UNet are (B*F, C, H, W) (frames folded into the
batch); a motion module regroups them into (B*H*W, F, C) sequences along time.

Not ported: IP-Adapter image projection (`encoder_hid_dim_type`), FreeU, dual cross-attention, LoRA scales.
"""

from __future__ import annotations

import inspect

import mindspore as ms
from mindspore import Tensor, nn, ops

from .. import backend
from ..layers import Conv2d, GroupNorm, SiLU
from ..modeling import Config, ModelMixin, Output, per_entry
from .embeddings import TimestepEmbedding, Timesteps, timesteps_1d
from .free_noise import FreeNoiseTransformerBlock, unwrap
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .transformer_2d import Transformer2DModel
from .transformer_temporal import TransformerTemporalModel

DOWN_BLOCK_TYPES = ("CrossAttnDownBlockMotion", "DownBlockMotion")
UP_BLOCK_TYPES = ("CrossAttnUpBlockMotion", "UpBlockMotion")


def _keep_init_args(cell, args: dict) -> None:
    """Direct construction keeps its arguments as `.config` too (from_config replaces it with the full config)."""
    cell.config = Config({k: v for k, v in args.items() if k not in ("self", "__class__")})




# ----------------------------------------------------------------------------------------------------------------
# The motion transformer
# ----------------------------------------------------------------------------------------------------------------


class AnimateDiffTransformer3D(TransformerTemporalModel):
    """diffusers' `AnimateDiffTransformer3D`: the module `TransformerTemporalModel` is (same parameters, same names;
    the motion blocks build it with sinusoidal frame positions), returning the (B*F, C, H, W) tensor itself.

    With FreeNoise (mindport.models.free_noise) its blocks run windows of frames, each with its own positions, so a
    call takes more frames than the position table holds."""

    @property
    def windowed(self) -> bool:
        return any(isinstance(unwrap(b), FreeNoiseTransformerBlock) for b in self.transformer_blocks)

    @property
    def num_positional_embeddings(self) -> int | None:
        """The most frames one call takes: the position table's length, or None (any number) while windowed."""
        return None if self.windowed else self._max_frames

    @num_positional_embeddings.setter
    def num_positional_embeddings(self, value: int | None) -> None:
        self._max_frames = value

    def construct(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None, timestep=None,
                  class_labels=None, num_frames: int = 1, cross_attention_kwargs: dict | None = None) -> Tensor:
        return self.attend_frames(hidden_states, encoder_hidden_states, num_frames)


def _motion_transformer(channels: int, heads: int, layers: int, groups: int, max_seq_length: int,
                        cross_attention_dim: int | None = None, double_self_attention: bool = True):
    """The motion module every block builds: geglu, no attention bias, sinusoidal positions, head dim C/heads."""
    if channels % heads:
        raise ValueError(f"motion module: {channels} channels are not divisible by {heads} attention heads")
    return AnimateDiffTransformer3D(num_attention_heads=heads, attention_head_dim=channels // heads,
                                    in_channels=channels, num_layers=layers, norm_num_groups=groups,
                                    cross_attention_dim=cross_attention_dim, attention_bias=False,
                                    activation_fn="geglu", positional_embeddings="sinusoidal",
                                    num_positional_embeddings=max_seq_length,
                                    double_self_attention=double_self_attention)


class MotionModules(nn.Cell):
    """`motion_modules`: the motion transformers of one UNet level, as a MotionAdapter stores them."""

    def __init__(self, in_channels: int, layers_per_block: int = 2, transformer_layers_per_block=8,
                 num_attention_heads: int = 8, attention_bias: bool = False, cross_attention_dim: int | None = None,
                 activation_fn: str = "geglu", norm_num_groups: int = 32, max_seq_length: int = 32):
        super().__init__()
        if activation_fn != "geglu" or attention_bias:
            raise NotImplementedError(f"MotionModules: activation_fn={activation_fn!r}, attention_bias={attention_bias} "
                                      "are not ported; expected 'geglu' and False")
        layers = per_entry(transformer_layers_per_block, layers_per_block, "MotionModules: transformer_layers_per_block")
        self.motion_modules = nn.CellList([
            _motion_transformer(in_channels, num_attention_heads, layers[i], norm_num_groups, max_seq_length,
                                cross_attention_dim)
            for i in range(layers_per_block)
        ])

    def construct(self, hidden_states: Tensor, num_frames: int = 1) -> Tensor:
        for module in self.motion_modules:
            hidden_states = module(hidden_states, num_frames=num_frames)
        return hidden_states


class MotionAdapter(ModelMixin):
    """The AnimateDiff motion modules, one `MotionModules` per UNet level (down, optional mid, up with one extra
    layer per level), to be inserted into an SD 1.5 UNet by `UNetMotionModel.from_unet2d`. `conv_in` (PIA) is
    stored when `conv_in_channels` is set. Has no forward of its own."""

    diffusers_class = "MotionAdapter"
    # null reads as off in diffusers (`if use_motion_mid_block:`): no mid-block motion modules
    nullable_config = frozenset({"use_motion_mid_block"})

    def __init__(self, block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
                 motion_transformer_layers_per_block=1, motion_mid_block_layers_per_block: int = 1,
                 motion_transformer_layers_per_mid_block=1, motion_num_attention_heads=8,
                 motion_norm_num_groups: int = 32, motion_max_seq_length: int = 32, use_motion_mid_block: bool = True,
                 conv_in_channels: int | None = None):
        super().__init__()
        _keep_init_args(self, locals())
        n = len(block_out_channels)
        layers = per_entry(motion_layers_per_block, n, "MotionAdapter: motion_layers_per_block")
        tlayers = ([motion_transformer_layers_per_block] * n if isinstance(motion_transformer_layers_per_block, int)
                   else list(motion_transformer_layers_per_block))
        mid_tlayers = per_entry(motion_transformer_layers_per_mid_block, motion_mid_block_layers_per_block,
                                 "MotionAdapter: motion_transformer_layers_per_mid_block")
        heads = per_entry(motion_num_attention_heads, n, "MotionAdapter: motion_num_attention_heads")

        def modules(channels, n_layers, t_layers, n_heads):
            return MotionModules(channels, layers_per_block=n_layers, transformer_layers_per_block=t_layers,
                                 num_attention_heads=n_heads, norm_num_groups=motion_norm_num_groups,
                                 max_seq_length=motion_max_seq_length)

        # 1. PIA's input conv (optional)
        self.conv_in = Conv2d(conv_in_channels, block_out_channels[0], 3, padding=1) if conv_in_channels else None
        # 2. down levels
        self.down_blocks = nn.CellList([modules(c, layers[i], tlayers[i], heads[i])
                                        for i, c in enumerate(block_out_channels)])
        # 3. mid level
        self.mid_block = (modules(block_out_channels[-1], motion_mid_block_layers_per_block, mid_tlayers, heads[-1])
                          if use_motion_mid_block else None)
        # 4. up levels, reversed, one more motion module each (the up blocks have one more resnet)
        rev = list(reversed(range(n)))
        self.up_blocks = nn.CellList([modules(block_out_channels[i], layers[i] + 1, tlayers[i], heads[i]) for i in rev])

    @classmethod
    def from_single_file(cls, path, config: dict | None = None, mindspore_dtype=None, **config_fields):
        """A motion-module file of the original AnimateDiff release (`.ckpt` needs torch to unpickle;
        `.safetensors` does not), or a single diffusers-format adapter file. Without `config` the config is inferred
        from the tensor shapes; fields shapes cannot tell (`motion_num_attention_heads`, default 8, and
        `motion_norm_num_groups`, default 32) can be passed as keyword arguments."""
        from converters.convert import load_motion_module_file_arrays

        from ..loading import _spec_builder

        built = {}
        _, arrays, _ = load_motion_module_file_arrays(path, _spec_builder(cls, None, built), config, **config_fields)
        model = built["."]
        model.load_arrays(arrays, mindspore_dtype)
        return model

    def construct(self, sample=None):
        return None


# ----------------------------------------------------------------------------------------------------------------
# Motion blocks: the SD 1.5 blocks with a motion module after each resnet (+ transformer)
# ----------------------------------------------------------------------------------------------------------------


def _resnet(in_channels, out_channels, temb_channels, eps, groups, act_fn, output_scale_factor=1.0):
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, eps=eps,
                         groups=groups, non_linearity=act_fn, output_scale_factor=output_scale_factor)


def _spatial_transformer(channels, heads, layers, cross_attention_dim, groups, use_linear_projection,
                         only_cross_attention=False, upcast_attention=False):
    return Transformer2DModel(heads, channels // heads, in_channels=channels, num_layers=layers,
                              cross_attention_dim=cross_attention_dim, norm_num_groups=groups,
                              use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
                              upcast_attention=upcast_attention)


def _check_block_options(name: str, dual_cross_attention: bool, attention_type: str) -> None:
    if dual_cross_attention:
        raise NotImplementedError(f"{name}: dual_cross_attention=True is not ported; expected False")
    if attention_type != "default":
        raise NotImplementedError(f"{name}: attention_type={attention_type!r} is not ported; expected 'default'")


class DownBlockMotion(nn.Cell):
    """(resnet, motion module) x num_layers, then an optional stride-2 conv downsampler (`downsamplers.0.conv`)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1,
                 temporal_num_attention_heads=1, temporal_cross_attention_dim: int | None = None,
                 temporal_max_seq_length: int = 32, temporal_transformer_layers_per_block=1,
                 temporal_double_self_attention: bool = True):
        super().__init__()
        tlayers = per_entry(temporal_transformer_layers_per_block, num_layers,
                             "DownBlockMotion: temporal_transformer_layers_per_block")
        theads = per_entry(temporal_num_attention_heads, num_layers, "DownBlockMotion: temporal_num_attention_heads")
        self.resnets = nn.CellList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps, resnet_groups,
                    resnet_act_fn, output_scale_factor)
            for i in range(num_layers)
        ])
        self.motion_modules = nn.CellList([
            _motion_transformer(out_channels, theads[i], tlayers[i], resnet_groups, temporal_max_seq_length,
                                temporal_cross_attention_dim, temporal_double_self_attention)
            for i in range(num_layers)
        ])
        self.downsamplers = (nn.CellList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                       padding=downsample_padding, name="op")])
                             if add_downsample else None)

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, num_frames: int = 1):
        output_states = ()
        for resnet, motion_module in zip(self.resnets, self.motion_modules):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = motion_module(hidden_states, num_frames=num_frames)
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class CrossAttnDownBlockMotion(nn.Cell):
    """(resnet, spatial transformer, motion module) x num_layers, then an optional downsampler."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block=1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, downsample_padding: int = 1, add_downsample: bool = True,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False, attention_type: str = "default",
                 temporal_cross_attention_dim: int | None = None, temporal_num_attention_heads: int = 8,
                 temporal_max_seq_length: int = 32, temporal_transformer_layers_per_block=1,
                 temporal_double_self_attention: bool = True):
        super().__init__()
        _check_block_options("CrossAttnDownBlockMotion", dual_cross_attention, attention_type)
        layers = per_entry(transformer_layers_per_block, num_layers, "CrossAttnDownBlockMotion: transformer_layers_per_block")
        tlayers = per_entry(temporal_transformer_layers_per_block, num_layers,
                             "CrossAttnDownBlockMotion: temporal_transformer_layers_per_block")
        self.resnets = nn.CellList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps, resnet_groups,
                    resnet_act_fn, output_scale_factor)
            for i in range(num_layers)
        ])
        self.attentions = nn.CellList([
            _spatial_transformer(out_channels, num_attention_heads, layers[i], cross_attention_dim, resnet_groups,
                                 use_linear_projection, only_cross_attention, upcast_attention)
            for i in range(num_layers)
        ])
        self.motion_modules = nn.CellList([
            _motion_transformer(out_channels, temporal_num_attention_heads, tlayers[i], resnet_groups,
                                temporal_max_seq_length, temporal_cross_attention_dim, temporal_double_self_attention)
            for i in range(num_layers)
        ])
        self.downsamplers = (nn.CellList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                       padding=downsample_padding, name="op")])
                             if add_downsample else None)

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                  attention_mask: Tensor | None = None, num_frames: int = 1,
                  encoder_attention_mask: Tensor | None = None, cross_attention_kwargs: dict | None = None,
                  additional_residuals: Tensor | None = None):
        output_states = ()
        n = len(self.resnets)
        for i, (resnet, attn, motion_module) in enumerate(zip(self.resnets, self.attentions, self.motion_modules)):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                 return_dict=False)[0]
            hidden_states = motion_module(hidden_states, num_frames=num_frames)
            if i == n - 1 and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class UNetMidBlockCrossAttnMotion(nn.Cell):
    """resnet, then (spatial transformer, motion module, resnet) x num_layers, all at `in_channels`."""

    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 transformer_layers_per_block=1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int | None = 32, resnet_pre_norm: bool = True,
                 num_attention_heads: int = 1, output_scale_factor: float = 1.0, cross_attention_dim: int = 1280,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 upcast_attention: bool = False, attention_type: str = "default", temporal_num_attention_heads: int = 1,
                 temporal_cross_attention_dim: int | None = None, temporal_max_seq_length: int = 32,
                 temporal_transformer_layers_per_block=1):
        super().__init__()
        _check_block_options("UNetMidBlockCrossAttnMotion", dual_cross_attention, attention_type)
        groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        layers = per_entry(transformer_layers_per_block, num_layers, "UNetMidBlockCrossAttnMotion: transformer_layers_per_block")
        tlayers = per_entry(temporal_transformer_layers_per_block, num_layers,
                             "UNetMidBlockCrossAttnMotion: temporal_transformer_layers_per_block")
        self.attentions = nn.CellList([
            _spatial_transformer(in_channels, num_attention_heads, layers[i], cross_attention_dim, groups,
                                 use_linear_projection, upcast_attention=upcast_attention)
            for i in range(num_layers)
        ])
        self.resnets = nn.CellList([
            _resnet(in_channels, in_channels, temb_channels, resnet_eps, groups, resnet_act_fn, output_scale_factor)
            for _ in range(num_layers + 1)
        ])
        self.motion_modules = nn.CellList([
            _motion_transformer(in_channels, temporal_num_attention_heads, tlayers[i], groups, temporal_max_seq_length,
                                temporal_cross_attention_dim)
            for i in range(num_layers)
        ])

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                  attention_mask: Tensor | None = None, cross_attention_kwargs: dict | None = None,
                  encoder_attention_mask: Tensor | None = None, num_frames: int = 1) -> Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        # (a list: slicing the CellList would build a new one, renaming the resnets' parameters)
        for attn, resnet, motion_module in zip(self.attentions, list(self.resnets)[1:], self.motion_modules):
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                 return_dict=False)[0]
            hidden_states = motion_module(hidden_states, num_frames=num_frames)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class UpBlockMotion(nn.Cell):
    """(resnet on [hidden, skip], motion module) x num_layers, then an optional nearest-x2 + conv upsampler."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_upsample: bool = True, temporal_cross_attention_dim: int | None = None,
                 temporal_num_attention_heads: int = 8, temporal_max_seq_length: int = 32,
                 temporal_transformer_layers_per_block=1):
        super().__init__()
        self.resolution_idx = resolution_idx
        tlayers = per_entry(temporal_transformer_layers_per_block, num_layers,
                             "UpBlockMotion: temporal_transformer_layers_per_block")
        self.resnets = nn.CellList([
            _resnet((prev_output_channel if i == 0 else out_channels) + (in_channels if i == num_layers - 1 else out_channels),
                    out_channels, temb_channels, resnet_eps, resnet_groups, resnet_act_fn, output_scale_factor)
            for i in range(num_layers)
        ])
        self.motion_modules = nn.CellList([
            _motion_transformer(out_channels, temporal_num_attention_heads, tlayers[i], resnet_groups,
                                temporal_max_seq_length, temporal_cross_attention_dim)
            for i in range(num_layers)
        ])
        self.upsamplers = (nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
                           if add_upsample else None)

    def construct(self, hidden_states: Tensor, res_hidden_states_tuple: tuple, temb: Tensor | None = None,
                  upsample_size=None, num_frames: int = 1) -> Tensor:
        for resnet, motion_module in zip(self.resnets, self.motion_modules):
            # pop the last skip: (B*F, C + C_skip, H, W)
            res_hidden_states, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states = ops.cat([hidden_states, res_hidden_states], axis=1)
            hidden_states = resnet(hidden_states, temb)
            hidden_states = motion_module(hidden_states, num_frames=num_frames)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlockMotion(nn.Cell):
    """(resnet on [hidden, skip], spatial transformer, motion module) x num_layers, then an optional upsampler."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: int | None = None, dropout: float = 0.0, num_layers: int = 1,
                 transformer_layers_per_block=1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 num_attention_heads: int = 1, cross_attention_dim: int = 1280, output_scale_factor: float = 1.0,
                 add_upsample: bool = True, dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False, attention_type: str = "default",
                 temporal_cross_attention_dim: int | None = None, temporal_num_attention_heads: int = 8,
                 temporal_max_seq_length: int = 32, temporal_transformer_layers_per_block=1):
        super().__init__()
        _check_block_options("CrossAttnUpBlockMotion", dual_cross_attention, attention_type)
        self.resolution_idx = resolution_idx
        layers = per_entry(transformer_layers_per_block, num_layers, "CrossAttnUpBlockMotion: transformer_layers_per_block")
        tlayers = per_entry(temporal_transformer_layers_per_block, num_layers,
                             "CrossAttnUpBlockMotion: temporal_transformer_layers_per_block")
        self.resnets = nn.CellList([
            _resnet((prev_output_channel if i == 0 else out_channels) + (in_channels if i == num_layers - 1 else out_channels),
                    out_channels, temb_channels, resnet_eps, resnet_groups, resnet_act_fn, output_scale_factor)
            for i in range(num_layers)
        ])
        self.attentions = nn.CellList([
            _spatial_transformer(out_channels, num_attention_heads, layers[i], cross_attention_dim, resnet_groups,
                                 use_linear_projection, only_cross_attention, upcast_attention)
            for i in range(num_layers)
        ])
        self.motion_modules = nn.CellList([
            _motion_transformer(out_channels, temporal_num_attention_heads, tlayers[i], resnet_groups,
                                temporal_max_seq_length, temporal_cross_attention_dim)
            for i in range(num_layers)
        ])
        self.upsamplers = (nn.CellList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
                           if add_upsample else None)

    def construct(self, hidden_states: Tensor, res_hidden_states_tuple: tuple, temb: Tensor | None = None,
                  encoder_hidden_states: Tensor | None = None, cross_attention_kwargs: dict | None = None,
                  upsample_size=None, attention_mask: Tensor | None = None,
                  encoder_attention_mask: Tensor | None = None, num_frames: int = 1) -> Tensor:
        for resnet, attn, motion_module in zip(self.resnets, self.attentions, self.motion_modules):
            res_hidden_states, res_hidden_states_tuple = res_hidden_states_tuple[-1], res_hidden_states_tuple[:-1]
            hidden_states = ops.cat([hidden_states, res_hidden_states], axis=1)
            hidden_states = resnet(hidden_states, temb)
            hidden_states = attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                 return_dict=False)[0]
            hidden_states = motion_module(hidden_states, num_frames=num_frames)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# UNetMotionModel
# ----------------------------------------------------------------------------------------------------------------




class UNetMotionModel(ModelMixin):
    """Text-to-video UNet: `sample` (B, C, F, H, W) noisy latents, `timestep`, `encoder_hidden_states`
    (B*F, S, D) text embeddings (already repeated per frame, as the pipeline does) -> `.sample` (B, C_out, F, H, W).

    Build it from a config, or from an SD 1.5 `UNet2DConditionModel` plus a `MotionAdapter` with `from_unet2d`."""

    diffusers_class = "UNetMotionModel"
    # diffusers reads these null as off (`if x:`): no linear projections; the plain SD mid block, no motion modules
    nullable_config = frozenset({"use_linear_projection", "use_motion_mid_block"})
    config_choices = {"act_fn": ("silu", "swish", "gelu")}

    def __init__(self, sample_size: int | None = None, in_channels: int = 4, out_channels: int = 4,
                 down_block_types=("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion",
                                   "DownBlockMotion"),
                 up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion",
                                 "CrossAttnUpBlockMotion"),
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding: int = 1,
                 mid_block_scale_factor: float = 1, act_fn: str = "silu", norm_num_groups: int | None = 32,
                 norm_eps: float = 1e-5, cross_attention_dim=1280, transformer_layers_per_block=1,
                 reverse_transformer_layers_per_block=None, temporal_transformer_layers_per_block=1,
                 reverse_temporal_transformer_layers_per_block=None, transformer_layers_per_mid_block=None,
                 temporal_transformer_layers_per_mid_block=1, use_linear_projection: bool = False,
                 num_attention_heads=8, motion_max_seq_length: int = 32, motion_num_attention_heads=8,
                 reverse_motion_num_attention_heads=None, use_motion_mid_block: bool = True, mid_block_layers: int = 1,
                 encoder_hid_dim: int | None = None, encoder_hid_dim_type: str | None = None,
                 addition_embed_type: str | None = None, addition_time_embed_dim: int | None = None,
                 projection_class_embeddings_input_dim: int | None = None, time_cond_proj_dim: int | None = None):
        super().__init__()
        _keep_init_args(self, locals())
        n = len(down_block_types)
        # 0. checks, with the names diffusers uses
        if len(up_block_types) != n:
            raise ValueError(f"UNetMotionModel: {n} down_block_types but {len(up_block_types)} up_block_types")
        if len(block_out_channels) != n:
            raise ValueError(f"UNetMotionModel: {len(block_out_channels)} block_out_channels for {n} down_block_types")
        for t in down_block_types:
            if t not in DOWN_BLOCK_TYPES:
                raise ValueError(f"UNetMotionModel: unknown down block type {t!r}; expected one of {list(DOWN_BLOCK_TYPES)}")
        for t in up_block_types:
            if t not in UP_BLOCK_TYPES:
                raise ValueError(f"UNetMotionModel: unknown up block type {t!r}; expected one of {list(UP_BLOCK_TYPES)}")
        if encoder_hid_dim_type is not None:
            raise NotImplementedError(f"UNetMotionModel: encoder_hid_dim_type={encoder_hid_dim_type!r} (IP-Adapter) is "
                                      "not ported; expected None")
        if addition_embed_type not in (None, "text_time"):
            raise ValueError(f"UNetMotionModel: addition_embed_type={addition_embed_type!r}; expected None or 'text_time'")
        if addition_embed_type == "text_time":
            for key, value in (("addition_time_embed_dim", addition_time_embed_dim),
                               ("projection_class_embeddings_input_dim", projection_class_embeddings_input_dim)):
                if value is None:
                    raise ValueError(f"UNetMotionModel: addition_embed_type='text_time' needs {key} (an integer); "
                                     "it is null")
        for name, v in (("transformer_layers_per_block", transformer_layers_per_block),
                        ("temporal_transformer_layers_per_block", temporal_transformer_layers_per_block)):
            reverse = (reverse_transformer_layers_per_block if name.startswith("transformer")
                       else reverse_temporal_transformer_layers_per_block)
            if not isinstance(v, int) and reverse is None and any(not isinstance(x, int) for x in v):
                raise ValueError(f"UNetMotionModel: nested {name} needs reverse_{name} (asymmetrical UNet)")
        self.sample_size = sample_size
        self.num_frames_max = motion_max_seq_length
        heads = per_entry(num_attention_heads, n, "UNetMotionModel: num_attention_heads")
        cross_dims = per_entry(cross_attention_dim, n, "UNetMotionModel: cross_attention_dim")
        layers = per_entry(layers_per_block, n, "UNetMotionModel: layers_per_block")
        tlayers = per_entry(transformer_layers_per_block, n, "UNetMotionModel: transformer_layers_per_block")
        ttlayers = per_entry(temporal_transformer_layers_per_block, n,
                              "UNetMotionModel: temporal_transformer_layers_per_block")
        mheads = per_entry(motion_num_attention_heads, n, "UNetMotionModel: motion_num_attention_heads")

        # 1. input conv and time embedding (fixed cos-first sinusoid, as diffusers' UNetMotionModel)
        c0 = block_out_channels[0]
        time_embed_dim = c0 * 4
        self.conv_in = Conv2d(in_channels, c0, 3, padding=1)
        self.time_proj = Timesteps(c0, True, 0)
        self.time_embedding = TimestepEmbedding(c0, time_embed_dim, act_fn=act_fn, cond_proj_dim=time_cond_proj_dim)
        if addition_embed_type == "text_time":
            self.add_time_proj = Timesteps(addition_time_embed_dim, True, 0)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        else:
            self.add_time_proj = None
            self.add_embedding = None

        # 2. down blocks
        down_blocks = []
        output_channel = c0
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            common = dict(in_channels=input_channel, out_channels=output_channel, temb_channels=time_embed_dim,
                          num_layers=layers[i], resnet_eps=norm_eps, resnet_act_fn=act_fn,
                          resnet_groups=norm_num_groups, add_downsample=i < n - 1,
                          downsample_padding=downsample_padding, temporal_num_attention_heads=mheads[i],
                          temporal_max_seq_length=motion_max_seq_length,
                          temporal_transformer_layers_per_block=ttlayers[i])
            if block_type == "CrossAttnDownBlockMotion":
                down_blocks.append(CrossAttnDownBlockMotion(
                    transformer_layers_per_block=tlayers[i], num_attention_heads=heads[i],
                    cross_attention_dim=cross_dims[i], use_linear_projection=use_linear_projection, **common))
            else:
                down_blocks.append(DownBlockMotion(**common))
        self.down_blocks = nn.CellList(down_blocks)

        # 3. mid block (with motion modules, or the plain SD one for adapters without a mid block)
        if transformer_layers_per_mid_block is None:
            transformer_layers_per_mid_block = tlayers[-1] if isinstance(tlayers[-1], int) else 1
        mid = dict(in_channels=block_out_channels[-1], temb_channels=time_embed_dim, resnet_eps=norm_eps,
                   resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
                   cross_attention_dim=cross_dims[-1], num_attention_heads=heads[-1], resnet_groups=norm_num_groups,
                   dual_cross_attention=False, use_linear_projection=use_linear_projection,
                   num_layers=mid_block_layers, transformer_layers_per_block=transformer_layers_per_mid_block)
        if use_motion_mid_block:
            self.mid_block = UNetMidBlockCrossAttnMotion(
                temporal_num_attention_heads=mheads[-1], temporal_max_seq_length=motion_max_seq_length,
                temporal_transformer_layers_per_block=temporal_transformer_layers_per_mid_block, **mid)
        else:
            from .unet_2d_blocks import UNetMidBlock2DCrossAttn

            self.mid_block = UNetMidBlock2DCrossAttn(**mid)

        # 4. up blocks (mirror order; one extra resnet per level for the downsampler's skip)
        rev_channels = list(reversed(block_out_channels))
        rev_heads, rev_layers, rev_cross = list(reversed(heads)), list(reversed(layers)), list(reversed(cross_dims))
        rev_mheads = list(reversed(mheads)) if reverse_motion_num_attention_heads is None else \
            per_entry(reverse_motion_num_attention_heads, n, "UNetMotionModel: reverse_motion_num_attention_heads")
        rev_tlayers = (list(reversed(tlayers)) if reverse_transformer_layers_per_block is None else
                       per_entry(reverse_transformer_layers_per_block, n, "reverse_transformer_layers_per_block"))
        rev_ttlayers = (list(reversed(ttlayers)) if reverse_temporal_transformer_layers_per_block is None else
                        per_entry(reverse_temporal_transformer_layers_per_block, n,
                                   "reverse_temporal_transformer_layers_per_block"))
        self.num_upsamplers = n - 1
        up_blocks = []
        output_channel = rev_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, rev_channels[i]
            input_channel = rev_channels[min(i + 1, n - 1)]
            common = dict(in_channels=input_channel, out_channels=output_channel,
                          prev_output_channel=prev_output_channel, temb_channels=time_embed_dim, resolution_idx=i,
                          num_layers=rev_layers[i] + 1, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                          resnet_groups=norm_num_groups, add_upsample=i < n - 1,
                          temporal_num_attention_heads=rev_mheads[i], temporal_max_seq_length=motion_max_seq_length,
                          temporal_transformer_layers_per_block=rev_ttlayers[i])
            if block_type == "CrossAttnUpBlockMotion":
                up_blocks.append(CrossAttnUpBlockMotion(
                    transformer_layers_per_block=rev_tlayers[i], num_attention_heads=rev_heads[i],
                    cross_attention_dim=rev_cross[i], use_linear_projection=use_linear_projection, **common))
            else:
                up_blocks.append(UpBlockMotion(**common))
        self.up_blocks = nn.CellList(up_blocks)

        # 5. output head
        if norm_num_groups is not None:
            self.conv_norm_out = GroupNorm(norm_num_groups, c0, eps=norm_eps)
            self.conv_act = SiLU()
        else:
            self.conv_norm_out = None
            self.conv_act = None
        self.conv_out = Conv2d(c0, out_channels, 3, padding=1)

    # -- building from an SD 1.5 UNet + adapter --------------------------------------------------------------------
    @classmethod
    def from_unet2d(cls, unet, motion_adapter: MotionAdapter | None = None, load_weights: bool = True):
        """Our `UNet2DConditionModel` + `MotionAdapter` -> UNetMotionModel, as diffusers' `from_unet2d`: the config
        comes from the UNet (block types mapped to their motion versions, motion fields from the adapter); the
        UNet's parameters are copied by name, the motion modules from the adapter; the result has the UNet's dtype.
        Raises ValueError when the adapter does not fit the UNet or a UNet parameter has no place in the result."""
        ucfg, acfg = dict(unet.config), (dict(motion_adapter.config) if motion_adapter is not None else None)
        n = len(ucfg["down_block_types"])
        if acfg is not None:
            if len(acfg["block_out_channels"]) != n:
                raise ValueError(f"incompatible MotionAdapter: {len(acfg['block_out_channels'])} blocks, the UNet has {n}")
            unet_layers = per_entry(ucfg["layers_per_block"], n, "UNet layers_per_block")
            adapter_layers = per_entry(acfg["motion_layers_per_block"], n, "MotionAdapter motion_layers_per_block")
            if unet_layers != adapter_layers:
                raise ValueError(f"incompatible MotionAdapter: motion_layers_per_block {adapter_layers} != UNet "
                                 f"layers_per_block {unet_layers}")
            if list(acfg["block_out_channels"]) != list(ucfg["block_out_channels"]):
                raise ValueError(f"incompatible MotionAdapter: block_out_channels {list(acfg['block_out_channels'])} "
                                 f"!= UNet block_out_channels {list(ucfg['block_out_channels'])}")
        config = cls.config_from_unet2d(ucfg, acfg)
        model = cls.from_config(config)
        if not load_weights:
            return model
        model.load_from_unet2d(unet, motion_adapter)
        return model

    @classmethod
    def config_from_unet2d(cls, unet_config: dict, adapter_config: dict | None = None) -> dict:
        """diffusers' `from_unet2d` config: the UNet's (fields it leaves out at UNet2DConditionModel's defaults), block
        types mapped to their motion versions, the motion fields from the adapter's (likewise completed)."""
        from .unet_2d_condition import UNet2DConditionModel

        config = {**UNet2DConditionModel.config_defaults(), **unet_config}
        config["down_block_types"] = ["CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion"
                                      for t in config["down_block_types"]]
        config["up_block_types"] = ["CrossAttnUpBlockMotion" if "CrossAttn" in t else "UpBlockMotion"
                                    for t in config["up_block_types"]]
        if adapter_config is not None:
            a = {**MotionAdapter.config_defaults(), **adapter_config}
            config.update(
                motion_num_attention_heads=a["motion_num_attention_heads"],
                motion_max_seq_length=a["motion_max_seq_length"],
                use_motion_mid_block=a["use_motion_mid_block"],
                layers_per_block=a["motion_layers_per_block"],
                temporal_transformer_layers_per_mid_block=a["motion_transformer_layers_per_mid_block"],
                temporal_transformer_layers_per_block=a["motion_transformer_layers_per_block"],
            )
            if a.get("conv_in_channels"):
                config["in_channels"] = a["conv_in_channels"]
        if not config.get("num_attention_heads"):  # SD 1.5 configs name the head count attention_head_dim
            config["num_attention_heads"] = config["attention_head_dim"]
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return {k: v for k, v in config.items() if k in names}

    def load_from_unet2d(self, unet, motion_adapter: MotionAdapter | None = None) -> None:
        """Fill every parameter: motion modules from the adapter, the rest from the UNet (same names), PIA's conv_in
        from both; then cast to the UNet's dtype."""
        src_unet = dict(unet.parameters_and_names())
        src_adapter = dict(motion_adapter.parameters_and_names()) if motion_adapter is not None else {}
        pia = motion_adapter is not None and motion_adapter.conv_in is not None
        used_unet = set()
        arrays, missing = {}, []
        for name, p in self.parameters_and_names():
            if ".motion_modules." in name and motion_adapter is not None:
                src = src_adapter.get(name)
            elif pia and name == "conv_in.weight":
                # PIA: the first 4 input channels from the UNet, the rest from the adapter
                used_unet.add(name)
                src = ops.cat([src_unet[name].astype(ms.float32),
                               src_adapter[name][:, 4:].astype(ms.float32)], axis=1)
            else:
                src = src_unet.get(name)
                used_unet.add(name)
            if src is None:
                missing.append(name)
                continue
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"UNetMotionModel.from_unet2d: {name} has shape {tuple(src.shape)} in the source, "
                                 f"expected {tuple(p.shape)}")
            arrays[name] = src
        if missing and motion_adapter is None:
            # no adapter: the motion modules keep their constant initialisation, as diffusers leaves them random
            missing = [m for m in missing if ".motion_modules." not in m]
        if missing:
            raise ValueError(f"UNetMotionModel.from_unet2d: {len(missing)} parameter(s) have no source: "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        leftover = sorted(set(src_unet) - used_unet)
        if leftover:
            raise ValueError(f"UNetMotionModel.from_unet2d: UNet parameter(s) with no place in a UNetMotionModel "
                             f"(unsupported UNet features): {', '.join(leftover[:5])}{' ...' if len(leftover) > 5 else ''}")
        dtype = unet.dtype
        params = dict(self.parameters_and_names())
        for name, src in arrays.items():
            p = params[name]
            if p.dtype != dtype:
                p.set_dtype(dtype)
            p.set_data(src.astype(dtype))
        self.set_train(False)

    def motion_transformers(self) -> list[AnimateDiffTransformer3D]:
        """Every motion module (down, mid, up), in module order."""
        return [c for _, c in self.cells_and_names() if isinstance(c, AnimateDiffTransformer3D)]

    @property
    def free_noise_enabled(self) -> bool:
        """Whether FreeNoise's windowed blocks run in the motion modules (then any number of frames >= the window)."""
        return any(m.windowed for m in self.motion_transformers())

    # -- forward ---------------------------------------------------------------------------------------------------
    def construct(self, sample, timestep, encoder_hidden_states, timestep_cond=None, attention_mask=None,
                  cross_attention_kwargs: dict | None = None, added_cond_kwargs: dict | None = None,
                  down_block_additional_residuals=None, mid_block_additional_residual=None, return_dict: bool = True):
        dtype = self.dtype
        sample = backend.to_tensor(sample, dtype)
        encoder_hidden_states = backend.to_tensor(encoder_hidden_states, dtype)
        if sample.ndim != 5:
            raise ValueError(f"UNetMotionModel: sample must be (B, C, F, H, W), got shape {tuple(sample.shape)}")
        batch_size, num_frames = sample.shape[0], sample.shape[2]
        if num_frames > self.num_frames_max and not self.free_noise_enabled:
            raise ValueError(f"UNetMotionModel: {num_frames} frames exceed motion_max_seq_length={self.num_frames_max} "
                             "(FreeNoise, the pipeline's enable_free_noise, takes more)")
        # sizes not divisible by 2**num_upsamplers: upsample to the skip's size instead of x2
        up_factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        if attention_mask is not None:  # keep-mask (B, L) -> additive bias (B, 1, L)
            attention_mask = ((1 - backend.to_tensor(attention_mask, dtype)) * -10000.0)[:, None]

        # 1. time embedding (fp32 sinusoid, then model dtype): (B,) -> (B, 4*C0)
        t_emb = self.time_proj(timesteps_1d(timestep, batch_size, "UNetMotionModel")).astype(dtype)
        emb = self.time_embedding(t_emb, None if timestep_cond is None else backend.to_tensor(timestep_cond, dtype))
        if self.add_embedding is not None:
            if not added_cond_kwargs or "text_embeds" not in added_cond_kwargs or "time_ids" not in added_cond_kwargs:
                raise ValueError("UNetMotionModel: addition_embed_type='text_time' needs added_cond_kwargs with "
                                 "'text_embeds' and 'time_ids'")
            text_embeds = backend.to_tensor(added_cond_kwargs["text_embeds"])
            time_embeds = self.add_time_proj(backend.to_tensor(added_cond_kwargs["time_ids"], ms.float32).reshape(-1))
            time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)
            add_embeds = ops.cat([text_embeds.astype(time_embeds.dtype), time_embeds], axis=-1).astype(emb.dtype)
            emb = emb + self.add_embedding(add_embeds)
        # repeat per frame: (B, D) -> (B*F, D)
        emb = ops.repeat_interleave(emb, num_frames, 0)

        # 2. fold frames: (B, C, F, H, W) -> (B, F, C, H, W) -> (B*F, C, H, W); input conv
        sample = backend.permute(sample, (0, 2, 1, 3, 4)).reshape(batch_size * num_frames, -1, *sample.shape[3:])
        sample = self.conv_in(sample)

        # 3. down path, collecting skips
        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res_samples = block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                            attention_mask=attention_mask, num_frames=num_frames)
            else:
                sample, res_samples = block(sample, emb, num_frames=num_frames)
            down_block_res_samples += res_samples
        if down_block_additional_residuals is not None:
            down_block_res_samples = tuple(s + backend.to_tensor(r, s.dtype)
                                           for s, r in zip(down_block_res_samples, down_block_additional_residuals))

        # 4. mid block
        if isinstance(self.mid_block, UNetMidBlockCrossAttnMotion):
            sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=attention_mask, num_frames=num_frames)
        else:
            sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=attention_mask)
        if mid_block_additional_residual is not None:
            sample = sample + backend.to_tensor(mid_block_additional_residual, sample.dtype)

        # 5. up path, consuming skips
        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            k = len(block.resnets)
            res_samples, down_block_res_samples = down_block_res_samples[-k:], down_block_res_samples[:-k]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = tuple(down_block_res_samples[-1].shape[2:])
            if getattr(block, "has_cross_attention", False):
                sample = block(sample, res_samples, emb, encoder_hidden_states=encoder_hidden_states,
                               upsample_size=upsample_size, attention_mask=attention_mask, num_frames=num_frames)
            else:
                sample = block(sample, res_samples, emb, upsample_size=upsample_size, num_frames=num_frames)

        # 6. output head: (B*F, C0, H, W) -> (B*F, C_out, H, W)
        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)

        # 7. unfold frames: (B*F, C_out, H, W) -> (B, F, C_out, H, W) -> (B, C_out, F, H, W)
        sample = backend.permute(sample.reshape(batch_size, num_frames, *sample.shape[1:]), (0, 2, 1, 3, 4))
        if not return_dict:
            return (sample,)
        return Output(sample=sample)


__all__ = [
    "AnimateDiffTransformer3D", "MotionModules", "MotionAdapter", "DownBlockMotion", "CrossAttnDownBlockMotion",
    "UNetMidBlockCrossAttnMotion", "UpBlockMotion", "CrossAttnUpBlockMotion", "UNetMotionModel",
]
