"""Copy a run folder's report into the committed results.

    python -m reproduce.report RUNS DEST     e.g. runs/main reproduce/results/lite

writes DEST's Markdown, CSV and PNG files from RUNS/report/ and DEST/runs.md (every run's
status and wall time); see `export_results`.
"""

import argparse
import sys
from pathlib import Path

from . import export_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.report", description=__doc__)
    ap.add_argument("runs", type=Path, help="the --out folder of python -m reproduce.run")
    ap.add_argument("dest", type=Path, help="the results folder to write")
    args = ap.parse_args(argv)
    if not (args.runs / "report" / "report.md").is_file():
        print(
            f"error: {args.runs / 'report' / 'report.md'}: missing (no report built)",
            file=sys.stderr,
        )
        return 2
    for f in export_results(args.runs, args.dest):
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
