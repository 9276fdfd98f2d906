"""The `mindport` command. Thin: parses arguments, calls library functions, maps outcomes to exit codes
(0 success / parity holds, 1 parity does not hold, 2 bad input or usage) and prints one line per error."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

EXIT_OK, EXIT_PARITY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with one line, like bad input
        self.print_usage(sys.stderr)
        print(f"mindport: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _quiet_frameworks() -> None:
    os.environ.setdefault("GLOG_v", "3")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def cmd_convert(a) -> int:
    from mindport.loading import convert_checkpoint

    kwargs = dict(variant=a.variant, dtype=a.dtype, overwrite=a.overwrite, config_dir=a.config, keep_fp32=a.keep_fp32,
                  motion_adapter=a.motion_adapter)
    if a.lora:
        from mindport.lora import convert_with_lora, parse_lora_spec

        manifest = convert_with_lora(a.src, a.dst, [parse_lora_spec(s) for s in a.lora], **kwargs)
    else:
        manifest = convert_checkpoint(a.src, a.dst, **kwargs)
    n = sum(c.get("audit", {}).get("parameters", 0) for c in manifest["components"].values())
    comps = ", ".join(f"{k} ({v['class_name']})" for k, v in manifest["components"].items())
    dropped = sum(len(d["keys"]) for d in manifest.get("dropped", {}).values())
    print(f"converted {a.src} -> {a.dst}: {comps}; {n} parameter tensors, audit passed"
          f"{f'; {dropped} unused key(s) dropped by explicit rows' if dropped else ''}; manifest: {Path(a.dst) / 'manifest.json'}")
    for rec in manifest.get("lora", []):
        print(f"fused LoRA {rec['file']} (scale {rec['scale']:g}, {'/'.join(rec['layouts'])}): "
              f"{len(rec['touched'])} weights")
    if a.dtype == "bf16":
        print("note: bf16 is stored for Ascend; MindSpore cannot run bf16 on CPU: load it there with "
              "mindspore_dtype=ms.float32 (exact) or ms.float16")
    return EXIT_OK


def cmd_convert_lora(a) -> int:
    from mindport.lora import CONVERTED_LORA, convert_lora_file

    info = convert_lora_file(a.file, a.out, a.pipeline, overwrite=a.overwrite)
    ranks = sorted({m["rank"] for m in info["modules"].values()})
    print(f"converted LoRA {a.file} ({'/'.join(info['source_layouts'])}) -> {Path(a.out) / CONVERTED_LORA}: "
          f"{len(info['modules'])} modules, ranks {ranks}; load it with pipe.load_lora_weights({str(a.out)!r})")
    return EXIT_OK


def cmd_export(a) -> int:
    from converters.export import export

    manifest = export(a.src, a.out, fmt=a.format, dtype=a.dtype, overwrite=a.overwrite)
    comps = manifest["components"]
    n = sum(c.get("audit", {}).get("tensors_written", 0) for c in comps.values())
    files = sorted({f for c in comps.values() for f in c.get("files", []) if f.endswith(".safetensors")})
    lost = sum(len(v["keys"]) for v in manifest.get("not_restored", {}).values())
    names = ", ".join(f"{k} ({v['class_name']})" for k, v in comps.items())
    print(f"exported {a.src} -> {a.out} ({a.format}): {names}; "
          f"{n} tensors in {', '.join(files)}, audit passed"
          f"{f'; {lost} key(s) the conversion dropped are not restored (see the manifest)' if lost else ''}; "
          f"manifest: {Path(a.out) / 'mindport_export.json'}")
    return EXIT_OK


def cmd_parity(a) -> int:
    from mindport.lora import parse_lora_spec
    from parity.harness import run_parity
    from parity.report_format import divergence_summary

    if a.golden_inputs and a.save_golden is None:
        raise ValueError("--golden-inputs names what --save-golden saves: give --save-golden G too")
    if a.golden is not None:
        if a.config_only is not None or a.save_golden is not None:
            raise ValueError("--golden compares against a saved reference: it excludes --config-only and --save-golden")
    elif (a.src is None) == (a.config_only is None):
        raise ValueError("give either SRC (a PyTorch diffusers folder or Hub id) or --config-only NAME, not both")
    src, run = a.src, {}
    if a.config_only is not None:
        from parity.full import NAMES, prepare

        if a.config_only not in NAMES:
            raise ValueError(f"--config-only {a.config_only!r} is not a released config; expected one of {', '.join(NAMES)}")
        src, run = prepare(a.config_only, a.seed if a.seed is not None else 0)
    flags = {k: getattr(a, k) for k in ("frames", "height", "width", "decode_chunk_size") if getattr(a, k) is not None}
    report = run_parity(src, a.out, converted=a.converted, dtype=a.dtype, seed=a.seed,
                        **{"steps": a.steps if a.steps is not None or a.golden else run.get("steps", 3),
                           **{k: v for k, v in run.items() if k not in ("steps", "seed")}, **flags},
                        baseline=a.baseline, floor=not a.no_floor, isolate=not a.no_isolation,
                        weight_samples=a.weight_samples, weight_tensors=a.weight_tensor or (),
                        loras=[parse_lora_spec(s) for s in a.lora or ()], save_golden=a.save_golden, golden=a.golden,
                        golden_inputs=tuple(a.golden_inputs or ()), free_noise=_free_noise(a),
                        log=lambda m: print(m, file=sys.stderr))
    f = report["frames"]
    where = divergence_summary(report["first_divergence"])
    print(f"parity {'PASSED' if report['passed'] else 'FAILED'}: frames rel L2 {f['rel_l2']:.3e}, PSNR {f['psnr']:.1f} dB; "
          f"{report['coverage']['compared_modules']} modules compared; first divergence: {where}")
    iso = report.get("isolation") or {}
    if iso.get("first"):
        b = iso["first"]
        print(f"isolation: {b['component']}.{b['module']} introduces rel L2 {b['introduced_rel_l2']:.3e} "
              f"(bound {b['bound']:.1e}) on the reference's own inputs")
    for m in (report.get("weight_check") or {}).get("mismatches", []):
        print(f"weight mapping: {m['component']}.{m['tensor']} acts first in {m['expected_module']} in PyTorch, "
              f"in {m['first_moved']} in MindSpore (parameter {m['mindspore_parameter']})")
    if report.get("baseline"):
        for r in report["baseline"]["regressions"][:10]:
            print(f"regression: {r['component']}.{r['module']} rel L2 {r['rel_l2']} > allowed {r['allowed']:.2e} "
                  f"(baseline {r['baseline_rel_l2']:.2e})")
    for p in report["problems"]:
        print(f"problem: {p}")
    g = report.get("golden") or {}
    if g.get("bytes") is not None:
        print(f"golden reference: {g['path']} ({g['bytes'] / 2**20:.1f} MiB, {100 * g['fraction']:.1f}% of the "
              f"full capture's {g['full_capture_bytes'] / 2**20:.1f} MiB)")
    rp = report.get("repro")
    if rp:
        print(f"repro: {rp['module']} alone with its inputs and weights in {rp['path']} ({rp['bytes'] / 1024:.0f} KiB; "
              f"python {rp['path']}/run.py)")
    if a.junit_xml:
        from parity.junit import write_junit

        print(f"junit: {write_junit(report, a.junit_xml)}")
    print(f"report: {Path(a.out) / 'report.md'} and {Path(a.out) / 'report.html'}")
    return EXIT_OK if report["passed"] else EXIT_PARITY_FAILED


# `mindport generate` flag -> the pipeline __call__ argument it sets (passed only where the pipeline takes it)
GENERATE_ARGUMENTS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "image": "image", "frames": "num_frames",
                      "steps": "num_inference_steps", "height": "height", "width": "width",
                      "guidance_scale": "guidance_scale", "min_guidance_scale": "min_guidance_scale",
                      "max_guidance_scale": "max_guidance_scale", "fps": "fps", "motion_bucket_id": "motion_bucket_id",
                      "noise_aug_strength": "noise_aug_strength", "decode_chunk_size": "decode_chunk_size",
                      "video": "video", "strength": "strength"}
POSITIVE = ("frames", "steps", "height", "width", "decode_chunk_size", "fps")
DEFAULT_FPS = 8
# FreeNoise's flags -> enable_free_noise's arguments (checked there, with the motion modules' limit)
FREE_NOISE_FLAGS = ("context_length", "context_stride", "weighting_scheme", "noise_type")


def _free_noise(a) -> dict | None:
    """enable_free_noise's arguments from --free-noise and its flags (None without --free-noise; its flags alone are
    refused)."""
    given = {k: getattr(a, k) for k in FREE_NOISE_FLAGS if getattr(a, k) is not None}
    if not a.free_noise:
        if given:
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)} set up FreeNoise: give "
                             "--free-noise too")
        return None
    return {"context_length": None, **given}


def _add_free_noise_flags(p) -> None:
    p.add_argument("--free-noise", action="store_true",
                   help="AnimateDiff: FreeNoise, more frames than the motion modules hold (enable_free_noise)")
    p.add_argument("--context-length", type=int,
                   help="FreeNoise window, in frames (default: the motion modules' motion_max_seq_length)")
    p.add_argument("--context-stride", type=int, help="FreeNoise: frames between windows (default 4)")
    p.add_argument("--weighting-scheme", help="FreeNoise blend: flat, pyramid (default), delayed_reverse_sawtooth")
    p.add_argument("--noise-type", help="FreeNoise noise: shuffle_context (default), repeat_context, random")


def _generate_pipeline(a, root: Path):
    """The registered pipeline class for the folder: its model_index.json `_class_name`, or with --motion-adapter
    the pipeline that loads such a base folder (AnimateDiff on an SD 1.5 base)."""
    from converters import registry
    from converters.sources import read_json
    from mindport.pipelines import pipeline_class

    name = read_json(root / "model_index.json").get("_class_name")
    if a.motion_adapter is None:
        return pipeline_class(name), {}
    rows = [r for r in registry.PIPELINES if "motion_adapter" in r.components and
            (name == r.name or name in r.loads_from)]
    if not rows:
        raise ValueError(f"--motion-adapter needs an SD 1.5 base or AnimateDiff folder; {root} holds a {name}")
    return pipeline_class(rows[0].name), {"motion_adapter": a.motion_adapter}


def _write_frames(frames, out: Path, fps: int) -> str:
    """(F, H, W, 3) in [0, 1] -> a .gif, an .mp4, or (no suffix) a folder of frame_000.png ..."""
    from mindport.image_processing import numpy_to_pil
    from mindport.utils import export_to_gif, export_to_video

    if out.suffix == "":
        out.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(numpy_to_pil(frames)):
            im.save(out / f"frame_{i:03d}.png")
        return f"{out}/frame_000.png .. frame_{len(frames) - 1:03d}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".gif":
        return export_to_gif(list(frames), str(out), fps=fps)
    return export_to_video(list(frames), str(out), fps=fps)


def cmd_generate(a) -> int:
    """Any registered pipeline (model_index.json's _class_name), called with the flags its __call__ takes. Every
    flag is checked before a model is loaded; nothing is written unless the video was generated."""
    import inspect

    import mindspore as ms
    import numpy as np

    from converters.sources import resolve
    from mindport import backend
    from mindport.models import model_class
    from mindport.utils import load_image, load_video

    for flag in POSITIVE:
        value = getattr(a, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {value}: expected a positive integer")
    out = Path(a.out)
    if out.suffix not in ("", ".gif", ".mp4"):
        raise ValueError(f"--out {out}: expected a .gif, an .mp4, or a folder (no suffix) for PNG frames")
    free_noise = _free_noise(a)
    root = Path(resolve(a.src, a.variant))
    cls, extra = _generate_pipeline(a, root)
    name = cls.__name__
    if free_noise is not None and not hasattr(cls, "enable_free_noise"):
        raise ValueError(f"{name} does not take --free-noise (FreeNoise is for AnimateDiff pipelines)")
    takes = inspect.signature(cls.__call__).parameters
    given = {flag: getattr(a, flag) for flag in GENERATE_ARGUMENTS if getattr(a, flag) is not None}
    unused = sorted(f"--{flag.replace('_', '-')}" for flag in given
                    if GENERATE_ARGUMENTS[flag] not in takes and flag != "fps")
    if unused:
        raise ValueError(f"{name} does not take {', '.join(unused)}")
    if "video" in given:
        given["video"] = load_video(given["video"])
    if "image" in given:
        given["image"] = load_image(given["image"])
        for flag, size in (("height", given["image"].height), ("width", given["image"].width)):
            if flag not in given and flag in takes:  # the image's size (rounded down to 16) unless given
                given[flag] = max(16, size // 16 * 16)
    elif "image" in takes and "prompt" not in takes:
        raise ValueError(f"{name} generates from an image: give --image PATH_OR_URL")
    if "prompt" in takes and "prompt" not in given and "image" not in takes:
        raise ValueError(f"{name} generates from text: give --prompt TEXT")
    video_fps = given.get("fps") or DEFAULT_FPS  # the file's frame rate; SVD also conditions on it
    if "fps" not in takes:
        given.pop("fps", None)

    backend.init_context()
    dtype = backend.resolve_dtype(a.dtype)
    if extra.get("motion_adapter"):
        extra["motion_adapter"] = model_class("MotionAdapter").from_pretrained(extra["motion_adapter"],
                                                                                mindspore_dtype=dtype)
    pipe = cls.from_pretrained(root, mindspore_dtype=dtype, variant=a.variant, **extra)
    if free_noise is not None:
        pipe.enable_free_noise(**free_noise)
    kwargs = {GENERATE_ARGUMENTS[flag]: value for flag, value in given.items()}
    result = pipe(**kwargs, output_type="np", generator=np.random.Generator(np.random.PCG64(a.seed)))
    video = np.asarray(result[0])
    frames = video[0] if video.ndim == 5 else video  # (B, F, H, W, 3) or one video's (F, H, W, 3)
    written = _write_frames(frames, out, video_fps)
    print(f"generated {len(frames)} frames at {frames.shape[2]}x{frames.shape[1]} with {name} "
          f"(MindSpore {ms.__version__}): {written}")
    return EXIT_OK


def cmd_inspect(a) -> int:
    from mindport.describe import describe

    info = describe(a.path)
    print(json.dumps(info, indent=2) if a.json else info["text"])
    return EXIT_OK


def cmd_demo(a) -> int:
    from parity.demo import run_demo

    return EXIT_OK if run_demo(Path(a.out)) else EXIT_PARITY_FAILED


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mindport", description="PyTorch diffusers video checkpoints on MindSpore, with proof of parity.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("convert", help="convert a PyTorch checkpoint (diffusers folder, Hub id or single file) to MindSpore")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--variant", help="weights variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)")
    c.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="store weights in this dtype (default: as the source)")
    c.add_argument("--keep-fp32", choices=["auto", "norms", "none"], default="auto",
                   help="with --dtype fp16/bf16: keep GroupNorm/LayerNorm parameters and blend factors in float32 "
                        "(auto: for bf16 only; norms: for fp16 and bf16; none: never)")
    c.add_argument("--config", help="single-file SD 1.5 / SVD checkpoint: take configs, scheduler and tokenizer from this "
                                    "diffusers pipeline folder (default: built-in SD 1.5 / SVD-xt configs)")
    c.add_argument("--motion-adapter", help="SD 1.5 single file: add this MotionAdapter (folder or motion-module file), "
                                            "making an AnimateDiff pipeline folder")
    c.add_argument("--lora", action="append", metavar="FILE[:SCALE]",
                   help="fuse this LoRA into the unet / text_encoder weights (repeatable; scale default 1.0, times the "
                        "file's alpha / rank); the manifest records file, sha256, scale and the weights touched")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.set_defaults(fn=cmd_convert)

    cl = sub.add_parser("convert-lora", help="write a LoRA file in mindport's module naming (safetensors + JSON: "
                                             "layouts, ranks, alphas, source sha256), for load_lora_weights")
    cl.add_argument("file", help="the LoRA: peft/diffusers, kohya/A1111 or AnimateDiff motion LoRA")
    cl.add_argument("out", help="output folder (mindport_lora.safetensors, mindport_lora.json)")
    cl.add_argument("--pipeline", required=True,
                    help="a folder written by `mindport convert` whose unet / text_encoder the LoRA is for")
    cl.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    cl.set_defaults(fn=cmd_convert_lora)

    e = sub.add_parser("export", help="export a mindport folder (convert or save_pretrained output) to PyTorch: a "
                                      "diffusers folder or the original single-file layouts")
    e.add_argument("src", help="a folder written by `mindport convert` or mindport's save_pretrained")
    e.add_argument("out")
    e.add_argument("--format", default="diffusers", help="diffusers (default) or original (SD 1.5 LDM / SVD "
                                                          "generative-models file, AnimateDiff motion module, Wan-AI names)")
    e.add_argument("--dtype", help="store weights in this dtype: fp32, fp16 or bf16 (default: as stored)")
    e.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    e.set_defaults(fn=cmd_export)

    r = sub.add_parser("parity", help="compare MindSpore against PyTorch diffusers, module by module")
    r.add_argument("src", nargs="?", help="PyTorch diffusers pipeline folder or Hub id")
    r.add_argument("--config-only", metavar="NAME",
                   help="a released architecture with random weights instead of SRC (svd-xt, i2vgen-xl, animatediff-v1-5-2)")
    r.add_argument("--converted", help="a folder written by `mindport convert` (default: convert SRC into a temp folder)")
    r.add_argument("--steps", type=int, help="denoising steps (default 3; 2 for --config-only)")
    r.add_argument("--frames", type=int)
    r.add_argument("--height", type=int)
    r.add_argument("--width", type=int)
    r.add_argument("--decode-chunk-size", type=int, help="frames decoded at a time (default: all)")
    r.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="MindSpore dtype (reference: PyTorch fp32)")
    r.add_argument("--seed", type=int, help="the shared noise stream's seed (default 0)")
    r.add_argument("--save-golden", metavar="G", help="also save the PyTorch side as a golden reference folder G")
    r.add_argument("--golden", metavar="G", help="compare against the golden reference G instead of running PyTorch "
                                                "(torch and diffusers need not be installed; give --converted DST)")
    r.add_argument("--golden-inputs", action="append", metavar="PATTERN",
                   help="with --save-golden: also save the first-call inputs of the modules matching this glob "
                        "(e.g. 'transformer.blocks.1*'; repeatable), so --golden runs can teacher-force them")
    r.add_argument("--junit-xml", metavar="FILE", help="also write the verdicts as a JUnit XML file (CI)")
    r.add_argument("--out", required=True, help="report folder")
    r.add_argument("--baseline", help="a committed report.json: fail when a module's error grows beyond its recorded spread")
    r.add_argument("--weight-samples", type=int, default=12, help="source tensors perturbed by the weight-mapping check")
    r.add_argument("--weight-tensor", action="append", metavar="COMPONENT.PARAMETER",
                   help="also check this source tensor (repeatable), e.g. unet.conv_in.weight")
    r.add_argument("--no-floor", action="store_true", help="skip the PyTorch float64 noise floor (fixed bars instead)")
    r.add_argument("--no-isolation", action="store_true", help="skip teacher forcing of every module")
    r.add_argument("--lora", action="append", metavar="FILE[:SCALE]",
                   help="load this LoRA on both sides (repeatable): diffusers' load_lora_weights / set_adapters / "
                        "fuse_lora for the reference, `convert --lora` for ours")
    _add_free_noise_flags(r)
    r.set_defaults(fn=cmd_parity)

    g = sub.add_parser("generate", help="generate a video with the MindSpore pipeline a folder holds (any supported "
                                        "pipeline; flags it does not take are refused)")
    g.add_argument("src", help="pipeline folder (PyTorch diffusers or `mindport convert` output) or Hub id")
    g.add_argument("--prompt", help="text prompt (AnimateDiff, I2VGen-XL, Wan)")
    g.add_argument("--negative-prompt")
    g.add_argument("--image", help="conditioning image, path or URL (SVD, I2VGen-XL, Wan I2V)")
    g.add_argument("--out", default="generated.mp4", help=".mp4, .gif, or a folder (no suffix) of PNG frames")
    g.add_argument("--frames", type=int, help="default: the pipeline's")
    g.add_argument("--steps", type=int, help="default: the pipeline's")
    g.add_argument("--height", type=int, help="default: the image's, rounded down to 16; else the pipeline's")
    g.add_argument("--width", type=int, help="default: the image's, rounded down to 16; else the pipeline's")
    g.add_argument("--guidance-scale", type=float, help="default: the pipeline's")
    g.add_argument("--min-guidance-scale", type=float, help="SVD (default 1.0)")
    g.add_argument("--max-guidance-scale", type=float, help="SVD (default 3.0)")
    g.add_argument("--motion-bucket-id", type=int, help="SVD (default 127)")
    g.add_argument("--noise-aug-strength", type=float, help="SVD (default 0.02)")
    g.add_argument("--decode-chunk-size", type=int, help="frames decoded at a time (SVD, AnimateDiff, I2VGen-XL)")
    g.add_argument("--motion-adapter", help="AnimateDiff on an SD 1.5 base folder: this MotionAdapter folder or id")
    g.add_argument("--video", help="input video for video-to-video (AnimateDiff video-to-video): .gif, .mp4 or a "
                                   "folder of frames")
    g.add_argument("--strength", type=float, help="video-to-video: how much of the input is re-noised (default 0.8)")
    _add_free_noise_flags(g)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--fps", type=int, help=f"frame rate of the written video (default {DEFAULT_FPS}); SVD also "
                                            "conditions on it (its default 7)")
    g.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    g.add_argument("--variant")
    g.set_defaults(fn=cmd_generate)

    i = sub.add_parser("inspect", help="what a checkpoint folder or file holds")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)

    d = sub.add_parser("demo", help="build a tiny SVD checkpoint, convert it, run parity and generate a video")
    d.add_argument("--out", default="out/demo")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv=None) -> int:
    _quiet_frameworks()
    args = build_parser().parse_args(argv)
    from converters import ConversionError

    try:
        return args.fn(args)
    except (ConversionError, FileNotFoundError, ValueError) as e:
        print(f"mindport {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"mindport {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
