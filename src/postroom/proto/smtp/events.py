"""Events the SMTP server core hands to its shell, and the two sentinels.

Two kinds of event (all frozen dataclasses):

* **Decisions** (:data:`DECISION_EVENTS`): the core stops until the shell answers through a
  method of the connection. Nothing else happens on the connection meanwhile (RFC 2920:
  replies stay in command order). Which methods answer which event:

  ==================  =========================================================
  ``Hello``           ``accept()`` → 250 (EHLO: extension list) / ``reject(r)``
  ``StartTls``        ``accept()`` → 220, then flush, handshake, ``starttls_done()``;
                      ``reject(r)`` (e.g. 454 4.7.0)
  ``AuthStart``       ``auth_challenge(b)`` → 334 / ``auth_success(user)`` → 235 /
  ``AuthResponse``    ``auth_failure(r)`` → 535 5.7.8 by default
  ``MailFrom``        ``accept()`` → 250 2.1.0 / ``reject(r)``
  ``RcptTo``          ``accept()`` → 250 2.1.5 / ``reject(r)`` (not counted as recipient)
  ``MessageComplete`` ``accept(r)`` → 250 2.0.0 (pass the queue id in ``r``) / ``reject(r)``
  ``BurlFetch``       ``burl_data(b)`` → the octets join the message (250, or end of
                      data with LAST) / ``reject(r)`` (e.g. 554 5.6.6): the transaction ends
  ==================  =========================================================

* **Information** (no answer expected): ``Reset`` (RSET), ``MessageRefused`` (the core
  refused a message by itself: size, bare CR/LF, NUL), ``AuthAborted`` (client cancelled
  or sent garbage mid-exchange: drop the SASL state).

Also here, because the shell reads them as much as events: :class:`ServerConfig` (what the
core knows about its listener), :class:`State` and :class:`CloseReason`. ``server.py``
re-exports them.

Secrets (SASL initial responses and responses) are ``field(repr=False)``: a logged event
never shows credentials. Message bytes are ``repr=False`` too (size only).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from postroom.proto.smtp.grammar import MailParams, Path, RcptParams
from postroom.proto.smtp.replies import Reply

__all__ = [
    "CLOSED",
    "DECISION_EVENTS",
    "DEFAULT_FORBIDDEN",
    "DEFAULT_MAX_AUTH_LINE",
    "DEFAULT_MAX_LINE",
    "NEED_DATA",
    "AuthAborted",
    "AuthResponse",
    "AuthStart",
    "BurlFetch",
    "CloseReason",
    "Event",
    "Hello",
    "MailFrom",
    "MessageComplete",
    "MessageRefused",
    "RcptTo",
    "Recipient",
    "Reset",
    "Sentinel",
    "ServerConfig",
    "StartTls",
    "State",
]


class Sentinel(enum.Enum):
    """What ``next_event`` returns when there is no event."""

    #: Flush ``data_to_send()``, read from the peer, call ``receive_data``.
    NEED_DATA = "NEED_DATA"
    #: Flush ``data_to_send()``, then close the connection (see ``close_reason``).
    CLOSED = "CLOSED"


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED


@dataclass(frozen=True, slots=True)
class Hello:
    """HELO/EHLO (RFC 5321 4.1.1.1). Decision.

    ``hostname`` is the argument as sent; ``valid`` says whether it is a Domain or an
    address literal as RFC 5321 requires (many clients send junk: policy is the shell's).
    """

    esmtp: bool
    hostname: str
    valid: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS (RFC 3207), already checked for sequence and syntax. Decision."""


@dataclass(frozen=True, slots=True)
class AuthStart:
    """AUTH mechanism [initial-response] (RFC 4954 4). Decision (auth_* methods).

    ``mechanism`` is upper-cased and one of the configured ones. ``initial_response`` is
    the decoded initial response (``b""`` for ``=``), or None when the client sent none.
    """

    mechanism: str
    initial_response: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The client's base64-decoded answer to a 334 challenge. Decision (auth_* methods)."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthAborted:
    """Information: the SASL exchange ended without a result (``*``, bad base64, long line)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM, syntax and parameters already valid (RFC 5321 4.1.1.2). Decision."""

    path: Path
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO, syntax valid, recipient limit not reached (RFC 5321 4.1.1.3). Decision.

    ``path.route`` non-empty means a source route: never relay on it (see grammar.py).
    """

    path: Path
    params: RcptParams


@dataclass(frozen=True, slots=True)
class Recipient:
    """An accepted recipient, as delivered in :class:`MessageComplete`."""

    path: Path
    params: RcptParams


@dataclass(frozen=True, slots=True)
class MessageComplete:
    """End of DATA or BDAT LAST, message checked by the core. Decision.

    ``data`` is the whole message, unstuffed, CRLF line ends, no bare CR/LF, no NUL, within
    the size limit. The transaction (sender and accepted recipients) rides along so that
    the shell need not track it. ``chunked`` is True for BDAT.

    ``line_feeds`` is how many LFs (so, CRLF line ends) ``data`` holds: the core counts
    them for the bare CR/LF check, and hands the count on so that the MIME scan need not
    count a text body again (``deliver.summarize_for_store``). None: not counted.
    """

    sender: Path
    mail_params: MailParams
    recipients: tuple[Recipient, ...]
    data: bytes = field(repr=False)
    chunked: bool = False
    line_feeds: int | None = None

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class BurlFetch:
    """BURL (RFC 4468 3): fetch ``url`` and append its octets to the message (as a BDAT
    chunk would be); ``last``: it ends the message. Decision (``burl_data``/``reject``)."""

    url: str
    last: bool = False


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """Information: the core refused the message itself with ``reply`` (already queued)."""

    reply: Reply
    size: int


@dataclass(frozen=True, slots=True)
class Reset:
    """Information: the client sent RSET; the transaction is gone."""


Event = (
    Hello
    | StartTls
    | AuthStart
    | AuthResponse
    | AuthAborted
    | MailFrom
    | RcptTo
    | MessageComplete
    | MessageRefused
    | Reset
    | BurlFetch
)

DECISION_EVENTS = (
    Hello, StartTls, AuthStart, AuthResponse, MailFrom, RcptTo, MessageComplete, BurlFetch,
)


# RFC 5321 4.5.3.1.4 says 512 octets per command line; real clients exceed it (long
# parameters, SMTPUTF8), so we tolerate up to 4096 before answering 500 5.5.2.
DEFAULT_MAX_LINE = 4096
# RFC 4954 4: a server must accept SASL response lines of at least 12288 octets.
DEFAULT_MAX_AUTH_LINE = 12288 + 2
# Commands of other protocols (HTTP proxies, cross-protocol attacks such as ALPACA): close
# at once, as Postfix does. Any line shaped like an HTTP request line ("VERB target
# HTTP/1.1") or a header field ("Host: ...") is treated the same way (server.py).
DEFAULT_FORBIDDEN = frozenset(
    {"CONNECT", "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"}
)

_HOSTNAME_RE = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the core needs to know about its listener; the shell owns it.

    Change it with ``conn.set_config(replace(conn.config, ...))`` or by passing a new one
    to ``starttls_done`` (``tls_active`` is forced to True there).
    """

    hostname: str
    max_message_size: int = 0  # RFC 1870; 0 = unlimited (advertised as bare "SIZE")
    max_recipients: int = 100  # RFC 5321 4.5.3.1.8 asks for at least 100
    max_line_length: int = DEFAULT_MAX_LINE  # command line, CRLF included
    max_auth_line_length: int = DEFAULT_MAX_AUTH_LINE
    max_errors: int = 20  # 4xx/5xx replies before 421 and close; 0 = no limit
    tls_available: bool = False  # advertise STARTTLS (when not active)
    tls_active: bool = False  # implicit TLS (port 465) or after STARTTLS
    require_tls: bool = False  # RFC 3207 4: 530 before STARTTLS for most commands
    auth_mechanisms: tuple[str, ...] = ()  # e.g. ("PLAIN", "LOGIN"); empty = no AUTH
    auth_requires_tls: bool = True  # AUTH only advertised/allowed under TLS
    mail_requires_auth: bool = False  # submission: 530 5.7.0 on MAIL before AUTH
    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    chunking: bool = True
    dsn: bool = True
    burl: bool = False  # RFC 4468: the shell resolves URLs (submission with URLAUTH)
    forbidden_commands: frozenset[str] = DEFAULT_FORBIDDEN

    def __post_init__(self) -> None:
        if not _HOSTNAME_RE.fullmatch(self.hostname):
            raise ValueError(f"hostname must be printable ASCII without spaces: {self.hostname!r}")
        if self.max_message_size < 0 or self.max_errors < 0:
            raise ValueError("max_message_size and max_errors must be >= 0")
        if self.max_recipients < 1:
            raise ValueError("max_recipients must be >= 1")
        if self.max_line_length < 512:  # RFC 5321 4.5.3.1.4 minimum
            raise ValueError("max_line_length must be >= 512")
        if self.max_auth_line_length < 12290:  # RFC 4954 4 minimum
            raise ValueError("max_auth_line_length must be >= 12290")
        mechs = tuple(m.upper() for m in self.auth_mechanisms)
        for m in mechs:
            # RFC 4422 3.1: sasl-mech = 1*20mech-char (upper-case letters, digits, - _)
            if not re.fullmatch(r"[A-Z0-9_-]{1,20}", m):
                raise ValueError(f"bad SASL mechanism name {m!r}")
        object.__setattr__(self, "auth_mechanisms", mechs)
        object.__setattr__(
            self, "forbidden_commands", frozenset(c.upper() for c in self.forbidden_commands)
        )

    @property
    def extensions(self) -> frozenset[str]:
        """Extensions whose MAIL/RCPT parameters are honoured (see grammar.EXTENSIONS)."""
        ext = {"SIZE"}
        if self.eightbitmime:
            ext.add("8BITMIME")
        if self.smtputf8:
            ext.add("SMTPUTF8")
        if self.dsn:
            ext.add("DSN")
        return frozenset(ext)

    def ehlo_lines(self) -> list[str]:
        """The EHLO reply (RFC 5321 4.1.1.1): our name, then the extensions offered now."""
        lines = [self.hostname]
        if self.pipelining:
            lines.append("PIPELINING")  # RFC 2920
        # RFC 1870 4: "SIZE" with no number (or 0) means no fixed maximum.
        lines.append(f"SIZE {self.max_message_size}" if self.max_message_size else "SIZE")
        lines.append("ENHANCEDSTATUSCODES")  # RFC 2034
        if self.eightbitmime:
            lines.append("8BITMIME")  # RFC 6152
        if self.smtputf8:
            lines.append("SMTPUTF8")  # RFC 6531
        if self.chunking:
            lines.append("CHUNKING")  # RFC 3030
        if self.dsn:
            lines.append("DSN")  # RFC 3461
        if self.tls_available and not self.tls_active:
            lines.append("STARTTLS")  # RFC 3207
        if self.auth_mechanisms and (self.tls_active or not self.auth_requires_tls):
            lines.append("AUTH " + " ".join(self.auth_mechanisms))  # RFC 4954 3
        if self.burl and self.chunking:
            # RFC 4468 3: no parameter: URLs of the IMAP server this one trusts (ours).
            lines.append("BURL")
        return lines


class State(enum.Enum):
    GREETING = "greeting"  # send_greeting() not called yet
    REFUSED = "refused"  # greeted with 554: only QUIT (RFC 5321 3.1)
    CONNECTED = "connected"  # no HELO/EHLO yet
    READY = "ready"  # HELO/EHLO done, no transaction
    MAIL = "mail"  # sender accepted
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading dot-terminated data
    BDAT = "bdat"  # chunks under way (RFC 3030)
    AUTH = "auth"  # SASL exchange (RFC 4954)
    TLS_HANDSHAKE = "tls_handshake"  # 220 queued; waiting for starttls_done()
    CLOSED = "closed"


class CloseReason(enum.Enum):
    QUIT = "quit"
    EOF = "eof"  # the peer closed (mid-transaction included: nothing was accepted)
    TOO_MANY_ERRORS = "too_many_errors"
    PROTOCOL_ABUSE = "protocol_abuse"  # forbidden command (HTTP etc.)
    CHUNK_TOO_BIG = "chunk_too_big"  # BDAT chunk over the size limit: not read (RFC 3030 2)
    GREETING = "greeting"  # greeted with 421
    SHELL = "shell"  # close() or a 421 reply from the shell
