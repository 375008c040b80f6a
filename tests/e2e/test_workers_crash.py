"""SIGKILL of any process of a multi-process server loses nothing that was acknowledged.

The same load as test_smtp_crash.py (20 client threads, numbered messages with a token
and a digest, fsync on) against ``server.workers = 2``:

* worker kills: a random worker is SIGKILLed while both serve; the supervisor starts a
  new one, and the clients whose connection died retry (on the other worker meanwhile);
* supervisor kills: the supervisor alone is SIGKILLed (its workers notice the bus close,
  finish what they were doing and exit), or every process of the server at once; then
  the server is started again.

Afterwards every acknowledged message is in each recipient's INBOX exactly once, byte for
byte, and nothing is stored twice. ``POSTROOM_SLOW=1`` sends ten times as much.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from support.crash_load import USERS, Shared, check, inventory, message, start_load
from support.procs import children, kill, wait_children, wait_gone
from support.smtp_e2e import RawSmtp, servers

SLOW = bool(os.environ.get("POSTROOM_SLOW"))
MESSAGES = 3000 if SLOW else 400
WORKER_KILL_MESSAGES = 4000 if SLOW else 600  # worker restarts take a while: more load
DEADLINE_S = 600 if SLOW else 120
EXTRA = '[limits]\nshutdown_grace = "2s"\n'


def _finish(srv, shared: Shared, threads, deadline: float, kills: int, acked_at_kill: list[int]) -> None:  # type: ignore[no-untyped-def]
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    shared.stop.set()
    assert not any(t.is_alive() for t in threads), "clients did not finish in time"
    assert not shared.errors, shared.errors[:5]
    assert len(shared.done) == shared.messages
    assert any(0 < a < len(shared.acked) for a in acked_at_kill), acked_at_kill
    unacked = check(inventory(srv), shared, kills)
    print(f"crash test: {kills} kills, {len(shared.acked)} acknowledged, {unacked} stored without 250")


def test_sigkill_of_workers_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20261206)
    deadline = time.monotonic() + DEADLINE_S
    with servers(tmp_path) as pool:
        srv, shared, threads = start_load(pool, WORKER_KILL_MESSAGES, deadline, workers=2, extra=EXTRA)
        kills = 0
        acked_at_kill: list[int] = []
        killed: list[int] = []
        while time.monotonic() < deadline and len(shared.done) < shared.messages:
            assert srv.proc is not None
            workers = wait_children(srv.proc.pid, 2, timeout=30, exclude=killed)
            time.sleep(rng.uniform(0.1, 0.4))
            if len(shared.done) >= shared.messages:
                break
            # the one started earlier (lower pid): a worker restarted a moment ago would wait
            # longer before its next restart (the supervisor's crash-loop backoff)
            victim = min(workers)
            kill(victim)  # SIGKILL, mid-transaction for some of the 20 sessions
            killed.append(victim)
            kills += 1
            acked_at_kill.append(len(shared.acked))
        _finish(srv, shared, threads, deadline, kills, acked_at_kill)
        assert kills >= 4, f"only {kills} kills happened; the test proves little"
        assert srv.logs().count("event=worker_exited") >= kills
        srv.stop()


def test_sigkill_of_the_supervisor_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20261207)
    deadline = time.monotonic() + DEADLINE_S
    with servers(tmp_path) as pool:
        srv, shared, threads = start_load(pool, MESSAGES, deadline, workers=2, extra=EXTRA)
        kills = 0
        acked_at_kill: list[int] = []
        while time.monotonic() < deadline and len(shared.done) < MESSAGES:
            time.sleep(rng.uniform(0.3, 1.0))
            if len(shared.done) >= MESSAGES:
                break
            assert srv.proc is not None
            workers = children(srv.proc.pid)
            if kills % 2:  # every process of the server at once
                for pid in workers:
                    kill(pid)
            srv.kill()  # the supervisor; alone, its workers stop by themselves
            kills += 1
            acked_at_kill.append(len(shared.acked))
            wait_gone(workers, 30)
            srv.start()
            shared.port = srv.ports["mx"]
        _finish(srv, shared, threads, deadline, kills, acked_at_kill)
        assert kills >= 4, f"only {kills} kills happened; the test proves little"
        assert "event=worker_supervisor_gone" in srv.logs()
        # The server starts cleanly on the crashed data and still delivers.
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.mail("after@remote.example", [USERS[0]], message("final", rng)).code == 250
        srv.stop()
