"""Listener basics: IPv6 and all-address binding, per-IP and total limits, shutdown."""

from __future__ import annotations

import asyncio
import socket

from postroom.config import Limits, Listener
from postroom.net.connection import Connection, Interrupted
from postroom.net.listener import ListenerSet, bind_sockets
from postroom.tls import TlsContexts


class Echo:
    def __init__(self) -> None:
        self.interrupted = 0

    async def serve(self, conn: Connection, listener: Listener) -> None:
        await conn.send(f"hi {conn.peer_ip}\r\n".encode())
        while True:
            try:
                data = await conn.read(10)
            except Interrupted:
                self.interrupted += 1
                await conn.send(b"bye\r\n")
                return
            if not data:
                return
            await conn.send(data)

    async def refuse(self, conn: Connection, listener: Listener, reason: str) -> None:
        await conn.send(f"refused {reason}\r\n".encode())


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def _hello(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return line


def test_ipv6_and_wildcard_listeners() -> None:
    async def main() -> None:
        listeners = ListenerSet(Limits(), TlsContexts(None, None))
        handler = Echo()
        try:
            # "*" binds every address: IPv4 and (when the machine has it) IPv6.
            bound = await listeners.start(Listener("*", 0, "mx"), handler)
            families = {":" in host for host, _ in bound}
            assert False in families
            # With port 0 each family gets its own ephemeral port: use the IPv4 one.
            port = next(p for host, p in bound if ":" not in host)
            assert (await _hello("127.0.0.1", port)) == b"hi 127.0.0.1\r\n"
            if _has_ipv6():
                assert True in families
                port6 = next(p for host, p in bound if ":" in host)
                assert (await _hello("::1", port6)) == b"hi ::1\r\n"
                six = await listeners.start(Listener("::1", 0, "imap"), handler)
                assert six[0][0] == "::1"
                assert (await _hello("::1", six[0][1])) == b"hi ::1\r\n"
        finally:
            await listeners.close(1)

    asyncio.run(main())


def test_sockets_bound_by_one_process_are_served_by_another_listener_set() -> None:
    """The supervisor binds (bind_sockets), workers serve (adopt): as create_server would
    bind, "*" gives one listening socket per family, each on its own port when port 0."""
    socks = bind_sockets(Listener("*", 0, "mx"))
    assert {s.family for s in socks} >= {socket.AF_INET}
    assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in socks)
    if _has_ipv6():
        six = next(s for s in socks if s.family == socket.AF_INET6)
        assert six.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    port = next(s.getsockname()[1] for s in socks if s.family == socket.AF_INET)
    # bound and listening before anyone serves it: a client may already be waiting
    early = socket.create_connection(("127.0.0.1", port), timeout=5)

    async def main() -> None:
        listeners = ListenerSet(Limits(), TlsContexts(None, None))
        try:
            await listeners.adopt(Listener("*", 0, "mx"), Echo(), socks)
            loop = asyncio.get_running_loop()
            line = await loop.run_in_executor(None, early.recv, 100)
            assert line == b"hi 127.0.0.1\r\n"
            assert (await _hello("127.0.0.1", port)) == b"hi 127.0.0.1\r\n"
        finally:
            await listeners.close(1)

    try:
        asyncio.run(main())
    finally:
        early.close()
    # a port in use is an OSError for the caller to report
    taken = bind_sockets(Listener("127.0.0.1", 0, "mx"))
    try:
        try:
            bind_sockets(Listener("127.0.0.1", taken[0].getsockname()[1], "mx"))
        except OSError:
            pass
        else:
            raise AssertionError("binding a port in use succeeded")
    finally:
        taken[0].close()


def test_limits_and_graceful_shutdown() -> None:
    async def main() -> None:
        listeners = ListenerSet(Limits(connections_per_ip=2, connections_total=3), TlsContexts(None, None))
        handler = Echo()
        bound = await listeners.start(Listener("127.0.0.1", 0, "pop3"), handler)
        port = bound[0][1]
        held = []
        for _ in range(2):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert (await r.readline()).startswith(b"hi")
            held.append((r, w))
        # A third connection from the same address is over the per-IP limit.
        assert (await _hello("127.0.0.1", port)).startswith(b"refused too many connections from your")
        # Another address of 127/8 still gets in, then the total limit applies.
        r3, w3 = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        assert (await r3.readline()) == b"hi 127.0.0.2\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
        assert (await reader.readline()).startswith(b"refused too many connections")
        writer.close()
        assert listeners.connection_count == 3
        # Shutdown: idle sessions are interrupted and say goodbye; nothing new is accepted.
        await listeners.close(2)
        for r, _ in held + [(r3, w3)]:
            assert await asyncio.wait_for(r.readline(), 5) == b"bye\r\n"
        assert handler.interrupted == 3
        assert listeners.connection_count == 0
        try:
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            raise AssertionError("the listener should be closed")
        except OSError:
            pass

    asyncio.run(main())

