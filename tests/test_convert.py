"""Converter: every layout we read, the audit, and bad input refused with one line and nothing written."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters import ConversionError
from converters.safetensors_io import read_header, save_arrays, load_safetensors
from mindport.cli import main
from mindport.loading import convert_checkpoint
from parity.fixtures import build

COMPONENTS = ("unet", "vae", "image_encoder")


@pytest.fixture(scope="module")
def svd_src():
    return build("svd-tiny")


@pytest.fixture(scope="module")
def converted(svd_src, tmp_path_factory):
    dst = tmp_path_factory.mktemp("conv") / "svd"
    convert_checkpoint(svd_src, dst, progress=False)
    return dst


def _source_arrays(folder: Path, variant=None):
    name = "model" if (folder / "model.safetensors").exists() else "diffusion_pytorch_model"
    return load_safetensors(folder / f"{name}{'.' + variant if variant else ''}.safetensors")


def test_convert_writes_audited_folder(svd_src, converted):
    assert (converted / "model_index.json").exists()
    manifest = json.loads((converted / "manifest.json").read_text())
    assert manifest["format"] == "mindport"
    for comp in COMPONENTS:
        m = manifest["components"][comp]
        assert m["audit"]["passed"], m["audit"]
        assert m["audit"]["source_tensors"] == m["audit"]["used_once"] + len(m["audit"]["dropped"])
        assert m["audit"]["filled"] == m["audit"]["parameters"] > 0
        assert all(len(f["sha256"]) == 64 for f in m["source_files"])
        ours = load_safetensors(converted / comp / "mindspore_model.safetensors")
        src = _source_arrays(svd_src / comp)
        assert set(ours) == set(src)  # our cells keep diffusers' module paths: identity names
        for k, v in ours.items():
            np.testing.assert_array_equal(v, src[k], err_msg=k)
        assert (converted / comp / "config.json").exists()
    for plain in ("scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json"):
        assert (converted / plain).exists()


def test_variant_and_dtype_policy(svd_src, tmp_path):
    convert_checkpoint(svd_src, tmp_path / "fp16", variant="fp16", progress=False)
    refs, _ = read_header(tmp_path / "fp16" / "unet" / "mindspore_model.safetensors")
    assert {r.dtype for r in refs.values()} == {"F16"}
    src16 = _source_arrays(svd_src / "unet", "fp16")
    got = load_safetensors(tmp_path / "fp16" / "unet" / "mindspore_model.safetensors")
    for k in src16:
        np.testing.assert_array_equal(got[k], src16[k])
    convert_checkpoint(svd_src, tmp_path / "bf16", dtype="bf16", progress=False, keep_fp32="none")
    refs, _ = read_header(tmp_path / "bf16" / "vae" / "mindspore_model.safetensors")
    assert {r.dtype for r in refs.values()} == {"BF16"}
    got = load_safetensors(tmp_path / "bf16" / "vae" / "mindspore_model.safetensors")
    src = _source_arrays(svd_src / "vae")
    for k in src:  # bf16 keeps 8 bits of mantissa
        np.testing.assert_allclose(got[k], src[k], rtol=2 ** -8, atol=1e-30)


@pytest.mark.parametrize("dtype, keep, kept", [
    ("bf16", "auto", True), ("fp16", "auto", False), ("fp16", "norms", True), ("bf16", "none", False),
    ("fp32", "norms", False),
])
def test_keep_fp32_policy_is_applied_and_recorded(svd_src, tmp_path, dtype, keep, kept):
    """Norm scales/shifts and blend factors stay float32 (bit-exact to the source) when the policy says so; every
    other tensor takes --dtype; the manifest records the decision per tensor."""
    dst = tmp_path / "out"
    assert main(["convert", str(svd_src), str(dst), "--dtype", dtype, "--keep-fp32", keep]) == 0
    manifest = json.loads((dst / "manifest.json").read_text())
    want = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}[dtype]
    for comp in COMPONENTS:
        refs, meta = read_header(dst / comp / "mindspore_model.safetensors")
        src = _source_arrays(svd_src / comp)
        tensors = manifest["components"][comp]["tensors"]
        for name, ref in refs.items():
            norm = name.endswith("mix_factor") or (len(ref.shape) == 1 and "norm" in name.rsplit(".", 2)[-2])
            expect = "F32" if (kept and norm) else want
            assert ref.dtype == expect == tensors[name]["dtype"], (comp, name, ref.dtype)
            assert tensors[name]["dtype_reason"] == (f"kept fp32 (--keep-fp32 {keep})" if expect != want else f"--dtype {dtype}")
            if expect == "F32":
                np.testing.assert_array_equal(ref.load(), src[name], err_msg=name)
        assert (meta.get("kept_fp32") == keep) == kept
        assert manifest["components"][comp]["dtype_policy"]["kept_fp32_tensors"] == sum(
            1 for t in tensors.values() if t["dtype"] == "F32" and want != "F32")


def test_mixed_precision_checkpoint_loads_with_fp32_norms(svd_src, tmp_path):
    """fp16 weights with fp32 norms: loaded as fp16 the norms stay fp32 (also through to_dtype), and the VAE
    decodes like the all-fp32 model within fp16 error; asking for bf16 on CPU is refused with one line."""
    import mindspore as ms

    from mindport.models import AutoencoderKLTemporalDecoder

    convert_checkpoint(svd_src, tmp_path / "mixed", dtype="fp16", keep_fp32="norms", progress=False)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(tmp_path / "mixed", subfolder="vae", mindspore_dtype=ms.float16)
    params = dict(vae.parameters_and_names())
    assert params["decoder.conv_norm_out.weight"].dtype == ms.float32
    assert params["decoder.conv_in.weight"].dtype == ms.float16
    vae.to_dtype(ms.float32).to_dtype(ms.float16)
    assert params["decoder.conv_norm_out.weight"].dtype == ms.float32
    ref = AutoencoderKLTemporalDecoder.from_pretrained(svd_src, subfolder="vae")
    z = np.random.default_rng(0).standard_normal((2, 4, 4, 5)).astype(np.float32)
    got = vae.decode(ms.Tensor(z, ms.float16), num_frames=2).sample.astype(ms.float32).asnumpy()
    want = ref.decode(ms.Tensor(z), num_frames=2).sample.asnumpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2
    convert_checkpoint(svd_src, tmp_path / "bf16", dtype="bf16", progress=False)
    with pytest.raises(ConversionError, match="bf16 cannot run on CPU.*float32"):
        AutoencoderKLTemporalDecoder.from_pretrained(tmp_path / "bf16", subfolder="vae", mindspore_dtype="bf16")
    exact = AutoencoderKLTemporalDecoder.from_pretrained(tmp_path / "bf16", subfolder="vae")  # widened to fp32
    assert dict(exact.parameters_and_names())["decoder.conv_in.weight"].dtype == ms.float32


def test_sharded_and_bin_sources_give_identical_weights(svd_src, tmp_path):
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(svd_src / "unet", torch_dtype=torch.float32)
    unet.save_pretrained(tmp_path / "sharded", max_shard_size="200KB", safe_serialization=True)
    unet.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert list((tmp_path / "bin").glob("*.bin"))
    ref = None
    for layout in ("sharded", "bin"):
        convert_checkpoint(tmp_path / layout, tmp_path / f"out-{layout}", progress=False)
        got = load_safetensors(tmp_path / f"out-{layout}" / "mindspore_model.safetensors")
        ref = ref or _source_arrays(svd_src / "unet")
        assert set(got) == set(ref)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{layout}: {k}")


def test_models_load_from_pytorch_and_converted_folders_alike(svd_src, converted):
    from mindport.models import UNetSpatioTemporalConditionModel

    a = UNetSpatioTemporalConditionModel.from_pretrained(svd_src, subfolder="unet")
    b = UNetSpatioTemporalConditionModel.from_pretrained(converted, subfolder="unet")
    pa, pb = dict(a.parameters_and_names()), dict(b.parameters_and_names())
    assert set(pa) == set(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k].asnumpy(), pb[k].asnumpy())
    with pytest.raises(ConversionError, match="AutoencoderKLTemporalDecoder"):
        UNetSpatioTemporalConditionModel.from_pretrained(svd_src, subfolder="vae")


# ---------------------------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming the problem, DST never created
# ---------------------------------------------------------------------------------------------------------------


def _tamper(svd_src, tmp_path, how):
    src = tmp_path / "src"
    shutil.copytree(svd_src, src)
    f = src / "unet" / "diffusion_pytorch_model.safetensors"
    if how == "truncated":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    else:
        arrays = load_safetensors(f)
        if how == "missing":
            del arrays["conv_in.weight"]
        elif how == "unexpected":
            arrays["conv_in.extra_weight"] = np.zeros(3, np.float32)
        elif how == "shape":
            arrays["conv_in.bias"] = np.zeros(7, np.float32)
        elif how == "int_dtype":
            arrays["conv_in.bias"] = arrays["conv_in.bias"].astype(np.int32)
        save_arrays(f, arrays)
    if how == "unknown_arch":
        cfg = json.loads((src / "unet" / "config.json").read_text())
        cfg["_class_name"] = "UNetFancyModel"
        (src / "unet" / "config.json").write_text(json.dumps(cfg))
    return src


@pytest.mark.parametrize("how, needle", [
    ("truncated", "truncated or corrupt"),
    ("garbage", "diffusion_pytorch_model.safetensors"),
    ("missing", "conv_in.weight"),
    ("unexpected", "conv_in.extra_weight"),
    ("shape", "conv_in.bias"),
    ("int_dtype", "floating point"),
    ("unknown_arch", "UNetFancyModel"),
])
def test_bad_input_exits_2_and_writes_nothing(svd_src, tmp_path, capsys, how, needle):
    src = _tamper(svd_src, tmp_path, how)
    dst = tmp_path / "dst"
    assert main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst")], "temporary folder left behind"


def test_existing_dst_refused_unless_overwrite(svd_src, tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["convert", str(svd_src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (dst / "keep.txt").exists()
    assert main(["convert", str(svd_src), str(dst), "--overwrite"]) == 0
    assert not (dst / "keep.txt").exists() and (dst / "manifest.json").exists()


def test_missing_source_and_offline_hub_id(tmp_path, capsys, monkeypatch):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "dst")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["convert", "someone/not-cached-model", str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "someone/not-cached-model" in err and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "dst").exists()


def test_ambiguous_rule_table_is_an_error():
    from converters.base import ArchitectureConverter, Rule, map_tensors
    from converters.safetensors_io import TensorRef

    class Bad(ArchitectureConverter):
        rules = (Rule(r"a\..*", "x"), Rule(r".*\.w", "y"))

    refs = {"a.w": TensorRef("f", "a.w", "F32", (2,), 0, 8)}
    with pytest.raises(ConversionError, match="several rule rows"):
        map_tensors(Bad(), refs, {"x": ((2,), "float32")}, "test")


def test_inspect(svd_src, converted, capsys):
    assert main(["inspect", str(svd_src)]) == 0
    out = capsys.readouterr().out
    assert "PyTorch diffusers" in out and "UNetSpatioTemporalConditionModel" in out
    assert main(["inspect", str(converted)]) == 0
    assert "mindport converted" in capsys.readouterr().out


def test_hub_id_from_local_cache_offline(svd_src, tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache (offline): the files come from the snapshot folder."""
    import huggingface_hub

    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--someone--svd-tiny"
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(svd_src, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub), raising=False)
    dst = tmp_path / "dst"
    assert main(["convert", "someone/svd-tiny", str(dst)]) == 0
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["source"] == "someone/svd-tiny" and rev in manifest["resolved_source"]
    from mindport.models import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder.from_pretrained("someone/svd-tiny", subfolder="vae")
    assert vae.config.latent_channels == 4



def test_hub_cache_blob_names_give_the_sha256(svd_src, tmp_path, monkeypatch):
    """In huggingface_hub's cache a snapshot's weight file links to blobs/<its sha256> (the LFS etag): the manifest
    takes that name and the 3 GB are not hashed again; a plain local file is hashed."""
    import hashlib

    from converters import sources

    snap = tmp_path / "models--someone--svd" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(svd_src, snap)
    blobs = tmp_path / "models--someone--svd" / "blobs"
    blobs.mkdir()
    want = {}
    for f in sorted(snap.rglob("*.safetensors")):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        f.rename(blobs / digest)
        f.symlink_to(os.path.relpath(blobs / digest, f.parent))
        want[str(f.relative_to(snap))] = digest
    local = tmp_path / "local.bin"
    local.write_bytes(b"plain local file")
    monkeypatch.setattr(sources, "sha256", lambda *a, **k: pytest.fail("a Hub cache blob was hashed again"))
    manifest = convert_checkpoint(snap, tmp_path / "dst", progress=False)
    got = {r["path"]: r["sha256"] for c in manifest["components"].values() for r in c.get("source_files", [])}
    assert sorted(got) == ["image_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                           "vae/diffusion_pytorch_model.safetensors"]
    assert got == {k: want[k] for k in got}
    assert sources.hub_cache_sha256(local) is None
    (tmp_path / "git-file").symlink_to(blobs.parent / "blobs")  # not a 64-digit blob name: computed, not trusted
    assert sources.hub_cache_sha256(tmp_path / "git-file") is None

SVD_XT_REPO = ["model_index.json", "svd_xt.safetensors", "svd_xt_image_decoder.safetensors", "README.md",
               "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
               "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
               "image_encoder/config.json", "image_encoder/model.safetensors", "image_encoder/model.fp16.safetensors",
               "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
               "text_encoder/config.json", "text_encoder/pytorch_model.bin",
               "big/config.json", "big/diffusion_pytorch_model.safetensors.index.json",
               "big/diffusion_pytorch_model-00001-of-00002.safetensors", "big/diffusion_pytorch_model-00002-of-00002.safetensors",
               "big/diffusion_pytorch_model.fp16-00001-of-00002.safetensors"]


@pytest.mark.parametrize("variant, want", [
    ("fp16", ["unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
              "image_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin",
              "big/diffusion_pytorch_model.safetensors.index.json", "big/diffusion_pytorch_model-00001-of-00002.safetensors",
              "big/diffusion_pytorch_model-00002-of-00002.safetensors"]),
    (None, ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "image_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
            "big/diffusion_pytorch_model.safetensors.index.json", "big/diffusion_pytorch_model-00001-of-00002.safetensors",
            "big/diffusion_pytorch_model-00002-of-00002.safetensors"]),
])
def test_hub_fetches_only_the_files_the_variant_needs(monkeypatch, tmp_path, variant, want):
    """snapshot_download is asked for the configs and, per component, only the weights that will be read: not the
    other variant, not the top-level single-file releases (svd_xt.safetensors: 9 GB more)."""
    import fnmatch

    import huggingface_hub

    seen = {}
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo: list(SVD_XT_REPO))

    def fake_snapshot(repo, allow_patterns):
        seen["patterns"] = allow_patterns
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    from converters.sources import resolve

    assert resolve("stabilityai/svd-like", variant) == tmp_path
    fetched = sorted(f for f in SVD_XT_REPO if any(fnmatch.fnmatch(f, p) for p in seen["patterns"]))
    weights = [f for f in fetched if not f.endswith((".json", ".md"))]
    assert sorted(weights) == sorted(w for w in want if not w.endswith(".json")), fetched
    assert "unet/config.json" in fetched and "scheduler/scheduler_config.json" in fetched


def test_large_identity_components_copy_while_the_model_builds(svd_src, converted, tmp_path, monkeypatch, capsys):
    """Components above SPECULATE_BYTES start their kernel copy before the model is built; the audit still decides:
    the result is byte-identical to the ordinary path, and a failing audit leaves nothing at DST."""
    import converters.convert as conv

    monkeypatch.setattr(conv, "SPECULATE_BYTES", 0)
    calls = []
    real = conv._identity_copy
    monkeypatch.setattr(conv, "_identity_copy", lambda *a: calls.append(r := real(*a)) or r)
    convert_checkpoint(svd_src, tmp_path / "fast", progress=False)
    assert sum(c is not None for c in calls) == 3  # unet, vae, image_encoder: all identity
    for comp in COMPONENTS:
        a = (tmp_path / "fast" / comp / "mindspore_model.safetensors").read_bytes()
        assert a == (converted / comp / "mindspore_model.safetensors").read_bytes(), comp
    src = _tamper(svd_src, tmp_path, "shape")
    assert main(["convert", str(src), str(tmp_path / "dst")]) == 2
    assert "conv_in.bias" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst*"))


def test_unsupported_dtype_file_exits_2(svd_src, tmp_path, capsys):
    """A tensor stored in a dtype we cannot read (F8_E8M0; fp8 E4M3/E5M2 are read): one line naming tensor and dtype."""
    import struct

    src = tmp_path / "src"
    shutil.copytree(svd_src / "vae", src)
    head = json.dumps({"encoder.conv_in.bias": {"dtype": "F8_E8M0", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (src / "diffusion_pytorch_model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"\0\0")
    assert main(["convert", str(src), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "F8_E8M0" in err and "encoder.conv_in.bias" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("speculate", [False, True])
def test_interrupted_conversion_leaves_nothing(svd_src, tmp_path, monkeypatch, speculate):
    """Ctrl-C (or any failure) half-way through writing: no DST, no temporary folder left behind."""
    import converters.convert as conv

    if speculate:
        monkeypatch.setattr(conv, "SPECULATE_BYTES", 0)
    real = conv.write_safetensors
    calls = []

    def interrupted(path, entries, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second component, after the first one was written
            entries = entries[: len(entries) // 2] + [("boom", (1,), "F32", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))]
        return real(path, entries, *a, **k)

    monkeypatch.setattr(conv, "write_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(svd_src, tmp_path / "dst", progress=False)
    assert len(calls) >= 2 and not (tmp_path / "dst").exists()
    assert not [p.name for p in tmp_path.iterdir()], "temporary folder left behind"
