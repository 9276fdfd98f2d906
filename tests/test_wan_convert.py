"""Wan 2.1 in the layouts users hold it: Wan-AI's original names (transformer safetensors, single or sharded; the
UMT5 `.pth`; `Wan2.1_VAE.pth`), fp8 single files, and a whole original release folder -> the same MindSpore tensors as
the diffusers / transformers layout of the same weights.

Fixtures: tiny diffusers / transformers models (seeded torch), saved with save_pretrained (the diffusers layout), and
the same state dicts renamed into Wan's original names by this file's own writers (string tables written from
`wan/modules/{model,t5,vae}.py`, independent of the converter's rows). The transformer and VAE writers are
cross-checked against diffusers' own original->diffusers functions (`loaders/single_file_utils.py`), and a few
original names are checked by hand, so the round trip is not the converter checking itself."""

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from converters.safetensors_io import fp8_to_float32, load_safetensors, read_header  # noqa: E402
from mindport.cli import main  # noqa: E402
from mindport.loading import convert_checkpoint  # noqa: E402
from parity.fixtures import randomise  # noqa: E402

WEIGHTS = "mindspore_model.safetensors"

# ---------------------------------------------------------------------------------------------------------------
# writers: diffusers names -> Wan-AI names (the inverse of what the converter reads, written independently)
# ---------------------------------------------------------------------------------------------------------------
T_TOP = {"condition_embedder.time_embedder.linear_1": "time_embedding.0",
         "condition_embedder.time_embedder.linear_2": "time_embedding.2",
         "condition_embedder.text_embedder.linear_1": "text_embedding.0",
         "condition_embedder.text_embedder.linear_2": "text_embedding.2",
         "condition_embedder.time_proj": "time_projection.1", "proj_out": "head.head",
         "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
         "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
         "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
         "condition_embedder.image_embedder.norm2": "img_emb.proj.4", "patch_embedding": "patch_embedding"}
T_ATTN = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "norm_q": "norm_q", "norm_k": "norm_k",
          "add_k_proj": "k_img", "add_v_proj": "v_img", "norm_added_k": "norm_k_img"}


def wan_transformer_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    if key == "condition_embedder.image_embedder.pos_embed":
        return "img_emb.emb_pos"
    module, leaf = key.rsplit(".", 1)
    if module in T_TOP:
        return f"{T_TOP[module]}.{leaf}"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    n, rest = m.group(1), m.group(2)
    if rest == "scale_shift_table":
        return f"blocks.{n}.modulation"
    if rest.startswith(("attn1.", "attn2.")):
        module = rest[len("attn1."):].rsplit(".", 1)[0]
        return f"blocks.{n}.{'self_attn' if rest[4] == '1' else 'cross_attn'}.{T_ATTN[module]}.{leaf}"
    if rest.startswith("norm2."):
        return f"blocks.{n}.norm3.{leaf}"
    return f"blocks.{n}." + {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}[rest.rsplit(".", 1)[0]] + f".{leaf}"


def wan_umt5_key(key: str) -> str:
    if key == "shared.weight":
        return "token_embedding.weight"
    if key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    n, layer, rest = re.fullmatch(r"encoder\.block\.(\d+)\.layer\.(\d)\.(.+)", key).groups()
    table = {"layer_norm.weight": f"norm{int(layer) + 1}.weight",
             "SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
             "DenseReluDense.wi_0.weight": "ffn.gate.0.weight", "DenseReluDense.wi_1.weight": "ffn.fc1.weight",
             "DenseReluDense.wo.weight": "ffn.fc2.weight"}
    return f"blocks.{n}." + table.get(rest, rest.replace("SelfAttention.", "attn."))


RES = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
       "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
       "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}


def wan_vae_key(key: str, cfg: dict) -> str:
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    part, _, rest = key.partition(".")
    if part in top:
        return f"{top[part]}.{rest}"
    if rest.startswith(("conv_in.", "conv_out.", "norm_out.")):
        m, leaf = rest.split(".", 1)
        return f"{part}." + {"conv_in": "conv1", "conv_out": "head.2", "norm_out": "head.0"}[m] + f".{leaf}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", rest)
    if m:
        kind, i, leaf = m.groups()
        return (f"{part}.middle.1.{leaf}" if kind == "attentions" else f"{part}.middle.{2 * int(i)}.{RES[leaf]}")
    m = re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest)
    if m:  # the encoder's list is flat in both
        return f"encoder.downsamples.{m.group(1)}.{RES.get(m.group(2), m.group(2))}"
    i, j, leaf = re.fullmatch(r"up_blocks\.(\d+)\.(?:resnets|upsamplers)\.(\d+)\.(.+)", rest).groups()
    per_level = cfg["num_res_blocks"] + 2  # resnets + one resample
    if ".upsamplers." in rest:
        return f"decoder.upsamples.{int(i) * per_level + cfg['num_res_blocks'] + 1}.{leaf}"
    return f"decoder.upsamples.{int(i) * per_level + int(j)}.{RES[leaf]}"


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------
T2V = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16, freq_dim=16,
           ffn_dim=32, num_layers=2, patch_size=(1, 2, 2))
I2V = dict(T2V, in_channels=8, image_dim=20, added_kv_proj_dim=24)
FLF2V = dict(I2V, pos_embed_seq_len=8)
UMT5 = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
VAES = {"wan21-shape": dict(base_dim=4, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                            temperal_downsample=[False, True, True]),
        "3level-1res": dict(base_dim=4, z_dim=3, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                            temperal_downsample=[True, False])}


def torch_state(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def released_config(cfg: dict, model_type: str) -> dict:
    """Wan-AI's config.json for a WanModel of these sizes."""
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": model_type,
            "patch_size": list(cfg["patch_size"]), "text_len": 512, "in_dim": cfg["in_channels"], "dim": dim,
            "ffn_dim": cfg["ffn_dim"], "freq_dim": cfg["freq_dim"], "text_dim": cfg["text_dim"],
            "out_dim": cfg["out_channels"], "num_heads": cfg["num_attention_heads"], "num_layers": cfg["num_layers"],
            "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}


def make_transformer(cfg: dict, seed: int):
    torch.manual_seed(seed)
    model = diffusers.WanTransformer3DModel(**cfg)
    randomise(model, seed)
    return model


@pytest.fixture(scope="module")
def transformers_(tmp_path_factory):
    """{case: (diffusers folder, original state dict, released config)}"""
    out = {}
    for seed, (case, cfg, kind) in enumerate((("t2v", T2V, "t2v"), ("i2v", I2V, "i2v"), ("flf2v", FLF2V, "flf2v"))):
        root = tmp_path_factory.mktemp(f"wan-{case}")
        model = make_transformer(cfg, seed)
        model.save_pretrained(root / "diffusers")
        state = torch_state(model)
        original = {wan_transformer_key(k): v for k, v in state.items()}
        assert len(original) == len(state)
        out[case] = (root / "diffusers", original, released_config(cfg, kind), state)
    return out


def write_release_transformer(folder, original: dict, released: dict, shards: int = 1):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(released))
    if shards == 1:
        safetensors_torch.save_file(original, str(folder / "diffusion_pytorch_model.safetensors"))
        return
    keys = sorted(original)
    weight_map = {}
    for s in range(shards):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: original[k] for k in keys[s::shards]}
        safetensors_torch.save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def convert(src, dst, **kw) -> dict:
    convert_checkpoint(src, dst, progress=False, **kw)
    return load_safetensors(dst / WEIGHTS)


def assert_identical(a: dict, b: dict, where: str):
    assert set(a) == set(b), f"{where}: {sorted(set(a) ^ set(b))[:6]}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{where}: {k}"
        assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), f"{where}: {k} differs"


def one_line_refusal(capsys, args, dst, needle):
    capsys.readouterr()  # what fixtures printed before (save_pretrained's progress bars)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not dst.exists() and not list(dst.parent.glob(f".{dst.name}*")), "something was written at DST"
    return err


# ---------------------------------------------------------------------------------------------------------------
# the writers against Wan's source names and against diffusers' own converters
# ---------------------------------------------------------------------------------------------------------------
def test_writers_use_wan_source_names(transformers_):
    _, original, _, _ = transformers_["i2v"]
    # names as wan/modules/model.py defines them (WanModel, WanAttentionBlock, WanI2VCrossAttention, Head, MLPProj)
    for name in ("patch_embedding.weight", "text_embedding.0.weight", "text_embedding.2.bias", "time_embedding.0.weight",
                 "time_projection.1.weight", "blocks.0.self_attn.q.weight", "blocks.1.self_attn.o.bias",
                 "blocks.0.self_attn.norm_q.weight", "blocks.0.cross_attn.k_img.weight",
                 "blocks.0.cross_attn.norm_k_img.weight", "blocks.1.norm3.weight", "blocks.1.norm3.bias",
                 "blocks.0.ffn.0.weight", "blocks.0.ffn.2.bias", "blocks.0.modulation", "head.head.weight",
                 "head.modulation", "img_emb.proj.0.weight", "img_emb.proj.1.weight", "img_emb.proj.3.bias",
                 "img_emb.proj.4.weight"):
        assert name in original, name
    assert tuple(original["blocks.0.modulation"].shape) == (1, 6, 24)
    assert tuple(original["head.modulation"].shape) == (1, 2, 24)
    assert not any(".norm2." in k or ".norm1." in k for k in original)  # Wan's norm1/norm2 have no weights
    assert "img_emb.emb_pos" in transformers_["flf2v"][1]
    # wan/modules/t5.py: T5Encoder(shared_pos=False), T5SelfAttention, T5FeedForward
    assert [wan_umt5_key(k) for k in ("shared.weight", "encoder.block.3.layer.0.SelfAttention.q.weight",
                                      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                      "encoder.block.0.layer.1.layer_norm.weight",
                                      "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
                                      "encoder.block.0.layer.1.DenseReluDense.wi_1.weight",
                                      "encoder.block.0.layer.1.DenseReluDense.wo.weight",
                                      "encoder.final_layer_norm.weight")] == [
        "token_embedding.weight", "blocks.3.attn.q.weight", "blocks.0.pos_embedding.embedding.weight",
        "blocks.0.norm2.weight", "blocks.0.ffn.gate.0.weight", "blocks.0.ffn.fc1.weight", "blocks.0.ffn.fc2.weight",
        "norm.weight"]
    # wan/modules/vae.py: Decoder3d's flat upsamples, 2 res blocks: 3 resnets + 1 Resample per level
    cfg = VAES["wan21-shape"]
    assert wan_vae_key("decoder.up_blocks.1.resnets.0.conv_shortcut.weight", cfg) == "decoder.upsamples.4.shortcut.weight"
    assert wan_vae_key("decoder.up_blocks.2.upsamplers.0.time_conv.bias", cfg) == "decoder.upsamples.11.time_conv.bias"
    assert wan_vae_key("encoder.mid_block.resnets.1.norm2.gamma", cfg) == "encoder.middle.2.residual.3.gamma"
    assert wan_vae_key("decoder.norm_out.gamma", cfg) == "decoder.head.0.gamma"


@pytest.mark.parametrize("case", ["t2v", "i2v"])
def test_transformer_writer_agrees_with_diffusers(transformers_, case):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    _, original, _, state = transformers_[case]
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


# ---------------------------------------------------------------------------------------------------------------
# transformer
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,shards", [("t2v", 1), ("i2v", 3), ("flf2v", 1)])
def test_transformer_original_equals_diffusers(transformers_, tmp_path, case, shards):
    folder, original, released, _ = transformers_[case]
    expected = convert(folder, tmp_path / "from-diffusers")
    write_release_transformer(tmp_path / "release", original, released, shards)
    got = convert(tmp_path / "release", tmp_path / "from-original")
    assert_identical(got, expected, case)
    ours = json.loads((tmp_path / "from-original" / "config.json").read_text())
    theirs = json.loads((tmp_path / "from-diffusers" / "config.json").read_text())
    for k in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "ffn_dim", "num_layers",
              "text_dim", "freq_dim", "image_dim", "added_kv_proj_dim", "pos_embed_seq_len", "cross_attn_norm",
              "qk_norm", "eps"):
        assert ours.get(k) == theirs.get(k), k
    assert list(ours["patch_size"]) == list(theirs["patch_size"])
    manifest = json.loads((tmp_path / "from-original" / "manifest.json").read_text())
    comp = manifest["components"]["."]
    assert comp["audit"]["passed"] and comp["notes"]["layout"] == "wan-transformer"
    assert comp["tensors"]["blocks.0.norm2.weight"]["source"] == "blocks.0.norm3.weight"


def test_transformer_single_file_prefixed_and_heads(transformers_, tmp_path, capsys):
    """A repackaged single file (`model.diffusion_model.` prefix, bf16): heads come from --config; without it a width
    that is not a multiple of 128 is refused with one line."""
    folder, original, released, _ = transformers_["t2v"]
    path = tmp_path / "wan_t2v_bf16.safetensors"
    safetensors_torch.save_file({f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in original.items()},
                                str(path))
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(path), str(dst)], dst, "num_heads")
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps(released))
    got = convert(path, dst, config_dir=cfg_dir)
    (tmp_path / "config.json").write_text(json.dumps(released))  # a release config.json next to the file: used
    assert_identical(convert(path, tmp_path / "dst2"), got, "sibling config.json")
    bf16 = {k: v.to(torch.bfloat16).float().numpy() for k, v in transformers_["t2v"][3].items()}
    assert set(got) == set(convert(folder, tmp_path / "ref"))
    header = read_header(dst / WEIGHTS)[0]
    for k, v in got.items():  # kept bf16 (read back widened): the bf16 rounding of the same diffusers weights
        assert header[k].dtype == "BF16" and np.array_equal(v, bf16[k]), k


def test_transformer_head_dim_default_128(tmp_path):
    """No config.json and a width that is a multiple of 128: heads = dim / 128, Wan's head dim."""
    cfg = dict(T2V, num_attention_heads=1, attention_head_dim=128, ffn_dim=8, num_layers=1)
    model = make_transformer(cfg, 5)
    path = tmp_path / "wan.safetensors"
    safetensors_torch.save_file({wan_transformer_key(k): v for k, v in torch_state(model).items()}, str(path))
    convert(path, tmp_path / "dst")
    written = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert written["num_attention_heads"] == 1 and written["attention_head_dim"] == 128


# ---------------------------------------------------------------------------------------------------------------
# UMT5
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def umt5(tmp_path_factory):
    root = tmp_path_factory.mktemp("umt5")
    torch.manual_seed(0)
    model = randomise(transformers.UMT5EncoderModel(transformers.UMT5Config(**UMT5)), 0)
    model.save_pretrained(root / "transformers")
    state = {k: v for k, v in torch_state(model).items() if k != "encoder.embed_tokens.weight"}
    original = {wan_umt5_key(k): v for k, v in state.items()}
    assert len(original) == len(state)
    return root / "transformers", original, state


def test_umt5_original_pth_equals_transformers(umt5, tmp_path):
    folder, original, _ = umt5
    expected = convert(folder, tmp_path / "from-transformers")
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(original, path)
    got = convert(path, tmp_path / "from-original")
    assert_identical(got, expected, "umt5")
    ours = json.loads((tmp_path / "from-original" / "config.json").read_text())
    for k, v in UMT5.items():
        assert ours[k] == v, k
    assert ours["dense_act_fn"] == "gelu_new" and ours["is_gated_act"] is True


def test_umt5_xxl_config_built_in():
    from converters.wan_original import UMT5_ROWS, infer_umt5_config, renamed_shapes  # noqa: F401
    from converters.safetensors_io import TensorRef

    xxl = {"token_embedding.weight": (256384, 4096), "blocks.0.attn.q.weight": (4096, 4096),
           "blocks.0.pos_embedding.embedding.weight": (32, 64), "blocks.0.ffn.gate.0.weight": (10240, 4096),
           "blocks.0.ffn.fc1.weight": (10240, 4096)}
    xxl.update({f"blocks.{i}.norm1.weight": (4096,) for i in range(24)})
    refs = {k: TensorRef("x", k, "BF16", s, 0, 0) for k, s in xxl.items()}
    cfg = infer_umt5_config(renamed_shapes(UMT5_ROWS, refs))
    assert (cfg["vocab_size"], cfg["d_model"], cfg["d_ff"], cfg["num_layers"], cfg["num_heads"], cfg["d_kv"],
            cfg["relative_attention_num_buckets"], cfg["relative_attention_max_distance"], cfg["feed_forward_proj"]) == (
        256384, 4096, 10240, 24, 64, 64, 32, 128, "gated-gelu")


def fp8_pair(w: torch.Tensor, dtype=torch.float8_e4m3fn):
    """(fp8 weight, float32 scale) with amax at 448 * 0.5; and the value they stand for (torch's float8 cast)."""
    scale = (w.abs().max().float() / 224.0).reshape(())
    q = (w.float() / scale).to(dtype)
    return q, scale, q.float() * scale


@pytest.mark.parametrize("layout", ["original", "transformers"])
def test_umt5_fp8_scaled_single_file(umt5, tmp_path, layout):
    """A scaled-fp8 single file (F8_E4M3 weights + per-tensor `scale_weight`, the `scaled_fp8` marker, norms and the
    bias table left float): every tensor equals torch's float8 -> float32 cast times its scale."""
    _, original, state = umt5
    names = original if layout == "original" else state
    tensors, expected = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in names.items():
        target = k if layout == "transformers" else {wan_umt5_key(d): d for d in state}[k]
        if k.endswith(".weight") and v.ndim == 2 and "pos_embedding" not in k and "relative_attention" not in k:
            q, s, value = fp8_pair(v)
            tensors[k], tensors[k[: -len("weight")] + "scale_weight"] = q, s
            expected[target] = value.numpy()
        else:
            tensors[k] = v
            expected[target] = v.float().numpy()
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    assert read_header(path)[0]["shared.weight" if layout == "transformers" else "token_embedding.weight"].dtype == "F8_E4M3"
    got = convert(path, tmp_path / "dst")
    assert set(got) == set(expected)
    for k in got:
        assert got[k].dtype == np.float32 and np.array_equal(got[k], expected[k]), k
    manifest = json.loads((tmp_path / "dst" / "manifest.json").read_text())["components"]["."]
    assert manifest["audit"]["passed"]
    assert sorted(manifest["audit"]["dropped"]) == sorted(k for k in tensors if k.endswith("scale_weight") or k == "scaled_fp8")
    assert manifest["tensors"]["shared.weight"]["dtype_reason"] == "F8_E4M3 stored as F32"


def test_umt5_fp8_unscaled_and_e5m2(umt5, tmp_path):
    """A plain fp8 cast (no scales anywhere): decoded exactly, scale 1; E5M2 too."""
    _, original, state = umt5
    back = {wan_umt5_key(d): d for d in state}
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        tensors = {k: v.to(dtype) for k, v in original.items()}
        path = tmp_path / f"t5_{str(dtype)[6:]}.safetensors"
        safetensors_torch.save_file(tensors, str(path))
        got = convert(path, tmp_path / f"dst-{str(dtype)[6:]}")
        for k, v in tensors.items():
            assert np.array_equal(got[back[k]], v.float().numpy()), k


def test_fp8_decoder_all_bit_patterns():
    bits = torch.arange(256, dtype=torch.uint8)
    for tag, dtype in (("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)):
        ref = bits.view(dtype).float().numpy()
        got = fp8_to_float32(bits.numpy(), tag)
        assert got.dtype == np.float32
        assert np.array_equal(np.isnan(got), np.isnan(ref)), tag
        finite = ~np.isnan(ref)
        assert np.array_equal(got[finite].view(np.uint32), ref[finite].view(np.uint32)), tag  # bit-exact, signed zeros


# ---------------------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    out = {}
    for seed, (name, cfg) in enumerate(VAES.items()):
        root = tmp_path_factory.mktemp(f"vae-{name}")
        torch.manual_seed(seed)
        model = diffusers.AutoencoderKLWan(**cfg)
        randomise(model, seed, vector_std=0.3)
        model.save_pretrained(root / "diffusers")
        state = torch_state(model)
        original = {wan_vae_key(k, cfg): v for k, v in state.items()}
        assert len(original) == len(state)
        out[name] = (root / "diffusers", original, state)
    return out


def test_vae_writer_agrees_with_diffusers(vaes):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    _, original, state = vaes["wan21-shape"]  # diffusers' function is written for Wan 2.1's 4 levels x 2 blocks
    back = convert_wan_vae_to_diffusers(dict(original))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("name", list(VAES))
def test_vae_original_pth_equals_diffusers(vaes, tmp_path, name):
    folder, original, _ = vaes[name]
    expected = convert(folder, tmp_path / "from-diffusers")
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(original, path)
    got = convert(path, tmp_path / "from-original")
    assert_identical(got, expected, name)
    ours = json.loads((tmp_path / "from-original" / "config.json").read_text())
    for k, v in VAES[name].items():
        assert ours[k] == v, k


# ---------------------------------------------------------------------------------------------------------------
# a whole original release folder
# ---------------------------------------------------------------------------------------------------------------
def write_release(root, transformers_, umt5, vaes, case="t2v"):
    _, original, released, _ = transformers_[case]
    write_release_transformer(root, original, released, shards=2)
    torch.save(vaes["wan21-shape"][1], root / "Wan2.1_VAE.pth")
    torch.save(umt5[1], root / "models_t5_umt5-xxl-enc-bf16.pth")
    tok = root / "google" / "umt5-xxl"
    tok.mkdir(parents=True)
    (tok / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    (tok / "spiece.model").write_bytes(b"not a real sentencepiece model: copied verbatim")
    return root


def test_release_folder_to_wan_pipeline(transformers_, umt5, vaes, tmp_path):
    root = write_release(tmp_path / "Wan2.1-T2V-tiny", transformers_, umt5, vaes)
    dst = tmp_path / "converted"
    assert main(["convert", str(root), str(dst)]) == 0
    index = json.loads((dst / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert {k: v[1] for k, v in index.items() if not k.startswith("_")} == {
        "transformer": "WanTransformer3DModel", "vae": "AutoencoderKLWan", "text_encoder": "UMT5EncoderModel",
        "tokenizer": "T5TokenizerFast", "scheduler": "UniPCMultistepScheduler"}
    sched = json.loads((dst / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["_class_name"], sched["prediction_type"], sched["use_flow_sigmas"], sched["flow_shift"]) == (
        "UniPCMultistepScheduler", "flow_prediction", True, 3.0)
    assert (dst / "tokenizer" / "spiece.model").read_bytes() == (root / "google/umt5-xxl/spiece.model").read_bytes()
    for comp, folder in (("transformer", transformers_["t2v"][0]), ("text_encoder", umt5[0]),
                         ("vae", vaes["wan21-shape"][0])):
        assert_identical(load_safetensors(dst / comp / WEIGHTS), convert(folder, tmp_path / f"ref-{comp}"), comp)
        assert json.loads((dst / comp / "config.json").read_text())["_class_name"] in index[comp][1]
    manifest = json.loads((dst / "manifest.json").read_text())
    assert all(c["audit"]["passed"] for c in manifest["components"].values() if "audit" in c)


def test_release_folder_i2v_needs_wan_clip(transformers_, umt5, vaes, tmp_path, capsys):
    root = write_release(tmp_path / "Wan2.1-I2V-tiny-480P", transformers_, umt5, vaes, case="i2v")
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(root), str(dst)], dst, "models_clip_open-clip-xlm-roberta")
    torch.save({"vision_model.embeddings.class_embedding": torch.zeros(8)},
               root / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    one_line_refusal(capsys, ["convert", str(root), str(dst)], dst, "expected Wan's open-clip names")


def test_release_folder_missing_vae(transformers_, umt5, vaes, tmp_path, capsys):
    root = write_release(tmp_path / "rel", transformers_, umt5, vaes)
    (root / "Wan2.1_VAE.pth").unlink()
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(root), str(dst)], dst, "Wan2.1_VAE.pth")


# ---------------------------------------------------------------------------------------------------------------
# bad inputs: exit 2, one line, nothing at DST
# ---------------------------------------------------------------------------------------------------------------
def _bad_unknown(o):
    o["blocks.0.self_attn.extra.weight"] = torch.zeros(3)


def _bad_missing(o):
    del o["blocks.1.cross_attn.v.bias"]


def _bad_shape(o):
    o["blocks.0.ffn.2.weight"] = torch.zeros(24, 31)


def _bad_diffusers_name(o):
    o["blocks.0.attn1.to_q.weight"] = o.pop("blocks.0.self_attn.q.weight")  # a mixed file


BAD = {"unknown-key": (_bad_unknown, "blocks.0.self_attn.extra.weight"),
       "missing-tensor": (_bad_missing, "blocks.1.attn2.to_v.bias"),
       "wrong-shape": (_bad_shape, "blocks.0.ffn.2.weight"),
       "mixed-names": (_bad_diffusers_name, "blocks.0.attn1.to_q.weight")}


@pytest.mark.parametrize("case", list(BAD))
def test_transformer_bad_inputs(transformers_, tmp_path, capsys, case):
    _, original, released, _ = transformers_["t2v"]
    bad = dict(original)
    edit, needle = BAD[case]
    edit(bad)
    write_release_transformer(tmp_path / "rel", bad, released)
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(tmp_path / "rel"), str(dst)], dst, needle)


def test_released_config_disagreeing_with_shapes(transformers_, tmp_path, capsys):
    _, original, released, _ = transformers_["t2v"]
    write_release_transformer(tmp_path / "rel", original, dict(released, ffn_dim=64))
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(tmp_path / "rel"), str(dst)], dst, "ffn_dim=64")
    _, i2v, i2v_released, _ = transformers_["i2v"]
    write_release_transformer(tmp_path / "rel2", i2v, dict(i2v_released, model_type="t2v"))
    one_line_refusal(capsys, ["convert", str(tmp_path / "rel2"), str(dst)], dst, "model_type='t2v'")


def test_truncated_files(transformers_, umt5, tmp_path, capsys):
    _, original, released, _ = transformers_["t2v"]
    path = tmp_path / "wan.safetensors"
    safetensors_torch.save_file(original, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(path), str(dst)], dst, "truncated")
    pth = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(umt5[1], pth)
    pth.write_bytes(pth.read_bytes()[:300])
    one_line_refusal(capsys, ["convert", str(pth), str(dst)], dst, "cannot read")


@pytest.mark.parametrize("case", ["missing-scale", "scale-of-float", "vector-scale", "orphan-scale"])
def test_fp8_ambiguous_scales_refused(umt5, tmp_path, capsys, case):
    _, original, _ = umt5
    tensors = {}
    for k, v in original.items():
        if k.endswith("attn.q.weight"):
            q, s, _ = fp8_pair(v)
            tensors[k], tensors[k[: -len("weight")] + "scale_weight"] = q, s
        else:
            tensors[k] = v
    needle = {"missing-scale": "blocks.1.attn.q.weight", "scale-of-float": "blocks.0.attn.k.scale_weight",
              "vector-scale": "blocks.0.attn.q.scale_weight", "orphan-scale": "blocks.0.attn.zz.scale_weight"}[case]
    if case == "missing-scale":
        del tensors["blocks.1.attn.q.scale_weight"]
    elif case == "scale-of-float":
        tensors["blocks.0.attn.k.scale_weight"] = torch.ones(())
    elif case == "vector-scale":
        tensors["blocks.0.attn.q.scale_weight"] = torch.ones(4)
    else:
        tensors["blocks.0.attn.zz.scale_weight"] = torch.ones(())
    path = tmp_path / "t5_fp8.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(path), str(dst)], dst, needle)


def test_vae_bad_inputs(vaes, tmp_path, capsys):
    _, original, _ = vaes["wan21-shape"]
    bad = dict(original)
    del bad["decoder.upsamples.7.resample.1.bias"]
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(bad, path)
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(path), str(dst)], dst, "decoder.up_blocks.1.upsamplers.0.resample.1.bias")
    bad = dict(original)
    bad["decoder.upsamples.7.resample.1.weight"] = bad["decoder.upsamples.7.resample.1.weight"][:, :, :2]
    torch.save(bad, path)
    one_line_refusal(capsys, ["convert", str(path), str(dst)], dst, "decoder.upsamples.7.resample.1.weight")


# ---------------------------------------------------------------------------------------------------------------
# CLIP vision keys: `vision_model.` prefixed (released, transformers 4) or bare (transformers 5 CLIPVisionModel)
# ---------------------------------------------------------------------------------------------------------------
CLIP_VISION = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, image_size=28,
                   patch_size=14, projection_dim=8)


def _respell(folder, dst, rename):
    import shutil

    shutil.copytree(folder, dst)
    path = dst / "model.safetensors"
    state = safetensors_torch.load_file(str(path))
    safetensors_torch.save_file({rename(k): v for k, v in state.items()}, str(path))
    return dst


@pytest.mark.parametrize("cls", ["CLIPVisionModel", "CLIPVisionModelWithProjection"])
def test_clip_vision_prefixed_and_bare_keys(tmp_path, capsys, cls):
    torch.manual_seed(0)
    model = randomise(getattr(transformers, cls)(transformers.CLIPVisionConfig(**CLIP_VISION)), 0)
    model.save_pretrained(tmp_path / "saved")
    saved = set(safetensors_torch.load_file(str(tmp_path / "saved" / "model.safetensors")))
    prefixed = any(k.startswith("vision_model.") for k in saved)
    assert prefixed == (cls == "CLIPVisionModelWithProjection")  # what transformers 5 writes
    expected = convert(tmp_path / "saved", tmp_path / "ref")

    def other(k):  # the other spelling of the tower's keys (visual_projection stays outside the tower)
        if k.startswith("visual_projection."):
            return k
        return k[len("vision_model."):] if prefixed else "vision_model." + k

    respelled = _respell(tmp_path / "saved", tmp_path / "other", other)
    assert_identical(convert(respelled, tmp_path / "out"), expected, cls)
    # an older file with the position_ids buffer, in the other spelling: dropped
    state = safetensors_torch.load_file(str(respelled / "model.safetensors"))
    state[other("vision_model.embeddings.position_ids" if prefixed else "embeddings.position_ids")] = (
        torch.arange(5).reshape(1, 5))
    safetensors_torch.save_file(state, str(respelled / "model.safetensors"))
    assert_identical(convert(respelled, tmp_path / "out2"), expected, cls)
    # mixed spellings: one line, nothing written
    mixed = _respell(tmp_path / "saved", tmp_path / "mixed", lambda k: other(k) if "layers.1." in k else k)
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(mixed), str(dst)], dst, "mixes two key spellings")


# ---------------------------------------------------------------------------------------------------------------
# Wan's open-clip XLM-RoBERTa ViT-H/14 (I2V image encoder) -> CLIPVisionModel
# ---------------------------------------------------------------------------------------------------------------
WAN_CLIP = dict(hidden_size=160, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, image_size=28,
                patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)  # head dim 80, as ViT-H/14's
CLIP_LEAVES = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.0",
               "mlp.fc2": "mlp.2"}


def wan_clip_state(state: dict, out_dim: int = 12) -> dict:
    """transformers CLIPVisionModel (bare names) -> wan/modules/clip.py XLMRobertaCLIP names: the `visual` tower
    (fused to_qkv, unit-axis embeddings), plus what a real file also holds: the projection `visual.head`, text tower
    pieces and `log_scale`."""
    g = torch.Generator().manual_seed(3)
    out = {"visual.cls_embedding": state["embeddings.class_embedding"].reshape(1, 1, -1),
           "visual.pos_embedding": state["embeddings.position_embedding.weight"][None],
           "visual.patch_embedding.weight": state["embeddings.patch_embedding.weight"],
           "visual.head": torch.randn(state["pre_layrnorm.weight"].shape[0], out_dim, generator=g).to(
               state["pre_layrnorm.weight"].device),
           "textual.token_embedding.weight": torch.randn(10, 8, generator=g), "log_scale": torch.tensor(4.6)}
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for leaf in ("weight", "bias"):
            out[f"visual.{theirs}.{leaf}"] = state[f"{ours}.{leaf}"]
    for n in range(1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))):
        p = f"encoder.layers.{n}."
        for leaf in ("weight", "bias"):
            out[f"visual.transformer.{n}.attn.to_qkv.{leaf}"] = torch.cat(
                [state[f"{p}self_attn.{x}_proj.{leaf}"] for x in "qkv"])
            for ours, theirs in CLIP_LEAVES.items():
                out[f"visual.transformer.{n}.{theirs}.{leaf}"] = state[f"{p}{ours}.{leaf}"]
    return out


@pytest.fixture(scope="module")
def wan_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-clip")
    torch.manual_seed(0)
    model = randomise(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**WAN_CLIP)), 0)
    model.save_pretrained(root / "transformers")
    state = {k: v for k, v in torch_state(model).items() if not k.endswith("position_ids")}
    original = wan_clip_state(state)
    # names as wan/modules/clip.py defines them (VisionTransformer, AttentionBlock, SelfAttention)
    for name in ("visual.transformer.1.attn.to_qkv.weight", "visual.transformer.0.attn.proj.bias",
                 "visual.transformer.0.mlp.0.weight", "visual.transformer.1.mlp.2.bias", "visual.pre_norm.weight",
                 "visual.post_norm.bias", "visual.cls_embedding", "visual.pos_embedding"):
        assert name in original
    return root / "transformers", original


def test_wan_clip_equals_transformers(wan_clip, tmp_path):
    folder, original = wan_clip
    expected = convert(folder, tmp_path / "ref")
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(original, path)
    got = convert(path, tmp_path / "out")
    assert_identical(got, expected, "clip")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert all(cfg[k] == v for k, v in WAN_CLIP.items()), cfg
    dropped = json.loads((tmp_path / "out" / "manifest.json").read_text())["components"]["."]["audit"]["dropped"]
    assert sorted(dropped) == ["log_scale", "textual.token_embedding.weight", "visual.head"]


def test_release_folder_i2v_to_wan_i2v_pipeline(transformers_, umt5, vaes, wan_clip, tmp_path):
    root = write_release(tmp_path / "Wan2.1-I2V-tiny-720P", transformers_, umt5, vaes, case="i2v")
    torch.save(wan_clip[1], root / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    dst = tmp_path / "converted"
    assert main(["convert", str(root), str(dst)]) == 0
    index = json.loads((dst / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline"
    assert index["image_encoder"] == ["transformers", "CLIPVisionModel"]
    assert index["image_processor"] == ["transformers", "CLIPImageProcessor"]
    proc = json.loads((dst / "image_processor" / "preprocessor_config.json").read_text())
    assert proc["crop_size"] == {"height": 224, "width": 224} and proc["image_processor_type"] == "CLIPImageProcessor"
    assert json.loads((dst / "scheduler" / "scheduler_config.json").read_text())["flow_shift"] == 5.0  # 720P
    for comp, folder in (("transformer", transformers_["i2v"][0]), ("image_encoder", wan_clip[0])):
        assert_identical(load_safetensors(dst / comp / WEIGHTS), convert(folder, tmp_path / f"ref-{comp}"), comp)


def test_wan22_vae_refused(vaes, tmp_path, capsys):
    _, original, _ = vaes["wan21-shape"]
    bad = dict(original)
    bad["encoder.downsamples.0.downsamples.0.residual.0.gamma"] = torch.ones(4, 1, 1, 1)
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save(bad, path)
    dst = tmp_path / "dst"
    one_line_refusal(capsys, ["convert", str(path), str(dst)], dst, "Wan 2.2 VAE")


# ---------------------------------------------------------------------------------------------------------------
# the writers' same-shape choices checked by computation (a swap of equal-shaped tensors passes every shape audit):
# Wan's formulas (wan/modules/t5.py T5FeedForward, wan/modules/clip.py AttentionBlock) on the original-named weights
# must give what transformers computes with the diffusers-named ones
# ---------------------------------------------------------------------------------------------------------------
def test_umt5_ffn_gate_mapping_by_computation(umt5):
    folder, original, _ = umt5
    model = transformers.UMT5EncoderModel.from_pretrained(folder).eval()
    x = torch.randn(2, 5, UMT5["d_model"], generator=torch.Generator().manual_seed(1))
    w = {k: v.float() for k, v in original.items() if k.startswith("blocks.1.ffn.")}
    gelu_tanh = torch.nn.GELU(approximate="tanh")
    wan = (x @ w["blocks.1.ffn.fc1.weight"].T * gelu_tanh(x @ w["blocks.1.ffn.gate.0.weight"].T)) @ \
        w["blocks.1.ffn.fc2.weight"].T  # Wan: fc2(fc1(x) * gate(x)), gate = Sequential(Linear, GELU(tanh))
    with torch.no_grad():
        ref = model.encoder.block[1].layer[1].DenseReluDense(x)
    torch.testing.assert_close(wan, ref, rtol=1e-5, atol=1e-6)


def test_wan_clip_block_mapping_by_computation(wan_clip):
    folder, original = wan_clip
    model = transformers.CLIPVisionModel.from_pretrained(folder).eval()
    n, d = WAN_CLIP["num_attention_heads"], WAN_CLIP["hidden_size"] // WAN_CLIP["num_attention_heads"]
    x = torch.randn(2, 5, WAN_CLIP["hidden_size"], generator=torch.Generator().manual_seed(2))
    p = {k[len("visual.transformer.0."):]: v for k, v in original.items() if k.startswith("visual.transformer.0.")}

    def ln(t, name):
        return torch.nn.functional.layer_norm(t, t.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)

    def lin(t, name):
        return t @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    b, s, c = x.shape  # Wan: q, k, v = to_qkv(x).view(b, s, 3, n, d).unbind(2); pre-norm block, exact GELU
    q, k, v = lin(ln(x, "norm1"), "attn.to_qkv").view(b, s, 3, n, d).unbind(2)
    att = torch.softmax(torch.einsum("bind,bjnd->bnij", q, k) / d ** 0.5, -1)
    h = x + lin(torch.einsum("bnij,bjnd->bind", att, v).reshape(b, s, c), "attn.proj")
    wan = h + lin(torch.nn.functional.gelu(lin(ln(h, "norm2"), "mlp.0")), "mlp.2")
    with torch.no_grad():
        ref = model.encoder.layers[0](x, None)  # transformers 5: CLIPVisionModel is the tower itself
    ref = ref[0] if isinstance(ref, tuple) else ref
    torch.testing.assert_close(wan, ref, rtol=1e-5, atol=1e-5)


def test_original_i2v_transformer_runs_like_diffusers(transformers_, tmp_path):
    """End to end: the folder converted from Wan-AI names loads (config inferred from shapes + config.json) and
    computes what diffusers computes with the diffusers-named weights (fp32, I2V with image tokens)."""
    import mindspore as ms
    from mindspore import Tensor

    from mindport.models.transformer_wan import WanTransformer3DModel

    folder, original, released, _ = transformers_["i2v"]
    write_release_transformer(tmp_path / "release", original, released)
    convert_checkpoint(tmp_path / "release", tmp_path / "ms", progress=False)
    ours = WanTransformer3DModel.from_pretrained(tmp_path / "ms")
    ref = diffusers.WanTransformer3DModel.from_pretrained(folder).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, I2V["in_channels"], 2, 4, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 512, I2V["text_dim"])).astype(np.float32)
    img = rng.standard_normal((1, 5, I2V["image_dim"])).astype(np.float32)
    t = np.array([700.0], np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), torch.from_numpy(img)).sample
    got = ours(Tensor(x), Tensor(t), Tensor(ctx), Tensor(img)).sample.asnumpy()
    err = np.linalg.norm(got - expected.numpy()) / np.linalg.norm(expected.numpy())
    assert err <= 1e-5, err
    assert ms.float32 == ours.proj_out.weight.dtype


def test_transformer_fp8_scaled_single_file(transformers_, tmp_path):
    """A scaled-fp8 transformer file (repackaging style: `model.diffusion_model.` prefix, 2-D weights fp8 with
    per-tensor scales, the rest bf16): each weight is torch's float8 cast times its scale."""
    _, original, released, state = transformers_["t2v"]
    back = {wan_transformer_key(k): k for k in state}
    tensors, expected = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in original.items():
        key = f"model.diffusion_model.{k}"
        if k.endswith(".weight") and v.ndim == 2:
            q, s, value = fp8_pair(v)
            tensors[key], tensors[key[: -len("weight")] + "scale_weight"] = q, s
            expected[back[k]] = value.numpy()
        else:
            tensors[key] = v.to(torch.bfloat16)
            expected[back[k]] = v.to(torch.bfloat16).float().numpy()
    path = tmp_path / "wan2.1_t2v_fp8_e4m3fn_scaled.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps(released))
    got = convert(path, tmp_path / "dst", config_dir=cfg)
    assert set(got) == set(expected)
    for k in got:
        assert np.array_equal(got[k], expected[k]), k
    notes = json.loads((tmp_path / "dst" / "manifest.json").read_text())["components"]["."]["notes"]
    assert notes["fp8_scales"]["model.diffusion_model.blocks.0.self_attn.q.weight"] == \
        "model.diffusion_model.blocks.0.self_attn.q.scale_weight"


WAN_REPO = ["config.json", "diffusion_pytorch_model-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00002-of-00002.safetensors", "diffusion_pytorch_model.safetensors.index.json",
            "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/spiece.model",
            "google/umt5-xxl/tokenizer.json", "google/umt5-xxl/tokenizer_config.json",
            "google/umt5-xxl/special_tokens_map.json", "examples/i2v_input.JPG", "assets/logo.png", "README.md"]


def test_hub_patterns_of_an_original_wan_repo(monkeypatch):
    """A Hub id of an original release fetches the transformer shards, the VAE and T5 pickles and the tokenizer,
    not the examples or assets."""
    import fnmatch

    import huggingface_hub

    from converters.sources import hub_patterns

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo: list(WAN_REPO))
    patterns = hub_patterns("Wan-AI/Wan2.1-T2V-14B", None)
    fetched = sorted(f for f in WAN_REPO if any(fnmatch.fnmatch(f, p) for p in patterns))
    assert fetched == sorted(f for f in WAN_REPO if not f.startswith(("examples/", "assets/")) and f != "README.md")


def test_from_pretrained_on_a_release_folder(transformers_, tmp_path):
    """WanTransformer3DModel.from_pretrained reads an original release folder's transformer (converted in memory)."""
    from mindport.models.transformer_wan import WanTransformer3DModel

    _, original, released, _ = transformers_["t2v"]
    write_release_transformer(tmp_path / "release", original, released, shards=2)
    model = WanTransformer3DModel.from_pretrained(tmp_path / "release")
    converted = convert(tmp_path / "release", tmp_path / "ms")
    for name, p in model.parameters_and_names():
        assert np.array_equal(p.asnumpy(), converted[name]), name


# ---------------------------------------------------------------------------------------------------------------
# released sizes (built on the meta device: shapes only): the rows map every original key onto exactly the reference
# model's parameters, and the configs inferred from the shapes are Wan-AI's *-Diffusers configs
# ---------------------------------------------------------------------------------------------------------------
RELEASED = {
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json
    "t2v-1.3b": (dict(num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                      freq_dim=256, ffn_dim=8960, num_layers=30, patch_size=(1, 2, 2)), "t2v"),
    "i2v-14b": (dict(num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16, text_dim=4096,
                     freq_dim=256, ffn_dim=13824, num_layers=40, patch_size=(1, 2, 2), image_dim=1280,
                     added_kv_proj_dim=5120), "i2v"),
}


def _refs(shapes: dict):
    from converters.safetensors_io import TensorRef

    return {k: TensorRef("meta", k, "BF16", tuple(s), 0, 0) for k, s in shapes.items()}


def _audit(src, spec_shapes: dict):
    from converters.base import map_tensors

    spec = {k: (tuple(s), "float32") for k, s in spec_shapes.items()}
    mapped, audit = map_tensors(src.converter, src.tensors, spec, "meta")
    assert audit.as_dict()["passed"]
    return mapped


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_transformer_sizes(name, tmp_path):
    from converters.wan_original import component_source

    cfg, kind = RELEASED[name]
    with torch.device("meta"):
        model = diffusers.WanTransformer3DModel(**cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    original = {wan_transformer_key(k): s for k, s in shapes.items()}
    released = {"_class_name": "WanModel", "model_type": kind, "dim": 128 * cfg["num_attention_heads"],
                "num_heads": cfg["num_attention_heads"], "num_layers": cfg["num_layers"], "ffn_dim": cfg["ffn_dim"]}
    src = component_source(tmp_path, _refs(original), "wan-transformer", released)
    _audit(src, shapes)
    for k, v in cfg.items():
        assert list(src.config[k]) == list(v) if k == "patch_size" else src.config[k] == v, k
    assert src.config["qk_norm"] == "rms_norm_across_heads" and src.config["cross_attn_norm"] is True
    # without config.json: Wan's head dim 128 gives the same heads
    assert component_source(tmp_path, _refs(original), "wan-transformer").config == src.config


def test_released_vae_umt5_clip_sizes(tmp_path):
    from converters.wan_original import UMT5_XXL, component_source

    with torch.device("meta"):
        vae = diffusers.AutoencoderKLWan()  # diffusers' defaults are Wan 2.1's VAE
        t5 = transformers.UMT5EncoderModel(transformers.UMT5Config(**{
            k: v for k, v in UMT5_XXL.items() if k not in ("architectures",)}))
        clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, patch_size=14,
            image_size=224, hidden_act="gelu"))
    vshapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    src = component_source(tmp_path, _refs({wan_vae_key(k, vae.config): s for k, s in vshapes.items()}), "wan-vae")
    _audit(src, vshapes)
    for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample", "latents_mean", "latents_std"):
        assert list(src.config[k]) == list(vae.config[k]) if isinstance(vae.config[k], list) else \
            src.config[k] == vae.config[k], k
    tshapes = {k: tuple(v.shape) for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    src = component_source(tmp_path, _refs({wan_umt5_key(k): s for k, s in tshapes.items()}), "wan-umt5")
    _audit(src, tshapes)
    assert src.config == UMT5_XXL
    cshapes = {k: tuple(v.shape) for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    state = {k: torch.empty(s, device="meta") for k, s in cshapes.items()}
    wan = {k: tuple(v.shape) for k, v in wan_clip_state(state, out_dim=1024).items()}
    src = component_source(tmp_path, _refs(wan), "wan-clip")
    _audit(src, cshapes)
    assert (src.config["num_attention_heads"], src.config["image_size"], src.config["num_hidden_layers"],
            src.config["intermediate_size"], src.config["projection_dim"]) == (16, 224, 32, 5120, 1024)


def test_release_from_tiny_pipeline_generates_like_diffusers(tmp_path):
    """The whole path: the tiny Wan T2V fixture's weights written as an original Wan-AI release (this file's
    writers), converted by `mindport convert`, loaded by mindport's WanPipeline: the same frames as diffusers'
    WanPipeline on the diffusers folder (fp32, 2 steps, shared initial latents)."""
    import shutil

    from mindport import WanPipeline
    from parity.fixtures import build

    folder = build("wan-t2v-tiny")
    root = tmp_path / "Wan2.1-T2V-tiny"
    tcfg = json.loads((folder / "transformer" / "config.json").read_text())
    tstate = safetensors_torch.load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    released = released_config({**tcfg, "out_channels": tcfg["out_channels"] or tcfg["in_channels"]}, "t2v")
    write_release_transformer(root, {wan_transformer_key(k): v for k, v in tstate.items()}, released)
    vcfg = json.loads((folder / "vae" / "config.json").read_text())
    vstate = safetensors_torch.load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    torch.save({wan_vae_key(k, vcfg): v for k, v in vstate.items()}, root / "Wan2.1_VAE.pth")
    estate = safetensors_torch.load_file(str(folder / "text_encoder" / "model.safetensors"))
    torch.save({wan_umt5_key(k): v for k, v in estate.items() if k != "encoder.embed_tokens.weight"},
               root / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(folder / "tokenizer", root / "google" / "umt5-xxl")
    dst = tmp_path / "converted"
    assert main(["convert", str(root), str(dst)]) == 0
    # a 4-channel VAE has no released latent statistics (Wan 2.1's are for 16): the converter leaves them null;
    # give the converted folder the fixture's, which the pipeline needs to decode
    vae_cfg = json.loads((dst / "vae" / "config.json").read_text())
    assert vae_cfg["latents_mean"] is None
    vae_cfg.update(latents_mean=vcfg["latents_mean"], latents_std=vcfg["latents_std"])
    (dst / "vae" / "config.json").write_text(json.dumps(vae_cfg))

    kw = dict(prompt="the cat walking at night", negative_prompt="blurry", height=32, width=48, num_frames=5,
              num_inference_steps=2, guidance_scale=5.0)
    lat = np.random.default_rng(1).standard_normal((1, 4, 2, 8, 12)).astype(np.float32)
    ref = diffusers.WanPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = np.asarray(ref(**kw, latents=torch.from_numpy(lat), output_type="np").frames)
    ours = WanPipeline.from_pretrained(str(dst))
    ours.set_progress_bar_config(disable=True)
    got = np.asarray(ours(**kw, latents=lat, output_type="np")[0])
    err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    print(f"frames rel L2 {err:.2e}")
    assert got.shape == expected.shape and err <= 1e-4, err
