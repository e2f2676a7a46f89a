"""A table of bad inputs, each with the one-line message (or skip count) it must give.

Every row runs in well under a second: settings are refused by ``Config.validate`` before any
work starts, data readers and checkpoint loaders fail (or count a skip) at once, and nothing
here trains a model. The longer fault tests (kills, resumes, NaN during training) are in
tests/test_faults.py.
"""

import json
from pathlib import Path

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


# --------------------------------------------------------------------------- COCO files


def _coco(tmp_path, sizes=((40, 30), (50, 40))):
    """Two images (w, h) on disk and a valid COCO dict for them."""
    from PIL import Image

    (tmp_path / "imgs").mkdir(exist_ok=True)
    images, anns = [], []
    for i, (w, h) in enumerate(sizes, start=1):
        Image.new("RGB", (w, h), (20 * i, 90, 140)).save(tmp_path / "imgs" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 8]})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}


def _set(path, value):
    """A function that sets d[path[0]][path[1]]... = value (or deletes it: value DELETE)."""

    def edit(d):
        node = d
        for k in path[:-1]:
            node = node[k]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return d

    return edit


DELETE = object()

# (name, edit of the valid dict (or raw text), fragments of the error)
COCO_ERRORS = [
    ("images empty", _set(["images"], []), ["no images"]),
    ("images a dict", _set(["images"], {}), ["'images' must be a list"]),
    ("top level a list", lambda d: [d], ["top level is not an object"]),
    ("no categories", _set(["categories"], DELETE), ["not a COCO annotation file"]),
    ("3-number bbox", _set(["annotations", 0, "bbox"], [1, 2, 3]), ["four finite numbers"]),
    ("text in bbox", _set(["annotations", 1, "bbox"], [1, "a", 3, 4]), ["annotation #1 (id 2)"]),
    ("image without id", _set(["images", 0, "id"], DELETE), ["image entry #0", "'id'"]),
    ("image id twice", _set(["images", 1, "id"], 1), ["image id 1 is listed twice"]),
    ("width 0", _set(["images", 0, "width"], 0), ["'width' must be a positive integer"]),
    ("no file_name", _set(["images", 1, "file_name"], DELETE), ["image id 2 has no 'file_name'"]),
    ("no category_id", _set(["annotations", 0, "category_id"], DELETE), ["'category_id'"]),
    ("no image_id", _set(["annotations", 0, "image_id"], "1"), ["'image_id'"]),
    ("category without id", _set(["categories", 0], {"name": "x"}), ["category entry #0"]),
    ("malformed JSON", '{"images": [', ["malformed JSON"]),
    ("all too wide", lambda d: _coco_wide(d), ["no usable image", "aspect ratio over 20"]),
]


def _coco_wide(d):
    for im in d["images"]:
        im["width"], im["height"] = 2000, 20
    return d


@pytest.mark.parametrize("name,edit,fragments", COCO_ERRORS, ids=[r[0] for r in COCO_ERRORS])
def test_bad_coco_file_is_one_error_naming_it(name, edit, fragments, tmp_path):
    from updetr_lite.data.coco import AnnotationError, CocoDetection

    d = _coco(tmp_path)
    text = edit if isinstance(edit, str) else json.dumps(edit(d))
    (tmp_path / "ann.json").write_text(text)
    with pytest.raises(AnnotationError) as info:
        CocoDetection(tmp_path / "imgs", tmp_path / "ann.json")
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "ann.json") in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


def _unreadable(tmp_path, d):
    (tmp_path / "imgs" / "2.png").write_bytes(b"not a png")
    return d


def _missing(tmp_path, d):
    (tmp_path / "imgs" / "2.png").unlink()
    return d


def _resized(tmp_path, d):  # the JSON says 50x40, the file is 100x80
    from PIL import Image

    Image.new("RGB", (100, 80)).save(tmp_path / "imgs" / "2.png")
    return d


def _unknown_image(tmp_path, d):
    d["annotations"].append({"id": 9, "image_id": 77, "category_id": 1, "bbox": [1, 1, 4, 4]})
    return d


def _one_wide(tmp_path, d):
    d["images"][1].update(width=2000, height=20)
    return d


# (name, edit(tmp_path, dict), expected skip counts while reading, expected excluded counts)
COCO_SKIPS = [
    ("unreadable image", _unreadable, {"unreadable": 1}, {}),
    ("missing image", _missing, {"missing": 1}, {}),
    ("size differs from JSON", _resized, {"size_mismatch": 1}, {}),
    ("annotation of unknown image", _unknown_image, {}, {"unknown_image_annotations": 1}),
    ("10000x20-like image", _one_wide, {}, {"extreme_aspect": 1}),
]


@pytest.mark.parametrize("name,edit,skips,excluded", COCO_SKIPS, ids=[r[0] for r in COCO_SKIPS])
def test_bad_coco_image_is_a_counted_skip(name, edit, skips, excluded, tmp_path):
    from updetr_lite.data.coco import CocoDetection

    d = edit(tmp_path, _coco(tmp_path))
    (tmp_path / "ann.json").write_text(json.dumps(d))
    ds = CocoDetection(tmp_path / "imgs", tmp_path / "ann.json")
    assert {k: v for k, v in ds.excluded.items() if v} == excluded
    ids = [int(ds[i][1]["image_id"]) for i in range(len(ds))]
    assert ids == ([1, 1] if skips else [1, 2][: len(ds)])  # a skipped image: the next good one
    report = ds.report_skips()
    assert {k: v for k, v in report.items() if k != "files" and v} == skips
    if skips:
        assert report["files"] == [str(tmp_path / "imgs" / "2.png")]
    assert ds.report_skips() == {}  # reset: each epoch reports its own


# --------------------------------------------------------------------------- VOC files


def _voc(tmp_path, names=("a", "b"), sizes=((60, 40), (50, 50))):
    from PIL import Image

    base = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, (w, h) in zip(names, sizes):
        Image.new("RGB", (w, h), (120, 60, 30)).save(base / "JPEGImages" / f"{name}.jpg")
        (base / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height></size><object>"
            "<name>dog</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>30</ymax>"
            "</bndbox></object></annotation>"
        )
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names) + "\n")
    return tmp_path / "VOCdevkit"


def test_voc_empty_split_is_an_error_naming_it(tmp_path):
    from updetr_lite.data.voc import VOCDetection, VOCFormatError

    root = _voc(tmp_path)
    (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("\n\n")
    with pytest.raises(VOCFormatError, match=r"list no usable image: .*test\.txt"):
        VOCDetection(root, (("2007", "test"),))


@pytest.mark.parametrize(
    "name,skips,excluded",
    [("unreadable", {"unreadable": 1}, {}), ("wide", {}, {"extreme_aspect": 1})],
)
def test_bad_voc_image_is_a_counted_skip(name, skips, excluded, tmp_path):
    from updetr_lite.data.voc import VOCDetection

    sizes = ((60, 40), (50, 50)) if name != "wide" else ((60, 40), (1000, 20))
    root = _voc(tmp_path, sizes=sizes)
    if name == "unreadable":
        (root / "VOC2007" / "JPEGImages" / "b.jpg").write_bytes(b"\xff\xd8 broken")
    ds = VOCDetection(root, (("2007", "test"),))
    assert {k: v for k, v in ds.excluded.items() if v} == excluded
    assert [int(ds[i][1]["image_id"]) for i in range(len(ds))] == ([1, 1] if skips else [1])
    report = ds.report_skips()
    assert {k: v for k, v in report.items() if k != "files" and v} == skips


# --------------------------------------------------------------------------- pretext images


def _pretext_cfg():
    from updetr_lite.config import get_config

    return get_config("smoke")


def test_huge_aspect_image_is_skipped_and_counted(tmp_path):
    import numpy as np
    from PIL import Image

    from updetr_lite.data.pretext import PretextDataset

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 10000, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    ds = PretextDataset(tmp_path, _pretext_cfg())
    image, target, _ = ds[0]  # 10000x20: the next good image instead of a 0-px resize
    assert target["orig_size"].tolist() == [40, 50] and min(image.shape[-2:]) > 0
    report = ds.report_skips()
    assert report["extreme_aspect"] == 1 and report["files"] == [str(tmp_path / "a.png")]


def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    import numpy as np
    from PIL import Image

    from updetr_lite.data.pretext import load_rgb
    from updetr_lite.engine.inference import load_image

    grey = np.array([[0, 257 * 10, 257 * 128, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # PIL reads it as 16-bit
    want = np.array([0, 10, 128, 255], dtype=np.uint8)
    for a in (np.asarray(load_rgb(tmp_path / "g16.png")), load_image(tmp_path / "g16.png")):
        assert a.dtype == np.uint8 and a.shape == (4, 4, 3)
        assert (a[0, :, 0] == want).all() and (a[..., 0] == a[..., 2]).all()


# --------------------------------------------------------------------------- localize, predict


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import torch
    from PIL import Image

    from updetr_lite.config import get_config
    from updetr_lite.engine.checkpoint import atomic_save
    from updetr_lite.models import build_detr, build_updetr

    d = tmp_path_factory.mktemp("ckpts")
    cfg = get_config("smoke")
    torch.manual_seed(0)
    for name, kind, model, classes in (
        ("pre.pth", "pretext", build_updetr(cfg), 2),
        ("det.pth", "detection", build_detr(cfg), cfg.model.num_classes),
    ):
        st = {"kind": kind, "num_classes": classes, "model": model.state_dict()}
        atomic_save(st | {"config": cfg.to_dict()}, d / name)
    Image.new("RGB", (60, 50), (200, 80, 40)).save(d / "good.png")
    Image.new("RGB", (1, 1)).save(d / "dot.png")
    (d / "junk.jpg").write_bytes(b"not a jpeg")
    (d / "empty").mkdir()
    (d / "mixed").mkdir()
    Image.new("RGB", (60, 50)).save(d / "mixed" / "a.png")
    Image.new("RGB", (1, 5)).save(d / "mixed" / "b.png")
    return d


# (argv with {d} for the folder, fragments of the error line)
INFERENCE_ERRORS = [
    (
        [
            "localize",
            "--checkpoint",
            "{d}/pre.pth",
            "--image",
            "{d}/good.png",
            "--patch",
            "{d}/dot.png",
        ],
        ["dot.png", "1x1 px is too small"],
    ),
    (
        ["localize", "--checkpoint", "{d}/pre.pth", "--image", "{d}/dot.png", "--box", "0,0,1,1"],
        ["dot.png", "too small"],
    ),
    (
        ["localize", "--checkpoint", "{d}/pre.pth", "--image", "{d}/empty", "--box", "0,0,9,9"],
        ["empty is a folder"],
    ),
    (
        ["localize", "--checkpoint", "{d}/pre.pth", "--image", "{d}/junk.jpg", "--box", "0,0,9,9"],
        ["junk.jpg", "not a readable image"],
    ),
    (
        ["localize", "--checkpoint", "{d}/pre.pth", "--image", "{d}/good.png", "--box", "0,0,99,9"],
        ["not inside the 60x50 image"],
    ),
    (
        ["localize", "--checkpoint", "{d}/pre.pth", "--image", "{d}/good.png", "--box", "1,2,3"],
        ["four pixel numbers"],
    ),
    (
        ["localize", "--checkpoint", "{d}/det.pth", "--image", "{d}/good.png", "--box", "0,0,9,9"],
        ["detection model"],
    ),
    (["predict", "--checkpoint", "{d}/det.pth", "{d}/empty"], ["no images", "empty"]),
    (["predict", "--checkpoint", "{d}/det.pth", "{d}/nothing.png"], ["nothing.png", "not found"]),
    (
        ["predict", "--checkpoint", "{d}/det.pth", "{d}/good.png", "--threshold", "2"],
        ["--threshold 2.0"],
    ),
    (["predict", "--checkpoint", "{d}/pre.pth", "{d}/good.png"], ["pretext model"]),
    (["evaluate", "--checkpoint", "{d}/junk.jpg"], ["junk.jpg", "cannot be read"]),
]


@pytest.mark.parametrize("argv,fragments", INFERENCE_ERRORS, ids=range(len(INFERENCE_ERRORS)))
def test_bad_inference_input_is_one_line(argv, fragments, ckpts, tmp_path, capsys):
    argv = [a.format(d=ckpts) for a in argv] + ["--out", str(tmp_path / "out")]
    code, _, err = run(argv, capsys)
    one_line_error(code, err, *fragments)


def test_predict_skips_bad_images_and_writes_the_good(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "predict",
        "--checkpoint",
        str(ckpts / "det.pth"),
        str(ckpts / "mixed"),
        str(ckpts / "junk.jpg"),
        "--out",
        str(out),
    ]
    code, _, err = run(argv, capsys)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("updetr-lite: error: predict: 2 of 3 images skipped"), err
    assert "b.png: 1x5 px is too small" in last
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in records] == ["a.png"]


# --------------------------------------------------------------------------- files on disk


def test_file_size_limit_is_a_clear_write_error(tmp_path):
    import resource

    import torch

    from updetr_lite.engine.checkpoint import CheckpointWriteError, atomic_save

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # ulimit -f 64
    try:
        with pytest.raises(CheckpointWriteError) as info:
            atomic_save({"w": torch.zeros(100_000)}, tmp_path / "last.pth")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    msg = str(info.value)
    assert msg.startswith(f"cannot write {tmp_path / 'last.pth'}: ") and "\n" not in msg, msg
    assert "ulimit -f" in msg and "enforce fail" not in msg.split(";")[-1], msg
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_damaged_feature_cache_is_named_and_rebuilt(tmp_path, capsys):
    import torch

    from updetr_lite.engine.feature_cache import cached

    path = tmp_path / "features" / "k.pt"
    calls = []

    def compute():
        calls.append(1)
        return {"maps": [torch.ones(2, 3, 3)], "skips": {}}

    cached(path, compute)
    path.write_bytes(path.read_bytes()[:50])  # what a full disk or a crash could leave
    value = cached(path, compute)
    assert len(calls) == 2 and torch.equal(value["maps"][0], torch.ones(2, 3, 3))
    assert f"the feature cache {path} is damaged" in capsys.readouterr().out
    assert torch.equal(cached(path, compute)["maps"][0], torch.ones(2, 3, 3)) and len(calls) == 2


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"\x80\x04random bytes, not a torch file" * 10, "not a plain tensor file"),
        (b"", "not a plain tensor file"),
    ],
)
def test_weights_file_is_never_unpickled_unasked(content, fragment, tmp_path, monkeypatch):
    import torch

    from updetr_lite.config import get_config
    from updetr_lite.models.build import build_detr
    from updetr_lite.models.weights import WeightsError

    path = tmp_path / "cnn.pth"
    path.write_bytes(content)
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real(*a, **k))
    cfg = get_config("smoke", [f"model.backbone_weights={str(path)!r}"])
    with pytest.raises(WeightsError, match=fragment) as info:
        build_detr(cfg)
    assert str(path) in str(info.value) and "UPDETR_LITE_TRUST_PICKLE=1" in str(info.value)
    assert loads and all(k.get("weights_only") is True for k in loads)


# --------------------------------------------------------------------------- checkpoint files


class _Payload:
    """Unpickling this would run code (touch a file): it must never be unpickled unasked."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _checkpoint_file(kind, d):
    import torch

    path = d / f"{kind}.pth"
    if kind == "random":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes((d / "det.pth").read_bytes()[:4000])
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "payload":
        torch.save({"model": {}, "x": _Payload(d / "pwned")}, path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "no_model":
        torch.save({"epoch": 3}, path)
    return path


CHECKPOINT_ERRORS = [
    ("random", ["random.pth", "cannot be read"]),
    ("empty", ["empty.pth", "cannot be read"]),
    ("truncated", ["truncated.pth", "cannot be read"]),
    ("list", ["list.pth", "expected a dict, found list"]),
    ("payload", ["payload.pth", "cannot be read", "Weights only load failed"]),
    ("folder", ["folder.pth", "is a folder"]),
    ("no_model", ["no model state dict"]),
]


@pytest.mark.parametrize("kind,fragments", CHECKPOINT_ERRORS, ids=[r[0] for r in CHECKPOINT_ERRORS])
def test_bad_checkpoint_file_is_one_line_and_never_unpickled(
    kind, fragments, ckpts, tmp_path, capsys
):
    import shutil

    shutil.copy(ckpts / "det.pth", tmp_path / "det.pth")
    path = _checkpoint_file(kind, tmp_path)
    code, _, err = run(["evaluate", "--checkpoint", str(path)], capsys)
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "pwned").exists()


def test_resume_without_a_checkpoint_names_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["pretrain", *SMOKE, "--out", str(out), "--resume"], capsys)
    one_line_error(code, err, str(out / "last.pth"), "no such file")
