"""The parse summary: what :func:`~postroom.message.scan` learns once, stored beside the blob.

A :class:`MessageSummary` holds the MIME tree (:class:`Part`) with byte offsets into the
stored message, the ENVELOPE of every message (top level and message/rfc822), and the
keys SEARCH/SORT/THREAD need. IMAP FETCH is then answered by slicing the stored bytes at
these offsets, without parsing the message again.

Offsets (all absolute positions in the stored message)::

    header_start <= header_end <= body_start <= body_end

``data[header_start:header_end]`` is every header field line with its line ending,
``data[header_end:body_start]`` the blank line ending the header (empty when there is
none), ``data[body_start:body_end]`` the body. Children of a multipart and the
encapsulated message of a message/rfc822 part lie inside their parent's body.

Serialisation (:meth:`MessageSummary.to_bytes`) is compact JSON made of positional arrays,
ASCII only (so it fits a TEXT column as well as a BLOB), starting with a format version:
rows written by an older format raise :class:`SummaryVersionError`, and the caller simply
re-scans the stored message. Raw header octets travel as Latin-1 code points, which makes
the round trip exact for any bytes. The JSON is one line; a stored summary may carry more
lines after it (``deliver.summarize`` adds the IMAP items rendered at delivery), which
every reader of the summary ignores.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from postroom.message.address import Address
from postroom.message.headers import Params, decode_param

__all__ = [
    "Envelope",
    "header_block_end",
    "MessageSummary",
    "Part",
    "SummaryError",
    "SummaryVersionError",
    "compact_json",
]


def _compact_encoder() -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=True)``, built once.

    Why: ``json.dumps`` with arguments makes a ``JSONEncoder`` and then a C encoder on
    every call, about as much work as encoding a summary row itself; each delivery
    encodes two (the summary and the prerendered IMAP items). No circular-reference
    check: the rows are trees this module builds. Without the C accelerator (other
    Pythons) the encoder object is still built once.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, check_circular=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    c_encode = make(None, encoder.default, json.encoder.encode_basestring_ascii, None,
                    ":", ",", False, False, True)

    def encode(obj: Any) -> str:
        return "".join(c_encode(obj, 0))

    return encode


compact_json = _compact_encoder()


class SummaryError(ValueError):
    """Stored summary bytes are not a summary this code can read: re-scan the message."""


class SummaryVersionError(SummaryError):
    """The summary was written by another format version: re-scan the message."""


AddressList = tuple[Address, ...] | None


@dataclass(frozen=True, slots=True)
class Envelope:
    """RFC 9051 7.5.2 ENVELOPE fields, raw (IMAP sends them undecoded).

    Address fields are None when the header is absent or holds no address (NIL on the
    wire). Sender and Reply-To are stored as found; the ENVELOPE serializer applies the
    RFC 3501 defaulting to From.
    """

    date: bytes | None = None
    subject: bytes | None = None
    from_: AddressList = None
    sender: AddressList = None
    reply_to: AddressList = None
    to: AddressList = None
    cc: AddressList = None
    bcc: AddressList = None
    in_reply_to: bytes | None = None
    message_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME entity: a whole message, a multipart child, or an encapsulated message.

    ``type``/``subtype`` are lowercased; when the part has no (valid) Content-Type they hold
    the RFC 2045 default (text/plain, or message/rfc822 inside multipart/digest).
    ``params``/``disposition_params`` are in the form BODYSTRUCTURE sends: names lowercased,
    RFC 2231 continuations merged (``name*`` keeps its ``charset'lang'%XX`` value), values
    raw; use :meth:`param` / :attr:`filename` for decoded text. ``encoding`` is the
    lowercased Content-Transfer-Encoding token, None when absent or invalid (7bit).
    ``lines`` counts LF in the body of text/* and message/* leaf parts (RFC 3501
    body-fld-lines, sent only for those); it is 0 for other parts.
    ``multipart`` is True when the body was split at a boundary (``children`` may then
    still be empty); a multipart/* without a usable boundary is a leaf, as in Dovecot.
    ``message`` is the encapsulated message of message/rfc822 and message/global parts;
    ``envelope`` is set on message entities (the top level and every ``message``).
    """

    header_start: int
    header_end: int
    body_start: int
    body_end: int
    lines: int = 0
    type: str = "text"
    subtype: str = "plain"
    multipart: bool = False
    params: Params = ()
    encoding: str | None = None
    content_id: bytes | None = None
    description: bytes | None = None
    md5: bytes | None = None
    disposition: str | None = None
    disposition_params: Params = ()
    language: tuple[bytes, ...] | None = None
    location: bytes | None = None
    children: tuple[Part, ...] = ()
    message: Part | None = None
    envelope: Envelope | None = None

    @property
    def size(self) -> int:
        """Body size in octets (RFC 3501 body-fld-octets)."""
        return self.body_end - self.body_start

    @property
    def mime_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    @property
    def charset(self) -> str | None:
        return decode_param(self.params, "charset")

    @property
    def filename(self) -> str | None:
        """Decoded attachment name: Content-Disposition filename, else Content-Type name."""
        name = decode_param(self.disposition_params, "filename")
        return name if name is not None else decode_param(self.params, "name")

    def param(self, name: str) -> str | None:
        """Decoded Content-Type parameter (RFC 2231 and RFC 2047 undone)."""
        return decode_param(self.params, name.lower())

    def disposition_param(self, name: str) -> str | None:
        return decode_param(self.disposition_params, name.lower())

    def walk(self) -> Iterator[Part]:
        """This part and every part below it (children, encapsulated messages), in order."""
        stack: list[Part] = [self]
        while stack:
            part = stack.pop()
            yield part
            if part.message is not None:
                stack.append(part.message)
            stack.extend(reversed(part.children))


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """Everything FETCH/SEARCH/SORT/THREAD need about one stored message.

    ``sent_date`` is (POSIX seconds, UTC offset in minutes) from the Date header, None when
    missing or unparsable (RFC 5256: use INTERNALDATE then). ``base_subject`` is the
    RFC 5256 base subject already in i;unicode-casemap form; ``sort_*`` and ``display_*``
    are the SORT FROM/TO/CC (RFC 5256) and DISPLAYFROM/DISPLAYTO (RFC 5957) keys, case
    mapped, "" when absent. ``message_id``/``in_reply_to``/``references`` are message-ids
    without angle brackets for THREAD=REFERENCES (in_reply_to: the first one only).
    """

    VERSION: ClassVar[int] = 1

    root: Part
    size: int
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

    @property
    def envelope(self) -> Envelope:
        return self.root.envelope or _EMPTY_ENVELOPE

    def parts(self) -> Iterator[Part]:
        return self.root.walk()

    def to_bytes(self) -> bytes:
        """Compact, versioned, ASCII-only serialisation (see the module docstring)."""
        row = [
            self.VERSION,
            self.size,
            _enc_part(self.root),
            list(self.sent_date) if self.sent_date is not None else None,
            self.base_subject,
            self.sort_from,
            self.sort_to,
            self.sort_cc,
            self.display_from,
            self.display_to,
            self.message_id,
            self.in_reply_to,
            list(self.references),
        ]
        _trim(row, _SUMMARY_DEFAULTS, 3)
        return compact_json(row).encode("ascii")

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> MessageSummary:
        """Inverse of :meth:`to_bytes`; :class:`SummaryError` when *raw* is unusable.

        Only the first line is the summary: what follows a line feed is an extension
        written beside it (the IMAP items rendered at delivery, proto.imap.prerender)."""
        row = _load_row(raw)
        try:
            row = _pad(row, _SUMMARY_DEFAULTS)
            sent = row[3]
            return cls(
                root=_dec_part(row[2]),
                size=_int(row[1]),
                sent_date=(_int(sent[0]), _int(sent[1])) if sent is not None else None,
                base_subject=_str(row[4]),
                sort_from=_str(row[5]),
                sort_to=_str(row[6]),
                sort_cc=_str(row[7]),
                display_from=_str(row[8]),
                display_to=_str(row[9]),
                message_id=_opt_str(row[10]),
                in_reply_to=_opt_str(row[11]),
                references=tuple(_str(r) for r in _list(row[12])),
            )
        except (TypeError, ValueError, IndexError, AttributeError, RecursionError) as exc:
            raise SummaryError(f"malformed summary: {exc!r}") from None


def _load_row(raw: bytes | str) -> list[Any]:
    """The decoded summary row (its first line), checked for this format version."""
    cut = raw.find(b"\n" if isinstance(raw, bytes) else "\n")  # type: ignore[arg-type]
    if cut >= 0:
        raw = raw[:cut]
    try:
        row = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SummaryError(f"summary is not JSON: {exc}") from None
    if not isinstance(row, list) or not row or not isinstance(row[0], int):
        raise SummaryError("summary has no version")
    if row[0] != MessageSummary.VERSION:
        raise SummaryVersionError(f"summary version {row[0]}, expected {MessageSummary.VERSION}")
    return row


def root_envelope(raw: bytes | str) -> Envelope | None:
    """The top-level ENVELOPE of stored summary bytes, without building the MIME tree.

    What the search texts need at delivery (``message.search_texts_of``): for a
    10,000-part message that is one JSON decode instead of ten thousand dataclasses
    (issue 9: the full decode held the event loop for a quarter of a second per APPEND).
    Raises :class:`SummaryError` like :meth:`MessageSummary.from_bytes`.
    """
    row = _load_row(raw)
    try:
        root = row[2]
        if not isinstance(root, list) or not 4 <= len(root) <= 7:
            raise ValueError("bad part row")
        extras = root[6] if len(root) > 6 else {}
        if not isinstance(extras, dict):
            raise TypeError("part extras must be an object")
        envelope = extras.get("v")
        return _dec_envelope(envelope) if envelope is not None else None
    except (TypeError, ValueError, IndexError, AttributeError, RecursionError) as exc:
        raise SummaryError(f"malformed summary: {exc!r}") from None


_EMPTY_ENVELOPE = Envelope()

# What to_bytes() starts with: [VERSION, size, [header_start, header_end, body_start, ...
_HEAD = re.compile(rb"\[(\d+),(\d+),\[(\d+),(\d+),(\d+),")


def header_block_end(raw: bytes) -> int | None:
    """Where the top-level body starts, from stored summary bytes, without decoding them:
    a store can then read just the header block of a big message. None when ``raw`` is
    not in this version's format (read the whole message then)."""
    m = _HEAD.match(raw)
    if m is None or int(m.group(1)) != MessageSummary.VERSION:
        return None
    return int(m.group(5))

class HeadSummary:
    """The top-level offsets of a message and nothing else: enough for the sections that
    address the top-level header or text (``proto.imap.sections.extract`` of RFC822.HEADER,
    RFC822.TEXT, BODY[HEADER], BODY[HEADER.FIELDS...], BODY[TEXT]), which read only
    ``size`` and ``root``'s four offsets. It stands in for a :class:`MessageSummary`
    there (``root`` is itself) because building the real one, frozen dataclasses for the
    whole MIME tree, costs ten times more than these sections need."""

    __slots__ = ("size", "header_start", "header_end", "body_start", "body_end")

    def __init__(self, size: int, header_start: int, header_end: int, body_start: int) -> None:
        self.size = size
        self.header_start = header_start
        self.header_end = header_end
        self.body_start = body_start
        self.body_end = size

    @property
    def root(self) -> HeadSummary:
        return self

    def resized(self, size: int) -> HeadSummary:
        """The same offsets over the first ``size`` octets (a header block read alone)."""
        return HeadSummary(size, self.header_start, self.header_end, self.body_start)


def header_summary(raw: bytes) -> HeadSummary | None:
    """The top-level offsets from the head of stored summary bytes, without decoding them
    (see :class:`HeadSummary`). None when ``raw`` is not in this version's format."""
    m = _HEAD.match(raw)
    if m is None or int(m.group(1)) != MessageSummary.VERSION:
        return None
    return HeadSummary(int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))


# --- positional JSON encoding ----------------------------------------------------------
# Each row lists its fields in a fixed order; trailing fields equal to their default are
# dropped on writing and restored on reading. The first fields of a row are mandatory.

_SUMMARY_DEFAULTS: list[Any] = [
    None, None, None, None, "", "", "", "", "", "", None, None, [],
]
_ENVELOPE_DEFAULTS: list[Any] = [None] * 10


def _trim(row: list[Any], defaults: list[Any], mandatory: int) -> None:
    """Drop trailing fields equal to their default, keeping the first *mandatory*."""
    while len(row) > mandatory and row[-1] == defaults[len(row) - 1]:
        row.pop()


def _pad(row: list[Any], defaults: list[Any]) -> list[Any]:
    if len(row) > len(defaults):
        raise ValueError("too many fields")
    return row + defaults[len(row) :]


def _b(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _unb(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value.encode("latin-1")


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _enc_params(params: Params) -> list[list[str]]:
    return [[name, value.decode("latin-1")] for name, value in params]


def _dec_params(rows: Any) -> Params:
    return tuple((_str(name), _unb(value) or b"") for name, value in rows)


def _enc_addresses(addresses: tuple[Address, ...] | None) -> list[list[str | None]] | None:
    if addresses is None:
        return None
    return [[_b(a.name), _b(a.adl), _b(a.mailbox), _b(a.host)] for a in addresses]


def _dec_addresses(rows: Any) -> tuple[Address, ...] | None:
    if rows is None:
        return None
    return tuple(Address(_unb(n), _unb(r), _unb(m), _unb(h)) for n, r, m, h in rows)


def _enc_envelope(env: Envelope) -> list[Any]:
    row: list[Any] = [
        _b(env.date), _b(env.subject),
        _enc_addresses(env.from_), _enc_addresses(env.sender), _enc_addresses(env.reply_to),
        _enc_addresses(env.to), _enc_addresses(env.cc), _enc_addresses(env.bcc),
        _b(env.in_reply_to), _b(env.message_id),
    ]
    _trim(row, _ENVELOPE_DEFAULTS, 0)
    return row


def _dec_envelope(row: Any) -> Envelope:
    r = _pad(list(row), _ENVELOPE_DEFAULTS)
    return Envelope(
        date=_unb(r[0]), subject=_unb(r[1]),
        from_=_dec_addresses(r[2]), sender=_dec_addresses(r[3]),
        reply_to=_dec_addresses(r[4]), to=_dec_addresses(r[5]),
        cc=_dec_addresses(r[6]), bcc=_dec_addresses(r[7]),
        in_reply_to=_unb(r[8]), message_id=_unb(r[9]),
    )


# Part row: [header_start, header_end, body_start, body_end, lines, "type/subtype", extras]
# where extras maps one-letter keys to the fields that differ from their defaults (most
# parts have two or three), and the last two entries are omitted when at their defaults.
# A media type token cannot contain "/" (RFC 2045 5.1 tspecials), so the split is exact.


def _enc_part(p: Part) -> list[Any]:
    extras: dict[str, Any] = {}
    if p.multipart:
        extras["M"] = 1
    if p.params:
        extras["p"] = _enc_params(p.params)
    if p.encoding is not None:
        extras["e"] = p.encoding
    if p.content_id is not None:
        extras["i"] = _b(p.content_id)
    if p.description is not None:
        extras["d"] = _b(p.description)
    if p.md5 is not None:
        extras["5"] = _b(p.md5)
    if p.disposition is not None:
        extras["s"] = p.disposition
    if p.disposition_params:
        extras["q"] = _enc_params(p.disposition_params)
    if p.language is not None:
        extras["l"] = [t.decode("latin-1") for t in p.language]
    if p.location is not None:
        extras["o"] = _b(p.location)
    if p.children:
        extras["c"] = [_enc_part(c) for c in p.children]
    if p.message is not None:
        extras["m"] = _enc_part(p.message)
    if p.envelope is not None:
        extras["v"] = _enc_envelope(p.envelope)
    row: list[Any] = [
        p.header_start, p.header_end, p.body_start, p.body_end, p.lines,
        f"{p.type}/{p.subtype}", extras,
    ]
    if not extras:
        row.pop()
        if row[-1] == "text/plain":
            row.pop()
            if row[-1] == 0:
                row.pop()
    return row


def _dec_part(row: Any) -> Part:
    if not isinstance(row, list) or not 4 <= len(row) <= 7:
        raise ValueError("bad part row")
    lines = _int(row[4]) if len(row) > 4 else 0
    ctype, subtype = _str(row[5]).split("/", 1) if len(row) > 5 else ("text", "plain")
    x: dict[str, Any] = row[6] if len(row) > 6 else {}
    if not isinstance(x, dict):
        raise TypeError("part extras must be an object")
    get = x.get
    language = get("l")
    message = get("m")
    envelope = get("v")
    return Part(
        header_start=_int(row[0]), header_end=_int(row[1]),
        body_start=_int(row[2]), body_end=_int(row[3]), lines=lines,
        type=ctype, subtype=subtype, multipart=bool(get("M", 0)),
        params=_dec_params(get("p", ())), encoding=_opt_str(get("e")),
        content_id=_unb(get("i")), description=_unb(get("d")), md5=_unb(get("5")),
        disposition=_opt_str(get("s")), disposition_params=_dec_params(get("q", ())),
        language=tuple(_unb(t) or b"" for t in language) if language is not None else None,
        location=_unb(get("o")),
        children=tuple(_dec_part(c) for c in get("c", ())),
        message=_dec_part(message) if message is not None else None,
        envelope=_dec_envelope(envelope) if envelope is not None else None,
    )
