"""IMAP response serializers (RFC 9051 7, RFC 3501 7 and the extensions we speak).

Every function returns the complete response as ``bytes`` ending in CRLF, ready to write.
Strings go through :mod:`wire` (quoted when safe, literal otherwise), mailbox names through
:mod:`utf7` (modified UTF-7, or UTF-8 when the client enabled IMAP4rev2 / UTF8=ACCEPT), sets
through :func:`sequence.compact`. Response codes are named constants; the ones with
arguments have ``code_*`` builders. Status texts are sanitized (no CR/LF can escape into
the stream) and must not be empty (RFC 3501 ``text = 1*TEXT-CHAR``).

FETCH responses are built for every message of a large FETCH, so :func:`fetch` is a flat
loop with a type switch and no intermediate objects: pass already-serialized bytes for
anything complex (ENVELOPE, BODYSTRUCTURE, a body literal made with ``wire.literal``).
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterable, Sequence
from typing import Union

from postroom.proto.imap import utf7, wire
from postroom.proto.imap.grammar import BAD, BYE, MONTHS, NO, OK, ImapUsageError
from postroom.proto.imap.sequence import RangeSet, compact

__all__ = ["BAD", "BYE", "NO", "OK", "PREAUTH"]

CRLF = b"\r\n"
PREAUTH = "PREAUTH"

# --- response codes (RFC 9051 7.1 unless noted) ------------------------------------------
ALERT = "ALERT"
ALREADYEXISTS = "ALREADYEXISTS"
AUTHENTICATIONFAILED = "AUTHENTICATIONFAILED"
AUTHORIZATIONFAILED = "AUTHORIZATIONFAILED"
CANNOT = "CANNOT"
CLIENTBUG = "CLIENTBUG"
CLOSED = "CLOSED"
CONTACTADMIN = "CONTACTADMIN"
CORRUPTION = "CORRUPTION"
EXPIRED = "EXPIRED"
EXPUNGEISSUED = "EXPUNGEISSUED"
HASCHILDREN = "HASCHILDREN"
INUSE = "INUSE"
LIMIT = "LIMIT"
NONEXISTENT = "NONEXISTENT"
NOPERM = "NOPERM"
OVERQUOTA = "OVERQUOTA"
PARSE = "PARSE"
PRIVACYREQUIRED = "PRIVACYREQUIRED"
READ_ONLY = "READ-ONLY"
READ_WRITE = "READ-WRITE"
SERVERBUG = "SERVERBUG"
TRYCREATE = "TRYCREATE"
UNAVAILABLE = "UNAVAILABLE"
UNKNOWN_CTE = "UNKNOWN-CTE"  # RFC 3516 4.3
NOMODSEQ = "NOMODSEQ"  # RFC 7162 3.1.2
TOOBIG = "TOOBIG"  # RFC 4469 / RFC 7889 / RFC 7888 4
COMPRESSIONACTIVE = "COMPRESSIONACTIVE"  # RFC 4978 3
UIDNOTSTICKY = "UIDNOTSTICKY"  # RFC 4315 3
NOTSAVED = "NOTSAVED"  # RFC 5182 2.5
USEATTR = "USEATTR"  # RFC 6154 6

# Texts the core itself sends.
TEXT_READY = "Ready for literal data"
TEXT_BYE_LOGOUT = "Logging out"

Code = str | bytes | None


def _codes_list(items: Iterable[str | bytes]) -> str:
    return " ".join(i.decode("ascii") if isinstance(i, bytes) else i for i in items)


def code_capability(capabilities: Iterable[str]) -> str:
    return "CAPABILITY " + _codes_list(capabilities)


def code_permanentflags(flags: Iterable[str]) -> str:
    # Include "\*" in flags when clients may create keywords (RFC 9051 7.1).
    return "PERMANENTFLAGS (" + " ".join(flags) + ")"


def code_uidnext(uid: int) -> str:
    return f"UIDNEXT {uid}"


def code_uidvalidity(validity: int) -> str:
    return f"UIDVALIDITY {validity}"


def code_unseen(seq: int) -> str:
    return f"UNSEEN {seq}"


def code_highestmodseq(modseq: int) -> str:
    return f"HIGHESTMODSEQ {modseq}"  # RFC 7162 3.1.1


def code_appenduid(validity: int, uids: Iterable[int] | RangeSet) -> str:
    # RFC 4315 3: "APPENDUID" SP nz-number SP append-uid (a uid-set for MULTIAPPEND)
    return f"APPENDUID {validity} {_set(uids).decode('ascii')}"


def code_copyuid(validity: int, source: Iterable[int], destination: Iterable[int]) -> str:
    # RFC 4315 3: the two sets correspond element by element, in order.
    return f"COPYUID {validity} {compact(source).decode()} {compact(destination).decode()}"


def code_modified(uids: Iterable[int] | RangeSet) -> str:
    return f"MODIFIED {_set(uids).decode('ascii')}"  # RFC 7162 3.2


def code_badcharset(charsets: Iterable[str] = ()) -> str:
    names = " ".join(charsets)
    return f"BADCHARSET ({names})" if names else "BADCHARSET"


def code_appendlimit(limit: int) -> str:
    return f"APPENDLIMIT {limit}"  # RFC 7889


# --- status responses --------------------------------------------------------------------
def _text(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if not raw:
        raise ImapUsageError("response text must not be empty")
    if b"\r" in raw or b"\n" in raw or b"\x00" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\x00", b" ")
    return raw


def _code(code: Code) -> bytes:
    if not code:
        return b""
    raw = code.encode("utf-8") if isinstance(code, str) else code
    return b"[" + raw.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"]", b" ") + b"] "


def _word(value: str | bytes) -> bytes:
    return value.encode("ascii") if isinstance(value, str) else value


# The text after the tag of frequent completions ("OK UID FETCH completed"), by
# (status, text): built once. Bounded; only for completions without a response code.
_TAILS: dict[tuple[str, str | bytes], bytes] = {}
MAX_TAILS = 256


def tagged(tag: str | bytes, status: str, text: str | bytes, code: Code = None) -> bytes:
    """``tag OK|NO|BAD [code] text`` (RFC 9051 7.1)."""
    if code is None:
        tail = _TAILS.get((status, text))
        if tail is None:
            tail = b" %s %s\r\n" % (_word(status), _text(text))
            if len(_TAILS) < MAX_TAILS:
                _TAILS[(status, text)] = tail
        return (tag.encode("ascii") if isinstance(tag, str) else tag) + tail
    return b"%s %s %s%s\r\n" % (_word(tag), _word(status), _code(code), _text(text))


def ok(tag: str | bytes, text: str | bytes, code: Code = None) -> bytes:
    return tagged(tag, OK, text, code)


def no(tag: str | bytes, text: str | bytes, code: Code = None) -> bytes:
    return tagged(tag, NO, text, code)


def bad(tag: str | bytes, text: str | bytes, code: Code = None) -> bytes:
    return tagged(tag, BAD, text, code)


def untagged(status: str, text: str | bytes, code: Code = None) -> bytes:
    """``* OK|NO|BAD|BYE|PREAUTH [code] text``."""
    return b"* %s %s%s\r\n" % (_word(status), _code(code), _text(text))


def bye(text: str | bytes = TEXT_BYE_LOGOUT, code: Code = None) -> bytes:
    return untagged(BYE, text, code)


def greeting(text: str | bytes, code: Code = None) -> bytes:
    """The server greeting, usually with ``code_capability(...)`` (RFC 9051 7.1.1)."""
    return untagged(OK, text, code)


def preauth(text: str | bytes, code: Code = None) -> bytes:
    return untagged(PREAUTH, text, code)


def continuation(text: str | bytes = TEXT_READY) -> bytes:
    """``+ text``: go on sending the literal (RFC 9051 7.5)."""
    return b"+ " + _text(text) + CRLF


def continuation_data(challenge: bytes) -> bytes:
    """``+ base64``: a SASL challenge (RFC 9051 6.2.2); empty challenge is ``+ ``."""
    return b"+ " + base64.b64encode(challenge) + CRLF


# --- untagged data -----------------------------------------------------------------------
def capability(capabilities: Iterable[str]) -> bytes:
    return b"* CAPABILITY " + _codes_list(capabilities).encode("ascii") + CRLF


def flags(flag_names: Iterable[str]) -> bytes:
    return b"* FLAGS " + flag_list(flag_names) + CRLF


def flag_list(flag_names: Iterable[str]) -> bytes:
    return b"(" + " ".join(flag_names).encode("ascii") + b")"


def exists(count: int) -> bytes:
    return b"* %d EXISTS\r\n" % count


def recent(count: int) -> bytes:
    return b"* %d RECENT\r\n" % count  # RFC 3501 only


def expunge(seq: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % seq


def vanished(uids: Iterable[int] | RangeSet | bytes, *, earlier: bool = False) -> bytes:
    """``* VANISHED [(EARLIER)] uid-set`` (RFC 7162 3.2.10)."""
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + _set(uids) + CRLF


def _set(uids: Iterable[int] | RangeSet | bytes) -> bytes:
    if isinstance(uids, bytes):
        return uids
    if isinstance(uids, RangeSet):
        return uids.to_bytes()
    return compact(uids)


def mailbox_name(name: str, *, utf8: bool) -> bytes:
    """A mailbox name as a wire string: modified UTF-7 (rev1) or UTF-8 (rev2/UTF8=ACCEPT)."""
    raw = utf7.encode_mailbox_name(name, utf8=utf8)
    if utf8:
        return quoted_utf8(raw)
    return wire.string(raw)


def quoted_utf8(raw: bytes) -> bytes:
    """Quoted string allowing UTF-8 (RFC 9051 ``QUOTED-CHAR =/ UTF8-2 / UTF8-3 / UTF8-4``)."""
    if len(raw) <= 1024 and not any(c in raw for c in (b"\r", b"\n", b"\x00")):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return wire.literal(raw)


def list_response(
    name: str,
    attributes: Iterable[str] = (),
    *,
    delimiter: str | None = utf7.DELIMITER,
    utf8: bool = False,
    childinfo: Sequence[str] = (),
    oldname: str | None = None,
    command: str = "LIST",
) -> bytes:
    """``* LIST (\\HasNoChildren) "/" "INBOX"`` with RFC 5258 extended data.

    ``childinfo`` gives the CHILDINFO extended item (RFC 5258 4, e.g. ("SUBSCRIBED",)),
    ``oldname`` the OLDNAME item after a RENAME (RFC 9051 7.3.1).
    """
    out = [
        b"* ",
        command.encode("ascii"),
        b" (",
        " ".join(attributes).encode("ascii"),
        b") ",
        wire.string(delimiter) if delimiter is not None else b"NIL",
        b" ",
        mailbox_name(name, utf8=utf8),
    ]
    extended: list[bytes] = []
    if childinfo:
        items = b" ".join(wire.string(c) for c in childinfo)
        extended.append(b'"CHILDINFO" (' + items + b")")
    if oldname is not None:
        extended.append(b'"OLDNAME" (' + mailbox_name(oldname, utf8=utf8) + b")")
    if extended:
        out += [b" (", b" ".join(extended), b")"]
    out.append(CRLF)
    return b"".join(out)


def lsub(name: str, attributes: Iterable[str] = (), *, utf8: bool = False) -> bytes:
    return list_response(name, attributes, utf8=utf8, command="LSUB")


def status(name: str, items: Iterable[tuple[str, int]], *, utf8: bool = False) -> bytes:
    """``* STATUS "name" (MESSAGES 231 UIDNEXT 44292)`` (RFC 9051 7.2.4)."""
    body = b" ".join(b"%s %d" % (k.encode("ascii"), v) for k, v in items)
    return b"* STATUS " + mailbox_name(name, utf8=utf8) + b" (" + body + b")" + CRLF


def search(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    """``* SEARCH 2 3 6`` [``(MODSEQ n)``, RFC 7162 3.1.5] (RFC 3501 7.2.5)."""
    body = b"".join(b" %d" % n for n in numbers)
    if modseq is not None and body:
        body += b" (MODSEQ %d)" % modseq
    return b"* SEARCH" + body + CRLF


def sort(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    """``* SORT 2 3 6`` (RFC 5256 4)."""
    body = b"".join(b" %d" % n for n in numbers)
    if modseq is not None and body:
        body += b" (MODSEQ %d)" % modseq
    return b"* SORT" + body + CRLF


def esearch(
    tag: str | None = None,
    *,
    uid: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    count: int | None = None,
    all_: Iterable[int] | RangeSet | bytes | None = None,
    modseq: int | None = None,
    partial: tuple[bytes, bytes | None] | None = None,
) -> bytes:
    """``* ESEARCH (TAG "a1") UID MIN 1 MAX 9 COUNT 5 ALL 1:3,5`` (RFC 4731, RFC 9051 7.3.4).

    Items that are None are left out (an empty result has no MIN/MAX/ALL, RFC 4731 3.1).
    ``partial``: (the requested range, the numbers or None for NIL), RFC 9394 4.
    """
    out = [b"* ESEARCH"]
    if tag is not None:
        out.append(b" (TAG " + wire.string(tag) + b")")
    if uid:
        out.append(b" UID")
    if minimum is not None:
        out.append(b" MIN %d" % minimum)
    if maximum is not None:
        out.append(b" MAX %d" % maximum)
    if count is not None:
        out.append(b" COUNT %d" % count)
    if all_ is not None:
        all_bytes = _set(all_)
        if all_bytes:
            out.append(b" ALL " + all_bytes)
    if partial is not None:
        out.append(b" PARTIAL (" + partial[0] + b" " + (partial[1] or b"NIL") + b")")
    if modseq is not None:
        out.append(b" MODSEQ %d" % modseq)
    out.append(CRLF)
    return b"".join(out)


NamespaceList = Sequence[tuple[str, str | None]] | None


def namespace(
    personal: NamespaceList,
    other: NamespaceList = None,
    shared: NamespaceList = None,
    *,
    utf8: bool = False,
) -> bytes:
    """``* NAMESPACE (("" "/")) NIL NIL`` (RFC 9051 7.3.5)."""

    def one(ns: NamespaceList) -> bytes:
        if not ns:
            return b"NIL"
        parts = []
        for prefix, delim in ns:
            d = wire.string(delim) if delim is not None else b"NIL"
            parts.append(b"(" + mailbox_name(prefix, utf8=utf8) + b" " + d + b")")
        return b"(" + b"".join(parts) + b")"

    return b"* NAMESPACE " + one(personal) + b" " + one(other) + b" " + one(shared) + CRLF


def id_response(params: Iterable[tuple[str, str | None]] | None) -> bytes:
    """``* ID ("name" "postroom" ...)`` or ``* ID NIL`` (RFC 2971 3.2)."""
    if params is None:
        return b"* ID NIL\r\n"
    items = b" ".join(wire.string(k) + b" " + wire.nstring(v) for k, v in params)
    return b"* ID (" + items + b")" + CRLF if items else b"* ID NIL\r\n"


def enabled(capabilities: Iterable[str]) -> bytes:
    """``* ENABLED CONDSTORE`` (RFC 5161 3.2); with nothing enabled: ``* ENABLED``."""
    caps = _codes_list(capabilities).encode("ascii")
    return b"* ENABLED" + (b" " + caps if caps else b"") + CRLF


ThreadNode = Sequence[Union[int, "ThreadNode"]]


def thread(threads: Iterable[ThreadNode]) -> bytes:
    """``* THREAD (2)(3 6 (4 23)(44 7 96))`` (RFC 5256 4).

    Each thread is a sequence of message numbers forming a chain, optionally ending with
    two or more sub-threads (nested sequences) where the chain branches:
    ``[3, 6, [4, 23], [44, 7, 96]]`` → ``(3 6 (4 23)(44 7 96))``.
    """
    return b"* THREAD " + b"".join(_thread_list(t) for t in threads) + CRLF


def _thread_list(node: ThreadNode) -> bytes:
    members = [b"%d" % n for n in node if isinstance(n, int)]
    nested = [_thread_list(n) for n in node if not isinstance(n, int)]
    body = b" ".join(members)
    if nested:
        body += (b" " if body else b"") + b"".join(nested)
    return b"(" + body + b")"


def quota(root: str, resources: Iterable[tuple[str, int, int]]) -> bytes:
    """``* QUOTA "" (STORAGE 10 512)`` (RFC 9208 5.1): (name, usage, limit) triples."""
    body = b" ".join(b"%s %d %d" % (n.encode("ascii"), u, lim) for n, u, lim in resources)
    return b"* QUOTA " + wire.astring(root) + b" (" + body + b")" + CRLF


def quotaroot(mailbox: str, roots: Iterable[str], *, utf8: bool = False) -> bytes:
    """``* QUOTAROOT INBOX ""`` (RFC 9208 5.2)."""
    rest = b"".join(b" " + wire.string(r) for r in roots)
    return b"* QUOTAROOT " + mailbox_name(mailbox, utf8=utf8) + rest + CRLF


# --- FETCH -------------------------------------------------------------------------------
def internaldate(value: datetime.datetime) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"`` (RFC 9051 9 date-time); naive means UTC."""
    offset = value.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f'"{value.day:02d}-{MONTHS[value.month - 1].title()}-{value.year:04d} '
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    ).encode("ascii")


def literal8(data: bytes) -> bytes:
    """``~{n}`` literal8 for BINARY[] content that holds NUL (RFC 3516 4.3)."""
    return b"~{%d}\r\n" % len(data) + data


FetchValue = bytes | int | str | datetime.datetime | Sequence[str] | None


def fetch(seq: int, items: Iterable[tuple[bytes | str, FetchValue]]) -> bytes:
    """``* 12 FETCH (FLAGS (\\Seen) UID 4827 ...)`` (RFC 9051 7.5.2).

    Values: ``bytes`` are written as they are (already serialized: ENVELOPE,
    BODYSTRUCTURE, ``wire.literal(body)``, ``literal8(...)``); ``int`` a number, except
    for MODSEQ which becomes ``(n)`` (RFC 7162 3.1.4); ``datetime`` an INTERNALDATE;
    a tuple/list of strings a flag list; ``str`` a string; ``None`` NIL.
    """
    parts: list[bytes] = []
    append = parts.append
    for name, value in items:
        key = name.encode("ascii") if isinstance(name, str) else name
        if isinstance(value, bytes):
            append(key + b" " + value)
        elif isinstance(value, int):
            if key == b"MODSEQ":
                append(b"MODSEQ (%d)" % value)
            else:
                append(key + b" %d" % value)
        elif isinstance(value, (tuple, list)):
            append(key + b" (" + " ".join(value).encode("utf-8") + b")")
        elif isinstance(value, datetime.datetime):
            append(key + b" " + internaldate(value))
        elif value is None:
            append(key + b" NIL")
        elif isinstance(value, str):
            append(key + b" " + wire.string(value))
        else:
            raise ImapUsageError(f"cannot serialize FETCH value of type {type(value).__name__}")
    return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts))
