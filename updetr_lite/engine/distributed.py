"""Data-parallel training with torchrun + DistributedDataParallel.

Launch as usual (one process per GPU, or several CPU processes with gloo)::

    torchrun --nproc_per_node 8 -m updetr_lite.cli pretrain ...
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 \
        --nproc_per_node 8 -m updetr_lite.cli pretrain ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
process runs alone. The configured batch size is the *global* batch: each of the W
processes loads batch_size / W images. The criterion all-reduces the number of boxes so
that the average of the per-process losses (what DDP's gradient averaging optimises) is
the loss of the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler


class DistributedSetupError(ValueError):
    """A launch setting that cannot work (batch size, world size, environment)."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device | str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment, if there is one.

    NCCL on CUDA, gloo on CPU. An existing process group is reused (tests, notebooks).
    Returns the rank, the world size and the local rank (the GPU index on this node).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True
        )
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return DistInfo()
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise DistributedSetupError(
                f"WORLD_SIZE={world_size} but {var} is not set: launch with torchrun"
            )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = (torch.device(device).type == "cuda") if device else torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return DistInfo(rank, world_size, local_rank, True)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def per_process_batch(global_batch: int, world_size: int, setting: str = "batch_size") -> int:
    """The per-process share of the global batch; it must split evenly."""
    if global_batch < world_size:
        raise DistributedSetupError(
            f"{setting}={global_batch} is smaller than the {world_size} processes: "
            "every process needs at least one image"
        )
    if global_batch % world_size:
        raise DistributedSetupError(
            f"{setting}={global_batch} does not split evenly over {world_size} processes"
        )
    return global_batch // world_size


class ResumableSampler(DistributedSampler):
    """DistributedSampler (also used with one process) that can start mid-epoch.

    The order of an epoch depends only on (seed, epoch), so a resumed run that sets the same
    epoch and skips the ``start`` first indices of this rank sees exactly the batches the
    interrupted run had not yet seen.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.start = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel when a process group is up, else the module itself."""
    if get_world_size() == 1:
        return module
    device_ids = (
        [device.index if device.index is not None else 0] if device.type == "cuda" else None
    )
    return DistributedDataParallel(module, device_ids=device_ids)


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; [obj] without a process group."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging the global-batch losses)."""
    if get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= get_world_size()
    return dict(zip(keys, t.tolist()))


# where a file or folder lives may differ between nodes; what they hold may not
LOCATION_FIELDS = (
    ("data", "pretext_root"),
    ("data", "detection_root"),
    ("data", "cache_dir"),
    ("model", "backbone_weights"),
)


def job_identity(config: dict, stage: str, run: str, init: bool) -> dict:
    """What every rank of one job must agree on: the stage, the run (its folder's name), an
    init checkpoint or none, and a digest of the configuration (``Config.to_dict()``) with
    the location settings reduced to their last path component."""
    import hashlib
    import json

    cfg = json.loads(json.dumps(config))
    for section, name in LOCATION_FIELDS:
        value = cfg.get(section, {}).get(name)
        if isinstance(value, str):
            cfg[section][name] = os.path.basename(value.rstrip("/"))
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    return {"stage": stage, "run": run, "init": init, "settings": digest}


def check_same_job(identity: dict) -> None:
    """Raise DistributedSetupError on every rank unless all ranks pass the same ``identity``
    (two runs must never train as one DDP job, e.g. nodes that started different runs on
    one rendezvous)."""
    ids = all_gather_object(identity)
    for r, other in enumerate(ids):
        if other != ids[0]:
            diff = "; ".join(
                f"{k} {other.get(k)!r} vs {ids[0].get(k)!r}"
                for k in sorted(set(other) | set(ids[0]))
                if other.get(k) != ids[0].get(k)
            )
            raise DistributedSetupError(
                f"rank {r} does not run what rank 0 runs ({diff}): every node must start the "
                "same run with the same settings; stopped before training"
            )


def _file_id(path) -> tuple[int, str] | None:
    import hashlib

    if not path or not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return os.path.getsize(path), h.hexdigest()


def share_files(paths: list) -> list:
    """Give every rank rank 0's copy of each file in ``paths`` (nodes without a shared
    folder: only rank 0 writes checkpoints). A rank whose copy is missing or differs (size,
    SHA-256) receives rank 0's bytes and writes them in place atomically. Returns the paths
    this rank received; a file rank 0 lacks is left to the caller's own check."""
    if get_world_size() == 1:
        return []
    ids = all_gather_object([_file_id(p) for p in paths])
    rank, received = get_rank(), []
    for i, path in enumerate(paths):
        want = ids[0][i]
        if want is None or all(r[i] == want for r in ids):
            continue
        data = None
        if rank == 0:
            with open(path, "rb") as f:
                data = f.read()
        data = broadcast_object(data)
        if ids[rank][i] != want:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.rank{rank}.part"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            received.append(path)
        del data
    return received
