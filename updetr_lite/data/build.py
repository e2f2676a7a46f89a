"""Datasets from a Config: the pretext images and the detection train/val sets.

``data.pretext_root``: ``'embedded'`` (the unlabeled split of the embedded set) or a folder
tree of images. ``data.detection``: ``'embedded'``; ``'coco'`` (``data.detection_root`` holds
``train2017/``, ``val2017/`` and ``annotations/instances_{train,val}2017.json``; any
COCO-format dataset laid out the same way works); ``'voc'`` (``data.detection_root`` is the
VOCdevkit folder: trainval 2007+2012 for training, test 2007 for evaluation).
"""

from __future__ import annotations

from pathlib import Path

from .coco import CocoDetection
from .embedded import build_embedded
from .pretext import PretextDataset
from .transforms import detection_transforms
from .voc import TEST_SPLITS, TRAIN_SPLITS, VOCDetection


class DataSettingError(ValueError):
    """A data setting that cannot work; the message names the setting."""


def build_pretext_dataset(cfg, augment_patches: bool = True) -> PretextDataset:
    root = cfg.data.pretext_root
    if root == "embedded":
        root = build_embedded(cfg.data).unlabeled
    elif not root:
        raise DataSettingError(
            "data.pretext_root is empty: set it to a folder of images or to 'embedded'"
        )
    return PretextDataset(root, cfg, augment_patches=augment_patches)


def build_detection_datasets(cfg):
    """(train, val) detection datasets with DETR's train and eval transforms."""
    d = cfg.data
    train_tf, val_tf = detection_transforms(d, train=True), detection_transforms(d, train=False)
    if d.detection == "embedded":
        p = build_embedded(d)
        train = CocoDetection(p.train_images, p.train_json, train_tf)
        val = CocoDetection(p.val_images, p.val_json, val_tf)
    elif d.detection in ("coco", "voc"):
        if not d.detection_root:
            raise DataSettingError(
                f"data.detection={d.detection} needs data.detection_root (the dataset folder)"
            )
        root = Path(d.detection_root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.detection_root: folder not found: {root}")
        if d.detection == "coco":
            ann = root / "annotations"
            train = CocoDetection(root / "train2017", ann / "instances_train2017.json", train_tf)
            val = CocoDetection(root / "val2017", ann / "instances_val2017.json", val_tf)
        else:
            train = VOCDetection(root, TRAIN_SPLITS, train_tf)
            val = VOCDetection(root, TEST_SPLITS, val_tf)
    else:
        raise DataSettingError(
            f"data.detection must be 'embedded', 'coco' or 'voc', not {d.detection!r}"
        )
    top = max(train.coco.getCatIds() + val.coco.getCatIds(), default=0)
    if top >= cfg.model.num_classes:
        raise DataSettingError(
            f"model.num_classes={cfg.model.num_classes} is too small for category id {top} "
            f"of the {d.detection} data: set model.num_classes={top + 1}"
        )
    return train, val
