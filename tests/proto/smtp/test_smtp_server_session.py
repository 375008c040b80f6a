"""Server core: greeting, STARTTLS, AUTH, shell-side API and its misuse."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from smtp_harness import CONFIG, EHLO, ENVELOPE, drive, drive_all_ways

from postroom.proto.smtp import replies as R
from postroom.proto.smtp.events import (
    CLOSED,
    NEED_DATA,
    AuthAborted,
    AuthResponse,
    AuthStart,
    Hello,
    MailFrom,
    StartTls,
)
from postroom.proto.smtp.replies import Reply, SmtpUsageError
from postroom.proto.smtp.server import CloseReason, ServerConfig, ServerConnection, State

TLS = replace(CONFIG, tls_available=True, auth_requires_tls=True)
MAIL = b"MAIL FROM:<alice@example.com>\r\n"
PLAIN = base64.b64encode(b"\0user\0secret")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --- greeting -----------------------------------------------------------------------------


def test_default_greeting_and_early_talker() -> None:
    conn = ServerConnection(CONFIG)
    assert not conn.early_talker
    conn.receive_data(b"EHLO x\r\n")
    assert conn.early_talker  # the shell may now greet with 554 or close()
    conn.send_greeting()
    assert conn.data_to_send() == b"220 mx.example.org ESMTP\r\n"


def test_554_greeting_only_quit_works() -> None:
    conn = ServerConnection(CONFIG)
    conn.send_greeting(R.NO_SERVICE)
    assert conn.state is State.REFUSED
    conn.receive_data(b"EHLO x.example\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n")
    assert conn.next_event() is CLOSED
    assert conn.data_to_send() == (
        b"554 5.7.1 No SMTP service here\r\n503 5.5.1 Bad sequence of commands\r\n"
        b"503 5.5.1 Bad sequence of commands\r\n221 2.0.0 Bye\r\n"
    )
    assert conn.close_reason is CloseReason.QUIT


def test_421_greeting_closes() -> None:
    conn = ServerConnection(CONFIG)
    conn.send_greeting(R.SERVICE_UNAVAILABLE)
    assert conn.next_event() is CLOSED
    assert conn.close_reason is CloseReason.GREETING
    assert conn.data_to_send().startswith(b"421 4.7.0")


def test_greeting_misuse() -> None:
    conn = ServerConnection(CONFIG)
    with pytest.raises(SmtpUsageError):
        conn.next_event()
    with pytest.raises(SmtpUsageError):
        conn.send_greeting(R.OK)
    conn.send_greeting()
    with pytest.raises(SmtpUsageError):
        conn.send_greeting()


# --- STARTTLS -----------------------------------------------------------------------------


def test_starttls_advertised_and_discards_injected_commands() -> None:
    conn = ServerConnection(TLS)
    conn.send_greeting()
    # CVE-2011-0411: commands pipelined after STARTTLS in the same packet.
    conn.receive_data(EHLO + b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.example>\r\n")
    hello = conn.next_event()
    assert isinstance(hello, Hello)
    conn.accept()
    ehlo = conn.data_to_send()
    assert b"250 STARTTLS\r\n" in ehlo and b"AUTH" not in ehlo  # AUTH needs TLS here
    assert isinstance(conn.next_event(), StartTls)
    conn.accept()
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.state is State.TLS_HANDSHAKE
    with pytest.raises(SmtpUsageError):
        conn.next_event()
    with pytest.raises(SmtpUsageError):
        conn.receive_data(b"\x16\x03\x01")
    conn.starttls_done()
    assert conn.tls_active and conn.state is State.CONNECTED and conn.helo is None
    # Nothing of the injected commands survived.
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""
    conn.receive_data(MAIL + EHLO)
    ev = conn.next_event()
    assert isinstance(ev, Hello)
    assert conn.data_to_send() == b"503 5.5.1 Send EHLO/HELO first\r\n"
    conn.accept()
    out = conn.data_to_send()
    assert b"STARTTLS" not in out and b"250 AUTH PLAIN LOGIN\r\n" in out


def test_starttls_errors() -> None:
    t = drive_all_ways(b"STARTTLS now\r\n" + ENVELOPE + b"STARTTLS\r\n", TLS)
    assert t.codes == ["501 5.5.4", "250", "250 2.1.0", "250 2.1.5", "503 5.5.1"]
    t = drive([b"STARTTLS\r\n"], replace(TLS, tls_active=True))
    assert t.codes == ["503 5.5.1"]


def test_starttls_refused_by_shell() -> None:
    def policy(conn: ServerConnection, event: object) -> None:
        if isinstance(event, StartTls):
            conn.reject(R.TLS_NOT_AVAILABLE)
        else:
            conn.accept()

    t = drive([b"STARTTLS\r\nNOOP\r\n"], TLS, policy)
    assert t.codes == ["454 4.7.0", "250 2.0.0"]
    assert not t.conn.tls_active


def test_starttls_done_with_new_config() -> None:
    conn = ServerConnection(TLS)
    conn.send_greeting()
    conn.receive_data(b"STARTTLS\r\n")
    conn.next_event()
    conn.accept()
    conn.starttls_done(replace(TLS, auth_mechanisms=("PLAIN",)))
    assert conn.config.tls_active and conn.config.auth_mechanisms == ("PLAIN",)
    with pytest.raises(SmtpUsageError):
        conn.starttls_done()


def test_require_tls() -> None:
    config = replace(TLS, require_tls=True)
    t = drive([EHLO + MAIL + b"AUTH PLAIN\r\nNOOP\r\nSTARTTLS\r\n", EHLO + MAIL], config)
    assert t.codes == ["250", "530 5.7.0", "530 5.7.0", "250 2.0.0", "220 2.0.0", "250",
                       "250 2.1.0"]


# --- AUTH ---------------------------------------------------------------------------------


AUTH_CFG = replace(CONFIG, tls_active=True, auth_requires_tls=True)


def test_auth_plain_initial_response() -> None:
    t = drive_all_ways(EHLO + b"AUTH PLAIN " + PLAIN + b"\r\n" + MAIL, AUTH_CFG)
    assert t.codes == ["250", "235 2.7.0", "250 2.1.0"]
    start = t.of(AuthStart)[0]
    assert start == AuthStart("PLAIN", b"\0user\0secret")
    assert t.conn.authenticated_user == "user"


def test_auth_plain_after_challenge() -> None:
    t = drive_all_ways(EHLO + b"auth plain\r\n" + PLAIN + b"\r\n", AUTH_CFG)
    assert t.output.endswith(b"334 \r\n235 2.7.0 Authentication successful\r\n")
    assert t.of(AuthStart) == [AuthStart("PLAIN", None)]
    assert t.of(AuthResponse) == [AuthResponse(b"\0user\0secret")]


def test_auth_login_two_steps() -> None:
    t = drive_all_ways(EHLO + b"AUTH LOGIN\r\n" + b64(b"user") + b"\r\n" + b64(b"secret") + b"\r\n",
                       AUTH_CFG)
    assert b"334 " + b64(b"Username:") + b"\r\n" in t.output
    assert b"334 " + b64(b"Password:") + b"\r\n" in t.output
    assert t.codes[-1] == "235 2.7.0"


def test_auth_empty_initial_response() -> None:
    t = drive([EHLO + b"AUTH PLAIN =\r\n"], AUTH_CFG)
    assert t.of(AuthStart) == [AuthStart("PLAIN", b"")]
    assert t.codes[-1] == "535 5.7.8"


@pytest.mark.parametrize(
    ("client", "code"),
    [
        (b"AUTH PLAIN\r\n*\r\n", "501 5.0.0"),
        (b"AUTH PLAIN\r\n!!notbase64\r\n", "501 5.5.2"),
        (b"AUTH PLAIN\r\n" + b"A" * 13000 + b"\r\n", "500 5.5.6"),
    ],
)
def test_auth_aborted(client: bytes, code: str) -> None:
    t = drive_all_ways(EHLO + client + b"NOOP\r\n", AUTH_CFG)
    assert t.codes == ["250", "334", code, "250 2.0.0"]
    assert len(t.of(AuthAborted)) == 1
    assert t.conn.authenticated_user is None


def test_auth_long_response_within_limit() -> None:
    blob = b64(b"\0" * 9000)  # 12000 octets of base64: within RFC 4954's 12288
    t = drive_all_ways(EHLO + b"AUTH PLAIN\r\n" + blob + b"\r\n", AUTH_CFG)
    assert t.codes == ["250", "334", "535 5.7.8"]


@pytest.mark.parametrize(
    ("client", "code"),
    [
        (b"AUTH PLAIN !!!\r\n", "501 5.5.2"),
        (b"AUTH CRAM-MD5\r\n", "504 5.5.4"),
        (b"AUTH\r\n", "501 5.5.4"),
        (b"AUTH PLAIN a b\r\n", "501 5.5.4"),
        (b"AUTH PLAIN d3Jvbmc=\r\n", "535 5.7.8"),
    ],
)
def test_auth_errors(client: bytes, code: str) -> None:
    t = drive_all_ways(EHLO + client, AUTH_CFG)
    assert t.codes == ["250", code]


def test_auth_sequence_errors() -> None:
    t = drive_all_ways(b"AUTH PLAIN " + PLAIN + b"\r\n" + EHLO + MAIL + b"AUTH PLAIN " + PLAIN
                       + b"\r\nRSET\r\nAUTH PLAIN " + PLAIN + b"\r\nAUTH PLAIN " + PLAIN + b"\r\n",
                       AUTH_CFG)
    assert t.codes == ["503 5.5.1", "250", "250 2.1.0", "503 5.5.1", "250 2.0.0", "235 2.7.0",
                       "503 5.5.1"]


def test_auth_needs_tls_and_configuration() -> None:
    t = drive([EHLO + b"AUTH PLAIN " + PLAIN + b"\r\n"], replace(CONFIG, auth_requires_tls=True))
    assert t.codes == ["250", "538 5.7.11"]
    t = drive([EHLO + b"AUTH PLAIN " + PLAIN + b"\r\n"], replace(CONFIG, auth_mechanisms=()))
    assert t.codes == ["250", "502 5.5.1"]


def test_mail_requires_auth() -> None:
    config = replace(AUTH_CFG, mail_requires_auth=True)
    t = drive_all_ways(EHLO + MAIL + b"AUTH PLAIN " + PLAIN + b"\r\n" + MAIL, config)
    assert t.codes == ["250", "530 5.7.0", "235 2.7.0", "250 2.1.0"]


def test_secrets_not_in_repr() -> None:
    assert "secret" not in repr(AuthStart("PLAIN", b"\0user\0secret"))
    assert "secret" not in repr(AuthResponse(b"secret"))


def test_auth_state_is_reset_by_starttls() -> None:
    config = replace(CONFIG, tls_available=True, auth_requires_tls=False)
    t = drive([EHLO + b"AUTH PLAIN " + PLAIN + b"\r\nSTARTTLS\r\n"], config)
    assert t.codes == ["250", "235 2.7.0", "220 2.0.0"]
    assert t.conn.authenticated_user is None and t.conn.helo is None


# --- shell API misuse and control -----------------------------------------------------------


def test_decision_misuse() -> None:
    conn = ServerConnection(CONFIG)
    conn.send_greeting()
    with pytest.raises(SmtpUsageError):
        conn.accept()
    conn.receive_data(EHLO + MAIL)
    assert isinstance(conn.next_event(), Hello)
    with pytest.raises(SmtpUsageError):
        conn.accept(R.OK)  # Hello's reply is built by the core
    with pytest.raises(SmtpUsageError):
        conn.auth_challenge(b"x")
    with pytest.raises(SmtpUsageError):
        conn.reject(R.OK)
    conn.accept()
    assert isinstance(conn.next_event(), MailFrom)
    with pytest.raises(SmtpUsageError):
        conn.accept(R.UNKNOWN_USER)
    with pytest.raises(SmtpUsageError):
        conn.auth_success("x")
    with pytest.raises(SmtpUsageError):
        conn.auth_failure(R.OK)
    conn.accept(R.SENDER_OK.with_text("Sender looks fine"))
    assert conn.data_to_send().endswith(b"250 2.1.0 Sender looks fine\r\n")


def test_shell_close() -> None:
    conn = ServerConnection(CONFIG)
    conn.send_greeting()
    conn.receive_data(EHLO)
    assert isinstance(conn.next_event(), Hello)
    conn.close(R.SHUTTING_DOWN)  # even with a decision pending
    assert conn.next_event() is CLOSED
    assert conn.data_to_send().endswith(b"421 4.3.2 System shutting down, try again later\r\n")
    assert conn.close_reason is CloseReason.SHELL
    conn.receive_data(b"NOOP\r\n")  # ignored
    assert conn.next_event() is CLOSED
    conn.close()  # idempotent


def test_reject_with_421_closes() -> None:
    def policy(conn: ServerConnection, event: object) -> None:
        conn.reject(Reply(421, "4.3.2", "Busy"))

    t = drive([EHLO + b"NOOP\r\n"], CONFIG, policy)
    assert t.codes == ["421 4.3.2"]
    assert t.conn.close_reason is CloseReason.SHELL


def test_set_config() -> None:
    conn = ServerConnection(CONFIG)
    conn.send_greeting()
    conn.set_config(replace(CONFIG, max_recipients=1, dsn=False))
    conn.receive_data(EHLO + MAIL + b"RCPT TO:<a@b.example> NOTIFY=NEVER\r\n")
    for _ in range(3):
        ev = conn.next_event()
        if ev is NEED_DATA:
            break
        conn.accept()
    assert conn.data_to_send().endswith(b"555 5.5.4 Unsupported MAIL/RCPT parameter: NOTIFY\r\n")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": "has space"},
        {"hostname": ""},
        {"max_message_size": -1},
        {"max_recipients": 0},
        {"max_line_length": 100},
        {"max_auth_line_length": 1000},
        {"auth_mechanisms": ("PL AIN",)},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"hostname": "mx.example.org"}
    args.update(kwargs)
    with pytest.raises(ValueError):
        ServerConfig(**args)  # type: ignore[arg-type]


def test_config_normalises_mechanisms() -> None:
    config = ServerConfig("mx.example.org", auth_mechanisms=("plain", "scram-sha-256"))
    assert config.auth_mechanisms == ("PLAIN", "SCRAM-SHA-256")


def test_eof_while_tls_handshake_pending() -> None:
    conn = ServerConnection(TLS)
    conn.send_greeting()
    conn.receive_data(b"STARTTLS\r\n")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), StartTls)
    conn.accept()
    conn.starttls_done()  # harmless although the peer is gone
    assert conn.next_event() is CLOSED
    assert conn.close_reason is CloseReason.EOF


def test_close_during_tls_handshake() -> None:
    conn = ServerConnection(TLS)
    conn.send_greeting()
    conn.receive_data(b"STARTTLS\r\n")
    conn.next_event()
    conn.accept()
    conn.close()  # handshake failed: the shell just closes
    assert conn.next_event() is CLOSED and conn.close_reason is CloseReason.SHELL


def test_event_before_close_is_still_delivered() -> None:
    config = replace(AUTH_CFG, max_errors=1)
    t = drive([EHLO + b"AUTH PLAIN\r\n*\r\n"], config)
    assert t.codes == ["250", "334", "501 5.0.0", "421 4.7.0"]
    assert len(t.of(AuthAborted)) == 1
    assert t.conn.close_reason is CloseReason.TOO_MANY_ERRORS
