"""Probe (issue 13): which end state of a pre-training goes with how well it fine-tunes?

For each pair PRE:FT (a pre-training folder and the fine-tuning folder that started from it),
the pretext end state of ``memory_std.diagnose`` (encoder memory token-to-token std, patch
IoU; 16 val images) beside the fine-tuning's last AP50, then Spearman's rank correlation of
each with AP50 over all pairs.

    python reproduce/probes/transfer_correlates.py \
        runs/main/pre_crop_s0:runs/main/ft_crop_s0 runs/probes/X/pre:runs/probes/X_ft/ft ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reproduce.probes.lite_search import ft_result  # noqa: E402
from reproduce.probes.memory_std import diagnose  # noqa: E402


def main(pairs: list[str]) -> None:
    rows = []
    print("| pre-training | memory std | patch IoU | AP50 after fine-tuning |")
    print("|---|---|---|---|")
    for pair in pairs:
        pre, ft = (Path(p) for p in pair.split(":"))
        d = diagnose(pre)
        ap50 = ft_result(ft / "log.jsonl")["AP50"]
        rows.append((d["memory_token_std"], d["patch_iou"], ap50))
        print(f"| {pre} | {d['memory_token_std']:.2f} | {d['patch_iou']:.3f} | {ap50:.1f} |")
    ap = [r[2] for r in rows]
    for name, i in (("memory std", 0), ("patch IoU", 1)):
        rho, p = spearmanr([r[i] for r in rows], ap)
        print(f"{name} vs AP50 over {len(rows)} pairs: Spearman {rho:.2f} (p = {p:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
