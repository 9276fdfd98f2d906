"""UniPC (Zhao et al. 2023, arXiv 2302.04867): a unified predictor-corrector multistep solver, as diffusers'
`UniPCMultistepScheduler`, in numpy. Wan 2.1 samples with it in flow mode (`prediction_type="flow_prediction"`,
`use_flow_sigmas=True`, `flow_shift` 3.0 at 480p / 5.0 at 720p); the DDPM-beta modes (epsilon, v, sample) work too.

Precision contract
- The *schedule*: `timesteps` are int64 exactly as diffusers computes them (numpy in both); `sigmas` are diffusers'
  float32 values (training sigmas from the float32 beta schedule, or float64 flow / Karras / exponential / beta
  sigmas rounded to float32 once, as diffusers does).
- The *update*: the scalar coefficients (alpha_t, sigma_t, lambda = log alpha - log sigma, h, e^{-h} - 1, the
  B(h) and phi_k terms, r_k, the rho weights) are evaluated in float32 one rounding at a time, as diffusers' 0-d
  float32 tensors are (h is a difference of nearly equal logs: float64 here would move it by ~1e-6 relative);
  the elementwise math runs in float64 and the result is cast back to the sample's kind and dtype.
- Model outputs in the history (`model_outputs`) are kept as float64 numpy arrays.
- Samples and model outputs may be numpy arrays or MindSpore tensors.
"""

from __future__ import annotations

import math

import numpy as np

from ..modeling import Config
from .scheduling_utils import (
    _F32,
    SchedulerMixin,
    SchedulerOutput,
    StepIndexMixin,
    _cumprod_f32,
    _like,
    _MsTensor,
    _to_numpy,
    beta_sigmas,
    check_sigma_spacing,
    exponential_sigmas,
    karras_sigmas,
    nulls_to_defaults,
    training_betas,
)

CHOICES = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "sample", "v_prediction", "flow_prediction"),
    "solver_type": ("bh1", "bh2"),
    "timestep_spacing": ("linspace", "leading", "trailing"),
    "final_sigmas_type": ("zero", "sigma_min"),
    "time_shift_type": ("exponential", "linear"),
}
# names from DPM-Solver configs that diffusers maps to bh2 (it rewrites the config value)
_BH2_ALIASES = ("midpoint", "heun", "logrho")


# float32 scalar arithmetic, one rounding per operation as torch's 0-d float32 tensors
def _f(x) -> np.float32:
    return _F32(x)


def _log32(x) -> np.float32:
    with np.errstate(divide="ignore"):
        return _F32(np.log(np.float64(x)))


def _expm1_32(x) -> np.float32:
    return _F32(np.expm1(np.float64(x)))


class UniPCMultistepScheduler(StepIndexMixin, SchedulerMixin):
    """diffusers' UniPCMultistepScheduler: same config fields and defaults, same call sequence (`set_timesteps` ->
    for t in `timesteps`: `scale_model_input(x, t)` (identity), model, `step(out, t, x).prev_sample`)."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list | tuple = (),
        solver_p=None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ):
        v = nulls_to_defaults(type(self).__init__, {k: val for k, val in locals().items() if k not in ("self", "__class__")})
        if solver_p is not None:
            raise NotImplementedError("UniPCMultistepScheduler: solver_p (a second scheduler as predictor) is not supported; leave it null")
        if v["solver_type"] in _BH2_ALIASES:
            v["solver_type"] = "bh2"
        self.config = Config(
            num_train_timesteps=int(v["num_train_timesteps"]),
            beta_start=v["beta_start"],
            beta_end=v["beta_end"],
            beta_schedule=v["beta_schedule"],
            trained_betas=None if trained_betas is None else [float(b) for b in np.asarray(trained_betas).ravel()],
            solver_order=int(v["solver_order"]),
            prediction_type=v["prediction_type"],
            thresholding=bool(v["thresholding"]),
            dynamic_thresholding_ratio=v["dynamic_thresholding_ratio"],
            sample_max_value=v["sample_max_value"],
            predict_x0=bool(v["predict_x0"]),
            solver_type=v["solver_type"],
            lower_order_final=bool(v["lower_order_final"]),
            disable_corrector=[int(i) for i in v["disable_corrector"]],
            solver_p=None,
            use_karras_sigmas=bool(v["use_karras_sigmas"]),
            use_exponential_sigmas=bool(v["use_exponential_sigmas"]),
            use_beta_sigmas=bool(v["use_beta_sigmas"]),
            use_flow_sigmas=bool(v["use_flow_sigmas"]),
            flow_shift=v["flow_shift"],
            timestep_spacing=v["timestep_spacing"],
            steps_offset=int(v["steps_offset"]),
            final_sigmas_type=v["final_sigmas_type"],
            rescale_betas_zero_snr=bool(v["rescale_betas_zero_snr"]),
            use_dynamic_shifting=bool(v["use_dynamic_shifting"]),
            time_shift_type=v["time_shift_type"],
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            shift_terminal=shift_terminal,
        )
        self._validate_config()
        cfg = self.config
        n = cfg.num_train_timesteps

        # 1. training noise schedule (float32, as diffusers)
        self.betas = training_betas(trained_betas, cfg.beta_schedule, cfg.beta_start, cfg.beta_end, n, cfg.rescale_betas_zero_snr)
        self.alphas = (_F32(1.0) - self.betas).astype(_F32)
        self.alphas_cumprod = _cumprod_f32(self.alphas)
        if cfg.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = _F32(2.0**-24)
        self.alpha_t = np.sqrt(self.alphas_cumprod).astype(_F32)
        self.sigma_t = np.sqrt(_F32(1.0) - self.alphas_cumprod).astype(_F32)
        self.lambda_t = (np.log(self.alpha_t) - np.log(self.sigma_t)).astype(_F32)
        self.sigmas = self._train_sigmas()
        self.predict_x0 = cfg.predict_x0
        self.disable_corrector = list(cfg.disable_corrector)

        # 2. full-length schedule until set_timesteps is called
        self.num_inference_steps = None
        self.timesteps = np.linspace(0, n - 1, n, dtype=_F32)[::-1].copy()
        self._reset_state()

    # -- construction --------------------------------------------------------------------------------------------
    def _validate_config(self) -> None:
        cfg = self.config
        name = type(self).__name__
        for key, valid in CHOICES.items():
            if key == "beta_schedule" and cfg.trained_betas is not None:
                continue
            if cfg[key] not in valid:
                extra = f" (or an alias of bh2: {list(_BH2_ALIASES)})" if key == "solver_type" else ""
                raise ValueError(f"{name}: {key}={cfg[key]!r} is not supported; expected one of {list(valid)}{extra}")
        if cfg.prediction_type == "flow_prediction" and not cfg.predict_x0:
            raise ValueError(f"{name}: prediction_type='flow_prediction' needs predict_x0=True; with predict_x0=False "
                             "expected one of ['epsilon', 'sample', 'v_prediction']")
        if cfg.solver_order < 1:
            raise ValueError(f"{name}: solver_order={cfg.solver_order} must be at least 1")
        if cfg.num_train_timesteps < 2:
            raise ValueError(f"{name}: num_train_timesteps={cfg.num_train_timesteps} must be at least 2")
        if cfg.trained_betas is not None and len(cfg.trained_betas) != cfg.num_train_timesteps:
            raise ValueError(f"{name}: trained_betas has {len(cfg.trained_betas)} values, expected "
                             f"num_train_timesteps={cfg.num_train_timesteps}")
        check_sigma_spacing(cfg, name)
        if cfg.shift_terminal is not None and not cfg.use_flow_sigmas:
            raise ValueError(f"{name}: shift_terminal={cfg.shift_terminal!r} needs use_flow_sigmas=True")
        if not 0.0 < float(cfg.dynamic_thresholding_ratio) <= 1.0:
            raise ValueError(f"{name}: dynamic_thresholding_ratio={cfg.dynamic_thresholding_ratio!r} must be in (0, 1]")

    def _reset_state(self) -> None:
        order = self.config.solver_order
        self.model_outputs = [None] * order
        self.timestep_list = [None] * order
        self.lower_order_nums = 0
        self.last_sample = None
        self.this_order = None
        self._step_index = None
        self._begin_index = None

    def _train_sigmas(self) -> np.ndarray:
        """sqrt((1 - alphas_cumprod) / alphas_cumprod) in float32, training order (small sigma first)."""
        ac = self.alphas_cumprod
        return np.sqrt((_F32(1.0) - ac) / ac).astype(_F32)

    # -- schedule --------------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu: float | None = None) -> None:
        """Inference schedule: int64 `timesteps` (descending) and float32 `sigmas` (one more, the final sigma).
        Custom `sigmas` (flow mode only) replace the flow sigmas before shifting; `mu` is the dynamic shift.
        `device` is accepted for diffusers call compatibility."""
        cfg = self.config
        name = type(self).__name__
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError(f"{name}.set_timesteps: use_dynamic_shifting=True needs `mu`")
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ValueError(f"{name}.set_timesteps: custom `sigmas` need use_flow_sigmas=True")
            sigmas = np.asarray(sigmas, np.float64).ravel()
            num_inference_steps = len(sigmas)
        if num_inference_steps is None:
            raise ValueError(f"{name}.set_timesteps: pass `num_inference_steps` or `sigmas`")
        num_inference_steps = int(num_inference_steps)
        if num_inference_steps < 1:
            raise ValueError(f"{name}.set_timesteps: num_inference_steps={num_inference_steps} must be at least 1")
        n_train = cfg.num_train_timesteps

        # 1. timesteps by spacing (replaced below in the sigma-respacing and flow modes)
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, n_train - 1, num_inference_steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ratio = n_train // (num_inference_steps + 1)
            ts = (np.arange(0, num_inference_steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            ts += cfg.steps_offset
        else:  # trailing
            ratio = n_train / num_inference_steps
            ts = np.arange(n_train, 0, -ratio).round().copy().astype(np.int64) - 1

        train_sigmas = self._train_sigmas()
        respaced = cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas
        if respaced:
            # 2a. Karras / exponential / beta sigmas between the training sigmas' ends (float64)
            base = train_sigmas if sigmas is None else sigmas
            log_sigmas = np.log(base)
            flipped = base[::-1].copy()
            if cfg.use_karras_sigmas:
                sig = karras_sigmas(*self._sigma_range(flipped), num_inference_steps)
            elif cfg.use_exponential_sigmas:
                sig = exponential_sigmas(*self._sigma_range(flipped), num_inference_steps)
            else:
                sig = beta_sigmas(*self._sigma_range(flipped), num_inference_steps)
            if cfg.use_karras_sigmas and cfg.use_flow_sigmas:
                sig = sig / (sig + 1)
                ts = (sig * n_train).copy()
            else:
                ts = _sigma_to_t(np.asarray(sig, np.float64), log_sigmas)
                if cfg.use_karras_sigmas:
                    ts = ts.round()
            last = sig[-1] if cfg.final_sigmas_type == "sigma_min" else 0
        elif cfg.use_flow_sigmas:
            # 2b. flow sigmas: 1 -> 1/N, shifted (static flow_shift or dynamic mu), optionally stretched
            sig = np.linspace(1, 1 / n_train, num_inference_steps + 1)[:-1] if sigmas is None else sigmas.copy()
            if cfg.use_dynamic_shifting:
                sig = self._time_shift(mu, 1.0, sig)
            else:
                shift = cfg.flow_shift
                sig = shift * sig / (1 + (shift - 1) * sig)
            if cfg.shift_terminal:
                sig = self._stretch_to_terminal(sig)
            sig = np.array(sig, np.float64)
            if math.fabs(sig[0] - 1) < 1e-6:  # keep alpha = 1 - sigma away from 0 (log alpha)
                sig[0] -= 1e-6
            ts = (sig * n_train).copy()
            last = sig[-1] if cfg.final_sigmas_type == "sigma_min" else 0
        else:
            # 2c. training sigmas at the (integer) timesteps
            sig = np.interp(ts, np.arange(0, len(train_sigmas)), train_sigmas)
            if cfg.final_sigmas_type == "sigma_min":
                ac0 = self.alphas_cumprod[0]
                last = np.sqrt((_F32(1.0) - ac0) / ac0)
            else:
                last = 0
        self.sigmas = np.concatenate([np.asarray(sig, np.float64), [float(last)]]).astype(_F32)
        self.timesteps = np.asarray(ts).astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self._reset_state()

    def _time_shift(self, mu: float, sigma: float, t):
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def _stretch_to_terminal(self, t):
        """Stretch 1 - t so that the schedule ends at `shift_terminal` (LTX-Video's rf schedule)."""
        one_minus = 1 - t
        scale = one_minus[-1] / (1 - self.config.shift_terminal)
        return 1 - one_minus / scale

    def _sigma_range(self, in_sigmas) -> tuple[float, float]:
        lo = self.config.sigma_min if self.config.sigma_min is not None else float(in_sigmas[-1])
        hi = self.config.sigma_max if self.config.sigma_max is not None else float(in_sigmas[0])
        return lo, hi

    # -- float32 scalar coefficients -----------------------------------------------------------------------------
    def _alpha_sigma(self, sigma) -> tuple[np.float32, np.float32]:
        """(alpha_t, sigma_t) of a float32 sigma: (1 - s, s) for flow sigmas, else (1/sqrt(s^2 + 1), s * alpha_t)."""
        s = _f(sigma)
        if self.config.use_flow_sigmas:
            return _f(_f(1) - s), s
        alpha = _f(_f(1) / _f(np.sqrt(_f(_f(s * s) + _f(1)))))
        return alpha, _f(s * alpha)

    def _lambda(self, sigma) -> tuple[np.float32, np.float32, np.float32]:
        a, s = self._alpha_sigma(sigma)
        return a, s, _f(_log32(a) - _log32(s))

    def _coefficients(self, i_t: int, i_s0: int, history: list[int], order: int, corrector: bool):
        """Scalars for a predictor (corrector=False) or corrector update from sigma index i_s0 to i_t with previous
        indices `history`: alpha/sigma at both ends, h_phi_1 = e^{hh} - 1, B(h), the r_k and the rho weights."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            alpha_t, sigma_t, lam_t = self._lambda(self.sigmas[i_t])
            alpha_s0, sigma_s0, lam_s0 = self._lambda(self.sigmas[i_s0])
            h = _f(lam_t - lam_s0)
            rks = [_f(_f(self._lambda(self.sigmas[si])[2] - lam_s0) / h) for si in history] + [_f(1)]
            hh = _f(-h) if self.predict_x0 else h
            h_phi_1 = _expm1_32(hh)
            h_phi_k = _f(_f(h_phi_1 / hh) - _f(1))
            b_h = hh if self.config.solver_type == "bh1" else _expm1_32(hh)
            factorial = 1
            b = []
            for i in range(1, order + 1):
                b.append(_f(_f(h_phi_k * _f(factorial)) / b_h))
                factorial *= i + 1
                h_phi_k = _f(_f(h_phi_k / hh) - _f(1 / factorial))
            R = np.array([[float(r) ** (i - 1) for r in rks] for i in range(1, order + 1)], np.float64)
            R = R.astype(_F32).astype(np.float64)
            b = np.array(b, np.float64)
            if corrector:
                rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b).astype(_F32).astype(np.float64)
            elif order == 1:
                rhos = np.zeros(0)
            elif order == 2:
                rhos = np.array([0.5])
            else:
                rhos = np.linalg.solve(R[:-1, :-1], b[:-1]).astype(_F32).astype(np.float64)
        return dict(alpha_t=alpha_t, sigma_t=sigma_t, alpha_s0=alpha_s0, sigma_s0=sigma_s0, h_phi_1=h_phi_1,
                    b_h=b_h, rks=[float(r) for r in rks[:-1]], rhos=rhos)

    def _base_update(self, c, x: np.ndarray, m0: np.ndarray) -> tuple[np.ndarray, float]:
        """The order-1 part x_t_ and the factor in front of the higher-order residual."""
        if self.predict_x0:
            x_t_ = float(_f(c["sigma_t"] / c["sigma_s0"])) * x - float(_f(c["alpha_t"] * c["h_phi_1"])) * m0
            return x_t_, float(_f(c["alpha_t"] * c["b_h"]))
        x_t_ = float(_f(c["alpha_t"] / c["alpha_s0"])) * x - float(_f(c["sigma_t"] * c["h_phi_1"])) * m0
        return x_t_, float(_f(c["sigma_t"] * c["b_h"]))

    # -- model output conversion ---------------------------------------------------------------------------------
    def _threshold_sample(self, x0: np.ndarray) -> np.ndarray:
        """Dynamic thresholding (Imagen): per sample, s = quantile(|x0|, ratio) clamped to [1, sample_max_value]."""
        b = x0.shape[0]
        flat = x0.reshape(b, -1)
        s = np.quantile(np.abs(flat), float(self.config.dynamic_thresholding_ratio), axis=1)
        s = np.clip(s, 1.0, float(self.config.sample_max_value))[:, None]
        return (np.clip(flat, -s, s) / s).reshape(x0.shape)

    def convert_model_output(self, model_output, sample=None):
        """The solver's variable at the current step: predicted x0 (predict_x0=True) or epsilon, float64 numpy."""
        if sample is None:
            raise ValueError("convert_model_output: missing `sample`")
        if self._step_index is None:
            raise ValueError("convert_model_output: no current step; call it from step() (or after set_begin_index)")
        m = _to_numpy(model_output).astype(np.float64)
        x = _to_numpy(sample).astype(np.float64)
        sigma = self.sigmas[self._step_index]
        alpha_t, sigma_t = (float(v) for v in self._alpha_sigma(sigma))
        pt = self.config.prediction_type
        if self.predict_x0:
            if pt == "epsilon":
                x0 = (x - sigma_t * m) / alpha_t
            elif pt == "sample":
                x0 = m
            elif pt == "v_prediction":
                x0 = alpha_t * x - sigma_t * m
            else:  # flow_prediction: x0 = x - sigma * velocity
                x0 = x - float(sigma) * m
            return self._threshold_sample(x0) if self.config.thresholding else x0
        if pt == "epsilon":
            return m
        if pt == "sample":
            return (x - alpha_t * m) / sigma_t
        return alpha_t * m + sigma_t * x  # v_prediction

    # -- stepping --------------------------------------------------------------------------------------------------
    def _predict(self, x: np.ndarray, order: int) -> np.ndarray:
        """UniP-order predictor from sigma[i] to sigma[i+1]."""
        i = self._step_index
        c = self._coefficients(i + 1, i, [i - k for k in range(1, order)], order, corrector=False)
        m0 = self.model_outputs[-1]
        x_t_, factor = self._base_update(c, x, m0)
        if order == 1:
            return x_t_
        res = sum(rho * (self.model_outputs[-(k + 2)] - m0) / rk
                  for k, (rho, rk) in enumerate(zip(c["rhos"], c["rks"])))
        return x_t_ - factor * res

    def _correct(self, model_t: np.ndarray, last_sample: np.ndarray, this_sample: np.ndarray, order: int) -> np.ndarray:
        """UniC-order corrector of this_sample (at sigma[i]) from last_sample (at sigma[i-1]) using the new output."""
        i = self._step_index
        c = self._coefficients(i, i - 1, [i - (k + 1) for k in range(1, order)], order, corrector=True)
        m0 = self.model_outputs[-1]
        x_t_, factor = self._base_update(c, last_sample, m0)
        rhos = c["rhos"]
        res = rhos[-1] * (model_t - m0)
        for k, (rho, rk) in enumerate(zip(rhos[:-1], c["rks"])):
            res = res + rho * (self.model_outputs[-(k + 2)] - m0) / rk
        return x_t_ - factor * res

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """Index of `timestep` in the schedule: the second occurrence if repeated, the last index if absent."""
        schedule = self.timesteps if schedule_timesteps is None else _to_numpy(schedule_timesteps)
        t = _to_numpy(timestep).reshape(-1)
        if t.size != 1:
            raise ValueError(f"expected a single timestep, got an array of shape {t.shape}")
        hits = np.nonzero(schedule == t[0])[0]
        if hits.size == 0:
            return len(self.timesteps) - 1
        return int(hits[1] if hits.size > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def scale_model_input(self, sample, *args, **kwargs):
        """UniPC needs no input scaling: returns `sample` unchanged."""
        return sample

    def step(self, model_output, timestep, sample, return_dict: bool = True):
        """One UniPC step: correct the current sample with the new model output (UniC), then predict the next
        sample (UniP). Returns SchedulerOutput(prev_sample) (a tuple when return_dict=False), in the sample's kind
        and dtype."""
        name = type(self).__name__
        if self.num_inference_steps is None:
            raise ValueError(f"{name}.step: num_inference_steps is None; call set_timesteps first")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index + 1 >= len(self.sigmas):
            raise ValueError(f"{name}.step: called {self._step_index + 1} times for {len(self.sigmas) - 1} steps; call set_timesteps again")
        cfg = self.config

        # 1. corrector on the sample we were given, using the previous step's order
        use_corrector = self._step_index > 0 and (self._step_index - 1) not in self.disable_corrector \
            and self.last_sample is not None
        converted = self.convert_model_output(model_output, sample=sample)
        x = _to_numpy(sample).astype(np.float64)
        if use_corrector:
            x = self._correct(converted, self.last_sample, x, self.this_order)
            # diffusers returns the corrected sample in the sample's dtype before predicting from it
            x = _round_like(x, sample)

        # 2. push the converted output into the history
        self.model_outputs = self.model_outputs[1:] + [converted]
        self.timestep_list = self.timestep_list[1:] + [timestep]

        # 3. order of this step: warm up from 1, lower at the end (lower_order_final)
        order = min(cfg.solver_order, len(self.timesteps) - self._step_index) if cfg.lower_order_final else cfg.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = x

        # 4. predictor
        prev = self._predict(x, self.this_order)
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1

        prev_sample = _like(prev, sample)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    # -- training-side helpers -------------------------------------------------------------------------------------
    def add_noise(self, original_samples, noise, timesteps):
        """alpha_t * original + sigma_t * noise at each timestep's sigma."""
        x = _to_numpy(original_samples).astype(np.float64)
        ts = _to_numpy(timesteps).reshape(-1)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in ts]
        elif self._step_index is not None:
            idx = [self._step_index] * ts.shape[0]
        else:
            idx = [self._begin_index] * ts.shape[0]
        pairs = [self._alpha_sigma(self.sigmas[i]) for i in idx]
        shape = (-1, *([1] * (x.ndim - 1)))
        a = np.array([float(p[0]) for p in pairs]).reshape(shape)
        s = np.array([float(p[1]) for p in pairs]).reshape(shape)
        return _like(a * x + s * _to_numpy(noise).astype(np.float64), original_samples)


def _round_like(values: np.ndarray, ref) -> np.ndarray:
    """Round float64 values through `ref`'s floating dtype (float32 for bfloat16 and non-float references)."""
    if isinstance(ref, _MsTensor):
        dt = {"Float64": np.float64, "Float16": np.float16}.get(str(ref.dtype), np.float32)
    else:
        dt = np.asarray(ref).dtype
        if not np.issubdtype(dt, np.floating):
            dt = np.float32
    return values.astype(dt).astype(np.float64)


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, interpolating linearly in log sigma between neighbours."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    lo_v, hi_v = log_sigmas[low], log_sigmas[high]
    w = np.clip((lo_v - log_sigma) / (lo_v - hi_v), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


__all__ = ["CHOICES", "UniPCMultistepScheduler"]
