"""The paper's tables rebuilt from run folders: each arm's mean +- standard deviation over
its seeds beside the paper's number, and the comparisons the paper draws (``Row.vs`` in the
plan: UP-DETR vs DETR at the same schedule, M=10 vs M=1, the Table 4 cells), our gain beside
the paper's. AP metrics in percent, as the paper prints them."""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .paper import PAPER, TABLE_METRICS
from .runs import RunData, final_metrics, load_run

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


def pairing_counts(a: list[float], b: list[float]) -> tuple[int, int, int]:
    """(higher, lower, all) of the len(a) * len(b) seed pairings of a against b, compared at
    the 0.1 the tables show, so that a pair shown equal is counted equal (the README's block
    counts from the tables with this too)."""
    ra, rb = [round(x, 1) for x in a], [round(x, 1) for x in b]
    higher = sum(x > y for x in ra for y in rb)
    lower = sum(x < y for x in ra for y in rb)
    return higher, lower, len(a) * len(b)


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
    wins, losses, pairs = pairing_counts(va, vb)
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
