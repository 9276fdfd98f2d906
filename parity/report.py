"""report.json (the stable schema the CLI and CI read), report.md (for people) and frames.png (a strip: PyTorch,
MindSpore, and their difference amplified)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image


def _fmt(x) -> str:
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        return f"{x:.3e}"
    return str(x)


def frame_strip(ref: np.ndarray, ours: np.ndarray, path: Path, amplify: float = 50.0) -> None:
    """Rows: PyTorch frames, MindSpore frames, |difference| x amplify (first video)."""
    r, o = ref[0], ours[0]
    diff = np.clip(np.abs(o - r) * amplify, 0, 1)
    rows = [np.concatenate(list(x), axis=1) for x in (r, o, diff)]
    img = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)
    scale = max(1, 96 // max(1, r.shape[1]))
    pil = PIL.Image.fromarray(img)
    pil.resize((pil.width * scale, pil.height * scale), PIL.Image.NEAREST).save(path)


def markdown(report: dict) -> str:
    s, f = report["settings"], report["frames"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"# Parity report: {s['pipeline']} ({s['dtype']}) — {verdict}",
        "",
        f"Source `{s['source']}`; {s['steps']} steps, {s['frames']} frames at {s['height']}x{s['width']}, seed {s['seed']}. "
        f"Reference: {s['reference']}. Bars (relative L2): modules ≤ {s['bars']['module']:g}, frames ≤ {s['bars']['frames']:g}.",
        "",
        "## Frames",
        "",
        "| relative L2 | max abs | PSNR (dB) | passed |",
        "|---|---|---|---|",
        f"| {_fmt(f['rel_l2'])} | {_fmt(f['max_abs'])} | {f['psnr']:.1f} | {f['passed']} |",
        "",
        "![frames: PyTorch, MindSpore, |difference| x50](frames.png)",
        "",
        "## First divergence",
        "",
    ]
    fd = report["first_divergence"]
    if fd is None:
        lines.append("None: every compared module is within its bar.")
    else:
        lines.append(f"`{fd['component']}.{fd['module']}` (call {fd['call']}): relative L2 {_fmt(fd['rel_l2'])}, "
                     f"max abs {_fmt(fd['max_abs'])}.")
    cov = report["coverage"]
    lines += [
        "",
        f"## Modules ({cov['compared_modules']} modules, {cov['compared_calls']} calls compared)",
        "",
        "Worst 15 by relative L2 (over all calls):",
        "",
        "| component | module | shape | rel L2 | max abs | cosine | passed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["layers"], key=lambda r: -r["rel_l2"])[:15]:
        lines.append(f"| {r['component']} | `{r['module']}` | {r['shape']} | {_fmt(r['rel_l2'])} | {_fmt(r['max_abs'])} | "
                     f"{r['cosine']:.7f} | {r['passed']} |")
    by_comp: dict[str, list] = {}
    for r in report["layers"]:
        by_comp.setdefault(r["component"], []).append(r)
    lines += ["", "Per component:", "", "| component | modules | worst rel L2 | failing |", "|---|---|---|---|"]
    for comp, rows in by_comp.items():
        lines.append(f"| {comp} | {len(rows)} | {_fmt(max(r['rel_l2'] for r in rows))} | {sum(not r['passed'] for r in rows)} |")
    if cov["reference_only"] or cov["mindspore_only"]:
        lines += ["", f"Modules on one side only (not compared): PyTorch {len(cov['reference_only'])}, "
                      f"MindSpore {len(cov['mindspore_only'])}: {', '.join((cov['reference_only'] + cov['mindspore_only'])[:12])}"]
    if report["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in report["problems"]]
    n = report["noise"]
    t = report["timings"]
    v = report["versions"]
    lines += [
        "",
        "## Run",
        "",
        f"- noise: {n['generator']} seed {n['seed']}, {len(n['runs'])} runs, draws per run: "
        f"{', '.join(d['who'] + str(d['shape']) for d in n['runs'][0]['draws'])}",
        f"- modules compared with {report['settings'].get('module_comparison', 'free-running pipelines')}; "
        "frames from a free-running MindSpore run",
        f"- time: convert {t.get('convert_s', 0):.1f} s, load {t.get('load_s', 0):.1f} s, PyTorch {t.get('torch_s', 0):.1f} s "
        f"(with capture), MindSpore {t.get('mindspore_s', 0):.1f} s (free-running), "
        f"{t.get('mindspore_captured_s', 0):.1f} s (with capture); peak RSS {t['peak_rss_mb']:.0f} MB",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
    ]
    return "\n".join(lines)


def write_reports(report: dict, out: Path, ref_frames: np.ndarray, our_frames: np.ndarray) -> None:
    out = Path(out)
    if ref_frames.shape == our_frames.shape and ref_frames.ndim == 5:
        frame_strip(ref_frames, our_frames, out / "frames.png")
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True))
    (out / "report.md").write_text(markdown(report))
