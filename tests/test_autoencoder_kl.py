"""Parity of the 2D image VAE (AutoencoderKL, SD1.5 layout) with diffusers on tiny random checkpoints."""

import mindspore as ms
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mindport.models.autoencoder_kl import AutoencoderKL  # noqa: E402
from tests.helpers import assert_close, torch_state_to_numpy  # noqa: E402
from parity.fixtures import randomise  # noqa: E402

# name -> (config overrides, image batch (B, C, H, W))
CONFIGS = {
    "2lvl_lpb1": (dict(block_out_channels=(32, 64), layers_per_block=1), (2, 3, 16, 24)),
    "3lvl_lpb2": (dict(block_out_channels=(32, 32, 64), layers_per_block=2), (1, 3, 16, 24)),
    "no_attn_no_quant": (dict(block_out_channels=(32, 64), layers_per_block=1, mid_block_add_attention=False,
                              use_quant_conv=False, use_post_quant_conv=False), (2, 3, 8, 16)),
}


def build_pair(overrides: dict, seed: int = 0):
    torch.manual_seed(seed)
    n = len(overrides["block_out_channels"])
    ref = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * n,
                                  up_block_types=("UpDecoderBlock2D",) * n, **overrides).eval()
    randomise(ref, seed + 1, vector_std=0.5)
    ours = AutoencoderKL.from_config(ref.config)
    ours.load_arrays(torch_state_to_numpy(ref))
    return ref, ours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_autoencoder_kl_parity(name):
    overrides, shape = CONFIGS[name]
    ref, ours = build_pair(overrides)
    assert sorted(ours.parameter_spec()) == sorted(ref.state_dict())
    rng = np.random.Generator(np.random.PCG64(3))
    x = rng.standard_normal(shape).astype(np.float32)
    noise = rng.standard_normal((shape[0], 4, *(s >> (len(overrides["block_out_channels"]) - 1) for s in shape[2:])))
    noise = noise.astype(np.float32)
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(x)).latent_dist
        want_dec = ref.decode(post.mean).sample
        want_sampled = ref.decode(post.mean + post.std * torch.from_numpy(noise)).sample
    got = ours.encode(ms.Tensor(x)).latent_dist
    assert_close(got.mean, post.mean, 1e-5, where=f"{name} encode mean")
    assert_close(got.std, post.std, 1e-5, where=f"{name} encode std")
    assert_close(ours.decode(post.mean.numpy()).sample, want_dec, 1e-5, where=f"{name} decode")
    assert_close(ours(ms.Tensor(x)).sample, want_dec, 1e-5, where=f"{name} construct mode")
    out = ours(ms.Tensor(x), sample_posterior=True, noise=noise, return_dict=False)
    assert_close(out[0], want_sampled, 1e-5, where=f"{name} construct sample_posterior")


def test_autoencoder_kl_fp16_against_torch_fp32():
    ref, ours = build_pair(CONFIGS["2lvl_lpb1"][0], seed=4)
    ours.to_dtype(ms.float16)
    x = np.random.Generator(np.random.PCG64(8)).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).sample
    got = ours(ms.Tensor(x).astype(ms.float16)).sample
    assert got.dtype == ms.float16
    assert_close(got, want, 1e-2, where="AutoencoderKL fp16 construct")
