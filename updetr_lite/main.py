"""The reproduction driver: which runs each artefact of the paper needs, and running them.

A *run* is one folder ``OUT/<name>/`` made by one parameterized notebook of ``reproduce/``
executed with papermill (kernel ``updetr-lite``): the lite CNN, a pre-training, a
fine-tuning, the query-patch localization study or the report. A training notebook
launches ``python -m updetr_lite pretrain|finetune`` (one CPU process) or ``torchrun``
(GPUs, nodes) as a subprocess and streams its output. Each run folder ends up holding the
executed notebook, the JSON-lines log, the resolved configuration, its checkpoints and,
written last, a ``DONE`` marker: a rerun skips runs that have one, and passes ``--resume``
to a run whose ``last.pth`` exists, so an interrupted reproduction goes on where it stopped.
A failed run is reported with the path of its log; it does not stop the others (only the
runs that need its checkpoint) and nothing is erased.

Scales (``plan(scale)``):

- ``paper``: the paper's settings (Tables 1-4, Figures 1, 3-6); needs ImageNet, VOC07+12,
  COCO and a SwAV ResNet-50 on local disk.
- ``lite``: the embedded data on a CPU. Deviations, each a named config option: a small CNN
  trained by the kit (``lite_cnn``), RoI patch features (``pretext.patch_feature='roi'``; the
  paper's 'crop' runs beside it), cached CNN features, step budgets instead of epochs,
  N = 20 queries with M = 4 patches standing in for the paper's N = 100, M = 10.
- ``smoke``: every lite run at toy size, for the tests.

``run_main`` is the README's main job: the lite CNN, Table 1 / Figure 1 (C1), Figure 6 (C4),
Figure 5 (C5) and the report.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import RANDOM_CNN, get_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "reproduce"
KERNEL = "updetr-lite"
NOTEBOOKS = {
    "lite_cnn": "lite_cnn.ipynb",
    "pretrain": "pretrain.ipynb",
    "finetune": "finetune.ipynb",
    "localize": "localize.ipynb",
    "report": "report.ipynb",
}
SCALES = ("smoke", "lite", "paper")
ARTEFACTS = ("table1", "table2", "table3", "table4", "fig1", "fig3", "fig4", "fig5", "fig6")
MAIN_ARTEFACTS = ("table1", "fig1", "fig5", "fig6")  # C1, C5, C4 of the lite main job


class ReproduceError(ValueError):
    """A request the driver cannot run; the message is one line for the user."""


class MissingDataError(FileNotFoundError):
    """A paper-scale run needs a file or folder that is not there."""


@dataclass(frozen=True)
class Run:
    """One run: a notebook executed into ``OUT/<name>/``.

    kind: lite_cnn | pretrain | finetune | localize | report.
    overrides: ``section.field=value`` strings on top of the scale's preset.
    init: name of the pre-training run whose ``last.pth`` initialises this fine-tuning.
    needs: runs whose ``DONE`` this one waits for (a failed need blocks it).
    """

    name: str
    kind: str
    overrides: tuple[str, ...] = ()
    init: str | None = None
    needs: tuple[str, ...] = ()
    seed: int = 0
    late: tuple[str, ...] = ()  # applied after the user's overrides (e.g. the COCO root)
    cost: float = 1.0  # relative run time: the longest pre-trainings start first


@dataclass(frozen=True)
class Row:
    """One line of a table or curve of a figure: an arm, its runs (one per seed), the key of
    the paper's number it stands beside (``report.PAPER``) and the rows it is compared with."""

    label: str
    runs: tuple[str, ...]
    paper: str | None = None
    # labels of the rows of the same artefact this row is compared with, as the paper does
    # (e.g. UP-DETR/300 vs DETR/300); the report's gains and the Summary's claims
    vs: tuple[str, ...] = ()


@dataclass
class Plan:
    scale: str
    preset: str
    runs: dict[str, Run]
    # artefact -> rows; fig5 and fig6 list pre-training runs
    artefacts: dict[str, list[Row]]
    notes: dict[str, str] = field(default_factory=dict)
    # x axis of learning curves: 'step', or 'epoch' (fractional: step / steps per epoch)
    x_key: str = "step"

    def runs_for(self, only: list[str] | None = None) -> list[str]:
        """Run names (needs included, in dependency order) for the artefacts in ``only``
        (all when None); 'report' is always last."""
        wanted = list(ARTEFACTS) if not only else only
        bad = [a for a in wanted if a not in ARTEFACTS and a != "report"]
        if bad:
            raise ReproduceError(
                f"--only: unknown artefact(s) {', '.join(bad)}; choose from "
                f"{', '.join(ARTEFACTS)}, report"
            )
        names: list[str] = []

        def add(name: str) -> None:
            if name in names:
                return
            for need in self.runs[name].needs:
                add(need)
            names.append(name)

        for a in wanted:
            for row in self.artefacts.get(a, []):
                for r in row.runs:
                    add(r)
            if a == "fig5":
                add("localize")
        add("report")
        return names


# ----------------------------------------------------------------------------- plans

# Step budgets of the lite scale (2-core CPU, cached features; see reproduce/README.md for
# the measured timings these come from).
LITE_BUDGET = {
    "cnn_steps": 600,  # lite CNN: batch 32 of 128 px images, bf16 where the CPU has it
    "cnn_images": 3000,  # its separate generated training set
    "cnn_batch": 32,
    "pretrain_steps": 1500,
    # 'crop' runs the CNN on M crops per image every step (about twice the cost of a 'roi'
    # step): it gets about the same pre-training time, not the same number of steps
    "pretrain_steps_crop": 800,
    "finetune_steps": 800,
    "steps_per_epoch_ft": 1000 / 32,  # embedded_train / batch
}
SMOKE_BUDGET = {"cnn_steps": 3, "cnn_images": 16, "cnn_batch": 8}
SEEDS = (0, 1)


def _ft_schedule(steps: int, steps_per_epoch: float) -> list[str]:
    """Fine-tuning for ``steps`` optimizer steps, lr x0.1 at 80 % of them (the findings:
    a drop late in the run, as the paper's 100/150)."""
    epochs = math.ceil(steps / math.floor(steps_per_epoch)) + 1
    drop = max(1, round(0.8 * steps / steps_per_epoch))
    return [
        f"finetune.max_steps={steps}",
        f"finetune.epochs={epochs}",
        f"finetune.lr_drop={drop}",
        "finetune.eval_every=2",  # COCOeval every other epoch: ~13 points a curve
    ]


def _small_plan(scale: str) -> Plan:
    """The lite plan; smoke is the same runs at the smoke preset's toy sizes."""
    lite = scale == "lite"
    b = LITE_BUDGET
    pre_steps = [f"pretrain.max_steps={b['pretrain_steps']}"] if lite else ["pretrain.log_every=2"]
    ft_steps = (
        _ft_schedule(b["finetune_steps"], b["steps_per_epoch_ft"])
        if lite
        else ["finetune.log_every=2"]
    )
    runs: dict[str, Run] = {"cnn": Run("cnn", "lite_cnn")}
    roi, crop = "pretext.patch_feature=roi", "pretext.patch_feature=crop"

    def pre(name: str, seed: int, *ov: str) -> str:
        full = f"{name}_s{seed}"
        # measured: 'crop' runs the CNN on M crops per image each step; a CNN that trains
        # runs forward and backward over the images
        cost = 4.0 if "model.frozen_cnn=False" in ov else 2.0 if crop in ov else 1.0
        steps = pre_steps
        if lite and crop in ov:
            steps = [f"pretrain.max_steps={b['pretrain_steps_crop']}"]
        runs[full] = Run(
            full,
            "pretrain",
            tuple(steps) + ov + (f"pretrain.seed={seed}",),
            None,
            ("cnn",),
            seed,
            cost=cost,
        )
        return full

    def ft(name: str, seed: int, init: str | None) -> str:
        full = f"ft_{name}_s{seed}"
        needs = ("cnn",) + ((init,) if init else ())
        runs[full] = Run(
            full, "finetune", tuple(ft_steps) + (f"finetune.seed={seed}",), init, needs, seed
        )
        return full

    scratch = tuple(ft("scratch", s, None) for s in SEEDS)
    pre_roi = [pre("pre_roi", s, roi) for s in SEEDS]
    ft_roi = tuple(ft("roi", s, pre_roi[s]) for s in SEEDS)
    # crop: the paper's patch feature; one pre-training, two fine-tuning seeds (budget)
    pre_crop = pre("pre_crop", 0, crop)
    ft_crop = tuple(ft("crop", s, pre_crop) for s in SEEDS)
    nomask = tuple(pre("pre_nomask", s, roi, "pretext.attention_mask=False") for s in SEEDS)
    m1 = [pre("pre_m1", s, roi, "pretext.num_patches=1") for s in SEEDS]
    ft_m1 = tuple(ft("m1", s, m1[s]) for s in SEEDS)
    # Table 4: (d) frozen + reconstruction is pre_roi; a CNN that trains cannot use cached
    # features; its lr is half the transformer's (the paper's fine-tuning ratio 5e-5 / 1e-4)
    cfg = get_config(scale)
    unfrozen = (
        "model.frozen_cnn=False",
        f"pretrain.lr_backbone={cfg.pretrain.lr / 2}",
        "pretrain.cache_features=False",
        "pretrain.amp=True",
    )
    norec = "pretext.reconstruction=False"
    abl_b = [pre("pre_norec", s, roi, norec) for s in SEEDS]
    abl_a = [pre("pre_unfrozen_norec", s, roi, norec, *unfrozen) for s in SEEDS]
    abl_c = [pre("pre_unfrozen", s, roi, *unfrozen) for s in SEEDS]
    ft_b = tuple(ft("norec", s, abl_b[s]) for s in SEEDS)
    ft_a = tuple(ft("unfrozen_norec", s, abl_a[s]) for s in SEEDS)
    ft_c = tuple(ft("unfrozen", s, abl_c[s]) for s in SEEDS)
    runs["localize"] = Run("localize", "localize", needs=tuple(pre_roi) + (pre_crop,) + nomask)
    runs["report"] = Run("report", "report")

    detr = "DETR (scratch transformers)"
    roi_row = "UP-DETR, patch feature 'roi' (lite)"
    t1 = [
        Row(detr, scratch, "table1/DETR/150"),
        Row(roi_row, ft_roi, "table1/UP-DETR/150", vs=(detr,)),
        Row(
            "UP-DETR, patch feature 'crop' (paper's)",
            ft_crop,
            "table1/UP-DETR/150",
            (detr, roi_row),
        ),
    ]
    artefacts = {
        "table1": t1,
        "fig1": t1,
        "fig3": t1,
        "table2": [],
        "table3": [
            Row("DETR", scratch, "table3/DETR"),
            Row("UP-DETR (M=1)", ft_m1, "table3/M=1", ("DETR",)),
            Row("UP-DETR (M=4, N=20)", ft_roi, "table3/M=10", ("UP-DETR (M=1)", "DETR")),
        ],
        "table4": table4_rows(
            detr,
            scratch,
            ("(a) CNN trains, no reconstruction", ft_a),
            ("(b) frozen CNN, no reconstruction", ft_b),
            ("(c) CNN trains, reconstruction", ft_c),
            ("(d) frozen CNN, reconstruction", ft_roi),
        ),
        "fig6": [
            Row("with attention mask", tuple(pre_roi)),
            Row("without attention mask", nomask),
        ],
        "fig5": [
            Row("UP-DETR 'roi' (M=4)", tuple(pre_roi)),
            Row("UP-DETR 'crop' (M=4)", (pre_crop,)),
            Row("UP-DETR 'roi', no attention mask", nomask),
        ],
    }
    artefacts["fig4"] = artefacts["table4"]
    notes = {
        "scale": (
            "Smoke scale: toy sizes that check the pipeline end to end; its numbers mean "
            "nothing. It runs every run of the lite scale, which is: "
            if not lite
            else ""
        )
        + (
            "Lite scale: embedded procedural data (1000 train / 300 val images, 128 px), a "
            "ResNet-18 cut at layer3 trained by the kit on a separate generated set (supervised "
            "stand-in for SwAV), a transformer of width 128 with 3 decoder layers and no "
            "encoder layers (positions in the decoder's values), N=20 queries, M=4 query "
            "patches, patch projection initialised x4, cached CNN features; budgets in "
            "optimizer steps. Numbers on this data say nothing about VOC or COCO."
        ),
        "table1": (
            (
                f"Equal budgets for every arm: {b['finetune_steps']} fine-tuning steps of batch "
                f"32 (lr x0.1 at 80 %), pre-training {b['pretrain_steps']} steps of batch 32 "
                f"('crop': {b['pretrain_steps_crop']} steps, about the same time: its CNN runs "
                "on the crops every step). "
                if lite
                else ""
            )
            + "Seed s = pre-training seed s and fine-tuning seed s ('crop': one pre-training, "
            "fine-tuning seeds 0 and 1)."
        ),
        "table2": "COCO is not part of the lite scale: Table 2 needs --scale paper.",
        "table3": "Lite N=20 cannot hold M=10 groups of equal size: M=4 (5 queries a patch) "
        "stands for the paper's M=10 (10 a patch).",
        "table4": "Lite ablations pre-train as long as the main arm (the paper: 15 of 60 "
        "epochs); a CNN that trains is fed the images, not cached features.",
        "fig6": "Pretext loss (the criterion's weighted total) per step.",
    }
    return Plan(scale, scale, runs, artefacts, notes, "step")


def table4_rows(detr: str, detr_runs, a, b, c, d) -> list[Row]:
    """Table 4's rows, (label, runs) each, with the cells the paper compares: every case
    against DETR, frozen against trained CNN at equal reconstruction ((b) vs (a), (d) vs
    (c)) and reconstruction against none with the frozen CNN ((d) vs (b))."""
    return [
        Row(detr, tuple(detr_runs), "table4/DETR"),
        Row(a[0], tuple(a[1]), "table4/a", (detr,)),
        Row(b[0], tuple(b[1]), "table4/b", (detr, a[0])),
        Row(c[0], tuple(c[1]), "table4/c", (detr,)),
        Row(d[0], tuple(d[1]), "table4/d", (detr, c[0], b[0])),
    ]


# The paper's schedules (reference-facts.md): pre-training 60 epochs (drop 40), ablations 15
# (drop 10); fine-tuning 150 (drop 100) or 300 (drop 200) epochs.
PAPER_SCHEDULES = {
    "pretrain": (60, 40),
    "ablation": (15, 10),
    "short": (150, 100),
    "long": (300, 200),
}


def _paper_plan() -> Plan:
    runs: dict[str, Run] = {}

    def pre(name: str, schedule: str, *ov: str) -> str:
        e, d = PAPER_SCHEDULES[schedule]
        runs[name] = Run(name, "pretrain", (f"pretrain.epochs={e}", f"pretrain.lr_drop={d}") + ov)
        return name

    def ft(name: str, schedule: str, init: str | None, *ov: str) -> str:
        e, d = PAPER_SCHEDULES[schedule]
        runs[name] = Run(
            name,
            "finetune",
            (f"finetune.epochs={e}", f"finetune.lr_drop={d}") + ov,
            init,
            (init,) if init else (),
        )
        return name

    coco = ("data.detection=coco", "model.num_classes=91")
    # Table 4 (a), (c): the CNN trains during pre-training, at the fine-tuning CNN lr
    trains = ("model.frozen_cnn=False", "pretrain.lr_backbone=5e-05")
    p = pre("pre_imagenet", "pretrain")
    voc = {
        (arm, s): ft(f"ft_voc_{arm}_{s}", s, p if arm == "updetr" else None)
        for arm in ("detr", "updetr")
        for s in ("short", "long")
    }
    cc = {
        (arm, s): ft(f"ft_coco_{arm}_{s}", s, p if arm == "updetr" else None, *coco)
        for arm in ("detr", "updetr")
        for s in ("short", "long")
    }
    abl = {
        "m1": pre("pre_abl_m1", "ablation", "pretext.num_patches=1"),
        "d": pre("pre_abl_d", "ablation"),
        "b": pre("pre_abl_b", "ablation", "pretext.reconstruction=False"),
        "a": pre("pre_abl_a", "ablation", *trains, "pretext.reconstruction=False"),
        "c": pre("pre_abl_c", "ablation", *trains),
        "nomask": pre("pre_abl_nomask", "ablation", "pretext.attention_mask=False"),
    }
    for k in ("m1", "d", "b", "a", "c"):
        ft(f"ft_voc_abl_{k}", "short", abl[k])
    runs["localize"] = Run("localize", "localize", needs=(p,))
    runs["report"] = Run("report", "report")
    # the paper compares UP-DETR with DETR at the same schedule (Tables 1 and 2)
    t1 = [
        Row("DETR/150", (voc["detr", "short"],), "table1/DETR/150"),
        Row("UP-DETR/150", (voc["updetr", "short"],), "table1/UP-DETR/150", ("DETR/150",)),
        Row("DETR/300", (voc["detr", "long"],), "table1/DETR/300"),
        Row("UP-DETR/300", (voc["updetr", "long"],), "table1/UP-DETR/300", ("DETR/300",)),
    ]
    t2 = [
        Row("DETR (SwAV CNN)/150", (cc["detr", "short"],), "table2/DETR/150"),
        Row(
            "UP-DETR/150", (cc["updetr", "short"],), "table2/UP-DETR/150", ("DETR (SwAV CNN)/150",)
        ),
        Row("DETR (SwAV CNN)/300", (cc["detr", "long"],), "table2/DETR/300"),
        Row("UP-DETR/300", (cc["updetr", "long"],), "table2/UP-DETR/300", ("DETR (SwAV CNN)/300",)),
    ]
    t4 = table4_rows(
        "DETR",
        (voc["detr", "short"],),
        ("(a) CNN trains, no reconstruction", ("ft_voc_abl_a",)),
        ("(b) frozen CNN, no reconstruction", ("ft_voc_abl_b",)),
        ("(c) CNN trains, reconstruction", ("ft_voc_abl_c",)),
        ("(d) frozen CNN, reconstruction", ("ft_voc_abl_d",)),
    )
    artefacts = {
        "table1": t1,
        "fig1": t1,
        "table2": t2,
        "fig3": t1 + t2,
        "table3": [
            Row("DETR", (voc["detr", "short"],), "table3/DETR"),
            Row("UP-DETR (M=1)", ("ft_voc_abl_m1",), "table3/M=1", ("DETR",)),
            Row("UP-DETR (M=10)", ("ft_voc_abl_d",), "table3/M=10", ("UP-DETR (M=1)", "DETR")),
        ],
        "table4": t4,
        "fig4": t4,
        "fig6": [
            Row("with attention mask", (abl["d"],)),
            Row("without attention mask", (abl["nomask"],)),
        ],
        "fig5": [Row("UP-DETR (M=10)", (p,))],
    }
    notes = {"scale": "Paper scale: the paper's settings (reference-facts.md)."}
    return Plan("paper", "paper", runs, artefacts, notes, "epoch")


def plan(scale: str) -> Plan:
    if scale not in SCALES:
        raise ReproduceError(f"unknown scale {scale!r}: choose smoke, lite or paper")
    return _paper_plan() if scale == "paper" else _small_plan(scale)


def run_config(p: Plan, name: str, out: Path, overrides: list[str] = ()):
    """The resolved Config of run ``name`` (what its notebook passes to the trainer)."""
    return get_config(p.preset, run_overrides(p, name, out, overrides))


def run_overrides(p: Plan, name: str, out: Path, overrides: list[str] = ()) -> list[str]:
    """Plan overrides of run ``name``, then the lite CNN's weights (small scales), then the
    user's (they win)."""
    ov = list(p.runs[name].overrides)
    # one data and feature cache for every run, wherever a notebook's kernel starts
    ov.append(f"data.cache_dir={Path(get_config(p.preset).data.cache_dir).resolve()}")
    if "cnn" in p.runs and p.runs[name].kind != "lite_cnn":
        ov.append(f"model.backbone_weights={Path(out).resolve() / 'cnn' / 'cnn.pth'}")
    return ov + list(overrides) + list(p.runs[name].late)


# ----------------------------------------------------------------------------- paper data

HOW_TO_GET = {
    "data.pretext_root": (
        "the ImageNet-1k train folder (ILSVRC2012_img_train from https://image-net.org, "
        "unpacked to one sub-folder per class)"
    ),
    "data.detection_root": (
        "the VOCdevkit folder holding VOC2007 (trainval+test) and VOC2012 (trainval) from "
        "http://host.robots.ox.ac.uk/pascal/VOC/"
    ),
    "coco_root": (
        "the COCO 2017 folder with train2017/, val2017/ and annotations/ from https://cocodataset.org"
    ),
    "model.backbone_weights": (
        "SwAV's ResNet-50 (swav_800ep_pretrain.pth.tar from "
        "https://github.com/facebookresearch/swav, 800 epochs)"
    ),
}


def check_paper_inputs(p: Plan, names: list[str], overrides: list[str], coco_root: str | None):
    """Raise MissingDataError naming the first missing path the selected runs need."""
    if p.scale != "paper":
        return
    cfg = get_config("paper", list(overrides))
    kinds = {p.runs[n].kind for n in names}
    need = []
    if "pretrain" in kinds:
        need.append(("data.pretext_root", cfg.data.pretext_root))
    if any(
        p.runs[n].kind == "finetune" and "data.detection=coco" not in p.runs[n].overrides
        for n in names
    ):
        need.append(("data.detection_root", cfg.data.detection_root))
    if any("data.detection=coco" in p.runs[n].overrides for n in names):
        need.append(("coco_root", coco_root or ""))
    if kinds & {"pretrain", "finetune"} and cfg.model.backbone_weights != RANDOM_CNN:
        need.append(("model.backbone_weights", cfg.model.backbone_weights or ""))
    for key, path in need:
        if not path or not os.path.exists(path):
            flag = "--coco-root PATH" if key == "coco_root" else f"--set {key}=PATH"
            shown = repr(path) if path else "not set"
            raise MissingDataError(
                f"paper scale needs {key} ({shown}): give {flag}, {HOW_TO_GET[key]}"
                + (
                    f" (or --set {key}={RANDOM_CNN}: a random CNN, on purpose)"
                    if key == "model.backbone_weights"
                    else ""
                )
            )


# ----------------------------------------------------------------------------- execution


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


def _child_env(threads: int, keep_threads: bool = False) -> dict:
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

    env = _child_env(threads, keep_threads=True)
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


@dataclass
class Result:
    name: str
    status: str  # done | skipped | failed | blocked
    seconds: float = 0.0
    log: str = ""
    message: str = ""


def node_suffix(node_rank: int) -> str:
    """What a node's own files in a run folder carry (a shared folder holds every node's)."""
    return "" if node_rank == 0 else f".node{node_rank}"


def done_marker(out: Path, name: str, node_rank: int = 0) -> Path:
    return Path(out) / name / f"DONE{node_suffix(node_rank)}"


# single-process runs: node 0 runs them, the other nodes only the training jobs
NODE0_KINDS = ("lite_cnn", "localize", "report")


def run_port(p: Plan, name: str, base: int) -> int:
    """The rendezvous port of run ``name``: ``base`` + its place among the plan's run names,
    so that two runs never meet on one port (every node computes the same number)."""
    return base + sorted(p.runs).index(name)


def settings_digest(config: dict) -> str:
    """The digest of a resolved configuration that the ranks of a job and a rerun into the
    same --out must share (location settings reduced to their last path component)."""
    from .engine.distributed import job_identity

    return job_identity(config, "", "", False)["settings"]


def _flat_settings(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_diff(before: dict, now: dict, limit: int = 4) -> str:
    """``section.field before -> now`` for the settings that differ (at most ``limit``)."""
    a, b = (
        _flat_settings(json.loads(json.dumps(before))),
        _flat_settings(json.loads(json.dumps(now))),
    )
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def plan_schedule(p: Plan, name: str) -> tuple[int, int]:
    """(epochs, max_steps) that the plan itself sets for training run ``name`` (the preset
    and the plan's overrides; the user's --set is not the plan)."""
    run = p.runs[name]
    tc = getattr(get_config(p.preset), run.kind)
    epochs, max_steps = tc.epochs, tc.max_steps
    for o in run.overrides:
        key, _, value = o.partition("=")
        if key == f"{run.kind}.epochs":
            epochs = int(value)
        elif key == f"{run.kind}.max_steps":
            max_steps = int(value)
    return epochs, max_steps


def trained_record(p: Plan, name: str, run_dir: Path) -> dict:
    """What run ``name`` trained (its log's ``plan`` and ``end`` records) against the plan's
    schedule: steps, fractional epochs, images seen, the plan's steps and epochs, what
    stopped it and ``complete`` (False: stopped before the plan's end, e.g. by a max_steps
    budget given with --set). Empty when the log (rank 0's) is not in this folder."""
    from .report import read_jsonl

    log = run_dir / "log.jsonl"
    records = read_jsonl(log) if log.exists() else []
    plan_rec = next((r for r in records if r.get("type") == "plan"), None)
    end = next((r for r in reversed(records) if r.get("type") == "end"), None)
    if plan_rec is None or end is None:
        return {}
    epochs, max_steps = plan_schedule(p, name)
    spe = plan_rec["steps_per_epoch"]
    plan_steps = epochs * spe if max_steps <= 0 else min(max_steps, epochs * spe)
    return {
        "steps": end["steps"],
        "epochs": round(end["epochs_trained"], 4),
        "images_seen": end["images_seen"],
        "plan_steps": plan_steps,
        "plan_epochs": round(plan_steps / spe, 4),
        "stopped_by": end["stopped_by"],
        "complete": end["steps"] >= plan_steps,
    }


def check_not_mixed(p: Plan, names: list[str], out: Path, overrides, node_rank: int = 0):
    """Refuse (ReproduceError) to continue or skip a training run whose folder holds a run
    of other settings (its DONE or, unfinished, its config.json): a dry run shortened with
    --set ...max_steps must never pass for the full run of a later command."""
    for n in names:
        if p.runs[n].kind not in ("pretrain", "finetune"):
            continue
        d, marker = Path(out) / n, done_marker(out, n, node_rank)
        before, done = None, {}
        try:
            if marker.exists():
                done = json.loads(marker.read_text() or "{}")
                before = done.get("config")
            elif (d / "config.json").exists():
                before = json.loads((d / "config.json").read_text())
        except ValueError:
            continue
        if before is None:
            continue  # a DONE of an older kit: nothing to compare
        now = run_config(p, n, out, overrides).to_dict()
        if settings_digest(before) == settings_digest(now):
            continue
        short = f"; it {trained_label(done)}" if done.get("complete") is False else ""
        raise ReproduceError(
            f"{d} holds a run with other settings ({settings_diff(before, now)}){short}: "
            f"not mixing it with this command's; use another --out, or delete {d} to rerun it"
        )


def trained_label(t: dict) -> str:
    """'stopped by max_steps at step 2 of the plan's 300000 (0.0007 of 60 epochs)'."""
    return (
        f"stopped by {t.get('stopped_by', '?')} at step {t.get('steps')} of the plan's "
        f"{t.get('plan_steps')} ({t.get('epochs')} of {t.get('plan_epochs')} epochs, "
        f"{t.get('images_seen')} images)"
    )


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
            # receive its checkpoint, cli._join_job)
            resume=(run_dir / "last.pth").exists(),
            gpus=launch.gpus,
            nodes=launch.nodes,
            node_rank=launch.node_rank,
            master_addr=launch.master_addr,
            master_port=run_port(p, name, launch.master_port),
        )
    if run.kind == "lite_cnn":
        budget = LITE_BUDGET if p.scale == "lite" else SMOKE_BUDGET
        params.update({k: budget[k] for k in ("cnn_steps", "cnn_images", "cnn_batch")})
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
    env = _child_env(launch.threads)
    with open(pm_log, "w") as log:
        try:
            rc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            log.write(f"\n[reproduce] timed out after {timeout} s\n")
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
) -> dict[str, Result]:
    """Plan, check the inputs, execute. Returns each run's Result."""
    p = plan(scale)
    names = p.runs_for(only)
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


def run_main(preset: str = "lite", out: str | Path = "runs/main", extra_overrides=()) -> int:
    """The README's main job: lite CNN, C1 (Table 1, Figure 1), C4 (Figure 6), C5
    (Figure 5) and the report. Returns a process exit code (1 if a run failed)."""
    results = reproduce(preset, out, list(MAIN_ARTEFACTS), list(extra_overrides or ()))
    print(f"[updetr-lite main] report: {Path(out).resolve() / 'report' / 'report.md'}")
    return int(any(r.status in ("failed", "blocked") for r in results.values()))
