"""Stable Video Diffusion's denoiser (diffusers' `UNetSpatioTemporalConditionModel`)."""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .. import backend
from ..layers import Conv2d, GroupNorm, SiLU
from ..modeling import ModelMixin, Output, per_entry
from .embeddings import TimestepEmbedding, Timesteps, timesteps_1d
from .unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block, get_up_block


class UNetSpatioTemporalConditionModel(ModelMixin):
    """Video UNet: `sample` (B, F, C_in, H, W) noisy latents (with the image latents concatenated on channels),
    `timestep`, `encoder_hidden_states` (B, S, cross_attention_dim) image embeddings, `added_time_ids` (B, n)
    (fps, motion bucket, noise augmentation) -> (B, F, C_out, H, W)."""

    diffusers_class = "UNetSpatioTemporalConditionModel"
    # diffusers builds and runs with these null (the pipeline then needs num_frames passed)
    nullable_config = frozenset({"num_frames"})

    def __init__(self, sample_size: int | None = None, in_channels: int = 8, out_channels: int = 4,
                 down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                                   "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                 up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                                 "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                 block_out_channels=(320, 640, 1280, 1280), addition_time_embed_dim: int = 256,
                 projection_class_embeddings_input_dim: int = 768, layers_per_block=2, cross_attention_dim=1024,
                 transformer_layers_per_block=1, num_attention_heads=(5, 10, 20, 20), num_frames: int = 25):
        super().__init__()
        n = len(down_block_types)
        if len(up_block_types) != n:
            raise ValueError(f"UNetSpatioTemporalConditionModel: {n} down_block_types but {len(up_block_types)} up_block_types")
        if len(block_out_channels) != n:
            raise ValueError(f"UNetSpatioTemporalConditionModel: {len(block_out_channels)} block_out_channels for {n} blocks")
        self.sample_size = sample_size
        heads = per_entry(num_attention_heads, n, "num_attention_heads")
        cross_dims = per_entry(cross_attention_dim, n, "cross_attention_dim")
        layers = per_entry(layers_per_block, n, "layers_per_block")
        tlayers = [transformer_layers_per_block] * n if isinstance(transformer_layers_per_block, int) \
            else list(transformer_layers_per_block)

        # 1. input conv and time / added-time embeddings
        c0 = block_out_channels[0]
        time_embed_dim = c0 * 4
        self.conv_in = Conv2d(in_channels, c0, 3, padding=1)
        self.time_proj = Timesteps(c0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)

        # 2. down blocks
        down_blocks = []
        output_channel = c0
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=tlayers[i], in_channels=input_channel,
                out_channels=output_channel, temb_channels=time_embed_dim, add_downsample=i < n - 1,
                cross_attention_dim=cross_dims[i], num_attention_heads=heads[i]))
        self.down_blocks = nn.CellList(down_blocks)

        # 3. mid block
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1], temb_channels=time_embed_dim, transformer_layers_per_block=tlayers[-1],
            cross_attention_dim=cross_dims[-1], num_attention_heads=heads[-1])

        # 4. up blocks (mirror order; one extra resnet per level for the downsampler's skip)
        rev_channels = list(reversed(block_out_channels))
        rev_heads, rev_layers = list(reversed(heads)), list(reversed(layers))
        rev_cross, rev_tlayers = list(reversed(cross_dims)), list(reversed(tlayers))
        self.num_upsamplers = n - 1
        up_blocks = []
        output_channel = rev_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, rev_channels[i]
            input_channel = rev_channels[min(i + 1, n - 1)]
            up_blocks.append(get_up_block(
                block_type, num_layers=rev_layers[i] + 1, transformer_layers_per_block=rev_tlayers[i],
                in_channels=input_channel, out_channels=output_channel, prev_output_channel=prev_output_channel,
                temb_channels=time_embed_dim, add_upsample=i < n - 1, resolution_idx=i,
                cross_attention_dim=rev_cross[i], num_attention_heads=rev_heads[i]))
        self.up_blocks = nn.CellList(up_blocks)

        # 5. output head
        self.conv_norm_out = GroupNorm(32, c0, eps=1e-5)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(c0, out_channels, 3, padding=1)

    def construct(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict: bool = True):
        dtype = self.dtype
        sample = backend.to_tensor(sample, dtype)
        encoder_hidden_states = backend.to_tensor(encoder_hidden_states, dtype)
        batch_size, num_frames = sample.shape[0], sample.shape[1]
        # sizes not divisible by 2**num_upsamplers: upsample to the skip's size instead of x2
        up_factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])

        # 1. time embedding (fp32 sinusoid, then model dtype): (B,) -> (B, 4*C0)
        t_emb = self.time_proj(timesteps_1d(timestep, batch_size, "UNetSpatioTemporalConditionModel")).astype(dtype)
        emb = self.time_embedding(t_emb)
        # 2. added time ids: (B, n) -> (B*n, A) -> (B, n*A) -> (B, 4*C0)
        time_embeds = self.add_time_proj(backend.to_tensor(added_time_ids, ms.float32).reshape(-1))
        time_embeds = time_embeds.reshape(batch_size, -1).astype(emb.dtype)
        emb = emb + self.add_embedding(time_embeds)

        # 3. fold frames: (B, F, C, H, W) -> (B*F, C, H, W); repeat emb and context per frame
        sample = sample.reshape(batch_size * num_frames, *sample.shape[2:])
        emb = emb[:, None].broadcast_to((batch_size, num_frames, emb.shape[-1])).reshape(batch_size * num_frames, -1)
        s, d = encoder_hidden_states.shape[1], encoder_hidden_states.shape[2]
        encoder_hidden_states = encoder_hidden_states[:, None].broadcast_to((batch_size, num_frames, s, d))
        encoder_hidden_states = encoder_hidden_states.reshape(batch_size * num_frames, s, d)

        # 4. input conv: (B*F, C_in, H, W) -> (B*F, C0, H, W)
        sample = self.conv_in(sample)
        image_only_indicator = ops.zeros((batch_size, num_frames), sample.dtype)

        # 5. down path, collecting skips
        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res_samples = block(sample, emb, encoder_hidden_states, image_only_indicator)
            else:
                sample, res_samples = block(sample, emb, image_only_indicator)
            down_block_res_samples += res_samples

        # 6. mid block
        sample = self.mid_block(sample, emb, encoder_hidden_states, image_only_indicator)

        # 7. up path, consuming skips
        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            k = len(block.resnets)
            res_samples, down_block_res_samples = down_block_res_samples[-k:], down_block_res_samples[:-k]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = tuple(down_block_res_samples[-1].shape[2:])
            if getattr(block, "has_cross_attention", False):
                sample = block(sample, res_samples, emb, encoder_hidden_states, image_only_indicator, upsample_size)
            else:
                sample = block(sample, res_samples, emb, image_only_indicator, upsample_size)

        # 8. output head: (B*F, C0, H, W) -> (B*F, C_out, H, W)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))

        # 9. unfold frames: (B*F, C_out, H, W) -> (B, F, C_out, H, W)
        sample = sample.reshape(batch_size, num_frames, *sample.shape[1:])
        if not return_dict:
            return (sample,)
        return Output(sample=sample)
