"""Login floods and password guessing, over real sockets (auth/failures.py).

A wrong-password flood used to fill every argon2 slot, so that a login from anybody else
(whose password was not remembered yet) queued behind it and then got a temporary failure.
Here the flood comes from ::1 (POP3) and the good logins from 127.0.0.1 (two client addresses,
both loopback): the good logins must stay fast, the flooder must be slowed and then
refused, and a user guessed at from both addresses is locked for new passwords while a
client that logged in before keeps working.
"""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import smtplib
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SLOW
from support.server import PASSWORD, Server

DOMAIN = "example.test"
PLAIN = "[imap]\nallow_plaintext_auth = true\n[pop3]\nallow_plaintext_auth = true\n"
V6 = "::1"
V4 = "127.0.0.1"
# A good login waits for at most one verify of the flooder (plus its own) per slot;
# generous for a loaded 2-core CI machine, far below what a queue of dozens costs.
BOUND = 1.5


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind((V6, 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this machine")


def _server(tmp: Path, limits: str, users: list[str]) -> Server:
    # POP3 listens on ::1 (the other address); everything else on 127.0.0.1.
    srv = Server(tmp, roles=("imap", "pop3", "submission"), hosts={"pop3": f"[{V6}]"},
                 extra="[limits]\n" + limits + PLAIN)
    for user in users:
        srv.add_user(user)
    return srv


async def _pop3_flood(port: int, user: str, until: float, connections: int,
                      answers: dict[str, int]) -> None:
    """``connections`` POP3 clients from ::1 sending wrong passwords until ``until``."""

    async def one(i: int) -> None:
        n = 0
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(V6, port), 30)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            try:
                async with asyncio.timeout(60):
                    await reader.readline()
                    while time.monotonic() < until:
                        n += 1
                        writer.write(f"USER {user}\r\nPASS wrong-{i}-{n}\r\n".encode())
                        await reader.readline()
                        line = await reader.readline()
                        if not line:
                            break
                        key = line.split(b" ")[0 if line.startswith(b"+") else 1].decode()
                        answers[key] = answers.get(key, 0) + 1
            except (OSError, TimeoutError):
                pass
            finally:
                writer.close()

    await asyncio.gather(*(one(i) for i in range(connections)))


def _timed_login(port: int, user: str) -> float:
    started = time.monotonic()
    m = imaplib.IMAP4(V4, port, timeout=60)
    try:
        m.login(user, PASSWORD)
        return time.monotonic() - started
    finally:
        m.logout()


@pytest.fixture
def flood_server(tmp_path: Path) -> Iterator[Server]:
    # No block (auth_ip_failures = 0) and no delays (auth_delay = 0): the flood keeps every
    # password check it can get busy for the whole test, as the reported one did.
    good = [f"good{i}@{DOMAIN}" for i in range(24)]
    srv = _server(tmp_path, 'auth_delay = 0\nauth_ip_failures = 0\nauth_user_failures = 0\n'
                  'connections_per_ip = 500\n',
                  ["victim@" + DOMAIN, *good]).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_flooding_address_does_not_delay_other_addresses(flood_server: Server) -> None:
    """60 POP3 connections from ::1 guess passwords non-stop; first logins (nothing
    remembered, so each costs an argon2 verify) over IMAP from 127.0.0.1 take about as
    long as without the flood. Before, each waited behind every queued guess: 60 verifies
    / 2 slots, about 1.2 s on a quiet 2-core machine and several seconds on a loaded one.

    The bound is relative to the same logins measured just before the flood, so that the
    machine's load (argon2 runs at a lower priority) does not decide the outcome."""
    srv = flood_server
    answers: dict[str, int] = {}
    n = 12 if SLOW else 6
    port = srv.ports["imap"]
    before = [_timed_login(port, f"good{i}@{DOMAIN}") for i in range(n)]
    during: list[float] = []

    async def run() -> None:
        until = time.monotonic() + (25.0 if SLOW else 8.0)
        flood = asyncio.create_task(_pop3_flood(srv.ports["pop3"], "victim@" + DOMAIN, until,
                                                60, answers))
        await asyncio.sleep(1.5)  # let the flood fill the queue
        for i in range(n, 2 * n):
            during.append(await asyncio.to_thread(_timed_login, port, f"good{i}@{DOMAIN}"))
        await flood

    asyncio.run(run())
    base = statistics.median(before)
    print(f"first logins from 127.0.0.1: median {base * 1000:.0f} ms before the flood, "
          f"{statistics.median(during) * 1000:.0f} ms (max {max(during) * 1000:.0f} ms) while "
          f"::1 floods; flood answers {answers}")
    # The flood really ran: its guesses were checked.
    assert answers.get("[AUTH]", 0) >= 10, answers
    # 3x: on a loaded machine (4 test processes on 2 cores) the flood's own verifies take
    # CPU from the measured logins even when they never wait behind them (seen: 273 ms
    # before, 905 ms during); the defect this guards against queued each login behind
    # ~30 verifies, over 1.2 s on a quiet machine where ``base`` is below 0.1 s.
    assert statistics.median(during) < 3 * base + 0.6, (before, during)
    assert max(during) < 2 * max(before) + BOUND, (before, during)


# Long enough that the sixth failure's wait (8 x DELAY) stands out from a loaded
# machine's password checks, which were seen to vary by 0.65 s between two attempts.
DELAY = 0.25


@pytest.fixture
def guarded_server(tmp_path: Path) -> Iterator[Server]:
    srv = _server(tmp_path, f'auth_delay = "{int(DELAY * 1000)}ms"\nauth_ip_failures = 6\nauth_ip_window = "1h"\n'
                  'auth_user_failures = 100\n', ["victim@" + DOMAIN, "other@" + DOMAIN]).start()
    try:
        yield srv
    finally:
        srv.stop()


def _pop3_v6(srv: Server, user: str, password: str) -> tuple[float, bytes]:
    """A POP3 login from ::1: (seconds, the answer to PASS)."""
    p = poplib.POP3(V6, srv.ports["pop3"], timeout=60)
    try:
        p.user(user)
        started = time.monotonic()
        try:
            answer = p.pass_(password)
        except poplib.error_proto as e:
            answer = e.args[0]
        return time.monotonic() - started, answer
    finally:
        p.close()


def test_flooder_is_slowed_then_refused_and_others_are_not(guarded_server: Server) -> None:
    srv = guarded_server
    attempts = [_pop3_v6(srv, "victim@" + DOMAIN, f"guess-{i}") for i in range(9)]
    texts = [t for _, t in attempts]
    # 6 wrong passwords checked, then the address is blocked: a temporary refusal.
    assert all(t.startswith(b"-ERR [AUTH]") for t in texts[:6]), texts
    assert all(t.startswith(b"-ERR [SYS/TEMP]") for t in texts[6:]), texts
    # From the third failure on each attempt waits DELAY x 2^(n-2) before its check.
    # The second failure waits for nothing: it takes about as long as the first (the
    # password check), not the 2 s that the sixth waits for; compared with the first
    # rather than with a fixed time, which a busy machine's password checks exceed.
    assert attempts[5][0] >= DELAY * 2 ** 3, attempts
    assert attempts[1][0] < attempts[0][0] + DELAY * 2 ** 3, attempts
    # While blocked, even the right password is refused (a guess learns nothing) ...
    assert _pop3_v6(srv, "victim@" + DOMAIN, PASSWORD)[1].startswith(b"-ERR [SYS/TEMP]")
    # ... while another address logs in at once, on every protocol, victim included.
    assert _timed_login(srv.ports["imap"], "victim@" + DOMAIN) < BOUND
    smtp = smtplib.SMTP(V4, srv.ports["submission"], timeout=60)
    try:
        smtp.starttls(context=srv.client_context())
        smtp.login("victim@" + DOMAIN, PASSWORD)
    finally:
        smtp.quit()
    assert "auth_address_blocked" in srv.logs()


@pytest.fixture
def lock_server(tmp_path: Path) -> Iterator[Server]:
    srv = _server(tmp_path, 'auth_delay = "10ms"\nauth_ip_failures = 0\nauth_user_failures = 4\n'
                  'auth_user_window = "1h"\n', ["victim@" + DOMAIN, "other@" + DOMAIN]).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_user_guessed_from_many_addresses_is_locked_for_new_passwords(lock_server: Server) -> None:
    srv = lock_server
    # A phone logged in before the attack: its password is remembered.
    _timed_login(srv.ports["imap"], "victim@" + DOMAIN)
    # Two failures from each of two addresses lock the user (auth_user_failures = 4).
    for i in range(2):
        assert _pop3_v6(srv, "victim@" + DOMAIN, f"v6-{i}")[1].startswith(b"-ERR [AUTH]")
        m4 = imaplib.IMAP4(V4, srv.ports["imap"], timeout=60)
        try:
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                m4.login("victim@" + DOMAIN, f"v4-{i}")
        finally:
            m4.shutdown()
    assert "auth_user_locked" in srv.logs()
    # Guesses are no longer checked: a temporary failure whatever the password ...
    for proto_check in ("imap", "smtp", "pop3"):  # POP3 from ::1
        if proto_check == "imap":
            m4 = imaplib.IMAP4(V4, srv.ports["imap"], timeout=60)
            try:
                with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
                    m4.login("victim@" + DOMAIN, "another guess")
            finally:
                m4.shutdown()
        elif proto_check == "smtp":
            s = smtplib.SMTP(V4, srv.ports["submission"], timeout=60)
            try:
                s.starttls(context=srv.client_context())
                with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                    s.login("victim@" + DOMAIN, "another guess")
                assert info.value.smtp_code == 454
            finally:
                s.close()
        else:
            assert _pop3_v6(srv, "victim@" + DOMAIN, "another guess")[1].startswith(
                b"-ERR [SYS/TEMP]")
    # ... the remembered password still works, from either address ...
    _timed_login(srv.ports["imap"], "victim@" + DOMAIN)
    assert _pop3_v6(srv, "victim@" + DOMAIN, PASSWORD)[1].startswith(b"+OK")
    # ... and other users are not affected.
    _timed_login(srv.ports["imap"], "other@" + DOMAIN)


def test_failures_count_in_every_worker_process(tmp_path: Path) -> None:
    """With two serving processes (server.workers = 2) the kernel hands each new connection
    to either one; an address's failures still add up across both (SharedLoginGuard over
    the process bus), so six failures block it in both, not six per process."""
    srv = Server(tmp_path, roles=("imap", "pop3"), hosts={"pop3": f"[{V6}]"}, workers=2,
                 extra='[limits]\nauth_delay = "10ms"\nauth_ip_failures = 6\nauth_ip_window = "1h"\n'
                       'auth_user_failures = 100\n' + PLAIN)
    srv.add_user("victim@" + DOMAIN)
    srv.start()
    try:
        texts = [_pop3_v6(srv, "victim@" + DOMAIN, f"guess-{i}")[1] for i in range(6)]
        assert all(t.startswith(b"-ERR [AUTH]") for t in texts), texts
        after = [_pop3_v6(srv, "victim@" + DOMAIN, PASSWORD)[1] for _ in range(4)]
        assert all(t.startswith(b"-ERR [SYS/TEMP]") for t in after), after
        _timed_login(srv.ports["imap"], "victim@" + DOMAIN)  # another address: not blocked
    finally:
        srv.stop()
