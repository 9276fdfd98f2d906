"""Parity of WanTransformer3DModel against diffusers 0.42.1 (tiny random configs, seeded): T2V, I2V, FLF2V, Wan 2.2
per-token timesteps, odd latent sizes, batch 2, fp16; parameter names; config nulls; bad inputs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from mindport.models.transformer_wan import WanTransformer3DModel  # noqa: E402
from parity.fixtures import randomise  # noqa: E402
from tests.helpers import assert_close, to_numpy, torch_state_to_numpy  # noqa: E402

TINY = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16, freq_dim=16,
            ffn_dim=32, num_layers=2, patch_size=(1, 2, 2))
I2V = dict(TINY, in_channels=8, image_dim=20, added_kv_proj_dim=24)  # added_kv_proj_dim = inner dim, as Wan's 5120

# name: (config, inputs: batch, latent (F, H, W), text tokens, image tokens per frame or None, timestep)
CASES = {
    "t2v": (TINY, dict(batch=1, latent=(2, 4, 6), text=7, image=None, t=[500.0])),
    "i2v": (I2V, dict(batch=1, latent=(2, 4, 4), text=512, image=5, t=[999.0])),
    # diffusers takes the last 512 context tokens as text: a shorter one splits by Python's slice rules
    "i2v-short-text": (I2V, dict(batch=1, latent=(1, 2, 4), text=300, image=5, t=[20.0])),
    "i2v-no-image": (I2V, dict(batch=1, latent=(1, 2, 4), text=512, image=None, t=[20.0])),
    "flf2v": (dict(I2V, pos_embed_seq_len=8), dict(batch=1, latent=(2, 2, 4), text=512, image=4, t=[700.0])),
    "odd-batch2": (dict(TINY, num_attention_heads=3, attention_head_dim=8, out_channels=None, cross_attn_norm=False,
                        eps=1e-5),
                   dict(batch=2, latent=(3, 6, 10), text=5, image=None, t=[999.0, 250.5])),
    # Wan 2.2 TI2V: one timestep per latent patch (expand_timesteps); a (2, 1, 2) patch checks the unpatchify order
    "per-token-t-patch212": (dict(TINY, patch_size=(2, 1, 2), out_channels=6),
                             dict(batch=2, latent=(4, 3, 4), text=6, image=None, t="per-token")),
}


def build(cfg, seed):
    """diffusers' model built under torch.manual_seed, every weight re-drawn non-zero, copied into ours."""
    torch.manual_seed(seed)
    ref = diffusers.WanTransformer3DModel(**cfg)
    tables = {k: v.clone() for k, v in ref.named_buffers()}
    randomise(ref, seed)  # leaves the computed rotary tables as diffusers made them
    assert all(torch.equal(b, tables[k]) for k, b in ref.named_buffers())
    ours = WanTransformer3DModel.from_config(cfg)
    ours.load_arrays(torch_state_to_numpy(ref))
    return ref, ours


def make_inputs(cfg, spec, rng):
    b, (f, h, w) = spec["batch"], spec["latent"]
    x = rng.standard_normal((b, cfg["in_channels"], f, h, w)).astype(np.float32)
    ctx = rng.standard_normal((b, spec["text"], cfg["text_dim"])).astype(np.float32)
    image = None
    if spec["image"] is not None:
        frames = 2 * b if cfg.get("pos_embed_seq_len") else b
        image = rng.standard_normal((frames, spec["image"], cfg["image_dim"])).astype(np.float32)
    if spec["t"] == "per-token":
        p = cfg["patch_size"]
        tokens = (f // p[0]) * (h // p[1]) * (w // p[2])
        t = np.round(rng.uniform(0, 1000, (b, tokens))).astype(np.float32)
        t[:, : tokens // 4] = 0.0  # TI2V: the conditioning frame's patches at t = 0
    else:
        t = np.array(spec["t"], np.float32)
    return x, t, ctx, image


def run_torch(ref, x, t, ctx, image):
    with torch.no_grad():
        return ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                   None if image is None else torch.from_numpy(image)).sample.numpy()


def run_ours(ours, x, t, ctx, image, dtype=ms.float32, **kwargs):
    def tensor(a):
        return None if a is None else Tensor(a).astype(dtype)

    return ours(tensor(x), Tensor(t), tensor(ctx), tensor(image), **kwargs)


def max_abs(actual, expected):
    return float(np.abs(to_numpy(actual).astype(np.float64) - expected).max())


@pytest.mark.parametrize("name", list(CASES))
def test_wan_transformer_matches_diffusers(name, rng):
    cfg, spec = CASES[name]
    ref, ours = build(cfg, seed=len(name))
    x, t, ctx, image = make_inputs(cfg, spec, rng)
    expected = run_torch(ref, x, t, ctx, image)
    out = run_ours(ours, x, t, ctx, image)
    assert out.sample.shape == expected.shape
    err = assert_close(out.sample, expected, 1e-5, where=f"WanTransformer3DModel[{name}]")
    peak = np.abs(expected).max()
    assert max_abs(out.sample, expected) <= 1e-5 * peak, f"{name}: max abs {max_abs(out.sample, expected):.2e}"
    # tuple form and indexing as diffusers'
    assert_close(out[0], expected, 1e-5, where=f"{name} out[0]")
    assert_close(run_ours(ours, x, t, ctx, image, return_dict=False)[0], expected, 1e-5, where=f"{name} tuple")
    print(f"{name}: rel L2 {err:.2e}, max abs {max_abs(out.sample, expected):.2e} (peak {peak:.2f})")


@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_wan_transformer_fp16_against_torch_fp32(name, rng):
    cfg, spec = CASES[name]
    ref, _ = build(cfg, seed=7)
    x, t, ctx, image = make_inputs(cfg, spec, rng)
    expected = run_torch(ref, x, t, ctx, image)
    arrays = torch_state_to_numpy(ref)
    # as diffusers loads fp16: its _keep_in_fp32_modules (rope, time embedder, modulation tables, norms) stay float32
    half = WanTransformer3DModel.from_config(cfg)
    keep = half.fp32_parameter_names()
    assert "scale_shift_table" in keep and "condition_embedder.time_embedder.linear_1.weight" in keep
    half.load_arrays(arrays, dtype=ms.float16)
    dtypes = {n: p.dtype for n, p in half.parameters_and_names()}
    assert all(dtypes[n] == ms.float32 for n in keep) and dtypes["proj_out.weight"] == ms.float16
    out = run_ours(half, x, t, ctx, image, dtype=ms.float16).sample
    assert out.dtype == ms.float16
    err = assert_close(out, expected, 1e-2, where=f"WanTransformer3DModel[{name}] fp16 vs torch fp32")
    print(f"{name} fp16: rel L2 {err:.2e}, max abs {max_abs(out, expected):.2e}")


def test_wan_transformer_parameter_names_match_state_dict():
    for name, (cfg, _) in CASES.items():
        torch.manual_seed(0)
        expected = {k: tuple(v.shape) for k, v in diffusers.WanTransformer3DModel(**cfg).state_dict().items()}
        spec = WanTransformer3DModel.from_config(cfg).parameter_spec()
        assert {k: s for k, (s, _) in spec.items()} == expected, name


def test_wan_transformer_config_nulls():
    # nulls diffusers gives a meaning: out_channels -> in_channels, cross_attn_norm -> no norm2, qk_norm unused,
    # image_dim / added_kv_proj_dim / pos_embed_seq_len -> T2V
    cfg = dict(TINY, out_channels=None, cross_attn_norm=None, qk_norm=None, image_dim=None, added_kv_proj_dim=None,
               pos_embed_seq_len=None)
    torch.manual_seed(0)
    expected = {k: tuple(v.shape) for k, v in diffusers.WanTransformer3DModel(**cfg).state_dict().items()}
    model = WanTransformer3DModel.from_config(cfg)
    assert {k: s for k, (s, _) in model.parameter_spec().items()} == expected
    assert model.out_channels == cfg["in_channels"] and not any("norm2" in k for k in expected)
    # absent fields take diffusers' defaults
    small = {k: v for k, v in TINY.items() if k not in ("patch_size", "out_channels")}
    model = WanTransformer3DModel.from_config(small)
    assert model.patch_size == (1, 2, 2) and model.out_channels == 16 and model.config.rope_max_seq_len == 1024
    assert model.config.eps == 1e-6 and model.config.image_dim is None


@pytest.mark.parametrize("field", ["eps", "patch_size", "rope_max_seq_len"])
def test_wan_transformer_refuses_null_it_cannot_build(field):
    with pytest.raises(ValueError, match=field) as e:
        WanTransformer3DModel.from_config(dict(TINY, **{field: None}))
    assert "\n" not in str(e.value)


def test_wan_transformer_refuses_odd_head_dim():
    with pytest.raises(ValueError, match="attention_head_dim=9"):
        WanTransformer3DModel.from_config(dict(TINY, attention_head_dim=9))


BAD_INPUTS = {
    "channels": (dict(x=(1, 5, 2, 4, 6)), "5 channels, expected in_channels=4"),
    "height": (dict(x=(1, 4, 2, 5, 6)), "height 5 is not a multiple of the patch size 2"),
    "width": (dict(x=(1, 4, 2, 4, 7)), "width 7 is not a multiple of the patch size 2"),
    "rank": (dict(x=(1, 4, 4, 6)), r"got shape \(1, 4, 4, 6\)"),
    "text_dim": (dict(ctx=(1, 7, 15)), r"shape \(1, 7, 15\), expected \(1, sequence, text_dim=16\)"),
    "image-for-t2v": (dict(image=(1, 5, 20)), "image_dim is null"),
    "timesteps": (dict(t=(3,)), "got 3 timestep values for batch size 1"),
    "per-token-timesteps": (dict(t=(1, 5)), r"per-token timestep has shape \(1, 5\), expected \(1, 12\)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_wan_transformer_bad_inputs_one_line(case):
    shapes, message = BAD_INPUTS[case]
    model = WanTransformer3DModel.from_config(TINY)
    shapes = {"x": (1, 4, 2, 4, 6), "ctx": (1, 7, 16), "t": (1,), "image": None, **shapes}
    args = {k: None if s is None else Tensor(np.ones(s, np.float32)) for k, s in shapes.items()}
    with pytest.raises(ValueError, match=message) as e:
        model(args["x"], args["t"], args["ctx"], args["image"])
    assert "\n" not in str(e.value)


def test_wan_transformer_bad_image_inputs():
    model = WanTransformer3DModel.from_config(dict(I2V, pos_embed_seq_len=8))
    x, ctx = Tensor(np.ones((1, 8, 1, 2, 2), np.float32)), Tensor(np.ones((1, 512, 16), np.float32))
    with pytest.raises(ValueError, match=r"expected \(2, tokens, image_dim=20\) \(first and last frame"):
        model(x, Tensor(np.ones(1, np.float32)), ctx, Tensor(np.ones((1, 4, 20), np.float32)))
    with pytest.raises(ValueError, match="3 tokens per frame, expected pos_embed_seq_len / 2 = 4"):
        model(x, Tensor(np.ones(1, np.float32)), ctx, Tensor(np.ones((2, 3, 20), np.float32)))


@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_wan_transformer_from_pretrained(name, rng, tmp_path):
    """A diffusers folder (save_pretrained, sharded, bf16 as Wan ships) loads through the registry's converter row,
    as fp32 (bf16 widens exactly) and matches diffusers on the same bf16-rounded weights."""
    from mindport.models import WanTransformer3DModel as Registered

    cfg, spec = CASES[name]
    ref, _ = build(cfg, seed=3)
    stored = ref.to(torch.bfloat16)
    stored.save_pretrained(tmp_path / "transformer", max_shard_size="20KB")
    assert len(list((tmp_path / "transformer").glob("*.safetensors"))) > 1
    ours = Registered.from_pretrained(str(tmp_path), subfolder="transformer", mindspore_dtype=ms.float32)
    # the reference: a float32 model holding the stored bf16 values (its rotary tables computed, not rounded)
    ref = diffusers.WanTransformer3DModel(**cfg).eval()
    ref.load_state_dict({k: v.float() for k, v in stored.state_dict().items()})
    x, t, ctx, image = make_inputs(cfg, spec, rng)
    expected = run_torch(ref, x, t, ctx, image)
    assert_close(run_ours(ours, x, t, ctx, image).sample, expected, 1e-5, where=f"from_pretrained[{name}]")
