"""Hungarian matching of predictions to targets with DETR's costs."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


class NonFiniteOutputError(FloatingPointError):
    """The predictions hold NaN or inf: there is nothing to match (the run has diverged)."""


def cost_terms(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    tgt_labels: torch.Tensor,
    tgt_boxes: torch.Tensor,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
) -> dict[str, torch.Tensor]:
    """DETR's matching cost (UP-DETR Sec. 3.1 keeps it), term by term, each [P, n] and already
    weighted: ``class`` = -w * p(target class), ``bbox`` = w * L1 of the cxcywh boxes,
    ``giou`` = -w * GIoU, and ``total`` their sum (what the matcher minimises).

    pred_logits [P, K+1], pred_boxes [P, 4] cxcywh (P predictions: one image's N, or a batch
    flattened); tgt_labels [n], tgt_boxes [n, 4] cxcywh."""
    prob = pred_logits.float().softmax(-1)
    terms = {
        "class": -cost_class * prob[:, tgt_labels],
        "bbox": cost_bbox * torch.cdist(pred_boxes.float(), tgt_boxes.float(), p=1),
        "giou": -cost_giou
        * generalized_box_iou(
            box_convert(pred_boxes.float(), "cxcywh", "xyxy"),
            box_convert(tgt_boxes.float(), "cxcywh", "xyxy"),
        ),
    }
    terms["total"] = terms["class"] + terms["bbox"] + terms["giou"]
    return terms


class HungarianMatcher(nn.Module):
    """Cost = cost_class * (-p(target class)) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)
    (``cost_terms``).

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
        cost = cost_terms(
            outputs["pred_logits"].flatten(0, 1),
            outputs["pred_boxes"].flatten(0, 1),
            torch.cat([t["labels"] for t in targets]),
            torch.cat([t["boxes"] for t in targets]),
            self.cost_class,
            self.cost_bbox,
            self.cost_giou,
        )["total"]
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
