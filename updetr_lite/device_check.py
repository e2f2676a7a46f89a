"""The paper-preset pretext benchmark end to end, from JPEG files (``scripts/device_check.sh``).

What one run measures, per patch pipeline ('device' first, then 'worker'):

- it makes ``--images`` photo-like JPEGs of ImageNet's typical size (500 x 375) once;
- it pre-trains UP-DETR at the paper preset on them for ``--steps`` optimizer steps after
  ``--warmup`` steps: the engine's own data (``PretextDataset``, ``num_workers`` loader
  workers, pinned memory), the engine's step (``compute_losses``: the device patch pass, the
  frozen fast-path CNN, bf16 autocast of the transformer), backward, clipping, fused AdamW;
- it prints images/s, the share of the step time spent waiting for the loader (the clock
  stops at ``next(loader)`` and at the end of each step, the device synchronised), and the
  peak memory (CUDA: ``max_memory_allocated``; CPU: the process's resident set);
- then the same steps with ``torch.compile`` of the transformer (``--compile-backend``;
  compilation in the warm-up steps) and the speed-up.

With ``--torchrun`` on a machine of 2 or more GPUs it relaunches itself under
``torchrun --nproc_per_node 2`` for the 'device' pipeline (DDP, NCCL) and prints the
combined images/s. One JSON line per run on stdout (prefixed ``RESULT``), then a summary.
``--tiny`` shrinks everything for a CPU test (tests/test_device_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

try:
    import torch
except ImportError:  # the one line a bare machine gets
    sys.exit(f"device_check: {sys.executable} cannot import torch; set PYTHON=/path/to/python")


def _stub_pycocotools() -> None:
    """The engine imports pycocotools for fine-tuning's AP; a CUDA image without it can still
    pre-train: a stand-in module that fails only if AP were computed."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        import types

        class COCOeval:
            def __init__(self, *a, **k):
                raise ImportError("pycocotools is not installed (device check stand-in)")

        pkg, sub = types.ModuleType("pycocotools"), types.ModuleType("pycocotools.cocoeval")
        sub.COCOeval, pkg.cocoeval, pkg.__path__ = COCOeval, sub, []
        sys.modules.update({"pycocotools": pkg, "pycocotools.cocoeval": sub})
        print("pycocotools missing: a stand-in module (no AP is computed here)", flush=True)


def _config(args, pipeline: str):
    from .config import get_config

    sets = [
        f"data.pretext_root={str(args.folder)!r}",
        f"data.num_workers={args.workers}",
        f"pretext.patch_pipeline={pipeline!r}",
        f"pretrain.amp={args.amp}",
        f"pretrain.batch_size={args.batch * int(os.environ.get('WORLD_SIZE', 1))}",
        "pretrain.cache_features=False",
    ]
    if args.tiny:  # CPU test sizes: a small ResNet and transformer, 64 px images
        sets += [
            "model.backbone='resnet18'",
            "model.hidden_dim=32",
            "model.nheads=2",
            "model.enc_layers=1",
            "model.dec_layers=1",
            "model.dim_feedforward=64",
            "model.num_queries=4",
            "pretext.num_patches=2",
            "pretext.patch_size=32",
            "data.pretext_scales=(64,)",
            "data.pretext_max_size=80",
        ]
    return get_config("paper", sets)


def _peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def run_one(args, pipeline: str, compile_backend: str | None = None) -> dict:
    """Pre-training steps from the JPEG files; -> the measured figures."""
    import gc

    _stub_pycocotools()
    from .engine import distributed as du
    from .engine.step import StepModel, compute_losses
    from .engine.train import prepare_model
    from .engine.train_data import build_data

    device = torch.device(args.device)
    info = du.init_distributed(device)
    gc.collect()  # the previous run's model, optimizer and loader workers
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        torch.cuda.empty_cache()
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    from .fastpath import amp_enabled

    cfg = _config(args, pipeline)
    tc = cfg.pretrain
    amp = amp_enabled(tc.amp, device, "--amp", warn=info.is_main)
    torch.manual_seed(tc.seed)
    model, criterion, trainable = prepare_model(cfg, "pretrain")
    model.to(device).train()
    criterion.to(device)
    if compile_backend:
        # dynamic: every batch has its own padded image size; one graph for all of them
        model.transformer = torch.compile(model.transformer, backend=compile_backend, dynamic=True)
    data = build_data(cfg, "pretrain", tc, info, model, device, trainable, progress=False)
    step_model = du.wrap_ddp(StepModel(model, True, False), device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    total = args.warmup + args.steps
    wait = busy = 0.0
    images = 0
    it = iter(data.batches)
    for step in range(total):
        if step == args.warmup:  # the clock starts after the warm-up (compilation, cudnn)
            sync()
            wait = busy = 0.0
            images = 0
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            data.sampler.set_epoch(step)
            it = iter(data.batches)
            batch = next(it)
        t1 = time.perf_counter()
        losses = compute_losses(step_model, criterion, batch, device, amp)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, tc.clip_max_norm, foreach=True)
        optimizer.step()
        sync()
        t2 = time.perf_counter()
        wait, busy = wait + (t1 - t0), busy + (t2 - t1)
        images += len(batch["targets"])
    loss = float(losses["loss"].detach())
    figures = torch.tensor([images, wait, busy], dtype=torch.float64, device=device)
    if info.distributed:  # images of all ranks; the slowest rank's clock
        n = figures[:1].clone()
        torch.distributed.all_reduce(n)
        torch.distributed.all_reduce(figures, op=torch.distributed.ReduceOp.MAX)
        figures[0] = n[0]
    images, wait, busy = figures.tolist()
    peak = _peak_memory_mib(device)
    del it, data  # stop this run's loader workers before the next run starts its own
    return {
        "pipeline": pipeline,
        "world_size": info.world_size,
        "device": str(args.device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "compile": compile_backend,
        "batch_per_process": args.batch,
        "workers_per_process": args.workers,
        "amp_bf16": amp,
        "steps": args.steps,
        "images_per_s": images / (wait + busy),
        "data_wait_share": wait / (wait + busy),
        "s_per_step": (wait + busy) / args.steps,
        "peak_memory_mib": peak,
        "final_loss": loss,
        "is_main": info.is_main,
    }


def _emit(result: dict) -> None:
    if result.pop("is_main", True):
        print("RESULT " + json.dumps(result), flush=True)


def _make_images(args) -> None:
    from .data.bench import make_jpegs

    folder = Path(args.folder)
    if len(list(folder.rglob("*.jpg"))) >= args.images:
        return
    t = time.perf_counter()
    size = (48, 64) if args.tiny else (375, 500)
    procs = max(1, min(os.cpu_count() or 1, 16))
    per = -(-args.images // procs)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(procs) as pool:  # each a slice of seeds, its own subfolder
        list(
            pool.map(
                make_jpegs,
                [folder / f"part{i:02d}" for i in range(procs)],
                [min(per, args.images - i * per) for i in range(procs)],
                [size] * procs,
                range(procs),
            )
        )
    print(f"made {args.images} JPEGs {size[1]}x{size[0]} in {time.perf_counter() - t:.1f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="device_check", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--folder", default="/tmp/updetr_device_check/jpegs")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32, help="images per process and step")
    ap.add_argument("--workers", type=int, default=max(1, min((os.cpu_count() or 2) - 2, 14)))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--worker-steps", type=int, default=8, help="steps of the 'worker' run")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--amp", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    ap.add_argument("--compile-backend", default="inductor", help="'' skips torch.compile")
    ap.add_argument("--torchrun", action="store_true", help="a 2-process run if 2+ GPUs")
    ap.add_argument("--tiny", action="store_true", help="CPU test sizes")
    ap.add_argument("--only", default="", help="internal: one run (torchrun child)")
    args = ap.parse_args(argv)
    torch.set_float32_matmul_precision("high")
    import platform

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"GPUs: {', '.join(gpus) or 'none'}; device {args.device}",
        flush=True,
    )

    if args.only:  # one measurement, e.g. under torchrun
        _emit(run_one(args, args.only))
        return 0
    _make_images(args)
    results = []
    for pipeline, steps in (("device", args.steps), ("worker", args.worker_steps)):
        args.steps = steps
        results.append(run_one(args, pipeline))
        _emit(dict(results[-1]))
    args.steps = results[0]["steps"]
    if args.compile_backend:
        try:
            results.append(run_one(args, "device", args.compile_backend))
            _emit(dict(results[-1]))
        except Exception as e:  # report, do not lose the other figures
            print(f"torch.compile ({args.compile_backend}) failed: {type(e).__name__}: {e}")
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    if args.torchrun and gpus >= 2:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        cmd += ["-m", "updetr_lite.device_check", "--only", "device"]
        cmd += [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--torchrun"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if lines:
            results.append(json.loads(lines[-1][7:]))
            print(lines[-1], flush=True)
        else:
            print("torchrun 2-process run failed:\n" + out.stderr[-3000:])
    elif args.torchrun:
        print(f"torchrun 2-process run skipped: {gpus} GPU(s)")
    summary(results)
    return 0


def summary(results: list[dict]) -> None:
    print("\nsummary (images/s | data-wait share | s/step | peak MiB):")
    for r in results:
        name = f"{r['pipeline']:>6} x{r['world_size']}" + (
            f" compile={r['compile']}" if r["compile"] else ""
        )
        print(
            f"  {name:<28} {r['images_per_s']:8.1f} | {100 * r['data_wait_share']:5.1f} % | "
            f"{r['s_per_step']:.3f} | {r['peak_memory_mib']:.0f}"
        )
    base = next((r for r in results if r["pipeline"] == "device" and not r["compile"]), None)
    comp = next((r for r in results if r["compile"]), None)
    if base and comp:
        print(
            f"  torch.compile of the transformer: x{comp['images_per_s'] / base['images_per_s']:.2f}"
            f" images/s ({'helps' if comp['images_per_s'] > 1.03 * base['images_per_s'] else 'does not help'})"
        )


if __name__ == "__main__":
    sys.exit(main())
