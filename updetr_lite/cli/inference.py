"""``updetr-lite evaluate``, ``predict`` and ``localize``: a trained checkpoint on the val split,
on image files, and on query patches."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import CLIError, device_from_args, emit


def cmd_evaluate(args) -> int:
    """AP of a detection checkpoint on the val split of its configuration's data."""
    import torch
    from torch.utils.data import DataLoader

    from ..data.build import build_detection_datasets
    from ..data.collate import collate_detection
    from ..engine.evaluate import evaluate
    from ..engine.loading import load_model

    device = device_from_args(args)
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
    emit(args, payload, text)
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
    from ..data.pretext import list_images

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
    from ..draw import save_boxes_png
    from ..engine.inference import InferenceError, load_image, predict_image
    from ..engine.loading import load_model

    if not 0.0 <= args.threshold <= 1.0:
        raise CLIError(f"--threshold {args.threshold}: must be in [0, 1]")
    images = _image_files(args.images)
    out = Path(args.out or "runs/predict")
    model, cfg = load_model(
        args.checkpoint, "detection", device_from_args(args), args.preset, args.set
    )
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
    from ..draw import save_boxes_png
    from ..engine.inference import load_image, localize_patches, parse_box
    from ..engine.loading import load_model

    if bool(args.patch) == bool(args.box):
        raise CLIError("localize: give query patches with --patch FILE or --box x0,y0,x1,y1")
    for p in [args.image] + list(args.patch or []):
        if Path(p).is_dir():
            raise CLIError(f"{p} is a folder, not an image file")
        if not Path(p).is_file():
            raise FileNotFoundError(f"image file not found: {p}")
    boxes = [parse_box(b) for b in args.box] if args.box else None
    model, cfg = load_model(
        args.checkpoint, "pretext", device_from_args(args), args.preset, args.set
    )
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
