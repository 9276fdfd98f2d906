"""A parity report as JUnit XML (`mindport parity --junit-xml FILE`), for CI systems that show test results: one
test case per gate, one for the frames, one per compared module (a failure names its relative L2 and bound), one
for the weight-mapping check and one for the baseline when they ran."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET


def _case(suite, classname: str, name: str, failure: str | None = None, skipped: str | None = None) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name)
    if failure is not None:
        ET.SubElement(case, "failure", message=failure).text = failure
    elif skipped is not None:
        ET.SubElement(case, "skipped", message=skipped)


def write_junit(report: dict, path) -> str:
    s = report["settings"]
    suite_name = f"mindport parity {s['pipeline']} {s['dtype']}"
    suite = ET.Element("testsuite", name=suite_name)
    for g in report.get("gates") or []:
        _case(suite, "gates", g["name"], None if g["passed"] else g["detail"])
    f = report["frames"]
    _case(suite, "frames", "frames", None if f["passed"] else
          f"frames rel L2 {f['rel_l2']:.3e} > {s['bars']['frames']:g}" + (f" ({f['error']})" if "error" in f else ""))
    for r in report.get("layers") or []:
        _case(suite, f"modules.{r['component']}", r["module"], None if r["passed"] else
              f"rel L2 {r['rel_l2']:.3e} > bound {r['bound']:.1e} (call {r.get('worst_call')}, step "
              f"{r.get('worst_step')})" + (f": {r['error']}" if "error" in r else ""))
    wc = report.get("weight_check")
    if wc:
        bad = wc.get("mismatches") or []
        _case(suite, "weights", "weight_mapping", None if wc.get("passed") else
              "; ".join(f"{m['component']}.{m['tensor']} moves {m.get('first_moved')}, expected "
                        f"{m['expected_module']}" for m in bad[:5]))
    else:
        _case(suite, "weights", "weight_mapping", skipped="not run (needs the live PyTorch reference)")
    base = report.get("baseline")
    if base:
        _case(suite, "baseline", "baseline", None if base.get("passed") else
              f"{len(base.get('regressions') or [])} module(s) beyond the baseline's spread")
    for p in report.get("problems") or []:
        _case(suite, "problems", p[:60], p)
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
    root = ET.Element("testsuites")
    root.append(suite)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return str(path)
