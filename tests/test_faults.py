"""Faults during training and on disk, each with the test that failed before its fix: NaN
predictions, non-finite weights, empty data, extreme images, checkpoint sets cut by a kill,
changed settings on resume, two runs into one folder, the feature cache's key and skips."""

import json
from pathlib import Path

import pytest
import torch

from updetr_lite.config import get_config
from updetr_lite.engine.checkpoint import load_checkpoint
from updetr_lite.engine.step import StepModel
from updetr_lite.engine.train import NonFiniteLossError, train

# 16 train images / batch 4 = 4 steps per epoch
FAST = ["finetune.epochs=1", "finetune.cache_features=False", "finetune.log_every=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def smoke(cache, *overrides):
    return get_config("smoke", [f"data.cache_dir={cache!r}", *overrides])


def test_nan_predictions_stop_before_the_matcher_and_name_no_missing_file(
    tmp_path, cache, monkeypatch
):
    forward = StepModel.forward

    def nan_boxes(self, *a, **k):
        out = forward(self, *a, **k)
        out["pred_boxes"] = out["pred_boxes"] * float("nan")
        return out

    monkeypatch.setattr(StepModel, "forward", nan_boxes)
    with pytest.raises(NonFiniteLossError) as info:
        train(smoke(cache, *FAST), "finetune", tmp_path / "run", progress=False)
    msg = str(info.value)
    assert msg.startswith("step 1 (epoch 0): the model's pred_boxes hold NaN or inf"), msg
    assert "before any checkpoint was written" in msg and "last.pth" not in msg
    assert not (tmp_path / "run" / "last.pth").exists()


def test_non_finite_weights_are_never_saved(tmp_path, cache, monkeypatch):
    step = torch.optim.AdamW.step
    calls = {"n": 0}

    def poison_4th(self, *a, **k):  # the epoch's last step leaves a NaN weight, finite loss
        out = step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 4:
            self.param_groups[0]["params"][0].data.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poison_4th)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="weight tensors hold NaN") as info:
        train(smoke(cache, *FAST), "finetune", run, last_every_steps=1, progress=False)
    assert f"the last good checkpoint is {run / 'last.pth'}" in str(info.value)
    ck = load_checkpoint(run / "last.pth")  # the step-3 checkpoint, not the poisoned one
    assert ck["step"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (run / "best.pth").exists()


def _nan_box_head_checkpoint(path, cfg):
    from updetr_lite.engine.checkpoint import atomic_save
    from updetr_lite.models import build_detr

    torch.manual_seed(0)
    model = build_detr(cfg)
    with torch.no_grad():
        model.bbox_embed.layers[-1].weight.fill_(float("nan"))
    state = {"kind": "detection", "num_classes": cfg.model.num_classes}
    atomic_save(state | {"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return model


def test_nan_boxes_never_score_an_ap(tmp_path, cache, capsys):
    from torch.utils.data import DataLoader

    from updetr_lite.cli import main
    from updetr_lite.data.build import build_detection_datasets
    from updetr_lite.data.collate import collate_detection
    from updetr_lite.engine.evaluate import EvaluationError, evaluate

    cfg = smoke(cache)
    model = _nan_box_head_checkpoint(tmp_path / "nan.pth", cfg)
    _, val = build_detection_datasets(cfg)
    loader = DataLoader(val, batch_size=4, collate_fn=collate_detection)
    with pytest.raises(EvaluationError, match="NaN or inf boxes"):
        evaluate(model, loader, val.coco)
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (48, 40), (90, 30, 200)).save(img)
    from updetr_lite.engine.inference import InferenceError, predict_image

    with pytest.raises(InferenceError, match="NaN or inf boxes or scores on .*a.png"):
        predict_image(model.eval(), cfg, img)
    for argv in (["evaluate"], ["predict", str(img), "--out", str(tmp_path / "p")]):
        code = main([*argv, "--checkpoint", str(tmp_path / "nan.pth")])
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1, err
        assert "nan.pth" in err and "hold NaN or inf (first: bbox_embed.layers.2.weight)" in err
    assert not (tmp_path / "p" / "predictions.json").exists()


def test_empty_training_set_is_an_error_naming_the_file(tmp_path, capsys):
    from updetr_lite.cli import main

    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    val = {"images": [{"id": 1, "file_name": "1.png", "width": 40, "height": 30}]}
    for split, d in (("train", {"images": []}), ("val", val)):
        d = d | {"annotations": [], "categories": [{"id": 1, "name": "x"}]}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(d))
    out = tmp_path / "run"
    argv = ["finetune", "--preset", "smoke", "--out", str(out), "--set", "data.detection=coco"]
    code = main([*argv, "--set", f"data.detection_root={str(root)!r}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "instances_train2017.json: no images" in err
    assert not (out / "last.pth").exists()


def _records(out, kind):
    lines = (Path(out) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_skips_are_counted_on_the_feature_cache_path_built_and_reused(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    Image.new("RGB", (10, 40)).save(imgs / "tiny.png")
    (imgs / "bad.jpg").write_bytes(b"not a jpeg")
    cache = tmp_path / "cache"
    cfg = smoke(str(cache), f"data.pretext_root={str(imgs)!r}", "pretrain.epochs=1")
    assert cfg.pretrain.cache_features
    for run in ("first", "reused"):
        train(cfg, "pretrain", tmp_path / run, progress=False)
        skips = _records(tmp_path / run, "skips")
        # the maps and the query patch bank ('crop') each read every file once
        assert [
            (r["where"], r["report"]["too_small"], r["report"]["unreadable"]) for r in skips
        ] == [("feature cache (pretext)", 1, 1), ("feature cache (query patch bank)", 1, 1)], skips
        assert {Path(f).name for f in skips[0]["report"]["files"]} == {"tiny.png", "bad.jpg"}
    assert "(reused)" in capsys.readouterr().out


def _tiny_coco(root, label):
    from PIL import Image

    for split, n in (("train2017", 4), ("val2017", 2)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(1, n + 1):
            Image.new("RGB", (64, 48), (40 * i, 100, 30)).save(root / split / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
            anns.append({"id": i, "image_id": i, "category_id": label, "bbox": [8, 6, 30, 20]})
        d = {"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(d))


def test_feature_cache_follows_edited_labels(tmp_path, capsys):
    root, cache = tmp_path / "coco", tmp_path / "cache"
    _tiny_coco(root, label=1)
    cfg = get_config(
        "smoke",
        [
            *[
                f"{k}={v!r}"
                for k, v in (
                    ("data.detection", "coco"),
                    ("data.detection_root", str(root)),
                    ("data.cache_dir", str(cache)),
                )
            ],
            "finetune.epochs=1",
            "finetune.batch_size=2",
        ],
    )
    assert cfg.finetune.cache_features
    train(cfg, "finetune", tmp_path / "a", progress=False)
    first = sorted((cache / "features").glob("*.pt"))
    assert len(first) == 2  # train and val
    capsys.readouterr()
    _tiny_coco(root, label=2)  # same images, same count, other labels
    train(cfg, "finetune", tmp_path / "b", progress=False)
    assert "changed since the feature cache" in capsys.readouterr().out
    now = sorted((cache / "features").glob("*.pt"))
    assert len(now) == 2 and not set(now) & set(first)  # rebuilt, the stale ones removed
    labels = {int(x) for p in now for t in torch.load(p)["targets"] for x in t["labels"]}
    assert labels == {2}


def test_a_second_run_into_the_same_folder_is_refused_and_a_stale_lock_is_taken(
    tmp_path, cache, capsys
):
    import subprocess

    from updetr_lite.engine.runlock import OutputInUseError

    out = tmp_path / "run"
    out.mkdir()
    cfg = smoke(cache, "pretrain.epochs=1")
    import socket

    live = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".lock").write_text(f"{live.pid} {socket.gethostname()}\n")
        with pytest.raises(OutputInUseError, match=rf"in use by another run \(process {live.pid} "):
            train(cfg, "pretrain", out, progress=False)
        assert not (out / "log.jsonl").exists()
    finally:
        live.kill()
        live.wait()
    capsys.readouterr()
    # the same lock, its process now gone (as after a SIGKILL): detected, removed, said
    train(cfg, "pretrain", out, progress=False)
    assert f"removing the lock of process {live.pid} (no longer runs)" in capsys.readouterr().out
    assert (out / "last.pth").exists() and not (out / ".lock").exists()  # released at the end


def test_a_checkpoint_set_cut_by_a_kill_is_completed_on_resume(tmp_path, cache, capsys):
    import shutil

    from updetr_lite.engine.checkpoint import atomic_save

    out = tmp_path / "run"
    cfg = smoke(cache, "finetune.epochs=2", "finetune.checkpoint_every=1")
    train(cfg, "finetune", out, progress=False)
    last = load_checkpoint(out / "last.pth")
    assert last["epoch"] == 2 and (out / "epoch_2.pth").exists()
    # a kill after last.pth of epoch 2: epoch_2.pth never written, best.pth of an older best
    (out / "epoch_2.pth").unlink()
    stale = load_checkpoint(out / "epoch_1.pth") | {"best": -1.0}
    atomic_save(stale, out / "best.pth")
    shutil.copyfile(out / "epoch_1.pth", out / ".last.pth.x1y2z3.tmp")  # an orphaned temp file
    capsys.readouterr()
    train(cfg, "finetune", out, resume=True, progress=False)
    said = capsys.readouterr().out
    assert "removed 1 temporary files" in said and "rewrote epoch_2.pth, best.pth" in said
    assert not list(out.glob(".*.tmp"))
    for name in ("epoch_2.pth", "best.pth"):
        assert (out / name).read_bytes() == (out / "last.pth").read_bytes(), name
    capsys.readouterr()
    train(cfg, "finetune", out, resume=True, progress=False)  # a complete set: nothing to do
    assert "rewrote" not in capsys.readouterr().out


def test_resume_with_changed_settings_is_refused_naming_them(tmp_path, cache, capsys):
    from updetr_lite.engine.train import TrainingError

    out = tmp_path / "run"
    cfg = smoke(cache, "pretrain.epochs=1")
    train(cfg, "pretrain", out, progress=False)
    saved = (out / "config.json").read_text()
    with pytest.raises(TrainingError, match=r"other settings \(pretrain.lr 0.0005 -> 0.001\)"):
        train(
            smoke(cache, "pretrain.epochs=1", "pretrain.lr=1e-3"),
            "pretrain",
            out,
            resume=True,
            progress=False,
        )
    assert (out / "config.json").read_text() == saved  # not overwritten by the refused run
    other = get_config("lite", [f"data.cache_dir={cache!r}"])  # another preset's settings
    with pytest.raises(TrainingError, match=r"model.hidden_dim 32 -> 128"):
        train(other, "pretrain", out, resume=True, progress=False)
    # a longer schedule is applied, and said
    capsys.readouterr()
    summary = train(smoke(cache, "pretrain.epochs=2"), "pretrain", out, resume=True, progress=False)
    assert "applying changed settings: pretrain.epochs 1 -> 2" in capsys.readouterr().out
    assert summary["epochs"] == 2
