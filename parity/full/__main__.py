"""`python -m parity.full build|components|summary [NAME ...]`: build the full-size random-weight pipelines, compare
them component by component (fp32 and fp16 by default), write the README summary. Components too large to hold
(build.STREAMED: UMT5-XXL, the Wan 14B transformer) are compared streamed, block by block, from a bf16 checkpoint
written for the run and deleted after it (`--keep` keeps it).

`python -m parity.full stream FOLDER --out DIR`: the streamed comparison of any checkpoint folder (diffusers /
transformers layout, sharded or not, e.g. a released Wan 14B `transformer/` or `text_encoder/`), on seeded inputs
built from its config. Exit 0 when parity holds, 1 when it does not, 2 on bad input. The pipeline-level comparison
is `mindport parity --config-only NAME`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .build import NAMES, build
from .build import streamed_checkpoint_path
from .components import (COMPONENTS, component_names, is_streamed, merge_rows, run_component, run_components,
                         run_streamed_child)
from .summary import REPORTS, update_readme


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity.full", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("build", "components", "summary"):
        s = sub.add_parser(cmd)
        s.add_argument("names", nargs="*", metavar="NAME", help=f"released configs (default all: {', '.join(NAMES)})")
        s.add_argument("--seed", type=int, default=0)
        if cmd == "summary":
            s.add_argument("--print", action="store_true", help="print the summary table; do not touch README.md")
        if cmd == "components":
            s.add_argument("--dtype", choices=("fp32", "fp16"), action="append",
                           help="MindSpore dtype, repeatable (default: fp32 and fp16)")
            s.add_argument("--only", action="append", metavar="COMPONENT", help="compare only this component")
            s.add_argument("--out", help=f"report folder for one NAME and one dtype (default {REPORTS}/NAME/components/DTYPE)")
            s.add_argument("--keep", action="store_true", help="keep the streamed components' bf16 checkpoints")
            s.add_argument("--no-floor", action="store_true", help="streamed components: skip the float64 floor pass")
    st = sub.add_parser("stream", help="streamed comparison of a checkpoint folder")
    st.add_argument("folder", help="component folder: config.json + (sharded) safetensors")
    st.add_argument("--out", required=True, help="report folder (streamed.json, streamed.md)")
    st.add_argument("--dtype", choices=("fp32", "fp16"), action="append", help="MindSpore dtype, repeatable (default fp32)")
    st.add_argument("--feed", choices=("reference", "own"), default="reference",
                    help="blocks get the reference's inputs (default) or chain our own outputs")
    st.add_argument("--no-floor", action="store_true", help="skip the float64 noise-floor pass")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--height", type=int, default=64)
    st.add_argument("--width", type=int, default=112)
    st.add_argument("--frames", type=int, default=5)
    sc = sub.add_parser("_streamed")  # child process: one streamed comparison of a released config, rows as JSON
    sc.add_argument("names", nargs=1)
    sc.add_argument("component")
    sc.add_argument("--dtype", action="append")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--no-floor", action="store_true")
    sc.add_argument("--json", required=True)
    one = sub.add_parser("_component")  # the child process of `components`: one comparison, result as JSON
    one.add_argument("names", nargs=1)
    one.add_argument("component")
    one.add_argument("--dtype", default="fp32")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--json", required=True)
    a = p.parse_args(argv)
    if a.cmd == "stream":
        from .components import stream_folder

        try:
            return stream_folder(a.folder, a.out, a.dtype or ["fp32"], a.feed, not a.no_floor, a.seed,
                                 dict(height=a.height, width=a.width, frames=a.frames))
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    names = a.names or list(NAMES)
    try:
        bad = [n for n in names if n not in NAMES]
        if bad:
            raise ValueError(f"unknown released config {bad[0]!r}; expected one of {', '.join(NAMES)}")
        if a.cmd == "_component":
            Path(a.json).write_text(json.dumps(run_component(names[0], a.component, a.dtype, a.seed), default=float))
            return 0
        if a.cmd == "_streamed":
            Path(a.json).write_text(json.dumps(run_streamed_child(names[0], a.component, a.dtype or ["fp32"], a.seed,
                                                                  not a.no_floor), default=float))
            return 0
        if a.cmd == "build":
            for n in names:
                print(build(n, a.seed))
            return 0
        if a.cmd == "summary":
            if a.print:
                from .summary import summary_table

                print(summary_table())
                return 0
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
            chosen = a.only or component_names(n)
            whole = [c for c in chosen if not is_streamed(n, c)]
            streamed = [c for c in chosen if is_streamed(n, c)]
            for d in dtypes:
                out = Path(a.out) if a.out else REPORTS / n / "components" / d
                if whole:
                    ok &= run_components(n, out, d, a.seed, whole if streamed or a.only else None)["passed"]
            for c in streamed:  # the reference runs once for every dtype; then the checkpoint is deleted
                outs = {d: Path(a.out) if a.out else REPORTS / n / "components" / d for d in dtypes}
                ok &= merge_rows(n, c, outs, a.seed, not a.no_floor)
                if not a.keep:
                    folder = streamed_checkpoint_path(n, COMPONENTS[n][c][0], a.seed)
                    shutil.rmtree(folder, ignore_errors=True)
                    print(f"  deleted {folder}")
        return 0 if ok else 1
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
