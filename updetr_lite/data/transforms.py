"""DETR's detection augmentation with torchvision.transforms.v2 and tv_tensors.

Input: (image, target) with ``image`` a ``tv_tensors.Image`` uint8 [3, h, w] (or a PIL image)
and ``target["boxes"]`` a ``tv_tensors.BoundingBoxes`` in XYXY pixels, ``target["labels"]``
[n] int64. Every geometric change of the boxes is done by torchvision's own kernels.

Training (DETR): horizontal flip (p=0.5); then, with probability 1/2 each, either a multi-scale
resize (shortest side drawn from ``data.scales``, longest <= ``data.max_size``) or
resize-crop-resize (shortest side from ``data.crop_scales``, a random crop whose width and
height are drawn in ``data.crop_min_max`` (capped by the image), then the multi-scale resize);
boxes are clamped and the ones left with a side < 1 px are removed
(``SanitizeBoundingBoxes``); ImageNet normalisation.
Eval: shortest side resized to ``data.test_size``, longest <= ``data.max_size``.

Output: image float [3, H, W] normalised; ``target["boxes"]`` plain float [n, 4] normalised
cxcywh relative to (H, W); ``target["size"]`` = (H, W); other keys pass through.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .images import IMAGENET_MEAN, IMAGENET_STD


class RandomSizeCrop(v2.Transform):
    """Crop of random size: width uniform in [min_size, min(w, max_size)], height likewise,
    at a uniform position (DETR's RandomSizeCrop). The crop itself is ``TF.crop``."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs):
        h, w = v2.query_size(flat_inputs)
        cw = int(torch.randint(min(self.min_size, w), min(w, self.max_size) + 1, ()))
        ch = int(torch.randint(min(self.min_size, h), min(h, self.max_size) + 1, ()))
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return dict(top=top, left=left, height=ch, width=cw)

    def transform(self, inpt, params):
        return self._call_kernel(TF.crop, inpt, **params)


class ToNormalizedCxcywh(v2.Transform):
    """Last step: boxes -> plain tensor [n, 4] cxcywh normalised by the image size, and
    ``target['size']``. Runs on the (image, target) pair as a whole."""

    def forward(self, image, target):
        h, w = image.shape[-2:]
        boxes = target["boxes"]
        if isinstance(boxes, tv_tensors.BoundingBoxes):
            boxes = TF.convert_bounding_box_format(boxes, new_format="CXCYWH")
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        target = dict(target)
        target["boxes"] = boxes.as_subclass(torch.Tensor).float().reshape(-1, 4) / scale
        target["size"] = torch.tensor([h, w])
        return image.as_subclass(torch.Tensor), target


class _Pair(v2.Transform):
    """Applies a v2 transform to (image, target) and then the final box conversion."""

    def __init__(self, body: v2.Transform):
        super().__init__()
        self.body = body
        self.final = ToNormalizedCxcywh()

    def forward(self, image, target):
        if not isinstance(image, torch.Tensor):
            image = TF.pil_to_tensor(image)
        image = tv_tensors.Image(image)
        image, target = self.body(image, target)
        return self.final(image, target)


def detection_transforms(data_cfg, train: bool) -> v2.Transform:
    """(image, target) -> (image [3,H,W] normalised, target with cxcywh normalised boxes)."""
    scales = list(data_cfg.scales)
    finish = [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    if not train:
        resize = v2.Resize(data_cfg.test_size, max_size=data_cfg.max_size)
        return _Pair(v2.Compose([resize, *finish]))
    lo, hi = data_cfg.crop_min_max
    multiscale = v2.RandomShortestSize(min_size=scales, max_size=data_cfg.max_size)
    crop = v2.Compose(
        [
            v2.RandomShortestSize(min_size=list(data_cfg.crop_scales)),
            RandomSizeCrop(lo, hi),
            v2.RandomShortestSize(min_size=scales, max_size=data_cfg.max_size),
        ]
    )
    body = v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomChoice([multiscale, crop], p=[0.5, 0.5]),
            *finish,
        ]
    )
    return _Pair(body)


def to_target_boxes(boxes_xyxy: torch.Tensor, h: int, w: int) -> tv_tensors.BoundingBoxes:
    """Pixel xyxy boxes [n, 4] -> the tv_tensors input the transforms expect."""
    return tv_tensors.BoundingBoxes(
        boxes_xyxy.float().reshape(-1, 4), format="XYXY", canvas_size=(h, w)
    )


def detection_transforms_default() -> v2.Transform:
    """No augmentation and no resize: normalisation and the box conversion only."""
    return _Pair(
        v2.Compose(
            [
                v2.ClampBoundingBoxes(),
                v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
    )
