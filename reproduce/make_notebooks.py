"""Write the reproduction notebooks (no outputs) from the cell sources below.

The notebooks are thin: every step is a library call (updetr_lite.main, .report,
.lite_cnn), so they stay short and the logic stays tested. Run after editing a cell:

    python reproduce/make_notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"name": "updetr-lite", "display_name": "Python (updetr-lite)", "language": "python"}


def common(*imports: str) -> str:
    """The set-up cell: imports, then the run folder."""
    return (
        "from pathlib import Path\n\n"
        + "".join(i + "\n" for i in imports)
        + "\nrun_dir = Path(run_dir).resolve()\n"
        "run_dir.mkdir(parents=True, exist_ok=True)\n"
        'print(f"run {run_name} ({scale} scale) -> {run_dir}")\n'
    )


def params(extra: str) -> str:
    return (
        "# Parameters (papermill replaces this cell; the defaults run a toy example by hand)\n"
        'run_name = "example"\n'
        'run_dir = "runs/notebook_example"\n'
        'out_root = "runs"\n'
        'scale = "smoke"\n'
        'preset = "smoke"\n'
        "overrides = []\n"
        "seed = 0\n"
        "threads = 1\n" + extra
    )


def parameters_cell(extra: str = ""):
    cell = new_code_cell(params(extra))
    cell.metadata["tags"] = ["parameters"]
    return cell


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def training_notebook(stage: str) -> nbformat.NotebookNode:
    what = {
        "pretrain": (
            "# UP-DETR pre-training: random query patch detection\n\n"
            "One pre-training run of the reproduction. The trainer runs as a subprocess "
            "(`python -m updetr_lite pretrain`, or `torchrun` with GPUs / nodes) and its "
            "output streams below; the run folder receives `config.json`, `log.jsonl`, "
            "`last.pth`, `best.pth` and `train.out` (the full console output)."
        ),
        "finetune": (
            "# DETR fine-tuning (from UP-DETR, or with scratch transformers)\n\n"
            "One fine-tuning run of the reproduction. `init` is the pre-training checkpoint "
            "(empty: the DETR baseline, transformers from scratch, the same frozen CNN). "
            "The trainer runs as a subprocess and its output streams below; the run folder "
            "receives `config.json`, `log.jsonl` (with a COCO-style evaluation per epoch), "
            "`last.pth`, `best.pth` and `train.out`."
        ),
    }[stage]
    extra = (
        f'stage = "{stage}"\n'
        'init = ""\n'
        "resume = False\n"
        "gpus = 0\n"
        "nodes = 1\n"
        "node_rank = 0\n"
        'master_addr = "127.0.0.1"\n'
        "master_port = 29500\n"
    )
    launch = """\
launch = driver.Launch(gpus, nodes, node_rank, master_addr, master_port, threads)
cmd = driver.training_command(stage, preset, overrides, run_dir, init or None, resume, launch)
print("settings:", *overrides, sep="\\n  ")
print("$", " ".join(cmd))
# several nodes: each node's console in its own file (a shared folder holds them all)
driver.stream(cmd, run_dir / f"train{driver.node_suffix(node_rank)}.out", threads)
# only global rank 0 (on node 0) writes log.jsonl: the other nodes draw nothing
has_log = node_rank == 0 and (run_dir / "log.jsonl").exists()
if not has_log:
    print(f"node {node_rank}: log.jsonl and the curves are node 0's")
"""
    plots = """\
if has_log:
    fig = report.plot_run(run_dir, run_dir / "curves.png")
"""
    terms = """\
# the weighted loss terms of the last decoder layer: where the learning happens
if has_log:
    fig = report.plot_loss_terms(run_dir, run_dir / "loss_terms.png")
"""
    final = """\
ev = report.eval_records(report.read_jsonl(run_dir / "log.jsonl")) if has_log else []
if ev:
    last = ev[-1]
    shown = ", ".join(f"{k} {last[k]:.1f}" for k in ("AP", "AP50", "AP75") if k in last)
    print(f"last evaluation (step {last['step']}): {shown}")
"""
    cells = [
        new_markdown_cell(what),
        parameters_cell(extra),
        new_code_cell(
            common("from updetr_lite import main as driver", "from updetr_lite import report")
        ),
        new_markdown_cell("## Training\n\nThe command, then its output as it runs."),
        new_code_cell(launch),
        new_markdown_cell("## The run's curves"),
        new_code_cell(plots),
        new_code_cell(terms),
    ]
    if stage == "finetune":
        cells.append(new_code_cell(final))
    return notebook(cells)


def lite_cnn_notebook() -> nbformat.NotebookNode:
    body = """\
import os

import torch

from updetr_lite.config import get_config
from updetr_lite.lite_cnn import build_lite_cnn

# nothing else runs while the CNN trains (every run needs it): use every core
torch.set_num_threads(os.cpu_count() or 1)
cfg = get_config(preset, overrides)
summary = build_lite_cnn(cfg, run_dir, cnn_steps, cnn_images, cnn_batch)
print(json.dumps(summary["probe"], indent=1))
"""
    plot = """\
records = report.read_jsonl(run_dir / "log.jsonl")
plt = report._plt()
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
for ax, k in zip(axes, ("loss", "object_acc")):
    x, y = report.curve(records, k)
    ax.plot(x, y)
    ax.set_title(k)
    ax.set_xlabel("step")
fig.tight_layout()
fig.savefig(run_dir / "curves.png", dpi=100)
"""
    return notebook(
        [
            new_markdown_cell(
                "# The lite scale's frozen CNN\n\n"
                "No weights can be downloaded, and UP-DETR needs a pre-trained, frozen CNN. "
                "At lite scale the kit trains its own: ResNet-18 up to layer3 on dense "
                "per-cell class labels of a **separate** generated set (its own seed; never "
                "the detection train/val images). This is a supervised stand-in for the "
                "paper's self-supervised SwAV CNN. A k-NN probe on object crops of the val "
                "split, against a random CNN, shows the features are useful."
            ),
            parameters_cell("cnn_steps = 3\ncnn_images = 16\ncnn_batch = 8\n"),
            new_code_cell(common("import json", "from updetr_lite import report")),
            new_code_cell(body),
            new_code_cell(plot),
        ]
    )


def localize_notebook() -> nbformat.NotebookNode:
    body = """\
from updetr_lite.data.embedded import build_embedded

p = driver.plan(scale)
rows = p.artefacts["fig5"]
runs = [(row.label, Path(out_root) / n) for row in rows for n in row.runs]
cfg = driver.run_config(p, rows[0].runs[0], out_root, user_overrides)
if cfg.data.detection == "embedded":
    images = sorted(Path(build_embedded(cfg.data).val_images).iterdir())
else:  # paper scale: VOC test2007 images
    root = Path(cfg.data.detection_root) / "VOC2007"
    ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
summary = report.localization_study(runs, images, run_dir, n_images=n_images, seed=seed)
display(Markdown(report.localization_text(out_root)))
"""
    show = """\
if (run_dir / "fig5.png").exists():
    display(Image(str(run_dir / "fig5.png")))
"""
    return notebook(
        [
            new_markdown_cell(
                "# Figure 5: unsupervised localization of query patches\n\n"
                "Random patches are cut from val images and fed to each pre-trained model "
                "as query patches; the most confident object query of each patch's group "
                "gives its box. The number: mean IoU with the patch's true box, beside a "
                "baseline that always answers one fixed box."
            ),
            parameters_cell("n_images = 100\nuser_overrides = []\n"),
            new_code_cell(
                common(
                    "from IPython.display import Image, Markdown, display",
                    "",
                    "from updetr_lite import main as driver",
                    "from updetr_lite import report",
                )
            ),
            new_code_cell(body),
            new_code_cell(show),
        ]
    )


def report_notebook() -> nbformat.NotebookNode:
    body = """\
p = driver.plan(scale)
result = report.build_report(p, out_root, run_dir)
if result["missing"]:
    print("runs without a result:", ", ".join(result["missing"]))
display(Markdown((run_dir / "report.md").read_text()))
"""
    return notebook(
        [
            new_markdown_cell(
                "# The reproduction report\n\n"
                "Tables 1-4 (Markdown and CSV) and Figures 1, 3, 4, 5, 6 (PNG), rebuilt from "
                "the run folders beside this one, with the paper's numbers and the "
                "differences. A run that is absent, unfinished or failed shows as missing."
            ),
            parameters_cell("user_overrides = []\n"),
            new_code_cell(
                common(
                    "from IPython.display import Markdown, display",
                    "",
                    "from updetr_lite import main as driver",
                    "from updetr_lite import report",
                )
            ),
            new_code_cell(body),
        ]
    )


NOTEBOOKS = {
    "pretrain.ipynb": lambda: training_notebook("pretrain"),
    "finetune.ipynb": lambda: training_notebook("finetune"),
    "lite_cnn.ipynb": lite_cnn_notebook,
    "localize.ipynb": localize_notebook,
    "report.ipynb": report_notebook,
}


def main() -> None:
    for name, make in NOTEBOOKS.items():
        nb = make()
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
