"""report.html: one self-contained page (images as base64 data: URIs, inline CSS, no external fetches) that shows
where a port diverges: verdict and gates, first divergence, frame strips and GIF with per-frame PSNR/SSIM, error
against depth per component, the step x block heatmap, the isolation ranking, and the module tables."""

from __future__ import annotations

import base64
import io
import json
import math
from html import escape
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .report_format import (NOT_MEASURED, amp_label, amplification, describe_divergence, fmt, fmt_db, fmt_ssim, gain,
                     gate_measure, ratio, run_lines, side_by_side_gif, step_block_worst, strip_image, weight_mismatches,
                     weight_unchecked_note,
                     worst_rows)

PASS, FAIL, FLOOR, BOUND = "#1a7f37", "#cf222e", "#4a7bd0", "#444444"
HEADER_SETTINGS = ("pipeline", "source", "dtype", "seed", "steps", "frames", "height", "width", "reference", "bars")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;margin:0;
 background:#f6f8fa}
main{max-width:1320px;margin:0 auto;padding:0 24px 48px}
header{background:#fff;border-bottom:1px solid #d0d7de;padding:18px 24px 10px;margin-bottom:16px}
header h1{font-size:22px;margin:0 0 6px}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:13px;margin-top:8px} nav a{color:#0969da;text-decoration:none}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 18px;margin:14px 0}
h2{font-size:18px;margin:0 0 10px;border-bottom:1px solid #eaeef2;padding-bottom:6px}
h3{font-size:15px;margin:14px 0 6px}
.verdict{display:inline-block;color:#fff;font-weight:700;border-radius:6px;padding:2px 12px;margin-left:10px;
 font-size:16px;vertical-align:middle}
.pass{background:#1a7f37}.fail{background:#cf222e}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:2px 18px;font-size:13px}
.facts div span{color:#656d76} .facts div.full{grid-column:1/-1}
.facts div{overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:12px}
.card{border-radius:8px;padding:10px 14px;border:1px solid #d0d7de;border-left:6px solid #8c959f;background:#fff}
.card.bad{border-left-color:#cf222e;background:#fff5f5}.card.good{border-left-color:#1a7f37;background:#f4fbf5}
.card code{overflow-wrap:anywhere}
.card b{display:block;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#656d76;margin-bottom:4px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0;min-width:50%}
table.wide{width:100%}
th,td{border-bottom:1px solid #eaeef2;padding:3px 10px;text-align:left;vertical-align:top}
th.n{text-align:right}
th{background:#f6f8fa;position:sticky;top:0}
td.n{font-family:ui-monospace,"DejaVu Sans Mono",monospace;text-align:right;white-space:nowrap}
td.m{font-family:ui-monospace,"DejaVu Sans Mono",monospace;word-break:break-all}
tr.bad td{background:#ffebe9} tr.warn td{background:#fff8c5}
.ok{color:#1a7f37;font-weight:600}.no{color:#cf222e;font-weight:700}
.muted{color:#656d76;font-style:italic}
img{max-width:100%;image-rendering:pixelated;display:block;margin:6px 0}
img.plot{image-rendering:auto}
details{margin:4px 0} summary{cursor:pointer;font-weight:600;padding:3px 0}
.scroll{max-height:520px;overflow:auto;border:1px solid #eaeef2}
ul{margin:4px 0;padding-left:20px}
"""

# Sets body data-images / data-images-loaded once the page has loaded (the headless-browser test reads them).
JS = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){ok++;}}
document.body.dataset.images=im.length;document.body.dataset.imagesLoaded=ok;});"""


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes | None, alt: str, mime: str = "image/png", cls: str = "plot") -> str:
    return "" if data is None else f'<img class="{cls}" alt="{escape(alt)}" src="{_uri(data, mime)}">'


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _ok(flag) -> str:
    if flag is None:
        return "—"
    return '<span class="ok">pass</span>' if flag else '<span class="no">FAIL</span>'


def _for_log(*columns) -> tuple[list[np.ndarray], float]:
    """Columns of values sharing one log axis: None and non-finite -> NaN (not drawn), exact zeros -> a third of
    the smallest positive value in any column (the bottom of the axis), which is returned too."""
    arrays = [np.array([np.nan if v is None else v for v in c], dtype=np.float64) for c in columns]
    for a in arrays:
        a[~np.isfinite(a)] = np.nan
    positive = np.concatenate([a[a > 0] for a in arrays])
    zero_at = positive.min() / 3 if positive.size else 1e-12
    return [np.where(a == 0, zero_at, a) for a in arrays], zero_at


def md_table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None, wide=False) -> str:
    """Cells are HTML already (escape text before); a leading '#' marks a number (right-aligned, monospace), a
    leading '`' a module path (monospace)."""
    numeric = [bool(rows) and rows[0][i].startswith("#") for i in range(len(header))]
    head = "".join(f'<th class="n">{escape(h)}</th>' if n else f"<th>{escape(h)}</th>" for h, n in zip(header, numeric))
    body = []
    for i, row in enumerate(rows):
        row_cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="n">{c[1:]}</td>' if c.startswith("#") else
                        f'<td class="m">{c[1:]}</td>' if c.startswith("`") else f"<td>{c}</td>" for c in row)
        body.append(f"<tr{row_cls}>{cells}</tr>")
    cls = ' class="wide"' if wide else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ratio(q) -> str:
    return "—" if q is None else f"{q:.3g}"


def _secs(s) -> str:
    return "—" if s is None else f"{s:.1f} s"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def _missing(what: str = NOT_MEASURED) -> str:
    return f'<p class="muted">{escape(what)}</p>'


# --- plots ---------------------------------------------------------------------------------------------------------

def plot_error_vs_depth(report: dict) -> bytes | None:
    """One subplot per component: rel L2 (log) of every module against its execution order in that component,
    coloured by pass/fail, with each module's bound and noise floor when measured (else the run's module bar)."""
    layers = report.get("layers") or []
    if not layers:
        return None
    comps = list(dict.fromkeys(r["component"] for r in layers))
    fd = report.get("first_divergence") or {}
    bar = (report.get("settings") or {}).get("bars", {}).get("module")
    fig = Figure(figsize=(12.5, 2.9 * len(comps)), layout="constrained")
    axes = fig.subplots(len(comps), 1, squeeze=False)[:, 0]
    for ax, comp in zip(axes, comps):
        rows = sorted((r for r in layers if r["component"] == comp), key=lambda r: r.get("order", 0))
        x = np.arange(len(rows))
        (y, floor, bound), zero_at = _for_log([r["rel_l2"] for r in rows], [r.get("floor") for r in rows],
                                              [r.get("bound") for r in rows])
        ok = np.array([bool(r["passed"]) for r in rows])
        if not np.isnan(floor).all():
            ax.scatter(x, floor, s=7, marker=".", color=FLOOR, label="noise floor", zorder=2)
        if not np.isnan(bound).all():
            ax.scatter(x, bound, s=26, marker="_", color=BOUND, label="bound", zorder=2)
        elif bar:
            ax.axhline(bar, color=BOUND, ls="--", lw=1, label=f"bar {bar:g}")
        zero = np.array([r["rel_l2"] == 0 for r in rows])
        ax.scatter(x[ok & ~zero], y[ok & ~zero], s=11, color=PASS, label="passed", zorder=3)
        if zero.any():
            ax.scatter(x[zero], y[zero], s=16, marker="v", facecolors="none", edgecolors=PASS, zorder=3,
                       label=f"exactly 0 (drawn at {zero_at:.0e})")
        if (~ok).any():
            ax.scatter(x[~ok], y[~ok], s=22, color=FAIL, label="failed", zorder=4)
        bad = np.isnan(y)
        if bad.any():
            top = np.nanmax(np.append(y, [bar or 1.0])) * 10
            ax.scatter(x[bad], np.full(bad.sum(), top), marker="x", s=40, color=FAIL, label="error / non-finite",
                       zorder=4)
        if fd.get("kind", "module") == "module" and fd.get("component") == comp:
            i = next((i for i, r in enumerate(rows) if r["module"] == fd.get("module")), None)
            if i is not None:
                ax.axvline(i, color=FAIL, lw=1.2, ls=":")
                ax.annotate(f"first divergence: {fd['module']}", (i, 0.96), xycoords=("data", "axes fraction"),
                            ha="left", va="top", fontsize=8, color=FAIL, xytext=(4, 0), textcoords="offset points")
        worst = worst_rows(rows, 1)[0]
        j = rows.index(worst)
        if np.isfinite(y[j]):
            ax.annotate(worst["module"][-70:], (j, y[j]), fontsize=7.5, color="#333", xytext=(5, 6),
                        textcoords="offset points", ha="left" if j < 0.7 * len(rows) else "right",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
        ax.set_yscale("log")
        ax.set_xlim(-1, max(1, len(rows)))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{comp}: {len(rows)} modules, {int((~ok).sum())} failing", fontsize=10, loc="left")
        ax.set_ylabel("relative L2")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes[-1].set_xlabel("module execution order within the component (first call; children before parents)")
    return _png(fig)


def plot_step_block(steps: dict) -> bytes | None:
    """Heatmap: blocks (rows) x denoising steps (columns), rel L2 on a log colour scale; grey where a block did
    not run at that step."""
    blocks, idx, vals = steps.get("blocks") or [], steps.get("steps") or [], steps.get("rel_l2") or []
    if not blocks or not vals:
        return None
    m = np.array([[np.nan if v is None else v for v in row] for row in vals], dtype=np.float64).T  # blocks x steps
    m[~np.isfinite(m)] = np.nan
    if np.isnan(m).all():
        return None
    zero = m == 0
    lo, hi = np.nanmin(np.where(zero, np.nan, m)) if (m > 0).any() else 1e-12, np.nanmax(m)
    m[zero] = lo  # an exact zero takes the lowest colour and is labelled "0"
    fig = Figure(figsize=(min(13.5, 5.5 + 0.55 * len(idx)), 1.6 + 0.26 * len(blocks)), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["viridis"].with_extremes(bad="#d0d7de")
    im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap=cmap, interpolation="nearest",
                   norm=LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10))
    ax.set_xticks(range(len(idx)), [str(s) for s in idx], fontsize=8)
    ax.set_yticks(range(len(blocks)), blocks, fontsize=8)
    ax.set_xlabel("denoising step")
    if m.size <= 400:
        mid = math.sqrt(lo * hi)
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, "0" if zero[i, j] else f"{v:.0e}", ha="center", va="center", fontsize=7,
                        color="white" if v < mid else "black")
    fig.colorbar(im, ax=ax, label="relative L2 (log)", pad=0.01)
    ax.set_title("rel L2 of each block's output per step", fontsize=10, loc="left")
    return _png(fig)


def plot_isolation(isolation: dict, top: int = 20) -> bytes | None:
    """Top blocks by introduced error / bound: introduced rel L2 (bar), inherited rel L2, bound and floor."""
    blocks = sorted(isolation.get("blocks") or [], key=lambda b: -(b.get("ratio") or 0.0))[:top]
    if not blocks:
        return None
    y = np.arange(len(blocks))[::-1]
    fig = Figure(figsize=(12.5, 1.4 + 0.32 * len(blocks)), layout="constrained")
    ax = fig.subplots()
    colours = [PASS if b.get("passed", True) else FAIL for b in blocks]
    (intro, inherited, bound, floor), _ = _for_log(*([b.get(k) for b in blocks] for k in (
        "introduced_rel_l2", "inherited_rel_l2", "bound", "floor")))
    ax.barh(y, intro, color=colours, height=0.6, label="introduced")
    ax.scatter(inherited, y, marker="o", facecolors="none", edgecolors="#666", s=28,
               label="inherited (input already off)", zorder=3)
    ax.scatter(bound, y, marker="|", color=BOUND, s=220, lw=2, label="bound", zorder=4)
    ax.scatter(floor, y, marker=".", color=FLOOR, s=40, label="noise floor", zorder=4)
    ax.set_yticks(y, [f"{b['component']}.{b['module']}" for b in blocks], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("relative L2 (log)")
    ax.set_title(f"isolation: top {len(blocks)} blocks by introduced error / bound (teacher forcing)", fontsize=10,
                 loc="left")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)


def plot_per_frame(frames: dict) -> bytes | None:
    """PSNR per frame (and SSIM, when measured), one line per video."""
    per = frames.get("per_frame") or []
    if not per:
        return None
    metrics = [("psnr", "PSNR per frame (dB, higher is closer)")]
    if any(p.get("ssim") is not None for p in per):
        metrics.append(("ssim", "SSIM per frame (1 = identical)"))
    fig = Figure(figsize=(6.25 * len(metrics), 3.0), layout="constrained")
    videos = sorted({p["video"] for p in per})
    for ax, (key, title) in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        for v in videos:
            rows = [p for p in per if p["video"] == v]
            y = [p[key] if p.get(key) is not None and math.isfinite(p[key]) else np.nan for p in rows]
            ax.plot([p["frame"] for p in rows], y, marker="o", ms=4, label=f"video {v}")
        inf = sum(1 for p in per if p.get(key) is not None and math.isinf(p[key]))
        ax.set_title(title + (f"; {inf} identical frames (inf) not drawn" if inf else ""), fontsize=10, loc="left")
        ax.set_xlabel("frame")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.ticklabel_format(axis="y", useOffset=False)
        if len(videos) > 1:
            ax.legend(fontsize=8)
    return _png(fig)


# --- sections ------------------------------------------------------------------------------------------------------

def _header(report: dict) -> str:
    s, passed = report.get("settings") or {}, bool(report.get("passed"))
    bars = s.get("bars") or {}
    facts = {
        "source": s.get("source"), "dtype": s.get("dtype"), "seed": s.get("seed"), "steps": s.get("steps"),
        "frames": f"{s.get('frames', '?')} at {s.get('height', '?')}x{s.get('width', '?')}",
        "reference": s.get("reference"), "module bar": bars.get("module"), "frames bar": bars.get("frames"),
        "schema": report.get("schema_version"),
    }
    grid = "".join(f"<div><span>{escape(k)}:</span> {escape(str(v))}</div>" for k, v in facts.items() if v is not None)
    versions = ", ".join(f"{k} {v}" for k, v in (report.get("versions") or {}).items())
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "Summary"), ("gates", "Gates"), ("frames", "Frames"), ("depth", "Error vs depth"),
        ("steps", "Step x block"), ("isolation", "Isolation"), ("weights", "Weight check"), ("baseline", "Baseline"),
        ("modules", "Modules"), ("run", "Run")))
    return (f"<header><h1>Parity report: {escape(str(s.get('pipeline', '?')))} ({escape(str(s.get('dtype', '?')))})"
            f'<span class="verdict {"pass" if passed else "fail"}">{"PASSED" if passed else "FAILED"}</span></h1>'
            f'<div class="facts">{grid}</div><div class="facts"><div class="full"><span>versions:</span> '
            f"{escape(versions)}</div></div><nav>{nav}</nav></header>")


def _summary(report: dict) -> str:
    cards = []
    if "first_divergence" in report:
        fd = report["first_divergence"]
        text = ("None: every gate holds and every compared module is within its bound." if fd is None
                else describe_divergence(fd))
        cards.append(("bad" if fd else "good", "First divergence", _code(text)))
    w = report.get("worst_module")
    if w:
        r = ratio(w)
        extra = f" = {r:.2g} x bound {fmt(w['bound'])}" if r is not None else ""
        cls = "bad" if r is not None and r > 1 else ""
        cards.append((cls, "Worst module", f"<code>{escape(w['component'])}.{escape(w['module'])}</code> "
                                           f"{escape(str(w.get('shape', '')))}<br>rel L2 {fmt(w['rel_l2'])}{extra}, "
                                           f"max abs {fmt(w.get('max_abs'))}"))
    f = report.get("frames")
    if f:
        cards.append(("good" if f.get("passed") else "bad", "Frames",
                      f"rel L2 {fmt(f['rel_l2'])}, max abs {fmt(f.get('max_abs'))}<br>PSNR {fmt_db(f.get('psnr'))} dB, "
                      f"SSIM {fmt_ssim(f.get('ssim'))}" + (f"<br>{escape(f['error'])}" if f.get("error") else "")))
    cov = report.get("coverage")
    if cov:
        one = len(cov.get("reference_only", [])) + len(cov.get("mindspore_only", []))
        cards.append(("bad" if one else "", "Coverage",
                      f"{cov.get('compared_modules', '?')} modules, {cov.get('compared_calls', '?')} calls compared; "
                      f"{one} on one side only"))
    body = '<div class="cards">' + "".join(f'<div class="card {c}"><b>{t}</b>{h}</div>' for c, t, h in cards) + "</div>"
    if report.get("problems"):
        body += "<h3>Problems</h3><ul>" + "".join(f"<li>{escape(p)}</li>" for p in report["problems"]) + "</ul>"
    return _section("summary", "Summary", body)


def _code(text: str) -> str:
    """Markdown-style `code` spans of the shared one-line descriptions -> <code>."""
    parts = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _gates(report: dict) -> str:
    gates = report.get("gates")
    if not gates:
        return _section("gates", "Gates (non-network checks)", _missing())
    rows = [[escape(g["name"]), _ok(g["passed"]), escape(str(g.get("detail", ""))), "#" + gate_measure(g)]
            for g in gates]
    return _section("gates", "Gates (non-network checks)",
                    md_table(["gate", "result", "detail", "worst"], rows, ["" if g["passed"] else "bad" for g in gates]))


def _frames(report: dict, ref: np.ndarray, ours: np.ndarray) -> str:
    f = report.get("frames")
    parts = []
    if ref.ndim == 5 and ref.shape == ours.shape:
        amp = amplification(ref, ours)
        parts.append(f"<p>Rows: PyTorch, MindSpore, and their absolute difference amplified <b>x{gain(amp)}</b> "
                     f"(the power of ten that brings the largest difference, {fmt(float(np.abs(ours - ref).max()))}, "
                     "to 1–10: the worst pixels saturate, black means no difference). Frames left to right.</p>")
        for v in range(ref.shape[0]):
            buf = io.BytesIO()
            strip_image(ref[v], ours[v], amp).save(buf, format="PNG")
            parts.append(f"<h3>Video {v}</h3>" + _img(buf.getvalue(), f"video {v}: PyTorch, MindSpore, "
                                                      f"{amp_label(amp)}", cls="frames"))
        parts.append("<h3>Side by side, frame by frame</h3>" + _img(side_by_side_gif(ref, ours, amp),
                                                                  "frames GIF", "image/gif", cls="frames"))
    elif f and f.get("error"):
        parts.append(f'<p class="no">{escape(f["error"])}</p>')
    else:
        parts.append(_missing("No frames were given to the renderer."))
    if f:
        parts.append(_img(plot_per_frame(f), "per-frame PSNR and SSIM"))
        rows = [["#" + str(p["video"]), "#" + str(p["frame"]), "#" + fmt_db(p.get("psnr")),
                 "#" + fmt_ssim(p.get("ssim")), "#" + fmt(p.get("rel_l2"))]
                for p in f.get("per_frame", [])]
        if rows:
            parts.append(md_table(["video", "frame", "PSNR (dB)", "SSIM", "relative L2"], rows))
    else:
        parts.append(_missing())
    return _section("frames", "Frames", "".join(parts))


def _module_table(rows: list[dict], with_bounds: bool) -> str:
    header = ["component", "module", "shape", "calls", "rel L2", "max abs", "cosine"] + \
        (["floor", "bound", "rel L2 / bound", "worst step"] if with_bounds else []) + ["result"]
    cells, classes = [], []
    for r in rows:
        q = ratio(r)
        c = [escape(r["component"]), "`" + escape(r["module"]), "#" + escape(str(r.get("shape", ""))),
             "#" + str(r.get("calls", "—")), "#" + fmt(r["rel_l2"]), "#" + fmt(r.get("max_abs")),
             "#" + (f"{r['cosine']:.7f}" if r.get("cosine") is not None else "—")]
        if with_bounds:
            c += ["#" + fmt(r.get("floor")), "#" + fmt(r.get("bound")), "#" + _ratio(q),
                  "#" + str(r.get("worst_step", "—"))]
        c.append(_ok(r["passed"]) + (f" {escape(r['error'])}" if r.get("error") else ""))
        cells.append(c)
        classes.append("bad" if not r["passed"] else "warn" if q is not None and q > 0.5 else "")
    return md_table(header, cells, classes, wide=True)


def _modules(report: dict) -> str:
    layers = report.get("layers") or []
    if not layers:
        return _section("modules", "Modules", _missing())
    with_bounds = any("bound" in r for r in layers)
    by = "relative L2 / bound" if with_bounds else "relative L2"
    parts = [f"<h3>Worst 25 by {by}</h3>", _module_table(worst_rows(layers, 25), with_bounds),
             "<h3>Every module, per component, in execution order</h3>"]
    for comp in dict.fromkeys(r["component"] for r in layers):
        rows = sorted((r for r in layers if r["component"] == comp), key=lambda r: r.get("order", 0))
        failing = sum(not r["passed"] for r in rows)
        parts.append(f"<details><summary>{escape(comp)}: {len(rows)} modules, {failing} failing, worst rel L2 "
                     f"{fmt(max(r['rel_l2'] for r in rows))}</summary><div class=\"scroll\">"
                     f"{_module_table(rows, with_bounds)}</div></details>")
    cov = report.get("coverage") or {}
    for side, key in (("PyTorch", "reference_only"), ("MindSpore", "mindspore_only")):
        if cov.get(key):
            parts.append(f"<p><b>Only in {side} (not compared, {len(cov[key])}):</b> "
                         f"<code>{escape(', '.join(cov[key]))}</code></p>")
    return _section("modules", "Modules", "".join(parts))


def _isolation(report: dict) -> str:
    iso = report.get("isolation")
    if not iso or not iso.get("blocks"):
        return _section("isolation", "Isolation (teacher forcing)", _missing())
    blocks = sorted(iso["blocks"], key=lambda b: -(b.get("ratio") or 0.0))
    intro = ("<p>Each MindSpore block is run on the inputs the PyTorch block recorded, so the error it "
             "<i>introduces</i> is separated from the error it <i>inherits</i>" +
             (f" (blocks: {escape(str(iso['unit']))})" if iso.get("unit") else "") + ".</p>")
    rows = [[escape(b["component"]), "`" + escape(b["module"]), "#" + fmt(b["introduced_rel_l2"]),
             "#" + fmt(b.get("inherited_rel_l2")), "#" + fmt(b.get("floor")), "#" + fmt(b.get("bound")),
             "#" + _ratio(b.get("ratio")), _ok(b.get("passed"))] for b in blocks[:20]]
    table = md_table(["component", "block", "introduced rel L2", "inherited rel L2", "floor", "bound",
                    "introduced / bound", "result"], rows,
                   ["" if b.get("passed", True) else "bad" for b in blocks[:20]])
    return _section("isolation", "Isolation (teacher forcing)",
                    intro + _img(plot_isolation(iso), "isolation ranking") + table)


def _steps(report: dict) -> str:
    steps = report.get("steps")
    img = _img(plot_step_block(steps), "step x block heatmap") if steps else ""
    if not img:
        return _section("steps", "Step x block", _missing())
    rows = [["`" + escape(c["block"]), "#" + str(c["step"]), "#" + fmt(c["rel_l2"]), "#" + str(c["steps"])]
            for c in step_block_worst(steps)]
    intro = ("<p>Relative L2 of each block's output at each denoising step, with the latents re-synchronised to the "
             "reference before every step, so a step's error is not the drift of the steps before it. Grey: the block "
             "did not run at that step.</p>")
    return _section("steps", "Step x block", intro + img + "<details><summary>Worst cell per block</summary>" +
                    md_table(["block", "worst step", "relative L2", "steps run"], rows) + "</details>")


def _weights(report: dict) -> str:
    wc = report.get("weight_check")
    if not wc:
        return _section("weights", "Weight mapping check", _missing())
    mism = weight_mismatches(wc)
    body = (f"<p>{_ok(wc.get('passed'))} {escape(str(wc.get('checked', '?')))} of {escape(str(wc.get('total', '?')))} "
            f"tensors perturbed one at a time ({_secs(wc.get('seconds'))}); {len(mism)} moved a module other than "
            f"the one they map to{escape(weight_unchecked_note(wc))}.</p>")
    if mism:
        body += md_table(["component", "tensor", "expected module", "first moved"],
                       [[escape(m["component"]), "`" + escape(m["tensor"]), "`" + escape(m["expected_module"]),
                         "`" + escape(str(m.get("first_moved")))] for m in mism], ["bad"] * len(mism))
    return _section("weights", "Weight mapping check", body)


def _baseline(report: dict) -> str:
    base = report.get("baseline")
    if not base:
        return _section("baseline", "Baseline", _missing("No baseline given (--baseline)."))
    regs = base.get("regressions") or []
    body = (f"<p>{_ok(base.get('passed'))} against <code>{escape(str(base.get('path', '?')))}</code>: "
            f"{len(regs)} regressions.</p>")
    if regs:
        body += md_table(["component", "module", "rel L2", "baseline rel L2", "allowed"],
                       [[escape(r["component"]), "`" + escape(r["module"]), "#" + fmt(r["rel_l2"]),
                         "#" + fmt(r.get("baseline_rel_l2")), "#" + fmt(r.get("allowed"))] for r in regs],
                       ["bad"] * len(regs))
    return _section("baseline", "Baseline", body)


def _run(report: dict) -> str:
    parts = ["<ul>" + "".join(f"<li>{escape(x)}</li>" for x in run_lines(report)) + "</ul>"]
    s = report.get("settings") or {}
    if s.get("module_comparison"):
        parts.insert(0, f"<p>Modules compared with {escape(s['module_comparison'])}; frames from a free-running "
                        "MindSpore run.</p>")
    noise = report.get("noise")
    if noise and noise.get("runs"):
        rows = [[escape(r["side"]), escape(r["label"]),
                 "`" + escape(", ".join(f"#{d['order']} {d['who']} {d['shape']}" for d in r["draws"]))]
                for r in noise["runs"]]
        parts.append("<h3>Noise draw log</h3>" + md_table(["side", "run", "draws (order, caller, shape)"], rows))
        for m in noise.get("mismatches") or []:
            parts.append(f'<p class="no">{escape(str(m))}</p>')
    extra = {k: v for k, v in s.items() if k not in HEADER_SETTINGS}
    if extra:
        parts.append("<h3>Other settings</h3>" + md_table(["setting", "value"], [
            [escape(k), "`" + escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))]
            for k, v in extra.items()]))
    return _section("run", "Run", "".join(parts))


def render_html(report: dict, ref_frames: np.ndarray, our_frames: np.ndarray) -> str:
    s = report.get("settings") or {}
    title = f"Parity {s.get('pipeline', '?')} {s.get('dtype', '?')}: {'PASSED' if report.get('passed') else 'FAILED'}"
    depth = plot_error_vs_depth(report)
    body = "".join([
        _header(report), "<main>", _summary(report), _gates(report), _frames(report, ref_frames, our_frames),
        _section("depth", "Error against depth", _img(depth, "error against depth per component") if depth
                 else _missing()),
        _steps(report), _isolation(report), _weights(report), _baseline(report), _modules(report), _run(report),
        "</main>",
    ])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style><script>{JS}</script></head><body>{body}</body></html>\n")


def write_html(report: dict, out_dir: Path, ref_frames: np.ndarray, our_frames: np.ndarray) -> Path:
    """Writes OUT_DIR/report.html and returns its path."""
    path = Path(out_dir) / "report.html"
    path.write_text(render_html(report, np.asarray(ref_frames), np.asarray(our_frames)), encoding="utf-8")
    return path
