"""The Stable Diffusion denoiser (diffusers' `UNet2DConditionModel`), for the SD 1.x / 2.x family.

Ported options: positional time embeddings (time_embedding_dim, time_embedding_act_fn, timestep_post_act,
time_cond_proj_dim), class embeddings (num_class_embeds, "timestep", "identity", "projection", "simple_projection",
class_embeddings_concat), addition_embed_type "text_time" (SDXL), encoder_hid_dim_type "text_proj", conv_in/out
kernels, center_input_sample, per-block heads / cross_attention_dim / layers / transformer layers (also asymmetric
with reverse_transformer_layers_per_block), ControlNet and T2I-Adapter residuals. Everything else raises
NotImplementedError naming the option."""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops

from .. import backend
from ..layers import Conv2d, Embedding, GroupNorm, Identity, Linear, get_activation
from ..modeling import ModelMixin, Output, per_entry
from .embeddings import TimestepEmbedding, Timesteps, timesteps_1d
from .unet_2d_blocks import (
    MID_BLOCK_TYPES,
    UNetMidBlock2DCrossAttn,
    get_down_block,
    get_up_block,
)

CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection", "simple_projection")
ADDITION_EMBED_TYPES = (None, "text_time")
ENCODER_HID_DIM_TYPES = (None, "text_proj")






def _keep_mask_to_bias(mask, dtype) -> Tensor | None:
    """(B, L) keep-mask (1 keep / 0 discard) -> (B, 1, L) additive bias (0 / -10000), as diffusers' UNet does."""
    if mask is None:
        return None
    mask = backend.to_tensor(mask).astype(dtype)
    return ((1 - mask) * -10000.0)[:, None]


class UNet2DConditionModel(ModelMixin):
    """`sample` (B, C_in, H, W) noisy latents, `timestep` (scalar or (B,)), `encoder_hidden_states` (B, S, D) text
    embeddings -> Output(sample=(B, C_out, H, W)). Config fields and defaults as diffusers (SD 1.x defaults)."""

    diffusers_class = "UNet2DConditionModel"
    # non-None defaults diffusers builds and runs with when null: switches read as off (as `if x:` does there),
    # mid_block_type null means no mid block, attention_type null the default attention; resnet_skip_time_act,
    # resnet_out_scale_factor and addition_embed_type_num_heads only serve blocks / embeddings that are not ported
    nullable_config = frozenset({"center_input_sample", "flip_sin_to_cos", "mid_block_type", "dual_cross_attention",
                                 "use_linear_projection", "upcast_attention", "resnet_skip_time_act",
                                 "resnet_out_scale_factor", "attention_type", "class_embeddings_concat",
                                 "addition_embed_type_num_heads"})
    config_choices = {"resnet_time_scale_shift": ("default", "scale_shift"), "time_embedding_type": ("positional",),
                      "act_fn": ("silu", "swish", "gelu")}

    def __init__(self, sample_size=None, in_channels: int = 4, out_channels: int = 4,
                 center_input_sample: bool = False, flip_sin_to_cos: bool = True, freq_shift: int = 0,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 downsample_padding: int = 1, mid_block_scale_factor: float = 1, dropout: float = 0.0,
                 act_fn: str = "silu", norm_num_groups: int | None = 32, norm_eps: float = 1e-5,
                 cross_attention_dim=1280, transformer_layers_per_block=1, reverse_transformer_layers_per_block=None,
                 encoder_hid_dim: int | None = None, encoder_hid_dim_type: str | None = None, attention_head_dim=8,
                 num_attention_heads=None, dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 class_embed_type: str | None = None, addition_embed_type: str | None = None,
                 addition_time_embed_dim: int | None = None, num_class_embeds: int | None = None,
                 upcast_attention: bool = False, resnet_time_scale_shift: str = "default",
                 resnet_skip_time_act: bool = False, resnet_out_scale_factor: float = 1.0,
                 time_embedding_type: str = "positional", time_embedding_dim: int | None = None,
                 time_embedding_act_fn: str | None = None, timestep_post_act: str | None = None,
                 time_cond_proj_dim: int | None = None, conv_in_kernel: int = 3, conv_out_kernel: int = 3,
                 projection_class_embeddings_input_dim: int | None = None, attention_type: str = "default",
                 class_embeddings_concat: bool = False, mid_block_only_cross_attention: bool | None = None,
                 cross_attention_norm: str | None = None, addition_embed_type_num_heads: int = 64):
        super().__init__()
        # 0. nulls that mean a default (as diffusers reads them); refuse what is not ported; check list lengths
        #    (diffusers' _check_config)
        attention_type = "default" if attention_type is None else attention_type
        dual_cross_attention = bool(dual_cross_attention)
        n = len(down_block_types)
        self._refuse_unported(time_embedding_type, class_embed_type, addition_embed_type, encoder_hid_dim,
                              encoder_hid_dim_type, mid_block_type, dual_cross_attention, attention_type)
        if num_attention_heads is not None:
            raise ValueError(
                "UNet2DConditionModel: num_attention_heads must be None (diffusers' naming issue #2011: the number "
                f"of heads is read from attention_head_dim); got num_attention_heads={num_attention_heads!r}"
            )
        if len(up_block_types) != n:
            raise ValueError(f"UNet2DConditionModel: {n} down_block_types {list(down_block_types)} but "
                             f"{len(up_block_types)} up_block_types {list(up_block_types)}")
        if len(block_out_channels) != n:
            raise ValueError(f"UNet2DConditionModel: block_out_channels={list(block_out_channels)} has "
                             f"{len(block_out_channels)} entries for {n} down blocks")
        asymmetric = isinstance(transformer_layers_per_block, (list, tuple)) and any(
            isinstance(x, (list, tuple)) for x in transformer_layers_per_block)
        if asymmetric and reverse_transformer_layers_per_block is None:
            raise ValueError("UNet2DConditionModel: per-layer transformer_layers_per_block (asymmetric UNet) "
                             "needs reverse_transformer_layers_per_block")
        self.sample_size = sample_size
        self.center_input_sample = center_input_sample
        self.class_embed_type = class_embed_type
        self.class_embeddings_concat = class_embeddings_concat
        self.addition_embed_type = addition_embed_type

        heads = per_entry(attention_head_dim, n, "attention_head_dim")  # number of heads (see above)
        attn_levels = [i for i, t in enumerate(down_block_types) if "CrossAttn" in t]
        attn_levels += [n - 1] if mid_block_type is not None else []
        attn_levels += [n - 1 - i for i, t in enumerate(up_block_types) if "CrossAttn" in t]
        for i in sorted(set(attn_levels)):
            if heads[i] is None:
                raise ValueError(f"UNet2DConditionModel: attention_head_dim[{i}] is null, but level {i} has attention; "
                                 "expected the number of heads there (an integer)")
        cross_dims = per_entry(cross_attention_dim, n, "cross_attention_dim")
        layers = per_entry(layers_per_block, n, "layers_per_block")
        tlayers = per_entry(transformer_layers_per_block, n, "transformer_layers_per_block")
        only_cross = per_entry(only_cross_attention, n, "only_cross_attention")

        # 1. input conv
        c0 = block_out_channels[0]
        self.conv_in = Conv2d(in_channels, c0, conv_in_kernel, padding=(conv_in_kernel - 1) // 2)

        # 2. time embedding (positional sinusoid -> MLP)
        time_embed_dim = time_embedding_dim or c0 * 4
        self.time_proj = Timesteps(c0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(c0, time_embed_dim, act_fn=act_fn, post_act_fn=timestep_post_act,
                                                cond_proj_dim=time_cond_proj_dim)

        # 3. optional text projection, class and additional embeddings
        if encoder_hid_dim is not None:  # encoder_hid_dim_type None or "text_proj"
            self.encoder_hid_proj = Linear(encoder_hid_dim, cross_attention_dim)
        else:
            self.encoder_hid_proj = None
        self.class_embedding = self._class_embedding(class_embed_type, num_class_embeds, act_fn, time_embed_dim, c0,
                                                     projection_class_embeddings_input_dim)
        if addition_embed_type == "text_time":
            for key, value in (("addition_time_embed_dim", addition_time_embed_dim),
                               ("projection_class_embeddings_input_dim", projection_class_embeddings_input_dim)):
                if value is None:
                    raise ValueError(f"UNet2DConditionModel: addition_embed_type='text_time' needs {key} (an integer); "
                                     "it is null")
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None
        blocks_time_embed_dim = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim

        # 4. down blocks
        common = dict(temb_channels=blocks_time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, dual_cross_attention=dual_cross_attention,
                      use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
                      resnet_time_scale_shift=resnet_time_scale_shift, attention_type=attention_type,
                      dropout=dropout)
        down_blocks = []
        output_channel = c0
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=tlayers[i], in_channels=input_channel,
                out_channels=output_channel, add_downsample=i < n - 1, cross_attention_dim=cross_dims[i],
                num_attention_heads=heads[i], downsample_padding=downsample_padding, only_cross_attention=only_cross[i],
                **common))
        self.down_blocks = nn.CellList(down_blocks)

        # 5. mid block
        if mid_block_type == "UNetMidBlock2DCrossAttn":
            self.mid_block = UNetMidBlock2DCrossAttn(
                in_channels=block_out_channels[-1], temb_channels=blocks_time_embed_dim, dropout=dropout,
                resnet_eps=norm_eps, resnet_act_fn=act_fn, output_scale_factor=mid_block_scale_factor,
                resnet_time_scale_shift=resnet_time_scale_shift, cross_attention_dim=cross_dims[-1],
                num_attention_heads=heads[-1], resnet_groups=norm_num_groups,
                transformer_layers_per_block=tlayers[-1], use_linear_projection=use_linear_projection,
                upcast_attention=upcast_attention, attention_type=attention_type)
        else:
            self.mid_block = None

        # 6. up blocks (mirror order; one extra resnet per level for the downsampler's skip)
        rev_channels = list(reversed(block_out_channels))
        rev_heads, rev_layers, rev_cross = list(reversed(heads)), list(reversed(layers)), list(reversed(cross_dims))
        rev_tlayers = (list(reversed(tlayers)) if reverse_transformer_layers_per_block is None
                       else list(reverse_transformer_layers_per_block))
        rev_only_cross = list(reversed(only_cross))
        self.num_upsamplers = n - 1
        up_blocks = []
        output_channel = rev_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel, output_channel = output_channel, rev_channels[i]
            input_channel = rev_channels[min(i + 1, n - 1)]
            up_blocks.append(get_up_block(
                block_type, num_layers=rev_layers[i] + 1, transformer_layers_per_block=rev_tlayers[i],
                in_channels=input_channel, out_channels=output_channel, prev_output_channel=prev_output_channel,
                add_upsample=i < n - 1, resolution_idx=i, cross_attention_dim=rev_cross[i],
                num_attention_heads=rev_heads[i], only_cross_attention=rev_only_cross[i], **common))
        self.up_blocks = nn.CellList(up_blocks)

        # 7. output head
        if norm_num_groups is not None:
            self.conv_norm_out = GroupNorm(norm_num_groups, c0, eps=norm_eps)
            self.conv_act = get_activation(act_fn)
        else:
            self.conv_norm_out = None
            self.conv_act = None
        self.conv_out = Conv2d(c0, out_channels, conv_out_kernel, padding=(conv_out_kernel - 1) // 2)

    # -- construction helpers ----------------------------------------------------------------------------------------
    @staticmethod
    def _refuse_unported(time_embedding_type, class_embed_type, addition_embed_type, encoder_hid_dim,
                         encoder_hid_dim_type, mid_block_type, dual_cross_attention, attention_type) -> None:
        checks = [
            ("time_embedding_type", time_embedding_type, ("positional",)),
            ("class_embed_type", class_embed_type, CLASS_EMBED_TYPES),
            ("addition_embed_type", addition_embed_type, ADDITION_EMBED_TYPES),
            ("encoder_hid_dim_type", encoder_hid_dim_type, ENCODER_HID_DIM_TYPES),
            ("mid_block_type", mid_block_type, (*MID_BLOCK_TYPES, None)),
            ("dual_cross_attention", dual_cross_attention, (False,)),
            ("attention_type", attention_type, ("default",)),
        ]
        for key, value, ok in checks:
            if value not in ok:
                raise NotImplementedError(f"UNet2DConditionModel: {key}={value!r} is not ported; expected one of {list(ok)}")
        if encoder_hid_dim_type is not None and encoder_hid_dim is None:
            raise ValueError(f"UNet2DConditionModel: encoder_hid_dim_type={encoder_hid_dim_type!r} needs encoder_hid_dim")

    @staticmethod
    def _class_embedding(class_embed_type, num_class_embeds, act_fn, time_embed_dim, timestep_input_dim,
                         projection_dim):
        if class_embed_type is None and num_class_embeds is not None:
            return Embedding(num_class_embeds, time_embed_dim)
        if class_embed_type == "timestep":
            return TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
        if class_embed_type == "identity":
            return Identity()
        if class_embed_type in ("projection", "simple_projection"):
            if projection_dim is None:
                raise ValueError(f"UNet2DConditionModel: class_embed_type={class_embed_type!r} needs "
                                 "projection_class_embeddings_input_dim")
            if class_embed_type == "projection":
                return TimestepEmbedding(projection_dim, time_embed_dim)
            return Linear(projection_dim, time_embed_dim)
        return None

    # -- forward -----------------------------------------------------------------------------------------------------
    def _class_emb(self, class_labels, dtype) -> Tensor | None:
        if self.class_embedding is None:
            return None
        if class_labels is None:
            raise ValueError("UNet2DConditionModel: class_labels must be given (the model has a class embedding)")
        if self.class_embed_type == "timestep":
            labels = self.time_proj(backend.to_tensor(class_labels).astype(ms.float32).reshape(-1)).astype(dtype)
        elif self.class_embed_type is None:  # embedding table
            labels = backend.to_tensor(class_labels).astype(ms.int32)
        else:
            labels = backend.to_tensor(class_labels, dtype)
        return self.class_embedding(labels).astype(dtype)

    def _aug_emb(self, added_cond_kwargs, dtype) -> Tensor | None:
        if self.addition_embed_type != "text_time":
            return None
        kwargs = added_cond_kwargs or {}
        for key in ("text_embeds", "time_ids"):
            if key not in kwargs:
                raise ValueError(f"UNet2DConditionModel: addition_embed_type='text_time' needs added_cond_kwargs[{key!r}]")
        text_embeds = backend.to_tensor(kwargs["text_embeds"], dtype)
        # (B, n) time ids -> (B*n, A) -> (B, n*A), concatenated after the pooled text embedding
        time_embeds = self.add_time_proj(backend.to_tensor(kwargs["time_ids"]).astype(ms.float32).reshape(-1))
        time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)
        add_embeds = ops.cat((text_embeds, time_embeds.astype(text_embeds.dtype)), axis=-1).astype(dtype)
        return self.add_embedding(add_embeds)

    def construct(self, sample, timestep, encoder_hidden_states, class_labels=None, timestep_cond=None,
                  attention_mask=None, cross_attention_kwargs: dict | None = None, added_cond_kwargs: dict | None = None,
                  down_block_additional_residuals=None, mid_block_additional_residual=None,
                  down_intrablock_additional_residuals=None, encoder_attention_mask=None, return_dict: bool = True):
        dtype = self.dtype
        sample = backend.to_tensor(sample, dtype)
        encoder_hidden_states = backend.to_tensor(encoder_hidden_states, dtype)
        batch_size = sample.shape[0]
        # sizes not divisible by 2**num_upsamplers: upsample to the skip's size instead of x2
        up_factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        # keep-masks (B, L) -> additive biases (B, 1, L)
        attention_mask = _keep_mask_to_bias(attention_mask, dtype)
        encoder_attention_mask = _keep_mask_to_bias(encoder_attention_mask, dtype)
        if self.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time embedding (fp32 sinusoid, then model dtype): (B,) -> (B, T)
        t_emb = self.time_proj(timesteps_1d(timestep, batch_size, "UNet2DConditionModel")).astype(dtype)
        cond = backend.to_tensor(timestep_cond, dtype) if timestep_cond is not None else None
        emb = self.time_embedding(t_emb, cond)
        # 2. class / additional embeddings
        class_emb = self._class_emb(class_labels, dtype)
        if class_emb is not None:
            emb = ops.cat((emb, class_emb), axis=-1) if self.class_embeddings_concat else emb + class_emb
        aug_emb = self._aug_emb(added_cond_kwargs, dtype)
        if aug_emb is not None:
            emb = emb + aug_emb
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        if self.encoder_hid_proj is not None:  # (B, S, encoder_hid_dim) -> (B, S, cross_attention_dim)
            encoder_hidden_states = self.encoder_hid_proj(encoder_hidden_states)

        # 3. input conv: (B, C_in, H, W) -> (B, C0, H, W)
        sample = self.conv_in(sample)

        # 4. down path, collecting skips (ControlNet residuals: per skip + mid; T2I-Adapter: per down block)
        is_controlnet = mid_block_additional_residual is not None and down_block_additional_residuals is not None
        intrablock = list(down_intrablock_additional_residuals) if down_intrablock_additional_residuals is not None else None
        if intrablock is None and mid_block_additional_residual is None and down_block_additional_residuals is not None:
            intrablock = list(down_block_additional_residuals)  # diffusers' deprecated T2I-Adapter spelling
        is_adapter = intrablock is not None
        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                extra = backend.to_tensor(intrablock.pop(0), dtype) if is_adapter and intrablock else None
                sample, res_samples = block(sample, emb, encoder_hidden_states, attention_mask=attention_mask,
                                            encoder_attention_mask=encoder_attention_mask, additional_residuals=extra)
            else:
                sample, res_samples = block(sample, emb)
                if is_adapter and intrablock:
                    # diffusers adds in place, and the block's last skip is the same tensor: it changes too
                    sample = sample + backend.to_tensor(intrablock.pop(0), dtype)
                    res_samples = res_samples[:-1] + (sample,)
            down_block_res_samples += res_samples
        if is_controlnet:
            down_block_res_samples = tuple(
                s + backend.to_tensor(r, dtype) for s, r in zip(down_block_res_samples, down_block_additional_residuals)
            )

        # 5. mid block (+ residuals)
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb, encoder_hidden_states, attention_mask=attention_mask,
                                    encoder_attention_mask=encoder_attention_mask)
            if is_adapter and intrablock and tuple(sample.shape) == tuple(intrablock[0].shape):
                sample = sample + backend.to_tensor(intrablock.pop(0), dtype)
        if is_controlnet:
            sample = sample + backend.to_tensor(mid_block_additional_residual, dtype)

        # 6. up path, consuming skips
        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            k = len(block.resnets)
            res_samples, down_block_res_samples = down_block_res_samples[-k:], down_block_res_samples[:-k]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = tuple(down_block_res_samples[-1].shape[2:])
            if block.has_cross_attention:
                sample = block(sample, res_samples, emb, encoder_hidden_states, upsample_size=upsample_size,
                               attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask)
            else:
                sample = block(sample, res_samples, emb, upsample_size)

        # 7. output head: (B, C0, H, W) -> (B, C_out, H, W)
        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        if not return_dict:
            return (sample,)
        return Output(sample=sample)


__all__ = ["UNet2DConditionModel"]
