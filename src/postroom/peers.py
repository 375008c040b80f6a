"""Small notes between the processes (or nodes) that serve together.

Some state a protocol handler keeps in memory should be the same in every process that
serves the same clients: today, the SMTP early-talker passes (a client that waited for
the greeting once is greeted at once everywhere), and POP3 take-overs (a new login asks
the process holding the user's maildrop to end its older session). A handler publishes such a note under
a topic; every *other* process receives it and applies it to its own memory. Delivery is
best effort and unordered across publishers: only for state where a lost or late note
costs a little (one more greeting delay), never correctness.

Implementations: :class:`LocalPeers` (one process: there is nobody to tell), the process
bus (``postroom.processes.bus.WorkerBus``) and, on PostgreSQL, the database's NOTIFY
channel (``postroom.store.postgres.notify.NotifyPeers``), which reaches every serving
process of every node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

NoteHandler = Callable[[str], None]


class Peers(Protocol):
    def publish(self, topic: str, value: str) -> None: ...
    def subscribe(self, topic: str, handler: NoteHandler) -> None: ...
    def has_others(self) -> bool: ...  # whether a note can reach anybody


class LocalPeers:
    """One process: publishing tells nobody."""

    def publish(self, topic: str, value: str) -> None:
        pass

    def subscribe(self, topic: str, handler: NoteHandler) -> None:
        pass

    def has_others(self) -> bool:
        return False
