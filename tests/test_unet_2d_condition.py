"""Parity of UNet2DConditionModel and its 2D blocks against diffusers (tiny random configs, seeded)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mindspore as ms
from diffusers.models.unets import unet_2d_blocks as t_blocks
from mindspore import Tensor

from mindport.models import unet_2d_blocks
from mindport.models.unet_2d_condition import UNet2DConditionModel
from parity.fixtures import randomise
from tests.helpers import assert_close, torch_state_to_numpy

TINY = dict(norm_num_groups=4, sample_size=8)
CONFIGS = {
    # SD1.5 layout at two levels: conv proj_in, one int for heads
    "sd15-2level-conv": dict(TINY, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=12,
                             attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # SD2-like: three levels, linear proj_in, per-block heads, per-block cross_attention_dim
    "3level-linear-perblock": dict(TINY, block_out_channels=(8, 16, 24), layers_per_block=1,
                                   cross_attention_dim=(10, 10, 10), attention_head_dim=(1, 2, 4),
                                   use_linear_projection=True,
                                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # all cross-attention levels, per-block layers, per-layer (asymmetric) transformer depth, upcast, eps, conv
    # kernels, mid scale, sin-first time embedding
    "3level-allcross": dict(TINY, block_out_channels=(8, 16, 16), layers_per_block=(1, 2, 1),
                            transformer_layers_per_block=[[1], [1, 2], [1]],
                            reverse_transformer_layers_per_block=[[1, 1], [2, 1, 1], [1, 2]],
                            cross_attention_dim=6, attention_head_dim=2,
                            upcast_attention=True, norm_eps=1e-6, conv_in_kernel=1, conv_out_kernel=3,
                            mid_block_scale_factor=1.5, downsample_padding=1, flip_sin_to_cos=False, freq_shift=1,
                            down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3),
    # embeddings: class "timestep" (concatenated), time_cond_proj, post-act, time_embed act, only_cross_attention per block
    "embeddings-onlycross": dict(TINY, block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=8,
                                 attention_head_dim=2, class_embed_type="timestep", time_cond_proj_dim=5,
                                 timestep_post_act="silu", time_embedding_act_fn="silu", time_embedding_dim=24,
                                 only_cross_attention=(True, False), center_input_sample=True,
                                 class_embeddings_concat=True,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # SDXL-like additional embeddings and a text projection, class table, no mid block
    "text_time-textproj": dict(TINY, block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=8,
                               attention_head_dim=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=4,
                               projection_class_embeddings_input_dim=7 + 3 * 4, encoder_hid_dim=10,
                               num_class_embeds=5, mid_block_type=None,
                               resnet_time_scale_shift="scale_shift",
                               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
}


def _build(cfg, seed):
    ref = randomise(diffusers.UNet2DConditionModel(**cfg), seed)
    ours = UNet2DConditionModel.from_config(cfg)
    arrays = torch_state_to_numpy(ref)
    params = set(dict(ours.parameters_and_names()))
    assert params == set(arrays), f"only mindspore: {sorted(params - set(arrays))}; only torch: {sorted(set(arrays) - params)}"
    ours.load_arrays(arrays)
    return ref, ours


def _inputs(cfg, rng, batch=2, hw=(8, 12)):
    ctx_dim = cfg.get("encoder_hid_dim") or (cfg["cross_attention_dim"] if isinstance(cfg["cross_attention_dim"], int)
                                             else cfg["cross_attention_dim"][0])
    x = rng.standard_normal((batch, cfg.get("in_channels", 4), *hw)).astype(np.float32)
    ctx = rng.standard_normal((batch, 7, ctx_dim)).astype(np.float32)
    kwargs = {}
    if cfg.get("class_embed_type") == "timestep":
        kwargs["class_labels"] = np.array([3.0, 500.0][:batch], np.float32)
    elif cfg.get("num_class_embeds"):
        kwargs["class_labels"] = np.array([1, 4][:batch], np.int64)
    if cfg.get("time_cond_proj_dim"):
        kwargs["timestep_cond"] = rng.standard_normal((batch, cfg["time_cond_proj_dim"])).astype(np.float32)
    if cfg.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": rng.standard_normal((batch, 7)).astype(np.float32),
                                       "time_ids": np.array([[64, 64, 0], [32, 48, 8]][:batch], np.float32)}
    return x, ctx, kwargs


def _to_torch(v):
    if isinstance(v, dict):
        return {k: _to_torch(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_torch(x) for x in v)
    return torch.from_numpy(v) if isinstance(v, np.ndarray) else v


def _to_ms(v):
    if isinstance(v, dict):
        return {k: _to_ms(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_ms(x) for x in v)
    return Tensor(v) if isinstance(v, np.ndarray) else v


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_2d_condition_matches_diffusers(name, rng):
    cfg = CONFIGS[name]
    ref, ours = _build(cfg, seed=len(name))
    x, ctx, kwargs = _inputs(cfg, rng)
    t = np.array([999, 17], np.int64)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), **_to_torch(kwargs)).sample
    out = ours(Tensor(x), Tensor(t), Tensor(ctx), **_to_ms(kwargs))
    assert_close(out.sample, expected, 1e-5, where=f"UNet2DConditionModel[{name}]")


@pytest.mark.parametrize("name,timestep,hw", [("3level-linear-perblock", 421, (6, 10)),
                                             ("sd15-2level-conv", 37.5, (7, 5)),
                                             ("sd15-2level-conv", np.float32(3.0), (4, 4))])
def test_unet_scalar_timestep_odd_size_batch1(name, timestep, hw, rng):
    """Scalar timesteps (int / float / numpy), batch 1, sizes not divisible by 2**num_upsamplers (upsample_size
    path), numpy inputs."""
    cfg = CONFIGS[name]
    ref, ours = _build(cfg, seed=1)
    x, ctx, _ = _inputs(cfg, rng, batch=1, hw=hw)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), timestep if not isinstance(timestep, np.generic) else float(timestep),
                       torch.from_numpy(ctx)).sample
    out = ours(x, timestep, ctx, return_dict=False)[0]
    assert_close(out, expected, 1e-5, where=f"UNet2DConditionModel[{name}] t={timestep!r} {hw}")


def test_unet_controlnet_residuals_and_encoder_mask(rng):
    cfg = CONFIGS["sd15-2level-conv"]
    ref, ours = _build(cfg, seed=9)
    x, ctx, _ = _inputs(cfg, rng)
    t = np.array([10, 900], np.int64)
    # skips: conv_in (16, H, W), down0: resnet (16) + downsample (16, H/2), down1: resnet (32, H/2); mid (32, H/2)
    shapes = [(2, 16, 8, 12), (2, 16, 8, 12), (2, 16, 4, 6), (2, 32, 4, 6)]
    down = tuple(rng.standard_normal(s).astype(np.float32) for s in shapes)
    mid = rng.standard_normal((2, 32, 4, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0, 1], [1, 1, 0, 1, 1, 1, 1]], np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                       down_block_additional_residuals=_to_torch(down), mid_block_additional_residual=torch.from_numpy(mid),
                       encoder_attention_mask=torch.from_numpy(mask)).sample
    out = ours(Tensor(x), Tensor(t), Tensor(ctx), down_block_additional_residuals=_to_ms(down),
               mid_block_additional_residual=Tensor(mid), encoder_attention_mask=Tensor(mask)).sample
    assert_close(out, expected, 1e-5, where="UNet2DConditionModel ControlNet residuals + encoder mask")


def test_unet_t2i_adapter_residuals(rng):
    cfg = CONFIGS["sd15-2level-conv"]
    ref, ours = _build(cfg, seed=4)
    x, ctx, _ = _inputs(cfg, rng)
    t = np.array([500, 501], np.int64)
    # added to the last layer of down block 0 (16 ch, full size), then after down block 1 (32 ch, half size)
    adapter = [rng.standard_normal(s).astype(np.float32) for s in [(2, 16, 8, 12), (2, 32, 4, 6)]]
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                       down_intrablock_additional_residuals=[torch.from_numpy(a) for a in adapter]).sample
    out = ours(Tensor(x), Tensor(t), Tensor(ctx), down_intrablock_additional_residuals=[Tensor(a) for a in adapter]).sample
    assert_close(out, expected, 1e-5, where="UNet2DConditionModel T2I-Adapter residuals")


def test_unet_fp16_against_torch_fp32(rng):
    cfg = CONFIGS["sd15-2level-conv"]
    ref, ours = _build(cfg, seed=2)
    ours.to_dtype(ms.float16)
    x, ctx, _ = _inputs(cfg, rng)
    t = np.array([999, 1], np.int64)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    out = ours(Tensor(x), Tensor(t), Tensor(ctx)).sample
    assert out.dtype == ms.float16
    assert_close(out, expected, 1e-2, where="UNet2DConditionModel fp16 vs torch fp32")


def test_blocks_match_diffusers(rng):
    """The blocks on their own: a CrossAttnDownBlock2D with T2I residual, the mid block, a CrossAttnUpBlock2D with an
    explicit upsample_size, and the plain DownBlock2D / UpBlock2D."""
    temb = rng.standard_normal((2, 20)).astype(np.float32)
    ctx = rng.standard_normal((2, 5, 6)).astype(np.float32)
    x = rng.standard_normal((2, 8, 6, 5)).astype(np.float32)
    common = dict(temb_channels=20, resnet_groups=4, resnet_eps=1e-6)
    cases = [
        ("CrossAttnDownBlock2D", dict(in_channels=8, out_channels=12, num_layers=2, num_attention_heads=2,
                                      cross_attention_dim=6, transformer_layers_per_block=(1, 2), **common)),
        ("DownBlock2D", dict(in_channels=8, out_channels=12, num_layers=2, add_downsample=False, **common)),
        ("UNetMidBlock2DCrossAttn", dict(in_channels=8, num_attention_heads=4, cross_attention_dim=6,
                                         use_linear_projection=True, output_scale_factor=2.0, **common)),
    ]
    for cls_name, kw in cases:
        ref = randomise(getattr(t_blocks, cls_name)(**kw), 0)
        ours = getattr(unet_2d_blocks, cls_name)(**kw)
        arrays = torch_state_to_numpy(ref)
        assert set(dict(ours.parameters_and_names())) == set(arrays), cls_name
        for n, p in ours.parameters_and_names():
            p.set_data(Tensor(arrays[n]))
        targs = (torch.from_numpy(x), torch.from_numpy(temb))
        margs = (Tensor(x), Tensor(temb))
        with torch.no_grad():
            if cls_name == "DownBlock2D":
                expected = ref(*targs)
            else:
                extra = {"additional_residuals": torch.from_numpy(np.ones((2, 12, 6, 5), np.float32))} \
                    if cls_name == "CrossAttnDownBlock2D" else {}
                expected = ref(*targs, encoder_hidden_states=torch.from_numpy(ctx), **extra)
        if cls_name == "DownBlock2D":
            got = ours(*margs)
        else:
            extra = {"additional_residuals": Tensor(np.ones((2, 12, 6, 5), np.float32))} \
                if cls_name == "CrossAttnDownBlock2D" else {}
            got = ours(*margs, encoder_hidden_states=Tensor(ctx), **extra)
        if isinstance(expected, tuple):
            assert_close(got[0], expected[0], 1e-5, where=f"{cls_name} hidden")
            assert len(got[1]) == len(expected[1])
            for i, (a, b) in enumerate(zip(got[1], expected[1])):
                assert_close(a, b, 1e-5, where=f"{cls_name} skip {i}")
        else:
            assert_close(got, expected, 1e-5, where=cls_name)

    # up blocks: 2 layers, skips (B, 6, H, W) then (B, 4, H, W) consumed from the end; upsample to an explicit size
    skips = (rng.standard_normal((2, 4, 6, 5)).astype(np.float32), rng.standard_normal((2, 6, 6, 5)).astype(np.float32))
    for cls_name, kw in [("CrossAttnUpBlock2D", dict(num_attention_heads=2, cross_attention_dim=6)), ("UpBlock2D", {})]:
        kw = dict(in_channels=4, prev_output_channel=8, out_channels=6, num_layers=2, temb_channels=20,
                  resnet_groups=2, resnet_eps=1e-6, **kw)
        ref = randomise(getattr(t_blocks, cls_name)(**kw), 1)
        ours = getattr(unet_2d_blocks, cls_name)(**kw)
        for n, p in ours.parameters_and_names():
            p.set_data(Tensor(torch_state_to_numpy(ref)[n]))
        tk = dict(encoder_hidden_states=torch.from_numpy(ctx)) if cls_name.startswith("CrossAttn") else {}
        mk = dict(encoder_hidden_states=Tensor(ctx)) if cls_name.startswith("CrossAttn") else {}
        with torch.no_grad():
            expected = ref(torch.from_numpy(x), tuple(torch.from_numpy(s) for s in skips), torch.from_numpy(temb),
                           upsample_size=(11, 9), **tk)
        got = ours(Tensor(x), tuple(Tensor(s) for s in skips), Tensor(temb), upsample_size=(11, 9), **mk)
        assert_close(got, expected, 1e-5, where=cls_name)


def test_factories_name_unknown_types():
    with pytest.raises(ValueError, match=r"'AttnDownBlock2D'.*CrossAttnDownBlock2D"):
        unet_2d_blocks.get_down_block("AttnDownBlock2D", 1, 4, 4, 8, True, 1e-6, "silu")
    with pytest.raises(ValueError, match=r"'SimpleCrossAttnUpBlock2D'.*UpBlock2D"):
        unet_2d_blocks.get_up_block("SimpleCrossAttnUpBlock2D", 1, 4, 4, 4, 8, True, 1e-6, "silu")
    assert isinstance(unet_2d_blocks.get_down_block("UNetResDownBlock2D", 1, 4, 4, 8, True, 1e-6, "silu",
                                                    resnet_groups=2, downsample_padding=1), unet_2d_blocks.DownBlock2D)


@pytest.mark.parametrize("bad,exc,words", [
    (dict(time_embedding_type="fourier"), NotImplementedError, ["time_embedding_type", "'fourier'", "positional"]),
    (dict(addition_embed_type="image"), NotImplementedError, ["addition_embed_type", "'image'", "text_time"]),
    (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), NotImplementedError, ["mid_block_type", "UNetMidBlock2DCrossAttn"]),
    (dict(dual_cross_attention=True), NotImplementedError, ["dual_cross_attention"]),
    (dict(attention_type="gated"), NotImplementedError, ["attention_type", "'gated'"]),
    (dict(encoder_hid_dim_type="image_proj", encoder_hid_dim=4), NotImplementedError, ["encoder_hid_dim_type", "text_proj"]),
    (dict(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")), ValueError, ["SimpleCrossAttnDownBlock2D"]),
    (dict(num_attention_heads=4), ValueError, ["num_attention_heads"]),
    (dict(attention_head_dim=(1, 2, 3)), ValueError, ["attention_head_dim", "expected 2"]),
    (dict(up_block_types=("UpBlock2D",)), ValueError, ["up_block_types"]),
])
def test_unported_and_bad_options_refused(bad, exc, words):
    cfg = {**CONFIGS["sd15-2level-conv"], **bad}
    with pytest.raises(exc) as e:
        UNet2DConditionModel.from_config(cfg)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
