"""Wan 2.1 / 2.2 video transformer (diffusers' `WanTransformer3DModel`): T2V, I2V (CLIP image tokens through added
key/value projections), FLF2V (image tokens with a learned position embedding) and Wan 2.2's per-token timesteps.

Layout, as in diffusers: (B, C, F, H, W) latents are cut into (pt, ph, pw) patches, one token each (B, L, dim); every
block is self-attention with 3D rotary positions, cross-attention to the text (and image) tokens, and a feed-forward,
the first and last modulated by the timestep (shift, scale, gate from `scale_shift_table` + the time projection).
Norms, modulation and rotary positions are computed in float32 whatever the weights' dtype, as diffusers does.

Written for MindSpore on CPU (see shared/design.md): broadcasting elementwise ops are 10-30x slower there than
same-shape ones, so the per-sample modulation is folded into the fused LayerNorm's weight and bias, gates are tiled
to the tokens' shape, and rotary tables are built on the host once per forward at the tokens' full shape. RMS norms,
rotary positions and the tanh GELU are one kernel each on CPU (backend.rms_norm / rotary_pairs / gelu_tanh; their
MindSpore-ops fallbacks use matmuls for row reductions and the pair swap).
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .. import backend
from ..lora import lora_call_scale, scaled_lora_paths
from ..layers import Dropout, Identity, LayerNorm, Linear, _param
from ..modeling import ModelMixin, Output
from .attention import FeedForward
from .embeddings import TimestepEmbedding, Timesteps

F32 = ms.float32

# diffusers' WanAttnProcessor: "512 is the context length of the text encoder, hardcoded for now" - in I2V
# cross-attention the last 512 context tokens are the text, the ones before them the image.
TEXT_CONTEXT_LENGTH = 512


# ----------------------------------------------------------------------------------------------------------------
# Elementwise helpers (CPU-friendly formulations, numerically those of diffusers)
# ----------------------------------------------------------------------------------------------------------------


def gelu_tanh(x: Tensor) -> Tensor:
    """torch's GELU(approximate="tanh") in float32, returned in x's dtype (backend.gelu_tanh: a kernel on CPU)."""
    return backend.gelu_tanh(x)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """x * rsqrt(mean(x^2, -1) + eps) * weight in float32 (torch.nn.RMSNorm; backend.rms_norm: a kernel on CPU)."""
    return backend.rms_norm(x, weight, eps)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """diffusers' Wan rotary embedding on interleaved pairs: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos), on x
    (B, L, heads*d) float32 with cos / sin tables already at x's shape (backend.rotary_pairs). Same products and
    sums as diffusers: exact."""
    return backend.rotary_pairs(x, cos, sin)


def _per_token(v: Tensor, tokens: int) -> Tensor:
    """(B, 1, D) -> (B, L, D) by tiling (then ops on it are same-shape: broadcasting is the slow case on CPU)."""
    return v if v.shape[1] == tokens else ops.tile(v, (1, tokens, 1))


def modulated_layer_norm(x: Tensor, eps: float, scale: Tensor, shift: Tensor) -> Tensor:
    """LayerNorm(x) * (1 + scale) + shift in float32 (x (B, L, D); scale, shift (B, 1, D) per sample or (B, L, D) per
    token). Per sample, (1 + scale) and shift are the fused LayerNorm's weight and bias (one kernel per sample)."""
    x = backend.cast(x, F32)
    b, tokens, _ = x.shape
    if scale.shape[1] == 1:
        weight = scale + 1.0
        outs = [backend.layer_norm(x[i : i + 1], weight[i, 0], shift[i, 0], eps) for i in range(b)]
        return outs[0] if b == 1 else ops.cat(outs, axis=0)
    return backend.add(backend.layer_norm(x, None, None, eps) * (scale + 1.0), shift)


def gated_residual(x: Tensor, out: Tensor, gate: Tensor) -> Tensor:
    """(x.float() + out.float() * gate).type_as(x), gate (B, 1, D) per sample or (B, L, D) per token."""
    y = backend.add(backend.cast(x, F32), backend.cast(out, F32) * _per_token(gate, out.shape[1]))
    return backend.cast(y, x.dtype)


def modulation(table: Tensor, temb: Tensor, n: int) -> list[Tensor]:
    """`scale_shift_table` (1, n, D) + a time embedding, in float32, split into its n parts. temb is (B, n|1, D) per
    sample or (B, L, n|1, D) per token (Wan 2.2's per-token timesteps); the parts are (B, 1, D) or (B, L, D)."""
    table, temb = backend.cast(table, F32), backend.cast(temb, F32)
    if temb.ndim == 3:
        mod = table + temb  # (B, n, D): small
        return [mod[:, i : i + 1] for i in range(n)]
    b, tokens, k, d = temb.shape
    if k == 1:
        temb = ops.tile(temb, (1, 1, n, 1))
    mod = backend.add(temb, ops.tile(table.reshape(1, 1, n, d), (b, tokens, 1, 1)))
    mod = backend.permute(mod, (0, 2, 1, 3))  # (B, L, n, D) -> (B, n, L, D): each part contiguous
    return [mod[:, i] for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class RMSNorm(nn.Cell):
    """torch.nn.RMSNorm over the last axis (computed in float32, returned in the input's dtype)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = float(eps)
        self.weight = _param((dim,), "ones") if elementwise_affine else None

    def construct(self, x: Tensor) -> Tensor:
        return backend.cast(rms_norm(x, self.weight, self.eps), x.dtype)


class WanFeedForward(FeedForward):
    """diffusers' FeedForward (`net.0.proj`, `net.2`) with its tanh-approximate GELU computed by `gelu_tanh`."""

    def construct(self, hidden_states: Tensor) -> Tensor:
        act = self.net[0]
        hidden_states = act.proj(hidden_states)
        if getattr(act, "approximate", "none") == "tanh":
            hidden_states = gelu_tanh(hidden_states)
        else:
            hidden_states = backend.gelu(hidden_states)
        return self.net[2](self.net[1](hidden_states))


class PatchEmbed3d(nn.Cell):
    """Conv3d with kernel = stride = patch size, as diffusers' `patch_embedding` (weight (dim, C, pt, ph, pw)):
    non-overlapping patches are a reshape and one matmul, exact and fast on every backend.
    (B, C, F, H, W) -> (B, dim, F/pt, H/ph, W/pw), the convolution's layout (the model flattens it to tokens in
    (frame, row, column) order, as diffusers)."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: tuple[int, int, int]):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.weight = _param((out_channels, in_channels, *self.patch_size))
        self.bias = _param((out_channels,))

    def construct(self, x: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        pt, ph, pw = self.patch_size
        # (B, C, F', pt, H', ph, W', pw) -> (B, F', H', W', C, pt, ph, pw) -> (B, L, C*pt*ph*pw)
        x = x.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
        x = backend.permute(x, (0, 2, 4, 6, 1, 3, 5, 7)).reshape(b, -1, c * pt * ph * pw)
        x = backend.linear(x, self.weight.reshape(self.weight.shape[0], -1), self.bias)  # (B, L, dim)
        return backend.permute(x.reshape(b, f // pt, h // ph, w // pw, -1), (0, 4, 1, 2, 3))


class PixArtAlphaTextProjection(nn.Cell):
    """Text embedding projection: linear_1 -> act_1 (GELU tanh, or SiLU) -> linear_2."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int | None = None, act_fn: str = "gelu_tanh"):
        super().__init__()
        if act_fn not in ("gelu_tanh", "silu"):
            raise ValueError(f"PixArtAlphaTextProjection: act_fn {act_fn!r} is not ported; expected 'gelu_tanh' or 'silu'")
        self.act_fn = act_fn
        self.linear_1 = Linear(in_features, hidden_size)
        self.linear_2 = Linear(hidden_size, out_features if out_features is not None else hidden_size)

    def construct(self, caption: Tensor) -> Tensor:
        h = self.linear_1(caption)
        h = gelu_tanh(h) if self.act_fn == "gelu_tanh" else backend.silu(h)
        return self.linear_2(h)


class WanImageEmbedding(nn.Cell):
    """CLIP image tokens -> model width: norm1 (LayerNorm, eps 1e-5), ff (Linear, exact GELU, Linear), norm2; FLF2V
    models first add `pos_embed` (1, 2S, D) to the first- and last-frame tokens, (2B, S, D) viewed as (B, 2S, D)."""

    def __init__(self, in_features: int, out_features: int, pos_embed_seq_len: int | None = None):
        super().__init__()
        self.norm1 = LayerNorm(in_features)
        self.ff = FeedForward(in_features, out_features, mult=1, activation_fn="gelu")
        self.norm2 = LayerNorm(out_features)
        self.pos_embed = _param((1, pos_embed_seq_len, in_features)) if pos_embed_seq_len is not None else None

    def construct(self, encoder_hidden_states_image: Tensor) -> Tensor:
        x = encoder_hidden_states_image
        if self.pos_embed is not None:
            # (2B, S, D) -> (B, 2S, D): first- and last-frame tokens side by side, plus their positions
            _, seq, dim = x.shape
            x = x.reshape(-1, 2 * seq, dim) + self.pos_embed
        return self.norm2(self.ff(self.norm1(x)))


class WanTimeTextImageEmbedding(nn.Cell):
    """Timestep -> (temb (.., dim), its projection (.., 6*dim)); text (B, S, text_dim) -> (B, S, dim); image tokens
    through `image_embedder` when the model has one. Timestep sinusoids are cos-first, shift 0."""

    def __init__(self, dim: int, time_freq_dim: int, time_proj_dim: int, text_embed_dim: int,
                 image_embed_dim: int | None = None, pos_embed_seq_len: int | None = None):
        super().__init__()
        self.timesteps_proj = Timesteps(time_freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(time_freq_dim, dim)
        self.time_proj = Linear(dim, time_proj_dim)
        self.text_embedder = PixArtAlphaTextProjection(text_embed_dim, dim, act_fn="gelu_tanh")
        self.image_embedder = (WanImageEmbedding(image_embed_dim, dim, pos_embed_seq_len=pos_embed_seq_len)
                               if image_embed_dim is not None else None)

    def construct(self, timestep: Tensor, encoder_hidden_states: Tensor,
                  encoder_hidden_states_image: Tensor | None = None, timestep_seq_len: int | None = None):
        # 1. sinusoids (N,) -> (N, freq) float32, per token: (B*L, freq) -> (B, L, freq)
        t_emb = self.timesteps_proj(timestep)
        if timestep_seq_len is not None:
            t_emb = t_emb.reshape(-1, timestep_seq_len, t_emb.shape[-1])
        # 2. time MLP in its weights' dtype (diffusers keeps it float32), then the context's dtype
        t_emb = backend.cast(t_emb, self.time_embedder.linear_1.weight.dtype)
        temb = backend.cast(self.time_embedder(t_emb), encoder_hidden_states.dtype)
        timestep_proj = self.time_proj(backend.silu(temb))
        # 3. text and image tokens to the model width
        encoder_hidden_states = self.text_embedder(encoder_hidden_states)
        if encoder_hidden_states_image is not None:
            encoder_hidden_states_image = self.image_embedder(encoder_hidden_states_image)
        return temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image


class WanRotaryPosEmbed(nn.Cell):
    """3D rotary positions: the head dim is split into (t, h, w) parts, h = w = 2 * (d // 6), t = the rest; each part
    holds cos / sin of position * theta^(-2i/part) for its axis, repeated per pair. Computed once on the host in
    float64 and rounded to float32, as diffusers computes its buffers (no parameters)."""

    def __init__(self, attention_head_dim: int, patch_size: tuple[int, int, int], max_seq_len: int,
                 theta: float = 10000.0):
        super().__init__()
        self.attention_head_dim = attention_head_dim
        self.patch_size = tuple(patch_size)
        self.max_seq_len = max_seq_len
        self.h_dim = self.w_dim = 2 * (attention_head_dim // 6)
        self.t_dim = attention_head_dim - self.h_dim - self.w_dim
        positions = np.arange(max_seq_len, dtype=np.float64)
        cos, sin = [], []
        for dim in (self.t_dim, self.h_dim, self.w_dim):
            inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))  # (dim/2,)
            angles = np.outer(positions, inv_freq)  # (S, dim/2)
            cos.append(np.repeat(np.cos(angles), 2, axis=1).astype(np.float32))
            sin.append(np.repeat(np.sin(angles), 2, axis=1).astype(np.float32))
        self.freqs_cos = np.concatenate(cos, axis=1)  # (S, head_dim)
        self.freqs_sin = np.concatenate(sin, axis=1)
        self._cached = (None, None)

    def grid_tables(self, frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin (F*H*W, head_dim) float32 for a (frames, height, width) grid of patches."""
        n = max(frames, height, width)
        if n > self.max_seq_len:
            raise ValueError(f"WanRotaryPosEmbed: a latent of {frames}x{height}x{width} patches exceeds "
                             f"rope_max_seq_len={self.max_seq_len} positions per axis")
        parts = np.cumsum([self.t_dim, self.h_dim])
        out = []
        for table in (self.freqs_cos, self.freqs_sin):
            t, h, w = np.split(table, parts, axis=1)
            grid = np.concatenate([
                np.broadcast_to(t[:frames, None, None], (frames, height, width, self.t_dim)),
                np.broadcast_to(h[None, :height, None], (frames, height, width, self.h_dim)),
                np.broadcast_to(w[None, None, :width], (frames, height, width, self.w_dim)),
            ], axis=-1)
            out.append(grid.reshape(frames * height * width, self.attention_head_dim))
        return out[0], out[1]

    def tables(self, batch: int, frames: int, height: int, width: int, heads: int) -> tuple[Tensor, Tensor]:
        """cos, sin tiled to the projections' layout (B, L, heads*head_dim); the last ones are kept (every step of a
        sampling loop asks for the same)."""
        key = (batch, frames, height, width, heads)
        if self._cached[0] != key:
            cos, sin = self.grid_tables(frames, height, width)
            tiled = tuple(Tensor(np.ascontiguousarray(np.tile(a, (batch, 1, heads)))) for a in (cos, sin))
            self._cached = (key, tiled)
        return self._cached[1]

    def construct(self, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        """diffusers' output: cos, sin (1, L, 1, head_dim) for latents (B, C, F, H, W)."""
        _, _, f, h, w = hidden_states.shape
        pt, ph, pw = self.patch_size
        cos, sin = self.grid_tables(f // pt, h // ph, w // pw)
        return Tensor(cos[None, :, None]), Tensor(sin[None, :, None])


class WanAttention(nn.Cell):
    """Attention with RMS norms over all heads' q and k (`norm_q`, `norm_k`), optional rotary positions, and for I2V
    added key / value projections of the image tokens (`add_k_proj`, `add_v_proj`, `norm_added_k`), whose attention
    output is added to the text attention's. Scale 1/sqrt(head_dim); `to_out` = [Linear, Dropout]."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, eps: float = 1e-5, dropout: float = 0.0,
                 added_kv_proj_dim: int | None = None, cross_attention_dim_head: int | None = None, processor=None,
                 is_cross_attention=None):
        super().__init__()
        self.inner_dim = dim_head * heads
        self.heads = heads
        self.kv_inner_dim = self.inner_dim if cross_attention_dim_head is None else cross_attention_dim_head * heads
        self.scale = dim_head ** -0.5
        self.is_cross_attention = (is_cross_attention if is_cross_attention is not None
                                   else cross_attention_dim_head is not None)
        self.to_q = Linear(dim, self.inner_dim)
        self.to_k = Linear(dim, self.kv_inner_dim)
        self.to_v = Linear(dim, self.kv_inner_dim)
        self.to_out = nn.CellList([Linear(self.inner_dim, dim), Dropout()])
        self.norm_q = RMSNorm(self.inner_dim, eps=eps)
        self.norm_k = RMSNorm(self.inner_dim, eps=eps)
        self.added_kv_proj_dim = added_kv_proj_dim
        if added_kv_proj_dim is not None:
            self.add_k_proj = Linear(added_kv_proj_dim, self.inner_dim)
            self.add_v_proj = Linear(added_kv_proj_dim, self.inner_dim)
            self.norm_added_k = RMSNorm(self.inner_dim, eps=eps)
        else:
            self.add_k_proj = self.add_v_proj = self.norm_added_k = None

    def _split_image_context(self, context: Tensor) -> tuple[Tensor | None, Tensor]:
        """(image tokens, text tokens): the text is the last TEXT_CONTEXT_LENGTH tokens, split with Python's slice
        rules as diffusers does (a shorter context splits where `context[:, :length - 512]` does)."""
        length = context.shape[1]
        cut = length - TEXT_CONTEXT_LENGTH
        cut = cut if cut >= 0 else max(length + cut, 0)
        return (context[:, :cut] if cut > 0 else None), (context[:, cut:] if cut > 0 else context)

    def _normed(self, norm: RMSNorm, x: Tensor, rotary: tuple[Tensor, Tensor] | None) -> Tensor:
        """The RMS norm cell (float32 inside, its output in x's dtype as diffusers' norm_q / norm_k; called as a
        cell so the harness sees it), then rotary positions in float32, back to x's dtype."""
        y = norm(x)
        if rotary is not None:
            y = backend.cast(rotate_pairs(backend.cast(y, F32), *rotary), x.dtype)
        return y

    def construct(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                  attention_mask: Tensor | None = None, rotary_emb: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """hidden_states (B, L, dim); encoder_hidden_states (B, S, dim) for cross-attention (image tokens first when
        the layer has added projections); rotary_emb = cos, sin tables (B, L, heads*head_dim) from
        `WanRotaryPosEmbed.tables`. -> (B, L, dim)."""
        if attention_mask is not None:
            raise NotImplementedError("WanAttention: attention_mask is not ported (diffusers' Wan blocks pass none)")
        # 1. image / text context split (I2V layers)
        image_context = None
        if self.add_k_proj is not None and encoder_hidden_states is not None:
            image_context, encoder_hidden_states = self._split_image_context(encoder_hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        # 2. projections, q / k RMS norms across heads, rotary positions: (B, L, heads*d)
        query = self._normed(self.norm_q, self.to_q(hidden_states), rotary_emb)
        key = self._normed(self.norm_k, self.to_k(context), rotary_emb)
        value = self.to_v(context)
        # 3. attention per head: (B, L, heads*d)
        out = backend.attention_heads(query, key, value, self.heads, self.scale)
        # 4. attention to the image tokens, added (no image tokens: diffusers' empty attention adds zeros)
        if image_context is not None:
            key_img = self._normed(self.norm_added_k, self.add_k_proj(image_context), None)
            value_img = self.add_v_proj(image_context)
            out = backend.add(out, backend.cast(backend.attention_heads(query, key_img, value_img, self.heads,
                                                                        self.scale), out.dtype))
        # 5. output projection: (B, L, dim)
        return self.to_out[1](self.to_out[0](out))


class WanTransformerBlock(nn.Cell):
    """Modulated self-attention with rotary positions, cross-attention (after `norm2` when `cross_attn_norm`), and a
    modulated feed-forward (tanh GELU). `scale_shift_table` (1, 6, dim) + the time projection gives shift / scale /
    gate for the attention and the feed-forward, in float32. `qk_norm` is accepted and, as in diffusers, unused: q
    and k always get RMS norms across heads."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str | None = "rms_norm_across_heads",
                 cross_attn_norm: bool = False, eps: float = 1e-6, added_kv_proj_dim: int | None = None):
        super().__init__()
        head_dim = dim // num_heads
        self.norm1 = LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, heads=num_heads, dim_head=head_dim, eps=eps)
        self.attn2 = WanAttention(dim, heads=num_heads, dim_head=head_dim, eps=eps,
                                  added_kv_proj_dim=added_kv_proj_dim, cross_attention_dim_head=head_dim)
        self.norm2 = LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else Identity()
        self.ffn = WanFeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = _param((1, 6, dim))

    def construct(self, hidden_states: Tensor, encoder_hidden_states: Tensor, temb: Tensor,
                  rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
        """hidden_states (B, L, dim); temb = the time projection (B, 6, dim), or (B, L, 6, dim) per token."""
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = modulation(
            self.scale_shift_table, temb, 6)
        dtype = hidden_states.dtype
        # 1. self-attention: modulated norm (float32), attention, gated residual
        norm_hidden_states = backend.cast(modulated_layer_norm(hidden_states, self.norm1.eps, scale_msa, shift_msa), dtype)
        attn_output = self.attn1(norm_hidden_states, None, None, rotary_emb)
        hidden_states = gated_residual(hidden_states, attn_output, gate_msa)
        # 2. cross-attention: (affine) norm in float32, plain residual
        norm_hidden_states = backend.cast(self.norm2(backend.cast(hidden_states, F32)), dtype)
        hidden_states = backend.add(hidden_states, self.attn2(norm_hidden_states, encoder_hidden_states))
        # 3. feed-forward: modulated norm, gated residual
        norm_hidden_states = backend.cast(
            modulated_layer_norm(hidden_states, self.norm3.eps, c_scale_msa, c_shift_msa), dtype)
        return gated_residual(hidden_states, self.ffn(norm_hidden_states), c_gate_msa)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class WanTransformer3DModel(ModelMixin):
    """Wan's denoiser: `hidden_states` (B, C_in, F, H, W) latents, `timestep` (B,) (or one value, or (B, L) per
    token as Wan 2.2 TI2V's `expand_timesteps` passes), `encoder_hidden_states` (B, S, text_dim) UMT5 embeddings,
    `encoder_hidden_states_image` (B, S_img, image_dim) CLIP tokens for I2V ((2B, S_img, image_dim) first and last
    frame for FLF2V) -> `.sample` (B, C_out, F, H, W). F, H, W must be multiples of `patch_size`.

    I2V cross-attention takes the last 512 context tokens as the text (diffusers hard-codes the UMT5 length), so an
    I2V model's text is 512 tokens, as the pipelines pad it."""

    diffusers_class = "WanTransformer3DModel"
    # diffusers gives these a meaning when null: out_channels -> in_channels, cross_attn_norm -> no norm2, qk_norm
    # unused
    nullable_config = frozenset({"out_channels", "cross_attn_norm", "qk_norm"})
    # diffusers keeps these modules float32 in a half-precision model (parameter path components)
    _keep_in_fp32_modules = ("rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")

    def __init__(self, patch_size=(1, 2, 2), num_attention_heads: int = 40, attention_head_dim: int = 128,
                 in_channels: int = 16, out_channels: int = 16, text_dim: int = 4096, freq_dim: int = 256,
                 ffn_dim: int = 13824, num_layers: int = 40, cross_attn_norm: bool = True,
                 qk_norm: str | None = "rms_norm_across_heads", eps: float = 1e-6, image_dim: int | None = None,
                 added_kv_proj_dim: int | None = None, rope_max_seq_len: int = 1024,
                 pos_embed_seq_len: int | None = None):
        super().__init__()
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) != 3:
            raise ValueError(f"WanTransformer3DModel: patch_size={list(patch_size)} must have 3 entries (t, h, w)")
        if attention_head_dim % 2:
            raise ValueError(f"WanTransformer3DModel: attention_head_dim={attention_head_dim} must be even "
                             "(rotary positions rotate pairs of channels)")
        inner_dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.patch_size = patch_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_attention_heads, self.inner_dim = num_attention_heads, inner_dim
        self.text_dim, self.image_dim, self.pos_embed_seq_len = text_dim, image_dim, pos_embed_seq_len

        # 1. patch and rotary position embedding
        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = PatchEmbed3d(in_channels, inner_dim, patch_size)
        # 2. time, text and image embeddings
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=inner_dim, time_freq_dim=freq_dim, time_proj_dim=inner_dim * 6, text_embed_dim=text_dim,
            image_embed_dim=image_dim, pos_embed_seq_len=pos_embed_seq_len)
        # 3. transformer blocks
        self.blocks = nn.CellList([
            WanTransformerBlock(inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps,
                                added_kv_proj_dim)
            for _ in range(num_layers)
        ])
        # 4. output norm and projection to patches
        self.norm_out = LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = Linear(inner_dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = _param((1, 2, inner_dim))

    # -- input checks (one line each, naming the value) -------------------------------------------------------------
    def _check_inputs(self, hidden_states, encoder_hidden_states, encoder_hidden_states_image):
        name = type(self).__name__
        if hidden_states.ndim != 5:
            raise ValueError(f"{name}: hidden_states must be (batch, channels, frames, height, width), "
                             f"got shape {tuple(hidden_states.shape)}")
        b, c, f, h, w = hidden_states.shape
        if c != self.in_channels:
            raise ValueError(f"{name}: hidden_states has {c} channels, expected in_channels={self.in_channels}")
        for axis, size, p in (("frames", f, self.patch_size[0]), ("height", h, self.patch_size[1]),
                              ("width", w, self.patch_size[2])):
            if size % p:
                raise ValueError(f"{name}: latent {axis} {size} is not a multiple of the patch size {p} "
                                 f"(patch_size={list(self.patch_size)})")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != self.text_dim \
                or encoder_hidden_states.shape[0] != b:
            raise ValueError(f"{name}: encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}, expected "
                             f"({b}, sequence, text_dim={self.text_dim})")
        if encoder_hidden_states_image is None:
            return
        if self.image_dim is None:
            raise ValueError(f"{name}: encoder_hidden_states_image was given, but this model has no image embedder "
                             "(image_dim is null: a text-to-video model)")
        shape = tuple(encoder_hidden_states_image.shape)
        images = 2 * b if self.pos_embed_seq_len is not None else b
        if len(shape) != 3 or shape[-1] != self.image_dim or shape[0] != images:
            raise ValueError(f"{name}: encoder_hidden_states_image has shape {shape}, expected "
                             f"({images}, tokens, image_dim={self.image_dim})"
                             + (" (first and last frame per sample)" if self.pos_embed_seq_len is not None else ""))
        if self.pos_embed_seq_len is not None and 2 * shape[1] != self.pos_embed_seq_len:
            raise ValueError(f"{name}: encoder_hidden_states_image has {shape[1]} tokens per frame, expected "
                             f"pos_embed_seq_len / 2 = {self.pos_embed_seq_len / 2:g}")

    def _timesteps(self, timestep, batch: int, tokens: int) -> tuple[np.ndarray, int | None]:
        """timestep -> (flat float32 values, tokens per sample or None): one value, (B,), or (B, L) per token."""
        t = timestep.asnumpy() if isinstance(timestep, Tensor) else np.asarray(timestep)
        t = t.astype(np.float32)
        if t.ndim == 2:
            if t.shape != (batch, tokens):
                raise ValueError(f"{type(self).__name__}: per-token timestep has shape {t.shape}, expected "
                                 f"({batch}, {tokens}) (batch, latent patches)")
            return t.reshape(-1), tokens
        t = t.reshape(-1)
        if t.shape[0] == 1 and batch != 1:
            t = np.repeat(t, batch)
        if t.shape[0] != batch:
            raise ValueError(f"{type(self).__name__}: got {t.shape[0]} timestep values for batch size {batch}")
        return t, None

    def construct(self, hidden_states: Tensor, timestep, encoder_hidden_states: Tensor,
                  encoder_hidden_states_image: Tensor | None = None, return_dict: bool = True,
                  attention_kwargs: dict | None = None):
        """`attention_kwargs={"scale": s}` scales the unfused LoRA paths (mindport.lora) for this call, as diffusers'
        `apply_lora_scale` does; other keys are refused."""
        with scaled_lora_paths([self], lora_call_scale(attention_kwargs, "attention_kwargs")):
            output = self._forward(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image)
        if not return_dict:
            return (output,)
        return Output(sample=output)

    def _forward(self, hidden_states: Tensor, timestep, encoder_hidden_states: Tensor,
                 encoder_hidden_states_image: Tensor | None) -> Tensor:
        self._check_inputs(hidden_states, encoder_hidden_states, encoder_hidden_states_image)
        dtype = self.patch_embedding.weight.dtype
        b, _, f, h, w = hidden_states.shape
        pt, ph, pw = self.patch_size
        ppf, pph, ppw = f // pt, h // ph, w // pw
        tokens = ppf * pph * ppw

        # 1. rotary tables at the projections' layout: (B, L, heads*head_dim) float32 cos, sin
        rotary_emb = self.rope.tables(b, ppf, pph, ppw, self.num_attention_heads)

        # 2. patches to tokens: (B, C, F, H, W) -> (B, L, dim)
        hidden_states = self.patch_embedding(backend.cast(hidden_states, dtype))  # (B, dim, F', H', W')
        hidden_states = backend.permute(hidden_states.reshape(b, self.inner_dim, tokens), (0, 2, 1))

        # 3. time, text, image embeddings: temb (B, dim) | (B, L, dim); timestep_proj (B, 6, dim) | (B, L, 6, dim)
        t, ts_seq_len = self._timesteps(timestep, b, tokens)
        encoder_hidden_states = backend.cast(encoder_hidden_states, dtype)
        if encoder_hidden_states_image is not None:
            encoder_hidden_states_image = backend.cast(encoder_hidden_states_image, dtype)
        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            Tensor(t), encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len)
        if ts_seq_len is None:
            timestep_proj = timestep_proj.reshape(b, 6, -1)
        else:
            timestep_proj = timestep_proj.reshape(b, ts_seq_len, 6, -1)

        # 4. context: image tokens, then text tokens: (B, S_img + S, dim)
        if encoder_hidden_states_image is not None:
            encoder_hidden_states = ops.cat([encoder_hidden_states_image, encoder_hidden_states], axis=1)

        # 5. transformer blocks: (B, L, dim)
        for block in self.blocks:
            hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)

        # 6. output norm modulated by temb (float32), projection to patches: (B, L, C_out*pt*ph*pw)
        head_temb = temb.reshape(b, 1, -1) if temb.ndim == 2 else temb.reshape(b, tokens, 1, -1)
        shift, scale = modulation(self.scale_shift_table, head_temb, 2)
        hidden_states = backend.cast(modulated_layer_norm(hidden_states, self.norm_out.eps, scale, shift), dtype)
        hidden_states = self.proj_out(hidden_states)

        # 7. patches back to latents: (B, F', H', W', pt, ph, pw, C) -> (B, C, F', pt, H', ph, W', pw) -> (B, C, F, H, W)
        hidden_states = hidden_states.reshape(b, ppf, pph, ppw, pt, ph, pw, self.out_channels)
        return backend.permute(hidden_states, (0, 7, 1, 4, 2, 5, 3, 6)).reshape(b, self.out_channels, f, h, w)
