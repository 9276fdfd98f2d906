"""What the Markdown and HTML reports share: number formatting, the frame strips and GIF, the one-line descriptions
of gates, divergences and the run (parity/report_writer.py writes the files, parity/report_html.py the page)."""

from __future__ import annotations

import io
import math

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

NOT_MEASURED = "Not measured in this run."
PANEL = 128  # frames are upscaled (nearest) until their longer side reaches this, so tiny frames stay visible
MAX_PANEL = 384  # and larger frames are reduced (area) below this, so the strips of real checkpoints stay small


def fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.3e}"
    return str(x)


def fmt_db(x) -> str:
    return "—" if x is None else ("inf" if math.isinf(x) else f"{x:.1f}")


def fmt_ssim(x) -> str:
    """0.987654 as is; values within 1e-6 of 1 as "1 - 2.0e-10", so near-identical frames still differ."""
    if x is None or x == 1:
        return "—" if x is None else "1"
    return f"{x:.6f}" if x < 1 - 1e-6 else f"1 - {1 - x:.1e}"


def gate_measure(g: dict) -> str:
    """A gate's worst number, whichever the gate records."""
    for key, label in (("max_abs", "max abs"), ("max_rel_l2", "rel L2")):
        if g.get(key) is not None:
            return f"{label} {fmt(g[key])}"
    return "—"


def weight_mismatches(wc: dict) -> list[dict]:
    """The tensors whose perturbation moved another module first (`mismatches`, else the failing `rows`)."""
    return wc.get("mismatches") or [r for r in wc.get("rows", []) if r.get("passed", True) is False]


def weight_unchecked_note(wc: dict) -> str:
    """" (N not checkable: why)" for tensors whose component could not be re-run on the reference's inputs."""
    rows = [r for r in wc.get("rows", []) if r.get("passed", True) is None]
    return f" ({len(rows)} not checkable: {rows[0]['detail']})" if rows else ""


def ratio(row: dict):
    """rel_l2 / bound: how close a module (or block) is to its bar; None where the run has no bound."""
    b = row.get("bound")
    return None if not b else row["rel_l2"] / b


def worst_rows(layers: list[dict], n: int) -> list[dict]:
    """The n modules nearest to (or furthest beyond) their bound; by rel L2 when the run has no bounds."""
    return sorted(layers, key=lambda r: -(ratio(r) if ratio(r) is not None else r["rel_l2"]))[:n]


def step_block_worst(steps: dict) -> list[dict]:
    """Per block of the step x block matrix: its worst cell (step, rel L2), in the matrix's block order."""
    rows = []
    for j, block in enumerate(steps.get("blocks", [])):
        cells = [(row[j], s) for s, row in zip(steps.get("steps", []), steps.get("rel_l2", [])) if row[j] is not None]
        if cells:
            worst, step = max(cells, key=lambda c: c[0])  # the earliest step on ties
            rows.append({"block": block, "step": step, "rel_l2": worst, "steps": len(cells)})
    return rows


# --- frame images -------------------------------------------------------------------------------------------------

def amplification(ref: np.ndarray, ours: np.ndarray) -> float:
    """The difference is shown x this: the power of ten that brings the largest difference into [1, 10), so the
    worst pixels saturate and the pattern of smaller ones shows (1 when the largest is 1 or more; at most 1e6)."""
    m = float(np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64)).max()) if ref.size else 0.0
    if not np.isfinite(m) or m <= 0:
        return 1.0
    return float(10 ** min(6, max(0, math.ceil(-math.log10(m)))))


def gain(amplify: float) -> str:
    """10 -> "10", 100000 -> "1e5"."""
    return f"{amplify:.0e}".replace("e+0", "e") if amplify >= 1000 else f"{amplify:g}"


def amp_label(amplify: float) -> str:
    return f"|diff| x{gain(amplify)}"


def _panel(frame: np.ndarray, reduce=np.mean) -> np.ndarray:
    """(H, W, C) in [0, 1] -> uint8 (h, w, 3) resized for display (nearest up, `reduce` over k x k blocks down)."""
    f = np.clip(np.nan_to_num(np.asarray(frame, np.float64), nan=1.0), 0, 1)
    if f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    longer = max(f.shape[:2])
    if longer > MAX_PANEL:
        k = math.ceil(longer / MAX_PANEL)
        h, w = f.shape[0] // k * k, f.shape[1] // k * k
        f = reduce(f[:h, :w].reshape(h // k, k, w // k, k, -1), axis=(1, 3))
    else:
        s = math.ceil(PANEL / longer)
        f = f.repeat(s, axis=0).repeat(s, axis=1)
    return (f * 255).round().astype(np.uint8)


def _font(size: int = 12):
    return PIL.ImageFont.load_default(size=size)


def _labelled(rows: list[np.ndarray], labels: list[str], left: int = 96) -> PIL.Image.Image:
    """Stack image rows vertically with a label column on the left."""
    body = np.concatenate(rows, axis=0)
    img = PIL.Image.new("RGB", (body.shape[1] + left, body.shape[0]), "white")
    img.paste(PIL.Image.fromarray(body), (left, 0))
    draw, font, y = PIL.ImageDraw.Draw(img), _font(), 0
    for row, label in zip(rows, labels):
        draw.text((6, y + row.shape[0] // 2), label, fill="black", font=font, anchor="lm")
        y += row.shape[0]
    return img


def strip_image(ref: np.ndarray, ours: np.ndarray, amplify: float) -> PIL.Image.Image:
    """One video (F, H, W, C): rows PyTorch, MindSpore, |difference| x amplify; frames left to right."""
    sep = lambda p: np.pad(p, ((0, 2), (0, 2), (0, 0)), constant_values=255)  # noqa: E731 - white grid lines
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64)) * amplify
    rows = [np.concatenate([sep(_panel(f, reduce)) for f in x], axis=1)
            for x, reduce in ((ref, np.mean), (ours, np.mean), (diff, np.max))]
    return _labelled(rows, ["PyTorch", "MindSpore", amp_label(amplify)])


def strips_png(ref: np.ndarray, ours: np.ndarray, amplify: float) -> bytes:
    """frames.png: the strips of every video (B, F, H, W, C), one under the other."""
    imgs = [strip_image(r, o, amplify) for r, o in zip(ref, ours)]
    canvas = PIL.Image.new("RGB", (max(i.width for i in imgs), sum(i.height + 8 for i in imgs)), "white")
    y = 0
    for i in imgs:
        canvas.paste(i, (0, y))
        y += i.height + 8
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def side_by_side_gif(ref: np.ndarray, ours: np.ndarray, amplify: float, ms_per_frame: int = 500) -> bytes:
    """frames.gif: per frame, PyTorch | MindSpore | |difference| x amplify side by side, one row per video."""
    titles = ["PyTorch", "MindSpore", amp_label(amplify)]
    font, head = _font(), 34
    frames = []
    for f in range(ref.shape[1]):
        rows = []
        for r, o in zip(ref, ours):
            diff = np.abs(np.asarray(o[f], np.float64) - np.asarray(r[f], np.float64)) * amplify
            panels = [_panel(r[f]), _panel(o[f]), _panel(diff, np.max)]
            rows.append(np.concatenate([np.pad(p, ((0, 4), (0, 4), (0, 0)), constant_values=255) for p in panels], 1))
        body = np.concatenate(rows, axis=0)
        img = PIL.Image.new("RGB", (body.shape[1], body.shape[0] + head), "white")
        img.paste(PIL.Image.fromarray(body), (0, head))
        draw, pw = PIL.ImageDraw.Draw(img), body.shape[1] // 3
        draw.text((2, 9), f"frame {f + 1}/{ref.shape[1]}", fill="black", font=font, anchor="lm")
        for i, t in enumerate(titles):
            draw.text((i * pw + 2, 26), t, fill="black", font=font, anchor="lm")
        frames.append(img)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return buf.getvalue()


# --- report.md ----------------------------------------------------------------------------------------------------

def md_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def module_row(r: dict, with_bounds: bool) -> list:
    row = [r["component"], f"`{r['module']}`", r.get("shape"), fmt(r["rel_l2"]), fmt(r.get("max_abs")),
           f"{r['cosine']:.7f}" if "cosine" in r else "—"]
    if with_bounds:
        row += [fmt(r.get("floor")), fmt(r.get("bound")), fmt(ratio(r)), r.get("worst_step", "—")]
    return row + [r["passed"] if "error" not in r else f"False ({r['error']})"]


def divergence_summary(fd: dict | None) -> str:
    """One plain line for a first divergence: "none", "gate NAME: detail" or "component.module (rel L2 x, bound y)"
    (the command's summary line and mindport.testing's assertion message)."""
    if fd is None:
        return "none"
    if fd.get("kind") == "gate":
        return f"gate {fd['gate']}: {fd['detail']}"
    return f"{fd['component']}.{fd['module']} (rel L2 {fd['rel_l2']:.3e}, bound {fd['bound']:.1e})"


def describe_divergence(fd: dict) -> str:
    if fd.get("kind") == "gate":
        return f"gate `{fd.get('gate')}` failed: {fd.get('detail', '')}"
    where = f"`{fd['component']}.{fd['module']}`"
    step = f", step {fd['step']}" if fd.get("step") is not None else ""
    bound = f" > bound {fmt(fd['bound'])}" if fd.get("bound") is not None else ""
    return (f"{where} (call {fd.get('call', '—')}{step}, shape {fd.get('shape', '—')}): relative L2 "
            f"{fmt(fd['rel_l2'])}{bound}, max abs {fmt(fd.get('max_abs'))}.")


def run_lines(report: dict) -> list[str]:
    """Noise, time, memory and versions, one bullet each (shared by report.md and report.html)."""
    lines = []
    n = report.get("noise")
    if n and n.get("runs"):
        draws = ", ".join(f"{d['who']}{d['shape']}" for d in n["runs"][0]["draws"])
        lines.append(f"noise: {n.get('generator', '?')} seed {n.get('seed', '?')}, {len(n['runs'])} runs, "
                     f"draws per run: {draws}")
    t = report.get("timings") or {}
    secs = [f"{k[:-2].replace('_', ' ')} {v:.1f} s" for k, v in t.items() if k.endswith("_s") and v is not None]
    if secs:
        lines.append("time: " + ", ".join(secs))
    mem = []
    if t.get("overhead") is not None:
        mem.append(f"capture overhead x{t['overhead']:.2f} (time with capture / without)")
    if t.get("activations_mb") is not None:
        mem.append(f"captured activations {t['activations_mb']:.0f} MB")
    if t.get("peak_anon_mb") is not None:
        mem.append(f"peak anonymous RSS {t['peak_anon_mb']:.0f} MB above baseline")
    if t.get("peak_rss_mb") is not None:
        mem.append(f"peak RSS {t['peak_rss_mb']:.0f} MB")
    if mem:
        lines.append("memory: " + "; ".join(mem))
    if report.get("versions"):
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    return lines
