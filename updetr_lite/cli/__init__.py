"""The ``updetr-lite`` command (also ``python -m updetr_lite``).

    updetr-lite info      --preset NAME [--json]           settings and parameter counts
    updetr-lite data build --preset NAME                   the embedded data set
    updetr-lite pretrain  --preset NAME --out DIR [--resume]
    updetr-lite finetune  --preset NAME --out DIR [--init CKPT] [--resume]
    updetr-lite evaluate  --checkpoint CKPT [--json]       AP on the val split
    updetr-lite predict   --checkpoint CKPT IMAGE... --out DIR [--threshold 0.5]
    updetr-lite localize  --checkpoint CKPT --image IMG (--patch FILE | --box x0,y0,x1,y1)... --out DIR
    updetr-lite bench     --preset lite|paper --device cpu|cuda [--json]
    updetr-lite notebooks [--smoke] [--only 01,06] [--out runs/notebooks] [--notebooks DIR]
                                                           executed copies + HTML

The paper's tables and figures (the README's main job, ``bash run.sh``) are the
reproduction kit's: ``python -m reproduce.run`` in a checkout.

Every command takes ``--preset``, ``--set section.field=value`` (repeatable), ``--out``,
``--device`` and ``--debug``. An error prints one line ``updetr-lite: error: ...`` on stderr
and exits with a non-zero code (2 for a bad command line, 1 otherwise); ``--debug`` prints
the traceback too.
"""

from __future__ import annotations

import logging
import sys
import traceback

from .common import PROG, UsageError
from .parser import build_parser


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) if str(e) else ""
    if isinstance(e, KeyError):  # str(KeyError) is the quoted key only
        msg = f"missing key {msg}"
    return msg or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default sys.argv[1:]); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(
        level=logging.INFO if debug else logging.WARNING,
        format="[%(name)s] %(message)s",
        stream=sys.stderr,
    )
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        ours = isinstance(e, (ValueError, FileNotFoundError, KeyError, NotADirectoryError))
        msg = _one_line(e) if ours else f"{type(e).__name__}: {_one_line(e)}"
        hint = "" if debug or ours else " (rerun with --debug for the traceback)"
        print(f"{PROG}: error: {msg}{hint}", file=sys.stderr)
        return 1
