"""Helpers for the SMTP end-to-end tests: a raw SMTP client and a pool of real servers.

Why a raw client next to smtplib: most of what these tests check (pipelined bytes, bare
CR/LF, NUL, STARTTLS injection, exact reply codes after misbehaviour) is exactly what a
well-behaved library refuses to send. The raw client speaks bytes over a real socket,
with a timeout on every read, so a server that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import base64
import re
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.server import PASSWORD, Server

from postroom.proto.sasl import client_mechanism
from postroom.proto.sasl.base import Failure

DOMAIN = "example.test"
HOSTNAME = "mail.example.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
_REPLY_RE = re.compile(rb"^(\d{3})([ -])(.*)$")
_ENHANCED_RE = re.compile(r"^([245]\.\d{1,3}\.\d{1,3}) ")


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        m = _ENHANCED_RE.match(self.lines[-1] + " ") if self.lines else None
        return m.group(1) if m else None

    @property
    def status(self) -> str:
        """``"550 5.1.1"``: the code and the enhanced status code, what tests compare."""
        return f"{self.code} {self.enhanced}" if self.enhanced else str(self.code)

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.lines!r})"


class ClosedError(Exception):
    """The server closed the connection while a reply was expected."""


class RawSmtp:
    """An SMTP client that sends exactly the bytes it is given."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        source: str | None = None,
        greeting: bool = True,
    ) -> None:
        self.timeout = timeout
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=HOSTNAME)
        self.sock: socket.socket = sock
        self.buf = b""
        self.greeting = self.reply() if greeting else None

    # -- bytes ----------------------------------------------------------------------------
    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply from the server in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                raise ClosedError(f"connection closed; unread {self.buf!r}")
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def reply(self, timeout: float | None = None) -> Reply:
        lines: list[str] = []
        code = 0
        while True:
            raw = self.line(timeout)
            m = _REPLY_RE.match(raw)
            assert m is not None, f"not an SMTP reply line: {raw!r}"
            code = int(m.group(1))
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(code, lines)

    def replies(self, n: int) -> list[Reply]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: str | bytes) -> Reply:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def expect(self, line: str | bytes, status: str) -> Reply:
        r = self.cmd(line)
        assert r.status == status or str(r.code) == status, f"{line!r}: {r}"
        return r

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (after any reply already queued)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self._fill(deadline):
                    return True
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True

    # -- protocol shortcuts ------------------------------------------------------------
    def ehlo(self, name: str = "client.example.org") -> Reply:
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, r
        return r

    def starttls(self, ctx: ssl.SSLContext) -> None:
        r = self.cmd("STARTTLS")
        assert r.status == "220 2.0.0", r
        assert not self.buf, "server sent bytes after 220 to STARTTLS"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=HOSTNAME)

    def auth_plain(self, user: str, password: str = PASSWORD) -> Reply:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {token}")

    def auth(self, mechanism: str, user: str, password: str = PASSWORD) -> Reply:
        """A whole SASL exchange driven by postroom's client mechanisms (SCRAM too)."""
        mech = client_mechanism(mechanism, user, password, nonce_source=lambda: secrets.token_urlsafe(24))
        first = mech.start(initial=mechanism.upper() != "LOGIN")
        line = f"AUTH {mechanism}"
        if first.data is not None:
            line += " " + (base64.b64encode(first.data).decode() or "=")
        r = self.cmd(line)
        while r.code == 334:
            step = mech.respond(base64.b64decode(r.lines[0]))
            if isinstance(step, Failure):
                return self.cmd("*")
            assert step.data is not None
            r = self.cmd(base64.b64encode(step.data))
        return r

    def mail(self, sender: str, rcpts: list[str], data: bytes) -> Reply:
        self.expect(f"MAIL FROM:<{sender}>", "250 2.1.0")
        for rcpt in rcpts:
            self.expect(f"RCPT TO:<{rcpt}>", "250 2.1.5")
        self.expect("DATA", "354")
        self.send(dot_stuff(data) + b".\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawSmtp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency for a CRLF message ending in CRLF."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def message(subject: str = "test", body: bytes = b"Hello.\r\n", extra: bytes = b"") -> bytes:
    """A small well-formed message with unique Message-ID, CRLF line ends."""
    mid = secrets.token_hex(8)
    return (
        f"From: Alice <{ALICE}>\r\nTo: Bob <{BOB}>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{mid}@client.example.org>\r\n"
    ).encode() + extra + b"\r\n" + body


def split_trace(stored: bytes) -> tuple[list[bytes], bytes]:
    """Split off the fields the server prepended: (each field as stored, the rest).

    Only leading ``Return-Path`` and ``Received`` fields count as prepended (at most one
    of each); the caller compares the rest byte for byte with what was sent.
    """
    fields: list[bytes] = []
    pos = 0
    for name in (b"return-path:", b"received:"):
        if stored[pos : pos + len(name)].lower() != name:
            continue
        end = stored.index(b"\r\n", pos) + 2
        while stored[end : end + 1] in (b" ", b"\t"):
            end = stored.index(b"\r\n", end) + 2
        fields.append(stored[pos:end])
        pos = end
    return fields, stored[pos:]


class Servers:
    """Real ``postroom serve`` processes for one test; all stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Server] = []

    def make(
        self,
        roles: tuple[str, ...] = ("mx", "submission", "submissions"),
        extra: str = "",
        users: tuple[str, ...] = (ALICE, BOB),
        fsync: bool = False,
        start: bool = True,
        name: str = "srv",
        workers: int | None = None,
    ) -> Server:
        server = Server(
            self.root / f"{name}{len(self.started)}", roles=roles, extra=extra, fsync=fsync,
            hostname=HOSTNAME, workers=workers,
        )
        for u in users:
            server.add_user(u)
        self.started.append(server)
        if start:
            server.start()
        return server

    def close(self) -> None:
        for s in self.started:
            if s.proc is not None:
                s.stop()

    def check_logs(self) -> None:
        """Bad input gets a protocol reply, never a traceback: no crash in any server log."""
        for s in self.started:
            if s.log_path.exists():
                log = s.logs()
                assert "Traceback" not in log and "session crashed" not in log, log[-3000:]


@contextmanager
def servers(root: Path) -> Iterator[Servers]:
    pool = Servers(root)
    try:
        yield pool
    finally:
        pool.close()
    pool.check_logs()


def add_alias(server: Server, source: str, *targets: str) -> None:
    async def fn(admin, store):  # type: ignore[no-untyped-def]
        await admin.alias_add(source, list(targets))

    server.admin(fn)


def add_users_fast(server: Server, addresses: list[str], password: str = PASSWORD) -> None:
    """Many users sharing one password hash (one argon2 run instead of one per user)."""
    from postroom.admin.service import _hash

    creds = _hash(password)

    async def fn(admin, store):  # type: ignore[no-untyped-def]
        for address in addresses:
            domain = address.rpartition("@")[2]
            if await store.get_domain(domain) is None:
                await admin.domain_add(domain)
            await store.add_user(address, creds.password_hash, creds.scram)

    server.admin(fn)


def client_ctx(server: Server) -> ssl.SSLContext:
    ctx = server.client_context()
    return ctx


def smtplib_submission(server: Server, user: str = ALICE) -> smtplib.SMTP:
    """An authenticated smtplib session on 587 (STARTTLS then AUTH)."""
    s = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=10)
    s.ehlo("client.example.org")
    s.starttls(context=client_ctx(server))
    s.ehlo("client.example.org")
    s.login(user, PASSWORD)
    return s
