"""One client connection: an asyncio Protocol with an awaitable ``read`` and flow control.

Why not asyncio streams: a StreamReader keeps its own buffer, and bytes it holds when a
client says STARTTLS would survive the upgrade (the CVE-2011-0411 class of bug). Here the
only buffer is a list of received chunks that :meth:`start_tls` drops, and the protocol
cores keep their own (which they also drop). It is also leaner per connection, which
matters for thousands of idle IMAP clients.

Backpressure both ways: reading pauses when more than ``HIGH_WATER`` bytes wait
unconsumed; ``drain`` waits while the transport's write buffer is over its limit.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

HIGH_WATER = 256 * 1024


class ConnectionClosed(Exception):
    pass


class Interrupted(Exception):
    """The server is shutting down: :meth:`Connection.read` was woken without data."""


class ByteStream(asyncio.Protocol):
    """The byte pipe shared by the server's :class:`Connection` and the outbound client's
    stream (``net/smtp_out.py``): received chunks, reading paused over ``HIGH_WATER``,
    write backpressure, and one waiter woken by every protocol callback. Subclasses add
    how they wait (timeouts, interruption) and how they start TLS."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_drain_waiter",
        "_eof",
        "_paused",
        "_waiter",
        "_write_paused",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol callbacks ------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._closed = True
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- shared by both sides --------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def write_blocked(self) -> bool:
        """The transport's write buffer is over its limit: :meth:`drain` would wait."""
        return self._write_paused and not self._closed

    def _take(self) -> bytes:
        """Everything received so far (the caller checked there is some); reading resumes."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def _drop_received(self) -> None:
        """STARTTLS: nothing received before the handshake may be read after it."""
        self._chunks.clear()
        self._buffered = 0

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed and data:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Several buffers in one go: uvloop hands them to one writev, without joining."""
        if self.transport is not None and not self._closed:
            self.transport.writelines(parts)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Connection(ByteStream):
    """One client connection of a listener (see the module docstring)."""

    __slots__ = (
        "_deadline",
        "_interrupted",
        "_loop",
        "_on_connect",
        "_timer",
        "_timer_at",
        "local_port",
        "peer_ip",
        "peer_port",
        "task",
        "tls",
    )

    def __init__(self, on_connect: Callable[[Connection], Coroutine[Any, Any, None]]) -> None:
        super().__init__()
        self._on_connect = on_connect
        self.peer_ip = ""
        self.peer_port = 0
        self.local_port = 0
        self.tls: ssl.SSLObject | None = None
        self.task: asyncio.Task[None] | None = None
        self._interrupted = False
        self._loop = asyncio.get_event_loop()
        # The read timeout (see read): the deadline of the pending read, and one timer
        # that is only re-armed when it fires early, not created and cancelled per read.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        # Implicit TLS (the server socket does the handshake): already encrypted.
        self.tls = transport.get_extra_info("ssl_object")
        peer: Any = transport.get_extra_info("peername")
        if peer:
            self.peer_ip, self.peer_port = peer[0], peer[1]
            self.peer_ip = self.peer_ip.removeprefix("::ffff:")
        sock: Any = transport.get_extra_info("sockname")
        if sock:
            self.local_port = sock[1]
        self.task = self._loop.create_task(self._on_connect(self))

    # -- API for sessions ----------------------------------------------------------------
    def interrupt(self) -> None:
        """Wake a pending :meth:`read` with :class:`Interrupted` (once) for a shutdown."""
        self._interrupted = True
        self._wake()

    def pending(self) -> bool:
        """Bytes have arrived that nobody has read (early talkers, pipelining checks)."""
        return bool(self._chunks)

    async def read(self, timeout: float | None = None) -> bytes:
        """The bytes received so far (at least one), or b"" at end of stream.

        Raises TimeoutError when nothing arrives within ``timeout`` seconds.
        """
        if not self._chunks and not self._eof and not self._interrupted:
            loop = self._loop
            waiter = loop.create_future()
            self._waiter = waiter
            if timeout is not None:
                # A command per round trip makes a timer per read cost more than the rest
                # of the read; one timer per connection, moved only when it would be late.
                deadline = self._deadline = loop.time() + timeout
                if self._timer is None or self._timer_at > deadline:
                    self._arm(deadline)
            try:
                await waiter
            finally:
                self._waiter = None
                self._deadline = None
        if self._chunks:
            return self._take()
        if self._interrupted and not self._eof:
            self._interrupted = False
            raise Interrupted()
        return b""

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closed:
            return  # no read waits (it is re-armed by the next one that does)
        if self._loop.time() + 0.001 < deadline:  # (timers may fire a clock tick early)
            self._arm(deadline)  # a later read moved the deadline
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._timer is not None:  # nothing may keep a closed connection alive
            self._timer.cancel()
            self._timer = None

    async def drain(self) -> None:
        if self._write_paused and not self._closed:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    async def send(self, data: bytes) -> None:
        self.write(data)
        await self.drain()

    async def start_tls(self, context: ssl.SSLContext, timeout: float = 30.0) -> None:
        """Upgrade to TLS (server side). Bytes received before the upgrade are discarded."""
        assert self.transport is not None
        self._drop_received()
        # asyncio.timeout, not wait_for: wait_for runs start_tls in a new task, one loop
        # iteration later, and the client's ClientHello would land in our buffer meanwhile.
        async with asyncio.timeout(timeout):
            new = await self._loop.start_tls(self.transport, self, context, server_side=True)
        if new is None:
            raise ConnectionClosed()
        self.transport = new  # type: ignore[assignment]
        self.tls = new.get_extra_info("ssl_object")

