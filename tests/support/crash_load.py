"""Mail load for the SIGKILL tests: numbered messages that prove what survived a crash.

20 client threads send messages over SMTP while the test kills server processes; every
attempt carries a fresh token (so a message stored whose 250 was lost with the process,
RFC 1047's duplicate window, can be told apart from a real duplicate) and the digest of
its body (so a partly stored message is caught). :func:`inventory` reads every mailbox
back through the store and :func:`check` asserts that each acknowledged token is in each
of its recipients' INBOXes exactly once and that nothing is stored twice.

Used by tests/e2e/test_smtp_crash.py (one process) and test_workers_crash.py (supervisor
and worker processes).
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from typing import Any

from support.smtp_e2e import DOMAIN, RawSmtp, add_users_fast

SESSIONS = 20
USERS = [f"u{i:02d}@{DOMAIN}" for i in range(SESSIONS)]
_TOKEN_RE = re.compile(rb"^X-Token: (\S+)\r\nX-Digest: ([0-9a-f]{64})\r\n", re.M)


def message(token: str, rng: random.Random) -> bytes:
    size = rng.choice((200, 2_000, 5_000, 20_000, 120_000))
    lines = [f"line {n} of {token} ".encode().ljust(70, b"x") for n in range(size // 72 + 1)]
    body = b"\r\n".join(lines) + b"\r\n"
    digest = hashlib.sha256(body).hexdigest()
    return f"X-Token: {token}\r\nX-Digest: {digest}\r\nSubject: crash test\r\n\r\n".encode() + body


class Shared:
    def __init__(self, messages: int) -> None:
        self.messages = messages
        self.lock = threading.Lock()
        self.port = 0
        self.next = 0
        self.acked: dict[str, list[str]] = {}  # token -> recipients
        self.done: set[int] = set()
        self.retry: list[int] = []
        self.stop = threading.Event()
        self.errors: list[str] = []

    def take(self) -> int | None:
        with self.lock:
            if self.retry:
                return self.retry.pop()
            if self.next < self.messages:
                self.next += 1
                return self.next - 1
            return None


def client(shared: Shared, wid: int, deadline: float) -> None:
    """One client thread: send until every message number is acknowledged."""
    rng = random.Random(wid)
    attempt = 0
    conn: RawSmtp | None = None
    while not shared.stop.is_set() and time.monotonic() < deadline:
        n = shared.take()
        if n is None:
            break
        attempt += 1
        token = f"m{n}-w{wid}-a{attempt}"
        rcpts = [USERS[n % SESSIONS]] + ([USERS[(n + 1) % SESSIONS]] if n % 7 == 0 else [])
        data = message(token, rng)
        try:
            if conn is None:
                conn = RawSmtp(shared.port, timeout=10)
                conn.ehlo()
            r = conn.mail("crash@remote.example", rcpts, data)
            if r.code != 250:
                raise RuntimeError(f"unexpected reply {r}")
        except Exception as e:  # noqa: BLE001 - a killed server shows up in many ways
            if conn is not None:
                conn.close()
                conn = None
            with shared.lock:
                shared.retry.append(n)
                text = str(e)
                expected = (
                    isinstance(e, (OSError, TimeoutError, AssertionError))
                    or "connection closed" in text
                    # a worker told to stop (its supervisor died) ends idle sessions politely
                    or "421" in text
                )
                if not expected:
                    shared.errors.append(repr(e))
            time.sleep(0.05)
            continue
        with shared.lock:
            shared.acked[token] = rcpts
            shared.done.add(n)
        if rng.random() < 0.2:  # sometimes a new connection, as MX clients do
            conn.close()
            conn = None
        time.sleep(rng.uniform(0.05, 0.6))  # paced, so that many kills land mid-run
    if conn is not None:
        conn.close()


def start_clients(shared: Shared, deadline: float) -> list[threading.Thread]:
    threads = [threading.Thread(target=client, args=(shared, w, deadline), daemon=True) for w in range(SESSIONS)]
    for t in threads:
        t.start()
    return threads


def start_load(
    pool: Any, messages: int, deadline: float, *, workers: int, extra: str = ""
) -> tuple[Any, Shared, list[threading.Thread]]:
    """An MX server (fsync on) with the users, and the client threads sending to it."""
    srv = pool.make(roles=("mx",), users=(), fsync=True, start=False, workers=workers, extra=extra)
    add_users_fast(srv, USERS)
    srv.start()
    shared = Shared(messages)
    shared.port = srv.ports["mx"]
    return srv, shared, start_clients(shared, deadline)


def inventory(srv: Any) -> dict[str, dict[str, int]]:
    """token -> {recipient: copies}, checking every stored message is whole."""

    async def read(admin, store):  # type: ignore[no-untyped-def]
        found: dict[str, dict[str, int]] = {}
        for address in USERS:
            user = await store.get_user(address)
            box = await store.get_mailbox(user.id, "INBOX")
            msgs = await store.list_messages(box.id)
            uids = [m.uid for m in msgs]
            assert uids == sorted(set(uids)), "UIDs must be strictly ascending"
            blobs = await store.read_blobs([m.blob_id for m in msgs])
            for m in msgs:
                data = blobs[m.blob_id]
                assert len(data) == m.size
                match = _TOKEN_RE.search(data)
                assert match, f"message without its token: {data[:300]!r}"
                body = data.partition(b"\r\n\r\n")[2]
                assert hashlib.sha256(body).hexdigest().encode() == match.group(2), "partial message"
                per = found.setdefault(match.group(1).decode(), {})
                per[address] = per.get(address, 0) + 1
        return found

    return srv.admin(read)


def check(found: dict[str, dict[str, int]], shared: Shared, kills: int) -> int:
    """Every acknowledged token exactly once per recipient; nothing twice. Returns how
    many tokens were stored without their 250 reaching the client."""
    for token, rcpts in shared.acked.items():
        copies = found.get(token)
        assert copies is not None, f"acknowledged message {token} lost"
        assert copies == {r: 1 for r in rcpts}, (token, copies)
    # Unacknowledged attempts may have been stored (250 lost with the process), but
    # never twice, and only for their own recipients.
    for token, copies in found.items():
        assert all(v == 1 for v in copies.values()), (token, copies)
    unacked = set(found) - set(shared.acked)
    assert len(unacked) <= kills * SESSIONS
    return len(unacked)
