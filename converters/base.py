"""The converter interface every architecture implements, and the audited mapping that applies it.

An architecture converter is three things: the class it converts, a pure config conversion, and a rule table.
Our MindSpore cells keep diffusers' module paths, so a source key maps to the parameter of the same name unless
one of the table's *exception rows* matches it. Each row is explicit (a full-match regex and what to do); a key
matched by two rows is an error, so row order never matters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .errors import ConversionError
from .safetensors_io import FLOAT_TAGS, TensorRef

IDENTITY = "identity"


# compiled once per pattern: single-file layouts have more rows than `re`'s own cache holds
_compile = lru_cache(maxsize=None)(re.compile)


@dataclass(frozen=True)
class Rule:
    """One row: source keys fully matching `source` go to `target` (a `re` template, None = dropped), transformed
    by `transform` (a name in TRANSFORMS), for the stated `reason`. A tuple of targets splits the source tensor
    into that many equal parts along its first axis (a fused q/k/v projection), one per target."""

    source: str
    target: str | tuple[str, ...] | None
    transform: str = IDENTITY
    reason: str = ""

    def match(self, key: str):
        return _compile(self.source).fullmatch(key)


# Named tensor transforms the rule rows may use. Each takes (array, target shape) and returns the array.
TRANSFORMS = {
    IDENTITY: lambda a, shape: a,
    # a 1x1 convolution weight (O, I, 1, 1) stored where the port has a linear layer (O, I), and back
    "conv1x1_to_linear": lambda a, shape: a.reshape(shape),
    "linear_to_conv1x1": lambda a, shape: a.reshape(shape),
    # a projection stored as (in, out) for `x @ proj` (OpenCLIP's `visual.proj`) where the port has a linear layer
    "transpose": lambda a, shape: a.T,
    # the same values with leading unit axes dropped (Wan's CLIP class / position embeddings: (1, 1, C), (1, N, C))
    "drop_unit_axes": lambda a, shape: a.reshape(shape),
}


class ArchitectureConverter:
    """Subclass per architecture: set `class_name`, `rules`, optionally override `convert_config`."""

    class_name: str = ""
    rules: tuple[Rule, ...] = ()

    def convert_config(self, config: dict) -> dict:
        """Source config.json -> the config our model is built from (pure; default: drop private `_` keys)."""
        return {k: v for k, v in config.items() if not k.startswith("_")}

    def normalise_keys(self, keys: list[str], target_names: set[str]) -> dict[str, str]:
        """Hook for whole-checkpoint spellings (e.g. a missing prefix). Default: keys as they are."""
        return {k: k for k in keys}


@dataclass
class Mapped:
    target: str
    source: str
    rule: str
    transform: str
    ref: TensorRef
    part: tuple[int, int] | None = None  # (index, count): this target is one of `count` equal row blocks

    @property
    def raw(self) -> bool:
        """The target's bytes are the source's bytes (no transform, no split): copyable without decoding."""
        return self.transform == IDENTITY and self.part is None


@dataclass
class Audit:
    component: str
    source_tensors: int = 0
    used: int = 0
    dropped: list[str] = field(default_factory=list)
    parameters: int = 0
    filled: int = 0
    rules_applied: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "source_tensors": self.source_tensors,
            "used_once": self.used,
            "dropped": self.dropped,
            "parameters": self.parameters,
            "filled": self.filled,
            "rules_applied": self.rules_applied,
            "passed": self.used + len(self.dropped) == self.source_tensors and self.filled == self.parameters,
        }


def _rule_label(rule: Rule | None) -> str:
    return IDENTITY if rule is None else rule.source


def map_tensors(
    converter: ArchitectureConverter,
    tensors: dict[str, TensorRef],
    spec: dict[str, tuple[tuple[int, ...], str]],
    where: str,
) -> tuple[list[Mapped], Audit]:
    """Map every source tensor to a target parameter and audit: each source used exactly once (or dropped by a
    rule), each parameter filled exactly once, shapes equal, dtypes floating. Raises ConversionError naming the
    key(s) otherwise. Nothing is read: the mapping works on headers."""
    audit = Audit(where, source_tensors=len(tensors), parameters=len(spec))
    try:
        renamed = converter.normalise_keys(list(tensors), set(spec))
    except ConversionError as e:  # the hook sees keys only: name the source here
        raise ConversionError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    mapped: list[Mapped] = []
    by_target: dict[str, str] = {}
    unexpected: list[str] = []
    for key, ref in tensors.items():
        nkey = renamed[key]
        hits = [(r, m) for r in converter.rules if (m := r.match(nkey))]
        if len(hits) > 1:
            rows = ", ".join(repr(r.source) for r, _ in hits)
            raise ConversionError(f"{where}: key {key!r} matches several rule rows ({rows}); the rule table is ambiguous")
        rule, m = hits[0] if hits else (None, None)
        if rule is not None and rule.target is None:
            audit.dropped.append(key)
            audit.rules_applied[rule.source] = audit.rules_applied.get(rule.source, 0) + 1
            continue
        templates = rule.target if rule is not None and isinstance(rule.target, tuple) else (rule.target if rule else None,)
        targets = [m.expand(t) if t is not None else nkey for t in templates]
        strays = [t for t in targets if t not in spec]
        if strays:
            unexpected.append(key if targets == [key] else f"{key} (-> {', '.join(strays)})")
            continue
        label = _rule_label(rule)
        audit.rules_applied[label] = audit.rules_applied.get(label, 0) + 1
        for i, target in enumerate(targets):
            if target in by_target:
                raise ConversionError(f"{where}: parameter {target!r} is filled twice, from {by_target[target]!r} and {key!r}")
            by_target[target] = key
            part = (i, len(targets)) if len(targets) > 1 else None
            mapped.append(Mapped(target, key, label, rule.transform if rule else IDENTITY, ref, part))
    missing = sorted(set(spec) - set(by_target))
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} parameter(s) missing from the checkpoint: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(sorted(unexpected)[:6])}{' ...' if len(unexpected) > 6 else ''}")
        raise ConversionError(f"{where}: " + "; ".join(parts))
    for mp in mapped:
        want = tuple(spec[mp.target][0])
        got = tuple(mp.ref.shape)
        if mp.part is not None:  # one of n row blocks of the source
            got = (got[0] // mp.part[1], *got[1:]) if got and got[0] % mp.part[1] == 0 else got
        same_count = int(np.prod(got, dtype=np.int64)) == int(np.prod(want, dtype=np.int64))
        if got != want and not (mp.transform != IDENTITY and same_count):
            raise ConversionError(f"{where}: {mp.source!r} has shape {got}, but parameter {mp.target!r} needs {want}")
        if mp.ref.dtype not in FLOAT_TAGS:
            raise ConversionError(f"{where}: {mp.source!r} has dtype {mp.ref.dtype}; floating point ({', '.join(FLOAT_TAGS)}) expected")
    audit.used = len({mp.source for mp in mapped})
    audit.filled = len(by_target)
    return mapped, audit


def materialise(mp: Mapped, shape: tuple[int, ...], np_dtype) -> np.ndarray:
    """Read one mapped tensor, apply its transform and cast it to the target dtype."""
    arr = mp.ref.load()
    if mp.part is not None:
        index, count = mp.part
        rows = arr.shape[0] // count
        arr = arr[index * rows:(index + 1) * rows]
    arr = TRANSFORMS[mp.transform](arr, tuple(shape))
    return np.asarray(arr, dtype=np_dtype) if np_dtype is not None else np.asarray(arr)
