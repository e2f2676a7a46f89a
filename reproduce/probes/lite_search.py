"""Probe runs for the lite-settings search (issue 13): one pre-training and/or fine-tuning
of the lite preset with ``--set`` overrides, timed, its numbers appended to a JSON-lines log.

    python reproduce/probes/lite_search.py NAME [--pre PRE_STEPS] [--ft FT_STEPS]
        [--init RUN_NAME] [--seed S] [--set section.field=value ...]

Runs go to runs/probes/NAME/{pre,ft}; ``--init`` fine-tunes from runs/probes/RUN/pre/last.pth;
the fine-tuning schedule is the main job's rule (lr x0.1 at 80 %, COCOeval every other
epoch). The CNN is the lite preset's (the shipped lite CNN, fp32) unless ``--set
model.backbone_weights=...`` says otherwise; the feature caches are the main job's
(.cache/updetr_lite). Records go to runs/probes/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reproduce.lite_plan import LITE_BUDGET, _ft_schedule  # noqa: E402
from reproduce.report import eval_records, read_jsonl  # noqa: E402
from updetr_lite import fastpath  # noqa: E402
from updetr_lite.config import get_config  # noqa: E402
from updetr_lite.engine.train import train  # noqa: E402

PROBES = ROOT / "runs" / "probes"


def last_train(records: list[dict], n: int = 5) -> dict:
    """Mean of the last n train records' loss terms (the pretext's end state)."""
    tr = [r for r in records if r.get("type") == "train"][-n:]
    keys = [k for k in tr[-1] if k.startswith("loss") and "_" not in k[5:]] if tr else []
    return {k: round(sum(r[k] for r in tr) / len(tr), 4) for k in keys}


def ft_result(log: Path) -> dict:
    """A fine-tuning's AP curve [(step, AP, AP50)] and its last AP / AP50 / AP75 (%)."""
    evals = eval_records(read_jsonl(log))
    rec = {"curve": [(e["step"], round(e["AP"], 1), round(e["AP50"], 1)) for e in evals]}
    rec.update({k: round(evals[-1][k], 2) for k in ("AP", "AP50", "AP75")})
    return rec


def append_record(rec: dict) -> None:
    """Append a probe's record to runs/probes/results.jsonl and print it."""
    PROBES.mkdir(parents=True, exist_ok=True)
    with open(PROBES / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--pre", type=int, default=0, help="pre-training steps (0: none)")
    ap.add_argument("--ft", type=int, default=0, help="fine-tuning steps (0: none)")
    ap.add_argument("--init", default=None, help="probe whose pre/last.pth starts fine-tuning")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = [f"data.cache_dir={ROOT / '.cache' / 'updetr_lite'}", "data.num_workers=0"]
    out = PROBES / args.name
    rec = {"name": args.name, "overrides": args.overrides, "seed": args.seed}
    # the frozen CNN's precision as the runs resolve it (model.cnn_bf16; None: the hardware's)
    rec["bf16"] = fastpath.cnn_bf16(get_config("lite", args.overrides).model.cnn_bf16, "cpu")
    init = None
    if args.init:
        init = PROBES / args.init / "pre" / "last.pth"
        rec["init"] = args.init
    if args.pre:
        cfg = get_config(
            "lite",
            base
            + [f"pretrain.max_steps={args.pre}", f"pretrain.seed={args.seed}"]
            + args.overrides,
        )
        t0 = time.time()
        train(cfg, "pretrain", out / "pre", progress=False)
        rec["pre_steps"], rec["pre_s"] = args.pre, round(time.time() - t0, 1)
        rec["pretext_end"] = last_train(read_jsonl(out / "pre" / "log.jsonl"))
        init = out / "pre" / "last.pth"
    if args.ft:
        sched = _ft_schedule(args.ft, LITE_BUDGET["steps_per_epoch_ft"])
        cfg = get_config("lite", base + sched + [f"finetune.seed={args.seed}"] + args.overrides)
        t0 = time.time()
        train(cfg, "finetune", out / "ft", init=init, progress=False)
        rec["ft_steps"], rec["ft_s"] = args.ft, round(time.time() - t0, 1)
        rec.update(ft_result(out / "ft" / "log.jsonl"))
    append_record(rec)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
