"""``postroom export``: a user's mailboxes as a Maildir++ tree that Dovecot serves as is.

Layout (Dovecot's default ``maildir:~/Maildir``): INBOX is the root folder (``cur/``,
``new/``, ``tmp/``), every other mailbox a directory ``.Level1.Level2`` directly inside it,
levels in modified UTF-7 with "." escaped as Dovecot's listescape plugin does
(``admin/maildir.py``). A mailbox name is therefore always exactly one directory entry
inside the destination, whatever it holds ("..", "/", "~" or control characters):
nothing is ever written outside the destination.
Directories that are symbolic links are refused, and message files are created with
``O_EXCL | O_NOFOLLOW``, so a link planted in the destination cannot redirect a write.

Each message is one file in ``cur/``, named from stable values so that a second export
into the same folder skips what is there, renames files whose flags changed and adds new
messages (it never deletes): ``INTERNALDATE.VUIDVALIDITYIUID.HOST,S=SIZE,W=SIZE:2,FLAGS``.
The bytes are the stored bytes (CRLF line endings, which Dovecot reads as they are), the
file's modification time is INTERNALDATE, flags and up to 26 keywords per mailbox are in
the name (``dovecot-keywords`` numbers the keywords), and ``dovecot-uidlist`` keeps the
UIDs and UIDVALIDITY, so IMAP clients pointed at Dovecot afterwards need not download
everything again.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postroom.admin.maildir import (
    KEYWORD_LETTERS,
    KEYWORDS_FILE,
    UIDLIST_FILE,
    UnsafeName,
    folder_dirname,
    format_info,
    read_keywords,
    split_name,
)
from postroom.admin.progress import Progress
from postroom.admin.service import AdminError, _address
from postroom.store.api import Mailbox, MessageMeta, Store, User
from postroom.store.sqlite.fsync import fsync_dir

READ_MESSAGES = 100
READ_OCTETS = 8 * 1024 * 1024
_HOST_SAFE = re.compile(r"[^A-Za-z0-9.-]")


@dataclass
class MailboxExport:
    mailbox: str
    directory: str | None
    written: int = 0
    unchanged: int = 0
    renamed: int = 0
    keywords_dropped: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"mailbox": self.mailbox, "directory": self.directory, "written": self.written,
                "unchanged": self.unchanged, "renamed": self.renamed,
                "keywords_dropped": self.keywords_dropped, "error": self.error}


@dataclass
class ExportReport:
    user: str
    destination: str
    mailboxes: list[MailboxExport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(m.error is None for m in self.mailboxes)

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "destination": self.destination, "ok": self.ok,
                "written": sum(m.written for m in self.mailboxes),
                "mailboxes": [m.as_dict() for m in self.mailboxes]}


class UnsafeDestination(AdminError):
    pass


def safe_dir(parent: Path, name: str) -> Path:
    """``parent/name`` as a real directory (created 0700 if missing), never through a link."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafeDestination(f"refusing directory name {name!r}")
    path = parent / name
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDestination(f"{path} exists and is not a folder (or is a symbolic link)")
    return path


def address_dirname(address: str) -> str:
    """A folder name for a user in ``export --all`` (one entry, never hidden or a path)."""
    name = address.replace("%", "%25").replace("/", "%2F")
    return "%2E" + name[1:] if name.startswith(".") else name


def _write_new(path: Path, data: bytes, mtime: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.utime(path, (mtime, mtime), follow_symlinks=False)


class _Folder:
    """One mailbox's Maildir: what is there already, and how to add to it."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host
        self.cur = safe_dir(path, "cur")
        safe_dir(path, "new")
        self.tmp = safe_dir(path, "tmp")
        self.existing: dict[str, tuple[str, int]] = {}  # unique -> (file name, size)
        for entry in os.scandir(self.cur):
            if entry.is_file(follow_symlinks=False):
                unique, _ = split_name(entry.name)
                self.existing[unique] = (entry.name, entry.stat(follow_symlinks=False).st_size)

    def unique(self, mailbox: Mailbox, meta: MessageMeta) -> str:
        return (f"{meta.internaldate}.V{mailbox.uidvalidity}I{meta.uid}.{self.host}"
                f",S={meta.size},W={meta.size}")

    def write(self, unique: str, info: str, data: bytes, mtime: int) -> None:
        tmp = self.tmp / unique
        try:
            os.unlink(tmp)  # left by an interrupted run
        except FileNotFoundError:
            pass
        _write_new(tmp, data, mtime)
        os.rename(tmp, self.cur / f"{unique}:{info}")


async def export_mailbox(
    store: Store, mailbox: Mailbox, folder: _Folder, report: MailboxExport, progress: Progress
) -> None:
    messages = await store.list_messages(mailbox.id)
    progress.phase(mailbox.name, len(messages))
    # Letters already given (by an earlier export, or Dovecot) keep their meaning.
    known = await asyncio.to_thread(read_keywords, folder.path)
    letters = {name: letter for letter, name in sorted(known.items())}
    for meta in messages:
        for keyword in meta.keywords:
            if keyword not in letters:
                free = [c for c in KEYWORD_LETTERS if c not in letters.values()]
                if free:
                    letters[keyword] = free[0]
    todo: list[tuple[MessageMeta, str, str]] = []
    uidlist: list[str] = []
    for meta in messages:
        unique = folder.unique(mailbox, meta)
        kw = "".join(letters[k] for k in meta.keywords if k in letters)
        report.keywords_dropped += sum(1 for k in meta.keywords if k not in letters)
        info = format_info(meta.flags, kw)
        uidlist.append(f"{meta.uid} :{unique}\n")
        have = folder.existing.get(unique)
        if have is not None and have[1] == meta.size:
            if split_name(have[0])[1] != info[2:]:
                await asyncio.to_thread(
                    os.rename, folder.cur / have[0], folder.cur / f"{unique}:{info}")
                report.renamed += 1
            else:
                report.unchanged += 1
            progress.advance(1)
            continue
        if have is not None:  # a torn file from an interrupted run: write it again
            await asyncio.to_thread(os.unlink, folder.cur / have[0])
        todo.append((meta, unique, info))
    batch: list[tuple[MessageMeta, str, str]] = []
    octets = 0
    for item in todo:
        batch.append(item)
        octets += item[0].size
        if len(batch) >= READ_MESSAGES or octets >= READ_OCTETS:
            await _write_batch(store, folder, batch, report, progress)
            batch, octets = [], 0
    if batch:
        await _write_batch(store, folder, batch, report, progress)
    keywords = "".join(f"{KEYWORD_LETTERS.index(c)} {k}\n"
                       for k, c in sorted(letters.items(), key=lambda kc: kc[1]))
    header = f"3 V{mailbox.uidvalidity} N{mailbox.uidnext}\n"
    if keywords or (folder.path / KEYWORDS_FILE).exists():
        await asyncio.to_thread(_replace, folder.path / KEYWORDS_FILE, keywords.encode())
    await asyncio.to_thread(_replace, folder.path / UIDLIST_FILE, (header + "".join(uidlist)).encode())
    await asyncio.to_thread(fsync_dir, folder.cur)


async def _write_batch(
    store: Store, folder: _Folder, batch: list[tuple[MessageMeta, str, str]],
    report: MailboxExport, progress: Progress,
) -> None:
    blobs = await store.read_blobs([m.blob_id for m, _, _ in batch])

    def write_all() -> int:
        n = 0
        for meta, unique, info in batch:
            data = blobs.get(meta.blob_id)
            if data is None:
                continue  # expunged meanwhile
            folder.write(unique, info, data, meta.internaldate)
            n += 1
        return n

    written = await asyncio.to_thread(write_all)
    report.written += written
    progress.advance(len(batch), sum(m.size for m, _, _ in batch))


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    _write_new(tmp, data, int(time.time()))
    os.replace(tmp, path)


async def export_user(
    store: Store,
    address: str,
    destination: Path,
    *,
    hostname: str,
    mailboxes: list[str] | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Export ``address``'s mailboxes (all, or the named ones) into ``destination``."""
    progress = progress or Progress()
    user: User | None = await store.get_user(_address(address))
    if user is None:
        raise AdminError(f"no user {address}")
    host = _HOST_SAFE.sub("_", hostname) or "postroom"
    try:
        destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise AdminError(f"{destination}: {e.strerror}") from None
    if destination.is_symlink() or not destination.is_dir():
        raise AdminError(f"{destination} is not a folder")
    report = ExportReport(user=user.address, destination=str(destination))
    found = {mb.name: mb for mb in await store.list_mailboxes(user.id)}
    names = mailboxes if mailboxes else sorted(found, key=lambda n: (n != "INBOX", n))
    for name in names:
        mb = found.get(name)
        if mb is None:
            raise AdminError(f"{user.address} has no mailbox {name!r}")
        entry = MailboxExport(mailbox=name, directory=None)
        report.mailboxes.append(entry)
        try:
            dirname = folder_dirname(name)
            entry.directory = dirname or "."
            path = destination if dirname is None else safe_dir(destination, dirname)
            folder = await asyncio.to_thread(_Folder, path, host)
            await export_mailbox(store, mb, folder, entry, progress)
        except (UnsafeDestination, UnsafeName, OSError) as e:
            entry.error = getattr(e, "strerror", None) or str(e)
            progress.note(f"{name}: {entry.error}: mailbox not exported")
            continue
        progress.finish(
            f"{name}: {entry.written} written, {entry.unchanged} unchanged, {entry.renamed} "
            "with new flags" + (f", {entry.keywords_dropped} keywords beyond 26 left out"
                                if entry.keywords_dropped else "")
        )
    return report


async def export_all(
    store: Store, destination: Path, *, hostname: str, progress: Progress | None = None
) -> list[ExportReport]:
    """Every user into ``destination/ADDRESS/`` (see :func:`address_dirname`)."""
    try:
        destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise AdminError(f"{destination}: {e.strerror}") from None
    reports = []
    for user in await store.list_users():
        target = safe_dir(destination, address_dirname(user.address))
        reports.append(await export_user(store, user.address, target, hostname=hostname,
                                         progress=progress))
    return reports
