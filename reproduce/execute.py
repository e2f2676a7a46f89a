"""Running a plan: each run's notebook executed with papermill (kernel ``updetr-lite``) into
``OUT/<name>/``, several side by side, in dependency order.

A training notebook launches ``python -m updetr_lite pretrain|finetune`` (one CPU process)
or ``torchrun`` (GPUs, nodes) as a subprocess (``reproduce.launch``) and streams its output.
Each run folder ends up holding the executed notebook, the JSON-lines log, the resolved
configuration, its checkpoints and, written last, a ``DONE`` marker (``reproduce.records``):
a rerun skips runs that have one, and passes ``--resume`` to a run whose ``last.pth``
exists, so an interrupted reproduction goes on where it stopped. A failed run is reported
with the path of its log; it does not stop the others (only the runs that need its
checkpoint) and nothing is erased.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from updetr_lite.config import RANDOM_CNN, get_config

from .launch import Launch, child_env
from .lite_plan import CNN_BUDGET_KEYS, LITE_BUDGET, SMOKE_BUDGET
from .plan import Plan, ReproduceError, check_paper_inputs, plan, run_config, run_overrides
from .records import (
    NODE0_KINDS,
    Result,
    check_not_mixed,
    done_marker,
    node_suffix,
    run_port,
    trained_label,
    trained_record,
)

NOTEBOOK_DIR = Path(__file__).resolve().parent / "notebooks"
KERNEL = "updetr-lite"
KERNEL_RACE = "Kernel didn't respond in"  # papermill's words when the kernel never started
NOTEBOOKS = {
    "lite_cnn": "lite_cnn.ipynb",
    "pretrain": "train.ipynb",  # one notebook for both stages (its `stage` parameter)
    "finetune": "train.ipynb",
    "localize": "localize.ipynb",
    "report": "report.ipynb",
}


def notebook_parameters(
    p: Plan, name: str, out: Path, overrides: list[str], launch: Launch
) -> dict:
    """The papermill parameters of run ``name``."""
    run = p.runs[name]
    out = Path(out).resolve()
    run_dir = out / name
    params = {
        "run_name": name,
        "run_dir": str(run_dir),
        "out_root": str(out),
        "scale": p.scale,
        "preset": p.preset,
        "overrides": run_overrides(p, name, out, overrides),
        "seed": run.seed,
        "threads": launch.threads,
    }
    if run.kind in ("pretrain", "finetune"):
        params.update(
            stage=run.kind,
            init=str(out / run.init / "last.pth") if run.init else "",
            # several processes: rank 0's choice counts (nodes without a shared folder
            # receive its checkpoint, cli/train.py: _join_job)
            resume=(run_dir / "last.pth").exists(),
            gpus=launch.gpus,
            nodes=launch.nodes,
            node_rank=launch.node_rank,
            master_addr=launch.master_addr,
            master_port=run_port(p, name, launch.master_port),
        )
    if run.kind == "lite_cnn":
        budget = LITE_BUDGET if p.scale == "lite" else SMOKE_BUDGET
        params.update({k: budget[k] for k in CNN_BUDGET_KEYS})
        params["shipped"] = budget["cnn_shipped"]
    if run.kind == "localize":
        params["n_images"] = 100 if p.scale != "smoke" else 4
    if run.kind in ("localize", "report"):
        params["user_overrides"] = list(overrides)
    return params


def execute_run(
    p: Plan, name: str, out: Path, overrides: list[str], launch: Launch, timeout: float | None
) -> Result:
    """Execute one run's notebook with papermill in a subprocess; write DONE on success."""
    run = p.runs[name]
    out = Path(out).resolve()
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    params = notebook_parameters(p, name, out, overrides, launch)
    suffix = node_suffix(launch.node_rank)
    param_file = run_dir / f"parameters{suffix}.json"
    param_file.write_text(json.dumps(params, indent=1))
    nb_out = run_dir / f"{run.kind}{suffix}.ipynb"
    pm_log = run_dir / f"papermill{suffix}.log"
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(NOTEBOOK_DIR / NOTEBOOKS[run.kind]),
        str(nb_out),
        "-k",
        KERNEL,
        "-f",
        str(param_file),
        "--log-output",
        "--no-progress-bar",
    ]
    t0 = time.monotonic()
    env = child_env(launch.threads)
    for attempt in (1, 2):
        with open(pm_log, "w") as log:
            try:
                rc = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
                log.write(f"\n[reproduce] timed out after {timeout} s\n")
        # two kernels started at once can race for a ZMQ port (jupyter_client picks free
        # ports, then binds them): the notebook never ran, so start it once more
        if rc == 0 or attempt == 2 or KERNEL_RACE not in pm_log.read_text(errors="replace"):
            break
    seconds = time.monotonic() - t0
    train_log = run_dir / f"train{suffix}.out"
    shown = train_log if train_log.exists() else pm_log
    if rc == 0:
        record = {"seconds": round(seconds, 1), "finished": time.time()}
        if run.kind in ("pretrain", "finetune"):
            record["config"] = run_config(p, name, out, overrides).to_dict()
            record.update(trained_record(p, name, run_dir))
        if run.kind != "report":
            done_marker(out, name, launch.node_rank).write_text(json.dumps(record) + "\n")
        message = ""
        if record.get("complete") is False:
            message = f"{name}: {trained_label(record)}; the report labels it"
        return Result(name, "done", seconds, str(shown), message)
    return Result(
        name,
        "failed",
        seconds,
        str(shown),
        f"{name} failed: see {shown} (notebook {nb_out}, papermill log {pm_log})",
    )


def _training_started(run_dir: Path) -> bool:
    log = run_dir / "log.jsonl"
    try:
        return log.exists() and '"type": "train"' in log.read_text()
    except OSError:
        return False


def default_jobs(gpus: int) -> int:
    """GPUs: one run at a time (each uses them all). CPU: two one-thread runs side by side
    give more throughput on 2 cores than one two-thread run (lite-scale findings)."""
    return 1 if gpus > 0 else max(1, min(2, os.cpu_count() or 1))


def execute(
    p: Plan,
    names: list[str],
    out: str | Path,
    overrides: list[str] = (),
    launch: Launch | None = None,
    jobs: int | None = None,
    timeout: float | None = None,
    echo=print,
) -> dict[str, Result]:
    """Run ``names`` (dependency order) into ``out``; finished runs are skipped, runs whose
    needs failed are blocked, a failed run never stops the others. The report (if listed)
    runs last, after everything else finished or failed."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    launch = launch or Launch()
    # several nodes: one job at a time, so that every node starts the runs in one order
    jobs = 1 if launch.nodes > 1 else jobs or default_jobs(launch.gpus)
    check_not_mixed(p, names, out, overrides, launch.node_rank)
    if launch.threads <= 0:  # the cores shared among the jobs and their processes
        launch.threads = max(1, (os.cpu_count() or 1) // (jobs * max(1, launch.gpus)))
    results: dict[str, Result] = {}
    pending = [n for n in names if n != "report"]
    lock = threading.Lock()
    for n in pending:
        if launch.node_rank > 0 and p.runs[n].kind in NODE0_KINDS:
            results[n] = Result(n, "skipped", 0.0, "", "node 0 runs it")
            echo(f"[reproduce] {n}: node 0 runs it")
        elif done_marker(out, n, launch.node_rank).exists():
            results[n] = Result(n, "skipped", 0.0, "", "finished before (DONE)")
            echo(f"[reproduce] {n}: finished before, skipped")
    pending = [n for n in pending if n not in results]

    def ready(n: str) -> bool | None:
        """True: can start; False: wait; None: blocked by a failed need."""
        for need in p.runs[n].needs:
            r = results.get(need)
            if need not in names and done_marker(out, need, launch.node_rank).exists():
                continue
            if need not in names:
                return None  # a need that is neither done nor scheduled
            if r is None:
                return False
            if r.status in ("failed", "blocked"):
                return None
        return True

    def first_of_kind_done(n: str) -> bool:
        """Until one run of a training kind has started training (its log has a train record)
        or finished, no second one starts beside it: the first computes the CNN feature cache
        that the others then read."""
        kind = p.runs[n].kind
        if kind not in ("pretrain", "finetune"):
            return True
        if any(
            r.status in ("done", "skipped") and p.runs[m].kind == kind for m, r in results.items()
        ):
            return True
        same = [m for m in running.values() if p.runs[m].kind == kind]
        return not same or any(_training_started(out / m) for m in same)

    def priority(n: str):
        return (p.runs[n].kind != "pretrain", -p.runs[n].cost)

    running: dict = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            # pre-trainings first: fine-tunings wait on them, the DETR baselines do not
            for n in sorted(pending, key=priority):
                state = ready(n)
                if state and not first_of_kind_done(n):
                    state = False  # the first of a kind builds the shared feature cache alone
                if state is None:
                    pending.remove(n)
                    failed = [
                        m
                        for m in p.runs[n].needs
                        if m not in results or results[m].status not in ("done", "skipped")
                    ]
                    results[n] = Result(n, "blocked", message=f"needs {', '.join(failed)}")
                    echo(f"[reproduce] {n}: not run, it needs {', '.join(failed)}")
                elif state and len(running) < jobs:
                    pending.remove(n)
                    echo(f"[reproduce] {n}: started ({out / n})")
                    running[
                        pool.submit(execute_run, p, n, out, list(overrides), launch, timeout)
                    ] = n
            if not running:
                continue
            # wake up now and then: a run that starts training lets the next of its kind in
            finished, _ = wait(list(running), timeout=5, return_when=FIRST_COMPLETED)
            for f in finished:
                n = running.pop(f)
                try:
                    r = f.result()
                except Exception as e:  # the driver itself failed on this run
                    r = Result(n, "failed", message=f"{n} failed: {e}")
                with lock:
                    results[n] = r
                if r.status == "done":
                    echo(f"[reproduce] {n}: done in {r.seconds:.0f} s")
                    if r.message:
                        echo(f"[reproduce] NOTE {r.message}")
                else:
                    echo(f"[reproduce] FAILED {r.message}")
    if "report" in names and launch.node_rank > 0:
        results["report"] = Result("report", "skipped", 0.0, "", "node 0 builds it")
        echo("[reproduce] report: node 0 builds it")
    elif "report" in names:
        echo("[reproduce] report: started")
        r = execute_run(p, "report", out, list(overrides), launch, timeout)
        results["report"] = r
        echo(
            f"[reproduce] report: {'done' if r.status == 'done' else 'FAILED ' + r.message} "
            f"({out / 'report'})"
        )
    (out / f"status{node_suffix(launch.node_rank)}.json").write_text(
        json.dumps({n: r.__dict__ for n, r in results.items()}, indent=1) + "\n"
    )
    return results


def summary_line(results: dict[str, Result]) -> str:
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def reproduce(
    scale: str,
    out: str | Path,
    only: list[str] | None = None,
    overrides: list[str] = (),
    launch: Launch | None = None,
    jobs: int | None = None,
    coco_root: str | None = None,
    timeout: float | None = None,
    echo=print,
    runs: list[str] | None = None,
) -> dict[str, Result]:
    """Plan, check the inputs, execute (the artefacts ``only``, or the named ``runs``).
    Returns each run's Result."""
    p = plan(scale)
    names = p.runs_for(only, runs)
    overrides = list(overrides)
    get_config(p.preset, overrides)  # a bad --set fails here, once, not in every run
    launch = launch or Launch()
    if launch.nodes > 1 and any(p.runs[n].kind == "lite_cnn" for n in names):
        raise ReproduceError(
            f"--nodes {launch.nodes}: several nodes are for --scale paper (the lite CNN and "
            "the report run on one machine)"
        )
    check_paper_inputs(p, names, overrides, coco_root)
    cfg = get_config(p.preset, overrides)
    if p.scale == "paper" and cfg.model.backbone_weights == RANDOM_CNN:
        echo(
            f"[reproduce] WARNING: model.backbone_weights={RANDOM_CNN}: every run trains on a "
            "random CNN (asked for); the report says so"
        )
    if coco_root:
        for n in names:
            if "data.detection=coco" in p.runs[n].overrides:
                p.runs[n] = replace(p.runs[n], late=(f"data.detection_root={coco_root}",))
    echo(f"[reproduce] scale {scale}: {len(names)} runs into {Path(out).resolve()}")
    results = execute(p, names, out, overrides, launch, jobs, timeout, echo)
    echo(f"[reproduce] {summary_line(results)}")
    for r in results.values():
        if r.status == "failed":
            echo(f"[reproduce] FAILED {r.message}")
    return results
