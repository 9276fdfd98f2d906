"""Capture every module's output on both sides, keyed by (component, module path, call index).

PyTorch: `register_forward_hook` on every `named_modules()` entry; MindSpore (PyNative): on every `cells_and_names()`
entry. Both keep diffusers' module paths, so keys line up one to one.

A reference capture writes outputs to an ActivationStore (disk) and remembers each call's denoising step; a comparing
capture (MindSpore, or PyTorch float64 for the noise floor) compares each output with the reference's the moment it
is produced and keeps only the numbers. Forward pre-hooks record the inputs of each module's first call (teacher
forcing, gates) as a skeleton whose tensors live in the store."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .metrics import compare
from .store import ActivationStore


def to_numpy(t) -> np.ndarray | None:
    """A tensor of either framework (or a numpy array a port takes, e.g. token ids) as numpy (float64 stays
    float64, other floats become float32)."""
    if isinstance(t, np.ndarray):
        a = t
    elif hasattr(t, "asnumpy"):  # mindspore Tensor
        a = t.asnumpy()
    elif hasattr(t, "detach"):  # torch Tensor
        t = t.detach().cpu()
        a = t.float().numpy() if t.dtype.is_floating_point and t.dtype != _torch_float64() else t.numpy()
    else:
        return None
    if a.dtype.kind == "f" and a.dtype != np.float64:
        a = a.astype(np.float32)
    return a


def _torch_float64():
    import torch

    return torch.float64


def first_tensor(out):
    """The first tensor in a module's output (tensor, tuple/list, dict or ModelOutput), as numpy."""
    if out is None:
        return None
    a = to_numpy(out)
    if a is not None:
        return a
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    for v in values:
        a = first_tensor(v)
        if a is not None:
            return a
    return None


def pack(obj, put):
    """Nested args -> a skeleton with every tensor replaced by ("tensor", key) after `put(array) -> key`."""
    a = to_numpy(obj)
    if a is not None:
        return ("tensor", put(a))
    if isinstance(obj, (list, tuple)):
        return ("list" if isinstance(obj, list) else "tuple", [pack(v, put) for v in obj])
    if isinstance(obj, dict):
        return ("dict", {k: pack(v, put) for k, v in obj.items()})
    return ("value", obj)


def unpack(skel, get, make):
    """Inverse of `pack`: `make(numpy array) -> framework tensor`."""
    kind, v = skel
    if kind == "tensor":
        return make(np.asarray(get(v)))
    if kind in ("list", "tuple"):
        items = [unpack(x, get, make) for x in v]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: unpack(x, get, make) for k, x in v.items()}
    return v


def leaves(skel) -> list:
    """The store keys of a `pack` skeleton's tensors, in argument order."""
    kind, v = skel
    if kind == "tensor":
        return [v]
    if kind in ("list", "tuple"):
        return [k for x in v for k in leaves(x)]
    if kind == "dict":
        return [k for x in v.values() for k in leaves(x)]
    return []


class Capture:
    """side: "torch" or "mindspore". With `reference=None` outputs go to `store`; else each output is compared on the
    fly with `reference`'s output of the same key. `inputs_depth`: record the first call's inputs of modules at most
    this deep (module path dots + 1; the root is 0), None for none; `outputs=False` records inputs only."""

    def __init__(self, side: str, store: ActivationStore | None = None, reference: "Capture | None" = None,
                 inputs_depth: int | None = None, outputs: bool = True):
        self.side = side
        self.outputs = outputs
        self.store = store
        self.reference = reference
        self.inputs_depth = inputs_depth
        self.step = 0  # denoising steps completed when a call happens; set by the runner's step callback
        self.records: OrderedDict = OrderedDict()  # (component, module, call) -> {"step", "shape"} (+ metrics)
        self.inputs: dict = {}  # (component, module) -> skeleton of the first call's (args, kwargs)
        self.calls: dict = {}
        self.handles: list = []
        self._n_inputs = 0

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _put(self, array) -> str:
        key = f"in{self._n_inputs}"
        self._n_inputs += 1
        self.store.put(key, array)
        return key

    def _pre_hook(self, component: str, module: str):
        def hook(_mod, args, kwargs):
            if (component, module) not in self.inputs:
                self.inputs[(component, module)] = pack((tuple(args), dict(kwargs)), self._put)
            return None

        return hook

    def _hook(self, component: str, module: str):
        def hook(_mod, _inputs, output):
            n = self.calls.get((component, module), 0)
            self.calls[(component, module)] = n + 1
            arr = first_tensor(output)
            if arr is None:
                return None
            key = (component, module, n)
            row = {"step": self.step, "shape": list(arr.shape)}
            if self.reference is None:
                self.store.put(key, arr)
            else:
                row.update(self.reference.compare_with(key, arr), float64=arr.dtype == np.float64)
            self.records[key] = row
            return None

        return hook

    def compare_with(self, key, arr: np.ndarray) -> dict:
        """Metrics of `arr` against this (reference) capture's output for `key`; {} when it has none."""
        if key not in self.records:
            return {}
        ref = self.store.get(key)
        if ref.shape != arr.shape:
            return {"rel_l2": float("inf"), "max_abs": float("inf"), "cosine": 0.0, "finite": False,
                    "error": f"shape {list(arr.shape)} != reference {list(ref.shape)}"}
        return compare(arr, ref)

    def _attach(self, component: str, named) -> None:
        for name, sub in named:
            if self.outputs:
                self.handles.append(sub.register_forward_hook(self._hook(component, name)))
            depth = 0 if not name else name.count(".") + 1
            if self.inputs_depth is not None and depth <= self.inputs_depth and self.store is not None:
                self.handles.append(sub.register_forward_pre_hook(self._pre_hook(component, name), with_kwargs=True))

    def attach_torch(self, component: str, module) -> None:
        self._attach(component, module.named_modules())

    def attach_mindspore(self, component: str, cell) -> None:
        self._attach(component, cell.cells_and_names())

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def modules(self) -> set[tuple[str, str]]:
        return {(c, m) for c, m, _ in self.records}

    def entry_modules(self) -> list[tuple[str, str]]:
        """Per component, the called modules none of whose ancestors was called (the root, or e.g. a VAE's encoder
        and decoder when the pipeline calls `vae.encode`/`vae.decode`), in first-call order."""
        called = list(dict.fromkeys((c, m) for c, m, _ in self.records))
        names = set(called)

        def has_called_ancestor(c, m):
            if not m:
                return False
            parts = m.split(".")
            return (c, "") in names or any((c, ".".join(parts[:i])) in names for i in range(1, len(parts)))

        return [(c, m) for c, m in called if not has_called_ancestor(c, m)]
