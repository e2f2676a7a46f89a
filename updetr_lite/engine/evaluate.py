"""COCO-style box AP of a DETR with pycocotools (AP, AP50, AP75, APs, APm, APl).

DETR-style scoring: every one of the N queries is a detection (no NMS), its score the
largest softmax probability over the real classes (no-object excluded) and its category the
arg-max class index, which is the dataset's category id (COCO ids, VOC 1..20, embedded
1..5). The numbers are COCOeval's fractions in [0, 1], computed over the images the loader
visited.
"""

from __future__ import annotations

import contextlib
import io

import torch
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from . import distributed as du

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class EvaluationError(ValueError):
    """Predictions that cannot be scored (NaN or inf); one line for the user."""


@torch.no_grad()
def postprocess(outputs: dict, orig_sizes: torch.Tensor) -> list[dict]:
    """outputs: pred_logits [B, N, K+1], pred_boxes [B, N, 4] cxcywh normalised; orig_sizes
    [B, 2] (h, w) -> per image dict(scores [N], labels [N], boxes [N, 4] xyxy pixels of the
    original image)."""
    probs = outputs["pred_logits"].float().softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    h, w = orig_sizes.float().unbind(-1)
    scale = torch.stack((w, h, w, h), -1)[:, None, :]
    boxes = box_convert(outputs["pred_boxes"].float(), "cxcywh", "xyxy") * scale
    return [{"scores": s, "labels": lb, "boxes": b} for s, lb, b in zip(scores, labels, boxes)]


def to_coco_results(image_id: int, det: dict) -> list[dict]:
    """One image's detections as COCO result dicts (bbox = x, y, w, h pixels)."""
    xywh = box_convert(det["boxes"], "xyxy", "xywh").tolist()
    return [
        {"image_id": int(image_id), "category_id": int(c), "bbox": b, "score": float(s)}
        for c, b, s in zip(det["labels"].tolist(), xywh, det["scores"].tolist())
    ]


def coco_metrics(coco_gt, results: list[dict], img_ids: list[int]) -> dict[str, float]:
    """COCOeval (bbox) of ``results`` over ``img_ids``; zeros when there is no detection."""
    if not results:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(METRICS, ev.stats[:6])}


@torch.no_grad()
def detections(model, loader, device: torch.device) -> dict[int, list[dict]]:
    """image id -> COCO result dicts of ``model`` on every image of ``loader`` (as
    `evaluate`'s); refuses NaN or inf boxes and scores with an `EvaluationError`."""
    per_image: dict[int, list[dict]] = {}
    for inputs, mask, targets in loader:
        outputs = model(inputs.to(device), mask.to(device))
        orig = torch.stack([t["orig_size"] for t in targets]).to(device)
        for t, det in zip(targets, postprocess(outputs, orig)):
            det = {k: v.cpu() for k, v in det.items()}
            if not (torch.isfinite(det["boxes"]).all() and torch.isfinite(det["scores"]).all()):
                # COCOeval would score NaN boxes (IoU comparisons with NaN are not False)
                raise EvaluationError(
                    f"the model predicts NaN or inf boxes or scores (image id "
                    f"{int(t['image_id'])}): its weights or inputs are not finite; no AP computed"
                )
            per_image[int(t["image_id"])] = to_coco_results(int(t["image_id"]), det)
    return per_image


@torch.no_grad()
def evaluate(model, loader, coco_gt, device: torch.device | str | None = None) -> dict[str, float]:
    """AP metrics of ``model`` on ``loader``'s images against ``coco_gt`` (pycocotools COCO).

    ``loader`` yields (inputs, mask, targets) as collate_detection does; ``model(inputs,
    mask)`` gives DETR outputs (inputs are images, or cached CNN features with a model that
    runs ``forward_features``). Targets need ``image_id`` and ``orig_size``. With several
    processes each rank evaluates its shard, the detections are gathered and rank 0 runs
    COCOeval; every rank returns the same numbers.
    """
    if device is None:  # where the model is
        device = next(iter(model.parameters()), torch.empty(0)).device
    device = torch.device(device)
    was_training = model.training
    model.eval()
    per_image = detections(model, loader, device)
    model.train(was_training)
    gathered = du.all_gather_object(per_image)
    metrics = None
    if du.is_main_process():
        merged = {}  # a padded distributed sampler may visit an image twice: count it once
        for part in gathered:
            merged.update(part)
        all_results = [r for rs in merged.values() for r in rs]
        metrics = coco_metrics(coco_gt, all_results, list(merged))
    return du.broadcast_object(metrics)
