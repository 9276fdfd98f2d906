"""Teacher forcing: each MindSpore module run on the inputs the PyTorch module saw (its first call), so the error a
module introduces is separated from the error it inherits. The same inputs through the PyTorch module in float64
give the module's own rounding floor. Modules are ranked by introduced error over their bound; a failing module
whose failing child explains it ranks below that child, so a planted bug deep in a network is ranked first."""

from __future__ import annotations

import numpy as np

from .capture import Capture, first_tensor, unpack
from .compare import bound_for


def _modules_torch(pipe, components):
    return {c: dict(getattr(pipe, c).named_modules()) for c in components}


def _modules_mindspore(pipe, components):
    return {c: dict(getattr(pipe, c).cells_and_names()) for c in components}


def _call_args(skel, get, make):
    """(args, kwargs) from a recorded skeleton; keyword arguments passed as None are left out (they are the
    defaults, and a port may not take an argument diffusers accepts and ignores, such as `temb` of attention)."""
    args, kwargs = unpack(skel, get, make)
    return args, {k: v for k, v in kwargs.items() if v is not None}


def _run_all(ref: Capture, modules: dict, call, float64: bool = False) -> dict:
    """{(component, module): rel L2 of `call(module, skeleton)`'s output against the reference's first output, or an
    error string}."""
    out = {}
    for comp, name in [k for k in ref.inputs if (k[0], k[1], 0) in ref.records and k[0] in modules]:
        mod = modules[comp].get(name)
        if mod is None:
            out[(comp, name)] = "module missing"
            continue
        try:
            result = first_tensor(call(mod, ref.inputs[(comp, name)]))
        except Exception as e:  # a module whose call signature differs from diffusers'
            out[(comp, name)] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            continue
        if float64 and result is not None and result.dtype != np.float64:
            out[(comp, name)] = "computed in float32 in the float64 pass: no floor"
            continue
        if result is None:
            out[(comp, name)] = "no tensor output"
            continue
        # against the reference's first output (a golden reference compares whole or sampled: parity/golden.py)
        m = ref.compare_with((comp, name, 0), result)
        out[(comp, name)] = m.get("error", f"output shape {list(result.shape)}") if "error" in m else m["rel_l2"]
    return out


def torch_floor(pipe, ref: Capture, components) -> dict:
    """Each PyTorch module in float64 on its recorded first-call inputs (the pipeline must already be float64)."""
    import torch

    def make(a):
        t = torch.from_numpy(np.array(a))
        return t.double() if t.is_floating_point() else t

    def call(mod, skel):
        args, kwargs = _call_args(skel, ref.store.get, make)
        with torch.no_grad():
            return mod(*args, **kwargs)

    return _run_all(ref, _modules_torch(pipe, components), call, float64=True)


def mindspore_run(pipe, ref: Capture, components, dtype: str) -> dict:
    """Each MindSpore module on the PyTorch module's recorded first-call inputs (floats in the model's dtype)."""
    import mindspore as ms

    fdt = ms.float16 if dtype == "fp16" else ms.float32

    def make(a):
        t = ms.Tensor(np.array(a))
        return t.astype(fdt) if a.dtype.kind == "f" else t

    def call(cell, skel):
        args, kwargs = _call_args(skel, ref.store.get, make)
        return cell(*args, **kwargs)

    return _run_all(ref, _modules_mindspore(pipe, components), call)


def _fails_inside(failing, component: str, module: str, itself: bool) -> bool:
    """Whether a (component, module) in `failing` lies inside `module` ("(root)": the whole component), or is it."""
    prefix = "" if module == "(root)" else module + "."
    return any(c == component and (m.startswith(prefix) and m != module or itself and m == module) for c, m in failing)


def introduces(iso: dict | None):
    """`(component, module) -> bool or None`: whether the module or anything inside it fails teacher forcing (None
    when the module was not isolated)."""
    if not iso:
        return lambda c, m: None
    rows = {(r["component"], r["module"]): r for r in iso["blocks"]}
    failing = [(r["component"], r["module"]) for r in iso["blocks"] if not r["passed"]]

    def check(component, module):
        key = (component, module or "(root)")
        return _fails_inside(failing, *key, itself=True) if key in rows else None

    return check


def rank(introduced: dict, floors: dict, inherited: dict, dtype: str) -> dict:
    """The isolation section of the report: blocks sorted so unexplained failures come first, by introduced error
    over bound."""
    rows, errors = {}, []
    for key, v in introduced.items():
        if isinstance(v, str):
            errors.append({"component": key[0], "module": key[1] or "(root)", "error": v})
            continue
        fl = floors.get(key)
        fl = fl if isinstance(fl, float) else None
        bound = bound_for(dtype, fl)
        rows[key] = {"component": key[0], "module": key[1] or "(root)", "introduced_rel_l2": v,
                     "inherited_rel_l2": inherited.get(key), "floor": fl, "bound": bound, "ratio": v / bound,
                     "passed": bool(np.isfinite(v) and v <= bound)}
    failing = [(r["component"], r["module"]) for r in rows.values() if not r["passed"]]
    for r in rows.values():
        r["explained_by_child"] = bool(not r["passed"] and _fails_inside(failing, r["component"], r["module"], False))
    ranking = sorted(rows.values(), key=lambda r: (r["passed"], r["explained_by_child"], -r["ratio"]))
    first = next((r for r in ranking if not r["passed"]), None)
    return {"unit": "every module, first call, on the PyTorch module's recorded inputs",
            "blocks": ranking, "first": first, "not_isolated": errors,
            "passed": first is None, "isolated": len(rows)}
