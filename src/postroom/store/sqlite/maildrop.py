"""POP3 exclusive access to a maildrop (RFC 1939 8), across every process of the server.

One byte-range lock per user (``fcntl`` record lock on byte ``user_id`` of the file
``postroom.sqlite3.maildrops``), taken without waiting. Why record locks: the kernel
releases them when the process that holds them dies, so a worker killed with SIGKILL
never leaves a maildrop locked, and no process has to clean up after another. POSIX
record locks belong to the process, not to a descriptor, so two sessions of one process
do not exclude each other through them: an in-process set does that. The file is opened
once and never closed while the store is open (closing any descriptor of it would drop
every lock this process holds).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class MaildropLocks:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._held: set[int] = set()

    def try_lock(self, user_id: int) -> bool:
        if user_id in self._held:
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, user_id)
        except OSError:  # EAGAIN/EACCES: another process holds it
            return False
        self._held.add(user_id)
        return True

    def unlock(self, user_id: int) -> None:
        if user_id not in self._held:
            return
        self._held.discard(user_id)
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, user_id)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._held.clear()
