"""FlowMatchEulerDiscreteScheduler against diffusers' (the reference) over a table of configs and step counts.

What is compared, and how tightly:
- timesteps and sigmas: float32 in both, computed at the same rounding points (float32 training schedule, float64
  inference sigmas rounded once): identical, bit for bit.
- step loops: a deterministic fake model (a fixed linear function of the sample and the timestep, in float32 numpy
  on both sides) drives both; every step's prev_sample agrees to 1e-6 relative L2 (fp32).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import diffusers.schedulers.scheduling_flow_match_euler_discrete as dmod  # noqa: E402
import mindspore as ms  # noqa: E402

from mindport.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler  # noqa: E402
from tests.helpers import rel_l2  # noqa: E402

CONFIGS = {
    "defaults": {},
    "shift_3": {"shift": 3.0},
    "shift_5_n500": {"shift": 5.0, "num_train_timesteps": 500},
    "dynamic_mu": {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    "dynamic_mu_linear": {"use_dynamic_shifting": True, "time_shift_type": "linear"},
    "shift_terminal": {"shift": 3.0, "shift_terminal": 0.1},
    "dynamic_terminal": {"use_dynamic_shifting": True, "shift_terminal": 0.02},
    "invert_sigmas": {"shift": 2.0, "invert_sigmas": True},
    "karras": {"shift": 3.0, "use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta_sigmas": {"shift": 3.0, "use_beta_sigmas": True},
}
STEPS = (1, 2, 7, 50)
MU = {"exponential": 1.1, "linear": 2.5}


def _steps(name):
    return tuple(n for n in STEPS if not (n == 1 and "terminal" in name))  # 1 step: the stretch divides 0 by 0


def _kw(name):
    cfg = CONFIGS[name]
    return {"mu": MU[cfg.get("time_shift_type", "exponential")]} if cfg.get("use_dynamic_shifting") else {}


def _pair(name):
    cfg = CONFIGS[name]
    return dmod.FlowMatchEulerDiscreteScheduler.from_config(dict(cfg)), FlowMatchEulerDiscreteScheduler.from_config(cfg)


def _fake_model(x: np.ndarray, t) -> np.ndarray:
    """A deterministic stand-in for the transformer, identical on both sides: 0.3 x - 5e-4 t + 0.1 sin(index)."""
    x = np.asarray(x, np.float32)
    bias = np.sin(np.arange(x.size, dtype=np.float32)).reshape(x.shape)
    return (np.float32(0.3) * x - np.float32(5e-4) * np.float32(t) + np.float32(0.1) * bias).astype(np.float32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_schedule_is_bit_exact(name):
    ref, ours = _pair(name)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert (ours.sigma_min, ours.sigma_max, ours.shift) == (ref.sigma_min, ref.sigma_max, ref.shift)
    for n in _steps(name):
        ref.set_timesteps(n, **_kw(name))
        ours.set_timesteps(n, **_kw(name))
        assert ours.sigmas.dtype == ours.timesteps.dtype == np.float32
        np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy(), err_msg=f"{name}, {n} steps: sigmas")
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy(), err_msg=f"{name}, {n} steps: timesteps")


def _loop(sched, name, n, x0, torch_side, **step_kw):
    sched.set_timesteps(n, **_kw(name))
    x = torch.from_numpy(x0.copy()) if torch_side else x0.copy()
    out = []
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t) if not torch_side else x
        m = _fake_model(xin.numpy() if torch_side else xin, float(t))
        x = sched.step(torch.from_numpy(m) if torch_side else m, t, x, **step_kw).prev_sample
        out.append(x.numpy().copy() if torch_side else x)
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_step_loop_matches_diffusers(name):
    rng = np.random.Generator(np.random.PCG64(11))
    ref, ours = _pair(name)
    for n in _steps(name):
        x0 = rng.standard_normal((2, 4, 3, 5, 6)).astype(np.float32)
        r = _loop(ref, name, n, x0, torch_side=True)
        o = _loop(ours, name, n, x0, torch_side=False)
        assert len(r) == len(o) == n
        for i, (a, b) in enumerate(zip(o, r)):
            assert a.dtype == np.float32 and a.shape == b.shape
            err = rel_l2(a, b)
            assert err <= 1e-6, f"{name}, {n} steps, step {i}: prev_sample relative L2 {err:.2e}"


def test_stochastic_sampling_uses_the_numpy_generator(monkeypatch):
    """Both sides re-noise x0 with the same numpy stream (diffusers' randn_tensor patched to read it)."""
    seed = 21
    ref_gen = np.random.Generator(np.random.PCG64(seed))

    def fake_randn_tensor(shape, generator=None, device=None, dtype=None, **_):
        return torch.from_numpy(ref_gen.standard_normal(tuple(shape)).astype(np.float32)).to(dtype)

    monkeypatch.setattr(dmod, "randn_tensor", fake_randn_tensor)
    cfg = {"shift": 3.0, "stochastic_sampling": True}
    ref = dmod.FlowMatchEulerDiscreteScheduler.from_config(cfg)
    ours = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    CONFIGS["_stochastic"] = cfg
    try:
        x0 = np.random.Generator(np.random.PCG64(0)).standard_normal((1, 3, 4, 4)).astype(np.float32)
        r = _loop(ref, "_stochastic", 6, x0, torch_side=True)
        o = _loop(ours, "_stochastic", 6, x0, torch_side=False, generator=np.random.Generator(np.random.PCG64(seed)))
    finally:
        del CONFIGS["_stochastic"]
    for i, (a, b) in enumerate(zip(o, r)):
        assert rel_l2(a, b) <= 1e-6, f"step {i}"


def test_per_token_timesteps_match_diffusers():
    ref, ours = _pair("shift_3")
    ref.set_timesteps(8)
    ours.set_timesteps(8)
    rng = np.random.Generator(np.random.PCG64(8))
    x, m = (rng.standard_normal((2, 6, 4)).astype(np.float32) for _ in range(2))
    tok = rng.uniform(100, 990, size=(2, 6)).astype(np.float32)
    t = ours.timesteps[2]
    got = ours.step(m, t, x, per_token_timesteps=tok).prev_sample
    want = ref.step(torch.from_numpy(m), torch.tensor(t), torch.from_numpy(x),
                    per_token_timesteps=torch.from_numpy(tok)).prev_sample.numpy()
    assert got.dtype == np.float32 and rel_l2(got, want) <= 1e-6


def test_custom_sigmas_and_timesteps_match_diffusers():
    for kw in ({"sigmas": [1.0, 0.75, 0.5, 0.25]}, {"timesteps": [900.0, 600.0, 300.0]},
               {"sigmas": [0.9, 0.6, 0.2], "timesteps": [950.0, 500.0, 100.0]}):
        ref, ours = _pair("shift_3")
        ref.set_timesteps(**kw)
        ours.set_timesteps(**kw)
        np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy(), err_msg=str(kw))
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy(), err_msg=str(kw))


def test_set_shift_and_scale_noise_match_diffusers():
    ref, ours = _pair("defaults")
    ref.set_shift(4.0)
    ours.set_shift(4.0)
    ref.set_timesteps(10)
    ours.set_timesteps(10)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    rng = np.random.Generator(np.random.PCG64(9))
    x, noise = (rng.standard_normal((3, 2, 4)).astype(np.float32) for _ in range(2))
    t = ours.timesteps[[0, 3, 9]]
    got = ours.scale_noise(x, t, noise)
    want = ref.scale_noise(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(noise)).numpy()
    assert got.dtype == np.float32 and rel_l2(got, want) <= 1e-7


def test_mindspore_tensors_in_and_out():
    ours_np, ours_ms = (FlowMatchEulerDiscreteScheduler(shift=3.0) for _ in range(2))
    x0 = np.random.Generator(np.random.PCG64(5)).standard_normal((1, 4, 2, 3, 3)).astype(np.float32)
    expect = _loop(ours_np, "shift_3", 5, x0, torch_side=False)
    ours_ms.set_timesteps(5)
    x = ms.Tensor(x0)
    for i, t in enumerate(ours_ms.timesteps):
        m = ms.Tensor(_fake_model(x.asnumpy(), float(t)))
        x = ours_ms.step(m, ms.Tensor(t), x, return_dict=False)[0]
        assert isinstance(x, ms.Tensor) and x.dtype == ms.float32
        np.testing.assert_array_equal(x.asnumpy(), expect[i])


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError) as e:
        FlowMatchEulerDiscreteScheduler(time_shift_type="cubic")
    assert "time_shift_type='cubic'" in str(e.value) and "exponential" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="use_karras_sigmas.*use_beta_sigmas"):
        FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    ours = FlowMatchEulerDiscreteScheduler()
    for n in (0, -1):
        with pytest.raises(ValueError, match=rf"num_inference_steps={n} must be at least 1"):
            ours.set_timesteps(n)
    with pytest.raises(ValueError, match="mu"):
        FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).set_timesteps(4)
    with pytest.raises(ValueError, match="same|differ|num_inference_steps=3"):
        ours.set_timesteps(3, sigmas=[1.0, 0.5])
    ours.set_timesteps(4)
    with pytest.raises(ValueError, match="integer timestep"):
        ours.step(np.zeros(3, np.float32), 3, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="not in the scheduler's timesteps"):
        ours.step(np.zeros(3, np.float32), 123.5, np.zeros(3, np.float32))


def test_from_pretrained_of_a_diffusers_saved_config(tmp_path):
    """A config diffusers saved (nulls included: shift_terminal) loads into the same schedule; a field written as
    null where diffusers' default is not null takes the default."""
    cfg = {"shift": 3.0, "use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096}
    ref = dmod.FlowMatchEulerDiscreteScheduler.from_config(cfg)
    ref.save_pretrained(tmp_path / "scheduler")
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["shift_terminal"] is None
    ours = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    for n in (7, 50):
        ref.set_timesteps(n, mu=0.9)
        ours.set_timesteps(n, mu=0.9)
        np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())

    nulls = {**saved, "shift": None, "time_shift_type": None, "invert_sigmas": None, "use_karras_sigmas": None,
             "num_train_timesteps": None, "base_shift": None, "stochastic_sampling": None}
    (tmp_path / "nulls").mkdir()
    (tmp_path / "nulls" / "scheduler_config.json").write_text(json.dumps(nulls))
    ours = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "nulls")
    assert ours.config.shift == 1.0 and ours.config.time_shift_type == "exponential"
    assert ours.config.num_train_timesteps == 1000 and ours.config.base_shift == 0.5
    ref = dmod.FlowMatchEulerDiscreteScheduler.from_config({k: v for k, v in nulls.items() if v is not None})
    ref.set_timesteps(9, mu=0.9)
    ours.set_timesteps(9, mu=0.9)
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def test_save_config_round_trip(tmp_path):
    ours = FlowMatchEulerDiscreteScheduler(shift=5.0, use_dynamic_shifting=True, shift_terminal=0.05)
    ours.save_config(tmp_path)
    again = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    assert dict(again.config) == dict(ours.config)
    ref = dmod.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)  # diffusers reads what we write
    assert ref.config.shift == 5.0 and ref.config.shift_terminal == 0.05
