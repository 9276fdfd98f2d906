"""`mindport parity`: run the PyTorch diffusers pipeline and ours on the same noise, compare every module and the
frames, and write report.json / report.md."""

from __future__ import annotations

import platform
import resource
import tempfile
import time
from importlib import import_module
from pathlib import Path

import numpy as np

from converters import ConversionError
from converters.sources import read_json, resolve

from .capture import Capture
from .compare import BARS, compare_modules, first_divergence, frame_metrics
from .fixtures import fixture_run_settings
from .noise import SharedNoise
from .report import write_reports

# pipeline class -> adapter module (how to build, call and seed both sides)
ADAPTER_MODULES = {
    "StableVideoDiffusionPipeline": "parity.svd",
    "AnimateDiffPipeline": "parity.animatediff",
    "I2VGenXLPipeline": "parity.i2vgen_xl",
}


def adapter_for(pipeline: str, where: str = ""):
    if pipeline not in ADAPTER_MODULES:
        raise ConversionError(f"{where}: pipeline {pipeline!r} is not supported by parity; "
                              f"supported: {', '.join(ADAPTER_MODULES)}")
    return import_module(ADAPTER_MODULES[pipeline])


def versions() -> dict:
    import diffusers
    import mindspore
    import torch
    import transformers

    return {"mindspore": mindspore.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.system()}"}


def quiet_reference_libraries() -> None:
    """diffusers/transformers log warnings and progress bars on every load; the harness reports what matters."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_parity(src, out, converted=None, steps: int = 3, frames: int | None = None, dtype: str = "fp32",
               seed: int = 0, height: int | None = None, width: int | None = None,
               decode_chunk_size: int | None = None, log=print) -> dict:
    """Returns the report dict (also written to OUT/report.json and OUT/report.md)."""
    from mindport.loading import convert_checkpoint

    if dtype not in BARS:
        raise ConversionError(f"--dtype {dtype!r} is not supported for parity; expected one of {', '.join(BARS)}")
    if steps < 1:
        raise ConversionError(f"--steps must be at least 1, got {steps}")
    quiet_reference_libraries()
    root = resolve(src)
    index = read_json(root / "model_index.json")
    pipeline = index.get("_class_name")
    adapter = adapter_for(pipeline, str(root / "model_index.json"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. settings: explicit flags, else what a tiny fixture was built for, else the UNet config's defaults
    unet_cfg = read_json(root / "unet" / "config.json")
    defaults = {**adapter.default_settings(unet_cfg), **fixture_run_settings(root)}
    settings = {
        "pipeline": pipeline, "source": str(src), "dtype": dtype, "seed": seed, "steps": steps,
        "frames": frames or defaults["frames"],
        "height": height or defaults["height"], "width": width or defaults["width"],
        "decode_chunk_size": decode_chunk_size,
        "bars": BARS[dtype], "reference": "PyTorch fp32 (diffusers)",
    }

    # 2. convert (unless a converted folder is given) and load both pipelines
    timings = {}
    t0 = time.perf_counter()
    tmpdir = None
    if converted is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="mindport-parity-")
        converted = Path(tmpdir.name) / "converted"
        log(f"converting {root} -> {converted}")
        convert_checkpoint(root, converted, progress=False)
    settings["converted"] = str(converted)
    timings["convert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_pipe = adapter.load_reference(root)
    our_pipe = adapter.load_ours(converted, dtype)
    timings["load_s"] = time.perf_counter() - t0

    # 3. three runs on one shared noise source:
    #    a. PyTorch reference, every module captured, latents recorded after each denoising step;
    #    b. MindSpore free-running (no hooks): the end-to-end frames, and its real speed;
    #    c. MindSpore with every module captured, latents re-synchronised to the reference after each step, so each
    #       module is compared on the inputs the reference saw at that step, not on drift accumulated by the loop.
    noise = SharedNoise(seed)
    undo = adapter.patch_noise(noise)
    ref_cap, our_cap = Capture("torch"), Capture("mindspore")
    kwargs = adapter.call_kwargs(settings)
    ref_latents: list[np.ndarray] = []
    try:
        for name in adapter.COMPONENTS:
            ref_cap.attach_torch(name, getattr(ref_pipe, name))
        log(f"running PyTorch reference ({pipeline}, {settings['steps']} steps, {settings['frames']} frames)")
        noise.start("torch", "reference")
        t0 = time.perf_counter()
        ref_frames = adapter.run_reference(ref_pipe, kwargs, lambda i, lat: ref_latents.append(lat))
        timings["torch_s"] = time.perf_counter() - t0
        ref_cap.detach()
        log(f"running MindSpore ({dtype}), free-running")
        noise.start("mindspore", "free-running")
        t0 = time.perf_counter()
        our_frames = adapter.run_ours(our_pipe, kwargs)
        timings["mindspore_s"] = time.perf_counter() - t0
        log("running MindSpore with module capture, re-synchronised to the reference after each step")
        for name in adapter.COMPONENTS:
            our_cap.attach_mindspore(name, getattr(our_pipe, name))
        noise.start("mindspore", "captured")
        t0 = time.perf_counter()
        adapter.run_ours(our_pipe, kwargs, lambda i, _lat: ref_latents[i])
        timings["mindspore_captured_s"] = time.perf_counter() - t0
    finally:
        undo()
        ref_cap.detach()
        our_cap.detach()
        if tmpdir is not None:
            tmpdir.cleanup()
    settings["module_comparison"] = "latents re-synchronised to the reference after every step"

    # 4. compare
    bars = BARS[dtype]
    calls, layers, coverage = compare_modules(ref_cap, our_cap, bars["module"])
    first = first_divergence(calls)
    worst = max(layers, key=lambda r: r["rel_l2"], default=None)
    fm = frame_metrics(our_frames, ref_frames) if our_frames.shape == ref_frames.shape else {
        "rel_l2": float("inf"), "max_abs": float("inf"), "psnr": 0.0, "error":
        f"frames shape {list(our_frames.shape)} != reference {list(ref_frames.shape)}"}
    fm["passed"] = bool(fm["rel_l2"] <= bars["frames"])
    noise_info = noise.as_dict()
    problems = [f"noise: {m}" for m in noise_info["mismatches"]]
    if not layers:
        problems.append("no module outputs were captured on both sides")
    passed = bool(fm["passed"] and all(r["passed"] for r in layers) and not problems)
    report = {
        "schema_version": 1,
        "passed": passed,
        "first_divergence": first,
        "worst_module": None if worst is None else {k: worst[k] for k in ("component", "module", "rel_l2", "max_abs", "shape")},
        "frames": fm,
        "layers": layers,
        "coverage": coverage,
        "problems": problems,
        "noise": noise_info,
        "settings": settings,
        "versions": versions(),
        "timings": {**{k: round(v, 3) for k, v in timings.items()}, "peak_rss_mb": round(_peak_rss_mb(), 1)},
    }
    write_reports(report, out, ref_frames, our_frames)
    return report
