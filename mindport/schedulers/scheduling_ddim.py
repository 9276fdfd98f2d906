"""DDIM (Song et al. 2020, arXiv 2010.02502) as diffusers' `DDIMScheduler`, in numpy.

Precision contract (as the Euler port)
- The *schedule* (`betas`, `alphas`, `alphas_cumprod`, `final_alpha_cumprod`) holds diffusers' float32 values:
  float32 torch linspace, float32 cumulative product, float32 zero-SNR rescaling are reproduced rounding point by
  rounding point. `timesteps` are int64, computed exactly as diffusers (numpy in both).
- The *update*: `step`'s scalar coefficients (sqrt(alpha_t), the DDIM variance, sqrt(1 - alpha_prev - sigma^2))
  are float32 as in diffusers (they subtract nearly equal numbers, so float64 would differ by ~1e-6); the
  elementwise math (`step`, `add_noise`, `get_velocity`) runs in float64 and is cast back to the caller's dtype
  (diffusers works in the tensors' dtype; the difference is ~1e-7 relative a step).
- `step` computes the previous timestep as `t - num_train_timesteps // num_inference_steps` whatever the spacing,
  as diffusers does.
- With `eta > 0` and no `variance_noise`, the variance noise is drawn from the numpy `generator` through this
  module's `randn` (the parity harness patches it), once per step, at the point where diffusers draws it.
- Samples and model outputs may be numpy arrays or MindSpore tensors; results come back as the same kind, in the
  dtype torch's type promotion would give (that of `sample` and `model_output` combined).
"""

from __future__ import annotations

import numpy as np

from ..modeling import Config
from ..utils import randn
from .scheduling_utils import (
    _F32,
    SchedulerMixin,
    SchedulerOutput,
    _cumprod_f32,
    _like,
    _MsTensor,
    _to_numpy,
    ms,
    training_betas,
)

CHOICES = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "timestep_spacing": ("leading", "linspace", "trailing"),
}


class DDIMSchedulerOutput(SchedulerOutput):
    """`.prev_sample`, `.pred_original_sample`; `out[0]` is prev_sample."""


def _timestep_int(timestep) -> int:
    """A discrete timestep (python / numpy int, 0-d or 1-element array or MindSpore tensor) -> int."""
    t = _to_numpy(timestep)
    if t.size != 1:
        raise ValueError(f"DDIMScheduler: expected a single timestep, got an array of shape {t.shape}")
    v = t.reshape(()).item()
    if isinstance(v, float):
        if not float(v).is_integer():
            raise ValueError(f"DDIMScheduler: timestep {v!r} is not an integer; pass one of scheduler.timesteps")
        v = int(v)
    return int(v)


def _result_dtype(*arrays):
    """The dtype torch's promotion gives for these tensors (numpy arrays or MindSpore tensors; a numpy array next to
    a MindSpore tensor counts as float32)."""
    if any(isinstance(a, _MsTensor) for a in arrays):
        dts = [a.dtype if isinstance(a, _MsTensor) else ms.float32 for a in arrays]
        order = [ms.float16, ms.bfloat16, ms.float32, ms.float64]
        floats = [d for d in dts if d in order]
        if not floats:
            return ms.float32
        if ms.float16 in floats and ms.bfloat16 in floats:
            return max(floats + [ms.float32], key=order.index)
        return max(floats, key=order.index)
    dt = np.result_type(*[np.asarray(a).dtype for a in arrays])
    return dt if np.issubdtype(dt, np.floating) else np.dtype(np.float32)


def _round_to(values: np.ndarray, ref) -> np.ndarray:
    """Round float64 values to `ref`'s dtype and back (diffusers draws noise in model_output's dtype)."""
    if isinstance(ref, _MsTensor):
        if ref.dtype == ms.float16:
            return values.astype(np.float16).astype(np.float64)
        return values.astype(np.float32).astype(np.float64)
    dt = np.asarray(ref).dtype
    return values.astype(dt).astype(np.float64) if np.issubdtype(dt, np.floating) else values


class DDIMScheduler(SchedulerMixin):
    """diffusers' DDIMScheduler: same config fields and defaults, same call sequence (`set_timesteps` -> for t in
    `timesteps`: `scale_model_input(x, t)` (identity), model, `step(out, t, x, eta=...).prev_sample`)."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self.config = Config(
            num_train_timesteps=int(num_train_timesteps),
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=None if trained_betas is None else [float(b) for b in np.asarray(trained_betas).ravel()],
            clip_sample=bool(clip_sample),
            set_alpha_to_one=bool(set_alpha_to_one),
            steps_offset=int(steps_offset),
            prediction_type=prediction_type,
            thresholding=bool(thresholding),
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=bool(rescale_betas_zero_snr),
        )
        self._validate_config()
        n = self.config.num_train_timesteps

        # 1. training noise schedule (float32, as diffusers)
        self.betas = training_betas(trained_betas, beta_schedule, beta_start, beta_end, n, rescale_betas_zero_snr)
        self.alphas = (_F32(1.0) - self.betas).astype(_F32)
        self.alphas_cumprod = _cumprod_f32(self.alphas)
        # 2. "previous" alpha of the last step: 1, or the first training alpha
        self.final_alpha_cumprod = _F32(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

        # 3. full-length schedule until set_timesteps is called
        self.num_inference_steps = None
        self.timesteps = np.arange(0, n)[::-1].copy().astype(np.int64)

    # -- construction --------------------------------------------------------------------------------------------
    def _validate_config(self) -> None:
        cfg = self.config
        for key, valid in CHOICES.items():
            if key == "beta_schedule" and cfg.trained_betas is not None:
                continue
            if cfg[key] not in valid:
                raise ValueError(f"DDIMScheduler: {key}={cfg[key]!r} is not supported; expected one of {list(valid)}")
        if cfg.num_train_timesteps < 1:
            raise ValueError(f"DDIMScheduler: num_train_timesteps={cfg.num_train_timesteps} must be at least 1")
        if cfg.trained_betas is not None and len(cfg.trained_betas) != cfg.num_train_timesteps:
            raise ValueError(
                f"DDIMScheduler: trained_betas has {len(cfg.trained_betas)} values, expected num_train_timesteps="
                f"{cfg.num_train_timesteps}"
            )
        if not 0.0 < float(cfg.dynamic_thresholding_ratio) <= 1.0:
            raise ValueError(
                f"DDIMScheduler: dynamic_thresholding_ratio={cfg.dynamic_thresholding_ratio!r} must be in (0, 1]"
            )

    # -- schedule --------------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Inference timesteps (int64, descending) by the configured spacing. `device` is accepted for diffusers call
        compatibility."""
        cfg = self.config
        n_train = cfg.num_train_timesteps
        num_inference_steps = int(num_inference_steps)
        if num_inference_steps < 1:
            raise ValueError(f"DDIMScheduler.set_timesteps: num_inference_steps={num_inference_steps} must be at least 1")
        if num_inference_steps > n_train:
            raise ValueError(
                f"DDIMScheduler.set_timesteps: num_inference_steps={num_inference_steps} cannot be larger than "
                f"num_train_timesteps={n_train}"
            )
        self.num_inference_steps = num_inference_steps
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, n_train - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ratio = n_train // num_inference_steps
            ts = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)
            ts += cfg.steps_offset
        else:  # trailing
            ratio = n_train / num_inference_steps
            ts = np.round(np.arange(n_train, 0, -ratio)).astype(np.int64) - 1
        self.timesteps = ts

    def scale_model_input(self, sample, timestep=None):
        """DDIM needs no input scaling: returns `sample` unchanged."""
        return sample

    # -- stepping --------------------------------------------------------------------------------------------------
    def _alpha_prod(self, t: int) -> np.float32:
        if t >= len(self.alphas_cumprod):
            raise ValueError(
                f"DDIMScheduler: timestep {t} is outside the training range [0, {len(self.alphas_cumprod) - 1}]"
            )
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def _get_variance(self, timestep: int, prev_timestep: int) -> np.float32:
        """(1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), in float32 as diffusers (the subtractions cancel: float64
        here would differ from diffusers by ~1e-6 relative)."""
        a_t = _F32(self._alpha_prod(timestep))
        a_prev = _F32(self._alpha_prod(prev_timestep))
        one = _F32(1)
        return _F32((one - a_prev) / (one - a_t) * (one - a_t / a_prev))

    def _threshold_sample(self, x0: np.ndarray) -> np.ndarray:
        """Dynamic thresholding (Imagen, arXiv 2205.11487): per sample, s = quantile(|x0|, ratio) clamped to
        [1, sample_max_value]; x0 -> clip(x0, -s, s) / s."""
        b = x0.shape[0]
        flat = x0.reshape(b, -1)
        s = np.quantile(np.abs(flat), float(self.config.dynamic_thresholding_ratio), axis=1)
        s = np.clip(s, 1.0, float(self.config.sample_max_value))[:, None]
        return (np.clip(flat, -s, s) / s).reshape(x0.shape)

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        """One DDIM step from `timestep` to `timestep - num_train_timesteps // num_inference_steps` (eq. 12 of the
        paper). Returns DDIMSchedulerOutput(prev_sample, pred_original_sample), a tuple when return_dict=False."""
        if self.num_inference_steps is None:
            raise ValueError("DDIMScheduler.step: num_inference_steps is None; call set_timesteps first")
        cfg = self.config
        # 1. alphas at t and at the previous timestep; scalar coefficients in float32 as diffusers has them
        t = _timestep_int(timestep)
        prev_t = t - cfg.num_train_timesteps // self.num_inference_steps
        a_t = _F32(self._alpha_prod(t))
        a_prev = _F32(self._alpha_prod(prev_t))
        b_t = _F32(1) - a_t
        sqrt_a_t, sqrt_b_t = float(np.sqrt(a_t)), float(np.sqrt(b_t))
        x = _to_numpy(sample).astype(np.float64)
        m = _to_numpy(model_output).astype(np.float64)

        # 2. predicted x0 and epsilon
        if cfg.prediction_type == "epsilon":
            x0 = (x - sqrt_b_t * m) / sqrt_a_t
            eps = m
        elif cfg.prediction_type == "sample":
            x0 = m
            eps = (x - sqrt_a_t * x0) / sqrt_b_t
        else:  # v_prediction
            x0 = sqrt_a_t * x - sqrt_b_t * m
            eps = sqrt_a_t * m + sqrt_b_t * x

        # 3. clip or threshold x0
        if cfg.thresholding:
            x0 = self._threshold_sample(x0)
        elif cfg.clip_sample:
            r = float(cfg.clip_sample_range)
            x0 = np.clip(x0, -r, r)

        # 4. sigma_t = eta * sqrt(variance); optionally re-derive epsilon from the clipped x0
        variance = self._get_variance(t, prev_t)
        std_dev_t = _F32(eta) * np.sqrt(variance)
        if use_clipped_model_output:
            eps = (x - sqrt_a_t * x0) / sqrt_b_t

        # 5. x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps (+ sigma z)
        # 1 - a_prev - sigma^2 is exactly 0 for eta=1 at a zero-SNR first step; float32 rounding can make it
        # slightly negative (diffusers then returns NaN): clamp at 0
        direction = float(np.sqrt(max(_F32(1) - a_prev - std_dev_t * std_dev_t, _F32(0)))) * eps
        prev = float(np.sqrt(a_prev)) * x0 + direction
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("DDIMScheduler.step: pass either `generator` or `variance_noise`, not both")
            if variance_noise is None:
                z = _round_to(randn(generator, m.shape).astype(np.float64), model_output)
            else:
                z = _to_numpy(variance_noise).astype(np.float64)
            prev = prev + float(std_dev_t) * z

        ref = sample if isinstance(sample, _MsTensor) and not isinstance(model_output, _MsTensor) else model_output
        out_dtype = _result_dtype(sample, model_output)
        prev_sample = _like(prev, ref, out_dtype)
        pred_original = _like(x0, ref, out_dtype)
        if not return_dict:
            return prev_sample, pred_original
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original)

    # -- training-side helpers -------------------------------------------------------------------------------------
    def _alphas_at(self, timesteps, ndim: int) -> np.ndarray:
        ts = _to_numpy(timesteps).reshape(-1)
        if not np.issubdtype(ts.dtype, np.integer):
            if not np.all(np.mod(ts, 1) == 0):
                raise ValueError(f"DDIMScheduler: timesteps must be integers, got {ts.tolist()}")
            ts = ts.astype(np.int64)
        n = len(self.alphas_cumprod)
        if ts.size and (ts.min() < -n or ts.max() >= n):
            raise ValueError(f"DDIMScheduler: timesteps {ts.tolist()} outside the training range [0, {n - 1}]")
        return self.alphas_cumprod[ts].astype(np.float64).reshape(-1, *([1] * (ndim - 1)))

    def add_noise(self, original_samples, noise, timesteps):
        """sqrt(a_t) * original + sqrt(1 - a_t) * noise, a_t = alphas_cumprod[t] per batch element."""
        x = _to_numpy(original_samples).astype(np.float64)
        ac = self._alphas_at(timesteps, x.ndim)
        out = np.sqrt(ac) * x + np.sqrt(1 - ac) * _to_numpy(noise).astype(np.float64)
        return _like(out, original_samples)

    def get_velocity(self, sample, noise, timesteps):
        """v = sqrt(a_t) * noise - sqrt(1 - a_t) * sample."""
        x = _to_numpy(sample).astype(np.float64)
        ac = self._alphas_at(timesteps, x.ndim)
        out = np.sqrt(ac) * _to_numpy(noise).astype(np.float64) - np.sqrt(1 - ac) * x
        return _like(out, sample)



__all__ = ["CHOICES", "DDIMScheduler", "DDIMSchedulerOutput"]
