"""The training loop: UP-DETR pre-training ('pretrain') and DETR fine-tuning ('finetune').

``train(cfg, stage, out_dir)`` writes into ``out_dir``:

- ``config.json``: the full resolved configuration (``Config.from_dict`` reads it back);
- ``log.jsonl``: one JSON record per line: ``{"type": "train", step, epoch, <loss terms>,
  loss, class_error, lr, lr_backbone, images_per_s}`` every ``log_every`` steps (averaged
  over those steps and over processes; terms are the criterion's weighted terms), ``{"type": "eval", step, epoch, AP, AP50, AP75, APs, APm, APl}`` after each
  evaluation, ``{"type": "epoch", ...}`` per-epoch loss means, ``{"type": "init", ...}`` the
  pretext -> detector key report, ``{"type": "cnn_weights", path, format, loaded, ignored}``
  the CNN weight-load report (also printed) when model.backbone_weights is set,
  ``{"type": "skips", ...}`` the pretext dataset's skip counts,
  ``{"type": "plan", steps_per_epoch, images_per_epoch, epochs, max_steps, planned_steps}``
  first and ``{"type": "end", steps, planned_steps, epochs_trained, images_seen, stopped_by}``
  last (what was trained against what was set);
- ``last.pth`` (each epoch and every ``last_every_steps`` steps), ``best.pth`` (best AP when
  fine-tuning, lowest epoch loss when pre-training), ``epoch_K.pth`` every ``checkpoint_every``
  epochs.

Exact resume: the order of every epoch depends only on (seed, epoch), every sample's
augmentation only on (seed, epoch, index) (``SeededDataset``), and the model's own randomness
(dropout, query shuffle, patch dropout) on the per-rank RNG states saved in the checkpoint.
A run resumed from a mid-epoch ``last.pth`` therefore skips the batches it had done and
continues bit for bit (in deterministic mode, same process count and thread count).

With ``TrainConfig.cache_features`` (a lite deviation, frozen CNN only) the CNN runs once per
image and the transformer trains on the cached maps (``features.py``).

Faults: ``out_dir/.lock`` keeps a second run out of the folder (``runlock.py``); temporary
files of an interrupted save are removed at the start; on resume, best.pth and epoch_K.pth
that a kill kept from being written are rewritten from last.pth, and settings that differ
from the checkpoint's are refused by name (the schedule's length, bookkeeping and data paths
excepted: those are applied and said). NaN or inf in the predictions, loss terms, gradient
norm or weights stops the run naming the step; no non-finite weights are ever saved.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Config
from ..models.matcher import NonFiniteOutputError
from . import distributed as du
from . import features as ft
from .checkpoint import (
    atomic_save,
    check_kind,
    check_settings,
    load_checkpoint,
    model_state,
    rng_state,
    set_rng_state,
)
from .evaluate import evaluate
from .runlock import out_lock

STAGES = ("pretrain", "finetune")


class TrainingError(ValueError):
    """A setting or state that stops a run before it starts; one line for the user."""


class NonFiniteLossError(RuntimeError):
    """A loss term, the predictions, the gradient norm or the weights became NaN or infinite;
    no checkpoint of that state was written."""


# --------------------------------------------------------------------------- randomness


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(flag: bool) -> None:
    if flag:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


class SeededDataset(Dataset):
    """Wraps a dataset so that item i of epoch e always draws the same random numbers.

    Each ``__getitem__`` runs with python, numpy and torch (CPU) RNGs seeded from (seed,
    epoch, i) and restores the caller's states afterwards, so the augmentation neither
    depends on nor disturbs the training process's RNG (nor on worker count or resumes).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):  # report_skips, coco, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i):
        s = np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(2)
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(int(s[0]))
            np.random.seed(int(s[1]))
            torch.manual_seed(int(s[0]) << 32 | int(s[1]))
            try:
                return self.dataset[i]
            finally:
                random.setstate(py)
                np.random.set_state(npy)


class ShardSampler(Sampler):
    """Evaluation: rank r takes items r, r+W, ... (no padding: each image counted once)."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


# --------------------------------------------------------------------------- model step


class StepModel(nn.Module):
    """What DDP wraps: one forward of the model on one batch.

    ``forward(inputs, mask, patches=None, patch_boxes=None)``: inputs are images [B, 3, H, W]
    or, with cached features, CNN maps [B, C, h, w]; ``patches`` are crops [B, M, 3, p, p]
    or (cached 'crop' mode) patch features [B, M, C].
    """

    def __init__(self, model: nn.Module, pretext: bool, cached: bool):
        super().__init__()
        self.model, self.pretext, self.cached = model, pretext, cached

    def forward(self, inputs, mask, patches=None, patch_boxes=None):
        if not self.pretext:
            if self.cached:
                return self.model.forward_features(inputs, mask)
            return self.model(inputs, mask)
        if self.cached:
            return self.model.forward_features(inputs, mask, patches, patch_boxes)
        return self.model(inputs, mask, patches, patch_boxes)


class _EvalForward(nn.Module):
    """DETR on cached maps, with the (inputs, mask) signature evaluate() calls."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, mask):
        return self.model.forward_features(inputs, mask)


def compute_losses(step_model, criterion, batch, device, amp: bool) -> dict[str, torch.Tensor]:
    """Forward + criterion on one batch dict (inputs, mask, targets[, patches]); the loss
    dict of SetCriterion (weighted terms, ``loss``, ``class_error``)."""
    inputs = batch["inputs"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    targets = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in batch["targets"]
    ]
    patches = batch.get("patches")
    patches = patches.to(device) if patches is not None else None
    if batch.get("patch_params") is not None:  # pretext.patch_pipeline 'device'
        inputs, patches = batch["patch_maker"](inputs, mask, targets, batch["patch_params"])
    boxes = torch.stack([t["boxes"] for t in targets]) if batch.get("pretext") else None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        outputs = step_model(inputs, mask, patches, boxes)
    return criterion(outputs, targets)  # the criterion casts to fp32 itself


# --------------------------------------------------------------------------- data


def _data_modules():
    from ..data import build as data_build
    from ..data.collate import collate_detection
    from ..data.pretext import collate_pretext

    return data_build, collate_detection, collate_pretext


class Batches:
    """Turns a loader's tuples into batch dicts; knows whether it is a pretext loader."""

    def __init__(self, loader, pretext: bool, extractor=None, patch_maker=None):
        self.loader, self.pretext, self.extractor = loader, pretext, extractor
        self.patch_maker = patch_maker  # DevicePatches: the loader yields uint8 images

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for item in self.loader:
            batch = {
                "inputs": item[0],
                "mask": item[1],
                "targets": item[2],
                "pretext": self.pretext,
            }
            if self.pretext and len(item) > 3 and item[3] is not None:
                patches = item[3]
                if self.extractor is not None:  # cached 'crop': embed the crops now
                    patches = self.extractor.patches(patches)
                batch["patches"] = patches
            if self.patch_maker is not None:  # (images uint8, mask, targets, None, params)
                batch["patch_params"], batch["patch_maker"] = item[4], self.patch_maker
            yield batch


def _eval_view(dataset, cfg: Config):
    """The same images with the eval transforms (no augmentation), for the feature cache."""
    from ..data.transforms import detection_transforms

    if not hasattr(dataset, "transforms"):
        raise TrainingError(
            "cache_features: the detection dataset exposes no transforms to replace"
        )
    view = copy.copy(dataset)
    view.transforms = detection_transforms(cfg.data, train=False)
    return view


@dataclass
class TrainData:
    batches: Batches  # the training batches (dicts)
    sampler: du.ResumableSampler
    seeded: SeededDataset
    source: Dataset  # the dataset as built by the data package (has report_skips)
    val_loader: DataLoader | None = None
    coco_gt: object = None
    cache_skips: list | None = None  # [(what, report)]: images skipped building the caches


def build_data(
    cfg, stage, tc, dist_info, model, device, trainable_cnn, progress: bool = True
) -> TrainData:
    """Training batches, their sampler, and (finetune) the val loader and its COCO gt."""
    data_build, collate_detection, collate_pretext = _data_modules()
    world, rank = dist_info.world_size, dist_info.rank
    per_rank = du.per_process_batch(tc.batch_size, world, f"{stage}.batch_size")
    workers = cfg.data.num_workers
    extractor = None
    val_loader = coco_gt = None
    patch_maker = None
    if stage == "pretrain":
        train_set = data_build.build_pretext_dataset(cfg)
        collate = collate_pretext
        if cfg.pretext.patch_pipeline == "device" and tc.cache_features:
            # cached maps stand for the images: the crops (if any) come from the worker
            train_set.patch_pipeline = "worker"
            if dist_info.is_main:
                print("[updetr-lite] pretrain.cache_features: query patches made in the workers")
        elif cfg.pretext.patch_pipeline == "device":
            from ..data.device_patches import DevicePatches, collate_device

            collate, patch_maker = collate_device, DevicePatches(cfg.pretext.patch_size)
    else:
        train_set, val_set = data_build.build_detection_datasets(cfg)
        collate = collate_detection
        coco_gt = val_set.coco
    source = train_set
    cache_skips = []
    if tc.cache_features:
        ft.check_cacheable(trainable_cnn, stage)
        extractor = ft.FeatureExtractor(model.backbone, device)
        ident = (extractor.weights_hash, cfg.model.backbone, cfg.model.backbone_layer)
        ident += (ft.data_identity(cfg.data),)
        if stage == "finetune":
            train_set, _ = _cached_detection(
                cfg, extractor, train_set, ident, "train", progress, cache_skips
            )
            val_set, _ = _cached_detection(
                cfg, extractor, val_set, ident, "val", progress, cache_skips, eval_view=False
            )
            collate = ft.collate_cached_detection
        else:
            train_set = _cached_pretext(cfg, extractor, train_set, ident, progress, cache_skips)
            collate = ft.collate_cached_pretext
            if cfg.pretext.patch_feature == "roi":
                extractor = None  # no CNN per step
        if extractor is None or stage == "finetune":
            workers = 0  # the maps are in memory: workers would only copy them
    seeded = SeededDataset(train_set, tc.seed)
    sampler = du.ResumableSampler(seeded, world, rank, shuffle=True, seed=tc.seed)
    loader = DataLoader(
        seeded,
        batch_size=per_rank,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        drop_last=False,
        # a private generator: creating iterators must not consume the training RNG
        generator=torch.Generator().manual_seed(tc.seed),
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    if stage == "finetune":
        val_loader = DataLoader(
            val_set,
            batch_size=per_rank,
            sampler=ShardSampler(len(val_set), rank, world),
            collate_fn=collate,
            num_workers=workers,
            generator=torch.Generator().manual_seed(tc.seed),  # evaluation draws no training RNG
        )
    batches = Batches(loader, stage == "pretrain", extractor, patch_maker)
    return TrainData(batches, sampler, seeded, source, val_loader, coco_gt, cache_skips)


def _source_files(dataset) -> list:
    """The image and annotation files a dataset reads (what its feature cache depends on)."""
    files = getattr(dataset, "source_files", None)
    if files is None:
        raise TrainingError("cache_features: the dataset does not list its files")
    return files()


def _with_skips(dataset, compute, what: str, skips: list):
    """``compute`` plus the skip report of ``dataset`` taken right after it (stored in the
    cache); a reused cache's stored report is logged again. Appends (what, report) to skips."""

    def run():
        value = compute()
        report = getattr(dataset, "report_skips", lambda: {})()
        return value | {"skips": report}

    def reported(value):
        report = value.get("skips") or {}
        if report:
            skips.append((what, report))
        return report

    return run, reported


def _log_reused_skips(path, report) -> None:
    counts = {k: v for k, v in report.items() if k != "files" and v}
    if counts:
        print(
            f"[updetr-lite] feature cache {path.name} (reused): built without {counts} "
            f"skipped images ({', '.join(report['files'])})"
        )


def _cached(path, compute, dataset, what, skips):
    run, reported = _with_skips(dataset, compute, what, skips)
    built = not path.is_file()
    data = ft.cached(path, run)
    report = reported(data)
    if not built:
        _log_reused_skips(path, report)
    return data


def _cached_detection(cfg, extractor, dataset, ident, split, progress, skips, eval_view=True):
    _, collate_detection, _ = _data_modules()
    view = _eval_view(dataset, cfg) if eval_view else dataset
    key = ft.cache_key("detection", split, len(view), ident)
    path = ft.content_cache_path(cfg.data.cache_dir, key, _source_files(dataset))

    def compute():
        loader = ft.feature_loader(view, collate_detection, 16, cfg.data.num_workers)
        maps, targets = ft.compute_maps(extractor, loader, f"CNN features ({split})", progress)
        return {"maps": maps, "targets": targets}

    data = _cached(path, compute, dataset, f"feature cache ({split})", skips)
    ds = ft.CachedDetection(data["maps"], data["targets"])
    if hasattr(dataset, "coco"):
        ds.coco = dataset.coco
    return ds, data["maps"]


class _PretextImages(Dataset):
    """The pretext dataset's images only, each drawn once with a fixed seed (one view per
    image for the cache), with the size the query patch boxes are drawn on."""

    def __init__(self, dataset, seed: int):
        if hasattr(dataset, "augment_patches"):  # the crops are discarded: skip their jitter
            dataset = copy.copy(dataset)
            dataset.augment_patches = False
        self.seeded = SeededDataset(dataset, seed)
        self.seeded.epoch = 2**31 - 1  # never a training epoch

    def __len__(self):
        return len(self.seeded)

    def __getitem__(self, i):
        image, target = self.seeded[i][:2]
        size = target.get("orig_size", torch.tensor(image.shape[-2:]))
        return image, tuple(int(x) for x in size)


def _collate_images(batch):
    from ..data.collate import pad_images

    images, mask = pad_images([b[0] for b in batch])
    return images, mask, [b[1] for b in batch]


def _cached_pretext(cfg, extractor, dataset, ident, progress, skips):
    view = _PretextImages(dataset, cfg.pretrain.seed)
    key = ft.cache_key("pretext", len(view), ident)
    path = ft.content_cache_path(cfg.data.cache_dir, key, _source_files(dataset))

    def compute():
        loader = ft.feature_loader(view, _collate_images, 16, cfg.data.num_workers)
        maps, sizes = ft.compute_maps(extractor, loader, "CNN features (pretext)", progress)
        return {"maps": maps, "sizes": sizes}

    data = _cached(path, compute, dataset, "feature cache (pretext)", skips)
    if cfg.pretext.patch_feature == "roi":
        return ft.CachedPretextRoi(data["maps"], data["sizes"], dataset.sample_boxes)
    return ft.CachedPretextCrop(data["maps"], dataset)


# --------------------------------------------------------------------------- training


def _param_groups(model: nn.Module, tc) -> list[dict]:
    main, cnn = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (cnn if name.startswith("backbone.") else main).append(p)
    groups = [{"params": main, "lr": tc.lr, "name": "transformer"}]
    if cnn:
        groups.append({"params": cnn, "lr": tc.lr_backbone, "name": "backbone"})
    return groups


class JsonLog:
    """Append-only JSON lines on rank 0; counts its records for exact resume."""

    def __init__(self, path: Path, enabled: bool, keep: int | None):
        self.path, self.enabled, self.count = path, enabled, 0
        if not enabled:
            return
        if keep is None:
            path.write_text("")
        else:  # drop what the interrupted run wrote after its checkpoint
            lines = path.read_text().splitlines(keepends=True) if path.exists() else []
            path.write_text("".join(lines[:keep]))
            self.count = min(keep, len(lines))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.count += 1


def _trainable_cnn(cfg: Config, stage: str) -> bool:
    tc = cfg.pretrain if stage == "pretrain" else cfg.finetune
    if stage == "pretrain":
        return tc.lr_backbone > 0 and not cfg.model.frozen_cnn
    return tc.lr_backbone > 0


def _build(cfg: Config, stage: str):
    from ..models import build_criterion, build_detr, build_updetr

    if stage == "pretrain":
        return build_updetr(cfg), build_criterion(cfg, pretext=True), "pretext", 2
    return build_detr(cfg), build_criterion(cfg, pretext=False), "detection", cfg.model.num_classes


def prepare_model(cfg: Config, stage: str):
    """(model, criterion, trainable_cnn) for a stage. A CNN that never steps (lr_backbone 0,
    or the frozen pre-training CNN) gets requires_grad False: no gradient, not in the optimizer.
    """
    model, criterion, _, _ = _build(cfg, stage)
    trainable_cnn = _trainable_cnn(cfg, stage)
    if not trainable_cnn:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    if stage == "pretrain" and not cfg.pretext.reconstruction:
        for p in model.reconstruction_head.parameters():  # unused: no gradient (and DDP-safe)
            p.requires_grad_(False)
    return model, criterion, trainable_cnn


def _init_from_pretext(model, cfg: Config, init, log: JsonLog) -> dict:
    from ..models import init_detr_from_pretext

    ckpt = load_checkpoint(init)
    check_kind(ckpt, "pretext", None, init)
    check_settings(ckpt, cfg.model, init)
    report = init_detr_from_pretext(model, model_state(ckpt))
    log.write({"type": "init", "init": str(init), **report})
    return report


def _report_cnn_weights(model, log: JsonLog | None, main: bool) -> None:
    """Print the CNN weight-load report (models.weights.LoadReport) and, unless ``log`` is
    None, log it as ``{"type": "cnn_weights", path, format, loaded, ignored}`` (ignored:
    counts per reason)."""
    report = getattr(model.backbone[0], "weights_report", None)
    if report is None:
        return
    if main:
        print(f"[updetr-lite] CNN weights: {report}")
    if log is not None:
        log.write({"type": "cnn_weights"} | report.summary())


def _epoch_record(epoch, step, sums, count):
    return {"type": "epoch", "epoch": epoch, "step": step, "batches": count} | {
        k: v / max(count, 1) for k, v in sums.items()
    }


def train(
    cfg: Config,
    stage: str,
    out_dir: str | os.PathLike,
    init: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    last_every_steps: int = 100,
    progress: bool = True,
) -> dict:
    """Pre-train UP-DETR (stage 'pretrain') or fine-tune DETR (stage 'finetune').

    Args:
        cfg: the configuration; cfg.pretrain or cfg.finetune gives the schedule.
        out_dir: where config.json, log.jsonl and the checkpoints go.
        init: fine-tuning only: a pretext checkpoint to start the transformer from (UP-DETR);
            None trains the transformer from scratch (the DETR baseline). Both load the CNN
            from cfg.model.backbone_weights.
        resume: continue exactly from out_dir/last.pth (mid-epoch position included).
        device: default cuda if available, else cpu; with torchrun, cuda:LOCAL_RANK.
        last_every_steps: also write last.pth every this many steps (0: only per epoch).
    Returns:
        a summary dict: steps, epochs, final metrics / loss, checkpoint paths, timing.
    """
    if stage not in STAGES:
        raise TrainingError(f"stage must be 'pretrain' or 'finetune', not {stage!r}")
    if init is not None and stage != "finetune":
        raise TrainingError("init= is for fine-tuning from a pretext checkpoint")
    cfg.validate()
    tc = cfg.pretrain if stage == "pretrain" else cfg.finetune
    out = Path(out_dir)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    info = du.init_distributed(device)
    if device.type == "cuda" and info.distributed:
        device = torch.device("cuda", info.local_rank)
    with out_lock(out, enabled=info.is_main):
        return _train(cfg, stage, tc, out, init, resume, device, info, last_every_steps, progress)


# settings that may differ on resume: they change how long the run goes and where files are,
# not the trajectory so far (anything else is refused: the optimizer state would silently
# keep the old lr, the model its old shapes)
RESUMABLE_CHANGES = {
    "data.num_workers",
    "data.cache_dir",
    "data.pretext_root",
    "data.detection_root",
    "model.backbone_weights",  # the CNN's weights come from the checkpoint
}
RESUMABLE_SCHEDULE = ("epochs", "max_steps", "eval_every", "checkpoint_every", "log_every")


def _settings_changes(old: dict, new: dict, stage: str) -> list[tuple[str, object, object]]:
    """(section.field, old, new) of this stage's settings that differ (the other stage's
    schedule and the preset name do not matter)."""
    other = "finetune" if stage == "pretrain" else "pretrain"
    changes = []
    for section, fields in new.items():
        if not isinstance(fields, dict) or section == other:
            continue
        for k, v in fields.items():
            was = old.get(section, {}).get(k)
            if was != v:
                changes.append((f"{section}.{k}", was, v))
    return changes


def _check_resume_settings(ckpt: dict, cfg: Config, stage: str, path: Path) -> None:
    """Refuse (TrainingError naming them) settings that differ from the checkpoint's, except
    RESUMABLE_CHANGES and the schedule's length and bookkeeping, which are applied and said."""
    if not isinstance(ckpt.get("config"), dict):
        return
    old = Config.from_dict(ckpt["config"]).to_dict()
    changes = _settings_changes(old, cfg.to_dict(), stage)
    allowed = RESUMABLE_CHANGES | {f"{stage}.{k}" for k in RESUMABLE_SCHEDULE}
    refused = [c for c in changes if c[0] not in allowed]
    text = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in (refused or changes)[:6])
    more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
    if refused:
        raise TrainingError(
            f"resume: {path} was trained with other settings ({text}{more}); resume with "
            "the settings in its config.json, or start a new --out"
        )
    if changes and du.is_main_process():
        print(f"[updetr-lite] resume: applying changed settings: {text}")


def _train(cfg, stage, tc, out, init, resume, device, info, last_every_steps, progress) -> dict:
    main = info.is_main
    if main:
        _clean_temporary_files(out)
    set_deterministic(tc.deterministic)
    seed_everything(tc.seed)  # the same initial weights (and frozen CNN) on every rank

    kind, num_classes = (
        ("pretext", 2) if stage == "pretrain" else ("detection", cfg.model.num_classes)
    )
    ckpt = None
    if resume:
        ckpt = load_checkpoint(out / "last.pth")
        check_kind(ckpt, kind, num_classes, out / "last.pth")
        _check_resume_settings(ckpt, cfg, stage, out / "last.pth")
        if main:
            _repair_checkpoint_set(out, ckpt, tc)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(cfg.to_json())
    log = JsonLog(out / "log.jsonl", main, ckpt["log_records"] if ckpt else None)

    model, criterion, trainable_cnn = prepare_model(cfg, stage)
    _report_cnn_weights(model, None if ckpt else log, main)  # a resumed log has it already
    if tc.cache_features:
        ft.check_cacheable(trainable_cnn, stage)  # before any data is built
    init_report = None
    if init is not None and ckpt is None:
        init_report = _init_from_pretext(model, cfg, init, log)
    model.to(device)
    criterion.to(device)

    data = build_data(cfg, stage, tc, info, model, device, trainable_cnn, progress)
    if ckpt is None:  # a resumed log has these records already
        for what, report in data.cache_skips or []:
            log.write(
                {"type": "skips", "step": 0, "epoch": 0, "where": what}
                | {"report": _jsonable(report)}
            )
    batches, sampler, seeded = data.batches, data.sampler, data.seeded
    val_loader, coco_gt = data.val_loader, data.coco_gt
    step_model = du.wrap_ddp(StepModel(model, stage == "pretrain", tc.cache_features), device)
    eval_model = _EvalForward(model) if tc.cache_features else model
    # fused: one vectorised pass over each parameter (CPU and CUDA); 3x faster than the loop
    optimizer = torch.optim.AdamW(
        _param_groups(model, tc), lr=tc.lr, weight_decay=tc.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=tc.lr_drop, gamma=0.1)

    seed_everything(tc.seed + info.rank)  # then each rank its own dropout / shuffles

    # state that a checkpoint carries
    epoch, batches_done, step = 0, 0, 0
    best = None  # finetune: best AP; pretrain: lowest epoch loss
    epoch_sums, epoch_count = {}, 0
    window, window_count = {}, 0
    last_metrics = None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:  # PyTorch lists every key: keep the first line's gist
            raise TrainingError(
                f"resume: {out / 'last.pth'} does not fit the {kind} model of these settings "
                f"({' '.join(str(e).split())[:200]})"
            ) from e
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        epoch, batches_done, step = ckpt["epoch"], ckpt["batches_done"], ckpt["step"]
        best, last_metrics = ckpt.get("best"), ckpt.get("metrics")
        epoch_sums, epoch_count = ckpt["epoch_stats"]
        window, window_count = ckpt["window"]
        rngs = ckpt["rng"]
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        elif main:
            print(f"[updetr-lite] resume: {len(rngs)} RNG states for {info.world_size} processes")
        if ckpt.get("config") != cfg.to_dict() and main:
            print("[updetr-lite] resume: the configuration differs from the checkpoint's")

    def state(epoch_, batches_done_) -> dict:
        return {
            "kind": kind,
            "num_classes": num_classes,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch_,
            "batches_done": batches_done_,
            "step": step,
            "rng": du.all_gather_object(rng_state()),
            "config": cfg.to_dict(),
            "stage": stage,
            "best": best,
            "metrics": last_metrics,
            "epoch_stats": (epoch_sums, epoch_count),
            "window": (window, window_count),
            "log_records": log.count,
            "world_size": info.world_size,
        }

    def check_weights(epoch_: int, what: str) -> None:
        bad = _non_finite(model.state_dict())
        if bad:  # same weights on every rank: all of them stop here
            raise NonFiniteLossError(
                f"epoch {epoch_}, step {step}: {len(bad)} weight tensors hold NaN or inf "
                f"(first: {bad[0]}); {what}; {stopped()}"
            )

    def save(name: str, st: dict) -> None:
        nonlocal last_good
        check_weights(st["epoch"], f"{name} was not written")
        if main:
            atomic_save(st, out / name)
        if name == "last.pth":
            last_good = out / name

    def run_eval(epoch_):
        nonlocal last_metrics
        check_weights(epoch_, "not evaluated, no checkpoint written")
        metrics = evaluate(eval_model, val_loader, coco_gt, device)
        last_metrics = metrics
        log.write({"type": "eval", "step": step, "epoch": epoch_} | metrics)
        report = getattr(val_loader.dataset, "report_skips", lambda: {})()
        if report:  # val images that could not be read (not on the cached path: no reads)
            log.write(
                {"type": "skips", "step": step, "epoch": epoch_, "where": "val"}
                | {"report": _jsonable(report)}
            )
        return metrics

    from ..fastpath import amp_enabled

    amp = amp_enabled(tc.amp, device, f"{stage}.amp", warn=main)  # bf16 only where fast

    last_good = out / "last.pth" if ckpt is not None else None  # what a stop points to

    def stopped() -> str:
        if last_good is None:
            return "training stopped before any checkpoint was written"
        return f"training stopped, the last good checkpoint is {last_good}"

    max_steps = tc.max_steps if tc.max_steps > 0 else math.inf
    t_start, images_seen = time.time(), 0
    t_window, images_window = time.time(), 0
    done = step >= max_steps or epoch >= tc.epochs
    per_rank = batches.loader.batch_size
    batches_per_epoch = math.ceil(sampler.num_samples / per_rank)
    planned_steps = min(max_steps, tc.epochs * batches_per_epoch)
    if ckpt is None:  # what this run is set to train (the report reads epochs off it)
        log.write(
            {
                "type": "plan",
                "steps_per_epoch": batches_per_epoch,
                "images_per_epoch": len(seeded),
                "batch_size": tc.batch_size,
                "epochs": tc.epochs,
                "max_steps": tc.max_steps,
                "planned_steps": planned_steps,
                "world_size": info.world_size,
            }
        )
    model.train()
    while not done:
        seeded.epoch = epoch
        sampler.set_epoch(epoch)
        sampler.start = batches_done * per_rank
        bar = _progress(batches, main and progress, stage, epoch, batches_done)
        for batch in batches:
            try:
                losses = compute_losses(step_model, criterion, batch, device, amp)
            except NonFiniteOutputError as e:  # raised by the matcher, before any loss exists
                raise NonFiniteLossError(
                    f"step {step + 1} (epoch {epoch}): {e}; {stopped()}"
                ) from e
            flat = torch.stack([v.detach().float() for v in losses.values()]).tolist()  # one sync
            values = du.reduce_mean(dict(zip(losses, flat)), device)
            _check_finite(values, step + 1, epoch, stopped())
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if tc.clip_max_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_max_norm)
                if not torch.isfinite(norm):
                    raise NonFiniteLossError(
                        f"step {step + 1} (epoch {epoch}): gradient norm is {norm.item()}; "
                        f"{stopped()}"
                    )
            optimizer.step()
            step += 1
            batches_done += 1
            n_images = len(batch["targets"]) * info.world_size
            images_seen += n_images
            images_window += n_images
            for k, v in values.items():
                window[k] = window.get(k, 0.0) + v
                epoch_sums[k] = epoch_sums.get(k, 0.0) + v
            window_count += 1
            epoch_count += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            if step % tc.log_every == 0:
                now = time.time()
                log.write(
                    {"type": "train", "step": step, "epoch": epoch}
                    | {k: v / window_count for k, v in window.items()}
                    | {
                        "lr": optimizer.param_groups[0]["lr"],
                        "lr_backbone": next(
                            (g["lr"] for g in optimizer.param_groups if g["name"] == "backbone"),
                            0.0,
                        ),
                        "images_per_s": images_window / max(now - t_window, 1e-9),
                    }
                )
                window, window_count = {}, 0
                t_window, images_window = now, 0
            if step >= max_steps:
                done = True
                break
            if (
                last_every_steps
                and step % last_every_steps == 0
                and batches_done < batches_per_epoch
            ):
                save("last.pth", state(epoch, batches_done))
        if bar is not None:
            bar.close()
        # every rank's sampler has the same length, so ranks agree on this
        epoch_finished = batches_done >= batches_per_epoch
        sampler.start = 0
        skip = getattr(data.source, "report_skips", None)
        if skip is not None and epoch_finished:
            # counted, logged skips (images too small for query patches), of every rank's shard
            report = merge_skip_reports(du.all_gather_object(skip()))
            if report:
                log.write(
                    {"type": "skips", "step": step, "epoch": epoch, "report": _jsonable(report)}
                )
        record = _epoch_record(epoch, step, epoch_sums, epoch_count)
        if stage == "pretrain":
            log.write(record)
        improved = False
        if stage == "finetune":
            last_epoch = epoch + 1 >= tc.epochs
            if (epoch + 1) % tc.eval_every == 0 or last_epoch or done:
                metrics = run_eval(epoch)
                improved = best is None or metrics["AP"] > best
                best = metrics["AP"] if improved else best
        elif epoch_count:
            improved = best is None or record["loss"] < best
            best = record["loss"] if improved else best
        epoch_sums, epoch_count = {}, 0
        if epoch_finished:
            scheduler.step()
            epoch += 1
            batches_done = 0
        if epoch >= tc.epochs:
            done = True
        st = state(epoch, batches_done)
        save("last.pth", st)
        if improved:
            save("best.pth", st)
        if epoch_finished and tc.checkpoint_every and epoch % tc.checkpoint_every == 0:
            save(f"epoch_{epoch}.pth", st)
        du.barrier()
    wall = time.time() - t_start
    trained = {  # what was trained, against what was set (a max_steps budget stops early)
        "steps": step,
        "planned_steps": planned_steps,
        "epochs_trained": epoch + batches_done / batches_per_epoch,
        "images_seen": epoch * len(seeded) + min(batches_done * tc.batch_size, len(seeded)),
        "stopped_by": "max_steps" if step < tc.epochs * batches_per_epoch else "epochs",
    }
    log.write({"type": "end", "epoch": epoch} | trained)
    summary = {
        "stage": stage,
        "out_dir": str(out),
        **trained,
        "epochs": epoch,
        "best": best,
        "metrics": last_metrics,
        "init_report": init_report,
        "last": str(out / "last.pth"),
        "best_checkpoint": str(out / "best.pth") if (out / "best.pth").exists() else None,
        "wall_s": wall,
        "images_per_s": images_seen / max(wall, 1e-9),
    }
    return summary


def merge_skip_reports(reports: list[dict]) -> dict:
    """One skip report from every rank's: counts summed, the first 20 files; {} if none."""
    out: dict = {}
    for r in reports:
        for k, v in (r or {}).items():
            if k == "files":
                out["files"] = (out.get("files", []) + list(v))[:20]
            else:
                out[k] = out.get(k, 0) + v
    return out if any(v for k, v in out.items() if k != "files") else {}


def _clean_temporary_files(out: Path) -> None:
    """Remove what an interrupted atomic_save left (``.NAME.pth.XXXX.tmp``); the lock on
    ``out`` guarantees that no other run is writing them."""
    stale = sorted(out.glob(".*.pth.*.tmp"))
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        print(f"[updetr-lite] {out}: removed {len(stale)} temporary files of an interrupted save")


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint file so that ``dst`` is always the old or the new file."""
    import shutil
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_MISSING = object()


def _field(path: Path, key: str):
    """``key`` of the checkpoint at ``path``; _MISSING when absent or unreadable."""
    if not path.is_file():
        return _MISSING
    try:
        return load_checkpoint(path).get(key, _MISSING)
    except ValueError:  # damaged: rewrite it
        return _MISSING


def _repair_checkpoint_set(out: Path, ckpt: dict, tc) -> None:
    """One save writes last.pth, then best.pth (if improved), then epoch_K.pth: a kill in
    between leaves the later ones missing or stale. last.pth holds the state they should
    hold: best.pth when its best value differs from last's, epoch_K.pth when last.pth ends
    epoch K and epoch_K.pth is missing or of another step. Rewrite those from last.pth."""
    last, fixed = out / "last.pth", []
    epoch = ckpt["epoch"]
    if ckpt["batches_done"] == 0 and epoch and tc.checkpoint_every:
        if (
            epoch % tc.checkpoint_every == 0
            and _field(out / f"epoch_{epoch}.pth", "step") != ckpt["step"]
        ):
            fixed.append(f"epoch_{epoch}.pth")
    if ckpt.get("best") is not None and _field(out / "best.pth", "best") != ckpt["best"]:
        fixed.append("best.pth")
    for name in fixed:
        _copy_checkpoint(last, out / name)
    if fixed:
        print(f"[updetr-lite] resume: rewrote {', '.join(fixed)} from last.pth (a save was cut)")


def _jsonable(x):
    try:
        json.dumps(x)
        return x
    except TypeError:
        return str(x)


def _non_finite(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    floats = [(k, v) for k, v in state.items() if v.is_floating_point()]
    if not floats:
        return []
    ok = torch.stack([torch.isfinite(v).all() for _, v in floats]).tolist()  # one sync
    return [k for (k, _), good in zip(floats, ok) if not good]


def _check_finite(values: dict[str, float], step: int, epoch: int, stopped: str) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(v) and k != "loss"]
    if not bad and not math.isfinite(values["loss"]):
        bad = ["loss"]
    if bad:
        raise NonFiniteLossError(
            f"step {step} (epoch {epoch}): loss term {bad[0]} is {values[bad[0]]}"
            f"{' (also ' + ', '.join(bad[1:]) + ')' if len(bad) > 1 else ''}; {stopped}"
        )


def _progress(batches, enabled: bool, stage: str, epoch: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=len(batches.loader) + initial, initial=initial, desc=f"{stage} epoch {epoch}")
