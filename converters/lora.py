"""LoRA files -> low-rank pairs on named modules of a pipeline's models (SD 1.5 / AnimateDiff UNet and CLIP text
encoder, SVD / I2VGen-XL UNets, the Wan transformer), validated before anything is applied. Pure library: imports
neither mindport nor parity; the caller hands the target modules' weight shapes.

A LoRA adds `scale * up @ down` to a weight (a Linear (out, in), or a Conv2d (out, in, kh, kw) / Conv3d (out, in, kt,
kh, kw) with a (r, in, *kernel) `down` convolution and a 1x1(x1) `up` convolution: LoCon). scale = alpha / rank,
alpha from the file (`.alpha` tensors), else from the adapter config in the safetensors metadata
(`lora_adapter_metadata`: `<component>.lora_alpha`, `alpha_pattern`, `rank_pattern`, `use_rslora`), else alpha = rank.
A bias delta may come with it: peft's `lora_B.bias` (lora_bias=True; scaled like the pair, by alpha / rank) or the
original Wan layout's `diff_b` (added as it is: diffusers folds a file's alpha into the pair only).

Layouts, one explicit row per key spelling (`LORA_RULES`; a key matched by two rows is an error, so order never
matters). `<C>` is the component (below), `<P>` a module path in diffusers naming:

    peft / diffusers        <C>.<P>.lora_A.weight, <C>.<P>.lora_B.weight       (text encoder: `text_model.` optional)
    diffusers, older        <C>.<P>.lora.down.weight, .lora_linear_layer.up.weight, <C>.<P>.alpha
                            unet.<attn>.processor.to_{q,k,v,out}_lora.{down,up}.weight  -> <attn>.to_{q,k,v,out.0}
                            text_encoder.<...self_attn>.to_{q,k,v,out}_lora.*          -> <...>.{q,k,v,out}_proj
    mindport convert-lora   <C>.<P>.lora_down.weight, <C>.<P>.lora_up.weight, <C>.<P>.lora_alpha (float64),
                            <C>.<P>.lora_diff_b (the bias delta, already scaled)
    kohya / A1111           lora_unet_<P with _ for .>.lora_{down,up}.weight, .alpha  (LoCon convs alike)
                            lora_te_<P with _ for .>.*                                  (the text encoder)
    AnimateDiff release     <block>.motion_modules.J.temporal_transformer.transformer_blocks.K.attention_blocks.N
    (motion LoRA, .ckpt)        .processor.to_{q,k,v,out}_lora.{down,up}.weight
                            -> unet <block>.motion_modules.J.transformer_blocks.K.attn{N+1}.to_{q,k,v,out.0}
    Wan original / community diffusion_model.<M>.{lora_down,lora_A}.weight, .{lora_up,lora_B}.weight, .alpha, .diff_b
    (as diffusers converts)     M in the original Wan module naming (`WAN_ORIGINAL_MODULES`: blocks.N.self_attn.q ->
                                transformer blocks.N.attn1.to_q, cross_attn.k_img -> attn2.add_k_proj, ffn.0 ->
                                ffn.net.0.proj, head.head -> proj_out, ...); norm `.diff` / `.diff_b` keys are
                                skipped (diffusers drops them: zeros in the released files); other `.diff` keys
                                (full weight deltas, which diffusers ignores) are refused. With alphas, the
                                caller folds alpha / rank into the pair as diffusers does (`LoraEntry.fold`).
                                Where diffusers differs: alphas on the non-block modules are applied (diffusers
                                refuses such files); a diff_b without its pair is refused (diffusers drops a
                                time_projection diff_b without weights)
    Wan musubi-tuner        lora_unet_blocks_N_self_attn_q.lora_{down,up}.weight, .alpha (blocks only, as diffusers)

`<C>` is `unet`, `text_encoder` or `transformer` (diffusers' Wan files; `load_into_transformer_2` is the caller's
business: it hands the second expert's shapes as the `transformer`).

A file whose keys carry no component prefix and no kohya / release spelling is a UNet LoRA (as diffusers reads it):
its keys get `unet.` first. kohya names are resolved against the target's own module paths (underscores are
ambiguous: `to_out_0`, `ff_net_0_proj`), never by string replacement.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConversionError
from .safetensors_io import FLOAT_TAGS, TensorRef, read_header

COMPONENTS = ("unet", "text_encoder", "transformer")


@dataclass(frozen=True)
class LoraRule:
    """Keys fully matching `source` give the `role` ("down", "up", "alpha", or a group reference such as r"\\4") of
    the module at `target` (a `re` template) in `component` (a name or a template). `layout` names the spelling;
    kohya rows' targets are underscored names, resolved against the component's module paths."""

    source: str
    component: str
    target: str
    role: str
    layout: str
    reason: str = ""

    def match(self, key: str):
        return re.fullmatch(self.source, key)


_C = r"(unet|text_encoder|transformer)"
_TE_PREFIX = r"(?:text_model\.)?"  # transformers 4 kept CLIP's text_model level, transformers 5 does not
_MM = r"((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)\.temporal_transformer\.transformer_blocks\.(\d+)"

LORA_RULES: tuple[LoraRule, ...] = (
    # peft, as diffusers' save_lora_weights writes it
    LoraRule(_C + r"\." + _TE_PREFIX + r"(.+)\.lora_A\.weight", r"\1", r"\2", "down", "peft"),
    LoraRule(_C + r"\." + _TE_PREFIX + r"(.+)\.lora_B\.weight", r"\1", r"\2", "up", "peft"),
    LoraRule(_C + r"\." + _TE_PREFIX + r"(.+)\.lora_B\.bias", r"\1", r"\2", "bias", "peft",
             "peft lora_bias=True: lora_B's bias, scaled with the pair"),
    # older diffusers files: LoRALinearLayer / LoRAConv2dLayer under the layer, network alphas next to it
    LoraRule(_C + r"\." + _TE_PREFIX + r"(.+?)\.lora(?:_linear_layer)?\.(down|up)\.weight", r"\1", r"\2", r"\3",
             "diffusers-old", "LoRALinearLayer / LoRAConv2dLayer named lora or lora_linear_layer"),
    LoraRule(_C + r"\." + _TE_PREFIX + r"(.+)\.alpha", r"\1", r"\2", "alpha", "diffusers-old",
             "network alpha of the module"),
    LoraRule(r"unet\.(.+?)(?:\.processor)?\.(to_q|to_k|to_v)_lora\.(down|up)\.weight", "unet", r"\1.\2", r"\3",
             "diffusers-old", "attention processor LoRA (LoRAAttnProcessor): to_q_lora is to_q's"),
    LoraRule(r"unet\.(.+?)(?:\.processor)?\.to_out_lora\.(down|up)\.weight", "unet", r"\1.to_out.0", r"\2",
             "diffusers-old", "attention processor LoRA: to_out_lora is to_out.0's"),
    LoraRule(r"text_encoder\." + _TE_PREFIX + r"(.+\.self_attn)\.to_(q|k|v)_lora\.(down|up)\.weight", "text_encoder",
             r"\1.\2_proj", r"\3", "diffusers-old", "CLIP attention: to_q_lora is q_proj's"),
    LoraRule(r"text_encoder\." + _TE_PREFIX + r"(.+\.self_attn)\.to_out_lora\.(down|up)\.weight", "text_encoder",
             r"\1.out_proj", r"\2", "diffusers-old", "CLIP attention: to_out_lora is out_proj's"),
    # kohya-ss / A1111 (SD 1.x is trained on diffusers' module tree, dots spelled as underscores)
    # (`lora_unet_blocks_N_...` is Wan musubi-tuner's, below; SD UNet module names never start with `blocks_`)
    LoraRule(r"lora_unet_(?!blocks_\d)(\w+)\.lora_(down|up)\.weight", "unet", r"\1", r"\2", "kohya"),
    LoraRule(r"lora_unet_(?!blocks_\d)(\w+)\.alpha", "unet", r"\1", "alpha", "kohya"),
    LoraRule(r"lora_te_(\w+)\.lora_(down|up)\.weight", "text_encoder", r"\1", r"\2", "kohya"),
    LoraRule(r"lora_te_(\w+)\.alpha", "text_encoder", r"\1", "alpha", "kohya"),
    # `mindport convert-lora` output: the module paths exactly as mindport names them, the effective alpha beside
    LoraRule(_C + r"\.(.+)\.lora_(down|up)\.weight", r"\1", r"\2", r"\3", "mindport",
             "mindport convert-lora: <component>.<module path>.lora_down/lora_up"),
    LoraRule(_C + r"\.(.+)\.lora_alpha", r"\1", r"\2", "alpha", "mindport",
             "mindport convert-lora: alpha such that alpha / rank is the file's scale"),
    LoraRule(_C + r"\.(.+)\.lora_diff_b", r"\1", r"\2", "diff_b", "mindport",
             "mindport convert-lora: the bias delta, added as it is"),
    # the original AnimateDiff motion LoRAs (v2_lora_*.ckpt): attention_blocks.N is attnN+1
    LoraRule(_MM + r"\.attention_blocks\.0\.processor\.(to_q|to_k|to_v)_lora\.(down|up)\.weight", "unet",
             r"\1.motion_modules.\2.transformer_blocks.\3.attn1.\4", r"\5", "animatediff-original"),
    LoraRule(_MM + r"\.attention_blocks\.1\.processor\.(to_q|to_k|to_v)_lora\.(down|up)\.weight", "unet",
             r"\1.motion_modules.\2.transformer_blocks.\3.attn2.\4", r"\5", "animatediff-original"),
    LoraRule(_MM + r"\.attention_blocks\.0\.processor\.to_out_lora\.(down|up)\.weight", "unet",
             r"\1.motion_modules.\2.transformer_blocks.\3.attn1.to_out.0", r"\4", "animatediff-original"),
    LoraRule(_MM + r"\.attention_blocks\.1\.processor\.to_out_lora\.(down|up)\.weight", "unet",
             r"\1.motion_modules.\2.transformer_blocks.\3.attn2.to_out.0", r"\4", "animatediff-original"),
)


# The original Wan module names (Wan-Video/Wan2.1, `diffusion_model.` in the trainers' files) -> diffusers' module
# paths in WanTransformer3DModel, one row per module kind, as diffusers' `_convert_non_diffusers_wan_lora_to_diffusers`
# maps them. The first eight (the blocks) are also musubi-tuner's, spelled with underscores.
WAN_ORIGINAL_MODULES: tuple[tuple[str, str], ...] = (
    (r"blocks\.(\d+)\.self_attn\.(q|k|v)", r"blocks.\1.attn1.to_\2"),
    (r"blocks\.(\d+)\.self_attn\.o", r"blocks.\1.attn1.to_out.0"),
    (r"blocks\.(\d+)\.cross_attn\.(q|k|v)", r"blocks.\1.attn2.to_\2"),
    (r"blocks\.(\d+)\.cross_attn\.o", r"blocks.\1.attn2.to_out.0"),
    (r"blocks\.(\d+)\.cross_attn\.k_img", r"blocks.\1.attn2.add_k_proj"),  # I2V image cross-attention
    (r"blocks\.(\d+)\.cross_attn\.v_img", r"blocks.\1.attn2.add_v_proj"),
    (r"blocks\.(\d+)\.ffn\.0", r"blocks.\1.ffn.net.0.proj"),
    (r"blocks\.(\d+)\.ffn\.2", r"blocks.\1.ffn.net.2"),
    (r"time_projection\.1", "condition_embedder.time_proj"),
    (r"head\.head", "proj_out"),
    (r"text_embedding\.0", "condition_embedder.text_embedder.linear_1"),
    (r"text_embedding\.2", "condition_embedder.text_embedder.linear_2"),
    (r"time_embedding\.0", "condition_embedder.time_embedder.linear_1"),
    (r"time_embedding\.2", "condition_embedder.time_embedder.linear_2"),
    (r"img_emb\.proj\.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    (r"img_emb\.proj\.3", "condition_embedder.image_embedder.ff.net.2"),
)
# key suffix -> role; diff_b is the module's bias delta (diffusers: lora_B.bias, not scaled by the file's alpha)
_WAN_ROLES = ((r"\.(?:lora_down|lora_A)\.weight", "down"), (r"\.(?:lora_up|lora_B)\.weight", "up"),
              (r"\.alpha", "alpha"), (r"\.diff_b", "diff_b"))
_MUSUBI_ROLES = ((r"\.lora_down\.weight", "down"), (r"\.lora_up\.weight", "up"), (r"\.alpha", "alpha"))


def alpha_split(scale: float) -> tuple[float, float]:
    """(down factor, up factor) with product `scale`, powers of two apart, as diffusers splits a Wan file's alpha /
    rank between the two matrices."""
    down, up = scale, 1.0
    while down * 2 < up:
        down, up = down * 2, up / 2
    return down, up


def wan_module(original: str) -> str | None:
    """diffusers' module path of an original Wan module name (`blocks.0.cross_attn.k_img` ->
    `blocks.0.attn2.add_k_proj`), None if no row maps it."""
    for pattern, target in WAN_ORIGINAL_MODULES:
        m = re.fullmatch(pattern, original)
        if m:
            return m.expand(target)
    return None


def _wan_rules() -> tuple[LoraRule, ...]:
    rows = []
    for module, target in WAN_ORIGINAL_MODULES:
        rows += [LoraRule(r"diffusion_model\." + module + suffix, "transformer", target, role, "wan-original")
                 for suffix, role in _WAN_ROLES]
    for module, target in WAN_ORIGINAL_MODULES[:8]:
        rows += [LoraRule(r"lora_unet_" + module.replace(r"\.", "_") + suffix, "transformer", target, role,
                          "wan-musubi") for suffix, role in _MUSUBI_ROLES]
    rows.append(LoraRule(r"diffusion_model\.(.*norm.*)\.diff(?:_b)?", "transformer", r"\1", "skip", "wan-original",
                         "norm diffs: diffusers drops them (zeros in the released files)"))
    return tuple(rows)


LORA_RULES = LORA_RULES + _wan_rules()


@dataclass
class LoraEntry:
    """One module's low-rank pair: weight += scale * up @ down (conv: up (out, r, 1, 1[, 1]), down (r, in, *kernel));
    with a bias delta, bias += bias_scale * bias."""

    component: str
    path: str
    kind: str  # "linear" | "conv"
    down: TensorRef
    up: TensorRef
    rank: int
    alpha: float
    scale: float  # alpha / rank (alpha / sqrt(rank) with rsLoRA)
    keys: tuple[str, ...]
    bias: TensorRef | None = None
    bias_scale: float = 1.0
    # Wan original / musubi files with alphas: diffusers folds alpha / rank into the pair as (down * fold[0], up *
    # fold[1]) and then scales by 1; the caller folds the same way, so that fused weights equal diffusers' bit for bit
    fold: tuple[float, float] | None = None


@dataclass
class LoraPlan:
    file: str
    layouts: list[str]
    entries: list[LoraEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # keys read and deliberately not applied (norm diffs)

    def touched(self) -> list[str]:
        return [f"{e.component}.{e.path}.{p}" for e in self.entries
                for p in (("weight", "bias") if e.bias is not None else ("weight",))]


def read_lora_file(path) -> tuple[dict[str, TensorRef], dict]:
    """The tensors (not yet read) and metadata of a LoRA file: safetensors, or a torch pickle (.ckpt / .pt / .pth /
    .bin, read with weights_only=True; needs torch)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: LoRA file not found")
    if path.suffix == ".safetensors":
        return read_header(path)
    from .sources import _bin_tensors  # a torch pickle: torch imported lazily there

    return _bin_tensors(path), {}


def _adapter_config(metadata: dict, component: str, where: str) -> dict:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except ValueError:
        raise ConversionError(f"{where}: metadata lora_adapter_metadata is not JSON") from None
    prefix = component + "."
    return {k[len(prefix):]: v for k, v in packed.items() if k.startswith(prefix)}


def _pattern_value(patterns: dict, path: str):
    # peft's rank_pattern / alpha_pattern: a key matches a module path ending in it (regex allowed)
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{key})", path):
            return value
    return None


def _classify(key: str, where: str):
    hits = [(r, m) for r in LORA_RULES if (m := r.match(key))]
    if len(hits) > 1:
        rows = ", ".join(repr(r.source) for r, _ in hits)
        raise ConversionError(f"{where}: key {key!r} matches several LoRA rule rows ({rows}); the table is ambiguous")
    if not hits and key.endswith(".diff"):
        raise ConversionError(f"{where}: key {key!r} is a full weight difference (.diff), which mindport does not "
                              "apply (diffusers ignores it too); expected LoRA pairs, alphas and diff_b bias deltas")
    if not hits:
        raise ConversionError(f"{where}: key {key!r} matches no LoRA layout mindport reads (peft/diffusers lora_A/"
                              "lora_B, kohya lora_unet_/lora_te_ lora_down/lora_up, AnimateDiff motion LoRA, Wan "
                              "diffusion_model. / musubi)")
    rule, m = hits[0]
    return rule, m.expand(rule.component), m.expand(rule.target), m.expand(rule.role)


def map_lora(tensors: dict[str, TensorRef], metadata: dict, targets: dict[str, dict[str, tuple[int, ...]]],
             where: str) -> LoraPlan:
    """Map every key of a LoRA file to a module of `targets` ({component: {module path: weight shape}}) and check it:
    each key used once, each module's down and up present, shapes consistent with the module's weight (rank equal
    in both), floating dtypes. Raises ConversionError naming the first offending key; reads no tensor data except
    `.alpha` scalars."""
    keys = list(tensors)
    if not keys:
        raise ConversionError(f"{where}: the LoRA file holds no tensors")
    known = ("unet.", "text_encoder.", "transformer.", "diffusion_model.", "lora_unet_", "lora_te")
    renamed = {k: k for k in keys}
    if not any(k.startswith(known) or ".temporal_transformer." in k for k in keys):
        renamed = {k: "unet." + k for k in keys}  # a bare UNet LoRA, as diffusers reads one
    kohya_names: dict[str, dict[str, str | None]] = {}
    for c, paths in targets.items():  # underscored path -> path (None where two paths spell alike)
        names = kohya_names[c] = {}
        for p in paths:
            u = p.replace(".", "_")
            names[u] = None if u in names else p
    groups: dict[tuple[str, str], dict] = {}
    layouts: set[str] = set()
    skipped = []
    for key in keys:
        rule, comp, target, role = _classify(renamed[key], where)
        if role == "skip":
            skipped.append(key)
            continue
        if comp not in targets:
            raise ConversionError(f"{where}: key {key!r} is for the {comp}, which this pipeline does not have "
                                  f"(it has {', '.join(sorted(targets))}); a LoRA for another architecture?")
        if rule.layout == "kohya":
            names = kohya_names[comp]
            if target not in names and target.startswith("text_model_"):
                target = target[len("text_model_"):]
            if target in names and names[target] is None:
                raise ConversionError(f"{where}: key {key!r} (kohya name {target!r}) fits several {comp} modules")
            path = names.get(target)
            if path is None:
                raise ConversionError(f"{where}: key {key!r} names no {comp} module (kohya name {target!r}); "
                                      "a LoRA for another architecture?")
            target = path
        elif target not in targets[comp]:
            raise ConversionError(f"{where}: key {key!r} targets {comp} module {target!r}, which does not exist or is "
                                  "not a Linear / Conv2d / Conv3d; a LoRA for another architecture?")
        layouts.add(rule.layout)
        slot = groups.setdefault((comp, target), {"keys": []})
        if role in slot:
            raise ConversionError(f"{where}: key {key!r} gives the {role} of {comp}.{target} again (also "
                                  f"{slot[role][0]!r})")
        slot[role] = (key, tensors[key])
        slot["keys"].append(key)
        if role == "alpha":
            slot["alpha_layout"] = rule.layout

    plan = LoraPlan(file=where, layouts=sorted(layouts), skipped=skipped)
    configs = {c: _adapter_config(metadata, c, where) for c in targets}
    for (comp, path), slot in sorted(groups.items()):
        for role in ("down", "up"):
            if role not in slot:
                raise ConversionError(f"{where}: {comp}.{path} has no {role} weight (keys {slot['keys']})")
        (dkey, down), (ukey, up) = slot["down"], slot["up"]
        for k, ref in ((dkey, down), (ukey, up)):
            if ref.dtype not in FLOAT_TAGS:
                raise ConversionError(f"{where}: {k!r} has dtype {ref.dtype}; floating point expected")
        weight = tuple(targets[comp][path])
        kind = "linear" if len(weight) == 2 else "conv"
        rank = down.shape[0] if down.shape else 0
        ones = (1,) * (len(weight) - 2)  # a conv's up is 1x1 (1x1x1)
        want_down, want_up = (rank, weight[1], *weight[2:]), (weight[0], rank, *ones)
        ok_down, ok_up = tuple(down.shape) == want_down, tuple(up.shape) == want_up
        want = f"down {want_down} and up {want_up}"
        if rank == 0 or not ok_down:
            raise ConversionError(f"{where}: {dkey!r} has shape {tuple(down.shape)}, but {comp}.{path} (weight "
                                  f"{weight}) needs {want}")
        if not ok_up:
            raise ConversionError(f"{where}: {ukey!r} has shape {tuple(up.shape)}, but {comp}.{path} (weight "
                                  f"{weight}) needs {want}")
        cfg = configs[comp]
        if cfg.get("use_dora"):
            raise ConversionError(f"{where}: the {comp} adapter is DoRA (use_dora), which mindport does not apply")
        if "alpha" in slot:
            akey, aref = slot["alpha"]
            arr = np.asarray(aref.load(), np.float64)
            if arr.size != 1:
                raise ConversionError(f"{where}: {akey!r} has shape {tuple(aref.shape)}; a scalar alpha expected")
            alpha = float(arr.reshape(()))
        else:
            alpha = _pattern_value(cfg.get("alpha_pattern"), path)
            if alpha is None:
                alpha = cfg.get("lora_alpha")
            alpha = float(alpha) if alpha is not None else float(rank)
        scale = alpha / (rank ** 0.5 if cfg.get("use_rslora") else rank)
        bias, bias_scale = None, 1.0
        for role, s in (("bias", scale), ("diff_b", 1.0)):
            if role in slot:
                if bias is not None:
                    raise ConversionError(f"{where}: {slot[role][0]!r} gives {comp}.{path} a second bias delta")
                (bkey, bias), bias_scale = slot[role], s
                if bias.dtype not in FLOAT_TAGS or tuple(bias.shape) != (weight[0],):
                    raise ConversionError(f"{where}: {bkey!r} has shape {tuple(bias.shape)} and dtype {bias.dtype}, "
                                          f"but {comp}.{path}'s bias delta must be floating point ({weight[0]},)")
        fold = alpha_split(scale) if slot.get("alpha_layout") in ("wan-original", "wan-musubi") else None
        plan.entries.append(LoraEntry(comp, path, kind, down, up, rank, alpha, scale, tuple(slot["keys"]), bias,
                                      bias_scale, fold))
    return plan
