"""Fixtures for the IMAP integration tests: one real ``postroom serve`` per test module
(imap, imaps and mx listeners on free loopback ports), a fresh user per test, and
connected clients (imaplib over IMAPS, or the raw client in ``imap_raw``)."""

from __future__ import annotations

import imaplib
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from imap_raw import RawImap  # noqa: E402
from support.server import PASSWORD, Server  # noqa: E402

_counter = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("imap"), roles=("imap", "imaps", "mx")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def user(server: Server) -> str:
    address = f"u{next(_counter)}@example.test"
    server.add_user(address)
    return address


@pytest.fixture
def connect(server: Server) -> Iterator[Callable[..., imaplib.IMAP4]]:
    """``connect(user)``: an imaplib client over IMAPS, logged in as ``user``."""
    clients: list[imaplib.IMAP4] = []

    def make(address: str | None = None, password: str = PASSWORD) -> imaplib.IMAP4:
        m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"],
                              ssl_context=server.client_context(), timeout=15)
        clients.append(m)
        if address is not None:
            m.login(address, password)
        return m

    yield make
    for m in clients:
        try:
            m.shutdown()
        except OSError:
            pass


@pytest.fixture
def raw(server: Server) -> Iterator[Callable[..., RawImap]]:
    """``raw(user=None, tls=True)``: a raw client, logged in when ``user`` is given."""
    clients: list[RawImap] = []

    def make(address: str | None = None, *, tls: bool = True, timeout: float = 10.0) -> RawImap:
        port = server.ports["imaps" if tls else "imap"]
        c = RawImap(port, context=server.client_context() if tls else None, timeout=timeout)
        clients.append(c)
        if address is not None:
            c.login(address, PASSWORD)
        return c

    yield make
    for c in clients:
        c.close()
