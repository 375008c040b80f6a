"""POP3 limits end to end: failed-login delays and closing, the idle timeout, big maildrops.

The server here runs with short, measurable settings: a 300 ms base delay after a failed
login (doubling with each failure on the connection, as for SMTP AUTH), three failures
before the connection is closed, and a 1 s idle timeout (RFC 1939 section 3 asks for at
least 10 minutes in production; the default is 600 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from pop3_e2e import deliver, mailbox, message, new_user, poplib_login, raw, running
from support.server import Server

from postroom.store.api import FLAG_SEEN

DELAY = 0.3
EXTRA = f'[limits]\nauth_delay = "{int(DELAY * 1000)}ms"\nauth_failures = 3\npop3_idle_timeout = "1s"\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("pop3limits"), EXTRA) as s:
        yield s


def timed(fn: Callable[[], bytes]) -> tuple[bytes, float]:
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


# ----------------------------------------------------------------------------- failed logins


def test_failed_logins_are_delayed_then_the_connection_closes(server: Server) -> None:
    user = new_user(server)
    with raw(server, "stls") as c:
        c.ok(f"USER {user}")
        first, t1 = timed(lambda: c.cmd("PASS wrong"))
        second, t2 = timed(lambda: c.auth("PLAIN", user, "wrong"))
        third, t3 = timed(lambda: c.auth("SCRAM-SHA-256", user, "wrong"))
        assert first.startswith(b"-ERR [AUTH]") and second.startswith(b"-ERR [AUTH]")
        assert third.startswith(b"-ERR [AUTH]")
        # 1x, 2x, 4x the base delay, whatever the mechanism.
        assert t1 >= DELAY * 0.95 and t2 >= 2 * DELAY * 0.95 and t3 >= 4 * DELAY * 0.95, (t1, t2, t3)
        assert c.is_closed(5)


def test_a_good_login_after_failures_works(server: Server) -> None:
    user = new_user(server)
    with raw(server, "pop3s") as c:
        assert c.auth("PLAIN", user, "wrong").startswith(b"-ERR [AUTH]")
        assert c.auth("PLAIN", user).startswith(b"+OK")
        assert c.ok("STAT") == b"+OK 0 0"


def test_unknown_user_fails_like_a_wrong_password(server: Server) -> None:
    with raw(server, "pop3s") as c:
        c.ok("USER nobody@example.test")
        status, elapsed = timed(lambda: c.cmd("PASS whatever"))
        assert status.startswith(b"-ERR [AUTH]") and elapsed >= DELAY * 0.95


# ----------------------------------------------------------------------------- idle timeout


@pytest.mark.parametrize("logged_in", [False, True], ids=["authorization", "transaction"])
def test_idle_session_is_closed(server: Server, logged_in: bool) -> None:
    user = new_user(server)
    deliver(server, user, [message(1)])
    c = raw(server, "stls", user if logged_in else None)
    start = time.monotonic()
    line = c.line(timeout=10)
    assert line.startswith(b"-ERR"), line
    assert c.is_closed(5)
    assert 0.9 <= time.monotonic() - start < 8
    c.close()
    if logged_in:  # nothing deleted, the lock released
        with raw(server, "pop3s", user) as again:
            assert again.ok("STAT").startswith(b"+OK 1 ")


def test_active_session_is_not_closed(server: Server) -> None:
    user = new_user(server)
    with raw(server, "pop3s", user) as c:
        for _ in range(8):  # 2 s in all, never 1 s idle
            time.sleep(0.25)
            assert c.ok("NOOP") == b"+OK"


# ----------------------------------------------------------------------------- big maildrop


def test_ten_thousand_message_maildrop_with_poplib(server: Server) -> None:
    count = 50_000 if os.environ.get("POSTROOM_SLOW") == "1" else 10_000
    user = new_user(server)
    deliver(server, user, [message(i, size=400) for i in range(count)])
    stored = mailbox(server, user)
    assert len(stored) == count
    p = poplib_login(server, user, "pop3s")
    try:
        total = sum(len(data) for _, data in stored)
        assert p.stat() == (count, total)
        _, listing, _ = p.list()
        assert listing == [b"%d %d" % (i, len(d)) for i, (_, d) in enumerate(stored, 1)]
        _, uids, _ = p.uidl()
        assert len({u.split()[1] for u in uids}) == count
        got = 0
        for i in range(1, count + 1):
            _, lines, octets = p.retr(i)
            assert octets == len(stored[i - 1][1])
            if i % 997 == 1 or i == count:  # a sample compared byte for byte
                assert b"\r\n".join(lines) + b"\r\n" == stored[i - 1][1]
            got += octets
        assert got == total
        assert p.quit().startswith(b"+OK")
    finally:
        p.close()
    # Everything retrieved is \Seen now, in one write at the end of the session.
    assert all(m.flags & FLAG_SEEN for m, _ in mailbox(server, user))
