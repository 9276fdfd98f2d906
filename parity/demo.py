"""`mindport demo` / `make demo`: the whole job on a built-in tiny checkpoint: build, convert, parity, generate."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def run_demo(out: Path) -> bool:
    import numpy as np

    from mindport import backend
    from mindport.loading import convert_checkpoint
    from mindport.pipelines import StableVideoDiffusionPipeline
    from mindport.utils import export_to_gif, export_to_video

    from .fixtures import build, synthetic_image
    from .harness import run_parity

    backend.init_context()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    say("1/4 building the tiny Stable Video Diffusion checkpoint (random weights, diffusers save_pretrained)")
    src = build("svd-tiny")
    say(f"    {src}")
    say("2/4 converting it to MindSpore")
    converted = out / "svd-tiny-mindspore"
    if converted.exists():
        shutil.rmtree(converted)
    convert_checkpoint(src, converted)
    say("3/4 parity against PyTorch diffusers (fp32 and fp16)")
    reports = {}
    for dtype in ("fp32", "fp16"):
        reports[dtype] = run_parity(src, out / f"parity-{dtype}", converted=converted, dtype=dtype, log=say)
    say("4/4 generating a video with the MindSpore pipeline")
    pipe = StableVideoDiffusionPipeline.from_pretrained(str(converted))
    frames = pipe(synthetic_image(40, 32, seed=1), height=32, width=40, num_frames=3, num_inference_steps=3,
                  generator=np.random.Generator(np.random.PCG64(42)))[0]
    video = export_to_video(frames, str(out / "generated.mp4"), fps=7)
    gif = export_to_gif(frames, str(out / "generated.gif"), fps=7)
    print("\nmindport demo results")
    print(f"  converted checkpoint : {converted}  (manifest.json inside)")
    for dtype, r in reports.items():
        f = r["frames"]
        print(f"  parity {dtype}          : {'PASSED' if r['passed'] else 'FAILED'}  frames rel L2 {f['rel_l2']:.2e}, "
              f"{r['coverage']['compared_modules']} modules; report {out / f'parity-{dtype}' / 'report.md'}")
    print(f"  generated video      : {video}  (and {gif})")
    return all(r["passed"] for r in reports.values())
