"""Set prediction losses of DETR, plus UP-DETR's patch feature reconstruction."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


class SetCriterion(nn.Module):
    """forward(outputs, targets) -> dict of weighted terms (``loss_ce``, ``loss_bbox``,
    ``loss_giou``, ``loss_rec``; ``_i`` suffixed for decoder layer i's aux outputs), their sum
    ``loss``, and the unweighted metric ``class_error`` (100 - accuracy on matched queries, %).

    - CE over all queries, unmatched ones target no-object (index num_classes) with weight
      ``eos_coef`` (DETR's 0.1; the paper's pretext balance is M/N).
    - L1 and 1 - GIoU on matched boxes (cxcywh), summed and divided by the number of target
      boxes in the batch (all-reduced across processes, at least 1).
    - Reconstruction (UP-DETR): both feature vectors are L2-normalised (F.normalize), the squared
      error is summed over the C dims and divided by the number of matched patches. Eq. 2 of the
      paper divides each vector by its *squared* norm; the authors' code, and this kit, divide
      by the plain L2 norm. Target box j of an image is query patch j, so tgt_idx indexes
      ``outputs["patch_feature"]`` [B, M, C].
    - Aux outputs: each decoder layer is matched on its own.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        reconstruction: bool = False,
    ):
        super().__init__()
        self.num_classes, self.matcher, self.weight_dict = num_classes, matcher, weight_dict
        self.eos_coef, self.reconstruction = eos_coef, reconstruction
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    @staticmethod
    def _flat(indices):
        batch = torch.cat([torch.full_like(p, i) for i, (p, _) in enumerate(indices)])
        return batch, torch.cat([p for p, _ in indices])

    def _losses(self, outputs, targets, indices, num_boxes) -> dict[str, torch.Tensor]:
        logits = outputs["pred_logits"]
        device = logits.device
        # the matcher returns CPU indices; keep every index on the outputs' device
        bidx, qidx = (x.to(device) for x in self._flat(indices))
        matched_labels = torch.cat(
            [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)]
        ).to(device)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[bidx, qidx] = matched_labels
        losses = {
            "loss_ce": F.cross_entropy(
                logits.transpose(1, 2).float(), target_classes, self.empty_weight
            )
        }
        src_boxes = outputs["pred_boxes"][bidx, qidx].float()
        tgt_boxes = torch.cat(
            [t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)]
        ).to(device, torch.float)
        losses["loss_bbox"] = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        giou = torch.diag(
            generalized_box_iou(
                box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
        )
        losses["loss_giou"] = (1 - giou).sum() / num_boxes
        if self.reconstruction:
            pred = outputs["pred_feature"][bidx, qidx].float()
            tidx = torch.cat([j for _, j in indices]).to(device)
            target = outputs["patch_feature"][bidx, tidx].float()
            err = (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).pow(2).sum(-1)
            losses["loss_rec"] = err.sum() / num_boxes
        with torch.no_grad():
            if len(qidx):
                acc = (logits[bidx, qidx].argmax(-1) == matched_labels).float().mean() * 100
                losses["class_error"] = 100 - acc
            else:
                losses["class_error"] = logits.new_zeros(())
        return losses

    def num_boxes(self, targets, device) -> float:
        n = torch.as_tensor(
            float(sum(len(t["labels"]) for t in targets)), dtype=torch.float, device=device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return max(n.item(), 1.0)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        device = outputs["pred_logits"].device
        num_boxes = self.num_boxes(targets, device)
        layers = [("", outputs)] + [
            (f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))
        ]
        result: dict[str, torch.Tensor] = {}
        total = outputs["pred_logits"].new_zeros((), dtype=torch.float)
        for suffix, out in layers:
            indices = self.matcher(out, targets)
            for name, value in self._losses(out, targets, indices, num_boxes).items():
                if name == "class_error":
                    if not suffix:
                        result[name] = value
                    continue
                key = name + suffix
                if key in self.weight_dict:
                    result[key] = value * self.weight_dict[key]
                    total = total + result[key]
        result["loss"] = total
        return result
