"""SMTP client core: each reply class at each stage, pipelining, BDAT, STARTTLS, AUTH, reuse.

Every script runs whole and one byte at a time (``run``): the events and the bytes written
must not depend on how the server's bytes were split.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence

import pytest

from postroom.proto.sasl import LoginClient, PlainClient, ScramCredentials, client_mechanism
from postroom.proto.smtp.client import (
    CLOSED,
    IDLE,
    NEED_DATA,
    TIMEOUTS,
    AuthFailed,
    AuthSucceeded,
    Cause,
    Envelope,
    Expect,
    Greeting,
    Outcome,
    Recipient,
    SessionFailed,
    SessionReady,
    SmtpClient,
    Stage,
    StartTlsRefused,
    TlsStart,
    TransactionResult,
)
from postroom.proto.smtp.events import CLOSED as SERVER_CLOSED
from postroom.proto.smtp.events import NEED_DATA as SERVER_NEED_DATA
from postroom.proto.smtp.replies import Reply, SmtpUsageError

# --- harness ------------------------------------------------------------------------------

EOF = object()
Step = bytes | object | Callable[[SmtpClient], object]
ENDS = (NEED_DATA, IDLE, CLOSED)

GREET = b"220 mx.example.net ESMTP ready\r\n"
ALL_EXTENSIONS = (
    "PIPELINING",
    "SIZE 10000000",
    "8BITMIME",
    "SMTPUTF8",
    "CHUNKING",
    "DSN",
    "STARTTLS",
    "AUTH PLAIN LOGIN SCRAM-SHA-256",
    "ENHANCEDSTATUSCODES",
)


def ehlo(*keywords: str, name: str = "mx.example.net") -> bytes:
    lines = [f"{name} Hello client.example", *keywords]
    out = [f"250-{line}\r\n" for line in lines[:-1]] + [f"250 {lines[-1]}\r\n"]
    return "".join(out).encode()


class Run:
    """The outcome of one scripted session."""

    def __init__(self, client: SmtpClient, events: list[object], writes: list[bytes], last: object):
        self.client = client
        self.events = events
        self.writes = writes
        self.last = last  # the sentinel the script ended on

    @property
    def sent(self) -> bytes:
        return b"".join(self.writes)

    def of(self, kind: type) -> list[object]:
        return [e for e in self.events if isinstance(e, kind)]

    def result(self, n: int = 0) -> TransactionResult:
        result = self.of(TransactionResult)[n]
        assert isinstance(result, TransactionResult)
        return result


def drive(
    steps: Sequence[Step],
    *,
    split: Callable[[bytes], list[bytes]] | None = None,
    **options: object,
) -> Run:
    client = SmtpClient("client.example", **options)  # type: ignore[arg-type]
    events: list[object] = []
    writes: list[bytes] = []
    last: object = None

    def pump() -> None:
        nonlocal last
        while True:
            event = client.next_event()
            if out := client.data_to_send():
                writes.append(out)
            if event in ENDS:
                last = event
                return
            events.append(event)

    pump()
    for step in steps:
        if isinstance(step, bytes):
            for piece in split(step) if split else [step]:
                client.receive_data(piece)
                pump()
        elif step is EOF:
            client.receive_eof()
            pump()
        else:
            assert callable(step)
            step(client)
            pump()
    return Run(client, events, writes, last)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def run(steps: Sequence[Step], **options: object) -> Run:
    """Run whole and byte at a time; both must agree. Returns the whole run."""
    whole = drive(steps, **options)
    split = drive(steps, split=bytewise, **options)
    assert split.events == whole.events
    assert split.sent == whole.sent
    assert split.last == whole.last
    return whole


def send(
    envelope: Envelope, message: bytes = b"Subject: hi\r\n\r\nHello\r\n"
) -> Callable[[SmtpClient], None]:
    return lambda c: c.send_message(envelope, message)


ENV = Envelope.simple("alice@example.org", ["bob@example.net"])
ENV2 = Envelope.simple("alice@example.org", ["bob@example.net", "carol@example.net"])
MSG = b"Subject: hi\r\n\r\nHello\r\n"
READY = [GREET, ehlo("8BITMIME", "SIZE 10000000")]  # a plain, unpipelined ESMTP server
PIPE = [GREET, ehlo("PIPELINING", "8BITMIME", "DSN")]


def quit_(c: SmtpClient) -> None:
    c.quit()


# --- sentinels and state ------------------------------------------------------------------


def test_sentinels_are_shared_with_the_server_core() -> None:
    assert NEED_DATA is SERVER_NEED_DATA
    assert CLOSED is SERVER_CLOSED


def test_expecting_and_timeouts() -> None:
    client = SmtpClient("client.example")
    assert client.expecting is Expect.GREETING
    assert client.timeout == 300
    assert client.next_event() is NEED_DATA
    client.receive_data(GREET)
    assert isinstance(client.next_event(), Greeting)
    assert client.expecting is Expect.EHLO
    client.receive_data(ehlo("PIPELINING"))
    assert isinstance(client.next_event(), SessionReady)
    assert client.next_event() is IDLE
    assert client.expecting is None and client.timeout is None and client.idle
    client.data_to_send()
    client.send_message(ENV, MSG)
    assert client.expecting is Expect.MAIL
    client.receive_data(b"250 ok\r\n250 ok\r\n")
    assert client.next_event() is NEED_DATA
    assert client.expecting is Expect.DATA and client.timeout == TIMEOUTS[Expect.DATA] == 120
    client.receive_data(b"354 go\r\n")
    assert client.next_event() is NEED_DATA
    assert client.expecting is Expect.DATA_END and client.timeout == 600


# --- greeting -----------------------------------------------------------------------------


def test_greeting_220_sends_ehlo() -> None:
    r = run([GREET])
    assert r.events == [Greeting(Reply(220, None, "mx.example.net ESMTP ready"))]
    assert r.sent == b"EHLO client.example\r\n"
    assert r.last is NEED_DATA


def test_multiline_greeting() -> None:
    r = run([b"220-mx.example.net ESMTP\r\n220-no UCE\r\n220 welcome\r\n"])
    assert r.events == [Greeting(Reply(220, None, "mx.example.net ESMTP\nno UCE\nwelcome"))]


@pytest.mark.parametrize(
    ("greeting", "quit_sent"),
    [
        (b"554 5.7.1 no service for you\r\n", True),  # RFC 5321 3.1: QUIT, then close
        (b"450 busy\r\n", True),
        (b"421 4.3.2 too busy\r\n", False),  # the server is gone: no QUIT
    ],
)
def test_greeting_refused(greeting: bytes, quit_sent: bool) -> None:
    r = run([greeting])
    (failed,) = r.events
    assert isinstance(failed, SessionFailed)
    assert failed.cause is Cause.REPLY and failed.during is Expect.GREETING
    assert failed.reply.code == int(greeting[:3])
    assert r.sent == (b"QUIT\r\n" if quit_sent else b"")
    assert r.last is CLOSED
    assert r.client.next_event() is CLOSED


# --- EHLO / HELO --------------------------------------------------------------------------


def test_ehlo_extensions_parsed() -> None:
    r = run([GREET, ehlo(*ALL_EXTENSIONS)])
    ready = r.events[1]
    assert isinstance(ready, SessionReady) and not ready.tls
    ext = ready.extensions
    assert ext.esmtp and ext.server_name == "mx.example.net"
    assert ext.size == 10_000_000
    assert ext.pipelining and ext.eightbitmime and ext.smtputf8 and ext.chunking
    assert ext.dsn and ext.starttls and ext.enhancedstatuscodes
    assert ext.auth == {"PLAIN", "LOGIN", "SCRAM-SHA-256"}
    assert r.last is IDLE and r.client.idle


def test_ehlo_minimal_and_size_without_limit() -> None:
    r = run([GREET, ehlo("size", "auth login")])
    ext = r.client.extensions
    assert ext is not None
    assert ext.size == 0 and ext.auth == {"LOGIN"}
    assert not ext.pipelining and not ext.eightbitmime and not ext.dsn
    r = run([GREET, b"250 mx.example.net\r\n"])
    assert r.client.extensions is not None and r.client.extensions.size is None


@pytest.mark.parametrize("code", [500, 501, 502, 504])
def test_helo_fallback(code: int) -> None:
    r = run([GREET, b"%d 5.5.1 what?\r\n" % code, b"250 mx.example.net\r\n"])
    assert r.sent == b"EHLO client.example\r\nHELO client.example\r\n"
    ready = r.events[1]
    assert isinstance(ready, SessionReady)
    assert not ready.extensions.esmtp and ready.extensions.server_name == "mx.example.net"


def test_helo_fallback_then_message_uses_no_extension() -> None:
    r = run(
        [
            GREET,
            b"502 no\r\n",
            b"250 mx\r\n",
            send(ENV),
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 queued\r\n",
        ]
    )
    assert b"MAIL FROM:<alice@example.org>\r\n" in r.sent
    assert r.result().results[0].outcome is Outcome.DELIVERED


@pytest.mark.parametrize(
    ("script", "quit_sent"),
    [
        ([GREET, b"554 5.7.1 go away\r\n"], True),  # EHLO refused for policy: no fallback
        ([GREET, b"421 4.7.0 bye\r\n"], False),
        ([GREET, b"451 4.3.0 later\r\n"], True),
        ([GREET, b"500 what\r\n", b"550 no HELO either\r\n"], True),
        ([GREET, b"500 what\r\n", b"421 closing\r\n"], False),
    ],
)
def test_ehlo_or_helo_refused(script: list[bytes], quit_sent: bool) -> None:
    r = run(script)
    failed = r.events[-1]
    assert isinstance(failed, SessionFailed) and failed.cause is Cause.REPLY
    assert failed.during in (Expect.EHLO, Expect.HELO)
    assert r.sent.endswith(b"QUIT\r\n") is quit_sent
    assert r.last is CLOSED


# --- STARTTLS ------------------------------------------------------------------------------

TLS_EHLO = ehlo("STARTTLS", "PIPELINING")


def test_starttls_sequence() -> None:
    def handshake(c: SmtpClient) -> None:
        with pytest.raises(SmtpUsageError):
            c.receive_data(b"250 early\r\n")  # the shell must not feed plaintext now
        assert c.next_event() is IDLE
        c.tls_established()

    r = run(
        [
            GREET,
            TLS_EHLO,
            lambda c: c.starttls(),
            b"220 2.0.0 go ahead\r\n",
            handshake,
            ehlo("PIPELINING", "AUTH PLAIN"),
        ]
    )
    assert r.writes[1:] == [b"STARTTLS\r\n", b"EHLO client.example\r\n"]
    kinds = [type(e).__name__ for e in r.events]
    assert kinds == ["Greeting", "SessionReady", "TlsStart", "SessionReady"]
    ready = r.events[-1]
    assert isinstance(ready, SessionReady) and ready.tls
    assert not ready.extensions.starttls and ready.extensions.auth == {"PLAIN"}
    assert r.client.tls
    with pytest.raises(SmtpUsageError):
        r.client.starttls()  # already active


def test_starttls_refused_stays_usable() -> None:
    r = run(
        [
            GREET,
            TLS_EHLO,
            lambda c: c.starttls(),
            b"454 4.7.0 TLS not available\r\n",
            send(ENV),
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 ok\r\n",
        ]
    )
    refused = r.of(StartTlsRefused)
    assert refused == [StartTlsRefused(Reply(454, "4.7.0", "TLS not available"))]
    assert r.result().results[0].outcome is Outcome.DELIVERED


def test_starttls_response_injection_is_refused() -> None:
    r = drive([GREET, TLS_EHLO, lambda c: c.starttls(), b"220 go ahead\r\n250 injected\r\n"])
    failed = r.events[-1]
    assert isinstance(failed, SessionFailed) and failed.cause is Cause.PROTOCOL_ERROR
    assert r.last is CLOSED and not r.of(TlsStart)


def test_starttls_handshake_failure() -> None:
    r = run([GREET, TLS_EHLO, lambda c: c.starttls(), b"220 go\r\n", lambda c: c.tls_failed()])
    failed = r.events[-1]
    assert isinstance(failed, SessionFailed) and failed.cause is Cause.TLS_FAILED
    assert failed.reply.code == 421 and r.last is CLOSED


def test_starttls_not_offered_is_misuse() -> None:
    r = run(READY)
    with pytest.raises(SmtpUsageError):
        r.client.starttls()
    with pytest.raises(SmtpUsageError):
        r.client.tls_established()


def test_implicit_tls_flag() -> None:
    r = run([GREET, ehlo("AUTH PLAIN")], tls=True)
    ready = r.events[-1]
    assert isinstance(ready, SessionReady) and ready.tls


# --- AUTH ----------------------------------------------------------------------------------

AUTH_EHLO = ehlo("AUTH PLAIN LOGIN SCRAM-SHA-256", "PIPELINING")


def test_auth_plain() -> None:
    r = run(
        [
            GREET,
            AUTH_EHLO,
            lambda c: c.authenticate(PlainClient("alice", "secret")),
            b"235 2.7.0 Authentication successful\r\n",
        ]
    )
    token = base64.b64encode(b"\0alice\0secret")
    assert r.writes[-1] == b"AUTH PLAIN " + token + b"\r\n"
    assert r.events[-1] == AuthSucceeded(Reply(235, "2.7.0", "Authentication successful"), "PLAIN")
    assert r.client.authenticated and r.last is IDLE
    with pytest.raises(SmtpUsageError):
        r.client.authenticate(PlainClient("alice", "secret"))


def test_auth_plain_refused() -> None:
    r = run(
        [
            GREET,
            AUTH_EHLO,
            lambda c: c.authenticate(PlainClient("alice", "wrong")),
            b"535 5.7.8 Authentication credentials invalid\r\n",
        ]
    )
    failed = r.events[-1]
    assert isinstance(failed, AuthFailed) and failed.reply.code == 535
    assert not r.client.authenticated and r.client.idle


def test_auth_login() -> None:
    r = run(
        [
            GREET,
            AUTH_EHLO,
            lambda c: c.authenticate(LoginClient("alice", "secret")),
            b"334 VXNlcm5hbWU6\r\n",
            b"334 UGFzc3dvcmQ6\r\n",
            b"235 2.7.0 ok\r\n",
        ]
    )
    assert r.writes[1:] == [b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n", b"c2VjcmV0\r\n"]
    assert isinstance(r.events[-1], AuthSucceeded) and r.client.authenticated


def test_auth_malformed_challenge_cancels() -> None:
    r = run(
        [
            GREET,
            AUTH_EHLO,
            lambda c: c.authenticate(LoginClient("alice", "secret")),
            b"334 !!!not base64\r\n",
            b"501 5.0.0 cancelled\r\n",
        ]
    )
    assert r.writes[-1] == b"*\r\n"
    failed = r.events[-1]
    assert isinstance(failed, AuthFailed) and failed.reason == "malformed challenge"
    assert r.client.idle


def test_auth_plain_unexpected_challenge_cancels() -> None:
    r = run(
        [
            GREET,
            AUTH_EHLO,
            lambda c: c.authenticate(PlainClient("a", "b")),
            b"334 \r\n",
            b"501 cancelled\r\n",
        ]
    )
    assert r.writes[-1] == b"*\r\n"
    assert isinstance(r.events[-1], AuthFailed)


def test_auth_endless_challenges_are_cut_off() -> None:
    r = run(
        [GREET, AUTH_EHLO, lambda c: c.authenticate(LoginClient("a", "b"))]
        + [b"334 VXNlcm5hbWU6\r\n"] * 10
    )
    failed = r.events[-1]
    assert isinstance(failed, SessionFailed) and failed.cause is Cause.PROTOCOL_ERROR


def test_auth_not_offered_is_misuse() -> None:
    r = run(READY)
    with pytest.raises(SmtpUsageError):
        r.client.authenticate(PlainClient("a", "b"))


def test_auth_scram_against_the_sasl_server_mechanism() -> None:
    """Frame a real SCRAM-SHA-256 exchange: the server side is proto.sasl's own mechanism."""
    from postroom.proto.sasl import Challenge, NeedCredentials, Success, server_mechanism

    creds = ScramCredentials.derive("secret", b"0123456789abcdef", 4096)
    server = server_mechanism("SCRAM-SHA-256", nonce_source=lambda: "servernonce", secret=b"k" * 32)
    client = SmtpClient("client.example")
    client.receive_data(GREET + AUTH_EHLO)
    while client.next_event() is not IDLE:
        pass
    client.data_to_send()
    client.authenticate(
        client_mechanism("SCRAM-SHA-256", "alice", "secret", nonce_source=lambda: "clientnonce")
    )
    line = client.data_to_send()
    assert line.startswith(b"AUTH SCRAM-SHA-256 ")
    step = server.start(base64.b64decode(line.split()[2]))
    for _ in range(5):
        if isinstance(step, NeedCredentials):
            step = server.provide_credentials(creds)
            continue
        if isinstance(step, Success):
            client.receive_data(b"235 2.7.0 ok\r\n")
            break
        assert isinstance(step, Challenge)
        client.receive_data(b"334 " + base64.b64encode(step.data) + b"\r\n")
        assert client.next_event() is NEED_DATA
        answer = client.data_to_send().strip()
        step = server.respond(base64.b64decode(answer))
    event = client.next_event()
    assert isinstance(event, AuthSucceeded) and event.mechanism == "SCRAM-SHA-256"


def test_auth_scram_server_without_proof_fails() -> None:
    r = run(
        [
            GREET,
            AUTH_EHLO,
            lambda c: c.authenticate(
                client_mechanism("SCRAM-SHA-256", "a", "b", nonce_source=lambda: "nonce")
            ),
            b"235 2.7.0 sure\r\n",
        ]
    )
    failed = r.events[-1]
    assert isinstance(failed, AuthFailed) and "prove" in failed.reason


# --- failures mid-flight -------------------------------------------------------------------


def test_eof_mid_transaction() -> None:
    r = run([*PIPE, send(ENV2), b"250 ok\r\n250 ok\r\n", EOF])
    result, failed = r.events[-2:]
    assert isinstance(result, TransactionResult) and isinstance(failed, SessionFailed)
    assert failed.cause is Cause.CONNECTION_LOST and failed.during is Expect.RCPT
    assert [x.outcome for x in result.results] == [Outcome.TEMPORARY] * 2
    assert result.results[0].cause is Cause.CONNECTION_LOST
    assert result.results[1].stage is Stage.RCPT
    assert r.last is CLOSED and b"QUIT" not in r.sent


def test_eof_mid_line() -> None:
    r = run([*READY, send(ENV), b"250 o", EOF])
    failed = r.events[-1]
    assert isinstance(failed, SessionFailed) and failed.cause is Cause.CONNECTION_LOST


def test_eof_when_idle() -> None:
    r = run([*READY, EOF])
    assert isinstance(r.events[-1], SessionFailed) and r.last is CLOSED


def test_timeout_mid_transaction() -> None:
    r = run(
        [*READY, send(ENV), b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", lambda c: c.timed_out()]
    )
    result, failed = r.events[-2:]
    assert isinstance(result, TransactionResult) and isinstance(failed, SessionFailed)
    assert result.results[0].outcome is Outcome.TEMPORARY
    assert result.results[0].cause is Cause.TIMEOUT
    assert result.results[0].stage is Stage.END_OF_DATA
    assert failed.during is Expect.DATA_END and failed.reply.enhanced == "4.4.2"
    r.client.timed_out()  # harmless once closed
    assert r.client.next_event() is CLOSED


def test_unsolicited_421_when_idle() -> None:
    r = run([*READY, b"421 4.4.2 idle too long\r\n"])
    failed = r.events[-1]
    assert isinstance(failed, SessionFailed) and failed.reply.code == 421
    assert failed.cause is Cause.REPLY and failed.during is None
    assert b"QUIT" not in r.sent


@pytest.mark.parametrize(
    ("script", "detail"),
    [
        ([b"hello there\r\n"], "not an SMTP reply"),
        ([b"22O ready\r\n"], "not an SMTP reply"),
        ([b"220-a\r\n221 b\r\n"], "code changed"),
        ([b"220" + b"x" * 5000 + b"\r\n"], "too long"),
        ([b"220-x\r\n" * 300], "lines"),
        ([GREET, ehlo("PIPELINING"), b"250 surprise\r\n"], "unexpected reply"),
        ([*READY, send(ENV), b"354 what\r\n"], "unexpected 354"),
        ([*READY, send(ENV), b"250 ok\r\n", b"250 ok\r\n", b"250 no go\r\n"], "2xx"),
        ([*READY, send(ENV), b"250 ok\r\n", b"garbage\r\n"], "not an SMTP reply"),
    ],
)
def test_garbage_ends_the_session_cleanly(script: list[Step], detail: str) -> None:
    r = run(script)
    failed = r.events[-1]
    assert isinstance(failed, SessionFailed)
    assert failed.cause is Cause.PROTOCOL_ERROR
    assert failed.reply.code == 421 and detail in failed.reply.text
    assert r.last is CLOSED
    assert not r.sent.endswith(b"QUIT\r\n")
    results = r.of(TransactionResult)
    for result in results:
        assert isinstance(result, TransactionResult)
        assert all(x.outcome is Outcome.TEMPORARY for x in result.results)


def test_data_after_close_is_ignored() -> None:
    r = run([b"554 no\r\n"])
    r.client.receive_data(b"x" * 100_000)
    assert len(r.client._reader) == 0
    assert r.client.next_event() is CLOSED


# --- API misuse ----------------------------------------------------------------------------


def test_api_misuse() -> None:
    with pytest.raises(SmtpUsageError):
        SmtpClient("bad name")
    with pytest.raises(SmtpUsageError):
        SmtpClient("")
    client = SmtpClient("client.example")
    with pytest.raises(SmtpUsageError):
        client.send_message(ENV, MSG)  # before the greeting
    with pytest.raises(SmtpUsageError):
        client.quit()
    r = run(READY)
    with pytest.raises(SmtpUsageError):
        r.client.send_message(Envelope("a@example.org", ()), MSG)
    r.client.send_message(ENV, MSG)
    with pytest.raises(SmtpUsageError):
        r.client.send_message(ENV, MSG)  # one transaction at a time
    r = run([*PIPE])
    bad = Envelope("a@example.org", (Recipient("b@example.net", notify=("SUCCESS FAILURE",)),))
    with pytest.raises(SmtpUsageError):
        r.client.send_message(bad, MSG)
