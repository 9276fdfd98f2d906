"""Original single-file Stable Diffusion 1.x checkpoints (CompVis / LDM naming, e.g. `v1-5-pruned-emaonly.safetensors`)
-> the diffusers module paths our cells keep: UNet2DConditionModel, AutoencoderKL and CLIPTextModel.

The rows are generated from the component's diffusers config (how many levels, which have attention, how many
resnets), but each row is explicit: one source pattern -> one target template, for a stated reason.

    model.diffusion_model.time_embed.{0,2}                 -> time_embedding.linear_{1,2}
    model.diffusion_model.input_blocks.0.0                 -> conv_in
    model.diffusion_model.input_blocks.K.0 (K = 1 + i*(L+1) + j, j < L)  -> down_blocks.i.resnets.j
        in_layers.0 / in_layers.2 / emb_layers.1 / out_layers.0 / out_layers.3 / skip_connection
        -> norm1 / conv1 / time_emb_proj / norm2 / conv2 / conv_shortcut
    model.diffusion_model.input_blocks.K.1.*               -> down_blocks.i.attentions.j.* (same inner names)
    model.diffusion_model.input_blocks.(1 + i*(L+1) + L).0.op  -> down_blocks.i.downsamplers.0.conv
    model.diffusion_model.middle_block.{0,1,2}             -> mid_block.{resnets.0, attentions.0, resnets.1}
    model.diffusion_model.output_blocks.(i*(L+1) + j).{0,1}  -> up_blocks.i.{resnets.j, attentions.j}
    model.diffusion_model.output_blocks.(i*(L+1) + L).{1|2}.conv  -> up_blocks.i.upsamplers.0.conv
    model.diffusion_model.out.{0,2}                        -> conv_norm_out, conv_out

    first_stage_model.{encoder,decoder}.{conv_in,conv_out}, quant_conv, post_quant_conv  -> same names
    first_stage_model.{encoder,decoder}.norm_out           -> {encoder,decoder}.conv_norm_out
    first_stage_model.encoder.down.i.block.j               -> encoder.down_blocks.i.resnets.j (nin_shortcut -> conv_shortcut)
    first_stage_model.encoder.down.i.downsample.conv       -> encoder.down_blocks.i.downsamplers.0.conv
    first_stage_model.decoder.up.i.block.j                 -> decoder.up_blocks.(n-1-i).resnets.j (levels reversed)
    first_stage_model.decoder.up.i.upsample.conv           -> decoder.up_blocks.(n-1-i).upsamplers.0.conv
    first_stage_model.{encoder,decoder}.mid.block_{1,2}    -> {...}.mid_block.resnets.{0,1}
    first_stage_model.{encoder,decoder}.mid.attn_1.{norm,q,k,v,proj_out}
        -> {...}.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0} (1x1 conv weights -> linear)

    cond_stage_model.transformer.text_model.*              -> * (the transformers module tree, without the prefix)
    cond_stage_model.transformer.text_model.embeddings.position_ids  -> dropped (buffer)

`sgm.py` reuses the block arithmetic for Stable Video Diffusion's generative-models layout.
"""

from __future__ import annotations

import re

import json

from .base import Rule
from .errors import ConversionError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer.text_model."

# (LDM ResBlock leaf, diffusers ResnetBlock2D leaf)
UNET_RESNET_LEAVES = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                      ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))
# (LDM/VQGAN ResnetBlock leaf, diffusers leaf)
VAE_RESNET_LEAVES = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
                     ("nin_shortcut", "conv_shortcut"))
VAE_ATTENTION_LEAVES = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))


# diffusers' defaults (0.42) of the config fields the row generators read: a config that leaves a field out (older
# files; a class saved with its defaults writes them all) means this value
ROW_DEFAULTS = {
    "UNet2DConditionModel": {
        "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    },
    "UNetSpatioTemporalConditionModel": {
        "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                             "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                           "CrossAttnUpBlockSpatioTemporal"),
    },
    "AutoencoderKL": {"block_out_channels": (64,), "layers_per_block": 1},
    "AutoencoderKLTemporalDecoder": {"block_out_channels": (64,), "layers_per_block": 1},
}


def config_field(config: dict, key: str, class_name: str):
    """A config field the rows depend on: diffusers' default when absent; a null one is refused (diffusers cannot
    build the model with it either), naming the field and the default."""
    default = ROW_DEFAULTS[class_name][key]
    if key not in config:
        return default
    value = config[key]
    if value is None:
        raise ConversionError(f"{class_name} config field {key!r} is null (diffusers cannot build the model with "
                              f"it); expected a value like diffusers' default {json.dumps(default)}")
    return value


def leaf_rows(src: str, dst: str, leaves, reason: str, transform: str = "identity") -> list[Rule]:
    """One row per (source leaf, target leaf) of a module at `src` (a literal prefix) moving to `dst`."""
    return [Rule(rf"{re.escape(src)}\.{re.escape(a)}\.(weight|bias)", f"{dst}.{b}.\\1", transform, reason)
            for a, b in leaves]


def subtree_row(src: str, dst: str, reason: str) -> Rule:
    """Everything under `src` moves to `dst` with the same inner names."""
    return Rule(rf"{re.escape(src)}\.(.+)", f"{dst}.\\1", reason=reason)


def per_level(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_rows(config: dict, resnet_rows, attention_rows, prefix: str = UNET,
              class_name: str = "UNet2DConditionModel") -> list[Rule]:
    """The LDM UNet's block arithmetic. `resnet_rows(src, dst)` and `attention_rows(src, dst)` give the rows of one
    ResBlock / transformer (SD: plain, SVD: with their temporal halves). Fields absent from `config` take
    `class_name`'s diffusers defaults."""
    n = len(config_field(config, "block_out_channels", class_name))
    layers = per_level(config_field(config, "layers_per_block", class_name), n)
    down_attn = ["CrossAttn" in t for t in config_field(config, "down_block_types", class_name)]
    up_attn = ["CrossAttn" in t for t in config_field(config, "up_block_types", class_name)]
    p = prefix
    rows = leaf_rows(f"{p}time_embed", "time_embedding", (("0", "linear_1"), ("2", "linear_2")), "LDM time_embed Sequential")
    rows += leaf_rows(f"{p}input_blocks.0", "", (("0", "conv_in"),), "LDM input_blocks.0 is conv_in")
    rows += leaf_rows(f"{p}out", "", (("0", "conv_norm_out"), ("2", "conv_out")), "LDM out Sequential")
    k = 1
    for i in range(n):
        for j in range(layers[i]):
            rows += resnet_rows(f"{p}input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}")
            if down_attn[i]:
                rows += attention_rows(f"{p}input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}")
            k += 1
        if i < n - 1:
            rows += leaf_rows(f"{p}input_blocks.{k}.0", f"down_blocks.{i}.downsamplers.0", (("op", "conv"),),
                              "LDM Downsample op")
            k += 1
    rows += resnet_rows(f"{p}middle_block.0", "mid_block.resnets.0")
    rows += attention_rows(f"{p}middle_block.1", "mid_block.attentions.0")
    rows += resnet_rows(f"{p}middle_block.2", "mid_block.resnets.1")
    k = 0
    up_layers = layers[::-1]
    for i in range(n):
        for j in range(up_layers[i] + 1):
            rows += resnet_rows(f"{p}output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}")
            if up_attn[i]:
                rows += attention_rows(f"{p}output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}")
            if i < n - 1 and j == up_layers[i]:
                rows += leaf_rows(f"{p}output_blocks.{k}.{2 if up_attn[i] else 1}", f"up_blocks.{i}.upsamplers.0",
                                  (("conv", "conv"),), "LDM Upsample after the level's last resnet")
            k += 1
    return [Rule(r.source, r.target.lstrip(".") if isinstance(r.target, str) else r.target, r.transform, r.reason)
            for r in rows]


def sd_unet_rows(config: dict) -> list[Rule]:
    def resnet(src, dst):
        return leaf_rows(src, dst, UNET_RESNET_LEAVES, "LDM ResBlock leaf names")

    def attention(src, dst):
        return [subtree_row(src, dst, "LDM SpatialTransformer: same inner names")]

    return unet_rows(config, resnet, attention)


def vae_rows(config: dict, decoder_resnet_rows=None, prefix: str = VAE, temporal_decoder: bool = False) -> list[Rule]:
    """LDM AutoencoderKL rows. `decoder_resnet_rows(src, dst)` overrides the decoder's ResnetBlock rows (SVD's
    VideoResBlock); `temporal_decoder` maps SVD's AE3DConv `conv_out.time_mix_conv` and has no post_quant_conv."""
    class_name = "AutoencoderKLTemporalDecoder" if temporal_decoder else "AutoencoderKL"
    n = len(config_field(config, "block_out_channels", class_name))
    layers = config_field(config, "layers_per_block", class_name)
    p = prefix

    def resnet(src, dst):
        return leaf_rows(src, dst, VAE_RESNET_LEAVES, "VQGAN ResnetBlock leaf names (nin_shortcut)")

    dec_resnet = decoder_resnet_rows or resnet
    rows = leaf_rows(p.rstrip("."), "", (("quant_conv", "quant_conv"),) if temporal_decoder else
                     (("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")), "same name")
    for part in ("encoder", "decoder"):
        rows += leaf_rows(f"{p}{part}", part, (("conv_in", "conv_in"), ("conv_out", "conv_out"),
                                               ("norm_out", "conv_norm_out")), "VQGAN Encoder/Decoder ends")
        rows += leaf_rows(f"{p}{part}.mid.attn_1", f"{part}.mid_block.attentions.0", VAE_ATTENTION_LEAVES[:1],
                          "VQGAN AttnBlock norm")
        rows += [Rule(rf"{re.escape(p + part)}\.mid\.attn_1\.{a}\.weight", f"{part}.mid_block.attentions.0.{b}.weight",
                      "conv1x1_to_linear", "VQGAN AttnBlock 1x1 conv projection -> linear")
                 for a, b in VAE_ATTENTION_LEAVES[1:]]
        rows += [Rule(rf"{re.escape(p + part)}\.mid\.attn_1\.{a}\.bias", f"{part}.mid_block.attentions.0.{b}.bias",
                      reason="VQGAN AttnBlock projection bias") for a, b in VAE_ATTENTION_LEAVES[1:]]
    for m in (1, 2):
        rows += resnet(f"{p}encoder.mid.block_{m}", f"encoder.mid_block.resnets.{m - 1}")
        rows += dec_resnet(f"{p}decoder.mid.block_{m}", f"decoder.mid_block.resnets.{m - 1}")
    for i in range(n):
        for j in range(layers):
            rows += resnet(f"{p}encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}")
        if i < n - 1:
            rows += leaf_rows(f"{p}encoder.down.{i}.downsample", f"encoder.down_blocks.{i}.downsamplers.0",
                              (("conv", "conv"),), "VQGAN Downsample")
        up = n - 1 - i  # the decoder's levels are stored lowest resolution last
        for j in range(layers + 1):
            rows += dec_resnet(f"{p}decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}")
        if i > 0:
            rows += leaf_rows(f"{p}decoder.up.{i}.upsample", f"decoder.up_blocks.{up}.upsamplers.0",
                              (("conv", "conv"),), "VQGAN Upsample (levels reversed)")
    return [Rule(r.source, r.target.lstrip("."), r.transform, r.reason) for r in rows]


def clip_text_rows(_config: dict) -> list[Rule]:
    pre = re.escape(TEXT)
    return [
        Rule(pre + r"embeddings\.position_ids", None, reason="buffer arange(max_position_embeddings)"),
        Rule(pre + r"(?!embeddings\.position_ids$)(.+)", r"\1",
             reason="FrozenCLIPEmbedder wraps transformers' CLIPTextModel: prefix removed"),
    ]
