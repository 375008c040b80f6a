"""Implicit TLS: a ClientHello that arrives before the session calls ``start_tls``.

A client on an implicit-TLS port (465, 993, 995) sends its ClientHello as soon as TCP is
up. If the session task starts late (a busy loop), the bytes may already have been read:
uvloop starts reading right after ``connection_made`` whatever the protocol asked for.
They must reach the TLS handshake, not be dropped with the pre-TLS buffer (the handshake
would then wait forever). The session here sleeps before ``start_tls`` to force that case.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.net.connection import Connection
from postroom.tls import server_context, write_self_signed


def loop_factories() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]]:
    factories: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio", asyncio.new_event_loop)
    ]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return factories
    factories.append(("uvloop", uvloop.new_event_loop))
    return factories


@pytest.mark.parametrize("factory", [f for _, f in loop_factories()], ids=[n for n, _ in loop_factories()])
def test_early_clienthello_reaches_the_handshake(tmp_path: Path, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "mail.example.test")
    server_ctx = server_context(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = False

    async def main() -> bytes:
        async def session(conn: Connection) -> None:
            await asyncio.sleep(0.2)  # the ClientHello arrives meanwhile
            try:
                await conn.start_tls(server_ctx, timeout=5)
                await conn.send(b"hello over TLS\r\n")
            finally:
                conn.close()

        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(session, tls_first=True), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 10
            )
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return line
        finally:
            server.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(main()) == b"hello over TLS\r\n"
