"""Turning stored bytes into text: RFC 2047 encoded words, charsets, transfer encodings.

Everything here is *lenient by design*: the input is whatever a sender put on the wire, and
the output feeds SEARCH/SORT, where a best-effort answer beats an error. Nothing in this
module raises on bad input; broken base64 is repaired, unknown charsets fall back to UTF-8
and then Latin-1 (which maps every byte), and undecodable bytes become U+FFFD.

The IMAP wire formats (ENVELOPE, BODYSTRUCTURE) never go through this module: IMAP sends
header values undecoded.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import re

__all__ = [
    "IDENTITY_ENCODINGS",
    "decode_charset",
    "decode_quoted_printable",
    "decode_raw",
    "decode_transfer",
    "decode_words",
]

# RFC 2045 6.1: these encodings leave the octets as they are.
IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})

# Charset labels that real mail uses but Python does not know, or knows as a narrower
# codec than the one senders actually meant (a superset decodes strictly more mail).
_CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "windows-874": "cp874",
    "tis-620": "cp874",
    "x-mac-roman": "mac-roman",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "iso-8859-1": "cp1252",  # RFC-labelled Latin-1 mail is nearly always Windows-1252
    "utf8": "utf-8",
    # Labels that promise nothing (or ASCII, which mislabelled 8-bit mail breaks): decode
    # as unlabelled bytes.
    "us-ascii": "",
    "ascii": "",
    "ansi_x3.4-1968": "",
    "x-unknown": "",
    "unknown-8bit": "",
    "default": "",
}


@functools.lru_cache(maxsize=256)
def _codec(charset: str) -> str | None:
    """Python codec name for a MIME charset label, or None for "treat as unlabelled".

    Only *text* encodings are accepted: Python also registers bytes-to-bytes codecs
    (zlib, base64, hex, ...) under names a hostile sender could put in a charset parameter.
    """
    label = charset.strip().strip("\"'").lower()
    label = _CHARSET_ALIASES.get(label, label)
    if not label:
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_raw(raw: bytes) -> str:
    """Decode unlabelled 8-bit bytes (raw header text): UTF-8 (RFC 6532), else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def decode_charset(raw: bytes, charset: str | None) -> str:
    """Decode *raw* as *charset*, never raising.

    Unknown or missing charsets are treated as unlabelled bytes (UTF-8, else Latin-1).
    """
    name = _codec(charset) if charset else None
    if name is None:
        return decode_raw(raw)
    try:
        return raw.decode(name, "replace")
    except Exception:  # noqa: BLE001 - some codecs (idna, ...) reject "replace" or misbehave
        return decode_raw(raw)


# RFC 2047 2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
# (charset may carry an RFC 2231 5 language suffix: "utf-8*en").
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_WSP_ONLY = re.compile(rb"[ \t\r\n]*\Z")
_B64_DELETE = bytes(
    b for b in range(256)
    if not (0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A or 0x30 <= b <= 0x39 or b in b"+/")
)


def _b64decode(data: bytes) -> bytes:
    """Base64 that survives what mailers produce: junk characters, missing padding.

    RFC 2045 6.8: "Any characters outside of the base64 alphabet are to be ignored".
    """
    clean = data.translate(None, _B64_DELETE)
    rem = len(clean) % 4
    if rem == 1:
        clean = clean[:-1]  # a lone sextet carries no complete octet
    elif rem:
        clean += b"=" * (4 - rem)
    try:
        return binascii.a2b_base64(clean)
    except (binascii.Error, ValueError):
        return b""


def decode_words(raw: bytes) -> str:
    """Decode a header value (already unfolded) containing RFC 2047 encoded words.

    Adjacent encoded words are joined without the whitespace between them (RFC 2047 6.2),
    and consecutive words in the same charset are decoded *together*, because real mailers
    split multi-byte characters across words. Text outside encoded words may be raw 8-bit.
    """
    if raw.find(b"=?") < 0:  # (a bytes `in` builds and drops a TypeError first)
        return decode_raw(raw)
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    pos = 0
    prev_word = False
    for m in _ENCODED_WORD.finditer(raw):
        gap = raw[pos : m.start()]
        if gap and not (prev_word and _WSP_ONLY.match(gap)):
            if pending:
                out.append(decode_charset(bytes(pending), pending_charset))
                pending.clear()
            out.append(decode_raw(gap))
        charset = m.group(1).split(b"*", 1)[0].decode("latin-1")
        text = m.group(3)
        if m.group(2) in b"Bb":
            octets = _b64decode(text)
        else:
            octets = binascii.a2b_qp(text, header=True)
        if pending and charset.lower() != pending_charset.lower():
            out.append(decode_charset(bytes(pending), pending_charset))
            pending.clear()
        pending += octets
        pending_charset = charset
        pos = m.end()
        prev_word = True
    if pending:
        out.append(decode_charset(bytes(pending), pending_charset))
    out.append(decode_raw(raw[pos:]))
    return "".join(out)


def decode_transfer(body: bytes, encoding: str | None) -> bytes | None:
    """Undo a Content-Transfer-Encoding (RFC 2045 6); None when the encoding is unknown.

    *encoding* is the lowercased token from the part summary (None means 7bit).
    """
    if encoding is None or encoding in IDENTITY_ENCODINGS:
        return body
    if encoding == "base64":
        return _b64decode(body)
    if encoding == "quoted-printable":
        return decode_quoted_printable(body)
    return None


def decode_quoted_printable(body: bytes) -> bytes:
    """Quoted-printable body → octets, per RFC 2045 6.7.

    ``binascii.a2b_qp`` alone is not enough: rule 3 says whitespace at the end of an
    encoded line was added by a transport and must be dropped, and so an "=" followed
    only by whitespace is still a soft line break. So each line is stripped of trailing
    SP/HTAB first; a line then ending in "=" joins the next one, any other ends with CRLF
    (bare LF is taken as a line end too). ``=XX`` escapes are undone per line, leniently
    (a malformed one stays as it is). Linear in the body: one split, one pass.
    """
    if b"=" not in body and b" \r" not in body and b"\t\r" not in body \
            and not body.endswith((b" ", b"\t")):
        return body  # nothing to decode (and no trailing space to drop before CRLF)
    lines = body.split(b"\n")
    out: list[bytes] = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if i < last and line.endswith(b"\r"):
            line = line[:-1]
        line = line.rstrip(b" \t")
        if line.endswith(b"="):
            out.append(binascii.a2b_qp(line[:-1]) if b"=" in line[:-1] else line[:-1])
            continue  # soft line break (rule 5): no line end
        out.append(binascii.a2b_qp(line) if b"=" in line else line)
        if i < last:
            out.append(b"\r\n")
    return b"".join(out)
