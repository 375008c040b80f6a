"""The sans-IO SMTP server connection (RFC 5321 with ESMTP extensions).

Theory of operation
===================

This module owns one thing: the server side of one SMTP connection as a state machine.
Bytes go in (``receive_data``), events come out (``next_event``), reply bytes come out
(``data_to_send``). It never touches a socket, a clock, DNS or storage; everything that
needs one of those is a *decision* handed to the shell as an event.

States (``conn.state``)::

    GREETING --send_greeting(220)--> CONNECTED --HELO/EHLO accepted--> READY
    GREETING --send_greeting(554)--> REFUSED   (only QUIT works, RFC 5321 3.1)
    READY --MAIL accepted--> MAIL --RCPT accepted--> RCPT --DATA--> DATA --end--> READY
                                                     RCPT --BDAT--> BDAT --BDAT LAST--> READY
    READY --AUTH--> AUTH (334 round trips) --235/535/501--> READY
    CONNECTED/READY --STARTTLS accepted--> TLS_HANDSHAKE --starttls_done()--> CONNECTED
    any --QUIT / 421 / EOF / too many errors / close()--> CLOSED
    RSET and an accepted EHLO go back to READY from MAIL/RCPT/BDAT.

Who decides what:

* The core alone answers everything that needs no outside knowledge: syntax (500/501),
  sequence (503), unknown commands, unknown parameters (555), line and size limits,
  recipient limit (452 4.5.3), NOOP, RSET, HELP, VRFY (252), EXPN (502), QUIT, the SASL
  framing (base64, ``*``, line length), the DATA/BDAT framing, and the smuggling checks
  (bare CR/LF → 554 5.6.0, NUL → 554 5.6.0; the message is read to its real end first).
* The shell decides HELO/EHLO, STARTTLS, AUTH steps, MAIL, RCPT and the end of data
  (events.py has the table of events and the methods that answer them). While a decision
  is pending nothing else is parsed, so replies leave in command order even when the
  client pipelines (RFC 2920); the shell may take its time.
* Every 4xx/5xx reply counts as an error (shell refusals included, so RCPT harvesting is
  bounded); at ``max_errors`` the core sends 421 4.7.0 and closes. The count restarts
  after each accepted message. 452 4.5.3 (too many recipients) does not count.

Driving it (the whole asyncio shell loop, minus policy)::

    conn = ServerConnection(ServerConfig(hostname="mx.example.org", max_message_size=50 << 20))
    conn.send_greeting()                     # early talker: see receive_data/early_talker
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            writer.write(conn.data_to_send())
            conn.receive_data(await reader.read(65536))    # b"" means EOF
        elif event is CLOSED:
            writer.write(conn.data_to_send()); break
        elif isinstance(event, StartTls):
            conn.accept(); writer.write(conn.data_to_send()); await tls_handshake()
            conn.starttls_done()
        elif isinstance(event, RcptTo):
            conn.accept() if await is_ours(event.path) else conn.reject(RELAY_DENIED)
        elif isinstance(event, MessageComplete):
            qid = await deliver(event); conn.accept(MESSAGE_ACCEPTED.with_text(f"Ok: {qid}"))
        elif isinstance(event, DECISION_EVENTS):
            conn.accept()                    # Hello, MailFrom... (AUTH uses auth_*)
        # anything else is information (Reset, MessageRefused, AuthAborted): log it

The shell must call ``receive_data`` only after ``NEED_DATA`` (that bounds buffering to one
read). Early talkers: the shell may wait before ``send_greeting``; any ``receive_data``
before it sets ``conn.early_talker`` and the shell can greet with 554 or ``close()``.
STARTTLS: on ``accept()`` the core queues 220 and DISCARDS everything already received
(CVE-2011-0411); the shell flushes, handshakes, then calls ``starttls_done()`` (optionally
with a new config), which forgets EHLO, transaction and authentication (RFC 3207 4.2).

Errors: peer bytes never raise out of this class (they become replies). Misuse raises
:class:`~postroom.proto.smtp.replies.SmtpUsageError`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace

from postroom.proto.buffer import LineTooLong, StreamReader, UnexpectedEOF
from postroom.proto.smtp import replies as R
from postroom.proto.smtp.dotstuff import (
    DotDecoder,
    line_feeds,
    read_chunk,
    read_dot_data,
)
from postroom.proto.smtp.events import (
    CLOSED,
    DECISION_EVENTS,
    NEED_DATA,
    AuthAborted,
    AuthResponse,
    AuthStart,
    BurlFetch,
    CloseReason,
    Event,
    Hello,
    MailFrom,
    MessageComplete,
    MessageRefused,
    RcptTo,
    Recipient,
    Reset,
    Sentinel,
    ServerConfig,
    StartTls,
    State,
)
from postroom.proto.smtp.grammar import (
    AddressError,
    MailParams,
    Path,
    parse_domain,
    parse_esmtp_params,
    parse_forward_path,
    parse_mail_params,
    parse_rcpt_params,
    parse_reverse_path,
    split_path_argument,
)
from postroom.proto.smtp.replies import Reply, SmtpError, SmtpUsageError

__all__ = ["CloseReason", "ServerConfig", "ServerConnection", "State"]

_DIGITS_RE = re.compile(r"[0-9]{1,20}")
# Not SMTP at all: an HTTP request line, or a header field (an HTTP request's headers, or
# message text sent without DATA). Postfix drops such clients too ("non-SMTP command").
_HTTP_REQUEST_RE = re.compile(r"[A-Za-z]+ \S+ HTTP/[0-9](\.[0-9])?", re.ASCII)
_HEADER_FIELD_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*:", re.ASCII)


def _looks_foreign(text: str) -> bool:
    """An unknown command line that is another protocol's (ALPACA class): close at once."""
    verb = text.partition(" ")[0]
    return bool(_HEADER_FIELD_RE.fullmatch(verb) or _HTTP_REQUEST_RE.fullmatch(text))


class _Kind(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    CHALLENGE = "challenge"
    SUCCESS = "success"


@dataclass(slots=True)
class _Decision:
    kind: _Kind
    reply: Reply | None = None
    data: bytes = field(default=b"", repr=False)
    user: str = ""


_Gen = Generator[Event | None, None, None]

# The parameters of no MAIL yet: one shared instance (frozen), not one per reset.
_NO_PARAMS = MailParams()
_DecisionGen = Generator[Event | None, None, _Decision]

# RFC 3207 4: before STARTTLS on a TLS-only port these still work.
_ALLOWED_BEFORE_TLS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "QUIT", "RSET", "HELP"})


class ServerConnection:
    """One SMTP server connection. See the module docstring for the protocol."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._extensions = config.extensions
        self._reader = StreamReader()
        self._out = bytearray()
        self._gen: _Gen = self._run()
        self._stash: Event | Sentinel | None = None  # produced while the shell decided
        self._pending: Event | None = None  # decision event the shell has seen
        self._decision: _Decision | None = None
        self._greeted = False
        self._refused = False
        self._tls_pending = False
        self._finished = False
        self._phase: State | None = None  # DATA, BDAT or AUTH while inside one
        #: Data arrived before ``send_greeting`` (RFC 5321 4.3.1 / 3.1 early talker).
        self.early_talker = False
        self.close_reason: CloseReason | None = None
        self.helo: str | None = None
        self.esmtp = False
        self.authenticated_user: str | None = None
        self.error_count = 0
        self._reset_transaction()

    # --- public: configuration and introspection --------------------------------------

    @property
    def config(self) -> ServerConfig:
        return self._config

    def set_config(self, config: ServerConfig) -> None:
        """Replace the configuration (takes effect from the next command)."""
        self._config = config
        self._extensions = config.extensions

    @property
    def tls_active(self) -> bool:
        return self._config.tls_active

    @property
    def sender(self) -> Path | None:
        return self._sender

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        return tuple(self._recipients)

    @property
    def closed(self) -> bool:
        return self._finished

    @property
    def awaiting(self) -> Event | None:
        """The decision event the shell has not answered yet, if any (a shell whose
        handler failed half-way answers it with a temporary error)."""
        return self._pending

    @property
    def state(self) -> State:
        if self._finished:
            return State.CLOSED
        if not self._greeted:
            return State.GREETING
        if self._tls_pending:
            return State.TLS_HANDSHAKE
        if self._phase is not None:
            return self._phase
        if self._refused:
            return State.REFUSED
        if self.helo is None:
            return State.CONNECTED
        if self._bdat is not None:
            return State.BDAT
        if self._recipients:
            return State.RCPT
        if self._sender is not None:
            return State.MAIL
        return State.READY

    # --- public: I/O ----------------------------------------------------------------

    def send_greeting(self, reply: Reply | None = None) -> None:
        """Queue the greeting: 220 (default), 554 (refuse politely) or 421 (and close)."""
        if self._greeted:
            raise SmtpUsageError("greeting already sent")
        if reply is None:
            # RFC 2034 3: no enhanced code in the greeting; "ESMTP" tells old clients to EHLO.
            reply = Reply(220, None, f"{self._config.hostname} ESMTP")
        if reply.code not in (220, 421, 554):  # RFC 5321 4.3.2: connection establishment
            raise SmtpUsageError(f"greeting must be 220, 421 or 554, not {reply.code}")
        self._greeted = True
        self._out += reply.to_bytes()
        if reply.code == 554:
            self._refused = True
        elif reply.code == 421:
            self._finish(CloseReason.GREETING)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed its side."""
        if self._finished:
            return
        if not data:
            self._reader.feed_eof()
            return
        if self._tls_pending:
            raise SmtpUsageError("receive_data during the TLS handshake: call starttls_done()")
        if not self._greeted:
            self.early_talker = True
        self._reader.feed_data(data)

    def data_to_send(self) -> bytes:
        """Reply bytes queued so far, in order; the shell writes them and calls again later."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | Sentinel:
        """The next event, ``NEED_DATA`` or ``CLOSED``. Decisions must be answered first."""
        if self._pending is not None:
            raise SmtpUsageError(f"answer {type(self._pending).__name__} before next_event")
        if not self._greeted:
            raise SmtpUsageError("call send_greeting() first")
        value = self._stash
        self._stash = None
        if value is None:
            if self._tls_pending and not self._finished:
                raise SmtpUsageError("call starttls_done() before next_event")
            value = self._step()
        if value is None:
            return NEED_DATA
        if isinstance(value, DECISION_EVENTS):
            self._pending = value
        return value

    def close(self, reply: Reply | None = None) -> None:
        """Shell-initiated end (shutdown 421 4.3.2, timeout 421 4.4.2, ...): queue and close."""
        if self._finished:
            return
        if reply is not None:
            self._out += reply.to_bytes()
        self._pending = None
        self._stash = None
        self._tls_pending = False
        self._finish(CloseReason.SHELL)
        self._gen.close()

    # --- public: answering decisions --------------------------------------------------

    def accept(self, reply: Reply | None = None) -> None:
        """Accept Hello, StartTls, MailFrom, RcptTo or MessageComplete.

        ``reply`` overrides the default positive reply (not for Hello, whose reply is the
        extension list). StartTls needs 220; the others a 2xx.
        """
        event = self._check_pending("accept", (Hello, StartTls, MailFrom, RcptTo, MessageComplete))
        if reply is not None:
            if isinstance(event, Hello):
                raise SmtpUsageError("accept(Hello) takes no reply: the core builds it")
            if isinstance(event, StartTls) and reply.code != 220:
                raise SmtpUsageError("STARTTLS is accepted with 220")
            if not reply.is_positive:
                raise SmtpUsageError(f"accept with a non-2xx reply {reply.code}")
        self._resume(_Decision(_Kind.ACCEPT, reply))

    def reject(self, reply: Reply) -> None:
        """Refuse any decision event with a 4xx/5xx ``reply`` (421 also closes)."""
        self._check_pending("reject", DECISION_EVENTS)
        if not isinstance(reply, Reply) or not reply.is_error:
            raise SmtpUsageError(f"reject needs a 4xx/5xx Reply, not {reply!r}")
        self._resume(_Decision(_Kind.REJECT, reply))

    def auth_challenge(self, challenge: bytes) -> None:
        """Send ``334 base64(challenge)`` and wait for the client's response."""
        self._check_pending("auth_challenge", (AuthStart, AuthResponse))
        self._resume(_Decision(_Kind.CHALLENGE, data=bytes(challenge)))

    def auth_success(self, username: str, reply: Reply | None = None) -> None:
        """The SASL exchange succeeded for ``username``: 235 2.7.0 (RFC 4954 6)."""
        self._check_pending("auth_success", (AuthStart, AuthResponse))
        if reply is not None and not reply.is_positive:
            raise SmtpUsageError("auth_success needs a 2xx reply")
        self._resume(_Decision(_Kind.SUCCESS, reply, user=username))

    def auth_failure(self, reply: Reply = R.AUTH_FAILED) -> None:
        """The SASL exchange failed: 535 5.7.8 by default (or 454, 534, 538...)."""
        self._check_pending("auth_failure", (AuthStart, AuthResponse))
        if not reply.is_error:
            raise SmtpUsageError("auth_failure needs a 4xx/5xx reply")
        self._resume(_Decision(_Kind.REJECT, reply))

    def burl_data(self, data: bytes) -> None:
        """Answer BurlFetch with the octets the URL named (RFC 4468): they are appended
        to the message like a BDAT chunk, and with LAST the message is complete."""
        self._check_pending("burl_data", (BurlFetch,))
        self._resume(_Decision(_Kind.ACCEPT, data=bytes(data)))

    def starttls_done(self, config: ServerConfig | None = None) -> None:
        """The TLS handshake succeeded: reset to "no EHLO yet" (RFC 3207 4.2)."""
        if self._finished:
            return  # the peer went away meanwhile; next_event() says CLOSED
        if not self._tls_pending:
            raise SmtpUsageError("starttls_done without an accepted STARTTLS")
        self._tls_pending = False
        self.set_config(replace(config or self._config, tls_active=True))
        # RFC 3207 4.2: discard any knowledge obtained from the client before TLS.
        self._reader.discard()
        self.helo = None
        self.esmtp = False
        self.authenticated_user = None
        self._reset_transaction()

    # --- driving the generator --------------------------------------------------------

    def _check_pending(self, verb: str, types: tuple[type, ...]) -> Event:
        event = self._pending
        if event is None:
            raise SmtpUsageError(f"{verb}() without a pending decision")
        if not isinstance(event, types):
            raise SmtpUsageError(f"{verb}() does not answer {type(event).__name__}")
        return event

    def _resume(self, decision: _Decision) -> None:
        # Run the core on at once, so that the reply is in data_to_send() as soon as the
        # shell has decided (STARTTLS needs its 220 flushed before the handshake).
        # The pending event is cleared only here, after the caller's checks passed, so a
        # misuse error leaves the decision open.
        self._pending = None
        self._decision = decision
        value = self._step()
        if value is not None:
            self._stash = value

    def _step(self) -> Event | Sentinel | None:
        if self._finished:
            return CLOSED
        try:
            value = next(self._gen)
        except StopIteration:
            self._finished = True
            return CLOSED
        if value is None and self._finished:
            return CLOSED
        return value

    def _finish(self, reason: CloseReason) -> None:
        if not self._finished:
            self._finished = True
            self.close_reason = reason

    def _decide(self, event: Event) -> _DecisionGen:
        yield event
        decision = self._decision
        if decision is None:  # only reachable through a bug in this class
            raise SmtpUsageError("resumed without a decision")
        self._decision = None
        return decision

    def _send(self, reply: Reply) -> None:
        self._out += reply.to_bytes()
        if reply.code == 421:  # RFC 5321 3.8: 421 means we close
            self._finish(CloseReason.SHELL)
            return
        if reply.code >= 400 and reply is not R.TOO_MANY_RCPTS:
            self.error_count += 1
            limit = self._config.max_errors
            if limit and self.error_count >= limit:
                self._out += R.TOO_MANY_ERRORS.to_bytes()
                self._finish(CloseReason.TOO_MANY_ERRORS)

    def _reset_transaction(self) -> None:
        self._sender: Path | None = None
        self._mail_params = _NO_PARAMS
        self._recipients: list[Recipient] = []
        self._rcpt_attempts = 0
        self._bdat: bytearray | None = None  # chunks so far; None: no BDAT yet
        self._bdat_size = 0
        self._bdat_failed: Reply | None = None  # answer for the rest of the chunks

    # --- the command loop -------------------------------------------------------------

    def _run(self) -> _Gen:
        try:
            while not self._finished:
                yield from self._command()
        except UnexpectedEOF:
            # RFC 5321 3.8: a client that vanishes mid-transaction gets nothing delivered.
            self._finish(CloseReason.EOF)

    def _command(self) -> _Gen:
        reader = self._reader
        try:
            line = yield from reader.read_line(self._config.max_line_length)
        except LineTooLong as exc:
            # RFC 5321 4.5.3.1.4: answer 500, drop the rest of the line, carry on.
            if not exc.args or not exc.args[0]:
                yield from reader.skip_line()
            self._send(R.LINE_TOO_LONG)
            return
        body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        # Octets as ints (NUL, CR): CPython tests a bytes needle as an int first and
        # builds and drops a TypeError before searching; an int needle is a memchr.
        if 0 in body or 13 in body:
            self._send(R.BAD_CHARACTERS)
            return
        try:
            text = body.decode("utf-8").rstrip(" \t")
        except UnicodeDecodeError:
            self._send(R.BAD_CHARACTERS)
            return
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        try:
            if self._refused and verb != "QUIT":
                raise SmtpError(R.BAD_SEQUENCE)  # RFC 5321 3.1: after a 554 greeting
            simple = _SIMPLE.get(verb)
            if simple is not None:
                self._gate(verb)
                simple(self, arg)
                return
            complex_ = _COMPLEX.get(verb)
            if complex_ is not None:
                self._gate(verb)
                yield from complex_(self, arg)
                return
            if verb in self._config.forbidden_commands or _looks_foreign(text):
                self._out += R.PROTOCOL_ABUSE.to_bytes()
                self._finish(CloseReason.PROTOCOL_ABUSE)
                return
            raise SmtpError(R.COMMAND_UNRECOGNIZED)
        except SmtpError as exc:
            self._send(exc.reply)

    def _gate(self, verb: str) -> None:
        if (
            self._config.require_tls
            and not self._config.tls_active
            and verb not in _ALLOWED_BEFORE_TLS
        ):
            raise SmtpError(R.TLS_REQUIRED)

    # --- simple commands (no decision, no data) ---------------------------------------

    def _cmd_noop(self, arg: str) -> None:
        self._send(R.OK)  # RFC 5321 4.1.1.9: any parameter is ignored

    def _cmd_help(self, arg: str) -> None:
        self._send(R.HELP)  # RFC 5321 4.1.1.8

    def _cmd_vrfy(self, arg: str) -> None:
        if not arg:
            raise SmtpError(R.SYNTAX_VRFY)
        self._send(R.CANNOT_VRFY)  # RFC 5321 3.5.3: 252, no address harvesting

    def _cmd_expn(self, arg: str) -> None:
        self._send(R.EXPN_DISABLED)  # RFC 5321 7.3: MAY be disabled

    def _cmd_quit(self, arg: str) -> None:
        if arg:
            raise SmtpError(R.SYNTAX_QUIT)  # RFC 5321 4.1.1.10: no parameters
        self._send(R.CLOSING)
        self._finish(CloseReason.QUIT)

    # --- commands that wait for the shell ---------------------------------------------

    def _cmd_rset(self, arg: str) -> _Gen:
        if arg:
            raise SmtpError(R.SYNTAX_RSET)  # RFC 5321 4.1.1.5: no parameters
        self._reset_transaction()
        self._send(R.OK)
        yield Reset()

    def _cmd_ehlo(self, arg: str) -> _Gen:
        return self._hello(arg, esmtp=True)

    def _cmd_helo(self, arg: str) -> _Gen:
        return self._hello(arg, esmtp=False)

    def _hello(self, arg: str, *, esmtp: bool) -> _Gen:
        hostname = arg.strip(" \t")
        if not hostname:
            raise SmtpError(R.SYNTAX_EHLO if esmtp else R.SYNTAX_HELO)  # RFC 5321 4.1.1.1
        decision = yield from self._decide(Hello(esmtp, hostname, _valid_hostname(hostname)))
        if decision.kind is not _Kind.ACCEPT:
            self._send(_reply(decision))
            return
        # RFC 5321 4.1.4: an accepted EHLO/HELO resets the transaction like RSET.
        self._reset_transaction()
        self.helo = hostname
        self.esmtp = esmtp
        # RFC 2034 3: the HELO/EHLO replies carry no enhanced status code.
        if esmtp:
            self._send(Reply(250, None, "\n".join(self._config.ehlo_lines())))
        else:
            self._send(Reply(250, None, self._config.hostname))

    def _cmd_starttls(self, arg: str) -> _Gen:
        if arg:
            raise SmtpError(R.SYNTAX_STARTTLS)  # RFC 3207 4: 501, no parameters allowed
        if self._config.tls_active:
            raise SmtpError(R.TLS_ALREADY_ACTIVE)
        if not self._config.tls_available:
            raise SmtpError(R.COMMAND_NOT_IMPLEMENTED)
        if self._sender is not None:
            # RFC 3207 does not forbid it, but a transaction cannot survive the reset that
            # follows the handshake; refusing is clearer than silently dropping it.
            raise SmtpError(R.STARTTLS_IN_TRANSACTION)
        decision = yield from self._decide(StartTls())
        if decision.kind is not _Kind.ACCEPT:
            self._send(_reply(decision))
            return
        self._send(decision.reply or R.READY_FOR_TLS)
        # CVE-2011-0411: bytes pipelined after STARTTLS arrived in clear text and must not
        # be executed inside the TLS session.
        self._reader.discard()
        self._tls_pending = True

    def _cmd_auth(self, arg: str) -> _Gen:
        cfg = self._config
        if not cfg.auth_mechanisms:
            raise SmtpError(R.COMMAND_NOT_IMPLEMENTED)
        if self.helo is None:
            raise SmtpError(R.HELO_FIRST)
        if self.authenticated_user is not None:
            raise SmtpError(R.ALREADY_AUTHENTICATED)  # RFC 4954 4
        if self._sender is not None:
            raise SmtpError(R.AUTH_IN_TRANSACTION)  # RFC 4954 4
        parts = arg.split(" ")
        if not parts[0] or len(parts) > 2:
            raise SmtpError(R.SYNTAX_AUTH)
        mechanism = parts[0].upper()
        if mechanism not in cfg.auth_mechanisms:
            raise SmtpError(R.UNKNOWN_MECHANISM)
        if cfg.auth_requires_tls and not cfg.tls_active:
            raise SmtpError(R.ENCRYPTION_REQUIRED)
        initial: bytes | None = None
        if len(parts) == 2:
            # RFC 4954 4: "=" is an empty initial response.
            initial = b"" if parts[1] == "=" else _b64decode(parts[1].encode("ascii", "replace"))
            if initial is None:
                raise SmtpError(R.AUTH_BAD_BASE64)
        self._phase = State.AUTH
        try:
            yield from self._auth_exchange(AuthStart(mechanism, initial))
        finally:
            self._phase = None

    def _auth_exchange(self, event: AuthStart) -> _Gen:
        reader = self._reader
        decision = yield from self._decide(event)
        while decision.kind is _Kind.CHALLENGE:
            # RFC 4954 4: "334" SP [base64]; no enhanced code, the text is the challenge.
            self._out += b"334 " + base64.b64encode(decision.data) + b"\r\n"
            try:
                line = yield from reader.read_line(self._config.max_auth_line_length)
            except LineTooLong as exc:
                if not exc.args or not exc.args[0]:
                    yield from reader.skip_line()
                yield from self._auth_abort(R.AUTH_LINE_TOO_LONG)
                return
            response = line.rstrip(b"\r\n").strip(b" ")
            if response == b"*":
                yield from self._auth_abort(R.AUTH_CANCELLED)  # RFC 4954 4
                return
            data = _b64decode(response)
            if data is None:
                yield from self._auth_abort(R.AUTH_BAD_BASE64)
                return
            decision = yield from self._decide(AuthResponse(data))
        if decision.kind is _Kind.SUCCESS:
            self.authenticated_user = decision.user
            self._send(decision.reply or R.AUTH_SUCCESS)
        else:
            self._send(_reply(decision))

    def _auth_abort(self, reply: Reply) -> _Gen:
        self._send(reply)
        yield AuthAborted(reply)

    def _cmd_mail(self, arg: str) -> _Gen:
        if self.helo is None:
            raise SmtpError(R.HELO_FIRST)
        if self._sender is not None:
            raise SmtpError(R.NESTED_MAIL)  # RFC 5321 4.1.4
        if self._config.mail_requires_auth and self.authenticated_user is None:
            raise SmtpError(R.AUTH_REQUIRED)  # RFC 4954 6 (submission, RFC 6409 4.3)
        if arg[:5].upper() != "FROM:":
            raise SmtpError(R.SYNTAX_MAIL)
        split = split_path_argument(arg[5:])
        if split is None:
            raise SmtpError(R.BAD_SENDER_SYNTAX)
        path_text, param_text = split
        params = parse_mail_params(
            parse_esmtp_params(param_text), extensions=self._extensions
        )
        limit = self._config.max_message_size
        if limit and params.size is not None and params.size > limit:
            raise SmtpError(R.SIZE_EXCEEDED)  # RFC 1870 6.1
        path = parse_reverse_path(path_text, utf8=params.smtputf8)
        decision = yield from self._decide(MailFrom(path, params))
        if decision.kind is not _Kind.ACCEPT:
            self._send(_reply(decision))
            return
        self._sender = path
        self._mail_params = params
        self._send(decision.reply or R.SENDER_OK)

    def _cmd_rcpt(self, arg: str) -> _Gen:
        if self._sender is None:
            raise SmtpError(R.MAIL_FIRST)  # RFC 5321 4.1.4
        if self._bdat is not None:
            raise SmtpError(R.BAD_SEQUENCE)  # RFC 3030 2: chunks already flowing
        if arg[:3].upper() != "TO:":
            raise SmtpError(R.SYNTAX_RCPT)
        split = split_path_argument(arg[3:])
        if split is None:
            raise SmtpError(R.BAD_RCPT_SYNTAX)
        path_text, param_text = split
        params = parse_rcpt_params(
            parse_esmtp_params(param_text), extensions=self._extensions
        )
        path = parse_forward_path(path_text, utf8=self._mail_params.smtputf8)
        if len(self._recipients) >= self._config.max_recipients:
            self._send(R.TOO_MANY_RCPTS)  # RFC 5321 4.5.3.1.10
            return
        self._rcpt_attempts += 1
        decision = yield from self._decide(RcptTo(path, params))
        if decision.kind is not _Kind.ACCEPT:
            self._send(_reply(decision))
            return
        self._recipients.append(Recipient(path, params))
        self._send(decision.reply or R.RECIPIENT_OK)

    def _check_ready_for_data(self) -> None:
        if self.helo is None:
            raise SmtpError(R.HELO_FIRST)
        if self._sender is None:
            raise SmtpError(R.MAIL_FIRST)
        if not self._recipients:
            # RFC 5321 3.3: 503 when no RCPT was given, 554 when all were refused
            # (RFC 2920 3.1: the pipelined data then arrives as commands and fails).
            raise SmtpError(R.NO_VALID_RECIPIENTS if self._rcpt_attempts else R.RCPT_FIRST)

    def _cmd_data(self, arg: str) -> _Gen:
        if arg:
            raise SmtpError(R.SYNTAX_DATA)
        self._check_ready_for_data()
        if self._bdat is not None:
            raise SmtpError(R.DATA_BDAT_MIXED)  # RFC 3030 3
        self._send(R.START_MAIL_INPUT)
        decoder = DotDecoder(self._config.max_message_size)
        self._phase = State.DATA
        try:
            yield from read_dot_data(self._reader, decoder)
        finally:
            self._phase = None
        message, size = decoder.message(), decoder.size
        # The decoder's buffer is a second copy of the message: let it go before the
        # shell's delivery (which holds the message and its stored copy meanwhile).
        del decoder
        yield from self._end_of_message(message, size, chunked=False)

    def _cmd_bdat(self, arg: str) -> _Gen:
        if not self._config.chunking:
            raise SmtpError(R.COMMAND_NOT_IMPLEMENTED)
        # RFC 3030 2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]
        #             chunk-size = 1*DIGIT; end-marker = "LAST"
        parts = arg.split(" ")
        if (
            not 1 <= len(parts) <= 2
            or not _DIGITS_RE.fullmatch(parts[0])
            or (len(parts) == 2 and parts[1].upper() != "LAST")
        ):
            # The chunk length is unknown, so its bytes cannot be skipped: they will be
            # read as commands (and fail). Nothing else can be done.
            raise SmtpError(R.BAD_CHUNK_SIZE)
        size = int(parts[0])
        last = len(parts) == 2
        limit = self._config.max_message_size
        if limit and size > limit:
            # RFC 3030 2: the chunk's octets follow the command whatever we answer, and
            # the only way to stay in step is to read them all. A chunk that alone is
            # over the size limit is not worth reading (BDAT 99999999999999 would make us
            # wait for 90 TB): refuse it at once and close, like any other peer error we
            # cannot resynchronise after. A chunk within the limit that takes the message
            # over it is drained below instead, and the session goes on.
            self._out += R.CHUNK_TOO_BIG.to_bytes()
            self._finish(CloseReason.CHUNK_TOO_BIG)
            yield MessageRefused(R.CHUNK_TOO_BIG, self._bdat_size + size)
            return
        try:
            self._check_ready_for_data()
            failure = self._bdat_failed
            if failure is None and limit and self._bdat_size + size > limit:
                failure = self._bdat_failed = R.SIZE_EXCEEDED
                self._bdat = bytearray()  # drop what we had; keep "chunking" state
                refused = True
            else:
                refused = False
        except SmtpError as exc:
            failure = exc.reply
            refused = False
        self._phase = State.BDAT
        try:
            if failure is not None:
                # RFC 3030 2: the chunk's octets follow the command whatever we answer.
                yield from self._reader.skip_exact(size)
            else:
                if self._bdat is None:
                    self._bdat = bytearray()
                yield from read_chunk(self._reader, size, self._bdat)
                self._bdat_size += size
        finally:
            self._phase = None
        if failure is not None:
            in_transaction = self._bdat is not None
            if in_transaction:
                self._bdat_size += size
            total = self._bdat_size
            if last and in_transaction:
                # RFC 3030 2: LAST ends the transaction, even a failed one.
                self._reset_transaction()
            self._send(failure)
            if refused:
                yield MessageRefused(failure, total)
            return
        if self._bdat is None:
            self._bdat = bytearray()  # an empty "BDAT 0" still starts chunking
        if not last:
            self._send(Reply(250, "2.0.0", f"{size} octets received"))
            return
        message = bytes(self._bdat)
        self._bdat.clear()  # (a second copy: freed before the delivery, as for DATA)
        yield from self._end_of_message(message, len(message), chunked=True)

    def _cmd_burl(self, arg: str) -> _Gen:
        # RFC 4468 3: burl-cmd = "BURL" SP absolute-URI [SP end-marker] ; end-marker = "LAST"
        if not self._config.burl or not self._config.chunking:
            raise SmtpError(R.COMMAND_NOT_IMPLEMENTED)
        parts = arg.split(" ")
        if not parts[0] or len(parts) > 2 or (len(parts) == 2 and parts[1].upper() != "LAST"):
            raise SmtpError(R.SYNTAX_BURL)
        self._check_ready_for_data()
        if self._bdat_failed is not None:
            raise SmtpError(self._bdat_failed)
        last = len(parts) == 2
        decision = yield from self._decide(BurlFetch(parts[0], last))
        if decision.kind is not _Kind.ACCEPT:
            # The message cannot be completed as the client meant it: the transaction
            # ends here (the client starts again after RSET-like reset).
            self._reset_transaction()
            self._send(_reply(decision))
            return
        data = decision.data
        if self._bdat is None:
            self._bdat = bytearray()
        limit = self._config.max_message_size
        if limit and self._bdat_size + len(data) > limit:
            total = self._bdat_size + len(data)
            self._reset_transaction()
            self._send(R.SIZE_EXCEEDED)
            yield MessageRefused(R.SIZE_EXCEEDED, total)
            return
        self._bdat += data
        self._bdat_size += len(data)
        if not last:
            self._send(Reply(250, "2.0.0", f"{len(data)} octets appended"))
            return
        message = bytes(self._bdat)
        self._bdat.clear()  # (a second copy: freed before the delivery, as for DATA)
        yield from self._end_of_message(message, len(message), chunked=True)

    def _end_of_message(self, message: bytes | None, size: int, *, chunked: bool) -> _Gen:
        lf = None
        if message is None:
            refusal: Reply | None = R.SIZE_EXCEEDED  # RFC 1870 6.2
        elif (lf := line_feeds(message)) is None:
            refusal = R.BARE_LINE_ENDING  # smuggling defence, see dotstuff.py
        elif 0 in message:  # NUL (an int needle: see _command)
            refusal = R.NUL_IN_MESSAGE
        else:
            refusal = None
        sender = self._sender
        if refusal is not None or sender is None:
            refusal = refusal or R.TRANSACTION_FAILED
            self._reset_transaction()
            self._send(refusal)
            yield MessageRefused(refusal, size)
            return
        assert message is not None
        event = MessageComplete(
            sender, self._mail_params, tuple(self._recipients), message, chunked, lf
        )
        decision = yield from self._decide(event)
        # RFC 5321 4.1.1.4: the transaction ends with the reply, whatever it is.
        self._reset_transaction()
        if decision.kind is _Kind.ACCEPT:
            self._send(decision.reply or R.MESSAGE_ACCEPTED)
            self.error_count = 0
        else:
            self._send(_reply(decision))


def _reply(decision: _Decision) -> Reply:
    if decision.reply is None:  # reject()/auth_failure() always carry one
        raise SmtpUsageError("decision without a reply")
    return decision.reply


def _b64decode(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _valid_hostname(text: str) -> bool:
    try:
        parse_domain(text)
    except (AddressError, ValueError, UnicodeError):
        return False
    return True


_SIMPLE: dict[str, Callable[[ServerConnection, str], None]] = {
    "NOOP": ServerConnection._cmd_noop,
    "HELP": ServerConnection._cmd_help,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "QUIT": ServerConnection._cmd_quit,
}
_COMPLEX: dict[str, Callable[[ServerConnection, str], _Gen]] = {
    "EHLO": ServerConnection._cmd_ehlo,
    "HELO": ServerConnection._cmd_helo,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "BDAT": ServerConnection._cmd_bdat,
    "BURL": ServerConnection._cmd_burl,
    "RSET": ServerConnection._cmd_rset,
    "STARTTLS": ServerConnection._cmd_starttls,
    "AUTH": ServerConnection._cmd_auth,
}
