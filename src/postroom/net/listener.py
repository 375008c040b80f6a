"""Listening sockets, connection limits and graceful shutdown, shared by every protocol.

A protocol plugs in with a :class:`Handler`: ``serve(conn)`` runs one session, and
``refuse(conn, reason)`` answers a connection over the limits in that protocol's words
(SMTP ``421 4.7.0``, IMAP ``* BYE``, POP3 ``-ERR [SYS/TEMP]``). Implicit-TLS roles do the
handshake here, with the *current* certificate (see ``postroom.tls``), before the session
starts.

Protocols that bring their own asyncio protocol (the HTTP service: aiohttp's request
handler) bind with :meth:`ListenerSet.start_protocol`: the same TLS context, the same
per-IP and total limits (counted together with the mail sessions), through a thin
:class:`_Limited` wrapper; their own server closes their connections at shutdown.

Binding and serving are two steps: sockets bound without a handler (or protocol) listen
(the kernel queues connections) but accept nothing until :meth:`ListenerSet.attach` names
what serves each role: the wiring binds ports below 1024 first, then drops root, then
builds what serves.

Shutdown: :meth:`ListenerSet.close` stops accepting, sets :attr:`Shutdown.requested` (which
sessions check between transactions), waits up to the grace period for sessions to end,
then cancels the rest.

Worker processes (``server.workers``): the supervisor binds each listener once with
:func:`bind_sockets` and hands the sockets to every worker, which serves them with
:meth:`ListenerSet.adopt`; the kernel gives each new connection to one of the workers
waiting in ``accept``. A worker that dies leaves the socket open in the others (and in the
supervisor), so no queued connection is lost with it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from postroom import logs
from postroom.config import Limits, Listener
from postroom.metrics import Metrics
from postroom.net.connection import Connection
from postroom.tls import TlsContexts

log = logging.getLogger(__name__)


class Handler(Protocol):
    async def serve(self, conn: Connection, listener: Listener) -> None: ...
    async def refuse(self, conn: Connection, listener: Listener, reason: str) -> None: ...


@dataclass
class Shutdown:
    requested: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def request(self) -> None:
        self.requested = True
        self.event.set()


BACKLOG = 1024


def bind_sockets(listener: Listener) -> list[socket.socket]:
    """Listening sockets for ``listener``, bound as ``loop.create_server`` would bind
    them (``*``: every address, one socket per family; port 0: a free port per socket)."""
    host: str | None = None if listener.host == "*" else listener.host
    infos = socket.getaddrinfo(
        host, listener.port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class OtherCounts(Protocol):
    """What the other serving processes hold (``postroom.processes.counts``), so that the
    connection limits count connections of the whole server."""

    def others_total(self) -> int: ...
    def others_from(self, ip: str) -> int: ...
    def add(self, ip: str, delta: int) -> None: ...


class ListenerSet:
    def __init__(
        self, limits: Limits, tls: TlsContexts, metrics: Metrics | None = None,
        others: OtherCounts | None = None,
    ) -> None:
        self.limits = limits
        self.tls = tls
        self.metrics = metrics if metrics is not None else Metrics()
        self.others = others
        self.shutdown = Shutdown()
        self._servers: list[asyncio.AbstractServer] = []
        self._per_ip: dict[str, int] = {}
        self._total = 0
        self._sessions: dict[asyncio.Task[None], Connection] = {}
        self._handlers: dict[str, Handler] = {}
        self._protocols: dict[str, tuple[Callable[[], asyncio.Protocol], bytes]] = {}

    @property
    def connection_count(self) -> int:
        return self._total

    async def start(self, listener: Listener, handler: Handler | None = None) -> list[tuple[str, int]]:
        """Bind ``listener``; return the (address, port) pairs actually bound. Without a
        ``handler`` nothing is accepted until :meth:`attach` names one for the role."""

        async def on_connect(conn: Connection) -> None:
            await self._run(conn, listener, handler or self._handlers[listener.role])

        return await self._bind(listener, lambda: Connection(on_connect), serving=handler is not None)

    async def start_protocol(
        self,
        listener: Listener,
        factory: Callable[[], asyncio.Protocol] | None = None,
        refusal: bytes = b"",
    ) -> list[tuple[str, int]]:
        """Bind ``listener`` for a protocol that is not a :class:`Handler` (HTTP): each
        connection gets ``factory()`` behind the connection limits. ``refusal`` is written
        to a connection over the limits before it is closed. Without a ``factory``,
        :meth:`attach` gives it later."""
        if factory is not None:
            self._protocols[listener.role] = (factory, refusal)

        def make() -> asyncio.Protocol:
            made, text = self._protocols[listener.role]
            return _Limited(self, listener.role, made, text)

        return await self._bind(listener, make, serving=factory is not None)

    async def attach(
        self,
        handlers: dict[str, Handler],
        protocols: dict[str, tuple[Callable[[], asyncio.Protocol], bytes]] | None = None,
    ) -> None:
        """Start accepting on the sockets bound without a handler or protocol (by role)."""
        self._handlers.update(handlers)
        self._protocols.update(protocols or {})
        for server in self._servers:
            if not server.is_serving():
                await server.start_serving()

    def _admit(self, role: str, ip: str) -> str | None:
        """Count a new connection of ``ip``; return why it is refused, or None."""
        over = None
        others = self.others  # the other serving processes' connections (server.workers)
        if self.shutdown.requested:
            over = "shutting down"
        elif self._total + (others.others_total() if others else 0) >= self.limits.connections_total:
            over = "too many connections"
        elif (
            self._per_ip.get(ip, 0) + (others.others_from(ip) if others else 0)
            >= self.limits.connections_per_ip
        ):
            over = "too many connections from your address"
        self._total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if others is not None:
            others.add(ip, 1)
        self.metrics.connection_opened(role)
        if over is not None:
            self.metrics.connection_refused(role, over)
            logs.event(log, "connection_refused", logging.INFO, role=role, client=ip, reason=over)
        return over

    def _release(self, role: str, ip: str) -> None:
        self.metrics.connection_closed(role)
        self._total -= 1
        if self.others is not None:
            self.others.add(ip, -1)
        n = self._per_ip[ip] - 1
        if n:
            self._per_ip[ip] = n
        else:
            del self._per_ip[ip]

    async def _bind(
        self, listener: Listener, factory: Callable[[], asyncio.BaseProtocol], *, serving: bool
    ) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        host: str | None = None if listener.host == "*" else listener.host
        server = await loop.create_server(
            factory,
            host=host,
            port=listener.port,
            reuse_address=True,
            backlog=BACKLOG,
            # Implicit TLS: the socket does the handshake before the session starts, with
            # the one context that SIGHUP reloads in place (see postroom.tls).
            ssl=self.tls.context if listener.implicit_tls else None,
            ssl_handshake_timeout=self.limits.smtp_idle_timeout if listener.implicit_tls else None,
            start_serving=serving,
        )
        self._servers.append(server)
        bound = []
        for sock in server.sockets:
            addr = sock.getsockname()
            bound.append((addr[0], addr[1]))
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return bound

    async def adopt(
        self, listener: Listener, handler: Handler | None, socks: list[socket.socket],
        protocol: tuple[Callable[[], asyncio.Protocol], bytes] | None = None,
    ) -> None:
        """Serve sockets another process bound (see :func:`bind_sockets`): with a
        :class:`Handler`, or a foreign ``protocol`` (factory, refusal) as in
        :meth:`start_protocol`."""
        loop = asyncio.get_running_loop()

        async def on_connect(conn: Connection) -> None:
            assert handler is not None
            await self._run(conn, listener, handler)

        if protocol is not None:
            self._protocols[listener.role] = protocol
            role, (made, text) = listener.role, protocol
            factory: Callable[[], asyncio.BaseProtocol] = lambda: _Limited(self, role, made, text)  # noqa: E731
        else:
            factory = lambda: Connection(on_connect)  # noqa: E731
        for sock in socks:
            server = await loop.create_server(
                factory,
                sock=sock,
                backlog=BACKLOG,
                ssl=self.tls.context if listener.implicit_tls else None,
                ssl_handshake_timeout=self.limits.smtp_idle_timeout if listener.implicit_tls else None,
            )
            self._servers.append(server)

    async def _run(self, conn: Connection, listener: Listener, handler: Handler) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = conn
        ip = conn.peer_ip
        over = self._admit(listener.role, ip)
        try:
            if over is not None:
                await handler.refuse(conn, listener, over)
                return
            await handler.serve(conn, listener)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("session crashed role=%s client=%s", listener.role, ip)
        finally:
            conn.close()
            self._release(listener.role, ip)
            self._sessions.pop(task, None)

    async def close(self, grace: float) -> None:
        for server in self._servers:
            server.close()
        self.shutdown.request()
        for conn in self._sessions.values():
            conn.interrupt()  # idle sessions say goodbye now; busy ones finish first
        if self._sessions:
            done, pending = await asyncio.wait(set(self._sessions), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)



REFUSAL_LINGER = 2.0


class _Limited(asyncio.Protocol):
    """A foreign protocol (``start_protocol``) behind the connection limits.

    Passes every callback through to the wrapped protocol, which is created only for an
    admitted connection; a refused one gets ``refusal`` and is closed.
    """

    def __init__(
        self, owner: ListenerSet, role: str, factory: Callable[[], asyncio.Protocol], refusal: bytes
    ) -> None:
        self.owner = owner
        self.role = role
        self.factory = factory
        self.refusal = refusal
        self.inner: asyncio.Protocol | None = None
        self.ip: str | None = None
        self.refused: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer: Any = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if self.owner._admit(self.role, self.ip) is not None:
            # Say why, then linger: closing at once while the client's request is still
            # unread would reset the connection and lose the answer. What the client
            # sends meanwhile is dropped; the connection closes at its EOF or in 2 s.
            stream = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
            if self.refusal:
                stream.write(self.refusal)
            if stream.can_write_eof():
                stream.write_eof()
            self.refused = transport
            asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)
            return
        self.inner = self.factory()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip is not None:
            self.owner._release(self.role, self.ip)
            self.ip = None
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.refused is not None:
            self.refused.close()
            return None
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
