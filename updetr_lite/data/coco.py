"""COCO-format detection data (COCO itself or any custom dataset) via pycocotools.

``CocoDetection(img_folder, ann_file, transforms)`` yields (image, target) with the
detection target of docs/interfaces.md; ``.coco`` is the pycocotools ``COCO`` ground truth
that ``engine.evaluate`` scores against. Labels are the JSON's ``category_id`` as they are
(COCO: 1..90 of 91 ids). Crowd annotations (``iscrowd=1``) are left out of the training
targets (as DETR does) but stay in ``.coco`` where COCOeval ignores them. Every image of the
JSON is used; one without objects is a negative (boxes [0, 4]).

Boxes reaching outside the image are clipped to it and counted; boxes with no width or height
after clipping are dropped and counted (``box_report``, logged once when the set is read).
A missing folder or file, malformed JSON or a JSON that is not COCO is one clear error.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.ops import box_convert, clip_boxes_to_image

from .pretext import load_rgb

log = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the reason."""


def clean_boxes(xyxy: torch.Tensor, h: int, w: int):
    """Clip pixel xyxy boxes [n, 4] to an (h, w) image and drop degenerate ones.

    Returns (boxes [k, 4], keep [n] bool, number clipped, number dropped)."""
    xyxy = xyxy.float().reshape(-1, 4)
    clipped = clip_boxes_to_image(xyxy, (h, w))
    n_clipped = int((clipped != xyxy).any(dim=1).sum())
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[keep], keep, n_clipped, int((~keep).sum())


def coco_from_dict(d: dict):
    """A pycocotools ``COCO`` built in memory from a COCO-format dict (quietly)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_coco_json(ann_file) -> dict:
    """The JSON as a dict; ``FileNotFoundError`` / ``AnnotationError`` name the file."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    try:
        d = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"malformed JSON in {ann_file}: {e}") from e
    if not isinstance(d, dict):
        raise AnnotationError(
            f"{ann_file}: not a COCO annotation file (top level is not an object)"
        )
    missing = [k for k in ("images", "annotations", "categories") if k not in d]
    if missing:
        raise AnnotationError(f"{ann_file}: not a COCO annotation file (no {', '.join(missing)})")
    return d


class CocoDetection(Dataset):
    """(image, target) per image of a COCO-format JSON; see the module doc."""

    def __init__(self, img_folder, ann_file, transforms=None):
        self.img_folder = Path(img_folder)
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_folder}")
        self.ann_file = Path(ann_file)
        d = read_coco_json(ann_file)
        self.coco = coco_from_dict(d)
        self.transforms = transforms
        self.ids = sorted(self.coco.imgs)
        self.box_report = {"clipped": 0, "degenerate": 0}
        self._targets = {}
        for img_id in self.ids:
            info = self.coco.imgs[img_id]
            try:
                h, w = int(info["height"]), int(info["width"])
                anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
                xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
                labels = torch.tensor([int(a["category_id"]) for a in anns], dtype=torch.int64)
            except (KeyError, TypeError, ValueError) as e:
                raise AnnotationError(
                    f"{self.ann_file}: bad image or annotation entry for image id {img_id}: {e!r}"
                ) from e
            boxes, keep, n_clip, n_drop = clean_boxes(box_convert(xywh, "xywh", "xyxy"), h, w)
            self.box_report["clipped"] += n_clip
            self.box_report["degenerate"] += n_drop
            self._targets[img_id] = (boxes, labels[keep], h, w)
        if any(self.box_report.values()):
            log.warning(
                "%s: %d boxes clipped to their image, %d degenerate boxes dropped",
                self.ann_file,
                self.box_report["clipped"],
                self.box_report["degenerate"],
            )

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.img_folder / self.coco.imgs[self.ids[index]]["file_name"]

    def __getitem__(self, index: int):
        img_id = self.ids[index]
        boxes, labels, h, w = self._targets[img_id]
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"image of {self.ann_file} not found: {path}")
        image = load_rgb(path)  # UnreadableImageError names the file
        return make_sample(image, boxes, labels, img_id, self.transforms, path)


def make_sample(image, boxes, labels, image_id: int, transforms, path):
    """PIL image + pixel xyxy boxes -> (image, target) through the transforms."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    from .transforms import detection_transforms_default, to_target_boxes

    img = tv_tensors.Image(TF.pil_to_tensor(image))
    h, w = img.shape[-2:]
    target = {
        "boxes": to_target_boxes(boxes, h, w),
        "labels": labels.clone(),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "orig_size": torch.tensor([h, w]),
    }
    return (transforms or detection_transforms_default())(img, target)
