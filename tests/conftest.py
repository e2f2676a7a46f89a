"""What several test files share (pytest finds the fixtures here by name)."""

from __future__ import annotations

import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """A function that returns a TCP port on 127.0.0.1 free at the time of the call (for a
    process group's rendezvous or a local server); call it once per use."""
    return _free_port
