"""A bounded cache of mailbox snapshots (the message columns SELECT needs).

Why: building a snapshot is one SQL scan of the mailbox's rows, about a millisecond for
2,000 messages, and clients re-SELECT the same folders all day (Thunderbird and K-9 on
every folder switch, mbsync on every run). A mailbox whose row is unchanged has the same
message columns, because every change to its messages (delivery, APPEND, COPY/MOVE in,
flag and keyword changes, EXPUNGE, MOVE out, renaming INBOX) bumps its UIDNEXT or its
HIGHESTMODSEQ in the same transaction, and a re-created mailbox has a new UIDVALIDITY.
So (id, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ), read from the mailbox row in the same
read transaction as the columns would be, is an exact key: a hit is as fresh as a scan.

Entries are shared by every session and reader thread: they are immutable (the backend
hands each caller its own copy of the UID array). The cache is bounded both by entries
and by the messages they hold, evicting the least recently used.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from typing import TypeAlias

Key: TypeAlias = "tuple[int, int, int, int]"  # mailbox id, uidvalidity, uidnext, highestmodseq
Columns: TypeAlias = "tuple[array[int], bytes, dict[int, tuple[str, ...]]]"  # uids, flags, keywords

MIN_MESSAGES = 64  # smaller mailboxes are scanned faster than they are worth keeping


class SnapshotCache:
    def __init__(self, max_entries: int = 1024, max_messages: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self.max_messages = max_messages
        self._entries: OrderedDict[int, tuple[Key, Columns]] = OrderedDict()
        self._messages = 0
        self._lock = threading.Lock()  # reader threads share the cache
        self.hits = 0
        self.misses = 0

    def get(self, key: Key) -> Columns | None:
        with self._lock:
            found = self._entries.get(key[0])
            if found is None or found[0] != key:
                self.misses += 1
                return None
            self._entries.move_to_end(key[0])
            self.hits += 1
            return found[1]

    def put(self, key: Key, columns: Columns) -> None:
        size = len(columns[0])
        if size < MIN_MESSAGES or size > self.max_messages:
            return
        with self._lock:
            old = self._entries.pop(key[0], None)
            if old is not None:
                self._messages -= len(old[1][0])
            self._entries[key[0]] = (key, columns)
            self._messages += size
            while len(self._entries) > self.max_entries or self._messages > self.max_messages:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._messages -= len(dropped[0])

    def __len__(self) -> int:
        return len(self._entries)
