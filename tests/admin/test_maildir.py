"""Maildir naming rules (admin/maildir.py): flags in file names, folder names on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.admin.maildir import (
    PASSED_KEYWORD,
    decode_level,
    encode_level,
    find_folders,
    folder_dirname,
    format_info,
    parse_info,
    read_keywords,
    read_uid_order,
    split_name,
    UnsafeName,
)
from postroom.store.api import FLAG_ANSWERED, FLAG_DELETED, FLAG_DRAFT, FLAG_FLAGGED, FLAG_SEEN

ALL = FLAG_SEEN | FLAG_ANSWERED | FLAG_FLAGGED | FLAG_DELETED | FLAG_DRAFT


def test_info_letters() -> None:
    keywords = {"a": "$Label1", "c": "project-x"}
    assert parse_info("DFPRSTac", keywords) == (ALL, (PASSED_KEYWORD, "$Label1", "project-x"))
    assert parse_info("Sz", keywords) == (FLAG_SEEN, ())  # unknown letters are ignored
    assert parse_info("", keywords) == (0, ())
    # Letters in ASCII order, as the Maildir spec asks (mutt and Dovecot compare names).
    assert format_info(ALL, "ca") == "2,DFRSTac"
    assert format_info(0) == "2,"


def test_split_name() -> None:
    assert split_name("1700000000.M1P2.host,S=12:2,RS") == ("1700000000.M1P2.host,S=12", "RS")
    assert split_name("1700000000.M1P2.host") == ("1700000000.M1P2.host", "")
    assert split_name("x;2,S") == ("x", "S")  # the separator some Windows tools use
    assert split_name("a:2,b:2,S") == ("a:2,b", "S")


@given(st.integers(0, ALL), st.sets(st.sampled_from("abcdefghijklmnopqrstuvwxyz")))
def test_info_roundtrip(flags: int, letters: set[str]) -> None:
    keywords = {c: f"kw-{c}" for c in "abcdefghijklmnopqrstuvwxyz"}
    info = format_info(flags, "".join(letters))
    assert info.startswith("2,")
    assert parse_info(info[2:], keywords) == (flags, tuple(f"kw-{c}" for c in sorted(letters)))


NAMES = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)


@given(NAMES)
def test_level_roundtrip_and_safety(level: str) -> None:
    encoded = encode_level(level)
    assert decode_level(encoded) == level
    assert encoded and "/" not in encoded and "." not in encoded and "\0" not in encoded
    assert encoded.isascii() and not encoded.startswith("~")


@given(st.one_of(NAMES, st.lists(st.sampled_from(["", ".", "..", "/", "~", "a.b", "\\"]),
                                 min_size=1, max_size=4).map("/".join)))
def test_folder_dirname_is_one_entry(name: str) -> None:
    levels = name.split("/")
    if not all(levels):
        with pytest.raises(UnsafeName):
            folder_dirname(name)
        return
    dirname = folder_dirname(name)
    if name == "INBOX":
        assert dirname is None
        return
    assert dirname is not None and dirname.startswith(".") and dirname not in (".", "..")
    assert "/" not in dirname and "\0" not in dirname
    assert Path("/export", dirname).parent == Path("/export")
    assert [decode_level(p) for p in dirname[1:].split(".")] == levels


def test_dovecot_files(tmp_path: Path) -> None:
    (tmp_path / "dovecot-keywords").write_text("0 $Label1\n1 $Forwarded\nbogus\n30 too-far\n3 Junk\n")
    assert read_keywords(tmp_path) == {"a": "$Label1", "b": "$Forwarded", "d": "Junk"}
    assert read_keywords(tmp_path / "missing") == {}
    (tmp_path / "dovecot-uidlist").write_text(
        "3 V1234 N5 Gabc\n1 :1000.M1.h,S=3\n3 W55 :1002.M3.h,S=9,W=10:2,S\nbroken\n"
    )
    assert read_uid_order(tmp_path) == {"1000.M1.h,S=3": 1, "1002.M3.h,S=9,W=10": 3}


def maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def test_find_folders_both_layouts(tmp_path: Path) -> None:
    root = maildir(tmp_path / "Maildir")
    maildir(root / ".Sent")
    maildir(root / ".Lists.python")
    maildir(root / ".a\\2eb")
    maildir(root / ".&AMU-rsrapport")
    (root / ".not-a-maildir").mkdir()
    # One directory per level (Dovecot LAYOUT=fs, mbsync Verbatim), beside Maildir++.
    maildir(root / "Archive")
    maildir(root / "Archive" / "2023")
    (root / "Projects").mkdir()
    maildir(root / "Projects" / "x")
    os.symlink(root / ".Sent", root / ".Linked")
    os.symlink(root / "Archive", root / "Loop")
    found = {levels: path.relative_to(root) for levels, path in find_folders(root)}
    assert found == {
        ("INBOX",): Path("."),
        ("Sent",): Path(".Sent"),
        ("Lists", "python"): Path(".Lists.python"),
        ("a.b",): Path(".a\\2eb"),
        ("Årsrapport",): Path(".&AMU-rsrapport"),
        ("Archive",): Path("Archive"),
        ("Archive", "2023"): Path("Archive/2023"),
        ("Projects", "x"): Path("Projects/x"),
    }
    assert find_folders(tmp_path / "missing") == []
