"""Two ``postroom serve`` nodes on one PostgreSQL database (issue 11's proof).

* IDLE across nodes: a delivery through node A wakes an IMAP client in IDLE on node B
  (LISTEN/NOTIFY) within 100 ms; flag changes and expunges made on one node reach the
  other node's client too.
* SIGKILL under load: SMTP clients deliver numbered messages through both nodes (local
  recipients, and an alias that relays to a remote capture MX), IMAP clients read on both,
  and node A is killed with SIGKILL mid-load. Clients of A fail over to B, as behind a load
  balancer. Afterwards every acknowledged message is stored exactly once, every relayed
  one reached the remote, node B finished node A's queue work once A's leases ran out, and
  a message was sent to the remote twice only if A was sending it when it died (RFC 1047's
  window: never because both nodes saw it).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import poplib
import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.capture import Behaviour, Capture
from support.imap_async import ImapClient
from support.postgres import fresh_database
from support.server import PASSWORD, Server

from postroom.store.api import NewMessage

DOMAIN = "example.test"
SLOW = os.environ.get("POSTROOM_SLOW") == "1"
MESSAGES = 600 if SLOW else 150
SENDERS = 8
USERS = [f"c{i}@{DOMAIN}" for i in range(4)]
RELAY = f"fwd@{DOMAIN}"  # an alias to a remote address: every message to it is queued
REMOTE = "far@remote.test"
_TOKEN = re.compile(rb"X-Token: (\S+)")


@contextlib.contextmanager
def cluster(
    tmp_path: Path, extra: str = "", roles: tuple[str, ...] = ("mx", "imaps"),
    workers: tuple[int, int] = (1, 1),
) -> Iterator[tuple[Server, Server]]:
    database = fresh_database()
    nodes = []
    try:
        for name, n in zip(("a", "b"), workers, strict=True):
            node_extra = extra.replace("{node}", name)
            srv = Server(tmp_path / name, roles=roles, backend="postgresql", database=database,
                         extra=node_extra, workers=n)
            nodes.append(srv)
        for address in USERS:
            nodes[0].add_user(address)
        for srv in nodes:
            srv.start()
        yield nodes[0], nodes[1]
    finally:
        for srv in nodes:
            with contextlib.suppress(Exception):
                srv.stop()


def _message(token: str, to: str) -> bytes:
    return (f"From: load@client.test\r\nTo: {to}\r\nSubject: cluster {token}\r\n"
            f"X-Token: {token}\r\n\r\n" + f"body of {token}\r\n" * 20).encode()


async def _wait_for(client: ImapClient, needle: bytes, timeout: float = 10) -> bytes | None:
    """The next untagged line of an IDLE that contains ``needle`` (others are skipped)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        line = await client.idle_wait(left)
        if line is None or needle in line:
            return line
    return None


async def _idle_client(srv: Server, user: str) -> ImapClient:
    client = await ImapClient.connect("127.0.0.1", srv.ports["imaps"], tls=srv.client_context())
    await client.login(user, PASSWORD)
    await client.command("SELECT INBOX")
    await client.idle_start()
    return client


def test_idle_and_changes_across_nodes(tmp_path: Path) -> None:
    with cluster(tmp_path) as (a, b):
        user = USERS[0]

        async def main() -> list[float]:
            watcher = await _idle_client(b, user)
            delays = []
            try:
                for i in range(10):
                    def send(i: int = i) -> float:
                        with smtplib.SMTP("127.0.0.1", a.ports["mx"], timeout=30) as s:
                            s.sendmail("x@client.test", [user], _message(f"idle{i}", user))
                        return time.monotonic()  # our 250: the message is committed

                    sent = asyncio.ensure_future(asyncio.to_thread(send))
                    line = await _wait_for(watcher, b"EXISTS")
                    woke = time.monotonic()
                    acked = await sent
                    assert line is not None and line.rstrip() == b"* %d EXISTS" % (i + 1), line
                    delays.append(max(0.0, woke - acked))
                await watcher.idle_done()
                # A flag change and an expunge made through node A reach the client on B.
                changer = await ImapClient.connect("127.0.0.1", a.ports["imaps"], tls=a.client_context())
                await changer.login(user, PASSWORD)
                await changer.command("SELECT INBOX")
                await watcher.idle_start()
                await changer.command("STORE 2 +FLAGS (\\Flagged \\Deleted)")
                line = await _wait_for(watcher, b"FETCH")
                assert line is not None and b"\\Flagged" in line, line
                await changer.command("EXPUNGE")
                line = await _wait_for(watcher, b"EXPUNGE")
                assert line is not None and line.rstrip() == b"* 2 EXPUNGE", line
                await watcher.idle_done()
                await changer.logout()
            finally:
                await watcher.logout()
            return delays

        delays = asyncio.run(main())
        print(f"\nIDLE wake-up on node B after node A's 250: {[round(d * 1000) for d in delays]} ms")
        # The median, so that one hiccup of a loaded machine does not decide.
        assert sorted(delays)[len(delays) // 2] < 0.1, delays


def test_caches_and_passwords_across_nodes(tmp_path: Path) -> None:
    """Node B's mailbox snapshot cache (keyed by UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ
    from the database) never serves a mailbox node A changed; a password changed through
    node A's CLI is the one node B checks at the next login (the auth cache is keyed by
    the stored hash, which B reads from the database)."""
    with cluster(tmp_path) as (a, b):
        user = USERS[2]
        count = 80  # above the snapshot cache's minimum mailbox size

        async def fill(admin: object, store: Any) -> None:
            u = await store.get_user(user)
            inbox = await store.get_mailbox(u.id, "INBOX")
            batch = [NewMessage(_message(f"c{i}", user), b"") for i in range(count)]
            await store.append_many(inbox.id, batch, enforce_quota=False)

        a.admin(fill)

        async def main() -> None:
            on_b = await ImapClient.connect("127.0.0.1", b.ports["imaps"], tls=b.client_context())
            on_a = await ImapClient.connect("127.0.0.1", a.ports["imaps"], tls=a.client_context())
            for c in (on_a, on_b):
                await c.login(user, PASSWORD)
            for _ in range(2):  # the second SELECT is served from B's snapshot cache
                r = await on_b.command("SELECT INBOX")
                assert b"* %d EXISTS" % count in r.untagged
            await on_b.command("UNSELECT")
            await on_a.command("SELECT INBOX")
            await on_a.command("STORE 1:3 +FLAGS.SILENT (\\Deleted \\Seen)")
            await on_a.command("EXPUNGE")
            await on_a.command("STORE 1 +FLAGS.SILENT (\\Flagged)")
            r = await on_b.command("SELECT INBOX")
            assert b"* %d EXISTS" % (count - 3) in r.untagged, r.untagged
            r = await on_b.command("FETCH 1:2 (UID FLAGS)")
            assert r.untagged[0].startswith(b"* 1 FETCH (UID 4 FLAGS (\\Flagged")
            assert r.untagged[1] == b"* 2 FETCH (UID 5 FLAGS ())"
            for c in (on_a, on_b):
                await c.logout()

        asyncio.run(main())
        assert a.cli("user", "passwd", user, "--password", "new horse battery").returncode == 0
        with pytest.raises(imaplib.IMAP4.error):
            m = imaplib.IMAP4_SSL("127.0.0.1", b.ports["imaps"], ssl_context=b.client_context())
            m.login(user, PASSWORD)
        m = imaplib.IMAP4_SSL("127.0.0.1", b.ports["imaps"], ssl_context=b.client_context())
        assert m.login(user, "new horse battery")[0] == "OK"
        m.logout()



def test_node_of_worker_processes(tmp_path: Path) -> None:
    """Node A runs two worker processes (``server.workers = 2``), node B one. Each worker
    is a client of the database of its own: a delivery through either of A's workers
    wakes IDLE clients on A (the other worker, by NOTIFY) and on B; a message A's worker
    queues for a remote is sent by A's supervisor at once (the bus carries the queue
    wake-up: the poll interval is a minute); a POP3 login on B takes the maildrop over
    from a session on A (a ``postroom.peers`` note by NOTIFY), as it would within one
    process."""
    capture = Capture(("127.0.0.1",)).start()
    extra = (
        '[server]\nnode_name = "{node}"\n'
        "[outbound]\n"
        f'transport = {{ "remote.test" = "127.0.0.1:{capture.port}" }}\n'
        'queue_poll_interval = "60s"\n'
        "[pop3]\nallow_plaintext_auth = true\n"
    )
    try:
        with cluster(tmp_path, extra, roles=("mx", "imaps", "pop3"), workers=(2, 1)) as (a, b):
            assert a.proc is not None
            from support.procs import wait_children

            assert len(wait_children(a.proc.pid, 2)) == 2
            a.cli("alias", "add", RELAY, REMOTE)
            user = USERS[3]

            async def main() -> None:
                # Several clients on A: the kernel spreads them over both workers.
                on_a = [await _idle_client(a, user) for _ in range(4)]
                on_b = await _idle_client(b, user)
                try:
                    for i in range(3):
                        await asyncio.to_thread(_send, a, [user], f"w{i}")
                        for client in (*on_a, on_b):
                            line = await _wait_for(client, b"EXISTS")
                            assert line is not None and line.rstrip() == b"* %d EXISTS" % (i + 1), line
                finally:
                    for client in (*on_a, on_b):
                        with contextlib.suppress(Exception):
                            await client.idle_done()
                            await client.logout()

            asyncio.run(main())
            started = time.monotonic()
            _send(a, [RELAY], "relayed")
            while not capture.messages:
                assert time.monotonic() - started < 20, "the relay was not woken"
                time.sleep(0.1)
            assert b"X-Token: relayed" in capture.messages[0].data

            old = poplib.POP3("127.0.0.1", a.ports["pop3"], timeout=30)
            old.user(user)
            old.pass_(PASSWORD)
            assert old.stat()[0] == 3
            new = poplib.POP3("127.0.0.1", b.ports["pop3"], timeout=30)
            new.user(user)
            assert new.pass_(PASSWORD).startswith(b"+OK")  # not -ERR [IN-USE]
            assert new.stat()[0] == 3
            with pytest.raises((poplib.error_proto, OSError, EOFError)):
                old.stat()  # the older session was ended
            new.quit()
    finally:
        capture.stop()


def _send(node: Server, to: list[str], token: str) -> None:
    with smtplib.SMTP("127.0.0.1", node.ports["mx"], timeout=30) as s:
        s.sendmail("x@client.test", to, _message(token, to[0]))

def in_flight(node: Server) -> set[str]:
    """Tokens of the queued messages ``node`` holds a live lease on (read in SQL)."""
    from support.postgres import shared_cluster

    rows = shared_cluster().psql(
        "SELECT substring(convert_from(b.data, 'UTF8') from 'X-Token: (\\S+)') FROM queue q "
        "JOIN blobs b ON b.id = q.blob_id WHERE q.lease_owner = 'a' "
        "AND q.lease_until > extract(epoch from now())", node.database.rsplit("/", 1)[1])
    return {line for line in rows.split() if line}


class Load:
    """SMTP clients that fail over to the surviving node (as a load balancer would)."""

    def __init__(self, nodes: dict[str, Server]) -> None:
        self.nodes = nodes
        self.dead: set[str] = set()
        self.lock = threading.Lock()
        self.next = 0
        self.acked: dict[str, str] = {}  # token -> recipient
        self.done = 0
        self.errors: list[str] = []
        self.temporary = 0  # 4xx or broken sessions, retried

    def take(self) -> int | None:
        with self.lock:
            if self.next >= MESSAGES:
                return None
            self.next += 1
            return self.next - 1

    def sender(self, wid: int, deadline: float) -> None:
        attempt = 0
        while time.monotonic() < deadline:
            n = self.take()
            if n is None:
                return
            to = RELAY if n % 3 == 0 else USERS[n % len(USERS)]
            while time.monotonic() < deadline:
                attempt += 1
                node = "a" if (n + attempt) % 2 else "b"
                if node in self.dead:
                    node = "b"
                token = f"m{n}-w{wid}-t{attempt}"
                try:
                    with smtplib.SMTP("127.0.0.1", self.nodes[node].ports["mx"], timeout=20) as s:
                        s.sendmail("load@client.test", [to], _message(token, to))
                except (OSError, smtplib.SMTPException) as e:
                    if isinstance(e, smtplib.SMTPResponseException) and e.smtp_code >= 500:
                        self.errors.append(f"{token}: {e}")
                        return
                    with self.lock:
                        self.temporary += 1
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.acked[token] = to
                    self.done += 1
                break


def test_sigkill_one_node_under_load(tmp_path: Path) -> None:
    # A slow remote (0.1 s per reply): node A always has relays in flight when it dies.
    capture = Capture(("127.0.0.1",), default=Behaviour(delay=0.1)).start()
    extra = (
        '[server]\nnode_name = "{node}"\n'
        "[outbound]\n"
        f'transport = {{ "remote.test" = "127.0.0.1:{capture.port}" }}\n'
        'helo_name = "{node}.example.test"\nlease_time = "6s"\nqueue_poll_interval = "1s"\n'
        "connection_cache_time = 0\n"
    )
    try:
        with cluster(tmp_path, extra) as (a, b):
            a.cli("alias", "add", RELAY, REMOTE)
            load = Load({"a": a, "b": b})
            deadline = time.monotonic() + (600 if SLOW else 150)

            async def readers(stop: asyncio.Event) -> dict[str, int]:
                """IMAP clients on both nodes, in IDLE on USERS[1]'s INBOX, counting what
                they are told exists; the one on node A dies with A."""
                seen = {"a": 0, "b": 0}

                async def watch(node: str) -> None:
                    srv = {"a": a, "b": b}[node]
                    try:
                        client = await _idle_client(srv, USERS[1])
                        idling.release()
                        while not stop.is_set():
                            line = await client.idle_wait(0.5)
                            if line and line.endswith(b"EXISTS\r\n"):
                                seen[node] = max(seen[node], int(line.split()[1]))
                        await client.idle_done()
                        await client.logout()
                    except (OSError, asyncio.IncompleteReadError, Exception) as e:
                        if node != "a":
                            raise AssertionError(f"IMAP client on {node} failed: {e!r}") from e

                await asyncio.gather(watch("a"), watch("b"))
                return seen

            stop = asyncio.Event()
            # The load starts once both IMAP clients are in IDLE: on a loaded machine their
            # logins may otherwise finish after the last delivery, with nothing to see.
            idling = threading.Semaphore(0)
            watchers: dict[str, int] = {}
            loop = asyncio.new_event_loop()
            reader_thread = threading.Thread(
                target=lambda: watchers.update(loop.run_until_complete(readers(stop))), daemon=True
            )
            reader_thread.start()
            for _ in range(2):
                assert idling.acquire(timeout=60), "IMAP clients not in IDLE"
            threads = [threading.Thread(target=load.sender, args=(w, deadline), daemon=True)
                       for w in range(SENDERS)]
            for t in threads:
                t.start()
            while load.done < MESSAGES // 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            while not in_flight(a) and time.monotonic() < deadline:
                time.sleep(0.01)
            a.kill()  # SIGKILL, mid-load: its sessions, leases and IMAP clients die with it
            orphaned = in_flight(a)  # what A was relaying: B must finish it
            load.dead.add("a")
            with capture.lock:
                kill_index = len(capture.messages)
            for t in threads:
                t.join(max(1.0, deadline - time.monotonic()))
            assert not any(t.is_alive() for t in threads), "clients did not finish in time"
            assert not load.errors, load.errors[:5]
            assert load.done == MESSAGES

            # Node B finishes everything, node A's leased messages included (lease 6 s).
            def queue_empty() -> bool:
                return not b.queue()

            end = time.monotonic() + 60
            while not queue_empty():
                assert time.monotonic() < end, f"queue not drained: {len(b.queue())} left"
                time.sleep(0.5)
            loop.call_soon_threadsafe(stop.set)
            reader_thread.join(30)

            # Local mail: every acknowledged message stored exactly once.
            stored: Counter[str] = Counter()
            for address in USERS:
                for data in b.messages(address):
                    m = _TOKEN.search(data)
                    assert m is not None
                    stored[m.group(1).decode()] += 1
            local = {t for t, to in load.acked.items() if to != RELAY}
            assert not [t for t in local if stored[t] != 1], "lost or duplicated local mail"
            assert max(stored.values()) == 1
            # Relayed mail: every acknowledged message reached the remote MX.
            with capture.lock:
                arrived = [(i, m.helo, _TOKEN.search(m.data)) for i, m in enumerate(capture.messages)]
            copies: dict[str, list[tuple[int, str]]] = {}
            for i, helo, m in arrived:
                assert m is not None
                copies.setdefault(m.group(1).decode(), []).append((i, helo))
            relayed = {t for t, to in load.acked.items() if to == RELAY}
            assert relayed and not relayed - set(copies), "relayed mail lost"
            sent_by_b_after = [t for t, c in copies.items() if any(h.startswith("b.") and i >= kill_index for i, h in c)]
            # A copy twice only when A was sending it as it died (its record was lost with
            # it): the first copy from A before the kill, the second from B after.
            twice = {t: c for t, c in copies.items() if len(c) > 1}
            for token, c in twice.items():
                assert len(c) == 2, (token, c)
                (i1, h1), (i2, h2) = sorted(c)
                assert h1.startswith("a.") and i1 < kill_index and h2.startswith("b.") and i2 >= kill_index, (token, c)
            assert len(twice) <= 4, twice
            # Node B took over what A held when it died, once the leases ran out.
            assert orphaned
            for token in orphaned:
                assert any(h.startswith("b.") and i >= kill_index for i, h in copies[token]), token
            # The IMAP client on B saw every delivery to its mailbox, whichever node took it.
            expected = len(b.messages(USERS[1]))
            assert watchers.get("b") == expected, (watchers, expected)
            print(f"\n{MESSAGES} messages, node A killed after {kill_index} relayed; "
                  f"{load.temporary} temporary failures retried; node B relayed "
                  f"{len(sent_by_b_after)} after the kill ({len(orphaned)} of them leased by A "
                  f"when it died); {len(twice)} sent twice "
                  f"(A's in-flight deliveries)")
    finally:
        capture.stop()


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    from support.postgres import find_bin

    assert find_bin() is not None, "PostgreSQL server binaries are required (scripts/run-tests installs them)"
