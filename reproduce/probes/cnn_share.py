"""Issue 18 on a CPU without AVX-512: where the default path's pretext iteration goes.

Times the paper-preset pretext iteration of `updetr-lite bench` (settings A and B of
docs/benchmarks.md) with the fast path on and off, and, on the fast path, the frozen CNN's
share of it (every `fastpath.FrozenCNN` call timed: the images and the query patches). Run it
natively and with torch's kernels capped at AVX2, as a CPU without AVX-512 runs them:

    python reproduce/probes/cnn_share.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python reproduce/probes/cnn_share.py
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from updetr_lite import fastpath  # noqa: E402
from updetr_lite.bench_steps import bench_pretext  # noqa: E402
from updetr_lite.config import get_config  # noqa: E402

SETTINGS = {  # name -> (batch, overrides), as docs/benchmarks.md's A and B
    "A": (2, []),
    "B": (
        4,
        [
            "model.backbone=resnet18",
            "model.hidden_dim=128",
            "model.enc_layers=2",
            "model.dec_layers=2",
            "model.dim_feedforward=512",
            "data.pretext_scales=(320,)",
        ],
    ),
}
WARMUP, STEPS, REPEATS = 1, 3, 3


def main() -> None:
    calls: list[float] = []
    forward = fastpath.FrozenCNN.forward

    def timed(self, x):
        t = time.perf_counter()
        out = forward(self, x)
        calls.append(time.perf_counter() - t)
        return out

    fastpath.FrozenCNN.forward = timed
    cap = torch.backends.cpu.get_cpu_capability()
    for name, (batch, ov) in SETTINGS.items():
        for fast in (True, False):
            cfg = get_config("paper", [*ov, f"model.fast_path={fast}"])
            calls.clear()
            r = bench_pretext(cfg, torch.device("cpu"), batch, STEPS, WARMUP, REPEATS, aspect=1.333)
            n_iter = WARMUP + STEPS * REPEATS
            per_iter = len(calls) // n_iter
            timed_calls = calls[WARMUP * per_iter :]
            cnn = sum(timed_calls) / (STEPS * REPEATS)
            row = {
                "setting": name,
                "capability": cap,
                "threads": torch.get_num_threads(),
                "fast_path": fast,
                "cnn_bf16": r["cnn_bf16"],
                "s_per_iteration": round(r["s_per_iteration"], 3),
                "s_per_iteration_best": round(r["s_per_iteration_best"], 3),
                "frozen_cnn_s": round(cnn, 3) if fast else None,
                "frozen_cnn_share": round(cnn / r["s_per_iteration"], 2) if fast else None,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
