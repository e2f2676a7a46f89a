"""Compare two pretext feature caches (bf16 vs fp32 frozen CNN): relative difference of the
cached maps and of their per-image argmax token.

    python reproduce/probes/cache_diff.py CACHE_DIR_A CACHE_DIR_B
"""

import sys
from pathlib import Path

import torch


def load(d: str) -> list[torch.Tensor]:
    files = sorted(Path(d, "features").glob("*.pt"))
    if len(files) != 1:
        raise SystemExit(f"{d}: expected one feature file, found {len(files)}")
    return torch.load(files[0], map_location="cpu", weights_only=False)["maps"]


if __name__ == "__main__":
    a, b = load(sys.argv[1]), load(sys.argv[2])
    num = sum(float((x.float() - y.float()).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(y.float().pow(2).sum()) for y in b)
    cos = torch.stack(
        [
            torch.nn.functional.cosine_similarity(
                x.float().flatten(1), y.float().flatten(1), 0
            ).mean()
            for x, y in zip(a, b)
        ]
    )
    print(
        f"{len(a)} maps, dtypes {a[0].dtype} / {b[0].dtype}: relative L2 difference "
        f"{(num / den) ** 0.5:.4f}, mean per-token cosine {cos.mean():.5f} (min {cos.min():.5f})"
    )
