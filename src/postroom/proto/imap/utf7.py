"""Mailbox names: modified UTF-7 codec (RFC 3501 5.1.3) and the name policy.

IMAP4rev1 clients send and expect mailbox names in *modified UTF-7*; IMAP4rev2 clients and
those that enabled UTF8=ACCEPT (RFC 6855) use UTF-8 instead. Internally a name is always a
``str``; this module converts at the wire boundary in both directions.

The decoder is strict on purpose: every name has exactly one valid encoding, so two
spellings can never reach the store as two different mailboxes that display identically
(RFC 3501 5.1.3: printable ASCII "MUST NOT" be base64-encoded, "&" must be "&-"). We also
refuse adjacent shift sequences ("&AOk-&AOk-"), which our encoder never produces.

Name policy (``check_name`` for any name, ``check_new_name`` for names being created):
names are names, never paths. Storage is SQL, so nothing here has a file-system effect,
but we still keep names sane for clients, exports and admin tools:

* no empty name, no control characters (C0, DEL, C1), at most ``MAX_NAME_OCTETS`` UTF-8
  octets and ``MAX_LEVELS`` hierarchy levels;
* for creation: no empty hierarchy level (so no leading "/", trailing "/" or "//"), no "."
  or ".." level, no leading "~" (a home-directory reference to UW-IMAP-style servers and
  to shells), no list wildcards "*" or "%" (they make the mailbox impossible to LIST by
  exact name, RFC 3501 6.3.8). Such names are never created, and lookups (SELECT,
  STATUS, APPEND...) take every name literally, so "../Sent" or "~/INBOX" is simply a
  mailbox that does not exist: nothing is ever resolved like a path. A Maildir export
  (each level a folder name) therefore cannot leave its folder.

INBOX is case-insensitive (RFC 9051 5.1): "inbox", "InBoX" and "INBOX" all mean "INBOX",
and "inbox/sub" becomes "INBOX/sub". Only ASCII case folding is applied: "ınbox" (dotless
i) is not INBOX even though Python's ``str.upper`` would say so.
"""

from __future__ import annotations

import base64
import binascii
import re

# Our hierarchy delimiter (RFC 9051 5.1.1): one, fixed, for every account.
DELIMITER = "/"
MAX_NAME_OCTETS = 512
MAX_LEVELS = 32
INBOX = "INBOX"

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
# A shift sequence: "&", modified base64, "-". "&-" (empty) is the escaped ampersand.
_SHIFT = re.compile(rb"&([A-Za-z0-9+,]*)-")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
# C0 controls, DEL, C1 controls and lone surrogates: never part of a mailbox name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


TEXT_8BIT_NAME = "8-bit mailbox name: ENABLE UTF8=ACCEPT or IMAP4rev2 first, or use modified UTF-7"


class MailboxNameError(ValueError):
    """A mailbox name is not valid: bad encoding or against the name policy.

    The message is short and safe to put in a response text.
    """


def encode_utf7(name: str) -> bytes:
    """Encode ``name`` as modified UTF-7 (RFC 3501 5.1.3), the canonical form."""
    if name.isascii() and "&" not in name and _PRINTABLE.fullmatch(name):
        return name.encode("ascii")
    out: list[bytes] = []
    pos = 0
    n = len(name)
    while pos < n:
        m = _PRINTABLE.match(name, pos)
        if m:
            # Printable ASCII represents itself, except "&" which becomes "&-".
            out.append(m.group().encode("ascii").replace(b"&", b"&-"))
            pos = m.end()
            continue
        end = pos + 1
        while end < n and not ("\x20" <= name[end] <= "\x7e"):
            end += 1
        chunk = name[pos:end].encode("utf-16-be", "surrogatepass")
        b64 = base64.b64encode(chunk).rstrip(b"=").replace(b"/", b",")
        out.append(b"&" + b64 + b"-")
        pos = end
    return b"".join(out)


def decode_utf7(data: bytes) -> str:
    """Decode modified UTF-7, rejecting every non-canonical or malformed form."""
    if not data:
        return ""
    out: list[str] = []
    pos = 0
    prev_shift_end = -1
    n = len(data)
    while pos < n:
        amp = data.find(b"&", pos)
        plain = data[pos:] if amp < 0 else data[pos:amp]
        if plain:
            if not _is_printable_ascii(plain):
                raise MailboxNameError("Mailbox name is not valid modified UTF-7")
            out.append(plain.decode("ascii"))
        if amp < 0:
            break
        m = _SHIFT.match(data, amp)
        if m is None:
            raise MailboxNameError("Mailbox name has an unterminated or invalid '&' sequence")
        b64 = m.group(1)
        if not b64:
            out.append("&")
        else:
            if amp == prev_shift_end:
                # RFC 3501 5.1.3: canonical form merges runs; "&AOk-&AOk-" is "&AOkA6Q-".
                raise MailboxNameError("Mailbox name has adjacent modified base64 runs")
            out.append(_decode_run(b64))
            prev_shift_end = m.end()
        pos = m.end()
    return "".join(out)


def _is_printable_ascii(data: bytes) -> bool:
    return not data.translate(None, _PRINTABLE_BYTES)


_PRINTABLE_BYTES = bytes(range(0x20, 0x7F))


def _decode_run(b64: bytes) -> str:
    bits = len(b64) * 6
    # Each UTF-16 unit takes 16 bits; leftover bits must be fewer than one base64 digit
    # and zero, otherwise the encoding is not the shortest (canonical) one.
    if bits % 16 >= 6:
        raise MailboxNameError("Mailbox name has a bad modified base64 length")
    std = b64.replace(b",", b"/")
    std += b"=" * (-len(std) % 4)
    try:
        raw = base64.b64decode(std, validate=True)
    except binascii.Error:
        raise MailboxNameError("Mailbox name has bad modified base64") from None
    if len(raw) % 2:
        raise MailboxNameError("Mailbox name has a bad modified base64 length")
    # Leftover bits must be zero (RFC 4648 3.5 canonical encoding).
    last = _B64_ALPHABET.index(b64[-1:])
    spare = bits % 16
    if spare and last & ((1 << spare) - 1):
        raise MailboxNameError("Mailbox name has non-zero padding bits")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise MailboxNameError("Mailbox name has an unpaired UTF-16 surrogate") from None
    for ch in text:
        if "\x20" <= ch <= "\x7e":
            # RFC 3501 5.1.3: printable ASCII MUST represent itself.
            raise MailboxNameError("Mailbox name encodes printable ASCII in base64")
    return text


def normalize_inbox(name: str) -> str:
    """Spell INBOX (and the INBOX prefix of its children) as "INBOX" (RFC 9051 5.1)."""
    head = name[:5]
    if head.isascii() and head.upper() == INBOX and (len(name) == 5 or name[5] == DELIMITER):
        return INBOX + name[5:]
    return name


def decode_mailbox_name(raw: bytes, *, utf8: bool) -> str:
    """Wire octets of a mailbox name → normalized ``str``, checked by :func:`check_name`.

    In UTF-8 mode (IMAP4rev2 or UTF8=ACCEPT enabled) the octets are UTF-8 and "&" is just
    a character (RFC 6855 3). Otherwise they are modified UTF-7, where 8-bit octets cannot
    occur: a client that did not enable UTF-8 and sends them anyway is refused (the
    parser answers BAD, RFC 9051 5.1 / RFC 6855 3), rather than guessing what it meant.
    """
    if not utf8 and not raw.isascii():
        raise MailboxNameError(TEXT_8BIT_NAME)
    if utf8:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MailboxNameError("Mailbox name is not valid UTF-8") from None
    else:
        name = decode_utf7(raw)
    name = normalize_inbox(name)
    check_name(name)
    return name


def encode_mailbox_name(name: str, *, utf8: bool) -> bytes:
    """``str`` name → wire octets: UTF-8 or modified UTF-7 (the caller quotes them)."""
    return name.encode("utf-8") if utf8 else encode_utf7(name)


def check_name(name: str) -> None:
    """Policy every mailbox name must meet, even one that is only looked up."""
    if not name:
        raise MailboxNameError("Mailbox name is empty")
    if _CONTROL.search(name):
        raise MailboxNameError("Mailbox name contains control characters")
    if len(name) > MAX_NAME_OCTETS or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_OCTETS:
        raise MailboxNameError("Mailbox name is too long")


def check_new_name(name: str) -> None:
    """Stricter policy for a name that is about to be created (CREATE, RENAME target)."""
    check_name(name)
    levels = name.split(DELIMITER)
    if len(levels) > MAX_LEVELS:
        raise MailboxNameError("Mailbox name has too many hierarchy levels")
    if name.startswith("~"):
        raise MailboxNameError("Mailbox name starts with '~' (a home reference)")
    for level in levels:
        if not level:
            raise MailboxNameError("Mailbox name has an empty hierarchy level")
        if level in (".", ".."):
            raise MailboxNameError("Mailbox name has a '.' or '..' level")
    if "*" in name or "%" in name:
        raise MailboxNameError("Mailbox name contains a wildcard character")
