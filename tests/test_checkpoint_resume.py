"""Checkpoints: a SIGKILLed run resumes bit for bit, NaN stops cleanly, writes are atomic,
and a checkpoint of the wrong kind is refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from updetr_lite.config import get_config
from updetr_lite.engine.checkpoint import (
    CheckpointError,
    atomic_save,
    check_kind,
    load_checkpoint,
)
from updetr_lite.engine.train import NonFiniteLossError, train
from updetr_lite.models.criterion import SetCriterion

ROOT = Path(__file__).resolve().parents[1]

# 16 train images / batch 4 = 4 steps per epoch, 3 epochs; augmentation on (no feature cache)
OVERRIDES = [
    "finetune.epochs=3",
    "finetune.deterministic=True",
    "finetune.cache_features=False",
    "finetune.log_every=1",
    "finetune.eval_every=1",
    "model.dropout=0.1",  # the model draws random numbers: resume must restore the RNG
]

CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from updetr_lite.config import get_config
from updetr_lite.engine.train import train
from updetr_lite.models.criterion import SetCriterion
out, cache, delay, resume = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
overrides = {overrides!r} + [f"data.cache_dir={{cache!r}}"]
if delay:  # slow the run down so that the parent can kill it mid-epoch
    forward = SetCriterion.forward
    def slow(self, *a, **k):
        time.sleep(delay)
        return forward(self, *a, **k)
    SetCriterion.forward = slow
train(get_config("smoke", overrides), "finetune", out, resume=resume, last_every_steps=1,
      progress=False)
"""


def _child(out, cache, delay=0.0, resume=False):
    script = CHILD.format(overrides=OVERRIDES)
    args = [sys.executable, "-c", script, str(out), str(cache), str(delay), "1" if resume else "0"]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _records(out):
    lines = (Path(out) / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    cache = tmp_path / "cache"
    ref = _child(tmp_path / "ref", cache)
    assert ref.wait(timeout=120) == 0, ref.stderr.read()

    run = tmp_path / "killed"
    proc = _child(run, cache, delay=0.3)
    killed_at = None
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if (run / "last.pth").exists():
            ck = torch.load(run / "last.pth", weights_only=False)  # never half written
            if ck["epoch"] >= 1 and ck["batches_done"] >= 1:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = ck["step"]
                break
        time.sleep(0.05)
    assert killed_at is not None, "the run ended before it could be killed mid-epoch"
    ck = load_checkpoint(run / "last.pth")
    assert ck["epoch"] >= 1 and 0 < ck["batches_done"] < 4  # a mid-epoch checkpoint
    ref_last = load_checkpoint(tmp_path / "ref" / "last.pth")
    assert ref_last["step"] == 12 > ck["step"]

    res = _child(run, cache, resume=True)
    assert res.wait(timeout=120) == 0, res.stderr.read()
    final = load_checkpoint(run / "last.pth")
    assert final["step"] == 12 and final["epoch"] == 3
    for k, v in ref_last["model"].items():
        assert torch.equal(final["model"][k], v), k
    # the first epoch's weights differ from the last: the comparison is not vacuous
    assert not torch.equal(
        ref_last["model"]["class_embed.weight"], ck["model"]["class_embed.weight"]
    )
    want, got = _records(tmp_path / "ref"), _records(run)
    assert [r["type"] for r in want].count("eval") == 3
    assert got == want


def test_nan_stops_with_step_and_term_and_keeps_last_good(tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = SetCriterion.forward

    def nan_at_6(self, outputs, targets):
        calls["n"] += 1
        out = forward(self, outputs, targets)
        if calls["n"] == 6:
            out["loss_giou"] = out["loss_giou"] * float("nan")
            out["loss"] = out["loss"] + out["loss_giou"]
        return out

    monkeypatch.setattr(SetCriterion, "forward", nan_at_6)
    cfg = get_config("smoke", OVERRIDES + [f"data.cache_dir={str(tmp_path / 'cache')!r}"])
    with pytest.raises(NonFiniteLossError, match=r"step 6 .*loss term loss_giou is nan"):
        train(cfg, "finetune", tmp_path / "run", last_every_steps=1, progress=False)
    ck = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ck["step"] == 5 and ck["epoch"] == 1 and ck["batches_done"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    logged = [r["step"] for r in _records(tmp_path / "run") if r["type"] == "train"]
    assert logged == [1, 2, 3, 4, 5]


class Boom:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_failed_save_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"step": 1, "w": torch.arange(1000.0)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"step": 2, "w": torch.zeros(1000), "boom": Boom()}, path)
    old = torch.load(path, weights_only=False)
    assert old["step"] == 1 and torch.equal(old["w"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temp file left
    path.write_bytes(b"\x00" * 10)  # what a non-atomic, interrupted write could leave
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_wrong_kind_is_refused(tmp_path):
    pretext = {"kind": "pretext", "num_classes": 2, "model": {}}
    det = {"model": {"class_embed.weight": torch.zeros(7, 4), "query_embed.weight": torch.zeros(2)}}
    with pytest.raises(CheckpointError, match="holds a pretext model, but a detection model"):
        check_kind(pretext, "detection", 6)
    with pytest.raises(CheckpointError, match="has 6 classes but model.num_classes=21"):
        check_kind(det, "detection", 21)
    check_kind(det, "detection", 6)  # inferred from the class head: 7 = 6 + no-object
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pth")
    # resuming a fine-tuning run from a pretext last.pth: refused before any work
    atomic_save(pretext, tmp_path / "run" / "last.pth")
    cfg = get_config("smoke", [f"data.cache_dir={str(tmp_path / 'cache')!r}"])
    with pytest.raises(CheckpointError, match="pretext model"):
        train(cfg, "finetune", tmp_path / "run", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="holds a detection model, but a pretext"):
        atomic_save(det, tmp_path / "det.pth")
        train(cfg, "finetune", tmp_path / "run2", init=tmp_path / "det.pth", progress=False)


def test_item_seed_depends_on_seed_epoch_and_index():
    """SeededDataset: item i of epoch e draws the same numbers every time, other numbers in
    another epoch, for another index or another seed; the caller's RNG is left alone."""
    from updetr_lite.engine.seeding import SeededDataset

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    def draw(seed, epoch, i):
        ds = SeededDataset(Draws(), seed)
        ds.epoch = epoch
        return ds[i]

    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert torch.equal(draw(1, 0, 2), draw(1, 0, 2))
    assert torch.equal(torch.get_rng_state(), state)
    base = draw(1, 0, 2)
    for other in (draw(1, 1, 2), draw(1, 0, 3), draw(2, 0, 2)):
        assert not torch.equal(base, other)


def test_item_seed_is_the_documented_recipe_on_the_cpu_generator_alone(monkeypatch):
    """Item i of epoch e draws what seeding python, numpy and torch from
    SeedSequence([seed, e, i]) gives (computed here without SeededDataset), so committed
    results stay reproducible; and no accelerator is seeded per item (torch.manual_seed
    queues one per device, formatting a stack trace each: 0.5 ms an item on a CPU)."""
    import random

    import numpy as np

    from updetr_lite.engine.seeding import SeededDataset

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return random.random(), float(np.random.rand()), torch.rand(2).tolist()

    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    ds = SeededDataset(Draws(), 3)
    ds.epoch = 2
    got = ds[5]
    assert calls == []
    s = np.random.SeedSequence([3, 2, 5]).generate_state(2)
    random.seed(int(s[0]))
    np.random.seed(int(s[1]))
    g = torch.Generator().manual_seed(int(s[0]) << 32 | int(s[1]))
    assert got == (random.random(), float(np.random.rand()), torch.rand(2, generator=g).tolist())


def test_resume_across_lr_drop_restores_scheduler_and_optimizer(tmp_path):
    """Stopped mid-epoch 1 before the lr drop (lr_drop=2), resumed: the drop comes at the end
    of epoch 1 as in the uninterrupted run; scheduler, optimizer (lr, moments) and weights equal."""
    base = [
        f"data.cache_dir={str(tmp_path / 'cache')!r}",
        "finetune.epochs=3",
        "finetune.lr_drop=2",
        "finetune.eval_every=100",
    ]
    ref = tmp_path / "ref"
    train(get_config("smoke", base), "finetune", ref, progress=False)
    run = tmp_path / "run"
    stopped = train(get_config("smoke", base + ["finetune.max_steps=6"]), "finetune", run,
                    progress=False)  # fmt: skip
    assert stopped["steps"] == 6
    ck = load_checkpoint(run / "last.pth")
    assert ck["epoch"] == 1 and ck["batches_done"] == 2 and ck["scheduler"]["last_epoch"] == 1
    with open(run / "log.jsonl", "a") as f:  # what a killed run logs after its checkpoint
        f.write(json.dumps({"type": "train", "step": 99}) + "\n")
    train(get_config("smoke", base), "finetune", run, resume=True, progress=False)
    assert all(r.get("step") != 99 for r in _records(run))  # dropped on resume
    want, got = load_checkpoint(ref / "last.pth"), load_checkpoint(run / "last.pth")
    assert want["step"] == got["step"] == 12
    lr = get_config("smoke").finetune.lr
    assert want["scheduler"]["last_epoch"] == 3
    assert want["scheduler"]["_last_lr"] == pytest.approx([lr * 0.1])  # the drop happened
    assert got["scheduler"] == want["scheduler"]
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    for key, moments in want["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.allclose(got["optimizer"]["state"][key][name], value, rtol=1e-5,
                                  atol=1e-8), (key, name)  # fmt: skip
    for key, value in want["model"].items():
        assert torch.allclose(got["model"][key], value, rtol=1e-5, atol=1e-7), key
