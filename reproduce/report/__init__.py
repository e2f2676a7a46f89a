"""Tables and figures of the paper, rebuilt from run folders and nothing else.

A run folder (see ``reproduce.execute``) holds ``config.json``, ``log.jsonl`` and, once
finished, ``DONE``. ``build_report`` reads them (``runs``), puts the paper's numbers
(``paper.PAPER``, from the paper's Tables 1-4) beside the reproduced ones with the
difference (``tables``), draws the learning curves (``figures``), adds the Figure 5 study's
numbers (``localization``) and the prose (``summary``). A run that is absent, unfinished or
failed is shown as such, a run stopped before its plan's end is marked SHORTENED; nothing is
ever filled in.

Numbers: AP metrics in percent (COCO-style, pycocotools), as the paper prints them. An arm
with several seeds shows mean +- standard deviation and each seed's value.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from updetr_lite.jsonl import read_jsonl

from .figures import FIGURES, _plt, plot_curves, plot_loss_terms, plot_run, smooth
from .localization import (
    load_image,
    load_pretext_model,
    localization_study,
    localize_patches,
)
from .paper import CLAIM_KEYS, CLAIMS, PAPER, TABLE_METRICS, TABLE_TITLES
from .runs import (
    RunData,
    curve,
    eval_records,
    final_metrics,
    load_run,
    normalize_metrics,
    run_config,
)
from .summary import (
    cnn_probe_text,
    fig6_text,
    fig6_verdict,
    localization_text,
    random_cnn_text,
    summary_section,
)
from .tables import (
    ArmResult,
    _compact_markdown,
    arm_results,
    build_table,
    compare,
    comparison_rows,
    pairs,
    to_markdown,
    write_csv,
)

# the report's public names, one import away (notebooks and tests use ``report.X``)
__all__ = [
    "run_config",
    "ArmResult",
    "_plt",
    "CLAIMS",
    "CLAIM_KEYS",
    "FIGURES",
    "PAPER",
    "RunData",
    "TABLE_METRICS",
    "TABLE_TITLES",
    "arm_results",
    "build_report",
    "build_table",
    "cnn_probe_text",
    "compare",
    "comparison_rows",
    "curve",
    "eval_records",
    "export_results",
    "fig6_text",
    "fig6_verdict",
    "final_metrics",
    "load_image",
    "load_pretext_model",
    "load_run",
    "localization_study",
    "localization_text",
    "localize_patches",
    "normalize_metrics",
    "pairs",
    "plot_curves",
    "plot_loss_terms",
    "plot_run",
    "random_cnn_text",
    "read_jsonl",
    "smooth",
    "summary_section",
    "to_markdown",
    "write_csv",
]


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
