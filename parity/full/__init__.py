"""Parity at the released architectures: full-size configs (shipped as config.json values only), deterministic
random weights, per-component and pipeline comparisons at a reduced resolution and frame count
(`python -m parity.full`, `make parity-full`)."""

from .build import NAMES, SETTINGS, build, prepare

__all__ = ["NAMES", "SETTINGS", "build", "prepare"]
