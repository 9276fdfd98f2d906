"""Attention, feed-forward and transformer blocks with diffusers' module paths (`to_q`, `to_out.0`, `ff.net.0.proj`,
`ff.net.2`, `norm1..3`, `attn1`, `attn2`, `ff_in`, `norm_in`)."""

from __future__ import annotations

from mindspore import Tensor, nn

from .. import backend
from ..layers import Dropout, GroupNorm, LayerNorm, Linear
from .embeddings import SinusoidalPositionalEmbedding



class Attention(nn.Cell):
    """Multi-head (cross-)attention on tokens (B, L, C), or on feature maps (B, C, H, W) which are flattened to tokens
    and back (the VAE mid-block: `norm_num_groups` GroupNorm first, `residual_connection`, `rescale_output_factor`).

    Scale is 1/sqrt(inner_dim // heads) (torch's SDPA default) when `scale_qk`, else 1. Not ported: added KV
    projections, spatial norm, qk norms, grouped KV heads."""

    def __init__(self, query_dim: int, cross_attention_dim: int | None = None, heads: int = 8,
                 kv_heads: int | None = None, dim_head: int = 64, dropout: float = 0.0, bias: bool = False,
                 upcast_attention: bool = False, upcast_softmax: bool = False, cross_attention_norm: str | None = None,
                 cross_attention_norm_num_groups: int = 32, qk_norm: str | None = None,
                 added_kv_proj_dim: int | None = None, added_proj_bias: bool | None = True,
                 norm_num_groups: int | None = None, spatial_norm_dim: int | None = None, out_bias: bool = True,
                 scale_qk: bool = True, only_cross_attention: bool = False, eps: float = 1e-5,
                 rescale_output_factor: float = 1.0, residual_connection: bool = False,
                 _from_deprecated_attn_block: bool = False, processor=None, out_dim: int | None = None,
                 out_context_dim: int | None = None, context_pre_only=None, pre_only: bool = False,
                 elementwise_affine: bool = True, is_causal: bool = False):
        super().__init__()
        unsupported = {
            "kv_heads": (kv_heads, (None, heads)), "qk_norm": (qk_norm, (None,)),
            "added_kv_proj_dim": (added_kv_proj_dim, (None,)), "spatial_norm_dim": (spatial_norm_dim, (None,)),
            "only_cross_attention": (only_cross_attention, (False,)), "context_pre_only": (context_pre_only, (None,)),
            "pre_only": (pre_only, (False,)), "is_causal": (is_causal, (False,)),
        }
        for key, (value, ok) in unsupported.items():
            if value not in ok:
                raise NotImplementedError(f"Attention: {key}={value!r} is not ported; expected one of {list(ok)}")
        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.query_dim = query_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.out_dim = out_dim if out_dim is not None else query_dim
        self.heads = out_dim // dim_head if out_dim is not None else heads
        self.scale = (self.inner_dim // self.heads) ** -0.5 if scale_qk else 1.0
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection

        self.group_norm = GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups is not None else None
        if cross_attention_norm is None:
            self.norm_cross = None
        elif cross_attention_norm == "layer_norm":
            self.norm_cross = LayerNorm(self.cross_attention_dim)
        elif cross_attention_norm == "group_norm":
            self.norm_cross = GroupNorm(cross_attention_norm_num_groups, self.cross_attention_dim, eps=1e-5)
        else:
            raise ValueError(
                f"Attention: unknown cross_attention_norm {cross_attention_norm!r}; expected None, 'layer_norm' or 'group_norm'"
            )
        self.to_q = Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_v = Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_out = nn.CellList([Linear(self.inner_dim, self.out_dim, bias=out_bias), Dropout()])

    def _norm_cross(self, context: Tensor) -> Tensor:
        if isinstance(self.norm_cross, LayerNorm):
            return self.norm_cross(context)
        # group norm over channels: (B, L, C) -> (B, C, L) -> (B, L, C)
        return backend.permute(self.norm_cross(backend.permute(context, (0, 2, 1))), (0, 2, 1))

    def construct(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                  attention_mask: Tensor | None = None) -> Tensor:
        residual = hidden_states
        # 1. feature maps to tokens: (B, C, H, W) -> (B, H*W, C)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = backend.permute(hidden_states.reshape(b, c, h * w), (0, 2, 1))
        b = hidden_states.shape[0]
        # 2. optional group norm over channels: (B, L, C) -> (B, C, L) -> (B, L, C)
        if self.group_norm is not None:
            hidden_states = backend.permute(self.group_norm(backend.permute(hidden_states, (0, 2, 1))), (0, 2, 1))
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif self.norm_cross is not None:
            encoder_hidden_states = self._norm_cross(encoder_hidden_states)
        # a per-batch additive mask (B, Lk) / (B, Lq|1, Lk) broadcasts over heads
        if attention_mask is not None:
            attention_mask = attention_mask.reshape(b, 1, -1, attention_mask.shape[-1])
        # 3-5. projections, attention per head, heads merged: (B, L, heads*d) throughout
        hidden_states = backend.attention_heads(self.to_q(hidden_states), self.to_k(encoder_hidden_states),
                                                self.to_v(encoder_hidden_states), self.heads, self.scale,
                                                attention_mask)
        hidden_states = self.to_out[1](self.to_out[0](hidden_states))
        # 6. tokens back to feature maps, residual, rescale
        if input_ndim == 4:
            hidden_states = backend.permute(hidden_states, (0, 2, 1)).reshape(b, c, h, w)
        if self.residual_connection:
            hidden_states = backend.add(hidden_states, residual)
        if self.rescale_output_factor != 1.0:
            hidden_states = hidden_states * (1.0 / self.rescale_output_factor)
        return hidden_states


class GELU(nn.Cell):
    """Linear `proj` then GELU (exact, or tanh-approximate)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def construct(self, hidden_states: Tensor) -> Tensor:
        return backend.gelu(self.proj(hidden_states), approximate=self.approximate)


class GEGLU(nn.Cell):
    """Linear `proj` to 2*dim_out, split into (hidden, gate): hidden * GELU(gate)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2, bias=bias)

    def construct(self, hidden_states: Tensor) -> Tensor:
        return backend.geglu(self.proj(hidden_states))


class ApproximateGELU(nn.Cell):
    """Linear `proj` then x * sigmoid(1.702 x) ("geglu-approximate" in diffusers' FeedForward)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out, bias=bias)

    def construct(self, hidden_states: Tensor) -> Tensor:
        return backend.quick_gelu(self.proj(hidden_states))


class FeedForward(nn.Cell):
    """net = [activation-with-proj, Dropout, Linear(inner, dim_out)] (+ Dropout when `final_dropout`)."""

    activations = {"gelu": GELU, "gelu-approximate": GELU, "geglu": GEGLU, "geglu-approximate": ApproximateGELU}

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "geglu", final_dropout: bool = False, inner_dim: int | None = None,
                 bias: bool = True):
        super().__init__()
        if activation_fn not in self.activations:
            raise ValueError(f"FeedForward: unsupported activation_fn {activation_fn!r}; expected one of {list(self.activations)}")
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim_out if dim_out is not None else dim
        if activation_fn == "gelu-approximate":
            act = GELU(dim, inner_dim, approximate="tanh", bias=bias)
        else:
            act = self.activations[activation_fn](dim, inner_dim, bias=bias)
        layers = [act, Dropout(), Linear(inner_dim, dim_out, bias=bias)]
        if final_dropout:
            layers.append(Dropout())
        self.net = nn.CellList(layers)

    def construct(self, hidden_states: Tensor) -> Tensor:
        for layer in self.net:
            hidden_states = layer(hidden_states)
        return hidden_states


class BasicTransformerBlock(nn.Cell):
    """Pre-norm transformer block on (B, L, C): self-attention, cross-attention (when `cross_attention_dim` or
    `double_self_attention`), feed-forward, each with a residual. Only `norm_type="layer_norm"` is ported."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout: float = 0.0,
                 cross_attention_dim: int | None = None, activation_fn: str = "geglu",
                 num_embeds_ada_norm: int | None = None, attention_bias: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = True, norm_type: str = "layer_norm",
                 norm_eps: float = 1e-5, final_dropout: bool = False, attention_type: str = "default",
                 positional_embeddings: str | None = None, num_positional_embeddings: int | None = None,
                 ada_norm_continous_conditioning_embedding_dim: int | None = None, ada_norm_bias: int | None = None,
                 ff_inner_dim: int | None = None, ff_bias: bool = True, attention_out_bias: bool = True):
        super().__init__()
        if norm_type != "layer_norm":
            raise NotImplementedError(f"BasicTransformerBlock: norm_type={norm_type!r} is not ported; expected 'layer_norm'")
        if attention_type != "default":
            raise NotImplementedError(f"BasicTransformerBlock: attention_type={attention_type!r} is not ported; expected 'default'")
        if positional_embeddings not in (None, "sinusoidal"):
            raise ValueError(
                f"BasicTransformerBlock: unknown positional_embeddings {positional_embeddings!r}; expected None or 'sinusoidal'"
            )
        if positional_embeddings and num_positional_embeddings is None:
            raise ValueError("BasicTransformerBlock: positional_embeddings needs num_positional_embeddings")
        self.only_cross_attention = only_cross_attention
        self.pos_embed = (
            SinusoidalPositionalEmbedding(dim, max_seq_length=num_positional_embeddings) if positional_embeddings else None
        )
        # 1. self-attention (cross-attention when only_cross_attention)
        self.norm1 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = Attention(dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                               bias=attention_bias, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               upcast_attention=upcast_attention, out_bias=attention_out_bias)
        # 2. cross-attention
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
            self.attn2 = Attention(dim, cross_attention_dim=cross_attention_dim if not double_self_attention else None,
                                   heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                                   bias=attention_bias, upcast_attention=upcast_attention, out_bias=attention_out_bias)
        else:
            self.norm2 = None
            self.attn2 = None
        # 3. feed-forward
        self.norm3 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)

    def construct(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                  encoder_hidden_states: Tensor | None = None, encoder_attention_mask: Tensor | None = None) -> Tensor:
        # 1. self-attention: (B, L, C)
        norm_hidden_states = self.norm1(hidden_states)
        if self.pos_embed is not None:
            norm_hidden_states = self.pos_embed(norm_hidden_states)
        context = encoder_hidden_states if self.only_cross_attention else None
        hidden_states = backend.add(self.attn1(norm_hidden_states, context, attention_mask), hidden_states)
        # 2. cross-attention
        if self.attn2 is not None:
            norm_hidden_states = self.norm2(hidden_states)
            if self.pos_embed is not None:
                norm_hidden_states = self.pos_embed(norm_hidden_states)
            hidden_states = backend.add(self.attn2(norm_hidden_states, encoder_hidden_states, encoder_attention_mask),
                                        hidden_states)
        # 3. feed-forward
        return backend.add(self.ff(self.norm3(hidden_states)), hidden_states)


class TemporalBasicTransformerBlock(nn.Cell):
    """Transformer block across frames: (B*F, L, C) tokens are regrouped to (B*L, F, C) sequences, run through
    norm_in + ff_in (to `time_mix_inner_dim`), self-attention, cross-attention, feed-forward, and regrouped back."""

    def __init__(self, dim: int, time_mix_inner_dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None = None):
        super().__init__()
        self.is_res = dim == time_mix_inner_dim
        self.norm_in = LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=time_mix_inner_dim, activation_fn="geglu")
        self.norm1 = LayerNorm(time_mix_inner_dim)
        self.attn1 = Attention(time_mix_inner_dim, heads=num_attention_heads, dim_head=attention_head_dim)
        if cross_attention_dim is not None:
            self.norm2 = LayerNorm(time_mix_inner_dim)
            self.attn2 = Attention(time_mix_inner_dim, cross_attention_dim=cross_attention_dim,
                                   heads=num_attention_heads, dim_head=attention_head_dim)
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = LayerNorm(time_mix_inner_dim)
        self.ff = FeedForward(time_mix_inner_dim, activation_fn="geglu")

    def construct(self, hidden_states: Tensor, num_frames: int, encoder_hidden_states: Tensor | None = None) -> Tensor:
        bf, seq, c = hidden_states.shape
        b = bf // num_frames
        # 1. frames become the sequence: (B*F, L, C) -> (B, F, L, C) -> (B*L, F, C)
        hidden_states = backend.permute(hidden_states.reshape(b, num_frames, seq, c), (0, 2, 1, 3))
        hidden_states = hidden_states.reshape(b * seq, num_frames, c)
        # 2. input feed-forward (residual when the width is kept)
        residual = hidden_states
        hidden_states = self.ff_in(self.norm_in(hidden_states))
        if self.is_res:
            hidden_states = backend.add(hidden_states, residual)
        # 3. self-attention over frames
        hidden_states = backend.add(self.attn1(self.norm1(hidden_states)), hidden_states)
        # 4. cross-attention
        if self.attn2 is not None:
            hidden_states = backend.add(self.attn2(self.norm2(hidden_states), encoder_hidden_states), hidden_states)
        # 5. feed-forward
        ff_output = self.ff(self.norm3(hidden_states))
        hidden_states = backend.add(ff_output, hidden_states) if self.is_res else ff_output
        # 6. back: (B*L, F, C') -> (B, L, F, C') -> (B*F, L, C')
        c_out = hidden_states.shape[-1]
        return backend.permute(hidden_states.reshape(b, seq, num_frames, c_out), (0, 2, 1, 3)).reshape(bf, seq, c_out)
