"""Starting training processes: one CPU process (``python -m updetr_lite STAGE``) or torchrun
over GPUs and nodes, streamed line by line into a log, with a process-group lock so that a
second launch never writes beside the workers of a killed one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .plan import ReproduceError

# the checkout: caches under ROOT/.cache, the kit importable by child processes
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Launch:
    """How training processes start: one CPU process, or torchrun over GPUs and nodes."""

    gpus: int = 0
    nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500  # the driver: the first port, one per run (run_port)
    threads: int = 0  # torch threads of one process; 0: the cores shared among the jobs


def training_command(
    stage: str,
    preset: str,
    overrides: list[str],
    out_dir: str,
    init: str | None = None,
    resume: bool = False,
    launch: Launch | None = None,
) -> list[str]:
    """argv of one training run: ``python -m updetr_lite STAGE ...`` for one CPU process,
    ``python -m torch.distributed.run --nproc_per_node G ... -m updetr_lite STAGE ...`` else."""
    launch = launch or Launch()
    if stage not in ("pretrain", "finetune"):
        raise ReproduceError(f"stage must be pretrain or finetune, not {stage!r}")
    args = [stage, "--preset", preset, "--out", str(out_dir)]
    for o in overrides:
        args += ["--set", o]
    if init:
        args += ["--init", str(init)]
    if resume:
        args.append("--resume")
    if launch.gpus <= 0 and launch.nodes <= 1:
        return [sys.executable, "-m", "updetr_lite", *args]
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={max(1, launch.gpus)}"]
    if launch.nodes > 1:
        run += [
            f"--nnodes={launch.nodes}",
            f"--node_rank={launch.node_rank}",
            f"--master_addr={launch.master_addr}",
            f"--master_port={launch.master_port}",
        ]
    else:
        run += ["--standalone"]
    return [*run, "-m", "updetr_lite", *args]


def child_env(threads: int, keep_threads: bool = False) -> dict:
    """Environment of a child process: this checkout importable (also when the kit is not
    pip-installed), unbuffered output, ``threads`` OpenMP threads."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cache = ROOT / ".cache"  # caches stay in the project, as scripts/venv.sh sets them
    for key, sub in (
        ("MPLCONFIGDIR", "matplotlib"),
        ("TORCH_HOME", "torch"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"),
    ):
        env.setdefault(key, str(cache / sub))
    path = env.get("PYTHONPATH", "")
    if str(ROOT) not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    if not (keep_threads and "OMP_NUM_THREADS" in env):
        env["OMP_NUM_THREADS"] = str(max(1, threads))
    return env


class LiveProcessesError(RuntimeError):
    """Processes of an earlier launch of a run still run (e.g. torchrun killed with -9 leaves
    its workers): a new launch would write beside them into the same folder."""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        return True
    return True


def check_no_live_launch(lock: Path) -> None:
    """Raise LiveProcessesError if the process group recorded in ``lock`` (by ``stream``)
    still has a process; a stale lock is removed."""
    try:
        pgid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if _group_alive(pgid):
        raise LiveProcessesError(
            f"{lock}: processes of an earlier launch of this run (process group {pgid}) are "
            f"still running and would write beside a new one; end them (kill -- -{pgid}) and rerun"
        )
    lock.unlink(missing_ok=True)


def stream(cmd: list[str], log_path: str | Path, threads: int = 1, echo=print) -> None:
    """Run ``cmd``, echoing its output line by line and copying it to ``log_path``;
    raise RuntimeError naming the log on a non-zero exit.

    The command runs in a process group of its own, recorded in ``log_path`` with suffix
    ``.pgid`` until every process of it has ended: killing torchrun with -9 leaves its
    workers running, and a later launch beside them is refused (``check_no_live_launch``).
    An exception here (e.g. the kernel interrupted) ends the whole group."""
    import signal

    env = child_env(threads, keep_threads=True)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lock = log_path.with_suffix(".pgid")
    check_no_live_launch(lock)
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            bufsize=1,
            start_new_session=True,
        )
        lock.write_text(f"{proc.pid} {' '.join(cmd[:4])}\n")
        try:
            last, held = 0.0, None
            for line in proc.stdout:  # text mode: tqdm's carriage returns arrive as lines
                log.write(line)
                line = line.rstrip()
                if "%|" in line:  # a progress bar redraw: echo one every 10 s
                    held = line
                    if time.monotonic() - last < 10:
                        continue
                    last, held = time.monotonic(), None
                echo(line)
            if held:
                echo(held)
            rc = proc.wait()
        except BaseException:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGTERM)
            raise
    if not _group_alive(proc.pid):
        lock.unlink(missing_ok=True)
    if rc:
        raise RuntimeError(f"training process failed (exit {rc}): see {log_path}")
