"""RFC 5322 3.4 address lists → IMAP ENVELOPE address structures (RFC 9051 7.5.2).

An address is ``(name, adl, mailbox, host)``; all values are raw octets (IMAP sends them
undecoded, RFC 2047 words included). Group syntax becomes a group start
``(NIL NIL "groupname" NIL)`` followed by the members and a group end
``(NIL NIL NIL NIL)``, as RFC 3501/9051 require.

The parser is built for what mail really contains, not for the grammar alone:

* quoted display names holding commas, comments (``user@host (Real Name)`` uses the
  comment as the name, like Dovecot and Cyrus), routes ``<@a,@b:user@host>``;
* missing angle brackets (``John Doe john@example.com``), a missing ``>``, an unterminated
  group (closed for the client), stray separators;
* UTF-8 local parts and domains (RFC 6532) and other 8-bit octets, kept as they are.

A missing domain is reported as host ``""`` (:data:`MISSING_HOST`), *not* NIL: in an
ENVELOPE a NIL host marks a group start/end (RFC 9051 7.5.2), so ``(NIL NIL "user" NIL)``
would make clients open a group called "user". A phrase without any address gets
mailbox ``""`` (:data:`MISSING_MAILBOX`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MAX_ADDRESSES", "MISSING_HOST", "MISSING_MAILBOX", "Address", "parse_address_list"]

MISSING_HOST = b""
MISSING_MAILBOX = b""
# Addresses kept per field; the rest of a pathological recipient list is dropped.
MAX_ADDRESSES = 10_000


class Address(NamedTuple):
    """One ENVELOPE address: ``(name adl mailbox host)``; None is NIL."""

    name: bytes | None
    adl: bytes | None
    mailbox: bytes | None
    host: bytes | None

    @property
    def is_group_start(self) -> bool:
        return self.host is None and self.mailbox is not None

    @property
    def is_group_end(self) -> bool:
        return self.host is None and self.mailbox is None

    @property
    def is_group_marker(self) -> bool:
        return self.host is None


GROUP_END = Address(None, None, None, None)

# Token kinds
_WORD = 0  # atom (incl. 8-bit and stray characters)
_QUOTED = 1  # quoted-string, unquoted content
_LITERAL = 2  # domain-literal, raw including brackets
_SPECIAL = 3  # one of < > @ , ; : .
_COMMENT = 4  # comment content (outermost parentheses removed)


class _Tok(NamedTuple):
    kind: int
    value: bytes
    space_before: bool  # whitespace or a comment separated it from the previous token


_LEX = re.compile(
    rb"""
    (?P<ws>[ \t\r\n]+)
    |(?P<q>"(?:[^"\\]|\\.)*(?:"|\Z))
    |(?P<d>\[(?:[^\[\]\\]|\\.)*(?:\]|\Z))
    |(?P<c>\()
    |(?P<s>[<>@,;:.])
    |(?P<a>[^ \t\r\n"(<>@,;:.\[]+|\[)
    """,
    re.VERBOSE | re.DOTALL,
)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)
_COMMENT_STOP = re.compile(rb"[()\\]")


def _comment(v: bytes, i: int) -> tuple[bytes, int]:
    """Content of the nested comment at ``v[i] == '('`` and the index after it."""
    depth = 0
    start = i + 1
    n = len(v)
    while i < n:
        m = _COMMENT_STOP.search(v, i)
        if m is None:
            break
        c = v[m.start()]
        i = m.end()
        if c == 0x5C:
            i += 1
        elif c == 0x28:
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return _QUOTED_PAIR.sub(rb"\1", v[start : i - 1]), i
    return _QUOTED_PAIR.sub(rb"\1", v[start:]), n


def _tokenize(v: bytes) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    n = len(v)
    space = False
    while i < n:
        m = _LEX.match(v, i)
        if m is None:  # cannot happen: the alternatives cover every octet
            break
        kind = m.lastgroup
        if kind == "ws":
            space = True
            i = m.end()
            continue
        if kind == "c":
            content, i = _comment(v, i)
            toks.append(_Tok(_COMMENT, content.strip(b" \t\r\n"), space))
            space = True
            continue
        text = m.group()
        i = m.end()
        if kind == "q":
            body = text[1:-1] if len(text) > 1 and text.endswith(b'"') else text[1:]
            toks.append(_Tok(_QUOTED, _QUOTED_PAIR.sub(rb"\1", body), space))
        elif kind == "d":
            toks.append(_Tok(_LITERAL, text, space))
        elif kind == "s":
            toks.append(_Tok(_SPECIAL, text, space))
        else:
            toks.append(_Tok(_WORD, text, space))
        space = False
    return toks


def _phrase(toks: list[_Tok]) -> bytes | None:
    """Display name: words joined by one space where the source had whitespace."""
    out = bytearray()
    for t in toks:
        if t.kind == _COMMENT:
            continue
        if t.kind == _SPECIAL and t.value in b"<>":
            continue
        if out and t.space_before:
            out += b" "
        out += t.value
    text = bytes(out).strip(b" \t")
    return text or None


def _joined(toks: list[_Tok]) -> bytes:
    """Local part or domain: tokens concatenated (obs-local-part "a . b" → "a.b")."""
    return b"".join(t.value for t in toks if t.kind != _COMMENT)


def _is_dot(t: _Tok) -> bool:
    return t.kind == _SPECIAL and t.value == b"."


def _is_addr_piece(t: _Tok) -> bool:
    return t.kind in (_WORD, _QUOTED, _LITERAL) or _is_dot(t)


def _glued(a: _Tok, b: _Tok) -> bool:
    """*b* follows *a* without whitespace, or a dot joins them (RFC 5322 obs-local-part)."""
    return not b.space_before or _is_dot(a) or _is_dot(b)


def _split_addr_spec(toks: list[_Tok]) -> tuple[list[_Tok], bytes | None, bytes | None]:
    """Find ``local@domain`` in *toks*: (leading tokens not part of it, mailbox, host).

    The local part is the run of tokens glued to the last ``@``, so
    ``John Doe john@example.com`` leaves the phrase "John Doe" as leading tokens.
    Whitespace directly around the ``@`` is allowed (RFC 5322 4.4 obs-addr-spec).
    """
    at = -1
    for k in range(len(toks) - 1, -1, -1):
        if toks[k].kind == _SPECIAL and toks[k].value == b"@":
            at = k
            break
    if at < 0:
        return toks, None, None
    start = at
    if start > 0 and _is_addr_piece(toks[start - 1]):
        start -= 1
        while (start > 0 and _is_addr_piece(toks[start - 1])
               and _glued(toks[start - 1], toks[start])):
            start -= 1
    end = at + 1
    if end < len(toks) and _is_addr_piece(toks[end]):
        end += 1
        while end < len(toks) and _is_addr_piece(toks[end]) and _glued(toks[end - 1], toks[end]):
            end += 1
    return toks[:start], _joined(toks[start:at]), _joined(toks[at + 1 : end])


def _mailbox(toks: list[_Tok]) -> Address | None:
    """One mailbox (RFC 5322 3.4 ``name-addr / addr-spec``) from its tokens."""
    if not any(t.kind != _COMMENT for t in toks):
        return None  # empty list element ("a@b, , c@d") or only a comment
    lt = next(
        (k for k, t in enumerate(toks) if t.kind == _SPECIAL and t.value == b"<"), -1
    )
    if lt >= 0:
        # name-addr = [display-name] angle-addr
        gt = next(
            (k for k in range(lt + 1, len(toks))
             if toks[k].kind == _SPECIAL and toks[k].value == b">"),
            len(toks),
        )
        name = _phrase(toks[:lt])
        inner = [t for t in toks[lt + 1 : gt] if t.kind != _COMMENT]
        adl: bytes | None = None
        if inner and inner[0].kind == _SPECIAL and inner[0].value == b"@":
            # RFC 5322 4.4 obs-route = obs-domain-list ":"
            colon = next(
                (k for k, t in enumerate(inner) if t.kind == _SPECIAL and t.value == b":"),
                -1,
            )
            if colon >= 0:
                adl = _joined(inner[:colon]) or None
                inner = inner[colon + 1 :]
        if not inner:
            return Address(name, adl, MISSING_MAILBOX, MISSING_HOST)  # "<>"
        _lead, mailbox, host = _split_addr_spec(inner)
        if mailbox is None:
            return Address(name, adl, _joined(inner), MISSING_HOST)
        return Address(name, adl, mailbox, host or MISSING_HOST)

    # addr-spec, possibly with a comment holding the name, or a bare phrase
    lead, mailbox, host = _split_addr_spec(toks)
    comments = [t.value for t in toks if t.kind == _COMMENT and t.value]
    if mailbox is None:
        words = [t for t in toks if t.kind != _COMMENT]
        if len(words) == 1:
            # a lone "user": a mailbox without domain
            return Address(comments[-1] if comments else None, None, words[0].value,
                           MISSING_HOST)
        return Address(_phrase(toks), None, MISSING_MAILBOX, MISSING_HOST)
    name = _phrase(lead)
    if name is None and comments:
        name = comments[-1]
    return Address(name, None, mailbox, host or MISSING_HOST)


# Fast path for the shapes nearly every header has ("a@b", "Name <a@b>", '"N, M" <a@b>'),
# lists of them included. It must give exactly what the full parser gives (a test checks
# it); anything unusual (comments, groups, routes, escapes, dotted names) falls through.
_ATOM = rb'[^\x00-\x20\x7f()<>\[\]:;@\\,."]+'
_DOT_ATOM = _ATOM + rb"(?:\." + _ATOM + rb")*"
# The leading blanks are possessive (``*+``): they can never be part of a name, and
# letting the engine share them out between two ``[ \t]*`` took O(n²) (issue 9: seconds
# for a To: field of 30,000 blanks).
_FAST = re.compile(
    rb'[ \t]*+(?:(?:"([^"\\\r\n]*)"|(' + _ATOM + rb"(?:[ \t]+" + _ATOM + rb")*))?[ \t]*"
    rb"<(" + _DOT_ATOM + rb")@(" + _DOT_ATOM + rb")>|(" + _DOT_ATOM + rb")@("
    + _DOT_ATOM + rb"))[ \t]*\Z"
)
_BLANKS = re.compile(rb"[ \t]+")
_SLOW_MARKERS = re.compile(rb'["(:;\\\[]')


def _fast_one(piece: bytes) -> Address | None:
    m = _FAST.match(piece)
    if m is None:
        return None
    quoted, words, local, domain, bare_local, bare_domain = m.groups()
    if bare_local is not None:
        return Address(None, None, bare_local, bare_domain)
    if quoted is not None:
        name = quoted.strip(b" \t") or None
    elif words is not None:
        name = _BLANKS.sub(b" ", words)
    else:
        name = None
    return Address(name, None, local, domain)


def _fast_path(value: bytes) -> tuple[Address, ...] | None:
    """The parsed list when *value* only holds plain addresses, else None."""
    if _SLOW_MARKERS.search(value) is None:
        out = []
        for piece in value.split(b",", MAX_ADDRESSES):
            if not piece.strip(b" \t"):
                continue
            addr = _fast_one(piece)
            if addr is None:
                return None
            out.append(addr)
            if len(out) == MAX_ADDRESSES:
                break  # the full parser stops at the same address
        return tuple(out) if out else None
    addr = _fast_one(value)
    return (addr,) if addr is not None else None


def parse_address_list(value: bytes) -> tuple[Address, ...] | None:
    """Parse an unfolded address-list field value; None (NIL) when it holds no address."""
    fast = _fast_path(value)
    if fast is not None:
        return fast
    toks = _tokenize(value)
    out: list[Address] = []
    cur: list[_Tok] = []
    in_angle = False
    in_group = False

    def flush() -> None:
        addr = _mailbox(cur)
        if addr is not None:
            out.append(addr)
        cur.clear()

    for t in toks:
        if len(out) >= MAX_ADDRESSES:
            break
        if t.kind == _SPECIAL:
            v = t.value
            if v == b"<":
                in_angle = True
            elif v == b">":
                in_angle = False
            elif not in_angle:
                if v == b",":
                    flush()
                    continue
                if v == b":" and not in_group and _is_group_name(cur):
                    # RFC 5322 3.4 group = display-name ":" [group-list] ";"
                    out.append(Address(None, None, _phrase(cur) or b"", None))
                    cur.clear()
                    in_group = True
                    continue
                if v == b";" and in_group:
                    flush()
                    out.append(GROUP_END)
                    in_group = False
                    continue
        cur.append(t)
    flush()
    if in_group:
        out.append(GROUP_END)  # unterminated group: close it so clients stay in sync
    if len(out) > MAX_ADDRESSES:
        del out[MAX_ADDRESSES:]
        if any(a.is_group_start for a in out) and not out[-1].is_group_end:
            out[-1] = GROUP_END
    return tuple(out) or None


def _is_group_name(toks: list[_Tok]) -> bool:
    """A group's display name: at least one word and no address characters."""
    has_word = False
    for t in toks:
        if t.kind in (_WORD, _QUOTED):
            has_word = True
        elif t.kind == _SPECIAL and t.value != b"." or t.kind == _LITERAL:
            return False
    return has_word
