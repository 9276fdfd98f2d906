"""Timestep and positional embeddings (diffusers' `Timesteps`, `TimestepEmbedding`, `SinusoidalPositionalEmbedding`)."""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from ..layers import Linear, get_activation


def timestep_frequencies(embedding_dim: int, downscale_freq_shift: float = 1.0, max_period: int = 10000) -> np.ndarray:
    """exp(-log(max_period) * i / (half - shift)) for i < half: the exponent in float32 step by step as diffusers does,
    the exp correctly rounded (numpy's float32 exp is off by an ulp more often than torch's; x999 timesteps show it)."""
    half = embedding_dim // 2
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
    exponent = exponent / np.float32(half - downscale_freq_shift)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def get_timestep_embedding(timesteps, embedding_dim: int, flip_sin_to_cos: bool = False,
                           downscale_freq_shift: float = 1.0, scale: float = 1.0, max_period: int = 10000) -> Tensor:
    """Sinusoidal embedding of a 1-D array of (possibly fractional) timesteps: (N,) -> (N, embedding_dim), float32.
    Layout [sin | cos], or [cos | sin] with `flip_sin_to_cos`; odd dims get a zero column at the end."""
    # a handful of values: computed on the host (each MindSpore op launch costs more than all of this math)
    t = (timesteps.asnumpy() if isinstance(timesteps, Tensor) else np.asarray(timesteps)).astype(np.float32)
    if t.ndim != 1:
        raise ValueError(f"get_timestep_embedding: timesteps must be 1-D, got shape {tuple(t.shape)}")
    # 1. angles in float32 as diffusers computes them: (N, 1) * (1, half) -> (N, half), times `scale`
    freqs = timestep_frequencies(embedding_dim, downscale_freq_shift, max_period)
    emb = (t[:, None] * freqs[None, :]) * np.float32(scale)
    # 2. [sin | cos] or [cos | sin], each correctly rounded to float32: (N, 2*half)
    sin, cos = np.sin(emb.astype(np.float64)), np.cos(emb.astype(np.float64))
    emb = np.concatenate((cos, sin) if flip_sin_to_cos else (sin, cos), axis=-1).astype(np.float32)
    # 3. odd dims: zero column
    if embedding_dim % 2 == 1:
        emb = np.concatenate([emb, np.zeros((emb.shape[0], 1), np.float32)], axis=-1)
    return Tensor(emb)


class Timesteps(nn.Cell):
    """(N,) timesteps -> (N, num_channels) float32 sinusoidal embedding (no parameters)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def construct(self, timesteps: Tensor) -> Tensor:
        return get_timestep_embedding(timesteps, self.num_channels, self.flip_sin_to_cos, self.downscale_freq_shift,
                                      self.scale)


class TimestepEmbedding(nn.Cell):
    """MLP on a timestep embedding: [cond_proj] -> linear_1 -> act -> linear_2 -> [post_act]."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int | None = None,
                 post_act_fn: str | None = None, cond_proj_dim: int | None = None, sample_proj_bias: bool = True):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim, bias=sample_proj_bias)
        self.cond_proj = Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn) if act_fn is not None else None
        self.linear_2 = Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim, bias=sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def construct(self, sample: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        sample = self.linear_1(sample)
        if self.act is not None:
            sample = self.act(sample)
        sample = self.linear_2(sample)
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


class SinusoidalPositionalEmbedding(nn.Cell):
    """Adds interleaved sin/cos positions to (B, L, D). `pe` (1, max_seq_length, D) is a constant, not a parameter:
    diffusers saves it as a buffer (`pos_embed.pe`), which a converter may drop since it is recomputed here."""

    def __init__(self, embed_dim: int, max_seq_length: int = 32):
        super().__init__()
        position = np.arange(max_seq_length, dtype=np.float32)[:, None]
        div_term = np.exp(np.arange(0, embed_dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / embed_dim))
        pe = np.zeros((1, max_seq_length, embed_dim), np.float32)
        pe[0, :, 0::2] = np.sin(position * div_term)
        pe[0, :, 1::2] = np.cos(position * div_term)
        self.pe = Tensor(pe)

    def construct(self, x: Tensor) -> Tensor:
        return x + self.pe[:, : x.shape[1]].astype(x.dtype)


def timesteps_1d(value, batch_size: int, owner: str, name: str = "timestep") -> Tensor:
    """A timestep-like value (python / numpy scalar or array, ms Tensor) -> float32 (batch_size,); a single value is
    broadcast over the batch, as diffusers' UNets do."""
    t = value if isinstance(value, Tensor) else Tensor(np.asarray(value, dtype=np.float64))
    t = t.astype(ms.float32).reshape(-1)
    if t.shape[0] == 1 and batch_size != 1:
        t = t.broadcast_to((batch_size,))
    if t.shape[0] != batch_size:
        raise ValueError(f"{owner}: got {t.shape[0]} values of `{name}` for batch size {batch_size}")
    return t
