"""A running IMAP server as a source for ``postroom import`` (any RFC 3501/9051 server).

The client is IMAPClient (a maintained library over the stdlib's imaplib: response
parsing, modified UTF-7 folder names); its blocking calls run on a worker thread, one at a
time, so the event loop (and the store's commits of the previous batch) keep going.

What is copied, per folder (LIST, skipping ``\\Noselect`` and ``\\NonExistent``):
every message's bytes (``BODY.PEEK[]``: reading never sets \\Seen on the source),
its flags and keywords (\\Recent is session state and dropped), and INTERNALDATE.
Folders are opened with EXAMINE (read-only): the source is never changed.

Resuming: a message's key is ``UIDVALIDITY:UID`` in the origin ``imap://LOGIN@HOST/FOLDER``
(without the port: 993 and STARTTLS on 143 reach the same mailboxes). A second run lists the UIDs (FETCH UID by sequence
number windows, which keeps every response line short) and fetches only those not
recorded. If the folder's UIDVALIDITY changed since the last run, the server renumbered
it and its messages cannot be matched with what was copied: the folder is left out with
an error unless ``recopy_renumbered`` is set (then it is copied again, whole).

Limits: a message larger than ``max_size`` (by RFC822.SIZE) is not fetched; a literal
from the server larger than ``2 * max_size`` aborts the connection (a lying or broken
server cannot make the importer allocate without bound); response lines are limited by
imaplib (1,000,000 octets); every socket operation times out after ``timeout`` seconds.
A socket timeout alone does not bound a hostile server: one that sends a byte every few
seconds (even of its greeting), or floods untagged lines or ``+`` continuations that
imaplib keeps reading (and storing) while it waits for the tagged reply, kept an import
running and growing for as long as it liked. So every call to the server also has a
:class:`Watch`: the response to one command may hold at most :data:`LINE_OCTETS` of
lines (a LIST of 10,000 folders is about 1 MB; imaplib keeps every untagged line until
the command ends) and :data:`LITERAL_FACTOR` times the largest body batch
(``max(BODY_OCTETS, 2 * max_size)``) of literals, and a call must finish within ``timeout`` seconds plus one second per
:data:`MIN_RATE` octets received; past either, the socket is shut down and the import
stops with an error that says why (running it again resumes).
"""

from __future__ import annotations

import asyncio
import datetime
import imaplib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient import exceptions as imap_errors  # type: ignore[import-untyped]
from imapclient import imap4, tls  # type: ignore[import-untyped]

from postroom.admin.importer import FolderSkipped, ImportFailed, SourceFolder, SourceMessage
from postroom.admin.service import AdminError
from postroom.store.api import names_to_flags

T = TypeVar("T")

META_WINDOW = 500  # messages per FETCH of UID/FLAGS/INTERNALDATE/RFC822.SIZE
BODY_MESSAGES = 100  # messages per FETCH of bodies ...
BODY_OCTETS = 8 * 1024 * 1024  # ... and at most this many octets (by RFC822.SIZE)
LINE_OCTETS = 8 * 1024 * 1024  # of response lines per command (literals not counted)
LITERAL_FACTOR = 2  # literal octets per command: this x the largest body batch
MIN_RATE = 1024  # octets per second a server must average, after ``timeout`` seconds
SPECIAL_USE = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged")
TLS_MODES = ("implicit", "starttls", "none")
_ERRORS: tuple[type[BaseException], ...] = (
    imap_errors.IMAPClientError, imaplib.IMAP4.error, OSError, ssl.SSLError, EOFError,
)


@dataclass(frozen=True, slots=True)
class ImapOptions:
    host: str
    login: str
    password: str = field(repr=False)
    port: int | None = None  # default: 993 for implicit TLS, else 143
    tls: str = "implicit"  # "implicit" | "starttls" | "none"
    ca_file: str | None = None  # trust these CAs instead of the system's
    verify: bool = True  # check the certificate and the host name
    timeout: float = 60.0
    folders: tuple[str, ...] = ()  # only these (source names); empty: every folder
    exclude: tuple[str, ...] = ()
    recopy_renumbered: bool = False

    @property
    def real_port(self) -> int:
        return self.port or (993 if self.tls == "implicit" else 143)


class Watch:
    """What the server has sent for the current call and command, shared by the worker
    thread that reads (counting) and the event loop that checks the deadline."""

    def __init__(self, timeout: float, max_literals: int) -> None:
        self.timeout = timeout
        self.max_literals = max_literals
        self.started = time.monotonic()
        self.received = 0  # since the call started (the rate)
        self.lines = self.literals = 0  # since the command was sent (the size bounds)
        self.sock: socket.socket | None = None
        self.why: str | None = None

    def start_call(self) -> None:
        self.started, self.received, self.why = time.monotonic(), 0, None

    def start_command(self) -> None:
        self.lines = self.literals = 0

    def count(self, octets: int, literal: bool) -> None:
        self.received += octets
        if literal:
            self.literals += octets
            over = self.literals > self.max_literals and f"{self.max_literals} octets of literals"
        else:
            self.lines += octets
            over = self.lines > LINE_OCTETS and f"{LINE_OCTETS} octets of response lines"
        if over:
            self.why = f"the server sent more than {over} for one command (a flood)"
            raise imaplib.IMAP4.abort(self.why)

    def overdue(self) -> str | None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.timeout + self.received / MIN_RATE:
            return (f"the server is too slow: {self.received} octets in {elapsed:.0f} s "
                    f"(at least {MIN_RATE} octets/s after the first {self.timeout:g} s)")
        return None

    def cut(self, why: str) -> None:
        """Called from the loop: unblock the worker thread's read."""
        self.why = why
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _bounded(base: type[Any]) -> type[Any]:
    class Bounded(base):  # type: ignore[misc, valid-type]
        max_literal = 0
        watch: Watch | None = None

        def open(self, *args: Any, **kwargs: Any) -> None:
            super().open(*args, **kwargs)
            if self.watch is not None:
                self.watch.sock = self.sock

        def _command(self, *args: Any) -> Any:
            if self.watch is not None:
                self.watch.start_command()
            return super()._command(*args)

        def read(self, size: int) -> bytes:
            if self.max_literal and size > self.max_literal:
                raise imaplib.IMAP4.abort(
                    f"the server sent a literal of {size} octets (limit {self.max_literal})"
                )
            data = bytes(super().read(size))
            if self.watch is not None:
                self.watch.count(len(data), literal=True)
            return data

        def readline(self) -> bytes:
            line = bytes(super().readline())
            if self.watch is not None:
                self.watch.count(len(line), literal=False)
            return line

    return Bounded


_PlainIMAP4 = _bounded(imap4.IMAP4WithTimeout)
_TlsIMAP4 = _bounded(tls.IMAP4_TLS)


class _Client(IMAPClient):  # type: ignore[misc]
    """IMAPClient whose imaplib object refuses literals over ``max_literal``."""

    max_literal = 0
    watch: Watch | None = None

    def _create_IMAP4(self) -> Any:  # noqa: N802 - IMAPClient's name
        timeout = getattr(self._timeout, "connect", None)
        # Set on the classes: the greeting is read inside the constructor.
        for cls in (_TlsIMAP4, _PlainIMAP4):
            cls.max_literal, cls.watch = self.max_literal, self.watch
        if self.ssl:
            conn = _TlsIMAP4(self.host, self.port, self.ssl_context, timeout)
        else:
            conn = _PlainIMAP4(self.host, self.port, timeout)
        return conn


def tls_context(options: ImapOptions) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=options.ca_file)
    if not options.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class _Meta:
    uid: int
    flags: int
    keywords: tuple[str, ...]
    internaldate: int | None
    size: int


def _internaldate(value: object) -> int | None:
    if not isinstance(value, datetime.datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return int(value.timestamp())


class ImapSource:
    """One login on one server; every call to it goes through :meth:`_call`."""

    def __init__(self, options: ImapOptions, max_size: int) -> None:
        if options.tls not in TLS_MODES:
            raise AdminError(f"--tls: got {options.tls!r}; allowed: " + ", ".join(TLS_MODES))
        self.options = options
        self.max_size = max_size
        self.description = f"imap://{options.login}@{options.host}:{options.real_port}"
        self.client: _Client | None = None
        self._lock = asyncio.Lock()
        largest = max(BODY_OCTETS, 2 * max_size, 1024 * 1024)
        self.watch = Watch(options.timeout, LITERAL_FACTOR * largest)

    async def _watched(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on a worker thread, cut off when the server is too slow (see Watch)."""
        watch = self.watch
        watch.start_call()
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                try:
                    return task.result()
                except _ERRORS as e:
                    if watch.why is not None:  # the cut shows up as a socket error
                        raise _Cut(watch.why) from None
                    raise e
            why = watch.overdue()
            if why is not None and watch.why is None:
                watch.cut(why)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:  # the connection serves one command at a time
            try:
                return await self._watched(fn, *args)
            except _Cut as e:
                raise ImportFailed(f"{self.description}: {e}") from None
            except _ERRORS as e:
                raise ImportFailed(f"{self.description}: {_describe(e)}") from None

    def _connect(self) -> _Client:
        o = self.options
        _Client.max_literal = max(2 * self.max_size, 1024 * 1024)
        _Client.watch = self.watch
        ctx = tls_context(o) if o.tls != "none" else None
        client = _Client(o.host, port=o.real_port, ssl=o.tls == "implicit", ssl_context=ctx,
                         timeout=o.timeout)
        client.normalise_times = False  # keep the server's zone: the exact instant
        if o.tls == "starttls":
            client.starttls(ctx)
        caps = {c.upper() for c in client.capabilities()}
        if b"LOGINDISABLED" in caps and b"AUTH=PLAIN" in caps:
            client.plain_login(o.login, o.password)
        else:
            client.login(o.login, o.password)
        return client

    async def folders(self) -> list[SourceFolder]:
        try:
            self.client = await self._watched(self._connect)
        except _Cut as e:
            raise AdminError(f"{self.description}: {e}") from None
        except imap_errors.LoginError as e:
            raise AdminError(f"{self.description}: login failed: {_describe(e)}") from None
        except ssl.SSLCertVerificationError as e:
            raise AdminError(
                f"{self.description}: the server's certificate is not trusted "
                f"({e.verify_message}); use --ca-file, or --no-verify for a server you "
                "trust otherwise"
            ) from None
        except _ERRORS as e:
            raise AdminError(f"{self.description}: {_describe(e)}") from None
        listed = await self._call(self.client.list_folders)
        out: list[SourceFolder] = []
        wanted = set(self.options.folders)
        found: set[str] = set()
        for flags, delimiter, name in listed:
            names = {f.decode("ascii", "replace") if isinstance(f, bytes) else str(f) for f in flags}
            lower = {n.lower() for n in names}
            if "\\noselect" in lower or "\\nonexistent" in lower:
                continue
            found.add(name)
            if (wanted and name not in wanted) or name in self.options.exclude:
                continue
            delim = delimiter.decode("ascii", "replace") if isinstance(delimiter, bytes) else delimiter
            levels = tuple(name.split(delim)) if delim else (name,)
            use = next((u for u in SPECIAL_USE if u.lower() in lower), None)
            out.append(ImapFolder(self, name, levels, use))
        missing = wanted - found
        if missing:
            raise AdminError(f"{self.description}: no folder " + ", ".join(sorted(missing)))
        # INBOX first: the folder people check first after a migration.
        out.sort(key=lambda f: (f.levels[0].upper() != "INBOX", f.levels))
        return out

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            await asyncio.to_thread(client.logout)
        except _ERRORS:
            try:
                client.shutdown()
            except OSError:
                pass


class _Cut(Exception):
    """The Watch ended the connection; the message says why."""


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    text = str(e) or type(e).__name__
    return text[:300]


class ImapFolder:
    def __init__(self, source: ImapSource, name: str, levels: tuple[str, ...], special_use: str | None) -> None:
        self.source = source
        self.name = name
        self.levels = levels
        self.special_use = special_use
        self.origin = f"imap://{source.options.login}@{source.options.host}/{name}"
        self._todo: list[_Meta] = []
        self._validity = 0

    def _list(self) -> tuple[int, list[_Meta]]:
        """(UIDVALIDITY, every message's metadata); runs on the worker thread."""
        client = self.source.client
        assert client is not None
        selected = client.select_folder(self.name, readonly=True)
        validity = int(selected.get(b"UIDVALIDITY", 0))
        exists = int(selected.get(b"EXISTS", 0))
        metas: dict[int, _Meta] = {}
        client.use_uid = False  # windows of sequence numbers: short commands and replies
        try:
            for first in range(1, exists + 1, META_WINDOW):
                numbers = list(range(first, min(first + META_WINDOW - 1, exists) + 1))
                got = client.fetch(numbers, ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"])
                for item in got.values():
                    uid = item.get(b"UID")
                    if not isinstance(uid, int):
                        continue
                    names = [f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f)
                             for f in item.get(b"FLAGS", ())]
                    bits, keywords = names_to_flags(names)
                    metas[uid] = _Meta(uid, bits, keywords, _internaldate(item.get(b"INTERNALDATE")),
                                       int(item.get(b"RFC822.SIZE", 0) or 0))
        finally:
            client.use_uid = True
        return validity, sorted(metas.values(), key=lambda m: m.uid)

    async def pending(self, done: set[str]) -> int:
        validity, metas = await self.source._call(self._list)
        self._validity = validity
        earlier = {k.partition(":")[0] for k in done}
        if earlier and str(validity) not in earlier and not self.source.options.recopy_renumbered:
            raise FolderSkipped(
                f"its UIDVALIDITY changed since the last import (now {validity}): the server "
                "renumbered it, so copied messages cannot be recognised; --recopy-renumbered "
                "copies it again (whole)"
            )
        self._todo = [m for m in metas if f"{validity}:{m.uid}" not in done]
        return len(self._todo)

    def _bodies(self, uids: list[int]) -> dict[int, bytes]:
        client = self.source.client
        assert client is not None
        got = client.fetch(uids, ["BODY.PEEK[]"])
        out: dict[int, bytes] = {}
        for uid, item in got.items():
            body = item.get(b"BODY[]")
            if isinstance(body, bytes):
                out[uid] = body
        return out

    async def messages(self) -> AsyncIterator[SourceMessage]:
        batch: list[_Meta] = []
        octets = 0
        for meta in self._todo:
            key = f"{self._validity}:{meta.uid}"
            if meta.size > self.source.max_size:
                yield SourceMessage(key=key, data=b"", size=meta.size)
                continue
            batch.append(meta)
            octets += meta.size
            if len(batch) >= BODY_MESSAGES or octets >= BODY_OCTETS:
                async for msg in self._fetch(batch):
                    yield msg
                batch, octets = [], 0
        if batch:
            async for msg in self._fetch(batch):
                yield msg

    async def _fetch(self, batch: list[_Meta]) -> AsyncIterator[SourceMessage]:
        bodies = await self.source._call(self._bodies, [m.uid for m in batch])
        for meta in batch:
            data = bodies.get(meta.uid)
            if data is None:
                continue  # expunged on the source since it was listed
            yield SourceMessage(key=f"{self._validity}:{meta.uid}", data=data, flags=meta.flags,
                                keywords=meta.keywords, internaldate=meta.internaldate)
