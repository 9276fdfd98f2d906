"""`mindport parity`: run the PyTorch diffusers pipeline and ours on the same noise, compare every module and the
frames, and write report.json / report.md."""

from __future__ import annotations

import gc
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from converters import ConversionError
from converters.sources import read_json, resolve

from . import baseline as baseline_mod
from . import gates, isolation, weightcheck
from . import golden as golden_mod
from . import repro as repro_mod
from . import lora as lora_mod
from .capture import Capture
from .compare import (
    BARS,
    FLOOR_FACTOR,
    FLOOR_MIN,
    compare_modules,
    first_divergence,
    frame_metrics,
    step_matrix,
)
from .adapter import adapter_for, quiet_reference_libraries
from .memory import PeakMemory
from .noise import SharedNoise
from .report_writer import write_reports
from .store import ActivationStore

# settings of the comparing side, not of the reference run (not saved in, nor taken from, a golden reference)
GOLDEN_OWN_SETTINGS = ("dtype", "bars", "converted", "golden", "isolation")


def versions() -> dict:
    """Library versions of this process ("not installed" where a reference library cannot be imported: a
    comparison against a golden reference runs without torch and diffusers)."""
    from importlib import import_module

    out = {}
    for name in ("mindspore", "torch", "diffusers", "transformers"):
        try:
            out[name] = import_module(name).__version__
        except ImportError:
            out[name] = "not installed"
    return {**out, "numpy": np.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.system()}"}


def run_parity(src, out, converted=None, steps: int | None = None, frames: int | None = None, dtype: str = "fp32",
               seed: int | None = None, height: int | None = None, width: int | None = None,
               decode_chunk_size: int | None = None, baseline=None, floor: bool = True, isolate: bool = True,
               weight_samples: int = 12, weight_tensors=(), weight_budget_s: float = 60.0,
               isolate_depth: int | None = None, loras=(), save_golden=None, golden=None, golden_inputs=(),
               free_noise: dict | None = None, log=print) -> dict:
    """Returns the report dict (also written to OUT/report.json, report.md, report.html and the frame images).

    Phases (one framework's model resident at a time):
    1. PyTorch fp32: a plain run (timing), a captured run (every module's output to disk, latents after each step),
       a run recording every module's first-call inputs, the weight-mapping check's PyTorch side; then the same pipeline in
       float64, re-synchronised to the fp32 latents after each step (each module's noise floor) and every module in
       float64 on its recorded inputs (isolation floor). The PyTorch pipeline is then dropped.
    2. MindSpore: a free-running run (the frames, and the plain timing); a captured run re-synchronised to the
       reference latents after each step, every module compared on the fly; teacher forcing of every module; the
       weight-mapping check's MindSpore side.
    3. Gates, module bounds (noise floor), first divergence, step x block matrix, baseline, reports.

    `save_golden=DIR` also writes the PyTorch side as a golden reference (parity/golden.py); `golden=DIR` replaces
    the PyTorch phase by one (no torch or diffusers needed; SRC optional, the run's settings come from the golden;
    teacher forcing and the weight-mapping check need the live reference and are skipped).

    `free_noise` (enable_free_noise's arguments; {} for its defaults) turns FreeNoise on in both pipelines (AnimateDiff);
    a fixture preset may set it too (its run setting `free_noise`)."""
    from mindport.loading import convert_checkpoint

    if dtype not in BARS:
        raise ConversionError(f"--dtype {dtype!r} is not supported for parity; expected one of {', '.join(BARS)}")
    gold = golden_mod.Golden(golden) if golden is not None else None
    if gold is not None:
        if converted is None and src is None:
            raise ConversionError("comparing against a golden reference needs --converted DST (a `mindport convert` "
                                  "output) or SRC to convert")
        flags = {"steps": steps, "frames": frames, "height": height, "width": width, "seed": seed,
                 "decode_chunk_size": decode_chunk_size}
        bad = [f"--{k.replace('_', '-')} {v} (golden: {gold.settings.get(k)})" for k, v in flags.items()
               if v is not None and v != gold.settings.get(k)]
        saved = gold.settings.get("free_noise")
        if free_noise is not None and (saved is None or any(saved.get(k) != v for k, v in free_noise.items()
                                                            if v is not None)):
            bad.append(f"--free-noise {free_noise} (golden: {saved})")
        if bad:
            raise ConversionError(f"{golden}: the golden reference ran other settings than asked: {', '.join(bad)}")
        steps, seed = gold.settings["steps"], gold.settings["seed"]
        isolate, weight_samples, weight_tensors = bool(gold.isolation_modules), 0, ()
    steps = 3 if steps is None else steps
    seed = 0 if seed is None else seed
    if steps < 1:
        raise ConversionError(f"--steps must be at least 1, got {steps}")
    base_report = baseline_mod.load(baseline) if baseline is not None else None
    if gold is None:
        quiet_reference_libraries()
    memory = PeakMemory()
    t_start = time.perf_counter()
    root = resolve(src) if src is not None else None
    pipeline = gold.settings["pipeline"] if gold is not None else read_json(root / "model_index.json").get("_class_name")
    adapter = adapter_for(pipeline, str(golden if gold is not None else root / "model_index.json"))

    # 1. settings: explicit flags, else what a tiny fixture was built for, else diffusers' defaults for the configs
    #    (against a golden: the golden's)
    run = ({k: v for k, v in gold.settings.items() if k not in GOLDEN_OWN_SETTINGS} if gold is not None else
           adapter.settings(root, frames=frames, height=height, width=width, decode_chunk_size=decode_chunk_size))
    if gold is None and (free_noise is not None or run.get("free_noise") is not None):
        run["free_noise"] = adapter.free_noise_settings(root, run["free_noise"] if free_noise is None else free_noise)
    out = Path(out)  # created once the settings hold
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "pipeline": pipeline, "source": str(src if gold is None else gold.settings["source"]), "dtype": dtype,
        "seed": seed, "steps": steps, **run,
        "bars": {**BARS[dtype], "module_rule": f"max({FLOOR_FACTOR:g} x noise floor, {FLOOR_MIN:g})" if dtype == "fp32"
                 else f"{BARS[dtype]['module']:g} (fp16 against PyTorch fp32)"},
        "reference": "PyTorch fp32 (diffusers)", "floor": "PyTorch float64 vs float32, same inputs" if floor else None,
        "module_comparison": "latents re-synchronised to the reference after every step",
    }
    if gold is not None:
        settings.update(golden=str(golden), reference=f"golden reference ({gold.settings['reference']})",
                        floor=gold.settings.get("floor"),
                        isolation=(f"the {len(gold.isolation_modules)} modules saved with --golden-inputs"
                                   if gold.isolation_modules else "needs the live reference (not in the golden)"))
    if loras:  # (file, scale) pairs: fused on both sides (parity/lora.py)
        settings["loras"] = lora_mod.lora_records(loras)
    if base_report is not None:
        baseline_mod.check_settings(settings, base_report, baseline)
    components = adapter.components
    denoiser = adapter.denoiser
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return result

    def captured(cap, pipe, label, timing, run, callback):
        """One pipeline run with `cap` hooked on every component, on a fresh stream of the shared noise."""
        attach = cap.attach_torch if cap.side == "torch" else cap.attach_mindspore
        for name in components:
            attach(name, getattr(pipe, name))
        noise.start(cap.side, label)
        try:
            return timed(timing, run, pipe, kwargs, callback)
        finally:
            cap.detach()

    # 2. convert (unless a converted folder is given)
    tmpdir = None
    if converted is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="mindport-parity-")
        converted = Path(tmpdir.name) / "converted"
        log(f"converting {root} -> {converted}")
        if loras:
            from mindport.lora import convert_with_lora

            timed("convert_s", lambda: convert_with_lora(root, converted, list(loras), progress=False))
        else:
            timed("convert_s", lambda: convert_checkpoint(root, converted, progress=False))
    elif loras:
        lora_mod.check_converted(converted, settings["loras"])
    settings["converted"] = str(converted)

    noise = SharedNoise(seed)
    undo = adapter.patch_noise(noise, reference=gold is None)
    kwargs = adapter.call_kwargs(settings)
    ref_store, our_store = ActivationStore(), ActivationStore()
    ref_cap = Capture("torch", ref_store)
    inputs_cap = Capture("torch", ref_store, outputs=False,
                         inputs_depth=(10**6 if isolate_depth is None else isolate_depth) if isolate else 1)
    floor_cap = Capture("torch", reference=ref_cap) if floor else None
    our_cap = Capture("mindspore", our_store, reference=ref_cap, inputs_depth=1)
    ref_latents: list[np.ndarray] = []
    step_errors: list[float] = []
    iso_floor, introduced, weight_rows, weight = {}, {}, [], None
    if gold is not None:  # the reference side from the golden: no PyTorch phase
        ref_cap, floor_cap, ref_schedule = gold.capture, gold.floor, gold.schedule
        ref_latents, ref_frames, iso_floor = gold.latents, gold.frames, gold.isolation_floors
        our_cap.reference = ref_cap
        noise.runs.append(gold.noise_run)
    golden_info = {"compared_against": str(golden), "reference_versions": gold.versions} if gold is not None else None
    try:
        # 3. PyTorch phase (skipped against a golden reference: loaded above)
        if gold is None:
            ref_pipe = timed("load_s", adapter.load_reference, root)
            adapter.configure(ref_pipe, settings)
            if loras:
                lora_mod.apply_reference(ref_pipe, loras)
            ref_schedule = gates.schedule(ref_pipe.scheduler, steps)
            log(f"running PyTorch reference ({pipeline}, {settings['steps']} steps, {settings['frames']} frames)")
            noise.start("torch", "plain")
            timed("torch_s", adapter.run_reference, ref_pipe, kwargs)

            def record(i, lat):
                ref_latents.append(lat)
                ref_cap.step = i + 1

            ref_frames = captured(ref_cap, ref_pipe, "reference", "torch_captured_s", adapter.run_reference, record)
            # first-call inputs of every module (teacher forcing, gates): one more run, identical to the reference run
            # (same noise, deterministic), kept apart so the output capture's overhead is measured on its own
            captured(inputs_cap, ref_pipe, "inputs", "isolation_s", adapter.run_reference, None)
            ref_cap.inputs = inputs_cap.inputs
            if weight_samples or weight_tensors:
                picks = weightcheck.sample(ref_pipe, components, weight_samples, seed, weight_tensors)
                log(f"weight-mapping check, PyTorch side ({len(picks)} tensors)")
                weight_rows = timed("weight_check_s", weightcheck.torch_side, ref_pipe, ref_cap, picks, seed,
                                    weight_budget_s)
            if floor:
                import torch

                log("noise floor: PyTorch float64, re-synchronised to the fp32 latents after each step")
                ref_pipe.to(torch.float64)

                def resync64(i, _lat):
                    floor_cap.step = i + 1
                    return ref_latents[i]

                captured(floor_cap, ref_pipe, "float64", "floor_s", adapter.run_reference, resync64)
                if isolate:
                    iso_floor = timed("floor_s", isolation.torch_floor, ref_pipe, ref_cap, components)
            if save_golden is not None:
                log(f"saving the golden reference -> {save_golden}")
                golden_info = golden_mod.save(
                    save_golden, {k: v for k, v in settings.items() if k not in GOLDEN_OWN_SETTINGS}, versions(),
                    noise.runs[0], ref_schedule, ref_cap, floor_cap if floor else None, ref_latents, ref_frames,
                    denoiser, golden_inputs, iso_floor)
            del ref_pipe
            gc.collect()

        # 4. MindSpore phase
        our_pipe = timed("load_s", adapter.load_ours, converted, dtype)
        adapter.configure(our_pipe, settings)
        our_schedule = gates.schedule(our_pipe.scheduler, steps)
        log(f"running MindSpore ({dtype}), free-running")
        noise.start("mindspore", "free-running")
        our_frames = timed("mindspore_s", adapter.run_ours, our_pipe, kwargs)
        log("running MindSpore with module capture, re-synchronised to the reference after each step")

        def resync(i, lat):
            lat = lat.asnumpy() if hasattr(lat, "asnumpy") else np.asarray(lat)
            step_errors.append(float(np.linalg.norm(lat.astype(np.float64) - ref_latents[i])
                                     / max(np.linalg.norm(ref_latents[i]), 1e-30)))
            our_cap.step = i + 1
            return ref_latents[i]

        captured(our_cap, our_pipe, "captured", "mindspore_captured_s", adapter.run_ours, resync)
        if isolate:
            log(f"isolation: every module on the reference's recorded inputs ({len(ref_cap.inputs)} modules)")
            introduced = timed("isolation_s", isolation.mindspore_run, our_pipe, ref_cap, components, dtype)
        if weight_rows:
            log("weight-mapping check, MindSpore side")
            weight = timed("weight_check_s", weightcheck.mindspore_side, our_pipe, ref_cap, weight_rows, dtype)
        del our_pipe
        gc.collect()
    finally:
        undo()
        ref_cap.detach()
        our_cap.detach()
        inputs_cap.detach()
        if floor_cap is not None:
            floor_cap.detach()

    # 5. compare: gates first, then modules against their bounds
    inherited = {(c, m): r.get("rel_l2") for (c, m, n), r in our_cap.records.items() if n == 0}
    iso = isolation.rank(introduced, iso_floor, inherited, dtype) if isolate else None
    calls, layers, coverage = compare_modules(ref_cap, our_cap, dtype, floor_cap, isolation.introduces(iso))
    denoiser_ok = [all(c["passed"] for c in calls if c["component"] == denoiser and c["module"] == "(root)"
                       and c["step"] == i) for i in range(len(step_errors))]
    noise_info = noise.as_dict()
    gate_rows = [g for g in (
        gates.scheduler_gate(ref_schedule, our_schedule),
        gates.tokenizer_gate(ref_cap, our_cap),
        gates.preprocessing_gate(ref_cap, our_cap, dtype),
        gates.guidance_gate(ref_cap, our_cap, denoiser, dtype),
        gates.sampler_gate(step_errors, denoiser_ok, dtype),
        gates.noise_gate(noise_info["mismatches"]),
    ) if g is not None]
    failed_gate = next((g for g in gate_rows if not g["passed"]), None)
    first = ({"kind": "gate", "gate": failed_gate["name"], "detail": failed_gate["detail"]} if failed_gate
             else first_divergence(calls))
    worst = max(layers, key=lambda r: r["ratio"], default=None)
    fm = frame_metrics(our_frames, ref_frames) if our_frames.shape == ref_frames.shape else {
        "rel_l2": float("inf"), "max_abs": float("inf"), "psnr": 0.0, "ssim": 0.0, "error":
        f"frames shape {list(our_frames.shape)} != reference {list(ref_frames.shape)}"}
    fm["passed"] = bool(fm["rel_l2"] <= BARS[dtype]["frames"])
    problems = [f"noise: {m}" for m in noise_info["mismatches"]]
    if not layers:
        problems.append("no module outputs were captured on both sides")
    if weight is not None:
        weight.update({"total": sum(1 for _ in weight_rows), "seconds": round(timings.get("weight_check_s", 0), 2)})
        for r in weight["rows"]:
            r.pop("values", None)
    passed = bool(fm["passed"] and all(r["passed"] for r in layers) and not problems and failed_gate is None
                  and (iso is None or iso["passed"]) and (weight is None or weight["passed"]))
    timings["total_s"] = time.perf_counter() - t_start
    plain = timings.get("torch_s", 0) + timings.get("mindspore_s", 0)
    captured = timings.get("torch_captured_s", 0) + timings.get("mindspore_captured_s", 0)
    report = {
        "schema_version": 2,
        "passed": passed,
        "first_divergence": first,
        "worst_module": None if worst is None else {k: worst.get(k) for k in ("component", "module", "rel_l2", "max_abs",
                                                                               "shape", "bound", "floor")},
        "frames": fm,
        "gates": gate_rows,
        "layers": layers,
        "isolation": iso,
        "steps": step_matrix(calls, denoiser, steps),
        "weight_check": weight,
        "coverage": coverage,
        "problems": problems,
        "noise": noise_info,
        "baseline": None,
        "settings": settings,
        "versions": versions(),
        "golden": golden_info,
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "overhead": round(captured / plain, 2) if plain else None,
                    "activations_mb": round((ref_store.nbytes + our_store.nbytes) / 2**20, 1), **memory.stop()},
    }
    if not report["passed"]:  # the first diverging module alone, with its inputs and weights, for a bug report
        report["repro"] = repro_mod.write(out / "repro", report, ref_cap, converted, dtype)
    if tmpdir is not None:
        tmpdir.cleanup()
    ref_store.close()
    our_store.close()
    if base_report is not None:
        report["baseline"] = baseline_mod.check(report, base_report, baseline)
        report["passed"] = bool(report["passed"] and report["baseline"]["passed"])
    write_reports(report, out, ref_frames, our_frames)
    return report
