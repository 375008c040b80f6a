"""A bounded, shared cache of rendered FETCH items that depend on the message alone:
ENVELOPE, BODYSTRUCTURE, BODY, top-level header sections (RFC822.HEADER,
BODY[HEADER], BODY[HEADER.FIELDS (...)]<partial>), RFC822.SIZE and INTERNALDATE, each at
most 8 KiB. When a FETCH asks only for these and what the session's view knows (UID,
FLAGS), it is answered from memory without a store read (net/imap/fetch.py).

Why: rendering them means reading the message's header block or decoding the stored parse
summary into its MIME tree, then serialising, 20-40 µs per message, and clients ask for
the same items again and again: every device's first sync (each client asks its own fixed
header list), a re-sync after a client cache reset, Apple Mail and K-9 refetching
structure when a message is opened. Dovecot keeps such fields in its per-mailbox cache file
after the first request; this is the in-memory equivalent, shared by every session of the
server (a second device syncing the same mailbox pays nothing).

Its size is ``imap.fetch_cache`` (64 MiB by default: the header download and structure
of about 45,000 messages). Keys are (UIDVALIDITY, UID, item, IMAP4rev2?), the item being its exact request (field
list and partial range included): the store never reuses a UIDVALIDITY and a
UID within it always names the same message, whose bytes never change, so an entry is never
stale. Bounded by the octets held (least recently used dropped first). Not persisted: after
a restart the first request renders again.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[int, int, str, bool]  # uidvalidity, uid, item name, rev2

DEFAULT_BYTES = 64 * 1024 * 1024  # the default of imap.fetch_cache
# Memory an entry costs beyond its value (key tuple, dict slot, bytes header), counted
# against the capacity so that many small items (RFC822.SIZE) cannot outgrow it.
ENTRY_OVERHEAD = 160


class StructureCache:
    __slots__ = ("_entries", "_size", "capacity", "hits", "misses")

    def __init__(self, capacity: int = DEFAULT_BYTES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Key, bytes] = OrderedDict()
        self._size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def has(self, key: Key) -> bool:
        return key in self._entries

    def get(self, key: Key) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, key: Key, value: bytes) -> None:
        cost = len(value) + ENTRY_OVERHEAD
        if cost > self.capacity:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= len(old) + ENTRY_OVERHEAD
        self._entries[key] = value
        self._size += cost
        while self._size > self.capacity:
            _, dropped = self._entries.popitem(last=False)
            self._size -= len(dropped) + ENTRY_OVERHEAD
