"""Stable Diffusion converters: CLIP text (both key spellings), AutoencoderKL (also pre-0.14 attention names),
UNet2DConditionModel, and a small SD pipeline folder, converted with `convert_checkpoint` and loaded with
`from_pretrained`, checked against the PyTorch models."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import mindspore as ms
from mindspore import Tensor

from converters import ConversionError, converter_for
from converters.safetensors_io import load_safetensors, save_arrays
from mindport.loading import convert_checkpoint
from mindport.models import (
    AutoencoderKL,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    UNet2DConditionModel,
)
from mindport.schedulers import DDIMScheduler
from parity.fixtures import randomise
from tests.helpers import assert_close

CLIP_CFG = dict(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=12, projection_dim=8, bos_token_id=58, eos_token_id=59, pad_token_id=1)
VAE_CFG = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
               sample_size=16)
UNET_CFG = dict(block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=16, attention_head_dim=2,
                norm_num_groups=4, sample_size=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
IDS = np.array([[58, 5, 17, 33, 59, 1, 1, 1, 1, 1, 1, 1], [58, 40, 2, 9, 11, 3, 59, 1, 1, 1, 1, 1]], np.int64)


def _weights(folder):
    name = "model.safetensors" if (folder / "model.safetensors").exists() else "diffusion_pytorch_model.safetensors"
    return folder / name


def _params(model):
    return {k: p.asnumpy() for k, p in model.parameters_and_names()}


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    """transformers 5 `save_pretrained` (bare keys) and the released-checkpoint spelling (`text_model.` prefix plus
    the persisted `position_ids` buffer) of one CLIPTextModel."""
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    ref = randomise(transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_CFG)), 3)
    ref.save_pretrained(root / "bare")
    arrays = load_safetensors(_weights(root / "bare"))
    assert not any(k.startswith("text_model.") for k in arrays)  # what transformers 5 writes
    shutil.copytree(root / "bare", root / "prefixed")
    prefixed = {f"text_model.{k}": v for k, v in arrays.items()}
    prefixed["text_model.embeddings.position_ids"] = np.arange(12, dtype=np.int64)[None]
    save_arrays(_weights(root / "prefixed"), prefixed)
    return ref, root


def test_clip_text_both_spellings_convert_to_identical_arrays(clip_folders, tmp_path):
    ref, root = clip_folders
    for spelling in ("bare", "prefixed"):
        manifest = convert_checkpoint(root / spelling, tmp_path / spelling, progress=False)
        audit = manifest["components"]["."]["audit"]
        assert audit["passed"]
        assert audit["dropped"] == (["text_model.embeddings.position_ids"] if spelling == "prefixed" else [])
    a = load_safetensors(tmp_path / "bare" / "mindspore_model.safetensors")
    b = load_safetensors(tmp_path / "prefixed" / "mindspore_model.safetensors")
    assert set(a) == set(b) == set(CLIPTextModel.from_config(CLIP_CFG).parameter_spec())
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # from_pretrained: PyTorch folders (either spelling) and the converted folder give the same model
    models = [CLIPTextModel.from_pretrained(root / "bare"), CLIPTextModel.from_pretrained(root / "prefixed"),
              CLIPTextModel.from_pretrained(tmp_path / "prefixed")]
    first = _params(models[0])
    for m in models[1:]:
        for k, v in _params(m).items():
            np.testing.assert_array_equal(v, first[k], err_msg=k)
    with torch.no_grad():
        expected = ref(torch.from_numpy(IDS))
    out = models[1](Tensor(IDS))
    assert_close(out.last_hidden_state, expected.last_hidden_state, 1e-5, where="CLIPTextModel last_hidden_state")
    assert_close(out.pooler_output, expected.pooler_output, 1e-5, where="CLIPTextModel pooler_output")


def test_clip_text_mixed_spellings_refused(clip_folders, tmp_path):
    _, root = clip_folders
    src = tmp_path / "mixed"
    shutil.copytree(root / "bare", src)
    arrays = load_safetensors(_weights(src))
    arrays = {(f"text_model.{k}" if k.startswith("encoder.") else k): v for k, v in arrays.items()}
    save_arrays(_weights(src), arrays)
    with pytest.raises(ConversionError, match=r"mixes two key spellings.*text_model\."):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match="mixes two key spellings"):
        CLIPTextModel.from_pretrained(src)
    # the same parameter under both spellings is mixing too
    dup = load_safetensors(_weights(root / "bare"))
    dup["text_model.final_layer_norm.weight"] = dup["final_layer_norm.weight"]
    save_arrays(_weights(src), dup)
    with pytest.raises(ConversionError, match="mixes two key spellings"):
        CLIPTextModel.from_pretrained(src)


def test_clip_text_with_projection(tmp_path):
    ref = randomise(transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**CLIP_CFG)), 5)
    ref.save_pretrained(tmp_path / "src")
    arrays = load_safetensors(_weights(tmp_path / "src"))
    assert "text_projection.weight" in arrays and all(
        k.startswith("text_model.") for k in arrays if k != "text_projection.weight")
    # an older file with the position_ids buffer converts to the same parameters
    shutil.copytree(tmp_path / "src", tmp_path / "old")
    save_arrays(_weights(tmp_path / "old"), {**arrays, "text_model.embeddings.position_ids": np.arange(12)[None]})
    convert_checkpoint(tmp_path / "old", tmp_path / "conv", progress=False)
    got = load_safetensors(tmp_path / "conv" / "mindspore_model.safetensors")
    assert set(got) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k], err_msg=k)
    ours = CLIPTextModelWithProjection.from_pretrained(tmp_path / "conv")
    with torch.no_grad():
        expected = ref(torch.from_numpy(IDS))
    out = ours(Tensor(IDS))
    assert_close(out.text_embeds, expected.text_embeds, 1e-5, where="CLIPTextModelWithProjection text_embeds")
    assert_close(out.last_hidden_state, expected.last_hidden_state, 1e-5, where="CLIPTextModelWithProjection hidden")


def test_autoencoder_kl_folder_and_deprecated_attention_names(tmp_path, rng):
    ref = randomise(diffusers.AutoencoderKL(**VAE_CFG), 7)
    ref.save_pretrained(tmp_path / "vae")
    manifest = convert_checkpoint(tmp_path / "vae", tmp_path / "conv", progress=False)
    assert manifest["components"]["."]["audit"]["passed"]
    # a pre-0.14 file: mid-block attention as query / key / value / proj_attn
    shutil.copytree(tmp_path / "vae", tmp_path / "old")
    arrays = load_safetensors(_weights(tmp_path / "vae"))
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in arrays.items():
        for new, legacy in renames.items():
            if ".mid_block.attentions." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{legacy}.")
        old[k] = v
    assert sum(".query." in k for k in old) == 4  # weight + bias, encoder + decoder
    save_arrays(_weights(tmp_path / "old"), old)
    models = [AutoencoderKL.from_pretrained(p) for p in (tmp_path / "vae", tmp_path / "conv", tmp_path / "old")]
    first = _params(models[0])
    for m in models[1:]:
        for k, v in _params(m).items():
            np.testing.assert_array_equal(v, first[k], err_msg=k)
    # diffusers itself reads the legacy names the same way
    legacy_ref = diffusers.AutoencoderKL.from_pretrained(tmp_path / "old")
    for k, v in legacy_ref.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), first[k], err_msg=k)
    z = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
    with torch.no_grad():
        expected = ref.decode(torch.from_numpy(z)).sample
    assert_close(models[2].decode(Tensor(z)).sample, expected, 1e-5, where="AutoencoderKL decode (legacy names)")


def test_unet_2d_condition_folder(tmp_path, rng):
    ref = randomise(diffusers.UNet2DConditionModel(**UNET_CFG), 11)
    ref.save_pretrained(tmp_path / "unet")
    ref.save_pretrained(tmp_path / "unet", variant="fp16")  # fp32 values in a variant file name
    manifest = convert_checkpoint(tmp_path / "unet", tmp_path / "conv", progress=False)
    assert manifest["components"]["."]["audit"]["passed"]
    assert json.loads((tmp_path / "conv" / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"
    a = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    b = UNet2DConditionModel.from_pretrained(tmp_path / "conv")
    pa, pb = _params(a), _params(b)
    assert set(pa) == set(pb) == set(ref.state_dict())
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert b.config.cross_attention_dim == 16 and b.config.block_out_channels in ([16, 32], (16, 32))
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((2, 5, 16)).astype(np.float32)
    t = np.array([7, 700], np.int64)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    assert_close(b(Tensor(x), Tensor(t), Tensor(ctx)).sample, expected, 1e-5, where="UNet2DConditionModel converted")
    half = UNet2DConditionModel.from_pretrained(tmp_path / "unet", variant="fp16", mindspore_dtype=ms.float16)
    assert half.dtype == ms.float16
    with pytest.raises(ConversionError, match="UNet2DConditionModel"):
        AutoencoderKL.from_pretrained(tmp_path / "unet")


def test_sd_pipeline_folder_converts_and_loads(clip_folders, tmp_path):
    """A Stable Diffusion layout (unet, vae, text_encoder in the released `text_model.` spelling, DDIM scheduler):
    `convert_checkpoint` on the whole folder, every component loadable from the result."""
    _, clip_root = clip_folders
    src = tmp_path / "sd"
    randomise(diffusers.UNet2DConditionModel(**UNET_CFG), 1).save_pretrained(src / "unet")
    randomise(diffusers.AutoencoderKL(**VAE_CFG), 2).save_pretrained(src / "vae")
    shutil.copytree(clip_root / "prefixed", src / "text_encoder")
    diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                            set_alpha_to_one=False, steps_offset=1).save_pretrained(src / "scheduler")
    (src / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "scheduler": ["diffusers", "DDIMScheduler"],
        "tokenizer": [None, None], "safety_checker": [None, None], "feature_extractor": [None, None],
    }))
    manifest = convert_checkpoint(src, tmp_path / "out", progress=False)
    for comp in ("unet", "vae", "text_encoder"):
        assert manifest["components"][comp]["audit"]["passed"], comp
    out = tmp_path / "out"
    UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    AutoencoderKL.from_pretrained(out, subfolder="vae")
    te = CLIPTextModel.from_pretrained(out, subfolder="text_encoder")
    te_src = CLIPTextModel.from_pretrained(src, subfolder="text_encoder")
    for k, v in _params(te).items():
        np.testing.assert_array_equal(v, _params(te_src)[k], err_msg=k)
    sched = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.steps_offset == 1


def test_rule_tables_are_registered():
    for name in ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel", "CLIPTextModelWithProjection"):
        assert converter_for(name).class_name == name
