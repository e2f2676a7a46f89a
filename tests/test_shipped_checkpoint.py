"""The lite demo checkpoint that ships with the kit (updetr_lite/tutorial/demo_checkpoint/):
small, stored as fp16, loads into the fp32 model exactly as saved, and finds the patches of
its record (``python -m updetr_lite.tutorial.checkpoints --make-checkpoint`` wrote both)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from updetr_lite.tutorial import checkpoints, localize, training

# what the notebooks promise of it: the mean IoU over its 40 test patches is above this
STATED_MEAN_IOU = 0.5


@pytest.fixture(scope="module")
def record():
    assert checkpoints.SHIPPED_CHECKPOINT.is_file(), (
        f"{checkpoints.SHIPPED_CHECKPOINT} missing: run `python -m updetr_lite.tutorial.checkpoints --make-checkpoint`"
    )
    return json.loads(checkpoints.SHIPPED_RECORD.read_text())


def test_file_is_small_fp16_and_the_one_recorded(record):
    raw = checkpoints.SHIPPED_CHECKPOINT.read_bytes()
    assert len(raw) == record["file_bytes"] < 10e6
    assert hashlib.sha256(raw).hexdigest() == record["sha256"]
    ckpt = torch.load(checkpoints.SHIPPED_CHECKPOINT, map_location="cpu", weights_only=False)
    floats = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert record["settings"]["steps"] == ckpt["step"] == training.STEPS_FULL
    assert record["torch_threads"] == 1
    # the fp32 model holds exactly the stored fp16 values
    model, _ = checkpoints.load_demo_model(checkpoints.SHIPPED_CHECKPOINT)
    state = model.state_dict()
    for k, v in ckpt["model"].items():
        assert state[k].dtype == (torch.float32 if v.is_floating_point() else v.dtype), k
        assert torch.equal(state[k], v.to(state[k].dtype)), k


def test_it_localizes_its_test_patches(record):
    model, cfg = checkpoints.load_demo_model(checkpoints.SHIPPED_CHECKPOINT)
    ious = localize.training_patches_check(model, cfg, localize.demo_photos(), per_image=4)
    assert len(ious) == len(record["test_ious"]) == 40
    assert ious == pytest.approx(record["test_ious"], abs=0.02)
    assert np.mean(ious) == pytest.approx(record["test_iou_mean"], abs=0.01)
    assert np.mean(ious) > STATED_MEAN_IOU
