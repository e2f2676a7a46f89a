"""The paper-scale plan: the paper's runs (ImageNet pre-training, VOC and COCO fine-tuning,
the ablations) at the paper's schedules."""

from __future__ import annotations

from .plan import Plan, Row, Run, table4_rows

# The paper's schedules (reference-facts.md): pre-training 60 epochs (drop 40), ablations 15
# (drop 10); fine-tuning 150 (drop 100) or 300 (drop 200) epochs.
PAPER_SCHEDULES = {
    "pretrain": (60, 40),
    "ablation": (15, 10),
    "short": (150, 100),
    "long": (300, 200),
}


def paper_plan() -> Plan:
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
