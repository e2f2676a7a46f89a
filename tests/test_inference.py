"""Inference: one-shot localization (k <= M query patches) and prediction, library and CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from updetr_lite.cli import main
from updetr_lite.config import get_config
from updetr_lite.engine.checkpoint import CheckpointError, atomic_save
from updetr_lite.engine.inference import (
    InferenceError,
    eval_input,
    load_image,
    localize_patches,
    predict_image,
)
from updetr_lite.engine.loading import load_model
from updetr_lite.models import build_detr, build_updetr

H, W = 50, 70  # a non-square image: catches swapped h/w in the pixel conversion


def _save(model, cfg, kind, path):
    atomic_save(
        {
            "kind": kind,
            "num_classes": 2 if kind == "pretext" else cfg.model.num_classes,
            "model": model.state_dict(),
            "config": cfg.to_dict(),
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inference")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(image).save(d / "img.png")
    Image.fromarray(image[5:30, 10:45]).save(d / "patch.png")
    torch.manual_seed(0)
    out = {"dir": d, "image": d / "img.png", "patch": d / "patch.png", "array": image}
    for feat in ("roi", "crop"):
        cfg = get_config("smoke", [f"pretext.patch_feature={feat}"])
        out[f"pre_{feat}"] = _save(build_updetr(cfg), cfg, "pretext", d / f"pre_{feat}.pth")
    cfg = get_config("smoke")
    detr = build_detr(cfg)
    out["det"] = _save(detr, cfg, "detection", d / "det.pth")
    atomic_save({"model": detr.state_dict()}, d / "detr_authors.pth")  # DETR's release format
    out["det_authors"] = d / "detr_authors.pth"
    return out


def _direct(model, cfg, image, box, group):
    """Localize one box with the model's parts, by hand: queries of ``group`` only, their
    block of the group mask, the most confident query -> (pixel xyxy [4], score)."""
    images, mask = eval_input(image, max(cfg.data.pretext_scales), cfg.data.pretext_max_size)
    with torch.no_grad():
        features, fmask = model.backbone(images, mask)
        x0, y0, x1, y1 = box
        cxcywh = torch.tensor(
            [[[(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H]]]
        )
        pf = model.roi_patch_feature(features, fmask, cxcywh)  # [1, 1, C]
        n = cfg.model.num_queries // cfg.pretext.num_patches
        q = model.query_embed.weight[group * n : (group + 1) * n]
        query_pos = q[None] + model.patch_proj(pf)  # the patch feature added to each query
        hs, _ = model.transformer(
            src=model.input_proj(features),
            mask=fmask,
            query_pos=query_pos,
            pos=model.backbone[1](fmask),
            tgt_mask=torch.zeros(n, n),  # one group: nothing masked
        )
        probs = model.class_embed(hs[-1, 0]).softmax(-1)[:, 1]
        boxes = model.bbox_embed(hs[-1, 0]).sigmoid()
    i = int(probs.argmax())
    cx, cy, bw, bh = boxes[i].tolist()
    return [(cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W, (cy + bh / 2) * H], float(
        probs[i]
    )


def test_localize_one_box_per_patch_inside_image(files):
    for feat in ("roi", "crop"):
        model, cfg = load_model(files[f"pre_{feat}"], kind="pretext")
        queries = [[0, 0, 20, 30], [10, 5, 60, 45]]
        res = localize_patches(model, cfg, files["image"], boxes=queries)
        res_files = localize_patches(model, cfg, files["image"], patches=[files["patch"]])
        assert len(res) == 2 and len(res_files) == 1
        for r in res + res_files:
            x0, y0, x1, y1 = r["box"]
            assert 0 <= r["score"] <= 1
            # sigmoid boxes: centre inside the image, extent within one image size of it
            assert 0 <= (x0 + x1) / 2 <= W and 0 <= (y0 + y1) / 2 <= H
            assert 0 < x1 - x0 <= W and 0 < y1 - y0 <= H
        assert [r["query_box"] for r in res] == queries


def test_k_less_than_m_uses_first_groups(files):
    model, cfg = load_model(files["pre_roi"], kind="pretext")
    assert model.num_patches == 2 and model.attention_mask
    box = [4, 6, 40, 36]
    res = localize_patches(model, cfg, files["array"], boxes=[box])
    want_box, want_score = _direct(model, cfg, files["array"], box, group=0)
    assert res[0]["box"] == pytest.approx(want_box, abs=1e-4)
    assert res[0]["score"] == pytest.approx(want_score, abs=1e-6)
    # the comparison can tell groups apart: group 1's queries give another answer
    other_box, other_score = _direct(model, cfg, files["array"], box, group=1)
    assert other_box != pytest.approx(want_box, abs=1e-4) or other_score != pytest.approx(
        want_score, abs=1e-6
    )
    # with the group mask, patch 0's answer does not change when patch 1 joins (k = M)
    both = localize_patches(model, cfg, files["array"], boxes=[box, [30, 10, 68, 48]])
    assert both[0]["box"] == pytest.approx(res[0]["box"], abs=1e-4)
    assert both[0]["score"] == pytest.approx(res[0]["score"], abs=1e-6)
    # the contrast (smoke has 2 decoder layers): without the mask, patch 1 does change it
    assert cfg.model.dec_layers >= 2
    model.attention_mask = False
    unmasked = localize_patches(model, cfg, files["array"], boxes=[box, [30, 10, 68, 48]])
    assert unmasked[0]["box"] != pytest.approx(res[0]["box"], abs=1e-4)


def test_localize_errors(files):
    model, cfg = load_model(files["pre_roi"])
    with pytest.raises(InferenceError, match="M=2"):
        localize_patches(model, cfg, files["image"], boxes=[[0, 0, 10, 10]] * 3)
    with pytest.raises(InferenceError, match="not inside"):
        localize_patches(model, cfg, files["image"], boxes=[[0, 0, W + 5, 10]])
    with pytest.raises(InferenceError, match="either"):
        localize_patches(model, cfg, files["image"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        localize_patches(model, cfg, files["image"], patches=[files["dir"] / "nope.png"])
    with pytest.raises(CheckpointError, match="detection model"):
        load_model(files["det"], kind="pretext")
    with pytest.raises(CheckpointError, match="pretext model"):
        load_model(files["pre_roi"], kind="detection")
    detr, dcfg = load_model(files["det"])
    with pytest.raises(InferenceError, match="pretext"):
        localize_patches(detr, dcfg, files["image"], boxes=[[0, 0, 10, 10]])


def test_authors_updetr_checkpoint(files, tmp_path):
    """The authors' key names in a plain {'model': ...}: same answers as the kit's file."""
    kit = torch.load(files["pre_crop"], weights_only=False)["model"]
    names = {
        "patch_proj.": "patch2query.",
        "reconstruction_head.0.": "feature_align.layers.0.",
        "reconstruction_head.2.": "feature_align.layers.1.",
    }
    authors = {}
    for k, v in kit.items():
        for new, old in names.items():
            if k.startswith(new):
                k = old + k[len(new) :]
        authors[k] = v
    assert "patch2query.weight" in authors
    torch.save({"model": authors}, tmp_path / "updetr.pth")
    a_model, a_cfg = load_model(tmp_path / "updetr.pth", kind="pretext", preset="smoke")
    k_model, k_cfg = load_model(files["pre_crop"])
    assert a_cfg.model == k_cfg.model and a_cfg.pretext.patch_feature == "crop"
    boxes = [[0, 0, 20, 30], [10, 5, 60, 45]]
    a = localize_patches(a_model, a_cfg, files["image"], boxes=boxes)
    k = localize_patches(k_model, k_cfg, files["image"], boxes=boxes)
    np.testing.assert_allclose([r["box"] for r in a], [r["box"] for r in k], atol=1e-4)


def _detections_by_hand(model, cfg, image):
    images, mask = eval_input(image, cfg.data.test_size, cfg.data.max_size)
    with torch.no_grad():
        out = model(images, mask)
    probs = out["pred_logits"][0].softmax(-1)[:, :-1]
    scores, labels = probs.max(-1)
    cx, cy, bw, bh = out["pred_boxes"][0].unbind(-1)
    boxes = torch.stack(
        [(cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W, (cy + bh / 2) * H], -1
    )
    return scores, labels, boxes


def test_predict_image_matches_model_outputs(files):
    model, cfg = load_model(files["det"], kind="detection")
    det = predict_image(model, cfg, files["image"], threshold=0.0)
    scores, labels, boxes = _detections_by_hand(model, cfg, load_image(files["image"]))
    order = scores.argsort(descending=True)
    assert len(det["scores"]) == cfg.model.num_queries
    torch.testing.assert_close(det["scores"], scores[order])
    torch.testing.assert_close(det["boxes"], boxes[order], atol=1e-4, rtol=0)
    assert det["labels"].tolist() == labels[order].tolist()
    t = float(scores.median())
    kept = predict_image(model, cfg, files["image"], threshold=t)
    assert len(kept["scores"]) == int((scores >= t).sum())
    # the authors' DETR format (plain state dict) loads to the same model
    a_model, a_cfg = load_model(files["det_authors"], kind="detection", preset="smoke")
    a_det = predict_image(a_model, a_cfg, files["image"])
    torch.testing.assert_close(a_det["boxes"], det["boxes"])


def test_cli_predict_writes_json_and_png(files, tmp_path, capsys):
    out = tmp_path / "pred"
    code = main(["predict", "--checkpoint", str(files["det"]), str(files["image"]),
                 "--out", str(out), "--threshold", "0"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "img.json").read_text())
    model, cfg = load_model(files["det"])
    det = predict_image(model, cfg, files["image"])
    assert record["size"] == [H, W]
    np.testing.assert_allclose(record["boxes"], det["boxes"].numpy(), atol=1e-4)
    assert record["labels"] == det["labels"].tolist()
    png = Image.open(out / "img.png")
    assert png.format == "PNG" and png.width / png.height == pytest.approx(W / H, rel=0.05)
    assert json.loads((out / "predictions.json").read_text())[0]["image"] == str(files["image"])


def test_cli_localize_writes_json_and_png(files, tmp_path, capsys):
    out = tmp_path / "loc"
    code = main(["localize", "--checkpoint", str(files["pre_roi"]), "--image", str(files["image"]),
                 "--box", "0,0,20,30", "--box", "10,5,60,45", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "img_localize.json").read_text())
    model, cfg = load_model(files["pre_roi"])
    want = localize_patches(model, cfg, files["image"], boxes=[[0, 0, 20, 30], [10, 5, 60, 45]])
    np.testing.assert_allclose(
        [r["box"] for r in record["patches"]], [r["box"] for r in want], atol=1e-4
    )
    assert Image.open(out / "img_localize.png").format == "PNG"
    # k > M from the command line: one error line
    capsys.readouterr()
    code = main(["localize", "--checkpoint", str(files["pre_roi"]), "--image", str(files["image"]),
                 "--patch", str(files["patch"])] + ["--patch", str(files["patch"])] * 2)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines() == [err.strip()]
    assert err.startswith("updetr-lite: error: 3 query patches") and "M=2" in err


def test_authors_args_give_m(files, tmp_path):
    """The authors' files carry their argparse Namespace; its num_patches sets M."""
    import argparse

    state = torch.load(files["pre_crop"], weights_only=False)["model"]
    torch.save({"model": state, "args": argparse.Namespace(num_patches=4)}, tmp_path / "a.pth")
    model, cfg = load_model(tmp_path / "a.pth", preset="smoke")
    assert model.num_patches == cfg.pretext.num_patches == 4
    with pytest.raises(InferenceError, match="M=4"):
        localize_patches(model, cfg, files["image"], boxes=[[0, 0, 10, 10]] * 5)


def test_eval_input_takes_a_read_only_image_without_warning():
    import warnings

    image = np.arange(H * W * 3, dtype=np.uint8).reshape(H, W, 3)
    image.flags.writeable = False  # as np.asarray of a PIL image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, mask = eval_input(image, 32, 64)
    writable = eval_input(image.copy(), 32, 64)[0]
    assert torch.equal(x, writable) and x.shape[-2:] == mask.shape[-2:]
