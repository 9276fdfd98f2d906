"""transformers' `UMT5EncoderModel`: Wan 2.1's text encoder (UMT5-XXL's encoder half).

Module paths follow transformers 5 one to one, so a checkpoint's keys are our parameter names:

    shared                                        token embedding (transformers ties encoder.embed_tokens to it)
    encoder.block.N.layer.0.layer_norm            T5 RMS norm (no mean, no bias; variance in float32)
    encoder.block.N.layer.0.SelfAttention.{q,k,v,o}
    encoder.block.N.layer.0.SelfAttention.relative_attention_bias   in EVERY block (UMT5; T5 has it in block 0 only)
    encoder.block.N.layer.1.layer_norm
    encoder.block.N.layer.1.DenseReluDense.{wi_0, wi_1, wo}   (gated activations; `wi`, `wo` otherwise)
    encoder.final_layer_norm

The stack's own `embed_tokens` is a tied alias of `shared` in transformers; we hold the table once, as `shared`
(the converter drops a stored `encoder.embed_tokens.weight`, or takes it as `shared.weight` when that is absent).

Numerics as transformers': no attention scaling (T5 folds 1/sqrt(d) into its initialisation), each block adds its
own relative position bias (buckets computed on the host with NumPy exactly as transformers computes them, float32
log included) and the padding mask (additive, float32 min, as transformers' eager mask) to the scores; dropout is
ignored (inference). Half-precision models keep `wo` in float32 (transformers' `_keep_in_fp32_modules = ["wo"]`:
T5's feed-forward output overflows fp16) and, as follows in transformers from the float32 `wo`, the residual stream
in float32; every norm output is rounded to the weights' dtype before the projections.
"""

from __future__ import annotations

import math
from functools import lru_cache

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .. import backend
from ..layers import Embedding, Linear, _param
from ..modeling import ModelMixin, Output
from .transformer_wan import gelu_tanh, rms_norm

F32 = ms.float32
_HALF = (ms.float16, ms.bfloat16)
# additive value for hidden (padding) keys: transformers' eager mask uses the dtype's minimum; the scores are
# float32 here whatever the weights' dtype
_MASK_VALUE = float(np.finfo(np.float32).min)

# transformers' ACT2FN names a feed_forward_proj may end in, and how we compute each
_ACTIVATIONS = {
    "relu": ops.relu,
    "gelu": lambda x: backend.gelu(x),  # exact (erf) GELU
    "gelu_new": gelu_tanh,  # tanh approximation (UMT5 / Wan: "gated-gelu" means gelu_new)
    "gelu_pytorch_tanh": gelu_tanh,
    "silu": lambda x: backend.silu(x),
    "swish": lambda x: backend.silu(x),
}


def parse_feed_forward_proj(value: str) -> tuple[str, bool]:
    """transformers' UMT5Config: "gated-ACT" or "ACT" -> (activation name, gated); "gated-gelu" means gelu_new."""
    parts = str(value).split("-")
    if (len(parts) > 1 and parts[0] != "gated") or len(parts) > 2:
        raise ValueError(f"UMT5EncoderModel: feed_forward_proj={value!r} is not 'gated-ACT' or 'ACT' (e.g. "
                         "'gated-gelu', 'relu')")
    act = "gelu_new" if value == "gated-gelu" else parts[-1]
    if act not in _ACTIVATIONS:
        raise ValueError(f"UMT5EncoderModel: feed_forward_proj={value!r} names activation {act!r}; supported: "
                         f"{', '.join(sorted(_ACTIVATIONS))}")
    return act, parts[0] == "gated"


@lru_cache(maxsize=32)
def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """transformers' bidirectional `_relative_position_bucket(memory_position - query_position)`, (Lq, Lk) int64:
    half the buckets per direction, of which the first half exact distances and the rest logarithmic bins up to
    max_distance (the log in float32, truncated toward zero, as torch does)."""
    relative = np.arange(key_length, dtype=np.int64)[None, :] - np.arange(query_length, dtype=np.int64)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    with np.errstate(divide="ignore"):  # log(0) at distance 0, a "small" distance whose log is not used
        log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact)) / np.float32(
            math.log(max_distance / max_exact))
    log_ratio = log_ratio * np.float32(half - max_exact)
    large = max_exact + np.where(np.isfinite(log_ratio), log_ratio, 0).astype(np.int64)
    large = np.minimum(large, half - 1)
    return buckets + np.where(distance < max_exact, distance, large)


def _padding_keep(attention_mask, batch: int, length: int) -> np.ndarray | None:
    """(B, L) 1 keep / 0 hide -> bool (B, L), or None when nothing is hidden (transformers then masks nothing)."""
    if attention_mask is None:
        return None
    am = attention_mask.asnumpy() if isinstance(attention_mask, Tensor) else np.asarray(attention_mask)
    if am.shape != (batch, length):
        raise ValueError(f"UMT5EncoderModel: attention_mask has shape {tuple(am.shape)}, expected {(batch, length)} "
                         "(batch, sequence) like input_ids")
    keep = am.astype(bool)
    return None if keep.all() else keep


def bias_index(length: int, num_buckets: int, max_distance: int, keep: np.ndarray | None) -> np.ndarray:
    """Rows of a block's bias table, (1|B) * L * L int32: the bucket of every (query, key) pair, or `num_buckets`
    (an extra row of float32 min) where the key is padding. One gather then builds position bias and padding mask
    together: transformers adds the mask (float32 min) to scores + bias, which rounds to the same float32 min (any
    |scores + bias| < 1e31 is below its rounding), so the softmax sees the same numbers. (On CPU a broadcasting add
    of a (B, 1, 1, L) mask to the (1, heads, L, L) bias cost 4x the gather.)"""
    buckets = relative_position_buckets(length, length, num_buckets, max_distance)
    if keep is None:
        return buckets.reshape(-1).astype(np.int32)
    return np.where(keep[:, None, :], buckets[None], num_buckets).reshape(-1).astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class UMT5LayerNorm(nn.Cell):
    """T5's RMS norm: x * rsqrt(mean(x^2) + eps) in float32, rounded to the weight's dtype if that is half
    precision, times the weight (no mean subtraction, no bias)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.variance_epsilon = float(eps)
        self.weight = _param((hidden_size,), "ones")

    def construct(self, hidden_states: Tensor) -> Tensor:
        y = rms_norm(hidden_states, self.weight, self.variance_epsilon)  # float32
        return backend.cast(y, self.weight.dtype) if self.weight.dtype in _HALF else y


class UMT5Attention(nn.Cell):
    """Self attention with a per-block relative position bias and no 1/sqrt(d) scaling:
    softmax(q k^T + bias + mask) v, heads * d_kv wide (not necessarily d_model)."""

    def __init__(self, d_model: int, d_kv: int, num_heads: int, num_buckets: int, max_distance: int):
        super().__init__()
        self.n_heads, self.key_value_proj_dim = num_heads, d_kv
        self.relative_attention_num_buckets, self.relative_attention_max_distance = num_buckets, max_distance
        self.inner_dim = num_heads * d_kv
        self.q = Linear(d_model, self.inner_dim, bias=False)
        self.k = Linear(d_model, self.inner_dim, bias=False)
        self.v = Linear(d_model, self.inner_dim, bias=False)
        self.o = Linear(self.inner_dim, d_model, bias=False)
        self.relative_attention_bias = Embedding(num_buckets, num_heads)
        self.mask_row = Tensor(np.full((1, num_heads), _MASK_VALUE, np.float32))  # constant, not a parameter

    def compute_bias(self, index: Tensor, rows: int, length: int) -> Tensor:
        """`bias_index` rows -> (rows, heads, L, L) float32 position bias (+ padding mask when rows == B)."""
        table = ops.cat([backend.cast(self.relative_attention_bias.weight, F32), self.mask_row], 0)  # (buckets+1, H)
        values = ops.gather(table, index, 0).reshape(rows, length * length, self.n_heads)
        return backend.permute(values, (0, 2, 1)).reshape(rows, self.n_heads, length, length)

    def construct(self, hidden_states: Tensor, index: Tensor, rows: int = 1):
        length = hidden_states.shape[1]
        # 1. scores' additive term: position bias [+ padding mask], (1|B, heads, L, L)
        bias = self.compute_bias(index, rows, length)
        # 2. softmax(q k^T + bias) v on (B, L, heads*d_kv), unscaled
        out = backend.attention_heads(self.q(hidden_states), self.k(hidden_states), self.v(hidden_states),
                                      self.n_heads, 1.0, bias)
        return self.o(out), None


class UMT5LayerSelfAttention(nn.Cell):
    def __init__(self, d_model, d_kv, num_heads, num_buckets, max_distance, eps):
        super().__init__()
        self.SelfAttention = UMT5Attention(d_model, d_kv, num_heads, num_buckets, max_distance)
        self.layer_norm = UMT5LayerNorm(d_model, eps)

    def construct(self, hidden_states: Tensor, index: Tensor, rows: int = 1) -> Tensor:
        attn, _ = self.SelfAttention(self.layer_norm(hidden_states), index, rows)
        return backend.add(hidden_states, backend.cast(attn, F32))  # residual stream float32


class UMT5DenseActDense(nn.Cell):
    """wo(act(wi(x)))."""

    def __init__(self, d_model: int, d_ff: int, act: str):
        super().__init__()
        self.act = _ACTIVATIONS[act]
        self.wi = Linear(d_model, d_ff, bias=False)
        self.wo = Linear(d_ff, d_model, bias=False)

    def construct(self, x: Tensor) -> Tensor:
        h = self.act(backend.cast(self.wi(x), F32))
        return self.wo(backend.cast(h, self.wo.weight.dtype))


class UMT5DenseGatedActDense(nn.Cell):
    """wo(act(wi_0(x)) * wi_1(x)), the product in float32 and fed to wo in wo's dtype (float32 in a half model)."""

    def __init__(self, d_model: int, d_ff: int, act: str):
        super().__init__()
        self.act = _ACTIVATIONS[act]
        self.wi_0 = Linear(d_model, d_ff, bias=False)
        self.wi_1 = Linear(d_model, d_ff, bias=False)
        self.wo = Linear(d_ff, d_model, bias=False)

    def construct(self, x: Tensor) -> Tensor:
        h = self.act(backend.cast(self.wi_0(x), F32)) * backend.cast(self.wi_1(x), F32)
        return self.wo(backend.cast(h, self.wo.weight.dtype))


class UMT5LayerFF(nn.Cell):
    def __init__(self, d_model: int, d_ff: int, act: str, gated: bool, eps: float):
        super().__init__()
        self.DenseReluDense = (UMT5DenseGatedActDense if gated else UMT5DenseActDense)(d_model, d_ff, act)
        self.layer_norm = UMT5LayerNorm(d_model, eps)

    def construct(self, hidden_states: Tensor) -> Tensor:
        out = self.DenseReluDense(self.layer_norm(hidden_states))
        return backend.add(hidden_states, backend.cast(out, F32))


class UMT5Block(nn.Cell):
    """`layer.0` self attention, `layer.1` feed-forward, each pre-norm with a residual."""

    def __init__(self, d_model, d_kv, d_ff, num_heads, num_buckets, max_distance, eps, act, gated):
        super().__init__()
        self.layer = nn.CellList([
            UMT5LayerSelfAttention(d_model, d_kv, num_heads, num_buckets, max_distance, eps),
            UMT5LayerFF(d_model, d_ff, act, gated, eps),
        ])

    def construct(self, hidden_states: Tensor, index: Tensor, rows: int = 1) -> Tensor:
        return self.layer[1](self.layer[0](hidden_states, index, rows))


class UMT5Stack(nn.Cell):
    """The encoder: blocks, then `final_layer_norm`. Takes the embedded tokens (the embedding is the model's
    `shared`, which transformers ties the stack's `embed_tokens` to)."""

    def __init__(self, num_layers, d_model, d_kv, d_ff, num_heads, num_buckets, max_distance, eps, act, gated):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.block = nn.CellList([
            UMT5Block(d_model, d_kv, d_ff, num_heads, num_buckets, max_distance, eps, act, gated)
            for _ in range(num_layers)
        ])
        self.final_layer_norm = UMT5LayerNorm(d_model, eps)

    def construct(self, inputs_embeds: Tensor, keep: np.ndarray | None = None, output_hidden_states: bool = False):
        """keep: (B, L) bool, False at padding keys, or None (nothing padded)."""
        length = inputs_embeds.shape[1]
        # 1. bias table rows, shared by every block (each has its own table): ((1|B) * L * L,)
        index = Tensor(bias_index(length, self.num_buckets, self.max_distance, keep))
        rows = 1 if keep is None else keep.shape[0]
        # 2. blocks on a float32 residual stream
        hidden_states = backend.cast(inputs_embeds, F32)
        all_states = [inputs_embeds]
        for block in self.block:
            hidden_states = block(hidden_states, index, rows)
            all_states.append(hidden_states)
        # 3. final norm (in the weights' dtype); transformers' hidden_states end with it instead of the last block
        last = self.final_layer_norm(hidden_states)
        if output_hidden_states:
            all_states[-1] = last
            return Output(last_hidden_state=last, hidden_states=tuple(all_states))
        return Output(last_hidden_state=last)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


class UMT5EncoderModel(ModelMixin):
    """construct(input_ids (B, L), attention_mask (B, L) 1 keep / 0 pad) -> Output(last_hidden_state (B, L, d_model)
    [, hidden_states: the embeddings, every block's output but the last, then last_hidden_state, as transformers])."""

    diffusers_class = "UMT5EncoderModel"
    config_library = "transformers"
    # transformers builds (and the encoder runs) with these null; num_decoder_layers' default already is None
    nullable_config = frozenset({"pad_token_id", "eos_token_id", "decoder_start_token_id"})
    _keep_in_fp32_modules = ("wo",)  # transformers': the feed-forward output projections stay float32 in a half model
    config_choices = {"feed_forward_proj": ("gated-gelu", "relu", "gelu", "gated-relu", "gated-silu")}

    def __init__(
        self,
        vocab_size: int = 250112,
        d_model: int = 512,
        d_kv: int = 64,
        d_ff: int = 1024,
        num_layers: int = 8,
        num_decoder_layers: int | None = None,
        num_heads: int = 6,
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        dropout_rate: float = 0.1,
        layer_norm_epsilon: float = 1e-6,
        initializer_factor: float = 1.0,
        feed_forward_proj: str = "gated-gelu",
        is_encoder_decoder: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = 0,
        eos_token_id: int | None = 1,
        decoder_start_token_id: int | None = 0,
        classifier_dropout: float = 0.0,
        is_decoder: bool = False,
    ):
        super().__init__()
        if is_decoder:
            raise ValueError("UMT5EncoderModel: config field 'is_decoder' is true (transformers would then build a "
                             "causal decoder stack with cross attention); expected false for a text encoder")
        half = int(relative_attention_num_buckets) // 2
        if half // 2 < 1 or relative_attention_max_distance <= half // 2:
            raise ValueError(
                f"UMT5EncoderModel: relative_attention_num_buckets={relative_attention_num_buckets} and "
                f"relative_attention_max_distance={relative_attention_max_distance} give no valid buckets (transformers' "
                "bucket formula divides by zero or yields negative buckets there); expected num_buckets >= 4 and max_distance > num_buckets // 4")
        act, gated = parse_feed_forward_proj(feed_forward_proj)
        self.vocab_size = int(vocab_size)
        self.shared = Embedding(vocab_size, d_model)
        self.encoder = UMT5Stack(num_layers, d_model, d_kv, d_ff, num_heads, relative_attention_num_buckets,
                                 relative_attention_max_distance, layer_norm_epsilon, act, gated)

    def _ids(self, input_ids) -> np.ndarray:
        ids = input_ids.asnumpy() if isinstance(input_ids, Tensor) else np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"UMT5EncoderModel: input_ids must be integers, got dtype {ids.dtype}")
        ids = ids.reshape(-1, ids.shape[-1]) if ids.ndim != 2 else ids
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValueError(f"UMT5EncoderModel: input_ids holds token id {bad}, outside the vocabulary "
                             f"[0, {self.vocab_size})")
        return ids

    def construct(self, input_ids, attention_mask=None, output_hidden_states: bool = False, return_dict: bool = True):
        ids = self._ids(input_ids)
        b, length = ids.shape
        # 1. embed: (B, L) -> (B, L, d_model)
        inputs_embeds = self.shared(Tensor(ids.astype(np.int32)))
        # 2. encode (padding keys masked; nothing to mask when every position is kept)
        out = self.encoder(inputs_embeds, _padding_keep(attention_mask, b, length), output_hidden_states)
        if not return_dict:
            return out.to_tuple()
        return out
