"""Pretext data: query patch boxes vs pixels, sampling rule, image transform, bad input."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_convert

from updetr_lite.config import get_config
from updetr_lite.data.images import IMAGENET_MEAN, IMAGENET_STD
from updetr_lite.data.pretext import NoImagesError, PretextDataset, collate_pretext
from updetr_lite.data.query_patches import sample_patch_boxes
from updetr_lite.engine.inference import localize_patches
from updetr_lite.models import build_updetr
from updetr_lite.tutorial import localize

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)


def _cfg(m=5, p=32, min_patch=8, scales=(64, 80), max_size=100):
    cfg = get_config("smoke")
    cfg.pretext = dataclasses.replace(cfg.pretext, num_patches=m, patch_size=p, min_patch=min_patch)
    cfg.data = dataclasses.replace(cfg.data, pretext_scales=scales, pretext_max_size=max_size)
    return cfg


def _structured(h, w, seed=0):
    """A smooth, non-repeating image so that a shifted crop looks different."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    big = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC)).astype(np.int16)
    yy, xx = np.mgrid[0:h, 0:w]
    big[..., 0] = (big[..., 0] + xx * 3) % 256  # gradients make every position unique
    big[..., 1] = (big[..., 1] + yy * 3) % 256
    return big.astype(np.uint8)


def _norm(a):
    return (a.astype(np.float32) / 255 - MEAN) / STD


def _crop(arr, box, dx, p):
    """PIL cuts and resizes here, independently of the dataset's torchvision code."""
    x0, y0, x1, y1 = box
    c = arr[y0:y1, x0 + dx : x1 + dx]
    return _norm(np.asarray(Image.fromarray(c).resize((p, p), Image.BILINEAR)))


def test_patch_is_cut_at_its_box(tmp_path):
    h, w = 90, 130
    arr = _structured(h, w)
    Image.fromarray(arr).save(tmp_path / "img.png")
    cfg = _cfg()
    ds = PretextDataset(tmp_path, cfg, augment_patches=False)
    p = cfg.pretext.patch_size
    for seed in range(5):
        torch.manual_seed(seed)
        image, target, patches = ds[0]
        assert patches.shape == (cfg.pretext.num_patches, 3, p, p)
        assert target["orig_size"].tolist() == [h, w]
        xyxy = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        for (x0, y0, x1, y1), patch in zip(xyxy.round().long().tolist(), patches):
            got = patch.permute(1, 2, 0).numpy()

            right = np.abs(got - _crop(arr, (x0, y0, x1, y1), 0, p)).mean()
            assert right < 0.06, right
            dx = 6 if x1 + 6 <= w else -6  # the same size, 6 px away
            wrong = np.abs(got - _crop(arr, (x0, y0, x1, y1), dx, p)).mean()
            assert wrong > 3 * right + 0.05, (right, wrong)


def test_patch_box_sampling_rule():
    g = torch.Generator().manual_seed(0)
    h, w, lo, n = 40, 60, 8, 20000
    b = sample_patch_boxes(h, w, n, lo, generator=g)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert bw.min() == lo and bw.max() == w - lo and bh.min() == lo and bh.max() == h - lo
    assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    # uniform sides: every integer width equally likely (chi-square-like bound), mean at centre
    counts = torch.bincount(bw.long() - lo).float()
    assert len(counts) == w - 2 * lo + 1 and counts.min() > 0.6 * counts.mean()
    assert abs(bw.mean() - (lo + w - lo) / 2) < 0.5 and abs(bh.mean() - h / 2) < 0.5
    # width and height drawn independently: no correlation
    assert abs(np.corrcoef(bw.numpy(), bh.numpy())[0, 1]) < 0.03
    # corners uniform given the size: the mean free space left of a box is half the slack
    slack = w - bw
    assert abs((b[:, 0] / slack.clamp(min=1))[slack > 0].mean() - 0.5) < 0.02
    # reproducible from the generator
    again = sample_patch_boxes(h, w, n, lo, generator=torch.Generator().manual_seed(0))
    assert torch.equal(b, again)


def test_inference_and_demo_augment_patches_exactly_as_training(tmp_path, monkeypatch):
    """The same seed gives bit-equal augmented patches in training (the pretext dataset), in
    ``engine.inference.localize_patches`` (what a 'crop' model's CNN receives) and in
    ``localize.query_patches``: one augmentation, one crop, one normalisation."""
    h, w = 90, 130
    arr = _structured(h, w, seed=2)
    Image.fromarray(arr).save(tmp_path / "img.png")
    cfg = _cfg(m=4, p=32)
    cfg.pretext = dataclasses.replace(cfg.pretext, patch_feature="crop")
    ds = PretextDataset(tmp_path, cfg, augment_patches=True)
    img = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    model = build_updetr(cfg).eval()
    seen = []
    real = model.backbone.patch_feature
    monkeypatch.setattr(model.backbone, "patch_feature", lambda x: seen.append(x) or real(x))
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        boxes = sample_patch_boxes(h, w, 4, 8, torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        _, _, trained = ds.make_sample(img, generator=g)
        plain = localize.query_patches(arr, boxes, 32, augment=False)
        assert not torch.equal(trained, plain)  # the augmentation did something
        torch.manual_seed(seed)
        assert torch.equal(localize.query_patches(arr, boxes, 32, augment=True), trained)
        localize_patches(model, cfg, arr, boxes=boxes, augment=True, seed=seed)
        assert torch.equal(seen[-1], trained)


def test_image_resize_no_flip_and_targets(tmp_path):
    arr = _structured(70, 140, seed=1)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    cfg = _cfg(scales=(48, 64, 80), max_size=120)
    ds = PretextDataset([tmp_path / "a.jpg"], cfg)
    src = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target, patches = ds[0]
        hh, ww = image.shape[-2:]
        seen.add(hh)
        assert target["size"].tolist() == [hh, ww]
        assert min(hh, ww) in cfg.data.pretext_scales or max(hh, ww) == 120
        assert max(hh, ww) <= 120 and abs(ww / hh - 2) < 0.1
        # not flipped: matches the plain resize of the file
        ref = _norm(np.asarray(Image.fromarray(src).resize((ww, hh), Image.BILINEAR)))
        assert np.abs(image.permute(1, 2, 0).numpy() - ref).mean() < 0.08
        assert target["labels"].tolist() == [1] * cfg.pretext.num_patches
        assert target["boxes"].shape == (cfg.pretext.num_patches, 4)
        assert (target["boxes"] >= 0).all() and (target["boxes"] <= 1).all()
    assert len(seen) > 1  # the scale is random


def test_collate_pads_with_true_mask(tmp_path):
    for i, (h, w) in enumerate([(40, 90), (90, 40), (60, 60)]):
        Image.fromarray(_structured(h, w, i)).save(tmp_path / f"{i}.png")
    cfg = _cfg(m=3, p=16, scales=(48,), max_size=100)
    ds = PretextDataset(tmp_path, cfg)
    batch = [ds[i] for i in range(3)]
    images, mask, targets, patches = collate_pretext(batch)
    hmax = max(b[0].shape[1] for b in batch)
    wmax = max(b[0].shape[2] for b in batch)
    assert images.shape == (3, 3, hmax, wmax) and mask.shape == (3, hmax, wmax)
    assert patches.shape == (3, 3, 3, 16, 16) and len(targets) == 3
    for i, (img, _, _) in enumerate(batch):
        h, w = img.shape[1:]
        assert not mask[i, :h, :w].any() and mask[i].sum() == hmax * wmax - h * w
        assert torch.equal(images[i, :, :h, :w], img) and (images[i][:, mask[i]] == 0).all()


def test_recursive_listing_and_extensions(tmp_path):
    (tmp_path / "n01" / "deep").mkdir(parents=True)
    (tmp_path / "n02").mkdir()
    for name in ("n01/a.JPEG", "n01/deep/b.png", "n02/c.BMP", "n02/d.webp"):
        Image.fromarray(_structured(30, 30)).save(
            tmp_path / name, format=name.split(".")[-1].upper().replace("JPG", "JPEG")
        )
    (tmp_path / "n02" / "notes.txt").write_text("not an image")
    ds = PretextDataset(tmp_path, _cfg(m=2, p=8))
    assert sorted(f.name for f in ds.files) == ["a.JPEG", "b.png", "c.BMP", "d.webp"]


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "x.txt").write_text("x")
    with pytest.raises(NoImagesError, match="empty"):
        PretextDataset(tmp_path / "empty", _cfg())
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PretextDataset(tmp_path / "nowhere", _cfg())


def test_bad_files_are_skipped_counted_and_named(tmp_path):
    good = _structured(40, 50)
    Image.fromarray(good).save(tmp_path / "a_good.png")
    Image.fromarray(_structured(16, 60)).save(tmp_path / "b_tiny.png")  # side 16: skipped
    (tmp_path / "c_garbage.jpg").write_bytes(b"this is not a jpeg")
    buf = io.BytesIO()
    Image.fromarray(_structured(120, 120)).save(buf, format="JPEG", quality=90)
    (tmp_path / "d_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    Image.fromarray(_structured(17, 60)).save(tmp_path / "e_small_ok.png")  # side 17: kept
    ds = PretextDataset(tmp_path, _cfg(m=2, p=8))
    assert len(ds) == 5
    with pytest.warns(UserWarning) as rec:
        out = [ds[i] for i in range(len(ds))]
    msgs = " ".join(str(r.message) for r in rec)
    assert "c_garbage.jpg" in msgs and "d_truncated.jpg" in msgs
    # a bad index yields the next good image: b, c, d -> e (17 px high); the rest are themselves
    assert [t["orig_size"].tolist() for _, t, _ in out] == [
        [40, 50],
        [17, 60],
        [17, 60],
        [17, 60],
        [17, 60],
    ]
    assert ds.skipped == {"too_small": 1, "unreadable": 2, "extreme_aspect": 0}
    report = ds.report_skips()
    assert report["too_small"] == 1 and report["unreadable"] == 2
    assert {p.split("/")[-1] for p in report["files"]} == {
        "b_tiny.png",
        "c_garbage.jpg",
        "d_truncated.jpg",
    }
    assert ds.report_skips() == {}  # reset after each report (one epoch)


def test_all_bad_is_one_clear_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    ds = PretextDataset(tmp_path, _cfg())
    with pytest.warns(UserWarning), pytest.raises(NoImagesError, match=str(tmp_path)):
        ds[0]


def test_skips_in_loader_workers_reach_the_report(tmp_path):
    Image.fromarray(_structured(40, 50)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"broken")
    Image.fromarray(_structured(10, 50)).save(tmp_path / "c.png")
    Image.fromarray(_structured(50, 40)).save(tmp_path / "d.png")
    ds = PretextDataset(tmp_path, _cfg(m=2, p=8))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=2, collate_fn=collate_pretext
    )
    assert sum(len(b[2]) for b in loader) == 4
    report = ds.report_skips()
    assert (report["too_small"], report["unreadable"]) == (1, 1)


def test_sample_boxes_normalise_by_width_and_height(tmp_path):
    """A non-square image (h 40, w 96): the normalised boxes of the dataset's sampler (used by
    the cached-RoI path) are the pixel boxes divided by (w, h, w, h), written out here, and
    stay inside the image."""
    from updetr_lite.engine.cached_datasets import CachedPretextRoi

    h, w = 40, 96
    Image.fromarray(_structured(h, w)).save(tmp_path / "img.png")
    cfg = _cfg(m=6, min_patch=8)
    ds = PretextDataset(tmp_path, cfg, augment_patches=False)
    got = ds.sample_boxes(h, w, generator=torch.Generator().manual_seed(3))
    px = sample_patch_boxes(h, w, 6, 8, generator=torch.Generator().manual_seed(3))
    x0, y0, x1, y1 = px.unbind(-1)
    want = torch.stack(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h), -1)
    assert torch.allclose(got, want, atol=1e-6)
    # the cached-RoI dataset hands the sampler (h, w) in that order
    roi = CachedPretextRoi([torch.zeros(4, 3, 7)], [(h, w)], ds.sample_boxes)
    torch.manual_seed(0)
    for _ in range(20):
        boxes = roi[0][1]["boxes"]
        xyxy = box_convert(boxes, "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        assert boxes.shape == (6, 4)
        assert (xyxy >= -1e-4).all() and (xyxy[:, 2] <= w + 1e-4).all()
        assert (xyxy[:, 3] <= h + 1e-4).all()
        sides = xyxy[:, 2:] - xyxy[:, :2]
        assert torch.allclose(sides, sides.round(), atol=1e-3)  # whole pixels
        assert (sides >= 8 - 1e-3).all() and (sides[:, 0] <= w - 8 + 1e-3).all()
        assert (sides[:, 1] <= h - 8 + 1e-3).all()
