"""A tiny asyncio IMAP client for benchmarks and load tests (not a general-purpose library).

Why not imaplib: the benchmarks keep thousands of sessions open (5,000 in IDLE) and drive
tens of clients from one process; imaplib needs a thread per session. This client is a
few dozen lines over asyncio streams and keeps what a load generator needs: the
untagged lines of a response (literals counted but not kept unless asked), the tagged
status, synchronising literals for APPEND (RFC 9051 4.3: wait for ``+`` before sending
the octets), and IDLE (RFC 2177) with a wait for the first untagged response.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import ssl
from dataclasses import dataclass, field

_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r\n$")
_UID = re.compile(rb"UID (\d+)")


class ImapError(Exception):
    """A tagged NO/BAD, or a BYE or closed connection where a response was expected."""


@dataclass
class Response:
    status: bytes  # b"OK" | b"NO" | b"BAD"
    text: bytes  # the tagged line after the status
    untagged: list[bytes] = field(default_factory=list)  # lines, literals as b"{n}"
    literal_bytes: int = 0  # total octets of literals received (FETCH bodies)
    literals: list[bytes] = field(default_factory=list)  # only with keep_literals=True

    def uids(self) -> list[int]:
        return [int(m.group(1)) for line in self.untagged for m in _UID.finditer(line)]

    def search(self) -> list[int]:
        """Numbers of ``* SEARCH`` lines."""
        out: list[int] = []
        for line in self.untagged:
            if line.startswith(b"* SEARCH"):
                out.extend(int(x) for x in line[8:].split())
        return out


class ImapClient:
    """One IMAP session over an asyncio stream pair. Every read is bounded by ``timeout``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self._tag = 0
        self.greeting = b""
        self.idle_tag: bytes | None = None
        self.bye = b""

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        local_addr: tuple[str, int] | None = None,
        timeout: float = 30.0,
    ) -> ImapClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, local_addr=local_addr, limit=1 << 20),
            timeout,
        )
        client = cls(reader, writer, timeout)
        async with asyncio.timeout(timeout):
            client.greeting = await client._line()
        if not client.greeting.startswith((b"* OK", b"* PREAUTH")):
            writer.close()
            raise ImapError(f"bad greeting {client.greeting!r}")
        return client

    def close(self) -> None:
        self.writer.close()

    async def _line(self) -> bytes:
        """One line; callers bound the whole exchange with ``asyncio.timeout`` (cheaper than
        ``wait_for`` per read, which costs a task each on Python 3.11)."""
        try:
            return await self.reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise ImapError(f"connection closed ({self.bye!r})") from None

    def _next_tag(self) -> bytes:
        self._tag += 1
        return b"a%d" % self._tag

    async def _read_response(self, tag: bytes, keep_literals: bool = False) -> Response:
        untagged: list[bytes] = []
        literals: list[bytes] = []
        total = 0
        while True:
            line = await self._line()
            parts = [line]
            while True:
                m = _LITERAL_AT_END.search(line)
                if not m:
                    break
                n = int(m.group(1))
                data = await self.reader.readexactly(n)
                total += n
                if keep_literals:
                    literals.append(data)
                line = await self._line()
                parts.append(line)
            full = b"".join(parts) if len(parts) > 1 else line
            if full.startswith(tag + b" "):
                rest = full[len(tag) + 1 :].rstrip(b"\r\n")
                status, _, text = rest.partition(b" ")
                return Response(status.upper(), text, untagged, total, literals)
            if full.startswith(b"* BYE"):
                self.bye = full.rstrip(b"\r\n")  # LOGOUT's, or the server closing: read on
            untagged.append(full.rstrip(b"\r\n"))

    async def command(
        self, text: bytes | str, *, keep_literals: bool = False, check: bool = True
    ) -> Response:
        """Send ``TAG text`` and read up to the tagged response; raise on NO/BAD if ``check``."""
        if isinstance(text, str):
            text = text.encode()
        tag = self._next_tag()
        self.writer.write(tag + b" " + text + b"\r\n")
        async with asyncio.timeout(self.timeout):
            resp = await self._read_response(tag, keep_literals)
        if check and resp.status != b"OK":
            raise ImapError(f"{text[:60]!r}: {resp.status.decode()} {resp.text[:200]!r}")
        return resp

    async def command_literal(self, prefix: bytes, literal: bytes, suffix: bytes = b"") -> Response:
        """A command with one synchronising literal (``APPEND box (flags) {n}``)."""
        async with asyncio.timeout(self.timeout):
            return await self._command_literal(prefix, literal, suffix)

    async def _command_literal(self, prefix: bytes, literal: bytes, suffix: bytes) -> Response:
        tag = self._next_tag()
        self.writer.write(tag + b" " + prefix + b" {%d}\r\n" % len(literal))
        while True:
            line = await self._line()
            if line.startswith(b"+"):
                break
            if line.startswith(tag + b" "):
                raise ImapError(f"literal refused: {line!r}")
        self.writer.write(literal + suffix + b"\r\n")
        resp = await self._read_response(tag)
        if resp.status != b"OK":
            raise ImapError(f"{prefix[:60]!r}: {resp.status.decode()} {resp.text[:200]!r}")
        return resp

    async def login(self, user: str, password: str) -> Response:
        return await self.command(f"LOGIN {quote(user)} {quote(password)}")

    async def authenticate_scram(
        self, user: str, password: str, cache: dict[tuple[str, bytes, int], bytes] | None = None
    ) -> Response:
        """AUTHENTICATE SCRAM-SHA-256 (RFC 7677, RFC 5802); ``cache`` keeps SaltedPassword.

        The expensive part of SCRAM (PBKDF2) is the client's; with a cache it is paid once
        per user, so thousands of logins cost the server a few HMACs each.
        """
        async with asyncio.timeout(self.timeout):
            return await self._scram(user, password, cache)

    async def _scram(
        self, user: str, password: str, cache: dict[tuple[str, bytes, int], bytes] | None
    ) -> Response:
        nonce = base64.b64encode(os.urandom(18)).decode()
        bare = f"n={saslname(user)},r={nonce}"
        tag = self._next_tag()
        first = base64.b64encode(b"n,," + bare.encode()).decode()
        self.writer.write(tag + b" AUTHENTICATE SCRAM-SHA-256 " + first.encode() + b"\r\n")
        line = await self._line()
        if not line.startswith(b"+ "):
            raise ImapError(f"SCRAM: {line!r}")
        server_first = base64.b64decode(line[2:].strip()).decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        key = (password, salt, iterations)
        salted = cache.get(key) if cache is not None else None
        if salted is None:
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
            if cache is not None:
                cache[key] = salted
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = f"{without_proof},p={base64.b64encode(proof).decode()}"
        self.writer.write(base64.b64encode(final.encode()) + b"\r\n")
        line = await self._line()
        if line.startswith(b"+"):
            self.writer.write(b"\r\n")  # RFC 5802: empty response to the server's final message
        else:
            if not line.startswith(tag + b" "):
                raise ImapError(f"SCRAM: {line!r}")
            status = line[len(tag) + 1 :].split(b" ", 1)[0]
            if status != b"OK":
                raise ImapError(f"SCRAM: {line!r}")
            return Response(status, line)
        resp = await self._read_response(tag)
        if resp.status != b"OK":
            raise ImapError(f"SCRAM: {resp.status!r} {resp.text!r}")
        return resp

    # -- IDLE (RFC 2177) -------------------------------------------------------------------
    async def idle_start(self) -> list[bytes]:
        """Send IDLE and wait for the continuation; returns untagged lines seen before it."""
        tag = self._next_tag()
        self.writer.write(tag + b" IDLE\r\n")
        seen: list[bytes] = []
        async with asyncio.timeout(self.timeout):
            while True:
                line = await self._line()
                if line.startswith(b"+"):
                    self.idle_tag = tag
                    return seen
                if line.startswith(tag + b" "):
                    raise ImapError(f"IDLE refused: {line!r}")
                seen.append(line.rstrip(b"\r\n"))

    async def idle_wait(self, timeout: float) -> bytes | None:
        """The next untagged line during IDLE, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.reader.readuntil(b"\r\n"), timeout)
        except TimeoutError:
            return None

    async def idle_done(self) -> Response:
        assert self.idle_tag is not None
        tag, self.idle_tag = self.idle_tag, None
        self.writer.write(b"DONE\r\n")
        async with asyncio.timeout(self.timeout):
            resp = await self._read_response(tag)
        if resp.status != b"OK":
            raise ImapError(f"IDLE: {resp.status!r} {resp.text!r}")
        return resp

    async def logout(self) -> None:
        try:
            await self.command("LOGOUT", check=False)
        except (ImapError, OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        self.writer.close()


def quote(s: str) -> str:
    """An IMAP quoted string (RFC 9051 4.3); callers pass ASCII without CR/LF."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def saslname(s: str) -> str:
    return s.replace("=", "=3D").replace(",", "=2C")
