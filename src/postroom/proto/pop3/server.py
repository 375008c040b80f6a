"""Sans-IO POP3 server core: RFC 1939, RFC 2449 (CAPA, codes, pipelining), RFC 2595 (STLS),
RFC 5034 (AUTH), RFC 3206 (codes).

Theory of operation
-------------------
This file owns one POP3 session: it reads command lines from a :class:`StreamReader`,
validates them against the session state, answers what it can answer by itself, and hands
the shell an *event* for every decision that needs I/O or policy. It never touches a socket,
a clock, a store or a random source.

The parser is a generator (``_run``) that reads like blocking code; ``next_event`` advances
it until it either needs more bytes (:class:`NeedData`) or produces an event. Events that
need an answer (see ``events.py``) park the generator until the shell calls the answering
method; asking for the next event before answering is a :class:`Pop3UsageError`. All output
is queued in order and collected with :meth:`Pop3Server.data_to_send`, so pipelined commands
(RFC 2449 section 6.6) are answered in order however the input was split.

What the core decides: command syntax and limits, which commands each state allows,
message-number checks, deletion marks (DELE/RSET), STAT/LIST/UIDL from the login snapshot,
byte-stuffing, and when to give up on a client (too many bad commands or failed logins).
What the shell decides: credentials, maildrop lock and contents, message bytes, TLS, and
the final removal of deleted messages.

Nothing the client sends makes :meth:`next_event` raise: bad input gets a ``-ERR`` reply
(and, after too many, a :class:`Closed` event). Only misuse of the API raises.

A shell drives it like this (asyncio, error handling left out)::

    conn = Pop3Server(settings, tls_active=implicit_tls, sasl_factory=factory)
    while True:
        event = conn.next_event()
        match event:
            case NeedData():
                writer.write(conn.data_to_send())
                conn.receive_data(await reader.read(65536))   # b"" at EOF
            case PassRequest(user, password, _):
                if not await check_password(user, password):
                    conn.login_failed(LoginError.AUTH)
                elif (drop := await lock_and_snapshot(user)) is None:
                    conn.login_failed(LoginError.IN_USE)
                else:
                    conn.login_ok(drop)                        # [(wire_size, uidl), ...]
            case CredentialsRequest(user, _):
                conn.credentials(await scram_credentials_of(user))  # or None
            case Authenticated(user, _):
                conn.login_ok(await lock_and_snapshot(user))
            case Retrieve(index, _):
                writer.write(conn.retrieved(await read_message(index)))
            case StartTls():
                writer.write(conn.data_to_send())
                await writer.start_tls(ssl_context)
                conn.tls_started()
            case Commit(deleted):
                conn.update_done(await remove_messages(deleted))
            case Closed():
                writer.write(conn.data_to_send())
                break
    release_lock()
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Final

from postroom.proto.buffer import LineTooLong, StreamReader, UnexpectedEOF
from postroom.proto.pop3 import replies as R
from postroom.proto.pop3.events import (
    NEED_DATA,
    Authenticated,
    Closed,
    Commit,
    CredentialsRequest,
    Event,
    LoginError,
    MaildropItem,
    PassRequest,
    Pop3State,
    Retrieve,
    StartTls,
)
from postroom.proto.pop3.message import retr_body, top_body
from postroom.proto.sasl import (
    PLAINTEXT_MECHANISMS,
    Challenge,
    NeedCredentials,
    ScramCredentials,
    ServerMechanism,
    Success,
    VerifyPassword,
    server_mechanism,
)

__all__ = ["Pop3Server", "Pop3Settings", "Pop3UsageError"]

_AUTHORIZATION: Final = Pop3State.AUTHORIZATION
_TRANSACTION: Final = Pop3State.TRANSACTION

# RFC 1939 section 7: a unique-id is 1 to 70 characters in 0x21-0x7E.
_UIDL_RE: Final = re.compile(r"[\x21-\x7e]{1,70}")
# Message numbers and TOP line counts: plain digits, bounded (int() would accept "+1", " 1").
_NUMBER_RE: Final = re.compile(rb"[0-9]{1,10}")
# A mailbox name in USER: RFC 2449 section 4 says arguments are at most 40 octets, but
# addresses are longer; 255 is what SASL allows for an authcid (RFC 4616).
_MAX_USERNAME: Final = 255
# An HTTP request line (RFC 9112 3): another protocol on our port (ALPACA); answering its
# header lines one -ERR at a time only helps the attacker.
_HTTP_REQUEST: Final = re.compile(
    rb"(?:GET|POST|HEAD|PUT|DELETE|OPTIONS|CONNECT|TRACE|PATCH) \S+ HTTP/[0-9](?:\.[0-9])?"
)

_Steps = Generator[Event | None, None, None]


class Pop3UsageError(Exception):
    """The shell misused the core (answered the wrong event, bad snapshot): a bug."""


class _Close(Exception):
    """Internal: end the session after the replies queued so far."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    """Per-listener choices; the defaults are the safe ones.

    ``mechanisms``: SASL mechanisms to offer, in order (``SCRAM-SHA-256`` needs a
    ``sasl_factory`` that supplies a nonce source and secret). ``tls_available``: STLS can
    be offered (a certificate is configured). ``plaintext_without_tls``: allow USER/PASS,
    PLAIN and LOGIN on a connection without TLS (RFC 2595 section 2.2 says not to).
    ``expire`` / ``login_delay``: the EXPIRE and LOGIN-DELAY capabilities (RFC 2449 6.5,
    6.7), not announced when None. Limits: ``max_line`` for command lines (RFC 2449
    section 4 allows clients 255 octets; we accept twice that), ``max_auth_line`` for AUTH
    responses (RFC 5034 puts no 255 limit on them), and the counts after which the session
    is closed: ``max_bad_commands`` in all, ``max_bad_before_login`` unknown commands
    before login (real clients send none; a scanner or another protocol's client sends
    many; Dovecot closes after 10 bad commands). An HTTP request line closes the session at once (ALPACA-style attacks).
    """

    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    tls_available: bool = False
    plaintext_without_tls: bool = False
    greeting: str = "postroom POP3 server ready"
    implementation: str | None = "postroom"
    expire: str | None = None
    login_delay: int | None = None
    max_line: int = 512
    max_auth_line: int = 8192
    max_bad_commands: int = 10
    max_bad_before_login: int = 5
    max_login_failures: int = 3


@dataclass(frozen=True, slots=True)
class _LoginAnswer:
    maildrop: list[MaildropItem] | None
    error: LoginError = LoginError.AUTH
    text: bytes | None = None
    counted: bool = True


def _line(text: str) -> bytes:
    """Shell-supplied text for a reply line: no CR/LF can split the line."""
    return re.sub(r"[\r\n]+", " ", text).encode("utf-8", "replace")


def _b64decode(data: bytes) -> bytes | None:
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


class Pop3Server:
    """One POP3 session, from greeting to QUIT or EOF."""

    def __init__(
        self,
        settings: Pop3Settings | None = None,
        *,
        tls_active: bool = False,
        sasl_factory: Callable[[str], ServerMechanism] | None = None,
    ) -> None:
        self._settings = settings = settings or Pop3Settings()
        self._mechanisms = tuple(m.upper() for m in settings.mechanisms)
        if sasl_factory is None:
            if any(m not in PLAINTEXT_MECHANISMS for m in self._mechanisms):
                raise Pop3UsageError("mechanisms other than PLAIN/LOGIN need a sasl_factory")
            sasl_factory = server_mechanism
        self._sasl_factory = sasl_factory
        self._tls = tls_active
        self._reader = StreamReader()
        self._out: list[bytes] = [R.ok(_line(settings.greeting))]
        self.state = _AUTHORIZATION
        self._closed: Closed | None = None
        self._awaiting: type | None = None
        self._user: str | None = None
        self._bad_count = 0
        self._unknown_before_login = 0
        self._login_failures = 0
        # Answers from the shell, read by the generator when it resumes.
        self._login_answer: _LoginAnswer | None = None
        self._credentials: ScramCredentials | None = None
        self._retrieve: Retrieve | None = None
        self._update_ok = False
        # The maildrop snapshot and our deletion marks (RFC 1939 section 5).
        self._sizes: list[int] = []
        self._uids: list[str] = []
        self._deleted: list[bool] = []
        self._live_count = 0
        self._live_octets = 0
        self._handlers: dict[
            bytes, tuple[frozenset[Pop3State], Callable[[list[bytes], bytes], _Steps | None]]
        ] = {
            b"USER": (frozenset({_AUTHORIZATION}), self._cmd_user),
            b"PASS": (frozenset({_AUTHORIZATION}), self._cmd_pass),
            b"APOP": (frozenset({_AUTHORIZATION}), self._cmd_apop),
            b"AUTH": (frozenset({_AUTHORIZATION}), self._cmd_auth),
            b"STLS": (frozenset({_AUTHORIZATION}), self._cmd_stls),
            b"CAPA": (frozenset({_AUTHORIZATION, _TRANSACTION}), self._cmd_capa),
            b"QUIT": (frozenset({_AUTHORIZATION, _TRANSACTION}), self._cmd_quit),
            b"STAT": (frozenset({_TRANSACTION}), self._cmd_stat),
            b"LIST": (frozenset({_TRANSACTION}), self._cmd_list),
            b"RETR": (frozenset({_TRANSACTION}), self._cmd_retr),
            b"DELE": (frozenset({_TRANSACTION}), self._cmd_dele),
            b"NOOP": (frozenset({_TRANSACTION}), self._cmd_noop),
            b"RSET": (frozenset({_TRANSACTION}), self._cmd_rset),
            b"TOP": (frozenset({_TRANSACTION}), self._cmd_top),
            b"UIDL": (frozenset({_TRANSACTION}), self._cmd_uidl),
        }
        self._gen = self._run()

    # ---------------------------------------------------------------- shell-facing API

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def login_failures(self) -> int:
        """Failed login attempts so far (the shell delays its answer after each)."""
        return self._login_failures

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (bounded by the line limits)."""
        return len(self._reader)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` means the client closed its side (EOF)."""
        if self._closed is not None:
            return
        if data:
            self._reader.feed_data(data)
        else:
            self._reader.feed_eof()

    def data_to_send(self) -> bytes:
        """Everything queued for the client, in order; empties the queue."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event:
        """Advance the session to its next event (``NeedData`` when input runs out)."""
        if self._closed is not None:
            return self._closed
        if self._awaiting is not None:
            raise Pop3UsageError(f"answer the {self._awaiting.__name__} event first")
        event = next(self._gen)
        if event is None:
            return NEED_DATA
        if isinstance(event, Closed):
            self._closed = event
            self.state = Pop3State.CLOSED
        else:
            self._awaiting = type(event)
        return event

    def login_ok(self, maildrop: Iterable[MaildropItem | tuple[int, str]]) -> None:
        """Answer PassRequest/Authenticated: logged in; ``maildrop`` is the locked snapshot
        as (size, uidl) pairs, size from :func:`wire_size`. The core owns it from now on."""
        items: list[MaildropItem] = []
        for size, uidl in maildrop:
            if not isinstance(size, int) or size < 0:
                raise Pop3UsageError(f"invalid message size {size!r}")
            if not isinstance(uidl, str) or not _UIDL_RE.fullmatch(uidl):
                raise Pop3UsageError(f"invalid unique-id {uidl!r} (RFC 1939 section 7)")
            items.append(MaildropItem(size, uidl))
        self._answer(PassRequest, Authenticated)
        self._login_answer = _LoginAnswer(items)

    def login_failed(
        self, error: LoginError = LoginError.AUTH, text: str | None = None,
        counted: bool | None = None,
    ) -> None:
        """Answer PassRequest/Authenticated: refused, with the code ``error`` selects.

        ``counted``: whether this is a failed login (:attr:`login_failures`, closing after
        too many); by default only ``LoginError.AUTH`` is. A login the shell refused
        without checking the password (a blocked address) is counted with another code."""
        self._answer(PassRequest, Authenticated)
        self._login_answer = _LoginAnswer(
            None, error, None if text is None else _line(text),
            error is LoginError.AUTH if counted is None else counted)

    def credentials(self, credentials: ScramCredentials | None) -> None:
        """Answer CredentialsRequest: the stored SCRAM credentials, None if no such user."""
        self._answer(CredentialsRequest)
        self._credentials = credentials

    def retrieved(self, content: bytes, *, crlf: bool = False) -> bytes:
        """Answer Retrieve with the stored message; returns every byte to write now
        (earlier queued replies, the +OK line, the byte-stuffed message, ".CRLF").

        ``crlf=True``: the shell guarantees CRLF line ends and a final CRLF (so the size
        it gave at login is ``len(content)``); the core then skips normalising.
        """
        self._answer(Retrieve)
        event = self._retrieve
        assert event is not None
        if event.top_lines is None:
            size, body = retr_body(content, crlf)
            head = b"+OK %d octets\r\n" % size
        else:
            head, body = R.OK_TOP, top_body(content, event.top_lines, crlf)
        out = self._out
        out.append(head)
        out.append(body)
        data = out[0] + out[1] if len(out) == 2 else b"".join(out)
        out.clear()
        return data

    def retrieve_failed(self) -> None:
        """Answer Retrieve: the message could not be read (-ERR [SYS/TEMP])."""
        self._answer(Retrieve)
        self._out.append(R.ERR_UNAVAILABLE)

    def tls_started(self) -> None:
        """Answer StartTls: the handshake succeeded. (If it failed, just close.)"""
        self._answer(StartTls)
        self._tls = True
        self._reader.discard()  # RFC 2595 section 4: nothing from before TLS survives

    def update_done(self, ok: bool) -> None:
        """Answer Commit: True when every deleted message is gone (atomically)."""
        self._answer(Commit)
        self._update_ok = ok

    def _answer(self, *kinds: type) -> None:
        if self._awaiting not in kinds:
            expected = self._awaiting.__name__ if self._awaiting else "no event"
            raise Pop3UsageError(f"this answers {kinds[0].__name__}, but {expected} is pending")
        self._awaiting = None

    # ---------------------------------------------------------------- the session

    def _run(self) -> _Steps:
        try:
            yield from self._session()
        except UnexpectedEOF:
            reason = "connection closed by client"
        except _Close as close:
            reason = close.reason
        yield Closed(reason)

    def _session(self) -> _Steps:
        while True:
            line = yield from self._read_line(self._settings.max_line)
            if line is None:
                self._user = None
                self._bad(R.ERR_LINE_TOO_LONG, unknown=True)
                continue
            if _HTTP_REQUEST.fullmatch(line):
                self._out.append(R.ERR_NOT_POP3)
                raise _Close("not a POP3 client")
            space = line.find(b" ")
            keyword, rest = (line, b"") if space < 0 else (line[:space], line[space + 1 :])
            keyword = keyword.upper()
            if keyword != b"PASS":
                self._user = None  # RFC 1939 section 7: PASS must come right after USER
            entry = self._handlers.get(keyword)
            if entry is None:
                self._bad(R.ERR_UNKNOWN, unknown=True)
                continue
            states, handler = entry
            if self.state not in states:
                self._bad(R.ERR_BAD_STATE, unknown=True)
                continue
            steps = handler(rest.split(), rest)
            if steps is not None:
                yield from steps

    def _read_line(self, limit: int) -> Generator[None, None, bytes | None]:
        """One line without its CRLF (or bare LF); None if it was longer than ``limit``."""
        try:
            line = yield from self._reader.read_line(limit)
        except LineTooLong as exc:
            if not exc.args[0]:
                yield from self._reader.skip_line()
            return None
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    def _bad(self, reply: bytes, *, unknown: bool = False) -> None:
        """A command we refuse as malformed; too many of them end the session.

        ``unknown``: not a POP3 command at all here (unknown keyword, wrong state, line
        too long). Before login only those count against ``max_bad_before_login``: a
        client refused for trying a password before STLS is confused, not hostile.
        """
        self._bad_count += 1
        settings = self._settings
        if unknown and self.state is _AUTHORIZATION:
            self._unknown_before_login += 1
        if (
            self._bad_count >= settings.max_bad_commands
            or self._unknown_before_login >= settings.max_bad_before_login
        ):
            self._out.append(R.ERR_TOO_MANY_ERRORS)
            raise _Close("too many bad commands")
        self._out.append(reply)

    def _plaintext_ok(self) -> bool:
        return self._tls or self._settings.plaintext_without_tls

    def _offered_mechanisms(self) -> list[bytes]:
        plaintext = self._plaintext_ok()
        return [
            m.encode("ascii")
            for m in self._mechanisms
            if plaintext or m not in PLAINTEXT_MECHANISMS
        ]

    # ---------------------------------------------------------------- logins

    def _login_refused(self, reply: bytes) -> None:
        """A failed login attempt: reply, and close after too many (RFC 1939 section 8)."""
        self._login_failures += 1
        self._out.append(reply)
        if self._login_failures >= self._settings.max_login_failures:
            raise _Close("too many failed logins")

    def _finish_login(self) -> None:
        answer = self._login_answer
        self._login_answer = None
        assert answer is not None
        if answer.maildrop is None:
            code = answer.error.value
            reply = R.err(answer.text or R.LOGIN_ERROR_TEXT[code], code)
            if answer.counted:
                self._login_refused(reply)
            else:
                # [IN-USE], [SYS/...], [LOGIN-DELAY]: the credentials were fine, so this
                # is no failed login (no delay, not counted toward closing the session).
                self._out.append(reply)
            return
        self._sizes = [item.size for item in answer.maildrop]
        self._uids = [item.uidl for item in answer.maildrop]
        self._deleted = [False] * len(self._sizes)
        self._live_count = len(self._sizes)
        self._live_octets = sum(self._sizes)
        self.state = _TRANSACTION
        self._out.append(
            R.ok(b"logged in, %d messages (%d octets)" % (self._live_count, self._live_octets))
        )

    def _cmd_user(self, args: list[bytes], rest: bytes) -> None:
        if not self._plaintext_ok():
            self._bad(R.ERR_PLAINTEXT)
            return
        if len(args) != 1 or len(args[0]) > _MAX_USERNAME:
            self._bad(R.ERR_SYNTAX)
            return
        try:
            name = args[0].decode("utf-8")
        except UnicodeDecodeError:
            self._bad(R.ERR_SYNTAX)
            return
        self._user = name  # never reveal here whether the mailbox exists
        self._out.append(R.OK_USER)

    def _cmd_pass(self, args: list[bytes], rest: bytes) -> _Steps | None:
        # RFC 1939 section 7: PASS only right after USER. The password is the rest of the
        # line, spaces included ("a server may treat spaces in the argument as part of the
        # password").
        user, self._user = self._user, None
        if not self._plaintext_ok():
            self._bad(R.ERR_PLAINTEXT)
            return None
        if user is None:
            self._bad(R.ERR_USER_FIRST)
            return None
        if not rest:
            self._bad(R.ERR_SYNTAX)
            return None
        try:
            password = rest.decode("utf-8")
        except UnicodeDecodeError:
            self._login_refused(R.ERR_AUTH_FAILED)
            return None
        return self._password_login(user, password, "USER")

    def _password_login(self, user: str, password: str, mechanism: str) -> _Steps:
        yield PassRequest(user, password, mechanism)
        self._finish_login()

    def _cmd_apop(self, args: list[bytes], rest: bytes) -> None:
        # APOP needs the password in clear on the server (MD5 of it): we never store that.
        self._out.append(R.ERR_APOP)

    def _cmd_auth(self, args: list[bytes], rest: bytes) -> _Steps | None:
        if not args:
            # Not in RFC 5034, but widely used (Outlook): list what AUTH accepts.
            mechs = self._offered_mechanisms()
            self._out.append(R.OK_AUTH_LIST + b"".join(m + R.CRLF for m in mechs))
            self._out.append(R.END_MULTILINE)
            return None
        if len(args) > 2:
            self._bad(R.ERR_SYNTAX)
            return None
        name = args[0].upper().decode("ascii", "replace")
        if name not in self._mechanisms:
            self._bad(R.ERR_UNSUPPORTED_MECH)
            return None
        if name in PLAINTEXT_MECHANISMS and not self._plaintext_ok():
            self._bad(R.ERR_PLAINTEXT)
            return None
        initial: bytes | None = None
        if len(args) == 2:
            # RFC 5034 section 4: initial-response = base64 / "=" (empty response).
            initial = b"" if args[1] == b"=" else _b64decode(args[1])
            if initial is None:
                self._bad(R.ERR_BASE64)
                return None
        return self._sasl(name, initial)

    def _sasl(self, name: str, initial: bytes | None) -> _Steps:
        mech = self._sasl_factory(name)
        step = mech.start(initial)
        while True:
            if isinstance(step, Challenge):
                data = yield from self._sasl_response(step.data)
                if data is None:
                    return
                step = mech.respond(data)
            elif isinstance(step, NeedCredentials):
                yield CredentialsRequest(step.username, name)
                credentials, self._credentials = self._credentials, None
                step = mech.provide_credentials(credentials)
            elif isinstance(step, VerifyPassword):
                yield PassRequest(step.username, step.password, name)
                assert self._login_answer is not None
                mech.password_verified(self._login_answer.maildrop is not None)
                self._finish_login()
                return
            elif isinstance(step, Success):
                if step.data is not None:
                    # POP3 carries no additional data with success: send it as a last
                    # challenge, which the client answers with an empty line (RFC 4422 5).
                    ack = yield from self._sasl_response(step.data)
                    if ack is None:
                        return
                    if ack:
                        self._login_refused(R.ERR_AUTH_FAILED)
                        return
                yield Authenticated(step.username, name)
                self._finish_login()
                return
            else:  # Failure: the reason stays in the mechanism; the client learns nothing
                self._login_refused(R.ERR_AUTH_FAILED)
                return

    def _sasl_response(self, challenge: bytes) -> Generator[None, None, bytes | None]:
        """Send a "+ " challenge and read the client's line (RFC 5034 section 4).

        Returns the decoded response, or None after answering a cancel/invalid line.
        """
        self._out.append(b"+ " + base64.b64encode(challenge) + R.CRLF)
        line = yield from self._read_line(self._settings.max_auth_line)
        if line is None:
            self._login_refused(R.ERR_AUTH_LINE_TOO_LONG)
            return None
        if line == b"*":
            self._bad(R.ERR_AUTH_CANCELLED)
            return None
        data = _b64decode(line)
        if data is None:
            self._login_refused(R.ERR_BASE64)
        return data

    # ---------------------------------------------------------------- other AUTHORIZATION

    def _cmd_stls(self, args: list[bytes], rest: bytes) -> _Steps | None:
        if args:
            self._bad(R.ERR_SYNTAX)
            return None
        if self._tls:
            self._bad(R.ERR_TLS_ACTIVE)
            return None
        if not self._settings.tls_available:
            self._bad(R.ERR_TLS_UNAVAILABLE)
            return None
        return self._starttls()

    def _starttls(self) -> _Steps:
        self._out.append(R.OK_STLS)
        self._reader.discard()  # RFC 2595 section 4: pipelined input after STLS is void
        yield StartTls()
        self._user = None  # and everything learned before TLS is forgotten

    def _cmd_capa(self, args: list[bytes], rest: bytes) -> None:
        # RFC 2449 section 5; the list may differ per state (section 6).
        if args:
            self._bad(R.ERR_SYNTAX)
            return
        settings = self._settings
        caps = [b"TOP", b"UIDL"]
        if self.state is _AUTHORIZATION:
            if self._plaintext_ok():
                caps.append(b"USER")
            mechs = self._offered_mechanisms()
            if mechs:
                caps.append(b"SASL " + b" ".join(mechs))
            if settings.tls_available and not self._tls:
                caps.append(b"STLS")  # RFC 2595 section 4
        caps += [b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if settings.expire is not None:
            caps.append(b"EXPIRE " + _line(settings.expire))
        if settings.login_delay is not None:
            caps.append(b"LOGIN-DELAY %d" % settings.login_delay)
        if settings.implementation:
            caps.append(b"IMPLEMENTATION " + _line(settings.implementation))
        self._out.append(R.OK_CAPA + b"".join(c + R.CRLF for c in caps) + R.END_MULTILINE)

    def _cmd_quit(self, args: list[bytes], rest: bytes) -> _Steps | None:
        if args:
            self._bad(R.ERR_SYNTAX)
            return None
        if self.state is _AUTHORIZATION:
            self._out.append(R.OK_BYE)
            raise _Close("quit")
        return self._update()

    def _update(self) -> _Steps:
        # RFC 1939 section 6: only QUIT from TRANSACTION enters UPDATE and removes messages.
        self.state = Pop3State.UPDATE
        deleted = tuple(i for i, gone in enumerate(self._deleted) if gone)
        yield Commit(deleted)
        if self._update_ok:
            self._out.append(R.ok(b"signing off (%d messages deleted)" % len(deleted)))
        else:
            self._out.append(R.ERR_UPDATE_FAILED)
        raise _Close("quit")

    # ---------------------------------------------------------------- TRANSACTION

    def _index(self, arg: bytes) -> int | None:
        """0-based index of a live message, or None after replying why not."""
        if not _NUMBER_RE.fullmatch(arg):
            self._bad(R.ERR_INVALID_NUMBER)
            return None
        number = int(arg)
        if not 1 <= number <= len(self._sizes):
            self._out.append(R.ERR_NO_SUCH_MESSAGE)
            return None
        if self._deleted[number - 1]:
            self._out.append(R.ERR_DELETED)
            return None
        return number - 1

    def _cmd_stat(self, args: list[bytes], rest: bytes) -> None:
        if args:
            self._bad(R.ERR_SYNTAX)
            return
        # RFC 1939 section 5: deleted messages are not counted.
        self._out.append(b"+OK %d %d\r\n" % (self._live_count, self._live_octets))

    def _cmd_list(self, args: list[bytes], rest: bytes) -> None:
        if len(args) > 1:
            self._bad(R.ERR_SYNTAX)
            return
        if args:
            index = self._index(args[0])
            if index is not None:
                self._out.append(b"+OK %d %d\r\n" % (index + 1, self._sizes[index]))
            return
        head = b"+OK %d messages (%d octets)\r\n" % (self._live_count, self._live_octets)
        deleted = self._deleted
        lines = [
            b"%d %d\r\n" % (i + 1, size) for i, size in enumerate(self._sizes) if not deleted[i]
        ]
        self._out.append(head + b"".join(lines) + R.END_MULTILINE)

    def _cmd_uidl(self, args: list[bytes], rest: bytes) -> None:
        if len(args) > 1:
            self._bad(R.ERR_SYNTAX)
            return
        if args:
            index = self._index(args[0])
            if index is not None:
                self._out.append(b"+OK %d %s\r\n" % (index + 1, self._uids[index].encode()))
            return
        deleted = self._deleted
        lines = [
            b"%d %s\r\n" % (i + 1, uid.encode())
            for i, uid in enumerate(self._uids)
            if not deleted[i]
        ]
        self._out.append(R.ok(b"unique-id listing follows") + b"".join(lines) + R.END_MULTILINE)

    def _cmd_retr(self, args: list[bytes], rest: bytes) -> _Steps | None:
        if len(args) != 1:
            self._bad(R.ERR_SYNTAX)
            return None
        index = self._index(args[0])
        return None if index is None else self._retrieve_steps(Retrieve(index))

    def _cmd_top(self, args: list[bytes], rest: bytes) -> _Steps | None:
        if len(args) != 2:
            self._bad(R.ERR_SYNTAX)
            return None
        if not _NUMBER_RE.fullmatch(args[1]):
            self._bad(R.ERR_SYNTAX)  # RFC 1939 section 7: n must be non-negative
            return None
        index = self._index(args[0])
        if index is None:
            return None
        return self._retrieve_steps(Retrieve(index, int(args[1])))

    def _retrieve_steps(self, event: Retrieve) -> _Steps:
        self._retrieve = event
        yield event
        self._retrieve = None

    def _cmd_dele(self, args: list[bytes], rest: bytes) -> None:
        if len(args) != 1:
            self._bad(R.ERR_SYNTAX)
            return
        index = self._index(args[0])
        if index is None:
            return
        self._deleted[index] = True
        self._live_count -= 1
        self._live_octets -= self._sizes[index]
        self._out.append(R.ok(b"message %d deleted" % (index + 1)))

    def _cmd_noop(self, args: list[bytes], rest: bytes) -> None:
        if args:
            self._bad(R.ERR_SYNTAX)
            return
        self._out.append(R.OK_PLAIN)

    def _cmd_rset(self, args: list[bytes], rest: bytes) -> None:
        if args:
            self._bad(R.ERR_SYNTAX)
            return
        self._deleted = [False] * len(self._sizes)
        self._live_count = len(self._sizes)
        self._live_octets = sum(self._sizes)
        self._out.append(
            R.ok(b"maildrop has %d messages (%d octets)" % (self._live_count, self._live_octets))
        )
