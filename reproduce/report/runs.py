"""Reading run folders: a run's status, configuration, log records, its COCO metrics in
percent and its learning curves. A run that is absent, unfinished or failed is shown as such,
never filled in."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from updetr_lite.jsonl import read_jsonl

# names the engine or pycocotools may use for the six COCO numbers
_METRIC_ALIASES = {
    "ap": "AP",
    "map": "AP",
    "ap50": "AP50",
    "ap_50": "AP50",
    "ap75": "AP75",
    "ap_75": "AP75",
    "aps": "APs",
    "ap_s": "APs",
    "ap_small": "APs",
    "apm": "APm",
    "ap_m": "APm",
    "ap_medium": "APm",
    "apl": "APl",
    "ap_l": "APl",
    "ap_large": "APl",
}


# ----------------------------------------------------------------------------- run folders


@dataclass
class RunData:
    """What one run folder holds. status: done | unfinished | failed | missing. ``trained``:
    the driver's DONE record (steps, epochs, images seen, the plan's steps, ``complete``);
    empty when DONE carries none."""

    name: str
    status: str
    config: dict | None
    records: list[dict]
    path: Path
    trained: dict = field(default_factory=dict)

    @property
    def shortened(self) -> bool:
        """Finished, but before the plan's end (e.g. a max_steps budget given with --set)."""
        return self.status == "done" and self.trained.get("complete") is False

    def label(self) -> str:
        """How a table names this run: its name, and what it trained when shortened."""
        if not self.shortened:
            return self.name
        t = self.trained
        return (
            f"{self.name} SHORTENED: {t.get('steps')} of {t.get('plan_steps')} planned steps "
            f"({t.get('epochs')} of {t.get('plan_epochs')} epochs, {t.get('images_seen')} "
            f"images; stopped by {t.get('stopped_by')})"
        )


def run_config(run_dir: str | Path):
    """The resolved ``updetr_lite.config.Config`` of a run folder (its config.json)."""
    from updetr_lite.config import Config

    d = json.loads((Path(run_dir) / "config.json").read_text())
    return Config.from_dict(d.get("config", d))


def load_run(out_root: str | Path, name: str) -> RunData:
    path = Path(out_root) / name
    if not path.is_dir():
        return RunData(name, "missing", None, [], path)
    log = path / "log.jsonl"
    records = read_jsonl(log) if log.exists() else []
    cfg = None
    if (path / "config.json").exists():
        cfg = json.loads((path / "config.json").read_text())
    if (path / "DONE").exists():
        status = "done"
    elif (path / "papermill.log").exists() and not _running(path):
        status = "failed"
    else:
        status = "unfinished"
    if not records and status == "done":
        status = "unfinished"  # a DONE without a log is not a result
    trained = {}
    if status == "done":
        try:
            trained = json.loads((path / "DONE").read_text() or "{}")
        except ValueError:
            trained = {}
        trained = trained if isinstance(trained, dict) else {}
        trained.pop("config", None)
    return RunData(name, status, cfg, records, path, trained)


def _running(path: Path) -> bool:
    """A run whose papermill log was written to in the last minute is still going."""
    import time

    return time.time() - (path / "papermill.log").stat().st_mtime < 60


def _flat(record: dict) -> dict:
    """Nested dicts (e.g. {"eval": {"AP": ...}}) flattened to their inner names."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flat(v))
        else:
            out[k] = v
    return out


def normalize_metrics(record: dict) -> dict[str, float]:
    """The COCO numbers of a log record, named AP, AP50, AP75, APs, APm, APl, in percent.
    pycocotools reports fractions: values are scaled by 100 unless the record says
    ``"ap_unit": "percent"``."""
    flat = _flat(record)
    scale = 1.0 if flat.get("ap_unit") == "percent" else 100.0
    out = {}
    for k, v in flat.items():
        name = _METRIC_ALIASES.get(str(k).lower().replace("@", "").replace("-", "_"))
        # pycocotools writes -1 where a metric is undefined (e.g. no large objects)
        if name and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
            out[name] = float(v) * scale
    return out


def eval_records(records: list[dict]) -> list[dict]:
    """Records that carry COCO metrics, each as {"step", "epoch", metrics...}."""
    out = []
    for r in records:
        m = normalize_metrics(r)
        if "AP" in m or "AP50" in m:
            flat = _flat(r)
            m["step"] = flat.get("step")
            m["epoch"] = flat.get("epoch")
            out.append(m)
    return out


def final_metrics(run: RunData) -> dict[str, float] | None:
    """The last evaluation of a finished run (the paper reports the end of training)."""
    if run.status != "done":
        return None
    ev = eval_records(run.records)
    return ev[-1] if ev else None


def steps_per_epoch(records: list[dict]) -> int | None:
    """Optimizer steps per epoch, from the log's ``plan`` record (None without one)."""
    plan = next((r for r in records if r.get("type") == "plan"), None)
    return plan.get("steps_per_epoch") if plan else None


def curve(records: list[dict], key: str, x_key: str = "step") -> tuple[list, list]:
    """(x, y) of ``key``: a COCO metric from evaluation records, or any other number
    (e.g. ``loss``) from the records that have it. x: the optimizer step, or with
    ``x_key='epoch'`` the fractional epoch step / steps_per_epoch (never the integer epoch
    of a record: hundreds of records share one); ValueError when the log has no plan
    record to say how many steps an epoch has."""
    scale = 1.0
    if x_key == "epoch" and records:
        spe = steps_per_epoch(records)
        if not spe:
            raise ValueError("x_key='epoch' needs the log's plan record (steps_per_epoch)")
        scale = 1.0 / spe
    xs, ys = [], []
    if key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        for m in eval_records(records):
            if key in m and m.get("step") is not None:
                xs.append(m["step"] * scale)
                ys.append(m[key])
        return xs, ys
    for r in records:
        if r.get("type", "train") != "train":  # epoch means, eval, init: not curve points
            continue
        flat = _flat(r)
        if key in flat and flat.get("step") is not None and not _is_eval(r):
            v = flat[key]
            if isinstance(v, int | float) and math.isfinite(v):
                xs.append(flat["step"] * scale)
                ys.append(float(v))
    return xs, ys


def _is_eval(record: dict) -> bool:
    return bool(normalize_metrics(record))
