"""Figure 5: query patches cut at random from val images and fed back to each pre-trained
model; how well the most confident query of each group finds its patch (IoU), beside a
fixed-box baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .figures import _plt

# ----------------------------------------------------------------------------- Figure 5


def load_pretext_model(run_dir: str | Path, checkpoint: str = "last.pth"):
    """(UPDETR in eval mode, Config) from a pre-training run folder. The checkpoint may be a
    bare state dict or a dict with a ``model`` entry; CNN weights missing from it come from
    the run's ``model.backbone_weights``."""
    import torch

    from updetr_lite.models.build import build_updetr

    from .runs import run_config

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    cnn_file = cfg.model.backbone_weights
    cfg.model.backbone_weights = None
    model = build_updetr(cfg)
    ckpt = torch.load(run_dir / checkpoint, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise ValueError(
            f"{run_dir / checkpoint}: not a pre-training checkpoint of this config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if missing:
        if not cnn_file or not Path(cnn_file).exists():
            raise FileNotFoundError(
                f"{run_dir / checkpoint} holds no CNN weights and model.backbone_weights "
                f"({cnn_file}) is not there"
            )
        from updetr_lite.models.weights import load_cnn_weights

        load_cnn_weights(model.backbone, cnn_file)
    cfg.model.backbone_weights = cnn_file
    return model.eval(), cfg


def load_image(path: str | Path, size: int, max_size: int):
    """uint8 [3, H, W] resized so the shortest side is ``size`` (longest <= max_size)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    with Image.open(path) as im:
        img = F.pil_to_tensor(im.convert("RGB"))
    if min(img.shape[-2:]) != size:
        img = F.resize(img, size, max_size=max_size if max_size > size else None, antialias=True)
    return img


def localize_patches(model, cfg, image_uint8, boxes_xyxy):
    """The pretext model's answer for the given patch boxes (xyxy pixels [k, 4]) on one uint8
    image [3, H, W] (``engine.inference.localize_patches``) -> predicted boxes xyxy pixels
    [k, 4], scores [k], the query patches uint8 [k, 3, p, p] (for the figure)."""
    import torch

    from updetr_lite.data.query_patches import crop_patches
    from updetr_lite.engine.inference import localize_patches as localize

    found = localize(model, cfg, image_uint8, boxes=boxes_xyxy)
    pred = torch.tensor([r["box"] for r in found], dtype=torch.float32)
    scores = torch.tensor([r["score"] for r in found])
    return pred, scores, crop_patches(image_uint8, boxes_xyxy, cfg.pretext.patch_size)


def localization_study(
    runs: list[tuple[str, str | Path]],
    image_paths: list[str | Path],
    out_dir: str | Path,
    n_images: int = 100,
    seed: int = 0,
    n_show: int = 4,
) -> dict:
    """Figure 5 and its number: query patches cut at random from val images, fed back to each
    pre-trained model (label, run folder); the most confident query of each group is its
    prediction. Reports mean IoU with the true patch box and the share with IoU >= 0.5, beside
    a baseline that always answers one fixed box (the patches' mean size at the image centre).
    Every model sees the same images and boxes, each image resized as in pre-training
    (shortest side max(data.pretext_scales), longest <= data.pretext_max_size) and the patches
    cut from that image. Writes fig5.png and localization.json."""
    import torch
    from torchvision.ops import box_iou

    from updetr_lite.data.query_patches import sample_patch_boxes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_paths = list(image_paths)[:n_images]
    if not image_paths:
        raise FileNotFoundError("localization study: no val images given")
    results, shown = [], None
    truth_all = None
    for label, run_dir in runs:
        run_dir = Path(run_dir)
        if not (run_dir / "DONE").exists() or not (run_dir / "last.pth").exists():
            results.append({"label": label, "run": run_dir.name, "status": "missing"})
            continue
        model, cfg = load_pretext_model(run_dir)
        k = cfg.pretext.num_patches
        gen = torch.Generator().manual_seed(seed)
        ious, truth, examples = [], [], []
        for i, path in enumerate(image_paths):
            img = load_image(path, max(cfg.data.pretext_scales), cfg.data.pretext_max_size)
            h, w = img.shape[-2:]
            # the same boxes for every model: draw the largest M once per image, use the first k
            boxes = sample_patch_boxes(h, w, 10, cfg.pretext.min_patch, gen)[:k]
            pred, scores, crops = localize_patches(model, cfg, img, boxes)
            ious.append(box_iou(pred, boxes).diagonal())
            truth.append((boxes, h, w))
            if i < n_show:
                examples.append((img, boxes, pred, scores, crops))
        iou = torch.cat(ious)
        results.append(
            {
                "label": label,
                "run": run_dir.name,
                "status": "done",
                "num_patches": k,
                "n": int(iou.numel()),
                "mean_iou": float(iou.mean()),
                "hit50": float((iou >= 0.5).float().mean()),
            }
        )
        if shown is None:
            shown = (label, examples)
        if truth_all is None or k > truth_all[0]:
            truth_all = (k, truth)
    baseline = {"n": 0, "mean_iou": math.nan, "hit50": math.nan}
    if truth_all:
        ious = []
        all_boxes = torch.cat([b for b, _, _ in truth_all[1]])
        mw = float((all_boxes[:, 2] - all_boxes[:, 0]).mean())
        mh = float((all_boxes[:, 3] - all_boxes[:, 1]).mean())
        for boxes, h, w in truth_all[1]:
            fixed = torch.tensor([[w / 2 - mw / 2, h / 2 - mh / 2, w / 2 + mw / 2, h / 2 + mh / 2]])
            ious.append(box_iou(fixed, boxes)[0])
        iou = torch.cat(ious)
        baseline = {
            "n": int(iou.numel()),
            "mean_iou": float(iou.mean()),
            "hit50": float((iou >= 0.5).float().mean()),
        }
    summary = {
        "runs": [r for r in results if r["status"] == "done"],
        "missing": [r["run"] for r in results if r["status"] != "done"],
        "baseline": baseline,
        "n_images": len(image_paths),
        "seed": seed,
    }
    (out_dir / "localization.json").write_text(json.dumps(summary, indent=1) + "\n")
    if shown:
        _draw_fig5(*shown, out_dir / "fig5.png")
    return summary


def _draw_fig5(label, examples, path):
    import torch

    plt = _plt()
    n = len(examples)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    for j, (img, boxes, pred, scores, crops) in enumerate(examples):
        ax = axes[0, j]
        ax.imshow(img.permute(1, 2, 0).numpy())
        for i, (t, b, s) in enumerate(zip(boxes, pred, scores)):
            c = f"C{i}"
            ax.add_patch(
                plt.Rectangle(
                    (t[0], t[1]), t[2] - t[0], t[3] - t[1], fill=False, ec=c, ls="--", lw=1
                )
            )
            ax.add_patch(
                plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=c, lw=2)
            )
            ax.text(
                b[0],
                b[1],
                f"{float(s):.2f}",
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"facecolor": c, "pad": 1, "lw": 0},
            )
        ax.axis("off")
        # second line: the query patches, side by side, framed in their colour
        k = crops.shape[0]
        cols = math.ceil(math.sqrt(k))
        rows = math.ceil(k / cols)
        p = crops.shape[-1]
        mosaic = torch.full((3, rows * (p + 4), cols * (p + 4)), 255, dtype=torch.uint8)
        for i in range(k):
            r, c = divmod(i, cols)
            mosaic[
                :, r * (p + 4) + 2 : r * (p + 4) + 2 + p, c * (p + 4) + 2 : c * (p + 4) + 2 + p
            ] = crops[i]
        ax = axes[1, j]
        ax.imshow(mosaic.permute(1, 2, 0).numpy())
        for i in range(k):
            r, c = divmod(i, cols)
            ax.add_patch(
                plt.Rectangle(
                    (c * (p + 4) + 1, r * (p + 4) + 1), p + 2, p + 2, fill=False, ec=f"C{i}", lw=2
                )
            )
        ax.axis("off")
    fig.suptitle(
        f"{label}: predicted box (solid, confidence) and the query patch's true box (dashed)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
