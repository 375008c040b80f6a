"""The process bus without processes: a Hub and WorkerBus ends over real socket pairs in
one event loop, as the supervisor and two workers would use them."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from postroom.processes.bus import MAX_FRAME, Hub, RemoteRecent, WorkerBus, encode, read_frame
from postroom.store.api import MailboxChange
from postroom.store import changes
from postroom.store.changes import LocalChangeHub


class World:
    """A hub (with its own store's change hub) and two workers, each with a change hub."""

    def __init__(self) -> None:
        self.hub = Hub()
        self.hub.hub = LocalChangeHub(relay=self.hub)
        self.buses: list[WorkerBus] = []
        self.closed: list[int] = []

    async def start(self, n: int = 2) -> None:
        for i in range(1, n + 1):
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            theirs.setblocking(False)
            await self.hub.attach(i, ours, lambda i=i: self.closed.append(i))
            bus = WorkerBus()
            await bus.connect(theirs)
            bus.hub = LocalChangeHub(relay=bus)
            self.buses.append(bus)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


def run(body: Any) -> None:
    asyncio.run(asyncio.wait_for(body(), 10))


def test_frames_round_trip_and_a_blocking_read() -> None:
    a, b = socket.socketpair()
    a.sendall(encode(("start", {"x": [1, 2]})) + encode(("ready",)))
    assert read_frame(b) == ("start", {"x": [1, 2]})
    assert read_frame(b) == ("ready",)
    a.sendall((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ConnectionError):
        read_frame(b)
    a.close()
    with pytest.raises(ConnectionError):
        read_frame(b)
    b.close()


def test_changes_reach_only_the_workers_that_watch_the_mailbox() -> None:
    async def body() -> None:
        w = World()
        await w.start(3)
        one, two, three = (bus.hub for bus in w.buses)
        assert one is not None and two is not None and three is not None
        got: dict[str, list[tuple[int, int]]] = {"one": [], "two": [], "sup": []}
        one.subscribe(7, lambda c: got["one"].append((c.mailbox_id, c.modseq)))
        assert w.hub.hub is not None
        w.hub.hub.subscribe_queue(lambda: got["sup"].append((0, 0)))
        await settle()
        assert got["one"] == []  # no change went by while the watch travelled
        two.publish(MailboxChange(7, 1, 5))
        two.publish(MailboxChange(8, 1, 6))  # nobody watches 8
        three.publish_queue()
        await settle()
        assert got["one"] == [(7, 5)]
        assert got["sup"] == [(0, 0)]  # the supervisor runs the queue
        # a worker's own change is not echoed back to it
        got["one"].clear()
        one.publish(MailboxChange(7, 1, 9))
        await settle()
        assert got["one"] == [(7, 9)]
        # the last listener leaves: the watch lingers (a re-SELECT needs no round trip)...
        one.unsubscribe(7, one._mailbox[7][0])
        await settle()
        two.publish(MailboxChange(7, 1, 10))
        await settle()
        assert w.hub.peers[1].watched == {7} and got["one"] == [(7, 9)]
        one.subscribe(7, lambda c: got["one"].append((c.mailbox_id, c.modseq)))
        two.publish(MailboxChange(7, 1, 12))
        await settle()
        assert got["one"] == [(7, 9), (7, 12)]
        # ... until it has lingered long enough: then no more forwarding
        changes.LINGER_SECONDS = 0.0
        try:
            one.unsubscribe(7, one._mailbox[7][0])
        finally:
            changes.LINGER_SECONDS = 30.0
        await settle()
        assert w.hub.peers[1].watched == set()
        # the supervisor's own change goes to watchers too
        two.subscribe(7, lambda c: got["two"].append((c.mailbox_id, c.modseq)))
        await settle()
        w.hub.hub.publish(MailboxChange(7, 1, 11))
        await settle()
        assert got["two"] == [(7, 11)]

    run(body)


def test_changes_that_overtook_a_watch_are_replayed_to_it() -> None:
    """The race of store/changes.py: a session subscribed, read, and a change of another
    worker reached the supervisor before the watch did. The supervisor replays the changes
    newer than the watch (one monotonic clock): to a mailbox watch the mailbox's message
    changes, to a user watch (NOTIFY) every change of the user; when the watch is older
    than what it keeps, the mailbox's listeners read again."""

    async def body() -> None:
        w = World()
        await w.start(2)
        one, two = (bus.hub for bus in w.buses)
        assert one is not None and two is not None
        got: list[tuple[int, int, str]] = []
        listener = lambda c: got.append((c.mailbox_id, c.modseq, c.kind))  # noqa: E731
        sent = time.monotonic()  # the watches below were "sent" before these changes
        two.publish(MailboxChange(9, 1, 3))  # relayed to nobody: nobody watches 9 yet
        two.publish(MailboxChange(8, 1, 4, kind="mailboxes"))  # user 1's mailbox list
        two.publish(MailboxChange(7, 2, 5))  # another user's
        await settle()
        one._mailbox[9] = [listener]
        w.buses[0]._send(("watch", 9, sent), now=True)
        await settle()
        assert got == [(9, 3, "messages")]
        got.clear()
        one._user[1] = [listener]
        w.buses[0]._send(("watch_user", 1, sent), now=True)
        await settle()
        # (9, 3) reaches the mailbox listener and the user listener (the same here)
        assert got == [(9, 3, "messages"), (9, 3, "messages"), (8, 4, "mailboxes")]
        got.clear()
        # a watch older than what the supervisor keeps: read again
        w.buses[0]._send(("watch", 9, w.hub._horizon - 1), now=True)
        await settle()
        assert got == [(9, 0, "messages")]
        # and a change made after the watches is forwarded as usual, once
        got.clear()
        two.publish(MailboxChange(9, 1, 6))
        await settle()
        assert got == [(9, 6, "messages"), (9, 6, "messages")]  # mailbox and user listener

    run(body)


def test_notes_go_to_every_other_process() -> None:
    async def body() -> None:
        w = World()
        await w.start(3)
        seen: dict[str, list[str]] = {"1": [], "2": [], "3": [], "sup": []}
        for i, bus in enumerate(w.buses, 1):
            bus.subscribe("t", lambda v, i=i: seen[str(i)].append(v))
        w.hub.subscribe("t", lambda v: seen["sup"].append(v))
        w.buses[0].publish("t", "hello")
        await settle()
        assert seen == {"1": [], "2": ["hello"], "3": ["hello"], "sup": ["hello"]}

    run(body)


def test_calls_both_ways_and_recent_claims_answered_by_the_supervisor() -> None:
    async def body() -> None:
        w = World()
        await w.start(2)
        marks: dict[int, tuple[int, int]] = {}

        def claim(mailbox_id: int, validity: int, stored: int, upto: int) -> int:
            mark = max(stored, marks.get(mailbox_id, (validity, 0))[1])
            marks[mailbox_id] = (validity, max(mark, upto))
            return mark

        async def slow_known(mailbox_id: int) -> tuple[int, int] | None:
            await asyncio.sleep(0.01)  # a coroutine handler
            return marks.get(mailbox_id)

        def claim_known(mailbox_id: int, upto: int) -> int | None:
            known = marks.get(mailbox_id)
            return None if known is None else claim(mailbox_id, known[0], known[1], upto)

        w.hub.handlers.update({"recent.claim": claim, "recent.known": slow_known,
                               "recent.claim_known": claim_known,
                               "recent.forget": lambda m: marks.pop(m, None)})
        first, second = (RemoteRecent(bus) for bus in w.buses)
        assert await first.claim_known(3, 5) is None  # no mark yet: read the column
        assert await first.claim(3, 100, 1, 5) == 1  # owns 1..4
        assert await second.claim(3, 100, 1, 5) == 5  # nothing left
        assert await second.known(3) == (100, 5)
        assert await second.claim_known(3, 7) == 5  # owns 5..6, in one call
        first.forget(3)
        await settle()
        assert await first.known(3) is None
        with pytest.raises(RuntimeError, match="unknown call"):
            await w.buses[0].call("nope")
        # the supervisor asks every worker
        for i, bus in enumerate(w.buses, 1):
            bus.handlers["counters"] = lambda i=i: {"messages": i}
        for bus in w.buses:
            bus.ready()
        await settle()
        assert await w.hub.gather("counters") == {1: {"messages": 1}, 2: {"messages": 2}}

    run(body)


def test_a_closed_bus_is_seen_by_both_ends() -> None:
    async def body() -> None:
        w = World()
        await w.start(2)
        remote = RemoteRecent(w.buses[0])
        w.hub.peers[1].proto.close()  # the supervisor's end goes away
        await asyncio.wait_for(w.buses[0].closed.wait(), 5)
        # claims fall back to the caller's own reading of the column (RFC 3501 2.3.2)
        assert await remote.claim(3, 100, 4, 9) == 4
        assert await remote.known(3) is None
        assert await remote.claim_known(3, 9) is None
        assert w.closed == [1] and 1 not in w.hub.peers
        w.buses[1].proto.close()  # a worker goes away
        for _ in range(100):
            if w.closed == [1, 2]:
                break
            await asyncio.sleep(0.01)
        assert w.closed == [1, 2]

    run(body)
