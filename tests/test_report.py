"""The report: logs -> tables and figures, the paper's numbers, missing runs, Figure 5."""

import json
import statistics
from pathlib import Path

import pytest
import torch

from reproduce import report
from reproduce.plan import Plan, Row, Run

# The paper's numbers, typed again from the paper's Tables 1-4 (AP / AP50 / AP75)
FACTS = {
    "table1/DETR/150": (49.9, 74.5, 53.1),
    "table1/UP-DETR/150": (56.1, 79.7, 60.6),
    "table1/DETR/300": (54.1, 78.0, 58.3),
    "table1/UP-DETR/300": (57.2, 80.1, 62.0),
    "table1/Faster R-CNN": (56.1, 82.6, 62.7),
    "table3/DETR": (49.9, 74.5, 53.1),
    "table3/M=1": (53.1, 77.2, 57.4),
    "table3/M=10": (54.9, 78.7, 59.1),
}
FACTS_AP50_T4 = {"DETR": 74.5, "a": 74.0, "b": 78.7, "c": 62.0, "d": 78.7}
FACTS_COCO_AP = {"DETR/150": 39.7, "UP-DETR/150": 40.5, "DETR/300": 42.1, "UP-DETR/300": 42.8}


def test_paper_numbers_are_the_papers():
    for key, (ap, ap50, ap75) in FACTS.items():
        assert report.PAPER[key] == {"AP": ap, "AP50": ap50, "AP75": ap75}, key
    for k, v in FACTS_AP50_T4.items():
        assert report.PAPER[f"table4/{k}"]["AP50"] == v
    for k, v in FACTS_COCO_AP.items():
        assert report.PAPER[f"table2/{k}"]["AP"] == v
    up300 = report.PAPER["table2/UP-DETR/300"]
    assert (up300["AP50"], up300["AP75"], up300["APs"], up300["APm"], up300["APl"]) == (
        63.0,
        45.3,
        20.8,
        47.1,
        61.7,
    )


def write_run(root, name, aps=(), losses=(), done=True, failed=False):
    """A run folder as the engine and the driver leave it. aps: (step, AP fraction, AP50
    fraction); losses: (step, loss)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    with open(d / "log.jsonl", "w") as f:
        for step, loss in losses:
            f.write(json.dumps({"type": "train", "step": step, "epoch": 0, "loss": loss}) + "\n")
            f.write(json.dumps({"type": "epoch", "step": step, "epoch": 0, "loss": 99.0}) + "\n")
        for step, ap, ap50 in aps:
            rec = {"type": "eval", "step": step, "epoch": 0, "AP": ap, "AP50": ap50, "AP75": ap / 2}
            f.write(json.dumps(rec) + "\n")
        f.write('{"type": "train", "st')  # a torn last line
    if done:
        (d / "DONE").write_text("{}")
    if failed:
        (d / "papermill.log").write_text("Traceback ...")
        import os

        os.utime(d / "papermill.log", (0, 0))
    return d


def small_plan():
    runs = {n: Run(n, "finetune") for n in ("a0", "a1", "b0", "b1", "c0")}
    runs.update({n: Run(n, "pretrain") for n in ("p0", "q0")})
    t1 = [
        Row("DETR", ("a0", "a1"), "table1/DETR/150"),
        Row("UP-DETR", ("b0", "b1"), "table1/UP-DETR/150", ("DETR",)),
        Row("UP-DETR crop", ("c0", "c_missing"), "table1/UP-DETR/150", ("DETR", "UP-DETR")),
    ]
    arts = {
        "table1": t1,
        "fig1": t1,
        "fig3": t1,
        "table2": [],
        "table3": [Row("DETR", ("a0", "a1"), "table3/DETR")],
        "table4": [
            Row("DETR", ("a0", "a1"), "table4/DETR"),
            Row("(d)", ("b0",), "table4/d", ("DETR",)),
        ],
        "fig4": [Row("DETR", ("a0", "a1"), "table4/DETR")],
        "fig6": [Row("mask", ("p0",)), Row("no mask", ("q0",))],
        "fig5": [],
    }
    return Plan("lite", "lite", runs, arts, {"scale": "test"}, "step")


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "out"
    write_run(root, "a0", [(10, 0.01, 0.05), (20, 0.04, 0.12)])
    write_run(root, "a1", [(10, 0.02, 0.06), (20, 0.06, 0.16)])
    write_run(root, "b0", [(10, 0.05, 0.2), (20, 0.10, 0.30)])
    write_run(root, "b1", [(10, 0.06, 0.2), (20, 0.12, 0.28)])
    write_run(root, "c0", [(10, 0.03, 0.1)], done=False, failed=True)
    write_run(root, "p0", losses=[(s, 3.0 - s / 100) for s in range(10, 200, 10)])
    write_run(root, "q0", losses=[(s, 2.5 - s / 200) for s in range(10, 200, 10)])
    return root


def test_log_reading_and_status(runs_root):
    assert report.load_run(runs_root, "a0").status == "done"
    assert report.load_run(runs_root, "c0").status == "failed"
    assert report.load_run(runs_root, "nope").status == "missing"
    a0 = report.load_run(runs_root, "a0")
    assert report.final_metrics(a0)["AP"] == pytest.approx(4.0)  # percent, last evaluation
    assert report.final_metrics(report.load_run(runs_root, "c0")) is None  # unfinished: no result
    x, y = report.curve(report.load_run(runs_root, "p0").records, "loss")
    assert x == list(range(10, 200, 10)) and 99.0 not in y  # epoch means are not curve points
    x, y = report.curve(a0.records, "AP50")
    assert x == [10, 20] and y == pytest.approx([5.0, 12.0])


def test_normalize_metrics():
    m = report.normalize_metrics({"type": "eval", "AP": 0.5, "ap50": 0.75, "AP_small": 0.1})
    assert m == pytest.approx({"AP": 50.0, "AP50": 75.0, "APs": 10.0})
    m = report.normalize_metrics({"AP": 0.2, "APl": -1.0})  # -1: undefined in pycocotools
    assert m == pytest.approx({"AP": 20.0})
    m = report.normalize_metrics({"eval": {"AP": 50.0}, "ap_unit": "percent"})
    assert m == {"AP": 50.0}


def test_table_mean_sd_paper_and_differences(runs_root):
    rows, arms = report.build_table(small_plan(), "table1", runs_root)
    detr, up, crop = rows
    # independent: mean and sample sd of the last AP of each seed, in percent
    m, sd = statistics.fmean([4.0, 6.0]), statistics.stdev([4.0, 6.0])
    assert detr["AP"] == f"{m:.1f} ± {sd:.1f}"
    assert detr["AP paper"] == "49.9" and detr["AP diff"] == f"{m - 49.9:+.1f}"
    up_m = statistics.fmean([10.0, 12.0])
    assert up["vs"] == "DETR" and up["AP gain"] == f"{up_m - m:+.1f}"
    assert up["AP gain paper"] == f"{56.1 - 49.9:+.1f}"
    assert up["AP seeds"] == "10.0, 12.0"
    assert "AP gain" not in detr and "vs" not in detr  # the baseline is compared with nothing
    # c0 failed and c_missing never ran: shown as missing, nothing filled in
    assert crop["AP"] == "missing" and crop["AP diff"] == "–"
    assert "c0 (failed)" in crop["runs"] and "c_missing (missing)" in crop["runs"]


def test_compare_needs_two_seeds(runs_root):
    _, arms = report.build_table(small_plan(), "table1", runs_root)
    text = report.compare(arms[1], arms[0], "AP")
    assert "higher in all 4 seed pairings" in text
    one = report.ArmResult("one", arms[0].runs[:1], arms[0].metrics[:1], None)
    assert "too few to conclude" in report.compare(arms[1], one, "AP")
    mixed = report.ArmResult("mixed", arms[0].runs, [{"AP": 11.0}, {"AP": 3.0}], None)
    assert "not a clear difference" in report.compare(arms[1], mixed, "AP")
    same = report.ArmResult("same", arms[1].runs, arms[1].metrics, None)
    assert "equal in 2 of 4 seed pairings: not a clear" in report.compare(arms[1], same, "AP")


def test_compare_counts_pairings_at_the_precision_the_tables_show(runs_root):
    """6.54 against 6.51 is shown as 6.5 against 6.5 and counted equal (the README's block
    counts from the tables' 0.1 too), not as a win hidden in the second decimal."""
    _, arms = report.build_table(small_plan(), "table1", runs_root)
    runs = arms[0].runs
    a = report.ArmResult("a", runs, [{"AP": 6.54}, {"AP": 7.0}], None)
    b = report.ArmResult("b", runs, [{"AP": 6.51}, {"AP": 5.0}], None)
    assert a.values("AP") == [6.54, 7.0]  # the metric as stored, in %
    text = report.compare(a, b, "AP")
    assert "higher in 3, lower in 0, equal in 1 of 4 seed pairings" in text, text


def test_build_report_writes_everything(runs_root, tmp_path):
    out = tmp_path / "rep"
    res = report.build_report(small_plan(), runs_root, out)
    for t in ("table1", "table2", "table3", "table4"):
        assert (out / f"{t}.md").read_text().startswith("|")
        assert (out / f"{t}.csv").exists()
    for f in ("fig1", "fig3", "fig4", "fig6"):
        assert (out / f"{f}.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "c_missing" in md and "missing" in md
    assert "not run" in (out / "table2.md").read_text()  # lite: no COCO, paper numbers only
    assert set(res["missing"]) == {"c0", "c_missing"}
    assert "Lite CNN probe: missing" in md and "localization: missing" in md
    # Figure 6 text: early and late loss of each run, from the train records
    assert "mask [p0]: loss early" in md


def test_smooth_is_a_trailing_mean():
    assert report.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


# ----------------------------------------------------------------------------- Figure 5


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_localization_study_numbers(tmp_path):
    from PIL import Image

    from updetr_lite.config import get_config
    from updetr_lite.data.query_patches import sample_patch_boxes
    from updetr_lite.models.build import build_updetr

    cfg = get_config("smoke")
    cfg.model.fast_path = False
    torch.manual_seed(0)
    model = build_updetr(cfg)
    run = tmp_path / "pre"
    run.mkdir()
    (run / "config.json").write_text(cfg.to_json())
    torch.save({"model": model.state_dict()}, run / "last.pth")
    (run / "DONE").write_text("{}")
    g = torch.Generator().manual_seed(3)
    images = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        pixels = torch.randint(0, 255, (64, 64, 3), dtype=torch.uint8, generator=g)
        Image.fromarray(pixels.numpy()).save(p)
        images.append(p)
    res = report.localization_study(
        [("m", run), ("gone", tmp_path / "nope")], images, tmp_path / "loc", seed=5
    )
    assert res["missing"] == ["nope"] and (tmp_path / "loc" / "fig5.png").exists()
    (r,) = res["runs"]
    k = cfg.pretext.num_patches
    assert r["n"] == 3 * k
    # recompute: same boxes (same generator use), the model's boxes, IoU by the formula
    loaded, lcfg = report.load_pretext_model(run)
    gen = torch.Generator().manual_seed(5)
    ious, truths = [], []
    for p in images:
        img = report.load_image(p, max(lcfg.data.pretext_scales), lcfg.data.pretext_max_size)
        boxes = sample_patch_boxes(64, 64, 10, lcfg.pretext.min_patch, gen)[:k]
        pred, _, _ = report.localize_patches(loaded, lcfg, img, boxes)
        ious += [_iou(a.tolist(), b.tolist()) for a, b in zip(pred, boxes)]
        truths += boxes.tolist()
    assert r["mean_iou"] == pytest.approx(statistics.fmean(ious), abs=1e-5)
    assert r["hit50"] == pytest.approx(sum(i >= 0.5 for i in ious) / len(ious))
    mw = statistics.fmean(b[2] - b[0] for b in truths)
    mh = statistics.fmean(b[3] - b[1] for b in truths)
    fixed = [32 - mw / 2, 32 - mh / 2, 32 + mw / 2, 32 + mh / 2]
    base = statistics.fmean(_iou(fixed, b) for b in truths)
    assert res["baseline"]["mean_iou"] == pytest.approx(base, abs=1e-5)


def test_fig6_verdict_follows_the_curves(runs_root):
    p = small_plan()
    text = report.fig6_verdict(p, runs_root)
    # p0 (mask): 3.0 - s/100, q0 (no mask): 2.5 - s/200 -> no mask lower early, mask lower late
    assert "lower early in 1 of 1" in text and "lower late in 1 of 1" in text
    assert "too few to conclude" in text
    p.artefacts["fig6"] = [Row("mask", ("q0",)), Row("no mask", ("p0",))]
    text = report.fig6_verdict(p, runs_root)
    assert "lower early in 0 of 1" in text and "lower late in 0 of 1" in text


def test_export_results_copies_small_files(runs_root, tmp_path):
    report.build_report(small_plan(), runs_root, runs_root / "report")
    (runs_root / "a0" / "DONE").write_text(json.dumps({"seconds": 12.3}))
    files = report.export_results(runs_root, tmp_path / "results")
    names = {f.name for f in files}
    assert {"report.md", "table1.csv", "fig1.png", "runs.md"} <= names
    assert not any(n.endswith(".pth") for n in names)
    runs = (tmp_path / "results" / "runs.md").read_text()
    assert "| a0 | done | – | 12 |" in runs and "| c0 | failed |" in runs


def test_export_command_writes_results_and_refuses_a_folder_without_report(
    runs_root, tmp_path, capsys
):
    from reproduce.report.__main__ import main

    assert main([str(runs_root), str(tmp_path / "none")]) == 2
    assert "report/report.md: missing" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    report.build_report(small_plan(), runs_root, runs_root / "report")
    assert main([str(runs_root), str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "report.md").read_text() == (
        runs_root / "report" / "report.md"
    ).read_text()
    assert (tmp_path / "results" / "runs.md").is_file()


# ----------------------------------------------------------------------------- the paper's pairs

# final (AP, AP50) in percent of each paper-scale fine-tuning, made up for the test
PAPER_RUNS = {
    "ft_voc_detr_short": (10.0, 20.0),
    "ft_voc_updetr_short": (13.0, 27.0),
    "ft_voc_detr_long": (15.0, 30.0),
    "ft_voc_updetr_long": (16.5, 31.0),
    "ft_coco_detr_short": (5.0, 9.0),
    "ft_coco_updetr_short": (6.0, 11.0),
    "ft_coco_detr_long": (7.0, 12.0),
    "ft_coco_updetr_long": (6.5, 12.5),
    "ft_voc_abl_m1": (11.0, 22.0),
    "ft_voc_abl_a": (9.0, 19.0),
    "ft_voc_abl_b": (12.0, 25.0),
    "ft_voc_abl_c": (4.0, 8.0),
    "ft_voc_abl_d": (12.5, 26.0),
}
# (table, arm run, compared-with run, metric, the paper's gain from reference-facts.md)
PAPER_PAIRS = [
    ("table1", "ft_voc_updetr_short", "ft_voc_detr_short", "AP", 56.1 - 49.9),
    ("table1", "ft_voc_updetr_long", "ft_voc_detr_long", "AP", 57.2 - 54.1),
    ("table1", "ft_voc_updetr_long", "ft_voc_detr_long", "AP50", 80.1 - 78.0),
    ("table2", "ft_coco_updetr_short", "ft_coco_detr_short", "AP", 40.5 - 39.7),
    ("table2", "ft_coco_updetr_long", "ft_coco_detr_long", "AP", 42.8 - 42.1),
    ("table3", "ft_voc_abl_m1", "ft_voc_detr_short", "AP", 53.1 - 49.9),
    ("table3", "ft_voc_abl_d", "ft_voc_abl_m1", "AP", 54.9 - 53.1),
    ("table3", "ft_voc_abl_d", "ft_voc_detr_short", "AP", 54.9 - 49.9),
    ("table4", "ft_voc_abl_a", "ft_voc_detr_short", "AP50", 74.0 - 74.5),
    ("table4", "ft_voc_abl_b", "ft_voc_detr_short", "AP50", 78.7 - 74.5),
    ("table4", "ft_voc_abl_b", "ft_voc_abl_a", "AP50", 78.7 - 74.0),
    ("table4", "ft_voc_abl_c", "ft_voc_detr_short", "AP50", 62.0 - 74.5),
    ("table4", "ft_voc_abl_d", "ft_voc_detr_short", "AP50", 78.7 - 74.5),
    ("table4", "ft_voc_abl_d", "ft_voc_abl_c", "AP50", 78.7 - 62.0),
    ("table4", "ft_voc_abl_d", "ft_voc_abl_b", "AP50", 78.7 - 78.7),
]
STEPS_PER_EPOCH = 40


def write_paper_runs(root, shortened=()):
    """Paper-scale run folders: a plan record, train records every 10 steps (4 a epoch), an
    evaluation per epoch ending in PAPER_RUNS' numbers, a DONE with the trained record."""
    for name, (ap, ap50) in PAPER_RUNS.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model": {"backbone_weights": "swav.pth"}}))
        recs = [{"type": "plan", "steps_per_epoch": STEPS_PER_EPOCH, "planned_steps": 120}]
        for step in range(10, 121, 10):
            recs.append({"type": "train", "step": step, "epoch": (step - 1) // 40, "loss": 1.0})
            if step % STEPS_PER_EPOCH == 0:
                e = step // STEPS_PER_EPOCH
                recs.append(
                    {"type": "eval", "step": step, "epoch": e - 1, "AP": ap / 100 * e / 3}
                    | {"AP50": ap50 / 100 * e / 3}
                )
        with open(d / "log.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        short = name in shortened
        done = {"steps": 2 if short else 120, "plan_steps": 120, "complete": not short}
        done |= {"epochs": 0.05 if short else 3.0, "plan_epochs": 3.0, "images_seen": 64}
        (d / "DONE").write_text(json.dumps(done | {"stopped_by": "max_steps"}))


def test_report_draws_the_papers_pairs_with_the_papers_gains(tmp_path):
    from reproduce.plan import plan

    root = tmp_path / "out"
    write_paper_runs(root)
    p = plan("paper")
    drawn = {
        t: {
            (a.runs[0].name, b.runs[0].name)
            for a, b in report.pairs(report.arm_results(p, t, root))
        }
        for t in report.TABLE_METRICS
    }
    # exactly the paper's pairs, none against the wrong row (e.g. UP-DETR/300 vs DETR/150)
    for t in report.TABLE_METRICS:
        assert drawn[t] == {(a, b) for tt, a, b, _, _ in PAPER_PAIRS if tt == t}, t
    res = report.build_report(p, root, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    summary = md.split("## Summary")[1].split("\n## ")[0]
    for t, a, b, key, gain in PAPER_PAIRS:
        ours = PAPER_RUNS[a][key == "AP50"] - PAPER_RUNS[b][key == "AP50"]
        arms = {arm.runs[0].name: arm for arm in report.arm_results(p, t, root)}
        comp = report.comparison_rows(list(arms.values()), report.TABLE_METRICS[t])
        (row,) = [r for r in comp if r["comparison"] == f"{arms[a].label} vs {arms[b].label}"]
        assert row[f"{key} gain"] == f"{ours:+.1f}", (t, a, b)
        assert row[f"{key} gain paper"] == f"{gain:+.1f}", (t, a, b)
        if key in report.CLAIM_KEYS[t]:
            line = f"{arms[a].label} vs {arms[b].label}: {key} "
            hit = [x for x in summary.splitlines() if line in x and report.CLAIMS[t] in x]
            assert len(hit) == 1 and f"({ours:+.1f}; paper {gain:+.1f})" in hit[0], line
    # the table's own gain column: against the row the paper compares it with
    t1 = {r["arm"]: r for r in res["tables"]["table1"]}
    assert t1["UP-DETR/300"]["vs"] == "DETR/300"
    assert t1["UP-DETR/300"]["AP gain"] == "+1.5" and t1["UP-DETR/300"]["AP gain paper"] == "+3.1"
    assert "C1 (Table 2, COCO) (AP)" in summary and "DETR/300 vs DETR/150" not in md
    assert (tmp_path / "rep" / "table4_comparisons.csv").exists()


def test_curves_use_fractional_epochs_or_steps(tmp_path):
    from reproduce.plan import plan

    root = tmp_path / "out"
    write_paper_runs(root)
    records = report.load_run(root, "ft_voc_detr_short").records
    x, _ = report.curve(records, "loss", "epoch")
    assert x == pytest.approx([s / STEPS_PER_EPOCH for s in range(10, 121, 10)])
    assert len(set(x)) == len(x)  # no comb: every record has its own x
    x, _ = report.curve(records, "AP", "epoch")
    assert x == pytest.approx([1.0, 2.0, 3.0])
    assert report.curve(records, "loss")[0] == list(range(10, 121, 10))
    with pytest.raises(ValueError, match="plan record"):
        report.curve([{"type": "train", "step": 1, "epoch": 0, "loss": 1.0}], "loss", "epoch")
    # every figure: its axis is the x of its lines
    plt = report._plt()
    p = plan("paper")
    fig, ax = plt.subplots()
    report.plot_curves(p, p.artefacts["fig3"], root, "AP", tmp_path / "f.png", "t", "epoch", ax=ax)
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    assert len(lines) == 8 and all(list(ln.get_xdata()) == [1.0, 2.0, 3.0] for ln in lines)
    assert ax.get_xlabel().startswith("epoch")
    # one run without a plan record: the whole figure falls back to steps
    log = root / "ft_coco_detr_long" / "log.jsonl"
    log.write_text("".join(ln + "\n" for ln in log.read_text().splitlines()[1:]))
    fig, ax = plt.subplots()
    report.plot_curves(p, p.artefacts["fig3"], root, "AP", tmp_path / "f.png", "t", "epoch", ax=ax)
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    assert all(list(ln.get_xdata()) == [40, 80, 120] for ln in lines)
    assert ax.get_xlabel() == "optimizer step"


def test_report_axes_figure6_in_steps(runs_root, tmp_path, monkeypatch):
    from reproduce.plan import plan

    seen = {}
    real = report.plot_curves

    def spy(plan_, rows, out_root, key, path, title, x_key="step", window=1, ax=None):
        seen[Path(path).stem] = x_key
        return real(plan_, rows, out_root, key, path, title, x_key, window, ax)

    monkeypatch.setattr(report, "plot_curves", spy)
    report.build_report(plan("paper"), runs_root, tmp_path / "rep")
    assert seen == {"fig1": "epoch", "fig3": "epoch", "fig4": "epoch", "fig6": "step"}


def test_shortened_runs_are_labelled_everywhere(tmp_path):
    from reproduce.plan import plan

    root = tmp_path / "out"
    write_paper_runs(root, shortened=("ft_voc_updetr_long",))
    p = plan("paper")
    res = report.build_report(p, root, tmp_path / "rep")
    t1 = {r["arm"]: r for r in res["tables"]["table1"]}
    assert t1["UP-DETR/300"]["AP"] == "16.5 (SHORTENED)"
    assert "SHORTENED: 2 of 120 planned steps" in t1["UP-DETR/300"]["runs"]
    assert "SHORTENED" not in t1["UP-DETR/150"]["AP"] + t1["UP-DETR/150"]["runs"]
    md = (tmp_path / "rep" / "report.md").read_text()
    (line,) = [x for x in md.splitlines() if "C1 (Table 1, VOC) (AP): UP-DETR/300" in x]
    assert "SHORTENED runs (ft_voc_updetr_long): not the plan's result" in line
    (row,) = [
        x for x in (tmp_path / "rep" / "table1.md").read_text().splitlines() if "UP-DETR/300" in x
    ]
    assert "(SHORTENED)" in row
    report.export_results(root, tmp_path / "results")
    runs = (tmp_path / "results" / "runs.md").read_text()
    assert "| ft_voc_updetr_long | done, SHORTENED | 2 |" in runs


def test_random_cnn_runs_are_named_in_the_report(runs_root, tmp_path):
    p = small_plan()
    (runs_root / "a0" / "config.json").write_text(json.dumps({"model": {"backbone_weights": None}}))
    (runs_root / "b0" / "config.json").write_text(
        json.dumps({"model": {"backbone_weights": "random"}})
    )
    (runs_root / "b1" / "config.json").write_text(
        json.dumps({"model": {"backbone_weights": "x.pth"}})
    )
    text = report.random_cnn_text(p, runs_root)
    assert "WARNING: 1 run(s) trained on a RANDOM CNN" in text and "(a0)" in text
    assert "on purpose (model.backbone_weights=random): b0." in text and "b1" not in text
    report.build_report(p, runs_root, tmp_path / "rep")
    assert "RANDOM CNN" in (tmp_path / "rep" / "report.md").read_text()


def test_fig1_verdict_counts_evaluations_after_20_percent_by_seed_means(tmp_path):
    # DETR means per step: 10: 1.0, 50: 2.0, 100: 3.0; UP-DETR: 10: 0.5 (inside the first
    # 20 %, not counted), 50: 2.5 (ahead), 100: 2.9 (behind)
    write_run(tmp_path, "a0", aps=[(10, 0.0, 0.01), (50, 0.0, 0.01), (100, 0.0, 0.02)])
    write_run(tmp_path, "a1", aps=[(10, 0.0, 0.01), (50, 0.0, 0.03), (100, 0.0, 0.04)])
    write_run(tmp_path, "b0", aps=[(10, 0.0, 0.005), (50, 0.0, 0.02), (100, 0.0, 0.028)])
    write_run(tmp_path, "b1", aps=[(10, 0.0, 0.005), (50, 0.0, 0.03), (100, 0.0, 0.030)])
    rows = [Row("DETR", ("a0", "a1")), Row("UP-DETR", ("b0", "b1"), vs=("DETR",))]
    runs = {n: Run(n, "finetune") for n in ("a0", "a1", "b0", "b1")}
    p = Plan("t", "smoke", runs, {"fig1": rows}, {}, "step")
    text = report.summary.fig1_verdict(p, tmp_path)
    assert "UP-DETR ahead of DETR at 1 of 2 evaluations" in text and "steps 100" in text
    write_run(tmp_path, "c0", aps=[(10, 0.0, 0.5), (50, 0.0, 0.5), (100, 0.0, 0.5)])
    p.artefacts["fig1"] = [rows[0], Row("C", ("c0",))]
    assert "C ahead of DETR at 2 of 2 evaluations" in report.summary.fig1_verdict(p, tmp_path)
