"""SIGKILL the server while 20 sessions deliver; acknowledged mail survives, exactly once.

20 client threads send 400 numbered messages over the MX listener (fsync on) while the
main thread SIGKILLs ``postroom serve`` at random moments and restarts it. Every attempt
carries a fresh token, so a message that was stored but whose 250 was lost with the
process (RFC 1047's duplicate window) can be told apart from a real duplicate. Afterwards:

* every token that received 250 is in each recipient's INBOX exactly once;
* no token is anywhere twice, and every stored message is whole (its digest matches);
* the store is consistent (UIDs strictly ascending).

``POSTROOM_SLOW=1`` runs a longer soak (4,000 messages, more kills).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
import time
from pathlib import Path

from support.smtp_e2e import DOMAIN, RawSmtp, add_users_fast, servers

SLOW = bool(os.environ.get("POSTROOM_SLOW"))
MESSAGES = 4000 if SLOW else 400
SESSIONS = 20
USERS = [f"u{i:02d}@{DOMAIN}" for i in range(SESSIONS)]
DEADLINE_S = 600 if SLOW else 90
_TOKEN_RE = re.compile(rb"^X-Token: (\S+)\r\nX-Digest: ([0-9a-f]{64})\r\n", re.M)


def _message(token: str, rng: random.Random) -> bytes:
    size = rng.choice((200, 2_000, 5_000, 20_000, 120_000))
    lines = [f"line {n} of {token} ".encode().ljust(70, b"x") for n in range(size // 72 + 1)]
    body = b"\r\n".join(lines) + b"\r\n"
    digest = hashlib.sha256(body).hexdigest()
    return f"X-Token: {token}\r\nX-Digest: {digest}\r\nSubject: crash test\r\n\r\n".encode() + body


class Shared:
    def __init__(self) -> None:
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
            if self.next < MESSAGES:
                self.next += 1
                return self.next - 1
            return None


def _worker(shared: Shared, wid: int, deadline: float) -> None:
    rng = random.Random(wid)
    attempt = 0
    client: RawSmtp | None = None
    while not shared.stop.is_set() and time.monotonic() < deadline:
        n = shared.take()
        if n is None:
            break
        attempt += 1
        token = f"m{n}-w{wid}-a{attempt}"
        rcpts = [USERS[n % SESSIONS]] + ([USERS[(n + 1) % SESSIONS]] if n % 7 == 0 else [])
        data = _message(token, rng)
        try:
            if client is None:
                client = RawSmtp(shared.port, timeout=10)
                client.ehlo()
            r = client.mail("crash@remote.example", rcpts, data)
            if r.code != 250:
                raise RuntimeError(f"unexpected reply {r}")
        except Exception as e:  # noqa: BLE001 - a killed server shows up in many ways
            if client is not None:
                client.close()
                client = None
            with shared.lock:
                shared.retry.append(n)
                if not isinstance(e, (OSError, TimeoutError, AssertionError)) and "connection closed" not in str(e):
                    shared.errors.append(repr(e))
            time.sleep(0.05)
            continue
        with shared.lock:
            shared.acked[token] = rcpts
            shared.done.add(n)
        if rng.random() < 0.2:  # sometimes a new connection, as MX clients do
            client.close()
            client = None
        time.sleep(rng.uniform(0.05, 0.6))  # paced, so that many kills land mid-run
    if client is not None:
        client.close()


def _inventory(srv) -> dict[str, dict[str, int]]:  # type: ignore[no-untyped-def]
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


def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20240101)
    deadline = time.monotonic() + DEADLINE_S
    with servers(tmp_path) as pool:
        srv = pool.make(roles=("mx",), users=(), fsync=True, start=False)
        add_users_fast(srv, USERS)
        srv.start()
        shared = Shared()
        shared.port = srv.ports["mx"]
        threads = [threading.Thread(target=_worker, args=(shared, w, deadline), daemon=True) for w in range(SESSIONS)]
        for t in threads:
            t.start()
        kills = 0
        acked_at_kill = []
        while time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(rng.uniform(0.1, 0.7))
            if len(shared.done) >= MESSAGES:
                break
            srv.kill()  # SIGKILL: no shutdown code runs
            kills += 1
            acked_at_kill.append(len(shared.acked))
            srv.start()
            shared.port = srv.ports["mx"]
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic()))
        shared.stop.set()
        assert not any(t.is_alive() for t in threads), "clients did not finish in time"
        srv.kill()
        assert not shared.errors, shared.errors[:5]
        assert len(shared.done) == MESSAGES
        assert kills >= 5, f"only {kills} kills happened; the test proves little"
        # Kills happened while mail was flowing, not only before or after.
        assert any(0 < a < len(shared.acked) for a in acked_at_kill), acked_at_kill

        found = _inventory(srv)
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
        print(f"crash test: {kills} kills, {len(shared.acked)} acknowledged, {len(unacked)} stored without 250")
        # The server starts cleanly on the crashed data and still delivers.
        srv.start()
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.mail("after@remote.example", [USERS[0]], _message("final", rng)).code == 250
        srv.stop()
