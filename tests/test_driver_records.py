"""The driver's bookkeeping, without training: what a run's DONE says it trained against the
plan, refusing to mix settings in one --out, one rendezvous port per run, node-own files,
and the warning for the paper preset without CNN weights."""

import json
from pathlib import Path

import pytest

from reproduce import execute as driver
from reproduce.launch import Launch, LiveProcessesError, stream
from reproduce.plan import (
    MAIN_ARTEFACTS,
    MissingDataError,
    ReproduceError,
    check_paper_inputs,
    plan,
    run_config,
)
from reproduce.records import Result, check_not_mixed, run_port, trained_label, trained_record
from updetr_lite import cli

ROOT = Path(__file__).resolve().parents[1]


def fake_log(run_dir, spe: int, steps: int, stopped_by: str):
    run_dir.mkdir(parents=True, exist_ok=True)
    recs = [
        {"type": "plan", "steps_per_epoch": spe, "images_per_epoch": spe * 4},
        {"type": "train", "step": steps, "epoch": 0, "loss": 1.0},
        {"type": "end", "steps": steps, "epochs_trained": steps / spe}
        | {"images_seen": steps * 4, "stopped_by": stopped_by},
    ]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_trained_record_against_the_plans_schedule(tmp_path):
    p = plan("paper")
    # a dry run: --set pretrain.max_steps=2 against the plan's 60 epochs of 10 steps
    fake_log(tmp_path / "pre_imagenet", 10, 2, "max_steps")
    t = trained_record(p, "pre_imagenet", tmp_path / "pre_imagenet")
    assert t == {
        "steps": 2,
        "epochs": 0.2,
        "images_seen": 8,
        "plan_steps": 600,
        "plan_epochs": 60.0,
        "stopped_by": "max_steps",
        "complete": False,
    }
    assert "stopped by max_steps at step 2 of the plan's 600" in trained_label(t)
    fake_log(tmp_path / "ft_voc_abl_d", 7, 150 * 7, "epochs")
    assert trained_record(p, "ft_voc_abl_d", tmp_path / "ft_voc_abl_d")["complete"]
    # lite: the plan's own budget is max_steps (1500 of 20 epochs of 125 steps): complete
    lite = plan("lite")
    fake_log(tmp_path / "pre_roi_s0", 125, 1500, "max_steps")
    t = trained_record(lite, "pre_roi_s0", tmp_path / "pre_roi_s0")
    assert t["plan_steps"] == 1500 and t["complete"] is True
    assert trained_record(p, "pre_abl_d", tmp_path / "nowhere") == {}


def test_a_shortened_run_is_never_skipped_by_a_run_of_other_settings(tmp_path):
    p = plan("smoke")
    name = "pre_roi_s0"
    short = run_config(p, name, tmp_path, ["pretrain.max_steps=2"]).to_dict()
    (tmp_path / name).mkdir()
    done = {"config": short, "steps": 2, "plan_steps": 8, "complete": False}
    (tmp_path / name / "DONE").write_text(json.dumps(done | {"stopped_by": "max_steps"}))
    check_not_mixed(p, [name], tmp_path, ["pretrain.max_steps=2"])  # same: skipped
    with pytest.raises(ReproduceError) as e:
        check_not_mixed(p, [name], tmp_path, [])
    msg = str(e.value)
    assert "pretrain.max_steps 2 -> 0" in msg and "stopped by max_steps at step 2" in msg
    assert "use another --out, or delete" in msg and "\n" not in msg
    # unfinished (no DONE): its config.json counts the same way
    (tmp_path / name / "DONE").unlink()
    (tmp_path / name / "config.json").write_text(json.dumps(short))
    with pytest.raises(ReproduceError, match="other settings"):
        check_not_mixed(p, [name], tmp_path, [])
    # where a folder is does not count (nodes without a shared folder)
    moved = json.loads(json.dumps(short))
    moved["data"]["cache_dir"] = "/elsewhere/" + moved["data"]["cache_dir"].rsplit("/", 1)[1]
    (tmp_path / name / "config.json").write_text(json.dumps(moved))
    check_not_mixed(p, [name], tmp_path, ["pretrain.max_steps=2"])


def test_execute_refuses_before_running_anything(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(driver, "execute_run", lambda p, n, *a: ran.append(n))
    p = plan("smoke")
    short = run_config(p, "pre_roi_s0", tmp_path, ["pretrain.max_steps=2"]).to_dict()
    (tmp_path / "pre_roi_s0").mkdir()
    (tmp_path / "pre_roi_s0" / "DONE").write_text(json.dumps({"config": short}))
    with pytest.raises(ReproduceError, match="pre_roi_s0 holds a run with other"):
        driver.execute(p, ["cnn", "pre_roi_s0", "report"], tmp_path, echo=lambda *_: None)
    assert ran == []


def test_each_run_its_own_port_and_each_node_its_own_files(tmp_path, monkeypatch):
    p = plan("paper")
    ports = {run_port(p, n, 29500) for n in p.runs}
    assert len(ports) == len(p.runs) and min(ports) == 29500
    launch = Launch(8, 2, 1, "host", 29500, threads=1)
    a = driver.notebook_parameters(p, "pre_imagenet", tmp_path, [], launch)
    b = driver.notebook_parameters(p, "pre_abl_d", tmp_path, [], launch)
    assert a["master_port"] != b["master_port"] and a["node_rank"] == 1
    # node 1 runs the training jobs only: the report and the localization are node 0's
    started = []

    def fake_run(p_, name, out, overrides, launch_, timeout):
        started.append(name)
        return Result(name, "done")

    monkeypatch.setattr(driver, "execute_run", fake_run)
    res = driver.execute(p, ["pre_imagenet", "localize", "report"], tmp_path, [], launch)
    assert started == ["pre_imagenet"]
    assert res["localize"].status == "skipped" and res["report"].status == "skipped"
    assert (tmp_path / "status.node1.json").exists() and not (tmp_path / "status.json").exists()


def test_several_nodes_refused_where_a_run_needs_one_machine(tmp_path):
    with pytest.raises(ReproduceError, match="several nodes are for --scale paper"):
        driver.reproduce("smoke", tmp_path, ["fig6"], launch=Launch(0, 2, 0))


def test_paper_preset_without_cnn_weights_warns(tmp_path, capsys):
    # the run then stops on the missing ImageNet folder; the warning comes first
    assert cli.main(["pretrain", "--preset", "paper", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "WARNING: preset paper without model.backbone_weights" in err
    assert err.index("WARNING") < err.index("error:")
    assert "model.backbone_weights=random" in err
    on_purpose = ["--set", "model.backbone_weights=random"]
    assert cli.main(["finetune", "--preset", "paper", "--out", str(tmp_path), *on_purpose]) == 1
    err = capsys.readouterr().err
    assert "WARNING" not in err and "a random CNN, on purpose" in err
    # the driver at paper scale: the missing-weights error names the way to ask for it
    with pytest.raises(MissingDataError, match="model.backbone_weights=random"):
        check_paper_inputs(
            plan("paper"),
            ["pre_imagenet"],
            [f"data.pretext_root={tmp_path}"],
            None,
        )
    p = plan("paper")
    check_paper_inputs(
        p,
        ["pre_imagenet"],
        [f"data.pretext_root={tmp_path}", "model.backbone_weights=random"],
        None,
    )


def test_the_log_says_what_was_trained(tmp_path):
    from updetr_lite.config import get_config
    from updetr_lite.engine.train import train
    from updetr_lite.jsonl import read_jsonl

    cfg = get_config("smoke", [f"data.cache_dir={tmp_path / 'cache'}", "pretrain.max_steps=3"])
    s = train(cfg, "pretrain", tmp_path / "pre", progress=False)
    recs = read_jsonl(tmp_path / "pre" / "log.jsonl")
    plan, end = recs[0], recs[-1]
    n = cfg.data.embedded_unlabeled  # images an epoch; batch 4
    spe = -(-n // cfg.pretrain.batch_size)
    assert plan["type"] == "plan" and plan["steps_per_epoch"] == spe
    assert plan["planned_steps"] == 3 and plan["images_per_epoch"] == n
    assert end == {
        "type": "end",
        "epoch": 0,
        "steps": 3,
        "planned_steps": 3,
        "epochs_trained": 3 / spe,
        "images_seen": 3 * cfg.pretrain.batch_size,
        "stopped_by": "max_steps",
    }
    assert s["steps"] == 3 and s["stopped_by"] == "max_steps"


def test_a_launch_beside_live_workers_is_refused(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    # a "torchrun" that starts a worker and dies by SIGKILL: the worker lives on (its
    # output elsewhere: a worker on the pipe would keep stream() reading until it ends)
    code = (
        "import os, signal, subprocess, sys, time\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('worker', w.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = tmp_path / "train.out"
    with pytest.raises(RuntimeError, match="exit -9"):
        stream([sys.executable, "-c", code], out, echo=lambda *_: None)
    lock = tmp_path / "train.pgid"
    pgid = int(lock.read_text().split()[0])
    try:
        with pytest.raises(LiveProcessesError, match=f"kill -- -{pgid}"):
            stream([sys.executable, "-c", "print(1)"], out, echo=lambda *_: None)
    finally:
        os.killpg(pgid, signal.SIGKILL)
    for _ in range(50):  # the worker is reaped by init; wait until its group is gone
        if subprocess.run(["ps", "-g", str(pgid)], capture_output=True).returncode:
            break
        time.sleep(0.1)
    shown = []
    stream([sys.executable, "-c", "print('again')"], out, echo=shown.append)
    assert shown == ["again"] and not lock.exists()


def _run_sh_args() -> list[str]:
    """The arguments run.sh gives ``python -m reproduce.run``."""
    import shlex

    line = next(x for x in (ROOT / "run.sh").read_text().splitlines() if x.startswith("exec "))
    words = shlex.split(line)
    i = words.index("reproduce.run")
    assert words[i - 2 : i] == ["python", "-m"] and words[-1] == "$@"
    return words[i + 1 : -1]


def test_main_job_is_wired(monkeypatch, capsys):
    """run.sh (the README's main job) hands the lite scale, the main artefacts, runs/main and
    the user's overrides to reproduce(), prints the report's path, exits 1 on a failed run."""
    from reproduce import run

    args = _run_sh_args()
    assert args[args.index("--only") + 1].split(",") == list(MAIN_ARTEFACTS)
    calls, status = [], {"cnn": "done", "report": "done"}

    def fake(*a, runs=None):
        calls.append(a)
        assert runs is None  # run.sh names artefacts, not runs
        return {n: Result(n, s) for n, s in status.items()}

    monkeypatch.setattr(run, "reproduce", fake)
    assert run.main(args + ["--set", "pretrain.lr=1e-3"]) == 0
    assert calls[0][:4] == ("lite", "runs/main", list(MAIN_ARTEFACTS), ["pretrain.lr=1e-3"])
    assert calls[0][4].threads == 0 and calls[0][4].gpus == 0  # the cores shared among jobs
    assert str(Path("runs/main").resolve() / "report" / "report.md") in capsys.readouterr().out
    status["cnn"] = "failed"
    assert run.main(args) == 1


def test_run_py_runs_as_a_file_too():
    """``python reproduce/run.py`` (cited by older notes) plans as ``-m reproduce.run`` does."""
    import os
    import subprocess
    import sys

    # no PYTHONPATH: the file itself must make the checkout importable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = [
        subprocess.run(
            cmd + ["--scale", "smoke", "--only", "fig6", "--list"],
            cwd=ROOT if "-m" in cmd else "/",
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        for cmd in (
            [sys.executable, str(ROOT / "reproduce" / "run.py")],
            [sys.executable, "-m", "reproduce.run"],
        )
    ]
    assert [o.returncode for o in out] == [0, 0], out[0].stderr + out[1].stderr
    assert out[0].stdout == out[1].stdout and "pre_nomask_s1" in out[0].stdout


def test_a_kernel_that_never_started_is_started_once_more(tmp_path, monkeypatch):
    """jupyter_client can lose a ZMQ port race when two kernels start at once; the notebook
    never ran, so the driver starts it again (once); any other failure is not retried."""
    import subprocess

    from reproduce import execute
    from reproduce.launch import Launch

    calls = []

    def fake_run(cmd, stdout, **kw):
        calls.append(cmd)
        if len(calls) == 1:
            stdout.write(f"RuntimeError: {execute.KERNEL_RACE} 60 seconds\n")
            return subprocess.CompletedProcess(cmd, 1)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(execute.subprocess, "run", fake_run)
    p = plan("smoke")
    r = execute.execute_run(p, "report", tmp_path, [], Launch(threads=1), None)
    assert r.status == "done" and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(
        execute.subprocess,
        "run",
        lambda cmd, stdout, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 1),
    )
    assert (
        execute.execute_run(p, "report", tmp_path, [], Launch(threads=1), None).status == "failed"
    )
    assert len(calls) == 1
