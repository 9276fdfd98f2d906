"""The README summary of the full-size comparisons: one row per released pipeline and dtype, from the committed
reports (components: reports/full/NAME/components/DTYPE/components.json; pipeline, written by
`mindport parity --config-only NAME`: reports/full/NAME/DTYPE/report.json)."""

from __future__ import annotations

import json
from pathlib import Path

from .build import NAMES
from .components import bar_verdict_all, components_markdown

REPORTS = Path("reports/full")
START, END = "<!-- parity-full:start -->", "<!-- parity-full:end -->"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def summary_rows(reports: Path = REPORTS) -> list[str]:
    rows = []
    for name in NAMES:
        for dtype in ("fp32", "fp16"):
            comp = _load(reports / name / "components" / dtype / "components.json")
            pipe = _load(reports / name / dtype / "report.json")
            if comp is None and pipe is None:
                continue
            cells = [name, dtype]
            if comp is not None:
                ok = [r for r in comp["components"] if "error" not in r]
                worst = max(ok, key=lambda r: r["worst_module"]["rel_l2"] if r["worst_module"] else 0, default=None)
                w = worst and worst["worst_module"]
                peak = max(ok, key=lambda r: r["memory"]["peak_anon_mb"] + r["memory"]["baseline_anon_mb"], default=None)
                link = f"[{sum(r['passed'] for r in comp['components'])}/{len(comp['components'])}]" \
                       f"({reports / name / 'components' / dtype / 'components.md'})"
                beyond = [f"{r['component']}.`{f['module']}`" for r in ok for f in r.get("failed_modules", [])] or [
                    f"{r['component']}: {r['modules_failed']} modules" for r in ok if r["modules_failed"]]  # older rows
                cells += [link, str(sum(r["modules_compared"] for r in ok)),
                          f"{worst['component']}.`{w['module']}` ({w['rel_l2']:.1e})" if w else "",
                          ", ".join(beyond[:3]) + (f" (+{len(beyond) - 3})" if len(beyond) > 3 else "") or "none",
                          f"{sum(r.get('wall_s', 0) for r in comp['components']):.0f} s",
                          f"{(peak['memory']['peak_anon_mb'] + peak['memory']['baseline_anon_mb']) / 1024:.1f} GB "
                          f"({peak['component']})" if peak else ""]
            else:
                cells += ["not run"] + [""] * 5
            if pipe is not None:
                t = pipe.get("timings", {})
                peak_mb = t["peak_anon_mb"] + t.get("baseline_anon_mb", 0) if "peak_anon_mb" in t else None
                cells += [f"[{pipe['frames']['rel_l2']:.2e}]({reports / name / dtype / 'report.md'})",
                          f"{pipe['coverage']['compared_modules']}",
                          f"{t.get('total_s', sum(v for k, v in t.items() if k.endswith('_s'))):.0f} s",
                          f"{peak_mb / 1024:.1f} GB" if peak_mb else ""]
            else:
                cells += ["not run", "", "", ""]
            floor_ok = all(x["passed"] for x in (comp, pipe) if x is not None)
            bars_ok = (comp is None or bar_verdict_all(comp)) and (pipe is None or pipe["frames"].get("passed", False))
            rows.append("| " + " | ".join(cells + [f"{'yes' if floor_ok else 'no'} / {'yes' if bars_ok else 'no'}"]) + " |")
    return rows


INTRO = """\
Released architectures with random weights (`make parity-full`; not run in CI: about two hours on 2 cores). The configs
of `stabilityai/stable-video-diffusion-img2vid-xt`, `ali-vilab/i2vgen-xl` and `guoyww/animatediff-motion-adapter-v1-5-2`
on SD 1.5 ship in `parity/full/configs` (config.json values only, sources in its README); every parameter is drawn
from a seeded normal and saved with diffusers / transformers, then converted by our converter. Each component (UNet,
VAE encoder and decoder, image and text encoders) is compared at full size on 64x64 pixels, 2 frames, a guidance batch
of 2, in its own process: PyTorch fp32 captured to disk, a float64 pass for each module's noise floor, the PyTorch model
dropped, then MindSpore (fp32, or fp16 against the same fp32 reference). fp32 modules are judged against
max(10 x floor, 1e-6), fp16 modules against 5e-2, component outputs against 1e-4 / 1e-2. Peak memory is the largest
component's anonymous RSS (file-backed pages of memory-mapped weights not counted; VmHWM in the reports). The pipeline
columns come from `mindport parity --config-only NAME` (2 steps). *passed*: every module within its noise-floor
bound / within the fixed bars (fp32 modules 1e-5, outputs 1e-4; fp16 5e-2, 1e-2). A `time_proj` or the two time-embedding
modules after it beyond their floor bound is PyTorch's float32 `exp`: diffusers computes the sinusoid's
frequencies in float32 even in the float64 pass (floor 0), and `torch.exp` is 1 ulp off the correctly rounded value
at 3 of the 160 frequencies of a `freq_shift` 0 embedding (I2VGen-XL, SD 1.5), which mindport computes correctly
rounded; at timestep 501 the 1-ulp angle difference is 2.8e-5 absolute, 2.7e-6 relative."""


def fp16_line(reports: Path = REPORTS) -> str:
    """What fp16 has to hold: non-finite outputs and the largest reference activation over every fp16 comparison."""
    rows = [r for p in sorted(reports.glob("*/components/fp16/components.json"))
            for r in json.loads(p.read_text())["components"] if "error" not in r]
    if not rows:
        return ""
    peak = max(rows, key=lambda r: r["reference_absmax"]["value"])
    nonfinite = sum(r["nonfinite_count"] for r in rows)
    v = peak["reference_absmax"]["value"]
    return (f"fp16: {nonfinite} non-finite module outputs in {len(rows)} component comparisons; the largest reference "
            f"activation is {v:.1f} (`{peak['reference_absmax']['module']}`), {65504 / v:.0f}x below fp16's maximum: "
            "random weights (N(0, 1/fan_in)) keep activations small, so overflow that trained weights may provoke (the "
            "SD VAE's `force_upcast`) is not exercised here.")


def summary_table(reports: Path = REPORTS) -> str:
    head = [INTRO, "",
            "| config | dtype | components passed | modules | worst module (rel L2) | beyond floor bound | time | "
            "peak RssAnon | pipeline frames rel L2 | pipeline modules | pipeline time | pipeline peak | "
            "passed (floor bounds / bars) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + summary_rows(reports) + ["", fp16_line(reports)])


def update_readme(readme: Path = Path("README.md"), reports: Path = REPORTS) -> None:
    """Re-render every components.md from its components.json, then replace the text between the parity-full
    markers of the README (appended at the end when the markers are missing)."""
    for path in sorted(reports.glob("*/components/*/components.json")):
        path.with_suffix(".md").write_text(components_markdown(json.loads(path.read_text())))
    text = readme.read_text()
    block = f"{START}\n{summary_table(reports)}\n{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)
