"""``postroom import``: copy mail from another system into a user's mailboxes.

Sources (Maildir, mbox, a running IMAP server: ``admin/maildir.py``, ``admin/mbox.py``,
``admin/imap_source.py``) only list folders and yield messages; everything they have in
common happens here, once:

* **Names.** A source folder is a list of hierarchy levels; it becomes a postroom mailbox
  name joined with "/" and is checked with the same policy as IMAP CREATE
  (``check_new_name``). A folder whose name is refused is reported and left out; the
  others go on. A source folder marked with a special-use attribute (RFC 6154: ``\\Sent``,
  ``\\Trash``...) goes into the user's mailbox with that attribute (Outlook's "Sent Items"
  lands in "Sent"), unless everything is put under a prefix (``into``). A folder whose
  first level is postroom's other-users namespace (``Shared``: a source's shared folders,
  or a hostile server's choice of name) goes under ``Shared (imported)`` instead; kept as
  it is, it would be a personal mailbox hidden behind that namespace, never readable.
* **Messages** are stored as IMAP APPEND stores them: line endings normalised to CRLF
  (``deliver.normalize``), parse summary computed once. Nothing is added or removed.
  Messages over ``limits.message_size`` and keywords that are not IMAP atoms are left out
  and reported. The user's quota applies as for APPEND: a batch that does not fit stops
  the import (nothing of it is stored), and a run after the quota is raised resumes.
* **Resuming.** Every message has a key in its origin (one origin per source folder). The
  store records the key in the same transaction as the message
  (:meth:`Store.import_messages`), and a run first asks which keys are recorded, so an
  interrupted import (Ctrl-C, kill -9, a dropped connection) copies exactly what is missing
  when run again, and a finished one copies nothing. Messages deleted since by the user are
  not brought back.
* **Speed.** Messages are written in batches (one transaction and one fsync per batch),
  and the next batch is read from the source while the previous one commits.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from postroom import deliver
from postroom.admin.progress import Progress
from postroom.admin.service import AdminError
from postroom.net.imap.access import SHARED_PREFIX
from postroom.proto.imap.utf7 import DELIMITER, INBOX, MailboxNameError, check_new_name
from postroom.store.api import (
    MAX_KEYWORD_LENGTH,
    AlreadyExists,
    ImportedMessage,
    Mailbox,
    NewMessage,
    OverQuota,
    Store,
    User,
)

BATCH_MESSAGES = 200
BATCH_OCTETS = 8 * 1024 * 1024
SUMMARIZE_IN_THREAD = 256 * 1024
# RFC 9051 9: flag-keyword = atom (ATOM-CHAR: no "(" ")" "{" SP CTL "%" "*" DQUOTE "\\" "]")
_KEYWORD = re.compile(r"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")


class ImportFailed(AdminError):
    """The source failed midway (connection lost, unreadable file): what was copied stays
    and a new run resumes."""


class FolderSkipped(Exception):
    """One folder cannot be copied (the reason is the message); the others go on."""


@dataclass(frozen=True, slots=True)
class SourceMessage:
    key: str  # unique within the folder's origin, stable across runs
    data: bytes = field(repr=False)
    flags: int = 0
    keywords: tuple[str, ...] = ()
    internaldate: int | None = None
    # Set (with empty ``data``) when the source did not read a message because its size
    # is over the limit the source was given.
    size: int | None = None


class SourceFolder(Protocol):
    @property
    def levels(self) -> tuple[str, ...]:
        """Hierarchy levels as the source names them; ("INBOX",) for the inbox."""
        ...

    @property
    def origin(self) -> str:
        """Names this folder in this source, stable across runs."""
        ...

    @property
    def special_use(self) -> str | None:
        """RFC 6154 attribute (``\\Sent``...) when the source says so."""
        ...

    async def pending(self, done: set[str]) -> int:
        """Prepare to yield the messages whose keys are not in ``done``; return how many."""
        ...

    def messages(self) -> AsyncIterator[SourceMessage]:
        """The pending messages, in the source's order (``pending`` was called first)."""
        ...


@dataclass
class FileFolder:
    """A source folder on this machine (a Maildir folder, an mbox file): its origin is the
    scheme and the real path, so a run through a symbolic link or another relative path
    resumes the same import."""

    scheme: ClassVar[str] = "file"
    levels: tuple[str, ...]
    path: Path
    max_size: int  # a message over it is reported, not read
    special_use: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.scheme}:{os.path.realpath(self.path)}"


IMPORTED_SHARED = f"{SHARED_PREFIX} (imported)"  # where a source's "Shared/..." folders go
MAX_DEPTH = 32  # folder levels followed when walking a source on disk


def list_dir(directory: Path, depth: int) -> list[os.DirEntry[str]]:
    """Entries of ``directory`` by name; none past ``MAX_DEPTH`` or when unreadable."""
    if depth > MAX_DEPTH:
        return []
    try:
        return sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []


class Source(Protocol):
    description: str

    async def folders(self) -> list[SourceFolder]: ...
    async def close(self) -> None: ...


@dataclass
class FolderReport:
    source: str
    mailbox: str | None
    copied: int = 0
    already: int = 0  # copied by an earlier run
    skipped: int = 0  # left out (too big, unreadable)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "mailbox": self.mailbox, "copied": self.copied,
                "already": self.already, "skipped": self.skipped, "error": self.error}


@dataclass
class ImportReport:
    user: str
    source: str
    folders: list[FolderReport] = field(default_factory=list)
    interrupted: str | None = None

    @property
    def copied(self) -> int:
        return sum(f.copied for f in self.folders)

    @property
    def ok(self) -> bool:
        return self.interrupted is None and all(
            f.error is None and not f.skipped for f in self.folders
        )

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "source": self.source, "copied": self.copied,
                "already": sum(f.already for f in self.folders),
                "skipped": sum(f.skipped for f in self.folders), "ok": self.ok,
                "interrupted": self.interrupted, "folders": [f.as_dict() for f in self.folders]}


def mailbox_name(levels: Sequence[str], into: str | None = None) -> str:
    """The postroom name of a source folder: levels joined with "/", INBOX spelled so.

    A "/" inside a level (possible where the source's delimiter is ".") would silently
    add a level, so it becomes "_". The result must pass IMAP CREATE's policy.
    """
    clean = [level.replace(DELIMITER, "_") for level in levels]
    if clean and clean[0].upper() == INBOX:
        clean[0] = INBOX
    if clean and clean[0] == SHARED_PREFIX and not into:
        clean[0] = IMPORTED_SHARED
    name = DELIMITER.join(clean)
    if into:
        name = f"{into.strip(DELIMITER)}{DELIMITER}{name}"
    check_new_name(name)
    return name


def clean_keywords(keywords: Sequence[str]) -> tuple[tuple[str, ...], int]:
    """Keywords that are valid IMAP atoms (and not too long); how many were dropped."""
    kept = tuple(k for k in keywords if len(k) <= MAX_KEYWORD_LENGTH and _KEYWORD.fullmatch(k))
    return kept, len(keywords) - len(kept)


class Importer:
    """Copies one source into one user's mailboxes (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        user: User,
        *,
        message_size: int,
        into: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.user = user
        self.message_size = message_size
        self.into = into
        self.progress = progress or Progress()
        self._mailboxes: dict[str, Mailbox] = {}

    async def run(self, source: Source) -> ImportReport:
        report = ImportReport(user=self.user.address, source=source.description)
        for mb in await self.store.list_mailboxes(self.user.id):
            self._mailboxes[mb.name] = mb
        try:
            for folder in await source.folders():
                await self._folder(folder, report)
        except ImportFailed as e:
            report.interrupted = str(e)
        finally:
            await source.close()
        return report

    def _target(self, folder: SourceFolder) -> str:
        if folder.special_use and not self.into:
            for mb in self._mailboxes.values():
                if mb.special_use and mb.special_use.lower() == folder.special_use.lower():
                    return mb.name
        return mailbox_name(folder.levels, self.into)

    async def _mailbox(self, name: str) -> Mailbox:
        mb = self._mailboxes.get(name)
        if mb is None:
            try:
                mb = await self.store.create_mailbox(self.user.id, name)
            except AlreadyExists:  # created meanwhile (by a client, or a parallel run)
                found = await self.store.get_mailbox(self.user.id, name)
                assert found is not None
                mb = found
            # Subscribed, so that clients showing only subscribed folders show it.
            await self.store.set_subscribed(self.user.id, name, True)
            self._mailboxes[name] = mb
        return mb

    async def _folder(self, folder: SourceFolder, report: ImportReport) -> None:
        shown = DELIMITER.join(folder.levels)
        entry = FolderReport(source=shown, mailbox=None)
        report.folders.append(entry)
        try:
            name = self._target(folder)
        except MailboxNameError as e:
            entry.error = f"{e}: folder left out"
            self.progress.note(f"{shown}: {entry.error}")
            return
        entry.mailbox = name
        self.progress.phase(f"{shown}: listing", None)
        done = await self.store.imported_keys(self.user.id, folder.origin)
        try:
            todo = await folder.pending(done)
        except FolderSkipped as e:
            entry.error = f"{e}: folder left out"
            self.progress.note(f"{shown}: {entry.error}")
            return
        mailbox = await self._mailbox(name)
        entry.already = len(done)
        label = shown if shown == name else f"{shown} -> {name}"
        self.progress.phase(label, todo)
        batch: list[ImportedMessage] = []
        octets = 0
        writing: asyncio.Task[None] | None = None

        async def write(items: list[ImportedMessage], size: int) -> None:
            try:
                uids = await self.store.import_messages(mailbox.id, folder.origin, items)
            except OverQuota:
                raise ImportFailed(
                    f"{self.user.address} is over quota in {name}: raise it "
                    f"(`postroom user quota`) and run the import again"
                ) from None
            added = sum(1 for u in uids if u)
            entry.copied += added
            entry.already += len(uids) - added
            self.progress.advance(len(items), size)

        try:
            async for msg in folder.messages():
                item = await self._prepare(msg, shown, entry)
                if item is None:
                    self.progress.advance(1)
                    continue
                batch.append(item)
                octets += len(item.message.data)
                if len(batch) >= BATCH_MESSAGES or octets >= BATCH_OCTETS:
                    if writing is not None:
                        await writing  # at most one batch commits while the next is read
                    writing = asyncio.create_task(write(batch, octets))
                    batch, octets = [], 0
        finally:
            if writing is not None:
                await writing
        if batch:
            await write(batch, octets)
        self.progress.finish(
            f"{label}: {entry.copied} copied, {entry.already} already there"
            + (f", {entry.skipped} left out" if entry.skipped else "")
        )

    async def _prepare(
        self, msg: SourceMessage, folder: str, entry: FolderReport
    ) -> ImportedMessage | None:
        size = msg.size if msg.size is not None else len(msg.data)
        if size > self.message_size:
            entry.skipped += 1
            self.progress.note(
                f"{folder}: message {msg.key} is larger than limits.message_size "
                f"({size} > {self.message_size} octets): left out"
            )
            return None
        if not msg.data:
            entry.skipped += 1
            self.progress.note(f"{folder}: message {msg.key} is empty: left out")
            return None
        data = deliver.normalize(msg.data)
        if len(data) > SUMMARIZE_IN_THREAD:
            summary = await asyncio.get_running_loop().run_in_executor(None, deliver.summarize, data)
        else:
            summary = deliver.summarize(data)
        keywords, dropped = clean_keywords(msg.keywords)
        if dropped:
            self.progress.note(f"{folder}: message {msg.key}: {dropped} keyword(s) that are "
                               "not IMAP atoms left out")
        return ImportedMessage(msg.key, NewMessage(data, summary, msg.flags, keywords,
                                                   msg.internaldate))


async def import_into(
    store: Store,
    address: str,
    source: Source,
    *,
    message_size: int,
    into: str | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Import ``source`` into the user ``address`` (who must exist)."""
    from postroom.admin.service import _address

    user = await store.get_user(_address(address))
    if user is None:
        await source.close()
        raise AdminError(f"no user {address} (create it first with `postroom user add`)")
    if into is not None:
        try:
            check_new_name(into.strip(DELIMITER))
        except MailboxNameError as e:
            await source.close()
            raise AdminError(f"--into {into!r}: {e}") from None
    importer = Importer(store, user, message_size=message_size, into=into, progress=progress)
    return await importer.run(source)
