"""The reproduction driver end to end at smoke scale: every lite run at toy size, through the
report; finished runs skipped on rerun, a missing run shown as missing, a failing run
reported with its log while the others go on."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from reproduce import execute as driver
from reproduce import report
from reproduce.launch import Launch, stream, training_command
from reproduce.plan import MAIN_ARTEFACTS, ReproduceError, Run, plan
from reproduce.records import Result

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, "-m", "reproduce.run"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    t0 = time.monotonic()
    proc = subprocess.run(
        RUN + ["--scale", "smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard: about 5 minutes on 2 quiet cores
    )
    return out, proc, time.monotonic() - t0


def test_notebooks_are_parameterized_clean_and_paired():
    """Each run notebook is a jupytext pair: the percent-format .py (the source people edit,
    ruff-checked) and the .ipynb papermill executes hold the same cells, no outputs."""
    import jupytext

    sources = sorted(p.name for p in driver.NOTEBOOK_DIR.glob("*.py"))
    names = sorted(set(driver.NOTEBOOKS.values()))  # pretrain and finetune share one
    assert sources == [n.replace(".ipynb", ".py") for n in names]
    for name in names:
        nb = nbformat.read(driver.NOTEBOOK_DIR / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent", name
        source = jupytext.read(driver.NOTEBOOK_DIR / name.replace(".ipynb", ".py"))
        cells = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in source.cells]
        assert cells == [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells], (
            f"reproduce/notebooks/{name} and its .py differ: run `jupytext --sync` on the .py"
        )
        assert nb.metadata.kernelspec == {
            "name": "updetr-lite",
            "display_name": "Python (updetr-lite)",
            "language": "python",
        }, name
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{name} has outputs"


def test_smoke_reproduction_end_to_end(smoke):
    out, proc, seconds = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    p = plan("smoke")
    names = p.runs_for(None)
    assert len(names) >= 25  # every lite run, at toy size
    for name in names:
        d = out / name
        kind = p.runs[name].kind
        nb = d / f"{kind}.ipynb"
        assert nb.exists(), name
        executed = nbformat.read(nb, as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        if kind in ("pretrain", "finetune"):
            assert (d / "DONE").exists() and (d / "last.pth").exists(), name
            cfg = json.loads((d / "config.json").read_text())
            assert cfg["name"] == "smoke"
            assert report.read_jsonl(d / "log.jsonl"), name
            # what was trained, against the plan: the smoke plan's full 2 epochs
            done = json.loads((d / "DONE").read_text())
            assert done["complete"] is True and done["stopped_by"] == "epochs", name
            assert done["steps"] == done["plan_steps"] and done["epochs"] == 2, name
            assert done["config"] == cfg, name
    # the fine-tunes evaluate: every Table 1 run has a final AP
    for row in p.artefacts["table1"]:
        for n in row.runs:
            assert report.final_metrics(report.load_run(out, n)) is not None, n
    probe = json.loads((out / "cnn" / "probe.json").read_text())
    assert 0 <= probe["trained"] <= 1 and 0 <= probe["random"] <= 1
    rep = out / "report"
    for t in ("table1", "table2", "table3", "table4"):
        assert (rep / f"{t}.md").exists() and (rep / f"{t}.csv").exists()
    for f in ("fig1", "fig3", "fig4", "fig5", "fig6"):
        assert (rep / f"{f}.png").stat().st_size > 1000, f
    md = (rep / "report.md").read_text()
    assert "k-NN" in md and "mean IoU" in md
    assert "missing" not in (rep / "table1.md").read_text()
    print(f"smoke reproduction: {seconds:.0f} s")


def test_rerun_skips_finished_runs_and_resumes(smoke):
    out, proc, _ = smoke
    assert proc.returncode == 0
    done = {d.name: (d / "DONE").stat().st_mtime for d in out.iterdir() if (d / "DONE").exists()}
    # an interrupted run: checkpoint there, DONE not yet written
    (out / "ft_scratch_s0" / "DONE").unlink()
    del done["ft_scratch_s0"]
    r = subprocess.run(
        RUN + ["--scale", "smoke", "--only", "table1", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("cnn", "pre_crop_s0", "ft_crop_s1", "ft_scratch_s2"):
        assert f"{name}: finished before, skipped" in r.stdout
        assert (out / name / "DONE").stat().st_mtime == done[name]
    params = json.loads((out / "ft_scratch_s0" / "parameters.json").read_text())
    assert params["resume"] is True and (out / "ft_scratch_s0" / "DONE").exists()
    assert "--resume" in (out / "ft_scratch_s0" / "train.out").read_text()


def test_a_rerun_with_other_settings_is_refused(smoke):
    out, proc, _ = smoke
    assert proc.returncode == 0
    before = (out / "pre_crop_s0" / "DONE").read_text()
    r = subprocess.run(
        RUN
        + ["--scale", "smoke", "--only", "fig6", "--out", str(out)]
        + ["--set", "pretrain.max_steps=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "holds a run with other settings (pretrain.max_steps 0 -> 1)" in r.stderr
    assert (out / "pre_crop_s0" / "DONE").read_text() == before  # nothing ran


def test_missing_run_is_shown_missing(smoke, tmp_path):
    out, proc, _ = smoke
    assert proc.returncode == 0
    hidden = tmp_path / "hidden"
    shutil.move(out / "ft_crop_s1", hidden)
    try:
        res = report.build_report(plan("smoke"), out, tmp_path / "rep")
    finally:
        shutil.move(hidden, out / "ft_crop_s1")
    table = (tmp_path / "rep" / "table1.md").read_text()
    crop = next(line for line in table.splitlines() if "crop patch feature" in line)
    assert "ft_crop_s1 (missing)" in crop and "2/3 seeds" in crop
    assert "ft_crop_s1" in res["missing"]
    # the finished seeds are shown, nothing filled in for the missing one
    aps = [report.final_metrics(report.load_run(out, f"ft_crop_s{s}"))["AP"] for s in (0, 2)]
    assert f"| {aps[0]:.1f}, {aps[1]:.1f} |" in crop


def test_failed_run_is_reported_and_the_others_go_on(tmp_path):
    p = plan("smoke")
    # N=8 queries cannot be split into 3 groups: the trainer stops with a ConfigError
    p.runs["bad"] = Run("bad", "pretrain", ("pretext.num_patches=3",))
    p.runs["after_bad"] = Run("after_bad", "finetune", init="bad", needs=("bad",))
    lines = []
    res = driver.execute(p, ["bad", "after_bad", "report"], tmp_path, jobs=1, echo=lines.append)
    assert res["bad"].status == "failed" and res["after_bad"].status == "blocked"
    assert res["report"].status == "done"  # the others went on
    log = Path(res["bad"].log)
    assert log.exists() and str(log) in res["bad"].message
    assert "num_patches" in log.read_text()
    assert any(str(log) in line and "FAILED" in line for line in lines)
    assert not (tmp_path / "bad" / "DONE").exists()
    assert (tmp_path / "report" / "report.md").exists()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["bad"]["status"] == "failed"


def test_resume_flag_follows_the_checkpoint(tmp_path):
    p = plan("smoke")
    launch = Launch(threads=1)
    params = driver.notebook_parameters(p, "ft_roi_s0", tmp_path, [], launch)
    assert params["resume"] is False
    assert params["init"] == str(tmp_path.resolve() / "pre_roi_s0" / "last.pth")
    (tmp_path / "ft_roi_s0").mkdir()
    (tmp_path / "ft_roi_s0" / "last.pth").write_bytes(b"")
    assert driver.notebook_parameters(p, "ft_roi_s0", tmp_path, [], launch)["resume"] is True


def test_training_command_cpu_and_torchrun():
    cpu = training_command("pretrain", "lite", ["a.b=1"], "/o", None, False)
    assert cpu[1:] == [
        "-m",
        "updetr_lite",
        "pretrain",
        "--preset",
        "lite",
        "--out",
        "/o",
        "--set",
        "a.b=1",
    ]
    multi = training_command(
        "finetune", "paper", [], "/o", "/p/last.pth", True, Launch(8, 2, 1, "host", 1234)
    )
    i = multi.index("-m", 3)
    assert multi[1:3] == ["-m", "torch.distributed.run"]
    assert set(multi[3:i]) == {
        "--nproc_per_node=8",
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=host",
        "--master_port=1234",
    }
    assert multi[i + 1 :] == [
        "updetr_lite",
        "finetune",
        "--preset",
        "paper",
        "--out",
        "/o",
        "--init",
        "/p/last.pth",
        "--resume",
    ]


def test_only_selects_the_runs_an_artefact_needs():
    p = plan("lite")
    names = p.runs_for(["fig6"])
    pres = [f"pre_{a}_s{s}" for a in ("crop", "nomask") for s in (0, 1, 2)]
    assert names == ["cnn", *pres, "report"]
    main = p.runs_for(list(MAIN_ARTEFACTS))
    assert not any("m1" in n or "unfrozen" in n or "norec" in n for n in main)
    with pytest.raises(ReproduceError, match="table9"):
        p.runs_for(["table9"])
    # --runs: the named runs with what they need, nothing else of their artefact
    assert p.runs_for(runs=["ft_norec_s1"]) == ["cnn", "pre_norec_s1", "ft_norec_s1", "report"]
    with pytest.raises(ReproduceError, match="unknown run"):
        p.runs_for(runs=["ft_nope_s0"])


def test_stream_copies_output_and_names_the_log_on_failure(tmp_path):
    shown = []
    code = "import sys\nprint('hello')\nfor i in range(50): print(f'{i}%|###', flush=True)\nsys.exit(3)"
    with pytest.raises(RuntimeError, match=str(tmp_path / "train.out")):
        stream([sys.executable, "-c", code], tmp_path / "train.out", echo=shown.append)
    text = (tmp_path / "train.out").read_text()
    assert "hello" in text and "49%|###" in text  # the log keeps everything
    assert shown[0] == "hello" and shown[-1] == "49%|###" and len(shown) < 10  # bars thinned


def test_schedule_longest_pretraining_first_and_one_cache_builder(tmp_path, monkeypatch):
    started = []

    def fake_run(p, name, out, overrides, launch, timeout):
        started.append(name)
        d = Path(out) / name
        d.mkdir(parents=True, exist_ok=True)
        time.sleep(0.3)  # building the feature cache: no train record yet
        (d / "log.jsonl").write_text('{"type": "train", "step": 10}\n')
        time.sleep(0.3)
        (d / "DONE").write_text("{}")
        return Result(name, "done", 0.6)

    monkeypatch.setattr(driver, "execute_run", fake_run)
    p = plan("lite")
    names = [n for n in p.runs_for(list(MAIN_ARTEFACTS)) if n != "report"]
    res = driver.execute(p, names, tmp_path, jobs=2, echo=lambda *_: None)
    assert all(r.status == "done" for r in res.values())
    # the CNN first; then the slowest pre-training ('crop'), and beside it not a second
    # pre-training (it would build the same cache) but the first fine-tuning
    assert started[0] == "cnn"
    assert started[1] == "pre_crop_s0" and p.runs[started[2]].kind == "finetune"
    for n in names:  # every run after the runs it needs
        assert all(started.index(m) < started.index(n) for m in p.runs[n].needs)
