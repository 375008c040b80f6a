"""A small raw-socket IMAP client for the tests imaplib cannot write (IDLE, COMPRESS,
SCRAM, literals, bad input): it sends exact bytes and reads whole responses back.

A "response" is one line plus the literals it announces (``{n}`` / ``~{n}``), joined,
so a FETCH with a body literal is one item. Every read has a timeout.
"""

from __future__ import annotations

import re
import socket
import ssl
import zlib

_LITERAL = re.compile(rb"~?\{(\d+)\}\r\n$")


class RawImap:
    def __init__(self, port: int, *, context: ssl.SSLContext | None = None,
                 timeout: float = 10.0, greeting: bool = True) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="mail.example.test")
        self.sock = sock
        self.buf = b""
        self.n = 0
        self.inflate: zlib._Decompress | None = None
        self.deflate: zlib._Compress | None = None
        self.greeting = self.response() if greeting else b""

    # -- low level ---------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        if self.inflate is not None:
            chunk = self.inflate.decompress(chunk)
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self) -> bytes:
        """One response: a line and the literals it announces."""
        out = self.line()
        while (m := _LITERAL.search(out)) is not None:
            out += self.exact(int(m.group(1)))
            out += self.line()
        return out

    def closed(self) -> bool:
        """True when the server has closed the connection (reads EOF)."""
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionError):
            return True
        except TimeoutError:
            return False

    # -- commands ----------------------------------------------------------------------
    def tag(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def until_tagged(self, tag: str) -> tuple[list[bytes], bytes]:
        untagged: list[bytes] = []
        while True:
            r = self.response()
            if r.startswith(tag.encode() + b" "):
                return untagged, r
            untagged.append(r)

    def cmd(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        """Send ``tag text`` and read up to its tagged completion."""
        tag = self.tag()
        raw = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + raw + b"\r\n")
        return self.until_tagged(tag)

    def ok(self, text: str | bytes) -> list[bytes]:
        untagged, done = self.cmd(text)
        assert done.split(b" ", 2)[1] == b"OK", (text, untagged, done)
        return untagged

    def login(self, user: str, password: str) -> None:
        self.ok(f'LOGIN "{user}" "{password}"')

    def start_compress(self) -> None:
        self.ok("COMPRESS DEFLATE")
        self.inflate = zlib.decompressobj(-15)
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        if self.buf:  # nothing may follow the OK uncompressed
            raise AssertionError(f"unexpected bytes after COMPRESS OK: {self.buf!r}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def untagged_kind(lines: list[bytes], kind: bytes) -> list[bytes]:
    """The untagged responses whose second or third word is ``kind`` (EXISTS, FETCH...)."""
    out = []
    for line in lines:
        words = line.split(b" ", 3)
        if len(words) > 1 and (words[1] == kind or (len(words) > 2 and words[2].startswith(kind))):
            out.append(line)
    return out
