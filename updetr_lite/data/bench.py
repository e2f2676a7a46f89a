"""Data throughput: how fast one process prepares pretext samples (image + M query patches)."""

from __future__ import annotations

import time


def pretext_throughput(cfg, seconds: float = 5.0, pipeline: str | None = None) -> float:
    """Samples per second that one process draws from the pretext dataset of ``cfg``
    (image load, resize; pipeline 'worker': normalise, M patches cut, resized, augmented;
    'device': M boxes and augmentation parameters drawn), for ``seconds``.
    ``pipeline``: default ``cfg.pretext.patch_pipeline``."""
    from .build import build_pretext_dataset

    ds = build_pretext_dataset(cfg)
    ds.patch_pipeline = pipeline or ds.patch_pipeline
    ds[0]  # warm-up: first-use costs (imports, file cache)
    n, i, start = 0, 1, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ds[i % len(ds)]
        n, i = n + 1, i + 1
    return n / (time.perf_counter() - start)


def device_pass_ms(cfg, device, batch: int, repeats: int = 5) -> float:
    """Milliseconds per sample of the device path's batched pass (``DevicePatches``: cut,
    resize, augment, normalise) on ``device``, over batches of ``batch`` dataset samples;
    the median of ``repeats`` batches after one warm-up."""
    import torch

    from .build import build_pretext_dataset
    from .device_patches import DevicePatches, collate_device
    from .pretext import one_thread

    ds = build_pretext_dataset(cfg)
    ds.patch_pipeline = "device"
    device = torch.device(device)
    make = DevicePatches(cfg.pretext.patch_size)
    times = []
    for r in range(repeats + 1):
        with one_thread():
            items = [ds[(r * batch + j) % len(ds)] for j in range(batch)]
        images, mask, targets, _, params = collate_device(items)
        images, mask = images.to(device), mask.to(device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            make(images, mask, targets, params)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) / batch)
    times = sorted(times[1:])
    return 1000 * times[len(times) // 2]


def make_jpegs(folder, count: int, size: tuple[int, int] = (375, 500), seed: int = 0) -> list:
    """``count`` photo-like JPEGs (quality 90) of ``size`` (h, w) pixels in ``folder``: smooth
    colour gradients, a few flat shapes and sensor-like noise, so that they compress and
    decode like ImageNet photos (ImageNet's typical image is about 500 x 375). -> paths."""
    from pathlib import Path

    import numpy as np
    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(count):
        a = rng.uniform(0.2, 1.0, 3) / max(h, w)
        base = 128 + 100 * np.sin(
            np.stack([xx * a[0] * 9, yy * a[1] * 7, (xx + yy) * a[2] * 5], -1)
        )
        noise = rng.normal(0, 6, (h, w, 3))
        im = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
            draw.ellipse([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = folder / f"img_{i:05d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def decode_speed(paths, seconds: float = 2.0) -> dict:
    """Images per second of one thread decoding ``paths`` to uint8 [3, H, W] tensors with PIL
    (``Image.open`` + ``pil_to_tensor``) and with ``torchvision.io.decode_jpeg``."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2.functional import pil_to_tensor

    from .pretext import load_rgb, one_thread

    def pil(p):
        return pil_to_tensor(load_rgb(p))

    def tv(p):
        return decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB)

    import warnings

    out = {}
    with one_thread(), torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's decode_jpeg
        for name, fn in (("pil", pil), ("decode_jpeg", tv)):
            fn(paths[0])
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                fn(paths[n % len(paths)])
                n += 1
            out[name] = n / (time.perf_counter() - start)
    return out
