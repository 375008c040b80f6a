"""Values, events and timeouts of the SMTP client core (see ``client.py``).

Split from ``client.py`` so the state machine reads on its own: everything here is data
(frozen dataclasses and enums) that the shell and the queue worker also use.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from postroom.proto.smtp.grammar import parse_ehlo_reply
from postroom.proto.smtp.replies import Reply

# RFC 5321 4.5.3.1.5 caps a reply line at 512 octets; real servers exceed it a little, so be
# generous, but a server streaming garbage must still hit a wall quickly.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200  # an EHLO reply has ~15 lines
# With PIPELINING + CHUNKING, messages up to this size go in the same write as the envelope
# (one round trip); larger ones wait for the RCPT replies, so a refused envelope does not
# cost an upload.
PIPELINE_BDAT_MAX = 256 * 1024
MAX_AUTH_ROUNDS = 8  # SCRAM needs 2 challenges; a server looping on 334 is cut off


class Expect(enum.Enum):
    """The reply the core waits for; the shell picks the read timeout from it."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the 354 go-ahead
    DATA_END = "data-end"  # the reply after the final dot or BDAT LAST
    RSET = "rset"
    QUIT = "quit"


# RFC 5321 4.5.3.2, seconds. EHLO, STARTTLS, AUTH, RSET, QUIT have no RFC value: 5 minutes.
TIMEOUTS: dict[Expect, float] = {
    Expect.GREETING: 300.0,  # 4.5.3.2.1 initial 220 message
    Expect.EHLO: 300.0,
    Expect.HELO: 300.0,
    Expect.STARTTLS: 300.0,
    Expect.AUTH: 300.0,
    Expect.MAIL: 300.0,  # 4.5.3.2.2
    Expect.RCPT: 300.0,  # 4.5.3.2.3
    Expect.DATA: 120.0,  # 4.5.3.2.4 DATA initiation
    Expect.DATA_END: 600.0,  # 4.5.3.2.6 DATA termination
    Expect.RSET: 300.0,
    Expect.QUIT: 300.0,
}
DATA_BLOCK_TIMEOUT = 180.0  # 4.5.3.2.5: each write of message data


class Idle(enum.Enum):
    """Sentinel: no reply awaited and no event pending; call an action."""

    IDLE = "IDLE"


IDLE = Idle.IDLE


class Stage(enum.Enum):
    """Which step a reply answered (for "in reply to RCPT TO command" in a DSN)."""

    PRECHECK = "precheck"  # decided here, nothing sent
    CONNECTION = "connection"  # greeting, EHLO, STARTTLS, AUTH, RSET, or no reply at all
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end-of-data"


class Cause(enum.Enum):
    """Where a result's reply came from (the queue maps these to its TransportError)."""

    REPLY = "reply"  # the server said it
    LOCAL = "local"  # a pre-send check or an unusable address; nothing was sent
    PROTOCOL_ERROR = "protocol-error"  # the server sent garbage
    CONNECTION_LOST = "connection-lost"  # end of stream before the reply
    TIMEOUT = "timeout"  # the shell stopped waiting
    TLS_FAILED = "tls-failed"  # the shell's TLS handshake failed


class Outcome(enum.Enum):
    DELIVERED = "delivered"  # the server took responsibility (2xx after the data)
    TEMPORARY = "temporary"  # retry later
    PERMANENT = "permanent"  # bounce


# Synthetic replies. Everything that ends the session is a 421, so that the code alone says
# "temporary"; enhanced codes per RFC 3463 (X.4.2 bad connection, X.5.0 protocol error).
CONNECTION_LOST = Reply(421, "4.4.2", "Connection closed by the server")
TLS_FAILED = Reply(421, "4.7.5", "TLS negotiation failed")  # X.7.5 cryptographic failure
SIZE_TOO_BIG = Reply(552, "5.3.4", "Message too big for the receiving server")  # RFC 1870
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Receiving server does not support SMTPUTF8")  # RFC 6531
NEEDS_8BITMIME = Reply(  # RFC 6152 3: no 8-bit data to a server without 8BITMIME
    554, "5.6.3", "Receiving server does not support 8BITMIME and conversion failed"
)
BAD_SENDER = Reply(553, "5.1.7", "Unusable sender address")
BAD_RECIPIENT = Reply(553, "5.1.3", "Unusable recipient address")


def _protocol_error(detail: str) -> Reply:
    return Reply(421, "4.5.0", f"Protocol error: {detail}")


def _timeout_reply(expect: Expect | None) -> Reply:
    return Reply(421, "4.4.2", f"Timed out waiting for the {expect.value if expect else ''} reply")


# --- values and events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the server offered in its EHLO reply (RFC 5321 4.1.1.1)."""

    server_name: str
    esmtp: bool  # False after the HELO fallback: no extension may be used
    keywords: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    size: int | None = None  # RFC 1870: None = not offered, 0 = no fixed limit
    pipelining: bool = False  # RFC 2920
    eightbitmime: bool = False  # RFC 6152
    smtputf8: bool = False  # RFC 6531
    chunking: bool = False  # RFC 3030
    dsn: bool = False  # RFC 3461
    starttls: bool = False  # RFC 3207
    enhancedstatuscodes: bool = False  # RFC 2034
    auth: frozenset[str] = frozenset()  # RFC 4954 mechanisms, upper case

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Extensions:
        name, kw = parse_ehlo_reply(reply)
        size: int | None = None
        if "SIZE" in kw:
            first = kw["SIZE"].split(" ", 1)[0]
            # RFC 1870 4: SIZE without a number (or 0) means no fixed maximum.
            size = int(first) if first.isascii() and first.isdigit() and len(first) <= 20 else 0
        return cls(
            server_name=name,
            esmtp=True,
            keywords=kw,
            size=size,
            pipelining="PIPELINING" in kw,
            eightbitmime="8BITMIME" in kw,
            smtputf8="SMTPUTF8" in kw,
            chunking="CHUNKING" in kw,
            dsn="DSN" in kw,
            starttls="STARTTLS" in kw,
            enhancedstatuscodes="ENHANCEDSTATUSCODES" in kw,
            auth=frozenset(kw.get("AUTH", "").upper().split()),
        )

    @classmethod
    def from_helo(cls, reply: Reply) -> Extensions:
        return cls(server_name=reply.lines[0].split(" ", 1)[0], esmtp=False)


@dataclass(frozen=True, slots=True)
class Recipient:
    """A forward-path with its RFC 3461 parameters, sent only when the server offers DSN.

    ``notify`` as the server core parsed it (``RcptParams.notify``): ("NEVER",) or some of
    SUCCESS, FAILURE, DELAY. ``orcpt`` is the raw ORCPT value ("rfc822;bob+2Bx@example.org"),
    relayed verbatim (RFC 3461 4.2); :func:`orcpt_for` makes one for a new message.
    """

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """MAIL FROM and RCPT TOs of one message; ``sender`` "" is the null reverse-path.

    ``ret`` ("FULL"/"HDRS") and ``envid`` (decoded; xtext-encoded here) are the RFC 3461 MAIL
    parameters; ``smtputf8`` says the message came with SMTPUTF8 (headers may be UTF-8).
    """

    sender: str
    recipients: tuple[Recipient, ...]
    ret: str | None = None
    envid: str | None = None
    smtputf8: bool = False

    @classmethod
    def simple(cls, sender: str, recipients: Iterable[str]) -> Envelope:
        return cls(sender, tuple(Recipient(r) for r in recipients))


@dataclass(frozen=True, slots=True)
class Greeting:
    """The 220 banner arrived (EHLO is on its way)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class SessionReady:
    """EHLO (or HELO) succeeded: actions are allowed."""

    reply: Reply
    extensions: Extensions
    tls: bool


@dataclass(frozen=True, slots=True)
class TlsStart:
    """The server agreed to STARTTLS: handshake now, then ``tls_established()``."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class StartTlsRefused:
    """STARTTLS refused; the session goes on in clear (or the shell quits)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthSucceeded:
    reply: Reply
    mechanism: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """``reason``: the mechanism's complaint (e.g. bad SCRAM server signature), else ""."""

    reply: Reply
    mechanism: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: Recipient
    outcome: Outcome
    reply: Reply  # the deciding reply (the end-of-data reply for delivered recipients)
    stage: Stage
    cause: Cause


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """The end of one ``send_message``: one result per recipient, in envelope order.

    ``reply``/``stage``/``cause`` are what ended the transaction as a whole;
    ``converted_8bit`` says the body was re-encoded for a server without 8BITMIME; ``dsn``
    says the server offered DSN (if not, RFC 3461 4.2 wants a "relayed" DSN for recipients
    that asked NOTIFY=SUCCESS).
    """

    results: tuple[RecipientResult, ...]
    reply: Reply
    stage: Stage
    cause: Cause
    converted_8bit: bool = False
    dsn: bool = False

    @property
    def delivered(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.DELIVERED)


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session is over. Flush ``data_to_send()`` (a polite QUIT when the connection is
    still usable), then close. ``during``: the reply that was awaited, if any."""

    reply: Reply
    cause: Cause
    during: Expect | None


@dataclass(frozen=True, slots=True)
class Closed:
    """QUIT was answered (``reply``), or the server closed after QUIT (None)."""

    reply: Reply | None


Event = (
    Greeting
    | SessionReady
    | TlsStart
    | StartTlsRefused
    | AuthSucceeded
    | AuthFailed
    | TransactionResult
    | SessionFailed
    | Closed
)


class State(enum.Enum):
    GREETING = "greeting"
    EHLO = "ehlo"
    READY = "ready"
    STARTTLS = "starttls"
    TLS_HANDSHAKE = "tls-handshake"
    AUTH = "auth"
    TRANSACTION = "transaction"
    QUITTING = "quitting"
    CLOSED = "closed"
