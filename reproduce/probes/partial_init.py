"""Probe (issue 13): which part of a pre-trained transformer helps or hurts fine-tuning?

Fine-tunes the lite preset from a pretext checkpoint in which the named parts are put back
to the scratch arm's initial weights (the DETR that ``train`` builds for the same seed), so
each part is either the pre-trained one or exactly what scratch DETR starts from.

    python reproduce/probes/partial_init.py NAME --init runs/main/pre_crop_s0/last.pth \
        --reset transformer.decoder,query_embed [--seed S] [--ft 800] [--set k=v ...]

Parts are state-dict key prefixes of the detector: transformer.encoder, transformer.decoder,
query_embed, bbox_embed, input_proj. Runs go to runs/probes/NAME/ft; the record (AP curve,
what was reset) is appended to runs/probes/results.jsonl as reproduce/probes/lite_search.py
does.
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

from reproduce.lite_plan import LITE_BUDGET, _ft_schedule  # noqa: E402
from reproduce.probes.lite_search import append_record, ft_result  # noqa: E402
from updetr_lite.config import get_config  # noqa: E402
from updetr_lite.engine.checkpoint import load_checkpoint, model_state  # noqa: E402
from updetr_lite.engine.seeding import seed_everything  # noqa: E402
from updetr_lite.engine.train import prepare_model, train  # noqa: E402

PROBES = ROOT / "runs" / "probes"
PARTS = ("transformer.encoder", "transformer.decoder", "query_embed", "bbox_embed", "input_proj")


def reset_parts(pretext: dict, fresh: dict, parts: list[str]) -> tuple[dict, list[str]]:
    """(pretext state with every key under ``parts`` taken from ``fresh``, the keys reset)."""
    out, done = dict(pretext), []
    for key in pretext:
        if key.startswith(tuple(parts)):
            if fresh[key].shape != pretext[key].shape:
                raise ValueError(f"{key}: shape {tuple(pretext[key].shape)} in the checkpoint")
            out[key] = fresh[key].clone()
            done.append(key)
    return out, done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--init", required=True, help="pretext checkpoint (last.pth)")
    ap.add_argument("--reset", default="", help="comma-separated parts: " + ", ".join(PARTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ft", type=int, default=LITE_BUDGET["finetune_steps"])
    ap.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = ap.parse_args(argv)
    parts = [p for p in args.reset.split(",") if p]
    if any(p not in PARTS for p in parts):
        ap.error(f"--reset takes {', '.join(PARTS)}")
    torch.set_num_threads(1)
    base = [f"data.cache_dir={ROOT / '.cache' / 'updetr_lite'}", "data.num_workers=0"]
    sched = _ft_schedule(args.ft, LITE_BUDGET["steps_per_epoch_ft"])
    cfg = get_config("lite", base + sched + [f"finetune.seed={args.seed}"] + args.overrides)
    seed_everything(cfg.finetune.seed)  # as train() does before it builds the detector
    fresh = prepare_model(cfg, "finetune")[0].state_dict()
    ckpt = load_checkpoint(args.init)
    state, done = reset_parts(model_state(ckpt), fresh, parts)
    out = PROBES / args.name
    out.mkdir(parents=True, exist_ok=True)
    init = out / "init.pth"
    torch.save({**ckpt, "model": state}, init)
    t0 = time.time()
    train(cfg, "finetune", out / "ft", init=init, progress=False)
    append_record(
        {
            "name": args.name,
            "init": str(args.init),
            "reset": parts,
            "keys_reset": len(done),
            "seed": args.seed,
            "overrides": args.overrides,
            "ft_steps": args.ft,
            "ft_s": round(time.time() - t0, 1),
            **ft_result(out / "ft" / "log.jsonl"),
        }
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
