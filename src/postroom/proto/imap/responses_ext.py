"""Response serializers of the sharing, context and notification extensions.

Like :mod:`responses` (same conventions: complete ``bytes`` ending in CRLF, mailbox names
through :func:`responses.mailbox_name`, strings through :mod:`wire`), for ACL (RFC 4314
3.6-3.8), METADATA (RFC 5464 4.4), URLAUTH (RFC 4467 7, RFC 5524 3.2) and the ESEARCH
data of contexts and partial results (RFC 5267 4, RFC 9394 4).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from postroom.proto.imap import wire
from postroom.proto.imap.responses import CRLF, mailbox_name
from postroom.proto.imap.sequence import compact

# Response codes of these extensions.
NOUPDATE = "NOUPDATE"  # RFC 5267 4.3.1
NOTIFICATIONOVERFLOW = "NOTIFICATIONOVERFLOW"  # RFC 5465 5.8


def code_badurl(url: str) -> str:
    """``BADURL url`` (RFC 4469 4.1): the URL as sent, without "]" (resp-text-code)."""
    return "BADURL " + url.replace("]", "%5D").replace("\r", "").replace("\n", "")


def code_metadata(what: str, number: int | None = None) -> str:
    """``METADATA MAXSIZE n`` / ``METADATA TOOMANY`` / ``METADATA LONGENTRIES n``."""
    return f"METADATA {what}" + (f" {number}" if number is not None else "")


def code_noupdate(tag: str) -> bytes:
    return b"NOUPDATE " + wire.string(tag)


def acl(mailbox: str, entries: Iterable[tuple[str, str]], *, utf8: bool = False) -> bytes:
    """``* ACL "INBOX" "fred" "lrswi"`` (RFC 4314 3.6)."""
    body = b"".join(b" " + wire.astring(i) + b" " + wire.astring(r) for i, r in entries)
    return b"* ACL " + mailbox_name(mailbox, utf8=utf8) + body + CRLF


def listrights(
    mailbox: str, identifier: str, required: str, optional: Sequence[str], *, utf8: bool = False
) -> bytes:
    """``* LISTRIGHTS "INBOX" "fred" "" l r s ...`` (RFC 4314 3.7)."""
    rest = b"".join(b" " + wire.astring(r) for r in optional)
    return (b"* LISTRIGHTS " + mailbox_name(mailbox, utf8=utf8) + b" " + wire.astring(identifier)
            + b" " + wire.astring(required) + rest + CRLF)


def myrights(mailbox: str, rights: str, *, utf8: bool = False) -> bytes:
    """``* MYRIGHTS "INBOX" "lrswi"`` (RFC 4314 3.8)."""
    return b"* MYRIGHTS " + mailbox_name(mailbox, utf8=utf8) + b" " + wire.astring(rights) + CRLF


def _metadata_mailbox(name: str, utf8: bool) -> bytes:
    return b'""' if not name else mailbox_name(name, utf8=utf8)


def metadata_values(
    mailbox: str, entries: Iterable[tuple[str, bytes | None]], *, utf8: bool = False
) -> bytes:
    """``* METADATA "INBOX" (/private/comment "text")`` (RFC 5464 4.4.1).

    None is NIL; a value with NUL goes out as literal8 (``value = nstring / literal8``)."""
    parts = []
    for name, value in entries:
        if value is None:
            data = b"NIL"
        elif b"\x00" in value:
            data = b"~{%d}\r\n" % len(value) + value
        else:
            data = wire.string(value)
        parts.append(wire.astring(name) + b" " + data)
    return b"* METADATA " + _metadata_mailbox(mailbox, utf8) + b" (" + b" ".join(parts) + b")" + CRLF


def metadata_names(mailbox: str, names: Iterable[str], *, utf8: bool = False) -> bytes:
    """``* METADATA "INBOX" /shared/comment`` (RFC 5464 4.4.2, unsolicited)."""
    body = b"".join(b" " + wire.astring(n) for n in names)
    return b"* METADATA " + _metadata_mailbox(mailbox, utf8) + body + CRLF


def genurlauth(urls: Iterable[str]) -> bytes:
    """``* GENURLAUTH "imap://..."`` (RFC 4467 7)."""
    return b"* GENURLAUTH" + b"".join(b" " + wire.string(u) for u in urls) + CRLF


def urlfetch(items: Iterable[tuple[str, bytes]]) -> bytes:
    """``* URLFETCH url data`` where ``data`` is already serialized (nstring, or the
    RFC 5524 ``(BINARY ...)`` groups)."""
    return b"* URLFETCH" + b"".join(b" " + wire.string(u) + b" " + d for u, d in items) + CRLF


def partial_range(first: int, last: int) -> bytes:
    return b"%d:%d" % (first, last)


def esearch_updates(
    tag: str, *, uid: bool, adds: Sequence[tuple[int, Sequence[int]]] = (),
    removes: Sequence[tuple[int, Sequence[int]]] = (),
) -> bytes:
    """``* ESEARCH (TAG "a") UID REMOVEFROM (0 5) ADDTO (0 1:2)`` (RFC 5267 4.3.3/4.3.4).

    Each pair is (context position, numbers in the requested order)."""
    out = [b'* ESEARCH (TAG ' + wire.string(tag) + b")"]
    if uid:
        out.append(b" UID")
    for word, pairs in ((b"REMOVEFROM", removes), (b"ADDTO", adds)):
        if pairs:
            body = b" ".join(b"%d %s" % (pos, compact(nums)) for pos, nums in pairs)
            out.append(b" " + word + b" (" + body + b")")
    out.append(CRLF)
    return b"".join(out)
