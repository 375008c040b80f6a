"""IMAP hardening over real sockets (issue 9): slow and silent clients, other protocols on
the port, 8-bit and path-like mailbox names, logged-in sessions per user and address."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.slow import trickle
from imap_raw import RawImap
from support.server import PASSWORD, Server

FAST = (
    '[limits]\nimap_idle_timeout = "2s"\nlogin_timeout = "2s"\nmin_data_rate = 1000\n'
    'connections_per_user_ip = 3\nauth_delay = "10ms"\n'
)


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("imapfast"), roles=("imap", "imaps"), extra=FAST).start()
    srv.add_user("slow@example.test")
    srv.add_user("other@example.test")
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in srv.logs()


def _raw(srv: Server, user: str | None = None) -> RawImap:
    c = RawImap(srv.ports["imaps"], context=srv.client_context(), timeout=10)
    if user is not None:
        c.login(user, PASSWORD)
    return c


# --- slow clients ---------------------------------------------------------------------------
def test_trickled_command_is_cut(fast: Server) -> None:
    c = _raw(fast, "slow@example.test")
    answered = trickle(c.sock, b"t1 NOOP" + b" " * 100 + b"\r\n", 0.4, 12)
    assert answered is not None and 1.8 <= answered < 5, answered
    assert c.line() == b"* BYE Disconnected: command not received in time\r\n"
    assert c.closed()
    # Whole commands a little under the timeout apart keep the session (idle rule only).
    c = _raw(fast, "slow@example.test")
    for _ in range(3):
        time.sleep(1.2)
        c.ok("NOOP")
    c.close()


def test_append_literal_below_the_minimum_rate_is_cut(fast: Server) -> None:
    c = _raw(fast, "slow@example.test")
    c.send(b"t1 APPEND INBOX {400+}\r\n")
    answered = trickle(c.sock, b"Subject: slow\r\n\r\n" + b"x" * 380, 0.3, 12)
    assert answered is not None and answered < 5, answered
    assert c.line().startswith(b"* BYE Disconnected")
    # At a steady rate above the minimum, a literal may take longer than the idle timeout.
    c = _raw(fast, "slow@example.test")
    body = b"Subject: steady\r\n\r\n" + b"y" * 5000 + b"\r\n"
    c.send(b"t1 APPEND INBOX {%d+}\r\n" % len(body))
    t = time.monotonic()
    for i in range(0, len(body), 1500):  # ~1900 octets/s
        c.send(body[i : i + 1500])
        time.sleep(0.8)
    c.send(b"\r\n")
    assert time.monotonic() - t > 2.5
    _, done = c.until_tagged("t1")
    assert done.startswith(b"t1 OK"), done
    c.close()


def test_login_must_happen_within_login_timeout(fast: Server) -> None:
    # Busy before login (CAPABILITY every 0.3 s) does not extend it: 2 s in total.
    c = _raw(fast)
    t = time.monotonic()
    got = b""
    try:
        while time.monotonic() - t < 10 and b"* BYE" not in got:
            c.send(b"t CAPABILITY\r\n")
            line = b""
            while not line.startswith((b"t ", b"* BYE")):
                line = c.line()
                got += line
            time.sleep(0.3)
    except (EOFError, OSError):
        pass
    waited = time.monotonic() - t
    assert b"* BYE Disconnected: no login within the time allowed\r\n" in got, got[-200:]
    assert 1.8 <= waited < 5, waited
    assert c.closed()


def test_user_ip_limit(fast: Server) -> None:
    """limits.connections_per_user_ip = 3: a fourth login of the same user from the same
    address gets NO [LIMIT]; other users, and freed slots, are not affected."""
    sessions = [_raw(fast, "slow@example.test") for _ in range(3)]
    extra = _raw(fast)
    _, done = extra.cmd(f'LOGIN "slow@example.test" "{PASSWORD}"')
    assert done.startswith(b"t1 NO [LIMIT]"), done
    extra.ok("NOOP")  # still connected, not logged in, not counted as a failed login
    _raw(fast, "other@example.test").close()
    sessions[0].ok("LOGOUT")
    sessions[0].close()
    # A slot is free again once the server has seen the LOGOUT through. A new connection
    # logs in: ``extra`` may have met the 2 s login timeout by now on a busy machine.
    deadline = time.monotonic() + 10
    while True:
        again = _raw(fast)
        _, done = again.cmd(f'LOGIN "slow@example.test" "{PASSWORD}"')
        if not done.startswith(b"t1 NO [LIMIT]") or time.monotonic() > deadline:
            break
        again.close()
        time.sleep(0.05)
    assert done.startswith(b"t1 OK"), done
    for c in sessions[1:] + [extra, again]:
        c.close()


# --- other protocols and bad input before login ----------------------------------------------
def test_http_request_closes_at_first_line(server: Server) -> None:
    for port, ctx in ((server.ports["imap"], None), (server.ports["imaps"], server.client_context())):
        c = RawImap(port, context=ctx)
        c.send(b"GET / HTTP/1.1\r\nHost: mail.example.test\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n")
        assert c.line() == b"* BYE This is an IMAP server, not an HTTP server\r\n"
        assert c.closed() and c.buf == b""
        c.close()


def test_few_bad_commands_before_login(server: Server) -> None:
    c = RawImap(server.ports["imaps"], context=server.client_context())
    answers = []
    for line in (b"HELO x", b"USER y", b"a1 FOO", b"a2 SELECT INBOX", b"a3 NOOP bar", b"a4 NOOP"):
        c.send(line + b"\r\n")
        try:
            answers.append(c.line())
        except (EOFError, OSError):
            break
    assert [a.split(b" ")[1] for a in answers[:5]] == [b"BAD"] * 5
    assert answers[5:] == [b"* BYE Too many invalid commands\r\n"]
    assert c.closed()


# --- mailbox names ---------------------------------------------------------------------------
def test_8bit_mailbox_name_needs_utf8_enabled(server: Server, user: str, raw) -> None:  # type: ignore[no-untyped-def]
    c = raw(user)
    for command in ('CREATE "Entwürfe"', 'SELECT "Entwürfe"', 'STATUS "Entwürfe" (MESSAGES)',
                    'LIST "" "Entwü*"', 'RENAME INBOX "Posteingang-ü"'):
        _, done = c.cmd(command.encode())
        assert done.split(b" ")[1] == b"BAD" and b"8-bit" in done, (command, done)
    c.ok('CREATE "Entw&APw-rfe"')  # the modified UTF-7 spelling is fine
    c.ok("ENABLE UTF8=ACCEPT")
    c.ok('SELECT "Entwürfe"'.encode())
    c.ok('CREATE "Grüße"'.encode())


@pytest.mark.parametrize(
    "name",
    ['"~"', '"~/mail"', '"~root"', '"/INBOX"', '"/etc/passwd"', '"."', '".."', '"../x"',
     '"a/./b"', '"a/../b"', '"a//b"', '"Sent/.."'],
)
def test_path_like_names_are_never_created_or_resolved(server: Server, user: str, raw, name: str) -> None:  # type: ignore[no-untyped-def]
    c = raw(user)
    _, done = c.cmd(f"CREATE {name}")
    assert b" NO [CANNOT]" in done, done
    _, done = c.cmd(f"RENAME Archive {name}")
    assert b" NO [CANNOT]" in done, done
    # Looked up literally: never resolved to INBOX, Sent, a parent or a file.
    for command in (f"SELECT {name}", f"EXAMINE {name}", f"STATUS {name} (MESSAGES)",
                    f"APPEND {name} {{3+}}\r\nx\r\n"):
        _, done = c.cmd(command)
        assert b" NO " in done, (command, done)
    names = [line.rstrip(b"\r\n").rsplit(b" ", 1)[1] for line in c.ok('LIST "" "*"')]
    assert names and not [n for n in names if n.startswith((b'"~', b'"/', b'".')) or b"/." in n]
    for path in ("/INBOX", "~/INBOX", "./INBOX", "INBOX/.", "Sent/../INBOX", "/Sent"):
        _, done = c.cmd(f'SELECT "{path}"')
        assert b"NO [NONEXISTENT]" in done, (path, done)


def test_thirty_sessions_of_one_user_from_one_address(server: Server, user: str, raw) -> None:  # type: ignore[no-untyped-def]
    # The default limit is 10 (Dovecot's mail_max_userip_connections).
    sessions = [raw(user) for _ in range(10)]
    refused = 0
    for _ in range(20):
        c = raw()
        _, done = c.cmd(f'LOGIN "{user}" "{PASSWORD}"')
        refused += done.startswith(b"t1 NO [LIMIT]")
        c.close()
    assert refused == 20
    for s in sessions:
        s.ok("NOOP")
