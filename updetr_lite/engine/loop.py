"""The epoch loop of a training run (``train.train`` sets it up and drives it).

``TrainingRun`` holds the model, the data, the optimizer and the counters (``RunState``):
``open_output`` (resume checks, config.json, log.jsonl), ``build``, ``start`` (restore or the
plan record), ``train_epoch`` (``step.train_step`` per batch, train records, mid-epoch
last.pth), ``end_epoch`` (skip counts, epoch record, evaluation, scheduler, checkpoints),
``finish`` (end record, summary).
"""

from __future__ import annotations

import math
import time
from functools import partial

from torch import nn

from . import distributed as du
from . import feature_cache as fc
from . import run_state as rs
from .checkpoint import atomic_save, check_kind, check_settings, load_checkpoint, model_state
from .evaluate import evaluate
from .step import (
    NonFiniteLossError,
    StepModel,
    batch_to_device,
    build_optimizer,
    non_finite,
    train_step,
    warm_up,
)
from .train_data import build_data


class _EvalForward(nn.Module):
    """DETR on cached maps, with the (inputs, mask) signature evaluate() calls."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, mask):
        return self.model.forward_features(inputs, mask)


def merge_skip_reports(reports: list[dict]) -> dict:
    """One skip report from every rank's: counts summed, the first 20 files; {} if none."""
    out: dict = {}
    for r in reports:
        for k, v in (r or {}).items():
            if k == "files":
                out["files"] = (out.get("files", []) + list(v))[:20]
            else:
                out[k] = out.get(k, 0) + v
    return out if any(v for k, v in out.items() if k != "files") else {}


class TrainingRun:
    """One training run: its model, data, optimizer, counters (``RunState``) and outputs."""

    def __init__(self, cfg, stage, out, device, info, last_every_steps, progress):
        self.cfg, self.stage, self.out, self.device, self.info = cfg, stage, out, device, info
        self.tc = cfg.pretrain if stage == "pretrain" else cfg.finetune
        self.main, self.last_every_steps, self.progress = info.is_main, last_every_steps, progress
        self.kind, self.num_classes = (
            ("pretext", 2) if stage == "pretrain" else ("detection", cfg.model.num_classes)
        )
        self.run = rs.RunState()
        self.last_good = None  # the last last.pth written (what a stop points to)

    def open_output(self, resume: bool):
        """The checkpoint to resume from (checked, its set repaired) or None; config.json
        and log.jsonl (truncated to the checkpoint's records)."""
        out, ckpt = self.out, None
        if resume:
            ckpt = load_checkpoint(out / "last.pth")
            check_kind(ckpt, self.kind, self.num_classes, out / "last.pth")
            rs.check_resume_settings(ckpt, self.cfg, self.stage, out / "last.pth")
            if self.main:
                rs.repair_checkpoint_set(out, ckpt, self.tc)
        if self.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(self.cfg.to_json())
        self.log = rs.JsonLog(out / "log.jsonl", self.main, ckpt["log_records"] if ckpt else None)
        return ckpt

    def build(self, model, criterion, trainable_cnn: bool, init) -> dict | None:
        """Set up the model (``init``: its transformer from a pretext checkpoint), the data,
        the optimizer and scheduler. Returns the init report (None without init)."""
        cfg, stage, tc, device, progress = self.cfg, self.stage, self.tc, self.device, self.progress
        if tc.cache_features:
            fc.check_cacheable(trainable_cnn, stage)  # before any data is built
        init_report = None
        if init is not None:
            from ..models import init_detr_from_pretext

            ckpt = load_checkpoint(init)
            check_kind(ckpt, "pretext", None, init)
            check_settings(ckpt, cfg.model, init)
            init_report = init_detr_from_pretext(model, model_state(ckpt))
            self.log.write({"type": "init", "init": str(init), **init_report})
        self.model, self.criterion = model.to(device), criterion.to(device)
        self.data = build_data(cfg, stage, tc, self.info, model, device, trainable_cnn, progress)
        self.step_model = du.wrap_ddp(
            StepModel(model, stage == "pretrain", tc.cache_features), device
        )
        self.eval_model = _EvalForward(model) if tc.cache_features else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(model, tc)
        return init_report

    def start(self, ckpt) -> None:
        """Restore a checkpoint's state, or log what this run is set to train."""
        from ..fastpath import amp_enabled

        tc, data = self.tc, self.data
        if ckpt is None:  # a resumed log has these records already
            for what, report in data.cache_skips or []:
                self._log_skips(what, report, 0, 0)
        else:
            path = self.out / "last.pth"
            self.run = rs.restore(
                ckpt,
                self.model,
                self.optimizer,
                self.scheduler,
                self.cfg,
                self.info,
                path,
                self.kind,
            )
            self.last_good = path
        self.amp = amp_enabled(tc.amp, self.device, f"{self.stage}.amp", warn=self.main)
        self.max_steps = tc.max_steps if tc.max_steps > 0 else math.inf
        self.t_start, self.images_seen = time.time(), 0
        self.t_window, self.images_window = time.time(), 0
        self.done = self.run.step >= self.max_steps or self.run.epoch >= tc.epochs
        self.per_rank = data.batches.loader.batch_size
        self.batches_per_epoch = math.ceil(data.sampler.num_samples / self.per_rank)
        self.planned_steps = min(self.max_steps, tc.epochs * self.batches_per_epoch)
        if ckpt is None:  # what this run is set to train (the report reads epochs off it)
            self.log.write(
                {
                    "type": "plan",
                    "steps_per_epoch": self.batches_per_epoch,
                    "images_per_epoch": len(data.seeded),
                    "batch_size": tc.batch_size,
                    "epochs": tc.epochs,
                    "max_steps": tc.max_steps,
                    "planned_steps": self.planned_steps,
                    "world_size": self.info.world_size,
                }
            )
        self.model.train()

    def train_epoch(self) -> None:
        """The rest of the current epoch (from ``batches_done``), or up to ``max_steps``."""
        run, data, tc = self.run, self.data, self.tc
        data.seeded.epoch = run.epoch
        data.sampler.set_epoch(run.epoch)
        data.sampler.start = run.batches_done * self.per_rank
        bar = _progress(
            data.batches, self.main and self.progress, self.stage, run.epoch, run.batches_done
        )
        for batch in data.batches:
            args, targets = batch_to_device(batch, self.device)
            warm_up(self.optimizer, self.scheduler, run.step, tc.warmup_steps)
            values = train_step(
                partial(self.step_model, *args),
                targets,
                self.criterion,
                self.optimizer,
                self.params,
                tc.clip_max_norm,
                self.device,
                self.amp,
                where=f"step {run.step + 1} (epoch {run.epoch})",
                stopped=self.stopped(),
            )
            run.step += 1
            run.batches_done += 1
            n_images = len(batch["targets"]) * self.info.world_size
            self.images_seen += n_images
            self.images_window += n_images
            for k, v in values.items():
                run.window[k] = run.window.get(k, 0.0) + v
                run.epoch_sums[k] = run.epoch_sums.get(k, 0.0) + v
            run.window_count += 1
            run.epoch_count += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            if run.step % tc.log_every == 0:
                self._log_window()
            if run.step >= self.max_steps:
                self.done = True
                break
            every = self.last_every_steps
            if every and run.step % every == 0 and run.batches_done < self.batches_per_epoch:
                self.save("last.pth")
        if bar is not None:
            bar.close()

    def _log_window(self) -> None:
        run, groups, now = self.run, self.optimizer.param_groups, time.time()
        self.log.write(
            {"type": "train", "step": run.step, "epoch": run.epoch}
            | {k: v / run.window_count for k, v in run.window.items()}
            | {
                "lr": groups[0]["lr"],
                "lr_backbone": next((g["lr"] for g in groups if g["name"] == "backbone"), 0.0),
                "images_per_s": self.images_window / max(now - self.t_window, 1e-9),
            }
        )
        run.window, run.window_count = {}, 0
        self.t_window, self.images_window = now, 0

    def end_epoch(self) -> None:
        """Skip counts, the epoch record, evaluation (finetune), the scheduler and checkpoints;
        also after a mid-epoch stop (then the epoch is not counted as finished)."""
        run, tc, stage = self.run, self.tc, self.stage
        # every rank's sampler has the same length, so ranks agree on this
        epoch_finished = run.batches_done >= self.batches_per_epoch
        self.data.sampler.start = 0
        skip = getattr(self.data.source, "report_skips", None)
        if skip is not None and epoch_finished:
            # counted, logged skips (images too small for query patches), of every rank's shard
            report = merge_skip_reports(du.all_gather_object(skip()))
            if report:
                self.log.write(
                    {"type": "skips", "step": run.step, "epoch": run.epoch}
                    | {"report": rs.jsonable(report)}
                )
        count = max(run.epoch_count, 1)
        record = {"type": "epoch", "epoch": run.epoch, "step": run.step, "batches": run.epoch_count}
        record |= {k: v / count for k, v in run.epoch_sums.items()}
        if stage == "pretrain":
            self.log.write(record)
        improved = False
        if stage == "finetune":
            last_epoch = run.epoch + 1 >= tc.epochs
            if (run.epoch + 1) % tc.eval_every == 0 or last_epoch or self.done:
                ap = self.evaluate()["AP"]
                improved = run.best is None or ap > run.best
                run.best = ap if improved else run.best
        elif run.epoch_count:
            improved = run.best is None or record["loss"] < run.best
            run.best = record["loss"] if improved else run.best
        run.epoch_sums, run.epoch_count = {}, 0
        if epoch_finished:
            self.scheduler.step()
            run.epoch += 1
            run.batches_done = 0
        if run.epoch >= tc.epochs:
            self.done = True
        st = self.state()
        self.save("last.pth", st)
        if improved:
            self.save("best.pth", st)
        if epoch_finished and tc.checkpoint_every and run.epoch % tc.checkpoint_every == 0:
            self.save(f"epoch_{run.epoch}.pth", st)
        du.barrier()

    def evaluate(self) -> dict:
        """COCO AP on the val loader, logged (and the val images that could not be read)."""
        run, val_loader = self.run, self.data.val_loader
        self.check_weights("not evaluated, no checkpoint written")
        metrics = evaluate(self.eval_model, val_loader, self.data.coco_gt, self.device)
        run.metrics = metrics
        self.log.write({"type": "eval", "step": run.step, "epoch": run.epoch} | metrics)
        report = getattr(val_loader.dataset, "report_skips", lambda: {})()
        if report:  # not on the cached path: no reads
            self._log_skips("val", report, run.step, run.epoch)
        return metrics

    def _log_skips(self, where, report, step, epoch) -> None:
        self.log.write(
            {"type": "skips", "step": step, "epoch": epoch, "where": where}
            | {"report": rs.jsonable(report)}
        )

    def state(self) -> dict:
        return rs.checkpoint_state(
            self.run,
            self.model,
            self.optimizer,
            self.scheduler,
            self.cfg,
            self.stage,
            self.kind,
            self.num_classes,
            self.log,
            self.info.world_size,
        )

    def check_weights(self, what: str) -> None:
        bad = non_finite(self.model.state_dict())
        if bad:  # same weights on every rank: all of them stop here
            raise NonFiniteLossError(
                f"epoch {self.run.epoch}, step {self.run.step}: {len(bad)} weight tensors "
                f"hold NaN or inf (first: {bad[0]}); {what}; {self.stopped()}"
            )

    def save(self, name: str, st: dict | None = None) -> None:
        st = self.state() if st is None else st
        self.check_weights(f"{name} was not written")
        if self.main:
            atomic_save(st, self.out / name)
        if name == "last.pth":
            self.last_good = self.out / name

    def stopped(self) -> str:
        if self.last_good is None:
            return "training stopped before any checkpoint was written"
        return f"training stopped, the last good checkpoint is {self.last_good}"

    def finish(self, init_report) -> dict:
        """The end record and the summary train() returns."""
        run, tc, out = self.run, self.tc, self.out
        wall = time.time() - self.t_start
        n = len(self.data.seeded)
        trained = {  # what was trained, against what was set (a max_steps budget stops early)
            "steps": run.step,
            "planned_steps": self.planned_steps,
            "epochs_trained": run.epoch + run.batches_done / self.batches_per_epoch,
            "images_seen": run.epoch * n + min(run.batches_done * tc.batch_size, n),
            "stopped_by": "max_steps"
            if run.step < tc.epochs * self.batches_per_epoch
            else "epochs",
        }
        self.log.write({"type": "end", "epoch": run.epoch} | trained)
        best = out / "best.pth"
        return {
            "stage": self.stage,
            "out_dir": str(out),
            **trained,
            "epochs": run.epoch,
            "best": run.best,
            "metrics": run.metrics,
            "init_report": init_report,
            "last": str(out / "last.pth"),
            "best_checkpoint": str(best) if best.exists() else None,
            "wall_s": wall,
            "images_per_s": self.images_seen / max(wall, 1e-9),
        }


def _progress(batches, enabled: bool, stage: str, epoch: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=len(batches.loader) + initial, initial=initial, desc=f"{stage} epoch {epoch}")
