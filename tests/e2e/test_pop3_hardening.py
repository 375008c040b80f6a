"""POP3 hardening over real sockets: a reconnecting client is not locked out, slow and
silent clients are cut, and other protocols on the port are dropped (issue 9)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from support.slow import trickle
from pop3_e2e import deliver, message, new_user, poplib_login, raw, running

FAST = (
    '[limits]\npop3_idle_timeout = "2s"\nlogin_timeout = "2s"\nmin_data_rate = 1000\n'
    'auth_delay = "10ms"\n'
)


def test_reconnect_after_a_silent_drop_is_not_locked_out(tmp_path: Path) -> None:
    """A phone changes networks mid-RETR: its old connection is silently dead (open, never
    read again, output stuck). Logging in again at once works; the dead session's DELE
    marks are not applied (it never sent QUIT)."""
    with running(tmp_path) as server:
        user = new_user(server)
        big = message(1, size=4 << 20)
        deliver(server, user, [big, message(2)])
        dead = raw(server, "pop3s", user)
        assert dead.ok("DELE 2")
        dead.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        dead.send(b"RETR 1\r\n")  # 4 MB the client will never read: the server's writes stall
        time.sleep(0.5)
        t = time.monotonic()
        p = poplib_login(server, user, "pop3s")  # raises on -ERR [IN-USE]
        took = time.monotonic() - t
        assert p.stat()[0] == 2  # the dead session's DELE 2 was dropped
        assert len(p.retr(1)[1]) > 1000
        p.quit()
        assert took < 5, took  # the take-over grace (1 s), not the 10-minute idle timeout
        dead.close()
        # A session that is merely idle is ended at once, with a reason.
        idle = raw(server, "stls", user)
        t = time.monotonic()
        p = poplib_login(server, user)
        assert time.monotonic() - t < 3
        assert idle.line().startswith(b"-ERR [IN-USE]") and idle.is_closed()
        p.quit()
        idle.close()
        assert "event=pop3_takeover" in server.logs()


def test_trickled_command_and_slow_login_are_cut(tmp_path: Path) -> None:
    with running(tmp_path, FAST) as server:
        user = new_user(server)
        # After login: one byte every 0.4 s is never 2 s idle, but the line takes longer.
        c = raw(server, "pop3s", user)
        answered = trickle(c.sock, b"NOOP" + b" " * 100 + b"\r\n", 0.4, 12)
        assert answered is not None and 1.8 <= answered < 5, answered
        assert c.line() == b"-ERR disconnected: command not received in time"
        assert c.is_closed()
        c.close()
        # Before login: busy or not, the client has login_timeout (2 s) in total.
        c = raw(server, "pop3s")
        t = time.monotonic()
        lines = []
        while time.monotonic() - t < 10:
            try:
                c.send(b"CAPA\r\n")
                status = c.line()
            except (OSError, EOFError, Exception):
                break
            if status.startswith(b"+OK"):
                c.body()
            else:
                lines.append(status)
                break
            time.sleep(0.3)
        waited = time.monotonic() - t
        assert lines == [b"-ERR disconnected: no login within the time allowed"], lines
        assert 1.8 <= waited < 5, waited
        c.close()


def test_http_request_on_pop3_closes_at_first_line(tmp_path: Path) -> None:
    with running(tmp_path) as server:
        for mode in ("plain", "pop3s"):
            c = raw(server, mode)
            c.send(b"GET / HTTP/1.1\r\nHost: mail.example.test\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n")
            assert c.line().startswith(b"-ERR this is a POP3 server")
            assert c.is_closed() and c.buf == b""  # one answer for the whole request
            c.close()
        # Unknown commands before login: the fifth closes (Dovecot: 10).
        c = raw(server, "pop3s")
        replies = []
        for line in (b"HELO x", b"EHLO x", b"a1 LOGIN x y", b"FOO", b"BAR", b"NOOP"):
            try:
                replies.append(c.cmd(line))
            except Exception:
                break
        assert len(replies) == 5 and replies[-1] == b"-ERR too many errors, closing connection"
        assert c.is_closed()
        c.close()
