"""Counted skips of bad items, visible across DataLoader workers and dataset copies.

``SkipFlags(n, kinds)`` keeps one byte per item in shared memory (0: fine, j + 1: skipped
for ``kinds[j]``), so a skip seen in a worker process reaches the main process's report and
each item is counted once per epoch. A plain ``copy.copy`` of a dataset shares the object
(the feature cache works on copies); a pickle outside a worker start carries a snapshot.
"""

from __future__ import annotations

import ctypes
import multiprocessing

# images whose longer side is more than this many times the shorter are skipped: resized
# to the presets' sizes their short side would shrink to a few pixels (or to 0)
MAX_ASPECT = 20


def extreme_aspect(h: int, w: int) -> bool:
    return max(h, w) > MAX_ASPECT * min(h, w)


class SkipFlags:
    def __init__(self, n: int, kinds: tuple[str, ...]):
        self.kinds = kinds
        self.flags = multiprocessing.RawArray(ctypes.c_byte, n)

    def __getstate__(self):
        from multiprocessing.context import get_spawning_popen

        state = self.__dict__.copy()
        if get_spawning_popen() is None:  # a plain pickle/deepcopy: carry a snapshot
            state["flags"] = bytes(self.flags)
        return state

    def __setstate__(self, state):
        if isinstance(state["flags"], bytes):
            flags = multiprocessing.RawArray(ctypes.c_byte, len(state["flags"]))
            flags[:] = list(state["flags"])
            state["flags"] = flags
        self.__dict__.update(state)

    def count(self, i: int, kind: str) -> None:
        self.flags[i] = self.kinds.index(kind) + 1

    def counts(self) -> dict[str, int]:
        flags = bytes(self.flags)
        return {k: flags.count(j + 1) for j, k in enumerate(self.kinds)}

    def take(self, names) -> dict:
        """{kind: n, ..., 'files': first 20 names} of the items skipped since the last call,
        then reset; {} when none was. ``names(i)`` names item i."""
        flags = bytes(self.flags)
        ctypes.memset(ctypes.addressof(self.flags), 0, len(self.flags))
        counts = {k: flags.count(j + 1) for j, k in enumerate(self.kinds)}
        if not any(counts.values()):
            return {}
        return {**counts, "files": [str(names(i)) for i, f in enumerate(flags) if f][:20]}
