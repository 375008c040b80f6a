"""Encoding of IMAP string values on the wire (RFC 9051 section 4.3).

Shared by the response serializer and by ENVELOPE/BODYSTRUCTURE formatting, so that every
string the server sends is quoted the same way: a quoted string when it is short and safe,
otherwise a literal. ``NIL`` for a missing value.
"""

from __future__ import annotations

import re

# Characters that may appear inside a quoted string without a backslash; CR, LF and NUL can
# never appear in one, and 8-bit bytes only after UTF8=ACCEPT / IMAP4rev2 (we send them as
# literals, which is always allowed).
_QUOTED_MAX = 1024


_QUOTABLE = re.compile(rb"[\x20-\x7e]{0,%d}" % _QUOTED_MAX)
# The same without '"' and '\\': quoted as it is, no escaping pass (most values).
_PLAIN = re.compile(rb'[\x20\x21\x23-\x5b\x5d-\x7e]{0,%d}' % _QUOTED_MAX).fullmatch


def _quotable(value: bytes) -> bool:
    return _QUOTABLE.fullmatch(value) is not None


def string(value: bytes | str) -> bytes:
    """``string`` production: quoted when possible, literal otherwise."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if _PLAIN(value) is not None:
        return b'"' + value + b'"'
    if _quotable(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | str | None) -> bytes:
    """``nstring``: NIL or a string."""
    if value is None:
        return b"NIL"
    return string(value)


def literal(value: bytes) -> bytes:
    """Always a literal (message bodies: may hold anything)."""
    return b"{%d}\r\n" % len(value) + value


_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')


def astring(value: bytes | str) -> bytes:
    """``astring``: a bare atom when it is one (mailbox names look nicer), else a string."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if value and all(0x20 < b < 0x7F and b not in _ATOM_SPECIALS for b in value):
        if value.upper() != b"NIL":
            return value
    return string(value)
