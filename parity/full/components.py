"""Full-size forward comparison, one component at a time, so a failure points at one component.

For each component of a released config (UNet, VAE encode, VAE decode, image encoder, text encoder): the PyTorch
model (diffusers / transformers, fp32) runs on seeded numpy inputs at the reduced size with every module's output
captured; the PyTorch model is then deleted before the MindSpore model is loaded through mindport's
`from_pretrained` (our converter, on the built PyTorch folder) in the requested dtype and run on the same inputs,
captured the same way; `parity.compare.compare_modules` judges every module.

Each component runs in its own child process (`python -m parity.full _component ...`): its peak memory is its own
(VmHWM, and peak RssAnon sampled every 50 ms) and nothing it allocated outlives it."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..capture import Capture
from ..compare import BARS
from ..memory import PeakMemory
from ..store import ActivationStore
from .build import STREAMED, SETTINGS, build, check_name, read_config, streamed_checkpoint
from .streamed import judge_component, run_streamed, spec_for

# our models that take MindSpore tensors (not numpy arrays) for their float inputs
TENSOR_INPUTS = {"WanTransformer3DModel", "AutoencoderKLWan", "CLIPVisionModel", "UMT5EncoderModel"}
PROMPTS = ["the cat walking at night", "a dog, static"]  # (prompt, negative prompt): a guidance batch of 2


# -- inputs: seeded numpy, a guidance batch of 2 (two different samples, so a batch/frame mix-up shows) ----------
def _normal(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _token_ids(root: Path) -> np.ndarray:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    return np.asarray(tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids,
                      dtype=np.int64)


def _pixels(rng, s, root, cfg):
    return {"pixel_values": _normal(rng, 2, 3, cfg["image_size"], cfg["image_size"])}


def _text(rng, s, root, cfg):
    return {"input_ids": _token_ids(root)}


def _images(rng, s, root, cfg):
    return {"x": rng.uniform(-1, 1, (2, 3, s["height"], s["width"])).astype(np.float32)}


def _latents_2d(rng, s, root, cfg):
    return {"z": _normal(rng, 2 * s["frames"], cfg["latent_channels"], s["height"] // 8, s["width"] // 8)}


def _latents_temporal(rng, s, root, cfg):
    return {**_latents_2d(rng, s, root, cfg), "num_frames": s["frames"]}


def _unet_svd(rng, s, root, cfg):
    f, h, w = s["frames"], s["height"] // 8, s["width"] // 8
    return {"sample": _normal(rng, 2, f, cfg["in_channels"], h, w),
            "timestep": np.array([0.25 * np.log(7.0)], np.float32),  # SVD's continuous timestep for sigma 7
            "encoder_hidden_states": _normal(rng, 2, 1, cfg["cross_attention_dim"]),
            "added_time_ids": np.array([[6.0, 127.0, 0.02]] * 2, np.float32)}


def _unet_i2vgen(rng, s, root, cfg):
    f, h, w = s["frames"], s["height"] // 8, s["width"] // 8
    c = cfg["in_channels"]
    return {"sample": _normal(rng, 2, c, f, h, w), "timestep": np.array([501], np.int64),
            "fps": np.array([16, 16], np.int64), "image_latents": _normal(rng, 2, c, f, h, w),
            "image_embeddings": _normal(rng, 2, cfg["cross_attention_dim"]),
            "encoder_hidden_states": _normal(rng, 2, 77, cfg["cross_attention_dim"])}


def _unet_motion(rng, s, root, cfg):
    f, h, w = s["frames"], s["height"] // 8, s["width"] // 8
    # AnimateDiffPipeline hands the UNet the prompt embeddings repeated per frame: (B*F, L, D)
    context = np.repeat(_normal(rng, 2, 77, cfg["cross_attention_dim"]), f, axis=0)
    return {"sample": _normal(rng, 2, cfg["in_channels"], f, h, w), "timestep": np.array([501], np.int64),
            "encoder_hidden_states": context}


# Wan 2.1: batch 1, as its pipelines call every model once per guidance branch (cond, then uncond)
def _wan_text(rng, s, root, cfg):
    """UMT5 ids as the pipelines pass them: a prompt padded to 512 with its mask. The ids are drawn over the whole
    vocabulary (the tiny tokenizer's would all sit below 60), so rows from all over the 256384-row table are read."""
    n = 24
    ids = np.zeros((1, 512), np.int64)
    ids[0, :n - 1] = rng.integers(2, cfg["vocab_size"], n - 1)
    ids[0, n - 1] = 1  # eos
    mask = np.zeros((1, 512), np.int64)
    mask[0, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _wan_video(rng, s, root, cfg):
    return {"x": rng.uniform(-1, 1, (1, 3, s["frames"], s["height"], s["width"])).astype(np.float32)}


def _wan_latents(rng, s, root, cfg):
    return {"z": _normal(rng, 1, cfg["z_dim"], (s["frames"] - 1) // 4 + 1, s["height"] // 8, s["width"] // 8)}


def _wan_transformer(rng, s, root, cfg):
    f, h, w = (s["frames"] - 1) // 4 + 1, s["height"] // 8, s["width"] // 8
    inputs = {"hidden_states": _normal(rng, 1, cfg["in_channels"], f, h, w), "timestep": np.array([757], np.int64),
              "encoder_hidden_states": _normal(rng, 1, 512, cfg["text_dim"])}
    if cfg.get("image_dim"):  # I2V: the CLIP ViT-H penultimate hidden states, 257 tokens
        inputs["encoder_hidden_states_image"] = _normal(rng, 1, 257, cfg["image_dim"])
    return inputs


def _pixels_1(rng, s, root, cfg):
    return {"pixel_values": _normal(rng, 1, 3, cfg["image_size"], cfg["image_size"])}


# component -> (folder, class name, method called, output field path, inputs)
COMPONENTS: dict[str, dict[str, tuple]] = {
    "svd-xt": {
        "image_encoder": ("image_encoder", "CLIPVisionModelWithProjection", "__call__", "image_embeds", _pixels),
        "vae.encode": ("vae", "AutoencoderKLTemporalDecoder", "encode", "latent_dist.mean", _images),
        "vae.decode": ("vae", "AutoencoderKLTemporalDecoder", "decode", "sample", _latents_temporal),
        "unet": ("unet", "UNetSpatioTemporalConditionModel", "__call__", "sample", _unet_svd),
    },
    "i2vgen-xl": {
        "text_encoder": ("text_encoder", "CLIPTextModel", "__call__", "last_hidden_state", _text),
        "image_encoder": ("image_encoder", "CLIPVisionModelWithProjection", "__call__", "image_embeds", _pixels),
        "vae.encode": ("vae", "AutoencoderKL", "encode", "latent_dist.mean", _images),
        "vae.decode": ("vae", "AutoencoderKL", "decode", "sample", _latents_2d),
        "unet": ("unet", "I2VGenXLUNet", "__call__", "sample", _unet_i2vgen),
    },
    "animatediff-v1-5-2": {
        "text_encoder": ("text_encoder", "CLIPTextModel", "__call__", "last_hidden_state", _text),
        "vae.encode": ("vae", "AutoencoderKL", "encode", "latent_dist.mean", _images),
        "vae.decode": ("vae", "AutoencoderKL", "decode", "sample", _latents_2d),
        "unet": ("unet", "UNetMotionModel", "__call__", "sample", _unet_motion),
    },
    # text_encoder (both) and the 14B transformer are streamed (build.STREAMED); the 14B pipeline's VAE and text
    # encoder have the 1.3B's configs (identical files), so they are compared once, under wan2.1-t2v-1.3b
    "wan2.1-t2v-1.3b": {
        "text_encoder": ("text_encoder", "UMT5EncoderModel", "__call__", "last_hidden_state", _wan_text),
        "vae.encode": ("vae", "AutoencoderKLWan", "encode", "latent_dist.mean", _wan_video),
        "vae.decode": ("vae", "AutoencoderKLWan", "decode", "sample", _wan_latents),
        "transformer": ("transformer", "WanTransformer3DModel", "__call__", "sample", _wan_transformer),
    },
    "wan2.1-i2v-14b-480p": {
        "image_encoder": ("image_encoder", "CLIPVisionModel", "__call__", "last_hidden_state", _pixels_1),
        "transformer": ("transformer", "WanTransformer3DModel", "__call__", "sample", _wan_transformer),
    },
}


def component_names(name: str) -> list[str]:
    return list(COMPONENTS[check_name(name)])


def is_streamed(name: str, component: str) -> bool:
    return COMPONENTS[check_name(name)][component][0] in STREAMED.get(name, ())


def run_streamed_component(name: str, component: str, dtypes=("fp32",), seed: int = 0, floor: bool = True,
                           log=print) -> dict[str, dict]:
    """A streamed component (build.STREAMED) of a released config: its bf16 checkpoint (written if absent), then
    `streamed.run_streamed` on the same seeded inputs a whole comparison would take. One row per dtype."""
    folder, class_name, method, field, make_inputs = COMPONENTS[check_name(name)][component]
    s = SETTINGS[name]
    t0 = time.perf_counter()
    ckpt = streamed_checkpoint(name, folder, seed, log=log)
    write_s = time.perf_counter() - t0
    inputs = make_inputs(np.random.Generator(np.random.PCG64(seed)), s, None, read_config(name, folder))
    rows = run_streamed(ckpt, component, inputs, field, dtypes, floor=floor, store_dir=ckpt.parent, log=log)
    for r in rows.values():
        r["timings"]["checkpoint_write_s"] = round(write_s, 1)
        r["settings"] = s
    return rows


def run_streamed_child(name, component, dtypes, seed=0, floor=True) -> dict:
    return run_streamed_component(name, component, tuple(dtypes), seed, floor)


def merge_rows(name: str, component: str, outs: dict, seed: int = 0, floor: bool = True, log=print) -> bool:
    """Run a streamed component in a child process (all dtypes against one reference pass) and put its row into
    each dtype's OUT/components.json and .md (replacing an earlier row of that component, keeping the others)."""
    from ..harness import versions

    dtypes = list(outs)
    first = Path(outs[dtypes[0]])
    first.mkdir(parents=True, exist_ok=True)
    result = first / f".{component}.streamed.json"
    log(f"comparing {name} {component} streamed ({', '.join(dtypes)}) in a child process")
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "parity.full", "_streamed", name, component, "--seed", str(seed),
           "--json", str(result)] + [x for d in dtypes for x in ("--dtype", d)] + ([] if floor else ["--no-floor"])
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)  # its progress lines go to our stdout
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        rows = {d: {"component": component, "passed": False, "error": f"exit {proc.returncode}: {tail[0]}"} for d in dtypes}
    else:
        rows = json.loads(result.read_text())
        result.unlink()
    ok = True
    for d in dtypes:
        out = Path(outs[d])
        out.mkdir(parents=True, exist_ok=True)
        row = dict(rows[d], wall_s=wall)
        log(f"  {_summary_line(row)}")
        previous = out / "components.json"
        kept = {r["component"]: r for r in json.loads(previous.read_text())["components"]} if previous.exists() else {}
        kept[component] = row
        ordered = [kept[c] for c in component_names(name) if c in kept]
        report = {"name": name, "dtype": d, "seed": seed, "bars": BARS[d], "settings": SETTINGS[name],
                  "reference": "PyTorch fp32 (diffusers / transformers)", "passed": all(r["passed"] for r in ordered),
                  "components": ordered, "versions": versions(), "git": _git_state()}
        report["passed_bars"] = bar_verdict_all(report)
        previous.write_text(json.dumps(report, indent=1, default=float))
        (out / "components.md").write_text(components_markdown(report))
        ok &= row["passed"]
    return ok


# -- one component -----------------------------------------------------------------------------------------------
def _field(out, path: str):
    for part in path.split("."):
        out = getattr(out, part)
    return out


def _torch_model(root: Path, folder: str, class_name: str):
    import diffusers
    import torch
    import transformers

    lib = diffusers if hasattr(diffusers, class_name) and not class_name.startswith("CLIP") else transformers
    return getattr(lib, class_name).from_pretrained(str(root / folder), torch_dtype=torch.float32).eval()


def run_component(name: str, component: str, dtype: str = "fp32", seed: int = 0, settings: dict | None = None
                  ) -> dict:
    """Compare one component at full size; returns its result row (see `components_markdown`). For fp32 the PyTorch
    model is then cast to float64 in place and run again: each module's float64-vs-float32 difference is its
    rounding floor, against which fp32 modules are judged (parity.compare.bound_for; fp16 has its fixed bar)."""
    import torch

    from mindport.models import model_class

    from ..adapter import quiet_reference_libraries

    if dtype not in BARS:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {', '.join(BARS)}")
    if component not in COMPONENTS[check_name(name)]:
        raise ValueError(f"{name} has no component {component!r}; expected one of {', '.join(component_names(name))}")
    quiet_reference_libraries()
    folder, class_name, method, field, make_inputs = COMPONENTS[name][component]
    model_class(class_name)  # import our side now, before the long reference phase (the tree may change meanwhile)
    s = {**SETTINGS[name], **(settings or {})}
    root = build(name, seed)
    cfg = read_config(name, folder)
    inputs = make_inputs(np.random.Generator(np.random.PCG64(seed)), s, root, cfg)
    mem = PeakMemory()
    timings = {}
    store = ActivationStore()

    def run_torch(model, capture, precision):
        capture.attach_torch(component, model)
        with torch.no_grad():
            args = {k: torch.from_numpy(v.astype(np.float64) if precision == torch.float64 and v.dtype == np.float32
                                        else v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
            out = _field((model if method == "__call__" else getattr(model, method))(**args), field)
        capture.detach()
        return out.float().numpy()

    # 1. PyTorch fp32, every module's output to the store; 2. (floor) the same model cast to float64 in place
    t0 = time.perf_counter()
    model = _torch_model(root, folder, class_name)
    n_params = sum(p.numel() for p in model.parameters())
    timings["torch_load_s"] = time.perf_counter() - t0
    ref = Capture("torch", store=store)
    t0 = time.perf_counter()
    ref_out = run_torch(model, ref, torch.float32)
    timings["torch_forward_s"] = time.perf_counter() - t0
    floor_cap = None
    if dtype == "fp32":
        t0 = time.perf_counter()
        floor_cap = Capture("torch", reference=ref)
        run_torch(model.double(), floor_cap, torch.float64)
        timings["torch_float64_floor_s"] = time.perf_counter() - t0
    # the reference's largest activation: what fp16 has to hold
    ref_peak = max(((float(np.abs(store.get(k)).max()), f"{k[0]}.{k[1]}" if k[1] else k[0]) for k in ref.records
                    if np.prod(ref.records[k]["shape"]) > 0), default=(0.0, ""))
    del model
    gc.collect()

    # 3. MindSpore in `dtype`, loaded through our converter from the PyTorch folder, compared on the fly
    t0 = time.perf_counter()
    ours_model = model_class(class_name).from_pretrained(str(root), subfolder=folder, mindspore_dtype=dtype)
    timings["mindspore_load_s"] = time.perf_counter() - t0
    ours = Capture("mindspore", reference=ref)
    ours.attach_mindspore(component, ours_model)
    t0 = time.perf_counter()
    fn = ours_model if method == "__call__" else getattr(ours_model, method)
    if class_name in TENSOR_INPUTS:
        import mindspore as ms

        our_out = _field(fn(**{k: ms.Tensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}), field)
    else:
        our_out = _field(fn(**inputs), field)
    our_out = our_out.astype("float32").asnumpy() if not isinstance(our_out, np.ndarray) else our_out.astype("float32")
    timings["mindspore_forward_s"] = time.perf_counter() - t0
    ours.detach()
    del ours_model, fn
    gc.collect()
    memory = mem.stop()
    memory["activation_store_mb"] = round(store.nbytes / 2**20, 1)
    store.close()

    # 4. judge every module and the output
    row = judge_component(component, class_name, n_params, dtype, inputs, ref, ours, floor_cap, ref_out, our_out,
                          ref_peak)
    row.pop("layers")
    return {**row, "timings": {k: round(v, 2) for k, v in timings.items()}, "memory": memory, "settings": s}


# -- all components of a config, each in its own process ----------------------------------------------------------
def run_components(name: str, out, dtype: str = "fp32", seed: int = 0, only: list[str] | None = None,
                   log=print) -> dict:
    """Build (cached), then compare each component in a child process; writes OUT/components.json and .md (with
    `only`, the other components' rows of an existing OUT/components.json are kept)."""
    from ..harness import versions

    check_name(name)
    if dtype not in BARS:
        raise ValueError(f"--dtype {dtype!r} is not supported; expected one of {', '.join(BARS)}")
    names = only or component_names(name)
    for c in names:
        if c not in COMPONENTS[name]:
            raise ValueError(f"{name} has no component {c!r}; expected one of {', '.join(component_names(name))}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"building {name} (cached after the first time)")
    build(name, seed, log=log)
    rows = []
    for c in names:
        log(f"comparing {name} {c} ({dtype}) in a child process")
        t0 = time.perf_counter()
        result = out / f".{c}.json"
        proc = subprocess.run([sys.executable, "-m", "parity.full", "_component", name, c, "--dtype", dtype,
                               "--seed", str(seed), "--json", str(result)], capture_output=True, text=True)
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            rows.append({"component": c, "passed": False, "error": f"exit {proc.returncode}: {tail[0]}"})
        else:
            rows.append(json.loads(result.read_text()))
            result.unlink()
        rows[-1]["wall_s"] = round(time.perf_counter() - t0, 1)
        log(f"  {_summary_line(rows[-1])}")
    previous = out / "components.json"
    if only and previous.exists():  # a partial re-run replaces its components' rows in the existing report
        kept = {r["component"]: r for r in json.loads(previous.read_text())["components"]}
        kept.update({r["component"]: r for r in rows})
        rows = [kept[c] for c in component_names(name) if c in kept]
    report = {"name": name, "dtype": dtype, "seed": seed, "bars": BARS[dtype], "settings": SETTINGS[name],
              "reference": "PyTorch fp32 (diffusers / transformers)", "passed": all(r["passed"] for r in rows),
              "components": rows, "versions": versions(), "git": _git_state()}
    report["passed_bars"] = bar_verdict_all(report)
    (out / "components.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "components.md").write_text(components_markdown(report))
    return report


def bar_verdict(row: dict, bars: dict) -> bool:
    """The fixed design bars (docs: fp32 modules <= 1e-5, outputs <= 1e-4; fp16 5e-2 / 1e-2), beside the stricter
    floor-based verdict: a module whose reference computes in float32 even in the float64 pass (diffusers' sinusoidal
    `time_proj`) has floor 0, so a 1-ulp difference there fails max(10 x floor, 1e-6) but not the bar."""
    if "error" in row:
        return False
    worst = row["worst_module"]["rel_l2"] if row["worst_module"] else 0.0
    return bool(row["output"]["finite"] and not row["nonfinite_count"] and worst <= bars["module"]
                and row["output"]["rel_l2"] <= bars["frames"])


def _git_state() -> str:
    """HEAD and whether the working tree differed (other work lands concurrently; the report names what it ran)."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return f"{head}{' + uncommitted changes' if git('status', '--porcelain', '--untracked-files=no') else ''}" or "unknown"


def _summary_line(r: dict) -> str:
    if "error" in r:
        return f"{r['component']}: ERROR {r['error']}"
    w = r["worst_module"] or {}
    return (f"{r['component']}: {r['modules_compared']} modules, worst {w.get('module')} {w.get('rel_l2', 0):.2e}, "
            f"output rel L2 {r['output']['rel_l2']:.2e}, {r['wall_s']} s, "
            f"peak RssAnon {(r['memory']['peak_anon_mb'] + r['memory']['baseline_anon_mb']) / 1024:.1f} GB, "
            f"{'ok' if r['passed'] else 'beyond a floor bound'}")


def bar_verdict_all(report: dict) -> bool:
    return all(bar_verdict(r, report["bars"]) for r in report["components"])


def components_markdown(report: dict) -> str:
    lines = [f"# Full-size component parity: {report['name']} ({report['dtype']})", "",
             f"Released config `{report['name']}`, random weights (seed {report['seed']}), reference "
             f"{report['reference']}. Bars (relative L2): modules <= {report['bars']['module']}, component output "
             f"<= {report['bars']['frames']}. Settings: {report['settings']}. Code: {report.get('git', 'unknown')}.", "",
             f"**{'PASSED' if report['passed'] else 'FAILED'}** against each module's noise-floor bound; "
             f"**{'PASSED' if bar_verdict_all(report) else 'FAILED'}** against the fixed bars.", "",
             "| component | class | parameters | modules | beyond floor bound | worst module (rel L2) | output rel L2 | "
             "max abs | non-finite | ref max abs | time s | peak RssAnon GB | VmHWM GB | floor bound | bars |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["components"]:
        if "error" in r:
            lines.append(f"| {r['component']} | | | | | {r['error']} | | | | | {r.get('wall_s', '')} | | | no | no |")
            continue
        w, o, m = r["worst_module"] or {}, r["output"], r["memory"]
        lines.append(
            f"| {r['component']} | {r['class']} | {r['parameters'] / 1e6:.0f} M | {r['modules_compared']} | "
            f"{r['modules_failed']} | `{w.get('module')}` ({w.get('rel_l2', 0):.1e}) | {o['rel_l2']:.2e} | "
            f"{o['max_abs']:.1e} | {r['nonfinite_count']} | {r['reference_absmax']['value']:.1e} | {r['wall_s']} | "
            f"{(m['peak_anon_mb'] + m['baseline_anon_mb']) / 1024:.1f} | {m['peak_rss_mb'] / 1024:.1f} | "
            f"{'yes' if r['passed'] else 'no'} | {'yes' if bar_verdict(r, report['bars']) else 'no'} |")
    for r in report["components"]:
        if "error" in r:
            continue
        lines += ["", f"## {r['component']}", "",
                  f"Inputs: {r['inputs']}. Timings: {r['timings']}. First divergence: {r['first_divergence']}.", "",
                  "| module | shape | rel L2 | max abs |", "|---|---|---|---|"]
        lines += [f"| `{w['module']}` | {w['shape']} | {w['rel_l2']:.2e} | {w['max_abs']:.2e} |" for w in r["worst_modules"]]
        if r.get("failed_modules"):
            lines += ["", "Modules beyond their bound (fp32: max(10 x float64 noise floor, 1e-6); fp16: the bar):", ""]
            lines += [f"- `{f['module']}`: rel L2 {f['rel_l2']:.2e}, floor {f['floor'] or 0:.1e}, bound {f['bound']:.1e}"
                      for f in r["failed_modules"]]
        if r["nonfinite_count"]:
            lines += ["", f"Non-finite outputs in {r['nonfinite_count']} module calls, first: {r['nonfinite_modules'][:5]}"]
        acc = r.get("coverage", {}).get("reference_only_accepted")
        if acc:
            lines += ["", f"Reference modules our side computes inside their (compared) parent, not as module calls "
                          f"({len(acc)}): " + ", ".join(f"`{m}`" for m in acc[:12]) + (" ..." if len(acc) > 12 else "")]
        if "streamed" in r:
            st, m = r["streamed"], r["memory"]
            lines += ["", f"**Streamed** ({st['blocks']} blocks, one at a time; blocks fed the reference's inputs: "
                          f"{st['feed'] == 'reference'}; float64 floor: {st['floor']}) from a {st['checkpoint_gb']} GB "
                          f"{'/'.join(st['checkpoint_dtypes'])} checkpoint, memory-mapped"
                          + (f"; embedding rows read: {st['embedding_rows']}" if st.get("embedding_rows") else "")
                          + f". Peak RssAnon {(m['peak_anon_mb'] + m['baseline_anon_mb']) / 1024:.2f} GB "
                          f"(per phase above the start, MB: {m.get('phase_peak_anon_mb')}); converter audit passed on "
                          f"every block: {r.get('converter_audit_passed')}.", "",
                      "| block | modules | worst module | rel L2 | passed | torch s | float64 s | MindSpore s |",
                      "|---|---|---|---|---|---|---|---|"]
            times = {b["block"]: b for b in st["block_times_s"]}
            for b in r.get("per_block", []):
                t = times.get(b["block"], {})
                ms_t = next((v for k, v in t.items() if k.startswith(f"mindspore_{r['dtype']}")), "")
                lines.append(f"| {b['block']} | {b['modules']} | `{b['worst_module']}` | {b['worst_rel_l2']:.2e} | "
                             f"{'yes' if b['passed'] else 'no'} | {t.get('torch_s', '')} | {t.get('torch_float64_s', '')} "
                             f"| {ms_t} |")
    return "\n".join(lines) + "\n"


def stream_folder(folder, out, dtypes=("fp32",), feed: str = "reference", floor: bool = True, seed: int = 0,
                  settings: dict | None = None, log=print) -> int:
    """`python -m parity.full stream FOLDER --out DIR`: a checkpoint folder (e.g. a released Wan 14B transformer or
    UMT5-XXL text encoder) compared streamed on seeded inputs built from its config, as the released-config
    comparisons build them (Wan: batch 1, 512 text tokens, + 257 image tokens for I2V; UMT5: 24 ids over the whole
    vocabulary padded to 512). Writes DIR/streamed.json and DIR/streamed.md; 0 when every dtype passes, else 1."""
    from ..harness import versions

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise ValueError(f"{folder}: no config.json; expected a component folder (config.json + safetensors)")
    cfg = json.loads((folder / "config.json").read_text())
    class_name = cfg.get("_class_name") or (cfg.get("architectures") or [None])[0]
    spec_for(class_name)
    s = {"height": 64, "width": 112, "frames": 5, **(settings or {})}
    rng = np.random.Generator(np.random.PCG64(seed))
    if class_name == "WanTransformer3DModel":
        inputs, field, component = _wan_transformer(rng, s, None, cfg), "sample", "transformer"
    else:
        inputs, field, component = _wan_text(rng, s, None, cfg), "last_hidden_state", "text_encoder"
    t0 = time.perf_counter()
    rows = run_streamed(folder, component, inputs, field, tuple(dtypes), floor=floor, feed=feed, log=log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for d, r in rows.items():
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        r["settings"] = s
        reports[d] = {"name": str(folder), "dtype": d, "seed": seed, "bars": BARS[d], "settings": s,
                      "reference": "PyTorch fp32 (diffusers / transformers)", "passed": r["passed"], "components": [r],
                      "versions": versions(), "git": _git_state()}
        reports[d]["passed_bars"] = bar_verdict_all(reports[d])
    (out / "streamed.json").write_text(json.dumps(reports, indent=1, default=float))
    (out / "streamed.md").write_text("\n".join(components_markdown(rep) for rep in reports.values()))
    ok = all(r["passed"] for r in rows.values())
    log(f"{folder}: {'PASSED' if ok else 'FAILED'}; report {out / 'streamed.md'}")
    return 0 if ok else 1
