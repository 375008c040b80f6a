"""Turning received bytes into a stored message: headers we add or drop, the parse summary.

Shared by SMTP (MX and submission), IMAP APPEND and locally delivered DSNs, so every
stored message obeys the same invariants, which POP3 and IMAP rely on:
* CRLF line endings throughout, and a final CRLF (so the stored size is the POP3 size);
* ``Return-Path:`` only as added by us on final delivery (incoming ones are dropped, as
  Postfix's ``message_drop_headers`` does; the outbound queue strips ours again);
* a parse summary computed once (``postroom.message.scan``).
"""

from __future__ import annotations

import email.utils
import functools
import itertools
import random
import re
import time
from typing import TYPE_CHECKING

from postroom.message import MessageSummary, envelope_search_texts, scan
from postroom.message.binary import encode_binary_parts
from postroom.message.scanner import TailLf
from postroom.message.search import SearchTexts
from postroom.proto.imap.prerender import SEPARATOR, prerender

if TYPE_CHECKING:
    from postroom.store.api import Store

_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
# Fields we never keep from the outside: Return-Path is the final MTA's job (RFC 5321
# 4.4); Content-Length lies about the size. Bcc is dropped on submission only.
DROP_ALWAYS = (b"return-path", b"content-length")
DROP_ON_SUBMISSION = (b"bcc",)


def normalize(data: bytes) -> bytes:
    """CRLF line endings and a final CRLF (bare CR or LF become CRLF)."""
    # Counting runs at memchr speed, whereas a look-behind regex search tries every
    # position (milliseconds for a 100 KB message: the largest CPU cost of an SMTP
    # delivery). The regexes run only when there is something to fix.
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf:
        data = _BARE_LF.sub(b"\r\n", data)
        crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf:
        data = _BARE_CR.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def header_end(data: bytes) -> int:
    """Offset just after the header block's last CRLF (before the empty line)."""
    if data.startswith(b"\r\n"):
        return 0
    pos = data.find(b"\r\n\r\n")
    return len(data) if pos < 0 else pos + 2


def header_fields(data: bytes) -> list[tuple[bytes, int, int]]:
    """(lower-case name, start, end) of every header field, folded lines included."""
    end = header_end(data)
    fields: list[tuple[bytes, int, int]] = []
    pos = 0
    while pos < end:
        nl = data.find(b"\r\n", pos, end)
        line_end = end if nl < 0 else nl + 2
        if data[pos : pos + 1] in (b" ", b"\t") and fields:
            name, start, _ = fields[-1]
            fields[-1] = (name, start, line_end)
        else:
            colon = data.find(b":", pos, line_end)
            name = data[pos:colon].strip().lower() if colon >= 0 else b""
            fields.append((name, pos, line_end))
        pos = line_end
    return fields


Fields = list[tuple[bytes, int, int]]  # what header_fields returns


def count_fields(data: bytes, name: bytes, fields: Fields | None = None) -> int:
    return sum(1 for n, _, _ in (header_fields(data) if fields is None else fields) if n == name)


def has_field(data: bytes, name: bytes) -> bool:
    return any(n == name for n, _, _ in header_fields(data))


def drop_fields(data: bytes, names: tuple[bytes, ...], fields: Fields | None = None) -> bytes:
    """``data`` without the header fields called ``names`` (``fields``: ``header_fields(data)``
    when the caller has it already)."""
    if fields is None:
        fields = header_fields(data)
    if not any(n in names for n, _, _ in fields):
        return data
    keep = [data[s:e] for n, s, e in fields if n not in names]
    return b"".join(keep) + data[header_end(data) :]


_FOLD_WIDTH = 78


def fold(name: str, value: str) -> bytes:
    """``Name: value`` folded at spaces near 78 columns (RFC 5322 2.2.3).

    Each line takes as many words as fit in 78 columns (a continuation line's tab
    counts one), and at least one word. Found with ``rfind`` over the unfolded line
    rather than by building each line a word at a time (every message's Received
    field: ~36 k instructions that way, a third of them here); a value with empty
    words (two spaces in a row, or one at either end) takes the word loop of
    :func:`_fold_words`, whose result this equals for every other value.
    """
    text = f"{name}: {value}"
    if len(text) <= _FOLD_WIDTH:
        return (text + "\r\n").encode("utf-8")
    if not value or "  " in value or value[0] == " " or value[-1] == " ":
        return _fold_words(name, value)
    lines = []
    # A line runs from ``start`` (0, or the space that becomes its tab) to a space or
    # the end; the first line holds the name and at least its first word.
    start = 0
    first = text.find(" ", len(name) + 2)  # the end of the first word
    while True:
        if len(text) - start <= _FOLD_WIDTH or first < 0:
            break
        cut = text.rfind(" ", start + 1, start + _FOLD_WIDTH + 1)
        if cut < first:  # (at least one word: the name alone, or one long word)
            cut = first
        lines.append(text[start:cut] if start == 0 else "\t" + text[start + 1 : cut])
        start = cut
        first = text.find(" ", start + 1)
    lines.append(text[start:] if start == 0 else "\t" + text[start + 1 :])
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _fold_words(name: str, value: str) -> bytes:
    """:func:`fold` a word at a time (any value; empty words kept as they come)."""
    words = value.split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > 78 and line.strip() and line != f"{name}:":
            lines.append(line)
            line = "\t" + word
        else:
            line += " " + word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    qid: str,
    tls: str = "",
    recipient: str | None = None,
    now: float | None = None,
) -> bytes:
    """RFC 5321 4.4 trace field. Never includes credentials (only "A" in the protocol)."""
    ip = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    parts = [f"from {helo or 'unknown'} ([{ip}])", f"by {hostname} (postroom)", f"with {protocol}"]
    if tls:
        version, _, cipher = tls.partition(" ")
        parts.append(f"(using {version} with cipher {cipher})" if cipher else f"(using {version})")
    parts.append(f"id {qid}")
    if recipient:
        parts.append(f"for <{recipient}>")
    return fold("Received", " ".join(parts) + "; " + _utc_date(int(now if now is not None else time.time())))


@functools.lru_cache(maxsize=4)
def _utc_date(second: int) -> str:
    """RFC 5322 date of a second, in UTC; cached because every message of a second
    shares it (formatting it was a visible share of the CPU per SMTP message)."""
    return email.utils.formatdate(second, localtime=False)


def return_path(sender: str) -> bytes:
    return f"Return-Path: <{sender}>\r\n".encode()


def strip_return_path(data: bytes) -> bytes:
    """The outbound copy: drop the Return-Path we added for local delivery."""
    if data[:12].lower() == b"return-path:":
        nl = data.find(b"\r\n")
        return data[nl + 2 :] if nl >= 0 else data
    return data


def submission_fixups(
    data: bytes, hostname: str, qid: str, now: float | None = None, author: str = ""
) -> bytes:
    """RFC 6409 8.2/8.3: add Message-ID and Date when the client left them out; and
    ``From: <author>`` (the envelope sender or the login, already checked as owned) when
    there is no From: at all, as Postfix's cleanup does, since RFC 5322 3.6 requires one."""
    add = b""
    fields = {n for n, _, _ in header_fields(data)}
    if b"from" not in fields and author:
        add += f"From: <{author}>\r\n".encode()
    if b"date" not in fields:
        add += fold("Date", email.utils.formatdate(now if now is not None else time.time(), localtime=True))
    if b"message-id" not in fields:
        add += f"Message-ID: <{qid}@{hostname}>\r\n".encode()
    if not add:
        return data
    end = header_end(data)
    return data[:end] + add + data[end:]


async def junk_mailboxes(store: Store, user_ids: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """DMARC ``p=quarantine`` (RFC 7489 6.3): the Junk mailbox of each user, and the users
    that have none (they get the message in their INBOX, as before)."""
    junk: list[int] = []
    inbox: list[int] = []
    for uid in user_ids:
        boxes = await store.list_mailboxes(uid)
        found = [m for m in boxes if m.special_use == "\\Junk"] or [m for m in boxes if m.name == "Junk"]
        if found:
            junk.append(found[0].id)
        else:
            inbox.append(uid)
    return tuple(junk), tuple(inbox)


def summarize(data: bytes) -> bytes:
    """The stored parse summary for ``data`` (MIME tree with offsets, envelope, sort keys),
    followed by the IMAP ENVELOPE and BODYSTRUCTURE rendered from it now, while the tree
    is at hand (``proto.imap.prerender``: a first sync then copies them)."""
    return _stored(scan(data))


def _stored(summary: MessageSummary) -> bytes:
    return summary.to_bytes() + SEPARATOR + prerender(summary)


def summarize_for_store(data: bytes, tail_lf: TailLf | None = None) -> tuple[bytes, SearchTexts]:
    """The stored summary (with the prerendered IMAP items, as :func:`summarize`) and the
    envelope search texts (``Delivery.search_texts``) from one scan, so the store does not
    decode the summary again to derive them. ``tail_lf``: the LFs already counted at the
    end of ``data`` (:func:`counted_tail`, or a function returning it: ``scan`` calls it
    only when a line count would use it), which the scan then does not count again."""
    parsed = scan(data, tail_lf)
    return _stored(parsed), envelope_search_texts(parsed)


def counted_tail(received: bytes, line_feeds: int | None, stored: bytes) -> tuple[int, int] | None:
    """``scan``'s ``tail_lf`` for ``stored``, made from the ``received`` message whose LFs
    the SMTP core counted (``line_feeds``, None: not counted): the octets and LFs of
    ``received`` from the end of its header (the empty line and the body), which the
    steps before storing keep as they are (they edit or prepend header fields only).

    Checked, not assumed: None unless ``stored`` still ends with those octets (a memcmp,
    ~2 us for 100 KB, against ~30 us for counting the LFs of a text body again).
    """
    if line_feeds is None:
        return None
    end = header_end(received)
    with memoryview(received) as view, view[end:] as tail:
        if not stored.endswith(tail):
            return None
    return len(received) - end, line_feeds - received.count(b"\n", 0, end)


# Above these, preparing a message costs more than a millisecond or two of Python (the
# header walk is a loop per header line, the MIME scan one per part): worth a worker
# process (see net/offload.py), which keeps the event loop free. Each test is one C scan.
COSTLY_SIZE = 256 * 1024
COSTLY_PARTS = 100  # lines starting with "--": a bound on the multipart delimiters
COSTLY_HEADER_LINES = 1000
# Address and parameter parsing costs a few microseconds per token, and a token can be
# one octet (30,000 commas in a To: field took 0.3 s). Tokens are bounded by the
# octets that separate them.
COSTLY_TOKENS = 3000
_HEADER_SEPARATORS = (b" ", b"\t", b",", b";", b"<", b"(", b'"')
_PART_SEPARATORS = (b";", b"<", b"(", b'"')  # (part headers; body text has commas)


def costly(data: bytes) -> bool:
    """Is :func:`prepare_headers` / :func:`prepare_append` of ``data`` worth offloading?

    Inline the MIME scan costs about a millisecond for ordinary mail; these cheap counts
    (C scans, no parsing) find what could cost much more.
    """
    if len(data) > COSTLY_SIZE:
        return True
    end = header_end(data)
    # Delimiter lines matter only when the scanner splits the body: a top-level
    # multipart, or a message/* it parses as a message (which may hold one). Mail that
    # is not multipart then costs no pass over its body here. Any mention of either word
    # anywhere in the header (or a header too big to look at cheaply) counts as nested.
    # A literal search in ``re`` is one tight loop (~30 us for 100 KB, where the 3-octet
    # ``bytes.count`` took 70-190 us), and it stops at the limit.
    dash_lines = (
        list(itertools.islice(_DASH_LINE.finditer(data), COSTLY_PARTS + 1))
        if _maybe_nested(data, end) else []
    )
    if len(dash_lines) > COSTLY_PARTS:
        return True
    # The header's lines and separators are octets of its ``end`` octets: a header no
    # longer than a limit cannot pass it, and is not counted (eight counts per message).
    if end > COSTLY_HEADER_LINES and data.count(b"\n", 0, end) > COSTLY_HEADER_LINES:
        return True
    if end > COSTLY_TOKENS and sum(data.count(c, 0, end) for c in _HEADER_SEPARATORS) > COSTLY_TOKENS:
        return True
    return bool(dash_lines) and _part_header_tokens(data, end, dash_lines) > COSTLY_TOKENS


_DASH_LINE = re.compile(rb"\n--")
_BLANK_LINE = re.compile(rb"\n\r?\n")


def _part_header_tokens(data: bytes, end: int, dash_lines: list[re.Match[bytes]]) -> int:
    """A bound on the separators the scanner parses in the MIME part headers of ``data``.

    Every part header follows a line that starts with "--" (its delimiter; other such
    lines add octets that are not headers: more counted, never fewer) and ends at the
    next empty line, so only those ranges are counted, not the part bodies (four counts
    over a 100 KB attachment: ~140 us). An encapsulated message (message/*, or any part
    of a multipart/digest, RFC 2046 5.1.5) has a header of its own inside a part body,
    which follows no "--" line, and a range that is not short is not worth the
    bookkeeping: then everything after the top-level header is counted, as a bound.
    """
    if end > _NESTING_HEADER_MAX or _encapsulates(data[:end]):
        return sum(data.count(c, end) for c in _PART_SEPARATORS)
    counted = 0
    tokens = 0
    for m in dash_lines:
        start = m.end()
        blank = _BLANK_LINE.search(data, start)
        stop = blank.end() if blank is not None else len(data)
        counted += stop - start
        if counted > _PART_HEADERS_MAX or _encapsulates(data[start:stop]):
            return sum(data.count(c, end) for c in _PART_SEPARATORS)
        tokens += sum(data.count(c, start, stop) for c in _PART_SEPARATORS)
    return tokens


_PART_HEADERS_MAX = 64 * 1024  # octets of part headers counted one range at a time


def _encapsulates(header: bytes) -> bool:
    lower = header.lower()
    # find, not `in`: CPython tries a bytes needle as an int first (a TypeError per test)
    return lower.find(b"message/") >= 0 or lower.find(b"digest") >= 0


_NESTING_WORDS = (b"multipart", b"message/")
_NESTING_HEADER_MAX = 64 * 1024


def _maybe_nested(data: bytes, end: int) -> bool:
    """Could :func:`scan` split ``data``'s body into parts? False only when the header
    (``data[:end]``) names neither ``multipart`` nor ``message/`` anywhere."""
    if end > _NESTING_HEADER_MAX:
        return True
    header = data[:end].lower()
    # (find, not a generator of `in` tests: CPython tries a bytes needle as an int
    # first, building and dropping a TypeError each time)
    for word in _NESTING_WORDS:
        if header.find(word) >= 0:
            return True
    return False


def prepare_headers(
    data: bytes,
    *,
    drop: tuple[bytes, ...],
    submission: tuple[str, str, str] | None,
    max_received: int,
) -> bytes | None:
    """A message received over SMTP with its header fixed: None when it already carries
    ``max_received`` ``Received:`` fields (a mail loop, RFC 5321 6.3); otherwise without
    the ``drop`` fields and, for submission (``(hostname, queue id, author)``), with
    ``Message-ID:``/``Date:``/``From:`` added when missing (RFC 6409 8,
    :func:`submission_fixups`). Each step walks the header
    line by line: a pure function, so the SMTP shell runs it in a worker process for big
    or complex messages (:func:`costly`).
    """
    fields = header_fields(data)  # walked once for both
    if count_fields(data, b"received", fields) >= max_received:
        return None
    data = drop_fields(data, drop, fields)
    if submission is not None:
        hostname, qid, author = submission
        data = submission_fixups(data, hostname, qid, author=author)
    return data


def prepare_append(data: bytes, binary: bool = False) -> tuple[bytes, bytes]:
    """IMAP APPEND: the stored form of ``data`` (:func:`normalize`) and its summary.

    ``binary`` (a literal8, or NUL in the data): parts that cannot be stored as text are
    first re-encoded as base64 (RFC 3516 4.4, :mod:`postroom.message.binary`), so BINARY[]
    fetches give the client its octets back.
    """
    if binary:
        data = encode_binary_parts(data) or data
    data = normalize(data)
    return data, summarize(data)


_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"
# Two base-31 digits at a time (31 * 31 = 961 values): a session and a message take an id
# each, and a digit per loop turn was a visible share of a connection's setup. ``_HI``:
# most significant digit first (the time part); ``_LO``: least significant first (the
# random part, in the order the digits were always drawn).
_ID_HI = tuple(_ID_ALPHABET[i // 31] + _ID_ALPHABET[i % 31] for i in range(961))
_ID_LO = tuple(_ID_ALPHABET[i % 31] + _ID_ALPHABET[i // 31] for i in range(961))
# (milliseconds // 961, its digits): changes every ~1 s; one tuple, replaced whole, so a
# thread never sees the digits of another second.
_id_stamp: tuple[int, str] = (-1, "")


def _base31(n: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 31)
        out.append(_ID_ALPHABET[r])
    return "".join(reversed(out))


def new_id() -> str:
    """A queue/transaction id: time-ordered, unique, 15 characters ``[0-9A-Z]`` (9 of time until the year 2807).

    Milliseconds since the epoch in base 31 (no vowels: ids never spell words) followed by
    random characters, like Postfix's long queue ids.
    """
    global _id_stamp
    high, low = divmod(int(time.time() * 1000), 961)
    stamp = _id_stamp
    if stamp[0] != high:
        stamp = _id_stamp = (high, _base31(high))
    # The ids need to be unique, not secret: the random module (seeded from the OS at
    # start and re-seeded in a forked child, so every process draws its own sequence)
    # costs no system call, unlike os.urandom. The modulo bias is negligible.
    rnd = random.getrandbits(64)
    rnd, a = divmod(rnd, 961)
    rnd, b = divmod(rnd, 961)
    c = rnd % 961
    return f"{stamp[1]}{_ID_HI[low]}{_ID_LO[a]}{_ID_LO[b]}{_ID_LO[c]}"
