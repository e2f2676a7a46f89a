"""The lite CNN: per-cell labels, the k-NN probe, torchvision-format weights, training."""

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision

from reproduce import lite_cnn
from updetr_lite.models.backbone import Backbone
from updetr_lite.models.weights import load_cnn_weights


def _brute_cell_labels(boxes, cats, h, w, stride):
    gh, gw = math.ceil(h / stride), math.ceil(w / stride)
    out = [[0] * gw for _ in range(gh)]
    for i in range(gh):
        for j in range(gw):
            cy, cx = (i + 0.5) * stride, (j + 0.5) * stride
            best, best_area = 0, None
            for (x, y, bw, bh), c in zip(boxes, cats):
                centre_here = i * stride <= y + bh / 2 < (i + 1) * stride and (
                    j * stride <= x + bw / 2 < (j + 1) * stride
                )
                if (x <= cx < x + bw and y <= cy < y + bh) or centre_here:
                    if best_area is None or bw * bh < best_area:
                        best, best_area = c, bw * bh
            out[i][j] = best
    return torch.tensor(out)


def test_cell_labels_match_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        h, w = 64 + 16 * (trial % 3), 80
        n = int(torch.randint(0, 5, (1,), generator=g))
        boxes, cats = [], []
        for _ in range(n):
            bw, bh = (float(v) for v in torch.randint(6, 50, (2,), generator=g))
            x = float(torch.randint(0, w - int(bw), (1,), generator=g))
            y = float(torch.randint(0, h - int(bh), (1,), generator=g))
            boxes.append([x, y, bw, bh])
            cats.append(int(torch.randint(1, 6, (1,), generator=g)))
        got = lite_cnn.cell_labels(boxes, cats, h, w, 16)
        want = _brute_cell_labels(boxes, cats, h, w, 16)
        assert torch.equal(got, want), (boxes, cats)


def _random_boxes(g, h, w):
    boxes = []
    for _ in range(int(torch.randint(0, 5, (1,), generator=g))):
        bw, bh = (float(v) for v in torch.randint(6, 50, (2,), generator=g))
        x = float(torch.randint(0, w - int(bw), (1,), generator=g))
        y = float(torch.randint(0, h - int(bh), (1,), generator=g))
        boxes.append([x, y, bw, bh])
    return boxes


def test_cell_box_targets_are_the_owning_boxes_edges_seen_from_each_cell_centre():
    g = torch.Generator().manual_seed(1)
    for trial in range(20):
        h, w = 64 + 16 * (trial % 3), 80
        boxes = _random_boxes(g, h, w)
        # the owner of a cell is the box whose label it takes: give every box its own label
        owners = _brute_cell_labels(boxes, list(range(1, len(boxes) + 1)), h, w, 16)
        got = lite_cnn.cell_box_targets(boxes, h, w, 16)
        assert got.shape == (4, *owners.shape)
        for i in range(owners.shape[0]):
            for j in range(owners.shape[1]):
                k = int(owners[i, j]) - 1
                if k < 0:
                    assert got[:, i, j].isnan().all()
                    continue
                x, y, bw, bh = boxes[k]
                cy, cx = (i + 0.5) * 16, (j + 0.5) * 16
                want = torch.tensor([cx - x, cy - y, x + bw - cx, y + bh - cy]) / 16
                assert torch.allclose(got[:, i, j], want), (boxes, i, j)


def _brute_knn(trx, tr_y, tex, k):
    preds = []
    for x in tex:
        sims = [(float(torch.dot(x, t) / (x.norm() * t.norm())), int(y)) for t, y in zip(trx, tr_y)]
        sims.sort(key=lambda s: -s[0])
        votes = {}
        for s, y in sims[:k]:
            votes[y] = votes.get(y, 0.0) + max(s, 0.0) + 1e-6
        preds.append(max(votes, key=votes.get))
    return preds


def test_knn_accuracy_can_fail():
    g = torch.Generator().manual_seed(1)
    # separable: each class its own direction
    centers = torch.randn(4, 16, generator=g) * 5
    y_tr, y_te = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (100,), generator=g)
    x_tr = centers[y_tr] + 0.1 * torch.randn(200, 16, generator=g)
    x_te = centers[y_te] + 0.1 * torch.randn(100, 16, generator=g)
    assert lite_cnn.knn_accuracy(x_tr, y_tr, x_te, y_te, k=5) == 1.0
    # random features: labels cannot be predicted; accuracy near chance (0.25)
    r_tr, r_te = torch.randn(200, 16, generator=g), torch.randn(100, 16, generator=g)
    acc = lite_cnn.knn_accuracy(r_tr, y_tr, r_te, y_te, k=5)
    assert acc < 0.45
    # and it is exactly the brute-force weighted k-NN
    want = torch.tensor(_brute_knn(r_tr, y_tr, r_te, 5))
    assert acc == float((want == y_te).float().mean())


def test_weights_load_into_the_kits_backbone(tmp_path):
    torch.manual_seed(0)
    cnn = lite_cnn.DenseCNN("resnet18", "layer3", num_classes=6)
    # make BN statistics non-trivial so that a wrong mapping would show
    cnn.train()
    with torch.no_grad():
        for _ in range(3):
            cnn(torch.randn(4, 3, 64, 64) * 2 + 1)
    cnn.eval()
    sd = cnn.torchvision_state_dict()
    # torchvision format: exactly the keys of a torchvision ResNet-18 up to layer3
    tv = set(torchvision.models.resnet18().state_dict())
    assert set(sd) == {k for k in tv if not k.startswith(("layer4.", "fc."))}
    path = tmp_path / "cnn.pth"
    torch.save(sd, path)
    bb = Backbone("resnet18", "layer3", frozen_cnn=True)
    load_cnn_weights(bb, str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = cnn.trunk(x)
        got, _ = bb(x, torch.zeros(2, 64, 64, dtype=torch.bool))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_object_crops_keep_objects_and_labels():
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    img[:, 5:25, 10:30] = 200
    anns = [
        {"bbox": [10, 5, 20, 20], "category_id": 3},
        {"bbox": [40, 30, 4, 4], "category_id": 2},  # under min_side: left out
        {"bbox": [30, 10, 30, 30], "category_id": 5},
    ]
    crops, labels = lite_cnn.object_crops([img], [anns], size=16, min_side=8)
    assert crops.shape == (2, 3, 16, 16) and labels.tolist() == [3, 5]
    assert crops[0].float().mean() > 190  # the bright square, all of it


def test_train_cnn_learns_a_dense_task(tmp_path):
    # class 1 cells are bright, class 2 cells dark, class 0 grey: learnable in a few steps
    g = torch.Generator().manual_seed(0)
    images, labels = [], []
    for _ in range(16):
        lab = torch.randint(0, 3, (2, 2), generator=g)
        val = torch.tensor([128, 250, 5])[lab]
        img = val.repeat_interleave(16, 0).repeat_interleave(16, 1)
        images.append(img[None].expand(3, -1, -1).to(torch.uint8).clone())
        labels.append(lab)
    out = lite_cnn.train_cnn(
        images,
        labels,
        3,
        steps=30,
        out_dir=tmp_path,
        batch_size=8,
        lr=3e-3,
        bf16=False,
        log_every=5,
        echo=lambda *_: None,
    )
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 30 and out["steps"] == 30
    assert recs[-1]["loss"] < 0.5 * recs[0]["loss"], (recs[0]["loss"], recs[-1]["loss"])
    assert (tmp_path / "cnn.pth").exists()
    bb = Backbone("resnet18", "layer3", frozen_cnn=True)
    load_cnn_weights(bb, str(tmp_path / "cnn.pth"))


def test_train_cnn_with_box_targets_learns_where_the_edges_are(tmp_path):
    # one bright square a picture, its left edge at a random offset inside a 16-px cell:
    # the class alone says nothing of the offset; the box head must learn it from the pixels
    g = torch.Generator().manual_seed(0)
    images, labels, boxes = [], [], []
    for _ in range(16):
        img = torch.full((3, 32, 32), 40, dtype=torch.uint8)
        x = int(torch.randint(0, 12, (1,), generator=g))
        img[:, 4:28, x : x + 20] = 230
        bb = [[float(x), 4.0, 20.0, 24.0]]
        images.append(img)
        labels.append(lite_cnn.cell_labels(bb, [1], 32, 32))
        boxes.append(lite_cnn.cell_box_targets(bb, 32, 32))
    with pytest.raises(ValueError, match="box_targets"):
        lite_cnn.train_cnn(images, labels, 2, 1, tmp_path, box_weight=1.0, bf16=False)
    lite_cnn.train_cnn(
        images,
        labels,
        2,
        steps=40,
        out_dir=tmp_path,
        batch_size=8,
        lr=3e-3,
        bf16=False,
        log_every=5,
        box_targets=boxes,
        box_weight=1.0,
        echo=lambda *_: None,
    )
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert recs[-1]["box_l1"] < 0.5 * recs[0]["box_l1"], (recs[0]["box_l1"], recs[-1]["box_l1"])
    # the saved trunk is still torchvision's ResNet: the heads are not in the file
    state = torch.load(tmp_path / "cnn.pth")
    assert not any(k.startswith(("head", "box_head")) for k in state)
    load_cnn_weights(Backbone("resnet18", "layer3", frozen_cnn=True), str(tmp_path / "cnn.pth"))


def test_cnn_data_is_a_separate_set():
    from updetr_lite.config import get_config

    cfg = get_config("lite")
    d = lite_cnn.cnn_data_config(cfg, 3000)
    assert d.embedded_seed != cfg.data.embedded_seed
    assert d.embedded_train == 3000 and d.embedded_image_size == cfg.data.embedded_image_size


# ----------------------------------------------------------------------------- the shipped CNN


def test_shipped_cnn_is_the_recorded_file_and_the_lite_presets():
    from reproduce.lite_plan import CNN_BUDGET_KEYS, LITE_BUDGET
    from updetr_lite.config import get_config
    from updetr_lite.presets import LITE_CNN, LITE_CNN_DIR

    record = json.loads((LITE_CNN_DIR / lite_cnn.RECORD).read_text())
    assert LITE_CNN.stat().st_size == record["file_bytes"]
    assert lite_cnn.file_sha256(LITE_CNN) == record["sha256"]
    # trained with the budget the lite plan states
    assert record["budget"] == {k: LITE_BUDGET[k] for k in CNN_BUDGET_KEYS}
    assert record["summary"]["train"]["steps"] == LITE_BUDGET["cnn_steps"]
    # the box head trained (its loss is logged only when it exists)
    assert (LITE_BUDGET["cnn_box_weight"] > 0) == ("box_l1" in record["summary"]["train"])
    probe = record["summary"]["probe"]
    assert probe["trained"] > probe["random"] + 0.3  # useful features, not a random CNN
    # the lite preset loads it, every key of the backbone (load_cnn_weights fails otherwise)
    cfg = get_config("lite")
    assert cfg.model.backbone_weights == str(LITE_CNN)
    bb = Backbone(cfg.model.backbone, cfg.model.backbone_layer, frozen_cnn=True)
    load_cnn_weights(bb, cfg.model.backbone_weights)
    # the same maps as torchvision's ResNet-18 holding the file, up to layer3
    tv = torchvision.models.resnet18().eval()
    missing = tv.load_state_dict(torch.load(LITE_CNN, weights_only=True), strict=False)
    assert all(k.startswith(("layer4.", "fc.")) for k in missing.missing_keys)
    assert not missing.unexpected_keys
    trunk = torch.nn.Sequential(
        tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = bb(x, torch.zeros(2, 64, 64, dtype=torch.bool))
        torch.testing.assert_close(got, trunk(x), rtol=1e-4, atol=1e-4)
    # the smoke preset (the tests' runs) stays on a random CNN
    assert get_config("smoke").model.backbone_weights is None


def _fake_run(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    torch.save({"conv1.weight": torch.randn(4, 3, 3, 3)}, run_dir / "cnn.pth")
    (run_dir / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    probe = {"k": 5, "trained": 0.7, "random": 0.3}
    (run_dir / "summary.json").write_text(json.dumps({"train": {"steps": 3}, "probe": probe}))
    (run_dir / "parameters.json").write_text(
        json.dumps({"cnn_steps": 3, "cnn_images": 16, "cnn_batch": 8})
    )


def test_ship_then_install_copies_the_weights_and_checks_them(tmp_path):
    _fake_run(tmp_path / "run")
    rec = lite_cnn.ship(tmp_path / "run", "a test run", dest=tmp_path / "pkg")
    assert rec["budget"] == {"cnn_steps": 3, "cnn_images": 16, "cnn_batch": 8}
    summary = lite_cnn.install_shipped(tmp_path / "cnn", src=tmp_path / "pkg")
    for name in lite_cnn.SHIPPED_FILES:
        assert (tmp_path / "cnn" / name).read_bytes() == (tmp_path / "run" / name).read_bytes()
    # the report's probe.json is the record's probe; the summary says where the CNN came from
    assert json.loads((tmp_path / "cnn" / "probe.json").read_text())["trained"] == 0.7
    assert summary["shipped"] == {"source": "a test run", "sha256": rec["sha256"]}
    # a damaged file is refused, naming it
    raw = bytearray((tmp_path / "pkg" / "cnn.pth").read_bytes())
    raw[-1] ^= 1
    (tmp_path / "pkg" / "cnn.pth").write_bytes(bytes(raw))
    with pytest.raises(lite_cnn.ShippedCNNError, match=r"pkg/cnn\.pth: sha256"):
        lite_cnn.install_shipped(tmp_path / "again", src=tmp_path / "pkg")
    (tmp_path / "pkg" / lite_cnn.RECORD).unlink()
    with pytest.raises(lite_cnn.ShippedCNNError, match="record.json: missing"):
        lite_cnn.install_shipped(tmp_path / "again", src=tmp_path / "pkg")


def test_the_lite_plan_copies_the_shipped_cnn_and_smoke_trains_one(tmp_path):
    from reproduce.execute import notebook_parameters
    from reproduce.launch import Launch
    from reproduce.plan import plan

    for scale, shipped in (("lite", True), ("smoke", False)):
        params = notebook_parameters(plan(scale), "cnn", tmp_path, [], Launch())
        assert params["shipped"] is shipped
