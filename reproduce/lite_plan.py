"""The lite plan (the embedded data on a CPU) and the smoke plan (the same runs at toy size):
which pre-trainings and fine-tunings each artefact needs, and their step budgets."""

from __future__ import annotations

import math

from updetr_lite.config import get_config

from .plan import Plan, Row, Run, table4_rows

# ----------------------------------------------------------------------------- plans

# Step budgets of the lite scale (2-core CPU, cached features; see reproduce/README.md for
# the measured timings these come from).
LITE_BUDGET = {
    # the lite CNN: the plan copies the shipped one (updetr_lite/lite_cnn/), which
    # `python -m reproduce.lite_cnn --out DIR --threads 1` trained with these: batch 32 of
    # 128 px images, fp32 (model.cnn_bf16=False), per-cell classes and box edges
    "cnn_shipped": True,
    "cnn_steps": 1800,
    "cnn_images": 3000,  # its separate generated training set
    "cnn_batch": 32,
    "cnn_box_weight": 1.0,  # weight of the per-cell box-edge loss (lite_cnn.cell_box_targets)
    "pretrain_steps": 1500,
    "finetune_steps": 800,
    "steps_per_epoch_ft": 1000 / 32,  # embedded_train / batch
}
# what a lite-CNN run is given
CNN_BUDGET_KEYS = ("cnn_steps", "cnn_images", "cnn_batch", "cnn_box_weight")
SMOKE_BUDGET = {
    "cnn_shipped": False,
    "cnn_steps": 3,
    "cnn_images": 16,
    "cnn_batch": 8,
    "cnn_box_weight": 1.0,
}
SEEDS = (0, 1, 2)  # every arm of every table and figure


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


def small_plan(scale: str) -> Plan:
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
        # a CNN that trains runs forward and backward over the images and the crops
        cost = 5.0 if "model.frozen_cnn=False" in ov else 1.0
        runs[full] = Run(
            full, "pretrain", tuple(pre_steps) + ov + (f"pretrain.seed={seed}",), None,
            ("cnn",), seed, cost=cost,
        )  # fmt: skip
        return full

    def ft(name: str, seed: int, init: str | None) -> str:
        full = f"ft_{name}_s{seed}"
        needs = ("cnn",) + ((init,) if init else ())
        runs[full] = Run(
            full, "finetune", tuple(ft_steps) + (f"finetune.seed={seed}",), init, needs, seed
        )
        return full

    # the main arm is the preset's: the paper's patch feature ('crop', from the cached bank)
    scratch = tuple(ft("scratch", s, None) for s in SEEDS)
    pre_crop = [pre("pre_crop", s, crop) for s in SEEDS]
    ft_crop = tuple(ft("crop", s, pre_crop[s]) for s in SEEDS)
    pre_roi = [pre("pre_roi", s, roi) for s in SEEDS]
    ft_roi = tuple(ft("roi", s, pre_roi[s]) for s in SEEDS)
    nomask = tuple(pre("pre_nomask", s, crop, "pretext.attention_mask=False") for s in SEEDS)
    m1 = [pre("pre_m1", s, crop, "pretext.num_patches=1") for s in SEEDS]
    ft_m1 = tuple(ft("m1", s, m1[s]) for s in SEEDS)
    cfg = get_config(scale)
    unfrozen = (
        "model.frozen_cnn=False",
        f"pretrain.lr_backbone={cfg.pretrain.lr / 2}",
        "pretrain.cache_features=False",
    )  # fp32 as every lite run (bf16 autocast would make the numbers depend on the CPU)
    norec = "pretext.reconstruction=False"
    abl_b = [pre("pre_norec", s, crop, norec) for s in SEEDS]
    abl_a = [pre("pre_unfrozen_norec", s, crop, norec, *unfrozen) for s in SEEDS]
    abl_c = [pre("pre_unfrozen", s, crop, *unfrozen) for s in SEEDS]
    ft_b = tuple(ft("norec", s, abl_b[s]) for s in SEEDS)
    ft_a = tuple(ft("unfrozen_norec", s, abl_a[s]) for s in SEEDS)
    ft_c = tuple(ft("unfrozen", s, abl_c[s]) for s in SEEDS)
    # the authors' release does not shuffle the object queries (the paper and the preset do)
    pre_noshuf = [pre("pre_noshuffle", s, crop, "pretext.query_shuffle=False") for s in SEEDS]
    ft_noshuf = tuple(ft("noshuffle", s, pre_noshuf[s]) for s in SEEDS)
    runs["localize"] = Run("localize", "localize", needs=tuple(pre_crop) + nomask)
    runs["report"] = Run("report", "report")

    detr = "DETR (scratch transformers)"
    crop_row = "UP-DETR (the paper's crop patch feature)"
    t1 = [
        Row(detr, scratch, "table1/DETR/150"),
        Row(crop_row, ft_crop, "table1/UP-DETR/150", vs=(detr,)),
    ]
    artefacts = {
        "table1": t1,
        "fig1": t1,
        "fig3": t1,
        "table2": [],
        "table3": [
            Row("DETR", scratch, "table3/DETR"),
            Row("UP-DETR (M=1)", ft_m1, "table3/M=1", ("DETR",)),
            Row("UP-DETR (M=4, N=20)", ft_crop, "table3/M=10", ("UP-DETR (M=1)", "DETR")),
        ],
        "table4": table4_rows(
            detr,
            scratch,
            ("(a) CNN trains, no reconstruction", ft_a),
            ("(b) frozen CNN, no reconstruction", ft_b),
            ("(c) CNN trains, reconstruction", ft_c),
            ("(d) frozen CNN, reconstruction", ft_crop),
        )
        # the lite variant of the patch feature and the authors' release's pretext, beside
        # the paper's (d)
        + [
            Row(
                "(e) = (d) with the 'roi' patch feature",
                ft_roi,
                None,
                (detr, "(d) frozen CNN, reconstruction"),
            ),
            Row(
                "(f) = (d) without the object query shuffle (the authors' release)",
                ft_noshuf,
                None,
                (detr, "(d) frozen CNN, reconstruction"),
            ),
        ],
        "fig6": [
            Row("with attention mask", tuple(pre_crop)),
            Row("without attention mask", nomask),
        ],
        "fig5": [
            Row("UP-DETR (crop patch feature, M=4)", tuple(pre_crop)),
            Row("UP-DETR, no attention mask", nomask),
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
            "ResNet-18 cut at layer3 trained by the kit on the per-cell classes and box edges of "
            "a separate generated set (supervised stand-in for SwAV), the paper's transformer "
            "at width 128 (3 encoder + 3 decoder layers, pre-norm) with LayerScale 0.1 on the encoder blocks, N=20 queries, M=4 "
            "query patches whose feature is the CNN on the crop (a cached bank of 16 per "
            "image), cached CNN maps, everything in fp32; budgets in optimizer steps. Numbers "
            "on this data say nothing about VOC or COCO."
        ),
        "table1": (
            (
                f"Equal budgets for every arm: {b['finetune_steps']} fine-tuning steps of batch "
                f"32 (lr 1e-3 after a 100-step warm-up, x0.1 at 80 %), pre-training "
                f"{b['pretrain_steps']} steps of batch 32. "
                if lite
                else ""
            )
            + "Seed s = pre-training seed s and fine-tuning seed s."
        ),
        "table2": "COCO is not part of the lite scale: Table 2 needs --scale paper.",
        "table3": "Lite N=20 cannot hold M=10 groups of equal size: M=4 (5 queries a patch) "
        "stands for the paper's M=10 (10 a patch).",
        "table4": "Lite ablations pre-train as long as the main arm (the paper: 15 of 60 "
        "epochs); a CNN that trains is fed the images and the crops, not "
        "cached features.",
        "fig6": "Pretext loss (the criterion's weighted total) per step.",
    }
    return Plan(scale, scale, runs, artefacts, notes, "step")
