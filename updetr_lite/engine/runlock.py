"""One run per output folder: ``OUT/.lock`` holds the owner's pid and host name.

A second run into the same folder is refused with one line naming the owner. A lock left by
a process that no longer runs (killed, crashed) on this host is detected from its pid,
removed and said; a lock of another host cannot be checked, so it is refused with the path
to remove by hand.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


class OutputInUseError(ValueError):
    """The output folder is being written by another run."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner(path: Path) -> tuple[int, str]:
    try:
        pid, host = path.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return -1, "?"  # being written this instant, or damaged


def acquire(out: Path) -> Path:
    """Take ``out/.lock`` (creating ``out``); OutputInUseError when another live run has it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    me = socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, host = _owner(path)
            if pid > 0 and host == me and pid != os.getpid() and not _alive(pid):
                print(f"[updetr-lite] {out}: removing the lock of process {pid} (no longer runs)")
                path.unlink(missing_ok=True)
                continue
            raise OutputInUseError(
                f"--out {out} is in use by another run (process {pid} on {host}): wait for it "
                f"or choose another --out (if no run uses it, delete {path})"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {me}\n")
        return path
    raise OutputInUseError(f"--out {out}: could not take the lock {path}")


def release(path: Path) -> None:
    pid, _ = _owner(path)
    if pid == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def out_lock(out: Path, enabled: bool = True):
    path = acquire(out) if enabled else None
    try:
        yield
    finally:
        if path is not None:
            release(path)
