"""`python -m parity.full build|components|summary [NAME ...]`: build the full-size random-weight pipelines, compare
them component by component (fp32 and fp16 by default), write the README summary. Exit 0 when parity holds, 1 when
it does not, 2 on bad input. The pipeline-level comparison is `mindport parity --config-only NAME`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .build import NAMES, build
from .components import component_names, run_component, run_components
from .summary import REPORTS, update_readme


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity.full", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("build", "components", "summary"):
        s = sub.add_parser(cmd)
        s.add_argument("names", nargs="*", metavar="NAME", help=f"released configs (default all: {', '.join(NAMES)})")
        s.add_argument("--seed", type=int, default=0)
        if cmd == "components":
            s.add_argument("--dtype", choices=("fp32", "fp16"), action="append",
                           help="MindSpore dtype, repeatable (default: fp32 and fp16)")
            s.add_argument("--only", action="append", metavar="COMPONENT", help="compare only this component")
            s.add_argument("--out", help=f"report folder for one NAME and one dtype (default {REPORTS}/NAME/components/DTYPE)")
    one = sub.add_parser("_component")  # the child process of `components`: one comparison, result as JSON
    one.add_argument("names", nargs=1)
    one.add_argument("component")
    one.add_argument("--dtype", default="fp32")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--json", required=True)
    a = p.parse_args(argv)
    names = a.names or list(NAMES)
    try:
        bad = [n for n in names if n not in NAMES]
        if bad:
            raise ValueError(f"unknown released config {bad[0]!r}; expected one of {', '.join(NAMES)}")
        if a.cmd == "_component":
            Path(a.json).write_text(json.dumps(run_component(names[0], a.component, a.dtype, a.seed), default=float))
            return 0
        if a.cmd == "build":
            for n in names:
                print(build(n, a.seed))
            return 0
        if a.cmd == "summary":
            update_readme()
            return 0
        dtypes = a.dtype or ["fp32", "fp16"]
        if a.out and (len(names) > 1 or len(dtypes) > 1):
            raise ValueError("--out needs exactly one NAME and one --dtype")
        for c in a.only or []:
            if any(c not in component_names(n) for n in names):
                raise ValueError(f"no component {c!r} in {', '.join(names)}; expected one of "
                                 f"{', '.join(component_names(names[0]))}")
        ok = True
        for n in names:
            for d in dtypes:
                out = Path(a.out) if a.out else REPORTS / n / "components" / d
                ok &= run_components(n, out, d, a.seed, a.only)["passed"]
        return 0 if ok else 1
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
