"""The device patch pipeline (data/device_patches.py) against the per-worker one.

Tolerances (ImageNet-normalised units; 1/255 of the pixel range is about 0.017):
- same boxes, no augmentation: mean |difference| < 0.03, every patch's < 0.1. The paths
  differ only in the resize filter (roi_align's area average of ceil(side / p)^2 bilinear
  samples against torchvision's antialiased bilinear resize) and at the patch border (roi_align
  samples the pixels beyond the box, a crop's resize repeats its edge); measured 0.013 mean.
- same seed with augmentation (the same parameters): mean < 0.04; the worker path also rounds
  to uint8 after each of its up to 7 ops (measured 0.022).
- independent draws: per-patch statistics over 3000 patches agree within 5 standard errors of
  their difference plus 0.02 (the uint8 rounding bias of the worker path), shares within 5
  binomial standard errors.
"""

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from updetr_lite.config import ConfigError, get_config
from updetr_lite.data import device_patches as D
from updetr_lite.data.bench import make_jpegs
from updetr_lite.data.pretext import PretextDataset, read_rgb


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_jpegs(tmp_path_factory.mktemp("photos"), 3, size=(120, 160))


def _dataset(files, scale, m, p, augment):
    cfg = get_config(
        "smoke",
        [
            f"data.pretext_scales=({scale},)",
            "data.pretext_max_size=1000",
            f"pretext.num_patches={m}",
            f"model.num_queries={m}",
            f"pretext.patch_size={p}",
            "pretext.min_patch=4",
        ],
    )
    return PretextDataset(files, cfg, augment_patches=augment)


def _both_paths(ds, img, seed):
    """(worker patches, device patches, device params) for one image and one seed."""
    ds.patch_pipeline = "worker"
    torch.manual_seed(seed)
    w_image, w_target, w_patches = ds.make_sample(img)
    ds.patch_pipeline = "device"
    torch.manual_seed(seed)
    sample = ds.make_sample(img)
    images, mask, targets, _, params = D.collate_device([sample])
    assert torch.equal(targets[0]["boxes"], w_target["boxes"])  # the same draws
    image, patches = D.DevicePatches(ds.patch_size)(images, mask, targets, params)
    assert torch.equal(image[0], w_image)  # the same resized pixels, normalised alike
    return w_patches, patches[0], params[0]


@pytest.mark.parametrize("scale", [120, 80, 180])  # resize: none, down, up
def test_same_boxes_no_augmentation_agree(photos, scale):
    ds = _dataset(photos, scale, 100, 24, augment=False)
    worker, device, _ = _both_paths(ds, read_rgb(photos[0]), seed=1)
    diff = (worker - device).abs()
    assert diff.mean() < 0.03, diff.mean()
    assert diff.mean(dim=(1, 2, 3)).max() < 0.1
    # both filters are normalised: no brightness bias (a 255/256 scale error gives 0.009)
    assert abs((worker - device).mean()) < 0.003, (worker - device).mean()


def test_same_seed_with_augmentation_agree(photos):
    ds = _dataset(photos, 120, 100, 24, augment=True)
    worker, device, params = _both_paths(ds, read_rgb(photos[1]), seed=2)
    assert 0 < params[:, D.JIT].sum() < 100 and 0 < params[:, D.BLUR].sum() < 100
    diff = (worker - device).abs()
    assert diff.mean() < 0.04, diff.mean()
    assert diff.mean(dim=(1, 2, 3)).max() < 0.12


def test_batched_ops_equal_torchvision_per_patch():
    """Every batched op against torchvision's own kernel on the same float patch."""
    torch.manual_seed(0)
    x = torch.rand(40, 3, 20, 20)
    x[:5, 1] = x[:5, 0]  # ties between channels (hue branches)
    x[5:8] = x[5:8, :1]  # grey patches (zero chroma)
    f = torch.rand(40) * 0.8 + 0.6
    h = torch.rand(40) * 0.2 - 0.1
    refs = {
        D.brightness: lambda i: TF.adjust_brightness(x[i], float(f[i])),
        D.contrast: lambda i: TF.adjust_contrast(x[i], float(f[i])),
        D.saturation: lambda i: TF.adjust_saturation(x[i], float(f[i])),
    }
    for op, ref in refs.items():
        expected = torch.stack([ref(i) for i in range(40)])
        torch.testing.assert_close(op(x.clone(), f), expected, atol=1e-5, rtol=0)
    expected = torch.stack([TF.adjust_hue(x[i], float(h[i])) for i in range(40)])
    torch.testing.assert_close(D.hue(x.clone(), h), expected, atol=1e-5, rtol=0)
    sigma = torch.rand(40) * 1.9 + 0.1
    expected = torch.stack(
        [TF.gaussian_blur(x[i], [13, 13], [float(sigma[i])] * 2) for i in range(40)]
    )
    torch.testing.assert_close(D.blur(x.clone(), sigma), expected, atol=1e-5, rtol=0)


def test_augment_follows_each_patch_order_and_switches():
    """The whole pass against torchvision's ops applied patch by patch in its own order."""
    torch.manual_seed(3)
    x = torch.rand(60, 3, 16, 16)
    params = D.draw_params(60)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    expected = []
    for i in range(60):
        y, q = x[i], params[i]
        if q[D.JIT]:
            for o in q[D.ORDER : D.ORDER + 4].long().tolist():
                y = ops[o](y, float(q[D.FACTORS + o]))
        if q[D.GREY]:
            y = TF.rgb_to_grayscale(y, 3)
        if q[D.BLUR]:
            y = TF.gaussian_blur(y, [13, 13], [float(q[D.SIG])] * 2)
        expected.append(y)
    torch.testing.assert_close(
        D.augment(x.clone(), params), torch.stack(expected), atol=2e-5, rtol=0
    )


def test_draw_params_distribution():
    torch.manual_seed(4)
    q = D.draw_params(4000)
    n = len(q)

    def near(share, p):  # within 5 binomial standard errors
        return abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)

    assert near(q[:, D.JIT].mean().item(), 0.8)
    assert near(q[:, D.GREY].mean().item(), 0.2)
    assert near(q[:, D.BLUR].mean().item(), 0.5)
    on = q[q[:, D.JIT] > 0]
    assert on[:, D.FACTORS : D.FACTORS + 3].min() >= 0.6 and on[:, D.FACTORS + 3].abs().max() <= 0.1
    # every op in every position about equally often (a permutation per patch, not per batch)
    first = on[:, D.ORDER].long().bincount(minlength=4) / len(on)
    assert (first - 0.25).abs().max() < 0.05
    assert (on[:, D.ORDER : D.ORDER + 4].sort(1).values == torch.arange(4.0)).all()
    sig = q[q[:, D.BLUR] > 0, D.SIG]
    assert sig.min() >= 0.1 and sig.max() <= 2.0 and abs(sig.mean() - 1.05) < 0.05
    off = D.draw_params(5, augment=False)
    assert off[:, [D.JIT, D.GREY, D.BLUR]].sum() == 0


def _stats(patches, base):
    """Per patch: mean, std, greyed (channels equal), sharpness ratio against the
    unaugmented patch (mean |gradient| / std of the grey image)."""

    def sharp(t):
        g = t.mean(1)
        grad = (g[:, 1:, :] - g[:, :-1, :]).abs().mean((1, 2))
        return grad / g.flatten(1).std(1).clamp(min=1e-3)

    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    pixels = (patches * std + mean) * 255
    grey = (pixels.amax(1) - pixels.amin(1)).amax((1, 2)) < 0.5  # all channels equal
    return {
        "mean": patches.mean((1, 2, 3)),
        "std": patches.flatten(1).std(1),
        "grey": grey.float(),
        "blurred": (sharp(patches) / sharp(base).clamp(min=1e-6) < 0.8).float(),
    }


def test_augmented_statistics_agree(photos):
    """3000 patches per path, independent draws: the distributions of per-patch mean and
    std and the shares greyed and visibly blurred agree."""
    m, p = 100, 24
    ds = _dataset(photos, 120, m, p, augment=True)
    base_ds = _dataset(photos, 120, m, p, augment=False)
    per_path = {}
    for path, seed0 in (("worker", 100), ("device", 200)):
        stats = []
        for k in range(30):
            img = read_rgb(photos[k % len(photos)])
            torch.manual_seed(seed0 + k)
            base = base_ds.make_sample(img)[2]  # the same boxes, no augmentation
            ds.patch_pipeline = path
            torch.manual_seed(seed0 + k)
            sample = ds.make_sample(img)
            if path == "device":
                images, mask, targets, _, params = D.collate_device([sample])
                patches = D.DevicePatches(p)(images, mask, targets, params)[1][0]
            else:
                patches = sample[2]
            stats.append(_stats(patches, base))
        per_path[path] = {k: torch.cat([s[k] for s in stats]) for k in stats[0]}
    w, d = per_path["worker"], per_path["device"]
    n = len(w["mean"])
    assert n == 3000
    for key in ("mean", "std"):
        se = math.sqrt((w[key].var() + d[key].var()).item() / n)
        assert abs(w[key].mean() - d[key].mean()) < 5 * se + 0.02, key
        # and the spread of the distribution, not only its centre
        for q in (0.1, 0.5, 0.9):
            assert abs(w[key].quantile(q) - d[key].quantile(q)) < 10 * se + 0.02, (key, q)
    for key, expected in (("grey", 0.2), ("blurred", None)):
        a, b = w[key].mean().item(), d[key].mean().item()
        pooled = (a + b) / 2
        assert abs(a - b) < 5 * math.sqrt(2 * pooled * (1 - pooled) / n) + 1e-9, (key, a, b)
        if expected is not None:
            assert abs(b - expected) < 5 * math.sqrt(expected * (1 - expected) / n), (key, b)
    assert 0.15 < d["blurred"].mean() < 0.5  # blur p 0.5, most sigmas visible


def test_padding_is_zero_and_edges_replicated(photos):
    """Two images of different sizes in one batch: the padding of the normalised batch is 0,
    and a patch at the smaller image's bottom-right corner sees no padding pixels."""
    ds = _dataset(photos, 120, 2, 24, augment=False)
    ds.patch_pipeline = "device"
    ds.resize = lambda im: im  # keep both sizes
    big = read_rgb(photos[0])
    small = big[:, :60, :80].contiguous()
    torch.manual_seed(0)
    items = [ds.make_sample(big), ds.make_sample(small)]
    # a box covering the small image's bottom-right quarter (normalised cxcywh)
    items[1][1]["boxes"][0] = torch.tensor([0.75, 0.75, 0.5, 0.5])
    images, mask, targets, _, params = D.collate_device(items)
    x, patches = D.DevicePatches(24)(images, mask, targets, params)
    assert mask[1].sum() > 0 and (x[1][:, mask[1]] == 0).all()
    ref = TF.resize(small[:, 30:, 40:], [24, 24], antialias=True)
    ref = (ref.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(3, 1, 1)
    # the bottom and right edge rows: no darkening from the zero padding
    assert (patches[1, 0, :, -1] - ref[:, -1]).abs().mean() < 0.1
    assert (patches[1, 0, :, :, -1] - ref[:, :, -1]).abs().mean() < 0.1


def test_setting_and_cache_features_error():
    with pytest.raises(ConfigError, match="pretext.patch_pipeline must be 'worker' or 'device'"):
        get_config("smoke", ["pretext.patch_pipeline=gpu"])
    for preset in ("lite", "smoke"):  # their numbers stay the per-worker path's
        assert get_config(preset).pretext.patch_pipeline == "worker"
    assert get_config("paper").pretext.patch_pipeline == "device"


def test_decode_jpeg_same_pixels_and_truncated_file_named(photos, tmp_path):
    from PIL import Image

    from updetr_lite.data.pretext import UnreadableImageError, load_rgb

    with Image.open(photos[0]) as im:
        im.convert("L").save(tmp_path / "grey.jpg")
    for f in (photos[0], tmp_path / "grey.jpg"):
        assert torch.equal(read_rgb(f), TF.pil_to_tensor(load_rgb(f)))
    data = photos[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="cut.jpg"):
        read_rgb(tmp_path / "cut.jpg")


def _pretrain_losses(tmp_path, cache, pipeline, steps=4):
    import json

    from updetr_lite.engine.train import train

    cfg = get_config(
        "smoke",
        [
            f"data.cache_dir={cache!r}",
            "pretext.patch_feature='crop'",
            "pretrain.cache_features=False",
            f"pretext.patch_pipeline={pipeline!r}",
            f"pretrain.max_steps={steps}",
            "pretrain.log_every=1",
        ],
    )
    train(cfg, "pretrain", tmp_path / pipeline, progress=False)
    lines = (tmp_path / pipeline / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "train"]


def test_short_pretraining_same_losses(tmp_path):
    """Smoke sizes, crop patches through the CNN, 4 steps on the embedded images: the same
    seed gives both paths the same boxes and augmentation parameters, so every step's loss
    terms agree within 1 % (measured: 0.33 %; the patch pixels differ by the filter and rounding only)."""
    cache = str(tmp_path / "cache")
    worker = _pretrain_losses(tmp_path, cache, "worker")
    device = _pretrain_losses(tmp_path, cache, "device")
    assert [r["step"] for r in device] == [1, 2, 3, 4]
    for w, d in zip(worker, device):
        for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_rec"):
            assert abs(w[key] - d[key]) <= 0.01 * abs(w[key]) + 1e-6, (w["step"], key)


def test_device_pipeline_with_cached_features_uses_worker_patches(tmp_path, capsys):
    """Cached CNN maps stand for the images: the 'device' setting then makes the patches in
    the workers, and the run equals the 'worker' one."""
    import json

    from updetr_lite.engine.train import train

    losses = {}
    for pipeline in ("worker", "device"):
        cfg = get_config(
            "smoke",
            [
                f"data.cache_dir={str(tmp_path / 'cache')!r}",
                "pretext.patch_feature='crop'",
                f"pretext.patch_pipeline={pipeline!r}",
                "pretrain.max_steps=2",
                "pretrain.log_every=1",
            ],
        )
        assert cfg.pretrain.cache_features
        train(cfg, "pretrain", tmp_path / pipeline, progress=False)
        lines = (tmp_path / pipeline / "log.jsonl").read_text().splitlines()
        losses[pipeline] = [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]
    assert "query patches made in the workers" in capsys.readouterr().out
    assert losses["device"] == losses["worker"] and len(losses["worker"]) == 2
