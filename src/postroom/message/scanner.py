"""The MIME structure scanner: raw message bytes → :class:`MessageSummary` with offsets.

Theory of operation
-------------------
The scan is top-down. For an entity occupying ``data[start:end]``:

1. The header ends at the first empty line (``\\n\\r\\n`` or ``\\n\\n``; bare LF is accepted
   everywhere because APPEND may bring LF messages). No empty line: the whole range is
   header and the body is empty.
2. Only the fields that matter are located, by one anchored regex (Content-* on MIME
   parts; Content-* plus the ENVELOPE and threading fields on message entities). The first
   occurrence of each field wins, like Dovecot.
3. The body is split according to the Content-Type:

   * ``multipart/*`` with a boundary: the delimiter lines are found with one regex over
     the body, exactly per RFC 2046 5.1.1 — ``--boundary`` at the start of a line, optional
     transport padding (SP/HTAB), end of line; ``--boundary--`` closes. The line break
     before a delimiter belongs to the delimiter, the preamble and the epilogue belong to
     no part. A missing close delimiter ends the last part at the end of the range.
     Because a delimiter must be followed by padding and a line end, boundaries that are
     prefixes of each other ("foo", "foo-bar") never match each other's lines. Each child
     range is then scanned the same way, so an outer delimiter always terminates inner
     parts (RFC 2046 5.1.2).
   * ``message/rfc822`` and ``message/global``: the body is scanned as a message.
   * anything else: a leaf; for text/* its LF count is taken with ``bytes.count``. A
     caller that already counted the LFs of the message's tail (the SMTP core does, for
     its bare CR/LF check) passes ``tail_lf``, and a leaf that runs to the end of the
     message then counts only the octets between its body and that tail.

Defaults (RFC 2045 5.2): no or invalid Content-Type means text/plain; charset=us-ascii,
except directly inside multipart/digest, where it means message/rfc822 (RFC 2046 5.1.5).
As in Dovecot, a message entity with neither MIME-Version nor Content-Type is not MIME,
so its other Content-* fields are ignored; parts of a multipart are always MIME.

Malformed input never raises:

* multipart/* without a usable boundary parameter becomes a leaf that keeps its declared
  type (what Dovecot 2.3 reports in BODYSTRUCTURE); a boundary that never occurs gives a
  multipart with no children (BODYSTRUCTURE then shows one empty text/plain part);
* nesting deeper than :data:`MAX_DEPTH` is not split any further (the part is a leaf; a
  message/rfc822 there still gets its envelope); once :data:`MAX_PARTS` parts exist, the
  rest of the enclosing multipart body is left unsplit, like an epilogue;
* lines without a colon stay in the header block and are otherwise ignored; 8-bit header
  octets are kept raw; only the first :data:`MAX_FIELD_VALUE` octets of a field value are
  interpreted (the stored message is of course unchanged).

Everything is linear in the message size per nesting level; the Python-level loops run
once per part and per interesting header field, never per byte or per line.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from postroom.message.address import Address, parse_address_list
from postroom.message.encoded import decode_words
from postroom.message.headers import (
    Params,
    find_fields,
    parse_content_language,
    parse_content_type,
    parse_disposition,
    parse_token,
    unfold,
)
from postroom.message.keys import (
    base_subject,
    casemap,
    display_key,
    mailbox_key,
    msg_ids,
    parse_date,
)
from postroom.message.model import Envelope, MessageSummary, Part

__all__ = ["MAX_BOUNDARY", "MAX_DEPTH", "MAX_FIELD_VALUE", "MAX_PARTS", "scan"]

# Nesting levels of multipart and message/rfc822 that are split; deeper content is opaque.
MAX_DEPTH = 50
# Parts created per message; once reached, the rest of the enclosing multipart body is
# left unsplit (like an epilogue: still inside the multipart's body, in no child).
MAX_PARTS = 10_000
# RFC 2046 5.1.1 allows 70 characters; longer boundaries are honoured up to this length.
MAX_BOUNDARY = 1000
# Octets of a field value that are interpreted (envelope, Content-*, References): enough
# for any real header (RFC 5322 lines stop at 998 octets; a To of ~2,000 recipients), and
# it keeps the parsers' work and the summary small whatever a sender writes.
MAX_FIELD_VALUE = 64 * 1024

_CONTENT_FIELDS = (
    b"content-type", b"content-transfer-encoding", b"content-id", b"content-description",
    b"content-disposition", b"content-language", b"content-location", b"content-md5",
    b"mime-version",
)
_MESSAGE_FIELDS = _CONTENT_FIELDS + (
    b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
    b"in-reply-to", b"message-id", b"references",
)
# RFC 5322 2.1: the header ends at the first empty line.
_END_OF_HEADER = re.compile(rb"\n\r?\n")
# RFC 2046 5.1.1: after "--" boundary, optionally "--" (close-delimiter), then
# transport-padding (LWSP) and the end of the line (or of the data).
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*\r?(?:\n|\Z)")

Fields = dict[bytes, bytes]
# ``scan``'s ``tail_lf``: (octets, LFs) of the message's tail, or a function returning it.
TailLf = tuple[int, int] | Callable[[], "tuple[int, int] | None"]


class _Scanner:
    """One scan: the message bytes, the part budget, and the LFs already counted."""

    __slots__ = ("data", "parts", "root_fields", "tail", "tail_lf", "tail_start")

    def __init__(self, data: bytes, tail: TailLf | None) -> None:
        self.data = data
        self.parts = 0
        self.root_fields: Fields = {}
        # ``data[tail_start:]`` holds ``tail_lf`` LFs (tail_start -1: nothing known);
        # ``tail``: the function that tells, not called yet.
        self.tail = tail if callable(tail) else None
        self.tail_start = -1
        self.tail_lf = 0
        if tail is not None and not callable(tail):
            self._take_tail(tail)

    def _take_tail(self, tail_lf: tuple[int, int]) -> None:
        octets, lfs = tail_lf
        if not 0 <= octets <= len(self.data) or lfs < 0:
            raise ValueError(f"tail_lf {tail_lf!r} does not fit {len(self.data)} octets")
        self.tail_start, self.tail_lf = len(self.data) - octets, lfs

    def entity(
        self, start: int, end: int, depth: int, *, message: bool, mime: bool,
        digest_child: bool, opaque: bool,
    ) -> Part:
        """Scan the entity in ``data[start:end]``.

        *message*: a message entity (top level or encapsulated), which gets an envelope.
        *mime*: a multipart child (MIME without needing MIME-Version).
        *digest_child*: the parent is multipart/digest (default type message/rfc822).
        *opaque*: do not split the body (limits reached).
        """
        data = self.data
        self.parts += 1

        # 1. header block
        if data.startswith(b"\n", start, end):
            header_end, body_start = start, start + 1
        elif data.startswith(b"\r\n", start, end):
            header_end, body_start = start, start + 2
        else:
            m = _END_OF_HEADER.search(data, start, end)
            if m is None:
                header_end = body_start = end
            else:
                header_end, body_start = m.start() + 1, m.end()

        # 2. interesting fields (first occurrence wins)
        fields: Fields = {}
        names = _MESSAGE_FIELDS if message else _CONTENT_FIELDS
        for fm in find_fields(data, names, start, header_end):
            name = fm.group(1).lower()
            if name not in fields:
                value_start, value_end = fm.span(2)
                fields[name] = data[value_start : min(value_end, value_start + MAX_FIELD_VALUE)]
        if depth == 0:
            self.root_fields = fields

        is_mime = mime or b"mime-version" in fields or b"content-type" in fields
        content_type = None
        if is_mime and b"content-type" in fields:
            content_type = parse_content_type(unfold(fields[b"content-type"]))
        params: Params
        if content_type is None:
            # RFC 2045 5.2 / RFC 2046 5.1.5 defaults
            ctype, subtype, params = (
                ("message", "rfc822", ()) if digest_child else ("text", "plain", ())
            )
        else:
            ctype, subtype, params = content_type

        encoding = content_id = description = md5 = location = None
        disposition: str | None = None
        disposition_params: Params = ()
        language = None
        if is_mime:
            raw = fields.get(b"content-transfer-encoding")
            if raw is not None:
                token = parse_token(unfold(raw))
                encoding = token.decode("latin-1").lower() if token else None
            content_id = _opt_unfold(fields.get(b"content-id"))
            description = _opt_unfold(fields.get(b"content-description"))
            md5 = _opt_unfold(fields.get(b"content-md5"))
            location = _opt_unfold(fields.get(b"content-location"))
            raw = fields.get(b"content-disposition")
            if raw is not None:
                parsed = parse_disposition(unfold(raw))
                if parsed is not None:
                    disposition, disposition_params = parsed
            raw = fields.get(b"content-language")
            if raw is not None:
                language = parse_content_language(unfold(raw))

        # 3. body
        may_split = not opaque and depth < MAX_DEPTH and self.parts < MAX_PARTS
        children: tuple[Part, ...] = ()
        multipart = False
        encapsulated = None
        lines = 0
        boundary = _boundary(params) if ctype == "multipart" else None
        if boundary is not None and may_split:
            multipart = True
            children = self._split(body_start, end, boundary, depth, subtype == "digest")
        else:
            if ctype in ("text", "message"):
                # RFC 3501 body-fld-lines, only sent for these (skips big attachments)
                lines = self._lines(body_start, end)
            if ctype == "message" and subtype in ("rfc822", "global") and not opaque:
                # Past the limits the encapsulated message is still parsed (one level)
                # for its envelope, which BODYSTRUCTURE needs, but not split further.
                encapsulated = self.entity(
                    body_start, end, depth + 1, message=True, mime=False,
                    digest_child=False, opaque=not may_split,
                )

        return Part(
            header_start=start,
            header_end=header_end,
            body_start=body_start,
            body_end=end,
            lines=lines,
            type=ctype,
            subtype=subtype,
            multipart=multipart,
            params=params,
            encoding=encoding,
            content_id=content_id,
            description=description,
            md5=md5,
            disposition=disposition,
            disposition_params=disposition_params,
            language=language,
            location=location,
            children=children,
            message=encapsulated,
            envelope=_envelope(fields) if message else None,
        )

    def _lines(self, start: int, end: int) -> int:
        """LFs in ``data[start:end]``, from the known tail count when the range runs to the
        end of the message (one short count, of the octets between ``start`` and the tail,
        instead of one over the whole body)."""
        data = self.data
        if end != len(data):
            return data.count(b"\n", start, end)
        if self.tail is not None:
            # Asked once, and only by a line count that can use it (most big mail is
            # multipart or an attachment: no line count runs to the end of the message).
            known = self.tail()
            self.tail = None
            if known is not None:
                self._take_tail(known)
        tail = self.tail_start
        if tail < 0:
            return data.count(b"\n", start, end)
        if start <= tail:
            return data.count(b"\n", start, tail) + self.tail_lf
        return self.tail_lf - data.count(b"\n", tail, start)

    def _split(
        self, start: int, end: int, boundary: bytes, depth: int, digest: bool
    ) -> tuple[Part, ...]:
        """Children of a multipart body ``data[start:end]`` (RFC 2046 5.1.1).

        Delimiter lines are found with ``bytes.find`` on the literal ``\n--boundary``
        (fast, in C), then checked with one shared regex for the rest of the line.
        """
        data = self.data
        dash_boundary = b"--" + boundary
        needle = b"\n" + dash_boundary
        children: list[Part] = []
        part_start = -1
        if data.startswith(dash_boundary, start, end):
            line = start  # delimiter on the first line of the body: no preamble
        else:
            found = data.find(needle, start, end)
            line = found + 1 if found >= 0 else -1
        while line >= 0:
            m = _DELIMITER_TAIL.match(data, line + len(dash_boundary), end)
            if m is not None:
                if part_start >= 0:
                    part_end = line
                    # the line break before the delimiter belongs to the delimiter
                    if part_end > part_start and data[part_end - 1] == 0x0A:
                        part_end -= 1
                        if part_end > part_start and data[part_end - 1] == 0x0D:
                            part_end -= 1
                    children.append(self._child(part_start, part_end, depth, digest))
                    if self.parts >= MAX_PARTS:
                        # part budget spent: the rest of this body is left unsplit, like
                        # an epilogue (it is still inside the multipart's own body)
                        return tuple(children)
                if m.group(1):
                    return tuple(children)  # close-delimiter; what follows is the epilogue
                part_start = m.end()
                found = data.find(needle, m.end() - 1, end)
            else:
                found = data.find(needle, line, end)
            line = found + 1 if found >= 0 else -1
        if part_start >= 0:
            # no close-delimiter: the last part runs to the end of the range
            children.append(self._child(part_start, end, depth, digest))
        return tuple(children)

    def _child(self, start: int, end: int, depth: int, digest: bool) -> Part:
        return self.entity(
            start, end, depth + 1, message=False, mime=True, digest_child=digest,
            opaque=False,
        )


def _boundary(params: Params) -> bytes | None:
    """The multipart boundary, or None when missing or unusable (empty, too long)."""
    for name, value in params:
        if name == "boundary":
            if 0 < len(value) <= MAX_BOUNDARY and 10 not in value and 13 not in value:
                return value
            return None
    return None


def _opt_unfold(raw: bytes | None) -> bytes | None:
    return None if raw is None else unfold(raw)


def _addresses(fields: Fields, name: bytes) -> tuple[Address, ...] | None:
    raw = fields.get(name)
    return parse_address_list(unfold(raw)) if raw is not None else None


def _envelope(fields: Fields) -> Envelope:
    """RFC 9051 7.5.2 ENVELOPE fields of a message entity, raw and unfolded."""
    return Envelope(
        date=_opt_unfold(fields.get(b"date")),
        subject=_opt_unfold(fields.get(b"subject")),
        from_=_addresses(fields, b"from"),
        sender=_addresses(fields, b"sender"),
        reply_to=_addresses(fields, b"reply-to"),
        to=_addresses(fields, b"to"),
        cc=_addresses(fields, b"cc"),
        bcc=_addresses(fields, b"bcc"),
        in_reply_to=_opt_unfold(fields.get(b"in-reply-to")),
        message_id=_opt_unfold(fields.get(b"message-id")),
    )


def scan(data: bytes, tail_lf: TailLf | None = None) -> MessageSummary:
    """Scan a stored message once; the summary answers FETCH/SEARCH/SORT/THREAD later.

    *data* is the message exactly as stored (normally CRLF). Never raises on malformed
    input; offsets in the summary always lie within ``data``.

    *tail_lf*: ``(octets, lfs)`` when the caller knows that the last ``octets`` of
    *data* hold ``lfs`` LFs (the SMTP path: the received body, counted by the core's
    bare CR/LF check, is the tail of the stored message). The summary is the same as
    without it (the caller's claim is trusted, not checked: a wrong one gives wrong
    line counts); it only spares counting those octets again. ValueError when it cannot
    be right (more octets than *data* has, a negative count). It may also be a function
    returning that pair or None, called at most once and only when a line count would
    use it (so that finding the pair costs nothing for mail that does not need it).
    """
    scanner = _Scanner(data, tail_lf)
    root = scanner.entity(
        0, len(data), 0, message=True, mime=False, digest_child=False, opaque=False
    )
    env = root.envelope or Envelope()
    fields = scanner.root_fields

    raw_date = fields.get(b"date")
    subject = env.subject
    message_ids = msg_ids(env.message_id, 1) if env.message_id is not None else []
    in_reply_to = msg_ids(env.in_reply_to, 1) if env.in_reply_to is not None else []
    raw_refs = fields.get(b"references")
    return MessageSummary(
        root=root,
        size=len(data),
        sent_date=parse_date(unfold(raw_date)) if raw_date is not None else None,
        base_subject=casemap(base_subject(decode_words(subject))) if subject else "",
        sort_from=mailbox_key(env.from_),
        sort_to=mailbox_key(env.to),
        sort_cc=mailbox_key(env.cc),
        display_from=display_key(env.from_),
        display_to=display_key(env.to),
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=tuple(msg_ids(unfold(raw_refs))) if raw_refs is not None else (),
    )
