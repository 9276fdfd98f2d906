"""ResNet-style blocks shared by the UNets and VAEs: 2D resnet, temporal (3, 1, 1) resnet, their spatio-temporal
pairing with a learned blend, and 2x down/up-sampling. Module paths and parameter names follow diffusers
(`norm1`, `conv1`, `time_emb_proj`, `conv_shortcut`, `time_mixer.mix_factor`, `conv` / `Conv2d_0`)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .. import backend
from ..layers import (
    Conv2d,
    Conv3d,
    Dropout,
    GroupNorm,
    LayerNorm,
    Linear,
    get_activation,
)


# ----------------------------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------------------------


class Downsample2D(nn.Cell):
    """Halve H and W: a stride-2 conv (`use_conv`) or a 2x2 average pool.

    diffusers aliases the conv under two names when `name == "conv"` (`conv` and `Conv2d_0`, both in its state_dict);
    we register it once, as `conv`. SVD, I2VGen-XL and AnimateDiff build their downsamplers with `name="op"`."""

    def __init__(self, channels: int, use_conv: bool = False, out_channels: int | None = None, padding: int = 1,
                 name: str = "conv", kernel_size: int = 3, norm_type: str | None = None, eps: float | None = None,
                 elementwise_affine: bool | None = None, bias: bool = True):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        if norm_type == "ln_norm":
            self.norm = LayerNorm(channels, eps, True if elementwise_affine is None else elementwise_affine)
        elif norm_type is None:
            self.norm = None
        else:
            raise ValueError(f"Downsample2D: unsupported norm_type {norm_type!r}; expected one of [None, 'ln_norm']")
        if not use_conv and self.channels != self.out_channels:
            raise ValueError(f"Downsample2D: average pooling keeps channels ({channels}), got out_channels={out_channels}")
        if name == "Conv2d_0":
            raise ValueError("Downsample2D: name='Conv2d_0' is not supported; expected 'conv' or 'op'")
        self.conv = Conv2d(channels, self.out_channels, kernel_size, stride=2, padding=padding, bias=bias) if use_conv else None

    def construct(self, hidden_states: Tensor) -> Tensor:
        # 1. optional channel LayerNorm: (B, C, H, W) -> (B, H, W, C) -> (B, C, H, W)
        if self.norm is not None:
            hidden_states = backend.permute(self.norm(backend.permute(hidden_states, (0, 2, 3, 1))), (0, 3, 1, 2))
        # 2. halve: (B, C, H, W) -> (B, C', H/2, W/2)
        if not self.use_conv:
            return backend.avg_pool2d(hidden_states, 2, 2)
        if self.padding == 0:
            hidden_states = ops.pad(hidden_states, (0, 1, 0, 1))
        return self.conv(hidden_states)


class Upsample2D(nn.Cell):
    """Double H and W with nearest-neighbour interpolation, then an optional 3x3 conv (`conv`, or `Conv2d_0` when
    `name != "conv"`). Transposed-conv upsampling is not ported."""

    def __init__(self, channels: int, use_conv: bool = False, use_conv_transpose: bool = False,
                 out_channels: int | None = None, name: str = "conv", kernel_size: int | None = None, padding=1,
                 norm_type: str | None = None, eps: float | None = None, elementwise_affine: bool | None = None,
                 bias: bool = True, interpolate: bool = True):
        super().__init__()
        if use_conv_transpose:
            raise NotImplementedError("Upsample2D: use_conv_transpose=True is not ported; expected use_conv_transpose=False")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.name = name
        self.interpolate = interpolate
        if norm_type == "ln_norm":
            self.norm = LayerNorm(channels, eps, True if elementwise_affine is None else elementwise_affine)
        elif norm_type is None:
            self.norm = None
        else:
            raise ValueError(f"Upsample2D: unsupported norm_type {norm_type!r}; expected one of [None, 'ln_norm']")
        conv = Conv2d(channels, self.out_channels, kernel_size or 3, padding=padding, bias=bias) if use_conv else None
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def construct(self, hidden_states: Tensor, output_size=None) -> Tensor:
        # 1. optional channel LayerNorm
        if self.norm is not None:
            hidden_states = backend.permute(self.norm(backend.permute(hidden_states, (0, 2, 3, 1))), (0, 3, 1, 2))
        # 2. nearest x2 (or to output_size): (B, C, H, W) -> (B, C, 2H, 2W)
        if self.interpolate:
            if output_size is None:
                hidden_states = backend.interpolate_nearest(hidden_states, scale_factor=2)
            else:
                hidden_states = backend.interpolate_nearest(hidden_states, size=tuple(output_size))
        # 3. optional conv
        if self.use_conv:
            hidden_states = self.conv(hidden_states) if self.name == "conv" else self.Conv2d_0(hidden_states)
        return hidden_states


# ----------------------------------------------------------------------------------------------------------------
# Resnets
# ----------------------------------------------------------------------------------------------------------------


class ResnetBlock2D(nn.Cell):
    """GroupNorm -> act -> conv3x3 -> (+ temb) -> GroupNorm -> act -> conv3x3, plus a (1x1-conv) shortcut.

    Keyword-only like diffusers. `time_embedding_norm` "default" adds the projected temb, "scale_shift" modulates
    after norm2. `up` / `down` resample both paths with parameter-free Upsample2D / Downsample2D (no FIR kernels)."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, temb_channels: int | None = 512, groups: int = 32, groups_out: int | None = None,
                 pre_norm: bool = True, eps: float = 1e-6, non_linearity: str = "swish", skip_time_act: bool = False,
                 time_embedding_norm: str = "default", kernel=None, output_scale_factor: float = 1.0,
                 use_in_shortcut: bool | None = None, up: bool = False, down: bool = False,
                 conv_shortcut_bias: bool = True, conv_2d_out_channels: int | None = None):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(
                f"ResnetBlock2D: unsupported time_embedding_norm {time_embedding_norm!r}; expected 'default' or 'scale_shift'"
            )
        if kernel is not None:
            raise NotImplementedError(f"ResnetBlock2D: kernel={kernel!r} (FIR / sde_vp resampling) is not ported; expected None")
        out_channels = in_channels if out_channels is None else out_channels
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        self.skip_time_act = skip_time_act

        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        if temb_channels is not None:
            proj_out = out_channels * (2 if time_embedding_norm == "scale_shift" else 1)
            self.time_emb_proj = Linear(temb_channels, proj_out)
        else:
            self.time_emb_proj = None
        self.norm2 = GroupNorm(groups_out if groups_out is not None else groups, out_channels, eps=eps)
        self.dropout = Dropout()
        self.conv2 = Conv2d(out_channels, conv_2d_out_channels, 3, padding=1)
        self.nonlinearity = get_activation(non_linearity)

        self.upsample = Upsample2D(in_channels, use_conv=False) if up else None
        self.downsample = Downsample2D(in_channels, use_conv=False, padding=1, name="op") if (down and not up) else None

        self.use_in_shortcut = in_channels != conv_2d_out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (
            Conv2d(in_channels, conv_2d_out_channels, 1, bias=conv_shortcut_bias) if self.use_in_shortcut else None
        )

    def construct(self, input_tensor: Tensor, temb: Tensor | None = None) -> Tensor:
        # 1. norm + act: (B, Cin, H, W)
        hidden_states = self.nonlinearity(self.norm1(input_tensor))
        # 2. optional resampling of both paths
        if self.upsample is not None:
            input_tensor = self.upsample(input_tensor)
            hidden_states = self.upsample(hidden_states)
        elif self.downsample is not None:
            input_tensor = self.downsample(input_tensor)
            hidden_states = self.downsample(hidden_states)
        # 3. conv1: (B, Cin, H, W) -> (B, Cout, H, W)
        hidden_states = self.conv1(hidden_states)
        # 4. time embedding: (B, T) -> (B, Cout[*2], 1, 1)
        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)
        if self.time_embedding_norm == "default":
            if temb is not None:  # (B, Cout) over (B, Cout, H, W)
                hidden_states = backend.add_leading(hidden_states, temb)
            hidden_states = self.norm2(hidden_states)
        else:
            if temb is None:
                raise ValueError("ResnetBlock2D: temb is required with time_embedding_norm='scale_shift'")
            time_scale, time_shift = ops.chunk(temb[:, :, None, None], 2, axis=1)
            hidden_states = self.norm2(hidden_states) * (1 + time_scale) + time_shift
        # 5. act + conv2
        hidden_states = self.conv2(self.dropout(self.nonlinearity(hidden_states)))
        # 6. shortcut and residual
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        output = backend.add(input_tensor, hidden_states)
        if self.output_scale_factor != 1.0:
            output = output * (1.0 / self.output_scale_factor)
        return output


class TemporalResnetBlock(nn.Cell):
    """ResNet over frames of (B, C, F, H, W): GroupNorm(32) -> SiLU -> Conv3d (3, 1, 1), twice, temb per frame."""

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512,
                 eps: float = 1e-6):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        kernel, padding = (3, 1, 1), (1, 0, 0)
        self.norm1 = GroupNorm(32, in_channels, eps=eps)
        self.conv1 = Conv3d(in_channels, out_channels, kernel, padding=padding)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = GroupNorm(32, out_channels, eps=eps)
        self.dropout = Dropout()
        self.conv2 = Conv3d(out_channels, out_channels, kernel, padding=padding)
        self.nonlinearity = get_activation("silu")
        self.conv_shortcut = Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def construct(self, input_tensor: Tensor, temb: Tensor | None = None) -> Tensor:
        # 1. norm + act + temporal conv: (B, Cin, F, H, W) -> (B, Cout, F, H, W)
        hidden_states = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        # 2. per-frame time embedding: (B, F, T) -> (B, F, Cout) -> (B, Cout, F, 1, 1)
        if self.time_emb_proj is not None and temb is not None:
            temb = self.time_emb_proj(self.nonlinearity(temb))
            hidden_states = backend.add_leading(hidden_states, backend.permute(temb, (0, 2, 1)))
        # 3. norm + act + temporal conv
        hidden_states = self.conv2(self.dropout(self.nonlinearity(self.norm2(hidden_states))))
        # 4. shortcut and residual
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        return backend.add(input_tensor, hidden_states)


class AlphaBlender(nn.Cell):
    """Blend spatial and temporal features: alpha * x_spatial + (1 - alpha) * x_temporal.

    "learned": alpha = sigmoid(mix_factor). "learned_with_images": the same, but 1 where image_only_indicator is set
    (per batch and frame). "fixed": alpha = mix_factor (a buffer in diffusers' state_dict, a frozen parameter here).
    `switch_spatial_to_temporal_mix` (the SVD VAE decoder) uses 1 - alpha instead."""

    strategies = ("learned", "fixed", "learned_with_images")

    def __init__(self, alpha: float, merge_strategy: str = "learned_with_images",
                 switch_spatial_to_temporal_mix: bool = False):
        super().__init__()
        if merge_strategy not in self.strategies:
            raise ValueError(f"AlphaBlender: unknown merge_strategy {merge_strategy!r}; expected one of {list(self.strategies)}")
        self.merge_strategy = merge_strategy
        self.switch_spatial_to_temporal_mix = switch_spatial_to_temporal_mix
        self.mix_factor = Parameter(Tensor([alpha], ms.float32), requires_grad=merge_strategy != "fixed")

    def get_alpha(self, image_only_indicator: Tensor | None, ndims: int) -> Tensor:
        """alpha shaped to broadcast over the inputs, computed on the host in float32 (a few values: MindSpore op
        launches would cost more than the math)."""
        mix = self.mix_factor.asnumpy().astype(np.float32)
        if self.merge_strategy == "fixed":
            return Tensor(mix)
        alpha = np.float32(1) / (np.float32(1) + np.exp(-mix))  # sigmoid, float32
        if self.merge_strategy == "learned":
            return Tensor(alpha)
        if image_only_indicator is None:
            raise ValueError("AlphaBlender: merge_strategy 'learned_with_images' needs image_only_indicator")
        # (B, F): 1 for image-only frames, sigmoid(mix_factor) elsewhere
        ind = image_only_indicator.asnumpy() if isinstance(image_only_indicator, Tensor) else np.asarray(image_only_indicator)
        alpha = np.where(ind.astype(bool), np.float32(1), alpha).astype(np.float32)
        if ndims == 5:  # (B, C, F, H, W)
            return Tensor(alpha[:, None, :, None, None])
        if ndims == 3:  # (B*F, L, C)
            return Tensor(alpha.reshape(-1)[:, None, None])
        raise ValueError(f"AlphaBlender: inputs must have 3 or 5 dimensions, got {ndims}")

    def construct(self, x_spatial: Tensor, x_temporal: Tensor, image_only_indicator: Tensor | None = None) -> Tensor:
        alpha = self.get_alpha(image_only_indicator, x_spatial.ndim)
        if self.switch_spatial_to_temporal_mix:
            alpha = Tensor(np.float32(1) - alpha.asnumpy())
        return backend.blend(x_spatial, x_temporal, alpha)


class SpatioTemporalResBlock(nn.Cell):
    """A ResnetBlock2D on every frame, then a TemporalResnetBlock across frames, blended by an AlphaBlender.
    Input and output are (B*F, C, H, W); `image_only_indicator` (B, F) gives the frame count."""

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512,
                 eps: float = 1e-6, temporal_eps: float | None = None, merge_factor: float = 0.5,
                 merge_strategy: str = "learned_with_images", switch_spatial_to_temporal_mix: bool = False):
        super().__init__()
        out = out_channels if out_channels is not None else in_channels
        self.spatial_res_block = ResnetBlock2D(in_channels=in_channels, out_channels=out_channels,
                                               temb_channels=temb_channels, eps=eps)
        self.temporal_res_block = TemporalResnetBlock(out, out, temb_channels=temb_channels,
                                                      eps=temporal_eps if temporal_eps is not None else eps)
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, switch_spatial_to_temporal_mix)

    def construct(self, hidden_states: Tensor, temb: Tensor | None = None,
                  image_only_indicator: Tensor | None = None) -> Tensor:
        num_frames = image_only_indicator.shape[-1]
        # 1. spatial resnet per frame: (B*F, Cin, H, W) -> (B*F, C, H, W)
        hidden_states = self.spatial_res_block(hidden_states, temb)
        bf, c, h, w = hidden_states.shape
        b = bf // num_frames
        # 2. unfold frames: (B*F, C, H, W) -> (B, C, F, H, W)
        spatial = backend.permute(hidden_states.reshape(b, num_frames, c, h, w), (0, 2, 1, 3, 4))
        if temb is not None:
            temb = temb.reshape(b, num_frames, -1)
        # 3. temporal resnet and blend
        temporal = self.temporal_res_block(spatial, temb)
        hidden_states = self.time_mixer(spatial, temporal, image_only_indicator)
        # 4. fold frames back: (B, C, F, H, W) -> (B*F, C, H, W)
        return backend.permute(hidden_states, (0, 2, 1, 3, 4)).reshape(bf, c, h, w)


class TemporalConvLayer(nn.Cell):
    """I2VGen-XL / ModelScope temporal convolutions over (B*F, C, H, W): four [GroupNorm(eps 1e-5) -> SiLU ->
    (Dropout) -> Conv3d (3, 1, 1)] stages on (B, C, F, H, W), plus the identity. Module paths follow diffusers'
    `nn.Sequential`s: `conv1.{0,1,2}`, `conv2..conv4.{0,1,2,3}` (index 2 is the inference-time identity dropout)."""

    def __init__(self, in_dim: int, out_dim: int | None = None, dropout: float = 0.0, norm_num_groups: int = 32):
        super().__init__()
        out_dim = out_dim or in_dim
        self.in_dim, self.out_dim = in_dim, out_dim
        kernel, padding = (3, 1, 1), (1, 0, 0)
        self.conv1 = nn.SequentialCell([GroupNorm(norm_num_groups, in_dim), get_activation("silu"),
                                        Conv3d(in_dim, out_dim, kernel, padding=padding)])
        self.conv2 = nn.SequentialCell([GroupNorm(norm_num_groups, out_dim), get_activation("silu"), Dropout(),
                                        Conv3d(out_dim, in_dim, kernel, padding=padding)])
        self.conv3 = nn.SequentialCell([GroupNorm(norm_num_groups, out_dim), get_activation("silu"), Dropout(),
                                        Conv3d(out_dim, in_dim, kernel, padding=padding)])
        self.conv4 = nn.SequentialCell([GroupNorm(norm_num_groups, out_dim), get_activation("silu"), Dropout(),
                                        Conv3d(out_dim, in_dim, kernel, padding=padding)])

    def construct(self, hidden_states: Tensor, num_frames: int = 1) -> Tensor:
        bf, c, h, w = hidden_states.shape
        # 1. unfold frames: (B*F, C, H, W) -> (B, F, C, H, W) -> (B, C, F, H, W)
        hidden_states = backend.permute(hidden_states.reshape(bf // num_frames, num_frames, c, h, w), (0, 2, 1, 3, 4))
        # 2. four temporal conv stages + identity
        identity = hidden_states
        hidden_states = self.conv4(self.conv3(self.conv2(self.conv1(hidden_states))))
        hidden_states = identity + hidden_states
        # 3. fold frames back: (B, C, F, H, W) -> (B*F, C, H, W)
        c_out = hidden_states.shape[1]
        return backend.permute(hidden_states, (0, 2, 1, 3, 4)).reshape(bf, c_out, h, w)
