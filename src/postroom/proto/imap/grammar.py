"""IMAP formal syntax (RFC 9051 9, RFC 3501 9): errors and the primitive parser.

Every command parser works on a :class:`Parser`: a cursor over one complete command line
(the receiver has already collected it, literal markers included) plus the list of literal
payloads in the order they were announced. A literal appears in the line as its marker
``{n}CRLF`` (or ``{n+}``, ``~{n}``); when a parser expects a string there, the cursor takes
the next payload from the list. The receiver only ever produces CRLF right after a literal
marker, so the marker is unambiguous, and the whole command is parsed exactly once, however
many literals it carries.

Primitives mirror the ABNF productions and carry the ABNF beside them. They raise
:class:`ImapPeerError` (the client sent something invalid; it carries the response) and
never anything else for any input; :class:`ImapUsageError` means our own caller broke the
API contract (e.g. announced more literals than it supplied).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from postroom.proto.imap import utf7

T = TypeVar("T")

# Status words (RFC 9051 7.1).
OK = "OK"
NO = "NO"
BAD = "BAD"
BYE = "BYE"

MAX_NUMBER = 0xFFFFFFFF  # number: 32-bit unsigned (RFC 9051 9 "number")
MAX_NUMBER64 = 0x7FFFFFFFFFFFFFFF  # number64 / mod-sequence-value: 63 bits (RFC 9051, RFC 7162)

DEFAULT_MAX_DEPTH = 16
DEFAULT_MAX_ITEMS = 10_000

# Error texts used by the primitives (short, safe to echo).
TEXT_EXPECTED_SP = "Expected a single space"
TEXT_TRAILING = "Unexpected characters at the end of the command"
TEXT_TOO_DEEP = "Too deeply nested parentheses"
TEXT_TOO_MANY = "Too many items"


class ImapPeerError(Exception):
    """The client misbehaved; :attr:`response` is what to send it.

    ``tag`` is filled in by whoever knows it (the receiver); without one the response is
    an untagged ``* BAD``. ``close`` means: send the response (a ``* BYE``) and close the
    connection, because the stream cannot be resynchronised or the client is abusive.
    """

    def __init__(
        self,
        text: str,
        *,
        status: str = BAD,
        code: str | None = None,
        tag: str | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.status = status
        self.code = code
        self.tag = tag
        self.close = close

    @property
    def response(self) -> bytes:
        # Imported here: responses imports sequence, which imports this module.
        from postroom.proto.imap import responses

        if self.close:
            return responses.bye(self.text, self.code)
        if self.tag is None:
            return responses.untagged(BAD, self.text, self.code)
        return responses.tagged(self.tag, self.status, self.text, self.code)

    def __repr__(self) -> str:
        return (
            f"ImapPeerError({self.text!r}, status={self.status!r}, code={self.code!r},"
            f" tag={self.tag!r}, close={self.close!r})"
        )


class ImapUsageError(RuntimeError):
    """We misused the API (a bug in the caller), as opposed to a misbehaving client."""


# --- character classes (RFC 9051 9) -------------------------------------------------------
# ATOM-CHAR = <any CHAR except atom-specials>
# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
# ASTRING-CHAR = ATOM-CHAR / resp-specials
ASTRING_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")
# list-char = ATOM-CHAR / list-wildcards / resp-specials
LIST_CHARS = re.compile(rb"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c-\x7e]+")
# tag = 1*<any ASTRING-CHAR except "+">
TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")
# quoted = DQUOTE *QUOTED-CHAR DQUOTE ; QUOTED-CHAR = <TEXT-CHAR except quoted-specials>
#          / "\" quoted-specials / UTF8-2 / UTF8-3 / UTF8-4   (8-bit checked by the user)
QUOTED = re.compile(rb'"([^"\\\r\n\x00]*(?:\\["\\][^"\\\r\n\x00]*)*)"')
_UNESCAPE = re.compile(rb"\\([\"\\])")
# literal = "{" number64 ["+"] "}" CRLF *CHAR8 ; literal8 = "~{" number64 "}" CRLF *OCTET
# (RFC 9051 9, RFC 7888 8, RFC 3516 4.2)
LITERAL = re.compile(rb"(~?)\{(\d+)(\+?)\}\r?\n")
_DIGITS = re.compile(rb"\d+")
# date-text = date-day "-" date-month "-" date-year ; date-day = 1*2DIGIT
_DATE = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
# date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
# date-day-fixed = (SP DIGIT) / 2DIGIT   (a bare 1DIGIT day is accepted too)
_DATE_TIME = re.compile(
    rb'"( \d|\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"'
)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_NUMBER = {name.encode(): i + 1 for i, name in enumerate(MONTHS)}

# flag = "\Answered" / "\Flagged" / "\Deleted" / "\Seen" / "\Draft" / flag-keyword
#        / flag-extension     (RFC 9051 9; \Recent only exists in RFC 3501 responses)
SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"
RECENT = "\\Recent"
SYSTEM_FLAGS = {f.upper(): f for f in (SEEN, ANSWERED, FLAGGED, DELETED, DRAFT, RECENT)}


def canonical_flag(flag: str) -> str:
    """System flags in their canonical spelling; keywords unchanged."""
    return SYSTEM_FLAGS.get(flag.upper(), flag) if flag.startswith("\\") else flag


class Parser:
    """Cursor over one command line and its literals, with nesting and item limits."""

    __slots__ = (
        "data",
        "depth",
        "items",
        "literals",
        "max_depth",
        "max_items",
        "next_literal",
        "pos",
        "utf8",
    )

    def __init__(
        self,
        data: bytes,
        literals: Sequence[bytes] = (),
        *,
        pos: int = 0,
        utf8: bool = False,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> None:
        self.data = data
        self.pos = pos
        self.literals = literals
        self.next_literal = 0
        self.depth = 0
        self.items = 0
        self.max_depth = max_depth
        self.max_items = max_items
        # UTF8=ACCEPT or IMAP4rev2 enabled: mailbox names are UTF-8, not modified UTF-7.
        self.utf8 = utf8

    # --- basics ---------------------------------------------------------------------------
    @staticmethod
    def error(text: str, *, status: str = BAD, code: str | None = None) -> ImapPeerError:
        return ImapPeerError(text, status=status, code=code)

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def expect_end(self) -> None:
        if self.pos < len(self.data):
            raise self.error(TEXT_TRAILING)

    def peek(self) -> int:
        """The next octet, or -1 at the end."""
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def try_char(self, char: bytes) -> bool:
        if self.data.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def expect_char(self, char: bytes, what: str) -> None:
        if not self.data.startswith(char, self.pos):
            raise self.error(f"Expected {what}")
        self.pos += len(char)

    def sp(self) -> None:
        # Exactly one SP between arguments (RFC 9051 9).
        if self.data.startswith(b" ", self.pos):
            self.pos += 1
        else:
            raise self.error(TEXT_EXPECTED_SP)

    def try_sp(self) -> bool:
        return self.try_char(b" ")

    def match(self, pattern: re.Pattern[bytes]) -> re.Match[bytes] | None:
        m = pattern.match(self.data, self.pos)
        if m is not None:
            self.pos = m.end()
        return m

    # --- atoms and numbers ------------------------------------------------------------------
    def atom(self, what: str = "an atom") -> bytes:
        m = ATOM.match(self.data, self.pos)
        if m is None:
            raise self.error(f"Expected {what}")
        self.pos = m.end()
        return m.group()

    def keyword(self, what: str = "a keyword") -> str:
        """An atom, upper-cased (IMAP keywords are case-insensitive)."""
        return self.atom(what).decode("ascii").upper()

    def try_keyword(self, word: str) -> bool:
        """Consume ``word`` (case-insensitive) if it is the whole next atom."""
        m = ATOM.match(self.data, self.pos)
        if m is not None and m.group().upper() == word.encode("ascii"):
            self.pos = m.end()
            return True
        return False

    def number(self, *, maximum: int = MAX_NUMBER, nonzero: bool = False) -> int:
        # number = 1*DIGIT ; nz-number = digit-nz *DIGIT (leading zeros tolerated)
        m = _DIGITS.match(self.data, self.pos)
        if m is None:
            raise self.error("Expected a number")
        digits = m.group()
        # Bound the digit count before int(): no giant integer conversions.
        if len(digits) > 20 or int(digits) > maximum:
            raise self.error("Number out of range")
        value = int(digits)
        if nonzero and value == 0:
            raise self.error("Expected a non-zero number")
        self.pos = m.end()
        return value

    def nz_number(self) -> int:
        return self.number(nonzero=True)

    def number64(self) -> int:
        return self.number(maximum=MAX_NUMBER64)

    def mod_sequence_value(self) -> int:
        # mod-sequence-value = 1*DIGIT ; 63-bit, non-zero (RFC 7162 7)
        return self.number(maximum=MAX_NUMBER64, nonzero=True)

    def mod_sequence_valzer(self) -> int:
        # mod-sequence-valzer = "0" / mod-sequence-value (RFC 7162 7)
        return self.number(maximum=MAX_NUMBER64)

    # --- strings ----------------------------------------------------------------------------
    def quoted(self) -> bytes:
        m = QUOTED.match(self.data, self.pos)
        if m is None:
            raise self.error("Invalid quoted string")
        self.pos = m.end()
        value = m.group(1)
        return _UNESCAPE.sub(rb"\1", value) if b"\\" in value else value

    def literal(self, *, binary: bool = False) -> bytes:
        m = LITERAL.match(self.data, self.pos)
        if m is None:
            raise self.error("Invalid literal")
        if m.group(1) and not binary:
            # literal8 only where the grammar allows it (APPEND data, RFC 3516 4.2).
            raise self.error("literal8 is not allowed here")
        index = self.next_literal
        if index >= len(self.literals):
            raise ImapUsageError("a literal was announced but not supplied")
        value = self.literals[index]
        if len(m.group(2)) > 20 or len(value) != int(m.group(2)):
            raise ImapUsageError("literal length does not match its announcement")
        self.next_literal = index + 1
        self.pos = m.end()
        return value

    def string(self, *, allow_nul: bool = False) -> bytes:
        # string = quoted / literal
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            value = self.literal()
            # literal = ... *CHAR8 ; CHAR8 = %x01-ff (no NUL outside literal8)
            if not allow_nul and b"\x00" in value:
                raise self.error("NUL is not allowed in a string")
            return value
        raise self.error("Expected a string")

    def astring(self) -> bytes:
        # astring = 1*ASTRING-CHAR / string
        m = ASTRING_ATOM.match(self.data, self.pos)
        if m is not None:
            self.pos = m.end()
            return m.group()
        return self.string()

    def nstring(self) -> bytes | None:
        # nstring = string / nil
        if self.try_keyword("NIL"):
            return None
        return self.string()

    # --- mailbox names ----------------------------------------------------------------------
    def mailbox(self) -> str:
        # mailbox = "INBOX" / astring  (INBOX case-insensitive, RFC 9051 5.1)
        raw = self.astring()
        try:
            return utf7.decode_mailbox_name(raw, utf8=self.utf8)
        except utf7.MailboxNameError as exc:
            if not self.utf8 and not raw.isascii():
                # 8-bit octets where only modified UTF-7 may be: the client did not enable
                # UTF-8, so this is not a mailbox name at all (RFC 6855 3): BAD.
                raise self.error(str(exc)) from None
            # The command is well-formed (any astring is a mailbox in the grammar); there
            # just is no mailbox by that name: NO, not BAD (imaptest "atoms"). CREATE and
            # RENAME turn the code into CANNOT (commands.mailboxes.new_mailbox).
            raise ImapPeerError(str(exc), status=NO, code="NONEXISTENT") from None

    def list_mailbox(self) -> str:
        # list-mailbox = 1*list-char / string
        m = LIST_CHARS.match(self.data, self.pos)
        if m is not None:
            self.pos = m.end()
            raw = m.group()
        else:
            raw = self.string()
        return decode_pattern(raw, utf8=self.utf8)

    # --- lists ------------------------------------------------------------------------------
    def open_paren(self) -> None:
        self.expect_char(b"(", "'('")
        self.depth += 1
        if self.depth > self.max_depth:
            raise self.error(TEXT_TOO_DEEP, code="LIMIT")

    def close_paren(self) -> bool:
        """Consume ")" if it is next, closing the current level."""
        if self.try_char(b")"):
            self.depth -= 1
            return True
        return False

    def count(self, n: int = 1) -> None:
        self.items += n
        if self.items > self.max_items:
            raise self.error(TEXT_TOO_MANY, code="LIMIT")

    def paren_list(self, item: Callable[[], T], *, allow_empty: bool = True) -> list[T]:
        """ "(" [item *(SP item)] ")" with depth and item limits."""
        self.open_paren()
        out: list[T] = []
        if self.close_paren():
            if not allow_empty:
                raise self.error("Empty list")
            return out
        while True:
            out.append(item())
            self.count()
            if self.close_paren():
                return out
            self.sp()

    # --- flags ------------------------------------------------------------------------------
    def flag(self, *, allow_recent: bool = False) -> str:
        """One flag a client may set: a system flag or a keyword (RFC 9051 2.3.2)."""
        if self.try_char(b"\\"):
            name = self.atom("a flag name").decode("ascii")
            canonical = SYSTEM_FLAGS.get("\\" + name.upper())
            if canonical is None:
                # flag-extension: reserved for future RFCs; nothing may set one today.
                raise self.error("Invalid system flag")
            if canonical == RECENT and not allow_recent:
                # RFC 3501 2.3.2: \Recent cannot be altered by the client.
                raise self.error("\\Recent cannot be set by a client")
            return canonical
        return self.atom("a flag").decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        # flag-list = "(" [flag *(SP flag)] ")"
        return tuple(dict.fromkeys(self.paren_list(self.flag)))

    # --- dates ------------------------------------------------------------------------------
    def date(self) -> datetime.date:
        # date = date-text / DQUOTE date-text DQUOTE
        quoted = self.try_char(b'"')
        m = self.match(_DATE)
        if m is None:
            raise self.error("Invalid date")
        if quoted:
            self.expect_char(b'"', "closing quote of date")
        month = _MONTH_NUMBER.get(m.group(2).upper())
        try:
            if month is None:
                raise ValueError
            return datetime.date(int(m.group(3)), month, int(m.group(1)))
        except ValueError:
            raise self.error("Invalid date") from None

    def date_time(self) -> datetime.datetime:
        # date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
        m = self.match(_DATE_TIME)
        if m is None:
            raise self.error("Invalid date-time")
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        month = _MONTH_NUMBER.get(mon.upper())
        try:
            if month is None or int(zm) > 59:
                raise ValueError
            offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
            tz = datetime.timezone(-offset if sign == b"-" else offset)
            return datetime.datetime(
                int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=tz
            )
        except ValueError:
            raise self.error("Invalid date-time") from None


def decode_utf8(value: bytes, what: str = "string") -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ImapPeerError(f"Invalid UTF-8 in {what}") from None


# base64 = *(4base64-char) [base64-terminal] (RFC 9051 9)
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def decode_base64(raw: bytes) -> bytes:
    """Strict base64 (canonical alphabet and padding); RFC 9051 6.2.2: else BAD."""
    if _BASE64.fullmatch(raw) is None:
        raise ImapPeerError("Invalid base64")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise ImapPeerError("Invalid base64") from None


def decode_pattern(raw: bytes, *, utf8: bool) -> str:
    """A LIST pattern: like a mailbox name, but may be empty and holds wildcards.

    An ASCII pattern that is not valid modified UTF-7 is still a well-formed list-mailbox:
    it is taken literally, so LIST answers OK with whatever matches it (usually nothing)
    instead of BAD, as Dovecot does (imaptest "atoms"). 8-bit octets without UTF8=ACCEPT
    are BAD as they are in names; with it, octets that are not UTF-8 are BAD too.
    """
    if not utf8 and not raw.isascii():
        raise ImapPeerError(utf7.TEXT_8BIT_NAME)  # as for names (utf7.decode_mailbox_name)
    if utf8:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ImapPeerError("Invalid mailbox pattern encoding") from None
    try:
        return utf7.decode_utf7(raw)
    except utf7.MailboxNameError:
        return raw.decode("ascii")
