"""Header fields: finding them in a header block, unfolding, and parsing MIME field values.

Theory of operation
-------------------
A header block is ``data[header_start:header_end]`` (every field line including its line
ending, without the blank line). Fields are located with one regular expression per
purpose, anchored at line starts, so the Python-level loop runs once per *interesting*
field rather than once per byte or per line. Continuation lines (RFC 5322 2.2.3: a line
starting with SP or HTAB) belong to the field above them.

Values are returned raw (bytes): IMAP wants header values undecoded, and the summary must
round-trip exactly. Decoding to text lives in :mod:`postroom.message.encoded`.

MIME structured values (Content-Type, Content-Disposition, parameters) are parsed the way
real mailers write them rather than strictly: unquoted values with spaces, ``=`` inside
unquoted boundaries (Outlook), trailing ``;``, comments, RFC 2231 continuations in any
order. Parameter names are lowercased (RFC 2045 5.1: case-insensitive); values keep their
octets.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Iterator

from postroom.message.encoded import decode_charset, decode_raw, decode_words

__all__ = [
    "MAX_PARAMS",
    "Params",
    "decode_param",
    "find_fields",
    "parse_content_language",
    "parse_content_type",
    "parse_disposition",
    "parse_token",
    "unfold",
]

# Limit on parameters kept per field: a hostile header could hold millions.
MAX_PARAMS = 64

Params = tuple[tuple[str, bytes], ...]

# RFC 5322 2.2.3: "Unfolding is accomplished by simply removing any CRLF that is
# immediately followed by WSP." Bare LF is accepted too (APPEND may bring LF messages).
_LINE_BREAK = re.compile(rb"\r?\n")
_WSP = b" \t\r\n"


def unfold(value: bytes) -> bytes:
    """Unfold a raw field value and trim the whitespace around it."""
    if 10 in value:  # LF (an int needle: a bytes one costs a TypeError built and dropped)
        value = _LINE_BREAK.sub(b"", value)
    return value.strip(_WSP)


@functools.lru_cache(maxsize=256)
def _field_patterns(names: tuple[bytes, ...]) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    alternatives = b"|".join(re.escape(n) for n in names)
    tail = rb")[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)"
    # The second pattern starts with a literal "\n", which lets the regex engine skip to
    # line starts instead of trying the alternation at every position ((?m)^ cannot).
    return (
        re.compile(rb"(?i)(" + alternatives + tail),
        re.compile(rb"(?i)\n(" + alternatives + tail),
    )


# Above this many names, one alternation per line start costs more than matching every
# field and looking its name up: with thousands of client-given names (FETCH
# HEADER.FIELDS, SEARCH HEADER) the alternation took seconds over a big header, besides
# a second to compile. RFC 5322 2.2: a field name is printable ASCII without ":".
ALTERNATION_MAX = 32
_ANY_TAIL = rb")[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)"
_ANY_FIELD = (re.compile(rb"([!-9;-~]+" + _ANY_TAIL), re.compile(rb"\n([!-9;-~]+" + _ANY_TAIL))


def find_fields(
    data: bytes, names: tuple[bytes, ...], start: int, end: int
) -> Iterator[re.Match[bytes]]:
    """Every field named one of *names* in the header block ``data[start:end]``.

    Group 1 of each match is the field name as written, group 2 the raw value (after the
    colon, continuation lines included, final line ending excluded). Names are
    case-insensitive (RFC 5322 1.2.2); whitespace before the colon is tolerated
    (RFC 5322 4.5.3 obs-optional). *start* must be the start of a line.
    """
    if len(names) > ALTERNATION_MAX:
        wanted = frozenset(n.lower() for n in names)
        first, rest = _ANY_FIELD
    else:
        first, rest = _field_patterns(names)
    m = first.match(data, start, end)
    if m is not None and (len(names) <= ALTERNATION_MAX or m.group(1).lower() in wanted):
        yield m
    for m in rest.finditer(data, start, end):
        if len(names) <= ALTERNATION_MAX or m.group(1).lower() in wanted:
            yield m


# --- tokens (RFC 2045 5.1) -------------------------------------------------------------

# token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>; 8-bit octets are
# accepted as token characters (they occur, and refusing them helps nobody).
_TOKEN = re.compile(rb'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
_SPACES = re.compile(rb"[ \t\r\n]*")
_COMMENT_STOP = re.compile(rb"[()\\]")


def _skip_comment(v: bytes, i: int) -> int:
    """Index after the (possibly nested) comment starting at ``v[i] == '('``."""
    depth = 0
    n = len(v)
    while i < n:
        m = _COMMENT_STOP.search(v, i)
        if m is None:
            return n  # unterminated comment runs to the end
        c = v[m.start()]
        i = m.end()
        if c == 0x5C:  # quoted-pair: skip the escaped octet
            i += 1
        elif c == 0x28:
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i
    return n


def _skip_cfws(v: bytes, i: int) -> int:
    """Skip whitespace and comments (RFC 5322 3.2.2 CFWS)."""
    n = len(v)
    while True:
        i = _SPACES.match(v, i).end()  # type: ignore[union-attr]  # always matches
        if i < n and v[i] == 0x28:
            i = _skip_comment(v, i)
        else:
            return i


def parse_token(value: bytes) -> bytes | None:
    """A field that must hold exactly one token (Content-Transfer-Encoding), or None.

    Comments around the token are allowed; anything else makes the field invalid, and
    RFC 2045 6.1 then implies 7bit.
    """
    i = _skip_cfws(value, 0)
    m = _TOKEN.match(value, i)
    if m is None:
        return None
    if _skip_cfws(value, m.end()) != len(value):
        return None
    return m.group()


_QUOTED_RUN = re.compile(rb'[^"\\]*')


def _quoted(v: bytes, i: int) -> tuple[bytes, int]:
    """Unquote the quoted-string starting at ``v[i] == '"'``; (content, index after)."""
    out = bytearray()
    n = len(v)
    i += 1
    while i < n:
        j = _QUOTED_RUN.match(v, i).end()  # type: ignore[union-attr]  # always matches
        out += v[i:j]
        if j >= n:
            return bytes(out), n  # unterminated: take the rest
        if v[j] == 0x22:
            return bytes(out), j + 1
        # RFC 5322 3.2.1 quoted-pair
        if j + 1 < n:
            out.append(v[j + 1])
        i = j + 2
    return bytes(out), n


# A blank followed by "(": where a trailing comment starts (see _raw_params). Searched
# for as two fixed characters: ``[ \t\r\n]+\(.*\Z`` retried its blank run from every
# position, O(n²) (issue 9: 20 s for a 60,000-blank parameter).
_COMMENT_START = re.compile(rb"[ \t\r\n]\(")
_NEXT_SEMI_OR_QUOTE = re.compile(rb'[;"]')


def _find_semicolon(v: bytes, i: int) -> int:
    """Index of the next ';' outside quoted strings, or len(v)."""
    n = len(v)
    while i < n:
        m = _NEXT_SEMI_OR_QUOTE.search(v, i)
        if m is None:
            return n
        if v[m.start()] == 0x3B:
            return m.start()
        i = _quoted(v, m.start())[1]
    return n


def _raw_params(v: bytes, i: int) -> list[tuple[str, bytes]]:
    """``*(";" parameter)`` from index *i*, leniently (RFC 2045 5.1)."""
    out: list[tuple[str, bytes]] = []
    n = len(v)
    while i < n and len(out) < MAX_PARAMS * 4:
        i = _skip_cfws(v, i)
        if i >= n:
            break
        if v[i] == 0x3B:  # ';' (also tolerates empty parameters and a trailing ';')
            i += 1
            continue
        m = _TOKEN.match(v, i)
        if m is None:
            i = _find_semicolon(v, i + 1)
            continue
        name = m.group().decode("latin-1").lower()
        i = _skip_cfws(v, m.end())
        if i >= n or v[i] != 0x3D:  # '=' missing: not a parameter
            i = _find_semicolon(v, i)
            continue
        i = _skip_cfws(v, i + 1)
        if i < n and v[i] == 0x22:
            value, i = _quoted(v, i)
            i = _find_semicolon(v, i)
        else:
            end = _find_semicolon(v, i)
            value = v[i:end]
            if 0x28 in value:  # "(" as an int needle (cheaper than b"(", see unfold)
                # RFC 2045's own example: "charset=us-ascii (Plain text)". A '(' glued
                # to the value ("report(1).pdf") is kept: unquoted filenames do that.
                cut = _COMMENT_START.search(value)
                if cut is not None:
                    value = value[: cut.start()]
            value = value.strip(_WSP)
            i = end
        out.append((name, value))
    return out


def _merge_rfc2231(raw: list[tuple[str, bytes]]) -> Params:
    """Merge RFC 2231 3 continuations (``name*0``, ``name*1*``, ...) into one parameter.

    The result is what IMAP clients expect in BODYSTRUCTURE (the Dovecot convention):
    ``name*`` with value ``charset'language'percent-encoded`` when any segment was
    extended (non-extended segments are %-escaped so the value stays decodable), plain
    ``name`` with the concatenation otherwise. If the indexes are not contiguous from 0
    the segments are kept unmerged. Parameters keep the order of their first appearance.
    """
    groups: dict[str, list[tuple[int, bool, bytes]]] = {}
    # Output order: an int is the index of a plain parameter in *raw*, a str the base
    # name of an RFC 2231 group (placed where its first segment appeared).
    order: list[int | str] = []
    for idx, (name, value) in enumerate(raw):
        star = name.find("*")
        if star < 0:
            order.append(idx)
            continue
        base, rest = name[:star], name[star + 1 :]
        extended = rest.endswith("*") or rest == ""
        digits = rest.removesuffix("*")
        if digits and not (digits.isdigit() and len(digits) < 6):
            order.append(idx)  # "name*x": not RFC 2231, keep it as it is
            continue
        if base not in groups:
            groups[base] = []
            order.append(base)
        groups[base].append((int(digits) if digits else 0, extended, value))

    out: list[tuple[str, bytes]] = []
    for key in order:
        if isinstance(key, int):
            out.append(raw[key])
            continue
        segs = sorted(groups[key], key=lambda s: s[0])
        if [s[0] for s in segs] != list(range(len(segs))):
            for number, extended, value in segs:
                out.append((f"{key}*{number}{'*' if extended else ''}", value))
            continue
        any_extended = any(s[1] for s in segs)
        if not any_extended:
            out.append((key, b"".join(s[2] for s in segs)))
            continue
        buf = bytearray()
        if not segs[0][1]:
            buf += b"''"  # first segment carries no charset/language: declare none
        for _number, extended, value in segs:
            buf += value if extended else value.replace(b"%", b"%25")
        out.append((key + "*", bytes(buf)))
    return tuple(out[:MAX_PARAMS])


def parse_content_type(value: bytes) -> tuple[str, str, Params] | None:
    """RFC 2045 5.1 ``type "/" subtype *(";" parameter)``; None when syntactically invalid.

    RFC 2045 5.2: an invalid Content-Type means the default type applies, so the caller
    treats None like an absent field.
    """
    i = _skip_cfws(value, 0)
    m = _TOKEN.match(value, i)
    if m is None:
        return None
    ctype = m.group()
    i = _skip_cfws(value, m.end())
    if i >= len(value) or value[i] != 0x2F:  # '/'
        return None
    i = _skip_cfws(value, i + 1)
    m = _TOKEN.match(value, i)
    if m is None:
        return None
    subtype = m.group()
    params = _merge_rfc2231(_raw_params(value, m.end()))
    return (
        ctype.decode("latin-1").lower(),
        subtype.decode("latin-1").lower(),
        params,
    )


def parse_disposition(value: bytes) -> tuple[str, Params] | None:
    """RFC 2183 ``disposition-type *(";" disposition-parm)``; None when invalid."""
    i = _skip_cfws(value, 0)
    m = _TOKEN.match(value, i)
    if m is None:
        return None
    params = _merge_rfc2231(_raw_params(value, m.end()))
    return m.group().decode("latin-1").lower(), params


# RFC 5322 3.2.3 atext (plus 8-bit), the characters of a language tag list item.
_ATEXT = re.compile(rb"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff]+")


def parse_content_language(value: bytes) -> tuple[bytes, ...] | None:
    """RFC 3282 ``Content-Language: 1#Language-tag``; None when no tag parses."""
    tags: list[bytes] = []
    i = 0
    n = len(value)
    while i < n and len(tags) < MAX_PARAMS:
        i = _skip_cfws(value, i)
        m = _ATEXT.match(value, i)
        if m is None:
            break
        tags.append(m.group())
        i = _skip_cfws(value, m.end())
        if i >= n or value[i] != 0x2C:  # ','
            break
        i += 1
    return tuple(tags) or None


def decode_param(params: Params, name: str) -> str | None:
    """Decoded text of parameter *name* (lowercase), or None when absent.

    Handles what clients actually send: RFC 2231 ``name*`` (charset'lang'%XX, after
    continuation merging), RFC 2047 encoded words inside quoted values (Outlook, Gmail),
    and raw 8-bit values (UTF-8, else Latin-1). The extended form wins when both exist,
    because RFC 2231-aware senders put the faithful value there.
    """
    extended_name = name + "*"
    plain: bytes | None = None
    for key, value in params:
        if key == extended_name:
            return _decode_2231(value)
        if key == name and plain is None:
            plain = value
    if plain is None:
        return None
    return decode_words(plain)


def _decode_2231(value: bytes) -> str:
    """RFC 2231 4: ``charset'language'percent-encoded-octets``."""
    parts = value.split(b"'", 2)
    if len(parts) != 3:
        return decode_raw(urllib.parse.unquote_to_bytes(value))
    charset = parts[0].decode("latin-1")
    octets = urllib.parse.unquote_to_bytes(parts[2])
    return decode_charset(octets, charset or None)
