"""The training loop: UP-DETR pre-training ('pretrain') and DETR fine-tuning ('finetune').

``train(cfg, stage, out_dir)`` writes into ``out_dir``:

- ``config.json``: the full resolved configuration (``Config.from_dict`` reads it back);
- ``log.jsonl``: one JSON record per line: ``{"type": "train", step, epoch, <loss terms>,
  loss, class_error, lr, lr_backbone, images_per_s}`` every ``log_every`` steps (averaged
  over those steps and over processes; terms are the criterion's weighted terms),
  ``{"type": "eval", step, epoch, AP, AP50, AP75, APs, APm, APl}`` after each evaluation,
  ``{"type": "epoch", ...}`` per-epoch loss means, ``{"type": "init", ...}`` the
  pretext -> detector key report, ``{"type": "cnn_weights", path, format, loaded, ignored}``
  the CNN weight-load report (also printed) when model.backbone_weights is set,
  ``{"type": "skips", ...}`` the pretext dataset's skip counts,
  ``{"type": "plan", steps_per_epoch, images_per_epoch, epochs, max_steps, planned_steps}``
  first and ``{"type": "end", steps, planned_steps, epochs_trained, images_seen, stopped_by}``
  last (what was trained against what was set);
- ``last.pth`` (each epoch and every ``last_every_steps`` steps), ``best.pth`` (best AP when
  fine-tuning, lowest epoch loss when pre-training), ``epoch_K.pth`` every ``checkpoint_every``
  epochs.

Where the parts are: the epoch loop is ``loop.TrainingRun``, one optimizer step
``step.train_step``, the data ``train_data``, the cached CNN maps (``TrainConfig.
cache_features``, a lite deviation) ``feature_cache``; what makes a resume exact ``seeding``
and ``run_state``. A run resumed from a mid-epoch
``last.pth`` skips the batches it had done and continues bit for bit (in deterministic
mode, same process count and thread count).

Faults: ``out_dir/.lock`` keeps a second run out of the folder (``runlock.py``); on resume,
settings that differ from the checkpoint's are refused by name (``run_state``). NaN or inf in
the predictions, loss terms, gradient norm or weights stops the run naming the step; no
non-finite weights are ever saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import Config
from ..models.build import cnn_trains
from . import distributed as du
from . import run_state as rs
from .loop import TrainingRun
from .run_state import TrainingError
from .runlock import out_lock
from .seeding import seed_everything, set_deterministic
from .step import NonFiniteLossError

STAGES = ("pretrain", "finetune")
__all__ = ["STAGES", "NonFiniteLossError", "TrainingError", "prepare_model", "train"]


def train(
    cfg: Config,
    stage: str,
    out_dir: str | os.PathLike,
    init: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    last_every_steps: int = 100,
    progress: bool = True,
) -> dict:
    """Pre-train UP-DETR (stage 'pretrain') or fine-tune DETR (stage 'finetune').

    Args:
        cfg: the configuration; cfg.pretrain or cfg.finetune gives the schedule.
        out_dir: where config.json, log.jsonl and the checkpoints go.
        init: fine-tuning only: a pretext checkpoint to start the transformer from (UP-DETR);
            None trains the transformer from scratch (the DETR baseline). Both load the CNN
            from cfg.model.backbone_weights.
        resume: continue exactly from out_dir/last.pth (mid-epoch position included).
        device: default cuda if available, else cpu; with torchrun, cuda:LOCAL_RANK.
        last_every_steps: also write last.pth every this many steps (0: only per epoch).
    Returns:
        a summary dict: steps, epochs, final metrics / loss, checkpoint paths, timing.
    """
    if stage not in STAGES:
        raise TrainingError(f"stage must be 'pretrain' or 'finetune', not {stage!r}")
    if init is not None and stage != "finetune":
        raise TrainingError("init= is for fine-tuning from a pretext checkpoint")
    cfg.validate()
    out = Path(out_dir)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    info = du.init_distributed(device)
    if device.type == "cuda" and info.distributed:
        device = torch.device("cuda", info.local_rank)
    with out_lock(out, enabled=info.is_main):
        tc = cfg.pretrain if stage == "pretrain" else cfg.finetune
        if info.is_main:
            rs.clean_temporary_files(out)
        set_deterministic(tc.deterministic)
        seed_everything(tc.seed)  # the same initial weights (and frozen CNN) on every rank
        run = TrainingRun(cfg, stage, out, device, info, last_every_steps, progress)
        ckpt = run.open_output(resume)
        model, criterion, trainable_cnn = prepare_model(cfg, stage)
        report_cnn_weights(model, None if ckpt else run.log, info.is_main)  # once per run
        init_report = run.build(model, criterion, trainable_cnn, init if ckpt is None else None)
        seed_everything(tc.seed + info.rank)  # then each rank its own dropout / shuffles
        run.start(ckpt)
        while not run.done:
            run.train_epoch()
            run.end_epoch()
        return run.finish(init_report)


def report_cnn_weights(model, log, main: bool) -> None:
    """Print the CNN weight-load report (models.weights.LoadReport) and, unless ``log`` is
    None, log it as ``{"type": "cnn_weights", path, format, loaded, ignored}`` (ignored:
    counts per reason)."""
    report = getattr(model.backbone[0], "weights_report", None)
    if report is None:
        return
    if main:
        print(f"[updetr-lite] CNN weights: {report}")
    if log is not None:
        log.write({"type": "cnn_weights"} | report.summary())


def _build(cfg: Config, stage: str):
    from ..models import build_criterion, build_detr, build_updetr

    if stage == "pretrain":
        return build_updetr(cfg), build_criterion(cfg, pretext=True), "pretext", 2
    return build_detr(cfg), build_criterion(cfg, pretext=False), "detection", cfg.model.num_classes


def prepare_model(cfg: Config, stage: str):
    """(model, criterion, trainable_cnn) for a stage. A CNN that never steps (lr_backbone 0,
    or the frozen pre-training CNN) is built with requires_grad False (`build_backbone`): no
    gradient, not in the optimizer.
    """
    model, criterion, _, _ = _build(cfg, stage)
    trainable_cnn = cnn_trains(cfg, stage)
    if stage == "pretrain" and not cfg.pretext.reconstruction:
        for p in model.reconstruction_head.parameters():  # unused: no gradient (and DDP-safe)
            p.requires_grad_(False)
    return model, criterion, trainable_cnn
