"""A scriptable SMTP server for tests, playing the remote MX (or a smarthost) on 127.0.0.x.

Written independently of postroom's own SMTP code (plain asyncio streams, line by line), so
that a bug in our server core cannot hide the same bug in our client. It runs its own event
loop in a thread, so synchronous tests can drive a ``postroom serve`` subprocess meanwhile.

Every address of one :class:`Capture` listens on the same port number (``[outbound] port``
is one number for all MX hosts). Each address has its own :class:`Behaviour`:

* ``greeting``: the banner ("554 go away" refuses the session);
* ``extensions``: the EHLO keywords (STARTTLS is added when a TLS context is given);
* ``replies``: per stage ("mail", "rcpt", "data", "data_end", "ehlo"), a list of replies used
  once each in order, then the default (250/354); ``rcpt_fn(address)`` may answer RCPT;
* ``drop_in_data``: close the connection in the middle of the message data this many times;
* ``delay``: seconds to think before every reply but the one after the data (a slow
  server that still answers the final dot at once, as RFC 1047 asks);
* ``auth``: {user: password}; when set, AUTH PLAIN/LOGIN is offered and required before MAIL.

What arrived is in :attr:`Capture.messages` (:class:`Received` per accepted transaction);
:attr:`Capture.sessions` counts connections and their transactions (connection reuse).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES", "SIZE 52428800")


@dataclass
class Behaviour:
    greeting: str = "220 {name} ESMTP capture"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    replies: dict[str, list[str]] = field(default_factory=dict)
    rcpt_fn: Callable[[str], str | None] | None = None
    drop_in_data: int = 0
    delay: float = 0.0
    auth: dict[str, str] | None = None
    starttls: bool = True  # offer STARTTLS when the Capture has a TLS context
    break_tls: bool = False  # say 220 to STARTTLS, then hang up instead of a handshake
    name: str = "mx.capture.test"


@dataclass
class Received:
    address: str  # the local address that received it (which "MX")
    helo: str
    mail_from: str
    mail_params: str
    rcpts: list[tuple[str, str]]  # (address, parameters)
    data: bytes
    tls: bool
    auth_user: str | None
    session: int
    chunked: bool = False

    @property
    def recipients(self) -> list[str]:
        return [a for a, _ in self.rcpts]


@dataclass
class Session:
    id: int
    address: str
    transactions: int = 0
    tls: bool = False
    commands: list[str] = field(default_factory=list)  # verbs received, in order


class _Conn:
    def __init__(
        self, capture: Capture, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.capture = capture
        self.reader = reader
        self.writer = writer
        sock = writer.get_extra_info("sockname")
        self.address = sock[0]
        self.behaviour = capture.behaviours.get(self.address, capture.default)
        with capture.lock:
            capture.session_count += 1
            self.session = Session(capture.session_count, self.address)
            capture.sessions.append(self.session)
        self.helo = ""
        self.tls = False
        self.auth_user: str | None = None
        self.reset()

    def reset(self) -> None:
        self.mail_from: str | None = None
        self.mail_params = ""
        self.rcpts: list[tuple[str, str]] = []

    def _scripted(self, stage: str, default: str) -> str:
        with self.capture.lock:
            queue = self.behaviour.replies.get(stage)
            if queue:
                return queue.pop(0)
        return default

    async def reply(self, text: str, *, think: bool = True) -> None:
        if think and self.behaviour.delay:
            await asyncio.sleep(self.behaviour.delay)
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()

    async def readline(self) -> bytes:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("eof")
        return line

    def _extensions(self) -> list[str]:
        ext = list(self.behaviour.extensions)
        if (self.capture.tls is not None or self.behaviour.break_tls) and self.behaviour.starttls and not self.tls:
            ext.append("STARTTLS")
        if self.behaviour.auth is not None:
            ext.append("AUTH PLAIN LOGIN")
        return ext

    async def run(self) -> None:
        b = self.behaviour
        greeting = b.greeting.format(name=b.name)
        await self.reply(greeting)
        if not greeting.startswith("220"):
            await self._quit_wait()
            return
        while True:
            line = await self.readline()
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd.split(" ", 1)[0].upper()
            arg = cmd[len(verb) :].strip()
            self.session.commands.append(verb)
            if verb == "EHLO":
                scripted = self._scripted("ehlo", "")
                if scripted:
                    await self.reply(scripted)
                    continue
                self.helo = arg
                ext = self._extensions()
                lines = [b.name] + ext
                await self.reply("\r\n".join(f"250-{x}" for x in lines[:-1]) + f"\r\n250 {lines[-1]}")
            elif verb == "HELO":
                self.helo = arg
                await self.reply(f"250 {b.name}")
            elif verb == "STARTTLS" and b.break_tls:
                await self.reply("220 2.0.0 go ahead")
                await self.reader.read(1)  # the ClientHello has started: answer it with junk
                self.writer.write(b"this is not a TLS handshake\r\n")
                await self.writer.drain()
                return
            elif verb == "STARTTLS" and self.capture.tls is not None and not self.tls:
                await self.reply("220 2.0.0 go ahead")
                await self.writer.start_tls(self.capture.tls)
                self.tls = self.session.tls = True
                self.helo = ""
                self.reset()
            elif verb == "AUTH" and b.auth is not None:
                await self._auth(arg)
            elif verb == "MAIL":
                if b.auth is not None and self.auth_user is None:
                    await self.reply("530 5.7.0 Authentication required")
                    continue
                path, params = _path(arg[5:] if arg.upper().startswith("FROM:") else arg)
                r = self._scripted("mail", "250 2.1.0 Ok")
                if r.startswith("2"):
                    self.mail_from, self.mail_params = path, params
                await self.reply(r)
            elif verb == "RCPT":
                path, params = _path(arg[3:] if arg.upper().startswith("TO:") else arg)
                if self.mail_from is None:
                    await self.reply("503 5.5.1 need MAIL")
                    continue
                r = b.rcpt_fn(path) if b.rcpt_fn is not None else None
                r = r or self._scripted("rcpt", "250 2.1.5 Ok")
                if r.startswith("2"):
                    self.rcpts.append((path, params))
                await self.reply(r)
            elif verb == "DATA":
                if not self.rcpts:
                    await self.reply("503 5.5.1 need RCPT")
                    continue
                r = self._scripted("data", "354 go ahead")
                await self.reply(r)
                if not r.startswith("354"):
                    self.reset()
                    continue
                data = await self._read_dot_data()
                if data is None:
                    return  # dropped mid-DATA
                await self._end_of_data(data, chunked=False)
            elif verb == "BDAT":
                data = await self._read_bdat(arg)
                if data is None:
                    return
                if data is not False:
                    await self._end_of_data(data, chunked=True)
            elif verb == "RSET":
                self.reset()
                await self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                await self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                await self.reply("221 2.0.0 Bye")
                return
            else:
                await self.reply("502 5.5.1 not implemented")

    async def _quit_wait(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                while True:
                    line = await self.readline()
                    if line.upper().startswith(b"QUIT"):
                        await self.reply("221 2.0.0 Bye")
                        return
                    await self.reply("503 5.5.1 no service")

    async def _auth(self, arg: str) -> None:
        b = self.behaviour
        assert b.auth is not None
        mech, _, initial = arg.partition(" ")
        user = password = None
        try:
            if mech.upper() == "PLAIN":
                if not initial:
                    await self.reply("334 ")
                    initial = (await self.readline()).decode().strip()
                _, user, password = base64.b64decode(initial).decode().split("\0")
            elif mech.upper() == "LOGIN":
                await self.reply("334 " + base64.b64encode(b"Username:").decode())
                user = base64.b64decode((await self.readline()).strip()).decode()
                await self.reply("334 " + base64.b64encode(b"Password:").decode())
                password = base64.b64decode((await self.readline()).strip()).decode()
        except (ValueError, UnicodeDecodeError):
            pass
        if user is not None and b.auth.get(user) == password:
            self.auth_user = user
            await self.reply("235 2.7.0 Authentication successful")
        else:
            await self.reply("535 5.7.8 Authentication credentials invalid")

    async def _read_dot_data(self) -> bytes | None:
        lines = []
        b = self.behaviour
        drop = False
        with self.capture.lock:
            if b.drop_in_data > 0:
                b.drop_in_data -= 1
                drop = True
        while True:
            line = await self.readline()
            if drop and len(lines) >= 2:
                self.writer.close()
                return None
            if line == b".\r\n":
                break
            lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines)

    async def _read_bdat(self, arg: str) -> bytes | bool | None:
        parts = arg.split()
        size = int(parts[0])
        last = len(parts) > 1 and parts[1].upper() == "LAST"
        chunk = await self.reader.readexactly(size)
        with self.capture.lock:
            drop = self.behaviour.drop_in_data > 0
            if drop:
                self.behaviour.drop_in_data -= 1
        if drop:
            self.writer.close()
            return None
        self._chunks = getattr(self, "_chunks", b"") + chunk
        if not last:
            await self.reply(f"250 2.0.0 {size} octets received")
            return False
        data, self._chunks = self._chunks, b""
        return data

    async def _end_of_data(self, data: bytes, *, chunked: bool) -> None:
        # The final dot is answered at once (RFC 1047: a server that thinks after the dot
        # invites duplicates; the client cannot know whether it committed). ``delay`` slows
        # every other reply.
        r = self._scripted("data_end", "250 2.0.0 Ok: queued")
        if r.startswith("2"):
            assert self.mail_from is not None
            msg = Received(
                self.address, self.helo, self.mail_from, self.mail_params, list(self.rcpts),
                data, self.tls, self.auth_user, self.session.id, chunked,
            )
            with self.capture.lock:
                self.capture.messages.append(msg)
                self.session.transactions += 1
        await self.reply(r, think=False)
        self.reset()


def _path(text: str) -> tuple[str, str]:
    text = text.strip()
    if text.startswith("<"):
        end = text.find(">")
        return text[1:end], text[end + 1 :].strip()
    path, _, params = text.partition(" ")
    return path, params


class Capture:
    """Capture SMTP server on several loopback addresses sharing one port."""

    def __init__(
        self,
        addresses: tuple[str, ...] = ("127.0.0.2",),
        *,
        behaviours: dict[str, Behaviour] | None = None,
        default: Behaviour | None = None,
        tls: ssl.SSLContext | None = None,
        port: int = 0,
    ) -> None:
        self.addresses = addresses
        self.behaviours = behaviours or {}
        self.default = default or Behaviour()
        self.tls = tls
        self.port = port
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.sessions: list[Session] = []
        self.session_count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[Any] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(self, reader, writer)
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _bind(self) -> None:
        for _ in range(50):
            servers = []
            try:
                first = await asyncio.start_server(self._handle, self.addresses[0], self.port)
                servers.append(first)
                port = first.sockets[0].getsockname()[1]
                for address in self.addresses[1:]:
                    servers.append(await asyncio.start_server(self._handle, address, port))
            except OSError:
                for s in servers:
                    s.close()
                if self.port:
                    raise
                continue
            self.port = port
            self._servers = servers
            return
        raise RuntimeError("no common free port for the capture server")

    def start(self) -> Capture:
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._bind())
            except BaseException as e:  # reported to start()
                error.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            for s in self._servers:
                s.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            raise error[0]
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def arrived(self, address: str) -> list[Received]:
        """The messages the capture address ``address`` accepted so far."""
        with self.lock:
            return [m for m in self.messages if m.address == address]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Block until ``count`` messages arrived (or fail)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            raise AssertionError(f"expected {count} messages, got {len(self.messages)}")
