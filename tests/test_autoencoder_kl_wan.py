"""Parity of Wan 2.1's video VAE (AutoencoderKLWan) with diffusers 0.42.1 on tiny random checkpoints: the chunked,
feature-cached encode (first frame, then chunks of 4) and decode (one latent frame at a time) for 1, 5 and 9 frames,
spatial / temporal downsampling and attention, fp16; parameter names; from_pretrained; config nulls; bad inputs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import mindspore as ms  # noqa: E402

from mindport.models.autoencoder_kl_wan import AutoencoderKLWan  # noqa: E402
from parity.fixtures import randomise  # noqa: E402
from tests.helpers import assert_close, to_numpy, torch_state_to_numpy  # noqa: E402

# name -> (config, frame counts to run (each 1 + 4k), (H, W))
CONFIGS = {
    # one temporal downsample (the second level), mid-block attention only
    "2d-then-3d": (dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                        temperal_downsample=[False, True]), (1, 5, 9), (24, 40)),
    # both downsamples temporal (the mid blocks' attention sees 3 latent frames), 2 res blocks, a wider decoder
    "3d-3d": (dict(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=2,
                   attn_scales=[], temperal_downsample=[True, True]), (5, 9), (16, 24)),
}


def build(cfg: dict, seed: int = 0):
    """diffusers' model built under torch.manual_seed, weights re-drawn non-zero (RMS gammas 1 + 0.1 N, not the
    N(0, 1) randomise gives their (C, 1, 1, 1) shapes), copied into ours."""
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKLWan(**cfg).eval()
    randomise(ref, seed + 1, vector_std=0.3)
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(".gamma"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        ref.decoder.conv_out.weight.mul_(0.3)  # outputs mostly inside [-1, 1]: the clamp hides little
    ours = AutoencoderKLWan.from_config(ref.config)
    ours.load_arrays(torch_state_to_numpy(ref))
    return ref, ours


@pytest.fixture(scope="module")
def pairs():
    return {name: build(cfg) for name, (cfg, _, _) in CONFIGS.items()}


def reference(ref, x: np.ndarray):
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(x)).latent_dist
        return post, ref.decode(post.mean).sample


@pytest.mark.parametrize("name", list(CONFIGS))
def test_autoencoder_kl_wan_parity(name, pairs):
    ref, ours = pairs[name]
    _, frames, (h, w) = CONFIGS[name]
    rng = np.random.Generator(np.random.PCG64(3))
    for f in frames:
        x = rng.standard_normal((1, 3, f, h, w)).astype(np.float32)
        post, want = reference(ref, x)
        got = ours.encode(ms.Tensor(x)).latent_dist
        errs = [assert_close(got.mean, post.mean, 1e-5, where=f"{name} F={f} encode mean"),
                assert_close(got.std, post.std, 1e-5, where=f"{name} F={f} encode std")]
        dec = ours.decode(post.mean.numpy()).sample
        assert tuple(dec.shape) == (1, 3, f, h, w)
        errs.append(assert_close(dec, want, 1e-5, where=f"{name} F={f} decode"))
        clamped = float((np.abs(want.numpy()) >= 1.0).mean())
        assert clamped < 0.05, f"{name} F={f}: {clamped:.0%} of the decoded values clamped (weights too large)"
        print(f"{name} F={f} {h}x{w}: mean {errs[0]:.2e} std {errs[1]:.2e} decode {errs[2]:.2e} "
              f"(clamped {clamped:.1%})")


def test_autoencoder_kl_wan_batch2_and_construct(pairs):
    ref, ours = pairs["2d-then-3d"]
    rng = np.random.Generator(np.random.PCG64(5))
    x = rng.standard_normal((2, 3, 5, 16, 8)).astype(np.float32)
    noise = rng.standard_normal((2, 4, 3, 4, 2)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).sample
        post = ref.encode(torch.from_numpy(x)).latent_dist
        want_sampled = ref.decode(post.mean + post.std * torch.from_numpy(noise)).sample
    assert_close(ours(ms.Tensor(x)).sample, want, 1e-5, where="construct mode, batch 2")
    out = ours(ms.Tensor(x), sample_posterior=True, noise=noise, return_dict=False)
    assert_close(out[0], want_sampled, 1e-5, where="construct sample_posterior, batch 2")


def test_autoencoder_kl_wan_fp16_against_torch_fp32():
    cfg, _, (h, w) = CONFIGS["3d-3d"]
    ref, ours = build(cfg, seed=4)
    ours.to_dtype(ms.float16)
    x = np.random.Generator(np.random.PCG64(8)).standard_normal((1, 3, 5, h, w)).astype(np.float32)
    post, want = reference(ref, x)
    got = ours.encode(ms.Tensor(x).astype(ms.float16)).latent_dist
    assert got.mean.dtype == ms.float16
    err_mean = assert_close(got.mean, post.mean, 1e-2, where="fp16 encode mean")
    dec = ours.decode(post.mean.numpy()).sample
    assert dec.dtype == ms.float16
    err_dec = assert_close(dec, want, 1e-2, where="fp16 decode")
    print(f"fp16 vs torch fp32: encode mean {err_mean:.2e}, decode {err_dec:.2e}")


def test_autoencoder_kl_wan_parameter_names_match_state_dict():
    for name, (cfg, _, _) in CONFIGS.items():
        torch.manual_seed(0)
        expected = {k: tuple(v.shape) for k, v in diffusers.AutoencoderKLWan(**cfg).state_dict().items()}
        spec = AutoencoderKLWan.from_config(cfg).parameter_spec()
        assert {k: s for k, (s, _) in spec.items()} == expected, name


def test_autoencoder_kl_wan_from_pretrained(tmp_path):
    """A diffusers folder (save_pretrained) loads through the registry's converter row."""
    from mindport.models import AutoencoderKLWan as Registered

    cfg, _, _ = CONFIGS["2d-then-3d"]
    ref, _ = build(cfg, seed=7)
    ref.save_pretrained(tmp_path / "vae")
    ours = Registered.from_pretrained(str(tmp_path), subfolder="vae")
    assert ours.config.latents_mean == ref.config.latents_mean and ours.config.z_dim == 4
    x = np.random.Generator(np.random.PCG64(9)).standard_normal((1, 3, 5, 16, 16)).astype(np.float32)
    post, want = reference(ref, x)
    assert_close(ours.encode(x).latent_dist.mean, post.mean, 1e-5, where="from_pretrained encode")
    assert_close(ours.decode(post.mean.numpy()).sample, want, 1e-5, where="from_pretrained decode")


def test_autoencoder_kl_wan_config_nulls_and_defaults():
    # absent fields are diffusers' defaults; nulls diffusers gives a meaning to are accepted
    model = AutoencoderKLWan.from_config(dict(base_dim=4, z_dim=4, dim_mult=[1, 1], num_res_blocks=1,
                                              temperal_downsample=[True], decoder_base_dim=None, patch_size=None,
                                              is_residual=None, latents_mean=None, latents_std=None,
                                              scale_factor_temporal=None))
    assert model.config.scale_factor_spatial == 8 and model.config.in_channels == 3
    assert len(AutoencoderKLWan.config_defaults()["latents_mean"]) == 16
    for field in ("dropout", "attn_scales", "scale_factor_spatial", "z_dim"):
        with pytest.raises(ValueError, match=field) as e:
            AutoencoderKLWan.from_config({field: None})
        assert "\n" not in str(e.value)


def test_autoencoder_kl_wan_refuses_encoder_attention_diffusers_cannot_run():
    cfg = dict(base_dim=4, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, attn_scales=[1.0], temperal_downsample=[False])
    with pytest.raises(ValueError, match=r"attn_scales=\[1.0\] cannot run") as e:
        AutoencoderKLWan.from_config(cfg)
    assert "\n" not in str(e.value)
    with torch.no_grad(), pytest.raises(TypeError, match="feat_cache"):
        diffusers.AutoencoderKLWan(**cfg).encode(torch.zeros(1, 3, 1, 8, 8))


@pytest.mark.parametrize("field, value", [("is_residual", True), ("patch_size", 2)])
def test_autoencoder_kl_wan_wan22_layouts_refused(field, value):
    with pytest.raises(NotImplementedError, match=field) as e:
        AutoencoderKLWan.from_config(dict(base_dim=4, z_dim=4, dim_mult=[1, 1], **{field: value}))
    assert "\n" not in str(e.value)


BAD_INPUTS = {
    "encode-channels": ("encode", (1, 4, 1, 8, 8), "4 channels, expected in_channels=3"),
    "encode-rank": ("encode", (1, 3, 8, 8), r"must be \(B, C, F, H, W\), got shape \(1, 3, 8, 8\)"),
    "decode-channels": ("decode", (1, 3, 1, 2, 2), "3 channels, expected z_dim=4"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_autoencoder_kl_wan_bad_inputs_one_line(case):
    method, shape, message = BAD_INPUTS[case]
    model = AutoencoderKLWan.from_config(dict(base_dim=4, z_dim=4, dim_mult=[1, 1], num_res_blocks=1,
                                              temperal_downsample=[False]))
    with pytest.raises(ValueError, match=message) as e:
        getattr(model, method)(np.ones(shape, np.float32))
    assert "\n" not in str(e.value)


def test_autoencoder_kl_wan_decode_is_clamped():
    # the decoded output is clamped to [-1, 1] as diffusers does
    model = AutoencoderKLWan.from_config(dict(base_dim=4, z_dim=4, dim_mult=[1, 1], num_res_blocks=1,
                                              temperal_downsample=[False]))
    for _, p in model.parameters_and_names():
        p.set_data(ms.Tensor(np.full(p.shape, 0.5, np.float32)))
    out = to_numpy(model.decode(np.ones((1, 4, 2, 2, 2), np.float32)).sample)
    assert out.shape == (1, 3, 2, 4, 4) and np.abs(out).max() <= 1.0
