"""Tables and figures of the paper, rebuilt from run folders and nothing else.

A run folder (see ``updetr_lite.main``) holds ``config.json``, ``log.jsonl`` and, once
finished, ``DONE``. This module reads them, puts the paper's numbers (``PAPER``, from
shared/paper/reference-facts.md and the paper's tables) beside the reproduced ones with the
difference, and draws the learning curves. A run that is absent, unfinished or failed is
shown as such; nothing is ever filled in.

Numbers: AP metrics in percent (COCO-style, pycocotools), as the paper prints them. An arm
with several seeds shows mean +- standard deviation and each seed's value.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

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
    """What one run folder holds. status: done | unfinished | failed | missing."""

    name: str
    status: str
    config: dict | None
    records: list[dict]
    path: Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (a run killed mid-write) is dropped."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


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
    return RunData(name, status, cfg, records, path)


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


def curve(records: list[dict], key: str, x_key: str = "step") -> tuple[list, list]:
    """(x, y) of ``key``: a COCO metric from evaluation records, or any other number
    (e.g. ``loss``) from the records that have it."""
    xs, ys = [], []
    if key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        for m in eval_records(records):
            if key in m and m.get(x_key) is not None:
                xs.append(m[x_key])
                ys.append(m[key])
        return xs, ys
    for r in records:
        if r.get("type", "train") != "train":  # epoch means, eval, init: not curve points
            continue
        flat = _flat(r)
        if key in flat and flat.get(x_key) is not None and not _is_eval(r):
            v = flat[key]
            if isinstance(v, int | float) and math.isfinite(v):
                xs.append(flat[x_key])
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

    def values(self, key: str) -> list[float]:
        return [m[key] for m in self.metrics if m is not None and key in m]

    def summary(self, key: str) -> tuple[float, float, int]:
        v = self.values(key)
        mean, sd = mean_sd(v)
        return mean, sd, len(v)

    def status(self) -> str:
        done = sum(m is not None for m in self.metrics)
        if done == len(self.runs):
            return f"{done}/{len(self.runs)} seeds"
        missing = [f"{r.name} ({r.status})" for r, m in zip(self.runs, self.metrics) if m is None]
        return f"{done}/{len(self.runs)} seeds; missing: {', '.join(missing)}"


def arm_results(plan, artefact: str, out_root: str | Path) -> list[ArmResult]:
    arms = []
    for row in plan.artefacts.get(artefact, []):
        runs = [load_run(out_root, n) for n in row.runs]
        metrics = [final_metrics(r) for r in runs]
        arms.append(
            ArmResult(row.label, runs, metrics, PAPER.get(row.paper) if row.paper else None)
        )
    return arms


def compare(a: ArmResult, b: ArmResult, key: str) -> str:
    """A sentence comparing arm ``a`` with arm ``b`` on ``key``, seed by seed. A conclusion
    is drawn only with at least two seeds on each side."""
    va, vb = a.values(key), b.values(key)
    if not va or not vb:
        return f"{a.label} vs {b.label}: no result yet ({a.status()}; {b.status()})."
    ma, mb = statistics.fmean(va), statistics.fmean(vb)
    text = f"{a.label} vs {b.label}: {key} {ma:.1f} vs {mb:.1f} ({ma - mb:+.1f})"
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


def table_rows(arms: list[ArmResult], metrics: tuple[str, ...], baseline: int | None = 0):
    """Rows (dicts) of a table: per metric the reproduced mean +- sd, the paper's number,
    reproduced - paper, and the gain over the baseline row (reproduced and paper)."""
    rows = []
    base = arms[baseline] if baseline is not None and arms else None
    for arm in arms:
        row = {"arm": arm.label, "runs": arm.status()}
        for k in metrics:
            mean, sd, n = arm.summary(k)
            paper = arm.paper.get(k) if arm.paper else None
            row[f"{k}"] = "missing" if n == 0 else fmt(mean) + (f" ± {fmt(sd)}" if n > 1 else "")
            row[f"{k} seeds"] = _list(arm.values(k)) if n else "missing"
            row[f"{k} paper"] = fmt(paper) if paper is not None else "–"
            row[f"{k} diff"] = fmt_signed(mean - paper) if n and paper is not None else "–"
            if base is not None and arm is not base:
                bmean, _, bn = base.summary(k)
                bpaper = base.paper.get(k) if base.paper else None
                row[f"{k} gain"] = fmt_signed(mean - bmean) if n and bn else "–"
                row[f"{k} gain paper"] = (
                    fmt_signed(paper - bpaper) if paper is not None and bpaper is not None else "–"
                )
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
    for i, row in enumerate(rows):
        color = f"C{i}"
        for j, name in enumerate(row.runs):
            run = load_run(out_root, name)
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
    ax.set_xlabel(x_key)
    ax.set_ylabel(key if key == "loss" else f"{key} (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    if own:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return missing


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
        key = "AP50" if table == "table4" else "AP"
        if len(arms) > 1:
            md.append("\n")
            for arm in arms[1:]:
                md.append(f"- {compare(arm, arms[0], key)}\n")
            if table == "table1" and len(arms) > 2:
                md.append(f"- {compare(arms[1], arms[2], key)}\n")
    for fig, (source, key, title) in FIGURES.items():
        rows = plan.artefacts.get(source, [])
        path = report_dir / f"{fig}.png"
        window = 20 if key == "loss" else 1
        missing = plot_curves(plan, rows, out_root, key, path, title, plan.x_key, window)
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
    AP and AP50, reproduced, paper, reproduced - paper, and the gain over the first row
    reproduced (paper's gain in brackets)."""
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
                row[f"{k} gain (paper)"] = "baseline" if r is rows[0] else "–"
        row["runs"] = r["runs"]
        out.append(row)
    return to_markdown(out)


def fig6_verdict(plan, out_root: str | Path) -> str:
    """The paper's Figure 6 claim checked seed by seed: without the attention mask the pretext
    loss is lower early (first 20 % of the logged steps), with it lower late (last 20 %)."""
    rows = plan.artefacts.get("fig6", [])
    if len(rows) != 2:
        return "Figure 6: not planned at this scale."
    early, late, n = 0, 0, 0
    for with_mask, without in zip(rows[0].runs, rows[1].runs):
        y1 = curve(load_run(out_root, with_mask).records, "loss", plan.x_key)[1]
        y0 = curve(load_run(out_root, without).records, "loss", plan.x_key)[1]
        m = min(len(y1), len(y0))
        if m < 5:
            continue
        k = max(1, m // 5)
        n += 1
        early += statistics.fmean(y0[:k]) < statistics.fmean(y1[:k])
        late += statistics.fmean(y1[m - k : m]) < statistics.fmean(y0[m - k : m])
    if n == 0:
        return "Figure 6: no pair of finished pre-trainings yet."
    text = (
        f"Figure 6 (paper: without the mask lower early, with it lower late): without the mask "
        f"lower early in {early} of {n} seed(s); with the mask lower late in {late} of {n}"
    )
    return text + ("; one seed: too few to conclude." if n < 2 else ".")


def summary_section(plan, out_root: str | Path) -> str:
    """What the runs say about the paper's claims, each with its seed count."""
    lines = ["## Summary\n"]
    t1 = arm_results(plan, "table1", out_root)
    if len(t1) >= 2:
        for arm in t1[1:]:
            for key in ("AP", "AP50"):
                lines.append(f"- C1 ({key}): {compare(arm, t1[0], key)}")
    t3 = arm_results(plan, "table3", out_root)
    if len(t3) == 3:
        lines.append(f"- C2 (AP): {compare(t3[2], t3[1], 'AP')}")
    t4 = arm_results(plan, "table4", out_root)
    if len(t4) == 5:
        for arm in t4[1:]:
            lines.append(f"- C3 (AP50): {compare(arm, t4[0], 'AP50')}")
    lines.append(f"- C4: {fig6_verdict(plan, out_root)}")
    loc = Path(out_root) / "localize" / "localization.json"
    if loc.exists():
        d = json.loads(loc.read_text())
        parts = [f"{r['label']} [{r['run']}] {r['mean_iou']:.3f}" for r in d["runs"]]
        lines.append(
            f"- C5: mean IoU of the predicted box with the query patch's own box: "
            f"{'; '.join(parts) or 'no model'}; a fixed box scores {d['baseline']['mean_iou']:.3f}."
        )
    else:
        lines.append("- C5: localization missing.")
    return "\n".join(lines) + "\n"


def fig6_text(plan, out_root: str | Path) -> str:
    """Early (first 20 %) and late (last 20 %) mean pretext loss of each Figure 6 run."""
    lines = []
    for row in plan.artefacts.get("fig6", []):
        for name in row.runs:
            x, y = curve(load_run(out_root, name).records, "loss", plan.x_key)
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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def _normalize(img_uint8):
    from torchvision.transforms.v2 import functional as F

    return F.normalize(img_uint8.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def localize_patches(model, cfg, image_uint8, boxes_xyxy):
    """Run the pretext model on one image with the given patch boxes (xyxy pixels [k, 4]).
    -> predicted boxes xyxy pixels [k, 4], scores [k], patches uint8 [k, 3, p, p]."""
    import torch
    from torchvision.ops import box_convert
    from torchvision.transforms.v2 import functional as F

    h, w = image_uint8.shape[-2:]
    p = cfg.pretext.patch_size
    crops = torch.stack(
        [
            F.resized_crop(
                image_uint8,
                int(b[1]),
                int(b[0]),
                int(b[3] - b[1]),
                int(b[2] - b[0]),
                [p, p],
                antialias=True,
            )
            for b in boxes_xyxy
        ]
    )
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    cxcywh = box_convert(boxes_xyxy / scale, "xyxy", "cxcywh")
    image = _normalize(image_uint8)[None]
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    with torch.no_grad():
        out = model(image, mask, _normalize(crops)[None], cxcywh[None])
        pred, scores = model.localize(out)
    return box_convert(pred[0], "cxcywh", "xyxy") * scale, scores[0], crops


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
    Every model sees the same images and boxes. Writes fig5.png and localization.json."""
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
            img = load_image(path, cfg.data.test_size, cfg.data.max_size)
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
        steps = train[-1].get("step", "–") if train else "–"
        rows.append({"run": d.name, "status": run.status, "steps": steps, "seconds": seconds})
    (dest / "runs.md").write_text(to_markdown(rows))
    copied.append(dest / "runs.md")
    return copied
