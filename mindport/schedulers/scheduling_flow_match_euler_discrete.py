"""Euler sampling of a flow-matching (rectified flow) model, as diffusers' `FlowMatchEulerDiscreteScheduler`, in
numpy: x_{next} = x + (sigma_next - sigma) * v, with sigma going from (about) 1 to 0.

Precision contract
- The *schedule* holds diffusers' float32 values: the training sigmas are float32 arithmetic (t / N, then the static
  shift), the inference sigmas are computed in float64 numpy (linspace between the training ends, static or dynamic
  shift, terminal stretch, Karras / exponential / beta respacing) and rounded to float32 once, and
  `timesteps = sigmas * N` in float32, as diffusers does.
- The *update*: dt = sigma_next - sigma is a float32 scalar as in diffusers; the elementwise math runs in float64
  and is cast back to model_output's kind and dtype.
- With `stochastic_sampling=True` the noise is drawn from the numpy `generator` through this module's `randn` (the
  parity harness patches it), in float32, once per step.
- Samples and model outputs may be numpy arrays or MindSpore tensors.
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
    _like,
    _MsTensor,
    _to_numpy,
    beta_sigmas,
    check_sigma_spacing,
    exponential_sigmas,
    karras_sigmas,
    ms,
    nulls_to_defaults,
)

CHOICES = {"time_shift_type": ("exponential", "linear")}


class FlowMatchEulerDiscreteSchedulerOutput(SchedulerOutput):
    """`.prev_sample`; `out[0]` is prev_sample."""


class FlowMatchEulerDiscreteScheduler(StepIndexMixin, SchedulerMixin):
    """diffusers' FlowMatchEulerDiscreteScheduler: same config fields and defaults, same call sequence
    (`set_timesteps(n[, mu=...])` -> for t in `timesteps`: model, `step(out, t, x).prev_sample`)."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ):
        v = nulls_to_defaults(type(self).__init__, {k: val for k, val in locals().items() if k not in ("self", "__class__")})
        self.config = Config(
            num_train_timesteps=int(v["num_train_timesteps"]),
            shift=float(v["shift"]),
            use_dynamic_shifting=bool(v["use_dynamic_shifting"]),
            base_shift=v["base_shift"],
            max_shift=v["max_shift"],
            base_image_seq_len=int(v["base_image_seq_len"]),
            max_image_seq_len=int(v["max_image_seq_len"]),
            invert_sigmas=bool(v["invert_sigmas"]),
            shift_terminal=shift_terminal,
            use_karras_sigmas=bool(v["use_karras_sigmas"]),
            use_exponential_sigmas=bool(v["use_exponential_sigmas"]),
            use_beta_sigmas=bool(v["use_beta_sigmas"]),
            time_shift_type=v["time_shift_type"],
            stochastic_sampling=bool(v["stochastic_sampling"]),
        )
        self._validate_config()
        cfg = self.config
        n = cfg.num_train_timesteps

        # 1. training schedule, float32 as diffusers: t = N..1, sigma = t / N, statically shifted
        ts = np.linspace(1, n, n, dtype=_F32)[::-1].copy()
        sig = (ts / _F32(n)).astype(_F32)
        if not cfg.use_dynamic_shifting:
            sig = self._shift_f32(sig, cfg.shift)
        self.timesteps = (sig * _F32(n)).astype(_F32)
        self.sigmas = sig
        self.sigma_min = float(sig[-1])
        self.sigma_max = float(sig[0])
        self._shift = cfg.shift
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None

    # -- construction --------------------------------------------------------------------------------------------
    def _validate_config(self) -> None:
        cfg = self.config
        name = type(self).__name__
        for key, valid in CHOICES.items():
            if cfg[key] not in valid:
                raise ValueError(f"{name}: {key}={cfg[key]!r} is not supported; expected one of {list(valid)}")
        check_sigma_spacing(cfg, name)
        if cfg.num_train_timesteps < 1:
            raise ValueError(f"{name}: num_train_timesteps={cfg.num_train_timesteps} must be at least 1")
        if cfg.shift <= 0:
            raise ValueError(f"{name}: shift={cfg.shift!r} must be positive")

    @staticmethod
    def _shift_f32(sig: np.ndarray, shift: float) -> np.ndarray:
        """shift * s / (1 + (shift - 1) * s) in float32 (torch float32 tensor with python-float scalars)."""
        s32, one = _F32(shift), _F32(1)
        return ((s32 * sig) / (one + _F32(shift - 1) * sig)).astype(_F32)

    @property
    def shift(self) -> float:
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    # -- schedule --------------------------------------------------------------------------------------------------
    def time_shift(self, mu: float, sigma: float, t):
        """Resolution-dependent shift: e^mu / (e^mu + (1/t - 1)^sigma) (exponential) or mu / (mu + ...) (linear)."""
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t):
        """Stretch 1 - t so that the schedule ends at `shift_terminal` (LTX-Video's rf schedule)."""
        one_minus = 1 - t
        scale = one_minus[-1] / (1 - self.config.shift_terminal)
        return 1 - one_minus / scale

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu: float | None = None,
                      timesteps=None) -> None:
        """Inference schedule: float32 `timesteps` and `sigmas` (one more: 0, or 1 with invert_sigmas). Custom
        `sigmas` and/or `timesteps` may replace the linspace; `mu` is the dynamic shift (needed when
        use_dynamic_shifting). `device` is accepted for diffusers call compatibility."""
        cfg = self.config
        name = type(self).__name__
        n_train = cfg.num_train_timesteps
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError(f"{name}.set_timesteps: use_dynamic_shifting=True needs `mu`")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError(f"{name}.set_timesteps: `sigmas` ({len(sigmas)}) and `timesteps` ({len(timesteps)}) differ in length")
        if num_inference_steps is not None:
            if (sigmas is not None and len(sigmas) != num_inference_steps) or (
                    timesteps is not None and len(timesteps) != num_inference_steps):
                raise ValueError(f"{name}.set_timesteps: custom `sigmas`/`timesteps` must have num_inference_steps="
                                 f"{num_inference_steps} values")
        elif sigmas is None and timesteps is None:
            raise ValueError(f"{name}.set_timesteps: pass `num_inference_steps`, `sigmas` or `timesteps`")
        else:
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        num_inference_steps = int(num_inference_steps)
        if num_inference_steps < 1:
            raise ValueError(f"{name}.set_timesteps: num_inference_steps={num_inference_steps} must be at least 1")
        self.num_inference_steps = num_inference_steps

        # 1. base sigmas: custom, from custom timesteps, or a linspace between the training ends (float64)
        given_ts = None if timesteps is None else np.array(timesteps).astype(_F32)
        if sigmas is None:
            ts = given_ts if given_ts is not None else np.linspace(self.sigma_max * n_train, self.sigma_min * n_train,
                                                                   num_inference_steps)
            sig = ts / n_train
        else:
            sig = np.array(sigmas).astype(_F32)
            num_inference_steps = len(sig)

        # 2. shift (dynamic with mu, or static), terminal stretch, optional respacing
        if cfg.use_dynamic_shifting:
            sig = self.time_shift(mu, 1.0, sig)
        else:
            sig = self.shift * sig / (1 + (self.shift - 1) * sig)
        if cfg.shift_terminal:
            sig = self.stretch_shift_to_terminal(sig)
        if cfg.use_karras_sigmas:
            sig = karras_sigmas(*self._sigma_range(sig), num_inference_steps)
        elif cfg.use_exponential_sigmas:
            sig = exponential_sigmas(*self._sigma_range(sig), num_inference_steps)
        elif cfg.use_beta_sigmas:
            sig = beta_sigmas(*self._sigma_range(sig), num_inference_steps)

        # 3. float32 sigmas and timesteps, plus the final sigma
        sig = np.asarray(sig).astype(_F32)
        ts32 = given_ts if given_ts is not None else (sig * _F32(n_train)).astype(_F32)
        if cfg.invert_sigmas:
            sig = (_F32(1) - sig).astype(_F32)
            ts32 = (sig * _F32(n_train)).astype(_F32)
            sig = np.concatenate([sig, np.ones(1, _F32)])
        else:
            sig = np.concatenate([sig, np.zeros(1, _F32)])
        self.timesteps = ts32
        self.sigmas = sig.astype(_F32)
        self._step_index = None
        self._begin_index = None

    def _sigma_range(self, in_sigmas) -> tuple[float, float]:
        return float(in_sigmas[-1]), float(in_sigmas[0])

    # -- stepping --------------------------------------------------------------------------------------------------
    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """Index of `timestep` in the schedule; with repeats, the second occurrence."""
        schedule = self.timesteps if schedule_timesteps is None else _to_numpy(schedule_timesteps)
        t = _to_numpy(timestep).reshape(-1)
        if t.size != 1:
            raise ValueError(f"expected a single timestep, got an array of shape {t.shape}")
        hits = np.nonzero(schedule == _F32(t[0]))[0]
        if hits.size == 0:
            raise ValueError(f"timestep {float(t[0])!r} is not in the scheduler's timesteps; pass one of scheduler.timesteps")
        return int(hits[1] if hits.size > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def scale_model_input(self, sample, *args, **kwargs):
        """Flow matching needs no input scaling: returns `sample` unchanged."""
        return sample

    def _indices_for(self, timesteps) -> list[int]:
        ts = _to_numpy(timesteps).reshape(-1)
        if self._begin_index is None:
            return [self.index_for_timestep(t) for t in ts]
        if self._step_index is not None:
            return [self._step_index] * ts.shape[0]
        return [self._begin_index] * ts.shape[0]

    def scale_noise(self, sample, timestep, noise=None):
        """Forward flow-matching process: sigma * noise + (1 - sigma) * sample at each timestep's sigma."""
        x = _to_numpy(sample)
        sig = self.sigmas[self._indices_for(timestep)].astype(np.float64).reshape(-1, *([1] * (x.ndim - 1)))
        out = sig * _to_numpy(noise).astype(np.float64) + (1.0 - sig) * x.astype(np.float64)
        return _like(out, sample)

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, per_token_timesteps=None,
             return_dict: bool = True):
        """One Euler step from sigma to the next sigma along the predicted velocity (or, with stochastic_sampling,
        re-noise the x0 estimate to the next sigma with noise from the numpy `generator`). Returns
        FlowMatchEulerDiscreteSchedulerOutput(prev_sample) (a tuple when return_dict=False), in model_output's kind
        and dtype (float32 with per_token_timesteps, as diffusers). s_churn/s_tmin/s_tmax/s_noise are accepted and
        unused, as in diffusers."""
        name = type(self).__name__
        if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool) or (
            isinstance(timestep, _MsTensor) and ms is not None and timestep.dtype in (ms.int32, ms.int64, ms.int16, ms.int8, ms.uint8)
        ):
            raise ValueError(f"{name}.step: integer timestep indices (e.g. from enumerate(timesteps)) are not "
                             "supported; pass one of scheduler.timesteps")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index + 1 >= len(self.sigmas):
            raise ValueError(f"{name}.step: called {self._step_index + 1} times for {len(self.sigmas) - 1} steps; call set_timesteps again")

        x = _to_numpy(sample).astype(_F32).astype(np.float64)  # diffusers upcasts the sample to float32
        m = _to_numpy(model_output).astype(np.float64)
        if per_token_timesteps is not None:
            # each token steps from its own sigma to the largest schedule sigma below it
            tok = (_to_numpy(per_token_timesteps).astype(_F32) / _F32(self.config.num_train_timesteps)).astype(_F32)
            sig = self.sigmas[:, None, None]
            lower = np.where(sig < tok[None] - _F32(1e-6), sig, _F32(0)).max(axis=0)
            current = tok[..., None].astype(np.float64)
            nxt = lower[..., None].astype(np.float64)
            dt = (tok - lower).astype(_F32)[..., None].astype(np.float64)
        else:
            s = self.sigmas[self._step_index]
            s_next = self.sigmas[self._step_index + 1]
            current, nxt = float(s), float(s_next)
            dt = float(_F32(s_next - s))

        if self.config.stochastic_sampling:
            x0 = x - current * m
            noise = randn(generator, x.shape, np.float32).astype(np.float64)
            prev = (1.0 - nxt) * x0 + nxt * noise
        else:
            prev = x + dt * m
        self._step_index += 1

        if per_token_timesteps is None:
            prev_sample = _like(prev, model_output)
        else:
            prev_sample = _like(prev, model_output, ms.float32 if isinstance(model_output, _MsTensor) else np.float32)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)


__all__ = ["CHOICES", "FlowMatchEulerDiscreteScheduler", "FlowMatchEulerDiscreteSchedulerOutput"]
