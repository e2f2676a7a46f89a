"""Embedded data: byte-identical per seed, class/size/occlusion statistics, build marker."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from updetr_lite.config import get_config
from updetr_lite.data import embedded as E
from updetr_lite.data.build import build_detection_datasets, build_pretext_dataset
from updetr_lite.data.photos import load_photos


def _data(tmp, **kw):
    d = get_config("smoke").data
    base = dict(
        cache_dir=str(tmp),
        embedded_image_size=64,
        embedded_train=10,
        embedded_val=4,
        embedded_unlabeled=6,
        embedded_seed=0,
    )
    return dataclasses.replace(d, **{**base, **kw})


def _hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_byte_identical_other_seed_different(tmp_path):
    a = E.build_embedded(_data(tmp_path / "a"), workers=1)
    b = E.build_embedded(_data(tmp_path / "b"), workers=2)  # worker count must not matter
    c = E.build_embedded(_data(tmp_path / "c", embedded_seed=1), workers=1)
    ha, hb, hc = _hashes(a.root), _hashes(b.root), _hashes(c.root)
    assert len(ha) == 10 + 4 + 6 + 2 + 2  # images, two JSON, params.json, DONE
    assert ha == hb
    assert a.root.name == b.root.name != c.root.name  # the folder name hashes the parameters
    pngs = [k for k in ha if k.endswith(".png")]
    assert all(ha[k] != hc[k] for k in pngs) and ha["train.json"] != hc["train.json"]
    assert sorted(p.name for p in a.unlabeled.iterdir()) == [f"{i:06d}.png" for i in range(6)]


def test_class_size_and_occlusion_statistics():
    s, n = 128, 200
    objects, images = [], []
    for i in range(n):
        img, objs = E.draw_image(seed=5, split="train", index=i, s=s)
        images.append(img)
        objects.extend(objs)
        assert 1 <= len(objs) <= 5
    assert all(im.size == (s, s) and im.mode == "RGB" for im in images)
    cats = np.array([o[0] for o in objects])
    counts = np.bincount(cats, minlength=6)[1:]
    assert set(cats.tolist()) == {1, 2, 3, 4, 5}
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()
    boxes = np.array([o[1] for o in objects], dtype=float)
    vis = np.array([o[2] for o in objects], dtype=float)
    full = np.array([o[3] for o in objects], dtype=float)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= s).all()
    longer = boxes[:, 2:].max(1)
    # longer sides in 12..48 px at 128 px (a polygon's raster can add a pixel; occlusion
    # can only shrink the visible box)
    assert longer.max() <= 48 + 2 and np.percentile(longer, 5) >= 12 * 0.65
    unocc = vis == full
    assert longer[unocc].min() >= 12 - 1
    assert abs(np.median(longer[unocc]) - 30) < 5  # uniform in [12, 48]: median 30
    # occlusion: happens, and never hides more than 35 % of an object
    assert (vis / full).min() >= 0.65 - 1e-9 and (vis < full).mean() > 0.05
    assert (vis <= boxes[:, 2] * boxes[:, 3]).all()  # visible pixels lie inside the box


def test_sizes_scale_with_image_size():
    objs = [o for i in range(80) for o in E.draw_image(seed=2, split="val", index=i, s=64)[1]]
    longer = np.array([max(o[1][2:]) for o in objs if o[2] == o[3]])
    assert longer.max() <= 24 + 2 and longer.min() >= 6 - 1


def test_marker_reuse_and_unfinished_build_redone(tmp_path):
    d = _data(tmp_path)
    p = E.build_embedded(d, workers=1)
    assert (p.root / E.MARKER).is_file()
    stamp = os.stat(p.train_json).st_mtime_ns
    assert E.build_embedded(d, workers=1) == p and os.stat(p.train_json).st_mtime_ns == stamp
    # a build killed half-way: no marker, files missing -> redone, never used
    (p.root / E.MARKER).unlink()
    (p.val_json).unlink()
    for f in list(p.train_images.iterdir())[:3]:
        f.unlink()
    p2 = E.build_embedded(d, workers=1)
    assert (p2.root / E.MARKER).is_file() and p2.val_json.is_file()
    assert len(list(p2.train_images.iterdir())) == 10
    assert not [q for q in tmp_path.iterdir() if ".tmp-" in q.name]  # no leftovers


def test_coco_json_and_datasets_from_config(tmp_path):
    cfg = get_config("smoke", [f"data.cache_dir={str(tmp_path)!r}"])
    train, val = build_detection_datasets(cfg)
    d = cfg.data
    assert (len(train), len(val)) == (d.embedded_train, d.embedded_val)
    gt = json.loads(E.build_embedded(d).train_json.read_text())
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3, 4, 5]
    assert [c["name"] for c in gt["categories"]] == list(E.CLASSES)
    assert len({a["id"] for a in gt["annotations"]}) == len(gt["annotations"])
    pre = build_pretext_dataset(cfg)
    assert len(pre) == d.embedded_unlabeled
    image, target, patches = pre[0]
    assert patches.shape == (
        cfg.pretext.num_patches,
        3,
        cfg.pretext.patch_size,
        cfg.pretext.patch_size,
    )
    assert target["orig_size"].tolist() == [d.embedded_image_size] * 2
    vgt = json.loads(E.build_embedded(d).val_json.read_text())
    assert len(vgt["images"]) == len(val)
    _, t = val[0]
    anns = [a for a in vgt["annotations"] if a["image_id"] == 1]
    assert t["image_id"].item() == 1 and t["labels"].tolist() == [a["category_id"] for a in anns]
    assert isinstance(t["boxes"], torch.Tensor) and len(t["boxes"]) == len(anns) > 0


def test_photos_are_real_rgb_images():
    photos = load_photos()
    assert len(photos) >= 5 and "astronaut" in photos and "grace_hopper" in photos
    for a in photos.values():
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 100
        assert a.std() > 10  # not blank


def test_pretext_root_must_be_set(tmp_path):
    cfg = get_config("smoke", [f"data.cache_dir={str(tmp_path)!r}", "data.pretext_root=''"])
    with pytest.raises(ValueError, match="pretext_root"):
        build_pretext_dataset(cfg)
