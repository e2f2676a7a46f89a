"""COCO-format detection data (COCO itself or any custom dataset) via pycocotools.

``CocoDetection(img_folder, ann_file, transforms)`` yields (image, target) with the
detection target of docs/interfaces.md; ``.coco`` is the pycocotools ``COCO`` ground truth
that ``engine.evaluate`` scores against. Labels are the JSON's ``category_id`` as they are
(COCO: 1..90 of 91 ids). Crowd annotations (``iscrowd=1``) are left out of the training
targets (as DETR does) but stay in ``.coco`` where COCOeval ignores them. Every image of the
JSON is used; one without objects is a negative (boxes [0, 4]).

Boxes reaching outside the image are clipped to it and counted; boxes with no width or height
after clipping are dropped and counted (``box_report``, logged once when the set is read).
A missing folder or file, malformed JSON, a JSON that is not COCO, a malformed image or
annotation entry (no id, a bbox that is not four finite numbers, ...) or a JSON without images
is one clear error naming the file. Annotations of an image id that the JSON does not list
are dropped and counted. Images whose sides differ by more than ``MAX_ASPECT`` x are left out
and counted (resized, one side would shrink to nothing). While reading (``__getitem__``) a
missing or unreadable image file, or a file whose size differs from the JSON's, is skipped
with a warning naming it, counted (``report_skips``, which the engine logs each epoch), and
the next good image is returned instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.ops import box_convert, clip_boxes_to_image

from .pretext import NoImagesError, UnreadableImageError, load_rgb
from .skips import MAX_ASPECT, SkipFlags, extreme_aspect

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
    for k in ("images", "annotations", "categories"):
        if not isinstance(d[k], list):
            raise AnnotationError(f"{ann_file}: '{k}' must be a list, not {type(d[k]).__name__}")
    if not d["images"]:
        raise AnnotationError(f"{ann_file}: no images (the 'images' list is empty)")
    return d


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_coco_entries(d: dict, ann_file) -> tuple[dict, int]:
    """AnnotationError naming the file and the entry for a malformed image, annotation or
    category; returns (the dict without annotations of unlisted images, how many those were)."""

    def bad(what: str) -> AnnotationError:
        return AnnotationError(f"{ann_file}: {what}")

    ids = set()
    for k, im in enumerate(d["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise bad(f"image entry #{k} has no integer 'id'")
        if im["id"] in ids:
            raise bad(f"image id {im['id']} is listed twice")
        ids.add(im["id"])
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise bad(f"image id {im['id']} has no 'file_name'")
        for side in ("width", "height"):
            if not _is_int(im.get(side)) or im[side] <= 0:
                raise bad(f"image id {im['id']}: '{side}' must be a positive integer")
    for k, c in enumerate(d["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise bad(f"category entry #{k} has no integer 'id'")
    kept = []
    for k, a in enumerate(d["annotations"]):
        name = f"annotation #{k}" + (
            f" (id {a['id']})" if isinstance(a, dict) and "id" in a else ""
        )
        if not isinstance(a, dict) or not _is_int(a.get("image_id")):
            raise bad(f"{name} has no integer 'image_id'")
        if not _is_int(a.get("category_id")):
            raise bad(f"{name} has no integer 'category_id'")
        box = a.get("bbox")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        ):
            raise bad(f"{name}: 'bbox' must be four finite numbers [x, y, w, h], not {box!r}")
        if a["image_id"] in ids:  # COCOeval needs iscrowd and area: the usual defaults
            kept.append({"iscrowd": 0, "area": float(box[2] * box[3])} | a)
    return {**d, "annotations": kept}, len(d["annotations"]) - len(kept)


class DetectionData(Dataset):
    """What COCO and VOC share: reading item i with counted skips of bad image files.

    Subclasses give ``_entry(i) -> (path, boxes [n, 4] pixel xyxy, labels [n], image_id,
    (h, w) from the annotations)`` and ``self.where`` (the annotation file or folder)."""

    SKIP_KINDS = ("missing", "unreadable", "size_mismatch")

    def _init_skips(self, n: int) -> None:
        self._skips = SkipFlags(n, self.SKIP_KINDS)
        self._warned: set[str] = set()

    def _skip(self, i: int, kind: str, why: str) -> None:
        self._skips.count(i, kind)
        if why not in self._warned:
            self._warned.add(why)
            log.warning("skipping an image: %s", why)

    @property
    def skipped(self) -> dict[str, int]:
        return self._skips.counts()

    def report_skips(self) -> dict:
        """The image files skipped since the last call (e.g. one epoch), logged; then reset."""
        report = self._skips.take(lambda i: self._entry(i)[0])
        if report:
            counts = ", ".join(f"{report[k]} {k}" for k in self.SKIP_KINDS if report[k])
            log.warning(
                "%s: skipped %s image files (%s)", self.where, counts, ", ".join(report["files"])
            )
        return report

    def __getitem__(self, index: int):
        n = len(self)
        for k in range(n):
            i = (index + k) % n
            path, boxes, labels, image_id, (h, w) = self._entry(i)
            if not path.is_file():
                self._skip(i, "missing", f"image file of {self.where} not found: {path}")
                continue
            try:
                image = load_rgb(path)
            except UnreadableImageError as e:
                self._skip(i, "unreadable", str(e))
                continue
            if (image.height, image.width) != (h, w):  # boxes would be clipped to the wrong size
                self._skip(
                    i,
                    "size_mismatch",
                    f"{path} is {image.width}x{image.height} px but {self.where} says {w}x{h}",
                )
                continue
            return make_sample(image, boxes, labels, image_id, self.transforms, path)
        raise NoImagesError(f"{self.where}: none of its {n} image files could be read")


class CocoDetection(DetectionData):
    """(image, target) per image of a COCO-format JSON; see the module doc."""

    def __init__(self, img_folder, ann_file, transforms=None):
        self.img_folder = Path(img_folder)
        if not self.img_folder.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_folder}")
        self.ann_file = self.where = Path(ann_file)
        d, unknown = check_coco_entries(read_coco_json(ann_file), self.ann_file)
        self.coco = coco_from_dict(d)
        self.transforms = transforms
        self.box_report = {"clipped": 0, "degenerate": 0}
        wide = {i for i, im in self.coco.imgs.items() if extreme_aspect(im["height"], im["width"])}
        self.ids = sorted(set(self.coco.imgs) - wide)
        self.excluded = {"extreme_aspect": len(wide), "unknown_image_annotations": unknown}
        if not self.ids:
            raise AnnotationError(
                f"{self.ann_file}: no usable image (all {len(wide)} have an "
                f"aspect ratio over {MAX_ASPECT})"
            )
        self._targets = {}
        for img_id in self.ids:
            info = self.coco.imgs[img_id]
            h, w = info["height"], info["width"]
            anns = [a for a in self.coco.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)]
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
            boxes, keep, n_clip, n_drop = clean_boxes(box_convert(xywh, "xywh", "xyxy"), h, w)
            self.box_report["clipped"] += n_clip
            self.box_report["degenerate"] += n_drop
            self._targets[img_id] = (boxes, labels[keep], h, w)
        self._init_skips(len(self.ids))
        if any(self.box_report.values()) or any(self.excluded.values()):
            log.warning(
                "%s: %d boxes clipped to their image, %d degenerate boxes dropped, %d "
                "annotations of unlisted image ids dropped, %d images with an aspect ratio "
                "over %d left out",
                self.ann_file,
                self.box_report["clipped"],
                self.box_report["degenerate"],
                unknown,
                len(wide),
                MAX_ASPECT,
            )

    def __len__(self) -> int:
        return len(self.ids)

    def source_files(self) -> list[Path]:
        """The annotation file and every image file (what a feature cache depends on)."""
        return [self.ann_file] + [self.image_path(i) for i in range(len(self))]

    def image_path(self, index: int) -> Path:
        return self.img_folder / self.coco.imgs[self.ids[index]]["file_name"]

    def _entry(self, i: int):
        img_id = self.ids[i]
        boxes, labels, h, w = self._targets[img_id]
        return self.image_path(i), boxes, labels, img_id, (h, w)


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
