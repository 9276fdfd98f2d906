"""Wan 2.1 as Wan-AI releases it (the `Wan-AI/Wan2.1-*` repos, `wan/modules/{model,t5,vae}.py` names) -> the
diffusers / transformers module paths our cells keep. Explicit rows, one source pattern -> one target each; a key
no row maps is refused (no identity fallthrough: an original file must be original throughout).

Transformer (`WanModel`; `diffusion_pytorch_model*.safetensors`, also repackaged single files, optionally under
`model.diffusion_model.`):

    patch_embedding                         -> patch_embedding
    text_embedding.{0,2} / time_embedding.{0,2}  -> condition_embedder.{text,time}_embedder.linear_{1,2}
    time_projection.1                       -> condition_embedder.time_proj
    head.head / head.modulation             -> proj_out / scale_shift_table
    img_emb.proj.{0,1,3,4}                  -> condition_embedder.image_embedder.{norm1, ff.net.0.proj, ff.net.2, norm2}
    img_emb.emb_pos                         -> condition_embedder.image_embedder.pos_embed   (FLF2V)
    blocks.N.modulation                     -> blocks.N.scale_shift_table
    blocks.N.self_attn.{q,k,v,o,norm_q,norm_k}   -> blocks.N.attn1.{to_q,to_k,to_v,to_out.0,norm_q,norm_k}
    blocks.N.cross_attn.{same}              -> blocks.N.attn2.{same}
    blocks.N.cross_attn.{k_img,v_img,norm_k_img} -> blocks.N.attn2.{add_k_proj,add_v_proj,norm_added_k}
    blocks.N.norm3 (the cross-attention norm, the only affine one) -> blocks.N.norm2
    blocks.N.ffn.{0,2}                      -> blocks.N.ffn.net.{0.proj,2}

UMT5 encoder (`models_t5_umt5-xxl-enc-bf16.pth`, Wan's own T5Encoder with `shared_pos=False`):

    token_embedding                         -> shared
    blocks.N.norm1 / blocks.N.norm2         -> encoder.block.N.layer.{0,1}.layer_norm
    blocks.N.attn.{q,k,v,o}                 -> encoder.block.N.layer.0.SelfAttention.{q,k,v,o}
    blocks.N.pos_embedding.embedding        -> encoder.block.N.layer.0.SelfAttention.relative_attention_bias
    blocks.N.ffn.{gate.0, fc1, fc2}         -> encoder.block.N.layer.1.DenseReluDense.{wi_0, wi_1, wo}
    norm                                    -> encoder.final_layer_norm

VAE (`Wan2.1_VAE.pth`, WanVAE_): see `vae_rows` (flat `downsamples` / `upsamples` Sequentials; ResidualBlock's
`residual.{0,2,3,6}` Sequential indices; `head.{0,2}`; the top-level `conv1` / `conv2` are the quant convs).

CLIP image encoder (I2V, `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`): the `visual.*` ViT-H/14 tower
-> transformers CLIPVisionModel (`CLIP_ROWS`: fused `to_qkv` split into q/k/v, unit axes of the class and position
embeddings dropped); the `textual.*` XLM-RoBERTa tower, `log_scale` and the `visual.head` projection are dropped.

fp8 files (`F8_E4M3` / `F8_E5M2` safetensors, float8 pickles) are decoded exactly; a per-tensor
`X.scale_weight` multiplies `X.weight` (`dequantise_fp8`), and the scale tensors are consumed by explicit rows.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from .base import ArchitectureConverter, Rule
from .errors import ConversionError
from .safetensors_io import FP8_TAGS, TensorRef
from .sources import ComponentSource, read_json

# ----------------------------------------------------------------------------------------------------------------
# fp8: per-tensor scales
# ----------------------------------------------------------------------------------------------------------------

SCALE_SUFFIX = "scale_weight"
FP8_ROWS = (
    Rule(r"(?:.+\.)?scale_weight", None,
         reason="fp8 per-tensor scale: multiplied into its weight (X.weight * X.scale_weight) when dequantised"),
    Rule(r"(?:.+\.)?scale_input", None,
         reason="fp8 activation scale (for fp8 matmuls); the dequantised weights compute in full precision"),
    Rule(r"scaled_fp8", None, reason="marker of a scaled-fp8 file (no weights)"),
)


def dequantise_fp8(tensors: dict[str, TensorRef], where: str) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """fp8 tensors decoded exactly to float32 on load; a scaled-fp8 file's `X.weight` multiplied by its per-tensor
    `X.scale_weight`. Returns the tensors (scales still present, for the drop rows) and {weight: scale key}.
    Refused, naming the tensor: a scale with more than one value, a scale of a tensor that is not fp8, and in a
    scaled file (any scale, or the `scaled_fp8` marker) an fp8 weight without its scale (its scale is unknown)."""
    scales = {k for k in tensors if k == SCALE_SUFFIX or k.endswith("." + SCALE_SUFFIX)}
    scaled_file = bool(scales) or "scaled_fp8" in tensors
    out, used = dict(tensors), {}
    for key in sorted(scales):
        weight = key[: -len(SCALE_SUFFIX)] + "weight"
        sref = tensors[key]
        if weight not in tensors:
            raise ConversionError(f"{where}: fp8 scale {key!r} has no tensor {weight!r} to scale")
        if tensors[weight].dtype not in FP8_TAGS:
            raise ConversionError(f"{where}: {key!r} scales {weight!r}, which is {tensors[weight].dtype}, not fp8 "
                                  f"({', '.join(FP8_TAGS)}); cannot tell whether it is already scaled")
        if int(np.prod(sref.shape, dtype=np.int64)) != 1 or sref.dtype not in ("F32", "F16", "BF16", "F64"):
            raise ConversionError(f"{where}: fp8 scale {key!r} is {sref.dtype} of shape {list(sref.shape)}; expected "
                                  "one floating value (per-tensor scaling)")
        ref = tensors[weight]
        out[weight] = dataclasses.replace(ref, loader=lambda r=ref, s=sref: _scaled(r, s))
        used[weight] = key
    if scaled_file:
        bare = [k for k, r in tensors.items() if r.dtype in FP8_TAGS and k not in used and k != "scaled_fp8"
                and int(np.prod(r.shape, dtype=np.int64)) > 0]
        if bare:
            raise ConversionError(f"{where}: fp8 tensor {bare[0]!r} ({tensors[bare[0]].dtype}) has no scale "
                                  f"{bare[0].rsplit('.', 1)[0] + '.' + SCALE_SUFFIX!r}, but this file stores scaled "
                                  "fp8 weights; its scale is unknown")
    return out, used


def _scaled(ref: TensorRef, scale: TensorRef) -> np.ndarray:
    return ref.load() * np.float32(np.asarray(scale.load(), dtype=np.float32).reshape(()))


# ----------------------------------------------------------------------------------------------------------------
# Strict converters: every key must match a row
# ----------------------------------------------------------------------------------------------------------------


class OriginalLayoutConverter(ArchitectureConverter):
    """One component in an original layout: its rows, and no identity fallthrough."""

    def __init__(self, class_name: str, rules, layout: str):
        self.class_name, self.rules, self.layout = class_name, tuple(rules), layout

    def convert_config(self, config: dict) -> dict:
        from . import converter_for

        return converter_for(self.class_name).convert_config(config)

    def normalise_keys(self, keys: list[str], target_names: set[str]) -> dict[str, str]:
        unknown = sorted(k for k in keys if not any(r.match(k) for r in self.rules))
        if unknown:
            raise ConversionError(f"{len(unknown)} key(s) that no row of the {self.layout} layout maps: "
                                  f"{', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}")
        return {k: k for k in keys}


def _leaves(src: str, dst: str, leaves, reason: str) -> list[Rule]:
    """Rows for a module at regex `src` (may hold groups, referenced in `dst` as \\1...) with (leaf, leaf) pairs;
    the tensor name (weight/bias/gamma) is the last group."""
    groups = re.compile(src).groups
    return [Rule(rf"{src}\.{re.escape(a)}\.(weight|bias|gamma)", f"{dst + '.' if dst else ''}{b}.\\{groups + 1}",
                 reason=reason) for a, b in leaves]


# ----------------------------------------------------------------------------------------------------------------
# Transformer
# ----------------------------------------------------------------------------------------------------------------

_P = r"(?:model\.diffusion_model\.)?"  # repackaged single files keep the LDM-style prefix
_B = _P + r"blocks\.(\d+)"
_ATTN = (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"), ("norm_k", "norm_k"))
_WHY = "Wan-AI WanModel name -> diffusers WanTransformer3DModel"

TRANSFORMER_ROWS = tuple(
    [Rule(_P + r"patch_embedding\.(weight|bias)", r"patch_embedding.\1", reason="same name (Conv3d patchifier)")]
    + _leaves(_P + "text_embedding", "condition_embedder.text_embedder", (("0", "linear_1"), ("2", "linear_2")),
              "text_embedding Sequential(Linear, GELU(tanh), Linear)")
    + _leaves(_P + "time_embedding", "condition_embedder.time_embedder", (("0", "linear_1"), ("2", "linear_2")),
              "time_embedding Sequential(Linear, SiLU, Linear)")
    + _leaves(_P + "time_projection", "condition_embedder", (("1", "time_proj"),),
              "time_projection Sequential(SiLU, Linear)")
    + [Rule(_P + r"head\.head\.(weight|bias)", r"proj_out.\1", reason="Head.head is the output projection")]
    + [Rule(_P + r"head\.modulation", "scale_shift_table", reason="Head.modulation (1, 2, dim)")]
    + _leaves(_P + r"img_emb\.proj", "condition_embedder.image_embedder",
              (("0", "norm1"), ("1", "ff.net.0.proj"), ("3", "ff.net.2"), ("4", "norm2")),
              "MLPProj Sequential(LayerNorm, Linear, GELU, Linear, LayerNorm)")
    + [Rule(_P + r"img_emb\.emb_pos", "condition_embedder.image_embedder.pos_embed",
            reason="FLF2V first/last-frame position embedding")]
    + [Rule(_B + r"\.modulation", r"blocks.\1.scale_shift_table", reason="block modulation (1, 6, dim)")]
    + _leaves(_B + r"\.self_attn", r"blocks.\1.attn1", _ATTN, "WanSelfAttention q/k/v/o -> to_q/to_k/to_v/to_out.0")
    + _leaves(_B + r"\.cross_attn", r"blocks.\1.attn2",
              _ATTN + (("k_img", "add_k_proj"), ("v_img", "add_v_proj"), ("norm_k_img", "norm_added_k")),
              "Wan cross-attention (I2V: k_img/v_img/norm_k_img -> the added image projections)")
    + _leaves(_B, r"blocks.\1", (("norm3", "norm2"),),
              "the cross-attention LayerNorm is norm3 in Wan (applied second), norm2 in diffusers")
    + _leaves(_B + r"\.ffn", r"blocks.\1.ffn", (("0", "net.0.proj"), ("2", "net.2")),
              "ffn Sequential(Linear, GELU(tanh), Linear) -> FeedForward")
) + FP8_ROWS


def renamed_shapes(rules, tensors: dict[str, TensorRef]) -> dict[str, tuple[int, ...]]:
    """{target name: shape} of the keys the rows map (dropped keys and unmapped ones left out)."""
    out = {}
    for key, ref in tensors.items():
        for r in rules:
            m = r.match(key)
            if m and isinstance(r.target, str):
                out[m.expand(r.target)] = tuple(ref.shape)
                break
    return out


DEFAULT_HEAD_DIM = 128  # every Wan 2.1 / 2.2 model (1.3B: 12 x 128, 14B: 40 x 128)
_RELEASED_FIELDS = ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim", "freq_dim", "text_dim")


def infer_transformer_config(shapes: dict[str, tuple[int, ...]], released: dict | None = None,
                             where: str = "") -> dict:
    """diffusers WanTransformer3DModel config from the (renamed) tensor shapes, cross-checked against the release's
    config.json (`released`: Wan's WanModel fields) when there is one. The heads do not show in any shape: they
    come from `num_heads`, else from Wan's head dim 128 (refused when the width is not a multiple of it)."""
    def shape(name):
        if name not in shapes:
            raise ConversionError(f"{where}: no tensor for {name!r}; cannot infer the Wan transformer config")
        return shapes[name]

    pe = shape("patch_embedding.weight")
    if len(pe) != 5:
        raise ConversionError(f"{where}: patch_embedding.weight has shape {list(pe)}; expected (dim, in_dim, t, h, w)")
    dim, in_dim, patch = pe[0], pe[1], list(pe[2:])
    layers = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))})
    if layers != list(range(len(layers))) or not layers:
        raise ConversionError(f"{where}: transformer blocks {layers[:8]} are not numbered 0..n-1")
    image = "condition_embedder.image_embedder.norm1.weight" in shapes
    flf = "condition_embedder.image_embedder.pos_embed" in shapes
    derived = {
        "dim": dim, "in_dim": in_dim, "num_layers": len(layers),
        "ffn_dim": shape("blocks.0.ffn.net.0.proj.weight")[0],
        "freq_dim": shape("condition_embedder.time_embedder.linear_1.weight")[1],
        "text_dim": shape("condition_embedder.text_embedder.linear_1.weight")[1],
        "out_dim": shape("proj_out.weight")[0] // math.prod(patch),
    }
    released = dict(released or {})
    for field in _RELEASED_FIELDS:
        if field in released and released[field] != derived[field]:
            raise ConversionError(f"{where}: config.json says {field}={released[field]!r}, but the tensors hold "
                                  f"{field}={derived[field]!r}")
    # model_type: Wan 2.1's t2v has no image embedder, flf2v has its position table; (Wan 2.2's i2v / ti2v have no
    # CLIP image embedder at all, so an image model without img_emb is not a contradiction)
    kind = released.get("model_type")
    if (kind == "t2v" and image) or (flf and kind not in (None, "flf2v")) or (kind == "flf2v" and not flf):
        raise ConversionError(f"{where}: config.json says model_type={kind!r}, but the tensors "
                              f"{'hold' if image else 'lack'} an image embedder (img_emb)"
                              f"{' with' if flf else ' without'} the first/last-frame position table (img_emb.emb_pos)")
    if "patch_size" in released and list(released["patch_size"]) != patch:
        raise ConversionError(f"{where}: config.json says patch_size={list(released['patch_size'])}, but "
                              f"patch_embedding.weight holds {patch}")
    window = released.get("window_size", [-1, -1])
    if list(window) != [-1, -1]:
        raise ConversionError(f"{where}: config.json window_size={list(window)}: local attention windows are not in "
                              "diffusers' WanTransformer3DModel; expected [-1, -1]")
    if released.get("text_len", 512) != 512:
        raise ConversionError(f"{where}: config.json text_len={released['text_len']}; diffusers' Wan pipelines and "
                              "I2V attention take 512 text tokens, expected 512")
    if "num_heads" in released:
        heads = int(released["num_heads"])
        if heads <= 0 or dim % heads:
            raise ConversionError(f"{where}: config.json num_heads={heads} does not divide dim={dim}")
    elif dim % DEFAULT_HEAD_DIM == 0:
        heads = dim // DEFAULT_HEAD_DIM
    else:
        raise ConversionError(f"{where}: cannot tell the attention heads: no config.json num_heads, and dim={dim} "
                              f"is not a multiple of Wan's head dim {DEFAULT_HEAD_DIM}; pass --config DIR with the "
                              "release's config.json")
    qk = "blocks.0.attn1.norm_q.weight" in shapes
    if "qk_norm" in released and bool(released["qk_norm"]) != qk:
        raise ConversionError(f"{where}: config.json says qk_norm={released['qk_norm']}, but the tensors "
                              f"{'hold' if qk else 'lack'} norm_q weights")
    cross_norm = "blocks.0.norm2.weight" in shapes
    if "cross_attn_norm" in released and bool(released["cross_attn_norm"]) != cross_norm:
        raise ConversionError(f"{where}: config.json says cross_attn_norm={released['cross_attn_norm']}, but the "
                              f"tensors {'hold' if cross_norm else 'lack'} the blocks' norm3 weights")
    config = {
        "_class_name": "WanTransformer3DModel",
        "patch_size": patch, "num_attention_heads": heads, "attention_head_dim": dim // heads,
        "in_channels": in_dim, "out_channels": derived["out_dim"], "text_dim": derived["text_dim"],
        "freq_dim": derived["freq_dim"], "ffn_dim": derived["ffn_dim"], "num_layers": derived["num_layers"],
        "cross_attn_norm": cross_norm, "qk_norm": "rms_norm_across_heads" if qk else None,
        "eps": float(released.get("eps", 1e-6)), "image_dim": None, "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024, "pos_embed_seq_len": None,
    }
    if image:
        config["image_dim"] = shape("condition_embedder.image_embedder.norm1.weight")[0]
        config["added_kv_proj_dim"] = shape("blocks.0.attn2.add_k_proj.weight")[1]
    if flf:
        config["pos_embed_seq_len"] = shape("condition_embedder.image_embedder.pos_embed")[1]
    return config


# ----------------------------------------------------------------------------------------------------------------
# UMT5 encoder
# ----------------------------------------------------------------------------------------------------------------

_T = r"blocks\.(\d+)"
_L0, _L1 = r"encoder.block.\1.layer.0", r"encoder.block.\1.layer.1"
_T5_WHY = "Wan T5Encoder name -> transformers UMT5EncoderModel"
UMT5_ROWS = tuple(
    [Rule(r"token_embedding\.weight", "shared.weight", reason="the token table (transformers' shared)"),
     Rule(r"norm\.weight", "encoder.final_layer_norm.weight", reason=_T5_WHY),
     Rule(_T + r"\.pos_embedding\.embedding\.weight", _L0 + ".SelfAttention.relative_attention_bias.weight",
          reason="per-block relative position bias (UMT5: shared_pos=False)")]
    + _leaves(_T, _L0, (("norm1", "layer_norm"),), _T5_WHY)
    + _leaves(_T + r"\.attn", _L0 + ".SelfAttention", (("q", "q"), ("k", "k"), ("v", "v"), ("o", "o")), _T5_WHY)
    + _leaves(_T, _L1, (("norm2", "layer_norm"),), _T5_WHY)
    + _leaves(_T + r"\.ffn", _L1 + ".DenseReluDense", (("gate.0", "wi_0"), ("fc1", "wi_1"), ("fc2", "wo")),
              "T5FeedForward: fc1(x) * gelu(gate(x)) -> wi_1(x) * gelu(wi_0(x)), fc2 -> wo")
) + FP8_ROWS

# transformers-named UMT5 single files (repackagings, often fp8): the names are ours already. The token table is
# `shared.weight` (its tied alias `encoder.embed_tokens.weight` dropped), or only the alias.
_UMT5_NAMES = Rule(r"(shared\.weight|encoder\.final_layer_norm\.weight|encoder\.block\.\d+\.layer\.[01]\."
                   r"(?:SelfAttention\.(?:q|k|v|o|relative_attention_bias)|layer_norm|DenseReluDense\.(?:wi_0|wi_1|wi|wo))"
                   r"\.weight)", r"\1", reason="transformers UMT5EncoderModel names")
UMT5_TRANSFORMERS_ROWS = (
    _UMT5_NAMES,
    Rule(r"encoder\.embed_tokens\.weight", None,
         reason="tied alias of shared.weight (transformers' _tied_weights_keys); the model holds the table once"),
) + FP8_ROWS
UMT5_TRANSFORMERS_ALIAS_ROWS = (
    _UMT5_NAMES,
    Rule(r"encoder\.embed_tokens\.weight", "shared.weight", reason="the token table under its tied alias only"),
) + FP8_ROWS

# google/umt5-xxl as Wan 2.1 uses it (the encoder of Wan-AI's *-Diffusers text_encoder/config.json)
UMT5_XXL = {
    "architectures": ["UMT5EncoderModel"], "model_type": "umt5", "vocab_size": 256384, "d_model": 4096,
    "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new", "is_gated_act": True, "is_encoder_decoder": True, "scalable_attention": True,
    "tie_word_embeddings": False, "use_cache": True, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0, "tokenizer_class": "T5Tokenizer",
}


def infer_umt5_config(shapes: dict[str, tuple[int, ...]], where: str = "") -> dict:
    """UMT5-XXL's config with the sizes the (renamed) shapes show: vocab, widths, heads (from the relative bias
    table), buckets, layers, gating. Not in any shape: max distance 128, eps 1e-6, gelu_new (Wan's tanh GELU)."""
    def shape(name):
        if name not in shapes:
            raise ConversionError(f"{where}: no tensor for {name!r}; cannot infer the UMT5 config")
        return shapes[name]

    layers = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise ConversionError(f"{where}: encoder blocks {layers[:8]} are not numbered 0..n-1")
    vocab, d_model = shape("shared.weight")
    buckets, heads = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    inner = shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0]
    if inner % heads:
        raise ConversionError(f"{where}: attention width {inner} is not a multiple of the {heads} heads of the "
                              "relative position bias table")
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    d_ff = shape("encoder.block.0.layer.1.DenseReluDense.wi_0.weight" if gated else
                 "encoder.block.0.layer.1.DenseReluDense.wi.weight")[0]
    return {**UMT5_XXL, "vocab_size": vocab, "d_model": d_model, "d_kv": inner // heads, "d_ff": d_ff,
            "num_layers": len(layers), "num_decoder_layers": len(layers), "num_heads": heads,
            "relative_attention_num_buckets": buckets,
            "feed_forward_proj": "gated-gelu" if gated else "gelu", "is_gated_act": gated}


# ----------------------------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------------------------

_RES = (("residual.0", "norm1"), ("residual.2", "conv1"), ("residual.3", "norm2"), ("residual.6", "conv2"),
        ("shortcut", "conv_shortcut"))
_RESAMPLE = (("resample.1", "resample.1"), ("time_conv", "time_conv"))
_VAE_WHY = "Wan VAE ResidualBlock Sequential(RMS_norm, SiLU, conv, RMS_norm, SiLU, Dropout, conv) -> WanResidualBlock"

# Wan 2.1's latent statistics (WanVAE's mean / std; diffusers' AutoencoderKLWan defaults)
WAN21_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                      -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                     1.6382, 1.1253, 2.8251, 1.9160]


def vae_rows(config: dict) -> list[Rule]:
    """Rows of WanVAE_ for a diffusers AutoencoderKLWan config (levels, res blocks per level, which levels resample
    in time). The encoder's flat `downsamples` index is diffusers' flat `down_blocks` index; the decoder's flat
    `upsamples` regroup into `up_blocks.i.{resnets.j, upsamplers.0}` (num_res_blocks + 1 resnets per level)."""
    n = len(config.get("dim_mult", (1, 2, 4, 4)))
    res = int(config.get("num_res_blocks", 2))
    rows = [Rule(r"conv1\.(weight|bias)", r"quant_conv.\1", reason="WanVAE_.conv1 is the 1x1x1 quant conv"),
            Rule(r"conv2\.(weight|bias)", r"post_quant_conv.\1", reason="WanVAE_.conv2 is the post-quant conv")]
    for part in ("encoder", "decoder"):
        rows += _leaves(part, part, (("conv1", "conv_in"),), "Encoder3d/Decoder3d conv1 is conv_in")
        rows += _leaves(rf"{part}\.head", part, (("0", "norm_out"), ("2", "conv_out")),
                        "head Sequential(RMS_norm, SiLU, conv)")
        rows += _leaves(rf"{part}\.middle\.0", f"{part}.mid_block.resnets.0", _RES, _VAE_WHY)
        rows += _leaves(rf"{part}\.middle\.2", f"{part}.mid_block.resnets.1", _RES, _VAE_WHY)
        rows += _leaves(rf"{part}\.middle\.1", f"{part}.mid_block.attentions.0",
                        (("norm", "norm"), ("to_qkv", "to_qkv"), ("proj", "proj")), "middle AttentionBlock")
    k = 0
    for i in range(n):
        for _ in range(res):
            rows += _leaves(rf"encoder\.downsamples\.{k}", f"encoder.down_blocks.{k}", _RES, _VAE_WHY)
            k += 1
        if i != n - 1:
            rows += _leaves(rf"encoder\.downsamples\.{k}", f"encoder.down_blocks.{k}", _RESAMPLE, "Resample")
            k += 1
    k = 0
    for i in range(n):
        for j in range(res + 1):
            rows += _leaves(rf"decoder\.upsamples\.{k}", f"decoder.up_blocks.{i}.resnets.{j}", _RES,
                            _VAE_WHY + f" (flat upsamples.{k} = level {i}, resnet {j})")
            k += 1
        if i != n - 1:
            rows += _leaves(rf"decoder\.upsamples\.{k}", f"decoder.up_blocks.{i}.upsamplers.0", _RESAMPLE,
                            f"Resample after level {i} (flat upsamples.{k})")
            k += 1
    return rows + list(FP8_ROWS)


def infer_vae_config(shapes: dict[str, tuple[int, ...]], where: str = "") -> dict:
    """AutoencoderKLWan config from WanVAE_'s tensor shapes (original names): base widths, z_dim, levels, res blocks
    per level and which downsamples are temporal (those with a time_conv)."""
    def shape(name):
        if name not in shapes:
            raise ConversionError(f"{where}: no tensor for {name!r}; cannot infer the Wan VAE config")
        return shapes[name]

    base, in_channels = shape("encoder.conv1.weight")[:2]
    z_dim = shape("conv2.weight")[0]
    out_channels, dec_out = shape("decoder.head.2.weight")[:2]
    if any(re.match(r"encoder\.downsamples\.\d+\.(?:downsamples|avg_shortcut)\.", k) for k in shapes):
        raise ConversionError(f"{where}: a Wan 2.2 VAE (residual down blocks, is_residual) is not ported; expected "
                              "Wan 2.1's (Wan2.1_VAE.pth)")
    entries = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))})
    if entries != list(range(len(entries))) or not entries:
        raise ConversionError(f"{where}: encoder.downsamples entries {entries[:8]} are not numbered 0..n-1")
    levels, current, temporal = [], [], []
    for k in entries:
        p = f"encoder.downsamples.{k}."
        if p + "residual.2.weight" in shapes:
            current.append(shapes[p + "residual.2.weight"][0])
        elif p + "resample.1.weight" in shapes:
            levels.append(current)
            temporal.append(p + "time_conv.weight" in shapes)
            current = []
        else:
            raise ConversionError(f"{where}: encoder.downsamples.{k} is neither a ResidualBlock nor a Resample "
                                  "(attention blocks in the encoder, attn_scales, are not supported)")
    levels.append(current)
    res = {len(level) for level in levels}
    if len(res) != 1 or 0 in res:
        raise ConversionError(f"{where}: encoder levels hold {[len(v) for v in levels]} residual blocks; expected the "
                              "same number in each")
    widths = [level[-1] for level in levels]
    if any(w % base for w in widths):
        raise ConversionError(f"{where}: encoder level widths {widths} are not multiples of the base width {base}")
    dim_mult = [w // base for w in widths]
    return {
        "_class_name": "AutoencoderKLWan", "base_dim": base,
        "decoder_base_dim": None if dec_out == base * dim_mult[0] else dec_out // dim_mult[0],
        "z_dim": z_dim, "dim_mult": dim_mult, "num_res_blocks": res.pop(), "attn_scales": [],
        "temperal_downsample": temporal, "dropout": 0.0,
        "latents_mean": WAN21_LATENTS_MEAN if z_dim == 16 else None,
        "latents_std": WAN21_LATENTS_STD if z_dim == 16 else None,
        "is_residual": False, "in_channels": in_channels, "out_channels": out_channels, "patch_size": None,
        "scale_factor_temporal": 2 ** sum(temporal), "scale_factor_spatial": 2 ** (len(dim_mult) - 1),
    }


# ----------------------------------------------------------------------------------------------------------------
# CLIP image encoder (I2V): the ViT-H/14 vision tower of Wan's open-clip XLM-RoBERTa CLIP
# ----------------------------------------------------------------------------------------------------------------

_V = r"visual\.transformer\.(\d+)"
_VL = r"encoder.layers.\1"
_CLIP_WHY = "Wan VisionTransformer -> transformers CLIPVisionModel"
CLIP_ROWS = tuple(
    [Rule(r"visual\.patch_embedding\.weight", "embeddings.patch_embedding.weight",
          reason="patch conv (no bias: pre-norm ViT), as CLIP's"),
     Rule(r"visual\.cls_embedding", "embeddings.class_embedding", "drop_unit_axes", "class token (1, 1, C) -> (C,)"),
     Rule(r"visual\.pos_embedding", "embeddings.position_embedding.weight", "drop_unit_axes",
          "position table (1, 1 + patches, C) -> the embedding table"),
     Rule(_V + r"\.attn\.to_qkv\.weight", tuple(_VL + f".self_attn.{x}_proj.weight" for x in "qkv"),
          reason="fused projection: output rows (3, heads, head_dim), q then k then v"),
     Rule(_V + r"\.attn\.to_qkv\.bias", tuple(_VL + f".self_attn.{x}_proj.bias" for x in "qkv"),
          reason="fused projection bias: q, k, v"),
     Rule(r"visual\.head", None, reason="the image-text projection (x @ head); Wan's I2V reads the penultimate "
          "block's hidden states (diffusers: hidden_states[-2]), and CLIPVisionModel has no projection"),
     Rule(r"textual\..+", None, reason="the XLM-RoBERTa text tower; Wan's I2V encodes images only"),
     Rule(r"log_scale", None, reason="CLIP's contrastive logit scale (training only)")]
    + _leaves(r"visual", "", (("pre_norm", "pre_layrnorm"), ("post_norm", "post_layernorm")),
              _CLIP_WHY + " (sic: transformers' pre_layrnorm)")
    + _leaves(_V, _VL, (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                        ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2")), _CLIP_WHY)
) + FP8_ROWS
CLIP_HEAD_DIM = 80  # ViT-H/14: 1280 wide, 16 heads


def infer_clip_config(shapes: dict[str, tuple[int, ...]], where: str = "") -> dict:
    """transformers CLIPVisionConfig of Wan's vision tower from its (original-name) shapes; the heads do not show:
    ViT-H/14's head dim 80 (16 heads at 1280 wide)."""
    def shape(name):
        if name not in shapes:
            raise ConversionError(f"{where}: no tensor for {name!r}; cannot infer the CLIP vision config")
        return shapes[name]

    hidden, channels, patch = shape("visual.patch_embedding.weight")[:3]
    positions = shape("visual.pos_embedding")[-2]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ConversionError(f"{where}: visual.pos_embedding holds {positions} positions; expected 1 + a square grid")
    layers = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"visual\.transformer\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise ConversionError(f"{where}: visual.transformer blocks {layers[:8]} are not numbered 0..n-1")
    if hidden % CLIP_HEAD_DIM:
        raise ConversionError(f"{where}: cannot tell the CLIP attention heads: width {hidden} is not a multiple of "
                              f"ViT-H/14's head dim {CLIP_HEAD_DIM}")
    return {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "hidden_size": hidden,
            "intermediate_size": shape("visual.transformer.0.mlp.0.weight")[0], "num_hidden_layers": len(layers),
            "num_attention_heads": hidden // CLIP_HEAD_DIM, "num_channels": channels, "patch_size": patch,
            "image_size": grid * patch, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
            "projection_dim": shapes.get("visual.head", (hidden, hidden))[1]}


# ----------------------------------------------------------------------------------------------------------------
# Single files and release folders
# ----------------------------------------------------------------------------------------------------------------

LAYOUTS = ("wan-transformer", "wan-umt5", "umt5-transformers", "wan-vae", "wan-clip")


def detect(keys) -> str | None:
    """Which Wan original component a file's keys hold (None: not one)."""
    keys = set(keys)
    strip = {k[len("model.diffusion_model."):] if k.startswith("model.diffusion_model.") else k for k in keys}
    if "patch_embedding.weight" in strip and ("head.modulation" in strip or "blocks.0.self_attn.q.weight" in strip):
        return "wan-transformer"
    if "token_embedding.weight" in keys and any(k.startswith("blocks.0.attn.") for k in keys):
        return "wan-umt5"
    if any(k.startswith("encoder.block.0.layer.0.SelfAttention.") for k in keys) and not any(
            k.startswith("decoder.") for k in keys):
        return "umt5-transformers"
    if "encoder.conv1.weight" in keys and "decoder.head.2.weight" in keys:
        return "wan-vae"
    if "visual.cls_embedding" in keys and any(k.startswith("visual.transformer.") for k in keys):
        return "wan-clip"
    return None


def component_source(path: Path, tensors: dict[str, TensorRef], layout: str, released: dict | None = None,
                     files: list[Path] | None = None) -> ComponentSource:
    """A ComponentSource for one component in a Wan original layout: fp8 dequantised, config inferred, rows set."""
    where = str(path)
    tensors, scaled = dequantise_fp8(tensors, where)
    if layout == "wan-transformer":
        cls, rules = "WanTransformer3DModel", TRANSFORMER_ROWS
        config = infer_transformer_config(renamed_shapes(rules, tensors), released, where)
    elif layout == "wan-umt5":
        cls, rules = "UMT5EncoderModel", UMT5_ROWS
        config = infer_umt5_config(renamed_shapes(rules, tensors), where)
    elif layout == "umt5-transformers":
        cls = "UMT5EncoderModel"
        rules = UMT5_TRANSFORMERS_ROWS if "shared.weight" in tensors else UMT5_TRANSFORMERS_ALIAS_ROWS
        config = infer_umt5_config(renamed_shapes(rules, tensors), where)
    elif layout == "wan-vae":
        cls = "AutoencoderKLWan"
        config = infer_vae_config({k: tuple(r.shape) for k, r in tensors.items()}, where)
        rules = tuple(vae_rows(config))
    elif layout == "wan-clip":
        cls, rules = "CLIPVisionModel", CLIP_ROWS
        config = infer_clip_config({k: tuple(r.shape) for k, r in tensors.items()}, where)
    else:
        raise ConversionError(f"{where}: unknown Wan layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    src = ComponentSource(path.parent if path.is_file() else path, config, cls, files or [path], tensors)
    src.converter = OriginalLayoutConverter(cls, rules, layout)
    src.notes = {"layout": layout, **({"fp8_scales": scaled} if scaled else {})}
    return src


RELEASE_FILES = {
    "vae": "Wan2.1_VAE.pth",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "image_encoder": "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    "tokenizer": "google/umt5-xxl",
}

# Wan-AI's *-Diffusers repos: scheduler_config.json (flow_shift 3.0 for 480p models, 5.0 for 720p)
UNIPC_SCHEDULER = {
    "_class_name": "UniPCMultistepScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
    "disable_corrector": [], "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
    "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True, "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False, "sample_max_value": 1.0, "solver_order": 2, "solver_p": None,
    "solver_type": "bh2", "steps_offset": 0, "thresholding": False, "timestep_spacing": "linspace",
    "trained_betas": None, "use_beta_sigmas": False, "use_exponential_sigmas": False, "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}
CLIP_IMAGE_PROCESSOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224},
}


def released_config(folder: Path) -> dict | None:
    """The release's config.json (WanModel fields) when `folder` holds one, else None."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    cfg = read_json(path)
    return cfg if cfg.get("_class_name") == "WanModel" or {"dim", "num_heads", "model_type"} <= set(cfg) else None


def is_release(folder: Path) -> bool:
    return Path(folder).is_dir() and released_config(folder) is not None


def open_release_transformer(root: Path) -> ComponentSource:
    """The transformer of an original release folder (config.json + diffusion_pytorch_model*.safetensors)."""
    from .sources import _weight_files, read_tensors

    root = Path(root)
    files = _weight_files(root, None)
    if not files:
        raise ConversionError(f"{root}: a Wan release's config.json, but no diffusion_pytorch_model*.safetensors")
    tensors = read_tensors(files)
    layout = detect(tensors)
    if layout != "wan-transformer":
        raise ConversionError(f"{files[0]}: expected Wan-AI transformer names (patch_embedding, blocks.N.self_attn, "
                              f"head.modulation); found {next(iter(tensors), None)!r}")
    return component_source(root, tensors, layout, released_config(root), files)


def release_path(root: Path, name: str) -> Path:
    """A release file: Wan-AI's pickle, or the same weights as safetensors under the same stem (what `mindport
    export --format original` writes, having no torch to pickle with)."""
    path = Path(root) / RELEASE_FILES[name]
    alt = path.with_suffix(".safetensors")
    return alt if path.suffix == ".pth" and not path.exists() and alt.exists() else path


def open_release(root: Path):
    """An original Wan 2.1 release folder -> (component sources, model_index, plain components, notes).
    The transformer alone (no VAE and no T5 file) is a WanTransformer3DModel component folder (sources {".": ...})."""
    from .sources import read_tensors

    root = Path(root)
    released = released_config(root)
    transformer = open_release_transformer(root)
    present = {name: release_path(root, name).exists() for name in RELEASE_FILES}
    if not present["vae"] and not present["text_encoder"]:
        return {".": transformer}, None, {}, {"source_format": "wan-original-transformer"}
    for name in ("vae", "text_encoder"):
        if not present[name]:
            raise ConversionError(f"{root}: a Wan release needs {RELEASE_FILES[name]} next to the transformer "
                                  f"(found {RELEASE_FILES['vae' if name == 'text_encoder' else 'text_encoder']})")
    sources = {"transformer": transformer}
    for name in ("text_encoder", "vae"):
        path = release_path(root, name)
        part = read_tensors([path])
        got = detect(part)
        want = "wan-umt5" if name == "text_encoder" else "wan-vae"
        if got != want:
            raise ConversionError(f"{path}: expected {want} names, found {got or 'an unknown layout'} "
                                  f"(first key {next(iter(part), None)!r})")
        sources[name] = component_source(path, part, want)
    i2v = transformer.config["image_dim"] is not None
    model_type = (released or {}).get("model_type", "i2v" if i2v else "t2v")
    if model_type not in ("t2v", "i2v", "flf2v") or (model_type != "t2v") != i2v:
        raise ConversionError(f"{root}: a model_type={model_type!r} release "
                              f"{'with' if i2v else 'without'} a CLIP image embedder; only Wan 2.1 releases (t2v, "
                              "i2v, flf2v) convert as a folder (convert the transformer file on its own)")
    if i2v:
        clip = release_path(root, "image_encoder")
        if not clip.exists():
            raise ConversionError(f"{root}: an image-conditioned ({model_type}) Wan release needs "
                                  f"{RELEASE_FILES['image_encoder']}")
        part = read_tensors([clip])
        if detect(part) != "wan-clip":
            raise ConversionError(f"{clip}: expected Wan's open-clip names (visual.cls_embedding, "
                                  f"visual.transformer.N); first key {next(iter(part), None)!r}")
        sources["image_encoder"] = component_source(clip, part, "wan-clip")
    shift, why = (5.0, "folder name says 720P") if "720p" in root.name.lower() else (3.0, "480p default")
    plain = {"scheduler": {**UNIPC_SCHEDULER, "flow_shift": shift}}
    index = {"_class_name": "WanImageToVideoPipeline" if i2v else "WanPipeline",
             "scheduler": ["diffusers", "UniPCMultistepScheduler"],
             "text_encoder": ["transformers", "UMT5EncoderModel"],
             "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"]}
    if i2v:
        plain["image_processor"] = {"_class_name": "CLIPImageProcessor", **CLIP_IMAGE_PROCESSOR}
        index["image_encoder"] = ["transformers", "CLIPVisionModel"]
        index["image_processor"] = ["transformers", "CLIPImageProcessor"]
    notes = {"source_format": f"wan-original-release ({model_type})", "flow_shift": f"{shift} ({why})"}
    if present["tokenizer"]:
        plain["tokenizer"] = root / RELEASE_FILES["tokenizer"]
        index["tokenizer"] = ["transformers", "T5TokenizerFast"]
    else:
        notes["tokenizer"] = f"no {RELEASE_FILES['tokenizer']} folder: the pipeline has no tokenizer"
    return sources, index, plain, notes


def open_single_file(path: Path, tensors: dict[str, TensorRef], config_dir=None) -> ComponentSource | None:
    """A single file holding one Wan component in an original (or transformers-named, fp8) layout; None when the
    keys are not one. `config_dir`: a folder with the release's config.json (the transformer's heads); without it,
    a release config.json next to the file is used."""
    layout = detect(tensors)
    if layout is None:
        return None
    released = released_config(Path(config_dir)) if config_dir is not None else None
    if config_dir is not None and released is None:
        raise ConversionError(f"--config {config_dir}: no Wan release config.json there (expected WanModel fields "
                              "dim, num_heads, model_type)")
    if released is None and layout == "wan-transformer":
        released = released_config(Path(path).parent)
    return component_source(Path(path), tensors, layout, released)
