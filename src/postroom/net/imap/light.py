"""A light view of a stored parse summary, for SEARCH, SORT and THREAD over many messages.

Why: ``MessageSummary.from_bytes`` rebuilds the whole MIME tree as dataclasses, about
30 µs per message, while SORT, THREAD and SEARCH SENT* only need the top-level
envelope, the sort keys and the header offsets. Decoding just the JSON (about 3 µs) and
reading those few fields makes a sort over 10,000 messages ten times cheaper, and needs
no message bytes at all. (SEARCH FROM/TO/CC/BCC/SUBJECT no longer come here: the store
evaluates them, see ``Store.search_envelope``.)

Light views are also kept in a bounded LRU (:class:`LightCache`, one per server, shared by
all sessions) keyed by (UIDVALIDITY, UID): the store never reuses a UIDVALIDITY, and a
message's bytes never change under its UID, so an entry can never go stale, and a repeated
search reads no summaries at all.

The summary row layout is the one :meth:`MessageSummary.to_bytes` documents (a versioned,
positional JSON array; trailing defaults omitted). :func:`light` only accepts the version
it knows and anything it does not expect; then :meth:`Light.from_summary` builds the same
view from a full parse, so a format change degrades speed, never correctness. A unit
test checks that both paths agree.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from postroom.message import MessageSummary

# Envelope row indexes (RFC 9051 7.5.2 order).
_SUBJECT, _FROM, _TO, _CC, _BCC = 1, 2, 5, 6, 7


@dataclass(slots=True)
class Light:
    header_start: int
    header_end: int
    envelope: list[Any]  # the raw envelope row: Latin-1 strings of the raw octets
    sent_date: tuple[int, int] | None = None
    base_subject: str = ""
    sort_from: str = ""
    sort_to: str = ""
    sort_cc: str = ""
    display_from: str = ""
    display_to: str = ""
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()

    @classmethod
    def from_summary(cls, s: MessageSummary) -> Light:
        env = s.root.envelope
        row: list[Any] = [None] * 10
        if env is not None:
            row[_SUBJECT] = _latin1(env.subject)
            for index, addresses in ((_FROM, env.from_), (_TO, env.to), (_CC, env.cc),
                                     (_BCC, env.bcc)):
                if addresses is not None:
                    row[index] = [[_latin1(a.name), _latin1(a.adl), _latin1(a.mailbox),
                                   _latin1(a.host)] for a in addresses]
        return cls(
            s.root.header_start, s.root.header_end, row, s.sent_date, s.base_subject,
            s.sort_from, s.sort_to, s.sort_cc, s.display_from, s.display_to,
            s.message_id, s.in_reply_to, s.references,
        )

    def subject_raw(self) -> bytes:
        value = self._field(_SUBJECT)
        return value.encode("latin-1") if isinstance(value, str) else b""

    def _field(self, index: int) -> Any:
        env = self.envelope
        return env[index] if index < len(env) else None


def _latin1(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def light(raw: bytes) -> Light | None:
    """The light view of a stored summary, or None when the fast path cannot read it."""
    cut = raw.find(b"\n")  # the summary is the first line (see MessageSummary.to_bytes)
    try:
        row = json.loads(raw if cut < 0 else raw[:cut])
        if not isinstance(row, list) or len(row) < 3 or row[0] != MessageSummary.VERSION:
            return None
        root = row[2]
        extras = root[6] if len(root) > 6 else {}
        envelope = extras.get("v", [])
        if not isinstance(envelope, list) or not isinstance(root[0], int) \
                or not isinstance(root[1], int):
            return None
        row += [None] * (13 - len(row))
        sent = row[3]
        return Light(
            root[0], root[1], envelope,
            (int(sent[0]), int(sent[1])) if sent is not None else None,
            row[4] or "", row[5] or "", row[6] or "", row[7] or "", row[8] or "",
            row[9] or "", row[10], row[11], tuple(row[12] or ()),
        )
    except (ValueError, TypeError, IndexError, AttributeError, RecursionError):
        return None


class LightCache:
    """Bounded LRU of light views keyed by (UIDVALIDITY, UID); see the module docstring.

    About 1.5 KB per entry: the default 20,000 entries hold the searchable envelopes of a
    few busy mailboxes in ~30 MB, whatever the number of sessions.
    """

    __slots__ = ("_entries", "capacity", "hits", "misses")

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, int], Light] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, uidvalidity: int, uid: int) -> Light | None:
        key = (uidvalidity, uid)
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, uidvalidity: int, uid: int, view: Light) -> None:
        if self.capacity <= 0:
            return
        entries = self._entries
        entries[(uidvalidity, uid)] = view
        entries.move_to_end((uidvalidity, uid))
        while len(entries) > self.capacity:
            entries.popitem(last=False)
