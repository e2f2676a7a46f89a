"""The timed training steps of ``updetr-lite bench`` (bench.py runs them and reports):
one optimizer step of UP-DETR (``bench_pretext``) and of DETR (``bench_finetune``) on random
multi-scale images, the clock (``repeats`` blocks, the median), the peak memory per phase and
whether the fast path really ran.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from .config import Config
from .fastpath import amp_enabled


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
    # fused, as the engine: one vectorised pass over each parameter instead of a loop
    return torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _time_steps(step, steps: int, warmup: int, device: torch.device, repeats: int = 1) -> dict:
    """Time ``step()`` (which returns its seconds and its forward seconds, the making of
    inputs excluded): ``warmup`` untimed calls, then ``repeats`` blocks of ``steps`` calls.
    -> seconds per iteration and forward seconds per iteration: medians over the blocks (a
    shared, noisy machine), and every block's seconds per iteration."""
    for _ in range(warmup):
        step()
    per_iter, fwd_iter = [], []
    for _ in range(repeats):
        total = fwd = 0.0
        for _ in range(steps):
            t, f = step()
            total, fwd = total + t, fwd + f
        per_iter.append(total / steps)
        fwd_iter.append(fwd / steps)
    return {
        "s_per_iteration": _median(per_iter),
        "forward_s_per_iteration": _median(fwd_iter),
        "s_per_iteration_blocks": per_iter,
    }


def _train_step(model, criterion, optimizer, tc, device, make_inputs):
    """One optimizer step as the engine runs it (``engine.step.train_step``) -> (seconds,
    seconds of forward + loss)."""
    from functools import partial

    from .engine.step import train_step

    params = [p for p in model.parameters() if p.requires_grad]
    amp = amp_enabled(tc.amp, device, "amp")  # bf16 only where fast, as the engine

    def step() -> tuple[float, float]:
        args, targets = make_inputs()
        _sync(device)
        t = time.perf_counter()
        marks = []

        def forward_done():
            _sync(device)
            marks.append(time.perf_counter())

        train_step(
            partial(model, *args),
            targets,
            criterion,
            optimizer,
            params,
            tc.clip_max_norm,
            device,
            amp,
            where="bench step",
            on_losses=forward_done,
        )
        _sync(device)
        return time.perf_counter() - t, marks[0] - t

    return step


def _summary(timing: dict, batch: int) -> dict:
    s = timing["s_per_iteration"]
    return {
        "s_per_iteration": s,
        "s_per_image": s / batch,
        "images_per_s": batch / s,
        "forward_s_per_iteration": timing["forward_s_per_iteration"],
        "forward_share": timing["forward_s_per_iteration"] / s,
        # the fastest block: the least disturbed by other jobs on a shared machine
        "s_per_iteration_best": min(timing["s_per_iteration_blocks"]),
        "s_per_iteration_blocks": timing["s_per_iteration_blocks"],
    }


def fast_path_state(model, device: torch.device) -> dict:
    """Whether the benchmarked model's CNN really runs the fast path (frozen, BN folded,
    channels_last, bf16 autocast where the hardware has it)."""
    from .fastpath import bf16_supported, is_enabled

    frozen = not any(p.requires_grad for p in model.backbone.parameters())
    fast = is_enabled(model)
    return {
        "frozen_cnn": frozen,
        "fast_cnn": fast["fast_cnn"],
        "cnn_bf16": fast["fast_cnn"] and bf16_supported(device),
        # 16-bit dropout masks and the written-out attention: CPU only (CUDA keeps its kernels)
        "fast_dropout": fast["fast_dropout"] and device.type == "cpu",
    }


def _phase_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def draw_size(scales, max_size: int, aspect: float, generator: torch.Generator) -> tuple[int, int]:
    """(h, w) of one image as the data pipeline's multi-scale resize leaves it: shortest side
    drawn uniformly from ``scales``, a landscape photo of width/height ``aspect``, scaled down
    so that the longest side is at most ``max_size``."""
    short = scales[int(torch.randint(len(scales), (1,), generator=generator))]
    long = short * aspect
    f = min(1.0, max_size / long)
    return max(1, round(short * f)), max(1, round(long * f))


def random_batch(sizes, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images of the given (h, w), zero padded to the largest as the collate does:
    -> images [B, 3, H, W], mask bool [B, H, W] (True = padding)."""
    hh, ww = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(sizes), 3, hh, ww)
    mask = torch.ones(len(sizes), hh, ww, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        mask[i, :h, :w] = False
    return images, mask


def _batches(cfg_scales, max_size, aspect, batch, count, generator, device):
    out = []
    for _ in range(count):
        sizes = [draw_size(cfg_scales, max_size, aspect, generator) for _ in range(batch)]
        images, mask = random_batch(sizes, generator)
        out.append((images.to(device), mask.to(device)))
    return out


def bench_pretext(
    cfg: Config, device, batch: int, steps: int, warmup: int, repeats: int = 1, aspect=1.0
) -> dict:
    """Pretext training step time of UP-DETR on random images and query patches."""
    from .models import build_criterion, build_updetr

    tc, m, p = cfg.pretrain, cfg.model, cfg.pretext
    model = build_updetr(cfg).to(device).train()  # its CNN frozen per cnn_trains
    criterion = build_criterion(cfg, pretext=True).to(device)
    optimizer = _optimizer(model, tc)
    g = torch.Generator().manual_seed(0)
    n_batches = warmup + steps * repeats
    data = _batches(
        cfg.data.pretext_scales, cfg.data.pretext_max_size, aspect, batch, n_batches, g, device
    )
    patches = torch.randn(batch, p.num_patches, 3, p.patch_size, p.patch_size, generator=g)
    patches = patches.to(device) if p.patch_feature == "crop" else None
    it = iter(range(10**9))

    def make_inputs():
        images, mask = data[next(it) % n_batches]
        boxes = torch.stack([random_boxes(p.num_patches, g) for _ in range(batch)]).to(device)
        targets = [
            {"boxes": b, "labels": torch.ones(p.num_patches, dtype=torch.int64, device=device)}
            for b in boxes
        ]
        return (images, mask, patches, boxes), targets

    _reset_memory(device)
    timing = _time_steps(
        _train_step(model, criterion, optimizer, tc, device, make_inputs),
        steps,
        warmup,
        device,
        repeats,
    )
    return {
        "image_sizes": [list(d[0].shape[-2:]) for d in data],
        "image_size": [max(d[0].shape[-2] for d in data), max(d[0].shape[-1] for d in data)],
        "patch_feature": p.patch_feature,
        "patch_size": p.patch_size if p.patch_feature == "crop" else None,
        "reconstruction": p.reconstruction,
        "backbone": f"{m.backbone} {m.backbone_layer}",
        "transformer": f"d={m.hidden_dim} {m.enc_layers}+{m.dec_layers} ffn={m.dim_feedforward}",
        "amp": amp_enabled(tc.amp, device, warn=False),
        **fast_path_state(model, device),
        **_summary(timing, batch),
        "peak_memory_mib": _phase_memory(device),
    }


def bench_finetune(
    cfg: Config, device, batch: int, steps: int, warmup: int, repeats: int = 1, aspect=1.0
) -> dict:
    """DETR training step time on random images with random boxes (3 per image)."""
    from .models import build_criterion, build_detr

    tc, m = cfg.finetune, cfg.model
    model = build_detr(cfg).to(device).train()  # its CNN frozen per cnn_trains
    criterion = build_criterion(cfg, pretext=False).to(device)
    optimizer = _optimizer(model, tc)
    g = torch.Generator().manual_seed(1)
    n_batches = warmup + steps * repeats
    data = _batches(cfg.data.scales, cfg.data.max_size, aspect, batch, n_batches, g, device)
    it = iter(range(10**9))

    def make_inputs():
        targets = [
            {
                "boxes": random_boxes(3, g).to(device),
                "labels": torch.randint(1, m.num_classes, (3,), generator=g).to(device),
            }
            for _ in range(batch)
        ]
        return data[next(it) % n_batches], targets

    _reset_memory(device)
    timing = _time_steps(
        _train_step(model, criterion, optimizer, tc, device, make_inputs),
        steps,
        warmup,
        device,
        repeats,
    )
    return {
        "image_size": [max(d[0].shape[-2] for d in data), max(d[0].shape[-1] for d in data)],
        "amp": amp_enabled(tc.amp, device, warn=False),
        **fast_path_state(model, device),
        **_summary(timing, batch),
        "peak_memory_mib": _phase_memory(device),
    }
