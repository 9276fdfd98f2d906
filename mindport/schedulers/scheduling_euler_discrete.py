"""Euler (Karras et al. 2022, Algorithm 2) discrete scheduler, as diffusers' `EulerDiscreteScheduler`, in numpy.

Precision contract
- The *schedule* (`betas`, `alphas_cumprod`, `sigmas`, `timesteps`) holds exactly diffusers' float32 values.
  diffusers defines it through float32 torch arithmetic (float32 linspace, a cumulative product rounded to float32,
  `sqrt((1 - a) / a)` in float32), and those roundings are not noise: the smallest training sigma comes out 1.3e-5
  (relative) away from its float64 value, because `1 - alphas_cumprod` cancels in float32. We reproduce each
  rounding point in numpy (float32 arrays where diffusers has float32 tensors; float64 where diffusers itself uses
  float64 numpy, e.g. Karras/exponential/beta sigmas and `_sigma_to_t`), so `scheduler.timesteps` and
  `scheduler.sigmas` are bit-identical to diffusers' (tests/test_scheduler_euler.py).
- The *update* (`scale_model_input`, `step`, `add_noise`) is computed in float64 from those float32 values and cast
  back to the caller's dtype at the end (diffusers works in float32 here; the difference is ~1e-7 relative a step).
- Samples and model outputs may be numpy arrays or MindSpore tensors; results come back as the same kind and dtype.
"""

from __future__ import annotations

import math

import numpy as np

from ..modeling import Config
from ..utils import randn
from .scheduling_utils import (
    _F32,
    SchedulerMixin,
    SchedulerOutput,
    StepIndexMixin,
    _cumprod_f32,
    _like,
    _linspace_f32,
    _log_f32,
    _MsTensor,
    _scalar,
    _to_numpy,
    beta_sigmas,
    check_sigma_spacing,
    exponential_sigmas,
    karras_sigmas,
    ms,
    training_betas,
)

CHOICES = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "v_prediction", "sample", "original_sample"),
    "interpolation_type": ("linear", "log_linear"),
    "timestep_spacing": ("linspace", "leading", "trailing"),
    "timestep_type": ("discrete", "continuous"),
    "final_sigmas_type": ("zero", "sigma_min"),
}


# ----------------------------------------------------------------------------------------------------------------
# The scheduler
# ----------------------------------------------------------------------------------------------------------------


class EulerDiscreteScheduler(StepIndexMixin, SchedulerMixin):
    """diffusers' EulerDiscreteScheduler: same config fields and defaults, same call sequence
    (`set_timesteps` -> for t in `timesteps`: `scale_model_input(x, t)`, model, `step(out, t, x).prev_sample`)."""

    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        self.config = Config(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=None if trained_betas is None else [float(b) for b in np.asarray(trained_betas).ravel()],
            prediction_type=prediction_type,
            interpolation_type=interpolation_type,
            use_karras_sigmas=bool(use_karras_sigmas),
            use_exponential_sigmas=bool(use_exponential_sigmas),
            use_beta_sigmas=bool(use_beta_sigmas),
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            timestep_spacing=timestep_spacing,
            timestep_type=timestep_type,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=bool(rescale_betas_zero_snr),
            final_sigmas_type=final_sigmas_type,
        )
        self._validate_config()

        # 1. training noise schedule (float32, as diffusers)
        self.betas = training_betas(trained_betas, beta_schedule, beta_start, beta_end, num_train_timesteps, rescale_betas_zero_snr)
        self.alphas = (_F32(1.0) - self.betas).astype(_F32)
        self.alphas_cumprod = _cumprod_f32(self.alphas)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = _F32(2.0**-24)  # near zero but not zero, so the first sigma stays finite

        # 2. full-length schedule until set_timesteps is called
        train_sigmas = self._train_sigmas()[::-1].copy()
        if self._continuous_v:
            self.timesteps = (_F32(0.25) * _log_f32(train_sigmas)).astype(_F32)
        else:
            self.timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].astype(_F32)
        self.sigmas = np.concatenate([train_sigmas, np.zeros(1, _F32)]).astype(_F32)
        self.num_inference_steps = None
        self.is_scale_input_called = False
        self._step_index = None
        self._begin_index = None

    # -- construction --------------------------------------------------------------------------------------------
    def _validate_config(self) -> None:
        cfg = self.config
        for key, valid in CHOICES.items():
            if key == "beta_schedule" and cfg.trained_betas is not None:
                continue
            if cfg[key] not in valid:
                raise ValueError(f"EulerDiscreteScheduler: {key}={cfg[key]!r} is not supported; expected one of {list(valid)}")
        check_sigma_spacing(cfg, "EulerDiscreteScheduler")
        if int(cfg.num_train_timesteps) < 2:
            raise ValueError(f"EulerDiscreteScheduler: num_train_timesteps={cfg.num_train_timesteps} must be at least 2")

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def _continuous_v(self) -> bool:
        # diffusers' EDM-style timesteps (0.25 log sigma) exist only for continuous v-prediction
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise: max sigma (linspace/trailing) or sqrt(max sigma^2 + 1) (leading),
        evaluated in float32 as diffusers does."""
        max_sigma = _F32(self.sigmas.max())
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(max_sigma)
        return float(np.sqrt(max_sigma * max_sigma + _F32(1.0)))

    def _train_sigmas(self) -> np.ndarray:
        """sqrt((1 - alphas_cumprod) / alphas_cumprod) in float32, in training order (small sigma first)."""
        ac = self.alphas_cumprod
        return np.sqrt((_F32(1.0) - ac) / ac).astype(_F32)

    # -- schedule --------------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None) -> None:
        """Set the inference schedule: `num_inference_steps` (spacing from the config), or custom `timesteps`, or
        custom `sigmas` (including the final one). `device` is accepted for diffusers call compatibility."""
        cfg = self.config
        if timesteps is not None and sigmas is not None:
            raise ValueError("set_timesteps: pass only one of `timesteps` or `sigmas`")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("set_timesteps: pass one of `num_inference_steps`, `timesteps` or `sigmas`")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError("set_timesteps: pass only one of `num_inference_steps`, `timesteps` or `sigmas`")
        if timesteps is not None:
            for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
                if cfg[flag]:
                    raise ValueError(f"set_timesteps: custom `timesteps` cannot be used with {flag}=True")
            if self._continuous_v:
                raise ValueError("set_timesteps: custom `timesteps` cannot be used with timestep_type='continuous' and prediction_type='v_prediction'")
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        num_inference_steps = int(num_inference_steps)
        if num_inference_steps < 1:
            raise ValueError(f"set_timesteps: num_inference_steps={num_inference_steps} must be at least 1")
        self.num_inference_steps = num_inference_steps

        train_sigmas = self._train_sigmas()  # float32, training order
        log_sigmas = np.log(train_sigmas)  # float32 log, as diffusers (numpy on a float32 array)

        if sigmas is not None:
            sigmas = np.asarray(sigmas, np.float64).astype(_F32)
            ts = self._sigma_to_t(sigmas[:-1].astype(np.float64), log_sigmas)
        else:
            ts = self._spaced_timesteps(num_inference_steps) if timesteps is None else np.asarray(timesteps, np.float64).astype(_F32)
            # 1. sigmas at those timesteps
            if cfg.interpolation_type == "linear":
                sig = np.interp(ts, np.arange(len(train_sigmas)), train_sigmas)
            else:  # log_linear: float32 torch linspace of log sigmas, exponentiated
                sig = np.exp(_linspace_f32(float(np.log(train_sigmas[-1])), float(np.log(train_sigmas[0])), num_inference_steps + 1).astype(np.float64)).astype(_F32)
            # 2. optional re-spacing of the sigmas (float64, timesteps follow the sigmas)
            if cfg.use_karras_sigmas:
                sig = karras_sigmas(*self._sigma_range(sig), num_inference_steps)
            elif cfg.use_exponential_sigmas:
                sig = exponential_sigmas(*self._sigma_range(sig), num_inference_steps)
            elif cfg.use_beta_sigmas:
                sig = beta_sigmas(*self._sigma_range(sig), num_inference_steps)
            if cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
                ts = self._sigma_to_t(np.asarray(sig, np.float64), log_sigmas)
            # 3. final sigma
            if cfg.final_sigmas_type == "sigma_min":
                ac0 = self.alphas_cumprod[0]
                last = np.sqrt((_F32(1.0) - ac0) / ac0)
            else:
                last = 0.0
            sigmas = np.concatenate([np.asarray(sig, np.float64), [float(last)]]).astype(_F32)

        if self._continuous_v:
            self.timesteps = (_F32(0.25) * _log_f32(sigmas[:-1])).astype(_F32)
        else:
            self.timesteps = np.asarray(ts).astype(_F32)
        self.sigmas = sigmas.astype(_F32)
        self._step_index = None
        self._begin_index = None

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        cfg = self.config
        n_train = int(cfg.num_train_timesteps)
        if cfg.timestep_spacing == "linspace":
            return np.linspace(0, n_train - 1, n, dtype=_F32)[::-1].copy()
        if cfg.timestep_spacing == "leading":
            ratio = n_train // n
            ts = (np.arange(0, n) * ratio).round()[::-1].astype(_F32)
            return ts + _F32(cfg.steps_offset)
        ratio = n_train / n  # trailing
        return np.arange(n_train, 0, -ratio).round().astype(_F32) - _F32(1)

    @staticmethod
    def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
        """Fractional training timestep of each sigma, interpolating linearly in log sigma between neighbours."""
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        dists = log_sigma - log_sigmas[:, None]
        low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
        high = low + 1
        lo_v, hi_v = log_sigmas[low], log_sigmas[high]
        w = np.clip((lo_v - log_sigma) / (lo_v - hi_v), 0, 1)
        return ((1 - w) * low + w * high).reshape(sigma.shape)

    def _sigma_range(self, in_sigmas) -> tuple[float, float]:
        lo = self.config.sigma_min if self.config.sigma_min is not None else float(in_sigmas[-1])
        hi = self.config.sigma_max if self.config.sigma_max is not None else float(in_sigmas[0])
        return lo, hi

    # -- stepping --------------------------------------------------------------------------------------------------
    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """Index of `timestep` in the schedule; with repeats, the second occurrence (so a schedule entered midway,
        as in img2img, does not skip a sigma)."""
        schedule = self.timesteps if schedule_timesteps is None else np.asarray(schedule_timesteps)
        t = _F32(_scalar(timestep))
        hits = np.nonzero(schedule == t)[0]
        if hits.size == 0:
            raise ValueError(f"timestep {float(t)!r} is not in the scheduler's timesteps; pass one of scheduler.timesteps")
        return int(hits[1] if hits.size > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def scale_model_input(self, sample, timestep):
        """sample / sqrt(sigma^2 + 1), in the sample's kind and dtype."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = np.float64(self.sigmas[self._step_index])
        self.is_scale_input_called = True
        return _like(_to_numpy(sample).astype(np.float64) / math.sqrt(sigma * sigma + 1.0), sample)

    def step(
        self,
        model_output,
        timestep,
        sample,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator=None,
        return_dict: bool = True,
    ):
        """One Euler step from sigma to the next sigma. With s_churn > 0, noise from the numpy `generator` first
        raises sigma to sigma_hat = sigma * (1 + gamma). Returns SchedulerOutput(prev_sample, pred_original_sample)
        (a tuple when return_dict=False); prev_sample has model_output's kind and dtype."""
        if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool) or (
            isinstance(timestep, _MsTensor) and ms is not None and timestep.dtype in (ms.int32, ms.int64, ms.int16, ms.int8, ms.uint8)
        ):
            raise ValueError(
                "EulerDiscreteScheduler.step: integer timestep indices (e.g. from enumerate(timesteps)) are not "
                "supported; pass one of scheduler.timesteps"
            )
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index + 1 >= len(self.sigmas):
            raise ValueError(f"EulerDiscreteScheduler.step: called {self._step_index + 1} times for {len(self.sigmas) - 1} steps; call set_timesteps again")

        x = _to_numpy(sample).astype(np.float64)
        m = _to_numpy(model_output).astype(np.float64)
        sigma = float(self.sigmas[self._step_index])
        sigma_next = float(self.sigmas[self._step_index + 1])

        # 1. churn: optionally raise the noise level
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            eps = randn(generator, m.shape).astype(np.float64) * s_noise
            x = x + eps * math.sqrt(sigma_hat**2 - sigma**2)

        # 2. denoised estimate x0
        pt = self.config.prediction_type
        if pt in ("sample", "original_sample"):
            x0 = m
        elif pt == "epsilon":
            x0 = x - sigma_hat * m
        else:  # v_prediction: x0 = c_skip * x + c_out * v
            x0 = m * (-sigma / math.sqrt(sigma**2 + 1)) + x / (sigma**2 + 1)

        # 3. Euler step along d = (x - x0) / sigma_hat
        prev = x + (x - x0) / sigma_hat * (sigma_next - sigma_hat)
        self._step_index += 1

        # prev_sample in model_output's dtype; x0 at least float32 (diffusers upcasts the sample before computing it)
        prev_sample = _like(prev, model_output)
        if isinstance(model_output, _MsTensor):
            x0_dtype = ms.float64 if model_output.dtype == ms.float64 else ms.float32
        else:
            x0_dtype = np.result_type(np.asarray(model_output).dtype, np.float32)
        pred_original = _like(x0, model_output, x0_dtype)
        if not return_dict:
            return prev_sample, pred_original
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original)

    # -- training-side helpers -------------------------------------------------------------------------------------
    def _indices_for(self, timesteps) -> list[int]:
        ts = _to_numpy(timesteps).reshape(-1)
        if self._begin_index is None:
            return [self.index_for_timestep(t) for t in ts]
        if self._step_index is not None:
            return [self._step_index] * ts.shape[0]
        return [self._begin_index] * ts.shape[0]

    def add_noise(self, original_samples, noise, timesteps):
        """original + noise * sigma(t), per batch element."""
        x = _to_numpy(original_samples)
        sig = self.sigmas[self._indices_for(timesteps)].astype(np.float64)
        sig = sig.reshape(-1, *([1] * (x.ndim - 1)))
        out = x.astype(np.float64) + _to_numpy(noise).astype(np.float64) * sig
        return _like(out, original_samples)

    def get_velocity(self, sample, noise, timesteps):
        """sqrt(alphas_cumprod[i]) * noise - sqrt(1 - alphas_cumprod[i]) * sample, i = index of t in `timesteps`."""
        ts = _to_numpy(timesteps).reshape(-1)
        if np.issubdtype(ts.dtype, np.integer):
            raise ValueError("get_velocity: integer timestep indices are not supported; pass values from scheduler.timesteps")
        idx = [self.index_for_timestep(t) for t in ts]
        x = _to_numpy(sample)
        ac = self.alphas_cumprod[idx].astype(np.float64).reshape(-1, *([1] * (x.ndim - 1)))
        out = np.sqrt(ac) * _to_numpy(noise).astype(np.float64) - np.sqrt(1 - ac) * x.astype(np.float64)
        return _like(out, sample)



__all__ = ["EulerDiscreteScheduler", "SchedulerOutput", "CHOICES"]
