"""queue/worker.py in process: real SQLite store, real sockets to the capture server, dict
DNS. Retries, bounces (parsed back), NOTIFY, loops, concurrency, destination backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.capture import Behaviour, Capture
from support.worker_env import LOCAL_DOMAIN, WorkerEnv, message, report_fields

from postroom.admin.service import AdminService
from postroom.queue.model import Admission, DestinationState
from postroom.store.api import QueueRecipient, RecipientOutcome

ADDRESSES = tuple(f"127.0.0.{i}" for i in range(50, 80))
_pool = iter(ADDRESSES)


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    cap = Capture(ADDRESSES).start()
    yield cap
    cap.stop()


def mx(capture: Capture, domain: str, behaviour: Behaviour | None = None) -> tuple[dict[tuple[str, str], Any], str]:
    """DNS records making ``domain``'s MX a fresh capture address with ``behaviour``."""
    address = next(_pool)
    capture.behaviours[address] = behaviour or Behaviour()
    return {(domain, "MX"): [(10, f"mx.{domain}")], (f"mx.{domain}", "A"): [address]}, address


def arrived(capture: Capture, address: str) -> list[Any]:
    with capture.lock:
        return [m for m in capture.messages if m.address == address]


def test_delivery_to_two_domains_and_removal(tmp_path: Path, capture: Capture) -> None:
    rec1, a1 = mx(capture, "one.test")
    rec2, a2 = mx(capture, "two.test")

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec1 | rec2) as env:
            data = b"Return-Path: <sender@local.test>\r\n" + message("two domains")
            qid = await env.enqueue(["a@one.test", "b@one.test", "c@two.test"], data=data)
            await env.start()
            await env.gone(qid)

    asyncio.run(main())
    (m1,) = arrived(capture, a1)
    (m2,) = arrived(capture, a2)
    assert m1.recipients == ["a@one.test", "b@one.test"] and m2.recipients == ["c@two.test"]
    assert m1.mail_from == "sender@local.test"
    assert not m1.data.lower().startswith(b"return-path"), "our Return-Path must not leave"
    assert b"Subject: two domains" in m1.data


def test_retry_after_4xx(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "retry.test", Behaviour(replies={"rcpt": ["451 4.7.1 greylisted"]}))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec) as env:
            qid = await env.enqueue(["x@retry.test"])
            await env.start()

            async def deferred() -> bool:
                q = await env.store.queue_get(qid)
                return q is not None and q.attempts == 1

            await env.wait(deferred)
            q = await env.entry(qid)
            (r,) = q.recipients
            assert r.state == "pending" and r.status == "4.7.1" and "greylisted" in (r.diagnostic or "")
            assert q.last_error and "greylisted" in q.last_error
            assert q.next_attempt >= q.created + 1
            await env.gone(qid)
            assert await env.inbox() == []  # no DSN for a delivery that succeeded

    asyncio.run(main())
    assert len(arrived(capture, address)) == 1


def test_permanent_failure_bounces_to_local_sender(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "bounce.test", Behaviour(
        rcpt_fn=lambda a: "550 5.1.1 <nobody@bounce.test>: no such user" if a.startswith("nobody") else None,
    ))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec) as env:
            qid = await env.enqueue(["nobody@bounce.test", "ok@bounce.test"], envid="ENV-1", ret="HDRS")
            await env.start()
            await env.gone(qid)
            (dsn,) = await env.wait(env.inbox)
            assert dsn["From"].addresses[0].username == "MAILER-DAEMON"
            assert dsn["To"].addresses[0].addr_spec == f"sender@{LOCAL_DOMAIN}"
            assert dsn["Auto-Submitted"] == "auto-replied"
            (block,) = report_fields(dsn)
            assert block["final-recipient"] == "rfc822;nobody@bounce.test"
            assert block["action"] == "failed" and block["status"] == "5.1.1"
            assert "550 5.1.1" in block["diagnostic-code"] and block["remote-mta"] == "dns; mx.bounce.test"
            parts = [p.get_content_type() for p in dsn.walk()]
            assert "text/rfc822-headers" in parts  # RET=HDRS
            raw_report = dsn.as_bytes()
            assert b"Original-Envelope-Id: ENV-1" in raw_report

    asyncio.run(main())
    assert [m.recipients for m in arrived(capture, address)] == [["ok@bounce.test"]]


def test_expiry_with_delay_warning(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "down.test", Behaviour(replies={"rcpt": ["452 4.2.2 mailbox full"] * 50}))

    async def main() -> None:
        async with WorkerEnv(
            tmp_path, capture.port, rec, max_queue_lifetime="3s", delay_warning="1s"
        ) as env:
            qid = await env.enqueue(["full@down.test"])
            await env.start()
            await env.gone(qid, timeout=20)
            dsns = await env.wait(lambda: _count(env, 2))
            kinds = sorted(str(d["Subject"]) for d in dsns)
            assert kinds == ["Delayed Mail (still being retried)", "Undelivered Mail Returned to Sender"]
            delay = next(d for d in dsns if "Delayed" in str(d["Subject"]))
            (block,) = report_fields(delay)
            assert block["action"] == "delayed" and "will-retry-until" in block
            failure = next(d for d in dsns if "Undelivered" in str(d["Subject"]))
            (block,) = report_fields(failure)
            assert block["action"] == "failed" and "452 4.2.2" in block["diagnostic-code"]
            assert any(p.get_content_type() == "message/rfc822" for p in failure.walk())  # RET default: full

    asyncio.run(main())
    assert arrived(capture, address) == []


async def _count(env: WorkerEnv, n: int) -> Any:
    msgs = await env.inbox()
    return msgs if len(msgs) >= n else None


def test_notify_never_success_and_dsn_passthrough(tmp_path: Path, capture: Capture) -> None:
    rec1, a1 = mx(capture, "nodsn.test", Behaviour(extensions=("PIPELINING", "8BITMIME")))
    rec2, a2 = mx(capture, "withdsn.test")
    rec3, _ = mx(capture, "reject.test", Behaviour(replies={"rcpt": ["550 5.1.1 no"]}))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec1 | rec2 | rec3) as env:
            q1 = await env.enqueue([QueueRecipient("s@nodsn.test", "rfc822;orig@local.test", "SUCCESS,FAILURE")])
            q2 = await env.enqueue([QueueRecipient("s@withdsn.test", "rfc822;o+2@local.test", "SUCCESS")], envid="E 1", ret="FULL")
            q3 = await env.enqueue([QueueRecipient("n@reject.test", None, "NEVER")])
            await env.start()
            for q in (q1, q2, q3):
                await env.gone(q)
            await asyncio.sleep(0.3)
            (dsn,) = await env.inbox()  # only the "relayed" report: NEVER is silent
            (block,) = report_fields(dsn)
            assert block["action"] == "relayed" and block["final-recipient"] == "rfc822;s@nodsn.test"
            assert block["original-recipient"] == "rfc822;orig@local.test"
            assert "Successful" in str(dsn["Subject"])

    asyncio.run(main())
    (m2,) = arrived(capture, a2)
    # RFC 3461: NOTIFY and ORCPT passed on (xtext), RET and ENVID too
    assert m2.rcpts[0][1] == "NOTIFY=SUCCESS ORCPT=rfc822;o+2B2@local.test"
    assert "RET=FULL" in m2.mail_params and "ENVID=E+201" in m2.mail_params
    (m1,) = arrived(capture, a1)
    assert m1.rcpts[0][1] == ""  # the server does not do DSN: no parameters


def test_no_bounce_for_null_sender_or_dsn(tmp_path: Path, capture: Capture) -> None:
    rec, _ = mx(capture, "nobounce.test", Behaviour(replies={"rcpt": ["550 5.1.1 no"] * 2}))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec) as env:
            q1 = await env.enqueue(["a@nobounce.test"], sender="")
            q2 = await env.enqueue(["b@nobounce.test"], kind="dsn")
            await env.start()
            await env.gone(q1)
            await env.gone(q2)
            await asyncio.sleep(0.3)
            assert await env.inbox() == []
            assert await env.store.queue_list() == []

    asyncio.run(main())


def test_remote_sender_gets_queued_dsn(tmp_path: Path, capture: Capture) -> None:
    rec1, _ = mx(capture, "rejecting.test", Behaviour(replies={"rcpt": ["554 5.7.1 denied"]}))
    rec2, origin = mx(capture, "origin.test")

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec1 | rec2) as env:
            qid = await env.enqueue(["x@rejecting.test"], sender="someone@origin.test")
            await env.start()
            await env.gone(qid)
            await env.wait(lambda: arrived(capture, origin))

            async def queue_empty() -> bool:
                return await env.store.queue_list() == []

            # The receiving MX has the DSN before its 250 reaches us; the entry goes after.
            await env.wait(queue_empty)

    asyncio.run(main())
    (dsn,) = arrived(capture, origin)
    assert dsn.mail_from == "" and dsn.recipients == ["someone@origin.test"]
    assert b"multipart/report" in dsn.data and b"Status: 5.7.1" in dsn.data


def test_received_loop_bounces_without_sending(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "loop.test")
    hops = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n" for i in range(7))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec, max_received_headers=6) as env:
            qid = await env.enqueue(["a@loop.test"], data=hops.encode() + message("loop"))
            await env.start()
            await env.gone(qid)
            (dsn,) = await env.wait(env.inbox)
            (block,) = report_fields(dsn)
            assert block["status"] == "5.4.6" and "loop" in block["diagnostic-code"].lower()

    asyncio.run(main())
    assert arrived(capture, address) == []


def test_per_destination_limit_and_connection_reuse(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "busy.test", Behaviour(delay=0.01))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec, per_destination=3, concurrency=10) as env:
            qids = [await env.enqueue([f"u{i}@busy.test"]) for i in range(30)]
            await env.start()
            for qid in qids:
                await env.gone(qid)

    asyncio.run(main())
    got = arrived(capture, address)
    assert len(got) == 30
    with capture.lock:
        sessions = [s for s in capture.sessions if s.address == address]
    assert 1 <= len(sessions) <= 3 + 2, f"{len(sessions)} sessions for 30 messages"
    assert sum(s.transactions for s in sessions) == 30
    assert max(s.transactions for s in sessions) >= 5  # messages shared connections


def test_destination_down_probes_once(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "refusing.test", Behaviour(greeting="421 4.3.2 try later"))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec, retry_schedule=["30s"]) as env:
            qids = [await env.enqueue([f"u{i}@refusing.test"]) for i in range(8)]
            worker = await env.start()

            async def all_deferred() -> bool:
                entries = [await env.store.queue_get(q) for q in qids]
                return all(e is not None and e.attempts >= 1 for e in entries)

            await env.wait(all_deferred)
            assert worker.destinations.state("mx:refusing.test") is DestinationState.DOWN
            assert worker.destinations.admit("mx:refusing.test", 0) is Admission.WAIT
            diagnostics = [(await env.entry(q)).recipients[0].diagnostic or "" for q in qids]
            assert all("421 4.3.2" in d or "destination is down" in d for d in diagnostics)
            entry = await env.entry(qids[-1])
            assert entry.next_attempt >= entry.created + 25
            with capture.lock:
                before = len([s for s in capture.sessions if s.address == address])
            # At most per_destination sessions raced before the first verdict came in.
            assert 1 <= before <= 5
            # Once it is known to be down, new mail for it waits for the backoff: no connection.
            later = [await env.enqueue([f"v{i}@refusing.test"]) for i in range(5)]
            for q in later:
                await env.wait(lambda q=q: _attempted(env, q))
                assert "destination is down" in ((await env.entry(q)).recipients[0].diagnostic or "")
            with capture.lock:
                after = len([s for s in capture.sessions if s.address == address])
            assert after == before, "connected to a destination that is down"

    asyncio.run(main())


async def _attempted(env: WorkerEnv, qid: str) -> bool:
    entry = await env.store.queue_get(qid)
    return entry is not None and entry.attempts >= 1


def test_mx_fallback_on_refused_greeting(tmp_path: Path, capture: Capture) -> None:
    bad = next(_pool)
    good = next(_pool)
    capture.behaviours[bad] = Behaviour(greeting="554 5.3.2 not now")
    capture.behaviours[good] = Behaviour()
    records = {
        ("fallback.test", "MX"): [(10, "mx1.fallback.test"), (20, "mx2.fallback.test"), (30, "mx3.fallback.test")],
        ("mx1.fallback.test", "A"): ["127.0.0.49"],  # nothing listens there: refused
        ("mx2.fallback.test", "A"): [bad],
        ("mx3.fallback.test", "A"): [good],
    }

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, records) as env:
            qid = await env.enqueue(["a@fallback.test"])
            await env.start()
            await env.gone(qid)

    asyncio.run(main())
    (m,) = arrived(capture, good)
    assert m.recipients == ["a@fallback.test"]
    with capture.lock:
        assert [s.address for s in capture.sessions if s.address in (bad, good)] == [bad, good]


def test_held_message_waits_for_release_and_admin_bounce(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "held.test")

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec) as env:
            q1 = await env.enqueue(["a@held.test"])
            q2 = await env.enqueue(["b@held.test", "c@held.test"])
            await env.store.queue_hold(q1, True)
            await env.store.queue_hold(q2, True)
            await env.start()
            await asyncio.sleep(0.5)
            assert (await env.entry(q1)).held and not arrived(capture, address)
            admin = AdminService(env.store, env.settings)
            assert await admin.queue_bounce(q2) == 2
            assert await env.store.queue_get(q2) is None
            (dsn,) = await env.inbox()
            blocks = report_fields(dsn)
            assert [b["final-recipient"] for b in blocks] == ["rfc822;b@held.test", "rfc822;c@held.test"]
            assert all(b["status"] == "5.0.0" for b in blocks)
            await admin.queue_hold(q1, False)  # publishes a wake-up in process
            await env.gone(q1)

    asyncio.run(main())
    assert [m.recipients for m in arrived(capture, address)] == [["a@held.test"]]


def test_intermediate_record_keeps_lease_and_attempts(tmp_path: Path) -> None:
    async def main() -> None:
        async with WorkerEnv(tmp_path, 25, {}) as env:
            qid = await env.enqueue(["a@x.test", "b@y.test"])
            (q,) = await env.store.queue_due(10**10, 10, 300, "n1")
            a, b = q.recipients
            done = await env.store.queue_record(qid, [RecipientOutcome(a.id, "delivered", "2.0.0")], None, None, final=False)
            assert not done
            q2 = await env.entry(qid)
            assert q2.attempts == 0 and q2.recipients[0].state == "delivered"
            assert await env.store.queue_due(10**10, 10, 300, "n2") == []  # still leased
            done = await env.store.queue_record(qid, [RecipientOutcome(b.id, "delivered", "2.0.0")], None, None, final=False)
            assert done and await env.store.queue_get(qid) is None

    asyncio.run(main())


def test_failed_opportunistic_tls_retries_in_plaintext(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "badtls.test", Behaviour(break_tls=True))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec) as env:
            qid = await env.enqueue(["a@badtls.test"])
            await env.start()
            await env.gone(qid)

    asyncio.run(main())
    (got,) = arrived(capture, address)
    assert not got.tls
    with capture.lock:
        assert len([s for s in capture.sessions if s.address == address]) == 2  # TLS try + plaintext


def test_ipv6_mx_and_size_limit(tmp_path: Path) -> None:
    cap = Capture(("::1",), default=Behaviour(extensions=("PIPELINING", "SIZE 2000"))).start()
    records = {("v6.test", "MX"): [(10, "mx.v6.test")], ("mx.v6.test", "AAAA"): ["::1"]}

    async def main() -> None:
        async with WorkerEnv(tmp_path, cap.port, records) as env:
            small = await env.enqueue(["a@v6.test"])
            big = await env.enqueue(["b@v6.test"], data=message("big", "x" * 5000))
            await env.start()
            await env.gone(small)
            await env.gone(big)
            (dsn,) = await env.wait(env.inbox)
            (block,) = report_fields(dsn)
            assert block["final-recipient"] == "rfc822;b@v6.test" and block["status"] == "5.3.4"

    try:
        asyncio.run(main())
        assert [m.recipients for m in cap.messages] == [["a@v6.test"]]  # the big one never went
    finally:
        cap.stop()


def test_stop_lets_the_transaction_in_flight_finish(tmp_path: Path, capture: Capture) -> None:
    rec, address = mx(capture, "slowstop.test", Behaviour(delay=0.3))

    async def main() -> None:
        async with WorkerEnv(tmp_path, capture.port, rec, per_destination=1) as env:
            qids = [await env.enqueue([f"s{i}@slowstop.test"]) for i in range(3)]
            worker = await env.start()
            await env.wait(lambda: any(s.address == address and "MAIL" in s.commands for s in capture.sessions))
            await worker.stop()  # mid-transaction: the first message is allowed to finish
            env.worker = None
            left = [q for q in qids if await env.store.queue_get(q) is not None]
            assert len(left) == 2, "exactly the message in flight was delivered and recorded"

    asyncio.run(main())
    assert len(arrived(capture, address)) == 1
