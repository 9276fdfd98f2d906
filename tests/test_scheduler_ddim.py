"""DDIMScheduler against diffusers' over a table of configs, step counts and eta values.

- betas / alphas_cumprod: float32, as diffusers builds them (bit-exact except zero-SNR rescaling, where torch's
  vectorised sqrt and numpy's correctly rounded one differ by a few ulps before a cancelling subtraction).
- timesteps: int64, identical.
- step loops: we compute in float64, diffusers in float32; relative L2 <= 1e-6 per step (zero-SNR: 1e-5).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import diffusers.schedulers.scheduling_ddim as dmod
import mindspore as ms
from mindspore import Tensor

from mindport.schedulers import DDIMScheduler
from mindport.schedulers import scheduling_ddim as ours_mod

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = {
    "default": {},
    # runwayml/stable-diffusion-v1-5 scheduler (PNDM config read as DDIM; legacy keys are ignored)
    "sd15": {**SD, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
             "_class_name": "PNDMScheduler"},
    # what the AnimateDiff example does: from_pretrained(base, clip_sample=False, timestep_spacing="linspace",
    # beta_schedule="linear", steps_offset=1)
    "animatediff": {**SD, "beta_schedule": "linear", "steps_offset": 1, "clip_sample": False,
                    "timestep_spacing": "linspace", "set_alpha_to_one": False},
    # I2VGen-XL-like: zero terminal SNR, v-prediction
    "zero_snr_v_trailing": {**SD, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                            "timestep_spacing": "trailing", "clip_sample": False},
    "zero_snr_v_leading": {**SD, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                           "steps_offset": 1, "clip_sample": False},
    "cosine_sample_clip2": {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample",
                            "clip_sample_range": 2.0},
    "thresholding": {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9},
    "v_clip_linspace": {"prediction_type": "v_prediction", "timestep_spacing": "linspace", "clip_sample_range": 1.5},
    "trained_betas_trailing": {"trained_betas": list(np.linspace(1e-4, 0.02, 200)), "num_train_timesteps": 200,
                               "timestep_spacing": "trailing", "clip_sample": False},
    "n500_offset2": {"num_train_timesteps": 500, "beta_start": 0.001, "beta_end": 0.03, "steps_offset": 2,
                     "set_alpha_to_one": False},
}
STEPS = (1, 7, 25, 50)


def _pair(name, **overrides):
    cfg = CONFIGS[name]
    return dmod.DDIMScheduler.from_config(cfg, **overrides), DDIMScheduler.from_config(cfg, **overrides)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _ulps(a, b):
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a32.astype(np.float64) - b32.astype(np.float64)) / np.spacing(np.maximum(np.abs(a32), np.abs(b32)))


def _tol(name, eta=0.0):
    """Free-running loops: each side feeds its own prev_sample back. With eta > 0 the early, high-noise steps divide
    by sqrt(alpha_t) ~ 0.07 and the variance term breaks DDIM's contraction, so diffusers' float32 rounding of one step
    (<= 3e-7 against our float64, see test_single_steps_match_diffusers) is amplified to ~2e-6 a few steps later."""
    if name.startswith("zero_snr"):
        return 1e-5
    return 5e-6 if eta > 0 else 1e-6


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_schedule_matches_diffusers(name):
    ref, ours = _pair(name)
    zero_snr = name.startswith("zero_snr")
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == np.float32
    if zero_snr:  # cancellation in the rescale amplifies sqrt's last-ulp differences (see module docstring)
        assert _rel(ours.alphas_cumprod, ref.alphas_cumprod.numpy()) < 1e-5
    else:
        np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
        np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    assert float(ours.final_alpha_cumprod) == float(ref.final_alpha_cumprod)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.init_noise_sigma == ref.init_noise_sigma == 1.0
    for n in STEPS:
        ref.set_timesteps(n)
        ours.set_timesteps(n)
        assert ours.timesteps.dtype == np.int64
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy(), err_msg=f"{name}, {n} steps")
        assert ours.num_inference_steps == ref.num_inference_steps


def _loop(sched, n, x0, outs, torch_side, **step_kwargs):
    sched.set_timesteps(n)
    x = torch.from_numpy(x0) if torch_side else x0
    prev_all, pred_all = [], []
    for i, t in enumerate(sched.timesteps):
        assert sched.scale_model_input(x, t) is x
        m = torch.from_numpy(outs[i]) if torch_side else outs[i]
        kwargs = dict(step_kwargs)
        if "variance_noise" in kwargs:
            kwargs["variance_noise"] = torch.from_numpy(kwargs["variance_noise"][i]) if torch_side else kwargs["variance_noise"][i]
        out = sched.step(m, t, x, **kwargs)
        x = out.prev_sample
        prev_all.append(out.prev_sample.numpy() if torch_side else out.prev_sample)
        pred_all.append(out.pred_original_sample.numpy() if torch_side else out.pred_original_sample)
    return prev_all, pred_all


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("eta,clipped", [(0.0, False), (0.7, True)])
def test_step_loop_matches_diffusers(name, eta, clipped):
    """eta > 0 with caller-supplied variance_noise (the generator path is tested below)."""
    rng = np.random.Generator(np.random.PCG64(11))
    ref, ours = _pair(name)
    for n in STEPS:
        x0 = (rng.standard_normal((2, 3, 4, 5)) * 1.5).astype(np.float32)
        outs = [rng.standard_normal((2, 3, 4, 5)).astype(np.float32) for _ in range(n)]
        kw = dict(eta=eta, use_clipped_model_output=clipped)
        if eta > 0:
            kw["variance_noise"] = [rng.standard_normal((2, 3, 4, 5)).astype(np.float32) for _ in range(n)]
        r = _loop(ref, n, x0, outs, True, **kw)
        o = _loop(ours, n, x0, outs, False, **kw)
        for what, rv, ov in zip(("prev_sample", "pred_original_sample"), r, o):
            assert len(rv) == len(ov) == n
            for i, (a, b) in enumerate(zip(ov, rv)):
                assert a.dtype == np.float32 and a.shape == b.shape
                err = _rel(a, b)
                assert err <= _tol(name, eta), f"{name}, {n} steps, eta {eta}, step {i}: {what} relative L2 {err:.2e}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_single_steps_match_diffusers(name):
    """Each step from the same (diffusers') input: float32 vs float64 update, <= 5e-7 (zero-SNR schedule: 1e-5)."""
    rng = np.random.Generator(np.random.PCG64(1))
    ref, ours = _pair(name)
    tol = 1e-5 if name.startswith("zero_snr") else 5e-7
    for n, eta, clipped in ((50, 0.7, True), (25, 0.0, False), (7, 1.0, False)):
        ref.set_timesteps(n)
        ours.set_timesteps(n)
        x = (rng.standard_normal((2, 3, 4, 5)) * 1.5).astype(np.float32)
        for i, t in enumerate(ref.timesteps):
            m, z = (rng.standard_normal(x.shape).astype(np.float32) for _ in range(2))
            r = ref.step(torch.from_numpy(m), t, torch.from_numpy(x), eta=eta, use_clipped_model_output=clipped,
                         variance_noise=torch.from_numpy(z))
            o = ours.step(m, int(t), x, eta=eta, use_clipped_model_output=clipped, variance_noise=z)
            for what in ("prev_sample", "pred_original_sample"):
                if np.isnan(r[what].numpy()).any():
                    # zero-SNR first step with eta=1: 1 - a_prev - sigma^2 is 0, diffusers' float32 rounds it below
                    # 0 and takes its sqrt (NaN); we clamp at 0
                    assert name.startswith("zero_snr") and i == 0 and eta == 1.0 and np.isfinite(o[what]).all()
                    r = {"prev_sample": torch.from_numpy(o.prev_sample)}  # continue from our (finite) value
                    break
                err = _rel(o[what], r[what].numpy())
                assert err <= tol, f"{name}, {n} steps, eta {eta}, step {i}: {what} relative L2 {err:.2e}"
            x = r["prev_sample"].numpy()


def test_eta_noise_comes_from_the_numpy_generator(monkeypatch):
    """eta > 0 without variance_noise: diffusers' randn_tensor patched to read a numpy stream with the same seed as
    our generator; both draw once per step, in the model output's shape."""
    draws = []
    stream = np.random.Generator(np.random.PCG64(5))

    def ref_randn(shape, generator=None, device=None, dtype=None, layout=None):
        draws.append(tuple(shape))
        return torch.from_numpy(stream.standard_normal(tuple(shape)).astype(np.float32)).to(dtype)

    monkeypatch.setattr(dmod, "randn_tensor", ref_randn)
    ref, ours = _pair("sd15")
    rng = np.random.Generator(np.random.PCG64(3))
    n = 6
    x0 = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    outs = [rng.standard_normal((1, 4, 3, 3)).astype(np.float32) for _ in range(n)]
    r, _ = _loop(ref, n, x0, outs, True, eta=1.0)
    o, _ = _loop(ours, n, x0, outs, False, eta=1.0, generator=np.random.Generator(np.random.PCG64(5)))
    assert draws == [(1, 4, 3, 3)] * n
    for i, (a, b) in enumerate(zip(o, r)):
        assert _rel(a, b) <= 1e-6, f"step {i}"


def test_eta_noise_goes_through_the_patchable_randn(monkeypatch):
    calls = []

    def fake(generator, shape, dtype=np.float32):
        calls.append(tuple(shape))
        return np.zeros(shape, dtype)

    monkeypatch.setattr(ours_mod, "randn", fake)
    s = DDIMScheduler()
    s.set_timesteps(4)
    x = np.ones((1, 2, 2, 2), np.float32)
    a = s.step(x, s.timesteps[0], x, eta=0.5).prev_sample
    b = s.step(x, s.timesteps[0], x, eta=0.5, variance_noise=np.zeros_like(x)).prev_sample
    assert calls == [(1, 2, 2, 2)]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="generator.*variance_noise"):
        s.step(x, s.timesteps[0], x, eta=0.5, generator=np.random.default_rng(0), variance_noise=x)


def test_mindspore_tensors_in_same_kind_and_dtype_out():
    ref, ours = _pair("animatediff")
    ref.set_timesteps(5)
    ours.set_timesteps(5)
    rng = np.random.Generator(np.random.PCG64(2))
    x = rng.standard_normal((2, 4, 2, 3, 3)).astype(np.float32)
    m = rng.standard_normal((2, 4, 2, 3, 3)).astype(np.float32)
    t = ours.timesteps[1]
    expected = ref.step(torch.from_numpy(m), ref.timesteps[1], torch.from_numpy(x)).prev_sample.numpy()
    out = ours.step(Tensor(m), Tensor(np.int64(t)), Tensor(x))
    assert isinstance(out.prev_sample, ms.Tensor) and out.prev_sample.dtype == ms.float32
    assert _rel(out.prev_sample.asnumpy(), expected) <= 1e-6
    half = ours.step(Tensor(m).astype(ms.float16), int(t), Tensor(x).astype(ms.float16), return_dict=False)
    assert isinstance(half, tuple) and half[0].dtype == ms.float16 and half[1].dtype == ms.float16
    assert _rel(half[0].asnumpy(), expected) <= 2e-3
    assert ours.step(m.astype(np.float16), t, x.astype(np.float16)).prev_sample.dtype == np.float16
    assert ours.step(m.astype(np.float16), t, x).prev_sample.dtype == np.float32  # torch promotion


@pytest.mark.parametrize("name", ["sd15", "zero_snr_v_trailing", "cosine_sample_clip2"])
def test_add_noise_and_velocity_match_diffusers(name):
    ref, ours = _pair(name)
    rng = np.random.Generator(np.random.PCG64(4))
    x = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    noise = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    t = np.array([0, 500, 999], np.int64)
    tol = _tol(name)
    exp = ref.add_noise(torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    assert _rel(ours.add_noise(x, noise, t), exp) <= tol
    got = ours.add_noise(Tensor(x), Tensor(noise), Tensor(t))
    assert isinstance(got, ms.Tensor) and _rel(got.asnumpy(), exp) <= tol
    exp_v = ref.get_velocity(torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    assert _rel(ours.get_velocity(x, noise, t), exp_v) <= tol


def test_from_pretrained_overrides_win(tmp_path):
    cfg = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **CONFIGS["sd15"]}
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    over = dict(clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1)
    ours = DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler", **over)
    ref = dmod.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler", **over)
    for k in ("beta_schedule", "timestep_spacing", "clip_sample", "steps_offset", "set_alpha_to_one", "beta_start"):
        assert ours.config[k] == ref.config[k], k
    assert ours.config.beta_schedule == "linear" and ours.config.timestep_spacing == "linspace"
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    ours.set_timesteps(16)
    ref.set_timesteps(16)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    # the folder itself may be the scheduler folder
    assert DDIMScheduler.from_pretrained(tmp_path / "scheduler").config.beta_schedule == "scaled_linear"
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        DDIMScheduler.from_pretrained(tmp_path / "nowhere")
    # save_config round-trips
    ours.save_config(tmp_path / "saved")
    again = DDIMScheduler.from_pretrained(tmp_path / "saved")
    assert dict(again.config) == dict(ours.config)


@pytest.mark.parametrize("key,value", [("beta_schedule", "cosine"), ("prediction_type", "x0"),
                                       ("timestep_spacing", "uniform")])
def test_bad_options_name_value_and_choices(key, value):
    with pytest.raises(ValueError) as e:
        DDIMScheduler(**{key: value})
    msg = str(e.value)
    assert key in msg and repr(value) in msg
    for choice in ours_mod.CHOICES[key]:
        assert choice in msg


def test_bad_calls():
    s = DDIMScheduler(num_train_timesteps=100)
    x = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, 99, x)
    with pytest.raises(ValueError, match="num_inference_steps=101"):
        s.set_timesteps(101)
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="not an integer"):
        s.step(x, 9.5, x)
    with pytest.raises(ValueError, match="training range"):
        s.step(x, 100, x)
    with pytest.raises(ValueError, match="trained_betas"):
        DDIMScheduler(trained_betas=[0.1, 0.2], num_train_timesteps=3)
