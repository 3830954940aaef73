"""A free loopback port for a server a test starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on now (another process may still take it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
