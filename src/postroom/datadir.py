"""The data folder's lock: servers and long admin operations share it, a restore needs it alone.

Why: ``postroom restore`` replaces the whole data folder; doing that under a running
server (or an import writing into it) would leave that process writing into a folder that
has been moved aside. Every ``postroom serve`` (and ``import``, ``export``, ``backup``)
holds a shared ``flock`` on ``DATA/postroom.lock`` for as long as it runs; restore takes
it exclusively without waiting and refuses when it cannot. The kernel drops a lock when
its process dies, so a crash never leaves a stale lock behind.

The file is created readable by everyone (0644) and opened read-only: the CLI run as
root and the server run as its own user can then both lock the same file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "postroom.lock"


class DataDirBusy(Exception):
    """Another process holds the lock in a conflicting mode."""


def _lock(data_dir: Path, operation: int, busy: str) -> int:
    fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(busy) from None
    return fd


def lock_shared(data_dir: Path) -> int:
    """Hold the shared lock; returns the descriptor to close when done."""
    return _lock(data_dir, fcntl.LOCK_SH, f"{data_dir} is being restored (postroom restore runs)")


def lock_exclusive(data_dir: Path) -> int:
    """Hold the lock alone, or raise :class:`DataDirBusy` at once."""
    return _lock(
        data_dir, fcntl.LOCK_EX,
        f"{data_dir} is in use (a running `postroom serve`, or an import, export or backup): "
        "stop it first",
    )


def unlock(fd: int) -> None:
    os.close(fd)  # closing the descriptor releases the flock
