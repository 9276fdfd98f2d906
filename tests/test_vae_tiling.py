"""AutoencoderKL slicing and tiling (diffusers' enable_slicing / enable_tiling) against diffusers: encode and decode
on frames larger than a tile (non-square, two and three levels), and a whole AnimateDiff pipeline with VAE tiling."""

import diffusers
import numpy as np
import pytest
import torch

from helpers import rel_l2
from mindport.models import AutoencoderKL
from mindport.pipelines import AnimateDiffPipeline, StableVideoDiffusionPipeline
from parity.adapter import quiet_reference_libraries
from parity.fixtures import build, randomise

quiet_reference_libraries()


@pytest.mark.parametrize("levels, sample_size, hw", [(2, 32, (40, 56)), (3, 48, (104, 72))])
def test_tiled_and_sliced_vae_matches_diffusers(levels, sample_size, hw):
    cfg = dict(block_out_channels=(16,) * (levels - 1) + (32,), layers_per_block=1, norm_num_groups=8,
               sample_size=sample_size, down_block_types=("DownEncoderBlock2D",) * levels,
               up_block_types=("UpDecoderBlock2D",) * levels)
    torch.manual_seed(0)
    ref = randomise(diffusers.AutoencoderKL(**cfg), 3)
    ours = AutoencoderKL.from_config(cfg)
    ours.load_arrays({k: v.numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, *hw)).astype(np.float32)
    for m in (ref, ours):
        m.enable_tiling()
        m.enable_slicing()
    with torch.no_grad():
        mean = ref.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
    z = np.random.default_rng(1).standard_normal(mean.shape).astype(np.float32)
    with torch.no_grad():
        decoded = ref.decode(torch.from_numpy(z)).sample.numpy()
        ref.disable_tiling()
        untiled = ref.decode(torch.from_numpy(z)).sample.numpy()
    assert rel_l2(decoded, untiled) > 0.05  # the tiles really are blended (not a whole-frame decode)
    assert rel_l2(ours.encode(x).latent_dist.mean, mean) <= 1e-5
    assert rel_l2(ours.decode(z).sample, decoded) <= 1e-5
    ours.disable_tiling()
    assert rel_l2(ours.decode(z).sample, untiled) <= 1e-5


def test_animatediff_with_vae_tiling_matches_diffusers():
    root = build("animatediff-tiny")
    ref = diffusers.AnimateDiffPipeline.from_pretrained(str(root), torch_dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    ref.vae.enable_tiling()
    ours = AnimateDiffPipeline.from_pretrained(str(root))
    ours.set_progress_bar_config(disable=True)
    ours.enable_vae_tiling()
    kw = dict(prompt="a cat", num_frames=3, height=48, width=40, num_inference_steps=2, output_type="np")
    lat = np.random.default_rng(0).standard_normal((1, 4, 3, 24, 20)).astype(np.float32)
    with torch.no_grad():
        expected = ref(**kw, latents=torch.from_numpy(lat)).frames
        ref.vae.disable_tiling()
        untiled = ref(**kw, latents=torch.from_numpy(lat)).frames
    assert rel_l2(expected, untiled) > 1e-3  # the 48x40 frames are decoded in tiles
    got = ours(**kw, latents=lat)[0]
    assert got.shape == expected.shape and rel_l2(got, expected) <= 1e-4


def test_vae_switch_refused_where_not_ported():
    pipe = StableVideoDiffusionPipeline.from_pretrained(str(build("svd-tiny")))
    with pytest.raises(ValueError, match="has no enable_tiling"):
        pipe.enable_vae_tiling()
