"""Randomness of a training run, set so that a resumed run continues bit for bit.

The order of every epoch depends only on (seed, epoch) (``distributed.ResumableSampler``),
every sample's augmentation only on (seed, epoch, index) (``SeededDataset``), and the model's
own randomness (dropout, query shuffle, patch dropout) on the per-rank RNG states saved in the
checkpoint (``checkpoint.rng_state``).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import Dataset


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
            # the CPU generator alone, as torch.manual_seed seeds it: torch.manual_seed also
            # queues a seeding of each accelerator, formatting a stack trace for each (0.5 ms
            # an item on a CPU-only machine), and fork_rng(devices=[]) restores none of them
            torch.default_generator.manual_seed(int(s[0]) << 32 | int(s[1]))
            try:
                return self.dataset[i]
            finally:
                random.setstate(py)
                np.random.set_state(npy)
