"""Reading the JSON-lines logs that training writes (``OUT/log.jsonl``), one rule for all readers.

A run killed while it writes can leave its last line cut short: that line is skipped with a
warning naming the file. A broken line anywhere else is not a crash's trace but a damaged
file: ``ValueError`` naming the file and the line. Blank lines are skipped.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path


def read_jsonl(path) -> list[dict]:
    """The records (dicts) of a JSON-lines file, in order; see the module doc for bad lines."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"log file not found: {p}")
    lines = [(n, line) for n, line in enumerate(p.read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                warnings.warn(
                    f"{p}:{n}: torn last line skipped (a run stopped while writing)", stacklevel=2
                )
                break
            raise ValueError(f"{p}:{n}: not a JSON line ({e.msg})") from None
    return records
