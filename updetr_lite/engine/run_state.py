"""What a training run carries across a stop: its counters, its log, its checkpoint set.

- ``RunState``: epoch, position in the epoch, step, best value and the running loss sums; a
  checkpoint stores it beside the model, optimizer, scheduler and per-rank RNG states
  (``checkpoint_state``, ``restore``).
- ``JsonLog``: ``log.jsonl``, truncated on resume to the records the checkpoint had seen.
- Resume checks: settings that differ from the checkpoint's are refused by name, except
  ``RESUMABLE_CHANGES`` and the schedule's length and bookkeeping, which are applied and said;
  best.pth and epoch_K.pth that a kill kept from being written are rewritten from last.pth;
  temporary files of an interrupted save are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from . import distributed as du
from .checkpoint import load_checkpoint, rng_state, set_rng_state


class TrainingError(ValueError):
    """A setting or state that stops a run before it starts; one line for the user."""


@dataclass
class RunState:
    epoch: int = 0
    batches_done: int = 0  # of this epoch (a mid-epoch checkpoint resumes after them)
    step: int = 0
    best: float | None = None  # finetune: best AP; pretrain: lowest epoch loss
    metrics: dict | None = None  # the last evaluation
    epoch_sums: dict = field(default_factory=dict)  # loss sums of this epoch ...
    epoch_count: int = 0  # ... over this many steps
    window: dict = field(default_factory=dict)  # loss sums since the last train record ...
    window_count: int = 0


def checkpoint_state(run, model, optimizer, scheduler, cfg, stage, kind, num_classes, log, world):
    """The checkpoint dict of a run (``RunState`` fields, every rank's RNG state)."""
    return {
        "kind": kind,
        "num_classes": num_classes,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": run.epoch,
        "batches_done": run.batches_done,
        "step": run.step,
        "rng": du.all_gather_object(rng_state()),
        "config": cfg.to_dict(),
        "stage": stage,
        "best": run.best,
        "metrics": run.metrics,
        "epoch_stats": (run.epoch_sums, run.epoch_count),
        "window": (run.window, run.window_count),
        "log_records": log.count,
        "world_size": world,
    }


def restore(ckpt, model, optimizer, scheduler, cfg, info, path, kind) -> RunState:
    """Load a checkpoint's model, optimizer, scheduler and this rank's RNG state."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # PyTorch lists every key: keep the first line's gist
        raise TrainingError(
            f"resume: {path} does not fit the {kind} model of these settings "
            f"({' '.join(str(e).split())[:200]})"
        ) from e
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    run = RunState(
        ckpt["epoch"], ckpt["batches_done"], ckpt["step"], ckpt.get("best"), ckpt.get("metrics")
    )
    run.epoch_sums, run.epoch_count = ckpt["epoch_stats"]
    run.window, run.window_count = ckpt["window"]
    rngs = ckpt["rng"]
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    elif info.is_main:
        print(f"[updetr-lite] resume: {len(rngs)} RNG states for {info.world_size} processes")
    if ckpt.get("config") != cfg.to_dict() and info.is_main:
        print("[updetr-lite] resume: the configuration differs from the checkpoint's")
    return run


class JsonLog:
    """Append-only JSON lines on rank 0; counts its records for exact resume."""

    def __init__(self, path: Path, enabled: bool, keep: int | None):
        self.path, self.enabled, self.count = path, enabled, 0
        if not enabled:
            return
        if keep is None:
            path.write_text("")
        else:  # drop what the interrupted run wrote after its checkpoint
            lines = path.read_text().splitlines(keepends=True) if path.exists() else []
            path.write_text("".join(lines[:keep]))
            self.count = min(keep, len(lines))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.count += 1


def jsonable(x):
    try:
        json.dumps(x)
        return x
    except TypeError:
        return str(x)


# settings that may differ on resume: they change how long the run goes and where files are,
# not the trajectory so far (anything else is refused: the optimizer state would silently
# keep the old lr, the model its old shapes)
RESUMABLE_CHANGES = {
    "data.num_workers",
    "data.cache_dir",
    "data.pretext_root",
    "data.detection_root",
    "model.backbone_weights",  # the CNN's weights come from the checkpoint
}
RESUMABLE_SCHEDULE = ("epochs", "max_steps", "eval_every", "checkpoint_every", "log_every")


def settings_changes(old: dict, new: dict, stage: str) -> list[tuple[str, object, object]]:
    """(section.field, old, new) of this stage's settings that differ (the other stage's
    schedule and the preset name do not matter)."""
    other = "finetune" if stage == "pretrain" else "pretrain"
    changes = []
    for section, fields in new.items():
        if not isinstance(fields, dict) or section == other:
            continue
        for k, v in fields.items():
            was = old.get(section, {}).get(k)
            if was != v:
                changes.append((f"{section}.{k}", was, v))
    return changes


def check_resume_settings(ckpt: dict, cfg: Config, stage: str, path: Path) -> None:
    """Refuse (TrainingError naming them) settings that differ from the checkpoint's, except
    RESUMABLE_CHANGES and the schedule's length and bookkeeping, which are applied and said."""
    if not isinstance(ckpt.get("config"), dict):
        return
    old = Config.from_dict(ckpt["config"]).to_dict()
    changes = settings_changes(old, cfg.to_dict(), stage)
    allowed = RESUMABLE_CHANGES | {f"{stage}.{k}" for k in RESUMABLE_SCHEDULE}
    refused = [c for c in changes if c[0] not in allowed]
    text = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in (refused or changes)[:6])
    more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
    if refused:
        raise TrainingError(
            f"resume: {path} was trained with other settings ({text}{more}); resume with "
            "the settings in its config.json, or start a new --out"
        )
    if changes and du.is_main_process():
        print(f"[updetr-lite] resume: applying changed settings: {text}")


def clean_temporary_files(out: Path) -> None:
    """Remove what an interrupted atomic_save left (``.NAME.pth.XXXX.tmp``); the lock on
    ``out`` guarantees that no other run is writing them."""
    stale = sorted(out.glob(".*.pth.*.tmp"))
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        print(f"[updetr-lite] {out}: removed {len(stale)} temporary files of an interrupted save")


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint file so that ``dst`` is always the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_MISSING = object()


def _field(path: Path, key: str):
    """``key`` of the checkpoint at ``path``; _MISSING when absent or unreadable."""
    if not path.is_file():
        return _MISSING
    try:
        return load_checkpoint(path).get(key, _MISSING)
    except ValueError:  # damaged: rewrite it
        return _MISSING


def repair_checkpoint_set(out: Path, ckpt: dict, tc) -> None:
    """One save writes last.pth, then best.pth (if improved), then epoch_K.pth: a kill in
    between leaves the later ones missing or stale. last.pth holds the state they should
    hold: best.pth when its best value differs from last's, epoch_K.pth when last.pth ends
    epoch K and epoch_K.pth is missing or of another step. Rewrite those from last.pth."""
    last, fixed = out / "last.pth", []
    epoch = ckpt["epoch"]
    if ckpt["batches_done"] == 0 and epoch and tc.checkpoint_every:
        if (
            epoch % tc.checkpoint_every == 0
            and _field(out / f"epoch_{epoch}.pth", "step") != ckpt["step"]
        ):
            fixed.append(f"epoch_{epoch}.pth")
    if ckpt.get("best") is not None and _field(out / "best.pth", "best") != ckpt["best"]:
        fixed.append("best.pth")
    for name in fixed:
        _copy_checkpoint(last, out / name)
    if fixed:
        print(f"[updetr-lite] resume: rewrote {', '.join(fixed)} from last.pth (a save was cut)")
