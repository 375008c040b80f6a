"""The outside world for outbound end-to-end tests: a DNS server, capture MX servers on many
127.0.0.x addresses (one port), a TLS CA, and a real ``postroom serve`` configured to use them.

Each test takes fresh addresses from the pool (:meth:`World.mx`), so tests sharing one
module-scoped world never see each other's behaviours or messages.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import trustme

from support.capture import Behaviour, Capture, Received
from support.dns_server import DnsServer
from support.server import PASSWORD, Server

TLS_NAMES = ("mx.tls.test", "mx.verify.test")


class World:
    def __init__(
        self,
        root: Path,
        *,
        first: int = 100,
        count: int = 40,
        outbound: str | Callable[[World], str] = "",
        roles: tuple[str, ...] = ("mx", "submission"),
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(*TLS_NAMES).configure_cert(ctx)
        self.pool = [f"127.0.0.{i}" for i in range(first, first + count)]
        self.capture = Capture(tuple(self.pool), tls=ctx, default=Behaviour(starttls=False))
        self.dns = DnsServer()
        self._free = iter(self.pool)
        self.outbound = outbound
        self.roles = roles
        self.server: Server | None = None

    def start(self, **server: Any) -> World:
        self.capture.start()
        self.dns.start()
        extra = self.outbound(self) if callable(self.outbound) else self.outbound
        config = (
            f'[outbound]\nresolver = "{self.dns.address}"\nport = {self.capture.port}\n'
            f'tls_ca_file = "{self.ca_file}"\n{extra}\n'
        )
        self.server = Server(self.root / "server", roles=self.roles, extra=config, **server)
        self.server.add_user("alice@example.test")
        self.server.add_user("carol@example.test")
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.capture.stop()
        self.dns.stop()

    # -- the remote side ---------------------------------------------------------------------
    def address(self, behaviour: Behaviour | None = None) -> str:
        address = next(self._free)
        self.capture.behaviours[address] = behaviour or Behaviour(starttls=False)
        return address

    def mx(self, domain: str, behaviour: Behaviour | None = None, name: str | None = None) -> str:
        """Make ``domain``'s single MX a fresh capture address; returns the address."""
        address = self.address(behaviour)
        host = name or f"mx.{domain}"
        self.dns.set(domain, "MX", [(10, host)])
        self.dns.set(host, "A", [address])
        return address

    def arrived(self, address: str) -> list[Received]:
        return self.capture.arrived(address)

    def wait_arrived(self, address: str, count: int = 1, timeout: float = 20) -> list[Received]:
        got = wait(lambda: (lambda m: m if len(m) >= count else None)(self.arrived(address)), timeout)
        return got

    # -- our side ------------------------------------------------------------------------------
    def send(
        self,
        recipients: list[str],
        data: bytes | str | None = None,
        *,
        sender: str = "alice@example.test",
        subject: str = "test",
        mail_options: tuple[str, ...] = (),
        rcpt_options: tuple[str, ...] = (),
    ) -> None:
        assert self.server is not None
        if data is None:
            data = f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\nHello.\r\n"
        if isinstance(data, str):
            data = data.encode()
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as s:
            s.starttls(context=self.server.client_context())
            s.login(sender, PASSWORD)
            refused = s.sendmail(sender, recipients, data, list(mail_options), list(rcpt_options))
            assert not refused, refused

    def queue(self) -> list[Any]:
        assert self.server is not None
        return self.server.queue()

    def inbox(self, address: str = "alice@example.test") -> list[EmailMessage]:
        assert self.server is not None
        return [message_from_bytes(m, policy=default) for m in self.server.messages(address)]  # type: ignore[misc]

    def wait_dsn(self, count: int = 1, address: str = "alice@example.test", timeout: float = 20) -> list[EmailMessage]:
        def check() -> list[EmailMessage] | None:
            dsns = [m for m in self.inbox(address) if m.get_content_type() == "multipart/report"]
            return dsns if len(dsns) >= count else None

        return wait(check, timeout)

    def wait_queue_empty(self, timeout: float = 20) -> None:
        wait(lambda: not self.queue() or None, timeout)

    def pending_reason(self, address: str) -> str | None:
        assert self.server is not None
        return pending_reason(self.server, address)


def pending_reason(server: Server, address: str) -> str | None:
    """The diagnostic of ``address`` while it waits in ``server``'s queue, if any yet."""
    for q in server.queue():
        for r in q.pending:
            if r.address == address and r.diagnostic:
                return str(r.diagnostic)
    return None


def wait(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s")


def world_fixture(root: Path, **kw: Any) -> Iterator[World]:
    world = World(root, **kw).start()
    try:
        yield world
    finally:
        world.stop()
