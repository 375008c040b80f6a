"""FETCH ENVELOPE, BODYSTRUCTURE and BODY from a stored parse summary (RFC 9051 7.5.2).

Everything is produced from the :class:`~postroom.message.MessageSummary` computed at
delivery; the message bytes are not read. Each function returns the complete
parenthesized value, ready to follow the item name::

    b"BODYSTRUCTURE " + bodystructure_bytes(summary)

The output follows Dovecot's conventions, which clients have been tested against for
years: lowercase quoted type names (we lowercase them at scan time), a default
``("charset" "us-ascii")`` on every text part without a charset, ``"7bit"`` when there is
no Content-Transfer-Encoding, NIL for an absent field but ``""`` for an empty one, a
multipart without any part shown with one empty text/plain part, Content-Language always
as a list. Parameters are sent as BODYSTRUCTURE expects them: RFC 2231 continuations
merged, the extended form still encoded (``"filename*" "utf-8''%E2%82%AC.pdf"``); clients
decode that. Sizes are octets of the stored message, i.e. of what BODY[section] returns.

All strings go through :mod:`postroom.proto.imap.wire`, so 8-bit or long values become
literals.
"""

from __future__ import annotations

from postroom.message import Address, Envelope, MessageSummary, Part
from postroom.message.headers import Params
from postroom.proto.imap.wire import nstring, string

__all__ = ["body_bytes", "bodystructure_bytes", "envelope_bytes"]

NIL = b"NIL"
_DEFAULT_CHARSET = b'"charset" "us-ascii"'  # RFC 2045 5.2 default, shown like Dovecot
_DEFAULT_ENCODING = b'"7bit"'  # RFC 2045 6.1
# A multipart with no parts is not allowed (RFC 2046 5.1.1); show one empty text part
# so that the response still parses (Dovecot does the same).
_EMPTY_BODY = b'("text" "plain" (' + _DEFAULT_CHARSET + b') NIL NIL "7bit" 0 0)'
_EMPTY_BODYSTRUCTURE = (
    b'("text" "plain" (' + _DEFAULT_CHARSET + b') NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
)
_EMPTY_ENVELOPE = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def envelope_bytes(summary: MessageSummary) -> bytes:
    """``(date subject from sender reply-to to cc bcc in-reply-to message-id)``."""
    return _envelope(summary.root.envelope)


def bodystructure_bytes(
    summary: MessageSummary, extended: bool = True, *, rev2: bool = False
) -> bytes:
    """FETCH BODYSTRUCTURE (``extended=True``) or BODY (``extended=False``).

    *rev2*: the session speaks IMAP4rev2, whose grammar gives message/global parts the
    envelope/body/lines of message/rfc822 (RFC 9051 7.5.2 media-message). IMAP4rev1
    (RFC 3501) only knows MESSAGE/RFC822, so message/global is then sent as a basic body.
    """
    out: list[bytes] = [b"("]
    _write(summary.root, out, extended, rev2)
    out.append(b")")
    return b"".join(out)


def body_bytes(summary: MessageSummary, *, rev2: bool = False) -> bytes:
    """FETCH BODY: the non-extensible form of BODYSTRUCTURE."""
    return bodystructure_bytes(summary, extended=False, rev2=rev2)


def _token(text: str) -> bytes:
    """A type, subtype, parameter name, disposition or encoding as a string.

    These are held as Latin-1 decoded octets (exact for any bytes a sender used), so
    they are encoded back the same way rather than as UTF-8.
    """
    return string(text.encode("latin-1"))


# --- ENVELOPE ---------------------------------------------------------------------------


def _addresses(addresses: tuple[Address, ...] | None) -> bytes:
    if not addresses:
        return NIL
    return b"(" + b"".join(
        b"(" + nstring(a.name) + b" " + nstring(a.adl) + b" " + nstring(a.mailbox) + b" "
        + nstring(a.host) + b")"
        for a in addresses
    ) + b")"


def _envelope(env: Envelope | None) -> bytes:
    if env is None:
        return _EMPTY_ENVELOPE
    # RFC 3501 7.4.2: "If the Sender or Reply-To lines are absent in the [RFC-2822]
    # header, or are present but empty, the server sets the corresponding member of the
    # envelope to be the same value as the from member".
    # The From list is rendered once when it stands in for them (most mail).
    from_ = _addresses(env.from_)
    return b"".join((
        b"(", nstring(env.date),
        b" ", nstring(env.subject),
        b" ", from_,
        b" ", _addresses(env.sender) if env.sender else from_,
        b" ", _addresses(env.reply_to) if env.reply_to else from_,
        b" ", _addresses(env.to),
        b" ", _addresses(env.cc),
        b" ", _addresses(env.bcc),
        b" ", nstring(env.in_reply_to),
        b" ", nstring(env.message_id),
        b")",
    ))


# --- BODYSTRUCTURE ----------------------------------------------------------------------


def _params(params: Params, default_charset: bool) -> bytes:
    """body-fld-param: ``("name" "value" ...)`` or NIL."""
    if not params and not default_charset:
        return NIL
    items = [_token(name) + b" " + string(value) for name, value in params]
    if default_charset and not any(name == "charset" for name, _ in params):
        items.append(_DEFAULT_CHARSET)
    return b"(" + b" ".join(items) + b")"


def _extension_tail(part: Part) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc (shared by both body kinds)."""
    if part.disposition is None:
        dsp = NIL
    else:
        dsp = (
            b"(" + _token(part.disposition) + b" "
            + _params(part.disposition_params, False) + b")"
        )
    if part.language is None:
        lang = NIL
    else:
        lang = b"(" + b" ".join(string(t) for t in part.language) + b")"
    return b" " + dsp + b" " + lang + b" " + nstring(part.location)


def _write(part: Part, out: list[bytes], extended: bool, rev2: bool) -> None:
    """Append the body structure of *part* without its enclosing parentheses."""
    if part.multipart:
        # body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        if part.children:
            for child in part.children:
                out.append(b"(")
                _write(child, out, extended, rev2)
                out.append(b")")
        else:
            out.append(_EMPTY_BODYSTRUCTURE if extended else _EMPTY_BODY)
        out.append(b" " + _token(part.subtype))
        if extended:
            out.append(b" " + _params(part.params, False) + _extension_tail(part))
        return

    # body-type-1part = (body-type-basic / body-type-msg / body-type-text)
    #                   [SP body-ext-1part]
    text = part.type == "text"
    is_message = part.type == "message" and (
        part.subtype == "rfc822" or (rev2 and part.subtype == "global")
    )
    out.append(_token(part.type) + b" " + _token(part.subtype))
    out.append(b" " + _params(part.params, text))
    out.append(
        b" " + nstring(part.content_id) + b" " + nstring(part.description) + b" "
        + (_token(part.encoding) if part.encoding is not None else _DEFAULT_ENCODING)
        + b" %d" % part.size
    )
    if text:
        out.append(b" %d" % part.lines)
    elif is_message:
        inner = part.message
        if inner is None:
            # Only past the nesting limits: keep the grammar with an empty message.
            out.append(b" " + _EMPTY_ENVELOPE + b" ")
            out.append(_EMPTY_BODYSTRUCTURE if extended else _EMPTY_BODY)
        else:
            out.append(b" " + _envelope(inner.envelope) + b" (")
            _write(inner, out, extended, rev2)
            out.append(b")")
        out.append(b" %d" % part.lines)
    if extended:
        out.append(b" " + nstring(part.md5) + _extension_tail(part))
