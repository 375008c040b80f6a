"""Crash safety of the outbound queue: messages queued for a remote capture server, postroom
SIGKILLed at random points while it delivers, restarted until the queue is empty. Every
message must arrive at least once and nothing may stay queued. Duplicates are possible only
in the window between the remote's 250 and our durable record; they are counted, reported,
and bounded (at most one per transaction in flight at each kill).

The default run queues 300 messages and kills up to 8 times; POSTROOM_SLOW=1 queues 1500 and
kills up to 30 times, with a new random seed each run.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from pathlib import Path

from support.capture import Behaviour, Capture
from support.dns_server import DnsServer
from support.server import Server

from postroom import deliver
from postroom.store.api import Delivery, NewQueueEntry, QueueRecipient

ADDRESS = "127.0.0.190"
PER_DESTINATION = 5
SLOW = os.environ.get("POSTROOM_SLOW") == "1"


def queue_messages(server: Server, count: int) -> None:
    async def fn(admin: object, store: object) -> None:
        for i in range(count):
            data = deliver.normalize(
                f"From: alice@example.test\r\nTo: r{i}@crash.test\r\nSubject: crash {i}\r\n"
                f"Message-ID: <crash-{i}@example.test>\r\n\r\nmessage {i}\r\n".encode()
            )
            entry = NewQueueEntry(
                qid=deliver.new_id(), sender="alice@example.test",
                recipients=(QueueRecipient(f"r{i}@crash.test"),),
            )
            await store.deliver(Delivery(data=data, summary=deliver.summarize(data), queue=entry))  # type: ignore[attr-defined]

    server.admin(fn)


def run_crash_test(tmp_path: Path, count: int, max_kills: int, seed: int) -> None:
    rng = random.Random(seed)
    capture = Capture((ADDRESS,), default=Behaviour(starttls=False, delay=0.012)).start()
    dns = DnsServer({("crash.test", "MX"): [(10, "mx.crash.test")], ("mx.crash.test", "A"): [ADDRESS]}).start()
    server = Server(
        tmp_path, roles=("mx",), fsync=True,
        extra=(
            f'[outbound]\nresolver = "{dns.address}"\nport = {capture.port}\n'
            f'per_destination = {PER_DESTINATION}\nretry_schedule = ["1s"]\n'
            'queue_poll_interval = "300ms"\nconnection_cache_time = "500ms"\n'
        ),
    )
    server.add_user("alice@example.test")
    queue_messages(server, count)
    kills = 0
    rounds = 0
    try:
        deadline = time.monotonic() + (600 if SLOW else 90)
        while time.monotonic() < deadline:
            remaining = len(server.queue())
            if remaining == 0:
                break
            rounds += 1
            server.start()
            if kills < max_kills:
                time.sleep(rng.uniform(0.05, 0.5))
                server.kill()  # SIGKILL, at whatever point the delivery is
                kills += 1
            else:  # enough crashes: let it finish
                end = time.monotonic() + 60
                while server.queue() and time.monotonic() < end:
                    time.sleep(0.1)
                server.stop()
        assert server.queue() == [], "messages left in the queue"
        with capture.lock:
            ids = [m for msg in capture.messages for m in re.findall(rb"Message-ID: <(crash-\d+)@", msg.data)]
        seen = Counter(ids)
        missing = [i for i in range(count) if seen[f"crash-{i}".encode()] == 0]
        duplicates = sum(n - 1 for n in seen.values())
        print(
            f"\ncrash test: {count} messages, {kills} SIGKILLs in {rounds} runs, "
            f"{len(seen)} arrived, {duplicates} duplicate(s), {len(missing)} missing"
        )
        assert not missing, f"lost messages: {missing[:10]}"
        assert len(seen) == count
        # Only transactions in flight at a kill can be repeated.
        assert duplicates <= kills * PER_DESTINATION
        assert kills >= min(max_kills, 3), "the deliveries ended before the kills could hit them"
    finally:
        if server.proc is not None:
            server.kill()
        capture.stop()
        dns.stop()


def test_sigkill_during_delivery_loses_nothing(tmp_path: Path) -> None:
    if SLOW:
        run_crash_test(tmp_path, 1500, 30, seed=int(time.time()))
    else:
        run_crash_test(tmp_path, 300, 8, seed=20240601)

