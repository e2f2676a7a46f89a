"""Detection data: transforms keep boxes on their pixels, VOC and COCO readers, errors."""

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

from updetr_lite.config import get_config
from updetr_lite.data.build import DataSettingError, build_detection_datasets
from updetr_lite.data.coco import AnnotationError, CocoDetection
from updetr_lite.data.collate import collate_detection
from updetr_lite.data.images import IMAGENET_MEAN, IMAGENET_STD
from updetr_lite.data.transforms import detection_transforms, to_target_boxes
from updetr_lite.data.voc import VOC_CLASSES, VOCDetection, VOCFormatError

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _data_cfg():
    return get_config("lite").data  # scales 96..128, crops 80..128: every branch is exercised


# ----------------------------------------------------------------------------- transforms


def test_training_transforms_keep_boxes_on_their_pixels():
    tf = detection_transforms(_data_cfg(), train=True)
    h, w = 120, 170
    rng = np.random.default_rng(0)
    sizes, lost = set(), 0
    for seed in range(60):
        img = torch.zeros(3, h, w, dtype=torch.uint8)
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 30))
        x1, y1 = x0 + int(rng.integers(10, 40)), y0 + int(rng.integers(8, 30))
        img[0, y0:y1, x0:x1] = 255  # a solid red box on black
        target = {
            "boxes": to_target_boxes(torch.tensor([[x0, y0, x1, y1]]), h, w),
            "labels": torch.tensor([7]),
        }
        torch.manual_seed(seed)
        out, t = tf(img, target)
        hh, ww = out.shape[-2:]
        sizes.add((hh, ww))
        assert t["size"].tolist() == [hh, ww]
        red = (out * STD + MEAN)[0] > 0.5  # un-normalise: where the red box is now
        if len(t["boxes"]) == 0:
            lost += 1
            assert red.sum() <= 2 * max(hh, ww)  # at most a sliver was left: dropped rightly
            continue
        assert t["labels"].tolist() == [7]
        bx0, by0, bx1, by1 = (
            box_convert(t["boxes"], "cxcywh", "xyxy")[0] * torch.tensor([ww, hh, ww, hh])
        ).tolist()
        ys, xs = torch.nonzero(red, as_tuple=True)
        # the red pixels' extent and the box agree within the resampling blur (~1.5 px)
        assert abs(xs.min() - bx0) <= 1.5 and abs(xs.max() + 1 - bx1) <= 1.5, seed
        assert abs(ys.min() - by0) <= 1.5 and abs(ys.max() + 1 - by1) <= 1.5, seed
    assert len(sizes) > 5 and lost < 20  # many scales/crops seen, most boxes kept


def test_training_transforms_flip_half_the_time():
    """A red box at the left edge ends up on the right in about half of the samples (DETR's
    horizontal flip, p = 0.5); crops and rescales alone never move it across."""
    tf = detection_transforms(_data_cfg(), train=True)
    h, w = 120, 170
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    img[0, 40:80, 0:30] = 255
    flipped = 0
    for seed in range(60):
        target = {"boxes": to_target_boxes(torch.tensor([[0, 40, 30, 80]]), h, w),
                  "labels": torch.tensor([7])}  # fmt: skip
        torch.manual_seed(seed)
        out, t = tf(img, target)
        if len(t["boxes"]):
            cx = t["boxes"][0, 0].item()
            assert cx < 0.35 or cx > 0.65, cx  # at one edge or the other
            flipped += cx > 0.5
    assert 15 <= flipped <= 45, flipped


def test_random_size_crop_position_uniform_on_each_side():
    """DETR's RandomSizeCrop on a wide image (40 x 200): the offsets are uniform over each
    side's own slack (left over w - cw, top over h - ch)."""
    from torchvision import tv_tensors

    from updetr_lite.data.transforms import RandomSizeCrop

    crop = RandomSizeCrop(20, 60)
    h, w = 40, 200
    image = [tv_tensors.Image(torch.zeros(3, h, w))]
    torch.manual_seed(0)
    left, top = [], []
    for _ in range(2000):
        p = crop.make_params(image)
        assert 20 <= p["width"] <= 60 and 20 <= p["height"] <= 40
        assert 0 <= p["left"] <= w - p["width"] and 0 <= p["top"] <= h - p["height"]
        left.append(p["left"] / (w - p["width"]))
        if p["height"] < h:
            top.append(p["top"] / (h - p["height"]))
    for frac in (left, top):
        assert abs(np.mean(frac) - 0.5) < 0.05 and max(frac) > 0.9, np.mean(frac)


def test_eval_transform_resizes_shortest_side_and_keeps_boxes():
    d = _data_cfg()
    tf = detection_transforms(d, train=False)
    img = torch.zeros(3, 100, 150, dtype=torch.uint8)
    boxes = torch.tensor([[15.0, 10, 75, 60], [0, 0, 150, 100]])
    out, t = tf(img, {"boxes": to_target_boxes(boxes, 100, 150), "labels": torch.tensor([1, 2])})
    assert min(out.shape[-2:]) == d.test_size or max(out.shape[-2:]) == d.max_size
    assert max(out.shape[-2:]) <= d.max_size
    expect = box_convert(boxes / torch.tensor([150, 100, 150, 100]), "xyxy", "cxcywh")
    assert torch.allclose(t["boxes"], expect, atol=1e-5)


# ----------------------------------------------------------------------------- VOC


def _voc_xml(w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (
        f"<annotation><filename>x.jpg</filename><size><width>{w}</width><height>{h}"
        f"</height><depth>3</depth></size>{objs}</annotation>"
    )


def _write_voc(root, year, split, items):
    base = root / f"VOC{year}"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text(
        "".join(f"{name}\n" for name, *_ in items)
    )
    for name, w, h, objects in items:
        (base / "Annotations" / f"{name}.xml").write_text(_voc_xml(w, h, objects))
        Image.new("RGB", (w, h), (90, 120, 30)).save(base / "JPEGImages" / f"{name}.jpg")


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOCdevkit"
    _write_voc(
        root,
        "2007",
        "trainval",
        [
            ("000005", 100, 80, [("dog", (11, 21, 60, 70), False), ("cat", (61, 1, 90, 40), True)]),
            ("000007", 90, 60, []),  # no objects: a negative
        ],
    )
    _write_voc(
        root,
        "2012",
        "trainval",
        [
            (
                "2012_000001",
                120,
                100,
                [
                    ("tvmonitor", (1, 1, 120, 100), False),
                    ("person", (100, 50, 140, 90), False),  # clipped at 120
                    ("bird", (130, 10, 150, 20), False),
                ],
            ),  # wholly outside
        ],
    )
    _write_voc(
        root,
        "2007",
        "test",
        [
            (
                "000001",
                100,
                100,
                [("car", (11, 11, 50, 50), False), ("bus", (61, 61, 90, 90), True)],
            ),
        ],
    )
    return root


def test_voc_reader_boxes_labels_difficult_negatives(voc):
    ds = VOCDetection(voc)  # trainval 2007 + 2012
    assert len(ds) == 3
    _, t = ds[0]
    # 1-based inclusive -> 0-based xyxy: (xmin - 1, ymin - 1, xmax, ymax); difficult kept
    expect = torch.tensor([[10.0, 20, 60, 70], [60, 0, 90, 40]]) / torch.tensor([100, 80, 100, 80])
    assert torch.allclose(t["boxes"], box_convert(expect, "xyxy", "cxcywh"), atol=1e-6)
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert t["labels"].tolist() == [12, 8] and t["orig_size"].tolist() == [80, 100]
    _, t = ds[1]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    _, t = ds[2]
    assert t["labels"].tolist() == [20, 15]  # the bird outside the image is dropped
    assert torch.allclose(
        t["boxes"][1],
        box_convert(
            torch.tensor([99.0, 49, 120, 90]) / torch.tensor([120, 100, 120, 100]), "xyxy", "cxcywh"
        ),
    )
    assert ds.box_report == {"clipped": 2, "degenerate": 1}
    assert [t["image_id"].item() for _, t in (ds[i] for i in range(3))] == [1, 2, 3]
    no_diff = VOCDetection(voc, train_difficult=False)
    assert no_diff[0][1]["labels"].tolist() == [12]
    cats = ds.coco.loadCats(ds.coco.getCatIds())
    assert [c["name"] for c in cats] == list(VOC_CLASSES) and ds.coco.getCatIds() == list(
        range(1, 21)
    )


def _ap(coco_gt, dets):
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats[0]


def test_voc_difficult_objects_are_ignored_in_evaluation(voc):
    ds = VOCDetection(voc, splits=(("2007", "test"),))
    anns = ds.coco.loadAnns(ds.coco.getAnnIds())
    assert [(a["category_id"], a["iscrowd"]) for a in anns] == [(7, 0), (6, 1)]
    car = {"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9}
    bus = {"image_id": 1, "category_id": 6, "bbox": [60, 60, 30, 30], "score": 0.8}
    off = {"image_id": 1, "category_id": 7, "bbox": [70, 0, 25, 25], "score": 0.95}
    assert _ap(ds.coco, [car]) == pytest.approx(1.0)  # the missed difficult bus is no miss
    assert _ap(ds.coco, [car, bus]) == pytest.approx(1.0)  # finding it is no false positive
    assert _ap(ds.coco, [car, off]) < 0.99  # while a real false positive does count


def test_voc_errors_name_the_file(voc, tmp_path):
    bad = voc / "VOC2007" / "Annotations" / "000007.xml"
    bad.write_text("<annotation><size><width>10</width>")
    with pytest.raises(VOCFormatError, match="000007.xml"):
        VOCDetection(voc)
    bad.write_text(_voc_xml(90, 60, [("unicorn", (1, 1, 5, 5), False)]))
    with pytest.raises(VOCFormatError, match="000007.xml.*unicorn"):
        VOCDetection(voc)
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VOCDetection(voc, splits=(("2007", "val"),))
    with pytest.raises(FileNotFoundError, match="VOC2010"):
        VOCDetection(voc, splits=(("2010", "trainval"),))
    with pytest.raises(FileNotFoundError, match="missing_devkit"):
        VOCDetection(tmp_path / "missing_devkit")


# ----------------------------------------------------------------------------- COCO


def _write_coco(root, rng):
    (root / "imgs").mkdir(parents=True)
    images, anns, truth = [], [], {}
    for img_id, (w, h) in zip((3, 10, 42), ((64, 48), (50, 70), (40, 40))):
        Image.new("RGB", (w, h)).save(root / "imgs" / f"{img_id}.png")
        images.append({"id": img_id, "file_name": f"{img_id}.png", "width": w, "height": h})
        boxes, labels = [], []
        for _ in range(0 if img_id == 42 else int(rng.integers(1, 4))):
            x, y = float(rng.uniform(0, w - 12)), float(rng.uniform(0, h - 12))
            bw, bh = float(rng.uniform(4, w - x)), float(rng.uniform(4, h - y))
            cat = int(rng.choice([1, 5, 90]))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
            boxes.append([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
            labels.append(cat)
        truth[img_id] = (boxes, labels)
    # a crowd region: kept for evaluation, left out of the training targets
    anns.append(
        {
            "id": 99,
            "image_id": 3,
            "category_id": 1,
            "bbox": [0, 0, 10, 10],
            "area": 100,
            "iscrowd": 1,
        }
    )
    cats = [{"id": c, "name": str(c)} for c in (1, 5, 90)]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_file, truth


def test_coco_reader_round_trip(tmp_path):
    ann_file, truth = _write_coco(tmp_path, np.random.default_rng(3))
    ds = CocoDetection(tmp_path / "imgs", ann_file)
    assert len(ds) == 3 and len(ds.coco.getAnnIds()) == sum(len(b) for b, _ in truth.values()) + 1
    for i, img_id in enumerate(sorted(truth)):
        img, t = ds[i]
        boxes, labels = truth[img_id]
        assert t["image_id"].item() == img_id and t["size"].tolist() == list(img.shape[-2:])
        assert torch.allclose(t["boxes"], torch.tensor(boxes).reshape(-1, 4), atol=1e-5)
        assert t["labels"].tolist() == labels


def test_coco_clip_and_degenerate_counted(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / "a.png")
    d = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [-5, 2, 10, 10], "iscrowd": 0},
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(d))
    ds = CocoDetection(tmp_path / "imgs", tmp_path / "a.json")
    assert ds.box_report == {"clipped": 2, "degenerate": 1}
    _, t = ds[0]
    expect = torch.tensor([[30.0, 20, 40, 30], [0, 2, 5, 12]]) / torch.tensor([40, 30, 40, 30])
    assert torch.allclose(t["boxes"], box_convert(expect, "xyxy", "cxcywh"), atol=1e-6)


def test_coco_errors_name_the_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(AnnotationError, match="broken.json"):
        CocoDetection(tmp_path / "imgs", tmp_path / "broken.json")
    (tmp_path / "notcoco.json").write_text('{"images": []}')
    with pytest.raises(AnnotationError, match="notcoco.json.*annotations"):
        CocoDetection(tmp_path / "imgs", tmp_path / "notcoco.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        CocoDetection(tmp_path / "imgs", tmp_path / "absent.json")


def test_collate_detection_and_build_from_config(voc, tmp_path):
    cfg = get_config("smoke", ["data.detection=voc", f"data.detection_root={str(voc)!r}"])
    with pytest.raises(DataSettingError, match="num_classes"):
        build_detection_datasets(cfg)  # smoke has 6 classes, VOC needs 21
    cfg.model = dataclasses.replace(cfg.model, num_classes=21)
    train, val = build_detection_datasets(cfg)
    assert len(train) == 3 and len(val) == 1 and val.coco.getImgIds() == [1]
    images, mask, targets = collate_detection([train[i] for i in range(3)])
    for i, t in enumerate(targets):
        h, w = t["size"].tolist()
        assert not mask[i, :h, :w].any() and mask[i].sum() == mask.shape[1] * mask.shape[2] - h * w
    cfg.data = dataclasses.replace(cfg.data, detection_root="")
    with pytest.raises(DataSettingError, match="detection_root"):
        build_detection_datasets(cfg)
