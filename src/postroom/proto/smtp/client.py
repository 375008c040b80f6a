"""Sans-IO SMTP client core: server replies in, commands and events out (RFC 5321).

Theory of operation
-------------------
One :class:`SmtpClient` drives one connection to one server. It owns no socket, clock, DNS
or storage: the shell (``net/smtp_out``) feeds it the bytes it reads, writes the bytes it
produces, measures timeouts, and reports what only it can see (end of stream, a timeout, the
TLS handshake). So everything here is testable by feeding bytes, whole or one at a time.

Three verbs, as in h11 and the server core: :meth:`~SmtpClient.receive_data`,
:meth:`~SmtpClient.next_event`, :meth:`~SmtpClient.data_to_send`; actions are methods
(:meth:`~SmtpClient.starttls`, :meth:`~SmtpClient.authenticate`,
:meth:`~SmtpClient.send_message`, :meth:`~SmtpClient.quit`). ``next_event`` returns an event
(a frozen dataclass) or a sentinel: ``NEED_DATA`` (a reply is awaited: read, with the timeout
:attr:`~SmtpClient.timeout`), ``IDLE`` (nothing awaited: your move) or ``CLOSED``.
``NEED_DATA`` and ``CLOSED`` are the very objects of :mod:`postroom.proto.smtp.events`.

The conversation and its events:

1. 220 greeting -> :class:`Greeting`; EHLO is sent by itself. EHLO refused with 500, 501,
   502 or 504 -> HELO (RFC 5321 4.1.4, RFC 1869 4.5). 250 -> :class:`SessionReady` with the
   parsed :class:`Extensions`. A refused greeting or HELO -> :class:`SessionFailed`.
2. ``starttls()``: 220 -> :class:`TlsStart`; the shell upgrades the socket and calls
   ``tls_established()``; the core forgets the extensions and says EHLO again (RFC 3207 4.2)
   -> :class:`SessionReady` with ``tls=True``. Refused -> :class:`StartTlsRefused`.
3. ``authenticate(mechanism)`` with a :mod:`postroom.proto.sasl` client mechanism (PLAIN,
   LOGIN, SCRAM-SHA-256) -> :class:`AuthSucceeded` / :class:`AuthFailed`.
4. ``send_message(envelope, message)``, as often as wanted -> exactly one
   :class:`TransactionResult` each, with a :class:`RecipientResult` per recipient
   (delivered / temporary / permanent, the deciding reply, which step it answered, and
   whether the server said it or it was made up here). Pre-send checks may decide without
   sending anything (also callable alone: :meth:`~SmtpClient.precheck`): bigger than the
   peer's SIZE -> 552 5.3.4; a non-ASCII mailbox (or UTF-8 headers) without SMTPUTF8 ->
   553 5.6.7; an 8-bit body without 8BITMIME is converted to quoted-printable/base64 and
   only when that fails -> 554 5.6.3. With PIPELINING, MAIL + every RCPT + DATA go out in
   one write (RFC 2920 3.1, DATA last); with CHUNKING the message is one ``BDAT n LAST``
   (in the same write when small). RSET is sent only when a transaction was left open on
   the server (MAIL accepted, no end-of-data reply), before the result is reported.
5. ``quit()`` -> :class:`Closed`.

A 421 at any time, garbage (non-numeric, line over ``max_line``, more than ``max_lines``
lines, bytes after the STARTTLS go-ahead), end of stream, ``timed_out()`` or
``tls_failed()`` end the session: the transaction in flight gets its TransactionResult
(undecided recipients fail temporarily with the reply, real or synthetic 421), then
:class:`SessionFailed`. Nothing a server sends raises out of this module; an action in the
wrong state raises ``SmtpUsageError`` (a bug in the shell).

Shell loop (asyncio, simplified)::

    client = SmtpClient("mx.example.org")
    while True:
        event = client.next_event()
        if out := client.data_to_send():
            writer.write(out)
            await writer.drain()
        if event is NEED_DATA:
            try:
                data = await asyncio.wait_for(reader.read(65536), client.timeout)
            except TimeoutError:
                client.timed_out()
            else:
                client.receive_data(data) if data else client.receive_eof()
        elif event is IDLE:
            if jobs:
                client.send_message(*jobs.pop())
            else:
                client.quit()
        elif isinstance(event, SessionReady) and event.extensions.starttls and not event.tls:
            client.starttls()
        elif isinstance(event, TlsStart):
            await writer.start_tls(ssl_context)      # on failure: client.tls_failed()
            client.tls_established()
        elif isinstance(event, TransactionResult):
            record(event.results)
        elif event is CLOSED:
            break                                    # data_to_send() was flushed above

Timeouts are the shell's: :attr:`~SmtpClient.expecting` names the awaited reply and
:data:`TIMEOUTS` maps it to the RFC 5321 4.5.3.2 value (:data:`DATA_BLOCK_TIMEOUT` for each
write of message data).
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Callable, Generator
from functools import lru_cache
from typing import ClassVar

from postroom.proto.buffer import LineTooLong, StreamReader, UnexpectedEOF
from postroom.proto.sasl import ClientMechanism, Failure, Response
from postroom.proto.smtp.client_events import (  # noqa: F401 - re-exported
    _protocol_error,
    _timeout_reply,
    AuthFailed,
    AuthSucceeded,
    BAD_RECIPIENT,
    BAD_SENDER,
    Cause,
    Closed,
    CONNECTION_LOST,
    DATA_BLOCK_TIMEOUT,
    Envelope,
    Event,
    Expect,
    Extensions,
    Greeting,
    IDLE,
    Idle,
    MAX_AUTH_ROUNDS,
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    NEEDS_8BITMIME,
    NEEDS_SMTPUTF8,
    Outcome,
    PIPELINE_BDAT_MAX,
    Recipient,
    RecipientResult,
    SessionFailed,
    SessionReady,
    SIZE_TOO_BIG,
    Stage,
    StartTlsRefused,
    State,
    TIMEOUTS,
    TLS_FAILED,
    TlsStart,
    TransactionResult,
)
from postroom.proto.smtp.client_message import downgrade_8bit, normalize_crlf, orcpt_for
from postroom.proto.smtp.dotstuff import stuff
from postroom.proto.smtp.events import CLOSED, NEED_DATA, Sentinel
from postroom.proto.smtp.grammar import AddressError, parse_address, xtext_encode
from postroom.proto.smtp.replies import (
    MalformedReply,
    Reply,
    SmtpUsageError,
    parse_reply,
    parse_reply_line,
)

__all__ = [
    "CLOSED",
    "DATA_BLOCK_TIMEOUT",
    "IDLE",
    "NEED_DATA",
    "TIMEOUTS",
    "AuthFailed",
    "AuthSucceeded",
    "Cause",
    "Closed",
    "Envelope",
    "Expect",
    "Extensions",
    "Greeting",
    "Outcome",
    "Recipient",
    "RecipientResult",
    "SessionFailed",
    "SessionReady",
    "SmtpClient",
    "Stage",
    "StartTlsRefused",
    "TlsStart",
    "TransactionResult",
    "downgrade_8bit",
    "normalize_crlf",
    "orcpt_for",
]

@lru_cache(maxsize=4096)
def _wire_address(text: str) -> tuple[str, bool] | None:
    """``local@domain`` as sent (A-label domain, re-quoted local part) and whether it needs
    SMTPUTF8 (only a non-ASCII local part does: IDN domains go as A-labels, RFC 6531 3.2);
    None when unusable. Cached: the queue sends to the same addresses over and over."""
    try:
        wire = str(parse_address(text, utf8=True))
    except AddressError:
        return None
    return wire, not wire.isascii()


def _param(value: str) -> str:
    """An ESMTP parameter value must not break the command line (API misuse otherwise)."""
    if not value or not value.isprintable() or any(c in value for c in " =\t"):
        raise SmtpUsageError(f"bad ESMTP parameter value {value!r}")
    return value


def _command(text: str) -> bytes:
    return (text + "\r\n").encode("utf-8")


def _failure_outcome(reply: Reply, *, rcpt: bool = False) -> Outcome:
    """4xx temporary, 5xx permanent; but 552 to RCPT is temporary (RFC 5321 4.5.3.1.10)."""
    return (
        Outcome.PERMANENT
        if reply.code >= 500 and not (rcpt and reply.code == 552)
        else (Outcome.TEMPORARY)
    )


_STAGES = {
    Expect.MAIL: Stage.MAIL,
    Expect.RCPT: Stage.RCPT,
    Expect.DATA: Stage.DATA,
    Expect.DATA_END: Stage.END_OF_DATA,
}


class _Transaction:
    """Book-keeping of one message: wire forms, replies so far, per-recipient results."""

    __slots__ = (
        "accepted",
        "completed",
        "converted",
        "discarding",
        "envelope",
        "final",
        "mail_line",
        "mail_ok",
        "next_rcpt",
        "payload",
        "rcpt_lines",
        "rcpt_replies",
        "rcpt_slots",
        "results",
        "use_bdat",
    )

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.results: list[RecipientResult | None] = [None] * len(envelope.recipients)
        self.mail_line = b""
        self.rcpt_lines: list[bytes] = []  # RCPT commands, in order
        self.rcpt_slots: list[int] = []  # their recipient index
        self.payload = b""  # dot-stuffed data, or "BDAT n LAST" + message
        self.use_bdat = False
        self.converted = False
        self.mail_ok = False
        self.next_rcpt = 0  # next RCPT to write (one at a time without PIPELINING)
        self.rcpt_replies = 0
        self.accepted: list[int] = []  # recipients with a 2xx RCPT reply
        self.discarding = False  # DATA accepted with no recipient: a lone dot was sent
        self.completed = False  # the server's transaction is over (no RSET needed)
        self.final: tuple[Reply, Stage, Cause] | None = None

    def decide(
        self, index: int, outcome: Outcome, reply: Reply, stage: Stage, cause: Cause
    ) -> None:
        if self.results[index] is None:
            recipient = self.envelope.recipients[index]
            self.results[index] = RecipientResult(recipient, outcome, reply, stage, cause)

    def decide_rest(self, reply: Reply, stage: Stage, cause: Cause, *, rcpt: bool = False) -> None:
        outcome = _failure_outcome(reply, rcpt=rcpt)
        for index in range(len(self.results)):
            self.decide(index, outcome, reply, stage, cause)
        if self.final is None:
            self.final = (reply, stage, cause)

    def result(self, dsn: bool) -> TransactionResult:
        assert self.final is not None  # every path that ends a transaction sets it
        reply, stage, cause = self.final
        self.decide_rest(reply, stage, cause)
        results = tuple(r for r in self.results if r is not None)
        return TransactionResult(results, reply, stage, cause, self.converted, dsn)


class SmtpClient:
    """One outbound SMTP session; see the module docstring for the protocol and a loop."""

    def __init__(
        self,
        local_hostname: str,
        *,
        tls: bool = False,
        use_pipelining: bool = True,
        use_chunking: bool = True,
        max_line: int = MAX_REPLY_LINE,
        max_lines: int = MAX_REPLY_LINES,
        pipeline_bdat_max: int = PIPELINE_BDAT_MAX,
    ) -> None:
        """``local_hostname``: our EHLO name (domain or address literal). ``tls``: the
        connection is already encrypted (implicit TLS, RFC 8314)."""
        if (
            not local_hostname.isascii()
            or not local_hostname.isprintable()
            or (not local_hostname or " " in local_hostname)
        ):
            raise SmtpUsageError("local_hostname must be a printable ASCII name without spaces")
        self.local_hostname = local_hostname
        self.tls = tls
        self.use_pipelining = use_pipelining
        self.use_chunking = use_chunking
        self.max_line = max_line
        self.max_lines = max_lines
        self.pipeline_bdat_max = pipeline_bdat_max
        self.state = State.GREETING
        self.extensions: Extensions | None = None
        self.authenticated = False
        self._reader = StreamReader()
        self._replies = self._read_replies()
        self._expect: deque[Expect] = deque([Expect.GREETING])
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._tx: _Transaction | None = None
        self._held: TransactionResult | None = None  # reported after the RSET reply
        self._mech: ClientMechanism | None = None
        self._auth_problem = ""
        self._auth_rounds = 0

    # --- the three verbs -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is State.TLS_HANDSHAKE:
            raise SmtpUsageError("receive_data during the TLS handshake")
        if self.state is not State.CLOSED:  # after the end nothing is worth buffering
            self._reader.feed_data(data)

    def receive_eof(self) -> None:
        self._reader.feed_eof()

    def data_to_send(self) -> bytes:
        """Bytes to write now (often empty). Call after every action and every event."""
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | Sentinel | Idle:
        while not self._events:
            if self.state is State.CLOSED:
                return CLOSED
            if self.state is State.TLS_HANDSHAKE:
                return IDLE
            if not self._expect and not self._reader.buffer and not self._reader.eof:
                return IDLE
            try:
                reply = next(self._replies)
            except UnexpectedEOF:
                self._on_eof()
            except LineTooLong:
                self._fail(_protocol_error("reply line too long"), Cause.PROTOCOL_ERROR)
            except MalformedReply as exc:
                self._fail(_protocol_error(str(exc)[:200]), Cause.PROTOCOL_ERROR)
            else:
                if reply is None:
                    return NEED_DATA if self._expect else IDLE
                self._dispatch(reply)
        return self._events.popleft()

    # --- for the shell ---------------------------------------------------------------------

    @property
    def expecting(self) -> Expect | None:
        """The reply awaited next (None when idle)."""
        return self._expect[0] if self._expect else None

    @property
    def timeout(self) -> float | None:
        """The RFC 5321 4.5.3.2 timeout for the read in progress (None when idle)."""
        return TIMEOUTS[self._expect[0]] if self._expect else None

    @property
    def idle(self) -> bool:
        """READY, nothing in flight, no event pending: actions are allowed."""
        return self.state is State.READY and not self._expect and not self._events

    def timed_out(self) -> None:
        """The shell's read timer fired: end the session (no QUIT: the peer is stuck)."""
        if self.state is not State.CLOSED:
            self._fail(_timeout_reply(self.expecting), Cause.TIMEOUT, polite=False)

    def tls_failed(self) -> None:
        """The handshake after TlsStart failed: the connection is unusable."""
        if self.state is not State.CLOSED:
            self._fail(TLS_FAILED, Cause.TLS_FAILED, polite=False)

    # --- actions -----------------------------------------------------------------------------

    def _require_idle(self, what: str) -> Extensions:
        if not self.idle or self.extensions is None:
            raise SmtpUsageError(f"{what} is only allowed when the session is idle")
        return self.extensions

    def starttls(self) -> None:
        """Ask for TLS (RFC 3207); TlsStart or StartTlsRefused follows."""
        ext = self._require_idle("STARTTLS")
        if self.tls or not ext.starttls:
            raise SmtpUsageError("STARTTLS is not offered, or TLS is already active")
        self.state = State.STARTTLS
        self._send(b"STARTTLS\r\n", Expect.STARTTLS)

    def tls_established(self) -> None:
        """The handshake is done: forget all we knew and say EHLO again (RFC 3207 4.2)."""
        if self.state is not State.TLS_HANDSHAKE:
            raise SmtpUsageError("tls_established without TlsStart")
        self._reader.discard()
        self.tls = True
        self.extensions = None
        self.state = State.EHLO
        self._send(_command(f"EHLO {self.local_hostname}"), Expect.EHLO)

    def authenticate(self, mechanism: ClientMechanism) -> None:
        """One SASL exchange (RFC 4954). The initial response rides on the AUTH line ("="
        when empty), except for LOGIN, whose initial response not every server accepts."""
        ext = self._require_idle("AUTH")
        name = mechanism.name.upper()
        if self.authenticated:
            raise SmtpUsageError("already authenticated")  # RFC 4954 4
        if name not in ext.auth:
            raise SmtpUsageError(f"the server does not offer AUTH {name}")
        first = mechanism.start(initial=name != "LOGIN")
        line = f"AUTH {name}"
        if first.data is not None:
            line += " " + (base64.b64encode(first.data).decode("ascii") or "=")
        self._mech, self._auth_problem, self._auth_rounds = mechanism, "", 0
        self.state = State.AUTH
        self._send(_command(line), Expect.AUTH)

    def quit(self) -> None:
        if not self.idle:
            raise SmtpUsageError("QUIT is only allowed when the session is idle")
        self.state = State.QUITTING
        self._send(b"QUIT\r\n", Expect.QUIT)

    def precheck(self, envelope: Envelope, message: bytes) -> Reply | None:
        """The pre-send checks alone: the reply refusing the whole message (552 5.3.4,
        553 5.6.7, 554 5.6.3, unusable addresses), or None when it may be sent."""
        tx = self._prepare(envelope, message)
        return tx.final[0] if tx.final is not None and not tx.rcpt_lines else None

    def send_message(self, envelope: Envelope, message: bytes) -> None:
        """Send one message (bytes as stored; line ends are normalised to CRLF here). A
        TransactionResult follows, at once when the pre-send checks refuse it."""
        ext = self._require_idle("send_message")
        if not envelope.recipients:
            raise SmtpUsageError("an envelope needs at least one recipient")
        tx = self._prepare(envelope, message)
        if not tx.rcpt_lines:
            self._events.append(tx.result(ext.dsn))
            return
        self._tx = tx
        self.state = State.TRANSACTION
        if not (ext.pipelining and self.use_pipelining):
            self._send(tx.mail_line, Expect.MAIL)
            return
        # RFC 2920 3.1: MAIL, every RCPT, then DATA last, in one write. A small BDAT may
        # join (RFC 3030 4.2 allows pipelining BDAT).
        batch = [tx.mail_line, *tx.rcpt_lines]
        self._expect.append(Expect.MAIL)
        self._expect.extend([Expect.RCPT] * len(tx.rcpt_lines))
        tx.next_rcpt = len(tx.rcpt_lines)
        if not tx.use_bdat:
            batch.append(b"DATA\r\n")
            self._expect.append(Expect.DATA)
        elif len(tx.payload) <= self.pipeline_bdat_max:
            batch.append(tx.payload)
            self._expect.append(Expect.DATA_END)
        self._out.append(b"".join(batch))

    def _prepare(self, envelope: Envelope, message: bytes) -> _Transaction:
        """Pre-send checks and wire forms. ``tx.rcpt_lines`` stays empty when nothing may be
        sent (``tx.final`` says why)."""
        ext = self.extensions
        if ext is None:
            raise SmtpUsageError("no EHLO/HELO yet")
        tx = _Transaction(envelope)
        sender = ("", False) if envelope.sender == "" else _wire_address(envelope.sender)
        if sender is None:
            tx.decide_rest(BAD_SENDER, Stage.PRECHECK, Cause.LOCAL)
            return tx
        if sender[1] and not ext.smtputf8:  # RFC 6531 3.7.4 (non-ASCII local part)
            tx.decide_rest(NEEDS_SMTPUTF8, Stage.PRECHECK, Cause.LOCAL)
            return tx
        use_utf8 = ext.smtputf8 and (envelope.smtputf8 or sender[1])
        wires: list[tuple[int, str]] = []
        for index, rcpt in enumerate(envelope.recipients):
            parsed = _wire_address(rcpt.address)
            if parsed is None:
                tx.decide(index, Outcome.PERMANENT, BAD_RECIPIENT, Stage.PRECHECK, Cause.LOCAL)
            elif parsed[1] and not ext.smtputf8:
                tx.decide(index, Outcome.PERMANENT, NEEDS_SMTPUTF8, Stage.PRECHECK, Cause.LOCAL)
            else:
                wires.append((index, parsed[0]))
                use_utf8 = use_utf8 or parsed[1]
        body = normalize_crlf(message)
        end = body.find(b"\r\n\r\n")
        if envelope.smtputf8 and not ext.smtputf8 and not body[: max(end, 0)].isascii():
            # UTF-8 headers cannot go to a server without SMTPUTF8 (RFC 6532 3.2); a message
            # flagged SMTPUTF8 whose headers are plain ASCII may go without it.
            tx.decide_rest(NEEDS_SMTPUTF8, Stage.PRECHECK, Cause.LOCAL)
            return tx
        eight_bit = not body.isascii()
        if eight_bit and not (ext.eightbitmime or use_utf8):
            converted = downgrade_8bit(body)  # RFC 6152 3: never 8-bit to a 7-bit server
            if converted is None:
                tx.decide_rest(NEEDS_8BITMIME, Stage.PRECHECK, Cause.LOCAL)
                return tx
            body, eight_bit, tx.converted = converted, False, True
        if ext.size and len(body) > ext.size:  # RFC 1870 6.1
            limit = SIZE_TOO_BIG.with_text(f"{SIZE_TOO_BIG.text} (limit {ext.size} bytes)")
            tx.decide_rest(limit, Stage.PRECHECK, Cause.LOCAL)
            return tx
        if not wires:  # every recipient refused here
            tx.final = next((r.reply, r.stage, r.cause) for r in tx.results if r is not None)
            return tx

        mail = f"MAIL FROM:<{sender[0]}>"
        if ext.size is not None:
            mail += f" SIZE={len(body)}"  # RFC 1870 3
        if eight_bit and ext.eightbitmime:
            mail += " BODY=8BITMIME"  # RFC 6152 2
        if use_utf8:
            mail += " SMTPUTF8"  # RFC 6531 3.4
        if ext.dsn and envelope.ret:  # RFC 3461 4.3
            mail += f" RET={_param(envelope.ret)}"
        if ext.dsn and envelope.envid:  # RFC 3461 4.4
            mail += f" ENVID={xtext_encode(envelope.envid)}"
        tx.mail_line = _command(mail)
        for index, wire in wires:
            rcpt = envelope.recipients[index]
            line = f"RCPT TO:<{wire}>"
            if ext.dsn and rcpt.notify:  # RFC 3461 4.1
                line += f" NOTIFY={_param(','.join(rcpt.notify))}"
            if ext.dsn and rcpt.orcpt:  # RFC 3461 4.2
                line += f" ORCPT={_param(rcpt.orcpt)}"
            tx.rcpt_lines.append(_command(line))
            tx.rcpt_slots.append(index)
        tx.use_bdat = ext.chunking and self.use_chunking
        # RFC 3030 2: BDAT carries the message as is; DATA needs dot-stuffing.
        tx.payload = b"BDAT %d LAST\r\n" % len(body) + body if tx.use_bdat else stuff(body)
        return tx

    # --- replies -----------------------------------------------------------------------------

    def _send(self, data: bytes, expect: Expect) -> None:
        self._out.append(data)
        self._expect.append(expect)

    def _read_replies(self) -> Generator[Reply | None, None, None]:
        """Yield None while a reply is incomplete, then the Reply. LineTooLong,
        MalformedReply and UnexpectedEOF escape; the session ends with them."""
        reader = self._reader
        while True:
            line = yield from reader.read_line(self.max_line)
            if len(line) < 4 or line[3] != 0x2D:  # not "xyz-": a one-line reply
                yield parse_reply([line])
                continue
            lines = [line]
            parse_reply_line(line)  # garbage must not pile up as "continuation lines"
            while True:
                line = yield from reader.read_line(self.max_line)
                lines.append(line)
                if len(line) < 4 or line[3] != 0x2D:
                    break
                if len(lines) >= self.max_lines:
                    raise MalformedReply(f"reply longer than {self.max_lines} lines")
                parse_reply_line(line)
            yield parse_reply(lines)

    def _dispatch(self, reply: Reply) -> None:
        if not self._expect:
            # Only a 421 may come unasked (RFC 5321 3.8: the server closes an idle link).
            if reply.code == 421:
                self._fail(reply, Cause.REPLY, polite=False)
            else:
                self._fail(_protocol_error("unexpected reply"), Cause.PROTOCOL_ERROR)
            return
        expect = self._expect.popleft()
        if reply.code == 421 and expect is not Expect.QUIT:
            self._fail(reply, Cause.REPLY, polite=False, during=expect)
        elif reply.is_intermediate and expect not in (Expect.DATA, Expect.AUTH):
            self._fail(
                _protocol_error(f"unexpected {reply.code} reply"),
                Cause.PROTOCOL_ERROR,
                during=expect,
            )
        else:
            self._HANDLERS[expect](self, reply)

    def _fail(
        self, reply: Reply, cause: Cause, *, polite: bool = True, during: Expect | None = None
    ) -> None:
        """End the session: settle the transaction in flight, report, maybe say QUIT."""
        if during is None:
            during = self.expecting
        if self._tx is not None:
            tx, self._tx = self._tx, None
            tx.decide_rest(
                reply,
                _STAGES.get(during, Stage.CONNECTION) if during else Stage.CONNECTION,
                cause,
                rcpt=during is Expect.RCPT,
            )
            self._events.append(tx.result(self._dsn))
        if self._held is not None:
            self._events.append(self._held)
            self._held = None
        self._expect.clear()
        # RFC 5321 3.1, 4.1.1.10: after a refusal the client SHOULD still send QUIT; not
        # after 421 (the server is gone), garbage, end of stream or a timeout.
        if polite and cause is Cause.REPLY and not self._reader.eof:
            self._out.append(b"QUIT\r\n")
        self.state = State.CLOSED
        self._events.append(SessionFailed(reply, cause, during))

    def _on_eof(self) -> None:
        if self._expect and self._expect[0] is Expect.QUIT:
            self._expect.clear()
            self.state = State.CLOSED
            self._events.append(Closed(None))
        else:
            self._fail(CONNECTION_LOST, Cause.CONNECTION_LOST, polite=False)

    @property
    def _dsn(self) -> bool:
        return self.extensions is not None and self.extensions.dsn

    # --- session handlers ------------------------------------------------------------------

    def _on_greeting(self, reply: Reply) -> None:
        if reply.code != 220:  # RFC 5321 3.1: 554 (or 4xx) means no service here
            self._fail(reply, Cause.REPLY, during=Expect.GREETING)
            return
        self._events.append(Greeting(reply))
        self.state = State.EHLO
        self._send(_command(f"EHLO {self.local_hostname}"), Expect.EHLO)

    def _on_ehlo(self, reply: Reply) -> None:
        if reply.is_positive:
            self._ready(reply, Extensions.from_ehlo(reply))
        elif reply.code in (500, 501, 502, 504):  # RFC 5321 4.1.4, RFC 1869 4.5
            self._send(_command(f"HELO {self.local_hostname}"), Expect.HELO)
        else:
            self._fail(reply, Cause.REPLY, during=Expect.EHLO)

    def _on_helo(self, reply: Reply) -> None:
        if reply.is_positive:
            self._ready(reply, Extensions.from_helo(reply))
        else:
            self._fail(reply, Cause.REPLY, during=Expect.HELO)

    def _ready(self, reply: Reply, extensions: Extensions) -> None:
        self.extensions = extensions
        self.state = State.READY
        self._events.append(SessionReady(reply, extensions, self.tls))

    def _on_starttls(self, reply: Reply) -> None:
        if reply.code != 220:
            self.state = State.READY
            self._events.append(StartTlsRefused(reply))
        elif self._reader.buffer:
            # Bytes after the go-ahead would be taken as if they came through TLS: the
            # client-side twin of CVE-2011-0411 (response injection). Refuse.
            self._fail(
                _protocol_error("data after the STARTTLS reply"),
                Cause.PROTOCOL_ERROR,
                during=Expect.STARTTLS,
            )
        else:
            self.state = State.TLS_HANDSHAKE
            self._events.append(TlsStart(reply))

    def _on_auth(self, reply: Reply) -> None:
        mech = self._mech
        assert mech is not None
        if reply.code == 334:  # RFC 4954 4: a base64 challenge
            self._auth_rounds += 1
            if self._auth_rounds > MAX_AUTH_ROUNDS:
                self._fail(
                    _protocol_error("endless AUTH exchange"),
                    Cause.PROTOCOL_ERROR,
                    during=Expect.AUTH,
                )
                return
            try:
                challenge = base64.b64decode(reply.text.strip(), validate=True)
            except (binascii.Error, ValueError):
                challenge = None
            if challenge is None or self._auth_problem:
                step: Response | Failure = Failure(self._auth_problem or "malformed challenge")
            else:
                step = mech.respond(challenge)
            if isinstance(step, Response) and step.data is not None:
                self._send(_command(base64.b64encode(step.data).decode("ascii")), Expect.AUTH)
            else:
                self._auth_problem = step.reason if isinstance(step, Failure) else "no answer"
                self._send(b"*\r\n", Expect.AUTH)  # RFC 4954 4: cancel
            return
        self._mech = None
        self.state = State.READY
        if reply.code != 235 or self._auth_problem:
            self._events.append(AuthFailed(reply, mech.name, self._auth_problem))
            return
        final = mech.finish(None)
        if isinstance(final, Failure):  # SCRAM: the server never proved it knows the key
            self._events.append(AuthFailed(reply, mech.name, final.reason))
        else:
            self.authenticated = True
            self._events.append(AuthSucceeded(reply, mech.name))

    def _on_rset(self, reply: Reply) -> None:
        if not reply.is_positive:
            self._fail(reply, Cause.REPLY, during=Expect.RSET)
            return
        self.state = State.READY
        if self._held is not None:
            self._events.append(self._held)
            self._held = None

    def _on_quit(self, reply: Reply) -> None:
        self._expect.clear()
        self.state = State.CLOSED
        self._events.append(Closed(reply))

    # --- transaction handlers --------------------------------------------------------------

    def _on_mail(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        if not reply.is_positive:
            tx.decide_rest(reply, Stage.MAIL, Cause.REPLY)
            self._maybe_finish(tx)
            return
        tx.mail_ok = True
        if tx.next_rcpt == 0:  # not pipelined: the first RCPT now
            self._send(tx.rcpt_lines[0], Expect.RCPT)
            tx.next_rcpt = 1

    def _on_rcpt(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        index = tx.rcpt_slots[tx.rcpt_replies]
        tx.rcpt_replies += 1
        if tx.mail_ok and reply.is_positive:
            tx.accepted.append(index)
        elif tx.mail_ok:
            tx.decide(index, _failure_outcome(reply, rcpt=True), reply, Stage.RCPT, Cause.REPLY)
        if tx.rcpt_replies < len(tx.rcpt_lines):
            if tx.next_rcpt == tx.rcpt_replies:  # not pipelined: next RCPT now
                self._send(tx.rcpt_lines[tx.next_rcpt], Expect.RCPT)
                tx.next_rcpt += 1
            return
        if not tx.accepted:  # every RCPT refused: the last refusal speaks for the lot
            if tx.final is None:
                last = next(r for r in reversed(tx.results) if r is not None)
                tx.final = (last.reply, last.stage, last.cause)
        elif not self._expect:  # the data is not on its way yet (not pipelined, big BDAT)
            self._send(
                tx.payload if tx.use_bdat else b"DATA\r\n",
                Expect.DATA_END if tx.use_bdat else Expect.DATA,
            )
        self._maybe_finish(tx)

    def _on_data(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        if reply.code == 354:
            if tx.accepted:
                self._send(tx.payload, Expect.DATA_END)
            else:
                # RFC 2920 3.1: DATA accepted although no RCPT was: send an empty message
                # (a lone dot) and ignore the reply.
                tx.discarding = True
                self._send(b".\r\n", Expect.DATA_END)
        elif reply.is_positive:
            self._fail(
                _protocol_error("DATA answered with 2xx"), Cause.PROTOCOL_ERROR, during=Expect.DATA
            )
            return
        else:
            for index in tx.accepted:
                tx.decide(index, _failure_outcome(reply), reply, Stage.DATA, Cause.REPLY)
            if tx.final is None or tx.accepted:
                tx.final = (reply, Stage.DATA, Cause.REPLY)
        self._maybe_finish(tx)

    def _on_data_end(self, reply: Reply) -> None:
        tx = self._tx
        assert tx is not None
        # After the final dot the server's transaction is over whatever it answered; after a
        # refused BDAT it may not be (RFC 3030 2), hence RSET.
        tx.completed = tx.discarding or not tx.use_bdat or reply.is_positive
        if tx.accepted and not tx.discarding:
            outcome = Outcome.DELIVERED if reply.is_positive else _failure_outcome(reply)
            for index in tx.accepted:
                tx.decide(index, outcome, reply, Stage.END_OF_DATA, Cause.REPLY)
            tx.final = (reply, Stage.END_OF_DATA, Cause.REPLY)
        self._maybe_finish(tx)

    def _maybe_finish(self, tx: _Transaction) -> None:
        """After each transaction reply: once nothing more is awaited, report, sending RSET
        first when the server still holds the transaction (RFC 5321 4.1.1.5)."""
        if self._expect or self._tx is not tx:
            return
        self._tx = None
        result = tx.result(self._dsn)
        if tx.mail_ok and not tx.completed:
            self._held = result
            self._send(b"RSET\r\n", Expect.RSET)
        else:
            self.state = State.READY
            self._events.append(result)

    _HANDLERS: ClassVar[dict[Expect, Callable[[SmtpClient, Reply], None]]] = {
        Expect.GREETING: _on_greeting,
        Expect.EHLO: _on_ehlo,
        Expect.HELO: _on_helo,
        Expect.STARTTLS: _on_starttls,
        Expect.AUTH: _on_auth,
        Expect.MAIL: _on_mail,
        Expect.RCPT: _on_rcpt,
        Expect.DATA: _on_data,
        Expect.DATA_END: _on_data_end,
        Expect.RSET: _on_rset,
        Expect.QUIT: _on_quit,
    }
