"""The ``updetr-lite`` argument parser: the common options and one sub-command per command
module (train.py, inference.py, tools.py)."""

from __future__ import annotations

import argparse

from .common import PROG, Parser, positive_int
from .inference import cmd_evaluate, cmd_localize, cmd_predict
from .tools import cmd_bench, cmd_notebooks
from .train import cmd_data_build, cmd_finetune, cmd_info, cmd_pretrain


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
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
    minimal = Parser(add_help=False)
    minimal.add_argument("--out", default=None, help="output folder")
    minimal.add_argument("--debug", action="store_true", help="print tracebacks of errors")

    parser = Parser(prog=PROG, description="UP-DETR: pre-training, fine-tuning, inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("info", parents=[common], help="settings and parameter counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="the embedded data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
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
    p.add_argument("--batch", type=positive_int, default=None)
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
    p.add_argument("--batch", type=positive_int, default=None, help="images per step")
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before")
    p.add_argument("--no-data", action="store_true", help="skip the data pipeline")
    p.add_argument(
        "--repeats", type=positive_int, default=3, help="timed blocks; the median is reported"
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
    p.add_argument(
        "--notebooks",
        default="notebooks",
        metavar="DIR",
        help="the checkout's notebooks folder (default: notebooks, in the current folder)",
    )
    p.set_defaults(func=cmd_notebooks)
    return parser
