"""Binary content that cannot be stored as text: re-encoded as base64 on APPEND.

Why: every stored message has CRLF line endings (``deliver.normalize``, the invariant
POP3 sizes and the MIME offsets rely on), and a non-binary FETCH must never carry NUL
(RFC 9051 4.3: a literal is CHAR8, %x01-ff). A part appended with a literal8 (RFC 3516)
may hold NUL and bare CR or LF that mean octets, not line ends. RFC 3516 4.4 lets the
server change the Content-Transfer-Encoding of appended data as long as the content
stays the same, and RFC 3501 6.3.11 asks servers that cannot keep 8-bit data to convert
it reversibly. So such a part gets ``Content-Transfer-Encoding: base64`` and its octets
base64-encoded: ``BODY[n]`` then shows base64 text, while ``BINARY[n]`` decodes it back to
exactly the octets the client sent, and ``BINARY.SIZE[n]`` is their number.

Which parts: leaf parts (not multipart, not an encapsulated message, whose own parts are
visited instead) that are declared ``binary`` and hold NUL or a bare CR or LF (or end the
message without a line end, which storing would add), and parts in an identity encoding
(7bit, 8bit, none) that hold NUL. Other parts, and the headers,
are kept octet for octet. A message whose top level is not MIME (neither MIME-Version nor
Content-Type) and needs re-encoding gets ``MIME-Version: 1.0`` too, or the new encoding
would mean nothing.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

from postroom.message.headers import find_fields
from postroom.message.model import Part
from postroom.message.scanner import scan

__all__ = ["encode_binary_parts"]

_CTE = (b"content-transfer-encoding",)
_MIME = (b"mime-version", b"content-type")
_IDENTITY = (None, "7bit", "8bit")
_BASE64_FIELD = b"Content-Transfer-Encoding: base64\r\n"
_LINE_END = re.compile(rb"\r\n|\n|\r")


def _leaves(root: Part) -> Iterator[Part]:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.multipart:
            stack.extend(reversed(node.children))
        elif node.message is not None:
            stack.append(node.message)
        else:
            yield node


def _needs_base64(body: bytes, encoding: str | None) -> bool:
    if encoding == "binary":
        crlf = body.count(b"\r\n")  # a bare CR or LF is an octet, not a line end
        return 0 in body or body.count(b"\n") != crlf or body.count(b"\r") != crlf
    # NUL as an int needle: a bytes needle costs CPython a TypeError built and dropped.
    return encoding in _IDENTITY and 0 in body


def _field_span(data: bytes, start: int, end: int, names: tuple[bytes, ...]) -> tuple[int, int] | None:
    """Offsets of the first field named in ``names``, its line end included."""
    m = next(find_fields(data, names, start, end), None)
    if m is None:
        return None
    stop = m.end()
    if data.startswith(b"\r\n", stop):
        stop += 2
    elif data.startswith(b"\n", stop):
        stop += 1
    return m.start(1), stop


def _base64(body: bytes) -> bytes:
    """76-character lines joined by CRLF, no final line end (the part's own line break,
    or the delimiter's, follows)."""
    return base64.encodebytes(body).rstrip(b"\n").replace(b"\n", b"\r\n")


def encode_binary_parts(data: bytes) -> bytes | None:
    """``data`` with its binary parts base64-encoded, or None when none needs it."""
    summary = scan(data)
    edits: list[tuple[int, int, bytes]] = []
    for part in _leaves(summary.root):
        body = data[part.body_start : part.body_end]
        # a binary part that ends the message unterminated would get the final CRLF
        # every stored message ends with: that changes it too
        unterminated = part.body_end == len(data) and not data.endswith(b"\r\n")
        if not (_needs_base64(body, part.encoding)
                or (unterminated and body and part.encoding == "binary")):
            continue
        span = _field_span(data, part.header_start, part.header_end, _CTE)
        if span is None:
            edits.append((part.header_end, part.header_end, _BASE64_FIELD))
        else:
            edits.append((span[0], span[1], _BASE64_FIELD))
        if part.encoding != "binary":
            # text in a line-based encoding: its line ends are line ends, stored as CRLF
            body = _LINE_END.sub(b"\r\n", body)
        edits.append((part.body_start, part.body_end, _base64(body)))
    if not edits:
        return None
    root = summary.root
    if _field_span(data, root.header_start, root.header_end, _MIME) is None:
        edits.append((root.header_end, root.header_end, b"MIME-Version: 1.0\r\n"))
    edits.sort(key=lambda e: (e[0], e[1]))
    out: list[bytes] = []
    pos = 0
    for start, stop, text in edits:
        out.append(data[pos:start])
        out.append(text)
        pos = stop
    out.append(data[pos:])
    return b"".join(out)
