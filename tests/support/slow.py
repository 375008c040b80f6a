"""A slowloris client for the timeout tests: bytes trickled over a real socket."""

from __future__ import annotations

import select
import socket
import time


def trickle(sock: socket.socket, data: bytes, every: float, limit: float) -> float | None:
    """Send ``data`` one byte every ``every`` seconds, never idle for long; return when the
    server answered or closed (seconds after the first byte), or None if it still just
    listened after ``limit`` seconds (the bug the timeout tests look for)."""
    t = time.monotonic()
    for i in range(len(data)):
        if time.monotonic() - t > limit:
            return None
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            return time.monotonic() - t
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            return time.monotonic() - t
    return None
