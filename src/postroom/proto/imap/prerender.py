"""ENVELOPE and BODYSTRUCTURE rendered once, at delivery, and stored with the summary.

Why: a client's first sync of a mailbox asks ``ENVELOPE BODYSTRUCTURE`` of every message
(Apple Mail, K-9/FairEmail, mutt's header cache). Answering from the stored parse summary
means decoding it into its MIME tree of dataclasses and serialising that, about 40 µs per
message, on the event loop. Delivery has that tree in hand anyway (it just scanned the
message), so it renders both items there, and FETCH copies the stored octets.

Format: the summary (:meth:`MessageSummary.to_bytes`, one line of JSON) is followed by a
line feed and one more JSON array of Latin-1 strings (ASCII only, like the summary):
``[envelope, bodystructure]``, plus ``[bodystructure_rev2]`` when IMAP4rev2 renders it
differently (only when a message/global part is inside, RFC 9051 7.5.2). Values are the
bytes that follow the item name in a FETCH response. ``MessageSummary.from_bytes`` reads
the first line only; a summary written before this existed simply has no second line,
and FETCH renders from the summary as before.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from postroom.message import MessageSummary
from postroom.message.model import compact_json
from postroom.proto.imap.bodystructure import bodystructure_bytes, envelope_bytes

__all__ = ["Prerendered", "prerender", "prerendered"]

SEPARATOR = b"\n"


class Prerendered(NamedTuple):
    envelope: bytes
    bodystructure: bytes
    bodystructure_rev2: bytes


def prerender(summary: MessageSummary) -> bytes:
    """The second line of a stored summary (see the module docstring), without the LF."""
    envelope = envelope_bytes(summary)
    structure = bodystructure_bytes(summary, True)
    items = [envelope, structure]
    if any(p.type == "message" and p.subtype == "global" for p in summary.parts()):
        rev2 = bodystructure_bytes(summary, True, rev2=True)
        if rev2 != structure:
            items.append(rev2)
    return compact_json([item.decode("latin-1") for item in items]).encode("ascii")


def prerendered(raw: bytes) -> Prerendered | None:
    """The items stored after the summary, or None when there are none (or unreadable)."""
    cut = raw.rfind(SEPARATOR)
    if cut < 0:
        return None
    try:
        items = json.loads(raw[cut + 1 :])
        envelope = items[0].encode("latin-1")
        structure = items[1].encode("latin-1")
        rev2 = items[2].encode("latin-1") if len(items) > 2 else structure
    except (ValueError, TypeError, IndexError, AttributeError, UnicodeEncodeError, RecursionError):
        return None
    return Prerendered(envelope, structure, rev2)
