"""Parity of SVD's VAE (AutoencoderKLTemporalDecoder) with diffusers on tiny random checkpoints.

Every parameter is re-randomised (diffusers zero-/ones-inits mix factors, norms and biases, which would hide a bug in
them); weights are scaled by 1/sqrt(fan_in) so activations stay O(1) through the net. fp32 bar 1e-5 relative L2,
our fp16 against torch fp32 1e-2."""


import mindspore as ms
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mindport.models.autoencoder_kl_temporal_decoder import AutoencoderKLTemporalDecoder  # noqa: E402
from mindport.models.vae import DiagonalGaussianDistribution  # noqa: E402
from parity.fixtures import randomise  # noqa: E402
from tests.helpers import assert_close, torch_state_to_numpy  # noqa: E402

# name -> (config overrides, encoder input (B, C, H, W)); latents are (B*F, 4, H/2^(n-1), W/2^(n-1))
CONFIGS = {
    "2lvl_lpb1": (dict(block_out_channels=(32, 64), layers_per_block=1), (2, 3, 16, 24)),
    "2lvl_lpb2": (dict(block_out_channels=(32, 64), layers_per_block=2), (2, 3, 12, 20)),
    "3lvl_lpb2": (dict(block_out_channels=(32, 32, 64), layers_per_block=2), (1, 3, 16, 24)),
}
DECODE_BATCH = 6  # B*F latents: 6 videos of 1 frame, 3 of 2, 2 of 3


def build_pair(overrides: dict, seed: int = 0):
    torch.manual_seed(seed)
    config = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
                  down_block_types=("DownEncoderBlock2D",) * len(overrides["block_out_channels"]), **overrides)
    ref = diffusers.AutoencoderKLTemporalDecoder(**config).eval()
    randomise(ref, seed + 1, vector_std=0.5)
    ours = AutoencoderKLTemporalDecoder.from_config(ref.config)
    ours.load_arrays(torch_state_to_numpy(ref))
    return ref, ours


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request):
    overrides, shape = CONFIGS[request.param]
    ref, ours = build_pair(overrides)
    rng = np.random.Generator(np.random.PCG64(7))
    x = rng.standard_normal(shape).astype(np.float32)
    levels = len(overrides["block_out_channels"]) - 1
    z = rng.standard_normal((DECODE_BATCH, 4, shape[2] >> levels, shape[3] >> levels)).astype(np.float32)
    return request.param, ref, ours, x, z


def test_parameter_names_match_state_dict(case):
    name, ref, ours, _, _ = case
    spec = ours.parameter_spec()
    state = ref.state_dict()
    assert sorted(spec) == sorted(state), (
        f"{name}: only ours {sorted(set(spec) - set(state))[:5]}; only torch {sorted(set(state) - set(spec))[:5]}")
    bad = [(k, spec[k][0], tuple(v.shape)) for k, v in state.items() if spec[k][0] != tuple(v.shape)]
    assert not bad, f"{name}: shape mismatches {bad[:5]}"


def test_encode(case):
    name, ref, ours, x, _ = case
    with torch.no_grad():
        want = ref.encode(torch.from_numpy(x)).latent_dist
    got = ours.encode(ms.Tensor(x)).latent_dist
    assert_close(got.mean, want.mean, 1e-5, where=f"{name} encode mean")
    assert_close(got.std, want.std, 1e-5, where=f"{name} encode std")
    assert_close(got.logvar, want.logvar, 1e-5, where=f"{name} encode logvar")
    assert_close(got.mode(), want.mode(), 1e-5, where=f"{name} encode mode")
    (tup,) = ours.encode(ms.Tensor(x), return_dict=False)
    assert_close(tup.mean, want.mean, 1e-5, where=f"{name} encode return_dict=False")


@pytest.mark.parametrize("num_frames", [1, 2, 3])
def test_decode(case, num_frames):
    name, ref, ours, _, z = case
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z), num_frames=num_frames).sample
    got = ours.decode(z, num_frames=num_frames).sample
    assert_close(got, want, 1e-5, where=f"{name} decode num_frames={num_frames}")


def test_construct_mode_and_posterior_sample():
    """construct(): posterior mode by default; with sample_posterior, mean + std * caller noise (numpy)."""
    ref, ours = build_pair(CONFIGS["2lvl_lpb1"][0], seed=3)
    rng = np.random.Generator(np.random.PCG64(11))
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    noise = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want_mode = ref(torch.from_numpy(x), num_frames=2).sample
        post = ref.encode(torch.from_numpy(x)).latent_dist
        want_sample = ref.decode(post.mean + post.std * torch.from_numpy(noise), num_frames=2).sample
    assert_close(ours(ms.Tensor(x), num_frames=2).sample, want_mode, 1e-5, where="construct mode")
    out = ours(ms.Tensor(x), sample_posterior=True, num_frames=2, noise=noise, return_dict=False)
    assert_close(out[0], want_sample, 1e-5, where="construct sample_posterior")
    gen = np.random.Generator(np.random.PCG64(11))
    gen.standard_normal(x.shape)  # same stream position as `noise` above
    out = ours(ms.Tensor(x), sample_posterior=True, num_frames=2, generator=gen)
    assert_close(out.sample, want_sample, 1e-5, where="construct sample_posterior (numpy generator)")


def test_diagonal_gaussian_clamps_like_diffusers():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution as TorchDGD

    rng = np.random.Generator(np.random.PCG64(5))
    moments = (rng.standard_normal((2, 8, 3, 5)) * 30).astype(np.float32)  # logvar beyond [-30, 20] too
    sample = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    ours, ref = DiagonalGaussianDistribution(ms.Tensor(moments)), TorchDGD(torch.from_numpy(moments))
    for field in ("mean", "logvar", "std", "var"):
        assert_close(getattr(ours, field), getattr(ref, field), 1e-5, where=f"DiagonalGaussian.{field}")
    # kl / nll on milder moments: with var ratios up to e^50 float32 sums depend on summation order
    mild = moments / 10
    ours, ref = DiagonalGaussianDistribution(ms.Tensor(mild)), TorchDGD(torch.from_numpy(mild))
    assert_close(ours.kl(), ref.kl(), 1e-5, where="DiagonalGaussian.kl")
    other = DiagonalGaussianDistribution(ms.Tensor(mild[::-1].copy()))
    assert_close(ours.kl(other), ref.kl(TorchDGD(torch.from_numpy(mild[::-1].copy()))), 1e-5,
                 where="DiagonalGaussian.kl(other)")
    assert_close(ours.nll(ms.Tensor(sample)), ref.nll(torch.from_numpy(sample)), 1e-5, where="DiagonalGaussian.nll")
    with pytest.raises(ValueError, match="noise"):
        ours.sample()


def test_decode_rejects_bad_num_frames():
    _, ours = build_pair(CONFIGS["2lvl_lpb1"][0])
    with pytest.raises(ValueError, match="num_frames=4"):
        ours.decode(np.zeros((6, 4, 4, 4), np.float32), num_frames=4)


def test_fp16_against_torch_fp32():
    ref, ours = build_pair(CONFIGS["2lvl_lpb2"][0], seed=9)
    ours.to_dtype(ms.float16)
    rng = np.random.Generator(np.random.PCG64(13))
    x = rng.standard_normal((3, 3, 16, 24)).astype(np.float32)
    with torch.no_grad():
        want = ref.encode(torch.from_numpy(x)).latent_dist.mean
        want_dec = ref.decode(want, num_frames=3).sample
    got = ours.encode(ms.Tensor(x).astype(ms.float16)).latent_dist.mean
    assert got.dtype == ms.float16
    assert_close(got, want, 1e-2, where="fp16 encode mean")
    dec = ours.decode(want.numpy(), num_frames=3).sample
    assert dec.dtype == ms.float16
    assert_close(dec, want_dec, 1e-2, where="fp16 decode num_frames=3")
