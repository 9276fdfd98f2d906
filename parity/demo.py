"""`mindport demo` / `make demo`: the whole job on built-in tiny checkpoints of every registered pipeline: build, convert,
parity (fp32 and fp16 against PyTorch fp32), generate a video; then print where everything is."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from converters.registry import PIPELINES

# every registered pipeline on its first fixture preset: (preset, output folder name, pipeline label)
DEMOS = [(row.fixtures[0], row.fixtures[0].removesuffix("-tiny"), row.label) for row in PIPELINES]


def run_demo(out: Path) -> bool:
    from mindport import backend
    from mindport.loading import convert_checkpoint
    from mindport.utils import export_to_gif, export_to_video

    from .adapter import adapter_for
    from .fixtures import build
    from .harness import run_parity

    backend.init_context()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    results = []
    for i, (preset, name, label) in enumerate(DEMOS, 1):
        say(f"[{i}/{len(DEMOS)}] {label}: building the tiny checkpoint (random weights, diffusers save_pretrained)")
        src = build(preset)
        converted = out / name / "converted"
        if converted.exists():
            shutil.rmtree(converted)
        say(f"    converting {src} -> {converted}")
        convert_checkpoint(src, converted)
        reports = {}
        for dtype in ("fp32", "fp16"):
            say(f"    parity {dtype}")
            reports[dtype] = run_parity(src, out / name / f"parity-{dtype}", converted=converted, dtype=dtype, log=say)
        say("    generating a video with the MindSpore pipeline")
        adapter = adapter_for(reports["fp32"]["settings"]["pipeline"])
        settings = {**reports["fp32"]["settings"], "seed": 42}
        frames = adapter.run_ours(adapter.load_ours(converted, "fp32"), adapter.call_kwargs(settings))[0]
        video = export_to_video(list(frames), str(out / name / "generated.mp4"), fps=7)
        export_to_gif(list(frames), str(out / name / "generated.gif"), fps=7)
        results.append((label, out / name, reports, video))
    print("\nmindport demo results")
    ok = True
    for label, folder, reports, video in results:
        print(f"  {label}")
        print(f"    converted checkpoint : {folder / 'converted'}  (manifest.json inside)")
        for dtype, r in reports.items():
            f = r["frames"]
            ok = ok and r["passed"]
            print(f"    parity {dtype}          : {'PASSED' if r['passed'] else 'FAILED'}  frames rel L2 "
                  f"{f['rel_l2']:.2e}, {r['coverage']['compared_modules']} modules; "
                  f"report {folder / f'parity-{dtype}' / 'report.html'} (and report.md)")
        print(f"    generated video      : {video}  (and generated.gif)")
    return ok
