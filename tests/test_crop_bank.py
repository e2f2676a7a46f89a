"""The query patch bank (``pretext.crop_bank``): the paper's crop patch feature, cached.

Checked against an independent computation: each banked feature is the CNN's global average
pool of the crop of its own box (cut again here from the file), and each training item
draws M distinct patches of its image's bank, box and feature together."""

import pytest
import torch
from torchvision.ops import box_convert

from updetr_lite.config import get_config
from updetr_lite.data.build import build_pretext_dataset
from updetr_lite.data.images import normalize
from updetr_lite.data.pretext import read_rgb
from updetr_lite.data.query_patches import crop_patches
from updetr_lite.engine import feature_cache as fc
from updetr_lite.engine.feature_cache import FeatureCacheError, FeatureExtractor
from updetr_lite.engine.seeding import SeededDataset
from updetr_lite.models.build import build_updetr


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = get_config("smoke", [f"data.cache_dir={str(cache)!r}", "pretext.crop_bank=5"])
    torch.manual_seed(0)
    model = build_updetr(cfg).eval()
    extractor = FeatureExtractor(model.backbone, torch.device("cpu"))
    plain = build_pretext_dataset(cfg, augment_patches=False)
    ident = ("test",)
    out = fc._crop_bank(cfg, extractor, plain, ident, progress=False)
    return cfg, extractor, plain, out


def test_bank_features_are_the_cnn_on_the_crop_of_their_box(bank):
    cfg, extractor, ds, out = bank
    n, k = len(ds), cfg.pretext.crop_bank
    assert out["boxes"].shape == (n, k, 4) and out["feats"].shape[:2] == (n, k)
    for i in (0, n - 1):
        img = read_rgb(ds.files[i])
        h, w = img.shape[-2:]
        xyxy = box_convert(out["boxes"][i], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        assert torch.allclose(xyxy, xyxy.round(), atol=1e-3)  # whole-pixel boxes
        side = xyxy[:, 2:] - xyxy[:, :2]
        assert (side >= cfg.pretext.min_patch - 1e-3).all() and (xyxy >= -1e-3).all()
        crops = normalize(crop_patches(img, xyxy, cfg.pretext.patch_size))
        want = extractor.patches(crops[None])[0]
        assert torch.allclose(out["feats"][i], want, atol=1e-5)
    assert len({tuple(b.tolist()) for b in out["boxes"][0]}) == k  # K different patches


def test_an_item_draws_m_distinct_patches_of_its_bank_box_and_feature_together(bank):
    cfg, _, ds, out = bank
    maps = [torch.zeros(2, 1, 1) for _ in range(len(ds))]
    m = cfg.pretext.num_patches
    items = SeededDataset(fc.CachedPretextBank(maps, out["boxes"], out["feats"], m), 0)
    draws = set()
    for epoch in range(6):
        items.epoch = epoch
        _, target, feats = items[1]
        assert target["boxes"].shape == (m, 4) and feats.shape == (m, out["feats"].shape[-1])
        rows = [int((out["boxes"][1] == b).all(-1).nonzero()) for b in target["boxes"]]
        assert len(set(rows)) == m
        assert torch.equal(feats, out["feats"][1][rows])
        draws.add(tuple(rows))
    assert len(draws) > 1  # the draw changes with the epoch


def test_a_bank_smaller_than_m_is_refused(bank):
    cfg, extractor, ds, _ = bank
    small = get_config("smoke", [f"data.cache_dir={cfg.data.cache_dir!r}", "pretext.crop_bank=1"])
    with pytest.raises(FeatureCacheError, match="crop_bank=1 holds fewer patches"):
        fc._crop_bank(small, extractor, ds, ("test",), progress=False)


def test_feature_cache_keeps_bf16_and_fp32_maps_apart(tmp_path):
    """A cache written with bf16 maps is never reused by an fp32 run (nor the reverse)."""
    from updetr_lite.engine.train import train

    common = [f"data.cache_dir={str(tmp_path / 'cache')!r}", "model.fast_path=True"]
    common += ["finetune.max_steps=1", "finetune.epochs=1"]
    files = []
    for bf16 in (False, True):
        cfg = get_config("smoke", common + [f"model.cnn_bf16={bf16}"])
        train(cfg, "finetune", tmp_path / f"run{bf16}", progress=False)
        files.append(set((tmp_path / "cache" / "features").glob("*.pt")))
    assert len(files[0]) == 2 and len(files[1]) == 4  # train + val maps, per precision


def test_loader_batches_yields_every_batch_and_leaves_no_worker_iterator_alive():
    """The cache builders' loop: all batches in order, and every multi-process iterator it made
    shut down in this process (one left alive can be collected in the next loader's workers)."""
    import gc

    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    def live_worker_iterators(exclude=frozenset()):
        return [
            o
            for o in gc.get_objects()
            if isinstance(o, _MultiProcessingDataLoaderIter)
            and not o._shutdown
            and id(o) not in exclude
        ]

    before = {id(o) for o in live_worker_iterators()}  # what other tests may have left
    data = torch.arange(10.0)
    for _ in range(2):  # the second loader forks while the first one's iterator is gone
        loader = DataLoader(data, batch_size=3, num_workers=2)
        got = [b for b in fc.loader_batches(loader, "test", progress=False)]
        assert torch.equal(torch.cat(got), data) and len(got) == 4
        assert not live_worker_iterators(before)
    # the check itself: an iterator left half-read is found
    it = iter(DataLoader(data, batch_size=3, num_workers=2))
    next(it)
    assert live_worker_iterators(before)
    del it
