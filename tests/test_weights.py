"""Weight loading: torchvision, SwAV and DETR/UP-DETR files; pretext -> detector init."""

import argparse
import re

import pytest
import torch
import torchvision

from updetr_lite.config import get_config
from updetr_lite.models import (
    Backbone,
    WeightsError,
    build_backbone,
    build_detr,
    build_updetr,
    init_detr_from_pretext,
    load_cnn_weights,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def resnet18_state():
    """A torchvision ResNet-18 state dict with every tensor random (BN statistics too)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    sd = net.state_dict()
    for key, value in sd.items():
        if key.endswith("running_var"):
            sd[key] = torch.rand_like(value) + 0.5
        elif value.is_floating_point():
            sd[key] = torch.randn_like(value) * 0.1
    net.load_state_dict(sd)
    return net.eval(), sd


def torchvision_features(net, images, layer="layer4"):
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
        if name == layer:
            return x


def check_loaded(backbone, sd, prefix=""):
    body = backbone.body.state_dict()
    for key, value in body.items():
        assert torch.equal(value, sd[prefix + key]), key


IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
MASK = torch.zeros(2, 64, 64, dtype=torch.bool)


def test_torchvision_format(tmp_path, resnet18_state):
    net, sd = resnet18_state
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    backbone = Backbone("resnet18", "layer4").eval()
    with torch.no_grad():
        before = backbone(IMAGES, MASK)[0]
    report = load_cnn_weights(backbone, str(path))
    assert report.format == "torchvision"
    expected_ignored = {k for k in sd if k.startswith("fc.") or k.endswith("num_batches_tracked")}
    assert set(report.ignored) == expected_ignored
    assert set(report.loaded) == set(backbone.body.state_dict())
    check_loaded(backbone, sd)
    with torch.no_grad():
        after = backbone(IMAGES, MASK)[0]
        reference = torchvision_features(net, IMAGES)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, reference, atol=1e-4, rtol=1e-4)


def test_torchvision_format_into_layer3_backbone(tmp_path, resnet18_state):
    net, sd = resnet18_state
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    backbone = Backbone("resnet18", "layer3").eval()
    report = load_cnn_weights(backbone, str(path))
    assert {k for k, why in report.ignored.items() if k.startswith("layer4.")} == {
        k for k in sd if k.startswith("layer4.")
    }
    with torch.no_grad():
        assert torch.allclose(
            backbone(IMAGES, MASK)[0], torchvision_features(net, IMAGES, "layer3"), atol=1e-4
        )


def test_swav_format(tmp_path, resnet18_state):
    _, sd = resnet18_state
    swav = {"module." + k: v for k, v in sd.items() if not k.startswith("fc.")}
    swav["module.projection_head.0.weight"] = torch.randn(16, 512)
    swav["module.projection_head.0.bias"] = torch.randn(16)
    swav["module.prototypes.weight"] = torch.randn(30, 16)
    path = tmp_path / "swav.pth"
    torch.save(swav, path)
    backbone = Backbone("resnet18", "layer4")
    report = load_cnn_weights(backbone, str(path))
    assert report.format == "swav"
    assert set(report.ignored) == {
        k
        for k in swav
        if ".projection_head." in k or ".prototypes." in k or k.endswith("num_batches_tracked")
    }
    check_loaded(backbone, swav, prefix="module.")


def test_detr_checkpoint_format(tmp_path, resnet18_state):
    _, sd = resnet18_state
    cfg = get_config("smoke", ["model.backbone_layer=layer4"])
    source = build_updetr(cfg)
    model_sd = source.state_dict()
    for key, value in sd.items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            model_sd["backbone.0.body." + key] = value
    path = tmp_path / "updetr.pth"
    # DETR's checkpoints also pickle their argparse arguments
    torch.save({"model": model_sd, "args": argparse.Namespace(lr=1e-4), "epoch": 3}, path)
    target = build_detr(cfg)
    report = load_cnn_weights(target, str(path))  # a whole model: its CNN is found
    assert report.format == "detr"
    assert set(report.ignored) == {k for k in model_sd if not k.startswith("backbone.0.body.")}
    check_loaded(target.backbone[0], model_sd, prefix="backbone.0.body.")
    # and through the config
    cfg2 = get_config("smoke", ["model.backbone_layer=layer4", f"model.backbone_weights={path}"])
    check_loaded(build_backbone(cfg2), model_sd, prefix="backbone.0.body.")


def test_bad_weight_files(tmp_path, resnet18_state):
    _, sd = resnet18_state
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_cnn_weights(Backbone("resnet18"), str(tmp_path / "missing.pth"))
    broken = {k: v for k, v in sd.items() if not k.startswith("layer2.0.conv1")}
    broken["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(WeightsError, match="broken.pth") as info:
        load_cnn_weights(Backbone("resnet18"), str(path))
    assert "layer2.0.conv1.weight" in str(info.value) and "extra.weight" in str(info.value)
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="r18.pth"):
        load_cnn_weights(Backbone("resnet34"), str(path))


def _pretext_and_detector():
    cfg = get_config("smoke")
    torch.manual_seed(0)
    pretext = build_updetr(cfg)
    torch.manual_seed(1)
    return pretext, build_detr(cfg)


def test_init_detr_from_pretext_reports_keys():
    pretext, detr = _pretext_and_detector()
    sd = pretext.state_dict()
    result = init_detr_from_pretext(detr, sd)
    expected_dropped = sorted(
        k for k in sd if k.startswith(("class_embed.", "patch_proj.", "reconstruction_head."))
    )
    assert result["dropped"] == expected_dropped
    assert result["new"] == ["class_embed.bias", "class_embed.weight"]
    for key, value in detr.state_dict().items():
        if not key.startswith("class_embed."):
            assert torch.equal(value, sd[key]), key
    assert not torch.equal(detr.class_embed.weight[:3], sd["class_embed.weight"])


def test_init_detr_from_authors_key_names():
    pretext, detr = _pretext_and_detector()
    names = {
        "patch_proj.": "patch2query.",
        "reconstruction_head.0.": "feature_align.layers.0.",
        "reconstruction_head.2.": "feature_align.layers.1.",
    }
    authors = {}
    for key, value in pretext.state_dict().items():
        for ours, theirs in names.items():
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
        authors[key] = value
    result = init_detr_from_pretext(detr, {"model": authors})
    assert result["dropped"] == sorted(
        k for k in authors if k.startswith(("class_embed.", "patch2query.", "feature_align."))
    )
    assert result["new"] == ["class_embed.bias", "class_embed.weight"]
    assert torch.equal(detr.query_embed.weight, authors["query_embed.weight"])
    # a checkpoint of a differently sized model is refused with the key named
    bad = dict(authors)
    bad["query_embed.weight"] = torch.zeros(5, 32)
    with pytest.raises(WeightsError, match="query_embed.weight"):
        init_detr_from_pretext(detr, bad)


@pytest.mark.parametrize(
    "setting,named",
    [
        ("model.pre_norm=False", "model.pre_norm differs"),  # the file has encoder.norm.*
        ("model.dec_layers=3", "model.dec_layers (the file has 2 decoder layers) differs"),
        ("model.enc_layers=0", "model.enc_layers (the file has 1 encoder layers) differs"),
        ("model.dim_feedforward=48", "model.dim_feedforward or model.hidden_dim differs"),
    ],
)
def test_init_detr_settings_mismatch_names_the_setting(setting, named):
    """A detector built with other settings than the pretext file (and no config in the file to
    compare): an error naming the setting, never a silent 'dropped' list."""
    pretext, _ = _pretext_and_detector()
    assert get_config("smoke").model.dec_layers == 2 and get_config("smoke").model.enc_layers == 1
    detr = build_detr(get_config("smoke", [setting]))
    before = {k: v.clone() for k, v in detr.state_dict().items()}
    with pytest.raises(WeightsError, match=re.escape(named)):
        init_detr_from_pretext(detr, {"model": pretext.state_dict()})
    assert all(torch.equal(v, before[k]) for k, v in detr.state_dict().items())  # untouched
