"""Parity of AnimateDiff's motion transformer, MotionAdapter and UNetMotionModel against diffusers (tiny random
configs, seeded): fp32 at 1e-5, our fp16 against torch fp32 at 1e-2, and `from_unet2d` built from our
UNet2DConditionModel + MotionAdapter against diffusers' `from_unet2d`."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from diffusers.models.unets import unet_motion_model as t_motion  # noqa: E402

from mindport.models import unet_motion_model as motion  # noqa: E402
from parity.fixtures import randomise  # noqa: E402
from tests.helpers import assert_close  # noqa: E402


def state(module) -> dict:
    """A torch module's parameters as numpy, without the persisted position tables (recomputed on our side)."""
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items() if not k.endswith("pos_embed.pe")}


def load_cell(cell, torch_module):
    arrays = state(torch_module)
    params = dict(cell.parameters_and_names())
    assert sorted(params) == sorted(arrays), (f"only mindspore: {sorted(set(params) - set(arrays))[:5]}; "
                                              f"only torch: {sorted(set(arrays) - set(params))[:5]}")
    for name, p in params.items():
        p.set_data(Tensor(arrays[name]).astype(p.dtype))
    return cell


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# the motion transformer
# ---------------------------------------------------------------------------------------------------------------

# (kwargs, batch, frames, height, width)
TRANSFORMER_CASES = {
    "heads2-1layer-f4": (dict(num_attention_heads=2, attention_head_dim=16, in_channels=32, norm_num_groups=8), 2, 4, 3, 2),
    "heads8-2layers-f7": (dict(num_attention_heads=8, attention_head_dim=4, in_channels=32, num_layers=2,
                               norm_num_groups=32), 1, 7, 2, 3),
    "single-attention-f3": (dict(num_attention_heads=1, attention_head_dim=24, in_channels=24, norm_num_groups=4,
                                 double_self_attention=False), 2, 3, 2, 2),
}


@pytest.mark.parametrize("case", list(TRANSFORMER_CASES))
def test_motion_transformer(rng, case):
    kw, b, f, h, w = TRANSFORMER_CASES[case]
    kw = dict(kw, positional_embeddings="sinusoidal", num_positional_embeddings=8)
    reference = randomise(t_motion.AnimateDiffTransformer3D(**kw), 3)
    cell = load_cell(motion.AnimateDiffTransformer3D(**kw), reference)
    x = randn(rng, b * f, kw["in_channels"], h, w)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x), num_frames=f)
    assert_close(cell(Tensor(x), num_frames=f), expected, where=f"AnimateDiffTransformer3D[{case}]")


def test_motion_transformer_refuses_too_many_frames(rng):
    cell = motion.AnimateDiffTransformer3D(2, 8, in_channels=16, norm_num_groups=4, positional_embeddings="sinusoidal",
                                           num_positional_embeddings=4)
    with pytest.raises(ValueError, match="num_frames=5 exceeds"):
        cell(Tensor(randn(rng, 5, 16, 2, 2)), num_frames=5)


@pytest.mark.parametrize("kw", [
    dict(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2, motion_norm_num_groups=8),
    dict(block_out_channels=(32, 32, 64), motion_layers_per_block=(1, 2, 1), motion_transformer_layers_per_block=2,
         motion_mid_block_layers_per_block=2, motion_transformer_layers_per_mid_block=(1, 2), use_motion_mid_block=True,
         motion_num_attention_heads=(2, 4, 8), motion_max_seq_length=16, conv_in_channels=9),
    dict(block_out_channels=(16, 32), use_motion_mid_block=False, motion_norm_num_groups=4),
])
def test_motion_adapter_parameters_match_diffusers(kw):
    ours, theirs = motion.MotionAdapter.from_config(kw), t_motion.MotionAdapter(**kw)
    spec = ours.parameter_spec()
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items() if not k.endswith("pos_embed.pe")}
    assert {k: s for k, (s, _) in spec.items()} == expected
    assert ours.config.motion_max_seq_length == theirs.config.motion_max_seq_length


# ---------------------------------------------------------------------------------------------------------------
# the UNet
# ---------------------------------------------------------------------------------------------------------------

TWO_LEVELS = dict(
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    block_out_channels=(32, 64), layers_per_block=1, num_attention_heads=(2, 4), cross_attention_dim=16,
    norm_num_groups=8, motion_num_attention_heads=2, motion_max_seq_length=8,
)
THREE_LEVELS = dict(
    down_block_types=("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "DownBlockMotion"),
    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion"),
    block_out_channels=(16, 32, 32), layers_per_block=1, num_attention_heads=2, cross_attention_dim=24,
    norm_num_groups=8, motion_num_attention_heads=(1, 2, 4), motion_max_seq_length=6, use_linear_projection=True,
)

# name: (config overrides, batch, frames, height, width)
UNET_CASES = {
    "2lvl-conv-proj-f4": (dict(TWO_LEVELS), 2, 4, 8, 8),
    "3lvl-linear-proj-f6-odd-size": (dict(THREE_LEVELS, transformer_layers_per_block=(1, 2, 1),
                                          temporal_transformer_layers_per_block=2), 1, 6, 6, 5),
    "2lvl-no-motion-mid-f3": (dict(TWO_LEVELS, use_motion_mid_block=False, motion_num_attention_heads=4,
                                   layers_per_block=(2, 1)), 1, 3, 4, 4),
}


def make_unet_pair(overrides, seed=0):
    config = dict(sample_size=8, in_channels=4, out_channels=4)
    config.update(overrides)
    torch.manual_seed(seed)
    reference = randomise(diffusers.UNetMotionModel(**config), seed)
    model = motion.UNetMotionModel.from_config(reference.config)
    model.load_arrays(state(reference))
    return model, reference


def unet_inputs(batch, frames, height, width, cross_dim, seed=1):
    rng = np.random.Generator(np.random.PCG64(seed))
    return dict(sample=randn(rng, batch, 4, frames, height, width), timestep=np.int64(741),
                encoder_hidden_states=randn(rng, batch * frames, 5, cross_dim))


def run_reference(reference, inputs):
    with torch.no_grad():
        return reference(torch.from_numpy(inputs["sample"]), torch.tensor(inputs["timestep"]),
                         torch.from_numpy(inputs["encoder_hidden_states"])).sample


@pytest.mark.parametrize("case", list(UNET_CASES))
def test_unet_motion_matches_diffusers_fp32(case):
    overrides, batch, frames, height, width = UNET_CASES[case]
    model, reference = make_unet_pair(overrides)
    inputs = unet_inputs(batch, frames, height, width, reference.config.cross_attention_dim)
    expected = run_reference(reference, inputs)
    out = model(Tensor(inputs["sample"]), Tensor(inputs["timestep"]), Tensor(inputs["encoder_hidden_states"]))
    assert out.sample.shape == tuple(expected.shape)
    assert_close(out.sample, expected, rel_l2=1e-5, where=f"UNetMotionModel[{case}] fp32")
    if case == "2lvl-conv-proj-f4":  # numpy inputs, a python int timestep and the tuple form agree
        again = model(inputs["sample"], 741, inputs["encoder_hidden_states"], return_dict=False)
        assert isinstance(again, tuple)
        assert_close(again[0], out.sample, rel_l2=1e-7, where=f"[{case}] return_dict=False")


def test_unet_motion_fp16_against_torch_fp32():
    model, reference = make_unet_pair(TWO_LEVELS)
    inputs = unet_inputs(2, 4, 8, 8, 16)
    expected = run_reference(reference, inputs)
    model.to_dtype(ms.float16)
    out = model(Tensor(inputs["sample"]), Tensor(inputs["timestep"]), Tensor(inputs["encoder_hidden_states"])).sample
    assert out.dtype == ms.float16
    assert_close(out, expected, rel_l2=1e-2, where="UNetMotionModel fp16 vs torch fp32")


def test_unet_motion_errors():
    with pytest.raises(ValueError, match="unknown down block type 'DownBlock3D'.*CrossAttnDownBlockMotion"):
        motion.UNetMotionModel(down_block_types=("DownBlock3D", "DownBlockMotion"),
                               up_block_types=("UpBlockMotion", "UpBlockMotion"), block_out_channels=(32, 32))
    model, _ = make_unet_pair(TWO_LEVELS)
    with pytest.raises(ValueError, match="9 frames exceed motion_max_seq_length=8"):
        model(np.zeros((1, 4, 9, 8, 8), np.float32), 1, np.zeros((9, 5, 16), np.float32))
    with pytest.raises(ValueError, match=r"\(B, C, F, H, W\)"):
        model(np.zeros((4, 8, 8), np.float32), 1, np.zeros((1, 5, 16), np.float32))


# ---------------------------------------------------------------------------------------------------------------
# from_unet2d: SD 1.5 UNet + adapter, ours against diffusers'
# ---------------------------------------------------------------------------------------------------------------

SD_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
               down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
               cross_attention_dim=16, attention_head_dim=(2, 4), norm_num_groups=8)


@pytest.mark.parametrize("adapter_kw, frames", [
    (dict(motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=8), 4),
    (dict(motion_num_attention_heads=(4, 1), motion_norm_num_groups=4, use_motion_mid_block=False,
          motion_transformer_layers_per_block=2, motion_max_seq_length=16), 3),
    (dict(motion_num_attention_heads=4, motion_norm_num_groups=8, conv_in_channels=9), 2),  # PIA: 9 input channels
])
def test_from_unet2d_matches_diffusers(adapter_kw, frames):
    from mindport.models.unet_2d_condition import UNet2DConditionModel

    torch.manual_seed(0)
    t_unet = randomise(diffusers.UNet2DConditionModel(**SD_UNET), 1)
    t_adapter = randomise(diffusers.MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, **adapter_kw), 2)
    reference = diffusers.UNetMotionModel.from_unet2d(t_unet, t_adapter).eval()
    unet = UNet2DConditionModel.from_config(t_unet.config)
    unet.load_arrays(state(t_unet))
    adapter = motion.MotionAdapter.from_config(t_adapter.config)
    adapter.load_arrays(state(t_adapter))
    model = motion.UNetMotionModel.from_unet2d(unet, adapter)
    for key in ("down_block_types", "up_block_types", "motion_num_attention_heads", "use_motion_mid_block",
                "num_attention_heads", "temporal_transformer_layers_per_block", "motion_max_seq_length"):
        as_list = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
        assert as_list(model.config[key]) == as_list(reference.config[key]), key
    assert sorted(dict(model.parameters_and_names())) == sorted(state(reference))
    inputs = unet_inputs(1, frames, 8, 8, 16)
    channels = reference.config.in_channels
    inputs["sample"] = np.random.Generator(np.random.PCG64(2)).standard_normal((1, channels, frames, 8, 8)).astype(np.float32)
    assert_close(model(**inputs).sample, run_reference(reference, inputs), where=f"from_unet2d({adapter_kw})")


def test_from_unet2d_refuses_incompatible_adapter():
    from mindport.models.unet_2d_condition import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(SD_UNET)
    with pytest.raises(ValueError, match=r"motion_layers_per_block \[2, 2\] != UNet layers_per_block \[1, 1\]"):
        motion.UNetMotionModel.from_unet2d(unet, motion.MotionAdapter(block_out_channels=(32, 64), motion_norm_num_groups=8))
    with pytest.raises(ValueError, match="3 blocks, the UNet has 2"):
        motion.UNetMotionModel.from_unet2d(unet, motion.MotionAdapter(block_out_channels=(32, 64, 64),
                                                                      motion_layers_per_block=1, motion_norm_num_groups=8))
