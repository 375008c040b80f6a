"""SIGKILL the server while 20 sessions deliver; acknowledged mail survives, exactly once.

20 client threads send 400 numbered messages over the MX listener (fsync on) while the
main thread SIGKILLs ``postroom serve`` at random moments and restarts it. Every attempt
carries a fresh token, so a message that was stored but whose 250 was lost with the
process (RFC 1047's duplicate window) can be told apart from a real duplicate. Afterwards:

* every token that received 250 is in each recipient's INBOX exactly once;
* no token is anywhere twice, and every stored message is whole (its digest matches);
* the store is consistent (UIDs strictly ascending).

One process here (``server.workers = 1``); tests/e2e/test_workers_crash.py kills worker
processes and their supervisor. ``POSTROOM_SLOW=1`` runs a longer soak (4,000 messages,
more kills).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from support.crash_load import USERS, check, inventory, message, start_load
from support.smtp_e2e import RawSmtp, servers

SLOW = bool(os.environ.get("POSTROOM_SLOW"))
MESSAGES = 4000 if SLOW else 400
DEADLINE_S = 600 if SLOW else 90


def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20240101)
    deadline = time.monotonic() + DEADLINE_S
    with servers(tmp_path) as pool:
        srv, shared, threads = start_load(pool, MESSAGES, deadline, workers=1)
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

        unacked = check(inventory(srv), shared, kills)
        print(f"crash test: {kills} kills, {len(shared.acked)} acknowledged, {unacked} stored without 250")
        # The server starts cleanly on the crashed data and still delivers.
        srv.start()
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.mail("after@remote.example", [USERS[0]], message("final", rng)).code == 250
        srv.stop()
