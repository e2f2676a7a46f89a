"""Tables and figures of the paper, rebuilt from run folders and nothing else.

A run folder (see ``updetr_lite.main``) holds ``config.json``, ``log.jsonl`` and, once
finished, ``DONE``. This module reads them, puts the paper's numbers (``PAPER``, from the
paper's Tables 1-4) beside the reproduced ones with the
difference, and draws the learning curves. A run that is absent, unfinished or failed is
shown as such, a run stopped before its plan's end is marked SHORTENED; nothing is ever
filled in. Each table's comparisons are the pairs the paper draws (``Row.vs`` in the plan:
UP-DETR vs DETR at the same schedule, M=10 vs M=1, the Table 4 cells), our gain beside the
paper's.

Numbers: AP metrics in percent (COCO-style, pycocotools), as the paper prints them. An arm
with several seeds shows mean +- standard deviation and each seed's value.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .jsonl import read_jsonl

# The paper's numbers (R50). Keys: "<table>/<row>"; AP metrics in percent.
PAPER: dict[str, dict[str, float]] = {
    # Table 1: PASCAL VOC trainval07+12 -> test2007
    "table1/Faster R-CNN": {"AP": 56.1, "AP50": 82.6, "AP75": 62.7},
    "table1/DETR/150": {"AP": 49.9, "AP50": 74.5, "AP75": 53.1},
    "table1/UP-DETR/150": {"AP": 56.1, "AP50": 79.7, "AP75": 60.6},
    "table1/DETR/300": {"AP": 54.1, "AP50": 78.0, "AP75": 58.3},
    "table1/UP-DETR/300": {"AP": 57.2, "AP50": 80.1, "AP75": 62.0},
    # Table 2: COCO train2017 -> val2017 (SwAV CNN)
    "table2/DETR/150": {
        "AP": 39.7,
        "AP50": 60.3,
        "AP75": 41.7,
        "APs": 18.5,
        "APm": 43.8,
        "APl": 57.5,
    },
    "table2/UP-DETR/150": {
        "AP": 40.5,
        "AP50": 60.8,
        "AP75": 42.6,
        "APs": 19.0,
        "APm": 44.4,
        "APl": 60.0,
    },
    "table2/DETR/300": {
        "AP": 42.1,
        "AP50": 63.1,
        "AP75": 44.5,
        "APs": 19.7,
        "APm": 46.3,
        "APl": 60.9,
    },
    "table2/UP-DETR/300": {
        "AP": 42.8,
        "AP50": 63.0,
        "AP75": 45.3,
        "APs": 20.8,
        "APm": 47.1,
        "APl": 61.7,
    },
    # Table 3: 15-epoch pre-training, 150-epoch VOC fine-tuning
    "table3/DETR": {"AP": 49.9, "AP50": 74.5, "AP75": 53.1},
    "table3/M=1": {"AP": 53.1, "AP50": 77.2, "AP75": 57.4},
    "table3/M=10": {"AP": 54.9, "AP50": 78.7, "AP75": 59.1},
    # Table 4: AP50 only
    "table4/DETR": {"AP50": 74.5},
    "table4/a": {"AP50": 74.0},
    "table4/b": {"AP50": 78.7},
    "table4/c": {"AP50": 62.0},
    "table4/d": {"AP50": 78.7},
}
TABLE_METRICS = {
    "table1": ("AP", "AP50", "AP75"),
    "table2": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "table3": ("AP", "AP50", "AP75"),
    "table4": ("AP", "AP50"),
}
TABLE_TITLES = {
    "table1": "Table 1: detection fine-tuning, DETR vs UP-DETR",
    "table2": "Table 2: COCO fine-tuning",
    "table3": "Table 3: single vs multiple query patches",
    "table4": "Table 4: frozen CNN and patch feature reconstruction",
}
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


# ----------------------------------------------------------------------------- statistics


def mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), sd


def fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_signed(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:+.1f}"


@dataclass
class ArmResult:
    label: str
    runs: list[RunData]
    metrics: list[dict | None]  # per run (seed), None when the run has no result
    paper: dict[str, float] | None
    vs: tuple[str, ...] = ()  # labels of the arms the paper compares this one with
    paper_key: str | None = None

    @property
    def shortened(self) -> list[RunData]:
        return [r for r in self.runs if r.shortened]

    def values(self, key: str) -> list[float]:
        return [m[key] for m in self.metrics if m is not None and key in m]

    def summary(self, key: str) -> tuple[float, float, int]:
        v = self.values(key)
        mean, sd = mean_sd(v)
        return mean, sd, len(v)

    def status(self) -> str:
        done = sum(m is not None for m in self.metrics)
        text = f"{done}/{len(self.runs)} seeds"
        missing = [f"{r.name} ({r.status})" for r, m in zip(self.runs, self.metrics) if m is None]
        if missing:
            text += f"; missing: {', '.join(missing)}"
        if self.shortened:
            text += "; " + "; ".join(r.label() for r in self.shortened)
        return text


def arm_results(plan, artefact: str, out_root: str | Path) -> list[ArmResult]:
    arms = []
    for row in plan.artefacts.get(artefact, []):
        runs = [load_run(out_root, n) for n in row.runs]
        metrics = [final_metrics(r) for r in runs]
        paper = PAPER.get(row.paper) if row.paper else None
        arms.append(
            ArmResult(row.label, runs, metrics, paper, tuple(getattr(row, "vs", ())), row.paper)
        )
    return arms


def pairs(arms: list[ArmResult]) -> list[tuple[ArmResult, ArmResult]]:
    """The comparisons the paper draws in one table: (arm, the arm it is compared with), from
    each row's ``vs`` labels; ValueError naming a label that is no row of the table."""
    by_label = {a.label: a for a in arms}
    out = []
    for a in arms:
        for label in a.vs:
            if label not in by_label:
                raise ValueError(f"row {a.label!r} is compared with {label!r}: no such row")
            out.append((a, by_label[label]))
    return out


def paper_gain(a: ArmResult, b: ArmResult, key: str) -> float | None:
    """The paper's a - b on ``key``; None where the paper has no such pair (no number, or
    both arms stand beside the same paper row, e.g. two lite variants of UP-DETR/150)."""
    if not a.paper or not b.paper or a.paper_key == b.paper_key:
        return None
    if key not in a.paper or key not in b.paper:
        return None
    return round(a.paper[key] - b.paper[key], 1)


def compare(a: ArmResult, b: ArmResult, key: str) -> str:
    """A sentence comparing arm ``a`` with arm ``b`` on ``key``, seed by seed, with the
    paper's gain for the same pair. A conclusion is drawn only with at least two seeds on
    each side, and never from runs shortened before the plan's end."""
    va, vb = a.values(key), b.values(key)
    pg = paper_gain(a, b, key)
    paper = f"; paper {pg:+.1f}" if pg is not None else ""
    if not va or not vb:
        return f"{a.label} vs {b.label}: no result yet{paper} ({a.status()}; {b.status()})."
    ma, mb = statistics.fmean(va), statistics.fmean(vb)
    text = f"{a.label} vs {b.label}: {key} {ma:.1f} vs {mb:.1f} ({ma - mb:+.1f}{paper})"
    short = [r.name for r in a.shortened + b.shortened]
    if short:
        return text + f"; SHORTENED runs ({', '.join(short)}): not the plan's result."
    if len(va) < 2 or len(vb) < 2:
        return text + f"; {len(va)} vs {len(vb)} seed(s): too few to conclude."
    # every pairing of seeds: how often a beats b
    wins = sum(x > y for x in va for y in vb)
    losses = sum(x < y for x in va for y in vb)
    pairs = len(va) * len(vb)
    if wins == pairs:
        verdict = f"higher in all {pairs} seed pairings"
    elif losses == pairs:
        verdict = f"lower in all {pairs} seed pairings"
    else:
        verdict = (
            f"higher in {wins}, lower in {losses}, equal in {pairs - wins - losses} of {pairs} "
            "seed pairings: not a clear difference"
        )
    return text + f"; {verdict} (seeds: {_list(va)} vs {_list(vb)})."


def _list(v: list[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in v)


# ----------------------------------------------------------------------------- tables


def table_rows(arms: list[ArmResult], metrics: tuple[str, ...]):
    """Rows (dicts) of a table: per metric the reproduced mean +- sd (marked SHORTENED when
    a run stopped before the plan's end), the paper's number, reproduced - paper, and the
    gain over the arm the paper compares this one with (its first ``vs``; reproduced and
    paper), named in ``vs``."""
    rows = []
    first = {}
    for a, b in pairs(arms):
        first.setdefault(a.label, b)
    for arm in arms:
        base = first.get(arm.label)
        row = {"arm": arm.label, "runs": arm.status()}
        if base is not None:
            row["vs"] = base.label
        mark = " (SHORTENED)" if arm.shortened else ""
        for k in metrics:
            mean, sd, n = arm.summary(k)
            paper = arm.paper.get(k) if arm.paper else None
            row[f"{k}"] = (
                "missing" if n == 0 else fmt(mean) + (f" ± {fmt(sd)}" if n > 1 else "") + mark
            )
            row[f"{k} seeds"] = _list(arm.values(k)) if n else "missing"
            row[f"{k} paper"] = fmt(paper) if paper is not None else "–"
            row[f"{k} diff"] = fmt_signed(mean - paper) if n and paper is not None else "–"
            if base is not None:
                bmean, _, bn = base.summary(k)
                row[f"{k} gain"] = fmt_signed(mean - bmean) if n and bn else "–"
                row[f"{k} gain paper"] = fmt_signed(paper_gain(arm, base, k))
        rows.append(row)
    return rows


def comparison_rows(arms: list[ArmResult], metrics: tuple[str, ...]) -> list[dict]:
    """Every pair the paper draws in a table, one row each: our gain and the paper's."""
    rows = []
    for a, b in pairs(arms):
        row = {"comparison": f"{a.label} vs {b.label}"}
        for k in metrics:
            (ma, _, na), (mb, _, nb) = a.summary(k), b.summary(k)
            row[f"{k} gain"] = fmt_signed(ma - mb) if na and nb else "–"
            row[f"{k} gain paper"] = fmt_signed(paper_gain(a, b, k))
        short = [r.name for r in a.shortened + b.shortened]
        row["note"] = f"SHORTENED: {', '.join(short)}" if short else ""
        rows.append(row)
    return rows


def to_markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    esc = [c.replace("|", "/") for c in columns]
    lines = ["| " + " | ".join(esc) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str | Path) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["arm"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)


def paper_only_rows(table: str) -> list[dict]:
    """Rows for a table this scale does not run: the paper's numbers, reproduced 'not run'."""
    rows = []
    for key, vals in PAPER.items():
        if key.startswith(table + "/"):
            row = {"arm": key.split("/", 1)[1], "runs": "not run at this scale"}
            for k in TABLE_METRICS[table]:
                row[k] = "not run"
                row[f"{k} paper"] = fmt(vals.get(k))
            rows.append(row)
    return rows


def build_table(plan, table: str, out_root: str | Path) -> tuple[list[dict], list[ArmResult]]:
    arms = arm_results(plan, table, out_root)
    if not arms:
        return paper_only_rows(table), []
    return table_rows(arms, TABLE_METRICS[table]), arms


# ----------------------------------------------------------------------------- figures


def _plt():
    """pyplot; the Agg backend outside a notebook kernel (inside, figures show inline)."""
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(y: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists)."""
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= window:
            acc -= y[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(
    plan,
    rows,
    out_root: str | Path,
    key: str,
    path: str | Path,
    title: str,
    x_key: str = "step",
    window: int = 1,
    ax=None,
):
    """One line per run (colour per arm, style per seed); a missing run is named in the
    legend as missing. Returns the list of run names that had no data."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    missing = []
    styles = ["-", "--", ":", "-."]
    loaded = {n: load_run(out_root, n) for row in rows for n in row.runs}
    x_key = figure_x_key(list(loaded.values()), x_key)
    for i, row in enumerate(rows):
        color = f"C{i}"
        for j, name in enumerate(row.runs):
            run = loaded[name]
            x, y = curve(run.records, key, x_key)
            if not x:
                missing.append(name)
                ax.plot(
                    [], [], color=color, ls=styles[j % 4], label=f"{row.label} [{name}: missing]"
                )
                continue
            if window > 1:
                y = smooth(y, window)
            tag = "" if run.status == "done" else f" ({run.status})"
            if run.shortened:
                t = run.trained
                tag = f" (SHORTENED: {t.get('steps')}/{t.get('plan_steps')} steps)"
            marker = "o" if len(x) < 60 else None  # evaluations: few points, show each
            ax.plot(
                x,
                y,
                color=color,
                ls=styles[j % 4],
                lw=1.4,
                marker=marker,
                ms=3,
                label=f"{row.label} [{name}]{tag}",
            )
    ax.set_xlabel("epoch (step / steps per epoch)" if x_key == "epoch" else "optimizer step")
    ax.set_ylabel(key if key == "loss" else f"{key} (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    if own:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return missing


def figure_x_key(runs: list[RunData], wanted: str) -> str:
    """The x axis of one figure: fractional epochs when asked for and every run with records
    says how many steps an epoch has (its plan record), else optimizer steps for all."""
    if wanted == "epoch" and all(steps_per_epoch(r.records) for r in runs if r.records):
        return "epoch"
    return "step"


def plot_run(run_dir: str | Path, path: str | Path | None = None):
    """The plots that end a run notebook: training loss and, for fine-tuning, AP / AP50."""
    plt = _plt()
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "log.jsonl") if (run_dir / "log.jsonl").exists() else []
    x, loss = curve(records, "loss")
    ev = eval_records(records)
    ncols = 2 if ev else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.4), squeeze=False)
    ax = axes[0, 0]
    if x:
        ax.plot(x, loss, lw=0.8, alpha=0.5, label="loss")
        ax.plot(x, smooth(loss, 10), lw=1.5, label="loss (moving average)")
    ax.set_xlabel("step")
    ax.set_title(f"{run_dir.name}: training loss", fontsize=10)
    ax.legend(fontsize=8)
    if ev:
        ax = axes[0, 1]
        for k in ("AP", "AP50"):
            xs, ys = curve(records, k)
            ax.plot(xs, ys, marker=".", label=k)
        ax.set_xlabel("step")
        ax.set_title("validation", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
    return fig


def plot_loss_terms(run_dir: str | Path, path: str | Path | None = None):
    """One panel per weighted loss term of the last decoder layer (class, L1, GIoU,
    reconstruction); None when the log has no training record yet."""
    plt = _plt()
    records = read_jsonl(Path(run_dir) / "log.jsonl")
    keys = [k for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_rec") if curve(records, k)[0]]
    if not keys:
        print("no training records in the log yet")
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        x, y = curve(records, k)
        ax.plot(x, y, lw=0.8, alpha=0.6)
        ax.plot(x, smooth(y, 10), lw=1.5)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
    return fig


# ----------------------------------------------------------------------------- report


FIGURES = {
    "fig1": ("table1", "AP50", "Figure 1: AP50 learning curves, DETR vs UP-DETR"),
    "fig3": ("fig3", "AP", "Figure 3: AP learning curves"),
    "fig4": ("table4", "AP50", "Figure 4: AP50 learning curves of the Table 4 ablations"),
    "fig6": ("fig6", "loss", "Figure 6: pretext loss with and without the attention mask"),
}


def cnn_probe_text(out_root: str | Path) -> str:
    p = Path(out_root) / "cnn" / "probe.json"
    if not p.exists():
        return "Lite CNN probe: missing (run `cnn` has no probe.json).\n"
    d = json.loads(p.read_text())
    return (
        f"Lite CNN ({d.get('method', 'see cnn/')}): k-NN ({d['k']}-NN, cosine) accuracy on "
        f"{d['n_test']} object crops of the val split over {d['num_classes']} classes: "
        f"**{100 * d['trained']:.1f} %** with the kit's frozen CNN vs "
        f"{100 * d['random']:.1f} % with a random CNN (chance {100 * d['chance']:.1f} %)"
        + (
            f"; objects as RoIAlign of the whole image's feature map (the 'roi' patch feature): "
            f"**{100 * d['trained_roi']:.1f} %** vs {100 * d['random_roi']:.1f} %"
            if "trained_roi" in d
            else ""
        )
        + ".\n"
    )


def localization_text(out_root: str | Path) -> str:
    p = Path(out_root) / "localize" / "localization.json"
    if not p.exists():
        return "Figure 5 / localization: missing (run `localize` has no localization.json).\n"
    d = json.loads(p.read_text())
    rows = [
        {
            "model": r["label"],
            "run": r["run"],
            "mean IoU": fmt(r["mean_iou"], 3),
            "IoU >= 0.5": f"{100 * r['hit50']:.0f} %",
            "patches": r["n"],
        }
        for r in d["runs"]
    ]
    base = d["baseline"]
    rows.append(
        {
            "model": "baseline: one fixed box (mean patch size, image centre)",
            "run": "–",
            "mean IoU": fmt(base["mean_iou"], 3),
            "IoU >= 0.5": f"{100 * base['hit50']:.0f} %",
            "patches": base["n"],
        }
    )
    return to_markdown(rows)


def build_report(plan, out_root: str | Path, report_dir: str | Path | None = None) -> dict:
    """Write tables (Markdown + CSV), figures (PNG) and report.md for ``plan`` from the run
    folders under ``out_root``. Returns {"tables": {...}, "figures": {...}, "missing": [...]}."""
    out_root = Path(out_root)
    report_dir = Path(report_dir or out_root / "report")
    report_dir.mkdir(parents=True, exist_ok=True)
    md = [
        f"# UP-DETR reproduction report ({plan.scale} scale)\n",
        plan.notes.get("scale", "") + "\n",
    ]
    md.append(random_cnn_text(plan, out_root))
    md.append("\n" + summary_section(plan, out_root))
    if plan.scale != "paper":
        md.append("\n## The frozen CNN\n\n" + cnn_probe_text(out_root))
    result = {"tables": {}, "figures": {}, "missing": []}
    for table in ("table1", "table2", "table3", "table4"):
        rows, arms = build_table(plan, table, out_root)
        (report_dir / f"{table}.md").write_text(to_markdown(rows))
        write_csv(rows, report_dir / f"{table}.csv")
        result["tables"][table] = rows
        md.append(f"\n## {TABLE_TITLES[table]}\n")
        if plan.notes.get(table):
            md.append("\n" + plan.notes[table] + "\n")
        md.append("\n" + _compact_markdown(rows, TABLE_METRICS[table]))
        for arm in arms:
            for r, m in zip(arm.runs, arm.metrics):
                if m is None:
                    result["missing"].append(r.name)
        comp = comparison_rows(arms, TABLE_METRICS[table]) if arms else []
        if comp:
            (report_dir / f"{table}_comparisons.md").write_text(to_markdown(comp))
            write_csv(comp, report_dir / f"{table}_comparisons.csv")
            md.append("\nThe paper's comparisons (ours, the paper's gain beside):\n\n")
            key = CLAIM_KEYS[table][0]
            for a, b in pairs(arms):
                md.append(f"- {compare(a, b, key)}\n")
    for fig, (source, key, title) in FIGURES.items():
        rows = plan.artefacts.get(source, [])
        path = report_dir / f"{fig}.png"
        window = 20 if key == "loss" else 1
        # Figure 6 compares pretext losses of runs of one schedule: steps
        x_key = "step" if fig == "fig6" else plan.x_key
        missing = plot_curves(plan, rows, out_root, key, path, title, x_key, window)
        result["figures"][fig] = str(path)
        md.append(f"\n## {title}\n\n![{fig}]({fig}.png)\n")
        if missing:
            md.append(f"\nMissing runs: {', '.join(missing)}.\n")
        if fig == "fig6":
            md.append("\n" + fig6_text(plan, out_root) + "\n\n" + fig6_verdict(plan, out_root))
    loc_png = out_root / "localize" / "fig5.png"
    md.append("\n## Figure 5: unsupervised localization of query patches\n\n")
    if loc_png.exists():
        shutil.copy(loc_png, report_dir / "fig5.png")
        result["figures"]["fig5"] = str(report_dir / "fig5.png")
        md.append("![fig5](fig5.png)\n\n")
    md.append(localization_text(out_root))
    result["missing"] = sorted(set(result["missing"]))
    (report_dir / "report.md").write_text("".join(md))
    return result


def _compact_markdown(rows: list[dict], metrics: tuple[str, ...]) -> str:
    """The Markdown table of report.md (the table*.md / .csv files have every column): for
    AP and AP50, reproduced, paper, reproduced - paper, and the gain over the row named in
    ``vs`` (the pair the paper draws) reproduced, the paper's gain in brackets."""
    shown = [k for k in ("AP", "AP50") if k in metrics]
    out = []
    for r in rows:
        row = {"arm": r["arm"]}
        for k in shown:
            row[k] = r.get(k, "–")
            row[f"{k} paper"] = r.get(f"{k} paper", "–")
            row[f"{k} diff"] = r.get(f"{k} diff", "–")
            if f"{k} gain" in r:
                row[f"{k} gain (paper)"] = f"{r[f'{k} gain']} ({r[f'{k} gain paper']})"
            else:
                row[f"{k} gain (paper)"] = "–"
        row["vs"] = r.get("vs", "–")
        row["runs"] = r["runs"]
        out.append(row)
    return to_markdown(out)


def fig6_verdict(plan, out_root: str | Path) -> str:
    """The paper's Figure 6 claim checked seed by seed: without the attention mask the pretext
    loss is lower early (first 20 % of the logged steps), with it lower late (last 20 %)."""
    rows = plan.artefacts.get("fig6", [])
    if len(rows) != 2:
        return "Figure 6: not planned at this scale."
    early, late, n, why, short = 0, 0, 0, [], []
    for with_mask, without in zip(rows[0].runs, rows[1].runs):
        r1, r0 = load_run(out_root, with_mask), load_run(out_root, without)
        y1, y0 = curve(r1.records, "loss")[1], curve(r0.records, "loss")[1]
        not_done = [r.name for r in (r1, r0) if r.status != "done"]
        short += [r.name for r in (r1, r0) if r.shortened]
        m = min(len(y1), len(y0))
        if not_done or m < 5:
            why.append(
                f"{', '.join(not_done)} not finished"
                if not_done
                else f"{with_mask} / {without}: {len(y1)} / {len(y0)} loss records, 5 needed "
                "(a run logs every pretrain.log_every steps)"
            )
            continue
        k = max(1, m // 5)
        n += 1
        early += statistics.fmean(y0[:k]) < statistics.fmean(y1[:k])
        late += statistics.fmean(y1[m - k : m]) < statistics.fmean(y0[m - k : m])
    if n == 0:
        return f"Figure 6: no pair of pre-trainings to compare ({'; '.join(why)})."
    text = (
        f"Figure 6 (paper: without the mask lower early, with it lower late): without the mask "
        f"lower early in {early} of {n} seed(s); with the mask lower late in {late} of {n}"
    )
    if short:
        return text + f"; SHORTENED runs ({', '.join(short)}): not the plan's result."
    return text + ("; one seed: too few to conclude." if n < 2 else ".")


def summary_section(plan, out_root: str | Path) -> str:
    """What the runs say about the paper's claims, each with its seed count."""
    lines = ["## Summary\n"]
    for table, claim in CLAIMS.items():
        arms = arm_results(plan, table, out_root)
        if not arms:
            lines.append(f"- {claim}: not run at this scale.")
            continue
        for a, b in pairs(arms):
            for key in CLAIM_KEYS[table]:
                lines.append(f"- {claim} ({key}): {compare(a, b, key)}")
    lines.append(f"- C4 (Figure 6): {fig6_verdict(plan, out_root)}")
    loc = Path(out_root) / "localize" / "localization.json"
    if loc.exists():
        d = json.loads(loc.read_text())
        parts = [f"{r['label']} [{r['run']}] {r['mean_iou']:.3f}" for r in d["runs"]]
        lines.append(
            f"- C5 (Figure 5): mean IoU of the predicted box with the query patch's own box: "
            f"{'; '.join(parts) or 'no model'}; a fixed box scores {d['baseline']['mean_iou']:.3f}."
        )
    else:
        lines.append("- C5 (Figure 5): localization missing.")
    return "\n".join(lines) + "\n"


# the paper's claims, by table: C1 pre-training helps DETR (VOC and COCO), C2 multiple query
# patches beat one, C3 the frozen CNN and the reconstruction (Table 4)
CLAIMS = {
    "table1": "C1 (Table 1, VOC)",
    "table2": "C1 (Table 2, COCO)",
    "table3": "C2 (Table 3)",
    "table4": "C3 (Table 4)",
}
CLAIM_KEYS = {"table1": ("AP", "AP50"), "table2": ("AP",), "table3": ("AP",), "table4": ("AP50",)}


def random_cnn_text(plan, out_root: str | Path) -> str:
    """A warning naming the runs trained without CNN weights (model.backbone_weights unset or
    'random'), from their config.json; empty when there are none."""
    from .config import RANDOM_CNN

    names = sorted({n for rows in plan.artefacts.values() for row in rows for n in row.runs})
    unset, asked = [], []
    for n in names:
        cfg = load_run(out_root, n).config
        model = (cfg or {}).get("config", cfg or {}).get("model")
        if not isinstance(model, dict) or "backbone_weights" not in model:
            continue
        w = model["backbone_weights"]
        if w == RANDOM_CNN:
            asked.append(n)
        elif not w:
            unset.append(n)
    text = ""
    if unset:
        text += (
            f"\n**WARNING: {len(unset)} run(s) trained on a RANDOM CNN: model.backbone_weights "
            f"was not set** ({', '.join(unset)}). Their numbers are not the paper's setting.\n"
        )
    if asked:
        text += (
            f"\nNote: {len(asked)} run(s) trained on a random CNN on purpose "
            f"(model.backbone_weights={RANDOM_CNN}): {', '.join(asked)}.\n"
        )
    return text


def fig6_text(plan, out_root: str | Path) -> str:
    """Early (first 20 %) and late (last 20 %) mean pretext loss of each Figure 6 run."""
    lines = []
    for row in plan.artefacts.get("fig6", []):
        for name in row.runs:
            x, y = curve(load_run(out_root, name).records, "loss")
            if len(y) < 5:
                lines.append(f"- {row.label} [{name}]: missing")
                continue
            k = max(1, len(y) // 5)
            lines.append(
                f"- {row.label} [{name}]: loss early {statistics.fmean(y[:k]):.3f}, "
                f"late {statistics.fmean(y[-k:]):.3f}"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Figure 5


def load_pretext_model(run_dir: str | Path, checkpoint: str = "last.pth"):
    """(UPDETR in eval mode, Config) from a pre-training run folder. The checkpoint may be a
    bare state dict or a dict with a ``model`` entry; CNN weights missing from it come from
    the run's ``model.backbone_weights``."""
    import torch

    from .config import Config
    from .models.build import build_updetr

    run_dir = Path(run_dir)
    d = json.loads((run_dir / "config.json").read_text())
    cfg = Config.from_dict(d.get("config", d))
    cnn_file = cfg.model.backbone_weights
    cfg.model.backbone_weights = None
    model = build_updetr(cfg)
    ckpt = torch.load(run_dir / checkpoint, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise ValueError(
            f"{run_dir / checkpoint}: not a pre-training checkpoint of this config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if missing:
        if not cnn_file or not Path(cnn_file).exists():
            raise FileNotFoundError(
                f"{run_dir / checkpoint} holds no CNN weights and model.backbone_weights "
                f"({cnn_file}) is not there"
            )
        from .models.weights import load_cnn_weights

        load_cnn_weights(model.backbone, cnn_file)
    cfg.model.backbone_weights = cnn_file
    return model.eval(), cfg


def sample_patch_boxes(gen, height: int, width: int, k: int, min_patch: int):
    """k patch boxes, xyxy pixels [k, 4]: sides uniform in [min_patch, side - min_patch], then
    a uniform top-left corner (the authors' sampling)."""
    import torch

    boxes = []
    for _ in range(k):
        pw = int(
            torch.randint(min_patch, max(min_patch, width - min_patch) + 1, (1,), generator=gen)
        )
        ph = int(
            torch.randint(min_patch, max(min_patch, height - min_patch) + 1, (1,), generator=gen)
        )
        x0 = int(torch.randint(0, width - pw + 1, (1,), generator=gen))
        y0 = int(torch.randint(0, height - ph + 1, (1,), generator=gen))
        boxes.append([x0, y0, x0 + pw, y0 + ph])
    return torch.tensor(boxes, dtype=torch.float32)


def load_image(path: str | Path, size: int, max_size: int):
    """uint8 [3, H, W] resized so the shortest side is ``size`` (longest <= max_size)."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    with Image.open(path) as im:
        img = F.pil_to_tensor(im.convert("RGB"))
    if min(img.shape[-2:]) != size:
        img = F.resize(img, size, max_size=max_size if max_size > size else None, antialias=True)
    return img


def localize_patches(model, cfg, image_uint8, boxes_xyxy):
    """The pretext model's answer for the given patch boxes (xyxy pixels [k, 4]) on one uint8
    image [3, H, W] (``engine.inference.localize_patches``) -> predicted boxes xyxy pixels
    [k, 4], scores [k], the query patches uint8 [k, 3, p, p] (for the figure)."""
    import torch

    from .data.query_patches import crop_patches
    from .engine.inference import localize_patches as localize

    found = localize(model, cfg, image_uint8, boxes=boxes_xyxy)
    pred = torch.tensor([r["box"] for r in found], dtype=torch.float32)
    scores = torch.tensor([r["score"] for r in found])
    return pred, scores, crop_patches(image_uint8, boxes_xyxy, cfg.pretext.patch_size)


def localization_study(
    runs: list[tuple[str, str | Path]],
    image_paths: list[str | Path],
    out_dir: str | Path,
    n_images: int = 100,
    seed: int = 0,
    n_show: int = 4,
) -> dict:
    """Figure 5 and its number: query patches cut at random from val images, fed back to each
    pre-trained model (label, run folder); the most confident query of each group is its
    prediction. Reports mean IoU with the true patch box and the share with IoU >= 0.5, beside
    a baseline that always answers one fixed box (the patches' mean size at the image centre).
    Every model sees the same images and boxes, each image resized as in pre-training
    (shortest side max(data.pretext_scales), longest <= data.pretext_max_size) and the patches
    cut from that image. Writes fig5.png and localization.json."""
    import torch
    from torchvision.ops import box_iou

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_paths = list(image_paths)[:n_images]
    if not image_paths:
        raise FileNotFoundError("localization study: no val images given")
    results, shown = [], None
    truth_all = None
    for label, run_dir in runs:
        run_dir = Path(run_dir)
        if not (run_dir / "DONE").exists() or not (run_dir / "last.pth").exists():
            results.append({"label": label, "run": run_dir.name, "status": "missing"})
            continue
        model, cfg = load_pretext_model(run_dir)
        k = cfg.pretext.num_patches
        gen = torch.Generator().manual_seed(seed)
        ious, truth, examples = [], [], []
        for i, path in enumerate(image_paths):
            img = load_image(path, max(cfg.data.pretext_scales), cfg.data.pretext_max_size)
            h, w = img.shape[-2:]
            # the same boxes for every model: draw the largest M once per image, use the first k
            boxes = sample_patch_boxes(gen, h, w, 10, cfg.pretext.min_patch)[:k]
            pred, scores, crops = localize_patches(model, cfg, img, boxes)
            ious.append(box_iou(pred, boxes).diagonal())
            truth.append((boxes, h, w))
            if i < n_show:
                examples.append((img, boxes, pred, scores, crops))
        iou = torch.cat(ious)
        results.append(
            {
                "label": label,
                "run": run_dir.name,
                "status": "done",
                "num_patches": k,
                "n": int(iou.numel()),
                "mean_iou": float(iou.mean()),
                "hit50": float((iou >= 0.5).float().mean()),
            }
        )
        if shown is None:
            shown = (label, examples)
        if truth_all is None or k > truth_all[0]:
            truth_all = (k, truth)
    baseline = {"n": 0, "mean_iou": math.nan, "hit50": math.nan}
    if truth_all:
        ious = []
        all_boxes = torch.cat([b for b, _, _ in truth_all[1]])
        mw = float((all_boxes[:, 2] - all_boxes[:, 0]).mean())
        mh = float((all_boxes[:, 3] - all_boxes[:, 1]).mean())
        for boxes, h, w in truth_all[1]:
            fixed = torch.tensor([[w / 2 - mw / 2, h / 2 - mh / 2, w / 2 + mw / 2, h / 2 + mh / 2]])
            ious.append(box_iou(fixed, boxes)[0])
        iou = torch.cat(ious)
        baseline = {
            "n": int(iou.numel()),
            "mean_iou": float(iou.mean()),
            "hit50": float((iou >= 0.5).float().mean()),
        }
    summary = {
        "runs": [r for r in results if r["status"] == "done"],
        "missing": [r["run"] for r in results if r["status"] != "done"],
        "baseline": baseline,
        "n_images": len(image_paths),
        "seed": seed,
    }
    (out_dir / "localization.json").write_text(json.dumps(summary, indent=1) + "\n")
    if shown:
        _draw_fig5(*shown, out_dir / "fig5.png")
    return summary


def _draw_fig5(label, examples, path):
    import torch

    plt = _plt()
    n = len(examples)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    for j, (img, boxes, pred, scores, crops) in enumerate(examples):
        ax = axes[0, j]
        ax.imshow(img.permute(1, 2, 0).numpy())
        for i, (t, b, s) in enumerate(zip(boxes, pred, scores)):
            c = f"C{i}"
            ax.add_patch(
                plt.Rectangle(
                    (t[0], t[1]), t[2] - t[0], t[3] - t[1], fill=False, ec=c, ls="--", lw=1
                )
            )
            ax.add_patch(
                plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec=c, lw=2)
            )
            ax.text(
                b[0],
                b[1],
                f"{float(s):.2f}",
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"facecolor": c, "pad": 1, "lw": 0},
            )
        ax.axis("off")
        # second line: the query patches, side by side, framed in their colour
        k = crops.shape[0]
        cols = math.ceil(math.sqrt(k))
        rows = math.ceil(k / cols)
        p = crops.shape[-1]
        mosaic = torch.full((3, rows * (p + 4), cols * (p + 4)), 255, dtype=torch.uint8)
        for i in range(k):
            r, c = divmod(i, cols)
            mosaic[
                :, r * (p + 4) + 2 : r * (p + 4) + 2 + p, c * (p + 4) + 2 : c * (p + 4) + 2 + p
            ] = crops[i]
        ax = axes[1, j]
        ax.imshow(mosaic.permute(1, 2, 0).numpy())
        for i in range(k):
            r, c = divmod(i, cols)
            ax.add_patch(
                plt.Rectangle(
                    (c * (p + 4) + 1, r * (p + 4) + 1), p + 2, p + 2, fill=False, ec=f"C{i}", lw=2
                )
            )
        ax.axis("off")
    fig.suptitle(
        f"{label}: predicted box (solid, confidence) and the query patch's true box (dashed)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def export_results(out_root: str | Path, dest: str | Path) -> list[Path]:
    """Copy the report's small files (Markdown, CSV, PNG) to ``dest`` and write
    ``runs.md``: every run folder's status and wall time (from its DONE marker)."""
    out_root, dest = Path(out_root), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted((out_root / "report").glob("*")):
        if f.suffix in (".md", ".csv", ".png"):
            shutil.copy(f, dest / f.name)
            copied.append(dest / f.name)
    rows = []
    for d in sorted(p for p in out_root.iterdir() if p.is_dir() and p.name != "report"):
        run = load_run(out_root, d.name)
        seconds = "–"
        if (d / "DONE").exists():
            try:
                seconds = f"{json.loads((d / 'DONE').read_text())['seconds']:.0f}"
            except (ValueError, KeyError):
                pass
        train = [r for r in run.records if r.get("type") == "train"]
        t = run.trained
        steps = t.get("steps", train[-1].get("step", "–") if train else "–")
        rows.append(
            {
                "run": d.name,
                "status": "done, SHORTENED" if run.shortened else run.status,
                "steps": steps,
                "seconds": seconds,
                "epochs": t.get("epochs", "–"),
                "images": t.get("images_seen", "–"),
                "plan steps": t.get("plan_steps", "–"),
            }
        )
    (dest / "runs.md").write_text(to_markdown(rows))
    copied.append(dest / "runs.md")
    return copied
