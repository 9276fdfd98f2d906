"""CI regression mode: `mindport parity --baseline reports/<case>/report.json` fails when a module's error grows
beyond the spread recorded in the baseline. Rounding differs a little between runs of the same code on other
machines or thread counts, so a module may reach SPREAD times its baseline error plus its noise floor; beyond that
it has regressed. The frames likewise. A module of the baseline that is no longer compared is a regression too."""

from __future__ import annotations

import json
from pathlib import Path

from converters import ConversionError

SPREAD = 2.0


def load(path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: baseline report not found (expected a report.json written by `mindport parity`)")
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a readable report.json ({e})")
    if not isinstance(report, dict) or "layers" not in report or "settings" not in report:
        raise ConversionError(f"{path}: not a parity report.json (no 'layers' / 'settings')")
    return report


def allowed(base_rel_l2: float, floor: float | None) -> float:
    return SPREAD * base_rel_l2 + (floor or 0.0)


def check_settings(settings: dict, baseline: dict, path) -> None:
    """Refuse (before anything runs) a baseline recorded with other settings."""
    b = baseline["settings"]
    for k in ("pipeline", "dtype", "steps", "frames", "height", "width", "seed"):
        if settings.get(k) != b.get(k):
            raise ConversionError(f"{path}: baseline was recorded with {k}={b.get(k)!r}, this run has "
                                  f"{k}={settings.get(k)!r}; compare runs with the same settings")


def check(report: dict, baseline: dict, path) -> dict:
    now = {(r["component"], r["module"]): r for r in report["layers"]}
    regressions = []
    for r in baseline["layers"]:
        key = (r["component"], r["module"])
        cur = now.get(key)
        limit = allowed(r["rel_l2"], r.get("floor"))
        if cur is None:
            regressions.append({"component": key[0], "module": key[1], "rel_l2": None, "baseline_rel_l2": r["rel_l2"],
                                "allowed": limit, "detail": "no longer compared"})
        elif not cur["rel_l2"] <= limit:
            regressions.append({"component": key[0], "module": key[1], "rel_l2": cur["rel_l2"],
                                "baseline_rel_l2": r["rel_l2"], "allowed": limit})
    fb, fr = baseline["frames"]["rel_l2"], report["frames"]["rel_l2"]
    if not fr <= allowed(fb, None):
        regressions.append({"component": "frames", "module": "(frames)", "rel_l2": fr, "baseline_rel_l2": fb,
                            "allowed": allowed(fb, None)})
    regressions.sort(key=lambda r: -(r["rel_l2"] or float("inf")) / max(r["allowed"], 1e-30))
    return {"path": str(path), "spread": SPREAD, "checked": len(baseline["layers"]) + 1, "regressions": regressions,
            "passed": not regressions}
