"""``updetr-lite bench`` and ``updetr-lite notebooks``: throughput and memory, and the
tutorial notebooks executed and rendered as HTML."""

from __future__ import annotations

import json
from pathlib import Path

from .common import CLIError, config_from_args, device_from_args, emit


def cmd_bench(args) -> int:
    from ..bench import format_report, run_bench

    cfg = config_from_args(args)
    device = device_from_args(args)
    report = run_bench(
        cfg,
        device,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        data=not args.no_data,
        repeats=args.repeats,
        aspect=args.aspect,
        finetune=not args.no_finetune,
        jpegs=args.jpegs,
        data_seconds=args.data_seconds,
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    emit(args, report, format_report(report))
    return 0


def cmd_notebooks(args) -> int:
    """Execute the tutorial notebooks headless and render them as HTML for reading."""
    from ..tutorial import notebooks as nb

    names = nb.NOTEBOOKS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        names = tuple(n for n in nb.NOTEBOOKS if any(n.startswith(w) for w in wanted))
        unknown = [w for w in wanted if not any(n.startswith(w) for n in nb.NOTEBOOKS)]
        if unknown:
            raise CLIError(
                f"--only: no notebook starts with {', '.join(unknown)}; "
                f"choose from {', '.join(nb.NOTEBOOKS)}"
            )
    # the checkout's notebooks/ (the command runs in the checkout, as --out does)
    notebook_dir = Path(args.notebooks)
    if not notebook_dir.is_dir():
        raise NotADirectoryError(
            f"--notebooks {notebook_dir}: no such folder (run in the checkout, or give its "
            "notebooks/ folder)"
        )
    out = Path(args.out or "runs/notebooks")
    nb.render_notebooks(notebook_dir, out, smoke=args.smoke, names=names, report=print)
    return 0
