"""`make reports`: regenerate the committed parity reports in reports/ and the summary table README shows.

    python -m parity.make_reports            # every (preset, dtype) in CASES
    python -m parity.make_reports --goldens  # the committed golden references in reports/golden/ (GOLDENS)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"

# (report folder, fixture preset, dtype, steps)
CASES = [
    ("svd-tiny/fp32", "svd-tiny", "fp32", 3),
    ("svd-tiny/fp16", "svd-tiny", "fp16", 3),
    ("svd-tiny-3level/fp32", "svd-tiny-3level", "fp32", 3),
    ("svd-tiny-wide/fp32", "svd-tiny-wide", "fp32", 3),
    ("animatediff-tiny/fp32", "animatediff-tiny", "fp32", 3),
    ("animatediff-tiny/fp16", "animatediff-tiny", "fp16", 3),
    ("animatediff-tiny-3level/fp32", "animatediff-tiny-3level", "fp32", 3),
    ("i2vgen-xl-tiny/fp32", "i2vgen-xl-tiny", "fp32", 3),
    ("i2vgen-xl-tiny/fp16", "i2vgen-xl-tiny", "fp16", 3),
    ("i2vgen-xl-tiny-large/fp32", "i2vgen-xl-tiny-large", "fp32", 3),
    ("animatediff-v2v-tiny/fp32", "animatediff-v2v-tiny", "fp32", 3),
    ("animatediff-v2v-tiny/fp16", "animatediff-v2v-tiny", "fp16", 3),
    ("animatediff-v2v-tiny-3level/fp32", "animatediff-v2v-tiny-3level", "fp32", 3),
    ("wan-t2v-tiny/fp32", "wan-t2v-tiny", "fp32", 3),
    ("wan-t2v-tiny/fp16", "wan-t2v-tiny", "fp16", 3),
    ("wan-t2v-tiny-varied/fp32", "wan-t2v-tiny-varied", "fp32", 3),
    ("wan-i2v-tiny/fp32", "wan-i2v-tiny", "fp32", 3),
    ("wan-i2v-tiny/fp16", "wan-i2v-tiny", "fp16", 3),
    ("animatediff-tiny-lora/fp32", "animatediff-tiny", "fp32", 3),
    ("wan-tiny-lora/fp32", "wan-t2v-tiny", "fp32", 3),
    ("animatediff-tiny-freenoise/fp32", "animatediff-tiny", "fp32", 3),
    ("animatediff-tiny-freenoise/fp16", "animatediff-tiny", "fp16", 3),
]
# cases run with LoRAs fused on both sides: the seeded LoRA pair of parity.lora.case_loras (AnimateDiff: style and
# motion; Wan: a peft and an original-layout file), at these scales
LORA_SCALES = {"animatediff-tiny-lora/fp32": (0.8, 1.2), "wan-tiny-lora/fp32": (0.8, 1.2)}
# cases run with FreeNoise on both sides: 13 frames (the motion modules hold 8) of 24x16 pixels, windows of 8 frames
# every 3 (0-8, 3-11 and the tail 5-13, whose two new frames count with one weight, as diffusers), pyramid
# weights, shuffled context noise
_FREE_NOISE = dict(frames=13, height=16, width=24,
                   free_noise=dict(context_length=8, context_stride=3, weighting_scheme="pyramid",
                                   noise_type="shuffle_context"))
FREE_NOISE = {"animatediff-tiny-freenoise/fp32": _FREE_NOISE, "animatediff-tiny-freenoise/fp16": _FREE_NOISE}


def summary_table(reports: dict[str, dict], prefix: str = "reports/") -> str:
    lines = [
        "| report | pipeline | dtype | steps | frames | modules | worst module: rel L2 / bound | isolation: worst introduced / bound "
        "| gates | frames rel L2 | PSNR dB | SSIM | passed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        s, f, w = r["settings"], r["frames"], r["worst_module"]
        iso = (r.get("isolation") or {}).get("blocks") or [{}]
        top = iso[0]
        gates = r.get("gates") or []
        lines.append(
            f"| [{name}]({prefix}{name}/report.html) | {s['pipeline']} | {s['dtype']} | {s['steps']} | "
            f"{s['frames']}@{s['height']}x{s['width']} | {r['coverage']['compared_modules']} | "
            f"{w['component']}.`{w['module']}`: {w['rel_l2']:.1e} / {w.get('bound') or s['bars']['module']:.0e} | "
            + (f"{top['component']}.`{top['module']}`: {top['introduced_rel_l2']:.1e} / {top['bound']:.0e} | " if top else "- | ")
            + f"{sum(g['passed'] for g in gates)}/{len(gates)} | {f['rel_l2']:.2e} | {f['psnr']:.1f} | "
            f"{f.get('ssim', float('nan')):.6f} | {'yes' if r['passed'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> int:
    from mindport import backend

    from .fixtures import build
    from .harness import run_parity
    from .lora import case_loras

    backend.init_context()
    results = {}
    only = sys.argv[1:]  # optional report-name prefixes, e.g. `python -m parity.make_reports svd`
    for name, preset, dtype, steps in CASES:
        if only and not any(name.startswith(o) for o in only):
            continue
        print(f"== {name}", file=sys.stderr)
        folder = build(preset)
        loras = list(zip(case_loras(folder), LORA_SCALES[name])) if name in LORA_SCALES else ()
        results[name] = run_parity(folder, REPORTS / name, dtype=dtype, steps=steps, loras=loras,
                                   **FREE_NOISE.get(name, {}), log=lambda m: print(f"   {m}", file=sys.stderr))
    for name, *_ in CASES:  # the table covers every committed report, regenerated now or not
        path = REPORTS / name / "report.json"
        if name not in results and path.exists():
            results[name] = json.loads(path.read_text())
    results = {name: results[name] for name, *_ in CASES if name in results}
    table = summary_table(results)
    (REPORTS / "README.md").write_text("# Committed parity reports\n\nRegenerated by `make reports`.\n\n"
                                       + summary_table(results, prefix="") + "\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- parity-table:start -->", "<!-- parity-table:end -->"
    if start in text and end in text:
        text = text[: text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):]
        readme.write_text(text)
    print(table)
    return 0 if all(r["passed"] for r in results.values()) else 1


# tiny cases with a committed golden reference (reports/golden/<preset>), compared without PyTorch by the test suite
GOLDENS = ("svd-tiny", "animatediff-tiny", "i2vgen-xl-tiny", "wan-t2v-tiny", "wan-i2v-tiny")
GOLDEN_DIR = REPORTS / "golden"


def goldens() -> int:
    """Save a golden reference for each GOLDENS preset (fp32, 3 steps, noise floor; the report goes to a temporary
    folder) and print each golden's size against the full capture."""
    import tempfile

    from mindport import backend

    from .fixtures import build
    from .harness import run_parity

    backend.init_context()
    ok = True
    for preset in GOLDENS:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_parity(build(preset), tmp, steps=3, isolate=False, weight_samples=0,
                           save_golden=GOLDEN_DIR / preset, log=lambda m: print(f"   {m}", file=sys.stderr))
        g = r["golden"]
        ok = ok and r["passed"]
        print(f"{preset}: {g['bytes'] / 2**20:.2f} MiB, {100 * g['fraction']:.1f}% of the full capture "
              f"({g['full_capture_bytes'] / 2**20:.1f} MiB); live verdict {'passed' if r['passed'] else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(goldens() if "--goldens" in sys.argv[1:] else main())
