"""How much of a lite arm's seed spread is evaluation noise (300 val images) and how much is
training: each fine-tuned checkpoint is evaluated again on a larger val split of the same
generator (image i of a split depends only on (seed, split, i), so the first 300 images are
the lite val split itself), and its AP50 is computed on disjoint chunks of 300 images.

    python reproduce/probes/val_noise.py RUNS --runs ft_scratch_s0,ft_crop_s0 [--val 3000]

Prints, per run, AP50 on the lite val split (a check against the run's last evaluation), on
every further chunk of 300 images (their spread is the evaluation noise of one seed's AP50)
and on all the further images together; writes the same as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file: the checkout

from reproduce import report  # noqa: E402
from updetr_lite.data.build import build_detection_datasets  # noqa: E402
from updetr_lite.data.collate import collate_detection  # noqa: E402
from updetr_lite.engine.evaluate import coco_metrics, detections  # noqa: E402
from updetr_lite.engine.loading import load_model  # noqa: E402

LITE_VAL = 300


def chunk_ap50(coco, dets: dict[int, list[dict]], ids: list[int]) -> float:
    return 100 * coco_metrics(coco, [r for i in ids for r in dets[i]], ids)["AP50"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs_root", type=Path)
    ap.add_argument("--runs", required=True, help="comma-separated fine-tuning run folders")
    ap.add_argument("--val", type=int, default=3000, help="images of the larger val split")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in args.runs.split(","):
        ckpt = args.runs_root / name / "last.pth"
        model, cfg = load_model(ckpt, "detection", "cpu", "lite", [f"data.embedded_val={args.val}"])
        _, val = build_detection_datasets(cfg)
        ids = sorted(val.coco.getImgIds())
        loader = DataLoader(val, batch_size=32, shuffle=False, collate_fn=collate_detection)
        with torch.no_grad():
            dets = detections(model.eval(), loader, torch.device("cpu"))
        chunks = [ids[i : i + LITE_VAL] for i in range(LITE_VAL, len(ids), LITE_VAL)]
        per_chunk = [chunk_ap50(val.coco, dets, c) for c in chunks]
        rec = {
            "lite_val": chunk_ap50(val.coco, dets, ids[:LITE_VAL]),
            "chunks": per_chunk,
            "chunk_sd": statistics.stdev(per_chunk),
            "further": chunk_ap50(val.coco, dets, ids[LITE_VAL:]),
        }
        rec["logged_last"] = report.final_metrics(report.load_run(args.runs_root, name))[
            "AP50"
        ]  # %
        results[name] = rec
        print(
            f"{name}: AP50 lite val {rec['lite_val']:.1f} (logged {rec['logged_last']:.1f}); "
            f"{len(chunks)} further chunks of {LITE_VAL}: "
            f"{' '.join(f'{x:.1f}' for x in per_chunk)} (sd {rec['chunk_sd']:.2f}); "
            f"all {len(ids) - LITE_VAL} further images {rec['further']:.1f}",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
