"""\\Recent marks (RFC 3501 2.3.2): who saw a message first, kept in memory.

Every rev1 read-write SELECT claims \\Recent, and a durable write there would make each
SELECT wait for a group-commit fsync. RFC 3501 lets \\Recent be approximate, so one place
keeps the authoritative mark per mailbox (:class:`RecentMarks`, started from the
``recent_uid`` column, the higher of the two winning), claims in memory without waiting,
and writes the mark back with a background write that joins the next group commit. After
a crash a mark may lag, and some messages are \\Recent once more: the only consequence.
Marks are checked against UIDVALIDITY, so a mailbox id reused after a deletion never
inherits one.

With several worker processes, the marks must still be one set, or two sessions in two
processes would both be "first": the supervisor keeps the :class:`RecentMarks` and the
workers ask it over the process bus (``postroom.processes.bus.RemoteRecent``), both behind
:class:`RecentClaims`. (A PostgreSQL backend would instead claim with one ``UPDATE ...
RETURNING`` on the mailbox row, committed with ``synchronous_commit = off``.)
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Protocol

from postroom.store.sqlite import mail
from postroom.store.sqlite.engine import Engine

Mark = tuple[int, int]  # (uidvalidity, first UID not yet claimed)


class RecentClaims(Protocol):
    async def claim(self, mailbox_id: int, uidvalidity: int, stored: int, upto: int) -> int:
        """Claim [mark, upto) where mark is the higher of ``stored`` (the column, read by
        the caller) and the mark in memory; return mark: the caller owns [mark, upto)."""
        ...

    async def known(self, mailbox_id: int) -> Mark | None:
        """The mark in memory, if any (STATUS counts \\Recent from it)."""
        ...

    async def claim_known(self, mailbox_id: int, upto: int) -> int | None:
        """:meth:`claim` from the mark in memory, if there is one (one call, no read of
        the column: a mark in memory is never below it); None: there is none."""
        ...

    def forget(self, mailbox_id: int) -> None:
        """The mailbox was deleted."""
        ...


class RecentMarks:
    """The authoritative marks of one store (see the module docstring).

    Touched on the event loop only; ``_dirty`` is what the next background write
    persists, shared with the writer thread under a lock.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._marks: dict[int, Mark] = {}
        self._dirty: dict[int, Mark] = {}
        self._lock = threading.Lock()

    def claim_now(self, mailbox_id: int, uidvalidity: int, stored: int, upto: int) -> int:
        known = self._marks.get(mailbox_id)
        mark = stored
        if known is not None and known[0] == uidvalidity and known[1] > mark:
            mark = known[1]
        if upto > mark:
            self._marks[mailbox_id] = (uidvalidity, upto)
            self._persist(mailbox_id, uidvalidity, upto)
        else:
            self._marks[mailbox_id] = (uidvalidity, mark)
        return mark

    async def claim(self, mailbox_id: int, uidvalidity: int, stored: int, upto: int) -> int:
        return self.claim_now(mailbox_id, uidvalidity, stored, upto)

    def known_now(self, mailbox_id: int) -> Mark | None:
        return self._marks.get(mailbox_id)

    async def known(self, mailbox_id: int) -> Mark | None:
        return self._marks.get(mailbox_id)

    def claim_known_now(self, mailbox_id: int, upto: int) -> int | None:
        known = self._marks.get(mailbox_id)
        if known is None:
            return None
        return self.claim_now(mailbox_id, known[0], known[1], upto)

    async def claim_known(self, mailbox_id: int, upto: int) -> int | None:
        return self.claim_known_now(mailbox_id, upto)

    def forget(self, mailbox_id: int) -> None:
        self._marks.pop(mailbox_id, None)

    def _persist(self, mailbox_id: int, uidvalidity: int, mark: int) -> None:
        with self._lock:
            queued = bool(self._dirty)
            self._dirty[mailbox_id] = (uidvalidity, mark)
        if not queued:  # one background write carries every mark claimed meanwhile
            self.engine.submit(self._save)

    def _save(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            marks, self._dirty = self._dirty, {}
        mail.save_recent_marks(conn, [(m, v, r) for m, (v, r) in marks.items()])
