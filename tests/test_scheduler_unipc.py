"""UniPCMultistepScheduler against diffusers' (the reference) over a table of configs and step counts.

What is compared, and how tightly:
- timesteps: int64, identical. sigmas: float32; flow / Karras / exponential / beta sigmas are float64 numpy in both
  and identical; training sigmas (DDPM modes) come from torch's float32 `((1 - a) / a) ** 0.5`, whose CPU kernel
  is not always correctly rounded: a few float32 ulps.
- step loops: a deterministic fake model (a fixed linear function of the sample and the timestep, evaluated in
  float32 numpy on both sides) drives both schedulers; every step's prev_sample agrees to 1e-6 relative L2 (fp32).
"""

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import diffusers.schedulers.scheduling_unipc_multistep as dmod  # noqa: E402
import mindspore as ms  # noqa: E402

from mindport.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler  # noqa: E402
from tests.helpers import rel_l2  # noqa: E402

warnings.filterwarnings("ignore", message=".*deprecated.*")

# Wan-AI/Wan2.1-T2V-*-Diffusers scheduler/scheduler_config.json (480p: flow_shift 3.0)
WAN_480 = {
    "_class_name": "UniPCMultistepScheduler",
    "_diffusers_version": "0.33.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = {
    "wan_480p": WAN_480,
    "wan_720p": {**WAN_480, "flow_shift": 5.0},
    "wan_order3": {**WAN_480, "solver_order": 3},
    "wan_sigma_min": {**WAN_480, "final_sigmas_type": "sigma_min"},
    "wan_no_lower_order_final": {**WAN_480, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    "flow_dynamic_mu": {**WAN_480, "use_dynamic_shifting": True},
    "flow_shift_terminal": {**WAN_480, "shift_terminal": 0.1},
    "flow_karras": {**WAN_480, "use_karras_sigmas": True},
    "default_epsilon": {},
    # bh1, predict_x0=False and lower_order_final=False reach NaN in diffusers on a last step to sigma 0 (h = inf):
    # they are compared with final_sigmas_type="sigma_min" (see test_bh1_last_step_to_zero_is_finite)
    "epsilon_bh1_order3": {"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    "epsilon_noise_space": {"predict_x0": False, "final_sigmas_type": "sigma_min"},
    "v_noise_space_order3": {"predict_x0": False, "prediction_type": "v_prediction", "solver_order": 3,
                             "final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"},
    "v_trailing_sd": {**SD, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "sample_leading": {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1},
    "epsilon_karras": {"use_karras_sigmas": True},
    "epsilon_exponential": {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"},
    "epsilon_beta_sigmas": {"use_beta_sigmas": True},
    "epsilon_thresholding": {"thresholding": True, "sample_max_value": 1.5},
    "disable_corrector": {**WAN_480, "disable_corrector": [0, 2]},
    "cosine_v_trailing": {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing",
                          "prediction_type": "v_prediction"},
    "v_trailing_zero_snr": {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                            "prediction_type": "v_prediction"},
}
STEPS = (1, 2, 7, 50)
MU = 0.8


def _steps(name):
    return tuple(n for n in STEPS if not (n == 1 and "terminal" in name))  # 1 step: the stretch divides 0 by 0


def _pair(name):
    cfg = CONFIGS[name]
    return dmod.UniPCMultistepScheduler.from_config(dict(cfg)), UniPCMultistepScheduler.from_config(cfg)


def _set(sched, name, n):
    sched.set_timesteps(n, **({"mu": MU} if CONFIGS[name].get("use_dynamic_shifting") else {}))


def _ulps(a, b):
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a32.astype(np.float64) - b32.astype(np.float64)) / np.spacing(np.maximum(np.abs(a32), np.abs(b32)))


def _fake_model(x: np.ndarray, t) -> np.ndarray:
    """A deterministic stand-in for the transformer, identical on both sides: 0.3 x - 5e-4 t + 0.1 sin(index)."""
    x = np.asarray(x, np.float32)
    bias = np.sin(np.arange(x.size, dtype=np.float32)).reshape(x.shape)
    return (np.float32(0.3) * x - np.float32(5e-4 * float(t)) + np.float32(0.1) * bias).astype(np.float32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_schedule_matches_diffusers(name):
    ref, ours = _pair(name)
    cfg = CONFIGS[name]
    zero_snr = bool(cfg.get("rescale_betas_zero_snr"))
    # float64 numpy sigmas in both (flow, Karras, exponential, beta): identical; training sigmas: torch's float32
    # sqrt kernel, a few ulps
    exact = cfg.get("use_flow_sigmas") or any(cfg.get(k) for k in ("use_karras_sigmas", "use_exponential_sigmas",
                                                                      "use_beta_sigmas"))
    if not zero_snr:
        np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
    # zero-SNR: the shared float32 rescale (scheduling_utils) cancels in sqrt(abar) - sqrt(abar_T) and matches
    # diffusers' to ~3e-6 relative, not bit for bit (see tests/test_scheduler_euler.py)
    assert rel_l2(ours.sigmas, ref.sigmas.numpy()) <= 1e-5 if zero_snr else _ulps(ours.sigmas, ref.sigmas.numpy()).max() <= 4
    for n in _steps(name):
        _set(ref, name, n)
        _set(ours, name, n)
        rt, rs = ref.timesteps.numpy(), ref.sigmas.numpy()
        assert ours.timesteps.dtype == np.int64 and ours.sigmas.dtype == np.float32
        np.testing.assert_array_equal(ours.timesteps, rt, err_msg=f"{name}, {n} steps: timesteps")
        if zero_snr:
            assert rel_l2(ours.sigmas, rs) <= 1e-5, f"{name}, {n} steps: sigmas {ours.sigmas} vs {rs}"
        else:
            assert _ulps(ours.sigmas, rs).max() <= (0 if exact else 4), f"{name}, {n} steps: sigmas {ours.sigmas} vs {rs}"
        assert ours.num_inference_steps == ref.num_inference_steps == len(rt)


def _loop(sched, name, n, x0, torch_side):
    _set(sched, name, n)
    x = torch.from_numpy(x0.copy()) if torch_side else x0.copy()
    out = []
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        xn = xin.numpy() if torch_side else xin
        m = _fake_model(xn, int(t))
        x = sched.step(torch.from_numpy(m) if torch_side else m, t, x).prev_sample
        out.append(x.numpy().copy() if torch_side else x)
    return out


# end-to-end bars above 1e-6, each explained (all others: 1e-6)
LOOP_TOLERANCE = {
    # beta-quantile sigmas start at sigma_max 157 (float32 cancellation in diffusers' x0 = (x - sigma_t eps) / alpha_t)
    "epsilon_beta_sigmas": 3e-6,
    # noise-space (predict_x0=False) updates from sigma 157 subtract two terms ~157 |x| large: ill-conditioned;
    # diffusers' own float32 run differs from the same run in float64 by up to 6e-5, ours from its float32 by 2.2e-5
    "v_noise_space_order3": 5e-5,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_step_loop_matches_diffusers(name):
    rng = np.random.Generator(np.random.PCG64(3))
    ref, ours = _pair(name)
    tol = LOOP_TOLERANCE.get(name, 1e-6)
    for n in _steps(name):
        x0 = rng.standard_normal((2, 4, 3, 5, 6)).astype(np.float32)
        r = _loop(ref, name, n, x0, torch_side=True)
        o = _loop(ours, name, n, x0, torch_side=False)
        assert len(r) == len(o) == len(ref.timesteps)
        for i, (a, b) in enumerate(zip(o, r)):
            assert a.dtype == np.float32 and a.shape == b.shape
            assert np.isfinite(a).all() == np.isfinite(b).all(), f"{name}, {n} steps, step {i}: finiteness"
            err = rel_l2(a, b)
            assert err <= tol, f"{name}, {n} steps, step {i}: prev_sample relative L2 {err:.2e} > {tol:.0e}"


def test_mindspore_tensors_in_and_out():
    """The same Wan loop on MindSpore tensors returns MindSpore tensors equal to the numpy loop's."""
    ours_np, ours_ms = (UniPCMultistepScheduler.from_config(WAN_480) for _ in range(2))
    x0 = np.random.Generator(np.random.PCG64(5)).standard_normal((1, 4, 2, 3, 3)).astype(np.float32)
    expect = _loop(ours_np, "wan_480p", 6, x0, torch_side=False)
    ours_ms.set_timesteps(6)
    x = ms.Tensor(x0)
    for i, t in enumerate(ours_ms.timesteps):
        m = ms.Tensor(_fake_model(x.asnumpy(), int(t)))
        x = ours_ms.step(m, ms.Tensor(t), x, return_dict=False)[0]
        assert isinstance(x, ms.Tensor) and x.dtype == ms.float32
        np.testing.assert_allclose(x.asnumpy(), expect[i], rtol=0, atol=0)


def test_add_noise_matches_diffusers():
    for name in ("wan_480p", "default_epsilon"):
        ref, ours = _pair(name)
        ref.set_timesteps(10)
        ours.set_timesteps(10)
        rng = np.random.Generator(np.random.PCG64(1))
        x, noise = (rng.standard_normal((3, 2, 4, 4)).astype(np.float32) for _ in range(2))
        t = ours.timesteps[[0, 4, 9]]
        got = ours.add_noise(x, noise, t)
        want = ref.add_noise(torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
        assert got.dtype == np.float32
        assert rel_l2(got, want) <= 1e-6, name


def test_begin_index_and_unknown_timestep():
    """set_begin_index starts mid-schedule (as img2img does); a timestep not in the schedule maps to the last
    index, as diffusers."""
    for begin in (None, 3):
        ref, ours = _pair("wan_480p")
        ref.set_timesteps(8)
        ours.set_timesteps(8)
        if begin is not None:
            ref.set_begin_index(begin)
            ours.set_begin_index(begin)
        x0 = np.random.Generator(np.random.PCG64(2)).standard_normal((1, 2, 3, 4)).astype(np.float32)
        xr, xo = torch.from_numpy(x0), x0
        start = begin or 0
        for t in ours.timesteps[start:]:
            xr = ref.step(torch.from_numpy(_fake_model(xr.numpy(), int(t))), int(t), xr).prev_sample
            xo = ours.step(_fake_model(xo, int(t)), int(t), xo).prev_sample
            assert rel_l2(xo, xr.numpy()) <= 1e-6
    ours = UniPCMultistepScheduler.from_config(WAN_480)
    ours.set_timesteps(4)
    assert ours.index_for_timestep(12345) == 3


def test_solver_type_aliases_map_to_bh2():
    for alias in ("midpoint", "heun", "logrho"):
        ref = dmod.UniPCMultistepScheduler(solver_type=alias)
        assert UniPCMultistepScheduler(solver_type=alias).config.solver_type == ref.config.solver_type == "bh2"


@pytest.mark.parametrize("kwargs, words", [
    ({"solver_type": "bh3"}, ["solver_type", "'bh3'", "bh1", "bh2"]),
    ({"prediction_type": "velocity"}, ["prediction_type", "'velocity'", "flow_prediction", "epsilon"]),
    ({"timestep_spacing": "middle"}, ["timestep_spacing", "'middle'", "linspace", "trailing"]),
    ({"final_sigmas_type": "one"}, ["final_sigmas_type", "'one'", "zero", "sigma_min"]),
    ({"beta_schedule": "cubic"}, ["beta_schedule", "'cubic'", "linear"]),
    ({"prediction_type": "flow_prediction", "predict_x0": False}, ["flow_prediction", "predict_x0"]),
    ({"use_karras_sigmas": True, "use_beta_sigmas": True}, ["use_karras_sigmas", "use_beta_sigmas"]),
    ({"shift_terminal": 0.1}, ["shift_terminal", "use_flow_sigmas"]),
])
def test_bad_config_is_one_line_value_error(kwargs, words):
    with pytest.raises(ValueError) as e:
        UniPCMultistepScheduler(**kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_bad_set_timesteps_calls():
    ours = UniPCMultistepScheduler.from_config(WAN_480)
    for n in (0, -3):
        with pytest.raises(ValueError, match=rf"num_inference_steps={n} must be at least 1"):
            ours.set_timesteps(n)
    with pytest.raises(ValueError, match="mu"):
        UniPCMultistepScheduler.from_config({**WAN_480, "use_dynamic_shifting": True}).set_timesteps(5)
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        UniPCMultistepScheduler().set_timesteps(sigmas=[0.9, 0.5])
    with pytest.raises(ValueError, match="set_timesteps"):
        UniPCMultistepScheduler().step(np.zeros(3, np.float32), 999, np.zeros(3, np.float32))
    with pytest.raises(NotImplementedError, match="solver_p"):
        UniPCMultistepScheduler(solver_p=object())


def test_custom_flow_sigmas_match_diffusers():
    ref, ours = _pair("wan_480p")
    sig = [1.0, 0.8, 0.5, 0.3, 0.1]
    ref.set_timesteps(sigmas=np.array(sig))
    ours.set_timesteps(sigmas=sig)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())


def test_from_pretrained_of_a_diffusers_saved_config(tmp_path):
    """A config diffusers saved (its nulls included: trained_betas, solver_p, sigma_min/max, shift_terminal) loads
    into the same schedule; fields written as null where diffusers' default is not null take that default."""
    ref = dmod.UniPCMultistepScheduler.from_config(WAN_480)
    ref.save_pretrained(tmp_path / "scheduler")
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["solver_p"] is None and saved["shift_terminal"] is None
    ours = UniPCMultistepScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert ours.config.flow_shift == 3.0 and ours.config.prediction_type == "flow_prediction"
    for n in (7, 50):
        ref.set_timesteps(n)
        ours.set_timesteps(n)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
        np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())

    nulls = {**saved, "flow_shift": None, "disable_corrector": None, "final_sigmas_type": None, "solver_order": None,
             "lower_order_final": None, "timestep_spacing": None, "sigma_max": None}
    (tmp_path / "nulls").mkdir()
    (tmp_path / "nulls" / "scheduler_config.json").write_text(json.dumps(nulls))
    ours = UniPCMultistepScheduler.from_pretrained(tmp_path / "nulls")
    ref = dmod.UniPCMultistepScheduler.from_config({k: v for k, v in nulls.items() if v is not None})
    assert ours.config.flow_shift == 1.0 and ours.config.disable_corrector == [] and ours.config.solver_order == 2
    ref.set_timesteps(9)
    ours.set_timesteps(9)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())

    # absent fields: diffusers' defaults
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "scheduler_config.json").write_text("{}")
    assert UniPCMultistepScheduler.from_pretrained(tmp_path / "empty").config.prediction_type == "epsilon"


def test_bh1_last_step_to_zero_is_finite():
    """diffusers' bh1 last step to sigma 0 multiplies B(h) = -inf by a zero residual (NaN); the first-order update
    does not involve B(h) at all, and ours returns its limit, the x0 prediction."""
    ours = UniPCMultistepScheduler(solver_type="bh1")
    ours.set_timesteps(3)
    x = np.random.Generator(np.random.PCG64(4)).standard_normal((1, 2, 3)).astype(np.float32)
    for t in ours.timesteps:
        m = _fake_model(x, int(t))
        x0 = ours.convert_model_output(m, sample=x) if ours.step_index is not None else None
        x = ours.step(m, t, x).prev_sample
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x, x0.astype(np.float32), rtol=1e-6)


def test_save_config_round_trip(tmp_path):
    ours = UniPCMultistepScheduler.from_config({**WAN_480, "flow_shift": 5.0, "disable_corrector": [1]})
    ours.save_config(tmp_path)
    again = UniPCMultistepScheduler.from_pretrained(tmp_path)
    assert dict(again.config) == dict(ours.config)
    ref = dmod.UniPCMultistepScheduler.from_pretrained(tmp_path)  # diffusers reads what we write
    assert ref.config.flow_shift == 5.0 and list(ref.config.disable_corrector) == [1]
