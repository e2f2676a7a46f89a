"""Hungarian matching of predictions to targets with DETR's costs."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


class NonFiniteOutputError(FloatingPointError):
    """The predictions hold NaN or inf: there is nothing to match (the run has diverged)."""


class HungarianMatcher(nn.Module):
    """Cost = cost_class * (-p(target class)) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU).

    forward(outputs with pred_logits [B, N, K+1], pred_boxes [B, N, 4] cxcywh; targets: list of
    dicts with labels [n_i], boxes [n_i, 4] cxcywh) -> list of (pred_idx, tgt_idx) int64
    tensors of length min(N, n_i) per image. Matching is global over all N predictions.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def forward(
        self, outputs: dict, targets: list[dict]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        b, n = outputs["pred_logits"].shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        # one cost matrix for the whole batch, [B*N, sum n_i], then split per image
        prob = outputs["pred_logits"].flatten(0, 1).float().softmax(-1)
        boxes = outputs["pred_boxes"].flatten(0, 1).float()
        tgt_labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).float()
        cost = (
            -self.cost_class * prob[:, tgt_labels]
            + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
            - self.cost_giou
            * generalized_box_iou(
                box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
        )
        cost = cost.view(b, n, -1).cpu()
        if not torch.isfinite(cost).all():  # scipy would only say "invalid numeric entries"
            bad = [k for k in ("pred_logits", "pred_boxes") if not torch.isfinite(outputs[k]).all()]
            raise NonFiniteOutputError(
                f"the model's {' and '.join(bad) or 'matching costs'} hold NaN or inf"
            )
        result = []
        for i, c in enumerate(cost.split(sizes, -1)):
            if sizes[i] == 0:
                result.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(c[i].numpy())
            result.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return result
