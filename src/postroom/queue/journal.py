"""The delivered journal: closes most of the duplicate window of outbound delivery.

Why: after a remote server answers 250 to our final dot, the only thing between "delivered"
and "delivered again after a crash" is our durable record of it. That record goes through
the store's group commit, so it lands a few milliseconds later (one fsync, plus the wait for
the batch before it), and a SIGKILL in those milliseconds makes the restarted queue send the
message again (a duplicate: RFC 1047's window, on our side of it).

A process crash does not lose what the process already handed to the kernel. So before the
store record, the worker appends one line per transaction to this journal with a single
``write(2)`` on an ``O_APPEND`` file: microseconds after the reply is parsed, and no fsync.
At the next start the queue runner replays every line as a delivered record (idempotent:
a recipient already recorded is recorded again), then empties the journal. While running,
the journal is emptied whenever every noted transaction has its store record committed and
the file has grown past ``max_bytes``.

What it does not cover: a power cut or kernel crash can lose unsynced journal lines; then
the window is the store record's fsync, as without the journal. A torn last line (a crash
inside ``write``) is ignored. The journal is local to a node's data folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from postroom.store.api import RecipientOutcome

log = logging.getLogger("postroom.queue")

MAX_LINE = 64 * 1024  # a longer line is not ours (diagnostics are short): ignored


@dataclass(frozen=True, slots=True)
class JournalEntry:
    qid: str
    outcomes: tuple[RecipientOutcome, ...]


def _encode(qid: str, outcomes: Sequence[RecipientOutcome]) -> bytes:
    rows = [[o.recipient_id, o.status, o.diagnostic and o.diagnostic[:1000], o.remote_mta]
            for o in outcomes]
    return json.dumps([qid, rows], separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _decode(line: bytes) -> JournalEntry | None:
    try:
        qid, rows = json.loads(line)
        outcomes = tuple(
            RecipientOutcome(int(rid), "delivered", _text(status), _text(diag), _text(mta))
            for rid, status, diag, mta in rows
        )
    except (ValueError, TypeError):
        return None
    if not isinstance(qid, str) or not outcomes:
        return None
    return JournalEntry(qid, outcomes)


class DeliveredJournal:
    def __init__(self, path: Path, max_bytes: int = 1 << 20) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._size = 0
        self._unsettled = 0  # noted transactions whose store record has not finished

    def open(self) -> list[JournalEntry]:
        """Open for appending; return what a previous run noted (to replay)."""
        entries: list[JournalEntry] = []
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        for line in data.split(b"\n"):
            if not line or len(line) > MAX_LINE:
                continue
            entry = _decode(line)
            if entry is None:
                log.warning("delivered journal %s: skipped an unreadable line", self.path)
                continue
            entries.append(entry)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        return entries

    def note(self, qid: str, outcomes: Sequence[RecipientOutcome]) -> None:
        """Remember delivered recipients; pair every call with :meth:`settled`."""
        self._unsettled += 1
        if self._fd is None:
            return
        line = _encode(qid, outcomes)
        try:
            os.write(self._fd, line)
            self._size += len(line)
        except OSError as e:  # a full disk must not stop deliveries: the store record follows
            log.warning("delivered journal %s: %s", self.path, e)

    def settled(self) -> None:
        """The store record of one noted transaction is done (committed or failed)."""
        self._unsettled = max(0, self._unsettled - 1)
        if not self._unsettled and self._size > self.max_bytes:
            self.clear()

    def clear(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            self._size = 0
        except OSError as e:
            log.warning("delivered journal %s: %s", self.path, e)

    def close(self) -> None:
        if self._fd is not None:
            if not self._unsettled:
                self.clear()
            os.close(self._fd)
            self._fd = None
