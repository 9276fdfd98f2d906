"""Original single-file releases: SD 1.5 (CompVis/LDM naming) and Stable Video Diffusion (generative-models naming).

Fixtures are our tiny diffusers checkpoints written in those layouts by this file's own writers (string renames,
independent of the converter's rule rows). The SD 1.5 writer is cross-checked by diffusers itself:
`from_single_file` must load our file into the diffusers twin's exact weights. Each single file must then convert to
weights bit-for-bit identical to converting its diffusers twin; bad keys and shapes exit 2 and write nothing."""

import json
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from converters.safetensors_io import load_safetensors, read_header  # noqa: E402
from mindport.cli import main  # noqa: E402
from mindport.loading import convert_checkpoint  # noqa: E402
from parity.fixtures import build, randomise, write_tiny_clip_vocab  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# writers: diffusers names -> original names (the inverse of what the converter reads, written independently)
# ---------------------------------------------------------------------------------------------------------------
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2", "conv_in": "input_blocks.0.0",
       "conv_norm_out": "out.0", "conv_out": "out.2", "add_embedding.linear_1": "label_emb.0.0",
       "add_embedding.linear_2": "label_emb.0.2"}


def _resnet_leaf(rest: str) -> str:
    """`norm1.weight` -> `in_layers.0.weight`; SVD: `spatial_res_block.X` -> X, `temporal_res_block.X` ->
    `time_stack.X`, `time_mixer.mix_factor` unchanged."""
    if rest.startswith("time_mixer."):
        return rest
    prefix = ""
    if rest.startswith("spatial_res_block."):
        rest = rest[len("spatial_res_block."):]
    elif rest.startswith("temporal_res_block."):
        prefix, rest = "time_stack.", rest[len("temporal_res_block."):]
    module, leaf = rest.rsplit(".", 1)
    return f"{prefix}{RESNET[module]}.{leaf}"


def _attention_leaf(rest: str) -> str:
    rest = rest.replace("temporal_transformer_blocks.", "time_stack.")
    return rest.replace("time_pos_embed.linear_1.", "time_pos_embed.0.").replace("time_pos_embed.linear_2.", "time_pos_embed.2.")


def ldm_unet_key(key: str, cfg: dict) -> str:
    L = cfg["layers_per_block"]
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    for a, b in TOP.items():
        if key.startswith(a + "."):
            return b + key[len(a):]
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        kind, i, sub, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "down":
            idx = 1 + i * (L + 1) + (L if sub == "downsamplers" else j)
            if sub == "downsamplers":
                return f"input_blocks.{idx}.0.op.{rest.split('.', 1)[1]}"
            return f"input_blocks.{idx}.{0 if sub == 'resnets' else 1}." + (
                _resnet_leaf(rest) if sub == "resnets" else _attention_leaf(rest))
        idx = i * (L + 1) + (L if sub == "upsamplers" else j)
        if sub == "upsamplers":
            return f"output_blocks.{idx}.{2 if up_attn[i] else 1}.{rest}"
        return f"output_blocks.{idx}.{0 if sub == 'resnets' else 1}." + (
            _resnet_leaf(rest) if sub == "resnets" else _attention_leaf(rest))
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    sub, j, rest = m.group(1), int(m.group(2)), m.group(3)
    if sub == "attentions":
        return f"middle_block.1.{_attention_leaf(rest)}"
    return f"middle_block.{2 * j}.{_resnet_leaf(rest)}"


VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_key(key: str, cfg: dict) -> str:
    n = len(cfg["block_out_channels"])
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = key.replace("decoder.time_conv_out.", "decoder.conv_out.time_mix_conv.")
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key)
    if m:
        return f"{m.group(1)}.mid.attn_1.{VAE_ATTN[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_vae_resnet_leaf(m.group(3))}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)", key)
    if m:
        if m.group(3) is None:
            return f"encoder.down.{m.group(1)}.downsample.{m.group(4)}"
        return f"encoder.down.{m.group(1)}.block.{m.group(3)}.{m.group(4)}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", key)
    if m:
        level = n - 1 - int(m.group(1))
        if m.group(3) is None:
            return f"decoder.up.{level}.upsample.{m.group(4)}"
        return f"decoder.up.{level}.block.{m.group(3)}.{_vae_resnet_leaf(m.group(4))}"
    return key


def _vae_resnet_leaf(rest: str) -> str:
    """SVD's VideoResBlock: spatial leaves bare, temporal under time_stack (ResBlock names), mix_factor on the block."""
    if rest.startswith("spatial_res_block."):
        return rest[len("spatial_res_block."):]
    if rest.startswith("temporal_res_block."):
        return "time_stack." + _resnet_leaf(rest[len("temporal_res_block."):])
    return rest.replace("time_mixer.mix_factor", "mix_factor")


def open_clip_visual(state: dict) -> dict:
    """transformers CLIPVisionModelWithProjection -> OpenCLIP `visual.*` (fused q/k/v, proj transposed)."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)", key)
        if m:
            i, rest = m.group(1), m.group(2)
            if rest.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                leaf = rest.rsplit(".", 1)[1]
                out[f"transformer.resblocks.{i}.attn.in_proj_{leaf}"] = torch.cat(
                    [state[f"vision_model.encoder.layers.{i}.self_attn.{x}_proj.{leaf}"] for x in "qkv"])
                continue
            rest = (rest.replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2").replace("self_attn.out_proj", "attn.out_proj")
                    .replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
            out[f"transformer.resblocks.{i}.{rest}"] = value
            continue
        name = {"vision_model.embeddings.class_embedding": "class_embedding",
                "vision_model.embeddings.position_embedding.weight": "positional_embedding",
                "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
                "visual_projection.weight": "proj"}.get(key)
        if name is None:
            name = key.replace("vision_model.pre_layrnorm", "ln_pre").replace("vision_model.post_layernorm", "ln_post")
        out[name] = value.T.contiguous() if name == "proj" else value
    return out


def _state(folder) -> dict:
    from safetensors.torch import load_file

    name = "model.safetensors" if (folder / "model.safetensors").exists() else "diffusion_pytorch_model.safetensors"
    return load_file(str(folder / name))


def write_sd15_file(pipe_dir, path, extra=None):
    """A diffusers SD folder (unet, vae, text_encoder) as one LDM/CompVis checkpoint, with the buffers and EMA
    entries real releases carry (to be dropped)."""
    from safetensors.torch import save_file

    out = {}
    ucfg = json.loads((pipe_dir / "unet" / "config.json").read_text())
    vcfg = json.loads((pipe_dir / "vae" / "config.json").read_text())
    for k, v in _state(pipe_dir / "unet").items():
        out["model.diffusion_model." + ldm_unet_key(k, ucfg)] = v
    for k, v in _state(pipe_dir / "vae").items():
        nk = ldm_vae_key(k, vcfg)
        out["first_stage_model." + nk] = v[:, :, None, None] if ".mid.attn_1." in nk and v.ndim == 2 else v
    for k, v in _state(pipe_dir / "text_encoder").items():
        out["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = v
    n_pos = json.loads((pipe_dir / "text_encoder" / "config.json").read_text())["max_position_embeddings"]
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n_pos)[None]
    out["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    out["model_ema.decay"] = torch.tensor(0.9999)
    out.update(extra or {})
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def write_svd_file(pipe_dir, path):
    """A diffusers SVD folder as one generative-models checkpoint, with the keys the release has and the diffusers
    pipeline does not use (OpenCLIP text leftovers, the conditioner's VAE copy)."""
    from safetensors.torch import save_file

    out = {}
    ucfg = json.loads((pipe_dir / "unet" / "config.json").read_text())
    vcfg = json.loads((pipe_dir / "vae" / "config.json").read_text())
    for k, v in _state(pipe_dir / "unet").items():
        out["model.diffusion_model." + ldm_unet_key(k, ucfg)] = v
    for k, v in _state(pipe_dir / "vae").items():
        nk = ldm_vae_key(k, vcfg)
        out["first_stage_model." + nk] = v[:, :, None, None] if ".mid.attn_1." in nk and v.ndim == 2 else v
    for k, v in open_clip_visual(_state(pipe_dir / "image_encoder")).items():
        out["conditioner.embedders.0.open_clip.model.visual." + k] = v
    clip = "conditioner.embedders.0.open_clip.model."
    out[clip + "token_embedding.weight"] = torch.zeros(10, 4)
    out[clip + "positional_embedding"] = torch.zeros(7, 4)
    out[clip + "ln_final.weight"] = torch.ones(4)
    out[clip + "text_projection"] = torch.zeros(4, 4)
    out[clip + "logit_scale"] = torch.tensor(4.6)
    out["conditioner.embedders.3.encoder.encoder.conv_in.weight"] = out["first_stage_model.encoder.conv_in.weight"].clone()
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------
SD_CASES = {
    "2lvl": dict(
        unet=dict(block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=16, attention_head_dim=2,
                  norm_num_groups=4, sample_size=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
                 sample_size=16),
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=12)),
    "3lvl-2layers": dict(
        unet=dict(block_out_channels=(8, 16, 16), layers_per_block=2, cross_attention_dim=12, attention_head_dim=2,
                  norm_num_groups=4, sample_size=8,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        vae=dict(block_out_channels=(8, 8, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4, layers_per_block=2,
                 sample_size=16),
        text=dict(hidden_size=12, intermediate_size=20, num_hidden_layers=1, num_attention_heads=3, max_position_embeddings=8)),
}


def make_sd_folder(root, case: str):
    cfg = SD_CASES[case]
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    randomise(diffusers.UNet2DConditionModel(**cfg["unet"]), 1).save_pretrained(root / "unet")
    randomise(diffusers.AutoencoderKL(**cfg["vae"]), 2).save_pretrained(root / "vae")
    vocab, size = write_tiny_clip_vocab(root / "tokenizer")
    text = transformers.CLIPTextConfig(vocab_size=size, bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=1,
                                       **cfg["text"])
    randomise(transformers.CLIPTextModel(text), 3).save_pretrained(root / "text_encoder")
    transformers.CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt")).save_pretrained(root / "tokenizer")
    diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                            set_alpha_to_one=False, steps_offset=1).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None],
    }))
    return root


@pytest.fixture(scope="module", params=list(SD_CASES))
def sd_twin(request, tmp_path_factory):
    """(diffusers SD folder, the same weights as one LDM file, the folder converted)."""
    root = tmp_path_factory.mktemp(f"sd-{request.param}")
    folder = make_sd_folder(root / "diffusers", request.param)
    path = write_sd15_file(folder, root / "sd15.safetensors")
    convert_checkpoint(folder, root / "from_folder", progress=False)
    return folder, path, root / "from_folder"


@pytest.fixture(scope="module")
def svd_twin(tmp_path_factory):
    root = tmp_path_factory.mktemp("svd")
    folder = build("svd-tiny")
    path = write_svd_file(folder, root / "svd_xt.safetensors")
    convert_checkpoint(folder, root / "from_folder", progress=False)
    return folder, path, root / "from_folder"


def assert_same_converted(a, b, components):
    for comp in components:
        x = load_safetensors(a / comp / "mindspore_model.safetensors")
        y = load_safetensors(b / comp / "mindspore_model.safetensors")
        assert set(x) == set(y), (comp, sorted(set(x) ^ set(y))[:5])
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, (comp, k)
            assert x[k].tobytes() == y[k].tobytes(), f"{comp}: {k} differs"


# ---------------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------------
def test_sd15_writer_agrees_with_diffusers_from_single_file(sd_twin):
    """The independent check on our LDM writer: diffusers' own single-file loader reads it into the twin's weights."""
    folder, path, _ = sd_twin
    for cls, sub in ((diffusers.UNet2DConditionModel, "unet"), (diffusers.AutoencoderKL, "vae")):
        loaded = cls.from_single_file(str(path), config=str(folder), subfolder=sub, local_files_only=True)
        twin = _state(folder / sub)
        got = loaded.state_dict()
        assert set(got) == set(twin), (sub, sorted(set(got) ^ set(twin))[:5])
        for k, v in twin.items():
            assert torch.equal(got[k], v), f"{sub}: {k}"


def test_sd15_file_converts_to_the_diffusers_twin(sd_twin, tmp_path):
    folder, path, from_folder = sd_twin
    dst = tmp_path / "from_file"
    assert main(["convert", str(path), str(dst), "--config", str(folder)]) == 0
    assert_same_converted(dst, from_folder, ("unet", "vae", "text_encoder"))
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["source_format"] == "ldm-sd15"
    dropped = {k for d in manifest["dropped"].values() for k in d["keys"]}
    assert dropped == {"alphas_cumprod", "model_ema.decay"}
    assert manifest["components"]["text_encoder"]["audit"]["dropped"] == [
        "cond_stage_model.transformer.text_model.embeddings.position_ids"]
    unet = manifest["components"]["unet"]
    assert unet["tensors"]["down_blocks.0.resnets.0.norm1.weight"]["source"] == \
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"
    assert len(unet["source_files"][0]["sha256"]) == 64
    for plain in ("scheduler/scheduler_config.json", "tokenizer/vocab.json", "model_index.json"):
        assert (dst / plain).exists(), plain


def test_svd_file_converts_to_the_diffusers_twin(svd_twin, tmp_path):
    folder, path, from_folder = svd_twin
    dst = tmp_path / "from_file"
    assert main(["convert", str(path), str(dst), "--config", str(folder)]) == 0
    assert_same_converted(dst, from_folder, ("unet", "vae", "image_encoder"))
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["source_format"] == "sgm-svd"
    dropped = {k for d in manifest["dropped"].values() for k in d["keys"]}
    assert "conditioner.embedders.3.encoder.encoder.conv_in.weight" in dropped
    assert "conditioner.embedders.0.open_clip.model.logit_scale" in dropped
    q = manifest["components"]["image_encoder"]["tensors"]["vision_model.encoder.layers.0.self_attn.k_proj.weight"]
    assert q["part"] == [1, 3] and q["source"].endswith("attn.in_proj_weight")
    assert (dst / "feature_extractor" / "preprocessor_config.json").exists()


def test_svd_converted_file_runs_like_the_folder(svd_twin, tmp_path):
    """The converted single file loads and computes: the image encoder's embeddings equal the folder's."""
    import mindspore as ms

    from mindport.models import CLIPVisionModelWithProjection

    folder, path, from_folder = svd_twin
    dst = tmp_path / "from_file"
    convert_checkpoint(path, dst, config_dir=folder, progress=False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
    a = CLIPVisionModelWithProjection.from_pretrained(dst, subfolder="image_encoder")(x)[0].asnumpy()
    b = CLIPVisionModelWithProjection.from_pretrained(from_folder, subfolder="image_encoder")(x)[0].asnumpy()
    np.testing.assert_array_equal(a, b)


def _original_shapes(layout, name, spec, config) -> dict:
    """The original-layout {key: shape} of a component whose diffusers-named parameters are `spec` (shapes only)."""
    out = {}
    for k, (shape, _) in spec.items():
        if name == "unet":
            out["model.diffusion_model." + ldm_unet_key(k, config)] = shape
        elif name == "vae":
            nk = ldm_vae_key(k, config)
            out["first_stage_model." + nk] = (*shape, 1, 1) if ".mid.attn_1." in nk and len(shape) == 2 else shape
        elif name == "text_encoder":
            out["cond_stage_model.transformer.text_model." + k] = shape
        else:
            fake = {k2: torch.empty(s2, device="meta") for k2, (s2, _) in spec.items()}
            return {"conditioner.embedders.0.open_clip.model.visual." + k2: tuple(v.shape)
                    for k2, v in open_clip_visual(fake).items()}
    return out


@pytest.mark.parametrize("layout_name", ["ldm-sd15", "sgm-svd"])
def test_builtin_configs_and_full_size_rows(layout_name):
    """Without --config the built-in SD 1.5 / SVD-xt configs are used. At full size (models built without weights),
    every parameter is filled exactly once by the layout's rows from the original key names, with equal shapes."""
    from converters.base import map_tensors
    from converters.safetensors_io import TensorRef
    from converters.single_file import LAYOUTS, LayoutConverter
    from mindport.loading import _spec_builder

    layout = LAYOUTS[layout_name]
    spec_fn = _spec_builder()
    for name, (cls, _, rows) in layout.components.items():
        config = layout.defaults[name]
        conv = LayoutConverter(cls, rows(config))
        spec = spec_fn(name, cls, conv.convert_config(config))
        shapes = _original_shapes(layout, name, spec, config)
        refs = {k: TensorRef("none", k, "F16", tuple(s), 0, 0) for k, s in shapes.items()}
        _, audit = map_tensors(conv, refs, spec, f"{layout_name}/{name}")
        assert audit.as_dict()["passed"] and audit.filled == len(spec) > 100, (name, audit.as_dict())


# ---------------------------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming the problem, nothing at DST
# ---------------------------------------------------------------------------------------------------------------
def _edit(path, out, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    edit(state)
    save_file(state, str(out))
    return out


SD_BAD = {
    "missing": (lambda s: s.pop("model.diffusion_model.out.2.weight"), "conv_out.weight"),
    "extra": (lambda s: s.__setitem__("model.diffusion_model.input_blocks.0.0.extra", torch.zeros(2)), "input_blocks.0.0.extra"),
    "stray": (lambda s: s.__setitem__("some.other.weight", torch.zeros(2)), "some.other.weight"),
    "shape": (lambda s: s.__setitem__("first_stage_model.encoder.conv_in.bias", torch.zeros(3)), "encoder.conv_in.bias"),
    "int": (lambda s: s.__setitem__("first_stage_model.quant_conv.bias",
                                     s["first_stage_model.quant_conv.bias"].to(torch.int32)), "floating point"),
}


@pytest.mark.parametrize("case", list(SD_BAD))
def test_sd15_bad_keys(sd_twin, tmp_path, capsys, case):
    folder, path, _ = sd_twin
    edit, needle = SD_BAD[case]
    bad = _edit(path, tmp_path / "bad.safetensors", edit)
    dst = tmp_path / "dst"
    assert main(["convert", str(bad), str(dst), "--config", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not dst.exists() and not list(tmp_path.glob(".dst*"))


def test_truncated_single_file(sd_twin, tmp_path, capsys):
    _, path, _ = sd_twin
    bad = tmp_path / "sd15.safetensors"
    data = path.read_bytes()
    bad.write_bytes(data[: len(data) - 1000])
    assert main(["convert", str(bad), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and str(bad) in err and not (tmp_path / "dst").exists()


def test_svd_bad_keys_and_config(svd_twin, tmp_path, capsys):
    folder, path, _ = svd_twin
    bad = _edit(path, tmp_path / "bad.safetensors",
                lambda s: s.pop("conditioner.embedders.0.open_clip.model.visual.transformer.resblocks.0.attn.in_proj_bias"))
    dst = tmp_path / "dst"
    assert main(["convert", str(bad), str(dst), "--config", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "self_attn.q_proj.bias" in err and not dst.exists()
    # a config folder of another model: its unet config builds other shapes
    other = tmp_path / "other"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((other / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 48
    (other / "unet" / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", str(path), str(dst), "--config", str(other)]) == 2
    assert "attn2.to_k.weight" in capsys.readouterr().err and not dst.exists()


def test_unknown_single_file_layout(tmp_path, capsys):
    from converters.safetensors_io import save_arrays

    f = tmp_path / "mystery.safetensors"
    save_arrays(f, {"encoder.layer.0.weight": np.zeros((2, 2), np.float32)})
    assert main(["convert", str(f), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "unknown single-file layout" in err and "encoder.layer.0.weight" in err
    assert not (tmp_path / "dst").exists()


def test_sd15_file_with_builtin_configs_reports_shape_mismatch(sd_twin, tmp_path, capsys):
    """A tiny file against the built-in SD 1.5 configs: refused, naming a tensor whose shape differs."""
    _, path, _ = sd_twin
    assert main(["convert", str(path), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "shape" in err or "missing" in err, err
    assert not (tmp_path / "dst").exists()


def test_converted_header_is_mindport(sd_twin, tmp_path):
    folder, path, _ = sd_twin
    convert_checkpoint(path, tmp_path / "d", config_dir=folder, progress=False)
    _, meta = read_header(tmp_path / "d" / "unet" / "mindspore_model.safetensors")
    assert meta["format"] == "mindport"


def test_sd15_file_plus_motion_module_makes_an_animatediff_folder(sd_twin, tmp_path, capsys):
    """`--motion-adapter`: an SD 1.5 single file and an original-release motion module become one AnimateDiff
    pipeline folder that AnimateDiffPipeline loads (UNetMotionModel built from the base and the adapter)."""
    from safetensors.torch import save_file

    from mindport import AnimateDiffPipeline, MotionAdapter
    from mindport.models.unet_motion_model import UNetMotionModel
    from tests.test_animatediff_convert import to_original

    folder, path, _ = sd_twin
    ucfg = json.loads((folder / "unet" / "config.json").read_text())
    if ucfg["layers_per_block"] != 1:
        pytest.skip("one base is enough")
    torch.manual_seed(0)
    adapter = randomise(diffusers.MotionAdapter(block_out_channels=tuple(ucfg["block_out_channels"]),
                                                motion_layers_per_block=1, motion_num_attention_heads=2,
                                                motion_norm_num_groups=4, motion_max_seq_length=8), 5)
    adapter.save_pretrained(tmp_path / "adapter")
    mm = tmp_path / "mm_sd_v15.safetensors"
    save_file({k: v.contiguous() for k, v in to_original(adapter.state_dict()).items()}, str(mm))
    dst = tmp_path / "animatediff"
    # a motion-module file does not show its heads and norm groups: --config DIR/motion_adapter/config.json tells them
    cfg = tmp_path / "config"
    shutil.copytree(folder, cfg, ignore=shutil.ignore_patterns("*.safetensors"))
    (cfg / "motion_adapter").mkdir()
    shutil.copy(tmp_path / "adapter" / "config.json", cfg / "motion_adapter" / "config.json")
    assert main(["convert", str(path), str(dst), "--config", str(cfg), "--motion-adapter", str(mm)]) == 0
    index = json.loads((dst / "model_index.json").read_text())
    assert index["_class_name"] == "AnimateDiffPipeline" and index["motion_adapter"] == ["diffusers", "MotionAdapter"]
    ours = load_safetensors(dst / "motion_adapter" / "mindspore_model.safetensors")
    twin = {k: v.asnumpy() for k, v in MotionAdapter.from_pretrained(tmp_path / "adapter").parameters_and_names()}
    assert set(ours) == set(twin) and all(ours[k].tobytes() == twin[k].tobytes() for k in twin)
    pipe = AnimateDiffPipeline.from_pretrained(dst)
    assert isinstance(pipe.unet, UNetMotionModel)
    # a folder SRC takes no motion adapter
    assert main(["convert", str(folder), str(tmp_path / "x"), "--motion-adapter", str(mm)]) == 2
    assert "only a single-file checkpoint" in capsys.readouterr().err and not (tmp_path / "x").exists()
