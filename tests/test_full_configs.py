"""The released configs shipped in parity/full/configs build the same architecture in diffusers / transformers and
in mindport: equal parameter tensor counts and equal parameter counts, per component (no weights are drawn: the
reference side is built on torch's meta device, ours with lazily initialised parameters).

The UNets (0.9-1.5 B parameters, about 15 s each to construct as MindSpore cells) are marked slow; the slow test at
the end also runs one full-size component comparison (the SVD-xt VAE encoder) and checks its numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from converters import converter_for  # noqa: E402
from mindport.models import model_class  # noqa: E402
from parity.full import NAMES  # noqa: E402
from parity.full.build import CONFIGS, MODELS, construct, read_config  # noqa: E402
from parity.full.components import COMPONENTS, run_component  # noqa: E402

# (name, folder, diffusers/transformers class of the saved component) for every model component
CASES = [(n, f) for n in NAMES for f, _, _ in MODELS[n]]
# released parameter counts (millions, rounded) that the configs must reproduce
EXPECTED_M = {("svd-xt", "unet"): 1525, ("svd-xt", "vae"): 98, ("svd-xt", "image_encoder"): 632,
              ("i2vgen-xl", "unet"): 1420, ("i2vgen-xl", "vae"): 84, ("i2vgen-xl", "text_encoder"): 353,
              ("i2vgen-xl", "image_encoder"): 632, ("animatediff-v1-5-2", "motion_adapter"): 453,
              ("animatediff-v1-5-2", "unet"): 1313, ("animatediff-v1-5-2", "vae"): 84,
              ("animatediff-v1-5-2", "text_encoder"): 123,
              ("wan2.1-t2v-1.3b", "transformer"): 1419, ("wan2.1-t2v-1.3b", "vae"): 127,
              ("wan2.1-t2v-1.3b", "text_encoder"): 5681, ("wan2.1-i2v-14b-480p", "transformer"): 16395,
              ("wan2.1-i2v-14b-480p", "vae"): 127, ("wan2.1-i2v-14b-480p", "text_encoder"): 5681,
              ("wan2.1-i2v-14b-480p", "image_encoder"): 631}


def _slow(name: str, folder: str) -> bool:
    """Billion-parameter models take long to construct as (lazily initialised) MindSpore cells."""
    return folder == "unet" or (name.startswith("wan") and folder in ("transformer", "text_encoder"))


def _reference_on_meta(name: str, folder: str):
    """The diffusers / transformers component as the built folder holds it (AnimateDiff: the UNetMotionModel merged
    from the SD 1.5 UNet and the adapter), parameters on the meta device."""
    with torch.device("meta"):
        if name == "animatediff-v1-5-2" and folder == "unet":
            from diffusers import UNetMotionModel

            return UNetMotionModel.from_unet2d(construct(name, "unet"), construct(name, "motion_adapter"),
                                               load_weights=False)
        return construct(name, folder)


def _ours(class_name: str, config: dict):
    conv = converter_for(class_name, "test")
    return model_class(class_name).from_config(conv.convert_config(config))


@pytest.mark.parametrize("name, folder", [
    pytest.param(n, f, marks=[pytest.mark.slow] if _slow(n, f) else []) for n, f in CASES])
def test_released_config_builds_the_same_architecture_on_both_sides(name, folder):
    ref = _reference_on_meta(name, folder)
    class_name = type(ref).__name__
    config = dict(ref.config) if hasattr(ref.config, "keys") else ref.config.to_dict()
    ours = _ours(class_name, config)
    ref_shapes = sorted(tuple(p.shape) for p in ref.parameters())
    our_shapes = sorted(tuple(p.shape) for _, p in ours.parameters_and_names())
    ref_n = sum(int(np.prod(s)) for s in ref_shapes)
    our_n = sum(int(np.prod(s)) for s in our_shapes)
    assert (len(our_shapes), our_n) == (len(ref_shapes), ref_n), f"{name}/{folder} ({class_name})"
    assert our_shapes == ref_shapes
    assert round(ref_n / 1e6) == EXPECTED_M[(name, folder)], f"{name}/{folder}: {ref_n / 1e6:.1f} M parameters"


def test_every_component_comparison_names_a_shipped_config():
    for name, comps in COMPONENTS.items():
        assert name in NAMES
        for folder, class_name, *_ in comps.values():
            assert (CONFIGS / name / folder / "config.json").exists()
            assert any(f == folder for f, _, _ in MODELS[name]), (name, folder)


@pytest.mark.parametrize("bad, message", [
    ("svd", "unknown released config 'svd'; expected one of animatediff-v1-5-2, i2vgen-xl, svd-xt, "
            "wan2.1-i2v-14b-480p, wan2.1-t2v-1.3b"),
])
def test_unknown_config_is_named_with_the_choices(bad, message):
    with pytest.raises(ValueError, match=message):
        read_config(bad, "unet")


def test_unknown_component_is_named_with_the_choices():
    with pytest.raises(ValueError, match="svd-xt has no component 'text_encoder'; expected one of image_encoder, "
                                         "vae.encode, vae.decode, unet"):
        run_component("svd-xt", "text_encoder")


def test_cli_bad_name_exits_2_with_one_line(capsys):
    from parity.full.__main__ import main

    assert main(["components", "svd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown released config 'svd'; expected one of animatediff-v1-5-2, i2vgen-xl, svd-xt, "
                   "wan2.1-i2v-14b-480p, wan2.1-t2v-1.3b"]


@pytest.mark.slow
def test_full_size_svd_vae_encoder_matches_pytorch(tmp_path):
    """Builds svd-xt (cached in build/full; ~2 min and 7 GB the first time), then the VAE encoder at full size."""
    r = run_component("svd-xt", "vae.encode", "fp32")
    assert r["passed"], json.dumps(r["first_divergence"])
    assert r["modules_compared"] > 90 and not r["coverage"]["reference_only"]
    assert r["output"]["rel_l2"] < 1e-5 and r["output"]["shape"] == [2, 4, 8, 8]
    assert r["memory"]["peak_anon_mb"] > 0 and r["timings"]["mindspore_forward_s"] > 0


def _row(component, rel, passed=True, peak=1000.0):
    worst = {"module": "a.b", "rel_l2": rel, "max_abs": rel, "shape": [2], "floor": 0.0, "bound": 1e-6}
    return {"component": component, "class": "X", "parameters": 5e6, "passed": passed, "modules_compared": 10,
            "modules_failed": 0 if passed else 1, "failed_modules": [] if passed else [worst], "wall_s": 5.0,
            "nonfinite_count": 0, "nonfinite_modules": [], "worst_module": worst, "worst_modules": [worst],
            "output": {"rel_l2": rel, "max_abs": rel, "finite": True}, "reference_absmax": {"value": 3.0},
            "inputs": {"x": [2]}, "timings": {}, "first_divergence": None,
            "memory": {"peak_anon_mb": peak, "baseline_anon_mb": 24.0, "peak_rss_mb": peak}}


def test_readme_summary_replaces_only_the_marked_block(tmp_path):
    from parity.full.summary import END, START, update_readme

    comp = tmp_path / "reports" / "svd-xt" / "components" / "fp32"
    comp.mkdir(parents=True)
    comp.joinpath("components.json").write_text(json.dumps(
        {"name": "svd-xt", "dtype": "fp32", "seed": 0, "settings": {}, "reference": "r", "passed": False,
         "bars": {"module": 1e-5, "frames": 1e-4}, "components": [_row("vae.encode", 2e-6), _row("unet", 3e-6, passed=False, peak=11000.0)]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{START}\nold table\n{END}\nafter\n")
    update_readme(readme, tmp_path / "reports")
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{END}\nafter\n") and "old table" not in text
    row = [line for line in text.splitlines() if line.startswith("| svd-xt")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[:3] == ["svd-xt", "fp32", f"[1/2]({tmp_path / 'reports'}/svd-xt/components/fp32/components.md)"]
    assert cells[3:8] == ["20", "unet.`a.b` (3.0e-06)", "unet.`a.b`", "10 s", "10.8 GB (unet)"]
    assert cells[8] == "not run" and cells[-1] == "no / yes"  # beyond a floor bound, within the bars
    md = comp.joinpath("components.md").read_text()  # re-rendered from components.json
    assert "**FAILED** against each module's noise-floor bound; **PASSED** against the fixed bars" in md
    assert "- `a.b`: rel L2 3.00e-06, floor 0.0e+00, bound 1.0e-06" in md
    # no markers yet: the block is appended
    readme.write_text("# y\n")
    update_readme(readme, tmp_path / "reports")
    assert readme.read_text().startswith("# y\n\n" + START)
