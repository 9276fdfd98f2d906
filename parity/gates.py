"""Non-network gates, checked before any module tensor is judged: the scheduler's schedule and config (float64),
tokenizer ids and masks, preprocessed images, classifier-free-guidance batching, each sampler step on the
reference's inputs, and the shared noise log. A gate that fails is the report's first divergence: a scheduler or
preprocessing mismatch is named as such, not as the first module that inherits it."""

from __future__ import annotations

import copy

import numpy as np

from .capture import Capture, leaves
from .metrics import compare

# schedule arrays compared when both schedulers have them
SCHEDULE_ARRAYS = ("timesteps", "sigmas", "betas", "alphas_cumprod", "final_alpha_cumprod", "init_noise_sigma")
# (component, module) whose first-call inputs are preprocessed images (not network outputs)
PREPROCESSED_INPUTS = (("image_encoder", ""), ("vae", "encoder"))
TEXT_ENCODERS = ("text_encoder",)
# tolerances (relative L2) by MindSpore dtype: preprocessing, CFG batch values, one sampler step
TOLERANCE = {
    "fp32": {"preprocessing": 1e-5, "batch": 1e-3, "step": 1e-4},
    "fp16": {"preprocessing": 1e-3, "batch": 5e-2, "step": 1e-2},
}


def _gate(name: str, passed: bool, detail: str, **extra) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail, **extra}


def _as_array(v):
    if v is None:
        return None
    if hasattr(v, "detach"):
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


def schedule(scheduler, steps: int) -> dict:
    """The schedule a scheduler builds for `steps` (arrays in float64) and its config (plain values)."""
    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps)
    arrays = {k: _as_array(getattr(s, k)) for k in SCHEDULE_ARRAYS if getattr(s, k, None) is not None}
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(s.config).items() if not k.startswith("_")}
    return {"class": type(s).__name__, "arrays": arrays, "config": config}


def scheduler_gate(ref: dict, ours: dict) -> dict:
    problems, checked = [], []
    if ref["class"] != ours["class"]:
        problems.append(f"class {ours['class']} != reference {ref['class']}")
    for k, a in ref["arrays"].items():
        b = ours["arrays"].get(k)
        if b is None:
            continue
        checked.append(k)
        if a.shape != b.shape:
            problems.append(f"{k}: shape {list(b.shape)} != reference {list(a.shape)}")
            continue
        err = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-30)) if a.size else 0.0
        if err > 1e-6:
            i = int(np.argmax(np.abs(a - b)))
            problems.append(f"{k}[{i}] = {b.ravel()[i]:.8g}, reference {a.ravel()[i]:.8g} (max rel diff {err:.2e})")
    for k, v in ref["config"].items():
        if k in ours["config"] and not _same(ours["config"][k], v):
            problems.append(f"config {k} = {ours['config'][k]!r}, reference {v!r}")
    detail = "; ".join(problems) if problems else f"{ref['class']}: {', '.join(checked)} and config agree"
    return _gate("scheduler", not problems, detail)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _tensors(cap: Capture, key) -> list[np.ndarray]:
    """The tensors of a module's recorded first-call inputs, in argument order."""
    return [np.asarray(cap.store.get(k)) for k in leaves(cap.inputs[key])] if key in cap.inputs else []


def tokenizer_gate(ref: Capture, ours: Capture) -> dict | None:
    keys = [(c, "") for c in TEXT_ENCODERS if (c, "") in ref.inputs]
    if not keys:
        return None
    problems = []
    for key in keys:
        a = [t for t in _tensors(ref, key) if t.dtype.kind in "iub"]
        b = [t for t in _tensors(ours, key) if t.dtype.kind in "iub"]
        if len(a) != len(b):
            problems.append(f"{key[0]}: {len(b)} integer inputs, reference {len(a)}")
        for i, (x, y) in enumerate(zip(a, b)):
            if x.shape != y.shape or not np.array_equal(x, y):
                where = "shape" if x.shape != y.shape else f"{int(np.sum(x != y))} ids differ"
                problems.append(f"{key[0]} input {i}: {where} (ours {list(y.shape)}, reference {list(x.shape)})")
    return _gate("tokenizer", not problems, "; ".join(problems) or
                 f"token ids and masks identical ({', '.join(k[0] for k in keys)})")


def preprocessing_gate(ref: Capture, ours: Capture, dtype: str) -> dict | None:
    keys = [k for k in PREPROCESSED_INPUTS if k in ref.inputs]
    if not keys:
        return None
    tol = TOLERANCE[dtype]["preprocessing"]
    problems, worst = [], 0.0
    for key in keys:
        a = [t for t in _tensors(ref, key) if t.dtype.kind == "f"]
        b = [t for t in _tensors(ours, key) if t.dtype.kind == "f"]
        for i, (x, y) in enumerate(zip(a, b)):
            if x.shape != y.shape:
                problems.append(f"{'.'.join(filter(None, key))} input {i}: shape {list(y.shape)} != {list(x.shape)}")
                continue
            e = compare(y, x)["rel_l2"]
            worst = max(worst, e)
            if e > tol:
                problems.append(f"{'.'.join(filter(None, key))} input {i}: rel L2 {e:.2e} > {tol:g}")
        if len(a) != len(b):
            problems.append(f"{'.'.join(filter(None, key))}: {len(b)} float inputs, reference {len(a)}")
    return _gate("image_preprocessing", not problems, "; ".join(problems) or
                 f"{', '.join('.'.join(filter(None, k)) for k in keys)} inputs agree (rel L2 {worst:.1e})",
                 max_rel_l2=worst)


def guidance_gate(ref: Capture, ours: Capture, denoiser: str, dtype: str) -> dict | None:
    """The denoiser's first-call inputs: same tensors, same shapes, and every batch entry closest to the reference's
    entry at the same index (classifier-free guidance halves in the same order)."""
    key = (denoiser, "")
    if key not in ref.inputs:
        return None
    # batched tensors only: a timestep may be a 0-d tensor on one side and a Python number on the other
    a = [t for t in _tensors(ref, key) if t.dtype.kind == "f" and t.ndim >= 2]
    b = [t for t in _tensors(ours, key) if t.dtype.kind == "f" and t.ndim >= 2]
    tol = TOLERANCE[dtype]["batch"]
    problems = [] if len(a) == len(b) else [f"{len(b)} float inputs, reference {len(a)}"]
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            problems.append(f"input {i}: shape {list(y.shape)} != reference {list(x.shape)}")
            continue
        if x.ndim and x.shape[0] > 1:
            d = np.array([[compare(y[p], x[q])["rel_l2"] for q in range(x.shape[0])] for p in range(x.shape[0])])
            order = d.argmin(axis=1)
            distinct = len({x[q].tobytes() for q in range(x.shape[0])}) == x.shape[0]
            if distinct and not np.array_equal(order, np.arange(x.shape[0])):
                problems.append(f"input {i} {list(x.shape)}: batch entries {order.tolist()} of the reference match "
                                f"ours 0..{x.shape[0] - 1} (guidance halves swapped or misordered)")
                continue
        e = compare(y, x)["rel_l2"]
        if e > tol:
            problems.append(f"input {i} {list(x.shape)}: rel L2 {e:.2e} > {tol:g}")
    return _gate("guidance_batching", not problems, "; ".join(problems) or
                 f"{denoiser} inputs: {len(a)} tensors, batch layout as the reference")


def sampler_gate(step_errors: list[float], denoiser_ok: list[bool], dtype: str) -> dict | None:
    """Each denoising step run by MindSpore from the reference's latents: the latents it produces against the
    reference's. Blamed on the sampler (scheduler step, guidance) only where the denoiser's output at that step is
    within its bound; otherwise the network explains it and the module comparison says where."""
    if not step_errors:
        return None
    tol = TOLERANCE[dtype]["step"]
    bad = [i for i, (e, ok) in enumerate(zip(step_errors, denoiser_ok)) if e > tol and ok]
    worst = max(step_errors)
    detail = (f"steps {bad}: latents after the step differ by rel L2 up to "
              f"{max(step_errors[i] for i in bad):.2e} > {tol:g} while the denoiser output agrees"
              if bad else f"{len(step_errors)} steps, latents after each step within {tol:g} (worst {worst:.1e})")
    return _gate("sampler_step", not bad, detail, per_step=[float(e) for e in step_errors])


def noise_gate(mismatches: list[str]) -> dict:
    return _gate("noise", not mismatches, "; ".join(mismatches) or "every run drew the same draws in the same order")
