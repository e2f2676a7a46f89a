"""evaluate() gives the numbers of a direct pycocotools run on the same detections."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from updetr_lite.engine.evaluate import METRICS, evaluate

NUM_CLASSES = 4  # category ids 1..3 used, id 0 unused (as VOC / embedded)
N = 6  # queries


def _coco_gt(rng, sizes):
    images, anns = [], []
    for i, (h, w) in enumerate(sizes):
        images.append({"id": 100 + i, "height": h, "width": w, "file_name": f"{i}.png"})
        for _ in range(rng.integers(1, 4)):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class TableModel(torch.nn.Module):
    """Outputs fixed predictions per image; the 'images' are just the row indices."""

    def __init__(self, logits, boxes):
        super().__init__()
        self.logits, self.boxes = logits, boxes

    def forward(self, idx, mask):
        return {"pred_logits": self.logits[idx[:, 0]], "pred_boxes": self.boxes[idx[:, 0]]}


def _loader(sizes, batch):
    items = [
        (
            torch.tensor([i]),
            {"image_id": torch.tensor(100 + i), "orig_size": torch.tensor([h, w])},
        )
        for i, (h, w) in enumerate(sizes)
    ]
    out = []
    for s in range(0, len(items), batch):
        chunk = items[s : s + batch]
        idx = torch.stack([c[0] for c in chunk])
        out.append((idx, torch.zeros(len(chunk), 1, 1, dtype=torch.bool), [c[1] for c in chunk]))
    return out


def _direct(coco, logits, boxes, sizes, tmp_path):
    """Independent conversion (numpy) + pycocotools on a results file."""
    results = []
    lg = logits.double().numpy()
    for i, (h, w) in enumerate(sizes):
        p = np.exp(lg[i] - lg[i].max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        for q in range(N):
            c = int(np.argmax(p[q, :-1]))
            cx, cy, bw, bh = boxes[i, q].double().tolist()
            results.append(
                {
                    "image_id": 100 + i,
                    "category_id": c,
                    "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                    "score": float(p[q, c]),
                }
            )
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(str(path))
        ev = COCOeval(coco, dt, "bbox")
        ev.params.imgIds = [100 + i for i in range(len(sizes))]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:6]


def test_evaluate_equals_direct_pycocotools(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(60, 80), (100, 50), (64, 64), (90, 120), (40, 70)]
    coco = _coco_gt(rng, sizes)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(sizes), N, NUM_CLASSES + 1, generator=g) * 2
    logits[..., -1] += 1.0  # no-object often the arg-max: it must still be excluded
    boxes = torch.rand(len(sizes), N, 4, generator=g) * 0.5 + 0.25
    # put some predictions right on the ground truth so that AP is far from 0
    for i, (h, w) in enumerate(sizes):
        for q, ann in enumerate(coco.imgToAnns[100 + i][:N]):
            x, y, bw, bh = ann["bbox"]
            boxes[i, q] = torch.tensor([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
            if i % 2 == 0:
                logits[i, q, ann["category_id"]] = 5.0
    got = evaluate(TableModel(logits, boxes), _loader(sizes, 2), coco, "cpu")
    want = _direct(coco, logits, boxes, sizes, tmp_path)
    assert list(got) == list(METRICS)
    assert want[0] > 0.1  # a meaningful comparison, not 0 == 0
    np.testing.assert_allclose([got[k] for k in METRICS], want, atol=1e-9)


def test_perfect_detections_score_one_and_empty_is_zero():
    rng = np.random.default_rng(1)
    sizes = [(50, 70), (80, 60)]
    coco = _coco_gt(rng, sizes)
    logits = torch.full((len(sizes), N, NUM_CLASSES + 1), -10.0)
    boxes = torch.full((len(sizes), N, 4), 0.01)  # tiny stray boxes score ~0 (low prob)
    for i, (h, w) in enumerate(sizes):
        for q, ann in enumerate(coco.imgToAnns[100 + i]):
            x, y, bw, bh = ann["bbox"]
            boxes[i, q] = torch.tensor([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
            logits[i, q, ann["category_id"]] = 10.0
    got = evaluate(TableModel(logits, boxes), _loader(sizes, 3), coco)
    assert got["AP"] == pytest.approx(1.0) and got["AP50"] == pytest.approx(1.0)
    assert evaluate(TableModel(logits, boxes), [], coco) == dict.fromkeys(METRICS, 0.0)


def test_low_score_true_positives_are_kept(tmp_path):
    """DETR keeps every query as a detection: true positives scored 0.003 (the no-object class
    dominates) still rank above the strays (~5e-5) and give AP 1, as pycocotools says directly."""
    rng = np.random.default_rng(2)
    sizes = [(50, 70), (80, 60)]
    coco = _coco_gt(rng, sizes)
    logits = torch.full((len(sizes), N, NUM_CLASSES + 1), 0.0)
    logits[..., -1] = 10.0  # every query mostly no-object
    boxes = torch.full((len(sizes), N, 4), 0.01)
    for i, (h, w) in enumerate(sizes):
        for q, ann in enumerate(coco.imgToAnns[100 + i]):
            x, y, bw, bh = ann["bbox"]
            boxes[i, q] = torch.tensor([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
            logits[i, q, ann["category_id"]] = 4.2
    scores = logits.softmax(-1)[..., :-1].max(-1).values
    assert scores.max() < 0.004  # all low
    got = evaluate(TableModel(logits, boxes), _loader(sizes, 2), coco)
    want = _direct(coco, logits, boxes, sizes, tmp_path)
    assert got["AP"] == pytest.approx(1.0) and want[0] == pytest.approx(1.0)
    np.testing.assert_allclose([got[k] for k in METRICS], want, atol=1e-9)
