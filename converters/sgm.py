"""Original single-file Stable Video Diffusion checkpoints (Stability-AI generative-models naming, as in
`svd.safetensors` / `svd_xt.safetensors`) -> the diffusers module paths our cells keep:
UNetSpatioTemporalConditionModel, AutoencoderKLTemporalDecoder and CLIPVisionModelWithProjection.

The block arithmetic is the LDM UNet's (`ldm.unet_rows`); what differs are the blocks:

    VideoResBlock  (UNet)    X.{in_layers.0, ...}         -> X.spatial_res_block.{norm1, ...}  (LDM ResBlock leaves)
                             X.time_stack.{in_layers.0, ...}  -> X.temporal_res_block.{norm1, ...}
                             X.time_mixer.mix_factor      -> X.time_mixer.mix_factor
    SpatialVideoTransformer  X.{norm, proj_in, proj_out, transformer_blocks.*}  -> same names
                             X.time_stack.N.*             -> X.temporal_transformer_blocks.N.* (same inner names)
                             X.time_pos_embed.{0,2}       -> X.time_pos_embed.linear_{1,2}
                             X.time_mixer.mix_factor      -> same name
    label_emb.0.{0,2}                                     -> add_embedding.linear_{1,2}
    VideoResBlock  (VAE decoder)  X.{norm1, conv1, ...}   -> X.spatial_res_block.* (VQGAN leaves, nin_shortcut)
                             X.time_stack.{in_layers.0, in_layers.2, out_layers.0, out_layers.3}
                                                          -> X.temporal_res_block.{norm1, conv1, norm2, conv2}
                             X.mix_factor                 -> X.time_mixer.mix_factor
    decoder.conv_out.time_mix_conv (AE3DConv)             -> decoder.time_conv_out
    conditioner.embedders.0.open_clip.model.visual.* (OpenCLIP ViT-H/14) -> transformers' CLIP vision tower:
        class_embedding, positional_embedding, conv1      -> vision_model.embeddings.{class_embedding,
                                                             position_embedding.weight, patch_embedding.weight}
        ln_pre, ln_post                                   -> vision_model.{pre_layrnorm, post_layernorm}
        transformer.resblocks.N.{ln_1, ln_2, attn.out_proj, mlp.c_fc, mlp.c_proj}
                                                          -> vision_model.encoder.layers.N.{layer_norm1, layer_norm2,
                                                             self_attn.out_proj, mlp.fc1, mlp.fc2}
        transformer.resblocks.N.attn.in_proj_{weight,bias} (fused, rows q|k|v) -> self_attn.{q,k,v}_proj (split)
        proj (width x projection_dim, used as x @ proj)   -> visual_projection.weight (transposed)
"""

from __future__ import annotations

import re

from .base import Rule
from .ldm import UNET_RESNET_LEAVES, VAE, VAE_RESNET_LEAVES, leaf_rows, unet_rows, vae_rows

CLIP = "conditioner.embedders.0.open_clip.model.visual."

TEMPORAL_RESNET_LEAVES = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                          ("out_layers.0", "norm2"), ("out_layers.3", "conv2"))


def _mix_row(src: str, dst: str) -> Rule:
    return Rule(rf"{re.escape(src)}\.mix_factor", f"{dst}.mix_factor", reason="AlphaBlender mix factor")


def svd_unet_rows(config: dict) -> list[Rule]:
    def resnet(src, dst):
        return (leaf_rows(src, f"{dst}.spatial_res_block", UNET_RESNET_LEAVES, "VideoResBlock spatial half (LDM ResBlock)")
                + leaf_rows(f"{src}.time_stack", f"{dst}.temporal_res_block", TEMPORAL_RESNET_LEAVES,
                            "VideoResBlock time_stack (3D ResBlock)")
                + [_mix_row(f"{src}.time_mixer", f"{dst}.time_mixer")])

    def attention(src, dst):
        s = re.escape(src)
        return [
            Rule(rf"{s}\.((?:norm|proj_in|proj_out)\.(?:weight|bias)|transformer_blocks\..+)", f"{dst}.\\1",
                 reason="SpatialVideoTransformer spatial part: same names"),
            Rule(rf"{s}\.time_stack\.(\d+)\.(.+)", f"{dst}.temporal_transformer_blocks.\\1.\\2",
                 reason="VideoTransformerBlock: same inner names"),
            *leaf_rows(f"{src}.time_pos_embed", f"{dst}.time_pos_embed", (("0", "linear_1"), ("2", "linear_2")),
                       "time_pos_embed Sequential"),
            _mix_row(f"{src}.time_mixer", f"{dst}.time_mixer"),
        ]

    rows = unet_rows(config, resnet, attention, class_name="UNetSpatioTemporalConditionModel")
    rows += leaf_rows("model.diffusion_model.label_emb.0", "add_embedding", (("0", "linear_1"), ("2", "linear_2")),
                      "label_emb (num_classes='sequential') is the added-time-ids embedding")
    return rows


def svd_vae_rows(config: dict) -> list[Rule]:
    def decoder_resnet(src, dst):
        return (leaf_rows(src, f"{dst}.spatial_res_block", VAE_RESNET_LEAVES, "VideoResBlock spatial half (VQGAN ResnetBlock)")
                + leaf_rows(f"{src}.time_stack", f"{dst}.temporal_res_block", TEMPORAL_RESNET_LEAVES,
                            "VideoResBlock time_stack (3D ResBlock without time embedding)")
                + [_mix_row(src, f"{dst}.time_mixer")])

    rows = vae_rows(config, decoder_resnet, temporal_decoder=True)
    rows += leaf_rows(f"{VAE}decoder.conv_out", "decoder", (("time_mix_conv", "time_conv_out"),),
                      "AE3DConv's temporal convolution")
    return rows


def open_clip_vision_rows(_config: dict) -> list[Rule]:
    p = re.escape(CLIP)
    block = p + r"transformer\.resblocks\.(\d+)\."
    layer = r"vision_model.encoder.layers.\1."
    why = "OpenCLIP ViT -> transformers CLIPVisionModel"
    return [
        Rule(p + r"class_embedding", "vision_model.embeddings.class_embedding", reason=why),
        Rule(p + r"positional_embedding", "vision_model.embeddings.position_embedding.weight", reason=why),
        Rule(p + r"conv1\.weight", "vision_model.embeddings.patch_embedding.weight", reason=why),
        Rule(p + r"ln_pre\.(weight|bias)", r"vision_model.pre_layrnorm.\1", reason=why),
        Rule(p + r"ln_post\.(weight|bias)", r"vision_model.post_layernorm.\1", reason=why),
        Rule(p + r"proj", "visual_projection.weight", "transpose", "OpenCLIP applies x @ proj; a linear layer stores proj.T"),
        Rule(block + r"ln_1\.(weight|bias)", layer + r"layer_norm1.\2", reason=why),
        Rule(block + r"ln_2\.(weight|bias)", layer + r"layer_norm2.\2", reason=why),
        Rule(block + r"attn\.in_proj_weight", tuple(layer + f"self_attn.{x}_proj.weight" for x in "qkv"),
             reason="nn.MultiheadAttention's fused projection: rows q, k, v"),
        Rule(block + r"attn\.in_proj_bias", tuple(layer + f"self_attn.{x}_proj.bias" for x in "qkv"),
             reason="nn.MultiheadAttention's fused projection bias: q, k, v"),
        Rule(block + r"attn\.out_proj\.(weight|bias)", layer + r"self_attn.out_proj.\2", reason=why),
        Rule(block + r"mlp\.c_fc\.(weight|bias)", layer + r"mlp.fc1.\2", reason=why),
        Rule(block + r"mlp\.c_proj\.(weight|bias)", layer + r"mlp.fc2.\2", reason=why),
    ]

