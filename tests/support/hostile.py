"""Hostile clients and a NOOP-latency probe, for bench/loop_lag.py and tests/e2e/test_loop_lag.py.

Issue 9: one IMAP command (``LIST "" "*%*%...x"``) froze every connection of every
protocol for 90 s. These are the worst inputs we know of for each expensive path, sent by
clients that never stop, while :class:`Probe` sends NOOP on IMAP, POP3 and SMTP
connections of another user and records how long each answer took.

Every client loop is bounded by a deadline (``until``, a ``time.monotonic()`` value) and
every read by a timeout; only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from support.imap_async import ImapClient, ImapError, quote

HOST = "127.0.0.1"

# -- the inputs --------------------------------------------------------------------------

# The LIST pattern (90 s with the backtracking regex), and one that cannot be
# collapsed (no adjacent wildcards), which exercises the general matcher.
WILDCARD_PATTERN = "*%" * 30 + "x"
NFA_PATTERN = "%a" * 60 + "%x"


def _head(to: str, subject: str, i: int = 0, extra: str = "", msgid: str = "") -> str:
    date = email.utils.formatdate(1_700_000_000 + i * 60, localtime=False)
    msgid = msgid or f"<hostile.{subject.replace(' ', '.')}.{i}@example.org>"
    return (
        f"From: Hostile <hostile@example.org>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Date: {date}\r\nMessage-ID: {msgid}\r\n{extra}MIME-Version: 1.0\r\n"
    )


def many_parts(to: str, count: int = 10_000) -> bytes:
    """A multipart/mixed message with ``count`` tiny parts (the scanner's MAX_PARTS)."""
    parts = [
        _head(to, "many parts").encode(),
        b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n',
    ]
    for i in range(count):
        parts.append(b"--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i)
    parts.append(b"--p--\r\n")
    return b"".join(parts)


def big_text(to: str, size: int) -> bytes:
    """One text/plain part of about ``size`` octets (SEARCH BODY decodes all of it)."""
    line = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod\r\n"
    body = line * (size // len(line) + 1)
    return _head(to, "big text").encode() + b"Content-Type: text/plain\r\n\r\n" + body


def huge_header(to: str, lines: int) -> bytes:
    """A message whose header has ``lines`` extra fields (SEARCH HEADER walks them)."""
    noise = "".join(f"X-Noise: {i} zz\r\n" for i in range(lines))
    return (_head(to, "huge header") + noise + "Content-Type: text/plain\r\n\r\nhi\r\n").encode()


def reference_storm(to: str, count: int, refs: int, seed: int = 9) -> list[bytes]:
    """``count`` messages whose References fields name ``refs`` ids each: earlier ones,
    later ones (loops the threader must break) and ids that exist nowhere."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        ids = [f"<hostile.storm.{rng.randrange(count)}@example.org>" for _ in range(refs)]
        ids += [f"<ghost.{i}.{k}@example.org>" for k in range(refs // 4)]
        rng.shuffle(ids)
        folded = "\r\n ".join(" ".join(ids[k : k + 4]) for k in range(0, len(ids), 4))
        head = _head(to, f"Re: storm {i % 7}", i, f"References: {folded}\r\n",
                     f"<hostile.storm.{i}@example.org>")
        out.append((head + "Content-Type: text/plain\r\n\r\nstorm\r\n").encode())
    return out


def deep_search() -> str:
    """A search program at the nesting limits: NOT/OR chains and nested parentheses."""
    inner = "OR (OR TEXT zq-none BODY zq-none) (OR HEADER X-Noise zq-none SUBJECT zq-none)"
    nested = "(" * 14 + inner + ")" * 14
    return "NOT " * 40 + "(OR " * 1 + nested + " " + nested + ")"


def wide_search(keys: int = 4000) -> str:
    """Thousands of keys in one program (each is a pass over the whole mailbox)."""
    words = ["SEEN", "UNSEEN", "FLAGGED", "UNDELETED", "ANSWERED", "DRAFT"]
    return " ".join(f"UID {i}:{i + 7} {words[i % len(words)]}" for i in range(1, keys // 2))


def many_from_search(keys: int = 600) -> str:
    """Hundreds of distinct envelope keys (each is a query over the mailbox's texts)."""
    return " ".join(f"OR FROM zq{i} SUBJECT zq{i}" for i in range(keys)) + " ALL"


IMAP_HEAVY = (
    f'LIST "" "{WILDCARD_PATTERN}"',
    f'LIST "" "{NFA_PATTERN}"',
    'LIST "" "*"',
    "SEARCH TEXT zq-not-there",
    "SEARCH BODY zq-not-there",
    "SEARCH HEADER X-Noise zq-not-there",
    "SEARCH " + deep_search(),
    "SEARCH " + wide_search(),
    "SEARCH " + many_from_search(),
    "SORT (REVERSE DATE SUBJECT FROM) UTF-8 ALL",
    "THREAD REFERENCES UTF-8 ALL",
    "THREAD ORDEREDSUBJECT UTF-8 ALL",
    "FETCH 1:* (BODYSTRUCTURE)",
    "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT X-NOISE REFERENCES)])",
)


# -- hostile clients ---------------------------------------------------------------------

@dataclass
class Tally:
    """What one kind of hostile client got back."""

    name: str
    ok: int = 0
    limit: int = 0  # NO [LIMIT] / 451 4.3.0 / -ERR [SYS/TEMP]: the budget did its job
    refused: int = 0  # other NO/BAD/5xx (sizes, syntax: expected for some inputs)
    errors: list[str] = field(default_factory=list)  # dropped connections, timeouts, logins
    slowest: float = 0.0
    sent: int = 0  # commands sent (those of :meth:`sending`)

    def sending(self) -> float:
        """Count one command sent; returns its start time for :meth:`note`."""
        self.sent += 1
        return time.monotonic()

    def note(self, started: float, status: str) -> None:
        self.slowest = max(self.slowest, time.monotonic() - started)
        setattr(self, status, getattr(self, status) + 1)

    @property
    def unanswered(self) -> int:
        """Commands sent that got no answer (the client gave up or the connection died)."""
        return max(0, self.sent - self.ok - self.limit - self.refused)

    def __str__(self) -> str:
        name = self.name if len(self.name) <= 50 else self.name[:47] + "..."
        return (f"{name}: {self.ok + self.refused} answered ({self.ok} ok, {self.refused} "
                f"refused), {self.limit} limited, {self.unanswered} unanswered, "
                f"{len(self.errors)} errors, slowest {self.slowest:.2f} s")


def _imap_status(resp_status: bytes, text: bytes) -> str:
    if resp_status == b"OK":
        return "ok"
    if b"[LIMIT]" in text:
        return "limit"
    return "refused"


async def _imap(port: int, user: str, password: str, timeout: float,
                tally: Tally | None = None) -> ImapClient:
    """A logged-in client; a refused login (a server limit) is one of ``tally``'s errors,
    not a silent end of the hostile client."""
    client = await ImapClient.connect(HOST, port, timeout=timeout)
    try:
        await client.login(user, password)
    except (ImapError, OSError, TimeoutError) as e:
        client.close()
        if tally is not None:
            tally.errors.append(f"login: {e!r}")
        raise
    return client


async def imap_commands(port: int, user: str, password: str, commands: tuple[str, ...],
                        until: float, tally: Tally, *, timeout: float = 120.0,
                        once: bool = False) -> None:
    """Run ``commands`` in turn (after SELECT INBOX) until ``until``; ``once``: one round,
    whenever the login got through (a login flood may hold it up)."""
    client = await _imap(port, user, password, timeout, tally)
    try:
        await client.command("SELECT INBOX")
        while once or time.monotonic() < until:
            for command in commands:
                started = tally.sending()
                try:
                    resp = await client.command(command, check=False)
                except (ImapError, OSError, TimeoutError) as e:
                    tally.errors.append(f"{command[:40]}: {e!r}")
                    return
                tally.note(started, _imap_status(resp.status, resp.text))
                if not once and time.monotonic() >= until:
                    break
            if once:
                break
    finally:
        client.close()


async def imap_append(port: int, user: str, password: str, mailbox: str, message: bytes,
                      until: float, tally: Tally, *, timeout: float = 120.0,
                      once: bool = False) -> None:
    """APPEND ``message`` again and again (a literal of its size each time); ``once``:
    one APPEND, whenever the login got through."""
    client = await _imap(port, user, password, timeout, tally)
    try:
        while once or time.monotonic() < until:
            started = tally.sending()
            try:
                await client.command_literal(b"APPEND " + mailbox.encode(), message)
                tally.note(started, "ok")
            except ImapError as e:
                tally.note(started, "limit" if "[LIMIT]" in str(e) else "refused")
            except (OSError, TimeoutError) as e:
                tally.errors.append(repr(e))
                return
            if once:
                break
    finally:
        client.close()


async def imap_literal_flood(port: int, user: str, password: str, size: int, until: float,
                             tally: Tally, *, timeout: float = 60.0) -> None:
    """Non-synchronising literals above the APPEND limit (LITERAL+, RFC 7888): the server
    must read and throw them away (or hang up) without buffering them. At least one
    literal is sent whole, however late the login got through."""
    attempts = 0
    while attempts == 0 or time.monotonic() < until:
        attempts += 1
        client = await _imap(port, user, password, timeout, tally)
        try:
            started = tally.sending()
            client.writer.write(b"x1 APPEND INBOX {%d+}\r\n" % size)
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < size:
                    if attempts > 1 and time.monotonic() >= until:
                        return  # mid-literal: just hang up (the finally closes)
                    client.writer.write(chunk)
                    await asyncio.wait_for(client.writer.drain(), timeout)
                    sent += len(chunk)
                client.writer.write(b"\r\n")
                async with asyncio.timeout(timeout):
                    line = await client.reader.readline()
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                line = b""  # the server may close instead (RFC 7888 4)
            tally.note(started, "refused" if b"TOOBIG" in line or not line else "ok")
        finally:
            client.close()


async def imap_login_flood(port: int, user: str, until: float, tally: Tally, *,
                           timeout: float = 60.0) -> None:
    """Wrong passwords, as fast as the server answers: each costs an argon2 verify."""
    n = 0
    while time.monotonic() < until:
        try:
            client = await ImapClient.connect(HOST, port, timeout=timeout)
        except (OSError, TimeoutError, ImapError) as e:
            tally.errors.append(repr(e))
            await asyncio.sleep(0.1)
            continue
        try:
            for _ in range(3):
                n += 1
                started = tally.sending()
                resp = await client.command(
                    f"LOGIN {quote(user)} {quote(f'wrong-{n}')}", check=False)
                tally.note(started, _imap_status(resp.status, resp.text))
        except (ImapError, OSError, TimeoutError):
            pass  # closed after the failures allowed per connection
        finally:
            client.close()


async def _smtp_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("SMTP server closed the connection")
        if line[3:4] != b"-":
            return line


async def smtp_send(port: int, rcpt: str, message: bytes, until: float, tally: Tally, *,
                    timeout: float = 120.0, once: bool = False) -> None:
    """Send ``message`` to ``rcpt`` over and over on one MX session."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    try:
        async with asyncio.timeout(timeout):
            await _smtp_reply(reader)
            writer.write(b"EHLO hostile.example.org\r\n")
            await _smtp_reply(reader)
        while once or time.monotonic() < until:
            started = tally.sending()
            async with asyncio.timeout(timeout):
                writer.write(b"MAIL FROM:<hostile@example.org>\r\n")
                await _smtp_reply(reader)
                writer.write(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
                if not (await _smtp_reply(reader)).startswith(b"250"):
                    tally.note(started, "refused")
                    return
                writer.write(b"DATA\r\n")
                await _smtp_reply(reader)
                writer.write(stuffed + b".\r\n")
                reply = await _smtp_reply(reader)
            if reply.startswith(b"250"):
                tally.note(started, "ok")
            elif reply.startswith(b"451 4.3.0"):
                tally.note(started, "limit")
            else:
                tally.note(started, "refused")
            if once:
                break
    except (OSError, TimeoutError, ConnectionError) as e:
        tally.errors.append(repr(e))
    finally:
        writer.close()


async def slowloris(ports: list[int], count: int, until: float, tally: Tally, *,
                    every: float = 2.0) -> None:
    """``count`` connections spread over ``ports``, each sending one byte of a command
    line every ``every`` seconds (they hold a slot; they must not hold the loop)."""
    conns: list[asyncio.StreamWriter] = []
    for i in range(count):
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, ports[i % len(ports)]), 10)
        except (OSError, TimeoutError) as e:
            tally.errors.append(repr(e))
            continue
        conns.append(writer)
    line = b"a1 NOOP and then nothing for a long time"
    k = 0
    try:
        while time.monotonic() < until:
            for w in conns:
                if not w.is_closing():
                    w.write(line[k % len(line) : k % len(line) + 1])
            k += 1
            tally.ok += 1
            await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))
    finally:
        for w in conns:
            w.close()


async def run_all(jobs: list[Awaitable[None]]) -> None:
    """Run hostile clients side by side; one failing does not stop the others."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, (OSError, TimeoutError, ImapError)):
            raise r


# -- the probe ---------------------------------------------------------------------------

class _LineSocket:
    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _imap_probe(port: int, user: str, password: str, timeout: float) -> Callable[[], None]:
    s = _LineSocket(port, timeout)
    s.line()
    s.send(f"p0 LOGIN {quote(user)} {quote(password)}\r\n".encode())
    while not s.line().startswith(b"p0 "):
        pass
    n = 0

    def noop() -> None:
        nonlocal n
        n += 1
        tag = b"p%d" % n
        s.send(tag + b" NOOP\r\n")
        while True:
            line = s.line()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise AssertionError(line)
                return

    noop.close = s.close  # type: ignore[attr-defined]
    return noop


def _pop3_probe(port: int, user: str, password: str, timeout: float) -> Callable[[], None]:
    s = _LineSocket(port, timeout)
    s.line()
    for command in (f"USER {user}", f"PASS {password}"):
        s.send(command.encode() + b"\r\n")
        line = s.line()
        if not line.startswith(b"+OK"):
            raise AssertionError(line)

    def noop() -> None:
        s.send(b"NOOP\r\n")
        line = s.line()
        if not line.startswith(b"+OK"):
            raise AssertionError(line)

    noop.close = s.close  # type: ignore[attr-defined]
    return noop


def _smtp_probe(port: int, timeout: float) -> Callable[[], None]:
    s = _LineSocket(port, timeout)

    def reply() -> bytes:
        while True:
            line = s.line()
            if line[3:4] != b"-":
                return line

    reply()
    s.send(b"EHLO probe.example.org\r\n")
    reply()

    def noop() -> None:
        s.send(b"NOOP\r\n")
        line = reply()
        if not line.startswith(b"250"):
            raise AssertionError(line)

    noop.close = s.close  # type: ignore[attr-defined]
    return noop


class Probe:
    """NOOP every ``interval`` seconds on IMAP, POP3 and SMTP, one thread each.

    ``latencies[protocol]`` holds the seconds each answer took. A reply slower than
    ``timeout`` counts as ``timeout`` and ends that protocol's probe.
    """

    def __init__(self, *, imap: int | None = None, pop3: int | None = None,
                 smtp: int | None = None, user: str = "", password: str = "",
                 interval: float = 0.02, timeout: float = 30.0) -> None:
        self.interval = interval
        self.timeout = timeout
        self._makers: dict[str, Callable[[], Callable[[], None]]] = {}
        if imap is not None:
            self._makers["imap"] = lambda: _imap_probe(imap, user, password, timeout)
        if pop3 is not None:
            self._makers["pop3"] = lambda: _pop3_probe(pop3, user, password, timeout)
        if smtp is not None:
            self._makers["smtp"] = lambda: _smtp_probe(smtp, timeout)
        self.latencies: dict[str, list[float]] = {name: [] for name in self._makers}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._noops: dict[str, Callable[[], None]] = {}

    def connect(self) -> None:
        """Log in everywhere first (argon2 is not what the probe measures)."""
        for name, make in self._makers.items():
            self._noops[name] = make()

    def reset(self) -> None:
        for values in self.latencies.values():
            values.clear()

    def start(self) -> None:
        if not self._noops:
            self.connect()
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, args=(name, noop), daemon=True)
                         for name, noop in self._noops.items()]
        for t in self._threads:
            t.start()

    def _run(self, name: str, noop: Callable[[], None]) -> None:
        out = self.latencies[name]
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                noop()
            except (OSError, AssertionError, ConnectionError) as e:
                out.append(max(time.perf_counter() - started, self.timeout))
                self.errors.append(f"{name}: {e!r}")
                return
            out.append(time.perf_counter() - started)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def close(self) -> None:
        self.stop()
        for noop in self._noops.values():
            noop.close()  # type: ignore[attr-defined]

    def summary(self, name: str) -> tuple[int, float, float, float]:
        """(probes, p50, p99, max) in seconds."""
        values = sorted(self.latencies[name])
        if not values:
            return 0, 0.0, 0.0, 0.0
        return (len(values), values[len(values) // 2],
                values[min(len(values) - 1, int(len(values) * 0.99))], values[-1])
