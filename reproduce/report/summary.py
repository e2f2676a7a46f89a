"""The report's prose: the Summary of the paper's claims, the Figure 6 verdict, the lite
CNN's probe, the localization numbers and the random-CNN warning."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .paper import CLAIM_KEYS, CLAIMS
from .runs import curve, load_run
from .tables import arm_results, compare, fmt, pairs, to_markdown


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


def fig1_verdict(plan, out_root: str | Path, key: str = "AP50") -> str:
    """Figure 1 checked point by point: at every evaluation after the first 20 % of the
    fine-tuning steps, is each UP-DETR arm's seed mean above DETR's (the first row)?"""
    rows = plan.artefacts.get("fig1", [])
    if len(rows) < 2:
        return "Figure 1: not planned at this scale."

    def mean_curve(row) -> dict:
        per_step: dict = {}
        for name in row.runs:
            r = load_run(out_root, name)
            if r.status != "done":
                return {}
            for x, y in zip(*curve(r.records, key)):
                per_step.setdefault(x, []).append(y)
        n = len(row.runs)
        return {x: statistics.fmean(v) for x, v in per_step.items() if len(v) == n}

    base = mean_curve(rows[0])
    if not base:
        return f"Figure 1: {rows[0].label} not finished."
    last = max(base)
    parts = []
    for row in rows[1:]:
        arm = mean_curve(row)
        steps = sorted(x for x in base if x in arm and x > 0.2 * last)
        if not steps:
            parts.append(f"{row.label}: not finished")
            continue
        ahead = [x for x in steps if arm[x] > base[x]]
        behind = [int(x) for x in steps if arm[x] <= base[x]]
        parts.append(
            f"{row.label} ahead of {rows[0].label} at {len(ahead)} of {len(steps)} evaluations "
            f"after 20 % of fine-tuning (seed means of {key}"
            + (f"; not ahead at steps {', '.join(map(str, behind))})" if behind else ")")
        )
    return "Figure 1: " + "; ".join(parts) + "."


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
    if plan.artefacts.get("fig1"):
        lines.append(f"- C1 (Figure 1): {fig1_verdict(plan, out_root)}")
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


def random_cnn_text(plan, out_root: str | Path) -> str:
    """A warning naming the runs trained without CNN weights (model.backbone_weights unset or
    'random'), from their config.json; empty when there are none."""
    from updetr_lite.config import RANDOM_CNN

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
