"""Seconds per optimizer step of a lite run as the plan trains it (cached features, one
thread), for comparing two checkouts on the same machine.

    python reproduce/probes/step_time.py pretrain|finetune RUN_DIR [--steps 120] [--skip 10]

RUN_DIR is a pre-training or fine-tuning folder of the main job (its ``config.json`` gives
every setting, its caches included; fine-tuning starts from scratch weights, which does not
change the cost of a step); the run is retrained for ``--steps`` steps into a
temporary folder and the median and mean time of ``engine.step.train_step`` after the
first ``--skip`` steps is printed, with the total time of ``engine.train.train``. Run it from
each checkout (``python /path/to/checkout/reproduce/probes/step_time.py ...``): the code
measured is that of the checkout the script sits in. Fine-tuning steps include no
evaluation (``eval_every`` is raised past the run).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("pretrain", "finetune"))
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--skip", type=int, default=10)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from reproduce.report import run_config
    from updetr_lite.engine import loop
    from updetr_lite.engine.train import train

    cfg, kind = run_config(Path(args.run_dir)), args.kind
    tc = cfg.pretrain if kind == "pretrain" else cfg.finetune
    tc.max_steps, tc.eval_every, tc.checkpoint_every = args.steps, 10**6, 10**6
    times: list[float] = []
    step = loop.train_step

    def timed(*a, **k):
        t = time.perf_counter()
        out = step(*a, **k)
        times.append(time.perf_counter() - t)
        return out

    loop.train_step = timed
    out = tempfile.mkdtemp()
    try:
        t0 = time.perf_counter()
        train(cfg, kind, out, progress=False)
        total = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    kept = times[args.skip :]
    print(
        f"{ROOT.name} {kind} {Path(args.run_dir).name}: {len(kept)} steps, median "
        f"{statistics.median(kept) * 1e3:.0f} ms, mean {statistics.mean(kept) * 1e3:.0f} ms; "
        f"train() {total:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
