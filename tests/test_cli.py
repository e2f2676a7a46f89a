"""The updetr-lite command line: info's numbers, and one-line errors without tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from updetr_lite.cli import main
from updetr_lite.config import get_config
from updetr_lite.engine.checkpoint import atomic_save
from updetr_lite.models import build_detr, build_updetr, parameter_counts

ROOT = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_counts_match_models(capsys):
    code, out, err = run(["info", "--preset", "smoke", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    cfg = get_config("smoke")
    assert info["config"] == json.loads(cfg.to_json())
    detr, updetr = build_detr(cfg), build_updetr(cfg)
    assert info["parameters"]["detector"] == parameter_counts(detr)
    assert info["parameters"]["pretext"] == parameter_counts(updetr)
    # independent count: every parameter of each model, and the CNN's own
    assert info["parameters"]["detector"]["total"] == sum(p.numel() for p in detr.parameters())
    assert info["parameters"]["pretext"]["backbone"] == sum(
        p.numel() for p in updetr.backbone.parameters()
    )


def test_info_applies_overrides(capsys):
    code, out, _ = run(
        ["info", "--preset", "smoke", "--json", "--set", "model.num_queries=12"], capsys
    )
    assert code == 0
    info = json.loads(out)
    assert info["config"]["model"]["num_queries"] == 12
    cfg = get_config("smoke", ["model.num_queries=12"])
    assert info["parameters"]["detector"] == parameter_counts(build_detr(cfg))


def _check_one_line_error(code, err, *words):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("updetr-lite: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize(
    "argv,words",
    [
        (["info", "--preset", "smoke", "--set", "model.num_queries=7"], ["N=7", "M=2"]),
        (["info", "--preset", "smoke", "--set", "model.backbone=vgg16"], ["vgg16", "backbone"]),
        (["info", "--preset", "nope"], ["nope", "preset"]),
        (["info", "--preset", "smoke", "--set", "model.nonsense=1"], ["model.nonsense"]),
        (["evaluate", "--checkpoint", "/no/such/ckpt.pth"], ["/no/such/ckpt.pth"]),
        (["localize", "--checkpoint", "x.pth"], ["--image"]),  # argparse: one line too
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_bad_input_is_one_line(argv, words, capsys):
    code, _, err = run(argv, capsys)
    _check_one_line_error(code, err, *words)


def test_debug_shows_traceback(capsys):
    code, _, err = run(["evaluate", "--checkpoint", "/no/such/ckpt.pth", "--debug"], capsys)
    assert code != 0
    assert "Traceback" in err and "FileNotFoundError" in err
    assert err.strip().splitlines()[-1].startswith("updetr-lite: error:")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    cfg = get_config("smoke")
    torch.manual_seed(0)
    pre, det = build_updetr(cfg), build_detr(cfg)
    atomic_save(
        {"kind": "pretext", "num_classes": 2, "model": pre.state_dict(), "config": cfg.to_dict()},
        d / "pre.pth",
    )
    atomic_save(
        {
            "kind": "detection",
            "num_classes": cfg.model.num_classes,
            "model": det.state_dict(),
            "config": cfg.to_dict(),
        },
        d / "det.pth",
    )
    return d


def test_wrong_kind_and_class_count(checkpoints, tmp_path, capsys):
    pre, det = str(checkpoints / "pre.pth"), str(checkpoints / "det.pth")
    code, _, err = run(["evaluate", "--checkpoint", pre], capsys)
    _check_one_line_error(code, err, "pretext", "detection")
    code, _, err = run(["evaluate", "--checkpoint", det, "--set", "model.num_classes=9"], capsys)
    _check_one_line_error(code, err, "6 classes", "num_classes=9")
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(img)
    code, _, err = run(
        ["localize", "--checkpoint", det, "--image", str(img), "--box", "0,0,10,10"], capsys
    )
    _check_one_line_error(code, err, "detection", "pretext")


def test_batch_smaller_than_processes(tmp_path, capsys):
    code, _, err = run(
        ["finetune", "--preset", "smoke", "--set", "finetune.batch_size=0", "--out", str(tmp_path)],
        capsys,
    )
    _check_one_line_error(code, err, "finetune.batch_size=0")


def test_init_must_exist(tmp_path, capsys):
    code, _, err = run(
        ["finetune", "--preset", "smoke", "--init", str(tmp_path / "missing.pth")], capsys
    )
    _check_one_line_error(code, err, "missing.pth")


def test_module_entry_point_subprocess():
    """``python -m updetr_lite`` as a real process: exit code and stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(
        [sys.executable, "-m", "updetr_lite", "info", "--preset", "smoke", "--set",
         "model.num_queries=9"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "updetr-lite: error: num_queries N=9 must be divisible by num_patches M=2"
    ]


@pytest.mark.parametrize("option", [["--preset", "paper"], ["--set", "pretext.num_patches=3"]])
def test_notebooks_rejects_options_it_does_not_use(option, capsys):
    # The notebooks choose their own settings: an accepted-but-ignored --preset would let
    # a user believe notebook 01 ran the paper's M = 10.
    code, _, err = run(["notebooks", "--only", "01", *option], capsys)
    assert code == 2
    assert option[0] in err


# the authors' UP-DETR key names for this kit's pretext-only layers
AUTHORS = {
    "patch_proj.": "patch2query.",
    "reconstruction_head.0.": "feature_align.layers.0.",
    "reconstruction_head.2.": "feature_align.layers.1.",
}


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory):
    """A pre-training checkpoint as the authors' release saves it: {'model', 'args', ...} with
    patch2query.* / feature_align.layers.*, plus a torchvision ResNet-18 file for the CNN."""
    import argparse

    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    d = tmp_path_factory.mktemp("authors")
    cfg = get_config("smoke")
    torch.manual_seed(0)
    state = {}
    for key, value in build_updetr(cfg).state_dict().items():
        for ours, theirs in AUTHORS.items():
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
        state[key] = value
    m = cfg.model
    args = argparse.Namespace(
        backbone=m.backbone, hidden_dim=m.hidden_dim, nheads=m.nheads, enc_layers=m.enc_layers,
        dec_layers=m.dec_layers, dim_feedforward=m.dim_feedforward, pre_norm=m.pre_norm,
        num_queries=m.num_queries, num_patches=cfg.pretext.num_patches, lr=1e-4,
    )  # fmt: skip
    torch.save({"model": state, "args": args, "epoch": 59, "optimizer": {}}, d / "updetr.pth")
    cnn = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d).state_dict()
    torch.save(cnn, d / "resnet18.pth")
    return {"dir": d, "ckpt": d / "updetr.pth", "state": state, "cnn": cnn}


def _finetune_argv(files, out, *sets):
    return ["finetune", "--preset", "smoke", "--init", str(files["ckpt"]), "--out", str(out)] + [
        x
        for s in (
            f"data.cache_dir={str(files['dir'] / 'cache')!r}",
            f"model.backbone_weights={str(files['dir'] / 'resnet18.pth')!r}",
            "finetune.epochs=1",
            "finetune.max_steps=1",
            *sets,
        )
        for x in ("--set", s)
    ]


def test_finetune_init_from_authors_checkpoint(authors_file, tmp_path, capsys):
    """The authors' release fine-tunes from the CLI: classed as pretext, exactly the class head
    and the two pretext-only layers dropped, every other tensor loaded; the CNN load report is
    printed and logged. lr 0: the saved model must be the file's tensors exactly."""
    out = tmp_path / "ft"
    code, stdout, err = run(_finetune_argv(authors_file, out, "finetune.lr=0.0"), capsys)
    assert code == 0, err
    state = authors_file["state"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    (init,) = [r for r in records if r["type"] == "init"]
    assert init["dropped"] == sorted(
        k for k in state if k.startswith(("class_embed.", "patch2query.", "feature_align."))
    )
    assert len(init["dropped"]) == 2 + 2 + 4 and init["new"] == [
        "class_embed.bias",
        "class_embed.weight",
    ]
    saved = torch.load(out / "last.pth", weights_only=False)["model"]
    kept = {k: v for k, v in state.items() if k not in init["dropped"]}
    assert set(saved) - set(kept) == {"class_embed.weight", "class_embed.bias"}
    for key, value in kept.items():
        assert torch.equal(saved[key], value), key
    # the CNN report, counted from the ResNet-18 file (smoke stops at layer3)
    cnn = authors_file["cnn"]
    after = [k for k in cnn if k.startswith("layer4.")]
    fc = [k for k in cnn if k.startswith("fc.")]
    (rec,) = [r for r in records if r["type"] == "cnn_weights"]
    assert rec["format"] == "torchvision" and rec["loaded"] == len(cnn) - len(after) - len(fc)
    assert rec["ignored"] == {"after layer3": len(after), "classifier (fc)": len(fc)}
    assert f"CNN weights: {rec['path']} (torchvision format): {rec['loaded']} tensors loaded" in (
        stdout
    )


def test_finetune_init_settings_mismatch_is_named(authors_file, tmp_path, capsys):
    """Fine-tuning with settings other than the file's: a one-line error naming the setting,
    not a silent dropped-keys line."""
    code, _, err = run(_finetune_argv(authors_file, tmp_path / "a", "model.pre_norm=False"), capsys)
    _check_one_line_error(code, err, "model.pre_norm=False here, True in the file")
    assert not (tmp_path / "a" / "last.pth").exists()
