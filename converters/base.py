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


# ----------------------------------------------------------------------------------------------------------------
# The same rows read backwards (export: MindSpore parameters -> a PyTorch layout)
# ----------------------------------------------------------------------------------------------------------------

# Each transform's declared inverse: (the transform that undoes it, the source shape from the target shape). A
# transform missing here cannot be exported; a row using it is refused by name, never guessed.
INVERSE_TRANSFORMS = {
    IDENTITY: (IDENTITY, lambda shape: tuple(shape)),
    "conv1x1_to_linear": ("linear_to_conv1x1", lambda shape: (*shape, 1, 1)),
    "linear_to_conv1x1": ("conv1x1_to_linear", lambda shape: tuple(shape[:2])),
    "transpose": ("transpose", lambda shape: tuple(shape[::-1])),
    # the only rows using it (Wan's CLIP class and position embeddings) dropped leading unit axes of a rank-3 tensor:
    # (1, 1, C) -> (C,), (1, N, C) -> (N, C)
    "drop_unit_axes": ("restore_unit_axes", lambda shape: (1,) * (3 - len(shape)) + tuple(shape)),
}
TRANSFORMS["restore_unit_axes"] = lambda a, shape: a.reshape(shape)


class NotInvertible(ConversionError):
    """A row whose source pattern cannot be written back from its target (a regex construct outside a group, a
    group the target does not reference, a transform without a declared inverse)."""


def _scan_pattern(pattern: str):
    """Split a row's source regex into literal text and top-level capturing groups:
    [("lit", text) | ("group", number, regex text)]. Optional non-capturing groups (`(?:prefix)?`) and lookaheads
    are zero-or-optional text: written back as nothing. Any other regex construct outside a group is refused."""
    out, i, n, number = [], 0, len(pattern), 0
    special = set(".^$*+?{}[]|")
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1] if i + 1 < n else ""
            if nxt.isalnum():  # \d, \w, \1 ...: a class or reference, not a literal
                raise NotInvertible(f"pattern {pattern!r}: {c + nxt!r} outside a group has no single spelling")
            out.append(("lit", nxt))
            i += 2
            continue
        if c == "(":
            depth, j = 0, i
            while j < n:
                if pattern[j] == "\\":
                    j += 2
                    continue
                if pattern[j] == "[":  # a character class may hold parentheses
                    j = pattern.index("]", j + 1) + 1
                    continue
                depth += {"(": 1, ")": -1}.get(pattern[j], 0)
                j += 1
                if depth == 0:
                    break
            body = pattern[i:j]
            optional = j < n and pattern[j] == "?"
            if body.startswith(("(?!", "(?=")):  # lookahead: zero-width
                i = j
                continue
            if body.startswith("(?:"):
                if not optional:
                    raise NotInvertible(f"pattern {pattern!r}: non-capturing group {body!r} is not optional")
                i = j + 1  # an optional spelling (a prefix some files carry): written back without it
                continue
            if body.startswith("(?"):
                raise NotInvertible(f"pattern {pattern!r}: group {body!r} is not a plain capturing group")
            number += 1
            inner = re.compile(body).groups - 1  # capturing groups nested inside count in Python's numbering
            if j < n and pattern[j] in "?*+{":
                raise NotInvertible(f"pattern {pattern!r}: group {body!r} is repeated or optional")
            out.append(("group", number, body[1:-1]))
            number += inner
            i = j
            continue
        if c in special:
            raise NotInvertible(f"pattern {pattern!r}: {c!r} outside a group has no single spelling")
        out.append(("lit", c))
        i += 1
    return out


_REF = re.compile(r"\\(\d+)|\\g<(\d+)>")


@dataclass(frozen=True)
class InverseRow:
    """One row read backwards: target names fully matching `pattern` came from the source name `template` (a
    `re` template over `pattern`'s named groups); `part` = (index, count) when the row split one source tensor."""

    rule: Rule
    pattern: str
    template: str
    part: tuple[int, int] | None
    transform: str  # the inverse transform's name

    def source_for(self, target: str) -> str | None:
        m = _compile(self.pattern).fullmatch(target)
        return m.expand(self.template) if m else None


def invert_rule(rule: Rule) -> list[InverseRow]:
    """The row's inverse, one InverseRow per target (a split row has several). Raises NotInvertible naming the row
    when it cannot be read backwards. A drop row (target None) has no inverse: []."""
    if rule.target is None:
        return []
    if rule.transform not in INVERSE_TRANSFORMS:
        raise NotInvertible(f"row {rule.source!r}: transform {rule.transform!r} declares no inverse")
    tokens = _scan_pattern(rule.source)
    groups = {t[1]: t[2] for t in tokens if t[0] == "group"}
    templates = rule.target if isinstance(rule.target, tuple) else (rule.target,)
    rows = []
    for index, target in enumerate(templates):
        pattern, pos, seen = [], 0, set()
        for m in _REF.finditer(target):
            pattern.append(re.escape(target[pos:m.start()]))
            g = int(m.group(1) or m.group(2))
            if g not in groups:
                raise NotInvertible(f"row {rule.source!r}: target {target!r} refers to group {g}, which is not a "
                                    "top-level group of the source")
            pattern.append(f"(?P=g{g})" if g in seen else f"(?P<g{g}>{groups[g]})")
            seen.add(g)
            pos = m.end()
        pattern.append(re.escape(target[pos:]))
        unused = sorted(set(groups) - seen)
        if unused:
            raise NotInvertible(f"row {rule.source!r}: target {target!r} does not keep group(s) {unused}; the source "
                                "name cannot be rebuilt from it")
        template = "".join(t[1].replace("\\", "\\\\") if t[0] == "lit" else f"\\g<g{t[1]}>" for t in tokens)
        part = (index, len(templates)) if len(templates) > 1 else None
        rows.append(InverseRow(rule, "".join(pattern), template, part, INVERSE_TRANSFORMS[rule.transform][0]))
    return rows


def forward_target(rules, key: str) -> tuple[Rule | None, list[str] | None]:
    """What the forward mapping does with one (normalised) source key: (the row, its targets), (None, [key]) for
    the identity, (row, None) for a drop row. Several matching rows: ConversionError (as map_tensors)."""
    hits = [(r, m) for r in rules if (m := r.match(key))]
    if len(hits) > 1:
        raise ConversionError(f"key {key!r} matches several rule rows ({', '.join(repr(r.source) for r, _ in hits)})")
    if not hits:
        return None, [key]
    rule, m = hits[0]
    if rule.target is None:
        return rule, None
    templates = rule.target if isinstance(rule.target, tuple) else (rule.target,)
    return rule, [m.expand(t) for t in templates]
