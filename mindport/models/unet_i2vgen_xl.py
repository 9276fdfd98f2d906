"""I2VGen-XL's conditional 3D UNet (diffusers' `I2VGenXLUNet`), on MindSpore.

Conditioning, as diffusers wires it:
- timestep and target fps: sinusoidal `time_proj` (cos first, shift 0), then `time_embedding` and `fps_embedding`,
  summed and repeated per frame;
- cross-attention context per video: the text hidden states, 64 tokens from the first frame's image latents
  (`image_latents_context_embedding`: conv, adaptive average pool to 32x32 - shrinking or enlarging - and two
  stride-2 convs), and `in_channels` tokens from the CLIP image embedding (`context_embedding`);
- the image latents of every frame, encoded by `image_latents_proj_in` (convs) and
  `image_latents_temporal_encoder` (attention over frames per pixel), concatenated to the noisy sample's channels.
The body is `conv_in`, a temporal transformer (`transformer_in`) and 3D down / mid / up blocks
(see unet_3d_blocks.py). Samples are (B, C, F, H, W) in and out.
"""

from __future__ import annotations

import warnings

from mindspore import Tensor, nn, ops

from .. import backend
from ..layers import Conv2d, GroupNorm, LayerNorm, Linear, get_activation
from ..modeling import ModelMixin, Output
from .attention import Attention, FeedForward
from .embeddings import TimestepEmbedding, Timesteps, timesteps_1d
from .transformer_temporal import TransformerTemporalModel
from .unet_3d_blocks import UNetMidBlock3DCrossAttn, get_down_block, get_up_block

CONTEXT_POOL_SIZE = (32, 32)  # the image-latent context is pooled to 32x32, then strided down twice to 8x8 tokens


class AdaptiveAvgPool2d(nn.Cell):
    """Parameter-free `nn.AdaptiveAvgPool2d` (kept as a cell so `image_latents_context_embedding.2` exists)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = tuple(output_size)

    def construct(self, x: Tensor) -> Tensor:
        return backend.adaptive_avg_pool2d(x, self.output_size)


class I2VGenXLTransformerTemporalEncoder(nn.Cell):
    """Pre-norm self-attention over frames, then a feed-forward without a norm in front; both residual.
    Input and output are (B*H*W, F, C)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, activation_fn: str = "geglu",
                 upcast_attention: bool = False, ff_inner_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads=num_attention_heads, dim_head=attention_head_dim, bias=False,
                               upcast_attention=upcast_attention, out_bias=True)
        self.ff = FeedForward(dim, activation_fn=activation_fn, inner_dim=ff_inner_dim, bias=True)

    def construct(self, hidden_states: Tensor) -> Tensor:
        # 1. self-attention over frames: (N, F, C)
        hidden_states = self.attn1(self.norm1(hidden_states)) + hidden_states
        # 2. feed-forward (no norm in front, as diffusers)
        return self.ff(hidden_states) + hidden_states




class I2VGenXLUNet(ModelMixin):
    diffusers_class = "I2VGenXLUNet"

    def __init__(self, sample_size: int | None = None, in_channels: int = 4, out_channels: int = 4,
                 down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                   "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block: int = 2,
                 norm_num_groups: int | None = 32, cross_attention_dim: int = 1024, attention_head_dim=64,
                 num_attention_heads=None):
        super().__init__()
        # 0. checks; as in diffusers, `attention_head_dim` is used as the number of heads (num_attention_heads unused)
        num_attention_heads = attention_head_dim
        if len(down_block_types) != len(up_block_types):
            raise ValueError(f"I2VGenXLUNet: {len(down_block_types)} down_block_types but {len(up_block_types)} "
                             "up_block_types; expected the same number")
        if len(block_out_channels) != len(down_block_types):
            raise ValueError(f"I2VGenXLUNet: {len(block_out_channels)} block_out_channels but {len(down_block_types)} "
                             "down_block_types; expected one per block")
        if not isinstance(num_attention_heads, int):
            # diffusers builds transformer_in with attention_head_dim=<this value>, which fails for a tuple
            raise ValueError(f"I2VGenXLUNet: attention_head_dim must be an int (diffusers' transformer_in uses it as a "
                             f"head size), got {attention_head_dim!r}")
        if norm_num_groups is None:
            raise NotImplementedError("I2VGenXLUNet: norm_num_groups=None is not ported; expected an int")
        self.in_channels = in_channels
        self.cross_attention_dim = cross_attention_dim
        boc = tuple(block_out_channels)
        time_embed_dim = boc[0] * 4

        # 1. input: noisy latents ++ encoded image latents, then a temporal transformer
        self.conv_in = Conv2d(in_channels + in_channels, boc[0], 3, padding=1)
        self.transformer_in = TransformerTemporalModel(num_attention_heads=8, attention_head_dim=num_attention_heads,
                                                       in_channels=boc[0], num_layers=1,
                                                       norm_num_groups=norm_num_groups)

        # 2. image-latent encoders (the first conv of each takes the VAE's 4 latent channels)
        self.image_latents_proj_in = nn.SequentialCell([
            Conv2d(4, in_channels * 4, 3, padding=1), get_activation("silu"),
            Conv2d(in_channels * 4, in_channels * 4, 3, padding=1), get_activation("silu"),
            Conv2d(in_channels * 4, in_channels, 3, padding=1),
        ])
        self.image_latents_temporal_encoder = I2VGenXLTransformerTemporalEncoder(
            dim=in_channels, num_attention_heads=2, ff_inner_dim=in_channels * 4, attention_head_dim=in_channels,
            activation_fn="gelu")
        self.image_latents_context_embedding = nn.SequentialCell([
            Conv2d(4, in_channels * 8, 3, padding=1), get_activation("silu"),
            AdaptiveAvgPool2d(CONTEXT_POOL_SIZE),
            Conv2d(in_channels * 8, in_channels * 16, 3, stride=2, padding=1), get_activation("silu"),
            Conv2d(in_channels * 16, cross_attention_dim, 3, stride=2, padding=1),
        ])

        # 3. timestep, fps and CLIP image embeddings
        self.time_proj = Timesteps(boc[0], True, 0)
        self.time_embedding = TimestepEmbedding(boc[0], time_embed_dim, act_fn="silu")
        self.context_embedding = nn.SequentialCell([
            Linear(cross_attention_dim, time_embed_dim), get_activation("silu"),
            Linear(time_embed_dim, cross_attention_dim * in_channels),
        ])
        self.fps_embedding = nn.SequentialCell([
            Linear(boc[0], time_embed_dim), get_activation("silu"), Linear(time_embed_dim, time_embed_dim),
        ])

        # 4. down blocks
        heads = (num_attention_heads,) * len(down_block_types)
        down_blocks = []
        output_channel = boc[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, boc[i]
            down_blocks.append(get_down_block(
                block_type, num_layers=layers_per_block, in_channels=input_channel, out_channels=output_channel,
                temb_channels=time_embed_dim, add_downsample=i < len(boc) - 1, resnet_eps=1e-5,
                resnet_act_fn="silu", resnet_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
                num_attention_heads=heads[i], downsample_padding=1, dual_cross_attention=False))
        self.down_blocks = nn.CellList(down_blocks)

        # 5. mid block
        self.mid_block = UNetMidBlock3DCrossAttn(
            in_channels=boc[-1], temb_channels=time_embed_dim, resnet_eps=1e-5, resnet_act_fn="silu",
            output_scale_factor=1, cross_attention_dim=cross_attention_dim, num_attention_heads=heads[-1],
            resnet_groups=norm_num_groups, dual_cross_attention=False)

        # 6. up blocks (one more layer than the down blocks: they also take the down blocks' downsampled outputs)
        reversed_boc, reversed_heads = list(reversed(boc)), list(reversed(heads))
        up_blocks = []
        self.num_upsamplers = 0
        output_channel = reversed_boc[0]
        for i, block_type in enumerate(up_block_types):
            is_final = i == len(boc) - 1
            prev_output_channel, output_channel = output_channel, reversed_boc[i]
            input_channel = reversed_boc[min(i + 1, len(boc) - 1)]
            self.num_upsamplers += 0 if is_final else 1
            up_blocks.append(get_up_block(
                block_type, num_layers=layers_per_block + 1, in_channels=input_channel, out_channels=output_channel,
                prev_output_channel=prev_output_channel, temb_channels=time_embed_dim, add_upsample=not is_final,
                resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=norm_num_groups,
                cross_attention_dim=cross_attention_dim, num_attention_heads=reversed_heads[i],
                dual_cross_attention=False, resolution_idx=i))
        self.up_blocks = nn.CellList(up_blocks)

        # 7. output
        self.conv_norm_out = GroupNorm(norm_num_groups, boc[0], eps=1e-5)
        self.conv_act = get_activation("silu")
        self.conv_out = Conv2d(boc[0], out_channels, 3, padding=1)

    # -- conditioning ----------------------------------------------------------------------------------------------
    def _embed_time(self, timestep, fps, batch: int, timestep_cond) -> Tensor:
        """(B, time_embed_dim): time_embedding(time_proj(t)) + fps_embedding(time_proj(fps))."""
        timesteps = timesteps_1d(timestep, batch, "I2VGenXLUNet", "timestep")
        timesteps = ops.broadcast_to(timesteps, (batch,))
        t_emb = self.time_proj(timesteps).astype(self.dtype)
        if timestep_cond is not None:
            timestep_cond = backend.to_tensor(timestep_cond, self.dtype)
        t_emb = self.time_embedding(t_emb, timestep_cond)
        fps_emb = self.fps_embedding(self.time_proj(timesteps_1d(fps, batch, "I2VGenXLUNet", "fps")).astype(self.dtype))
        return t_emb + fps_emb

    def _context(self, encoder_hidden_states: Tensor, image_latents: Tensor, image_embeddings: Tensor) -> Tensor:
        """(B, L_text + 64 + in_channels, D): text tokens, first-frame image-latent tokens, CLIP image tokens."""
        # 1. first frame's image latents -> pooled conv features -> tokens: (B, C, 1, H, W) -> (B, h*w, D)
        first = image_latents[:, :, 0]
        ctx_img = self.image_latents_context_embedding(first)
        b, d, h, w = ctx_img.shape
        ctx_img = backend.permute(ctx_img, (0, 2, 3, 1)).reshape(b, h * w, d)
        # 2. CLIP image embedding -> in_channels tokens: (B, 1, D) -> (B, 1, D*in) -> (B, in, D)
        image_emb = self.context_embedding(image_embeddings)
        image_emb = image_emb.reshape(-1, self.in_channels, self.cross_attention_dim)
        return ops.cat([encoder_hidden_states.astype(ctx_img.dtype), ctx_img, image_emb], axis=1)

    def _encode_image_latents(self, image_latents: Tensor, batch: int, num_frames: int, channels: int,
                              height: int, width: int) -> Tensor:
        """(B, 4, F, H, W) -> (B, C, F, H, W): per-frame convs, then attention over frames per pixel."""
        # 1. per frame: (B, 4, F, H, W) -> (B*F, 4, H, W) -> (B*F, C, H, W)
        c_img = image_latents.shape[1]
        x = backend.permute(image_latents, (0, 2, 1, 3, 4)).reshape(batch * num_frames, c_img, height, width)
        x = self.image_latents_proj_in(x)
        # 2. per pixel over frames: (B, F, C, H, W) -> (B, H, W, F, C) -> (B*H*W, F, C)
        x = backend.permute(x.reshape(batch, num_frames, channels, height, width), (0, 3, 4, 1, 2))
        x = self.image_latents_temporal_encoder(x.reshape(batch * height * width, num_frames, channels))
        # 3. back: (B*H*W, F, C) -> (B, H, W, F, C) -> (B, C, F, H, W)
        return backend.permute(x.reshape(batch, height, width, num_frames, channels), (0, 4, 3, 1, 2))

    def construct(self, sample, timestep, fps, image_latents, image_embeddings=None, encoder_hidden_states=None,
                  timestep_cond=None, cross_attention_kwargs=None, return_dict: bool = True):
        if cross_attention_kwargs and "scale" in cross_attention_kwargs:
            warnings.warn("I2VGenXLUNet: cross_attention_kwargs['scale'] is ignored, as in diffusers (its I2VGen-XL "
                          "UNet does not scale LoRA layers); set a LoRA's strength with set_adapters(names, "
                          "adapter_weights)", stacklevel=2)
        if image_embeddings is None or encoder_hidden_states is None:
            missing = [n for n, v in (("image_embeddings", image_embeddings),
                                      ("encoder_hidden_states", encoder_hidden_states)) if v is None]
            raise ValueError(f"I2VGenXLUNet: {', '.join(missing)} must be given (diffusers requires them too)")
        dtype = self.dtype
        sample = backend.to_tensor(sample, dtype)
        image_latents = backend.to_tensor(image_latents, dtype)
        image_embeddings = backend.to_tensor(image_embeddings, dtype)
        encoder_hidden_states = backend.to_tensor(encoder_hidden_states, dtype)
        if sample.ndim != 5:
            raise ValueError(f"I2VGenXLUNet: sample must be (B, C, F, H, W), got shape {tuple(sample.shape)}")
        batch, channels, num_frames, height, width = sample.shape
        if tuple(image_latents.shape[2:]) != (num_frames, height, width):
            raise ValueError(f"I2VGenXLUNet: image_latents has shape {tuple(image_latents.shape)}; expected "
                             f"(B, 4, {num_frames}, {height}, {width}) to match sample {tuple(sample.shape)}")
        # sizes not divisible by 2**num_upsamplers: upsample to the skip connections' sizes
        factor = 2**self.num_upsamplers
        forward_upsample_size = height % factor != 0 or width % factor != 0

        # 1. time + fps embedding, per frame: (B, T) -> (B*F, T)
        emb = self._embed_time(timestep, fps, batch, timestep_cond)
        emb = ops.repeat_interleave(emb, num_frames, 0)

        # 2. cross-attention context, per frame: (B, L, D) -> (B*F, L, D)
        context_emb = self._context(encoder_hidden_states, image_latents, image_embeddings)
        context_emb = ops.repeat_interleave(context_emb, num_frames, 0)

        # 3. image latents encoded and concatenated to the sample: (B, 2C, F, H, W) -> (B*F, 2C, H, W)
        image_latents = self._encode_image_latents(image_latents, batch, num_frames, channels, height, width)
        sample = ops.cat([sample, image_latents], axis=1)
        sample = backend.permute(sample, (0, 2, 1, 3, 4)).reshape(batch * num_frames, 2 * channels, height, width)

        # 4. conv_in + temporal transformer: (B*F, C0, H, W)
        sample = self.conv_in(sample)
        sample = self.transformer_in(sample, num_frames=num_frames, return_dict=False)[0]

        # 5. down
        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(sample, emb, encoder_hidden_states=context_emb, num_frames=num_frames)
            else:
                sample, res = block(sample, emb, num_frames=num_frames)
            down_block_res_samples += res

        # 6. mid
        sample = self.mid_block(sample, emb, encoder_hidden_states=context_emb, num_frames=num_frames)

        # 7. up, each block taking its skips off the end
        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res = down_block_res_samples[-n:]
            down_block_res_samples = down_block_res_samples[:-n]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = tuple(down_block_res_samples[-1].shape[2:])
            if getattr(block, "has_cross_attention", False):
                sample = block(sample, res, emb, encoder_hidden_states=context_emb, upsample_size=upsample_size,
                               num_frames=num_frames)
            else:
                sample = block(sample, res, emb, upsample_size=upsample_size, num_frames=num_frames)

        # 8. output: (B*F, C, H, W) -> (B, F, C, H, W) -> (B, C, F, H, W)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        sample = backend.permute(sample.reshape(batch, num_frames, *sample.shape[1:]), (0, 2, 1, 3, 4))
        if not return_dict:
            return (sample,)
        return Output(sample=sample)


__all__ = ["AdaptiveAvgPool2d", "I2VGenXLTransformerTemporalEncoder", "I2VGenXLUNet"]
