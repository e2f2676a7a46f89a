"""Several nodes through the driver, on one CPU: two driver processes ("nodes"), each
starting torchrun (gloo, loopback) for every training run of a tiny plan, with one shared
run folder and with one folder per node; compared with one node. And the check that the
ranks of one job run the same run and settings."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reproduce.launch import Launch, training_command

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# one "node": runs NAMES of the tiny plan pre -> ft (+ report) into OUT, as node R of N
NODE = """
import json, sys
from reproduce.execute import execute
from reproduce.launch import Launch
from reproduce.plan import Plan, Row, Run
out, cache, node, nodes, port = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
names = sys.argv[6].split(",")
p = Plan("smoke", "smoke", RUNS, {"table1": [Row("UP-DETR", ("ft",), "table1/UP-DETR/150")]})
launch = Launch(0, nodes, node, "127.0.0.1", port, threads=1)
res = execute(p, names, out, [f"data.cache_dir={cache}"], launch, echo=lambda *a: None)
print("RESULT " + json.dumps({n: r.status for n, r in res.items()}))
"""
PLAN = {  # run -> (kind, overrides, init)
    "pre": ("pretrain", ("pretrain.epochs=1", "pretrain.log_every=1"), None),
    "ft": ("finetune", ("finetune.epochs=1", "finetune.log_every=1"), "pre"),
}
NODE = NODE.replace(
    "from reproduce.plan import Plan, Row, Run\n",
    "from reproduce.plan import Plan, Row, Run\n"
    "RUNS = {n: Run(n, k, ov, i, (i,) if i else ()) for n, (k, ov, i) in "
    f"{PLAN!r}.items()}}\n"
    'RUNS["report"] = Run("report", "report")\n',
)


def free_port(n: int = 2) -> int:
    """A base port with the n ports from it free on the loopback, below the kernel's ephemeral
    range: papermill's kernels and gloo take ephemeral ports, and one of them could take a
    port picked here before torchrun binds it (the other node then waits for a rendezvous
    that never comes)."""
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    top = low - n if low > 20000 + n else 65535 - n
    bottom = 20000 if low > 20000 + n else high + 1
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(bottom, top)
        try:
            for i in range(n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    return e


def start_nodes(outs: list[Path], caches: list[Path], names: str) -> list:
    """One driver process per node (node i writes into outs[i]), started side by side."""
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-c", NODE, str(o), str(c), str(i), str(len(outs)), str(port), names],
            cwd=ROOT,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a timeout kills the node with its torchrun and kernel
        )
        for i, (o, c) in enumerate(zip(outs, caches))
    ]


def run_logs(outs: list[Path]) -> str:
    """The tail of every run log the nodes wrote: what a hung node was waiting for."""
    parts = []
    for out in dict.fromkeys(outs):
        for f in sorted(Path(out).glob("*/*")):
            if f.suffix in (".log", ".out"):
                parts.append(f"--- {f}\n{f.read_text(errors='replace')[-1500:]}")
    return "\n".join(parts)


def results(procs, outs: list[Path]) -> list[dict]:
    out = []
    for proc in procs:
        try:
            text, _ = proc.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            pytest.fail(f"a node did not finish in 420 s; its run logs:\n{run_logs(outs)}")
        line = [x for x in text.splitlines() if x.startswith("RESULT ")]
        assert proc.returncode == 0 and line, text[-3000:] + run_logs(outs)
        out.append(json.loads(line[0][7:]))
    return out


def one_process(out: Path, cache: Path) -> None:
    """The reference: the same runs, one process each (the trainer's command line)."""
    for name, (kind, ov, init) in PLAN.items():
        cmd = training_command(
            kind,
            "smoke",
            [*ov, f"data.cache_dir={cache}"],
            out / name,
            str(out / init / "last.pth") if init else None,
        )
        r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=200)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def records(path: Path, kind: str) -> list[dict]:
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    drop = ("images_per_s",)
    return [{k: v for k, v in r.items() if k not in drop} for r in recs if r["type"] == kind]


@pytest.fixture(scope="module")
def three_ways(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    caches = [root / f"node{i}" / "cache" for i in range(2)]
    one_process(root / "one", root / "cache")  # also builds the toy data the nodes copy
    for c in caches:
        shutil.copytree(root / "cache", c)
    # one way after the other (four nodes at once overload two cores); only the shared
    # folder's nodes build a report
    outs = [root / "shared"] * 2
    shared = results(start_nodes(outs, caches, "pre,ft,report"), outs)
    outs = [root / "apart0", root / "apart1"]
    apart = results(start_nodes(outs, caches, "pre,ft"), outs)
    return root, shared, apart


def test_two_nodes_shared_folder_and_not_match_one_node(three_ways):
    root, shared, apart = three_ways
    assert shared == [
        {"pre": "done", "ft": "done", "report": "done"},
        {"pre": "done", "ft": "done", "report": "skipped"},  # node 0 builds the report
    ]
    assert apart == [{"pre": "done", "ft": "done"}] * 2
    for run in ("pre", "ft"):
        ref = root / "one" / run / "log.jsonl"
        for out in (root / "shared", root / "apart0"):
            log = out / run / "log.jsonl"
            # two processes on two nodes = one global batch split in two: the same schedule
            assert records(log, "plan") == [r | {"world_size": 2} for r in records(ref, "plan")]
            end = records(log, "end")
            assert end == records(ref, "end") and end[0]["stopped_by"] == "epochs"
            assert [r["step"] for r in records(log, "train")] == [
                r["step"] for r in records(ref, "train")
            ]
        # and a shared folder or none: the very same training, number for number
        assert records(root / "shared" / run / "log.jsonl", "train") == records(
            root / "apart0" / run / "log.jsonl", "train"
        )
        done = json.loads((root / "apart0" / run / "DONE").read_text())
        assert done["complete"] is True and done["steps"] == done["plan_steps"]
    ev = records(root / "apart0" / "ft" / "log.jsonl", "eval")
    assert ev and ev == records(root / "shared" / "ft" / "log.jsonl", "eval")
    assert (root / "shared" / "report" / "report.md").exists()


def test_each_node_keeps_its_own_files_and_each_run_its_port(three_ways):
    root = three_ways[0]
    shared = root / "shared"
    ports = set()
    for run in ("pre", "ft"):
        p0 = json.loads((shared / run / "parameters.json").read_text())
        p1 = json.loads((shared / run / "parameters.node1.json").read_text())
        assert (p0["node_rank"], p1["node_rank"]) == (0, 1)
        assert p0["master_port"] == p1["master_port"]
        ports.add(p0["master_port"])
        for f in ("DONE", "DONE.node1", "train.out", "train.node1.out", "papermill.node1.log"):
            assert (shared / run / f).exists(), (run, f)
    assert len(ports) == 2  # one rendezvous per job
    # no shared folder: node 1 has no log.jsonl, and got rank 0's checkpoint to start from
    apart1 = root / "apart1"
    assert not (apart1 / "pre" / "log.jsonl").exists() and (apart1 / "pre" / "DONE.node1").exists()
    assert "received rank 0's" in (apart1 / "ft" / "train.node1.out").read_text()
    assert (apart1 / "pre" / "last.pth").exists()


def test_ranks_of_one_job_must_run_the_same_settings(tmp_path):
    port = free_port(1)
    cmds = []
    for node, seed in ((0, 1), (1, 2)):
        cmd = training_command(
            "pretrain",
            "smoke",
            [f"pretrain.seed={seed}", f"data.cache_dir={tmp_path / 'cache'}"],
            tmp_path / f"n{node}" / "pre",
            launch=Launch(0, 2, node, "127.0.0.1", port),
        )
        cmds.append(cmd)
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c in cmds
    ]
    outs = [p.communicate(timeout=200)[0].decode() for p in procs]
    for p, text in zip(procs, outs):
        assert p.returncode != 0, text[-2000:]
        assert "does not run what rank 0 runs" in text, text[-2000:]
    assert not (tmp_path / "n0" / "pre" / "log.jsonl").exists()  # stopped before training


def test_skip_counts_of_every_rank_are_logged(tmp_path):
    from PIL import Image

    from updetr_lite.engine.loop import merge_skip_reports

    a = {"too_small": 1, "unreadable": 0, "files": ["a"]}
    b = {"too_small": 2, "unreadable": 1, "files": ["b", "c"]}
    assert merge_skip_reports([a, b]) == {"too_small": 3, "unreadable": 1, "files": ["a", "b", "c"]}
    assert merge_skip_reports([{}, {}]) == {}
    # 8 images, 4 of them too small (a side <= 16 px): two processes each read half
    root = tmp_path / "images"
    root.mkdir()
    for i in range(8):
        size = (12, 40) if i % 2 else (64, 48)
        Image.new("RGB", size, (i * 30, 80, 160)).save(root / f"im{i}.png")
    cmd = training_command(
        "pretrain",
        "smoke",
        [f"data.pretext_root={root}", "pretrain.cache_features=False", "pretrain.epochs=1"]
        + [f"data.cache_dir={tmp_path / 'cache'}"],
        tmp_path / "pre",
        launch=Launch(2, 1, 0),  # torchrun, 2 processes (gloo on the CPU)
    )
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (skips,) = records(tmp_path / "pre" / "log.jsonl", "skips")
    assert skips["report"]["too_small"] == 4 and len(skips["report"]["files"]) == 4
    assert r.stdout.count('"stage": "pretrain"') == 1  # one summary, rank 0's


def test_resume_without_a_shared_folder_uses_rank_0s_checkpoint(three_ways, tmp_path):
    root = three_ways[0]
    for node in (0, 1):
        shutil.copytree(root / f"apart{node}", tmp_path / f"n{node}")
    assert not (tmp_path / "n1" / "ft" / "last.pth").exists()  # only rank 0 wrote it
    port = free_port(1)
    procs = []
    for node in (0, 1):
        cmd = training_command(
            "finetune",
            "smoke",
            [*PLAN["ft"][1], f"data.cache_dir={root / f'node{node}' / 'cache'}"],
            tmp_path / f"n{node}" / "ft",
            str(tmp_path / f"n{node}" / "pre" / "last.pth"),
            resume=node == 0,  # node 1 has no checkpoint: rank 0 decides, and sends it
            launch=Launch(0, 2, node, "127.0.0.1", port),
        )
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert f"received rank 0's {tmp_path / 'n1' / 'ft' / 'last.pth'}" in outs[1]
    # the run had finished: resumed, it trains nothing more and ends where it was
    ends = records(tmp_path / "n0" / "ft" / "log.jsonl", "end")
    assert ends == records(root / "apart0" / "ft" / "log.jsonl", "end")
