"""The free-space guard: stop taking new mail before the data folder's disk is full.

Why: with the disk at 100 % SQLite cannot grow its WAL, so not only new deliveries fail
(451 after the attempt) but also checkpoints, flag changes, expunges and log lines, which
are exactly what an administrator needs to recover. Like Postfix's ``queue_minfree``, new
mail is refused *before* that point: below ``limits.min_free_space`` (default 4 x
``limits.message_size``) SMTP answers ``452 4.3.1`` (RFC 3463: mail system full) at MAIL
and at the end of data, IMAP APPEND answers ``NO [OVERQUOTA]`` (as Dovecot does for a
full disk), while reading, flag changes and deletions keep working in the space left.
A sender retries a 452 later, so nothing is lost.

The check is one ``statvfs`` call, remembered for ``CHECK_INTERVAL`` seconds so that a
burst of sessions costs one system call per second. The first time the space is low the
log says so (``event=free_space_low``) and once more when it is back (``free_space_ok``),
not once per refused message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from postroom import logs

log = logging.getLogger("postroom.disk")

CHECK_INTERVAL = 1.0


def free_octets(path: Path) -> int:
    """Octets an unprivileged process may still write in ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FreeSpaceGuard:
    """Answers "is there room for new mail?"; see the module docstring."""

    def __init__(
        self,
        path: Path,
        threshold: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        measure: Callable[[Path], int] = free_octets,
    ) -> None:
        self.path = path
        self.threshold = threshold
        self._clock = clock
        self._measure = measure
        self._free = 0
        self._checked: float | None = None
        self._low = False

    def free(self) -> int:
        """Free octets now (at most ``CHECK_INTERVAL`` old)."""
        now = self._clock()
        if self._checked is None or now - self._checked >= CHECK_INTERVAL:
            try:
                self._free = self._measure(self.path)
            except OSError as exc:  # the folder vanished or is unreadable: assume the worst
                logs.event(log, "free_space_unknown", logging.ERROR, path=str(self.path), error=str(exc))
                self._free = 0
            self._checked = now
        return self._free

    def has_room(self, size: int = 0) -> bool:
        """True when ``size`` more octets still leave ``threshold`` free (0 = no guard)."""
        if self.threshold <= 0:
            return True
        free = self.free()
        low = free < self.threshold
        if low != self._low:
            self._low = low
            logs.event(
                log, "free_space_low" if low else "free_space_ok",
                logging.ERROR if low else logging.INFO,
                path=str(self.path), free=free, threshold=self.threshold,
                action="refusing new mail (SMTP 452 4.3.1, APPEND NO)" if low else "accepting mail",
            )
        return not low and free - size >= self.threshold
