"""``updetr-lite bench``: how fast this machine pre-trains and fine-tunes a preset's models.

Measured, each on random tensors of the preset's image size (no disk, no augmentation):

- pretext training: one optimizer step of UP-DETR on B images with M query patches each
  (forward, loss with the Hungarian matching, backward, gradient clipping, AdamW step);
  seconds per iteration and per image, images per second, the share of forward + loss,
  ``warmup`` steps excluded; ``repeats`` blocks of ``steps`` steps, the median block reported
  (and the fastest, and every block: other jobs on a shared machine slow some blocks down);
  whether the frozen CNN really ran the fast path, in bf16, and whether amp was on;
- fine-tuning: the same for DETR on B images with a few random boxes each;
- the data pipeline: pretext samples per second of one process (= one loader worker,
  ``data.bench.pretext_throughput``) for each patch pipeline ('worker': patches cut and
  augmented in the worker; 'device': the worker only decodes, resizes and draws, and the
  batched pass on the device is reported in ms per sample); on the preset's data,
  ``--jpegs N`` photo-like JPEGs, or the embedded images; with JPEGs, PIL's decoding
  against ``torchvision.io.decode_jpeg``;
- the Hungarian matcher alone: milliseconds per image (N queries against M patch boxes);
- peak memory: the process's RSS high-water mark (``resource.getrusage``) on CPU, or
  ``torch.cuda.max_memory_allocated`` per phase on CUDA, in MiB.

Training images are multi-scale as the data pipeline leaves them: per image a shortest side
drawn from ``data.pretext_scales`` (fine-tuning: ``data.scales``), a width ``aspect`` times
the height (1: squares; 4/3: a typical photo), scaled down so that the longest side is at most
``pretext_max_size`` (``max_size``), zero padded to the largest in the batch with the padding
mask set, as the collate does. Query patches are random ``patch_size`` squares (patch feature
``'crop'``: the CNN runs on them every step). The step runs the full model on images (no
cached features), with the preset's frozen/trainable CNN, fast path and bf16 autocast
(``TrainConfig.amp``) settings. Inputs are made before the clock starts. CUDA: each step is
synchronised before reading the clock; memory is ``max_memory_allocated`` per phase.

This module holds the report (``run_bench``, ``format_report``), the hardware, the matcher
and the data pipeline; the timed training steps are bench_steps.py.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time

import torch

from .bench_steps import _median, _sync, bench_finetune, bench_pretext, random_boxes
from .config import Config
from .fastpath import bf16_supported


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
        # the vector kernels torch runs (AVX512, AVX2, ...; ATEN_CPU_CAPABILITY caps them) and
        # whether bf16 is fast: the figures differ by both
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16": bf16_supported(device),
        "gpu": None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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


def bench_data(
    cfg: Config, seconds: float, device="cpu", batch: int = 2, repeats: int = 1, jpegs: int = 0
) -> dict:
    """Pretext samples per second of one process (= one loader worker) for each patch
    pipeline, on the preset's data, ``jpegs`` photo-like 500 x 375 JPEGs made for it in
    ``data.cache_dir``, or the embedded set; the device path's batched pass in ms per sample
    on ``device``; with JPEGs, PIL against ``torchvision.io.decode_jpeg``. Medians of
    ``repeats`` blocks of ``seconds / repeats`` seconds each."""
    from pathlib import Path

    from .data.bench import decode_speed, device_pass_ms, make_jpegs, pretext_throughput

    source, files = cfg.data.pretext_root or "embedded", None
    if jpegs:
        folder = Path(cfg.data.cache_dir) / f"bench_jpegs_{jpegs}"
        files = sorted(folder.glob("*.jpg"))
        if len(files) != jpegs:
            files = make_jpegs(folder, jpegs)
        source = f"{jpegs} photo-like 500x375 JPEGs ({folder})"
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pretext_root=str(folder)))
    elif not cfg.data.pretext_root:  # e.g. paper without ImageNet given: the embedded images
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pretext_root="embedded"))
    block = seconds / repeats
    paths = {}
    for name in ("worker", "device"):
        rates = [pretext_throughput(cfg, seconds=block, pipeline=name) for _ in range(repeats)]
        paths[name] = {"samples_per_s_per_worker": _median(rates), "blocks": rates}
    paths["device"]["device_ms_per_sample"] = device_pass_ms(cfg, device, batch, repeats=3)
    out = {
        "source": source,
        "pipeline": cfg.pretext.patch_pipeline,
        "samples_per_s_per_worker": paths[cfg.pretext.patch_pipeline]["samples_per_s_per_worker"],
        "paths": paths,
    }
    if files:
        out["decode_images_per_s"] = decode_speed(files, seconds=block)
    return out


def run_bench(
    cfg: Config,
    device: str | torch.device = "cpu",
    batch: int | None = None,
    steps: int = 5,
    warmup: int = 2,
    data: bool = True,
    data_seconds: float = 2.0,
    repeats: int = 1,
    aspect: float = 1.0,
    finetune: bool = True,
    jpegs: int = 0,
) -> dict:
    """All measurements as one JSON-ready dict (see the module docstring).

    batch: images per training step; default the preset's pre-training batch, at most 8 (a
    CPU or one GPU: the paper's 256 is spread over 64 GPUs, 4 each)."""
    device = torch.device(device)
    if steps < 1 or warmup < 0:
        raise ValueError(f"bench: steps must be >= 1 and warmup >= 0 (got {steps}, {warmup})")
    if jpegs < 0:
        raise ValueError(f"bench: --jpegs must be >= 0, not {jpegs}")
    if repeats < 1:
        raise ValueError(f"bench: repeats must be >= 1, not {repeats}")
    if not aspect >= 1.0:
        raise ValueError(f"bench: aspect (width/height of the photos) must be >= 1, not {aspect}")
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
        "repeats": repeats,
        "aspect": aspect,
        "num_queries": cfg.model.num_queries,
        "num_patches": cfg.pretext.num_patches,
        "pretext": bench_pretext(cfg, device, batch, steps, warmup, repeats, aspect),
        "matcher": bench_matcher(cfg, device, batch),
    }
    if finetune:
        report["finetune"] = bench_finetune(cfg, device, batch, steps, warmup, repeats, aspect)
    if data:
        report["data"] = bench_data(cfg, data_seconds, device, batch, repeats, jpegs)
    report["peak_memory_mib"] = max(
        report[k]["peak_memory_mib"] for k in ("pretext", "finetune") if k in report
    )
    report["peak_memory_source"] = (
        "torch.cuda.max_memory_allocated" if device.type == "cuda" else "getrusage ru_maxrss"
    )
    return report


def format_report(r: dict) -> str:
    """A few readable lines of a run_bench report."""
    hw, pt = r["hardware"], r["pretext"]

    def path(x: dict) -> str:
        cnn = "frozen" if x["frozen_cnn"] else "trainable"
        fast = ("on, bf16" if x["cnn_bf16"] else "on, fp32") if x["fast_cnn"] else "off"
        return f"CNN {cnn}, fast path {fast}, amp {'on' if x['amp'] else 'off'}"

    lines = [
        f"{r['preset']} on {r['device']}: {hw['gpu'] or hw['cpu']} "
        f"({hw['cpu_count']} CPUs, {hw['torch_threads']} torch threads), batch {r['batch']}, "
        f"median of {r['repeats']} x {r['steps']} steps",
        f"pretext training: {pt['images_per_s']:.2f} images/s, {pt['s_per_iteration']:.3f} "
        f"s/iteration, forward {100 * pt['forward_share']:.0f}% "
        f"({pt['backbone']}, {pt['transformer']}, images up to {pt['image_size'][0]}x"
        f"{pt['image_size'][1]} px, M={r['num_patches']} {pt['patch_feature']} patches, "
        f"N={r['num_queries']}; {path(pt)}; peak {pt['peak_memory_mib']:.0f} MiB)",
    ]
    if "finetune" in r:
        ft = r["finetune"]
        lines.append(
            f"fine-tuning: {ft['images_per_s']:.2f} images/s, {ft['s_per_iteration']:.3f} "
            f"s/iteration, forward {100 * ft['forward_share']:.0f}% (images up to "
            f"{ft['image_size'][0]}x{ft['image_size'][1]} px; {path(ft)})"
        )
    lines.append(f"Hungarian matcher: {r['matcher']['ms_per_image']:.3f} ms/image")
    if "data" in r:
        d = r["data"]
        wk, dv = d["paths"]["worker"], d["paths"]["device"]
        lines.append(
            f"data pipeline ({d['source']}), samples/s per worker: patch pipeline 'worker' "
            f"{wk['samples_per_s_per_worker']:.1f}, 'device' {dv['samples_per_s_per_worker']:.1f}"
            f" + {dv['device_ms_per_sample']:.2f} ms/sample on {r['device']} "
            f"(configured: '{d['pipeline']}')"
        )
        if "decode_images_per_s" in d:
            dec = d["decode_images_per_s"]
            lines.append(
                f"JPEG decoding, images/s on one thread: PIL {dec['pil']:.0f}, "
                f"torchvision.io.decode_jpeg {dec['decode_jpeg']:.0f}"
            )
    lines.append(f"peak memory: {r['peak_memory_mib']:.0f} MiB ({r['peak_memory_source']})")
    return "\n".join(lines)
