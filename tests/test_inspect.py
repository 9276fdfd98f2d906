"""`mindport inspect`: pipeline folders, component folders, single files (diffusers safetensors, `.bin`, SD 1.5 / SVD
original releases, motion modules) and converted folders: architecture, parameter count, dtypes, size, and whether
it is a PyTorch or a converted checkpoint — checked against counts computed here from the tensors."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from converters.safetensors_io import load_safetensors, save_arrays  # noqa: E402
from mindport.cli import main  # noqa: E402
from mindport.describe import describe  # noqa: E402
from mindport.loading import convert_checkpoint  # noqa: E402
from parity.fixtures import build  # noqa: E402


@pytest.fixture(scope="module")
def svd(tmp_path_factory):
    src = build("svd-tiny")
    out = tmp_path_factory.mktemp("inspect") / "converted"
    convert_checkpoint(src, out, dtype="fp16", progress=False)
    return src, out


def _count(path):
    arrays = load_safetensors(path)
    return sum(a.size for a in arrays.values()), sum(a.nbytes for a in arrays.values())


def test_pipeline_and_converted_folders(svd, capsys):
    src, out = svd
    info = describe(src)
    params, size = _count(src / "unet" / "diffusion_pytorch_model.safetensors")
    assert info["kind"] == "PyTorch diffusers" and info["architecture"] == "StableVideoDiffusionPipeline"
    assert info["components"]["unet"]["parameters"] == params and info["components"]["unet"]["bytes"] == size
    assert info["components"]["unet"]["dtypes"] == {"F32": len(load_safetensors(src / "unet" / "diffusion_pytorch_model.safetensors"))}
    assert info["components"]["scheduler"] == {"class_name": "EulerDiscreteScheduler"}
    conv = describe(out)
    assert conv["kind"] == "mindport converted"
    assert conv["components"]["unet"]["parameters"] == params and set(conv["components"]["unet"]["dtypes"]) == {"F16"}
    assert conv["bytes"] * 2 == info["bytes"]
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["components"]["vae"]["class_name"] == "AutoencoderKLTemporalDecoder"


def test_component_folder_and_files(svd, tmp_path, capsys):
    src, out = svd
    info = describe(src / "vae")
    assert info["architecture"] == "AutoencoderKLTemporalDecoder" and info["pipeline"] is None
    f = describe(src / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    params, size = _count(src / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert (f["kind"], f["parameters"], f["bytes"], f["dtypes"]["F16"]) == ("PyTorch", params, size, f["tensors"])
    assert f["architecture"] == "unknown layout"
    c = describe(out / "unet" / "mindspore_model.safetensors")
    assert c["kind"] == "mindport converted" and "unet" in c["architecture"] and c["parameters"] == params
    # a .bin pickle
    state = {k: torch.from_numpy(np.array(v)) for k, v in load_safetensors(src / "vae" / "diffusion_pytorch_model.safetensors").items()}
    torch.save(state, tmp_path / "vae.bin")
    b = describe(tmp_path / "vae.bin")
    assert b["parameters"] == sum(v.numel() for v in state.values()) and b["dtypes"] == {"F32": len(state)}
    assert main(["inspect", str(tmp_path / "vae.bin")]) == 0
    assert "PyTorch checkpoint file" in capsys.readouterr().out


def test_original_single_files(tmp_path):
    from tests.test_single_file import write_svd_file

    src = build("svd-tiny")
    path = write_svd_file(src, tmp_path / "svd_xt.safetensors")
    info = describe(path)
    assert info["architecture"] == "StableVideoDiffusionPipeline single file (sgm-svd)"
    unet_params, _ = _count(src / "unet" / "diffusion_pytorch_model.safetensors")
    assert info["components"]["unet"]["parameters"] == unet_params
    assert info["components"]["image_encoder"]["class_name"] == "CLIPVisionModelWithProjection"
    assert info["components"]["(not used: dropped)"]["tensors"] == 6
    save_arrays(tmp_path / "mm.safetensors", {
        "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight": np.zeros((8, 8), np.float32)})
    assert "original release naming" in describe(tmp_path / "mm.safetensors")["architecture"]


def test_bad_paths_exit_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    for path, needle in ((tmp_path / "nope", "no such file"), (tmp_path / "notes.txt", "not a checkpoint file"),
                         (tmp_path, "neither a pipeline folder")):
        assert main(["inspect", str(path)]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["inspect", str(tmp_path / "trunc.safetensors")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
