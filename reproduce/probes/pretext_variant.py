"""Probe (issue 13): pre-train exactly as a main-job run, with a few settings changed.

The main job's pre-training is read back from its folder (``config.json``: the full resolved
configuration, seed and cache folder included), the ``--set`` changes are applied, and the
run goes to runs/probes/NAME/pre. Fine-tune it as the main job does with
``reproduce/probes/partial_init.py NAME_ft --init runs/probes/NAME/pre/last.pth --seed S``.

    python reproduce/probes/pretext_variant.py NAME --like runs/main/pre_crop_s0 \
        --set pretext.patch_init_gain=1.0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reproduce.probes.lite_search import append_record, last_train  # noqa: E402
from reproduce.report import read_jsonl, run_config  # noqa: E402
from updetr_lite.config import Config  # noqa: E402
from updetr_lite.engine.train import train  # noqa: E402

PROBES = ROOT / "runs" / "probes"


def variant_config(like: Path, changes: list[str]) -> Config:
    """The configuration of the pre-training in ``like`` with ``changes`` applied."""
    return run_config(like).override(changes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--like", required=True, help="a main-job pre-training folder")
    ap.add_argument("--set", nargs="*", default=[], dest="changes")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = variant_config(Path(args.like), args.changes)
    out = PROBES / args.name / "pre"
    t0 = time.time()
    train(cfg, "pretrain", out, progress=False)
    append_record(
        {
            "name": args.name,
            "like": str(args.like),
            "changes": args.changes,
            "pre_s": round(time.time() - t0, 1),
            "pretext_end": last_train(read_jsonl(out / "log.jsonl")),
        }
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
