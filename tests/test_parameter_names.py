"""A forward pass leaves every parameter's MindSpore name (`Parameter.name`, what checkpoints, LoRA lookups and
graph compilation see) equal to its attribute path. Slicing a CellList (`self.resnets[1:]`) builds a new CellList
that re-parents the cells and renames their parameters ("resnets.1.conv1.weight" -> "0.conv1.weight") on every call;
the mid blocks iterate over plain lists instead."""

import numpy as np
import pytest
from mindspore import Tensor

from mindport.models.autoencoder_kl_wan import FeatureCache, WanMidBlock
from mindport.models.unet_2d_blocks import UNetMidBlock2DCrossAttn
from mindport.models.unet_3d_blocks import UNetMidBlock3DCrossAttn, UNetMidBlockSpatioTemporal


def _t(rng, *shape):
    return Tensor(rng.standard_normal(shape).astype(np.float32))


CASES = {
    "UNetMidBlock2DCrossAttn": (
        lambda: UNetMidBlock2DCrossAttn(32, 64, num_layers=2, num_attention_heads=2, cross_attention_dim=16,
                                        resnet_groups=8),
        lambda b, r: b(_t(r, 1, 32, 4, 6), _t(r, 1, 64), _t(r, 1, 3, 16))),
    "UNetMidBlockSpatioTemporal": (
        lambda: UNetMidBlockSpatioTemporal(32, 64, num_layers=2, num_attention_heads=2, cross_attention_dim=16),
        lambda b, r: b(_t(r, 2, 32, 4, 6), _t(r, 2, 64), _t(r, 2, 1, 16), Tensor(np.zeros((1, 2), np.float32)))),
    "UNetMidBlock3DCrossAttn": (
        lambda: UNetMidBlock3DCrossAttn(32, 64, num_layers=2, resnet_groups=8, num_attention_heads=2,
                                        cross_attention_dim=16),
        lambda b, r: b(_t(r, 2, 32, 4, 6), _t(r, 2, 64), _t(r, 2, 3, 16), num_frames=2)),
    "WanMidBlock": (
        lambda: WanMidBlock(16, num_layers=2),
        lambda b, r: b(_t(r, 1, 16, 3, 4, 6), FeatureCache())),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_forward_pass_keeps_parameter_names(name):
    build, call = CASES[name]
    block = build()
    paths = [n for n, _ in block.parameters_and_names()]
    assert [p.name for p in block.get_parameters()] == paths
    call(block, np.random.default_rng(0))
    assert [p.name for p in block.get_parameters()] == paths
