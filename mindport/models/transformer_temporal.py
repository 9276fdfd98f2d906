"""Spatio-temporal transformer of Stable Video Diffusion (diffusers' `TransformerSpatioTemporalModel`)."""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn

from .. import backend
from ..layers import GroupNorm, Linear
from ..modeling import Output
from .attention import BasicTransformerBlock, TemporalBasicTransformerBlock
from .embeddings import TimestepEmbedding, Timesteps
from .resnet import AlphaBlender


class TransformerSpatioTemporalModel(nn.Cell):
    """Per layer: a spatial BasicTransformerBlock over each frame's H*W tokens, a TemporalBasicTransformerBlock over
    frames (tokens plus a frame-index embedding, cross-attending to each video's first-frame context), blended by
    an AlphaBlender. Input and output are (B*F, C, H, W), with a residual around the whole model."""

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int = 320,
                 out_channels: int | None = None, num_layers: int = 1, cross_attention_dim: int | None = None):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        inner_dim = num_attention_heads * attention_head_dim
        self.inner_dim = inner_dim
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels

        self.norm = GroupNorm(32, in_channels, eps=1e-6)
        self.proj_in = Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim,
                                  cross_attention_dim=cross_attention_dim)
            for _ in range(num_layers)
        ])
        self.temporal_transformer_blocks = nn.CellList([
            TemporalBasicTransformerBlock(inner_dim, inner_dim, num_attention_heads, attention_head_dim,
                                          cross_attention_dim=cross_attention_dim)
            for _ in range(num_layers)
        ])
        self.time_pos_embed = TimestepEmbedding(in_channels, in_channels * 4, out_dim=in_channels)
        self.time_proj = Timesteps(in_channels, True, 0)
        self.time_mixer = AlphaBlender(alpha=0.5, merge_strategy="learned_with_images")
        self.proj_out = Linear(inner_dim, in_channels)

    def construct(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                  image_only_indicator: Tensor | None = None, return_dict: bool = True):
        bf, _, height, width = hidden_states.shape
        num_frames = image_only_indicator.shape[-1]
        b = bf // num_frames

        # 1. temporal context = each video's first-frame context, per pixel:
        #    (B*F, S, D) -> (B, F, S, D)[:, 0] -> (B, H*W, S, D) -> (B*H*W, S, D)
        ctx = encoder_hidden_states
        seq, dim = ctx.shape[-2], ctx.shape[-1]
        time_context = ctx.reshape(b, num_frames, seq, dim)[:, 0]
        time_context = time_context[:, None].broadcast_to((b, height * width, seq, dim)).reshape(b * height * width, seq, dim)

        # 2. norm + tokens: (B*F, C, H, W) -> (B*F, H*W, C) -> (B*F, H*W, inner)
        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        channels = hidden_states.shape[1]
        hidden_states = backend.permute(hidden_states, (0, 2, 3, 1)).reshape(bf, height * width, channels)
        hidden_states = self.proj_in(hidden_states)

        # 3. frame-index embedding: (B*F,) -> (B*F, C) -> (B*F, 1, C)
        frame_ids = np.tile(np.arange(num_frames, dtype=np.float32), b)
        t_emb = self.time_proj(Tensor(frame_ids)).astype(hidden_states.dtype)
        emb = self.time_pos_embed(t_emb)[:, None, :]

        # 4. spatial block, temporal block, blend
        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)
            hidden_states_mix = temporal_block(hidden_states + emb, num_frames, time_context)
            hidden_states = self.time_mixer(hidden_states, hidden_states_mix, image_only_indicator)

        # 5. back to maps + residual: (B*F, H*W, inner) -> (B*F, C, H, W)
        hidden_states = self.proj_out(hidden_states)
        hidden_states = backend.permute(hidden_states.reshape(bf, height, width, channels), (0, 3, 1, 2))
        output = backend.add(hidden_states, residual)
        if not return_dict:
            return (output,)
        return Output(sample=output)


class TransformerTemporalModel(nn.Cell):
    """Transformer across frames (diffusers' `TransformerTemporalModel`, used by I2VGen-XL, and, returning the tensor
    itself, AnimateDiff's `AnimateDiffTransformer3D`): every pixel's F frames form one sequence. GroupNorm (eps 1e-6)
    over (B, C, F, H, W), `proj_in` to num_attention_heads * attention_head_dim, BasicTransformerBlocks (two
    self-attentions by default: `double_self_attention`; AnimateDiff adds sinusoidal frame positions before each
    attention), `proj_out`, residual. Input and output are (B*F, C, H, W)."""

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int | None = None,
                 out_channels: int | None = None, num_layers: int = 1, dropout: float = 0.0,
                 norm_num_groups: int = 32, cross_attention_dim: int | None = None, attention_bias: bool = False,
                 sample_size: int | None = None, activation_fn: str = "geglu", norm_elementwise_affine: bool = True,
                 double_self_attention: bool = True, positional_embeddings: str | None = None,
                 num_positional_embeddings: int | None = None):
        super().__init__()
        if in_channels is None:
            raise ValueError(f"{type(self).__name__}: in_channels must be given (continuous inputs only)")
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.num_positional_embeddings = num_positional_embeddings

        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                                  attention_bias=attention_bias, double_self_attention=double_self_attention,
                                  norm_elementwise_affine=norm_elementwise_affine,
                                  positional_embeddings=positional_embeddings,
                                  num_positional_embeddings=num_positional_embeddings)
            for _ in range(num_layers)
        ])
        self.proj_out = Linear(inner_dim, in_channels)

    def attend_frames(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None, num_frames: int) -> Tensor:
        """(B*F, C, H, W) -> (B*F, C, H, W): the whole module (both classes' forward)."""
        bf, channel, height, width = hidden_states.shape
        if num_frames < 1 or bf % num_frames:
            raise ValueError(f"{type(self).__name__}: batch*frames={bf} is not a multiple of num_frames={num_frames}")
        if self.num_positional_embeddings is not None and num_frames > self.num_positional_embeddings:
            raise ValueError(f"{type(self).__name__}: num_frames={num_frames} exceeds the module's max sequence "
                             f"length {self.num_positional_embeddings}")
        b = bf // num_frames
        residual = hidden_states

        # 1. frames to the channel-first video: (B*F, C, H, W) -> (B, C, F, H, W), GroupNorm over C groups x F x H x W
        hidden_states = backend.permute(hidden_states.reshape(b, num_frames, channel, height, width), (0, 2, 1, 3, 4))
        hidden_states = self.norm(hidden_states)
        # 2. one sequence of frames per pixel: (B, C, F, H, W) -> (B, H, W, F, C) -> (B*H*W, F, C) -> inner
        hidden_states = backend.permute(hidden_states, (0, 3, 4, 2, 1)).reshape(b * height * width, num_frames, channel)
        hidden_states = self.proj_in(hidden_states)

        # 3. transformer blocks over frames
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)

        # 4. back: (B*H*W, F, C) -> (B, H, W, F, C) -> (B, F, C, H, W) -> (B*F, C, H, W), + residual
        hidden_states = self.proj_out(hidden_states)
        hidden_states = backend.permute(hidden_states.reshape(b, height, width, num_frames, channel), (0, 3, 4, 1, 2))
        return backend.add(hidden_states.reshape(bf, channel, height, width), residual)

    def construct(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None, timestep=None,
                  class_labels=None, num_frames: int = 1, cross_attention_kwargs: dict | None = None,
                  return_dict: bool = True):
        output = self.attend_frames(hidden_states, encoder_hidden_states, num_frames)
        if not return_dict:
            return (output,)
        return Output(sample=output)
