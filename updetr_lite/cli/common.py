"""What every ``updetr-lite`` command shares: the one-line errors (``CLIError``, ``Parser``),
the configuration and device from the common options, and the JSON or text output."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

PROG = "updetr-lite"


class CLIError(ValueError):
    """A problem with the command line's values; one line for the user."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block) and exit 2."""

    def error(self, message: str):
        raise UsageError(message)


class UsageError(Exception):
    pass


def config_from_args(args, preset_default: str = "lite"):
    from ..config import get_config

    return get_config(args.preset or preset_default, args.set)


def emit(args, payload: dict, text: str | None = None) -> None:
    """JSON with --json, else ``text`` (or the JSON when there is no text form)."""
    if getattr(args, "json", False) or text is None:
        print(json.dumps(payload, indent=2, default=jsonable))
    else:
        print(text)


def jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def device_from_args(args, default: str = "cpu") -> str:
    import torch

    dev = args.device or default
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {dev}: CUDA is not available on this machine")
    return dev


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a one-line usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}")
    return value
