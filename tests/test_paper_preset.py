"""The paper preset and the driver's paper runs hold the paper's numbers.

The expected values are typed here from the paper's sections 3-4 and tables (and the
authors' release where the paper is silent), independently of updetr_lite/presets.py and
reproduce/plan.py, reproduce/paper_plan.py.
"""

from pathlib import Path

import pytest

from reproduce.plan import plan, run_config
from updetr_lite.presets import paper

# reference-facts.md, "Pre-training" and "Fine-tuning"
PAPER_MODEL = {
    "backbone": "resnet50",
    "backbone_layer": "layer4",
    "frozen_cnn": True,
    "hidden_dim": 256,
    "nheads": 8,
    "enc_layers": 6,
    "dec_layers": 6,
    "dim_feedforward": 2048,
    "dropout": 0.1,
    "pre_norm": True,
    "num_queries": 100,
    "aux_loss": True,
}
PAPER_PRETEXT = {
    "num_patches": 10,
    "patch_size": 128,
    "attention_mask": True,
    "query_shuffle": True,
    "patch_dropout": 0.1,
    "reconstruction": True,
    "patch_feature": "crop",
    "min_patch": 8,
}
PAPER_LOSS = {"ce": 1.0, "bbox": 5.0, "giou": 2.0, "rec": 1.0, "eos_coef": 0.1}
PAPER_COSTS = {"cost_class": 1.0, "cost_bbox": 5.0, "cost_giou": 2.0}
PRETRAIN = {"epochs": 60, "lr_drop": 40, "lr": 1e-4, "lr_backbone": 0.0, "batch_size": 256}
FINETUNE_SHORT = {"epochs": 150, "lr_drop": 100, "lr": 1e-4, "lr_backbone": 5e-5}
FINETUNE_LONG = {"epochs": 300, "lr_drop": 200}
ABLATION_PRETRAIN = {"epochs": 15, "lr_drop": 10}
FINETUNE_BATCH = 4 * 8  # 4 images per GPU on 8 GPUs


def test_paper_preset_model_pretext_and_losses():
    c = paper()
    for k, v in PAPER_MODEL.items():
        assert getattr(c.model, k) == v, f"model.{k}"
    for k, v in PAPER_PRETEXT.items():
        assert getattr(c.pretext, k) == v, f"pretext.{k}"
    for k, v in {**PAPER_LOSS, **PAPER_COSTS}.items():
        assert getattr(c.loss, k) == pytest.approx(v), f"loss.{k}"
    # balance weight M/N = 10/100 = DETR's eos_coef 0.1
    assert c.pretext.num_patches / c.model.num_queries == pytest.approx(0.1)
    assert c.model.num_classes - 1 == 20  # VOC's 20 classes (id 0 unused) + no-object added


def test_paper_preset_data_and_schedules():
    c = paper()
    assert tuple(c.data.pretext_scales) == tuple(range(320, 481, 16))
    assert c.data.pretext_max_size == 600
    assert tuple(c.data.scales) == tuple(range(480, 801, 32))
    assert c.data.max_size == 1333
    assert tuple(c.data.crop_min_max) == (384, 600)
    assert c.data.detection == "voc"
    for k, v in PRETRAIN.items():
        assert getattr(c.pretrain, k) == pytest.approx(v), f"pretrain.{k}"
    for k, v in FINETUNE_SHORT.items():
        assert getattr(c.finetune, k) == pytest.approx(v), f"finetune.{k}"
    assert c.finetune.batch_size == FINETUNE_BATCH
    for tc in (c.pretrain, c.finetune):
        assert tc.weight_decay == pytest.approx(1e-4)
        assert tc.clip_max_norm == pytest.approx(0.1)
        assert tc.max_steps == 0 and not tc.cache_features  # epochs, images: the paper's way


def _resolved(name, out, overrides=()):
    p = plan("paper")
    return run_config(p, name, out, list(overrides))


def test_paper_runs_use_the_papers_schedules(tmp_path):
    p = plan("paper")
    assert p.preset == "paper" and p.x_key == "epoch"
    pre = _resolved("pre_imagenet", tmp_path)
    for k, v in PRETRAIN.items():
        assert getattr(pre.pretrain, k) == pytest.approx(v), f"pre_imagenet pretrain.{k}"
    assert pre.pretext.num_patches == 10 and pre.model.num_queries == 100
    for name, run in p.runs.items():
        if run.kind != "finetune":
            continue
        c = _resolved(name, tmp_path)
        schedule = FINETUNE_LONG if name.endswith("_long") else FINETUNE_SHORT
        for k, v in schedule.items():
            assert getattr(c.finetune, k) == pytest.approx(v), f"{name} finetune.{k}"
        assert c.finetune.lr == pytest.approx(1e-4) and c.finetune.lr_backbone == 5e-5, name
        assert c.finetune.batch_size == FINETUNE_BATCH, name
        # UP-DETR fine-tunes start from a pre-training, DETR from scratch transformers
        assert (run.init is not None) == ("updetr" in name or "_abl_" in name), name
        if run.init:
            assert p.runs[run.init].kind == "pretrain"
    # Table 2 runs are COCO with its 91 ids
    for name in ("ft_coco_detr_short", "ft_coco_updetr_long"):
        c = _resolved(name, tmp_path)
        assert c.data.detection == "coco" and c.model.num_classes == 91


def test_paper_ablations_match_tables_3_and_4(tmp_path):
    p = plan("paper")
    expect = {  # run: (M, frozen CNN, reconstruction, attention mask)
        "pre_abl_m1": (1, True, True, True),
        "pre_abl_d": (10, True, True, True),
        "pre_abl_b": (10, True, False, True),
        "pre_abl_a": (10, False, False, True),
        "pre_abl_c": (10, False, True, True),
        "pre_abl_nomask": (10, True, True, False),
    }
    for name, (m, frozen, rec, mask) in expect.items():
        c = _resolved(name, tmp_path)
        assert (c.pretrain.epochs, c.pretrain.lr_drop) == (15, 10), name
        assert c.pretext.num_patches == m, name
        # a CNN trains only when not frozen and given a learning rate
        trains = (not c.model.frozen_cnn) and c.pretrain.lr_backbone > 0
        assert trains == (not frozen), name
        assert c.pretext.reconstruction == rec and c.pretext.attention_mask == mask, name
    # Table 3 compares M=1 and M=10 fine-tunes, Table 4 (a)-(d), each 150 epochs from these
    t3 = [r.runs[0] for r in p.artefacts["table3"]]
    assert [p.runs[n].init for n in t3] == [None, "pre_abl_m1", "pre_abl_d"]
    t4 = [p.runs[r.runs[0]].init for r in p.artefacts["table4"]]
    assert t4 == [None, "pre_abl_a", "pre_abl_b", "pre_abl_c", "pre_abl_d"]
    assert [r.runs for r in p.artefacts["fig6"]] == [("pre_abl_d",), ("pre_abl_nomask",)]


def test_paper_scale_without_data_names_the_missing_path(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "reproduce_run", Path(__file__).resolve().parents[1] / "reproduce" / "run.py"
    )
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    out = str(tmp_path / "out")
    assert run.main(["--scale", "paper", "--only", "table1", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "data.pretext_root" in err and "image-net.org" in err
    imagenet = tmp_path / "imagenet"
    imagenet.mkdir()
    args = ["--scale", "paper", "--only", "table1", "--out", out]
    assert run.main(args + ["--set", f"data.pretext_root={imagenet}"]) == 2
    err = capsys.readouterr().err
    assert "data.detection_root" in err and "VOC" in err
    voc = tmp_path / "VOCdevkit"
    voc.mkdir()
    both = ["--set", f"data.pretext_root={imagenet}", f"data.detection_root={voc}"]
    assert run.main(args + both) == 2
    err = capsys.readouterr().err
    assert "model.backbone_weights" in err and "swav" in err.lower()
    # Table 2 needs COCO as well
    swav = tmp_path / "swav.pth"
    swav.write_bytes(b"")
    full = both + [f"model.backbone_weights={swav}"]
    assert run.main(["--scale", "paper", "--only", "table2", "--out", out, *full]) == 2
    assert "--coco-root" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
