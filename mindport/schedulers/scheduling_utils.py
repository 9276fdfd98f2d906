"""What every numpy scheduler shares: diffusers-style config loading, float32 building blocks that reproduce
torch's rounding, and conversion between numpy and the caller's array kind (numpy or MindSpore)."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np

from ..modeling import Output

try:  # MindSpore tensors are accepted and returned as such; the scheduler math itself needs only numpy
    import mindspore as ms
    from mindspore import Tensor as _MsTensor
except ImportError:  # pragma: no cover
    ms, _MsTensor = None, ()

_F32 = np.float32


class SchedulerMixin:
    """Config handling as diffusers' ConfigMixin: `from_config`, `from_pretrained(path, subfolder="scheduler")`,
    `save_config`. Subclasses take their config fields as keyword arguments and set `self.config`."""

    config_name = "scheduler_config.json"

    @classmethod
    def from_config(cls, config: dict, **overrides):
        """Keys starting with "_" and keys this scheduler does not know (e.g. `skip_prk_steps` in old SD configs, or
        another scheduler's fields) are ignored, as diffusers ignores them; keyword overrides win."""
        config = {**dict(config), **overrides}
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return cls(**{k: v for k, v in config.items() if k in names})

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = "scheduler", **overrides):
        """Read `<path>/<subfolder>/scheduler_config.json` (or `<path>/scheduler_config.json` when the folder itself
        is the scheduler folder). Keyword overrides replace config values."""
        root = Path(path)
        candidates = [root / subfolder / cls.config_name] if subfolder else []
        candidates.append(root / cls.config_name)
        for file in candidates:
            if file.is_file():
                try:
                    config = json.loads(file.read_text())
                except json.JSONDecodeError as e:
                    raise ValueError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from e
                if not isinstance(config, dict):
                    raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
                return cls.from_config(config, **overrides)
        raise FileNotFoundError(
            f"{candidates[0]}: no such file (looked for {cls.config_name} in {[str(c.parent) for c in candidates]})"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(dict(self.config), sort_keys=True)})"

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def save_config(self, folder) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        cfg = {"_class_name": type(self).__name__, **dict(self.config)}
        (Path(folder) / self.config_name).write_text(json.dumps(cfg, indent=2, sort_keys=True))


class StepIndexMixin:
    """The step counter of the schedulers that index their sigmas (Euler, UniPC, flow-match Euler), as diffusers
    exposes it: `step_index` (None until the first step), `begin_index` (set by pipelines that start midway)."""

    _step_index = None
    _begin_index = None

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index


class SchedulerOutput(Output):
    """`.prev_sample`, `.pred_original_sample`; `out[0]` is prev_sample."""


# ----------------------------------------------------------------------------------------------------------------
# float32 building blocks that reproduce torch's rounding
# ----------------------------------------------------------------------------------------------------------------


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32) on CPU, bit for bit: float32 step = (end - start)/(steps - 1);
    the first half is start + step*i, the second half end - step*(steps-1-i), each a fused multiply-add (one
    rounding). The float64 evaluation is exact before the final rounding (24-bit step times an index < 2^29)."""
    if steps == 1:
        return np.array([start], _F32)
    s, e = _F32(start), _F32(end)
    step = (e - s) / _F32(steps - 1)
    i = np.arange(steps, dtype=np.float64)
    half = steps // 2
    lo = np.float64(s) + np.float64(step) * i
    hi = np.float64(e) - np.float64(step) * (steps - 1 - i)
    return np.where(i < half, lo, hi).astype(_F32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    """torch.cumprod of a float32 CPU tensor: the running product is kept in double, each output rounded to float32."""
    return np.cumprod(x.astype(np.float64)).astype(_F32)


def _log_f32(x: np.ndarray) -> np.ndarray:
    """Correctly rounded float32 natural log (what torch's scalar path gives for 0-d tensors)."""
    return np.log(np.asarray(x, np.float64)).astype(_F32)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    """Glide's squaredcos_cap_v2 betas (float64 python math, then float32, as diffusers' `betas_for_alpha_bar`)."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], np.float64).astype(_F32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift/scale sqrt(alphas_cumprod) so the last step has zero SNR (arXiv 2305.08891, Alg. 1), in float32."""
    abar_sqrt = np.sqrt(_cumprod_f32(_F32(1.0) - betas))
    first, last = abar_sqrt[0], abar_sqrt[-1]
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]]).astype(_F32)
    return (_F32(1.0) - alphas).astype(_F32)


# ----------------------------------------------------------------------------------------------------------------
# numpy <-> caller's array kind
# ----------------------------------------------------------------------------------------------------------------


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, _MsTensor):
        if x.dtype == ms.bfloat16:  # no numpy bfloat16
            x = x.astype(ms.float32)
        return x.asnumpy()
    return np.asarray(x)


def _like(values: np.ndarray, ref, dtype=None):
    """float64 result -> the caller's kind (numpy / MindSpore) and dtype (that of `ref` unless `dtype` is given)."""
    if isinstance(ref, _MsTensor):
        target = ref.dtype if dtype is None else dtype
        if target == ms.bfloat16:
            return _MsTensor(values.astype(np.float32)).astype(ms.bfloat16)
        return _MsTensor(values, dtype=target)  # converted from float64 directly, as numpy astype does
    target = np.asarray(ref).dtype if dtype is None else dtype
    if not np.issubdtype(target, np.floating):
        target = np.float32
    return values.astype(target)


def _scalar(t) -> float | int:
    if isinstance(t, _MsTensor):
        t = t.asnumpy()
    t = np.asarray(t)
    if t.size != 1:
        raise ValueError(f"expected a single timestep, got an array of shape {t.shape}")
    return t.reshape(()).item() if np.issubdtype(t.dtype, np.integer) else t.reshape(())


def training_betas(trained_betas, beta_schedule: str, beta_start: float, beta_end: float, n: int,
                   rescale_betas_zero_snr: bool) -> np.ndarray:
    """The training noise schedule as diffusers' float32 tensors: linear / scaled_linear / squaredcos_cap_v2 or given
    betas, optionally rescaled to zero terminal SNR."""
    if trained_betas is not None:
        betas = np.asarray(trained_betas, np.float64).astype(_F32).ravel()
    elif beta_schedule == "linear":
        betas = _linspace_f32(beta_start, beta_end, n)
    elif beta_schedule == "scaled_linear":
        betas = _linspace_f32(beta_start**0.5, beta_end**0.5, n) ** 2
    else:  # squaredcos_cap_v2 (validated by the scheduler)
        betas = _cosine_betas(n)
    if rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return betas.astype(_F32)


def nulls_to_defaults(init, values: dict) -> dict:
    """A config field that is null where diffusers' default is not None takes the default (diffusers would fail
    or misbehave on it later); absent fields take the default anyway."""
    params = inspect.signature(init).parameters
    return {k: (params[k].default if v is None and k in params and params[k].default is not None else v)
            for k, v in values.items()}


# Respaced schedules (diffusers' use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas), float64, from the
# schedule's largest sigma `hi` down to its smallest `lo`; each scheduler says which ends those are.
SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def check_sigma_spacing(cfg, name: str) -> None:
    """At most one spacing flag; beta spacing needs scipy."""
    chosen = [k for k in SIGMA_SPACINGS if cfg[k]]
    if len(chosen) > 1:
        raise ValueError(f"{name}: only one of {', '.join(SIGMA_SPACINGS)} may be set, got {chosen}")
    if cfg.use_beta_sigmas:
        try:
            import scipy.stats  # noqa: F401
        except ImportError as e:
            raise ImportError(f"{name}: use_beta_sigmas=True needs scipy (pip install scipy)") from e


def karras_sigmas(lo: float, hi: float, n: int) -> np.ndarray:
    """Karras et al. (2022) eq. 5, rho = 7."""
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def exponential_sigmas(lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(np.linspace(math.log(hi), math.log(lo), n))


def beta_sigmas(lo: float, hi: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """"Beta Sampling is All You Need" (arXiv 2407.12173): sigmas at Beta(0.6, 0.6) quantiles."""
    import scipy.stats

    return np.array([lo + scipy.stats.beta.ppf(p, alpha, beta) * (hi - lo) for p in 1 - np.linspace(0, 1, n)])
