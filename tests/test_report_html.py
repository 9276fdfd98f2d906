"""Reports: report.md / report.html / frames.png / frames.gif from schema-2 (synthetic) and schema-1 (committed)
report dicts; the HTML is self-contained and renders in headless Chromium (screenshot not blank, images load)."""

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from parity.compare import frame_metrics
from parity.report_html import render_html, write_html
from parity.report_format import amplification, fmt_ssim
from parity.report_writer import markdown, write_reports

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["summary", "gates", "frames", "depth", "steps", "isolation", "weights", "baseline", "modules", "run"]
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def synthetic_frames(rng, shape=(2, 4, 16, 24, 3), noise=1e-3):
    ref = rng.random(shape)
    ours = np.clip(ref + noise * rng.standard_normal(shape), 0, 1)
    ours[0, min(2, shape[1] - 1), 4:8, 4:10] += 0.2  # one visibly wrong patch in one frame
    return ref, np.clip(ours, 0, 1)


def schema2_report(rng, ref, ours):
    """A failing run with every schema-2 section: the UNet breaks at one module and errors grow after it."""
    layers, order = [], 0
    for comp, n in (("image_encoder", 30), ("unet", 80), ("vae", 40)):
        for i in range(n):
            floor = float(10 ** rng.uniform(-8, -7))
            rel = float(floor * rng.uniform(0.5, 3)) * (1 + i / n)
            if comp == "unet" and i >= 50:
                rel = float(10 ** rng.uniform(-3, -1))
            bound = max(10 * floor, 1e-6)
            layers.append({"component": comp, "module": f"blocks.{i // 10}.layer.{i % 10}", "order": order,
                           "depth": 3, "shape": [1, 8, 4, 4], "calls": 3, "rel_l2": rel, "max_abs": rel * 3,
                           "cosine": 1 - rel, "worst_call": 1, "worst_step": i % 3, "floor": floor, "bound": bound,
                           "passed": rel <= bound})
            order += 1
    layers[40]["rel_l2"], layers[40]["passed"], layers[40]["error"] = float("inf"), False, "shape [1, 8] != [1, 9]"
    first = next(r for r in layers if not r["passed"])
    blocks = [f"unet.down_blocks.{i}" for i in range(4)] + ["unet.mid_block"] + \
        [f"unet.up_blocks.{i}" for i in range(4)]
    steps = [[float(10 ** rng.uniform(-7, -5)) if not (s == 0 and j == 3) else None for j in range(len(blocks))]
             for s in range(3)]
    for s in range(3):
        steps[s][6] = 3e-2  # the broken block at every step
    iso = [{"component": "unet", "module": b.split(".", 1)[1], "introduced_rel_l2": float(10 ** rng.uniform(-7, -6)),
            "inherited_rel_l2": float(10 ** rng.uniform(-7, -5)), "floor": 1e-7, "bound": 1e-6} for b in blocks]
    iso[6]["introduced_rel_l2"] = 2e-2
    for b in iso:
        b["ratio"] = b["introduced_rel_l2"] / b["bound"]
        b["passed"] = b["ratio"] <= 1
    iso.sort(key=lambda b: -b["ratio"])
    frames = {**frame_metrics(ours, ref), "passed": False}
    return {
        "schema_version": 2,
        "passed": False,
        "first_divergence": {"kind": "module", "call": 0, "step": 0, **{k: first[k] for k in (
            "component", "module", "shape", "rel_l2", "max_abs", "cosine", "bound")}},
        "worst_module": {k: first[k] for k in ("component", "module", "rel_l2", "max_abs", "shape", "bound")},
        "frames": frames,
        "gates": [{"name": "scheduler", "passed": True, "detail": "timesteps, sigmas equal", "max_abs": 0.0},
                  {"name": "image_preprocessing", "passed": True, "detail": "pixel values", "max_rel_l2": 1.2e-7},
                  {"name": "noise", "passed": False, "detail": "run 2 drew (1, 4) where the reference drew (1, 5)"}],
        "layers": layers,
        "isolation": {"unit": "down/mid/up blocks", "blocks": iso},
        "steps": {"blocks": blocks, "steps": [0, 1, 2], "rel_l2": steps},
        "weight_check": {"checked": 40, "total": 40, "seconds": 3.2, "passed": False, "mismatches": [
            {"component": "unet", "tensor": "up_blocks.2.attentions.0.to_q.weight",
             "expected_module": "up_blocks.2.attentions.0.to_q", "first_moved": "up_blocks.2.attentions.0.to_k"}]},
        "baseline": {"path": "reports/svd-tiny/fp32/report.json", "passed": False, "regressions": [
            {"component": "unet", "module": "up_blocks.2", "rel_l2": 3e-2, "baseline_rel_l2": 2e-6, "allowed": 4e-6}]},
        "coverage": {"compared_modules": len(layers), "compared_calls": 3 * len(layers), "reference_only": [],
                     "mindspore_only": ["unet.extra_norm"]},
        "problems": ["noise: run 2 drew (1, 4) where the reference drew (1, 5)"],
        "noise": {"seed": 0, "generator": "numpy PCG64", "mismatches": [], "runs": [
            {"side": "torch", "label": "reference", "draws": [{"order": 0, "who": "prepare_latents",
                                                                "shape": [1, 4, 4, 2, 3]}]}]},
        "settings": {"pipeline": "StableVideoDiffusionPipeline", "source": "build/fixtures/svd-tiny", "dtype": "fp32",
                     "seed": 0, "steps": 3, "frames": 4, "height": 16, "width": 24,
                     "bars": {"module": 1e-5, "frames": 1e-4}, "reference": "PyTorch fp32 (diffusers)"},
        "versions": {"mindspore": "2.8.0", "torch": "2.13.0"},
        "timings": {"convert_s": 0.5, "torch_s": 1.8, "mindspore_s": 6.1, "total_s": 20.0, "overhead": 1.6,
                    "peak_rss_mb": 1500.0, "peak_anon_mb": 900.0},
    }


def data_uris(html: str) -> list[tuple[str, bytes]]:
    found = re.findall(r'src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"', html)
    return [(mime, base64.b64decode(data)) for mime, data in found]


def assert_self_contained(html: str):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "external reference in the HTML"
    assert "<link" not in html and "@import" not in html and "url(" not in html
    imgs = html.count("<img")
    decoded = data_uris(html)
    assert imgs == len(decoded) > 0
    for mime, data in decoded:  # every embedded image decodes, and has a visible size
        im = PIL.Image.open(io.BytesIO(data))
        im.load()
        assert im.format.lower() == mime.split("/")[1] and im.width > 20 and im.height > 20


@pytest.fixture
def frames(rng):
    return synthetic_frames(rng)


def test_write_reports_schema2(tmp_path, rng, frames):
    ref, ours = frames
    report = schema2_report(rng, ref, ours)
    files = write_reports(report, tmp_path, ref, ours)
    assert files == {"md": "report.md", "html": "report.html", "frames_png": "frames.png", "frames_gif": "frames.gif"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files.values(), "report.json"])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["files"] == files and saved["frames"]["ssim"] == pytest.approx(report["frames"]["ssim"])
    gif = PIL.Image.open(tmp_path / "frames.gif")
    assert gif.n_frames == ref.shape[1]
    # 3 panels side by side, one row per video, upscaled (16x24 -> 80x120 at x5) under an 18-pixel title row
    assert gif.size[0] > 3 * 24 * 4 and gif.size[1] > 2 * 16 * 4
    png = PIL.Image.open(tmp_path / "frames.png")
    assert png.height > 2 * 3 * 16 * 4  # 2 videos x 3 rows, upscaled

    md = (tmp_path / "report.md").read_text()
    for heading in ("## Gates", "## First divergence", "## Frames", "## Isolation", "## Step x block",
                    "## Modules", "## Weight mapping check", "## Baseline", "## Problems", "## Run"):
        assert heading in md
    assert "Not measured in this run" not in md
    assert "| noise | False |" in md and "up_blocks.2.attentions.0.to_q.weight" in md
    assert "| image_preprocessing | True | pixel values | rel L2 1.200e-07 |" in md
    assert "| `unet.up_blocks.1` | 0 | 3.000e-02 | 3 |" in md  # worst cell of the broken block
    assert "floor | bound | rel L2 / bound | worst step" in md
    assert f"{report['frames']['per_frame'][2]['ssim']:.6f}" in md
    assert "capture overhead x1.60" in md and "peak anonymous RSS 900 MB" in md

    html = (tmp_path / "report.html").read_text()
    assert_self_contained(html)
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in html
    assert "Not measured in this run" not in html
    assert 'class="verdict fail">FAILED' in html
    # strips (2 videos) + GIF + per-frame plot + depth + heatmap + isolation
    mimes = [m for m, _ in data_uris(html)]
    assert mimes.count("image/gif") == 1 and len(mimes) == 2 + 1 + 4
    assert "amplified <b>x10</b>" in html  # the 0.2 patch: gain 10
    assert html.count("<details>") == 1 + 3  # step x block worst cells + one full table per component
    first = report["first_divergence"]
    assert f"<code>{first['component']}.{first['module']}</code> (call 0, step 0" in html.split('id="gates"')[0]


def test_amplification_is_a_power_of_ten_that_shows_the_difference(rng):
    ref = rng.random((1, 2, 8, 8, 3))
    assert amplification(ref, ref) == 1.0
    for err, amp in ((3e-6, 1e6), (2e-5, 1e5), (0.04, 100.0), (0.5, 10.0), (2.0, 1.0), (1e-12, 1e6)):
        ours = ref.copy()
        ours[0, 1, 3, 3, 0] += err
        assert amplification(ref, ours) == amp
        assert 1 <= err * amp < 10 or (err, amp) in ((2.0, 1.0), (1e-12, 1e6))


FAST_REPORTS = ("svd-tiny/fp32", "animatediff-tiny/fp16", "i2vgen-xl-tiny/fp32")  # one per pipeline
COMMITTED = sorted(p.parent.relative_to(ROOT / "reports").as_posix()
                   for p in (ROOT / "reports").glob("*/*/report.json"))


@pytest.mark.parametrize("name", [n if n in FAST_REPORTS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in COMMITTED])
def test_committed_reports_render(tmp_path, rng, name):
    """The committed report.json files (schema 1 until `make reports` regenerates them: no gates, floors,
    isolation...) render through write_reports, and the sections they lack say so."""
    report = json.loads((ROOT / "reports" / name / "report.json").read_text())
    schema1 = report.get("schema_version", 1) == 1
    ref = rng.random(report["frames"]["shape"])
    ours = np.clip(ref + 1e-6 * rng.standard_normal(ref.shape), 0, 1)
    files = write_reports(report, tmp_path, ref, ours)
    assert all((tmp_path / f).is_file() for f in files.values())
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    if schema1:  # gates, isolation, step x block, weight check
        assert md.count("Not measured in this run.") == 4 and html.count("Not measured in this run.") == 4
    assert_self_contained(html)
    assert f'class="verdict {"pass" if report["passed"] else "fail"}"' in html
    assert html.count("<details>") >= len({r["component"] for r in report["layers"]})


def test_minimal_and_broken_reports_render(tmp_path, rng):
    """Sections missing altogether, frames that could not be compared, and non-finite numbers: no KeyError."""
    minimal = {"passed": False, "settings": {}}
    md = markdown(minimal)
    assert "FAILED" in md and md.count("Not measured in this run.") == 7
    html = render_html(minimal, np.zeros(0), np.zeros(0))
    assert "No frames were given" in html and html.count("Not measured in this run.") == 7
    ref, ours = synthetic_frames(rng, (1, 2, 8, 8, 3))
    report = schema2_report(rng, ref, ours)
    report["frames"] = {"rel_l2": float("inf"), "max_abs": float("inf"), "psnr": 0.0, "passed": False,
                        "error": "frames shape [1, 2, 8, 8, 3] != reference [1, 3, 8, 8, 3]"}
    report["steps"]["rel_l2"] = [[None] * len(report["steps"]["blocks"])] * 3  # nothing ran: no heatmap
    report["first_divergence"] = {"kind": "gate", "gate": "noise", "detail": "draw shapes differ"}
    files = write_reports(report, tmp_path, ref, ours[:, :1])
    assert "frames_png" not in files and not (tmp_path / "frames.gif").exists()
    html = (tmp_path / "report.html").read_text()
    assert "frames shape [1, 2, 8, 8, 3] != reference" in html and "gate <code>noise</code> failed" in html
    assert_self_contained(html)
    assert "gate `noise` failed: draw shapes differ" in (tmp_path / "report.md").read_text()
    # a weight check that lists every tensor in `rows` (no `mismatches`): the failing rows are the mismatches
    report["weight_check"] = {"checked": 2, "total": 9, "passed": False, "rows": [
        {"component": "vae", "tensor": "a.weight", "expected_module": "a", "first_moved": "a", "passed": True},
        {"component": "vae", "tensor": "b.weight", "expected_module": "b", "first_moved": "c", "passed": False}]}
    md = markdown(report)
    assert "2 of 9 tensors perturbed one at a time" in md and "1 mismatches" in md
    assert "| vae | `b.weight` | `b` | `c` |" in md and "`a.weight`" not in md


def test_ssim_is_shown_with_its_distance_from_one():
    assert fmt_ssim(0.98765432) == "0.987654" and fmt_ssim(1 - 2e-10) == "1 - 2.0e-10" and fmt_ssim(1.0) == "1"
    assert fmt_ssim(None) == "—"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium/chromium-browser/google-chrome on PATH "
                                             "(Debian: apt-get install chromium)")
def test_html_renders_in_headless_chromium(tmp_path, rng, frames):
    ref, ours = frames
    report = schema2_report(rng, ref, ours)
    path = write_html(report, tmp_path, ref, ours)
    n_img = path.read_text().count("<img")
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run(base + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-images-loaded="(\d+)"', dom.stdout)
    assert m, f"no image count in the DOM (the load script did not run): {dom.stderr[-2000:]}"
    assert int(m.group(1)) == n_img and int(m.group(2)) == n_img, f"{m.group(2)} of {n_img} images loaded"
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,3000", path.as_uri()], capture_output=True,
                   timeout=120)
    assert shot.is_file(), "chromium wrote no screenshot"
    px = np.asarray(PIL.Image.open(shot).convert("RGB"), dtype=np.float64)
    assert px.shape[:2] == (3000, 1400)
    assert px.std() > 20, f"screenshot looks blank (pixel std {px.std():.1f})"
    # the red FAILED badge and the plots' colours are on screen, not only white and text grey
    assert ((px[..., 0] > 180) & (px[..., 1] < 80) & (px[..., 2] < 80)).sum() > 200
