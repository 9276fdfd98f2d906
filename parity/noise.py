"""One noise source for both frameworks. Every run (the PyTorch reference, each MindSpore run) draws from a fresh
numpy PCG64 stream with the same seed; every draw is logged (who, shape, order), and each MindSpore run's log must
agree with the reference's draw for draw: a draw made by one side only is an error, not tolerated."""

from __future__ import annotations

import numpy as np


class SharedNoise:
    def __init__(self, seed: int):
        self.seed = seed
        self.runs: list[dict] = []  # {"side", "label", "draws"}
        self._current: dict[str, tuple[np.random.Generator, dict]] = {}

    def start(self, side: str, label: str) -> None:
        """Begin a run of `side` ("torch" or "mindspore"): a fresh stream from the seed."""
        run = {"side": side, "label": label, "draws": []}
        self.runs.append(run)
        self._current[side] = (np.random.Generator(np.random.PCG64(self.seed)), run)

    def draw(self, side: str, who: str, shape) -> np.ndarray:
        if side not in self._current:
            raise RuntimeError(f"noise drawn by {side} outside a run")
        rng, run = self._current[side]
        shape = tuple(int(s) for s in shape)
        run["draws"].append({"order": len(run["draws"]), "who": who, "shape": list(shape)})
        return rng.standard_normal(shape).astype(np.float32)

    def mismatches(self) -> list[str]:
        """Draws made by one side only, or with different shapes, in any run against the first (the reference)."""
        if not self.runs:
            return []
        ref, out = self.runs[0], []
        for run in self.runs[1:]:
            t, m = ref["draws"], run["draws"]
            for i in range(max(len(t), len(m))):
                a = t[i] if i < len(t) else None
                b = m[i] if i < len(m) else None
                if a is None or b is None:
                    d, side = (a, ref["side"]) if a else (b, run["side"])
                    out.append(f"{run['label']}: draw {i} ({d['who']}, shape {d['shape']}) made by {side} only")
                elif a["shape"] != b["shape"]:
                    out.append(f"{run['label']}: draw {i}: {ref['side']} {a['who']} {a['shape']} vs "
                               f"{run['side']} {b['who']} {b['shape']}")
        return out

    def as_dict(self) -> dict:
        return {"seed": self.seed, "generator": "numpy PCG64", "runs": self.runs, "mismatches": self.mismatches()}
