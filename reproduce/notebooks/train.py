# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (updetr-lite)
#     language: python
#     name: updetr-lite
# ---

# %% [markdown]
# # One training run: UP-DETR pre-training or DETR fine-tuning
#
# One run of the reproduction: `stage` is 'pretrain' (random query patch detection) or
# 'finetune' (detection; `init` is the pre-training checkpoint, empty for the DETR baseline
# with transformers from scratch and the same frozen CNN). The trainer runs as a subprocess
# (`python -m updetr_lite STAGE`, or `torchrun` with GPUs / nodes) and its output streams
# below; the run folder receives `config.json`, `log.jsonl` (fine-tuning: a COCO-style
# evaluation per epoch), `last.pth`, `best.pth` and `train.out` (the full console output).

# %% tags=["parameters"]
# Parameters (papermill replaces this cell; the defaults run a toy example by hand)
run_name = "example"
run_dir = "runs/notebook_example"
out_root = "runs"
scale = "smoke"
preset = "smoke"
overrides = []
seed = 0
threads = 1
stage = "finetune"
init = ""
resume = False
gpus = 0
nodes = 1
node_rank = 0
master_addr = "127.0.0.1"
master_port = 29500

# %%
from pathlib import Path

from reproduce import report
from reproduce.launch import Launch, stream, training_command
from reproduce.records import node_suffix

run_dir = Path(run_dir).resolve()
run_dir.mkdir(parents=True, exist_ok=True)
print(f"run {run_name} ({scale} scale) -> {run_dir}")

# %% [markdown]
# ## Training
#
# The command, then its output as it runs.

# %%
launch = Launch(gpus, nodes, node_rank, master_addr, master_port, threads)
cmd = training_command(stage, preset, overrides, run_dir, init or None, resume, launch)
print("settings:", *overrides, sep="\n  ")
print("$", " ".join(cmd))
# several nodes: each node's console in its own file (a shared folder holds them all)
stream(cmd, run_dir / f"train{node_suffix(node_rank)}.out", threads)
# only global rank 0 (on node 0) writes log.jsonl: the other nodes draw nothing
has_log = node_rank == 0 and (run_dir / "log.jsonl").exists()
if not has_log:
    print(f"node {node_rank}: log.jsonl and the curves are node 0's")

# %% [markdown]
# ## The run's curves

# %%
if has_log:
    fig = report.plot_run(run_dir, run_dir / "curves.png")

# %%
# the weighted loss terms of the last decoder layer: where the learning happens
if has_log:
    fig = report.plot_loss_terms(run_dir, run_dir / "loss_terms.png")

# %%
ev = report.eval_records(report.read_jsonl(run_dir / "log.jsonl")) if has_log else []
if ev:
    last = ev[-1]
    shown = ", ".join(f"{k} {last[k]:.1f}" for k in ("AP", "AP50", "AP75") if k in last)
    print(f"last evaluation (step {last['step']}): {shown}")
