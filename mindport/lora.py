"""LoRA on MindSpore pipelines, with the calls diffusers / mindone users make:

    pipe.load_lora_weights("style.safetensors", adapter_name="style")       # peft/diffusers, kohya/A1111 (LoCon too)
    pipe.load_lora_weights("v2_lora_ZoomIn.ckpt", adapter_name="zoom")       # AnimateDiff motion LoRAs, both layouts
    pipe.set_adapters(["style", "zoom"], adapter_weights=[0.8, 0.6])
    pipe.fuse_lora(lora_scale=1.0); pipe.unfuse_lora(); pipe.unload_lora_weights()

Wan (WanPipeline, WanImageToVideoPipeline) as diffusers' WanLoraLoaderMixin: the transformer only, diffusers/peft
files and the original / musubi Wan layouts diffusers converts; `load_lora_weights(..., load_into_transformer_2=True)`
loads into a two-expert pipeline's second transformer instead; `fuse_lora` / `unfuse_lora` default to the transformer,
as in diffusers; `attention_kwargs={"scale": s}` scales the unfused paths inside the transformer's call.

An active, unfused adapter is an extra low-rank path on each layer it targets: y = W x + b + s * up(down(x)) (+ w *
its bias delta, if the file has one), with s = adapter weight * alpha / rank (a Conv2d's / Conv3d's down is a
convolution with the layer's stride and padding, its up a 1x1(x1) convolution). Layers without an active adapter run
exactly as before (`Linear.lora` / `Conv2d.lora` / `Conv3d.lora` stay None). `fuse_lora` adds lora_scale * s * up @
down to the weights (and the bias deltas to the biases) and keeps the original arrays; `unfuse_lora` puts those back
(bit for bit, nothing is subtracted). Files are mapped and checked by `converters.lora` (every key, every shape)
and read completely before any layer or weight is touched: a refused file leaves the pipeline as it was.

Deviations from diffusers: `unload_lora_weights` also restores fused weights (diffusers keeps them fused);
`disable_lora` stops the unfused paths only (fused weights stay until `unfuse_lora`); per-block scale dicts in
`set_adapters` are not ported. `cross_attention_kwargs={"scale": s}` (AnimateDiff) / `attention_kwargs={"scale": s}`
(Wan) at call time scales the unfused paths (as diffusers scales its peft layers); fused adapters are part of the
weights and do not follow it (as in diffusers). diffusers' SVD pipeline has no call-time LoRA scale and its I2VGen-XL
UNet ignores `cross_attention_kwargs["scale"]` (its attention processors drop it with a warning): so do ours;
`set_adapters(..., adapter_weights=...)` sets an adapter's strength there."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mindspore import Tensor

from converters import ConversionError
from converters.convert import staged
from converters.lora import COMPONENTS as FILE_COMPONENTS
from converters.lora import LoraPlan, map_lora, read_lora_file

from . import backend
from .layers import Conv2d, Conv3d, Linear

LORA_COMPONENTS = ("unet", "text_encoder")


def lora_targets(cell) -> dict:
    """{module path: layer} of the layers a LoRA may target in a model: Linear, Conv2d without groups, Conv3d."""
    return {name: c for name, c in cell.cells_and_names()
            if isinstance(c, (Linear, Conv3d)) or (isinstance(c, Conv2d) and c.groups == 1)}


def target_shapes(models: dict) -> dict:
    """{component: {module path: weight shape}} of models {component: model}, for converters.lora.map_lora."""
    return {c: {p: tuple(layer.weight.shape) for p, layer in lora_targets(m).items()} for c, m in models.items()}


class LowRankPaths:
    """The `lora` callable of one layer: y + scale * (sum over the active adapters of up_s(down(x)) + bias), up_s = s
    * up, bias the adapters' bias deltas (times their weights) or None; `scale` is the call-time LoRA scale."""

    def __init__(self, layer, pairs: list[tuple[Tensor, Tensor]], bias: Tensor | None):
        self.pairs, self.bias, self.scale = pairs, bias, 1.0
        self.kind = "conv3d" if isinstance(layer, Conv3d) else "conv2d" if isinstance(layer, Conv2d) else "linear"
        self.stride = getattr(layer, "stride", None)
        self.padding = getattr(layer, "padding", None)

    def _pair(self, x: Tensor, down: Tensor, up: Tensor, bias: Tensor | None) -> Tensor:
        if self.kind == "conv2d":
            return backend.conv2d(backend.conv2d(x, down, None, self.stride, self.padding), up, bias)
        if self.kind == "conv3d":
            return backend.conv3d(backend.conv3d(x, down, None, self.padding), up, bias)
        return backend.linear(backend.linear(x, down, None), up, bias)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        t = None
        for i, (down, up) in enumerate(self.pairs):  # the bias deltas ride on the last up projection
            d = self._pair(x, down, up, self.bias if i == len(self.pairs) - 1 else None)
            t = d if t is None else backend.add(t, d)
        if self.scale != 1.0:
            t = t * self.scale
        return backend.add(y, t)


@contextmanager
def scaled_lora_paths(models, scale: float | None):
    """Within the block, the unfused LoRA paths of these models are scaled by `scale` (diffusers' call-time
    `scale_lora_layers`); nothing is walked when scale is None or 1."""
    if scale is None or float(scale) == 1.0:
        yield
        return
    paths = [layer.lora for m in models for layer in lora_targets(m).values() if layer.lora is not None]
    for p in paths:
        p.scale = float(scale)
    try:
        yield
    finally:
        for p in paths:
            p.scale = 1.0


@dataclass
class Pair:
    """One adapter's low-rank pair on one layer, as applied: weight += up @ down * (w * scale), bias += bias * (w *
    bias_scale), w the adapter weight (times fuse_lora's lora_scale): peft's products in peft's order, so that fused
    weights equal diffusers' bit for bit."""

    kind: str  # "linear" | "conv" (converters.lora's kinds)
    down: np.ndarray  # float32
    up: np.ndarray
    scale: float  # alpha / rank (1 where the file's alpha is folded into down and up)
    bias: np.ndarray | None = None  # the bias delta
    bias_scale: float = 1.0


@dataclass
class Adapter:
    name: str
    file: str
    sha256: str
    layouts: list[str]
    modules: dict = field(default_factory=dict)  # (component, path) -> Pair


def read_pairs(plan: LoraPlan) -> list[tuple]:
    """[(entry, Pair)] of a mapped and checked plan: every tensor read (float32 copies, not views on the file's
    memory map) and checked finite; a truncated file or a non-finite value is one ConversionError naming it. A Wan
    file's alpha is folded into the pair as diffusers folds it (entry.fold)."""
    out = []
    for e in plan.entries:
        try:
            down, up = np.array(e.down.load(), np.float32), np.array(e.up.load(), np.float32)
            bias = None if e.bias is None else np.array(e.bias.load(), np.float32)
        except ConversionError:
            raise
        except Exception as err:  # a truncated file: name it, apply nothing
            raise ConversionError(f"{plan.file}: cannot read {e.keys[0]!r} ({type(err).__name__})") from None
        if not all(np.isfinite(a).all() for a in (down, up, bias) if a is not None):
            raise ConversionError(f"{plan.file}: the LoRA of {e.component}.{e.path} holds non-finite values")
        scale = e.scale
        if e.fold is not None:
            down, up, scale = down * np.float32(e.fold[0]), up * np.float32(e.fold[1]), 1.0
        out.append((e, Pair(e.kind, down, up, scale, bias, e.bias_scale)))
    return out


def _lora_source(path, weight_name: str | None) -> Path:
    """A local file or folder, or a Hub repo id (e.g. guoyww/animatediff-motion-lora-zoom-in) fetched with
    huggingface_hub: only `weight_name`, else its safetensors files (honours HF_HUB_OFFLINE and the cache)."""
    from converters.sources import looks_like_hub_id

    local = Path(os.path.expanduser(str(path)))
    if local.exists() or not looks_like_hub_id(str(path)):
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), allow_patterns=[weight_name] if weight_name else ["*.safetensors"]))
    except Exception as e:  # offline, not found, gated, network: one line
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline
               else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise ConversionError(f"{path}: cannot fetch the LoRA from the Hub ({why})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(16 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LoraState:
    """The adapters loaded into a set of models, which are active with which weight, and which are fused."""

    def __init__(self):
        self.adapters: dict[str, Adapter] = {}
        self.active: list[str] = []
        self.weights: dict[str, float] = {}
        self.enabled = True
        # (component, path, "weight" | "bias") -> the parameter before fusing
        self.fused: dict[tuple[str, str, str], np.ndarray] = {}
        self.fused_adapters: set[tuple[str, str]] = set()  # (adapter, component) merged into the weights
        self.hooked: set[tuple[str, str]] = set()


class LoraLoaderMixin:
    """`load_lora_weights` and friends for pipelines whose models are built from mindport layers: a `unet` and / or a
    `text_encoder` (AnimateDiff, SVD, I2VGen-XL), or Wan's `transformer` (and `transformer_2`)."""

    _lora_components = LORA_COMPONENTS  # the pipeline's models a LoRA may touch
    _lora_fuse_components = LORA_COMPONENTS  # fuse_lora's / unfuse_lora's default, as in diffusers

    # state -------------------------------------------------------------------------------------------------------
    @property
    def _lora(self) -> LoraState:
        state = self.__dict__.get("_lora_state")
        if state is None:
            state = self.__dict__["_lora_state"] = LoraState()
        return state

    def _lora_models(self) -> dict:
        return {c: getattr(self, c, None) for c in self._lora_components if getattr(self, c, None) is not None}

    # loading -----------------------------------------------------------------------------------------------------
    def lora_plan(self, path, weight_name: str | None = None, load_into_transformer_2: bool = False) -> LoraPlan:
        """Map and check a LoRA file against this pipeline's models without applying it. With
        `load_into_transformer_2` (Wan 2.2's two experts, as diffusers) the file's `transformer` keys are checked
        against `transformer_2`, and the plan's entries name it."""
        models = self._lora_models()
        if load_into_transformer_2:
            if "transformer_2" not in models:
                raise ValueError(f"load_lora_weights: load_into_transformer_2=True, but {type(self).__name__} has no "
                                 "transformer_2 (Wan 2.1 pipelines have one transformer)")
            targets = target_shapes({"transformer": models["transformer_2"]})
        else:
            targets = target_shapes({c: m for c, m in models.items() if c in FILE_COMPONENTS})
        file = _lora_source(path, weight_name)
        if weight_name is not None:
            file = file / weight_name
        elif file.is_dir():
            names = sorted(p.name for p in file.iterdir() if p.suffix == ".safetensors")
            if "pytorch_lora_weights.safetensors" in names:  # what diffusers' save_lora_weights writes
                names = ["pytorch_lora_weights.safetensors"]
            if len(names) != 1:
                raise ConversionError(f"{file}: expected one .safetensors LoRA file in the folder, found "
                                      f"{names or 'none'}; pass weight_name=")
            file = file / names[0]
        tensors, metadata = read_lora_file(file)
        plan = map_lora(tensors, metadata, targets, str(file))
        if load_into_transformer_2:
            for e in plan.entries:
                e.component = "transformer_2"
        return plan

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, weight_name: str | None = None,
                          adapter_name: str | None = None, load_into_transformer_2: bool = False, **kwargs):
        """Load a LoRA file (or a folder or Hub repo holding one; `weight_name` picks the file) as `adapter_name`
        (default `default_N`) and make it active with weight 1.0, next to the adapters already active (as
        diffusers does). Every key and shape is checked and every tensor read before any layer changes.
        `load_into_transformer_2` (Wan): into the second expert instead of the first, as diffusers'."""
        if kwargs:
            raise TypeError(f"load_lora_weights: unsupported arguments {sorted(kwargs)}")
        state = self._lora
        if adapter_name is None:
            adapter_name = f"default_{len(state.adapters)}"
        if adapter_name in state.adapters:
            raise ValueError(f"load_lora_weights: adapter name {adapter_name!r} is already in use; loaded: "
                             f"{sorted(state.adapters)}")
        if not isinstance(pretrained_model_name_or_path_or_dict, (str, Path)):
            raise TypeError("load_lora_weights: pass the path of a LoRA file or folder (state dicts are not supported)")
        plan = self.lora_plan(pretrained_model_name_or_path_or_dict, weight_name, load_into_transformer_2)
        adapter = Adapter(adapter_name, plan.file, _sha256(Path(plan.file)), plan.layouts)
        layers = {c: lora_targets(m) for c, m in self._lora_models().items()}
        for e, pair in read_pairs(plan):
            if pair.bias is not None and layers[e.component][e.path].bias is None:
                raise ConversionError(f"{plan.file}: {e.keys[-1]!r} is a bias delta for {e.component}.{e.path}, "
                                      "which has no bias")
            adapter.modules[(e.component, e.path)] = pair
        # nothing above touched a layer; from here on nothing can fail on the file's account
        state.adapters[adapter_name] = adapter
        state.weights[adapter_name] = 1.0
        state.active.append(adapter_name)
        self._lora_refresh()

    # selection ---------------------------------------------------------------------------------------------------
    def set_adapters(self, adapter_names, adapter_weights=None):
        """Activate exactly these adapters with these weights (a number, or one per adapter; None means 1.0)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        state = self._lora
        unknown = [n for n in names if n not in state.adapters]
        if unknown:
            raise ValueError(f"set_adapters: no adapter named {unknown[0]!r}; loaded: {sorted(state.adapters)}")
        if adapter_weights is None or isinstance(adapter_weights, (int, float)):
            weights = [1.0 if adapter_weights is None else float(adapter_weights)] * len(names)
        else:
            weights = list(adapter_weights)
            if len(weights) != len(names):
                raise ValueError(f"set_adapters: {len(weights)} weights for {len(names)} adapters")
            if not all(isinstance(w, (int, float)) or w is None for w in weights):
                raise ValueError("set_adapters: adapter weights must be numbers (per-block scale dicts are not ported)")
            weights = [1.0 if w is None else float(w) for w in weights]
        state.active = names
        state.weights.update(zip(names, weights))
        self._lora_refresh()

    def get_active_adapters(self) -> list[str]:
        return list(self._lora.active)

    def get_list_adapters(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, adapter in self._lora.adapters.items():
            for comp in sorted({c for c, _ in adapter.modules}):
                out.setdefault(comp, []).append(name)
        return out

    def disable_lora(self):
        """Stop the unfused adapters' paths (fused weights stay until `unfuse_lora`)."""
        self._lora.enabled = False
        self._lora_refresh()

    def enable_lora(self):
        self._lora.enabled = True
        self._lora_refresh()

    def delete_adapters(self, adapter_names):
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        state = self._lora
        unknown = [n for n in names if n not in state.adapters]
        if unknown:
            raise ValueError(f"delete_adapters: no adapter named {unknown[0]!r}; loaded: {sorted(state.adapters)}")
        if any(n == f for n in names for f, _ in state.fused_adapters):
            raise ValueError(f"delete_adapters: {names} include fused adapters; call unfuse_lora first")
        for n in names:
            del state.adapters[n]
            state.weights.pop(n, None)
        state.active = [n for n in state.active if n not in names]
        self._lora_refresh()

    # fusing ------------------------------------------------------------------------------------------------------
    def fuse_lora(self, components=None, lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names=None):
        """Merge the active adapters (or `adapter_names`) into the weights of `components` (default: the
        pipeline's, as diffusers': unet and text_encoder, or Wan's transformer), each times lora_scale * its adapter
        weight * alpha / rank (bias deltas times lora_scale * weight); the originals are kept for `unfuse_lora`."""
        state = self._lora
        names = state.active if adapter_names is None else (
            [adapter_names] if isinstance(adapter_names, str) else list(adapter_names))
        unknown = [n for n in names if n not in state.adapters]
        if unknown:
            raise ValueError(f"fuse_lora: no adapter named {unknown[0]!r}; loaded: {sorted(state.adapters)}")
        components = self._components(components)
        # 1. every new weight computed first (a non-finite result refuses the whole fuse under safe_fusing)
        models = self._lora_models()
        layers = {c: lora_targets(models[c]) for c in components if c in models}
        new: dict[tuple[str, str, str], np.ndarray] = {}

        def add(key, term):
            if key not in new:
                new[key] = getattr(layers[key[0]][key[1]], key[2]).asnumpy().astype(np.float32)
            new[key] = new[key] + term

        for n in names:
            for (comp, path), pair in state.adapters[n].modules.items():
                if comp not in layers or (n, comp) in state.fused_adapters:
                    continue
                w = float(lora_scale) * state.weights.get(n, 1.0)
                shape = tuple(layers[comp][path].weight.shape)
                add((comp, path, "weight"), _delta(pair.kind, pair.down, pair.up, shape) * np.float32(w * pair.scale))
                if pair.bias is not None:
                    add((comp, path, "bias"), pair.bias * np.float32(w * pair.bias_scale))
        if safe_fusing:
            bad = [f"{c}.{p}.{n}" for (c, p, n), w in new.items() if not np.isfinite(w).all()]
            if bad:
                raise ValueError(f"fuse_lora: fusing gives non-finite weights in {bad[0]}; nothing fused")
        # 2. written, each original kept once (a second fuse stacks on the first; unfuse restores the very first)
        for (comp, path, name), w in new.items():
            param = getattr(layers[comp][path], name)
            original = param.asnumpy()
            state.fused.setdefault((comp, path, name), original.copy())
            param.set_data(Tensor(w.astype(original.dtype)))
        state.fused_adapters.update((n, c) for n in names for c in layers)
        self._lora_refresh()

    def _components(self, components) -> list[str]:
        if components is None:
            return list(self._lora_fuse_components)
        return [components] if isinstance(components, str) else list(components)

    def unfuse_lora(self, components=None):
        """Put back the weights kept by `fuse_lora`, exactly (default components as `fuse_lora`'s)."""
        state = self._lora
        components = self._components(components)
        models = self._lora_models()
        layers = {c: lora_targets(models[c]) for c in components if c in models}
        for (comp, path, name) in list(state.fused):
            if comp in layers:
                getattr(layers[comp][path], name).set_data(Tensor(state.fused.pop((comp, path, name))))
        state.fused_adapters = {(n, c) for n, c in state.fused_adapters if c not in components or c not in models}
        self._lora_refresh()

    def unload_lora_weights(self):
        """Remove every adapter: fused weights restored, low-rank paths removed."""
        self.unfuse_lora(components=list(self._lora_components))
        state = self._lora
        state.adapters.clear()
        state.active, state.weights, state.fused_adapters = [], {}, set()
        state.enabled = True
        self._lora_refresh()

    def lora_scale(self, scale: float | None):
        """Within the block, every unfused adapter's path is scaled by `scale` too (diffusers'
        `cross_attention_kwargs={"scale": ...}`: the text encoder's and the UNet's LoRA layers alike)."""
        return scaled_lora_paths(list(self._lora_models().values()) if self._lora.hooked else [], scale)

    # applying ----------------------------------------------------------------------------------------------------
    def _lora_refresh(self):
        """Set each targeted layer's `lora` to the active, unfused adapters' paths (None where there are none)."""
        state = self._lora
        models = self._lora_models()
        per_layer: dict[tuple[str, str], list] = {}
        if state.enabled:
            for n in state.active:
                w = state.weights.get(n, 1.0)
                for key, pair in state.adapters[n].modules.items():
                    if (n, key[0]) not in state.fused_adapters:
                        per_layer.setdefault(key, []).append((w, pair))
        targets = {c: lora_targets(m) for c, m in models.items()}
        for key in state.hooked - set(per_layer):
            comp, path = key
            if comp in targets and path in targets[comp]:
                targets[comp][path].lora = None
        for (comp, path), pairs in per_layer.items():
            layer = targets[comp][path]
            dtype = layer.weight.dtype
            tensors = [(Tensor(p.down).astype(dtype), Tensor(p.up * np.float32(w * p.scale)).astype(dtype))
                       for w, p in pairs]
            biases = [p.bias * np.float32(w * p.bias_scale) for w, p in pairs if p.bias is not None]
            bias = Tensor(np.sum(biases, axis=0)).astype(dtype) if biases else None
            layer.lora = LowRankPaths(layer, tensors, bias)
        state.hooked = set(per_layer)


def lora_call_scale(kwargs: dict | None, name: str) -> float | None:
    """The "scale" of a call's `cross_attention_kwargs` / `attention_kwargs` (None when absent); any other key
    (attention-processor arguments, which mindport's attention does not take) is refused naming it."""
    extra = sorted(set(kwargs or {}) - {"scale"})
    if extra:
        raise ValueError(f"{name}: only 'scale' (the LoRA scale) is supported, got {extra}")
    return (kwargs or {}).get("scale")


def accepts_lora_scale(call):
    """Decorates a pipeline's `__call__` with diffusers' `cross_attention_kwargs` argument; its "scale" scales the
    unfused LoRA paths for that call. Other keys (attention-processor arguments) are refused."""

    @functools.wraps(call)
    def wrapped(self, *args, cross_attention_kwargs: dict | None = None, **kwargs):
        with self.lora_scale(lora_call_scale(cross_attention_kwargs, "cross_attention_kwargs")):
            return call(self, *args, **kwargs)

    sig = inspect.signature(call)
    wrapped.__signature__ = sig.replace(parameters=[*sig.parameters.values(), inspect.Parameter(
        "cross_attention_kwargs", inspect.Parameter.KEYWORD_ONLY, default=None)])
    return wrapped


def _delta(kind: str, down: np.ndarray, up: np.ndarray, shape) -> np.ndarray:
    """up @ down in the weight's shape (conv: (out, r) @ (r, in * kernel size))."""
    if kind == "linear":
        return up @ down
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------------
# `mindport convert SRC DST --lora FILE[:SCALE]`: LoRAs fused into a converted folder's weights
# ---------------------------------------------------------------------------------------------------------------------


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """"FILE" or "FILE:SCALE" (a trailing number after the last colon) -> (file, scale)."""
    head, sep, tail = str(spec).rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return str(spec), 1.0


def folder_lora_targets(folder) -> dict:
    """{component: {module path: weight shape}} of the unet / text_encoder / transformer a `mindport convert` folder
    holds, from the models built from its configs (no weights read)."""
    from converters.sources import read_json

    from .models import model_class

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ConversionError(f"{folder}: not a folder written by `mindport convert` (no model_index.json)")
    index = read_json(folder / "model_index.json")
    models = {}
    for comp in FILE_COMPONENTS:
        entry = index.get(comp)
        if isinstance(entry, list) and len(entry) == 2 and entry[1]:
            models[comp] = model_class(entry[1]).from_config(read_json(folder / comp / "config.json"))
    if not models:
        raise ConversionError(f"{folder}: holds no {', '.join(FILE_COMPONENTS)} for a LoRA (model_index.json "
                              f"components: {sorted(k for k in index if not k.startswith('_'))})")
    return target_shapes(models)


CONVERTED_LORA = "mindport_lora.safetensors"
CONVERTED_LORA_INFO = "mindport_lora.json"


def convert_lora_file(file, out, pipeline, overwrite: bool = False) -> dict:
    """`mindport convert-lora FILE OUT --pipeline DIR`: the LoRA itself in mindport's module naming, for the models
    of the converted folder DIR: OUT/mindport_lora.safetensors (`<component>.<path>.lora_down.weight` /
    `.lora_up.weight` in float32, `.lora_alpha` a float64 scalar with alpha / rank = the file's scale) and
    OUT/mindport_lora.json (source file and sha256, its layouts, each module's rank, alpha and scale); a bias delta
    as `.lora_diff_b`, already scaled.
    `load_lora_weights(OUT)` reads it like any LoRA. Every key is mapped and checked and every tensor read before
    anything is written; OUT appears complete or not at all."""
    from converters.safetensors_io import write_safetensors

    file, out = Path(file), Path(out)
    if out.exists() and not overwrite:
        raise ConversionError(f"{out}: already exists (pass --overwrite to replace it)")
    targets = folder_lora_targets(pipeline)
    tensors, metadata = read_lora_file(file)
    plan = map_lora(tensors, metadata, targets, str(file))
    entries, modules = [], {}
    for e, pair in read_pairs(plan):
        name = f"{e.component}.{e.path}"
        alpha = np.asarray(pair.scale * e.rank, np.float64)
        entries += [(f"{name}.lora_down.weight", pair.down.shape, "F32", lambda a=pair.down: a),
                    (f"{name}.lora_up.weight", pair.up.shape, "F32", lambda a=pair.up: a),
                    (f"{name}.lora_alpha", (), "F64", lambda a=alpha: a)]
        if pair.bias is not None:
            bias = pair.bias * np.float32(pair.bias_scale)
            entries.append((f"{name}.lora_diff_b", bias.shape, "F32", lambda a=bias: a))
        modules[name] = {"kind": e.kind, "rank": e.rank, "alpha": float(alpha), "scale": pair.scale,
                         "source_alpha": e.alpha,
                         "source_keys": list(e.keys)}
    info = {"format": "mindport-lora", "version": 1, "source": str(file), "source_sha256": _sha256(file),
            "source_layouts": plan.layouts, "pipeline": str(pipeline), "modules": modules}
    with staged(out, "lora") as stage:
        stage.mkdir(parents=True)
        write_safetensors(stage / CONVERTED_LORA, entries, {"format": "mindport-lora"})
        (stage / CONVERTED_LORA_INFO).write_text(json.dumps(info, indent=2))
    return info


def fuse_into_converted(folder, loras: list[tuple[str, float]]) -> list[dict]:
    """Fuse LoRA files (each with its scale, times alpha / rank) into the unet / text_encoder weights of a folder
    written by `mindport convert`. Every file is mapped and checked against the models built from the folder's
    configs before any weight file is rewritten. Returns the manifest records: file, sha256, scale, layouts and the
    parameters touched."""
    from converters.safetensors_io import RawSpan, read_header, write_safetensors
    from converters.sources import CONVERTED_WEIGHTS

    folder = Path(folder)
    targets = folder_lora_targets(folder)
    # 1. every file mapped and checked, every pair read
    per_param: dict[tuple[str, str], list] = {}  # (component, parameter) -> [(scale, Pair, "weight" | "bias")]
    records = []
    for file, scale in loras:
        tensors, metadata = read_lora_file(file)
        plan = map_lora(tensors, metadata, targets, str(file))
        for e, pair in read_pairs(plan):
            per_param.setdefault((e.component, f"{e.path}.weight"), []).append((scale * pair.scale, pair, "weight"))
            if pair.bias is not None:
                per_param.setdefault((e.component, f"{e.path}.bias"), []).append((scale * pair.bias_scale, pair,
                                                                                   "bias"))
        records.append({"file": str(file), "sha256": _sha256(Path(file)), "scale": scale, "layouts": plan.layouts,
                        "alpha_over_rank": sorted({round(e.scale, 6) for e in plan.entries}),
                        "touched": plan.touched()})
    # 2. each touched component's weights rewritten (untouched tensors copied as bytes), then swapped in
    for comp in sorted({c for c, _ in per_param}):
        path = folder / comp / CONVERTED_WEIGHTS
        refs, meta = read_header(path)
        missing = [k for c, k in per_param if c == comp and k not in refs]
        if missing:
            raise ConversionError(f"{path}: has no tensor {missing[0]!r} to fuse a LoRA into")
        entries = []
        for name, ref in sorted(refs.items(), key=lambda kv: kv[1].offset):
            terms = per_param.get((comp, name))
            if terms is None:
                entries.append((name, ref.shape, ref.dtype, (lambda r=ref: RawSpan(r.file, r.offset, r.nbytes))))
                continue

            def fused(r=ref, terms=terms):
                w = np.asarray(r.load(), np.float32)
                for s, pair, what in terms:
                    term = pair.bias if what == "bias" else _delta(pair.kind, pair.down, pair.up, w.shape)
                    w = w + term * np.float32(s)
                return w

            entries.append((name, ref.shape, ref.dtype, fused))
        tmp = path.with_name(path.name + ".lora-tmp")
        try:
            write_safetensors(tmp, entries, meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return records


def convert_with_lora(src, dst, loras: list[tuple[str, float]], overwrite: bool = False, **convert_kwargs) -> dict:
    """`mindport convert SRC DST --lora FILE[:SCALE] ...`: convert into a staging folder, fuse the LoRAs, record them
    in the manifest (`lora`), and only then move the folder to DST. A refused LoRA leaves DST as it was."""
    from converters.sources import MANIFEST

    from .loading import convert_checkpoint

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass --overwrite to replace it)")
    for file, _ in loras:
        if not Path(file).is_file():
            raise ConversionError(f"{file}: LoRA file not found")
    with staged(dst, "lora") as stage:
        manifest = convert_checkpoint(src, stage, overwrite=True, **convert_kwargs)
        manifest["lora"] = fuse_into_converted(stage, loras)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
