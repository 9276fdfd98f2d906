"""Model base class: diffusers-style config handling, `from_pretrained` and strict parameter loading."""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from . import backend


def per_entry(value, n: int, name: str = "value") -> list:
    """A config value given once (int, float, bool, None: repeated n times) or per block/layer (must have n)."""
    if value is None or isinstance(value, (int, float, bool)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name}={value} has {len(value)} entries, expected {n} (one per block/layer) or a single value")
    return value


class Output(OrderedDict):
    """Like diffusers' BaseOutput: fields by attribute (`.sample`), by key, or by position (`out[0]`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)

    def to_tuple(self):
        return tuple(self.values())


_NP_DTYPES = {ms.float32: np.float32, ms.float16: np.float16}


class Config(dict):
    """A model's config.json values, readable as attributes (`model.config.in_channels`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(f"config has no field {name!r}") from e


def _expected(default) -> str:
    """What a config field holds, described from diffusers' default (for the one-line null errors)."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a list" if default and isinstance(default[0], str) else "a value or a list of values"
    return "a value"


def check_null_config(cls, config: dict) -> None:
    """Configs as diffusers writes them hold nulls: a field whose diffusers default is None (e.g. `sample_size`), or
    one the class lists in `nullable_config` (diffusers gives None a meaning there, mostly "off"), may be null. Any
    other null field is one diffusers cannot build (or run) a model with: refuse it in one line, naming the field,
    what it should hold and diffusers' (transformers') default or the valid choices."""
    params = inspect.signature(cls.__init__).parameters
    for key, value in config.items():
        p = params.get(key)
        if value is not None or p is None or p.default is None or p.default is inspect.Parameter.empty \
                or key in cls.nullable_config:
            continue
        lib = cls.config_library
        choices = cls.config_choices.get(key)
        what = (f"one of {', '.join(json.dumps(c) for c in choices)}" if choices
                else f"{_expected(p.default)} ({lib}' default: {json.dumps(p.default)})")
        raise ValueError(f"{cls.__name__}: config field {key!r} is null ({lib} cannot build or run the model with "
                         f"it); expected {what}")


class ModelMixin(nn.Cell):
    """Base of every ported model. Subclasses take diffusers' config fields as keyword arguments."""

    config_name = "config.json"
    # diffusers / transformers class name this cell ports (used by converters and model_index.json)
    diffusers_class: str = ""
    # fields with a non-None default that a config may still set to null (see check_null_config)
    nullable_config: frozenset = frozenset()
    # fields with a closed set of values: a null one is refused naming them
    config_choices: dict = {}
    # whose config conventions (and defaults) the class follows
    config_library: str = "diffusers"
    # path components of the modules the reference keeps float32 in a half-precision model
    _keep_in_fp32_modules: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: dict, **overrides):
        config = {**dict(config), **overrides}
        check_null_config(cls, config)
        sig = inspect.signature(cls.__init__)
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        kwargs = {k: v for k, v in config.items() if not k.startswith("_") and (accepts_any or k in sig.parameters)}
        with backend.shared_parameter_load():
            model = cls(**kwargs)
        model.config = Config({**cls.config_defaults(), **{k: v for k, v in config.items() if not k.startswith("_")}})
        return model

    @classmethod
    def config_defaults(cls) -> dict:
        """{field: default} of every config field: what a config that leaves a field out means (diffusers')."""
        return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if name != "self" and p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}

    # -- parameters ------------------------------------------------------------------------------------------------
    def parameter_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """{MindSpore parameter name: (shape, dtype name)}: what a converter must fill."""
        return {name: (tuple(p.shape), str(p.dtype).lower()) for name, p in self.parameters_and_names()}

    def fp32_parameter_names(self) -> set[str]:
        """Parameters the reference keeps float32 in a half-precision model: those with a path component named in
        `_keep_in_fp32_modules` (diffusers' / transformers' attribute of the same name and meaning)."""
        keep = set(self._keep_in_fp32_modules)
        return {name for name, _ in self.parameters_and_names() if keep & set(name.split("."))} if keep else set()

    def load_arrays(self, arrays: dict[str, np.ndarray], dtype=None, keep_fp32=()) -> None:
        """Fill every parameter from `arrays` (keys = parameter names), optionally casting to `dtype`; parameters
        named in `keep_fp32` (norms of a mixed-precision checkpoint) and, in a half-precision load, those of
        `_keep_in_fp32_modules` stay float32, here and in `to_dtype`. Strict: key sets and shapes must agree."""
        params = dict(self.parameters_and_names())
        missing = sorted(set(params) - set(arrays))
        unexpected = sorted(set(arrays) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__}: parameters missing from checkpoint: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}; unexpected keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
        dtype = backend.resolve_dtype(dtype)
        if dtype in (ms.float16, ms.bfloat16):
            keep_fp32 = set(keep_fp32) | self.fp32_parameter_names()
        self._keep_fp32 = frozenset(keep_fp32)
        for name, p in params.items():
            arr = np.asarray(arrays[name])
            if tuple(arr.shape) != tuple(p.shape):
                raise ValueError(f"{type(self).__name__}: {name} has shape {tuple(arr.shape)}, expected {tuple(p.shape)}")
            want = ms.float32 if name in self._keep_fp32 else dtype
            if want is not None and p.dtype != want:
                p.set_dtype(want)
            np_dtype = _NP_DTYPES.get(p.dtype)
            if np_dtype is not None:  # one NumPy copy (out of a memory-mapped file), cast on the way, no astype
                p.set_data(Tensor.from_numpy(np.array(arr, dtype=np_dtype, order="C")))
            else:
                p.set_data(backend.cast(Tensor(arr), p.dtype))
        self.set_train(False)

    def to_dtype(self, dtype) -> "ModelMixin":
        """Cast every (already loaded) parameter to `dtype`."""
        dtype = backend.resolve_dtype(dtype)
        if dtype is None:
            return self
        for name, p in self.parameters_and_names():
            if p.dtype != dtype and name not in getattr(self, "_keep_fp32", ()):
                data = p.astype(dtype)
                p.set_dtype(dtype)
                p.set_data(data)
        return self

    @property
    def dtype(self):
        for _, p in self.parameters_and_names():
            return p.dtype
        return ms.float32

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, mindspore_dtype=None, variant: str | None = None, **overrides):
        """Load from a PyTorch diffusers folder / Hub id (converted on load) or a folder written by `mindport convert`."""
        from .loading import load_component

        return load_component(cls, path, subfolder=subfolder, dtype=mindspore_dtype, variant=variant, overrides=overrides)

    def save_pretrained(self, save_directory) -> None:
        """Write the mindport format, as `mindport convert` does: `config.json` and `mindspore_model.safetensors`
        (keys = parameter names, each parameter in its current dtype, streamed one at a time). `from_pretrained`
        loads it again; `mindport export` turns it into a PyTorch diffusers folder or an original single file, so a
        model changed on the MindSpore side (fine-tuned) goes back to PyTorch. The weights are written under a
        temporary name and renamed into place."""
        import os

        from converters.safetensors_io import write_safetensors
        from converters.sources import CONVERTED_WEIGHTS

        tags = {ms.float32: "F32", ms.float16: "F16", ms.bfloat16: "BF16"}
        entries = []
        for name, p in self.parameters_and_names():
            tag = tags.get(p.dtype)
            if tag is None:
                raise ValueError(f"{type(self).__name__}: parameter {name} is {p.dtype}; mindport stores float32, "
                                 "float16 or bfloat16")
            produce = (lambda p=p: p.asnumpy()) if tag != "BF16" else (lambda p=p: p.astype(ms.float32).asnumpy())
            entries.append((name, tuple(p.shape), tag, produce))
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{CONVERTED_WEIGHTS}.partial-{os.getpid()}"
        try:
            write_safetensors(tmp, entries, {"format": "mindport", "component": folder.name,
                                             "written_by": "save_pretrained"})
            os.replace(tmp, folder / CONVERTED_WEIGHTS)
        finally:
            tmp.unlink(missing_ok=True)
        self.save_config(folder)

    def save_config(self, folder) -> None:
        cfg = {"_class_name": self.diffusers_class, **dict(self.config)}
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / self.config_name).write_text(json.dumps(cfg, indent=2, sort_keys=True))


def required_config(model, key: str, owner: str, expected: str = "a number (diffusers' default 0.18215)"):
    """A config value a caller cannot do without (a pipeline's `vae.config.scaling_factor`): one line when it is
    null (diffusers builds such a model, then fails on the arithmetic)."""
    value = model.config.get(key)
    if value is None:
        raise ValueError(f"{owner}: {type(model).__name__} config field {key!r} is null; expected {expected} in its "
                         "config.json")
    return value
