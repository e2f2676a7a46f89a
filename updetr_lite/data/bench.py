"""Data throughput: how fast one process prepares pretext samples (image + M query patches)."""

from __future__ import annotations

import time


def pretext_throughput(cfg, seconds: float = 5.0) -> float:
    """Samples per second that one process draws from the pretext dataset of ``cfg``
    (image load, resize and normalise; M patches cut, resized, augmented), for ``seconds``."""
    from .build import build_pretext_dataset

    ds = build_pretext_dataset(cfg)
    ds[0]  # warm-up: first-use costs (imports, file cache)
    n, i, start = 0, 1, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ds[i % len(ds)]
        n, i = n + 1, i + 1
    return n / (time.perf_counter() - start)
