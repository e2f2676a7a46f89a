"""viz.py (pictures), tutorial/notebook_checks.py (what the notebooks measure) and the rest of
tutorial/ (the patch localization demo), each checked against an independent computation."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from updetr_lite import viz  # noqa: E402
from updetr_lite.data.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from updetr_lite.data.query_patches import sample_boxes, sample_patch_boxes  # noqa: E402
from updetr_lite.models import HungarianMatcher, build_updetr, group_attention_mask  # noqa: E402
from updetr_lite.tutorial import (  # noqa: E402
    checkpoints,
    localize,
    notebook_checks,
    training,
    widget,
)

ROOT = Path(__file__).resolve().parents[1]  # the checkout

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = training.demo_config(smoke=True)
    model = build_updetr(cfg).eval()
    return model, cfg


# ------------------------------------------------------------------------------ viz


def test_to_display_undoes_imagenet_normalisation():
    img = _image()
    t = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - MEAN) / STD
    np.testing.assert_allclose(viz.to_display(t), img / 255.0, atol=1e-5)
    np.testing.assert_allclose(viz.to_display(img), img / 255.0, atol=1e-7)
    with pytest.raises(ValueError, match="shape"):
        viz.to_display(torch.zeros(2, 3, 4, 5))


def test_box_conversions_match_formula_and_round_trip():
    boxes = torch.tensor([[0.5, 0.25, 0.2, 0.1], [0.1, 0.9, 0.2, 0.2]])
    h, w = 100, 200
    got = viz.cxcywh_to_pixel_xyxy(boxes, (h, w))
    for (cx, cy, bw, bh), row in zip(boxes.tolist(), got.tolist()):
        expect = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        assert row == pytest.approx(expect, abs=1e-4)
    torch.testing.assert_close(viz.pixel_xyxy_to_cxcywh(got, (h, w)), boxes)


def test_smooth_is_a_trailing_mean():
    v = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    got = viz.smooth(v, 3)
    expect = [np.mean(v[max(0, i - 2) : i + 1]) for i in range(len(v))]
    np.testing.assert_allclose(got, expect)
    np.testing.assert_allclose(viz.smooth(v, 1), v)


def test_attention_mask_picture_shows_the_groups():
    n, m = 12, 3
    ax = viz.plot_attention_mask(group_attention_mask(n, m))
    shown = ax.images[0].get_array()
    expect = np.array([[i // (n // m) == j // (n // m) for j in range(n)] for i in range(n)])
    np.testing.assert_array_equal(np.asarray(shown), expect)
    # one horizontal and one vertical border between neighbouring groups
    assert len(ax.lines) == 2 * (m - 1)


def test_cost_matrix_marks_the_assignment():
    cost = torch.rand(6, 3)
    rows, cols = notebook_checks.global_assignment(cost)
    ax = viz.plot_cost_matrix(cost, (rows, cols), title="c")
    offsets = ax.collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(offsets).tolist())) == sorted(
        zip(cols.tolist(), rows.tolist())
    )
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), cost.numpy())


def test_patch_gallery_and_boxes_draw_what_they_are_given():
    patches = torch.randn(5, 3, 8, 8)
    fig = viz.patch_gallery(patches, [f"p{i}" for i in range(5)], ncols=3)
    assert sum(bool(a.images) for a in fig.axes) == 5
    ax = viz.show_image(_image(), [[1, 2, 11, 22], [5, 5, 9, 9]], ["a", "b"])
    rects = [p for p in ax.patches]
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rects] == [
        (1, 2, 10, 20),
        (5, 5, 4, 4),
    ]
    with pytest.raises(ValueError):
        viz.patch_gallery([])


def test_jsonl_series_and_curves(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 3.0}\n\n{"step": 2}\n{"step": 3, "loss": 1.5}\n')
    x, y = viz.series(viz.read_jsonl(log), "loss")
    assert (x, y) == ([1, 3], [3.0, 1.5])
    ax = viz.plot_curves({"run": (x, y)})
    np.testing.assert_allclose(ax.lines[0].get_ydata(), y)
    # a broken line before the last is a damaged file: an error naming file and line
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\n{oops\n{"step": 2}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        viz.read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        viz.read_jsonl(tmp_path / "missing.jsonl")


def test_jsonl_torn_last_line_is_skipped_with_a_warning(tmp_path):
    from reproduce import report

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n\n{"step": 2}\n{"type": "train", "st')  # killed mid-write
    for read in (viz.read_jsonl, report.read_jsonl):
        with pytest.warns(UserWarning, match="log.jsonl:4: torn last line"):
            assert read(log) == [{"step": 1}, {"step": 2}]


def test_capture_cross_attention_is_a_distribution_and_changes_nothing(tiny):
    model, cfg = tiny
    images, mask = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]]).expand(2, -1, -1)
    with torch.no_grad():
        plain = model(images, mask, patch_boxes=boxes)
        with viz.capture_cross_attention(model) as attn:
            hooked = model(images, mask, patch_boxes=boxes)
        again = model(images, mask, patch_boxes=boxes)
    torch.testing.assert_close(plain["pred_boxes"], hooked["pred_boxes"])
    assert len(attn) == cfg.model.dec_layers  # and hooks were removed: no more captures
    torch.testing.assert_close(again["pred_boxes"], plain["pred_boxes"])
    w = attn[-1]
    assert w.shape == (2, model.num_queries, 16)  # 64 px / stride 16 = 4 x 4 memory
    torch.testing.assert_close(w.sum(-1), torch.ones(2, model.num_queries))
    maps = viz.attention_maps(w, (4, 4))
    assert maps.shape == (2, model.num_queries, 4, 4) and maps[0, 1, 2, 3] == w[0, 1, 11]
    with pytest.raises(ValueError, match="grid"):
        viz.attention_maps(w, (3, 4))
    fig = viz.plot_attention_maps(images[0], maps[0, :2], [[0, 0, 10, 10], [5, 5, 30, 30]])
    assert len(fig.axes) == 3


# ------------------------------------------------------------------------------ notebook_checks


def test_results_round_trip_and_missing_file(tmp_path):
    notebook_checks.write_results(tmp_path / "r", "nb", {"a": 1.5, "ok": True})
    assert notebook_checks.read_results(tmp_path / "r", "nb") == {"a": 1.5, "ok": True}
    assert json.loads((tmp_path / "r" / "nb.json").read_text())["a"] == 1.5
    with pytest.raises(FileNotFoundError, match="other"):
        notebook_checks.read_results(tmp_path / "r", "other")


def test_cost_terms_give_the_matchers_assignment():
    torch.manual_seed(1)
    logits, boxes = torch.randn(8, 3), torch.rand(8, 4) * 0.5 + 0.25
    tgt = {"labels": torch.ones(3, dtype=torch.int64), "boxes": torch.rand(3, 4) * 0.4 + 0.3}
    terms = notebook_checks.cost_terms(logits, boxes, tgt["labels"], tgt["boxes"])
    # an independent evaluation of one cell
    p = logits.softmax(-1)[2, 1]
    l1 = (boxes[2] - tgt["boxes"][0]).abs().sum()
    assert float(terms["class"][2, 0]) == pytest.approx(float(-p), abs=1e-6)
    assert float(terms["bbox"][2, 0]) == pytest.approx(float(5 * l1), abs=1e-5)
    torch.testing.assert_close(terms["total"], terms["class"] + terms["bbox"] + terms["giou"])
    rows, cols = notebook_checks.global_assignment(terms["total"])
    ((mr, mc),) = HungarianMatcher()(
        {"pred_logits": logits[None], "pred_boxes": boxes[None]}, [tgt]
    )
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(zip(mr.tolist(), mc.tolist()))
    # brute force over every injective choice of 3 rows out of 8
    best = min(
        sum(float(terms["total"][r, c]) for c, r in enumerate(perm))
        for perm in itertools.permutations(range(8), 3)
    )
    assert notebook_checks.assignment_cost(terms["total"], (rows, cols)) == pytest.approx(best)


def test_per_group_assignment_stays_in_its_group_and_costs_no_less():
    torch.manual_seed(2)
    cost = torch.rand(12, 3)
    rows, cols = notebook_checks.per_group_assignment(cost, 3)
    assert cols.tolist() == [0, 1, 2]
    for g, r in enumerate(rows.tolist()):
        assert 4 * g <= r < 4 * (g + 1)
        assert cost[r, g] == cost[4 * g : 4 * g + 4, g].min()
    glob = notebook_checks.global_assignment(cost)
    assert notebook_checks.assignment_cost(cost, glob) <= notebook_checks.assignment_cost(
        cost, (rows, cols)
    )
    with pytest.raises(ValueError, match="divisible"):
        notebook_checks.per_group_assignment(torch.rand(10, 3), 3)


def test_group_influence_is_zero_across_masked_groups_only():
    # two decoder layers: in the first, self-attention only mixes the all-zero decoder input,
    # so groups can influence each other from the second layer on
    cfg = training.demo_config(smoke=True).override(["model.dec_layers=2"])
    torch.manual_seed(3)
    model = build_updetr(cfg).eval()
    features, mask = torch.randn(1, 256, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)
    boxes = torch.tensor([[[0.3, 0.3, 0.3, 0.3], [0.7, 0.6, 0.3, 0.4]]])
    masked = notebook_checks.group_influence(model, features, mask, boxes, group=0)
    assert masked["own"] > 1e-4 and masked["others"] < 1e-6
    model.attention_mask = False
    try:
        unmasked = notebook_checks.group_influence(model, features, mask, boxes, group=0)
    finally:
        model.attention_mask = True
    assert unmasked["others"] > 1e-5
    model.train()
    with pytest.raises(ValueError, match="eval"):
        notebook_checks.group_influence(model, features, mask, boxes, group=0)
    model.eval()


def test_loss_fell():
    assert notebook_checks.loss_fell([5, 4, 3, 2, 1])
    assert not notebook_checks.loss_fell([1, 2, 3, 4, 5])
    assert not notebook_checks.loss_fell([1.0, float("nan")])
    assert not notebook_checks.loss_fell([2.0, 1.9], min_drop=0.2)


def test_early_late_gap_against_a_direct_sum():
    a = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    b = [11.0, 10.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 1.5, 0.0]
    early, late = notebook_checks.early_late_gap(a, b, fraction=0.2)  # 2 points each end
    assert early == pytest.approx(((10 - 11) + (9 - 10)) / 2)
    assert late == pytest.approx(((2 - 1.5) + (1 - 0)) / 2)
    assert notebook_checks.early_late_gap(a, b + [99.0], fraction=0.2) == (early, late)
    with pytest.raises(ValueError):
        notebook_checks.early_late_gap([1.0], [2.0])


# ------------------------------------------------------------------------------ demo


def test_as_uint8_image_grey_bool_float_rgba_and_bad_shape():
    from updetr_lite.data.images import as_uint8_image

    grey = np.array([[0, 128], [255, 7]], np.uint8)
    assert (as_uint8_image(grey) == grey[..., None]).all() and as_uint8_image(grey).shape == (
        2,
        2,
        3,
    )
    assert as_uint8_image(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]
    f = np.array([[[0.0, 0.5, 1.2]]], np.float32)  # 1.2 is clipped to 1
    assert as_uint8_image(f)[0, 0].tolist() == [0, 128, 255]
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 3] = 99
    assert as_uint8_image(rgba).shape == (2, 3, 3) and not as_uint8_image(rgba).any()
    with pytest.raises(ValueError, match="HxW or HxWx3"):
        as_uint8_image(np.zeros((2, 3, 5)))


def test_prepare_image_follows_the_resize_rule():
    images, mask = localize.prepare_image(_image(50, 100), 64, 100)
    # shortest side 64 would make the longest 128 > 100: the longest side wins
    assert images.shape == (1, 3, 50, 100) and mask.shape == (1, 50, 100) and not mask.any()
    images, _ = localize.prepare_image(_image(50, 100), 40, 200)
    assert images.shape == (1, 3, 40, 80)


def test_query_patches_crop_the_box_and_boxes_are_checked():
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 30:50] = 255  # a white 20x10 block, exactly the box below
    p = localize.query_patches(img, [[30, 10, 50, 20]], patch_size=8)
    assert p.shape == (1, 3, 8, 8)
    torch.testing.assert_close(
        viz.to_display(p[0]), np.ones((8, 8, 3), np.float32), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="not inside"):
        localize.check_boxes([[0, 0, 70, 10]], (40, 60))
    with pytest.raises(localize.DemoError, match="no query patch"):
        localize.check_boxes(torch.zeros(0, 4), (40, 60))


def test_sample_boxes_are_the_pixel_boxes_normalised_and_follow_the_authors_rule():
    rng = torch.Generator().manual_seed(0)
    h, w, lo = 64, 96, 12
    for i in range(50):
        b = sample_boxes(h, w, 3, lo, rng)
        pixels = sample_patch_boxes(h, w, 3, lo, torch.Generator().manual_seed(i))
        again = sample_boxes(h, w, 3, lo, torch.Generator().manual_seed(i))
        torch.testing.assert_close(viz.cxcywh_to_pixel_xyxy(again, (h, w)), pixels)
        xyxy = viz.cxcywh_to_pixel_xyxy(b, (h, w))
        sides = xyxy[:, 2:] - xyxy[:, :2]
        assert (
            (xyxy >= -1e-4).all()
            and (xyxy[:, 2] <= w + 1e-4).all()
            and (xyxy[:, 3] <= h + 1e-4).all()
        )
        assert (sides[:, 0] >= lo - 1e-4).all() and (sides[:, 0] <= w - lo + 1e-4).all()
        assert (sides[:, 1] >= lo - 1e-4).all() and (sides[:, 1] <= h - lo + 1e-4).all()


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda z: (z[2] - z[0]) * (z[3] - z[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_localize_returns_pixel_boxes_and_their_iou(tiny):
    model, cfg = tiny
    img = _image(60, 80)
    q = [[10, 10, 40, 30], [40, 20, 70, 50]]
    r = localize.localize_patches_in_image(model, cfg, img, q)
    assert r["boxes"].shape == (2, 4) and r["scores"].shape == (2,)
    assert ((r["scores"] > 0) & (r["scores"] < 1)).all()
    assert (r["boxes"][:, 2] <= 80 + 1e-3).all() and (r["boxes"][:, 3] <= 60 + 1e-3).all()
    for i in range(2):
        assert float(r["iou"][i]) == pytest.approx(_iou(r["boxes"][i].tolist(), q[i]), abs=1e-5)
    aug = localize.localize_patches_in_image(model, cfg, img, q, augment=True, seed=1)
    assert not torch.allclose(aug["boxes"], r["boxes"])  # the patch feature changed
    with pytest.raises(ValueError, match="at most"):
        localize.localize_patches_in_image(model, cfg, img, q * 2)


def test_checkpoint_round_trip_in_both_formats(tiny, tmp_path):
    model, cfg = tiny
    img, q = _image(64, 64), [[5, 5, 30, 40]]
    ref = localize.localize_patches_in_image(model, cfg, img, q)
    path = training.save_demo_checkpoint(model, cfg, tmp_path / "kit.pth")
    loaded, cfg2 = checkpoints.load_demo_model(path)
    torch.testing.assert_close(
        localize.localize_patches_in_image(loaded, cfg2, img, q)["boxes"], ref["boxes"]
    )
    # the authors' layout: their names for the patch projection and reconstruction head
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("patch_proj.", "patch2query.")
        k = k.replace("reconstruction_head.0.", "feature_align.layers.0.")
        k = k.replace("reconstruction_head.2.", "feature_align.layers.1.")
        sd[k] = v
    torch.save({"model": sd}, tmp_path / "authors.pth")
    authors, acfg = checkpoints.load_demo_model(tmp_path / "authors.pth", preset="smoke")
    assert (acfg.model.backbone, acfg.model.backbone_layer) == ("resnet18", "layer3")
    assert (acfg.model.hidden_dim, acfg.model.num_queries) == (
        cfg.model.hidden_dim,
        cfg.model.num_queries,
    )
    assert authors.patch_feature == "crop" and acfg.pretext.num_patches == 2
    for name, p in model.state_dict().items():
        if name != "group_mask":
            torch.testing.assert_close(authors.state_dict()[name], p)
    torch.save({"model": {"foo": torch.zeros(1)}}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="not a DETR"):
        checkpoints.load_demo_model(tmp_path / "junk.pth")


def test_ensure_checkpoint_uses_a_given_file_or_trains_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="authors' checkpoint not found"):
        checkpoints.ensure_lite_checkpoint(authors_checkpoint=tmp_path / "none.pth")
    given = tmp_path / "given.pth"
    given.write_bytes(b"x")
    assert checkpoints.ensure_lite_checkpoint(authors_checkpoint=given) == given
    path = checkpoints.ensure_lite_checkpoint(
        tmp_path / "demo.pth", smoke=True, steps=60, progress=False
    )
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["kind"] == "pretext" and ckpt["step"] == 60
    losses = ckpt["losses"]
    assert np.mean(losses[-15:]) < np.mean(losses[:15])  # training went downhill
    mtime = path.stat().st_mtime
    assert (
        checkpoints.ensure_lite_checkpoint(path, smoke=True) == path
        and path.stat().st_mtime == mtime
    )


def test_demo_state_summary_figure_and_widgets(tiny, tmp_path):
    model, cfg = tiny
    photos = {"a": _image(64, 64, 1), "b": _image(48, 80, 2)}
    state = widget.DemoState(model, cfg, photos["a"], [])
    state.boxes = state.default_boxes(2)
    text = state.summary()
    assert text.count("\n") == 1 and "IoU" in text
    ax = widget.static_demo_figure(state)
    assert len(ax.patches) == 4  # 2 query boxes + 2 predictions
    ui = widget.build_demo(state, photos, num_patches=2)
    sliders = [w for w in _walk(ui) if type(w).__name__ == "IntSlider"]
    textarea = next(w for w in _walk(ui) if type(w).__name__ == "Textarea")
    before = textarea.value
    x0 = next(s for s in sliders if s.description == "x 0")
    x0.value = x0.value + 10
    assert state.boxes[0][0] == x0.value and textarea.value != before
    dropdown = next(w for w in _walk(ui) if type(w).__name__ == "Dropdown")
    dropdown.value = "b"
    assert state.image.shape == (48, 80, 3) and x0.max == 78
    # a typed path shows that image; the list then names none, and choosing "b" goes back
    from PIL import Image

    own = tmp_path / "own.png"
    Image.fromarray(_image(40, 50, 3)).save(own)
    path = next(w for w in _walk(ui) if type(w).__name__ == "Text")
    path.value = str(own)
    assert state.image.shape == (40, 50, 3) and dropdown.value is None
    dropdown.value = "b"
    assert state.image.shape == (48, 80, 3)
    # the slider tracks are wide enough to place a box to the pixel
    assert all(int(s.layout.width.rstrip("px")) >= 400 for s in sliders)


def test_predicted_boxes_are_clipped_to_the_image(tiny, monkeypatch):
    from updetr_lite.engine import inference

    model, cfg = tiny
    image = _image(64, 48, 1)  # h 64, w 48

    def past_the_border(*_a, **_k):  # a cxcywh box near the corner reaches outside
        return [{"query": 0, "box": [-6.0, 50.0, 60.0, 80.0], "score": 0.9}]

    monkeypatch.setattr(inference, "localize_patches", past_the_border)
    r = localize.localize_patches_in_image(model, cfg, image, [[10, 40, 40, 60]])
    assert r["boxes"].tolist() == [[0.0, 50.0, 48.0, 64.0]]
    # IoU of the clipped box with the query: intersection 30 x 10, union 48 x 14 + 30 x 20 - 300
    assert float(r["iou"][0]) == pytest.approx(300 / (48 * 14 + 600 - 300))


def test_read_image_is_writable_so_torch_does_not_warn(tmp_path):
    import warnings

    from PIL import Image

    Image.fromarray(_image(20, 30, 1)).save(tmp_path / "a.png")
    image = localize.read_image(tmp_path / "a.png")
    assert image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        localize.prepare_image(image, 16, 32)


def test_default_checkpoint_is_the_main_run_else_the_shipped_one(tmp_path, monkeypatch):
    main_run, shipped = tmp_path / "runs" / "last.pth", tmp_path / "shipped.pth"
    monkeypatch.setattr(checkpoints, "SHIPPED_CHECKPOINT", shipped)
    with pytest.raises(localize.DemoError, match="no demo checkpoint.*--make-checkpoint"):
        checkpoints.ensure_lite_checkpoint(main_run=main_run)  # nothing there, nothing trained
    with pytest.raises(localize.DemoError, match="no demo checkpoint.*--make-checkpoint"):
        checkpoints.ensure_lite_checkpoint()
    shipped.write_bytes(b"x")
    assert checkpoints.ensure_lite_checkpoint(main_run=main_run) == shipped
    assert "ships with the kit" in checkpoints.checkpoint_note(shipped, main_run)
    main_run.parent.mkdir()
    main_run.write_bytes(b"x")
    assert checkpoints.ensure_lite_checkpoint(smoke=True, main_run=main_run) == main_run
    assert "bash run.sh" in checkpoints.checkpoint_note(main_run, main_run)
    # the main job's checkpoint is the caller's to name: without it, the shipped one
    assert checkpoints.ensure_lite_checkpoint() == shipped
    assert "bash run.sh" not in checkpoints.checkpoint_note(main_run)


def _walk(w):
    yield w
    for c in getattr(w, "children", ()):
        yield from _walk(c)


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        localize.read_image(tmp_path / "none.png")
    (tmp_path / "x.png").write_text("not a png")
    with pytest.raises(localize.DemoError, match="not an image"):
        localize.read_image(str(tmp_path / "x.png"))


def test_dropped_patch_fraction_matches_the_setting():
    cfg = training.demo_config(smoke=True).override(["pretext.query_shuffle=False"])
    torch.manual_seed(4)
    model = build_updetr(cfg)
    model.patch_dropout = 0.3
    model.train()
    features, mask = torch.randn(4, 256, 4, 4), torch.zeros(4, 4, 4, dtype=torch.bool)
    boxes = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.7, 0.6, 0.3, 0.4]]).expand(4, -1, -1)
    frac = notebook_checks.dropped_patch_fraction(model, features, mask, boxes, trials=40)
    n = 40 * 4 * model.num_queries  # 1280 Bernoulli(0.3) draws: sd about 0.013
    assert abs(frac - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5
    model.patch_dropout = 0.0
    assert notebook_checks.dropped_patch_fraction(model, features, mask, boxes, trials=3) == 0.0
    model.eval()
    with pytest.raises(ValueError, match="train"):
        notebook_checks.dropped_patch_fraction(model, features, mask, boxes)


def test_notebook_config_anchors_the_cache(tmp_path):
    # the notebooks pass the checkout's cache (their working folder is notebooks/)
    cache = ROOT / ".cache" / "updetr_lite"
    cfg = notebook_checks.notebook_config("smoke", ["pretrain.max_steps=3"], cache_dir=cache)
    assert cfg.pretrain.max_steps == 3
    assert cfg.data.cache_dir == str(cache)
    assert (ROOT / "updetr_lite" / "viz.py").is_file()
    assert notebook_checks.notebook_config("smoke", cache_dir=tmp_path).data.cache_dir == str(
        tmp_path
    )
    with pytest.raises(TypeError, match="cache_dir"):  # no default: the caller knows the checkout
        notebook_checks.notebook_config("smoke")


def test_notebook_html_rendering_and_environment(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from updetr_lite.tutorial import notebooks

    nb = new_notebook(cells=[new_code_cell("print('hello patches')")])
    nb.cells[0].outputs = [new_output("stream", name="stdout", text="hello patches\n")]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    html = notebooks.to_html(path, tmp_path / "html")
    assert html.name == "x.html" and "hello patches" in html.read_text()
    env = notebooks.notebook_env(ROOT, tmp_path / "c")
    assert env["MPLBACKEND"] == "Agg" and env["IPYTHONDIR"].startswith(str(tmp_path))
    assert str(ROOT) in env["PYTHONPATH"].split(os.pathsep)
    assert "MPLBACKEND" not in notebooks.notebook_env(ROOT, tmp_path / "c", agg=False)
    with pytest.raises(FileNotFoundError, match="notebook not found"):
        notebooks.execute_notebook(ROOT / "notebooks", "99_missing", tmp_path)


def test_notebook_html_figures_get_alt_text_from_the_narrative(tmp_path):
    import base64
    import io

    import matplotlib.pyplot as plt
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    from updetr_lite.tutorial import notebooks

    fig = plt.figure(figsize=(1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()

    def image():
        return new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})

    two, one = new_code_cell("show()"), new_code_cell("show()")
    two.outputs, one.outputs = [image(), image()], [image()]
    html_only = new_code_cell("table()")
    html_only.outputs = [
        new_output("display_data", data={"text/html": "<b>t</b>", "image/png": png})
    ]
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Query patches\n\nIntro."),
            new_markdown_cell("## Loss\nThe **loss** curve falls. Then more words."),
            two,
            html_only,
            new_markdown_cell("Boxes of [the patches](x.md) drawn: red"),
            one,
        ]
    )
    path = tmp_path / "figs.ipynb"
    nbformat.write(nb, path)
    page = notebooks.to_html(path, tmp_path / "html").read_text()
    alts = re.findall(r'<img[^>]*alt="([^"]*)"', page)
    assert alts == [
        "Query patches: Loss: The loss curve falls. (picture 1 of 2)",
        "Query patches: Loss: The loss curve falls. (picture 2 of 2)",
        "Query patches: Boxes of the patches drawn:",
    ]
    assert notebooks.NO_ALT not in page


def test_training_patch_boxes_inside_the_image_and_seeded():
    image = np.zeros((90, 160, 3), dtype=np.uint8)
    boxes = localize.training_patch_boxes(image, 50, seed=3)
    assert boxes == localize.training_patch_boxes(image, 50, seed=3)
    assert boxes != localize.training_patch_boxes(image, 50, seed=4)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 90
        assert 0.25 * 160 <= x1 - x0 <= 0.6 * 160 and 0.25 * 90 <= y1 - y0 <= 0.6 * 90


def test_held_out_images_are_new_scenes():
    from updetr_lite.data.embedded import draw_image

    held = localize.held_out_images(3, size=64)
    assert list(held) == ["held-out 0", "held-out 1", "held-out 2"]
    again = localize.held_out_images(3, size=64)
    for name, image in held.items():
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert np.array_equal(image, again[name])  # seeded
    # not the embedded data a lite pre-training sees (seed 0), nor one another
    seen = np.asarray(draw_image(0, "val", 0, 64)[0])
    assert not np.array_equal(held["held-out 0"], seen)
    assert not np.array_equal(held["held-out 0"], held["held-out 1"])


def test_held_out_check_is_the_two_means_on_the_same_patches():
    from updetr_lite.tutorial import checkpoints

    model, cfg = checkpoints.load_demo_model(checkpoints.SHIPPED_CHECKPOINT)
    held = localize.held_out_images(1)
    got = localize.held_out_check(model, cfg, held, per_image=3)
    ious = [
        localize.training_image_patch_check(model, cfg, held["held-out 0"], box)
        for box in localize.training_patch_boxes(held["held-out 0"], 3, 0)
    ]
    fixed = localize.fixed_box_ious(held, per_image=3)
    assert got["patches"] == 3
    assert got["mean_iou"] == pytest.approx(sum(ious) / 3, abs=1e-6)
    assert got["fixed_box_iou"] == pytest.approx(sum(fixed) / 3, abs=1e-6)


def test_fixed_box_ious_by_the_formula():
    photos = {"a": np.zeros((90, 160, 3), np.uint8), "b": np.zeros((120, 120, 3), np.uint8)}
    got = localize.fixed_box_ious(photos, per_image=5, seed=2)
    boxes = [
        (im.shape[:2], b)
        for i, im in enumerate(photos.values())
        for b in localize.training_patch_boxes(im, 5, 2 + i)
    ]
    mw = sum((b[2] - b[0]) / w for (h, w), b in boxes) / len(boxes)
    mh = sum((b[3] - b[1]) / h for (h, w), b in boxes) / len(boxes)
    want = []
    for (h, w), (x0, y0, x1, y1) in boxes:
        f0, g0, f1, g1 = (
            (0.5 - mw / 2) * w,
            (0.5 - mh / 2) * h,
            (0.5 + mw / 2) * w,
            (0.5 + mh / 2) * h,
        )
        inter = max(0, min(x1, f1) - max(x0, f0)) * max(0, min(y1, g1) - max(y0, g0))
        union = (x1 - x0) * (y1 - y0) + (f1 - f0) * (g1 - g0) - inter
        want.append(inter / union)
    assert got == pytest.approx(want, abs=1e-5) and len(got) == 10


def test_cost_matrix_ticks_are_whole_cells():
    import matplotlib.pyplot as plt

    ax = viz.plot_cost_matrix(torch.rand(6, 2), ylabel="")
    assert list(ax.get_xticks()) == [0, 1]  # not -0.5 ... 1.5 for two targets
    yt = ax.get_yticks()
    assert list(yt) == [0, 1, 2, 3, 4, 5]
    assert ax.get_ylabel() == ""
    plt.close("all")


def test_picture_keys_labels_and_zero_bars():
    import matplotlib.pyplot as plt

    fig = viz.plot_histograms({"a": [1, 2, 2], "b": [0.5]})
    assert [ax.get_ylabel() for ax in fig.axes] == ["count", "count"]
    ax = viz.plot_attention_mask(torch.zeros(4, 4))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "may attend (0)",
        "blocked (-inf)",
    ]
    _, ax = plt.subplots()
    ax.bar([0, 1, 2], [0.0, 1.0, 0.5])
    ax.bar([3], [1e-9])
    assert viz.mark_zero_bars(ax, "0") == 2
    assert [t.get_text() for t in ax.texts] == ["0", "0"]
    _, ax = plt.subplots()
    viz.draw_boxes(ax, [[2, 3, 10, 20]], ["q0"], label_at="bottom")
    viz.draw_boxes(ax, [[2, 3, 10, 20]], ["p0"])
    assert [t.get_position()[1] for t in ax.texts] == [20, 3]
    plt.close("all")


def test_main_job_runs_only_when_every_run_has_its_checkpoint(tmp_path):
    from updetr_lite.tutorial import notebook_checks as nc

    (tmp_path / "pre_crop_s0").mkdir()
    (tmp_path / "pre_crop_s0" / "last.pth").write_bytes(b"x")
    names = {"pretrain": "pre_crop_s0", "scratch": "ft_scratch_s0"}
    assert nc.main_job_runs(names, root=tmp_path) is None  # ft_scratch_s0 missing
    (tmp_path / "ft_scratch_s0").mkdir()
    (tmp_path / "ft_scratch_s0" / "last.pth").write_bytes(b"x")
    got = nc.main_job_runs(names, root=tmp_path)
    assert got == {k: tmp_path / n for k, n in names.items()}
    assert nc.main_job_runs(names, use=False, root=tmp_path) is None
