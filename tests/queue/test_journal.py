"""The delivered journal (queue/journal.py): what a previous run noted is replayed as
delivered at the next start, torn lines are skipped, and the file is emptied once every
noted transaction is recorded in the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.capture import Capture
from support.worker_env import WorkerEnv

from postroom.queue.journal import DeliveredJournal
from postroom.store.api import RecipientOutcome


def test_notes_survive_and_torn_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "delivered.journal"
    j = DeliveredJournal(path)
    assert j.open() == []
    j.note("Q1", [RecipientOutcome(7, "delivered", "2.0.0", "250 ok", "mx.example")])
    j.note("Q2", [RecipientOutcome(8, "delivered", None, None, None),
                  RecipientOutcome(9, "delivered", "2.1.5", "ok", None)])
    # A crash: the descriptor is never closed, and a line is torn by a kill inside write().
    with path.open("ab") as f:
        f.write(b'["Q3",[[10,"2.0.0"')
    entries = DeliveredJournal(path).open()
    assert [e.qid for e in entries] == ["Q1", "Q2"]
    assert entries[0].outcomes == (RecipientOutcome(7, "delivered", "2.0.0", "250 ok", "mx.example"),)
    assert [o.recipient_id for o in entries[1].outcomes] == [8, 9]
    assert all(o.state == "delivered" for e in entries for o in e.outcomes)


def test_emptied_only_when_every_note_is_settled(tmp_path: Path) -> None:
    path = tmp_path / "delivered.journal"
    j = DeliveredJournal(path, max_bytes=10)
    j.open()
    j.note("A", [RecipientOutcome(1, "delivered", "2.0.0")])
    j.note("B", [RecipientOutcome(2, "delivered", "2.0.0")])
    j.settled()
    assert path.stat().st_size > 10, "B is not recorded yet: its line must stay"
    j.settled()
    assert path.stat().st_size == 0
    j.note("C", [RecipientOutcome(3, "delivered", "2.0.0")])  # appends at the new end
    assert [e.qid for e in DeliveredJournal(path).open()] == ["C"]
    j.close()


def test_worker_replays_the_journal_before_leasing(tmp_path: Path) -> None:
    """A crash after the remote's 250 and the journal line, before the store record: the
    restarted worker records the recipients as delivered and never sends them again (the
    MX records point at a live capture server, so a resend would arrive there)."""
    address = "127.0.0.187"
    capture = Capture((address,)).start()
    records = {
        (d, "MX"): [(10, f"mx.{d}")] for d in ("x.test", "y.test")
    } | {(f"mx.{d}", "A"): [address] for d in ("x.test", "y.test")}
    try:
        async def main() -> None:
            async with WorkerEnv(tmp_path, capture.port, records) as env:
                qid = await env.enqueue(["a@x.test", "b@y.test"])
                (q,) = await env.store.queue_due(10**10, 10, 300, "local")  # the dead run's lease
                a, b = q.recipients
                path = env.settings.data_dir / "delivered.journal"
                journal = DeliveredJournal(path)
                journal.open()
                journal.note(qid, [RecipientOutcome(a.id, "delivered", "2.0.0", "250 ok", "mx.x.test")])
                journal.note(qid, [RecipientOutcome(b.id, "delivered", "2.0.0", "250 ok", "mx.y.test")])
                await env.start()
                await env.gone(qid)  # both recorded from the journal: the entry is finished
                assert path.stat().st_size == 0
                # The control: a message without a journal line is sent as usual.
                other = await env.enqueue(["c@x.test"])
                await env.gone(other)

        asyncio.run(main())
        with capture.lock:
            sent = [r for m in capture.messages for r in m.recipients]
        assert sent == ["c@x.test"], "a journaled delivery was sent again"
    finally:
        capture.stop()
