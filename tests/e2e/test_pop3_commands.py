"""POP3 end to end: every command with poplib and a raw client, against ``postroom serve``.

Over plain+STLS (port 110) and POP3S (port 995). Covers RFC 1939 (USER, PASS, STAT, LIST,
RETR, DELE, NOOP, RSET, QUIT, TOP, UIDL), RFC 2449 (CAPA, response codes, pipelining),
RFC 2595 (STLS, no plaintext before TLS), RFC 5034 (AUTH PLAIN and SCRAM-SHA-256, with and
without an initial response), and what the server answers to bad input.
"""

from __future__ import annotations

import base64
import poplib
from collections.abc import Iterator

import pytest
from pop3_e2e import (
    TRICKY,
    ClosedError,
    RawPop3,
    client_ctx,
    deliver,
    mailbox,
    message,
    new_user,
    poplib_login,
    raw,
    running,
    stuffed,
)
from support.server import PASSWORD, Server

MODES = ("stls", "pop3s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("pop3cmd")) as s:
        yield s


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = "[pop3]\nallow_plaintext_auth = true\n"
    with running(tmp_path_factory.mktemp("pop3plain"), extra) as s:
        yield s


def capa(client: RawPop3) -> dict[str, list[str]]:
    status, body = client.multi("CAPA")
    assert status.startswith(b"+OK"), status
    caps: dict[str, list[str]] = {}
    for line in body.decode().splitlines():
        name, *args = line.split()
        caps[name] = args
    return caps


# ----------------------------------------------------------------------------- CAPA, STLS


def test_capa_before_tls_offers_stls_and_no_plaintext(server: Server) -> None:
    with raw(server, "plain") as c:
        caps = capa(c)
    for name in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"):
        assert name in caps, caps
    assert "USER" not in caps  # RFC 2595 section 2.2: no clear-text passwords
    assert caps["SASL"] == ["SCRAM-SHA-256"]
    assert caps["IMPLEMENTATION"]


@pytest.mark.parametrize("mode", MODES)
def test_capa_under_tls_and_in_transaction(server: Server, mode: str) -> None:
    user = new_user(server)
    with raw(server, mode) as c:
        caps = capa(c)
        assert "USER" in caps and "STLS" not in caps
        assert caps["SASL"] == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
        assert c.login(user).startswith(b"+OK")
        caps = capa(c)  # RFC 2449 section 5: may differ after login
        assert {"TOP", "UIDL", "PIPELINING", "RESP-CODES"} <= caps.keys()
        assert not {"USER", "SASL", "STLS"} & caps.keys()


def test_plaintext_refused_before_stls_then_allowed(server: Server) -> None:
    user = new_user(server)
    plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    with raw(server, "plain") as c:
        assert c.cmd(f"USER {user}").startswith(b"-ERR [AUTH]")
        assert c.cmd(f"PASS {PASSWORD}").startswith(b"-ERR [AUTH]")
        assert c.cmd(f"AUTH PLAIN {plain}").startswith(b"-ERR [AUTH]")
        assert c.cmd("AUTH LOGIN").startswith(b"-ERR [AUTH]")
        assert c.cmd("STAT").startswith(b"-ERR")  # still not logged in
        c.stls(client_ctx(server))
        assert c.login(user).startswith(b"+OK")
        assert c.cmd("STAT").startswith(b"+OK 0 0")
        assert c.cmd("STLS").startswith(b"-ERR")  # not in TRANSACTION, and TLS is on


def test_stls_twice_and_on_pop3s_refused(server: Server) -> None:
    with raw(server, "stls") as c:
        assert c.cmd("STLS").startswith(b"-ERR")
        assert c.cmd("NOOP").startswith(b"-ERR")  # still AUTHORIZATION, still talking
    with raw(server, "pop3s") as c:
        assert c.cmd("STLS").startswith(b"-ERR")


def test_pipelined_input_before_stls_is_discarded(server: Server) -> None:
    """RFC 2595 section 4: commands sent with STLS must not run inside the TLS session."""
    user = new_user(server)
    with raw(server, "plain") as c:
        c.send(f"STLS\r\nUSER {user}\r\n".encode())
        assert c.line().startswith(b"+OK")
        assert not c.buf
        c.sock = client_ctx(server).wrap_socket(c.sock, server_hostname="mail.example.test")
        assert c.cmd(f"PASS {PASSWORD}").startswith(b"-ERR")  # USER never happened


def test_plaintext_allowed_when_configured(plain_server: Server) -> None:
    user = new_user(plain_server)
    deliver(plain_server, user, [message(1)])
    with raw(plain_server, "plain") as c:
        caps = capa(c)
        assert "USER" in caps and "PLAIN" in caps["SASL"]
        assert c.login(user).startswith(b"+OK")
        assert c.cmd("STAT").startswith(b"+OK 1 ")
    with raw(plain_server, "plain") as c:
        assert c.auth("PLAIN", user).startswith(b"+OK")


# ----------------------------------------------------------------------------- poplib


@pytest.mark.parametrize("mode", MODES)
def test_every_command_with_poplib(server: Server, mode: str) -> None:
    user = new_user(server)
    metas = deliver(server, user, [*TRICKY, message(1), message(2, size=6000)])
    stored = mailbox(server, user)
    n = len(stored)
    sizes = [len(data) for _, data in stored]
    p = poplib_login(server, user, mode)

    assert p.stat() == (n, sum(sizes))
    resp, listing, _ = p.list()
    assert resp.startswith(b"+OK")
    assert listing == [b"%d %d" % (i + 1, size) for i, size in enumerate(sizes)]
    for i in (1, n):
        assert p.list(i) == b"+OK %d %d" % (i, sizes[i - 1])

    for i, (_, data) in enumerate(stored, 1):
        resp, lines, octets = p.retr(i)
        assert resp == b"+OK %d octets" % len(data)
        # poplib strips CRLF and undoes byte-stuffing: what is left is the stored message,
        # and its size is exactly what LIST and STAT announced (RFC 1939 section 11).
        assert b"\r\n".join(lines) + b"\r\n" == data
        assert octets == sizes[i - 1]

    for i, (_, data) in enumerate(stored, 1):
        head, sep, body = data.partition(b"\r\n\r\n")
        resp, lines, _ = p.top(i, 0)
        assert resp.startswith(b"+OK")
        _, lines2, _ = p.top(i, 2)
        if not sep:  # no empty line: all header, TOP gives it all
            assert b"\r\n".join(lines) + b"\r\n" == data
            assert lines2 == lines
            continue
        assert b"\r\n".join(lines) + b"\r\n" == head + sep
        body_lines = body.split(b"\r\n")[:-1]
        expected = head + sep + b"".join(line + b"\r\n" for line in body_lines[:2])
        assert b"\r\n".join(lines2) + b"\r\n" == expected

    resp, uids, _ = p.uidl()
    expected_uids = [b"%d %x" % (i + 1, m.id) for i, m in enumerate(metas)]
    assert uids == expected_uids
    assert p.uidl(3) == b"+OK " + expected_uids[2]
    assert p.noop() == b"+OK"

    assert p.dele(1).startswith(b"+OK")
    assert p.stat() == (n - 1, sum(sizes) - sizes[0])
    assert [line.split()[0] for line in p.list()[1]] == [b"%d" % i for i in range(2, n + 1)]
    assert [line.split()[0] for line in p.uidl()[1]] == [b"%d" % i for i in range(2, n + 1)]
    for call in (lambda: p.retr(1), lambda: p.list(1), lambda: p.dele(1), lambda: p.top(1, 0), lambda: p.uidl(1)):
        with pytest.raises(poplib.error_proto):
            call()
    assert p.rset().startswith(b"+OK")
    assert p.stat() == (n, sum(sizes))

    assert p.dele(2).startswith(b"+OK")
    assert p.dele(n).startswith(b"+OK")
    assert p.quit().startswith(b"+OK")
    left = mailbox(server, user)
    assert [m.id for m, _ in left] == [m.id for i, m in enumerate(metas) if i not in (1, n - 1)]


@pytest.mark.parametrize("mode", MODES)
def test_retr_sends_byte_stuffed_stored_bytes(server: Server, mode: str) -> None:
    user = new_user(server)
    deliver(server, user, TRICKY)
    stored = mailbox(server, user)
    with raw(server, mode, user) as c:
        for i, (_, data) in enumerate(stored, 1):
            status, body = c.multi(f"RETR {i}")
            assert status == b"+OK %d octets" % len(data)
            assert body == stuffed(data)
        status, body = c.multi("TOP 1 1")
        assert status.startswith(b"+OK")
        assert body == b"Subject: dots\r\n\r\n..\r\n"


def test_pipelined_commands_answered_in_order(server: Server) -> None:
    """RFC 2449 section 6.6: the whole batch in one write, the answers in order."""
    user = new_user(server)
    deliver(server, user, [message(i) for i in range(5)])
    stored = mailbox(server, user)
    with raw(server, "pop3s") as c:
        batch = f"USER {user}\r\nPASS {PASSWORD}\r\nSTAT\r\n" + "".join(
            f"RETR {i}\r\nLIST {i}\r\n" for i in range(1, 6)
        ) + "NOOP\r\nQUIT\r\n"
        c.send(batch.encode())
        assert c.line().startswith(b"+OK")
        assert c.line().startswith(b"+OK")
        assert c.line() == b"+OK 5 %d" % sum(len(d) for _, d in stored)
        for i, (_, data) in enumerate(stored, 1):
            assert c.line() == b"+OK %d octets" % len(data)
            assert c.body() == stuffed(data)
            assert c.line() == b"+OK %d %d" % (i, len(data))
        assert c.line() == b"+OK"
        assert c.line().startswith(b"+OK")
        assert c.is_closed()


# ----------------------------------------------------------------------------- AUTH


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("initial", [True, False], ids=["initial", "no-initial"])
def test_auth_plain(server: Server, mode: str, initial: bool) -> None:
    user = new_user(server)
    deliver(server, user, [message(1)])
    with raw(server, mode) as c:
        assert c.auth("PLAIN", user, initial=initial).startswith(b"+OK")
        assert c.cmd("STAT").startswith(b"+OK 1 ")


@pytest.mark.parametrize("mode", ("plain", *MODES))
@pytest.mark.parametrize("initial", [True, False], ids=["initial", "no-initial"])
def test_auth_scram_sha256(server: Server, mode: str, initial: bool) -> None:
    """SCRAM never shows the password, so it is offered before TLS too."""
    user = new_user(server)
    deliver(server, user, [message(1), message(2)])
    with raw(server, mode) as c:
        assert c.auth("SCRAM-SHA-256", user, initial=initial).startswith(b"+OK")
        assert c.cmd("STAT").startswith(b"+OK 2 ")


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_auth_wrong_password_and_unknown_user(server: Server, mechanism: str) -> None:
    user = new_user(server)
    with raw(server, "pop3s") as c:
        assert c.auth(mechanism, user, "wrong password").startswith(b"-ERR [AUTH]")
        assert c.auth(mechanism, "nobody@example.test", PASSWORD).startswith(b"-ERR [AUTH]")
        assert c.auth(mechanism, user).startswith(b"+OK")


def test_auth_bad_input(server: Server) -> None:
    with raw(server, "pop3s") as c:
        status, body = c.multi("AUTH")
        assert status.startswith(b"+OK") and b"SCRAM-SHA-256" in body
        assert c.cmd("AUTH CRAM-MD5").startswith(b"-ERR")
        assert c.cmd("AUTH PLAIN !!notbase64!!").startswith(b"-ERR")
        assert c.cmd("AUTH PLAIN") == b"+ "
        assert c.cmd("*").startswith(b"-ERR")  # RFC 5034 section 4: cancelled
        assert c.cmd("AUTH SCRAM-SHA-256") == b"+ "
        assert c.cmd("bm90IGEgc2NyYW0gbWVzc2FnZQ==").startswith(b"-ERR [AUTH]")
        assert c.cmd("APOP someone c4c9334bac560ecc979e58001b3e22fb").startswith(b"-ERR")
        assert c.cmd("NOOP").startswith(b"-ERR")  # still in AUTHORIZATION, still talking


# ----------------------------------------------------------------------------- bad input


def test_wrong_arguments_get_err_and_session_goes_on(server: Server) -> None:
    user = new_user(server)
    deliver(server, user, [message(1), message(2)])
    # Ten bad commands end a session (see the test below): two sessions of a few each.
    with raw(server, "stls", user) as c:
        for line in ("LIST abc", "LIST 0", "LIST 3", "LIST 1 2", "LIST -1", "LIST +1", "UIDL 9"):
            assert c.cmd(line).startswith(b"-ERR"), line
        assert c.ok("STAT") == b"+OK 2 %d" % sum(len(d) for _, d in mailbox(server, user))
        for line in ("STAT x", "NOOP x"):
            assert c.cmd(line).startswith(b"-ERR"), line
        assert c.ok("NOOP") == b"+OK"
    with raw(server, "stls", user) as c:
        for line in ("RETR", "RETR 0", "RETR 99999999999", "RETR 1 2", "TOP 1", "TOP 1 -1"):
            assert c.cmd(line).startswith(b"-ERR"), line
        assert c.ok("NOOP") == b"+OK"
    with raw(server, "stls", user) as c:
        for line in ("TOP x 1", "DELE", "DELE y", "UIDL 1 2", "RSET now", "QUIT please"):
            assert c.cmd(line).startswith(b"-ERR"), line
        assert c.ok("NOOP") == b"+OK"
    with raw(server, "stls", user) as c:
        assert c.cmd("USER x").startswith(b"-ERR")  # AUTHORIZATION-only commands
        assert c.cmd("PASS x").startswith(b"-ERR")
        assert c.cmd("AUTH PLAIN").startswith(b"-ERR")
        assert c.ok("NOOP") == b"+OK"
        assert c.ok("STAT") == b"+OK 2 %d" % sum(len(d) for _, d in mailbox(server, user))


def test_commands_before_login_are_refused(server: Server) -> None:
    lines = ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 0", "UIDL")
    for start in range(0, len(lines), 4):  # 5 refused commands before login close
        with raw(server, "stls") as c:
            for line in lines[start : start + 4]:
                assert c.cmd(line).startswith(b"-ERR"), line
            assert c.cmd(f"PASS {PASSWORD}").startswith(b"-ERR")  # PASS without USER


def test_unknown_commands_and_garbage(server: Server) -> None:
    with raw(server, "stls", new_user(server)) as c:
        for line in (b"XYZZY", b"", b"\x00\x01\x02", b"\xff\xfe garbage \x80", b"RETR\x00 1", b"   "):
            assert c.cmd(line).startswith(b"-ERR"), line
        assert c.cmd(b"capa").startswith(b"+OK")  # keywords are case-insensitive
        assert c.body()
        assert c.cmd("QUIT").startswith(b"+OK")
        assert c.is_closed()


def test_over_long_lines(server: Server) -> None:
    user = new_user(server)
    with raw(server, "pop3s", user) as c:
        assert c.cmd(b"NOOP " + b"x" * 5000).startswith(b"-ERR")
        assert c.ok("NOOP") == b"+OK"
        # A line far over the limit, sent in pieces: the server drops what it has read so
        # far rather than buffering 1 MiB, keeps reading to the line's real end (so the
        # session stays in sync), answers -ERR, and goes on.
        for _ in range(16):
            c.send(b"LIST " + b"9" * (1 << 16))
        assert not c.buf
        c.send(b"\r\nNOOP\r\n")
        assert c.line().startswith(b"-ERR")
        assert c.line() == b"+OK"


def test_too_many_bad_commands_close_the_session(server: Server) -> None:
    with raw(server, "stls") as c:
        replies = []
        for _ in range(30):
            try:
                replies.append(c.cmd("BOGUS"))
            except (ClosedError, OSError):
                break
        assert all(r.startswith(b"-ERR") for r in replies)
        assert 5 <= len(replies) < 30
        assert c.is_closed()
