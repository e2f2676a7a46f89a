"""Two gloo processes on halves of a global batch = one process on the whole batch.

DDP averages the gradients of the two processes; the criterion all-reduces the number of
boxes. Together that must give the loss and the gradients of the single-process run on the
same global batch. The two halves hold different numbers of boxes, so a criterion that
normalised by its local box count would fail here.
"""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from updetr_lite.config import get_config
from updetr_lite.engine import distributed as du
from updetr_lite.engine.checkpoint import load_checkpoint
from updetr_lite.engine.step import StepModel, compute_losses
from updetr_lite.engine.train import _build, train

GLOBAL_BATCH = 4
SIZE = 64


def _cfg():
    # eos_coef 1: the class loss is then a plain mean over queries, equal per process
    # (with 0.1 its weighted mean depends on each half's matched count).
    return get_config(
        "smoke",
        [
            "loss.eos_coef=1.0",
            "loss.eos_from_groups=False",
            "pretext.query_shuffle=False",
            "pretext.patch_dropout=0.0",
            "pretext.patch_feature='roi'",
            "model.dropout=0.0",
        ],
    )


class Synthetic(torch.utils.data.Dataset):
    """Fixed images with 1..3 boxes each (a different box count per half of the batch)."""

    def __init__(self, pretext: bool, m: int):
        g = torch.Generator().manual_seed(7)
        self.items = []
        for i in range(8):
            n = m if pretext else 1 + i % 3
            boxes = torch.cat(
                [
                    torch.rand(n, 2, generator=g) * 0.5 + 0.25,
                    torch.rand(n, 2, generator=g) * 0.3 + 0.1,
                ],
                1,
            )
            labels = (
                torch.ones(n, dtype=torch.int64)
                if pretext
                else torch.randint(1, 6, (n,), generator=g)
            )
            target = {
                "boxes": boxes,
                "labels": labels,
                "image_id": torch.tensor(i),
                "orig_size": torch.tensor([SIZE, SIZE]),
                "size": torch.tensor([SIZE, SIZE]),
            }
            self.items.append((torch.randn(3, SIZE, SIZE, generator=g), target))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _collate(batch):
    images = torch.stack([b[0] for b in batch])
    return images, torch.zeros(len(batch), SIZE, SIZE, dtype=torch.bool), [b[1] for b in batch]


def _one_step(stage: str) -> dict:
    """Losses and gradients of the first global batch, in this process's share."""
    info = du.init_distributed("cpu")
    cfg = _cfg()
    torch.manual_seed(0)  # same initial weights in every process
    model, criterion, _, _ = _build(cfg, stage)
    pretext = stage == "pretrain"
    ds = Synthetic(pretext, cfg.pretext.num_patches)
    sampler = du.ResumableSampler(ds, info.world_size, info.rank, shuffle=True, seed=3)
    per_rank = du.per_process_batch(GLOBAL_BATCH, info.world_size)
    loader = torch.utils.data.DataLoader(ds, per_rank, sampler=sampler, collate_fn=_collate)
    images, mask, targets = next(iter(loader))
    step_model = du.wrap_ddp(StepModel(model, pretext, cached=False), torch.device("cpu"))
    batch = {"inputs": images, "mask": mask, "targets": targets, "pretext": pretext}
    losses = compute_losses(step_model, criterion, batch, torch.device("cpu"), amp=False)
    losses["loss"].backward()
    values = du.reduce_mean({k: v.item() for k, v in losses.items()}, torch.device("cpu"))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    ids = sorted(
        int(i) for part in du.all_gather_object([int(t["image_id"]) for t in targets]) for i in part
    )
    return {"values": values, "grads": grads, "ids": ids}


def _worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        result = {stage: _one_step(stage) for stage in ("finetune", "pretrain")}
        if rank == 0:
            torch.save(result, path)
    finally:
        du.cleanup()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, free_port):
    path = str(tmp_path_factory.mktemp("ddp") / "two.pt")
    mp.spawn(_worker, args=(2, free_port(), path), nprocs=2, join=True)
    two = torch.load(path, weights_only=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = {stage: _one_step(stage) for stage in ("finetune", "pretrain")}
    finally:
        torch.set_num_threads(threads)
    return one, two


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_two_processes_match_one(runs, stage):
    one, two = runs[0][stage], runs[1][stage]
    assert one["ids"] == two["ids"]  # the same global batch
    assert set(one["values"]) == set(two["values"])
    for k in one["values"]:
        if k != "class_error":  # an accuracy: a per-process mean, not a loss
            assert two["values"][k] == pytest.approx(one["values"][k], rel=1e-5, abs=1e-6), k
    assert one["grads"].keys() == two["grads"].keys() and len(one["grads"]) > 10
    for n, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][n], g, rtol=1e-4, atol=1e-5, msg=n)
    assert not any(n.startswith("backbone.") for n in one["grads"])  # frozen CNN: no grad


def test_batch_split_errors():
    assert du.per_process_batch(8, 2) == 4
    with pytest.raises(du.DistributedSetupError, match="smaller than the 4 processes"):
        du.per_process_batch(2, 4)
    with pytest.raises(du.DistributedSetupError, match="does not split evenly"):
        du.per_process_batch(6, 4)


TRAIN_OVERRIDES = [
    "loss.eos_coef=1.0",
    "finetune.max_steps=3",
    "finetune.log_every=1",
    "finetune.deterministic=True",
]


def _train_worker(rank: int, world: int, port: int, out: str, cache: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        cfg = get_config("smoke", TRAIN_OVERRIDES + [f"data.cache_dir={cache!r}"])
        train(cfg, "finetune", out, progress=False, last_every_steps=1)
    finally:
        du.cleanup()


def test_train_with_two_processes_matches_one(tmp_path, free_port):
    cache = str(tmp_path / "cache")
    mp.spawn(_train_worker, args=(2, free_port(), str(tmp_path / "two"), cache), nprocs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = get_config("smoke", TRAIN_OVERRIDES + [f"data.cache_dir={cache!r}"])
        train(cfg, "finetune", tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)

    def records(run):
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    one, two = records("one"), records("two")
    assert [r["type"] for r in one] == [r["type"] for r in two]  # rank 0 alone wrote the log
    for a, b in zip(one, two):
        for k in ("loss", "loss_ce", "loss_bbox", "loss_giou", "AP"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["type"], k)
    w1 = load_checkpoint(tmp_path / "one" / "last.pth")
    w2 = load_checkpoint(tmp_path / "two" / "last.pth")
    assert w1["step"] == w2["step"] == 3 and len(w2["rng"]) == 2  # one RNG state per rank
    for k, v in w1["model"].items():
        torch.testing.assert_close(w2["model"][k], v, rtol=1e-4, atol=1e-4, msg=k)
