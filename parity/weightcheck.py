"""Weight-mapping check: perturb one source tensor at a time and see which module's output moves first.

PyTorch side: the tensor is perturbed in the reference model and the component's entry modules are re-run on their
recorded inputs; the first module (execution order, children first) whose output moves is where the tensor acts.
MindSpore side: the parameter that actually holds the tensor's values (found by value, not by name, so a swap made by
the converter or in a converted file is seen) gets the same perturbation; its first moved module must be the same.
Tensors are sampled (same-shape groups first: a swap that fits the shapes is what the other checks can miss) within a
time budget."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from .capture import Capture, first_tensor, unpack

MOVED = 1e-6  # relative change of a module's output that counts as moved


def sample(pipe, components, n: int, seed: int, include=()) -> list[tuple[str, str]]:
    """`include` ("component.parameter" names, always checked), then up to `n` sampled (component, parameter) pairs:
    parameters that share their shape with another come first."""
    rng = np.random.Generator(np.random.PCG64(seed))
    groups = defaultdict(list)
    picked = []
    for full in include:
        comp, _, name = full.partition(".")
        if comp not in components or name not in dict(getattr(pipe, comp).named_parameters()):
            raise ValueError(f"--weight-tensor {full!r}: no such parameter; expected COMPONENT.PARAMETER with COMPONENT "
                             f"one of {', '.join(components)}")
        picked.append((comp, name))
    for c in components:
        for name, p in getattr(pipe, c).named_parameters():
            groups[(c, tuple(p.shape))].append((c, name))
    shared = [x for g in groups.values() if len(g) > 1 for x in g]
    singles = [x for g in groups.values() if len(g) == 1 for x in g]
    sampled = []
    for pool in (shared, singles):
        pool = [x for x in pool if x not in picked]
        order = rng.permutation(len(pool))
        sampled += [pool[i] for i in order[: max(0, n - len(sampled))]]
    return picked + sampled


class _Moved(Exception):
    """Raised from a hook at the first module whose output moved: the rest of the forward is not needed."""


def _entries(ref: Capture, component: str):
    return [m for c, m in ref.entry_modules() if c == component and (c, m) in ref.inputs]


def _run(modules: dict, ref: Capture, component: str, make, attach, call, base: list | None = None):
    """Run the component's entry modules on their recorded inputs. Without `base`: every module's output, in
    execution order. With `base` (such a list): the name of the first module whose output moved, or None."""
    outputs, handles = [], []

    def hook(name, out):
        a = first_tensor(out)
        if base is None:
            outputs.append((name, a))
            return
        i = len(outputs)
        outputs.append(None)
        ref_name, b = base[i] if i < len(base) else (None, None)
        if a is None or b is None or a.shape != b.shape:
            return
        if np.linalg.norm(a.astype(np.float64) - b) > MOVED * max(np.linalg.norm(b.astype(np.float64)), 1e-30):
            raise _Moved(ref_name)

    for name, mod in modules.items():
        handles.append(attach(mod, lambda _m, _i, o, name=name: hook(name or "(root)", o)))
    try:
        for entry in _entries(ref, component):
            args, kwargs = unpack(ref.inputs[(component, entry)], ref.store.get, make)
            call(modules[entry], args, kwargs)
    except _Moved as moved:
        return moved.args[0]
    finally:
        for h in handles:
            h.remove()
    return outputs if base is None else None


def torch_side(pipe, ref: Capture, picks, seed: int, budget_s: float) -> list[dict]:
    import torch

    rng = np.random.Generator(np.random.PCG64(seed + 1))
    t0, rows, base = time.perf_counter(), [], {}

    def make(a):
        return torch.from_numpy(np.array(a))

    def call(mod, args, kwargs):
        with torch.no_grad():
            mod(*args, **kwargs)

    def attach(mod, fn):
        return mod.register_forward_hook(fn)

    for comp, name in picks:
        if time.perf_counter() - t0 > budget_s:
            break
        modules = dict(getattr(pipe, comp).named_modules())
        if comp not in base:
            base[comp] = _run(modules, ref, comp, make, attach, call)
        p = dict(getattr(pipe, comp).named_parameters())[name]
        values = p.detach().float().numpy().copy()
        # half the tensor's spread, and at least 5% of its magnitude: a near-constant tensor (a blend factor, a
        # scalar) perturbed by its spread alone moves its module's output by less than one float16 step
        scale = max(0.5 * float(values.std()), 0.05 * float(np.sqrt(np.mean(values.astype(np.float64) ** 2))), 1e-3)
        delta = (rng.standard_normal(values.shape) * scale).astype(np.float32)
        with torch.no_grad():
            p.add_(torch.from_numpy(delta).to(p.dtype))
            moved = _run(modules, ref, comp, make, attach, call, base[comp])
            p.copy_(torch.from_numpy(values).to(p.dtype))
        rows.append({"component": comp, "tensor": name, "values": values, "delta": delta, "torch_first_moved": moved})
    return rows


def mindspore_side(pipe, ref: Capture, rows: list[dict], dtype: str) -> dict:
    import mindspore as ms

    fdt = ms.float16 if dtype == "fp16" else ms.float32
    np_dt = np.float16 if dtype == "fp16" else np.float32
    t0, base, out = time.perf_counter(), {}, []

    def make(a):
        t = ms.Tensor(np.array(a))
        return t.astype(fdt) if a.dtype.kind == "f" else t

    def call(cell, args, kwargs):
        cell(*args, **kwargs)

    def attach(cell, fn):
        return cell.register_forward_hook(fn)

    params = {}  # component -> [(name, parameter, values)] read once
    for r in rows:
        comp = r["component"]
        cell = getattr(pipe, comp)
        modules = dict(cell.cells_and_names())
        if comp not in base:
            try:
                base[comp] = _run(modules, ref, comp, make, attach, call)
            except TypeError as e:  # an entry module whose call signature differs from diffusers' (Wan's VAE
                base[comp] = str(e)  # encoder/decoder take our feature cache, not diffusers' list): not checkable
            params[comp] = [(n, p, p.asnumpy().ravel()) for n, p in cell.parameters_and_names()]
        if isinstance(base[comp], str):
            out.append({"component": comp, "tensor": r["tensor"], "expected_module": r["torch_first_moved"],
                        "mindspore_parameter": None, "first_moved": None, "passed": None,
                        "detail": f"not checkable: {comp}'s entry modules take other arguments than diffusers' "
                                  f"({base[comp]})"})
            continue
        target = r["values"].astype(np_dt).ravel()
        holders = [(n, p) for n, p, v in params[comp] if v.size == target.size and np.array_equal(v.astype(np_dt), target)]
        row = {"component": comp, "tensor": r["tensor"], "expected_module": r["torch_first_moved"]}
        if not holders:
            row.update({"mindspore_parameter": None, "first_moved": None, "passed": False,
                        "detail": "no MindSpore parameter holds this tensor's values"})
            out.append(row)
            continue
        name, p = next(((n, q) for n, q in holders if n == r["tensor"]), holders[0])
        saved = p.asnumpy().copy()
        p.set_data(ms.Tensor((saved.astype(np.float32) + r["delta"].reshape(saved.shape)).astype(saved.dtype)))
        try:
            moved = _run(modules, ref, comp, make, attach, call, base[comp])
        finally:
            p.set_data(ms.Tensor(saved))
        row.update({"mindspore_parameter": name, "first_moved": moved, "passed": moved == r["torch_first_moved"]})
        if len(holders) > 1:
            row["detail"] = f"values also held by {', '.join(n for n, _ in holders if n != name)}"
        out.append(row)
    mismatches = [r for r in out if r["passed"] is False]
    unchecked = [r for r in out if r["passed"] is None]
    return {"checked": len(out) - len(unchecked), "unchecked": len(unchecked), "rows": out,
            "mismatches": mismatches, "passed": not mismatches,
            "seconds_mindspore": round(time.perf_counter() - t0, 2)}
