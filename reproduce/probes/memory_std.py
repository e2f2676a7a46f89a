"""The encoder-collapse diagnostic of SUMMARY.md for probe pre-trainings: token-to-token
standard deviation of the encoder's memory (std over the h*w tokens, mean over channels) on
val images, and the mean IoU of each patch's predicted box with the patch's own box (C5).

    python reproduce/probes/memory_std.py RUN [RUN ...]   # runs/probes/RUN/pre
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reproduce import report  # noqa: E402
from updetr_lite.data.embedded import build_embedded  # noqa: E402
from updetr_lite.data.query_patches import sample_patch_boxes  # noqa: E402


@torch.no_grad()
def diagnose(run_dir: Path, n_images: int = 16) -> dict:
    model, cfg = report.load_pretext_model(run_dir)
    paths = build_embedded(cfg.data)
    files = sorted(Path(paths.val_images).iterdir())[:n_images]
    mem = {}
    hook = model.transformer.encoder.register_forward_hook(lambda m, i, o: mem.update(x=o))
    from torchvision.ops import box_iou

    stds, ious = [], []
    gen = torch.Generator().manual_seed(0)
    for f in files:
        img = report.load_image(f, cfg.data.test_size, cfg.data.max_size)
        h, w = img.shape[-2:]
        boxes = sample_patch_boxes(h, w, cfg.pretext.num_patches, cfg.pretext.min_patch, gen)
        pred = report.localize_patches(model, cfg, img, boxes)[0]
        stds.append(mem["x"].float().std(dim=1).mean().item())
        ious.extend(box_iou(pred, boxes).diag().tolist())
    hook.remove()
    return {
        "memory_token_std": round(sum(stds) / len(stds), 4),
        "patch_iou": round(sum(ious) / len(ious), 3),
    }


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(name, diagnose(ROOT / "runs" / "probes" / name / "pre"))
