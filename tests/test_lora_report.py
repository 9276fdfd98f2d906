"""The committed LoRA parity report (reports/animatediff-tiny-lora): its LoRA files are regenerated bit for bit by
parity.lora.tiny_loras (seeded), so anyone can rerun `python -m parity.make_reports animatediff-tiny-lora`."""

import hashlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "reports" / "animatediff-tiny-lora" / "fp32" / "report.json"


def test_committed_lora_report_records_the_seeded_files(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from parity.fixtures import build
    from parity.lora import tiny_loras
    from parity.make_reports import CASES, LORA_SCALES

    report = json.loads(REPORT.read_text())
    assert report["passed"]
    name = "animatediff-tiny-lora/fp32"
    assert any(c[0] == name for c in CASES)
    # a fresh copy of the fixture's weight files (the LoRAs are cached next to the fixture: write them elsewhere)
    folder = build("animatediff-tiny")
    fake = tmp_path / "fixture"
    for comp, file in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors"),
                       ("motion_adapter", "diffusion_pytorch_model.safetensors")):
        (fake / comp).mkdir(parents=True)
        (fake / comp / file).symlink_to(folder / comp / file)
    files = tiny_loras(fake)
    assert all(f.parent.parent == tmp_path for f in files)
    got = [(hashlib.sha256(f.read_bytes()).hexdigest(), s) for f, s in zip(files, LORA_SCALES[name])]
    assert got == [(r["sha256"], r["scale"]) for r in report["settings"]["loras"]]
    assert tiny_loras(fake) == files  # cached


def test_tiny_loras_refuses_a_folder_without_targets(tmp_path):
    pytest.importorskip("safetensors")
    import numpy as np
    from safetensors.numpy import save_file

    from converters import ConversionError
    from parity.lora import tiny_loras

    for comp, file in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors"),
                       ("motion_adapter", "diffusion_pytorch_model.safetensors")):
        (tmp_path / "f" / comp).mkdir(parents=True)
        save_file({"x.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "f" / comp / file))
    with pytest.raises(ConversionError, match="no LoRA targets found"):
        tiny_loras(tmp_path / "f")
    assert not list(tmp_path.glob("*loras*")) and not list(tmp_path.glob(".*"))


WAN_REPORT = ROOT / "reports" / "wan-tiny-lora" / "fp32" / "report.json"


def test_committed_wan_lora_report_records_the_seeded_files(tmp_path):
    """reports/wan-tiny-lora/fp32 (`mindport parity wan-t2v-tiny --lora peft:0.8 --lora original:1.2`): passed,
    and its two files are what parity.lora.case_loras writes for the fixture (sha256)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from parity.fixtures import build
    from parity.lora import case_loras

    report = json.loads(WAN_REPORT.read_text())
    assert report["passed"] and report["weight_check"]["passed"]
    fake = tmp_path / "fixture" / "transformer"
    fake.mkdir(parents=True)
    weights = "diffusion_pytorch_model.safetensors"
    (fake / weights).symlink_to(build("wan-t2v-tiny") / "transformer" / weights)
    files = case_loras(tmp_path / "fixture")
    assert [f.name for f in files] == ["wan_peft.safetensors", "wan_original.safetensors"]
    got = [(hashlib.sha256(f.read_bytes()).hexdigest(), s) for f, s in zip(files, (0.8, 1.2))]
    assert got == [(r["sha256"], r["scale"]) for r in report["settings"]["loras"]]


def test_tiny_wan_loras_refuses_a_folder_without_blocks(tmp_path):
    pytest.importorskip("safetensors")
    import numpy as np
    from safetensors.numpy import save_file

    from converters import ConversionError
    from parity.lora import tiny_wan_loras

    (tmp_path / "f" / "transformer").mkdir(parents=True)
    save_file({"proj_out.weight": np.zeros((2, 2), np.float32)},
              str(tmp_path / "f" / "transformer" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ConversionError, match="no Wan transformer blocks found"):
        tiny_wan_loras(tmp_path / "f")
    assert not list(tmp_path.glob("*loras*"))
