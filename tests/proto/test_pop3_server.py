"""POP3 server core: every command and state, AUTH, STLS, UPDATE rules, limits, splitting.

Every transcript runs twice, with the input fed whole and one byte at a time, and must give
identical events and output. A hypothesis test does the same with random split points and
random input.
"""

from __future__ import annotations

import base64
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.proto.pop3 import (
    Authenticated,
    Closed,
    Commit,
    CredentialsRequest,
    Event,
    LoginError,
    NeedData,
    PassRequest,
    Pop3Server,
    Pop3Settings,
    Pop3State,
    Pop3UsageError,
    Retrieve,
    StartTls,
    wire_size,
)
from postroom.proto.sasl import (
    ScramCredentials,
    ServerMechanism,
    client_mechanism,
    server_mechanism,
)

MESSAGES = [
    b"From: a@example.org\r\nSubject: one\r\n\r\nbody 1\r\n.dot line\r\n",
    b"Subject: two\r\n\r\nline1\r\nline2\r\nline3\r\n",
    b"x" * 100,  # no final line ending: the wire form adds CRLF
]
SIZES = [wire_size(m) for m in MESSAGES]
UIDS = ["uid-1", "uid-2", "uid-3"]
TOTAL = sum(SIZES)
SCRAM = {"alice": ScramCredentials.derive("secret", b"0123456789abcdef", 4096)}
ALL_MECHS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def nonces() -> Callable[[], str]:
    count = iter(range(10**6))
    return lambda: f"N{next(count)}"


def factory(name: str) -> ServerMechanism:
    return server_mechanism(name, nonce_source=nonces(), secret=b"k", iterations=4096)


@dataclass
class Shell:
    """Answers events the way a real shell would, from in-memory data."""

    users: dict[str, str] = field(default_factory=lambda: {"alice": "secret"})
    in_use: bool = False
    update_ok: bool = True
    retrieve_ok: bool = True

    def answer(self, conn: Pop3Server, event: Event, out: list[bytes]) -> None:
        if isinstance(event, PassRequest):
            if self.users.get(event.username) != event.password:
                conn.login_failed(LoginError.AUTH)
            elif self.in_use:
                conn.login_failed(LoginError.IN_USE)
            else:
                conn.login_ok(zip(SIZES, UIDS, strict=True))
        elif isinstance(event, CredentialsRequest):
            conn.credentials(SCRAM.get(event.username))
        elif isinstance(event, Authenticated):
            conn.login_ok(list(zip(SIZES, UIDS, strict=True)))
        elif isinstance(event, Retrieve):
            if self.retrieve_ok:
                out.append(conn.retrieved(MESSAGES[event.index]))
            else:
                conn.retrieve_failed()
        elif isinstance(event, StartTls):
            out.append(conn.data_to_send() + b"<TLS>")
            conn.tls_started()
        elif isinstance(event, Commit):
            conn.update_done(self.update_ok)


Split = Callable[[bytes], list[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data] if data else []


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def run(
    script: bytes,
    split: Split,
    *,
    after_tls: bytes = b"",
    shell: Shell | None = None,
    config: Pop3Settings | None = None,
    tls: bool = False,
) -> tuple[list[Event], bytes, Pop3Server]:
    """Feed ``script`` (then ``after_tls`` once TLS is up), then EOF; collect everything."""
    shell = shell or Shell()
    conn = Pop3Server(config or Pop3Settings(), tls_active=tls, sasl_factory=factory)
    pending = split(script)
    events: list[Event] = []
    out: list[bytes] = []
    eof_sent = False
    for _ in range(100_000):
        event = conn.next_event()
        if isinstance(event, NeedData):
            out.append(conn.data_to_send())
            assert conn.buffered <= (config or Pop3Settings()).max_auth_line
            if pending:
                conn.receive_data(pending.pop(0))
            else:
                assert not eof_sent, "NeedData after EOF"
                conn.receive_data(b"")
                eof_sent = True
            continue
        events.append(event)
        if isinstance(event, StartTls):
            # The client waits for the handshake: nothing it pipelined survives.
            pending = split(after_tls)
        if isinstance(event, Closed):
            out.append(conn.data_to_send())
            assert conn.next_event() == event  # stays closed
            return events, b"".join(out), conn
        shell.answer(conn, event, out)
    raise AssertionError("session did not end")


def transcript(script: bytes, **kwargs: object) -> tuple[list[Event], bytes, Pop3Server]:
    """Run whole and byte-at-a-time; both must agree exactly."""
    events, out, conn = run(script, whole, **kwargs)  # type: ignore[arg-type]
    events2, out2, _ = run(script, bytewise, **kwargs)  # type: ignore[arg-type]
    assert events2 == events
    assert out2 == out
    return events, out, conn


def next_real(conn: Pop3Server) -> Event:
    """The next event that is not NeedData (the input was fed up front)."""
    event = conn.next_event()
    while isinstance(event, NeedData):
        event = conn.next_event()
    return event


def replies(out: bytes) -> list[bytes]:
    return out.split(b"\r\n")


GREETING = b"+OK postroom POP3 server ready\r\n"
LOGIN = b"USER alice\r\nPASS secret\r\n"
LOGIN_OK = b"+OK send PASS\r\n+OK logged in, 3 messages (%d octets)\r\n" % TOTAL
PLAIN_OK = Pop3Settings(plaintext_without_tls=True)


# ------------------------------------------------------------------ AUTHORIZATION


def test_user_pass_quit_without_deletions() -> None:
    events, out, conn = transcript(LOGIN + b"QUIT\r\n", config=PLAIN_OK)
    assert events == [PassRequest("alice", "secret", "USER"), Commit(()), Closed("quit")]
    assert out == GREETING + LOGIN_OK + b"+OK signing off (0 messages deleted)\r\n"
    assert conn.state is Pop3State.CLOSED


def test_quit_in_authorization_commits_nothing() -> None:
    events, out, _ = transcript(b"QUIT\r\n")
    assert events == [Closed("quit")]
    assert out == GREETING + b"+OK postroom POP3 server signing off\r\n"


def test_password_with_spaces_and_wrong_password() -> None:
    shell = Shell(users={"bob": " two  words "})
    script = b"USER bob\r\nPASS wrong\r\nUSER bob\r\nPASS  two  words \r\nQUIT\r\n"
    events, out, _ = transcript(script, shell=shell, config=PLAIN_OK)
    assert events[:2] == [
        PassRequest("bob", "wrong"),
        PassRequest("bob", " two  words "),
    ]
    assert b"-ERR [AUTH] authentication failed\r\n" in out
    assert "two" not in repr(events[1])


def test_pass_must_follow_user_immediately() -> None:
    script = b"PASS secret\r\nUSER alice\r\nCAPA\r\nPASS secret\r\nQUIT\r\n"
    events, out, _ = transcript(script, config=PLAIN_OK)
    assert events == [Closed("quit")]
    assert out.count(b"-ERR send USER first\r\n") == 2


def test_user_syntax() -> None:
    script = b"USER\r\nUSER a b\r\nUSER \xff\r\nUSER " + b"u" * 256 + b"\r\nQUIT\r\n"
    _events, out, _ = transcript(script, config=PLAIN_OK)
    assert out.count(b"-ERR syntax error\r\n") == 4


def test_pass_needs_an_argument_and_valid_utf8() -> None:
    script = b"USER alice\r\nPASS\r\nUSER alice\r\nPASS \xff\r\nQUIT\r\n"
    events, out, _ = transcript(script, config=PLAIN_OK)
    assert events == [Closed("quit")]
    assert b"-ERR syntax error\r\n" in out
    assert b"-ERR [AUTH] authentication failed\r\n" in out


def test_plaintext_refused_without_tls() -> None:
    script = b"USER alice\r\nPASS secret\r\nAUTH PLAIN\r\nCAPA\r\nQUIT\r\n"
    events, out, _ = transcript(script)
    assert events == [Closed("quit")]
    refusal = b"-ERR [AUTH] plaintext authentication disallowed without TLS\r\n"
    assert out.count(refusal) == 3
    assert b"\r\nUSER\r\n" not in out and b"SASL" not in out  # not advertised either


def test_plaintext_allowed_under_tls() -> None:
    events, out, _ = transcript(LOGIN + b"QUIT\r\n", tls=True)
    assert events[0] == PassRequest("alice", "secret")
    assert LOGIN_OK in out


def test_login_failure_codes() -> None:
    events, out, _ = transcript(LOGIN + b"QUIT\r\n", shell=Shell(in_use=True), config=PLAIN_OK)
    assert b"-ERR [IN-USE] maildrop already in use\r\n" in out
    assert events[-1] == Closed("quit")


@pytest.mark.parametrize(
    ("error", "text", "line"),
    [
        (LoginError.AUTH, None, b"-ERR [AUTH] authentication failed"),
        (LoginError.SYS_TEMP, None, b"-ERR [SYS/TEMP] temporary failure, try again later"),
        (LoginError.SYS_PERM, "account\r\ndisabled", b"-ERR [SYS/PERM] account disabled"),
        (LoginError.LOGIN_DELAY, None, b"-ERR [LOGIN-DELAY] logging in too often"),
    ],
)
def test_login_failed_texts(error: LoginError, text: str | None, line: bytes) -> None:
    conn = Pop3Server(PLAIN_OK)
    conn.receive_data(LOGIN)
    assert isinstance(next_real(conn), PassRequest)
    conn.login_failed(error, text)
    assert isinstance(conn.next_event(), NeedData)
    assert conn.data_to_send().endswith(line + b"\r\n")


def test_in_use_is_not_a_failed_login() -> None:
    """[IN-USE] means the credentials were right: no delay, and no closing after three."""
    script = LOGIN * 5 + b"QUIT\r\n"
    events, out, _ = transcript(script, shell=Shell(in_use=True), config=PLAIN_OK)
    assert out.count(b"-ERR [IN-USE]") == 5
    assert events[-1] == Closed("quit")
    conn = Pop3Server(PLAIN_OK)
    conn.receive_data(LOGIN)
    assert isinstance(next_real(conn), PassRequest)
    conn.login_failed(LoginError.IN_USE)
    assert isinstance(conn.next_event(), NeedData)
    assert conn.login_failures == 0


def test_too_many_login_failures_close() -> None:
    script = b"USER alice\r\nPASS a\r\n" * 5
    events, out, _ = transcript(script, config=PLAIN_OK)
    assert events[-1] == Closed("too many failed logins")
    assert len(events) == 4  # three PassRequests, then closed
    assert out.count(b"-ERR [AUTH]") == 3


def test_apop_not_supported() -> None:
    _, out, _ = transcript(b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\nQUIT\r\n")
    assert b"-ERR APOP not supported\r\n" in out


def test_transaction_commands_refused_before_login() -> None:
    script = b"STAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nNOOP\r\nRSET\r\nTOP 1 1\r\nUIDL\r\nQUIT\r\n"
    config = Pop3Settings(max_bad_before_login=10)
    events, out, _ = transcript(script, config=config)
    assert events == [Closed("quit")]
    assert out.count(b"-ERR command not valid in this state\r\n") == 8


def test_few_bad_commands_before_login_close() -> None:
    # Before login the limit is small (5): a scanner or another protocol's client.
    events, out, _ = transcript(b"STAT\r\nHELO x\r\nBOGUS\r\nLIST\r\nFOO\r\nQUIT\r\n")
    assert events == [Closed("too many bad commands")]
    assert out.count(b"-ERR ") == 5 and out.endswith(b"-ERR too many errors, closing connection\r\n")


@pytest.mark.parametrize("line", [b"GET / HTTP/1.1", b"POST /x HTTP/1.0", b"OPTIONS * HTTP/1.1"])
def test_http_request_closes_at_once(line: bytes) -> None:
    events, out, _ = transcript(line + b"\r\nHost: x\r\nUser-Agent: y\r\n\r\n")
    assert events == [Closed("not a POP3 client")]
    assert out == GREETING + b"-ERR this is a POP3 server, not an HTTP server; closing connection\r\n"
    # After login too.
    events, out, _ = transcript(LOGIN + line + b"\r\nSTAT\r\n", config=PLAIN_OK)
    assert events[-1] == Closed("not a POP3 client") and b"+OK 3" not in out


# ------------------------------------------------------------------ CAPA


def test_capa_authorization_plaintext_and_stls() -> None:
    config = Pop3Settings(
        mechanisms=ALL_MECHS,
        tls_available=True,
        plaintext_without_tls=True,
        expire="NEVER",
        login_delay=900,
    )
    _, out, _ = transcript(b"CAPA\r\nQUIT\r\n", config=config)
    assert out == GREETING + (
        b"+OK capability list follows\r\n"
        b"TOP\r\nUIDL\r\nUSER\r\nSASL SCRAM-SHA-256 PLAIN LOGIN\r\nSTLS\r\n"
        b"RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\nLOGIN-DELAY 900\r\n"
        b"IMPLEMENTATION postroom\r\n.\r\n"
        b"+OK postroom POP3 server signing off\r\n"
    )


def test_capa_without_tls_hides_plaintext_and_after_login_hides_auth() -> None:
    config = Pop3Settings(mechanisms=ALL_MECHS, tls_available=True, implementation=None)
    _, out, _ = transcript(b"CAPA\r\n", config=config)
    assert b"SASL SCRAM-SHA-256\r\nSTLS\r\n" in out and b"USER" not in out
    assert b"IMPLEMENTATION" not in out
    _, out, _ = transcript(LOGIN + b"CAPA\r\n", config=config, tls=True)
    capa = out[out.index(b"+OK capability") :]
    assert capa == (
        b"+OK capability list follows\r\nTOP\r\nUIDL\r\n"
        b"RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n.\r\n"
    )


# ------------------------------------------------------------------ TRANSACTION


def test_stat_list_uidl() -> None:
    script = LOGIN + b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 3\r\nNOOP\r\nQUIT\r\n"
    _, out, _ = transcript(script, config=PLAIN_OK)
    expected = (
        b"+OK 3 %d\r\n" % TOTAL
        + b"+OK 3 messages (%d octets)\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % (TOTAL, *SIZES)
        + b"+OK 2 %d\r\n" % SIZES[1]
        + b"+OK unique-id listing follows\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
        + b"+OK 3 uid-3\r\n"
        + b"+OK\r\n"
    )
    assert out == GREETING + LOGIN_OK + expected + b"+OK signing off (0 messages deleted)\r\n"


def test_retr_sends_stuffed_message_with_listed_size() -> None:
    events, out, _ = transcript(LOGIN + b"RETR 1\r\nRETR 3\r\nQUIT\r\n", config=PLAIN_OK)
    assert events[1:3] == [Retrieve(0), Retrieve(2)]
    assert (
        b"+OK %d octets\r\n" % SIZES[0]
        + b"From: a@example.org\r\nSubject: one\r\n\r\nbody 1\r\n..dot line\r\n.\r\n"
    ) in out
    assert b"+OK 102 octets\r\n" + b"x" * 100 + b"\r\n.\r\n" in out


def test_top() -> None:
    script = LOGIN + b"TOP 2 1\r\nTOP 2 0\r\nTOP 1 99\r\nQUIT\r\n"
    events, out, _ = transcript(script, config=PLAIN_OK)
    assert events[1:4] == [Retrieve(1, 1), Retrieve(1, 0), Retrieve(0, 99)]
    assert b"+OK top of message follows\r\nSubject: two\r\n\r\nline1\r\n.\r\n" in out
    assert b"+OK top of message follows\r\nSubject: two\r\n\r\n.\r\n" in out
    assert b"\r\n..dot line\r\n.\r\n" in out


def test_dele_rset_and_numbers() -> None:
    script = LOGIN + (
        b"DELE 2\r\nSTAT\r\nLIST\r\nLIST 2\r\nRETR 2\r\nTOP 2 1\r\nDELE 2\r\nUIDL 2\r\n"
        b"RSET\r\nSTAT\r\nLIST 0\r\nLIST 4\r\nRETR 99999999999\r\nDELE x\r\nTOP 1 -1\r\n"
        b"RETR\r\nRETR 1 2\r\nQUIT\r\n"
    )
    events, out, _ = transcript(script, config=PLAIN_OK)
    assert [e for e in events if isinstance(e, Retrieve)] == []
    lines = replies(out)
    assert b"+OK message 2 deleted" in lines
    live = TOTAL - SIZES[1]
    assert b"+OK 2 %d" % live in lines
    assert b"+OK 2 messages (%d octets)" % live in lines
    assert lines.count(b"-ERR message deleted") == 5
    assert b"+OK maildrop has 3 messages (%d octets)" % TOTAL in lines
    assert b"+OK 3 %d" % TOTAL in lines
    assert lines.count(b"-ERR no such message") == 2
    assert lines.count(b"-ERR invalid message number") == 2  # "99999999999" and "x"
    assert lines.count(b"-ERR syntax error") == 3
    assert events[-2] == Commit(())  # RSET undid the deletion


def test_quit_commits_deletions() -> None:
    script = LOGIN + b"DELE 3\r\nDELE 1\r\nQUIT\r\n"
    events, out, _ = transcript(script, config=PLAIN_OK)
    assert events[-2:] == [Commit((0, 2)), Closed("quit")]
    assert out.endswith(b"+OK signing off (2 messages deleted)\r\n")


def test_failed_update_reports_sys_temp() -> None:
    script = LOGIN + b"DELE 1\r\nQUIT\r\n"
    _, out, _ = transcript(script, config=PLAIN_OK, shell=Shell(update_ok=False))
    assert out.endswith(b"-ERR [SYS/TEMP] some deleted messages not removed\r\n")


@pytest.mark.parametrize("tail", [b"", b"QUI", b"QUIT", b"DELE 2\r\nQU"])
def test_eof_without_quit_deletes_nothing(tail: bytes) -> None:
    events, _, _ = transcript(LOGIN + b"DELE 1\r\n" + tail, config=PLAIN_OK)
    assert not any(isinstance(e, Commit) for e in events)
    assert events[-1] == Closed("connection closed by client")


def test_retrieve_failed() -> None:
    _, out, _ = transcript(LOGIN + b"RETR 1\r\n", config=PLAIN_OK, shell=Shell(retrieve_ok=False))
    assert out.endswith(b"-ERR [SYS/TEMP] message not available\r\n")


def test_authorization_commands_refused_in_transaction() -> None:
    script = LOGIN + b"USER alice\r\nPASS secret\r\nAUTH PLAIN\r\nSTLS\r\nAPOP a b\r\nQUIT\r\n"
    config = Pop3Settings(plaintext_without_tls=True, tls_available=True)
    _, out, _ = transcript(script, config=config)
    assert out.count(b"-ERR command not valid in this state\r\n") == 5


def test_empty_maildrop() -> None:
    conn = Pop3Server(PLAIN_OK)
    conn.receive_data(LOGIN + b"STAT\r\nLIST\r\nUIDL\r\nRETR 1\r\n")
    assert isinstance(next_real(conn), PassRequest)
    conn.login_ok([])
    assert isinstance(conn.next_event(), NeedData)
    assert conn.data_to_send().endswith(
        b"+OK logged in, 0 messages (0 octets)\r\n+OK 0 0\r\n"
        b"+OK 0 messages (0 octets)\r\n.\r\n+OK unique-id listing follows\r\n.\r\n"
        b"-ERR no such message\r\n"
    )


# ------------------------------------------------------------------ pipelining, limits


def test_pipelining_in_one_read() -> None:
    script = LOGIN + b"STAT\r\nRETR 2\r\nDELE 2\r\nLIST 2\r\nQUIT\r\n"
    events, out, _ = transcript(script, config=PLAIN_OK)
    assert [type(e).__name__ for e in events] == [
        "PassRequest",
        "Retrieve",
        "Commit",
        "Closed",
    ]
    assert out.index(b"+OK 3 ") < out.index(b"octets\r\nSubject: two") < out.index(b"deleted")


def test_bare_lf_and_lowercase_commands() -> None:
    _, out, _ = transcript(b"user alice\npass secret\nstat\nquit\n", config=PLAIN_OK)
    assert b"+OK 3 %d\r\n" % TOTAL in out


def test_line_too_long() -> None:
    script = b"NOOP " + b"x" * 600 + b"\r\nCAPA\r\n" + b"Y" * 2000 + b"\r\nQUIT\r\n"
    events, out, _ = transcript(script)
    assert out.count(b"-ERR line too long\r\n") == 2
    assert events == [Closed("quit")]
    assert b"+OK capability list follows" in out


def test_line_limit_is_inclusive() -> None:
    config = Pop3Settings(max_line=10)
    _, out, _ = transcript(b"CAPA    \r\nCAPA     \r\nQUIT\r\n", config=config)
    lines = replies(out)
    assert lines[1] == b"+OK capability list follows"
    assert b"-ERR line too long" in lines


def test_too_many_bad_commands_close() -> None:
    events, out, _ = transcript(LOGIN + b"BOGUS\r\n" * 20, config=PLAIN_OK)
    assert events[-1] == Closed("too many bad commands")
    assert out.count(b"-ERR unknown command\r\n") == 9
    assert out.endswith(b"-ERR too many errors, closing connection\r\n")


def test_unknown_and_empty_commands() -> None:
    _, out, _ = transcript(b"\r\nX\r\nRETRIEVE 1\r\n\xff\xfe\r\nQUIT\r\n")
    assert out.count(b"-ERR unknown command\r\n") == 4


def test_syntax_errors_on_argumentless_commands() -> None:
    script = (
        b"CAPA x\r\nQUIT x\r\n" + LOGIN + b"STAT 1\r\nNOOP 1\r\nRSET 1\r\nLIST 1 2\r\nUIDL 1 2\r\n"
    )
    _, out, _ = transcript(script, config=PLAIN_OK)
    assert out.count(b"-ERR syntax error\r\n") == 7


# ------------------------------------------------------------------ STLS


def test_stls_discards_pipelined_input_and_resets() -> None:
    config = Pop3Settings(tls_available=True)
    script = b"USER alice\r\nSTLS\r\nPASS secret\r\nQUIT\r\n"  # PASS/QUIT must vanish
    events, out, conn = transcript(script, config=config, after_tls=b"PASS secret\r\nCAPA\r\n")
    assert events[0] == StartTls()
    assert conn.tls_active
    lines = replies(out)
    assert lines[:4] == [
        b"+OK postroom POP3 server ready",
        b"-ERR [AUTH] plaintext authentication disallowed without TLS",
        b"+OK begin TLS negotiation",
        b"<TLS>-ERR send USER first",  # USER was forgotten
    ]
    assert b"STLS" not in out[out.index(b"<TLS>") :]  # not offered once active
    assert b"USER\r\n" in out[out.index(b"<TLS>") :]  # plaintext now allowed
    assert events[-1] == Closed("connection closed by client")


def test_stls_refusals() -> None:
    _, out, _ = transcript(b"STLS\r\nQUIT\r\n")
    assert b"-ERR STLS not available\r\n" in out
    _, out, _ = transcript(b"STLS\r\nQUIT\r\n", config=Pop3Settings(tls_available=True), tls=True)
    assert b"-ERR TLS already active\r\n" in out
    _, out, _ = transcript(b"STLS now\r\nQUIT\r\n", config=Pop3Settings(tls_available=True))
    assert b"-ERR syntax error\r\n" in out


def test_stls_then_login() -> None:
    config = Pop3Settings(tls_available=True)
    events, out, _ = transcript(b"STLS\r\n", config=config, after_tls=LOGIN + b"QUIT\r\n")
    assert events[:2] == [StartTls(), PassRequest("alice", "secret")]
    assert out.endswith(LOGIN_OK + b"+OK signing off (0 messages deleted)\r\n")


# ------------------------------------------------------------------ AUTH (RFC 5034)

SASL_CONFIG = Pop3Settings(mechanisms=ALL_MECHS, plaintext_without_tls=True)


def test_auth_lists_mechanisms() -> None:
    _, out, _ = transcript(b"AUTH\r\nQUIT\r\n", config=SASL_CONFIG)
    assert b"+OK supported mechanisms follow\r\nSCRAM-SHA-256\r\nPLAIN\r\nLOGIN\r\n.\r\n" in out


def test_auth_plain_initial_response() -> None:
    script = b"AUTH PLAIN " + b64(b"\x00alice\x00secret") + b"\r\nSTAT\r\nQUIT\r\n"
    events, out, _ = transcript(script, config=SASL_CONFIG)
    assert events[0] == PassRequest("alice", "secret", "PLAIN")
    assert b"+OK logged in, 3 messages" in out


@pytest.mark.parametrize("command", [b"AUTH PLAIN\r\n", b"AUTH plain =\r\n"])
def test_auth_plain_empty_challenge(command: bytes) -> None:
    script = command + b64(b"alice\x00alice\x00secret") + b"\r\nQUIT\r\n"
    events, out, _ = transcript(script, config=SASL_CONFIG)
    assert events[0] == PassRequest("alice", "secret", "PLAIN")
    assert out.startswith(GREETING + b"+ \r\n+OK logged in")


def test_auth_login_and_wrong_password() -> None:
    script = b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(b"nope") + b"\r\nQUIT\r\n"
    events, out, _ = transcript(script, config=SASL_CONFIG)
    assert events[0] == PassRequest("alice", "nope", "LOGIN")
    assert out == GREETING + (
        b"+ " + b64(b"Username:") + b"\r\n+ " + b64(b"Password:") + b"\r\n"
        b"-ERR [AUTH] authentication failed\r\n+OK postroom POP3 server signing off\r\n"
    )


def scram_script(user: str, password: str) -> tuple[bytes, list[bytes]]:
    """Client side of a SCRAM exchange, precomputed against the server's nonces."""
    client = client_mechanism("SCRAM-SHA-256", user, password, nonce_source=lambda: "C")
    server = factory("SCRAM-SHA-256")
    first = client.start().data
    assert first is not None
    server.start(first)
    server_first = server.provide_credentials(SCRAM.get(user))
    final = client.respond(server_first.data)  # type: ignore[union-attr]
    assert final.data is not None  # type: ignore[union-attr]
    lines = [b64(first), b64(final.data)]  # type: ignore[union-attr]
    return b"AUTH SCRAM-SHA-256\r\n" + b"\r\n".join(lines) + b"\r\n\r\n", lines


def test_auth_scram() -> None:
    script, _ = scram_script("alice", "secret")
    events, out, _ = transcript(script + b"STAT\r\nQUIT\r\n", config=SASL_CONFIG)
    assert events[:2] == [
        CredentialsRequest("alice", "SCRAM-SHA-256"),
        Authenticated("alice", "SCRAM-SHA-256"),
    ]
    challenges = [line for line in replies(out) if line.startswith(b"+ ")]
    assert len(challenges) == 3  # empty, server-first, server-final (v=...)
    assert base64.b64decode(challenges[2][2:]).startswith(b"v=")
    assert b"+OK 3 %d\r\n" % TOTAL in out


def test_auth_scram_unknown_user_and_wrong_password() -> None:
    for user, password in (("mallory", "x"), ("alice", "wrong")):
        script, _ = scram_script(user, password)
        events, out, _ = transcript(script + b"QUIT\r\n", config=SASL_CONFIG)
        assert events[0] == CredentialsRequest(user, "SCRAM-SHA-256")
        assert not any(isinstance(e, Authenticated) for e in events)
        assert b"-ERR [AUTH] authentication failed\r\n" in out


def test_auth_scram_allowed_without_tls() -> None:
    config = Pop3Settings(mechanisms=ALL_MECHS)
    script, _ = scram_script("alice", "secret")
    events, _, _ = transcript(script + b"QUIT\r\n", config=config)
    assert Authenticated("alice", "SCRAM-SHA-256") in events


def test_auth_scram_with_success_data_mechanism() -> None:
    """A factory built with success_data=True still works: POP3 sends v= as a challenge."""

    def eager(name: str) -> ServerMechanism:
        return server_mechanism(
            name, nonce_source=nonces(), secret=b"k", iterations=4096, success_data=True
        )

    script, _ = scram_script("alice", "secret")
    conn = Pop3Server(SASL_CONFIG, sasl_factory=eager)
    conn.receive_data(script)
    assert isinstance(next_real(conn), CredentialsRequest)
    conn.credentials(SCRAM["alice"])
    assert conn.next_event() == Authenticated("alice", "SCRAM-SHA-256")


def test_auth_cancel_and_bad_input() -> None:
    script = (
        b"AUTH PLAIN\r\n*\r\n"  # cancelled
        b"AUTH PLAIN !!!\r\n"  # invalid base64 initial response
        b"AUTH PLAIN\r\n!!!\r\n"  # invalid base64 response
        b"AUTH CRAM-MD5\r\n"  # not offered
        b"AUTH PLAIN a b\r\n"  # too many arguments
        b"QUIT\r\n"
    )
    events, out, _ = transcript(script, config=SASL_CONFIG)
    assert events == [Closed("quit")]
    lines = replies(out)
    assert b"-ERR authentication cancelled" in lines
    assert lines.count(b"-ERR invalid base64") == 2
    assert b"-ERR unsupported authentication mechanism" in lines
    assert b"-ERR syntax error" in lines


def test_auth_response_line_limit() -> None:
    script = b"AUTH PLAIN\r\n" + b"A" * 9000 + b"\r\nQUIT\r\n"
    _, out, _ = transcript(script, config=SASL_CONFIG)
    assert b"-ERR authentication response too long\r\n" in out
    assert out.endswith(b"+OK postroom POP3 server signing off\r\n")


def test_auth_malformed_sasl_message_counts_as_failure() -> None:
    script = b"AUTH PLAIN " + b64(b"no nuls") + b"\r\n"
    events, out, _ = transcript(script * 3, config=SASL_CONFIG)
    assert events == [Closed("too many failed logins")]
    assert out.count(b"-ERR [AUTH] authentication failed\r\n") == 3


def test_auth_eof_mid_exchange() -> None:
    events, _, _ = transcript(b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n", config=SASL_CONFIG)
    assert events == [Closed("connection closed by client")]


# ------------------------------------------------------------------ API misuse


def test_answers_must_match_the_pending_event() -> None:
    conn = Pop3Server(PLAIN_OK)
    with pytest.raises(Pop3UsageError):
        conn.login_ok([])
    conn.receive_data(LOGIN + b"RETR 1\r\n")
    assert isinstance(next_real(conn), PassRequest)
    with pytest.raises(Pop3UsageError):
        conn.next_event()  # not answered yet
    with pytest.raises(Pop3UsageError):
        conn.retrieved(b"x")
    with pytest.raises(Pop3UsageError):
        conn.login_ok([(-1, "uid")])
    with pytest.raises(Pop3UsageError):
        conn.login_ok([(1, "bad uid")])
    with pytest.raises(Pop3UsageError):
        conn.login_ok([(1, "u" * 71)])
    conn.login_ok([(5, "u1")])
    assert conn.next_event() == Retrieve(0)
    wire = conn.retrieved(b"hello")
    assert wire.endswith(b"+OK 7 octets\r\nhello\r\n.\r\n")
    assert wire.startswith(b"+OK postroom POP3 server ready\r\n")  # pending output first


def test_scram_needs_a_factory() -> None:
    with pytest.raises(Pop3UsageError):
        Pop3Server(Pop3Settings(mechanisms=("SCRAM-SHA-256",)))


def test_data_after_close_is_ignored() -> None:
    conn = Pop3Server()
    conn.receive_data(b"QUIT\r\n")
    assert isinstance(next_real(conn), Closed)
    conn.receive_data(b"NOOP\r\n")
    assert isinstance(conn.next_event(), Closed)


# ------------------------------------------------------------------ hypothesis

COMMANDS = [
    b"USER alice",
    b"PASS secret",
    b"PASS bad",
    b"STAT",
    b"LIST",
    b"LIST 1",
    b"LIST 9",
    b"UIDL",
    b"UIDL 2",
    b"RETR 1",
    b"RETR 3",
    b"TOP 2 1",
    b"DELE 1",
    b"DELE 2",
    b"RSET",
    b"NOOP",
    b"CAPA",
    b"STLS",
    b"AUTH",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH SCRAM-SHA-256",
    b64(b"\x00alice\x00secret"),
    b64(b"alice"),
    b"*",
    b"",
    b"QUIT",
    b"BOGUS",
    b"X" * 600,
]
LOGIN_PREFIXES = [
    b"",
    LOGIN,
    b"AUTH PLAIN " + b64(b"\x00alice\x00secret") + b"\r\n",
    b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(b"secret") + b"\r\n",
    scram_script("alice", "secret")[0],
]
command_scripts = st.tuples(
    st.sampled_from(LOGIN_PREFIXES),
    st.lists(
        st.sampled_from(COMMANDS).map(lambda c: c + b"\r\n") | st.binary(max_size=40),
        max_size=25,
    ).map(b"".join),
).map(b"".join)


def random_split(seed: int) -> Split:
    def split(data: bytes) -> list[bytes]:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 12))) if data else []
        bounds = [0, *cuts, len(data)]
        return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    return split


@settings(max_examples=400, deadline=None)
@given(script=command_scripts, seed=st.integers(0, 2**32), tls=st.booleans())
def test_random_splits_give_identical_sessions(script: bytes, seed: int, tls: bool) -> None:
    config = Pop3Settings(mechanisms=ALL_MECHS, tls_available=True, max_bad_commands=30)
    reference = run(script, whole, config=config, tls=tls)
    for split in (random_split(seed), bytewise):
        events, out, _ = run(script, split, config=config, tls=tls)
        assert events == reference[0]
        assert out == reference[1]
    # Nothing is deleted unless QUIT was received in TRANSACTION.
    commits = [e for e in reference[0] if isinstance(e, Commit)]
    assert len(commits) <= 1
    if commits:
        assert reference[1].rstrip().endswith(b"deleted)") or b"[SYS/TEMP]" in reference[1]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 2**32))
def test_random_bytes_only_get_replies(data: bytes, seed: int) -> None:
    """Garbage never raises out of the core; every reply line is +OK, -ERR, + or data."""
    config = Pop3Settings(mechanisms=ALL_MECHS, plaintext_without_tls=True)
    events, out, _ = run(data, random_split(seed), config=config)
    assert isinstance(events[-1], Closed)
    assert out.startswith(GREETING)


stored_messages = st.lists(
    st.lists(
        st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"..", b"\xff"]),
        max_size=30,
    ).map(b"".join),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(stored_messages)
def test_list_sizes_equal_retr_octets(messages: list[bytes]) -> None:
    """RFC 1939 sections 5 and 11: LIST/STAT sizes are what RETR delivers (un-stuffed)."""
    conn = Pop3Server(PLAIN_OK)
    numbers = range(1, len(messages) + 1)
    conn.receive_data(LOGIN + b"STAT\r\n" + b"".join(b"RETR %d\r\n" % n for n in numbers))
    assert isinstance(next_real(conn), PassRequest)
    conn.login_ok([(wire_size(m), f"u{i}") for i, m in enumerate(messages)])
    wires = []
    for _ in messages:
        event = next_real(conn)
        assert isinstance(event, Retrieve)
        wires.append(conn.retrieved(messages[event.index]))
    total = 0
    for wire in wires:
        # The last "+OK " is the RETR line (earlier replies come first in wires[0]).
        head, _, body = wire.rpartition(b"+OK ")[2].partition(b" octets\r\n")
        lines = body[:-3].split(b"\r\n")[:-1]  # drop ".\r\n", split into lines
        received = b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
        assert int(head) == len(received)
        total += len(received)
    assert b"+OK %d %d\r\n" % (len(messages), total) in wires[0]  # STAT before the RETRs
