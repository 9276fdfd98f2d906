"""Parity as a pytest assertion, for CI regression checks against a committed golden reference (issue 18):

    from mindport.testing import assert_parity

    def test_my_checkpoint_still_matches():
        assert_parity("goldens/my-case", "converted/my-case")

runs the MindSpore side only (torch and diffusers need not be installed), writes the usual report (to `out`, or a
temporary folder), and raises AssertionError naming the first diverging module (or gate) when parity does not hold.
Bars default to the report's (fp32: modules by noise floor, frames 1e-4); `frames=` / `module=` tighten or loosen
them."""

from __future__ import annotations

import tempfile


def assert_parity(golden, converted, dtype: str = "fp32", out=None, frames: float | None = None,
                  module: float | None = None, junit_xml=None) -> dict:
    """Compare the converted checkpoint against the golden reference; returns the report dict when parity holds."""
    from parity.harness import run_parity

    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="mindport-assert-parity-")
        out = tmp.name
    try:
        report = run_parity(None, out, converted=converted, golden=golden, dtype=dtype, log=lambda m: None)
        if junit_xml is not None:
            from parity.junit import write_junit

            write_junit(report, junit_xml)
    finally:
        if tmp is not None:
            tmp.cleanup()
    problems = []
    f = report["frames"]
    if not report["passed"] and frames is None and module is None:
        problems.append(_describe(report))
    if frames is not None and not f["rel_l2"] <= frames:
        problems.append(f"frames rel L2 {f['rel_l2']:.3e} > {frames:g}")
    if module is not None:
        worst = max(report["layers"], key=lambda r: r["rel_l2"], default=None)
        if worst is not None and not worst["rel_l2"] <= module:
            problems.append(f"{worst['component']}.{worst['module']} rel L2 {worst['rel_l2']:.3e} > {module:g}")
    if problems:
        raise AssertionError(f"parity against {golden} failed: " + "; ".join(problems))
    return report


def _describe(report: dict) -> str:
    from parity.report_format import divergence_summary

    fd = report["first_divergence"]
    where = "no module beyond its bound" if fd is None else (
        divergence_summary(fd) if fd.get("kind") == "gate" else f"first diverging module {divergence_summary(fd)}")
    f = report["frames"]
    return f"{where}; frames rel L2 {f['rel_l2']:.3e}" + (f"; problems: {report['problems']}" if report["problems"] else "")
