"""Helpers for the POP3 end-to-end tests: servers, fast mailbox set-up, a raw POP3 client.

Mailboxes are filled through the store API (``Store.deliver``, the same call SMTP ends in)
rather than over SMTP, so a 10,000-message maildrop takes a second to build. Messages go
through ``deliver.normalize`` first: every stored message has CRLF line ends and a final
CRLF, the invariant POP3 sizes rely on.

Why a raw client next to poplib: poplib hides the exact bytes (it strips CRLF and undoes
byte-stuffing), cannot send AUTH, pipelining or garbage, and waits forever by default. The
raw client sends exactly what it is given and has a deadline on every read, so a server
that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import base64
import itertools
import poplib
import secrets
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.server import PASSWORD, Server

from postroom.deliver import normalize, summarize
from postroom.proto.sasl import client_mechanism
from postroom.proto.sasl.base import Failure
from postroom.store.api import Delivery, MessageMeta

DOMAIN = "example.test"
HOSTNAME = "mail.example.test"
POP3_ROLES = ("pop3", "pop3s")
_users = itertools.count(1)
_creds: tuple[str, str] | None = None


# ----------------------------------------------------------------------------- servers


def make_server(
    root: Path, extra: str = "", roles: tuple[str, ...] = POP3_ROLES, start: bool = True
) -> Server:
    server = Server(root, roles=roles, extra=extra, hostname=HOSTNAME)
    if start:
        server.start()
    return server


@contextmanager
def running(
    root: Path, extra: str = "", roles: tuple[str, ...] = POP3_ROLES
) -> Iterator[Server]:
    """A started server, stopped at the end; its log must show no crashed session."""
    server = make_server(root, extra, roles)
    try:
        yield server
    finally:
        server.stop()
    log = server.logs()
    assert "Traceback" not in log and "session crashed" not in log, log[-3000:]


def client_ctx(server: Server) -> ssl.SSLContext:
    """Trusts the test server's self-signed certificate (checked, not ignored)."""
    return server.client_context()


# ----------------------------------------------------------------------------- accounts


def new_user(server: Server, name: str = "u") -> str:
    """A fresh user (unique per test), sharing one password hash: one argon2 run in all."""
    global _creds
    from postroom.auth import passwords

    if _creds is None:
        _creds = (
            passwords.hash_password(PASSWORD),
            passwords.scram_credentials(PASSWORD).to_string(),
        )
    address = f"{name}{next(_users)}-{secrets.token_hex(3)}@{DOMAIN}"
    password_hash, scram = _creds

    async def fn(admin: Any, store: Any) -> None:
        if await store.get_domain(DOMAIN) is None:
            await admin.domain_add(DOMAIN)
        await store.add_user(address, password_hash, scram)

    server.admin(fn)
    return address


# ----------------------------------------------------------------------------- messages


def message(i: int, body: bytes | None = None, size: int = 0) -> bytes:
    """A small message, unique per ``i``; ``size`` pads the body to about that many octets."""
    head = (
        f"From: Sender <sender@example.org>\r\nTo: <rcpt@{DOMAIN}>\r\n"
        f"Subject: message {i}\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        f"Message-ID: <m{i}.{secrets.token_hex(6)}@example.org>\r\n\r\n"
    ).encode()
    if body is None:
        body = f"Body of message {i}.\r\n".encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789 " * 2 + b"\r\n"
    if size:
        body += line * max(0, (size - len(head) - len(body)) // len(line))
    return head + body


# Content that stresses byte-stuffing and sizes (RFC 1939 section 3 and 11).
TRICKY: tuple[bytes, ...] = (
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nmiddle . dot\r\n...\r\n",
    b"Subject: ends with a dot line\r\n\r\nbody\r\n.",
    b"Subject: bare LF\nX-Note: stored with CRLF after normalize\n\nline one\nline two",
    b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + "Grüße, 日本語, ñ\r\n".encode(),
    b"Subject: long line\r\n\r\n" + b"x" * 2000 + b"\r\n",  # poplib accepts lines up to 2048
    b"Subject: header only, no body",
    b"Subject: many lines\r\n\r\n" + b"".join(b"line %d\r\n" % i for i in range(400)),
)


def deliver(server: Server, address: str, messages: Sequence[bytes]) -> list[MessageMeta]:
    """Put ``messages`` (normalised) into the user's INBOX, in order; their metadata."""

    async def fn(admin: Any, store: Any) -> list[MessageMeta]:
        user = await store.get_user(address)
        # One after the other: concurrent deliveries may take their UIDs in any order
        # (they do on PostgreSQL, where each runs on its own connection).
        for m in messages:
            d = normalize(m)
            await store.deliver(Delivery(data=d, summary=summarize(d), user_ids=(user.id,)))
        inbox = await store.get_mailbox(user.id, "INBOX")
        return list(await store.list_messages(inbox.id))

    result: list[MessageMeta] = server.admin(fn)
    return result


def mailbox(server: Server, address: str, name: str = "INBOX") -> list[tuple[MessageMeta, bytes]]:
    """(metadata, stored bytes) of every message in a mailbox, in UID order."""

    async def fn(admin: Any, store: Any) -> list[tuple[MessageMeta, bytes]]:
        user = await store.get_user(address)
        mb = await store.get_mailbox(user.id, name)
        msgs = await store.list_messages(mb.id)
        blobs = await store.read_blobs([m.blob_id for m in msgs])
        return [(m, blobs[m.blob_id]) for m in msgs]

    result: list[tuple[MessageMeta, bytes]] = server.admin(fn)
    return result


def stuffed(data: bytes) -> bytes:
    """RFC 1939 section 3: the wire form of a stored (CRLF-normalised) message body."""
    out = data.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


# ----------------------------------------------------------------------------- poplib


def poplib_login(server: Server, user: str, mode: str = "stls", password: str = PASSWORD) -> poplib.POP3:
    """A logged-in poplib session: ``stls`` (port 110 + STLS) or ``pop3s`` (port 995)."""
    if mode == "pop3s":
        p: poplib.POP3 = poplib.POP3_SSL(
            "127.0.0.1", server.ports["pop3s"], context=client_ctx(server), timeout=30
        )
    else:
        p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
        p.stls(client_ctx(server))
    p.user(user)
    p.pass_(password)
    return p


# ----------------------------------------------------------------------------- raw client


class ClosedError(Exception):
    """The server closed the connection while a reply was expected."""


class RawPop3:
    """A POP3 client that sends exactly the bytes it is given, with a deadline per read."""

    def __init__(
        self,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        greeting: bool = True,
    ) -> None:
        self.timeout = timeout
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=HOSTNAME)
        self.sock: socket.socket = sock
        self.buf = b""
        self.greeting = self.line() if greeting else None

    # -- bytes ----------------------------------------------------------------------------
    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply from the server in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self, timeout: float | None = None) -> bytes:
        """One reply line without its CRLF."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                raise ClosedError(f"connection closed; unread {self.buf!r}")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def body(self, timeout: float | None = None) -> bytes:
        """The rest of a multi-line response, exactly as sent, without the final ".CRLF"."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        start = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                self.buf = self.buf[3:]
                return b""
            end = self.buf.find(b"\r\n.\r\n", start)
            if end >= 0:
                data, self.buf = self.buf[: end + 2], self.buf[end + 5 :]
                return data
            start = max(0, len(self.buf) - 4)
            if not self._fill(deadline):
                raise ClosedError("connection closed inside a multi-line response")

    def cmd(self, line: str | bytes) -> bytes:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.line()

    def multi(self, line: str | bytes) -> tuple[bytes, bytes]:
        """A command with a multi-line answer: (status line, raw body) or (-ERR line, b"")."""
        status = self.cmd(line)
        return status, (self.body() if status.startswith(b"+OK") else b"")

    def ok(self, line: str | bytes) -> bytes:
        status = self.cmd(line)
        assert status.startswith(b"+OK"), f"{line!r}: {status!r}"
        return status

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (after anything already queued)."""
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
    def stls(self, ctx: ssl.SSLContext) -> None:
        status = self.cmd("STLS")
        assert status.startswith(b"+OK"), status
        assert not self.buf, "server sent bytes after +OK to STLS"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=HOSTNAME)

    def login(self, user: str, password: str = PASSWORD) -> bytes:
        self.ok(f"USER {user}")
        return self.cmd(f"PASS {password}")

    def auth(
        self, mechanism: str, user: str, password: str = PASSWORD, initial: bool = True
    ) -> bytes:
        """A whole SASL exchange (RFC 5034) with postroom's client mechanisms.

        Returns the final status line; for SCRAM the client also checks the server's
        signature, so a +OK from a server that does not know the password fails here.
        """
        mech = client_mechanism(
            mechanism, user, password, nonce_source=lambda: secrets.token_urlsafe(24)
        )
        first = mech.start(initial=initial)
        line = f"AUTH {mechanism}"
        if first.data is not None:
            line += " " + (base64.b64encode(first.data).decode() or "=")
        status = self.cmd(line)
        while status.startswith(b"+ ") or status == b"+":
            step = mech.respond(base64.b64decode(status[2:]))
            if isinstance(step, Failure):
                return self.cmd("*")
            assert step.data is not None
            status = self.cmd(base64.b64encode(step.data))
        if status.startswith(b"+OK"):
            assert not isinstance(mech.finish(), Failure), "server not authenticated"
        return status

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawPop3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw(server: Server, mode: str = "stls", user: str | None = None) -> RawPop3:
    """A raw session, over TLS (``stls`` upgrades port 110; ``pop3s``; ``plain`` stays
    clear), logged in with USER/PASS when ``user`` is given."""
    if mode == "pop3s":
        client = RawPop3(server.ports["pop3s"], tls=client_ctx(server))
    else:
        client = RawPop3(server.ports["pop3"])
        if mode == "stls":
            client.stls(client_ctx(server))
    assert client.greeting is not None and client.greeting.startswith(b"+OK"), client.greeting
    if user is not None:
        status = client.login(user)
        assert status.startswith(b"+OK"), status
    return client
