"""Capture every module's output on both sides, keyed by (component, module path, call index).

PyTorch: `register_forward_hook` on every `named_modules()` entry. MindSpore (PyNative): `register_forward_hook` on
every `cells_and_names()` entry. Both keep diffusers' module paths, so keys line up one to one."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np


def first_tensor(out):
    """The first tensor in a module's output (tensor, tuple/list, dict or ModelOutput), as float32 numpy."""
    if out is None:
        return None
    if hasattr(out, "asnumpy"):  # mindspore Tensor
        return out.asnumpy().astype(np.float32)
    if hasattr(out, "detach"):  # torch Tensor
        return out.detach().float().cpu().numpy()
    if isinstance(out, dict):
        for v in out.values():
            t = first_tensor(v)
            if t is not None:
                return t
        return None
    if isinstance(out, (list, tuple)):
        for v in out:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


@dataclass
class Capture:
    side: str
    records: "OrderedDict[tuple[str, str, int], np.ndarray]" = field(default_factory=OrderedDict)
    calls: dict = field(default_factory=dict)
    handles: list = field(default_factory=list)
    enabled: bool = True

    def _hook(self, component: str, module: str):
        def hook(_mod, _inputs, output):
            if not self.enabled:
                return None
            n = self.calls.get((component, module), 0)
            self.calls[(component, module)] = n + 1
            arr = first_tensor(output)
            if arr is not None:
                self.records[(component, module, n)] = arr
            return None

        return hook

    def attach_torch(self, component: str, module) -> None:
        for name, sub in module.named_modules():
            self.handles.append(sub.register_forward_hook(self._hook(component, name)))

    def attach_mindspore(self, component: str, cell) -> None:
        for name, sub in cell.cells_and_names():
            self.handles.append(sub.register_forward_hook(self._hook(component, name)))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def modules(self) -> set[tuple[str, str]]:
        return {(c, m) for c, m, _ in self.records}
