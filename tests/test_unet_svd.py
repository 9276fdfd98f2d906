"""Parity of the SVD UNet and its shared blocks against diffusers (tiny random configs, seeded)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from parity.fixtures import randomise  # noqa: E402
from tests.helpers import assert_close, torch_state_to_numpy  # noqa: E402

from diffusers.models import attention as t_attention  # noqa: E402
from diffusers.models import attention_processor as t_attention_processor  # noqa: E402
from diffusers.models import embeddings as t_embeddings  # noqa: E402
from diffusers.models import resnet as t_resnet  # noqa: E402
from diffusers.models.transformers import transformer_temporal as t_transformer_temporal  # noqa: E402

from mindport.models import attention, embeddings, resnet, transformer_temporal, unet_3d_blocks  # noqa: E402
from mindport.models.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def load_cell(cell, torch_module):
    """Copy a torch module's state into a MindSpore cell, checking the parameter names match exactly."""
    arrays = torch_state_to_numpy(torch_module)
    params = dict(cell.parameters_and_names())
    assert sorted(params) == sorted(arrays), f"only mindspore: {sorted(set(params) - set(arrays))}; only torch: {sorted(set(arrays) - set(params))}"
    for name, p in params.items():
        p.set_data(Tensor(arrays[name]).astype(p.dtype))
    return cell


def run_both(cell, torch_module, *inputs, seed=0):
    randomise(torch_module, seed)
    load_cell(cell, torch_module)
    with torch.no_grad():
        expected = torch_module(*[torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in inputs])
    actual = cell(*[Tensor(x) if isinstance(x, np.ndarray) else x for x in inputs])
    return actual, expected


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,flip,shift,scale", [(32, True, 0, 1), (33, False, 1, 1), (8, True, 1, 2.5)])
def test_timesteps_match_diffusers(dim, flip, shift, scale):
    t = np.array([0.0, 1.5, 17.0, 999.0], np.float32)
    expected = t_embeddings.get_timestep_embedding(torch.from_numpy(t), dim, flip, shift, scale)
    actual = embeddings.Timesteps(dim, flip, shift, scale)(Tensor(t))
    assert_close(actual, expected, rel_l2=1e-6, where=f"Timesteps(dim={dim}, flip={flip}, shift={shift}, scale={scale})")


@pytest.mark.parametrize("strategy,switch,ndim", [("learned_with_images", False, 5), ("learned_with_images", False, 3),
                                                  ("learned", True, 5), ("fixed", False, 3)])
def test_alpha_blender(rng, strategy, switch, ndim):
    b, f = 2, 3
    shape = (b, 4, f, 2, 2) if ndim == 5 else (b * f, 5, 4)
    xs, xt = randn(rng, *shape), randn(rng, *shape)
    indicator = np.zeros((b, f), np.float32)
    indicator[1, 0] = 1.0  # one image-only frame exercises the `where`
    actual, expected = run_both(resnet.AlphaBlender(0.3, strategy, switch), t_resnet.AlphaBlender(0.3, strategy, switch),
                                xs, xt, indicator)
    assert_close(actual, expected, rel_l2=1e-6, where=f"AlphaBlender({strategy}, switch={switch}, ndim={ndim})")


def test_resnet_blocks(rng):
    x, temb = randn(rng, 6, 32, 5, 4), randn(rng, 6, 16)
    kw = dict(in_channels=32, out_channels=64, temb_channels=16, groups=8, eps=1e-5, output_scale_factor=2.0)
    actual, expected = run_both(resnet.ResnetBlock2D(**kw), t_resnet.ResnetBlock2D(**kw), x, temb)
    assert_close(actual, expected, where="ResnetBlock2D")
    indicator = np.zeros((2, 3), np.float32)
    actual, expected = run_both(resnet.SpatioTemporalResBlock(32, 64, 16), t_resnet.SpatioTemporalResBlock(32, 64, 16),
                                x, temb, indicator)
    assert_close(actual, expected, where="SpatioTemporalResBlock")
    # the SVD VAE decoder's form: no temb, "learned" blend switched to temporal, separate temporal eps
    kw = dict(temb_channels=None, eps=1e-6, temporal_eps=1e-5, merge_factor=0.0, merge_strategy="learned",
              switch_spatial_to_temporal_mix=True)
    actual, expected = run_both(resnet.SpatioTemporalResBlock(32, 32, **kw), t_resnet.SpatioTemporalResBlock(32, 32, **kw),
                                x, None, indicator)
    assert_close(actual, expected, where="SpatioTemporalResBlock(vae decoder)")


@pytest.mark.parametrize("kind", ["down-conv-pad1", "down-conv-pad0", "down-avgpool", "up-conv", "up-size"])
def test_resampling(rng, kind):
    from diffusers.models.downsampling import Downsample2D as TDown
    from diffusers.models.upsampling import Upsample2D as TUp

    x = randn(rng, 2, 16, 5, 6)
    make = {
        "down-conv-pad1": lambda m: m(16, use_conv=True, out_channels=8, padding=1, name="op"),
        "down-conv-pad0": lambda m: m(16, use_conv=True, padding=0, name="op"),
        "down-avgpool": lambda m: m(16, use_conv=False, name="op"),
        "up-conv": lambda m: m(16, use_conv=True, out_channels=8),
        "up-size": lambda m: m(16, use_conv=True),
    }[kind]
    ours, theirs = (resnet.Downsample2D, TDown) if kind.startswith("down") else (resnet.Upsample2D, TUp)
    args = (x, (9, 13)) if kind == "up-size" else (x,)
    actual, expected = run_both(make(ours), make(theirs), *args)
    assert_close(actual, expected, where=kind)


def test_attention_variants(rng):
    tokens, context, fmap = randn(rng, 2, 7, 32), randn(rng, 2, 3, 24), randn(rng, 2, 32, 3, 5)
    kw = dict(cross_attention_dim=24, heads=2, dim_head=12, bias=True)
    actual, expected = run_both(attention.Attention(32, **kw), t_attention_processor.Attention(32, **kw), tokens, context)
    assert_close(actual, expected, where="Attention(cross)")
    # the VAE mid-block form: group norm, feature maps in and out, residual, rescale
    kw = dict(heads=1, dim_head=32, norm_num_groups=8, eps=1e-6, residual_connection=True, rescale_output_factor=2.0,
              bias=True, _from_deprecated_attn_block=True)
    actual, expected = run_both(attention.Attention(32, **kw), t_attention_processor.Attention(32, **kw), fmap)
    assert_close(actual, expected, where="Attention(vae)")
    tt, tctx = randn(rng, 6, 5, 32), randn(rng, 10, 1, 24)
    actual, expected = run_both(attention.TemporalBasicTransformerBlock(32, 32, 4, 8, cross_attention_dim=24),
                                t_attention.TemporalBasicTransformerBlock(32, 32, 4, 8, cross_attention_dim=24), tt, 3, tctx)
    assert_close(actual, expected, where="TemporalBasicTransformerBlock")


def test_transformer_spatio_temporal(rng):
    x, context = randn(rng, 6, 32, 3, 2), randn(rng, 6, 1, 24)
    indicator = np.zeros((2, 3), np.float32)
    kw = dict(in_channels=32, num_layers=2, cross_attention_dim=24)
    actual, expected = run_both(transformer_temporal.TransformerSpatioTemporalModel(2, 16, **kw),
                                t_transformer_temporal.TransformerSpatioTemporalModel(2, 16, **kw), x, context, indicator)
    assert_close(actual.sample, expected.sample, where="TransformerSpatioTemporalModel")


def test_block_factories_name_valid_choices():
    with pytest.raises(ValueError, match="FancyDownBlock.*DownBlockSpatioTemporal"):
        unet_3d_blocks.get_down_block("FancyDownBlock", 1, 32, 32, 128, True)
    with pytest.raises(ValueError, match="FancyUpBlock.*UpBlockSpatioTemporal"):
        unet_3d_blocks.get_up_block("FancyUpBlock", 1, 32, 32, 32, 128, True)


# ---------------------------------------------------------------------------------------------------------------
# the UNet
# ---------------------------------------------------------------------------------------------------------------

TWO_LEVELS = dict(
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 64), num_attention_heads=(2, 4), cross_attention_dim=32,
)
THREE_LEVELS = dict(
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 32, 64), num_attention_heads=2, cross_attention_dim=24,
)

# name: (config overrides, batch, frames, height, width)
UNET_CASES = {
    "2lvl-heads-tuple": (dict(TWO_LEVELS), 1, 3, 8, 8),
    "2lvl-b2-nonsquare-tlayers2-cross48": (
        dict(TWO_LEVELS, num_attention_heads=(1, 2), cross_attention_dim=48, transformer_layers_per_block=2), 2, 3, 4, 6),
    "3lvl-heads-int-odd-size": (dict(THREE_LEVELS, layers_per_block=(1, 1, 2)), 1, 2, 6, 5),
}


def make_unet_pair(overrides, seed=0):
    config = dict(sample_size=8, in_channels=8, out_channels=4, addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=24, layers_per_block=1, num_frames=3)
    config.update(overrides)
    torch.manual_seed(seed)
    reference = randomise(diffusers.UNetSpatioTemporalConditionModel(**config), seed)
    model = UNetSpatioTemporalConditionModel.from_config(reference.config)
    model.load_arrays(torch_state_to_numpy(reference))
    return model, reference


def unet_inputs(batch, frames, height, width, cross_dim, seed=1):
    rng = np.random.Generator(np.random.PCG64(seed))
    return dict(
        sample=randn(rng, batch, frames, 8, height, width),
        timestep=0.7,
        encoder_hidden_states=randn(rng, batch, 1, cross_dim),
        added_time_ids=np.tile(np.array([[6.0, 127.0, 0.02]], np.float32), (batch, 1)),
    )


def run_reference(reference, inputs):
    with torch.no_grad():
        return reference(torch.from_numpy(inputs["sample"]), inputs["timestep"],
                         torch.from_numpy(inputs["encoder_hidden_states"]),
                         torch.from_numpy(inputs["added_time_ids"])).sample


@pytest.mark.parametrize("case", list(UNET_CASES))
def test_unet_matches_diffusers_fp32(case):
    overrides, batch, frames, height, width = UNET_CASES[case]
    model, reference = make_unet_pair(overrides)
    assert sorted(dict(model.parameters_and_names())) == sorted(reference.state_dict())
    inputs = unet_inputs(batch, frames, height, width, reference.config.cross_attention_dim)
    expected = run_reference(reference, inputs)
    out = model(Tensor(inputs["sample"]), inputs["timestep"], Tensor(inputs["encoder_hidden_states"]),
                Tensor(inputs["added_time_ids"]))
    assert out.sample.shape == tuple(expected.shape)
    assert_close(out.sample, expected, rel_l2=1e-5, where=f"UNetSpatioTemporalConditionModel[{case}] fp32")
    if case != "2lvl-heads-tuple":
        return
    # the tuple form, numpy inputs and a per-sample timestep array give the same result
    again = model(inputs["sample"], np.full((batch,), 0.7, np.float32), inputs["encoder_hidden_states"],
                  inputs["added_time_ids"], return_dict=False)
    assert isinstance(again, tuple)
    assert_close(again[0], out.sample, rel_l2=1e-7, where=f"[{case}] return_dict=False")


def test_unet_fp16_against_torch_fp32():
    model, reference = make_unet_pair(TWO_LEVELS)
    inputs = unet_inputs(1, 3, 8, 8, 32)
    expected = run_reference(reference, inputs)
    model.to_dtype(ms.float16)
    out = model(Tensor(inputs["sample"]), Tensor(np.float32(0.7)), Tensor(inputs["encoder_hidden_states"]),
                Tensor(inputs["added_time_ids"])).sample
    assert out.dtype == ms.float16
    assert_close(out, expected, rel_l2=1e-2, where="UNetSpatioTemporalConditionModel fp16 vs torch fp32")
