"""Faults during training and on disk, each with the test that failed before its fix: NaN
predictions, non-finite weights, empty data, extreme images, checkpoint sets cut by a kill,
changed settings on resume, two runs into one folder, the feature cache's key and skips."""

import json
from pathlib import Path

import pytest
import torch

from updetr_lite.config import get_config
from updetr_lite.engine.checkpoint import load_checkpoint
from updetr_lite.engine.train import NonFiniteLossError, StepModel, train

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
