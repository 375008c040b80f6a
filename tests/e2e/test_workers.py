"""The worker-process model end to end (``server.workers = 2``): what one process used to
guarantee must hold across processes.

Each test finds sessions served by two *different* workers (the kernel hands connections
to whichever worker accepts first; ``support.procs.serving_pid`` asks which one holds the
server side) and checks, between them: IMAP IDLE wakes for a change made in the other
worker, \\Recent goes to one session only, the POP3 maildrop lock, a password change, the
mailbox snapshot cache keyed by MODSEQ, the SMTP early-talker pass, the server-wide
connection limits, and the outbound queue woken by a worker's delivery. Then the process
life cycle: SIGHUP reaches the workers, a killed worker is replaced, SIGTERM stops all.
"""

from __future__ import annotations

import poplib
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support.procs import alive, kill, serving_pid, wait_children, wait_gone
from support.server import PASSWORD, Server
from support.smtp_e2e import RawSmtp, message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "net" / "imap"))
from imap_raw import RawImap  # noqa: E402

DOMAIN = "example.test"
EXTRA = "[imap]\nallow_plaintext_auth = true\n[pop3]\nallow_plaintext_auth = true\n"
C = TypeVar("C")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("workers"), roles=("mx", "imap", "pop3"), extra=EXTRA, workers=2
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


_n = iter(range(1, 10_000))


@pytest.fixture
def user(server: Server) -> str:
    address = f"w{next(_n)}@{DOMAIN}"
    server.add_user(address)
    return address


def workers_of(server: Server) -> list[int]:
    assert server.proc is not None
    return wait_children(server.proc.pid, 2)


def on_two_workers(server: Server, open_one: Callable[[], C], sock_of: Callable[[C], socket.socket],
                   close: Callable[[C], None]) -> tuple[C, C]:
    """Two clients served by two different workers (others opened on the way are closed)."""
    pids = workers_of(server)
    found: dict[int, C] = {}
    spare: list[C] = []
    for _ in range(60):
        c = open_one()
        pid = serving_pid(sock_of(c), pids)
        if pid in found:
            spare.append(c)
        else:
            found[pid] = c
        if len(found) == 2:
            break
    for c in spare:
        close(c)
    assert len(found) == 2, "every connection went to one worker"
    a, b = found.values()
    return a, b


def two_imap(server: Server, user: str) -> tuple[RawImap, RawImap]:
    a, b = on_two_workers(server, lambda: RawImap(server.ports["imap"]), lambda c: c.sock,
                          lambda c: c.close())
    a.login(user, PASSWORD)
    b.login(user, PASSWORD)
    return a, b


def smtp_deliver(server: Server, user: str, subject: str) -> None:
    for attempt in range(3):  # a connection accepted by a worker as it was killed is reset
        try:
            with RawSmtp(server.ports["mx"]) as c:
                c.ehlo()
                assert c.mail("someone@remote.example", [user], message(subject)).code == 250
                return
        except (ConnectionError, EOFError):
            if attempt == 2:
                raise


def until_exists(c: RawImap, n: int, timeout: float = 5.0) -> None:
    """NOOP until the session has been told of ``n`` messages: a change made in another
    worker reaches this one through the supervisor, a moment after the other's reply."""
    deadline = time.monotonic() + timeout
    while True:
        if b"* %d EXISTS\r\n" % n in c.ok("NOOP"):
            return
        assert time.monotonic() < deadline, f"never told of {n} messages"
        time.sleep(0.02)


def wait_for(c: RawImap, pattern: bytes, timeout: float) -> bytes:
    c.sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        line = c.response()
        if re.search(pattern, line):
            return line
        assert time.monotonic() < deadline, line


# -- sharing the work ---------------------------------------------------------------------


def test_two_workers_accept_and_every_message_is_stored(server: Server, user: str) -> None:
    assert server.proc is not None
    pids = workers_of(server)
    assert len(pids) == 2 and all(p != server.proc.pid for p in pids)
    seen: set[int] = set()
    for i in range(30):
        with RawSmtp(server.ports["mx"]) as c:
            seen.add(serving_pid(c.sock, pids))
            c.ehlo()
            assert c.mail("a@remote.example", [user], message(f"n{i}")).code == 250
    assert seen == set(pids), "both workers should have taken connections"
    stored = server.messages(user)
    assert sorted(int(re.search(rb"Subject: n(\d+)", m).group(1)) for m in stored) == list(range(30))


# -- IMAP across workers --------------------------------------------------------------------


def test_idle_wakes_for_a_delivery_and_an_append_in_the_other_worker(server: Server, user: str) -> None:
    watcher, actor = two_imap(server, user)
    watcher.ok("SELECT INBOX")
    watcher.send(b"i IDLE\r\n")
    assert watcher.line().startswith(b"+ ")
    pids = workers_of(server)
    watcher_pid = serving_pid(watcher.sock, pids)
    # a delivery over SMTP in the other worker (retried until one lands there)
    for n in range(1, 40):
        with RawSmtp(server.ports["mx"]) as c:
            other = serving_pid(c.sock, pids) != watcher_pid
            c.ehlo()
            started = time.monotonic()
            assert c.mail("a@remote.example", [user], message(f"d{n}")).code == 250
        line = wait_for(watcher, rb"^\* \d+ EXISTS", 5)
        assert line == b"* %d EXISTS\r\n" % n
        if other:
            assert time.monotonic() - started < 1.0
            break
    else:
        pytest.fail("no SMTP connection reached the other worker")
    # an APPEND by a session of the other worker
    data = message("appended")
    actor.send(b"a APPEND INBOX {%d}\r\n" % len(data))
    assert actor.line().startswith(b"+")
    actor.send(data + b"\r\n")
    _, done = actor.until_tagged("a")
    assert done.startswith(b"a OK")
    line = wait_for(watcher, rb"^\* \d+ EXISTS", 5)
    assert line == b"* %d EXISTS\r\n" % (n + 1)
    # and a flag change made there
    actor.ok("SELECT INBOX")
    actor.ok("STORE 1 +FLAGS (\\Flagged)")
    line = wait_for(watcher, rb"FETCH", 5)
    assert b"\\Flagged" in line
    watcher.send(b"DONE\r\n")
    _, done = watcher.until_tagged("i")
    assert done.startswith(b"i OK")


def test_notify_hears_changes_made_in_the_other_worker(server: Server, user: str) -> None:
    """NOTIFY (RFC 5465) listens on the user's account channel: a new mailbox and new mail
    made by a session of the other worker reach it."""
    watcher, actor = two_imap(server, user)
    watcher.ok("NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))")
    watcher.sock.settimeout(10)
    actor.ok("CREATE Projects")
    assert watcher.response() == b'* LIST (\\HasNoChildren) "/" "Projects"\r\n'
    actor.ok(b"APPEND INBOX {13+}\r\nSubject: x\r\n\r\n")
    assert watcher.response() == b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2)\r\n'


def test_recent_goes_to_one_session_across_workers(server: Server, user: str) -> None:
    smtp_deliver(server, user, "r1")
    a, b = two_imap(server, user)
    recent = []
    for c in (a, b):
        untagged = c.ok("SELECT INBOX")  # rev1: read-write SELECT claims \Recent
        recent.append(next(int(line.split()[1]) for line in untagged if line.endswith(b"RECENT\r\n")))
    assert sorted(recent) == [0, 1]
    # a new message while both have it selected: \Recent for exactly one of them
    smtp_deliver(server, user, "r2")
    flags = []
    for c in (a, b):
        until_exists(c, 2)
        untagged = c.ok("FETCH 2 FLAGS")
        flags.append(b"\\Recent" in b"".join(untagged))
    assert sorted(flags) == [False, True]


def test_flag_changes_in_one_worker_are_seen_by_a_select_in_the_other(server: Server, user: str) -> None:
    # enough messages for the snapshot cache (keyed by UIDNEXT and HIGHESTMODSEQ) to keep them
    async def fill(admin: Any, store: Any) -> None:
        from postroom.deliver import summarize
        from postroom.store.api import Delivery

        u = await store.get_user(user)
        for i in range(80):
            data = message(f"bulk {i}")
            await store.deliver(Delivery(data=data, summary=summarize(data), user_ids=(u.id,)))

    server.admin(fill)
    a, b = two_imap(server, user)
    a.ok("EXAMINE INBOX")  # builds (and caches) the snapshot in a's worker
    a.ok("CLOSE")
    b.ok("SELECT INBOX")
    b.ok("STORE 1:10 +FLAGS.SILENT (\\Seen)")
    untagged = a.ok("EXAMINE INBOX")
    unseen = [line for line in untagged if b"UNSEEN" in line]
    assert unseen and b"[UNSEEN 11]" in unseen[0], untagged
    fetched = a.ok("FETCH 1:12 FLAGS")
    assert sum(b"\\Seen" in line for line in fetched) == 10


def test_a_password_change_takes_effect_in_every_worker(server: Server, user: str) -> None:
    a, b = two_imap(server, user)  # both logged in: each worker's auth cache holds it
    a.close()
    b.close()

    async def change(admin: Any, store: Any) -> None:
        await admin.user_passwd(user, "a new password")

    server.admin(change)
    pids = workers_of(server)
    results: dict[int, tuple[bytes, bytes]] = {}
    for _ in range(60):
        c = RawImap(server.ports["imap"])
        pid = serving_pid(c.sock, pids)
        if pid not in results:
            _, old = c.cmd(f'LOGIN "{user}" "{PASSWORD}"')
            _, new = c.cmd(f'LOGIN "{user}" "a new password"')
            results[pid] = (old, new)
        c.close()
        if len(results) == 2:
            break
    assert len(results) == 2
    for old, new in results.values():
        assert old.split()[1] == b"NO" and new.split()[1] == b"OK", (old, new)


# -- POP3 across workers ----------------------------------------------------------------------


def test_pop3_login_takes_over_a_session_of_another_worker(server: Server, user: str) -> None:
    """One POP3 session per maildrop whichever worker serves it: a new login ends the
    older session in the other worker (its DELE marks dropped, as without QUIT)."""
    smtp_deliver(server, user, "p1")
    smtp_deliver(server, user, "p2")

    def open_pop() -> poplib.POP3:
        return poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)

    a, b = on_two_workers(server, open_pop, lambda c: c.sock, lambda c: c.close())
    a.user(user)
    a.pass_(PASSWORD)
    a.dele(1)
    b.user(user)
    b.pass_(PASSWORD)  # takes over: waits until the other worker ended a's session
    assert b.stat()[0] == 2  # a's DELE was not applied
    with pytest.raises((poplib.error_proto, OSError, EOFError)) as ended:
        a.stat()
    assert "IN-USE" in str(ended.value) or not isinstance(ended.value, poplib.error_proto)
    b.quit()
    assert 'event=pop3_takeover' in server.logs() and 'previous="another process"' in server.logs()


# -- SMTP notes and limits ---------------------------------------------------------------------


def test_early_talker_pass_is_shared_by_the_workers(tmp_path: Path) -> None:
    srv = Server(tmp_path, roles=("mx",), workers=2,
                 extra='[smtp]\ngreeting_delay = "1500ms"\n').start()
    try:
        pids = workers_of(srv)
        started = time.monotonic()
        first = RawSmtp(srv.ports["mx"], timeout=10)
        assert time.monotonic() - started >= 1.4  # waited, and passed
        first_pid = serving_pid(first.sock, pids)
        first.close()
        time.sleep(0.3)  # the note travels through the supervisor
        for _ in range(40):
            started = time.monotonic()
            c = RawSmtp(srv.ports["mx"], timeout=10)
            waited = time.monotonic() - started
            pid = serving_pid(c.sock, pids)
            c.close()
            assert waited < 1.0, f"greeted after {waited:.2f} s by {'the other' if pid != first_pid else 'the same'} worker"
            if pid != first_pid:
                break
        else:
            pytest.fail("no connection reached the other worker")
    finally:
        srv.stop()


def test_connection_limits_count_every_worker(tmp_path: Path) -> None:
    srv = Server(tmp_path, roles=("mx",), workers=2,
                 extra='[limits]\nconnections_per_ip = 4\nconnections_total = 6\n').start()
    try:
        pids = workers_of(srv)
        # hold the limit's 4 connections, spread over both workers: then each worker's own
        # count is under 4, and only the counts of both together refuse the fifth
        held = [RawSmtp(srv.ports["mx"]) for _ in range(4)]
        for _ in range(40):
            where = [serving_pid(c.sock, pids) for c in held]
            if len(set(where)) == 2:
                break
            held.pop().close()
            time.sleep(0.05)
            held.append(RawSmtp(srv.ports["mx"]))
        else:
            pytest.fail("could not spread the connections over both workers")
        over = RawSmtp(srv.ports["mx"], greeting=False)
        assert over.reply().status == "421 4.7.0"
        over.close()
        held.pop().close()
        time.sleep(0.2)
        again = RawSmtp(srv.ports["mx"])
        assert again.greeting is not None and again.greeting.code == 220
        held.append(again)
        for c in held:
            c.close()
        # another address (127.0.0.2) is held to the total: 6 over all workers
        time.sleep(0.2)
        many = [RawSmtp(srv.ports["mx"]) for _ in range(4)]
        many += [RawSmtp(srv.ports["mx"], source="127.0.0.2") for _ in range(2)]
        over = RawSmtp(srv.ports["mx"], source="127.0.0.2", greeting=False)
        assert over.reply().status == "421 4.7.0"
        over.close()
        for c in many:
            c.close()
    finally:
        srv.stop()


def test_imap_sessions_per_user_and_address_count_every_worker(tmp_path: Path) -> None:
    srv = Server(tmp_path, roles=("imap",), workers=2,
                 extra='[imap]\nallow_plaintext_auth = true\n[limits]\nauth_delay = "10ms"\n'
                       "connections_per_user_ip = 2\n").start()
    try:
        srv.add_user(f"limit@{DOMAIN}")
        a, b = on_two_workers(srv, lambda: RawImap(srv.ports["imap"]), lambda c: c.sock,
                              lambda c: c.close())
        a.login(f"limit@{DOMAIN}", PASSWORD)
        b.login(f"limit@{DOMAIN}", PASSWORD)
        c = RawImap(srv.ports["imap"])  # whichever worker: it holds one of the two
        _, done = c.cmd(f'LOGIN "limit@{DOMAIN}" "{PASSWORD}"')
        assert done.split()[1:3] == [b"NO", b"[LIMIT]"], done
        a.close()  # one less: the next login anywhere works
        for _ in range(100):
            _, done = c.cmd(f'LOGIN "limit@{DOMAIN}" "{PASSWORD}"')
            if done.split()[1] == b"OK":
                break
            time.sleep(0.05)
        assert done.split()[1] == b"OK", done
        for conn in (b, c):
            conn.close()
    finally:
        srv.stop()


# -- life cycle --------------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_service_continues(server: Server, user: str) -> None:
    assert server.proc is not None
    before = workers_of(server)
    kill(before[0])
    # the other worker keeps serving meanwhile
    smtp_deliver(server, user, "while one is down")
    after = wait_children(server.proc.pid, 2, exclude=[before[0]])
    assert before[1] in after and before[0] not in after
    for i in range(6):
        smtp_deliver(server, user, f"after {i}")
    assert len(server.messages(user)) == 7
    assert "event=worker_exited" in server.logs()


def test_sighup_reaches_every_worker_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    srv = Server(tmp_path, roles=("mx", "submissions"), workers=2).start()
    assert srv.proc is not None
    pids = workers_of(srv)
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while srv.logs().count("event=tls_reloaded") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.logs().count("event=tls_reloaded") == 3  # the supervisor and both workers
    reloads = [line for line in srv.logs().splitlines() if "event=tls_reloaded" in line]
    assert sorted(line.rsplit(" ", 1)[1] for line in reloads if "worker=" in line) == ["worker=1", "worker=2"]
    assert srv.stop() == 0
    wait_gone(pids, 10)
    assert not any(alive(p) for p in pids)


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    srv = Server(tmp_path, roles=("mx",), workers=2).start()
    assert srv.proc is not None
    pids = workers_of(srv)
    srv.kill()
    wait_gone(pids, 30)
    assert srv.logs().count("event=worker_supervisor_gone") == 2


def test_a_workers_delivery_wakes_the_supervisors_queue_runner(tmp_path: Path) -> None:
    """Mail for a remote domain is queued by a worker and relayed by the supervisor: the
    wake-up travels over the bus, so it leaves at once (the poll is a minute here)."""
    from support.outbound import World

    world = World(tmp_path, outbound='queue_poll_interval = "60s"\n').start(workers=2)
    try:
        assert world.server is not None
        target = world.mx("remote.test")
        time.sleep(1.5)  # the queue runner's first look at the empty queue is over
        for i in range(3):
            started = time.monotonic()
            world.send([f"bob{i}@remote.test"], subject=f"relay {i}")
            got = world.wait_arrived(target, count=i + 1, timeout=30)
            assert time.monotonic() - started < 5.0
            assert f"relay {i}".encode() in got[-1].data
    finally:
        world.stop()
