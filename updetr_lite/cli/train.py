"""``updetr-lite info``, ``data build``, ``pretrain`` and ``finetune``: the settings, the
embedded data and the two training stages (one process or a torchrun job)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from .common import PROG, config_from_args, emit, jsonable


def cmd_info(args) -> int:
    """The preset's resolved settings and the parameter counts of both models."""
    from ..models import build_detr, build_updetr, parameter_counts

    cfg = config_from_args(args)
    # counting parameters needs no weights: never read backbone_weights here
    build_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, backbone_weights=None)
    )
    counts = {
        "detector": parameter_counts(build_detr(build_cfg)),
        "pretext": parameter_counts(build_updetr(build_cfg)),
    }
    payload = {"preset": cfg.name, "config": cfg.to_dict(), "parameters": counts}
    lines = [f"preset {cfg.name}"]
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"  {k} = {v!r}" for k, v in values.items()]
    lines.append("parameters")
    for model, c in counts.items():
        lines.append("  " + model + ": " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    emit(args, payload, "\n".join(lines))
    return 0


def cmd_data_build(args) -> int:
    """Build the embedded data set into data.cache_dir; print its paths and counts."""
    from ..data.embedded import build_embedded

    cfg = config_from_args(args)
    paths = build_embedded(cfg.data)
    fields = (
        paths._asdict()
        if hasattr(paths, "_asdict")
        else dataclasses.asdict(paths)
        if dataclasses.is_dataclass(paths)
        else dict(vars(paths))
    )
    fields = {k: str(v) for k, v in fields.items()}
    counts = {}
    for split in ("train", "val"):
        ann = fields.get(f"{split}_json")
        if ann and Path(ann).is_file():
            coco = json.loads(Path(ann).read_text())
            counts[f"{split}_images"] = len(coco.get("images", []))
            counts[f"{split}_boxes"] = len(coco.get("annotations", []))
    unlabeled = fields.get("unlabeled")
    if unlabeled and Path(unlabeled).is_dir():
        exts = {".png", ".jpg", ".jpeg"}
        counts["unlabeled_images"] = sum(
            1 for p in Path(unlabeled).rglob("*") if p.suffix.lower() in exts
        )
    payload = {"preset": cfg.name, "paths": fields, "counts": counts}
    text = "\n".join(
        [f"{k}: {v}" for k, v in fields.items()] + [f"{k}: {v}" for k, v in counts.items()]
    )
    emit(args, payload, text)
    return 0


def _rank() -> int:
    from ..engine import distributed as du

    return du.get_rank() if du.get_world_size() > 1 else int(os.environ.get("RANK", 0))


def _warn_random_cnn(cfg, stage: str) -> None:
    """The paper preset without CNN weights trains on a random ResNet-50 (frozen in
    pre-training): say so loudly, unless ``model.backbone_weights=random`` asked for it."""
    from ..config import RANDOM_CNN
    from ..models.build import cnn_trains

    if _rank() != 0:
        return
    if cfg.model.backbone_weights == RANDOM_CNN:
        print(
            f"{PROG}: note: model.backbone_weights={RANDOM_CNN}: a random CNN, on purpose",
            file=sys.stderr,
        )
    elif not cfg.model.backbone_weights and cfg.name == "paper":
        frozen = not cnn_trains(cfg, stage)
        bar = "!" * 78
        print(
            f"{bar}\n{PROG}: WARNING: preset paper without model.backbone_weights: the "
            f"{cfg.model.backbone} is RANDOM (not SwAV){', frozen' if frozen else ''}"
            "; the numbers will not be the paper's.\n  Give --set model.backbone_weights="
            "/path/swav_800ep_pretrain.pth.tar, or --set model.backbone_weights="
            f"{RANDOM_CNN} to train on a random CNN on purpose.\n{bar}",
            file=sys.stderr,
            flush=True,
        )


def _join_job(cfg, stage: str, out: str, init, resume: bool, device):
    """Several processes (torchrun): join the process group, check that every rank runs the
    same run and configuration, take rank 0's --resume, and copy rank 0's init and resume
    checkpoints to ranks that lack them (nodes without a shared folder)."""
    import torch

    from ..engine import distributed as du

    du.init_distributed(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    du.check_same_job(du.job_identity(cfg.to_dict(), stage, Path(out).name, init is not None))
    resume = bool(du.broadcast_object(resume))
    files = ([str(init)] if init else []) + ([str(Path(out) / "last.pth")] if resume else [])
    for path in du.share_files(files):
        print(f"[{PROG}] rank {du.get_rank()}: received rank 0's {path}", flush=True)
    return resume


def _cmd_train(args, stage: str) -> int:
    from ..engine.train import train

    cfg = config_from_args(args)
    out = args.out or f"runs/{stage}"
    init = getattr(args, "init", None)
    resume = args.resume
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        resume = _join_job(cfg, stage, out, init, resume, args.device)
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(f"--init: checkpoint not found: {init}")
    _warn_random_cnn(cfg, stage)
    summary = train(cfg, stage, out, init=init, resume=resume, device=args.device)
    if _rank() == 0:  # one summary per job, not one per process
        print(json.dumps(summary, indent=2, default=jsonable))
    return 0


def cmd_pretrain(args) -> int:
    return _cmd_train(args, "pretrain")


def cmd_finetune(args) -> int:
    return _cmd_train(args, "finetune")
