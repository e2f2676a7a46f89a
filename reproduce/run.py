"""Reproduce the paper's tables and figures: plan the runs each artefact needs, run them.

    python -m reproduce.run --scale smoke|lite|paper [--only table1,fig6,...] [--gpus G]
        [--nodes N --node-rank R --master-addr A --master-port P] [--set section.field=value ...]
        [--coco-root PATH] --out DIR

(``python reproduce/run.py ...`` works too.) The README's main job (``bash run.sh``) is
``--scale lite --only table1,fig1,fig5,fig6 --out runs/main`` (``plan.MAIN_ARTEFACTS``).

Every run is a notebook of reproduce/notebooks/ executed with papermill (kernel
'updetr-lite') into DIR/<run-name>/. Finished runs (a DONE marker) are skipped, so rerunning
the same command resumes an interrupted reproduction (a command with other settings than a
run already in DIR is refused); a failed run is reported with its log and the others go
on. Several nodes: the same command on every node, each with its --node-rank. The report
(DIR/report/report.md) is rebuilt at the end from whatever logs exist; its path is printed.
See reproduce/README.md, reproduce/plan.py and reproduce/execute.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file (python reproduce/run.py): import from the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from reproduce.execute import reproduce
from reproduce.launch import Launch
from reproduce.plan import ARTEFACTS, MissingDataError, ReproduceError, plan
from updetr_lite.config import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Reproduce UP-DETR's tables and figures (smoke, lite or paper scale)."
    )
    ap.add_argument("--scale", choices=("smoke", "lite", "paper"), required=True)
    ap.add_argument(
        "--only",
        default="",
        help=f"comma-separated artefacts: {','.join(ARTEFACTS)},report (default: all)",
    )
    ap.add_argument(
        "--runs",
        default="",
        help="comma-separated run names instead of --only (with the runs they need), e.g. "
        "part of an artefact; the report is rebuilt from every run folder",
    )
    ap.add_argument(
        "--out", default="runs/reproduce", help="folder of the run folders and the report"
    )
    ap.add_argument("--gpus", type=int, default=0, help="GPUs per node (0: CPU)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--node-rank", type=int, default=0)
    ap.add_argument("--master-addr", default="127.0.0.1")
    ap.add_argument(
        "--master-port",
        type=int,
        default=29500,
        help="first rendezvous port: run r of the plan uses this + r (every node the same)",
    )
    ap.add_argument(
        "--jobs", type=int, default=0, help="runs side by side (default: 2 on CPU, 1 on GPUs)"
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        nargs="+",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="setting for every run, e.g. data.pretext_root=/data/imagenet/train",
    )
    ap.add_argument("--coco-root", default=None, help="paper scale, Table 2: the COCO 2017 folder")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run (default: none)")
    ap.add_argument("--list", action="store_true", help="print the planned runs and exit")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    only = [a.strip() for a in args.only.split(",") if a.strip()] or None
    runs = [a.strip() for a in args.runs.split(",") if a.strip()] or None
    overrides = [o for group in args.overrides for o in group]
    try:
        if args.list:
            p = plan(args.scale)
            for name in p.runs_for(only, runs):
                r = p.runs[name]
                init = f" init={r.init}" if r.init else ""
                print(f"{name:24s} {r.kind:9s}{init} {' '.join(r.overrides)}")
            return 0
        launch = Launch(
            args.gpus, args.nodes, args.node_rank, args.master_addr, args.master_port, threads=0
        )
        results = reproduce(
            args.scale,
            args.out,
            only,
            overrides,
            launch,
            args.jobs or None,
            args.coco_root,
            args.timeout,
            runs=runs,
        )
    except (ReproduceError, ConfigError, MissingDataError) as e:
        print(f"reproduce: {e}", file=sys.stderr)
        return 2
    if "report" in results and results["report"].status == "done":
        print(f"[reproduce] report: {Path(args.out).resolve() / 'report' / 'report.md'}")
    return int(any(r.status in ("failed", "blocked") for r in results.values()))


if __name__ == "__main__":
    sys.exit(main())
