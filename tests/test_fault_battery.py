"""A table of bad inputs, each with the one-line message (or skip count) it must give.

Every row runs in well under a second: settings are refused by ``Config.validate`` before any
work starts, data readers and checkpoint loaders fail (or count a skip) at once, and nothing
here trains a model. The longer fault tests (kills, resumes, NaN during training) are in
tests/test_faults.py.
"""

import json

import pytest

from updetr_lite.cli import main

SMOKE = ["--preset", "smoke"]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    assert code != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("updetr-lite: error:"), err
    assert "Traceback" not in err and "rerun with --debug" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# --------------------------------------------------------------------------- settings

# (override, fragments of the one-line error): each must be refused by Config.validate
SETTINGS = [
    ("pretrain.log_every=0", ["pretrain.log_every=0", ">= 1"]),
    ("pretrain.lr_drop=0", ["pretrain.lr_drop=0", ">= 1"]),
    ("finetune.eval_every=0", ["finetune.eval_every=0", ">= 1"]),
    ("model.nheads=0", ["model.nheads=0"]),
    ("model.num_queries=0", ["model.num_queries=0"]),
    ("pretext.min_patch=0", ["pretext.min_patch=0"]),
    ("pretrain.amp=yes", ["pretrain.amp='yes'", "True or False"]),
    ("pretrain.lr=abc", ["pretrain.lr='abc'", "a number"]),
    ("data.pretext_scales=64", ["data.pretext_scales=64", "tuple of integers"]),
    ("model.hidden_dim=34.0", ["model.hidden_dim=34.0", "an integer"]),
    ("pretrain.epochs=-1", ["pretrain.epochs=-1"]),
    ("finetune.epochs=0", ["finetune.epochs=0"]),
    ("finetune.batch_size=-4", ["finetune.batch_size=-4"]),
    ("model.dropout=1.5", ["model.dropout=1.5", "< 1.0"]),
    ("pretext.patch_dropout=-0.1", ["pretext.patch_dropout=-0.1"]),
    ("loss.giou=-2", ["loss.giou=-2"]),
    ("pretrain.lr=-1e-4", ["pretrain.lr=-0.0001"]),
    ("data.crop_min_max=(600,384)", ["data.crop_min_max", "min must be <= max"]),
    ("data.crop_min_max=(384,)", ["data.crop_min_max", "pair of integers"]),
    ("data.scales=()", ["data.scales=()"]),
    ("data.test_size=0", ["data.test_size=0"]),
    ("data.num_workers=-1", ["data.num_workers=-1"]),
    ("data.detection=kitti", ["data.detection", "kitti", "embedded, coco, voc"]),
    ("model.backbone_layer=layer5", ["model.backbone_layer", "layer5"]),
    ("pretext.patch_feature=pixels", ["pretext.patch_feature", "pixels"]),
    ("model.backbone_weights=3", ["model.backbone_weights=3"]),
    ("pretrain.seed=-1", ["pretrain.seed=-1"]),
    ("pretrain.max_steps=2.5", ["pretrain.max_steps=2.5", "an integer"]),
    ("model.frozen_cnn=1", ["model.frozen_cnn=1", "True or False"]),
    ("pretext.patch_size=1", ["pretext.patch_size=1", ">= 2"]),
    ("model.num_queries=7", ["N=7", "M=2"]),
    ("model.hidden_dim=30", ["model.hidden_dim=30", "multiple of 4"]),
    ("model.hidden_dim=36 model.nheads=8", ["hidden_dim 36", "nheads 8"]),
]


@pytest.mark.parametrize("override,fragments", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_bad_setting_is_refused_before_any_work(override, fragments, capsys, tmp_path):
    out = tmp_path / "run"
    sets = [a for o in override.split() for a in ("--set", o)]
    code, _, err = run(["pretrain", *SMOKE, *sets, "--out", str(out)], capsys)
    one_line_error(code, err, *fragments)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["evaluate", "--checkpoint", "x.pth", "--batch", "0"], ["--batch", "'0'"]),
        (["bench", *SMOKE, "--steps", "-1"], ["--steps", "'-1'"]),
    ],
)
def test_bad_command_line_number(argv, fragments, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    one_line_error(code, err, *fragments)


def test_validate_runs_on_a_config_changed_after_get_config(tmp_path):
    from updetr_lite.config import ConfigError, get_config
    from updetr_lite.engine.train import train

    cfg = get_config("smoke")
    cfg.pretrain.log_every = 0
    with pytest.raises(ConfigError, match="pretrain.log_every=0"):
        train(cfg, "pretrain", tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    assert json.loads(get_config("smoke").to_json())["pretrain"]["log_every"] == 10
