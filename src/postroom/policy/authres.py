"""Authentication-Results (RFC 8601): building ours, removing forged ones.

One field per message, added by the MX that checked it, with ``spf``, ``dkim`` (one entry
per signature checked), ``dmarc`` and ``arc``. A field that claims to come from us (its
authserv-id is our host name) but arrived from outside is a forgery (RFC 8601 5): it is
removed before ours is added, so downstream filters and mail clients never trust it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from postroom.deliver import header_end, header_fields

_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+$")


@dataclass(frozen=True, slots=True)
class ResInfo:
    """One result: ``method=result (comment) ptype.property=value ...``."""

    method: str
    result: str
    props: tuple[tuple[str, str], ...] = ()
    comment: str = ""
    reason: str = ""

    def render(self) -> str:
        out = f"{self.method}={self.result}"
        if self.comment:
            out += f" ({_clean_comment(self.comment)})"
        if self.reason:
            out += f" reason={_value(self.reason)}"
        for name, value in self.props:
            if value:
                out += f" {name}={_value(value)}"
        return out


def _clean_comment(text: str) -> str:
    text = re.sub(r"[()\\\r\n]", " ", text)
    return text[:200].strip()


def _value(value: str) -> str:
    """RFC 8601 2.2: a token/addr-spec as is, anything else as a quoted-string."""
    if _ATOM.match(value) and len(value) <= 255:
        return value
    cleaned = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return f'"{cleaned[:255]}"'


def header(authserv_id: str, results: Sequence[ResInfo]) -> bytes:
    """The whole field with CRLF, one result per folded line."""
    if not results:
        return f"Authentication-Results: {authserv_id}; none\r\n".encode()
    body = ";\r\n\t".join(r.render() for r in results)
    return f"Authentication-Results: {authserv_id};\r\n\t{body}\r\n".encode("utf-8", "replace")


def resinfo_text(results: Sequence[ResInfo]) -> str:
    """The results without the authserv-id (for an ARC-Authentication-Results)."""
    return ";\r\n\t".join(r.render() for r in results) if results else "none"


def _skip_cfws(value: bytes, pos: int) -> int:
    """The position after white space and comments at ``pos``. RFC 5322 3.2.2: comments
    nest and may hold quoted-pairs; an unclosed one runs to the end."""
    depth = 0
    while pos < len(value):
        c = value[pos : pos + 1]
        if c == b"\\" and depth:
            pos += 2
            continue
        if c == b"(":
            depth += 1
        elif c == b")" and depth:
            depth -= 1
        elif not depth and c not in (b" ", b"\t", b"\r", b"\n"):
            break
        pos += 1
    return pos


def authserv_id_of(raw_field: bytes) -> str:
    """The authserv-id of an Authentication-Results field, lower-case, without a trailing
    dot. RFC 8601 2.2: ``authserv-id = value`` (a token or a quoted-string) after optional
    CFWS; a reader that follows RFC 5322 sees through nested comments and quotes, so a
    forgery written so must be recognised here too."""
    value = raw_field.partition(b":")[2]
    pos = _skip_cfws(value, 0)
    if value[pos : pos + 1] == b'"':
        out = bytearray()
        pos += 1
        while pos < len(value) and value[pos : pos + 1] != b'"':
            if value[pos : pos + 1] == b"\\":
                pos += 1
            if value[pos : pos + 1] not in (b"\r", b"\n"):  # folding inside the quotes
                out += value[pos : pos + 1]
            pos += 1
        token = bytes(out).strip()
    else:
        end = pos
        while end < len(value) and value[end : end + 1] not in b' \t\r\n;()"':
            end += 1
        token = value[pos:end]
    return token.decode("ascii", "replace").lower().rstrip(".")


_AR_NAME = re.compile(rb"authentication-results", re.IGNORECASE)


def drop_forged(data: bytes, authserv_id: str) -> tuple[bytes, int]:
    """``data`` without the Authentication-Results fields claiming ``authserv_id``, and how
    many were removed. Works on the header block only; the body is untouched."""
    ours = authserv_id.lower().rstrip(".")
    # Most mail has no such field: one C search of the header block instead of walking
    # its fields (a superset of the names the walk below matches).
    if _AR_NAME.search(data, 0, header_end(data)) is None:
        return data, 0
    fields = header_fields(data)
    drop = [
        (s, e) for n, s, e in fields if n == b"authentication-results" and authserv_id_of(data[s:e]) == ours
    ]
    if not drop:
        return data, 0
    keep = [data[s:e] for n, s, e in fields if (s, e) not in drop]
    return b"".join(keep) + data[header_end(data) :], len(drop)
