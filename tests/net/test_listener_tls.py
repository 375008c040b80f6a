"""The listener's TLS: implicit TLS under a busy loop, in-place certificate reload, refusals.

Implicit TLS (465, 993, 995) is done by the server socket itself, before the session starts,
with the single context that SIGHUP reloads in place. These tests run on both the stdlib
loop and uvloop (the one production uses), because they differ in when reading starts.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from postroom.config import Limits, Listener
from postroom.net.connection import Connection
from postroom.net.listener import ListenerSet
from postroom.tls import TlsContexts, write_self_signed


def loop_factories() -> list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]]:
    import uvloop

    return [("asyncio", asyncio.new_event_loop), ("uvloop", uvloop.new_event_loop)]


FACTORIES = pytest.mark.parametrize(
    "factory", [f for _, f in loop_factories()], ids=[n for n, _ in loop_factories()]
)


class Greeter:
    """A handler that greets over the (already encrypted) connection, then echoes one line."""

    def __init__(self, busy: float = 0.0) -> None:
        self.busy = busy

    async def serve(self, conn: Connection, listener: Listener) -> None:
        if self.busy:
            time.sleep(self.busy)  # a blocked loop: ClientHellos pile up meanwhile
        version = conn.tls.version() if conn.tls is not None else "none"
        await conn.send(f"hello {version}\r\n".encode())
        data = await conn.read(5)
        await conn.send(data)

    async def refuse(self, conn: Connection, listener: Listener, reason: str) -> None:
        await conn.send(f"refused {reason}\r\n".encode())


def _certs(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    write_self_signed(cert, key, name)
    return cert, key


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _talk(port: int) -> tuple[bytes, bytes, str]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx()), 10
    )
    try:
        greeting = await asyncio.wait_for(reader.readline(), 10)
        writer.write(b"ping\r\n")
        echo = await asyncio.wait_for(reader.readline(), 10)
        ssl_obj = writer.get_extra_info("ssl_object")
        cert = ssl_obj.getpeercert(binary_form=True)
        from cryptography import x509

        cn = x509.load_der_x509_certificate(cert).subject.rfc4514_string()
        return greeting, echo, cn
    finally:
        writer.close()


@FACTORIES
def test_implicit_tls_many_clients_on_a_busy_loop(tmp_path: Path, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    cert, key = _certs(tmp_path, "one.example")

    async def main() -> list[tuple[bytes, bytes, str]]:
        tls = TlsContexts(cert, key)
        listeners = ListenerSet(Limits(), tls)
        bound = await listeners.start(Listener("127.0.0.1", 0, "imaps"), Greeter(busy=0.02))
        try:
            return await asyncio.gather(*(_talk(bound[0][1]) for _ in range(30)))
        finally:
            await listeners.close(1)

    with asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(main())
    assert len(results) == 30
    for greeting, echo, cn in results:
        assert greeting.startswith(b"hello TLSv1."), greeting
        assert echo == b"ping\r\n" and cn == "CN=one.example"


@FACTORIES
def test_reload_in_place_and_refusal_over_tls(tmp_path: Path, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    cert, key = _certs(tmp_path, "one.example")
    cert2, key2 = _certs(tmp_path, "two.example")

    async def main() -> None:
        tls = TlsContexts(cert, key)
        listeners = ListenerSet(Limits(connections_per_ip=1), tls)
        bound = await listeners.start(Listener("127.0.0.1", 0, "pop3s"), Greeter())
        port = bound[0][1]
        try:
            assert (await _talk(port))[2] == "CN=one.example"
            # Broken files: the old certificate stays.
            bad = tmp_path / "bad.pem"
            bad.write_text("not a certificate")
            tls.cert = bad
            assert not tls.reload()
            assert (await _talk(port))[2] == "CN=one.example"
            # New files: new connections get the new certificate, an open one keeps going.
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx())
            assert (await reader.readline()).startswith(b"hello")
            tls.cert, tls.key = cert2, key2
            assert tls.reload()
            # The open connection takes the only slot of this client address: a second
            # one is refused, and the refusal arrives over TLS (readable by the client).
            r2, w2 = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx())
            assert (await asyncio.wait_for(r2.readline(), 10)).startswith(b"refused too many")
            w2.close()
            writer.write(b"still here\r\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"still here\r\n"
            writer.close()
            await asyncio.sleep(0.1)
            assert (await _talk(port))[2] == "CN=two.example"
        finally:
            await listeners.close(1)

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
