"""The process bus: one local stream socket between the supervisor and each worker.

What travels on it (everything else, the data, goes through the shared SQLite store):

* mailbox changes and queue wake-ups published after a commit, so that an IMAP IDLE
  session in one worker wakes for a delivery made by another (``ChangeRelay``). A worker
  tells the supervisor which mailboxes (IDLE, a selected mailbox) and which users (NOTIFY)
  it watches; the supervisor forwards a change only to the workers watching it (never
  back to its sender), and queue wake-ups to itself (it runs the outbound queue). It
  keeps the changes of the last ``RECENT_KEEP`` seconds to replay to a new watch those
  that went by while the watch travelled (see ``store/changes.py``);
* \\Recent claims, answered by the supervisor's one :class:`RecentMarks` (``RemoteRecent``);
* notes between handlers (``postroom.peers``), forwarded to every other worker;
* calls the supervisor makes to every worker (``gather``: e.g. their counters, which a
  metrics endpoint in the supervisor would add up).

Why a socket pair per worker and pickled tuples: both ends are this program, created by
the supervisor (no path anyone else can connect to), and the messages are a few small
tuples per delivery. Frames are a 4-byte length and a pickle; what one loop iteration
sends is written with one system call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from postroom.peers import NoteHandler
from postroom.store.api import MESSAGES, MailboxChange
from postroom.store.changes import LocalChangeHub

log = logging.getLogger(__name__)

MAX_FRAME = 64 * 1024 * 1024  # settings and counters are the largest; a bigger one is a bug
CALL_TIMEOUT = 30.0
_LEN = struct.Struct("!I")

Message = tuple[Any, ...]


def encode(message: Message) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def read_frame(sock: socket.socket) -> Message:
    """One frame, blocking (a worker reads its start message before its loop runs)."""

    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("bus closed")
            buf += chunk
        return buf

    (size,) = _LEN.unpack(exactly(_LEN.size))
    if size > MAX_FRAME:
        raise ConnectionError("bus frame too large")
    message: Message = pickle.loads(exactly(size))
    return message


class FrameProtocol(asyncio.Protocol):
    """Frames in and out of one end of a bus socket."""

    def __init__(
        self, on_message: Callable[[Message], None], on_closed: Callable[[], None]
    ) -> None:
        self._on_message = on_message
        self._on_closed = on_closed
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= _LEN.size:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_FRAME:
                log.error("bus frame too large (%d bytes): closing", size)
                assert self.transport is not None
                self.transport.close()
                return
            end = pos + _LEN.size + size
            if len(buf) < end:
                break
            message = pickle.loads(buf[pos + _LEN.size : end])
            pos = end
            try:
                self._on_message(message)
            except Exception:
                log.exception("bus message %r failed", message[:1])
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_closed()

    def send(self, message: Message) -> None:
        """Queue a frame; everything queued in this loop iteration goes out together."""
        if self.closed:
            return
        self._out.append(encode(message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send_now(self, message: Message) -> None:
        self.send(message)
        self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.closed:
            out, self._out = self._out, []
            self.transport.write(b"".join(out))

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()


class _Calls:
    """Request/answer over a :class:`FrameProtocol`: ("call", id, name, args) frames
    answered by ("reply", id, ok, value)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    async def call(self, proto: FrameProtocol, name: str, *args: Any) -> Any:
        if proto.closed:
            raise ConnectionError("bus closed")
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        proto.send_now(("call", rid, name, args))
        try:
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        finally:
            self._waiting.pop(rid, None)

    def answered(self, rid: int, ok: bool, value: Any) -> None:
        future = self._waiting.get(rid)
        if future is None or future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(RuntimeError(f"bus call failed: {value}"))

    def fail_all(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("bus closed"))


Handler = Callable[..., Any]


def _answer(proto: FrameProtocol, handlers: dict[str, Handler], rid: int, name: str, args: tuple[Any, ...]) -> None:
    """Run a call's handler (plain or coroutine) and send its reply."""
    handler = handlers.get(name)
    if handler is None:
        proto.send(("reply", rid, False, f"unknown call {name!r}"))
        return
    try:
        result = handler(*args)
    except Exception as e:
        log.exception("bus call %s failed", name)
        proto.send(("reply", rid, False, repr(e)))
        return
    if not asyncio.iscoroutine(result):
        proto.send(("reply", rid, True, result))
        return

    async def finish(coro: Awaitable[Any]) -> None:
        try:
            value = await coro
        except Exception as e:
            log.exception("bus call %s failed", name)
            proto.send(("reply", rid, False, repr(e)))
        else:
            proto.send(("reply", rid, True, value))

    task = asyncio.ensure_future(finish(result))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


_tasks: set[asyncio.Future[None]] = set()


# -- the worker's end ----------------------------------------------------------------


class WorkerBus:
    """A worker's end: its store's :class:`ChangeRelay`, its :class:`Peers`, and calls
    to the supervisor. ``hub`` is the worker store's change hub (set once it exists)."""

    def __init__(self) -> None:
        self.hub: LocalChangeHub | None = None
        self.proto: FrameProtocol | None = None
        self.closed = asyncio.Event()
        self.handlers: dict[str, Handler] = {}  # calls the supervisor may make
        self._notes: dict[str, list[NoteHandler]] = {}
        self._calls = _Calls()

    async def connect(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_unix_connection(
            lambda: FrameProtocol(self._on_message, self._on_closed), sock=sock
        )
        self.proto = proto

    def _send(self, message: Message, now: bool = False) -> None:
        if self.proto is not None:
            if now:
                self.proto.send_now(message)
            else:
                self.proto.send(message)

    def _on_closed(self) -> None:
        self._calls.fail_all()
        self.closed.set()

    def _on_message(self, m: Message) -> None:
        kind = m[0]
        hub = self.hub
        if kind == "change":
            if hub is not None:
                hub.receive(MailboxChange(mailbox_id=m[1], user_id=m[2], modseq=m[3], kind=m[4]))
        elif kind == "queue":
            if hub is not None:
                hub.receive_queue()
        elif kind == "watching":
            if hub is not None:  # too late to tell which changes went by: read again
                hub.watch_confirmed(m[1])
        elif kind == "note":
            for handler in tuple(self._notes.get(m[1], ())):
                handler(m[2])
        elif kind == "reply":
            self._calls.answered(m[1], m[2], m[3])
        elif kind == "call":
            assert self.proto is not None
            _answer(self.proto, self.handlers, m[1], m[2], m[3])
        else:
            log.warning("unknown bus message %r", kind)

    # ChangeRelay -----------------------------------------------------------------------
    def watch(self, mailbox_id: int) -> None:
        # At once, not batched: the session reads the mailbox next (see store/changes.py).
        # The time (CLOCK_MONOTONIC, one clock for every process of the machine) tells the
        # supervisor which changes went by since, to replay them.
        self._send(("watch", mailbox_id, time.monotonic()), now=True)

    def unwatch(self, mailbox_id: int) -> None:
        self._send(("unwatch", mailbox_id))

    def watch_user(self, user_id: int) -> None:
        self._send(("watch_user", user_id, time.monotonic()), now=True)

    def unwatch_user(self, user_id: int) -> None:
        self._send(("unwatch_user", user_id))

    def watch_queue(self) -> None:
        self._send(("watch_queue",))

    def send_change(self, change: MailboxChange) -> None:
        self._send(("change", change.mailbox_id, change.user_id, change.modseq, change.kind))

    def send_queue(self) -> None:
        self._send(("queue",))

    # Peers -------------------------------------------------------------------------------
    def publish(self, topic: str, value: str) -> None:
        self._send(("note", topic, value))

    def subscribe(self, topic: str, handler: NoteHandler) -> None:
        self._notes.setdefault(topic, []).append(handler)

    def has_others(self) -> bool:
        return self.proto is not None and not self.proto.closed

    # calls to the supervisor ---------------------------------------------------------------
    async def call(self, name: str, *args: Any) -> Any:
        if self.proto is None:
            raise ConnectionError("bus not connected")
        return await self._calls.call(self.proto, name, *args)

    def cast(self, name: str, *args: Any) -> None:
        """A call without an answer."""
        self._send(("cast", name, args))

    def ready(self) -> None:
        self._send(("ready",), now=True)


class RemoteRecent:
    """:class:`~postroom.store.sqlite.recent.RecentClaims` answered by the supervisor.

    If the supervisor cannot answer (it is gone: this worker is shutting down), claims
    fall back to the caller's own reading of the column: RFC 3501 2.3.2 prefers a
    message shown as \\Recent twice to one never shown as \\Recent.
    """

    def __init__(self, bus: WorkerBus) -> None:
        self.bus = bus

    async def claim(self, mailbox_id: int, uidvalidity: int, stored: int, upto: int) -> int:
        try:
            mark: int = await self.bus.call("recent.claim", mailbox_id, uidvalidity, stored, upto)
        except (ConnectionError, RuntimeError, TimeoutError):
            return stored
        return mark

    async def known(self, mailbox_id: int) -> tuple[int, int] | None:
        try:
            known: tuple[int, int] | None = await self.bus.call("recent.known", mailbox_id)
        except (ConnectionError, RuntimeError, TimeoutError):
            return None
        return known

    async def claim_known(self, mailbox_id: int, upto: int) -> int | None:
        try:
            mark: int | None = await self.bus.call("recent.claim_known", mailbox_id, upto)
        except (ConnectionError, RuntimeError, TimeoutError):
            return None  # the caller reads the column and claims with that
        return mark

    def forget(self, mailbox_id: int) -> None:
        self.bus.cast("recent.forget", mailbox_id)


# -- the supervisor's end ----------------------------------------------------------------


class _Peer:
    def __init__(self, index: int, proto: FrameProtocol) -> None:
        self.index = index
        self.proto = proto
        self.watched: set[int] = set()  # mailbox ids
        self.watched_users: set[int] = set()
        self.watches_queue = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A worker that exits before it is ready may have nobody waiting (a restart):
        # its exception is then retrieved here rather than reported as never retrieved.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())


RECENT_KEEP = 30.0  # seconds of changes the supervisor keeps to replay to a new watch
RECENT_MAX = 100_000  # ... and at most this many


def _wants(peer: _Peer, m: Message) -> bool:
    """Does this worker watch what the change frame ``m`` is about?"""
    return (m[4] == MESSAGES and m[1] in peer.watched) or m[2] in peer.watched_users


class Hub:
    """The supervisor's end of every worker's bus, and the relay of its own store."""

    def __init__(self) -> None:
        self.peers: dict[int, _Peer] = {}
        # (time.monotonic(), origin worker or 0, change frame) of the last RECENT_KEEP
        # seconds, to replay to a new watch (see WorkerBus.watch); what was dropped before
        # ``_horizon`` cannot be replayed any more
        self._recent: deque[tuple[float, int, Message]] = deque()
        self._horizon = time.monotonic()
        self.hub: LocalChangeHub | None = None  # the supervisor's own store's hub
        self.handlers: dict[str, Handler] = {}
        self._notes: dict[str, list[NoteHandler]] = {}
        self._calls = _Calls()

    async def attach(
        self, index: int, sock: socket.socket, on_closed: Callable[[], None]
    ) -> _Peer:
        """Serve one worker's end; ``on_closed`` runs when the worker is gone."""
        loop = asyncio.get_running_loop()
        holder: list[_Peer] = []

        def on_message(m: Message) -> None:
            self._on_message(holder[0], m)

        def closed() -> None:
            peer = holder[0]
            if self.peers.get(peer.index) is peer:
                del self.peers[peer.index]
            if not peer.ready.done():
                peer.ready.set_exception(ConnectionError("worker exited before it was ready"))
            on_closed()

        _, proto = await loop.create_unix_connection(
            lambda: FrameProtocol(on_message, closed), sock=sock
        )
        peer = _Peer(index, proto)
        holder.append(peer)
        self.peers[index] = peer
        return peer

    def _on_message(self, peer: _Peer, m: Message) -> None:
        kind = m[0]
        if kind == "change":
            self._keep(peer.index, m)
            if self.hub is not None:
                self.hub.receive(MailboxChange(mailbox_id=m[1], user_id=m[2], modseq=m[3], kind=m[4]))
            for other in self.peers.values():
                if other is not peer and _wants(other, m):
                    other.proto.send(m)
        elif kind == "queue":
            if self.hub is not None:
                self.hub.receive_queue()
            for other in self.peers.values():
                if other is not peer and other.watches_queue:
                    other.proto.send(m)
        elif kind == "watch":
            peer.watched.add(m[1])
            self._replay(peer, m[2], lambda c: c[4] == MESSAGES and c[1] == m[1], m[1])
        elif kind == "unwatch":
            peer.watched.discard(m[1])
        elif kind == "watch_user":
            peer.watched_users.add(m[1])
            self._replay(peer, m[2], lambda c: c[2] == m[1], None)
        elif kind == "unwatch_user":
            peer.watched_users.discard(m[1])
        elif kind == "watch_queue":
            peer.watches_queue = True
        elif kind == "note":
            for other in self.peers.values():
                if other is not peer:
                    other.proto.send(m)
            for handler in tuple(self._notes.get(m[1], ())):
                handler(m[2])
        elif kind == "call":
            _answer(peer.proto, self.handlers, m[1], m[2], m[3])
        elif kind == "cast":
            cast = self.handlers.get(m[1])
            if cast is not None:
                cast(*m[2])
        elif kind == "reply":
            self._calls.answered(m[1], m[2], m[3])
        elif kind == "ready":
            if not peer.ready.done():
                peer.ready.set_result(None)
        else:
            log.warning("unknown bus message %r from worker %d", kind, peer.index)

    def _keep(self, origin: int, m: Message) -> None:
        now = time.monotonic()
        recent = self._recent
        recent.append((now, origin, m))
        while recent and (now - recent[0][0] > RECENT_KEEP or len(recent) > RECENT_MAX):
            self._horizon = recent.popleft()[0]

    def _replay(
        self, peer: _Peer, since: float, match: Callable[[Message], bool], mailbox_id: int | None
    ) -> None:
        """Send a new watch the changes it matches that went by since it was sent."""
        if since < self._horizon:
            if mailbox_id is not None:  # cannot tell any more: its listeners read again
                peer.proto.send(("watching", mailbox_id))
            else:
                log.warning("a watch of worker %d arrived too late to replay changes", peer.index)
            return
        missed = []
        for t, origin, m in reversed(self._recent):
            if t < since:
                break
            if origin != peer.index and match(m):
                missed.append(m)
        for m in reversed(missed):
            peer.proto.send(m)

    async def gather(self, name: str, *args: Any) -> dict[int, Any]:
        """Ask every ready worker; their answers by worker index (failures left out)."""
        peers = [p for p in self.peers.values() if p.ready.done() and not p.proto.closed]
        results = await asyncio.gather(
            *(self._calls.call(p.proto, name, *args) for p in peers), return_exceptions=True
        )
        return {
            p.index: r for p, r in zip(peers, results, strict=True) if not isinstance(r, BaseException)
        }

    # the supervisor's own store: its ChangeRelay ---------------------------------------------
    def watch(self, mailbox_id: int) -> None:
        pass  # every worker's change reaches the supervisor's own hub anyway

    def unwatch(self, mailbox_id: int) -> None:
        pass

    def watch_user(self, user_id: int) -> None:
        pass  # its own listeners hear its own changes; the workers' come through _on_message

    def unwatch_user(self, user_id: int) -> None:
        pass

    def watch_queue(self) -> None:
        pass  # its own queue runner listens on its own hub

    def send_change(self, change: MailboxChange) -> None:
        m = ("change", change.mailbox_id, change.user_id, change.modseq, change.kind)
        self._keep(0, m)
        for peer in self.peers.values():
            if _wants(peer, m):
                peer.proto.send(m)

    def send_queue(self) -> None:
        for peer in self.peers.values():
            if peer.watches_queue:
                peer.proto.send(("queue",))

    # Peers ---------------------------------------------------------------------------------
    def publish(self, topic: str, value: str) -> None:
        for peer in self.peers.values():
            peer.proto.send(("note", topic, value))

    def subscribe(self, topic: str, handler: NoteHandler) -> None:
        self._notes.setdefault(topic, []).append(handler)

    def has_others(self) -> bool:
        return bool(self.peers)
