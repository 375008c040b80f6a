"""Preparing a message for a given server: CRLF, ORCPT values, 8-bit downgrade (RFC 6152).

Used by the SMTP client core when the peer lacks 8BITMIME, and by the queue for ORCPT.
"""

from __future__ import annotations

import base64
import quopri
import re
from email import message_from_bytes
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from io import BytesIO

from postroom.proto.smtp.grammar import xtext_encode

# --- message preparation ---------------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")


def normalize_crlf(data: bytes) -> bytes:
    """Every line ending becomes CRLF, bare CR and bare LF included (we must never emit
    them: RFC 5321 2.3.8, and the SMTP smuggling lesson); non-empty text ends with CRLF.
    Three C-speed counts decide whether the (slower) regex is needed at all."""
    crs = data.count(b"\r")
    if crs == 0:
        out = data.replace(b"\n", b"\r\n")
    elif crs == data.count(b"\n") == data.count(b"\r\n"):
        out = data
    else:
        out = _LINE_END.sub(b"\r\n", data)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def orcpt_for(address: str) -> str:
    """An ORCPT value: "rfc822;" + xtext (RFC 3461 4.2), or for a non-ASCII address
    "utf-8;" + utf-8-addr-xtext (RFC 6533 3: QCHAR, else ``\\x{HEX}``)."""
    if address.isascii():
        return "rfc822;" + xtext_encode(address)
    # QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e
    out = [c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address]
    return "utf-8;" + "".join(out)


def downgrade_8bit(message: bytes) -> bytes | None:
    """Re-encode 8-bit leaf parts as quoted-printable (text/*) or base64 (anything else) for a
    server without 8BITMIME (RFC 6152 3, RFC 2045 6), recursing into multiparts and
    message/rfc822. None when the result would still hold 8-bit data (raw 8-bit headers or
    preamble): the caller bounces with 5.6.3. Uses the stdlib email package with compat32 and
    no refolding, so untouched headers come out as they went in; a DKIM signature over the
    body breaks, as with any conversion.
    """
    try:
        msg = message_from_bytes(message, policy=compat32)
        if _downgrade_part(msg) and "MIME-Version" not in msg:
            msg["MIME-Version"] = "1.0"  # the new Content-Transfer-Encoding needs it
        out = BytesIO()
        policy = compat32.clone(linesep="\r\n", max_line_length=0)
        BytesGenerator(out, mangle_from_=False, policy=policy).flatten(msg)
    except (ValueError, TypeError, LookupError, AttributeError, IndexError):
        return None  # a message the email package chokes on is bounced, not crashed on
    data = normalize_crlf(out.getvalue())
    return data if data.isascii() else None


def _set_cte(part: Message, value: str) -> None:
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = value


def _downgrade_part(part: Message) -> bool:
    """Convert ``part`` in place; True when something was re-encoded."""
    if part.is_multipart():  # multipart/*, and message/rfc822 in compat32
        payload = part.get_payload()
        changed = False
        for sub in payload if isinstance(payload, list) else ():
            if isinstance(sub, Message):
                changed = _downgrade_part(sub) or changed
        if part.get("Content-Transfer-Encoding", "").strip().lower() in ("8bit", "binary"):
            _set_cte(part, "7bit")  # RFC 2045 6.4: composites are labelled, not encoded
        return changed
    if part.get("Content-Transfer-Encoding", "").strip().lower() in ("base64", "quoted-printable"):
        return False
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes) or raw.isascii():
        return False
    if part.get_content_maintype() == "text":
        encoded = quopri.encodestring(raw.replace(b"\r\n", b"\n"))
        _set_cte(part, "quoted-printable")
    else:
        encoded = base64.encodebytes(raw)
        _set_cte(part, "base64")
    part.set_payload(encoded.decode("ascii"))
    return True
