"""EulerDiscreteScheduler against diffusers' (the reference) over a table of configs and step counts.

What is compared, and how tightly:
- betas / alphas_cumprod / sigmas / timesteps: diffusers keeps them as float32 torch tensors built with float32
  arithmetic; we reproduce every float32 rounding point in numpy. Elementwise float32 ops agree bit for bit except
  torch's CPU sqrt and log, which are SLEEF-style vector kernels (sqrt off by up to 0.73 ulp here) where numpy is
  correctly rounded. So the schedule matches to a few float32 ulps (exactly, for SVD's Karras sigmas), and zero-SNR
  rescaling, whose `sqrt(abar) - sqrt(abar_T)` cancels, to ~1e-5 relative.
- scale_model_input / step / add_noise: we compute in float64, diffusers in float32; multi-step loops agree to 1e-6
  relative.
"""

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import diffusers.schedulers.scheduling_euler_discrete as dmod  # noqa: E402
import mindspore as ms  # noqa: E402

from mindport.schedulers import EulerDiscreteScheduler  # noqa: E402

warnings.filterwarnings("ignore", message=".*scale_model_input.*")

# stabilityai/stable-video-diffusion-img2vid(-xt) scheduler_config.json (legacy keys included: they are ignored)
SVD_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.24.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = {
    "svd": SVD_CONFIG,
    "svd_final_sigma_min": {**SVD_CONFIG, "final_sigmas_type": "sigma_min"},
    "default": {},
    "sd15_leading_eps": {**SD, "steps_offset": 1, "timestep_spacing": "leading"},
    "trailing_v_zero_snr": {**SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                            "rescale_betas_zero_snr": True},
    "cosine_sample": {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"},
    "log_linear": {**SD, "interpolation_type": "log_linear"},
    "log_linear_continuous_v": {"interpolation_type": "log_linear", "timestep_type": "continuous",
                                "prediction_type": "v_prediction"},
    "exponential_sigma_min": {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"},
    "beta_sigmas": {**SD, "use_beta_sigmas": True, "timestep_spacing": "leading"},
    "karras_trailing_v": {"use_karras_sigmas": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    # sigma range inside the training range: with sigma_max above it, _sigma_to_t clips, timesteps repeat and
    # diffusers' own step() runs past its sigma array (IndexError), so there is nothing to compare
    "karras_range_eps": {**SD, "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
    "continuous_eps": {"timestep_type": "continuous"},  # continuous only changes timesteps for v_prediction
    "n500_leading_offset2": {"num_train_timesteps": 500, "beta_start": 0.001, "beta_end": 0.03,
                             "timestep_spacing": "leading", "steps_offset": 2},
    "trained_betas": {"trained_betas": list(np.linspace(1e-4, 0.02, 200)), "num_train_timesteps": 200},
}
STEPS = (1, 2, 7, 25)


def _pair(name):
    cfg = CONFIGS[name]
    ref = dmod.EulerDiscreteScheduler.from_config({k: v for k, v in cfg.items()})
    ours = EulerDiscreteScheduler.from_config(cfg)
    return ref, ours


def _ulps(a, b):
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a32.astype(np.float64) - b32.astype(np.float64)) / np.spacing(np.maximum(np.abs(a32), np.abs(b32)))


def _t_close(a, b, ulps=4, atol=2e-6):
    """timesteps: within `ulps` float32 ulps, or `atol` absolute near zero (0.25*log(sigma) crosses 0 at sigma=1, and
    t = _sigma_to_t(sigma) near t=0 divides by a small log-sigma difference; both are ~1e-7 absolute there)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.all(np.abs(a64 - b64) <= np.maximum(ulps * np.spacing(np.abs(b64).astype(np.float32)), atol)))


def _schedule_tolerance(name):
    """(max ulps for sigmas, max ulps for timesteps)."""
    if name == "trailing_v_zero_snr":
        return 200, 4  # ~1e-5 relative: float32 cancellation in diffusers' own rescale (see module docstring)
    return 4, 4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_schedule_matches_diffusers(name):
    ref, ours = _pair(name)
    s_tol, t_tol = _schedule_tolerance(name)
    assert _ulps(ours.betas, ref.betas.numpy()).max() <= (1e6 if name == "trailing_v_zero_snr" else 0)
    assert ours.sigmas.dtype == ours.timesteps.dtype == np.float32
    assert _ulps(ours.sigmas, ref.sigmas.numpy()).max() <= s_tol, "initial sigmas"
    assert _t_close(ours.timesteps, ref.timesteps.numpy(), t_tol), "initial timesteps"
    for n in STEPS:
        ref.set_timesteps(n)
        ours.set_timesteps(n)
        rs, rt = ref.sigmas.numpy(), ref.timesteps.numpy()
        assert ours.sigmas.shape == rs.shape and ours.timesteps.shape == rt.shape, f"{n} steps: shapes"
        assert _ulps(ours.sigmas, rs).max() <= s_tol, f"{n} steps: sigmas {ours.sigmas} vs {rs}"
        assert _t_close(ours.timesteps, rt, t_tol), f"{n} steps: timesteps {ours.timesteps} vs {rt}"
        assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=s_tol * 1.2e-7)


@pytest.mark.parametrize("n", [1, 14, 25, 50])
def test_svd_schedule_is_bit_exact(n):
    """SVD: Karras sigmas from sigma_min/max (float64, then float32) are bit-identical; timesteps 0.25*log(sigma)
    differ by at most one float32 ulp (torch's log kernel vs a correctly rounded log)."""
    ref, ours = _pair("svd")
    ref.set_timesteps(n)
    ours.set_timesteps(n)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    assert _t_close(ours.timesteps, ref.timesteps.numpy(), ulps=1)
    assert ours.init_noise_sigma == float(ref.init_noise_sigma)


def _loop(sched, n, x0, outs, torch_side):
    sched.set_timesteps(n)
    x = torch.from_numpy(x0) if torch_side else x0
    scaled_all, prev_all, pred_all = [], [], []
    for i, t in enumerate(sched.timesteps):
        scaled = sched.scale_model_input(x, t)
        m = torch.from_numpy(outs[i]) if torch_side else outs[i]
        out = sched.step(m, t, x)
        x = out.prev_sample
        for lst, v in ((scaled_all, scaled), (prev_all, out.prev_sample), (pred_all, out.pred_original_sample)):
            lst.append(v.numpy() if torch_side else v)
    return scaled_all, prev_all, pred_all


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


# End-to-end bars above 1e-6, each explained (all others: 1e-6):
LOOP_TOLERANCE = {
    # the schedule itself differs by up to ~3e-6 (zero-SNR cancellation, see the module docstring); with diffusers'
    # sigmas injected the step loop agrees to 1e-6 (checked below)
    "trailing_v_zero_snr": 3e-6,
    # last step goes *up* from sigma 0.002 to sigma_min 0.029: diffusers' float32 (x - x0) / sigma_hat cancels and
    # is multiplied by dt = +0.027; a float32 emulation reproduces diffusers to 8e-8, our float64 differs by 1.0e-6
    "svd_final_sigma_min": 2e-6,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_step_loop_matches_diffusers(name):
    rng = np.random.Generator(np.random.PCG64(7))
    ref, ours = _pair(name)
    tol = LOOP_TOLERANCE.get(name, 1e-6)
    for n in STEPS:
        x0 = (rng.standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)
        outs = [rng.standard_normal((2, 3, 4, 5)).astype(np.float32) for _ in range(n + 2)]
        r = _loop(ref, n, x0, outs, torch_side=True)
        o = _loop(ours, n, x0, outs, torch_side=False)
        for what, rv, ov in zip(("scale_model_input", "prev_sample", "pred_original_sample"), r, o):
            assert len(rv) == len(ov) == len(ref.timesteps)
            for i, (a, b) in enumerate(zip(ov, rv)):
                assert a.dtype == np.float32 and a.shape == b.shape
                err = _rel(a, b)
                assert err <= tol, f"{name}, {n} steps, step {i}: {what} relative L2 {err:.2e}"


def test_zero_snr_step_with_diffusers_sigmas():
    """Separates schedule from update: with diffusers' float32 sigmas injected, the zero-SNR loop agrees to 1e-6."""
    ref, ours = _pair("trailing_v_zero_snr")
    rng = np.random.Generator(np.random.PCG64(7))
    n = 25
    x0 = (rng.standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)
    outs = [rng.standard_normal((2, 3, 4, 5)).astype(np.float32) for _ in range(n)]
    _, prev_ref, _ = _loop(ref, n, x0, outs, torch_side=True)
    ours.set_timesteps(n)
    ours.sigmas = ref.sigmas.numpy().copy()
    x = x0
    for i, t in enumerate(ours.timesteps):
        ours.scale_model_input(x, t)
        x = ours.step(outs[i], t, x).prev_sample
        assert _rel(x, prev_ref[i]) <= 1e-6, f"step {i}"


def test_churn_uses_the_numpy_generator():
    """s_churn > 0: both sides get the same numpy noise (diffusers' randn_tensor patched to read the same stream)."""
    ref, ours = _pair("sd15_leading_eps")
    rng = np.random.Generator(np.random.PCG64(3))
    x0 = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    outs = [rng.standard_normal((1, 2, 3, 3)).astype(np.float32) for _ in range(6)]
    ref_gen = np.random.Generator(np.random.PCG64(11))
    patched = dmod.randn_tensor
    dmod.randn_tensor = lambda shape, **kw: torch.from_numpy(ref_gen.standard_normal(tuple(shape)).astype(np.float32))
    try:
        ref.set_timesteps(6)
        ours.set_timesteps(6)
        xr, xo = torch.from_numpy(x0), x0
        our_gen = np.random.Generator(np.random.PCG64(11))
        kw = dict(s_churn=1.0, s_tmin=0.5, s_tmax=10.0)  # noise only where 0.5 <= sigma <= 10
        for i, (tr, to) in enumerate(zip(ref.timesteps, ours.timesteps)):
            ref.scale_model_input(xr, tr)
            ours.scale_model_input(xo, to)
            xr = ref.step(torch.from_numpy(outs[i]), tr, xr, **kw).prev_sample
            xo = ours.step(outs[i], to, xo, generator=our_gen, **kw).prev_sample
            assert _rel(xo, xr.numpy()) <= 1e-6, f"step {i}"
    finally:
        dmod.randn_tensor = patched
    # the same stream was consumed on both sides
    assert ref_gen.standard_normal() == our_gen.standard_normal()


def test_mindspore_tensors_in_and_out():
    ref, ours = _pair("svd")
    rng = np.random.Generator(np.random.PCG64(5))
    x0 = rng.standard_normal((1, 2, 4, 3, 3)).astype(np.float32)
    outs = [rng.standard_normal(x0.shape).astype(np.float32) for _ in range(3)]
    _, prev_ref, _ = _loop(ref, 3, x0, outs, torch_side=True)
    ours.set_timesteps(3)
    x = ms.Tensor(x0)
    for i, t in enumerate(ours.timesteps):
        scaled = ours.scale_model_input(x, ms.Tensor(t))
        assert isinstance(scaled, ms.Tensor) and scaled.dtype == ms.float32
        out = ours.step(ms.Tensor(outs[i]), t, x)
        assert isinstance(out.prev_sample, ms.Tensor) and out.prev_sample.dtype == ms.float32
        assert out[0] is out.prev_sample
        x = out.prev_sample
        assert _rel(x.asnumpy(), prev_ref[i]) <= 1e-6
    # fp16 in, fp16 out (math in float64 in between)
    ours.set_timesteps(3)
    t = ours.timesteps[0]
    half = ours.step(ms.Tensor(outs[0]).astype(ms.float16), t, ms.Tensor(x0).astype(ms.float16))
    assert half.prev_sample.dtype == ms.float16
    assert ours.scale_model_input(x0.astype(np.float16), t).dtype == np.float16
    prev, pred = ours.step(outs[1], ours.timesteps[1], x0, return_dict=False)
    assert prev.dtype == pred.dtype == np.float32


def test_add_noise_and_velocity_match_diffusers():
    ref, ours = _pair("sd15_leading_eps")
    ref.set_timesteps(10)
    ours.set_timesteps(10)
    rng = np.random.Generator(np.random.PCG64(9))
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    idx = [0, 4, 9]
    t_ref = ref.timesteps[idx]
    t_ours = ours.timesteps[idx]
    got = ours.add_noise(x, noise, t_ours)
    exp = ref.add_noise(torch.from_numpy(x), torch.from_numpy(noise), t_ref).numpy()
    assert got.dtype == np.float32 and _rel(got, exp) <= 1e-6
    got_v = ours.get_velocity(x, noise, t_ours)
    exp_v = ref.get_velocity(torch.from_numpy(x), torch.from_numpy(noise), t_ref).numpy()
    assert _rel(got_v, exp_v) <= 1e-6


def test_custom_timesteps_and_sigmas_match_diffusers():
    ref, ours = _pair("sd15_leading_eps")
    ts = [901.0, 700.5, 333.0, 20.0]
    ref.set_timesteps(timesteps=ts)
    ours.set_timesteps(timesteps=ts)
    assert _ulps(ours.sigmas, ref.sigmas.numpy()).max() <= 4
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    sig = [14.6, 7.0, 2.5, 0.4, 0.0]
    ref.set_timesteps(sigmas=sig)
    ours.set_timesteps(sigmas=sig)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    assert _t_close(ours.timesteps, ref.timesteps.numpy())
    # SVD pipelines pass sigmas too (continuous v-prediction timesteps follow them)
    ref, ours = _pair("svd")
    ref.set_timesteps(sigmas=[700.0, 30.0, 1.0, 0.002, 0.0])
    ours.set_timesteps(sigmas=[700.0, 30.0, 1.0, 0.002, 0.0])
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    assert _t_close(ours.timesteps, ref.timesteps.numpy(), ulps=1)


def test_begin_index_and_repeated_timesteps():
    ref, ours = _pair("default")
    for s in (ref, ours):
        s.set_timesteps(4)
        s.set_begin_index(2)
    x = np.ones((1, 1, 2, 2), np.float32)
    a = ours.step(x, ours.timesteps[2], x).prev_sample
    b = ref.step(torch.from_numpy(x), ref.timesteps[2], torch.from_numpy(x)).prev_sample.numpy()
    assert ours.step_index == ref.step_index == 3 and _rel(a, b) <= 1e-6
    ours.set_timesteps(timesteps=[500.0, 500.0, 100.0])
    assert ours.index_for_timestep(np.float32(500.0)) == 1  # second occurrence, as diffusers


@pytest.mark.parametrize(
    "field,value",
    [
        ("beta_schedule", "cosine"),
        ("prediction_type", "x0"),
        ("interpolation_type", "cubic"),
        ("timestep_spacing", "uniform"),
        ("timestep_type", "discretee"),
        ("final_sigmas_type", "one"),
    ],
)
def test_bad_option_names_value_and_choices(field, value):
    with pytest.raises(ValueError) as e:
        EulerDiscreteScheduler(**{field: value})
    msg = str(e.value)
    assert field in msg and repr(value) in msg
    from mindport.schedulers.scheduling_euler_discrete import CHOICES

    assert all(c in msg for c in CHOICES[field])


def test_misuse_errors():
    with pytest.raises(ValueError, match="only one of"):
        EulerDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)
    s = EulerDiscreteScheduler.from_config(SVD_CONFIG)
    with pytest.raises(ValueError, match="custom `timesteps`"):
        s.set_timesteps(timesteps=[900.0, 100.0])
    with pytest.raises(ValueError, match="only one of"):
        s.set_timesteps(3, sigmas=[1.0, 0.0])
    s.set_timesteps(3)
    with pytest.raises(ValueError, match="integer timestep"):
        s.step(np.zeros(2, np.float32), 1, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        s.scale_model_input(np.zeros(2, np.float32), 123.25)


def test_from_pretrained_config_and_overrides(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SVD_CONFIG))
    s = EulerDiscreteScheduler.from_pretrained(tmp_path)
    assert s.config.prediction_type == "v_prediction" and s.config.use_karras_sigmas is True
    assert s.config.final_sigmas_type == "zero" and s.config.sigma_max == 700.0  # diffusers default for missing key
    assert not hasattr(s.config, "skip_prk_steps")
    s2 = EulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler", subfolder=None, timestep_spacing="trailing")
    assert s2.config.timestep_spacing == "trailing"
    # same config surface and defaults as diffusers
    ref = dmod.EulerDiscreteScheduler()
    ours = EulerDiscreteScheduler()
    ref_cfg = {k: v for k, v in ref.config.items() if not k.startswith("_")}
    assert ref_cfg == dict(ours.config)
    s.save_config(tmp_path / "out")
    again = EulerDiscreteScheduler.from_pretrained(tmp_path / "out", subfolder=None)
    assert dict(again.config) == dict(s.config)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        EulerDiscreteScheduler.from_pretrained(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scheduler_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        EulerDiscreteScheduler.from_pretrained(tmp_path / "bad", subfolder=None)
