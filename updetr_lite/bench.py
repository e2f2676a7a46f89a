"""``updetr-lite bench``: how fast this machine pre-trains and fine-tunes a preset's models.

Measured, each on random tensors of the preset's image size (no disk, no augmentation):

- pretext training: one optimizer step of UP-DETR on B images with M query patches each
  (forward, loss with the Hungarian matching, backward, gradient clipping, AdamW step);
  seconds per image and images per second, ``warmup`` steps excluded;
- fine-tuning: the same for DETR on B images with a few random boxes each;
- the data pipeline: pretext samples per second of one process (= one loader worker,
  ``data.bench.pretext_throughput``; the embedded images when the preset has no local data);
- the Hungarian matcher alone: milliseconds per image (N queries against M patch boxes);
- peak memory: the process's RSS high-water mark (``resource.getrusage``) on CPU, or
  ``torch.cuda.max_memory_allocated`` per phase on CUDA, in MiB.

Training images are squares of the preset's pre-training (``max(pretext_scales)``) and
fine-tuning (``max(scales)``) short side, capped at the max size; the step runs the full
model on images (no cached features), with the preset's frozen/trainable CNN, fast path and
bf16 autocast settings.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import sys
import time

import torch

from .config import Config


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    """The process's resident set high-water mark (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _side(short: int, max_size: int) -> int:
    return int(min(short, max_size))


def random_boxes(n: int, generator: torch.Generator, min_side: float = 0.1) -> torch.Tensor:
    """[n, 4] random cxcywh boxes inside the unit square with sides in [min_side, 0.6]."""
    wh = min_side + (0.6 - min_side) * torch.rand(n, 2, generator=generator)
    c = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=generator)
    return torch.cat([c, wh], -1)


def _optimizer(model, tc) -> torch.optim.Optimizer:
    main = [
        p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")
    ]
    cnn = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    groups = [{"params": main, "lr": tc.lr}]
    if cnn:
        groups.append({"params": cnn, "lr": tc.lr_backbone})
    return torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)


def _time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - t


def _train_step(model, criterion, optimizer, tc, device, make_inputs):
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        args, targets = make_inputs()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.amp):
            outputs = model(*args)
        losses = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if tc.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.clip_max_norm)
        optimizer.step()

    return step


def _phase_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_pretext(cfg: Config, device, batch: int, steps: int, warmup: int) -> dict:
    """Pretext training step time of UP-DETR on random images and query patches."""
    from .models import build_criterion, build_updetr

    tc, m, p = cfg.pretrain, cfg.model, cfg.pretext
    side = _side(max(cfg.data.pretext_scales), cfg.data.pretext_max_size)
    model = build_updetr(cfg).to(device).train()
    if not (tc.lr_backbone > 0 and not m.frozen_cnn):  # as the engine: a CNN that never steps
        for q in model.backbone.parameters():
            q.requires_grad_(False)
    criterion = build_criterion(cfg, pretext=True).to(device)
    optimizer = _optimizer(model, tc)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, side, side, generator=g).to(device)
    mask = torch.zeros(batch, side, side, dtype=torch.bool, device=device)
    patches = torch.randn(batch, p.num_patches, 3, p.patch_size, p.patch_size, generator=g)
    patches = patches.to(device) if p.patch_feature == "crop" else None

    def make_inputs():
        boxes = torch.stack([random_boxes(p.num_patches, g) for _ in range(batch)]).to(device)
        targets = [
            {"boxes": b, "labels": torch.ones(p.num_patches, dtype=torch.int64, device=device)}
            for b in boxes
        ]
        return (images, mask, patches, boxes), targets

    _reset_memory(device)
    seconds = _time_steps(
        _train_step(model, criterion, optimizer, tc, device, make_inputs), steps, warmup, device
    )
    n = steps * batch
    return {
        "image_size": [side, side],
        "patch_feature": p.patch_feature,
        "s_per_image": seconds / n,
        "images_per_s": n / seconds,
        "peak_memory_mib": _phase_memory(device),
    }


def bench_finetune(cfg: Config, device, batch: int, steps: int, warmup: int) -> dict:
    """DETR training step time on random images with random boxes (3 per image)."""
    from .models import build_criterion, build_detr

    tc, m = cfg.finetune, cfg.model
    side = _side(max(cfg.data.scales), cfg.data.max_size)
    model = build_detr(cfg).to(device).train()
    if tc.lr_backbone <= 0:
        for q in model.backbone.parameters():
            q.requires_grad_(False)
    criterion = build_criterion(cfg, pretext=False).to(device)
    optimizer = _optimizer(model, tc)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, side, side, generator=g).to(device)
    mask = torch.zeros(batch, side, side, dtype=torch.bool, device=device)

    def make_inputs():
        targets = [
            {
                "boxes": random_boxes(3, g).to(device),
                "labels": torch.randint(1, m.num_classes, (3,), generator=g).to(device),
            }
            for _ in range(batch)
        ]
        return (images, mask), targets

    _reset_memory(device)
    seconds = _time_steps(
        _train_step(model, criterion, optimizer, tc, device, make_inputs), steps, warmup, device
    )
    n = steps * batch
    return {
        "image_size": [side, side],
        "s_per_image": seconds / n,
        "images_per_s": n / seconds,
        "peak_memory_mib": _phase_memory(device),
    }


def bench_matcher(cfg: Config, device, batch: int, repeats: int = 5) -> dict:
    """Hungarian matching of N pretext queries against M patch boxes, per image."""
    from .models import HungarianMatcher

    lc, n, k = cfg.loss, cfg.model.num_queries, cfg.pretext.num_patches
    matcher = HungarianMatcher(lc.cost_class, lc.cost_bbox, lc.cost_giou)
    g = torch.Generator().manual_seed(2)
    outputs = {
        "pred_logits": torch.randn(batch, n, 3, generator=g).to(device),
        "pred_boxes": random_boxes(batch * n, g).view(batch, n, 4).to(device),
    }
    targets = [
        {
            "boxes": random_boxes(k, g).to(device),
            "labels": torch.ones(k, dtype=torch.int64, device=device),
        }
        for _ in range(batch)
    ]
    with torch.no_grad():
        matcher(outputs, targets)  # warm-up
        _sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            matcher(outputs, targets)
        _sync(device)
    seconds = (time.perf_counter() - t) / (repeats * batch)
    return {"queries": n, "targets": k, "ms_per_image": 1000 * seconds}


def bench_data(cfg: Config, seconds: float) -> dict:
    """Pretext samples per second of one process, on the preset's data or the embedded set."""
    from .data.bench import pretext_throughput

    source = cfg.data.pretext_root or "embedded"
    if not cfg.data.pretext_root:  # e.g. paper without ImageNet given: the embedded images
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pretext_root="embedded"))
    return {
        "source": source,
        "samples_per_s_per_worker": float(pretext_throughput(cfg, seconds=seconds)),
    }


def run_bench(
    cfg: Config,
    device: str | torch.device = "cpu",
    batch: int | None = None,
    steps: int = 5,
    warmup: int = 2,
    data: bool = True,
    data_seconds: float = 2.0,
) -> dict:
    """All measurements as one JSON-ready dict (see the module docstring).

    batch: images per training step; default the preset's pre-training batch, at most 8 (a
    CPU or one GPU: the paper's 256 is spread over 64 GPUs, 4 each)."""
    device = torch.device(device)
    if steps < 1 or warmup < 0:
        raise ValueError(f"bench: steps must be >= 1 and warmup >= 0 (got {steps}, {warmup})")
    batch = batch or min(cfg.pretrain.batch_size, 8)
    if batch < 1:
        raise ValueError(f"bench: --batch must be >= 1, not {batch}")
    torch.manual_seed(0)
    report = {
        "hardware": hardware(device),
        "preset": cfg.name,
        "device": str(device),
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "num_queries": cfg.model.num_queries,
        "num_patches": cfg.pretext.num_patches,
        "pretext": bench_pretext(cfg, device, batch, steps, warmup),
        "finetune": bench_finetune(cfg, device, batch, steps, warmup),
        "matcher": bench_matcher(cfg, device, batch),
    }
    if data:
        report["data"] = bench_data(cfg, data_seconds)
    report["peak_memory_mib"] = max(
        report["pretext"]["peak_memory_mib"], report["finetune"]["peak_memory_mib"]
    )
    report["peak_memory_source"] = (
        "torch.cuda.max_memory_allocated" if device.type == "cuda" else "getrusage ru_maxrss"
    )
    return report


def format_report(r: dict) -> str:
    """A few readable lines of a run_bench report."""
    hw = r["hardware"]
    lines = [
        f"{r['preset']} on {r['device']}: {hw['gpu'] or hw['cpu']} "
        f"({hw['cpu_count']} CPUs, {hw['torch_threads']} torch threads), batch {r['batch']}",
        f"pretext training: {r['pretext']['images_per_s']:.1f} images/s "
        f"({1000 * r['pretext']['s_per_image']:.1f} ms/image, {r['pretext']['image_size'][0]} px, "
        f"M={r['num_patches']}, N={r['num_queries']})",
        f"fine-tuning: {r['finetune']['images_per_s']:.1f} images/s "
        f"({r['finetune']['image_size'][0]} px)",
        f"Hungarian matcher: {r['matcher']['ms_per_image']:.3f} ms/image",
    ]
    if "data" in r:
        lines.append(
            f"data pipeline: {r['data']['samples_per_s_per_worker']:.1f} samples/s per worker "
            f"({r['data']['source']})"
        )
    lines.append(f"peak memory: {r['peak_memory_mib']:.0f} MiB ({r['peak_memory_source']})")
    return "\n".join(lines)
