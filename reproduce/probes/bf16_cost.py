"""Piece B of issue 13: the frozen lite CNN's fast path in bf16 (this CPU has AVX-512 BF16)
against fp32 (the same fast path on a CPU without it, forced here), and the plain path
(``model.fast_path=False``). Timed interleaved on the same batches, one thread, so machine
load hits every variant alike; the maps' difference is measured on the same images.

    python reproduce/probes/bf16_cost.py [N_BATCHES]
"""

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reproduce import report  # noqa: E402
from updetr_lite import fastpath  # noqa: E402
from updetr_lite.config import get_config  # noqa: E402
from updetr_lite.data.embedded import build_embedded  # noqa: E402
from updetr_lite.data.images import normalize  # noqa: E402
from updetr_lite.models.build import build_backbone  # noqa: E402


@torch.no_grad()
def main(n_batches: int = 6, batch: int = 32) -> None:
    torch.set_num_threads(1)
    cnn = ROOT / "runs" / "lite" / "cnn" / "cnn.pth"
    base = [f"model.backbone_weights={cnn}", f"data.cache_dir={ROOT / '.cache' / 'updetr_lite'}"]
    cfg = get_config("lite", base)
    files = sorted(Path(build_embedded(cfg.data).unlabeled).iterdir())[: n_batches * batch]
    imgs = torch.stack([normalize(report.load_image(f, 128, 128)) for f in files])
    mask = torch.zeros(imgs.shape[0], 128, 128, dtype=torch.bool)
    fast = build_backbone(cfg, frozen=True).eval()
    plain = build_backbone(get_config("lite", base + ["model.fast_path=False"]), frozen=True).eval()
    real = fastpath.bf16_supported
    variants = {
        "fast path, bf16": (fast, real),
        "fast path, fp32 (CPU without bf16)": (fast, lambda d: False),
        "model.fast_path=False (fp32)": (plain, real),
    }
    times = {k: 0.0 for k in variants}
    maps = {k: [] for k in variants}
    for i in range(n_batches):
        sl = slice(i * batch, (i + 1) * batch)
        for name, (net, bf16) in variants.items():
            fastpath.bf16_supported = bf16
            t0 = time.perf_counter()
            out = net(imgs[sl], mask[sl])[0].float()
            if i:  # batch 0 warms up (bf16 weight copy, oneDNN kernels)
                times[name] += time.perf_counter() - t0
            maps[name].append(out)
    fastpath.bf16_supported = real
    ref = torch.cat(maps["model.fast_path=False (fp32)"])
    n = (n_batches - 1) * batch
    for name in variants:
        m = torch.cat(maps[name])
        rel = ((m - ref).norm() / ref.norm()).item()
        cos = torch.nn.functional.cosine_similarity(m.flatten(2), ref.flatten(2), dim=1)
        print(
            f"{name}: {n / times[name]:.1f} images/s; vs plain fp32: relative L2 {rel:.4f}, "
            f"token cosine mean {cos.mean():.5f} min {cos.min():.5f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
