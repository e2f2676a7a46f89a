"""What a run folder records for the driver: the ``DONE`` marker (wall time, resolved
configuration, what was trained against the plan), each node's own files, each run's
rendezvous port, and the refusal to mix runs of other settings into one --out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from updetr_lite.config import get_config
from updetr_lite.jsonl import read_jsonl

from .plan import Plan, ReproduceError, run_config


@dataclass
class Result:
    name: str
    status: str  # done | skipped | failed | blocked
    seconds: float = 0.0
    log: str = ""
    message: str = ""


def node_suffix(node_rank: int) -> str:
    """What a node's own files in a run folder carry (a shared folder holds every node's)."""
    return "" if node_rank == 0 else f".node{node_rank}"


def done_marker(out: Path, name: str, node_rank: int = 0) -> Path:
    return Path(out) / name / f"DONE{node_suffix(node_rank)}"


# single-process runs: node 0 runs them, the other nodes only the training jobs
NODE0_KINDS = ("lite_cnn", "localize", "report")


def run_port(p: Plan, name: str, base: int) -> int:
    """The rendezvous port of run ``name``: ``base`` + its place among the plan's run names,
    so that two runs never meet on one port (every node computes the same number)."""
    return base + sorted(p.runs).index(name)


def settings_digest(config: dict) -> str:
    """The digest of a resolved configuration that the ranks of a job and a rerun into the
    same --out must share (location settings reduced to their last path component)."""
    from updetr_lite.engine.distributed import job_identity

    return job_identity(config, "", "", False)["settings"]


def _flat_settings(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_diff(before: dict, now: dict, limit: int = 4) -> str:
    """``section.field before -> now`` for the settings that differ (at most ``limit``)."""
    a, b = (
        _flat_settings(json.loads(json.dumps(before))),
        _flat_settings(json.loads(json.dumps(now))),
    )
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def plan_schedule(p: Plan, name: str) -> tuple[int, int]:
    """(epochs, max_steps) that the plan itself sets for training run ``name`` (the preset
    and the plan's overrides; the user's --set is not the plan)."""
    run = p.runs[name]
    tc = getattr(get_config(p.preset), run.kind)
    epochs, max_steps = tc.epochs, tc.max_steps
    for o in run.overrides:
        key, _, value = o.partition("=")
        if key == f"{run.kind}.epochs":
            epochs = int(value)
        elif key == f"{run.kind}.max_steps":
            max_steps = int(value)
    return epochs, max_steps


def trained_record(p: Plan, name: str, run_dir: Path) -> dict:
    """What run ``name`` trained (its log's ``plan`` and ``end`` records) against the plan's
    schedule: steps, fractional epochs, images seen, the plan's steps and epochs, what
    stopped it and ``complete`` (False: stopped before the plan's end, e.g. by a max_steps
    budget given with --set). Empty when the log (rank 0's) is not in this folder."""
    log = run_dir / "log.jsonl"
    records = read_jsonl(log) if log.exists() else []
    plan_rec = next((r for r in records if r.get("type") == "plan"), None)
    end = next((r for r in reversed(records) if r.get("type") == "end"), None)
    if plan_rec is None or end is None:
        return {}
    epochs, max_steps = plan_schedule(p, name)
    spe = plan_rec["steps_per_epoch"]
    plan_steps = epochs * spe if max_steps <= 0 else min(max_steps, epochs * spe)
    return {
        "steps": end["steps"],
        "epochs": round(end["epochs_trained"], 4),
        "images_seen": end["images_seen"],
        "plan_steps": plan_steps,
        "plan_epochs": round(plan_steps / spe, 4),
        "stopped_by": end["stopped_by"],
        "complete": end["steps"] >= plan_steps,
    }


def check_not_mixed(p: Plan, names: list[str], out: Path, overrides, node_rank: int = 0):
    """Refuse (ReproduceError) to continue or skip a training run whose folder holds a run
    of other settings (its DONE or, unfinished, its config.json): a dry run shortened with
    --set ...max_steps must never pass for the full run of a later command."""
    for n in names:
        if p.runs[n].kind not in ("pretrain", "finetune"):
            continue
        d, marker = Path(out) / n, done_marker(out, n, node_rank)
        before, done = None, {}
        try:
            if marker.exists():
                done = json.loads(marker.read_text() or "{}")
                before = done.get("config")
            elif (d / "config.json").exists():
                before = json.loads((d / "config.json").read_text())
        except ValueError:
            continue
        if before is None:
            continue  # a DONE of an older kit: nothing to compare
        now = run_config(p, n, out, overrides).to_dict()
        if settings_digest(before) == settings_digest(now):
            continue
        short = f"; it {trained_label(done)}" if done.get("complete") is False else ""
        raise ReproduceError(
            f"{d} holds a run with other settings ({settings_diff(before, now)}){short}: "
            f"not mixing it with this command's; use another --out, or delete {d} to rerun it"
        )


def trained_label(t: dict) -> str:
    """'stopped by max_steps at step 2 of the plan's 300000 (0.0007 of 60 epochs)'."""
    return (
        f"stopped by {t.get('stopped_by', '?')} at step {t.get('steps')} of the plan's "
        f"{t.get('plan_steps')} ({t.get('epochs')} of {t.get('plan_epochs')} epochs, "
        f"{t.get('images_seen')} images)"
    )
