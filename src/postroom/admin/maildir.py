r"""Maildir on disk: reading it for ``postroom import``, the naming rules for ``export``.

A Maildir folder is a directory with ``cur/``, ``new/`` and ``tmp/``; each message is one
file. Its name is ``UNIQUE:2,INFO``, where INFO holds the flags as letters (Maildir spec,
cr.yp.to/proto/maildir.html; Dovecot's wiki "MailboxFormat/Maildir"):

* upper-case system flags, kept sorted: ``D`` \Draft, ``F`` \Flagged, ``P`` passed
  (forwarded: we map it to the ``$Forwarded`` keyword, RFC 5788), ``R`` replied
  (\Answered), ``S`` \Seen, ``T`` trashed (\Deleted);
* lower-case letters ``a``-``z`` are keywords, numbered by the folder's
  ``dovecot-keywords`` file (``0 $Label1`` names letter ``a``).

Messages in ``new/`` have no INFO yet (not seen by any client); ``tmp/`` holds files being
written and is ignored. The file's modification time is the message's received date
(Dovecot's INTERNALDATE), and the UNIQUE part stays the same when a client changes flags
or moves the file from ``new/`` to ``cur/``: it is the key that makes an import resumable.
When Dovecot's ``dovecot-uidlist`` is present, messages are copied in its UID order.

Two folder layouts are found, also mixed: Maildir++ (the root is INBOX; ``.Sent``,
``.Lists.python`` are folders, levels separated by "." and encoded in modified UTF-7,
used by Dovecot, Courier and postroom's export) and one directory per level (Dovecot's
``LAYOUT=fs``, mbsync's ``SubFolders Verbatim``). Symbolic links are not followed.

In Maildir++ a level cannot hold "." (the level separator). postroom writes and reads the
escapes of Dovecot's listescape plugin (with its default escape character): a "." inside
a level is ``\2e``, a backslash ``\5c``, a "/" ``\2f`` and a leading "~" ``\7e``; so
Dovecot with ``mail_plugins = listescape`` and the separator "/" shows the same names.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from postroom.admin.importer import (
    FileFolder,
    FolderSkipped,
    ImportFailed,
    SourceFolder,
    SourceMessage,
    list_dir,
)
from postroom.admin.service import AdminError
from postroom.proto.imap.utf7 import MailboxNameError, decode_utf7, encode_utf7
from postroom.store.api import (
    FLAG_ANSWERED,
    FLAG_DELETED,
    FLAG_DRAFT,
    FLAG_FLAGGED,
    FLAG_SEEN,
)

INFO_FLAGS: dict[str, int] = {
    "D": FLAG_DRAFT, "F": FLAG_FLAGGED, "R": FLAG_ANSWERED, "S": FLAG_SEEN, "T": FLAG_DELETED,
}
FLAG_LETTERS: tuple[tuple[int, str], ...] = tuple(
    sorted(((bit, letter) for letter, bit in INFO_FLAGS.items()), key=lambda x: x[1])
)
PASSED_KEYWORD = "$Forwarded"
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
KEYWORDS_FILE = "dovecot-keywords"
UIDLIST_FILE = "dovecot-uidlist"
_INFO_SEPARATORS = (":2,", ";2,", "!2,")  # ":" normally; ";" or "!" where ":" is not allowed
_ESCAPE_RE = re.compile(r"\\([0-9A-Fa-f]{2})")


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def split_name(filename: str) -> tuple[str, str]:
    """(unique part, INFO) of a message file name; INFO is "" when there is none."""
    for sep in _INFO_SEPARATORS:
        base, found, info = filename.rpartition(sep)
        if found:
            return base, info
    return filename, ""


def parse_info(info: str, keywords: dict[str, str]) -> tuple[int, tuple[str, ...]]:
    """Flag bits and keywords of an INFO string; unknown letters are ignored."""
    bits = 0
    names: list[str] = []
    for ch in info:
        if ch in INFO_FLAGS:
            bits |= INFO_FLAGS[ch]
        elif ch == "P":
            names.append(PASSED_KEYWORD)
        elif ch in keywords:
            names.append(keywords[ch])
    return bits, tuple(dict.fromkeys(names))


def format_info(flags: int, keyword_letters: str = "") -> str:
    """``2,`` followed by the flag letters in ASCII order (system flags, then keywords)."""
    return "2," + "".join(letter for bit, letter in FLAG_LETTERS if flags & bit) + "".join(
        sorted(keyword_letters)
    )


def read_keywords(folder: Path) -> dict[str, str]:
    """Letter -> keyword from ``dovecot-keywords`` (``N name`` per line, N from 0 to 25)."""
    out: dict[str, str] = {}
    try:
        text = (folder / KEYWORDS_FILE).read_text("utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines()[:1000]:
        number, _, name = line.partition(" ")
        if number.isdigit() and int(number) < len(KEYWORD_LETTERS) and name.strip():
            out[KEYWORD_LETTERS[int(number)]] = name.strip()
    return out


def read_uid_order(folder: Path) -> dict[str, int]:
    """Unique name -> UID from ``dovecot-uidlist`` (``UID [ext...] :name`` lines), if any."""
    order: dict[str, int] = {}
    try:
        with open(folder / UIDLIST_FILE, encoding="utf-8", errors="replace") as f:
            f.readline()  # the header: version, UIDVALIDITY, next UID
            for line in f:
                uid, _, rest = line.partition(" ")
                colon = rest.find(":")
                if uid.isdigit() and colon >= 0:
                    order[split_name(rest[colon + 1 :].strip())[0]] = int(uid)
    except OSError:
        pass
    return order


# -- folder names ----------------------------------------------------------------------
def decode_level(raw: str) -> str:
    """A Maildir++ level as stored on disk (escaped, modified UTF-7) -> the level's name."""
    text = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), raw)
    try:
        return decode_utf7(text.encode("utf-8", "surrogateescape"))
    except MailboxNameError:
        return text  # not modified UTF-7 (written by another tool): take it as it is


def encode_level(level: str) -> str:
    """A level's name -> its Maildir++ spelling: modified UTF-7, then listescape's escapes.

    The result never contains "/" (modified base64 uses ","), NUL or "." and is never
    empty for a non-empty name, so ``"." + levels joined with "."`` is always one
    directory entry directly inside the export's root.
    """
    text = encode_utf7(level).decode("ascii").replace("\\", "\\5c").replace(".", "\\2e")
    text = text.replace("/", "\\2f")
    return "\\7e" + text[1:] if text.startswith("~") else text


class UnsafeName(ValueError):
    pass


def folder_dirname(name: str) -> str | None:
    """The Maildir++ directory of a postroom mailbox name (None for INBOX: the root).

    A name with an empty level ("a//b", "/x": IMAP CREATE refuses them, older data may
    hold them) has no Maildir++ spelling, and joining it would give "." or ".." for the
    worst names: it is refused.
    """
    if name == "INBOX":
        return None
    levels = name.split("/")
    if not all(levels):
        raise UnsafeName(f"mailbox name {name!r} has an empty level (rename it first)")
    return "." + ".".join(encode_level(level) for level in levels)


def find_folders(root: Path) -> list[tuple[tuple[str, ...], Path]]:
    """Every Maildir folder under ``root``: (levels, path), INBOX first when there is one."""
    found: list[tuple[tuple[str, ...], Path]] = []
    if is_maildir(root):
        found.append((("INBOX",), root))

    def walk(directory: Path, prefix: tuple[str, ...], depth: int) -> None:
        for entry in list_dir(directory, depth):
            if not entry.is_dir(follow_symlinks=False) or entry.name in ("cur", "new", "tmp"):
                continue
            path = Path(entry.path)
            if entry.name.startswith("."):
                # Maildir++: only directly inside the root, never "." or ".."
                if depth == 0 and entry.name not in (".", "..") and is_maildir(path):
                    levels = tuple(decode_level(p) for p in entry.name[1:].split("."))
                    found.append((levels, path))
                continue
            levels = (*prefix, decode_level(entry.name))
            if is_maildir(path):
                found.append((levels, path))
            walk(path, levels, depth + 1)

    walk(root, (), 0)
    return found


# -- the import source -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _File:
    key: str
    path: Path
    info: str
    mtime: int
    size: int


@dataclass
class MaildirFolder(FileFolder):
    scheme: ClassVar[str] = "maildir"
    _todo: list[_File] = field(default_factory=list)

    def _scan(self) -> list[_File]:
        files: dict[str, _File] = {}
        for sub in ("new", "cur"):  # a file moved from new/ to cur/ meanwhile: cur wins
            try:
                entries = list(os.scandir(self.path / sub))
            except OSError as e:
                raise FolderSkipped(f"{self.path / sub}: {e.strerror}") from None
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                key, info = split_name(entry.name)
                st = entry.stat(follow_symlinks=False)
                files[key] = _File(key, Path(entry.path), info, int(st.st_mtime), st.st_size)
        uids = read_uid_order(self.path)
        big = 1 << 62
        return sorted(files.values(), key=lambda f: (uids.get(f.key, big), f.mtime, f.key))

    async def pending(self, done: set[str]) -> int:
        scanned = await asyncio.to_thread(self._scan)
        self._todo = [f for f in scanned if f.key not in done]
        return len(self._todo)

    async def messages(self) -> AsyncIterator[SourceMessage]:
        keywords = await asyncio.to_thread(read_keywords, self.path)
        for f in self._todo:
            flags, names = parse_info(f.info, keywords)
            if f.size > self.max_size:
                yield SourceMessage(key=f.key, data=b"", size=f.size)
                continue
            try:
                data = await asyncio.to_thread(_read, f, self.path)
            except FileNotFoundError:
                continue  # expunged by a client since the scan
            yield SourceMessage(key=f.key, data=data, flags=flags, keywords=names,
                                internaldate=f.mtime)


def _read(f: _File, folder: Path) -> bytes:
    try:
        return f.path.read_bytes()
    except FileNotFoundError:
        # A client renamed it (new flags, or new/ -> cur/) since the scan: find it again.
        for sub in ("cur", "new"):
            for candidate in (folder / sub).glob(f"{glob_escape(f.key)}*"):
                if split_name(candidate.name)[0] == f.key:
                    return candidate.read_bytes()
        raise
    except OSError as e:
        raise ImportFailed(f"{f.path}: {e.strerror}") from None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


class MaildirSource:
    """Every folder under a Maildir root (see the module docstring for the layouts)."""

    def __init__(self, root: Path, max_size: int) -> None:
        self.root = root
        self.max_size = max_size
        self.description = f"maildir {root}"

    async def folders(self) -> list[SourceFolder]:
        if not self.root.is_dir():
            raise AdminError(f"{self.root}: not a folder")
        found = await asyncio.to_thread(find_folders, self.root)
        if not found:
            raise AdminError(f"{self.root}: no Maildir here (no cur/ and new/ folders)")
        return [MaildirFolder(levels, path, self.max_size) for levels, path in found]

    async def close(self) -> None:
        return None

