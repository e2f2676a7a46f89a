"""The ``updetr-lite`` command (also ``python -m updetr_lite``).

    updetr-lite info      --preset NAME [--json]           settings and parameter counts
    updetr-lite data build --preset NAME                   the embedded data set
    updetr-lite pretrain  --preset NAME --out DIR [--resume]
    updetr-lite finetune  --preset NAME --out DIR [--init CKPT] [--resume]
    updetr-lite evaluate  --checkpoint CKPT [--json]       AP on the val split
    updetr-lite predict   --checkpoint CKPT IMAGE... --out DIR [--threshold 0.5]
    updetr-lite localize  --checkpoint CKPT --image IMG (--patch FILE | --box x0,y0,x1,y1)... --out DIR
    updetr-lite bench     --preset lite|paper --device cpu|cuda [--json]
    updetr-lite notebooks [--smoke] [--only 01,06] [--out runs/notebooks]  executed copies + HTML

The paper's tables and figures (the README's main job, ``bash run.sh``) are the
reproduction kit's: ``python -m reproduce.run`` in a checkout.

Every command takes ``--preset``, ``--set section.field=value`` (repeatable), ``--out``,
``--device`` and ``--debug``. An error prints one line ``updetr-lite: error: ...`` on stderr
and exits with a non-zero code (2 for a bad command line, 1 otherwise); ``--debug`` prints
the traceback too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import traceback
from pathlib import Path

PROG = "updetr-lite"


class CLIError(ValueError):
    """A problem with the command line's values; one line for the user."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block) and exit 2."""

    def error(self, message: str):
        raise _UsageError(message)


class _UsageError(Exception):
    pass


# --------------------------------------------------------------------------- helpers


def _config(args, preset_default: str = "lite"):
    from .config import get_config

    return get_config(args.preset or preset_default, args.set)


def _emit(args, payload: dict, text: str | None = None) -> None:
    """JSON with --json, else ``text`` (or the JSON when there is no text form)."""
    if getattr(args, "json", False) or text is None:
        print(json.dumps(payload, indent=2, default=_jsonable))
    else:
        print(text)


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def _device(args, default: str = "cpu") -> str:
    import torch

    dev = args.device or default
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {dev}: CUDA is not available on this machine")
    return dev


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a one-line usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}")
    return value


# --------------------------------------------------------------------------- commands


def cmd_info(args) -> int:
    """The preset's resolved settings and the parameter counts of both models."""
    from .models import build_detr, build_updetr, parameter_counts

    cfg = _config(args)
    # counting parameters needs no weights: never read backbone_weights here
    build_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, backbone_weights=None)
    )
    counts = {
        "detector": parameter_counts(build_detr(build_cfg)),
        "pretext": parameter_counts(build_updetr(build_cfg)),
    }
    payload = {"preset": cfg.name, "config": cfg.to_dict(), "parameters": counts}
    lines = [f"preset {cfg.name}"]
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"  {k} = {v!r}" for k, v in values.items()]
    lines.append("parameters")
    for model, c in counts.items():
        lines.append("  " + model + ": " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    _emit(args, payload, "\n".join(lines))
    return 0


def cmd_data_build(args) -> int:
    """Build the embedded data set into data.cache_dir; print its paths and counts."""
    from .data.embedded import build_embedded

    cfg = _config(args)
    paths = build_embedded(cfg.data)
    fields = (
        paths._asdict()
        if hasattr(paths, "_asdict")
        else dataclasses.asdict(paths)
        if dataclasses.is_dataclass(paths)
        else dict(vars(paths))
    )
    fields = {k: str(v) for k, v in fields.items()}
    counts = {}
    for split in ("train", "val"):
        ann = fields.get(f"{split}_json")
        if ann and Path(ann).is_file():
            coco = json.loads(Path(ann).read_text())
            counts[f"{split}_images"] = len(coco.get("images", []))
            counts[f"{split}_boxes"] = len(coco.get("annotations", []))
    unlabeled = fields.get("unlabeled")
    if unlabeled and Path(unlabeled).is_dir():
        exts = {".png", ".jpg", ".jpeg"}
        counts["unlabeled_images"] = sum(
            1 for p in Path(unlabeled).rglob("*") if p.suffix.lower() in exts
        )
    payload = {"preset": cfg.name, "paths": fields, "counts": counts}
    text = "\n".join(
        [f"{k}: {v}" for k, v in fields.items()] + [f"{k}: {v}" for k, v in counts.items()]
    )
    _emit(args, payload, text)
    return 0


def _rank() -> int:
    from .engine import distributed as du

    return du.get_rank() if du.get_world_size() > 1 else int(os.environ.get("RANK", 0))


def _warn_random_cnn(cfg, stage: str) -> None:
    """The paper preset without CNN weights trains on a random ResNet-50 (frozen in
    pre-training): say so loudly, unless ``model.backbone_weights=random`` asked for it."""
    from .config import RANDOM_CNN
    from .models.build import cnn_trains

    if _rank() != 0:
        return
    if cfg.model.backbone_weights == RANDOM_CNN:
        print(
            f"{PROG}: note: model.backbone_weights={RANDOM_CNN}: a random CNN, on purpose",
            file=sys.stderr,
        )
    elif not cfg.model.backbone_weights and cfg.name == "paper":
        frozen = not cnn_trains(cfg, stage)
        bar = "!" * 78
        print(
            f"{bar}\n{PROG}: WARNING: preset paper without model.backbone_weights: the "
            f"{cfg.model.backbone} is RANDOM (not SwAV){', frozen' if frozen else ''}"
            "; the numbers will not be the paper's.\n  Give --set model.backbone_weights="
            "/path/swav_800ep_pretrain.pth.tar, or --set model.backbone_weights="
            f"{RANDOM_CNN} to train on a random CNN on purpose.\n{bar}",
            file=sys.stderr,
            flush=True,
        )


def _join_job(cfg, stage: str, out: str, init, resume: bool, device):
    """Several processes (torchrun): join the process group, check that every rank runs the
    same run and configuration, take rank 0's --resume, and copy rank 0's init and resume
    checkpoints to ranks that lack them (nodes without a shared folder)."""
    import torch

    from .engine import distributed as du

    du.init_distributed(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    du.check_same_job(du.job_identity(cfg.to_dict(), stage, Path(out).name, init is not None))
    resume = bool(du.broadcast_object(resume))
    files = ([str(init)] if init else []) + ([str(Path(out) / "last.pth")] if resume else [])
    for path in du.share_files(files):
        print(f"[{PROG}] rank {du.get_rank()}: received rank 0's {path}", flush=True)
    return resume


def _cmd_train(args, stage: str) -> int:
    from .engine.train import train

    cfg = _config(args)
    out = args.out or f"runs/{stage}"
    init = getattr(args, "init", None)
    resume = args.resume
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        resume = _join_job(cfg, stage, out, init, resume, args.device)
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(f"--init: checkpoint not found: {init}")
    _warn_random_cnn(cfg, stage)
    summary = train(cfg, stage, out, init=init, resume=resume, device=args.device)
    if _rank() == 0:  # one summary per job, not one per process
        print(json.dumps(summary, indent=2, default=_jsonable))
    return 0


def cmd_pretrain(args) -> int:
    return _cmd_train(args, "pretrain")


def cmd_finetune(args) -> int:
    return _cmd_train(args, "finetune")


def cmd_evaluate(args) -> int:
    """AP of a detection checkpoint on the val split of its configuration's data."""
    import torch
    from torch.utils.data import DataLoader

    from .data.build import build_detection_datasets
    from .data.collate import collate_detection
    from .engine.evaluate import evaluate
    from .engine.inference import load_model

    device = _device(args)
    model, cfg = load_model(args.checkpoint, "detection", device, args.preset, args.set)
    _, val = build_detection_datasets(cfg)
    cat_ids = sorted(val.coco.getCatIds())
    if cat_ids and max(cat_ids) >= cfg.model.num_classes:
        raise CLIError(
            f"the val data has category ids up to {max(cat_ids)} but the checkpoint's model has "
            f"num_classes={cfg.model.num_classes} (ids 0..{cfg.model.num_classes - 1})"
        )
    loader = DataLoader(
        val,
        batch_size=args.batch or cfg.finetune.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_detection,
    )
    with torch.no_grad():
        metrics = evaluate(model, loader, val.coco, device)
    payload = {"checkpoint": str(args.checkpoint), "images": len(val), **metrics}
    text = f"{args.checkpoint} on {len(val)} val images: " + ", ".join(
        f"{k} {100 * v:.1f}" for k, v in metrics.items()
    )
    _emit(args, payload, text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def _unique_stems(paths: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        s = Path(p).stem
        seen[s] = seen.get(s, 0) + 1
        stems.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return stems


def _image_files(paths: list[str]) -> list[str]:
    """The given image files, a folder standing for the images under it (sorted)."""
    from .data.pretext import list_images

    files = []
    for p in paths:
        if Path(p).is_dir():
            files += [str(f) for f in list_images(p)]
        elif not Path(p).is_file():
            raise FileNotFoundError(f"image file not found: {p}")
        else:
            files.append(p)
    return files


def cmd_predict(args) -> int:
    """Detections per image: OUT/<stem>.json and OUT/<stem>.png, plus OUT/predictions.json.
    A bad image (unreadable, too small) is skipped and named; the others are still written,
    and the command then fails with the count."""
    from .draw import save_boxes_png
    from .engine.inference import InferenceError, load_image, load_model, predict_image

    if not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold {args.threshold}: must be in [0, 1]")
    images = _image_files(args.images)
    out = Path(args.out or "runs/predict")
    model, cfg = load_model(args.checkpoint, "detection", _device(args), args.preset, args.set)
    everything, skipped = [], []
    for path, stem in zip(images, _unique_stems(images)):
        try:
            img = load_image(path)
        except InferenceError as e:
            skipped.append(str(e))
            print(f"{path}: skipped ({e})", file=sys.stderr)
            continue
        det = predict_image(model, cfg, img, threshold=args.threshold)
        record = {
            "image": str(path),
            "size": list(img.shape[:2]),
            "boxes": det["boxes"].tolist(),  # pixel xyxy on the original image
            "scores": det["scores"].tolist(),
            "labels": det["labels"].tolist(),
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
        texts = [f"{c}: {s:.2f}" for c, s in zip(record["labels"], record["scores"])]
        save_boxes_png(out / f"{stem}.png", img, det["boxes"], texts, record["labels"])
        everything.append(record)
        print(f"{path}: {len(record['scores'])} boxes -> {out / stem}.json, .png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps(everything, indent=1) + "\n")
    if skipped:
        raise CLIError(
            f"predict: {len(skipped)} of {len(images)} images skipped (first: {skipped[0]}); "
            f"the other {len(everything)} are in {out / 'predictions.json'}"
        )
    return 0


def cmd_localize(args) -> int:
    """One-shot localization of query patches (files or boxes) in one image."""
    from .draw import save_boxes_png
    from .engine.inference import load_image, load_model, localize_patches, parse_box

    if bool(args.patch) == bool(args.box):
        raise CLIError("localize: give query patches with --patch FILE or --box x0,y0,x1,y1")
    for p in [args.image] + list(args.patch or []):
        if Path(p).is_dir():
            raise CLIError(f"{p} is a folder, not an image file")
        if not Path(p).is_file():
            raise FileNotFoundError(f"image file not found: {p}")
    boxes = [parse_box(b) for b in args.box] if args.box else None
    model, cfg = load_model(args.checkpoint, "pretext", _device(args), args.preset, args.set)
    img = load_image(args.image)
    results = localize_patches(
        model,
        cfg,
        img,
        patches=args.patch or None,
        boxes=boxes,
        augment=args.augment,
        seed=args.seed,
    )
    for r, name in zip(results, args.patch or [None] * len(results)):
        if name is not None:
            r["patch"] = str(name)
    out = Path(args.out or "runs/localize")
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    payload = {
        "image": str(args.image),
        "size": list(img.shape[:2]),
        "checkpoint": str(args.checkpoint),
        "patches": results,
    }
    (out / f"{stem}_localize.json").write_text(json.dumps(payload, indent=1) + "\n")
    draw_boxes, texts, colors, dashed = [], [], [], []
    for r in results:  # query box dashed, the found box solid, same colour
        if "query_box" in r:
            draw_boxes.append(r["query_box"])
            texts.append(f"query {r['query']}")
            colors.append(r["query"])
            dashed.append(True)
        draw_boxes.append(r["box"])
        texts.append(f"{r['query']}: {r['score']:.2f}")
        colors.append(r["query"])
        dashed.append(False)
    save_boxes_png(out / f"{stem}_localize.png", img, draw_boxes, texts, colors, dashed)
    for r in results:
        box = ", ".join(f"{v:.1f}" for v in r["box"])
        print(f"patch {r['query']}: box [{box}] score {r['score']:.3f}")
    print(f"-> {out / stem}_localize.json, .png")
    return 0


def cmd_bench(args) -> int:
    from .bench import format_report, run_bench

    cfg = _config(args)
    device = _device(args)
    report = run_bench(
        cfg,
        device,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        data=not args.no_data,
        repeats=args.repeats,
        aspect=args.aspect,
        finetune=not args.no_finetune,
        jpegs=args.jpegs,
        data_seconds=args.data_seconds,
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    _emit(args, report, format_report(report))
    return 0


def cmd_notebooks(args) -> int:
    """Execute the tutorial notebooks headless and render them as HTML for reading."""
    from . import notebooks as nb

    names = nb.NOTEBOOKS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        names = tuple(n for n in nb.NOTEBOOKS if any(n.startswith(w) for w in wanted))
        unknown = [w for w in wanted if not any(n.startswith(w) for n in nb.NOTEBOOKS)]
        if unknown:
            raise CLIError(
                f"--only: no notebook starts with {', '.join(unknown)}; "
                f"choose from {', '.join(nb.NOTEBOOKS)}"
            )
    out = Path(args.out or "runs/notebooks")
    nb.render_notebooks(out, smoke=args.smoke, names=names, report=print)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--preset", default=None, help="paper | lite | smoke (default: lite; see config.py)"
    )
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one setting (repeatable), e.g. --set pretrain.lr=2e-4",
    )
    common.add_argument("--out", default=None, help="output folder")
    common.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
    common.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    # The notebooks choose their own settings (SMOKE or not): no --preset, --set or --device.
    minimal = _Parser(add_help=False)
    minimal.add_argument("--out", default=None, help="output folder")
    minimal.add_argument("--debug", action="store_true", help="print tracebacks of errors")

    parser = _Parser(prog=PROG, description="UP-DETR: pre-training, fine-tuning, inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("info", parents=[common], help="settings and parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="the embedded data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    dsub.required = True
    b = dsub.add_parser("build", parents=[common], help="build the embedded data set")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_data_build)

    for stage, func in (("pretrain", cmd_pretrain), ("finetune", cmd_finetune)):
        what = "UP-DETR pre-training" if stage == "pretrain" else "DETR fine-tuning"
        p = sub.add_parser(stage, parents=[common], help=what)
        p.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
        if stage == "finetune":
            p.add_argument(
                "--init", default=None, help="pretext checkpoint (UP-DETR) to start from"
            )
        p.set_defaults(func=func)

    p = sub.add_parser("evaluate", parents=[common], help="AP of a detection checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--batch", type=_positive_int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[common], help="detections on images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--threshold", type=float, default=0.5)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("localize", parents=[common], help="one-shot query patch localization")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--patch", action="append", default=[], metavar="FILE")
    p.add_argument("--box", action="append", default=[], metavar="x0,y0,x1,y1")
    p.add_argument("--augment", action="store_true", help="colour-augment the patches")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation")
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser("bench", parents=[common], help="throughput and memory")
    p.add_argument("--json", action="store_true")
    p.add_argument("--batch", type=_positive_int, default=None, help="images per step")
    p.add_argument("--steps", type=_positive_int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before")
    p.add_argument("--no-data", action="store_true", help="skip the data pipeline")
    p.add_argument(
        "--repeats", type=_positive_int, default=3, help="timed blocks; the median is reported"
    )
    p.add_argument(
        "--aspect", type=float, default=1.0, help="width/height of the random images (4:3: 1.333)"
    )
    p.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning step")
    p.add_argument(
        "--jpegs",
        type=int,
        default=0,
        help="measure the data pipeline on this many photo-like 500x375 JPEGs (made once)",
    )
    p.add_argument(
        "--data-seconds", type=float, default=2.0, help="seconds of data pipeline per pipeline"
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "notebooks", parents=[minimal], help="run the tutorial notebooks, render them as HTML"
    )
    p.add_argument("--smoke", action="store_true", help="tiny settings (minutes, not hours)")
    p.add_argument("--only", default=None, help="comma-separated prefixes, e.g. 01,06")
    p.set_defaults(func=cmd_notebooks)
    return parser


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) if str(e) else ""
    if isinstance(e, KeyError):  # str(KeyError) is the quoted key only
        msg = f"missing key {msg}"
    return msg or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default sys.argv[1:]); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(
        level=logging.INFO if debug else logging.WARNING,
        format="[%(name)s] %(message)s",
        stream=sys.stderr,
    )
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        ours = isinstance(e, (ValueError, FileNotFoundError, KeyError, NotADirectoryError))
        msg = _one_line(e) if ours else f"{type(e).__name__}: {_one_line(e)}"
        hint = "" if debug or ours else " (rerun with --debug for the traceback)"
        print(f"{PROG}: error: {msg}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
