"""SMTP replies: the :class:`Reply` value, named constants, and a stateless reply parser.

Stable API (the SMTP client core imports this module; keep these names and signatures):

``Reply(code: int, enhanced: str | None, text: str)``
    A frozen value. ``text`` may hold several lines separated by ``"\\n"``; each becomes one
    reply line. ``to_bytes()`` renders the wire form (``"250-..."`` continuation lines, the
    enhanced code repeated on every line as RFC 2034 section 3 asks). Helpers:
    ``lines``, ``is_positive`` (2xx), ``is_intermediate`` (3xx), ``is_transient`` (4xx),
    ``is_permanent`` (5xx), ``closes`` (421: the server closes after sending it),
    ``with_text(text)`` (same codes, other text).
``SmtpError(reply)``
    The peer-error family: "answer this reply". Raised by :mod:`grammar` parsers; a shell may
    raise it for policy refusals and catch it in one place.
``SmtpUsageError``
    The API-misuse family (a bug in the caller), never caused by peer bytes.
``MalformedReply``
    Raised by :func:`parse_reply_line` / :func:`parse_reply` for bytes that are not a reply.
``parse_reply_line(line: bytes) -> ReplyLine``
    One line (with or without CRLF) → ``ReplyLine(code, last, text)``.
``parse_reply(lines: Sequence[bytes]) -> Reply``
    The lines of one complete reply → ``Reply`` with the enhanced code extracted (RFC 2034)
    and stripped from every line.

Enhanced status codes (RFC 2034 / RFC 3463) are carried by every 2xx/4xx/5xx reply the core
sends, except the 220 greeting and the replies to HELO/EHLO, which RFC 2034 section 3
exempts (their first word is the server's name). 3xx replies (354, 334) never carry one:
RFC 3463 defines classes 2, 4 and 5 only, and the 334 text is the base64 challenge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

# RFC 3463 section 2: status-code = class "." subject "." detail; class is 2, 4 or 5,
# subject and detail are 1 to 3 digits without leading zeros (we accept leading zeros when
# parsing, being liberal in what we read).
_ENHANCED_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_ENHANCED_PREFIX_RE = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?: +|$)")


class SmtpError(Exception):
    """The peer did something we answer with ``reply`` (or a policy refused it).

    This is the only exception that peer bytes can cause anywhere in the SMTP cores; the
    server core catches it internally and sends the reply, so it never escapes
    ``receive_data``/``next_event``.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.reply = reply

    def __str__(self) -> str:
        return f"{self.reply.code} {self.reply.enhanced or ''} {self.reply.text}".replace(
            "  ", " "
        )


class SmtpUsageError(RuntimeError):
    """The caller used the API wrongly (e.g. answered a decision that was not asked)."""


class MalformedReply(ValueError):
    """The bytes are not an SMTP reply line (RFC 5321 4.2)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code, optional enhanced status code, text (lines joined by ``\\n``)."""

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        # Misuse checks only: these values come from our code, never from the peer.
        if not 200 <= self.code <= 599:
            raise SmtpUsageError(f"reply code out of range: {self.code}")
        if self.enhanced is not None:
            if not _ENHANCED_RE.fullmatch(self.enhanced):
                raise SmtpUsageError(f"bad enhanced status code: {self.enhanced!r}")
            # RFC 3463 2: the class must agree with the first digit of the basic code.
            if self.enhanced[0] != str(self.code)[0]:
                raise SmtpUsageError(f"enhanced code {self.enhanced} does not match {self.code}")

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(self.text.split("\n"))

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    @property
    def closes(self) -> bool:
        """RFC 5321 3.8: after 421 the server closes the channel."""
        return self.code == 421

    def with_text(self, text: str) -> Reply:
        """Same codes, other text (e.g. ``OK.with_text("Ok: queued as 1A2B")``).

        Built without ``dataclasses.replace`` and the checks of ``__post_init__``: the
        codes are this reply's, checked already, and this runs once per message (the
        250 with the queue id)."""
        new = object.__new__(Reply)
        object.__setattr__(new, "code", self.code)
        object.__setattr__(new, "enhanced", self.enhanced)
        object.__setattr__(new, "text", text)
        return new

    def to_bytes(self) -> bytes:
        """Wire form: every line ``code[-| ][enhanced ]text CRLF`` (RFC 5321 4.2.1)."""
        return _encode(self)


@lru_cache(maxsize=512)
def _encode(reply: Reply) -> bytes:
    # Cached: the constants below are sent millions of times; hashing a frozen dataclass of
    # three fields is cheaper than formatting it again.
    prefix = str(reply.code)
    enhanced = reply.enhanced + " " if reply.enhanced else ""
    # CR and other controls in text would forge extra reply lines; replace them.
    lines = [_clean(line) for line in reply.text.split("\n")]
    out = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        sep = " " if i == last else "-"
        body = enhanced + line
        # RFC 5321 4.2: Reply-code [ SP textstring ] CRLF: the last line's text is optional.
        out.append(prefix if not body and sep == " " else f"{prefix}{sep}{body}")
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _clean(line: str) -> str:
    return _CONTROL_RE.sub("?", line) if _CONTROL_RE.search(line) else line


# --- parsing (used by the client core) -------------------------------------------------

# RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39, then "-" (more lines follow) or
# SP / end of line (last line). We accept 2xx-5xx only: 1yz is unused in SMTP.
_REPLY_LINE_RE = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?")


@dataclass(frozen=True, slots=True)
class ReplyLine:
    """One parsed reply line: its code, whether it ends the reply, its text."""

    code: int
    last: bool
    text: str


def parse_reply_line(line: bytes) -> ReplyLine:
    """Parse one reply line (trailing CRLF or LF optional).

    Raises :class:`MalformedReply` when the line does not start with a valid reply code.
    Text that is not UTF-8 is decoded with replacement characters: a server's free text
    must never make the client fail.
    """
    if line.endswith(b"\n"):
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    m = _REPLY_LINE_RE.fullmatch(line)
    if m is None:
        raise MalformedReply(f"not an SMTP reply line: {line[:80]!r}")
    sep = m.group(2)
    text = (m.group(3) or b"").decode("utf-8", "replace")
    return ReplyLine(int(m.group(1)), sep != b"-", text)


def parse_reply(lines: Sequence[bytes]) -> Reply:
    """Join the lines of one complete reply into a :class:`Reply`.

    All lines must carry the same code, only the last may be a final line. The enhanced
    status code is taken from the first line when its class matches the reply code
    (RFC 2034 3); the same prefix is stripped from the other lines when present.
    """
    if not lines:
        raise MalformedReply("empty reply")
    parsed = [parse_reply_line(line) for line in lines]
    code = parsed[0].code
    for i, pl in enumerate(parsed):
        if pl.code != code:
            raise MalformedReply(f"reply code changed from {code} to {pl.code}")
        if pl.last != (i == len(parsed) - 1):
            raise MalformedReply("continuation marker out of place")
    texts = [pl.text for pl in parsed]
    enhanced: str | None = None
    m = _ENHANCED_PREFIX_RE.match(texts[0])
    if m is not None and m.group(1)[0] == str(code)[0]:
        enhanced = m.group(1)
        stripped = []
        for text in texts:
            mm = _ENHANCED_PREFIX_RE.match(text)
            same = mm is not None and mm.group(1) == enhanced
            stripped.append(text[mm.end() :] if mm is not None and same else text)
        texts = stripped
    return Reply(code, enhanced, "\n".join(texts))


# --- named replies ----------------------------------------------------------------------
# Grouped by code. Texts are deliberately short and fixed: shells vary them with
# ``with_text`` (e.g. the queue id after DATA), never by building new literals.

# 2xx
HELP = Reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
)
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")  # RFC 3207 4
CLOSING = Reply(221, "2.0.0", "Bye")
AUTH_SUCCESS = Reply(235, "2.7.0", "Authentication successful")  # RFC 4954 6
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")  # RFC 3463: X.1.0 other address status
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")  # RFC 3463: X.1.5 destination address valid
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Ok: message accepted")
CANNOT_VRFY = Reply(  # RFC 5321 3.5.3 / 7.3
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)

# 3xx (no enhanced code: RFC 3463 has no class 3)
START_MAIL_INPUT = Reply(354, None, "End data with <CR><LF>.<CR><LF>")

# 4xx
SERVICE_UNAVAILABLE = Reply(421, "4.7.0", "Service not available, closing transmission channel")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
PROTOCOL_ABUSE = Reply(421, "4.7.0", "Not an SMTP client, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "System shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
MAILBOX_BUSY = Reply(450, "4.2.1", "Mailbox temporarily unavailable, try again later")
TEMP_FAIL = Reply(451, "4.3.0", "Temporary failure, try again later")
GREYLISTED = Reply(451, "4.7.1", "Greylisted, try again later")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
TOO_MANY_RCPTS = Reply(452, "4.5.3", "Too many recipients")  # RFC 5321 4.5.3.1.10
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available due to temporary reason")  # RFC 3207
AUTH_TEMP_FAIL = Reply(454, "4.7.0", "Temporary authentication failure")  # RFC 4954 6

# 5xx: syntax and sequence
COMMAND_UNRECOGNIZED = Reply(500, "5.5.1", "Command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")  # RFC 5321 4.5.3.1.4
BAD_CHARACTERS = Reply(500, "5.5.2", "Invalid characters in command")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")  # RFC 4954
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RCPT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid parameter")
DUPLICATE_PARAMETER = Reply(501, "5.5.4", "Duplicate parameter")
BAD_CHUNK_SIZE = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")  # RFC 3030 2
SYNTAX_BURL = Reply(501, "5.5.4", "Syntax: BURL absolute-URI [LAST]")  # RFC 4468 3
SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")  # RFC 5321 4.1.1.1
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
SYNTAX_DATA = Reply(501, "5.5.4", "Syntax: DATA")
SYNTAX_RSET = Reply(501, "5.5.4", "Syntax: RSET")
SYNTAX_QUIT = Reply(501, "5.5.4", "Syntax: QUIT")
SYNTAX_VRFY = Reply(501, "5.5.4", "Syntax: VRFY user")
SYNTAX_STARTTLS = Reply(501, "5.5.4", "Syntax: STARTTLS")  # RFC 3207 4: no parameters
SYNTAX_AUTH = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")  # RFC 4954 4
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")  # RFC 4954 4
COMMAND_NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
EXPN_DISABLED = Reply(502, "5.5.1", "EXPN not available")  # RFC 5321 7.3
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
HELO_FIRST = Reply(503, "5.5.1", "Send EHLO/HELO first")
MAIL_FIRST = Reply(503, "5.5.1", "Need MAIL command first")
RCPT_FIRST = Reply(503, "5.5.1", "Need RCPT command first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")  # RFC 4954 4
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
STARTTLS_IN_TRANSACTION = Reply(503, "5.5.1", "STARTTLS not permitted during a mail transaction")
DATA_BDAT_MIXED = Reply(503, "5.5.1", "DATA and BDAT cannot be mixed")  # RFC 3030 3
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")  # RFC 4954 4
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")  # RFC 4954 6
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")  # RFC 3207 4
AUTH_TOO_WEAK = Reply(534, "5.7.9", "Authentication mechanism is too weak")  # RFC 4954 6
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")  # RFC 4954 6
ENCRYPTION_REQUIRED = Reply(  # RFC 4954 6
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")  # RFC 5321 4.1.1.11

# 5xx: policy and content (mostly sent by the shell)
UNKNOWN_USER = Reply(550, "5.1.1", "No such user here")
MAILBOX_UNAVAILABLE = Reply(550, "5.2.1", "Mailbox unavailable")
POLICY_REJECTED = Reply(550, "5.7.1", "Message rejected due to local policy")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")  # RFC 1870
# RFC 3030 2: a BDAT chunk larger than any message we accept; its octets are never read,
# so the stream cannot be resynchronised and the connection closes after this reply.
CHUNK_TOO_BIG = Reply(552, "5.3.4", "Chunk exceeds fixed maximum message size, closing connection")
MAILBOX_FULL = Reply(552, "5.2.2", "Mailbox full")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by user")
# Submission: the header From: must be one address the login owns (RFC 6409 8 lets the MSA
# enforce it; see net/sender_policy.py).
FROM_NOT_OWNED = Reply(550, "5.7.1", "From: header address not owned by user")
FROM_NOT_SINGLE = Reply(550, "5.7.1", "From: header must hold exactly one address")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")  # RFC 6531 3.7.4
NO_SERVICE = Reply(554, "5.7.1", "No SMTP service here")  # RFC 5321 3.1
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")  # RFC 5321 3.3 / RFC 2920
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
# Our choice for SMTP smuggling defence (CVE-2023-51764/5/6): read to the real end of data,
# then refuse the whole message permanently. 5.6.0 = "other or undefined media error".
BARE_LINE_ENDING = Reply(554, "5.6.0", "Message contains bare CR or LF")
NUL_IN_MESSAGE = Reply(554, "5.6.0", "Message contains NUL characters")
BURL_FAILED = Reply(554, "5.6.6", "IMAP URL resolution failed")  # RFC 4468 4 (5.6.6)
BURL_DATA_MIXED = Reply(503, "5.5.1", "DATA and BURL cannot be mixed")  # RFC 4468 3
