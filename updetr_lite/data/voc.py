"""PASCAL VOC read directly from the standard VOCdevkit layout (no conversion step).

``VOCDetection(root, splits, transforms)``: ``root`` is the ``VOCdevkit`` folder holding
``VOC2007/`` and ``VOC2012/``, each with ``ImageSets/Main/{split}.txt``, ``Annotations/*.xml``
and ``JPEGImages/*.jpg``. The paper's protocol is ``splits=(("2007", "trainval"), ("2012",
"trainval"))`` for training and ``(("2007", "test"),)`` for evaluation.

Labels are category ids 1..20 in the standard VOC class order (``VOC_CLASSES``); image ids
are 1..n in split-file order. VOC pixel coordinates are 1-based and inclusive, so a box
becomes (xmin - 1, ymin - 1, xmax, ymax) in 0-based xyxy pixels. Boxes outside the image are
clipped and counted, degenerate ones dropped and counted (``box_report``).

``difficult`` objects: they are *trained on* (as the common DETR / VOC-to-COCO conversions
do) and in the ground truth ``.coco`` (a pycocotools COCO built in memory) they are marked
``iscrowd=1``. COCOeval then ignores them: an undetected difficult object is not a miss and a
detection on it is not a false positive, which is VOC's own "ignore difficult" rule. (For
crowd ground truth COCOeval measures overlap as intersection over the detection's area, a
small difference from VOC's IoU on these ignored objects.) ``train_difficult=False`` drops
them from the training targets instead.

A missing root, year folder or split file is a ``FileNotFoundError`` naming the path; a
malformed XML file is a ``VOCFormatError`` naming the file and the reason; split files that
list no image are a ``VOCFormatError`` naming them. Images with an aspect ratio over
``MAX_ASPECT`` are left out and counted; missing, unreadable or wrongly sized JPEGs are
skipped and counted while reading, as in ``coco.py``.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from .coco import AnnotationError, DetectionData, clean_boxes, coco_from_dict
from .skips import MAX_ASPECT, extreme_aspect

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
TRAIN_SPLITS = (("2007", "trainval"), ("2012", "trainval"))
TEST_SPLITS = (("2007", "test"),)


class VOCFormatError(AnnotationError):
    """A malformed VOC annotation file."""


def _text(node, tag: str, xml_file: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise VOCFormatError(f"malformed VOC annotation {xml_file}: missing <{tag}>")
    return child.text.strip()


def parse_voc_xml(xml_file: Path) -> dict:
    """{'width', 'height', 'objects': [(class_name, [xmin, ymin, xmax, ymax] 1-based, difficult)]}."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise VOCFormatError(f"malformed VOC annotation {xml_file}: {e}") from e
    size = root.find("size")
    if size is None:
        raise VOCFormatError(f"malformed VOC annotation {xml_file}: missing <size>")
    try:
        w, h = (
            int(float(_text(size, "width", xml_file))),
            int(float(_text(size, "height", xml_file))),
        )
        objects = []
        for obj in root.findall("object"):
            name = _text(obj, "name", xml_file)
            if name not in VOC_CLASSES:
                raise VOCFormatError(f"malformed VOC annotation {xml_file}: unknown class {name!r}")
            bb = obj.find("bndbox")
            if bb is None:
                raise VOCFormatError(
                    f"malformed VOC annotation {xml_file}: object without <bndbox>"
                )
            box = [float(_text(bb, t, xml_file)) for t in ("xmin", "ymin", "xmax", "ymax")]
            diff = obj.find("difficult")
            difficult = diff is not None and (diff.text or "0").strip() not in ("", "0")
            objects.append((name, box, difficult))
    except ValueError as e:
        if isinstance(e, VOCFormatError):
            raise
        raise VOCFormatError(f"malformed VOC annotation {xml_file}: {e}") from e
    if w <= 0 or h <= 0:
        raise VOCFormatError(f"malformed VOC annotation {xml_file}: image size {w}x{h}")
    return {"width": w, "height": h, "objects": objects}


class VOCDetection(DetectionData):
    """(image, target) per image of the given VOC splits; see the module doc."""

    def __init__(self, root, splits=TRAIN_SPLITS, transforms=None, train_difficult: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"VOC root (the VOCdevkit folder) not found: {self.root}")
        self.transforms = transforms
        self.splits = tuple(tuple(s) for s in splits)
        self.files: list[Path] = []  # image paths, index i -> image id i + 1
        self._targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.box_report = {"clipped": 0, "degenerate": 0}
        self.excluded = {"extreme_aspect": 0}
        self._sizes: list[tuple[int, int]] = []
        self.annotation_files: list[Path] = []  # split files and XML files read
        images, annotations, split_files = [], [], []
        for year, split in self.splits:
            base = self.root / f"VOC{year}"
            if not base.is_dir():
                raise FileNotFoundError(f"VOC year folder not found: {base}")
            split_file = base / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                raise FileNotFoundError(f"VOC split file not found: {split_file}")
            split_files.append(str(split_file))
            self.annotation_files.append(split_file)
            names = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
            for name in names:
                xml_file = base / "Annotations" / f"{name}.xml"
                if not xml_file.is_file():
                    raise FileNotFoundError(
                        f"VOC annotation not found: {xml_file} (in {split_file})"
                    )
                ann = parse_voc_xml(xml_file)
                self.annotation_files.append(xml_file)
                img_id = len(self.files) + 1
                h, w = ann["height"], ann["width"]
                if extreme_aspect(h, w):
                    self.excluded["extreme_aspect"] += 1
                    continue
                self.files.append(base / "JPEGImages" / f"{name}.jpg")
                self._sizes.append((h, w))
                images.append(
                    {
                        "id": img_id,
                        "file_name": f"VOC{year}/JPEGImages/{name}.jpg",
                        "height": h,
                        "width": w,
                    }
                )
                objs = ann["objects"]
                xyxy = torch.tensor([o[1] for o in objs], dtype=torch.float32).reshape(-1, 4)
                xyxy[:, :2] -= 1  # 1-based inclusive -> 0-based xyxy
                boxes, keep, n_clip, n_drop = clean_boxes(xyxy, h, w)
                self.box_report["clipped"] += n_clip
                self.box_report["degenerate"] += n_drop
                kept = [o for o, k in zip(objs, keep.tolist()) if k]
                labels = torch.tensor(
                    [VOC_CLASSES.index(o[0]) + 1 for o in kept], dtype=torch.int64
                )
                difficult = torch.tensor([o[2] for o in kept], dtype=torch.bool)
                self._targets.append((boxes, labels, difficult))
                for (x0, y0, x1, y1), lab, dif in zip(
                    boxes.tolist(), labels.tolist(), difficult.tolist()
                ):
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": img_id,
                            "category_id": lab,
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": (x1 - x0) * (y1 - y0),
                            "iscrowd": int(dif),
                        }
                    )
        if not self.files:
            raise VOCFormatError(f"VOC split files list no usable image: {', '.join(split_files)}")
        self.where = f"VOC {self.root} {' '.join('-'.join(s) for s in self.splits)}"
        self._init_skips(len(self.files))
        if self.excluded["extreme_aspect"]:
            log.warning(
                "%s: %d images with an aspect ratio over %d left out",
                self.where,
                self.excluded["extreme_aspect"],
                MAX_ASPECT,
            )
        self.train_difficult = train_difficult
        categories = [
            {"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(VOC_CLASSES)
        ]
        self.coco = coco_from_dict(
            {"images": images, "annotations": annotations, "categories": categories}
        )
        if any(self.box_report.values()):
            log.warning(
                "VOC %s %s: %d boxes clipped to their image, %d degenerate boxes dropped",
                self.root,
                self.splits,
                self.box_report["clipped"],
                self.box_report["degenerate"],
            )

    def __len__(self) -> int:
        return len(self.files)

    def source_files(self) -> list[Path]:
        """Split, XML and image files (what a feature cache depends on)."""
        return self.annotation_files + self.files

    def _entry(self, i: int):
        boxes, labels, difficult = self._targets[i]
        if not self.train_difficult:
            boxes, labels = boxes[~difficult], labels[~difficult]
        return self.files[i], boxes, labels, i + 1, self._sizes[i]
