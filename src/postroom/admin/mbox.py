"""mbox files for ``postroom import`` (RFC 4155; the mboxrd variant for "From " quoting).

An mbox file is messages one after another, each starting with a ``From sender date``
line. A new message starts at a line that begins with "From ", comes first in the file
or after an empty line, and looks like a From_ line (a time and a four-digit year follow
the sender, as mutt's and Dovecot's readers check): a body line "From here on..." after
an empty line, written by a careless tool without the ">" quote, is kept in the message.
The empty line before the next From_ line is the separator, not part of the message.
Quoted lines (``>From``, ``>>From``...) lose one ">" (mboxrd). ``Content-Length:`` is not
used to find message ends.

Flags come from the headers mail readers and Dovecot keep in mbox files: ``Status:``
(``R`` read = \\Seen; ``O`` old only says "not new") and ``X-Status:`` (``A`` \\Answered,
``F`` \\Flagged, ``T`` \\Draft, ``D`` \\Deleted), keywords from ``X-Keywords:``. Those
headers, and the other mbox bookkeeping headers (``X-UID``, ``X-IMAP``, ``X-IMAPbase``,
``Content-Length``), describe the mbox copy rather than the message and are removed, as
Dovecot hides them. The pseudo message UW-IMAP and Pine put first ("DON'T DELETE THIS
MESSAGE -- FOLDER INTERNAL DATA", with ``X-IMAP:``) is skipped.

The received date is the From_ line's date (read as UTC when it has no offset), else the
``Date:`` header. The key of a message (what makes an import resumable) is a hash of its
bytes with a counter, so identical messages in one file are all copied, and a file that
grew since the last run only has its new messages copied.

A folder of mbox files (Thunderbird's ``Mail/`` folders, UW-IMAP's ``~/mail``) is walked:
each file that starts with "From " is one mailbox named by its path, without the
``.mbox``/``.mbx`` suffixes and the ``.sbd`` suffix of Thunderbird's subfolder folders.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, ClassVar

from postroom.admin.importer import (
    FileFolder,
    FolderSkipped,
    ImportFailed,
    SourceFolder,
    SourceMessage,
    list_dir,
)
from postroom.admin.service import AdminError
from postroom.store.api import FLAG_ANSWERED, FLAG_DELETED, FLAG_DRAFT, FLAG_FLAGGED, FLAG_SEEN

READ_CHUNK = 1024 * 1024  # a longer line is read in pieces
STATUS_FLAGS = {"R": FLAG_SEEN}
X_STATUS_FLAGS = {"A": FLAG_ANSWERED, "F": FLAG_FLAGGED, "T": FLAG_DRAFT, "D": FLAG_DELETED}
DROP_HEADERS = (b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imap", b"x-imapbase",
                b"content-length")
INBOX_FILES = ("inbox", "mbox")
_FROM_LINE = re.compile(
    rb"^From \S*\s+.*?(?P<wd>Mon|Tue|Wed|Thu|Fri|Sat|Sun)?,?\s*(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul"
    rb"|Aug|Sep|Oct|Nov|Dec)\s+(?P<day>\d{1,2})\s+(?P<h>\d{1,2}):(?P<m>\d\d)(?::(?P<s>\d\d))?"
    rb"(?:\s+(?P<tz1>[A-Z]{1,5}|[+-]\d{4}))?\s+(?P<y>\d{4})(?:\s+(?P<tz2>[+-]\d{4}))?"
)
_QUOTED_FROM = re.compile(rb"^>+From ")
_MONTHS = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec"]


def from_line_date(line: bytes) -> int | None:
    """Seconds since the epoch of a From_ line's date, or None when there is none."""
    m = _FROM_LINE.match(line)
    if m is None:
        return None
    offset = 0
    tz = m.group("tz2") or m.group("tz1")
    if tz and tz[:1] in b"+-":
        sign = -1 if tz[:1] == b"-" else 1
        offset = sign * (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60)
    try:
        when = datetime.datetime(
            int(m.group("y")), _MONTHS.index(m.group("mon")) + 1, int(m.group("day")),
            int(m.group("h")), int(m.group("m")), int(m.group("s") or 0),
            tzinfo=datetime.UTC,
        )
    except ValueError:
        return None
    return int(when.timestamp()) - offset


def is_from_line(line: bytes) -> bool:
    return line.startswith(b"From ") and _FROM_LINE.match(line) is not None


def _lines(f: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, piece, starts a line) for every line of ``f``, long lines in pieces."""
    offset = 0
    at_start = True
    while True:
        piece = f.readline(READ_CHUNK)
        if not piece:
            return
        yield offset, piece, at_start
        offset += len(piece)
        at_start = piece.endswith(b"\n")


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one message lies in the file (From_ line excluded, separator excluded)."""

    key: str
    start: int
    end: int
    internaldate: int | None


def index_mbox(path: Path) -> list[Entry]:
    """One pass over the file: each message's place, received date and key.

    The key hashes exactly the message's bytes (From_ line and separator excluded), so it
    does not change when a writer later appends to the file.
    """
    entries: list[Entry] = []
    counts: dict[str, int] = {}
    start = -1
    when: int | None = None
    digest = hashlib.sha256()
    held = b""  # an empty line: the separator if a From_ line follows, else message text
    prev_blank = True

    def close(end: int) -> None:
        if start < 0:
            return
        h = digest.hexdigest()[:32]
        n = counts.get(h, 0)
        counts[h] = n + 1
        entries.append(Entry(f"{h}:{n}", start, end - len(held), when))

    with open(path, "rb") as f:
        for offset, piece, at_start in _lines(f):
            if at_start and prev_blank and piece.startswith(b"From ") and is_from_line(piece):
                close(offset)
                start, when = offset + len(piece), from_line_date(piece)
                digest, held, prev_blank = hashlib.sha256(), b"", False
                continue
            if start < 0:
                if piece.strip():
                    raise ImportFailed(f"{path}: not an mbox file (no From_ line first)")
                continue
            if held:
                digest.update(held)
                held = b""
            blank = at_start and piece in (b"\n", b"\r\n")
            if blank:
                held = piece
            else:
                digest.update(piece)
            prev_blank = blank
        close(f.tell())
    return entries


def parse_message(raw: bytes) -> tuple[bytes, int, tuple[str, ...], int | None, bool]:
    """(message bytes, flags, keywords, Date: header time, is the UW-IMAP pseudo message)."""
    lines = raw.split(b"\n")
    lines = [line[1:] if _QUOTED_FROM.match(line) else line for line in lines]
    data = b"\n".join(lines)
    head_end = _header_end(data)
    flags = 0
    keywords: list[str] = []
    kept: list[bytes] = []
    date: int | None = None
    pseudo = False
    for name, field_bytes in _fields(data[:head_end]):
        value = field_bytes.split(b":", 1)[1].strip() if b":" in field_bytes else b""
        if name == b"status":
            flags |= sum(bit for ch, bit in STATUS_FLAGS.items() if ch.encode() in value)
        elif name == b"x-status":
            flags |= sum(bit for ch, bit in X_STATUS_FLAGS.items() if ch.encode() in value)
        elif name == b"x-keywords":
            keywords += value.decode("utf-8", "replace").replace(",", " ").split()
        elif name == b"x-imap":
            pseudo = True
        elif name == b"date":
            date = _date_header(value)
        if name not in DROP_HEADERS:
            kept.append(field_bytes)
    if pseudo and b"FOLDER INTERNAL DATA" not in data[:head_end]:
        pseudo = False
    return b"".join(kept) + data[head_end:], flags, tuple(dict.fromkeys(keywords)), date, pseudo


def _header_end(data: bytes) -> int:
    m = re.search(rb"\r?\n\r?\n", data)
    return len(data) if m is None else m.start() + (2 if data[m.start()] == 13 else 1)


def _fields(head: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(lower-case name, whole field with its line ends) of each header field."""
    current: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            whole = b"".join(current)
            yield whole.split(b":", 1)[0].strip().lower(), whole
        current = [line]
    if current:
        whole = b"".join(current)
        yield whole.split(b":", 1)[0].strip().lower(), whole


def _date_header(value: bytes) -> int | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("ascii", "replace"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp())


@dataclass
class MboxFolder(FileFolder):
    scheme: ClassVar[str] = "mbox"
    _todo: list[Entry] = field(default_factory=list)

    async def pending(self, done: set[str]) -> int:
        try:
            entries = await asyncio.to_thread(index_mbox, self.path)
        except OSError as e:
            raise FolderSkipped(f"{self.path}: {e.strerror}") from None
        except ImportFailed as e:
            raise FolderSkipped(str(e)) from None
        self._todo = [e for e in entries if e.key not in done]
        return len(self._todo)

    async def messages(self) -> AsyncIterator[SourceMessage]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise ImportFailed(f"{self.path}: {e.strerror}") from None
        try:
            for entry in self._todo:
                size = entry.end - entry.start
                if size > self.max_size:
                    yield SourceMessage(key=entry.key, data=b"", size=size)
                    continue
                raw = await asyncio.to_thread(_read_at, f, entry.start, size)
                data, flags, keywords, date, pseudo = parse_message(raw)
                if pseudo:
                    continue
                when = entry.internaldate if entry.internaldate is not None else date
                yield SourceMessage(key=entry.key, data=data, flags=flags, keywords=keywords,
                                    internaldate=when)
        finally:
            f.close()


def _read_at(f: BinaryIO, start: int, size: int) -> bytes:
    f.seek(start)
    return f.read(size)


def is_mbox_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(5) == b"From "
    except OSError:
        return False


def _level(name: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def find_mbox_files(root: Path) -> list[tuple[tuple[str, ...], Path]]:
    """Every mbox file under a folder: (levels, path). Symbolic links are not followed."""
    found: list[tuple[tuple[str, ...], Path]] = []

    def walk(directory: Path, prefix: tuple[str, ...], depth: int) -> None:
        for entry in list_dir(directory, depth):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                walk(path, (*prefix, _level(entry.name, (".sbd",))), depth + 1)
            elif entry.is_file(follow_symlinks=False) and is_mbox_file(path):
                found.append(((*prefix, _level(entry.name, (".mbox", ".mbx"))), path))

    walk(root, (), 0)
    return found


def _inbox(levels: tuple[str, ...]) -> tuple[str, ...]:
    if len(levels) == 1 and levels[0].lower() in INBOX_FILES:
        return ("INBOX",)
    return levels


class MboxSource:
    """mbox files and folders of them; ``mailbox`` names the target of a single file."""

    def __init__(self, paths: list[Path], max_size: int, mailbox: str | None = None) -> None:
        self.paths = paths
        self.max_size = max_size
        self.mailbox = mailbox
        self.description = "mbox " + " ".join(str(p) for p in paths)

    async def folders(self) -> list[SourceFolder]:
        out: list[SourceFolder] = []
        for path in self.paths:
            if path.is_dir():
                found = await asyncio.to_thread(find_mbox_files, path)
                if not found:
                    raise AdminError(f"{path}: no mbox files in this folder")
                out += [MboxFolder(_inbox(levels), p, self.max_size) for levels, p in found]
            elif path.is_file():
                if self.mailbox is not None:
                    levels = tuple(self.mailbox.strip("/").split("/"))
                else:
                    levels = _inbox((_level(path.name, (".mbox", ".mbx")),))
                out.append(MboxFolder(levels, path, self.max_size))
            else:
                raise AdminError(f"{path}: no such file or folder")
        return out

    async def close(self) -> None:
        return None
