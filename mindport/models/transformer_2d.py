"""Spatial transformer over feature maps (diffusers' `Transformer2DModel`, continuous inputs): the cross-attention
layer of the Stable Diffusion 1.5 UNet, reused by AnimateDiff and I2VGen-XL.

Only continuous inputs (`in_channels` set, no `patch_size`, no `num_vector_embeds`) with `norm_type="layer_norm"`
are ported; the discrete (VQ) and patched (DiT / PixArt) variants raise NotImplementedError."""

from __future__ import annotations

from mindspore import Tensor, nn

from .. import backend
from ..layers import Conv2d, GroupNorm, Linear
from ..modeling import ModelMixin, Output
from .attention import BasicTransformerBlock


def mask_to_bias(mask: Tensor | None, dtype) -> Tensor | None:
    """A 2D keep-mask (B, L) (1 = keep, 0 = discard) -> an additive bias (B, 1, L) (0 / -10000), as diffusers does;
    masks that are already biases (3D) pass through."""
    if mask is None or mask.ndim != 2:
        return mask
    return ((1 - mask.astype(dtype)) * -10000.0)[:, None, :]


class Transformer2DModel(ModelMixin):
    """GroupNorm (eps 1e-6) -> proj_in (1x1 conv, or Linear when `use_linear_projection`) -> `num_layers`
    BasicTransformerBlocks on the H*W tokens -> proj_out -> residual. Input and output are (B, C, H, W)."""

    diffusers_class = "Transformer2DModel"
    # diffusers builds and runs with these null: switches read as off (no attention biases, no norm affines too),
    # attention_type null is the default attention
    nullable_config = frozenset({"use_linear_projection", "only_cross_attention", "double_self_attention",
                                 "upcast_attention", "attention_bias", "norm_elementwise_affine", "attention_type"})

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int | None = None,
                 out_channels: int | None = None, num_layers: int = 1, dropout: float = 0.0,
                 norm_num_groups: int = 32, cross_attention_dim: int | None = None, attention_bias: bool = False,
                 sample_size: int | None = None, num_vector_embeds: int | None = None, patch_size: int | None = None,
                 activation_fn: str = "geglu", num_embeds_ada_norm: int | None = None,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 double_self_attention: bool = False, upcast_attention: bool = False, norm_type: str = "layer_norm",
                 norm_elementwise_affine: bool = True, norm_eps: float = 1e-5, attention_type: str = "default",
                 caption_channels: int | None = None, interpolation_scale: float | None = None,
                 use_additional_conditions: bool | None = None):
        super().__init__()
        attention_type = "default" if attention_type is None else attention_type  # as diffusers reads a null one
        # 0. only the continuous-input variant is ported
        if in_channels is None or patch_size is not None or num_vector_embeds is not None:
            raise NotImplementedError(
                f"Transformer2DModel: only continuous inputs are ported (in_channels set, patch_size=None, "
                f"num_vector_embeds=None); got in_channels={in_channels!r}, patch_size={patch_size!r}, "
                f"num_vector_embeds={num_vector_embeds!r}"
            )
        if norm_type != "layer_norm" or num_embeds_ada_norm is not None:
            raise NotImplementedError(
                f"Transformer2DModel: norm_type={norm_type!r} (num_embeds_ada_norm={num_embeds_ada_norm!r}) is not "
                f"ported; expected norm_type='layer_norm' with num_embeds_ada_norm=None"
            )
        self.use_linear_projection = use_linear_projection
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.inner_dim = inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels

        # 1. input: norm + projection to inner_dim
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner_dim)
        else:
            self.proj_in = Conv2d(in_channels, inner_dim, kernel_size=1)
        # 2. transformer blocks
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                                  attention_bias=attention_bias, only_cross_attention=only_cross_attention,
                                  double_self_attention=double_self_attention, upcast_attention=upcast_attention,
                                  norm_type=norm_type, norm_elementwise_affine=norm_elementwise_affine,
                                  norm_eps=norm_eps, attention_type=attention_type)
            for _ in range(num_layers)
        ])
        # 3. output projection
        if use_linear_projection:
            self.proj_out = Linear(inner_dim, self.out_channels)
        else:
            self.proj_out = Conv2d(inner_dim, self.out_channels, kernel_size=1)

    def construct(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None, timestep=None,
                  added_cond_kwargs: dict | None = None, class_labels=None, cross_attention_kwargs: dict | None = None,
                  attention_mask: Tensor | None = None, encoder_attention_mask: Tensor | None = None,
                  return_dict: bool = True):
        # 0. keep-masks (B, L) become additive biases (B, 1, L)
        attention_mask = mask_to_bias(attention_mask, hidden_states.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, hidden_states.dtype)

        # 1. input: (B, C, H, W) -> norm -> (B, H*W, inner)
        batch, _, height, width = hidden_states.shape
        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        if not self.use_linear_projection:
            hidden_states = self.proj_in(hidden_states)  # (B, inner, H, W)
            inner = hidden_states.shape[1]
            hidden_states = backend.permute(hidden_states, (0, 2, 3, 1)).reshape(batch, height * width, inner)
        else:
            channels = hidden_states.shape[1]
            hidden_states = backend.permute(hidden_states, (0, 2, 3, 1)).reshape(batch, height * width, channels)
            hidden_states = self.proj_in(hidden_states)  # (B, H*W, inner)

        # 2. transformer blocks on tokens: (B, H*W, inner)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, attention_mask=attention_mask,
                                  encoder_hidden_states=encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask)

        # 3. output: (B, H*W, inner) -> (B, C_out, H, W), + residual
        if not self.use_linear_projection:
            inner = hidden_states.shape[-1]
            hidden_states = backend.permute(hidden_states.reshape(batch, height, width, inner), (0, 3, 1, 2))
            hidden_states = self.proj_out(hidden_states)
        else:
            hidden_states = self.proj_out(hidden_states)
            hidden_states = backend.permute(hidden_states.reshape(batch, height, width, -1), (0, 3, 1, 2))
        output = backend.add(hidden_states, residual)

        if not return_dict:
            return (output,)
        return Output(sample=output)


__all__ = ["Transformer2DModel", "mask_to_bias"]
