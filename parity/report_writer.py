"""report.json (the stable schema the CLI and CI read, docs/report_schema.md), report.md (for people), frames.png
(per video a strip: PyTorch, MindSpore, their difference amplified), frames.gif (the same side by side, one frame at
a time) and report.html (parity/report_html.py).

Every section other than settings is optional: a report holds what its run measured, and a section that was not
measured says so in one line instead of failing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .report_format import (
    NOT_MEASURED,
    amp_label,
    amplification,
    describe_divergence,
    fmt,
    fmt_db,
    fmt_ssim,
    gate_measure,
    md_table,
    module_row,
    ratio,
    run_lines,
    side_by_side_gif,
    step_block_worst,
    strips_png,
    weight_mismatches,
    weight_unchecked_note,
    worst_rows,
)
from .report_html import write_html


def markdown(report: dict, amplify: float | None = None) -> str:
    s = report.get("settings", {})
    verdict = "PASSED" if report.get("passed") else "FAILED"
    bars = s.get("bars", {})
    lines = [
        f"# Parity report: {s.get('pipeline', '?')} ({s.get('dtype', '?')}) — {verdict}",
        "",
        f"Source `{s.get('source', '?')}`; {s.get('steps', '?')} steps, {s.get('frames', '?')} frames at "
        f"{s.get('height', '?')}x{s.get('width', '?')}, seed {s.get('seed', '?')}. "
        f"Reference: {s.get('reference', '?')}. "
        f"Bars (relative L2): modules ≤ {bars.get('module', '?')}, frames ≤ {bars.get('frames', '?')}.",
        "",
        "## Gates",
        "",
    ]
    gates = report.get("gates")
    lines += md_table(["gate", "passed", "detail", "worst"],
                    [[g["name"], g["passed"], g.get("detail", ""), gate_measure(g)] for g in gates]) \
        if gates else [NOT_MEASURED]

    lines += ["", "## First divergence", ""]
    if "first_divergence" not in report:
        lines.append(NOT_MEASURED)
    else:
        fd = report["first_divergence"]
        lines.append("None: every gate holds and every compared module is within its bound." if fd is None
                     else describe_divergence(fd))
    w = report.get("worst_module")
    if w:
        bound = f" (bound {fmt(w['bound'])}, {fmt(ratio(w))} of it)" if w.get("bound") else ""
        lines += ["", f"Worst module: `{w['component']}.{w['module']}` {w.get('shape', '')}: relative L2 "
                      f"{fmt(w['rel_l2'])}{bound}, max abs {fmt(w.get('max_abs'))}."]

    lines += ["", "## Frames", ""]
    f = report.get("frames")
    if not f:
        lines.append(NOT_MEASURED)
    else:
        lines += md_table(["relative L2", "max abs", "cosine", "PSNR (dB)", "SSIM (mean)", "passed"],
                        [[fmt(f["rel_l2"]), fmt(f.get("max_abs")), fmt(f.get("cosine")), fmt_db(f.get("psnr")),
                          fmt_ssim(f.get("ssim")), f.get("passed", "—")]])
        if f.get("error"):
            lines += ["", f"Frames not comparable: {f['error']}"]
        if (report.get("files") or {}).get("frames_png"):
            amp = amp_label(amplify) if amplify else "|diff| amplified"
            lines += ["", f"![frames: PyTorch, MindSpore, {amp}]({report['files']['frames_png']})"]
        if f.get("per_frame"):
            lines += ["", "Per frame:", ""] + md_table(
                ["video", "frame", "PSNR (dB)", "SSIM", "relative L2"],
                [[p["video"], p["frame"], fmt_db(p.get("psnr")), fmt_ssim(p.get("ssim")),
                  fmt(p.get("rel_l2"))] for p in f["per_frame"]])

    lines += ["", "## Isolation (teacher forcing): top 10 blocks by introduced error", ""]
    iso = report.get("isolation")
    if iso and iso.get("blocks"):
        if iso.get("unit"):
            lines += [f"Blocks: {iso['unit']}.", ""]
        blocks = sorted(iso["blocks"], key=lambda b: -(b.get("ratio") or 0.0))[:10]
        lines += md_table(["component", "block", "introduced rel L2", "inherited rel L2", "floor", "bound",
                         "introduced / bound", "passed"],
                        [[b["component"], f"`{b['module']}`", fmt(b["introduced_rel_l2"]),
                          fmt(b.get("inherited_rel_l2")), fmt(b.get("floor")), fmt(b.get("bound")),
                          fmt(b.get("ratio")), b.get("passed", "—")] for b in blocks])
    else:
        lines.append(NOT_MEASURED)

    lines += ["", "## Step x block (worst cell per block)", ""]
    cells = step_block_worst(report.get("steps") or {})
    lines += md_table(["block", "worst step", "relative L2", "steps run"],
                    [[f"`{c['block']}`", c["step"], fmt(c["rel_l2"]), c["steps"]] for c in cells]) \
        if cells else [NOT_MEASURED]

    layers = report.get("layers") or []
    cov = report.get("coverage") or {}
    with_bounds = any("bound" in r for r in layers)
    header = ["component", "module", "shape", "rel L2", "max abs", "cosine"] + \
        (["floor", "bound", "rel L2 / bound", "worst step"] if with_bounds else []) + ["passed"]
    lines += ["", f"## Modules ({cov.get('compared_modules', len(layers))} modules, "
                  f"{cov.get('compared_calls', '?')} calls compared)", ""]
    if not layers:
        lines.append(NOT_MEASURED)
    else:
        lines += [f"Worst 15 by {'relative L2 / bound' if with_bounds else 'relative L2'} (over all calls):", ""]
        lines += md_table(header, [module_row(r, with_bounds) for r in worst_rows(layers, 15)])
        by_comp: dict[str, list] = {}
        for r in layers:
            by_comp.setdefault(r["component"], []).append(r)
        lines += ["", "Per component:", ""] + md_table(
            ["component", "modules", "worst rel L2", "failing"],
            [[c, len(rows), fmt(max(r["rel_l2"] for r in rows)), sum(not r["passed"] for r in rows)]
             for c, rows in by_comp.items()])
    one_side = cov.get("reference_only", []) + cov.get("mindspore_only", [])
    if one_side:
        lines += ["", f"Modules on one side only (not compared): PyTorch {len(cov['reference_only'])}, "
                      f"MindSpore {len(cov['mindspore_only'])}: {', '.join(one_side[:12])}"]

    lines += ["", "## Weight mapping check", ""]
    wc = report.get("weight_check")
    if wc:
        mismatches = weight_mismatches(wc)
        lines.append(f"{wc.get('checked', '?')} of {wc.get('total', '?')} tensors perturbed one at a time "
                     f"({fmt(wc.get('seconds'))} s): {len(mismatches)} mismatches; "
                     f"passed: {wc.get('passed', '—')}{weight_unchecked_note(wc)}.")
        if mismatches:
            lines += [""] + md_table(["component", "tensor", "expected module", "first moved"],
                                   [[m["component"], f"`{m['tensor']}`", f"`{m['expected_module']}`",
                                     f"`{m.get('first_moved')}`"] for m in mismatches[:20]])
    else:
        lines.append(NOT_MEASURED)

    lines += ["", "## Baseline", ""]
    base = report.get("baseline")
    if base:
        regs = base.get("regressions", [])
        lines.append(f"Against `{base.get('path', '?')}`: {len(regs)} regressions; "
                     f"passed: {base.get('passed', '—')}.")
        if regs:
            lines += [""] + md_table(["component", "module", "rel L2", "baseline rel L2", "allowed"],
                                   [[r["component"], f"`{r['module']}`", fmt(r["rel_l2"]),
                                     fmt(r.get("baseline_rel_l2")), fmt(r.get("allowed"))] for r in regs[:20]])
    else:
        lines.append("No baseline given (`--baseline`).")

    if report.get("problems"):
        lines += ["", "## Problems", ""] + [f"- {p}" for p in report["problems"]]
    lines += ["", "## Run", ""]
    if s.get("module_comparison"):
        lines.append(f"- modules compared with {s['module_comparison']}; frames from a free-running MindSpore run")
    lines += [f"- {x}" for x in run_lines(report)] + [""]
    return "\n".join(lines)


def write_reports(report: dict, out: Path, ref_frames: np.ndarray, our_frames: np.ndarray) -> dict:
    """Writes every report file into `out` and records their names in report["files"] (also returned)."""
    out = Path(out)
    files = {"md": "report.md", "html": "report.html"}
    amplify = None
    if ref_frames.shape == our_frames.shape and ref_frames.ndim == 5:
        amplify = amplification(ref_frames, our_frames)
        (out / "frames.png").write_bytes(strips_png(ref_frames, our_frames, amplify))
        (out / "frames.gif").write_bytes(side_by_side_gif(ref_frames, our_frames, amplify))
        files.update(frames_png="frames.png", frames_gif="frames.gif")
    report["files"] = files
    (out / "report.md").write_text(markdown(report, amplify))
    write_html(report, out, ref_frames, our_frames)
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True))
    return files
