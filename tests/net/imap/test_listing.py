"""LIST/LSUB pattern matching (net/imap/listing.py): RFC semantics, and linear time.

RFC 9051 6.3.9 (RFC 3501 6.3.8): ``*`` matches zero or more characters, ``%`` the same
except the hierarchy delimiter ("/" here); the reference and the pattern are joined;
INBOX is case-insensitive (RFC 9051 5.1), so is the INBOX part of its children's names.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom.net.imap.listing import Matcher, canonical_pattern, list_entries, lsub_entries
from postroom.proto.imap.utf7 import normalize_inbox
from postroom.store.api import Mailbox

NAMES = [
    "INBOX", "INBOX/Receipts", "INBOX/Receipts/2024", "Sent", "Drafts", "Archive",
    "Archive/2023", "Archive/2024", "Archive/2024/Q1", "inbound", "Inbound", "a%b", "a*b",
    "Foo.bar", "Fooxbar", "x", "Projekte/Übersicht",
]

TABLE = [
    # (reference, pattern, names that match, in NAMES order)
    ("", "*", NAMES),
    ("", "%", ["INBOX", "Sent", "Drafts", "Archive", "inbound", "Inbound", "a%b", "a*b",
               "Foo.bar", "Fooxbar", "x"]),
    ("", "INBOX", ["INBOX"]),
    ("", "inbox", ["INBOX"]),  # RFC 9051 5.1
    ("", "InBoX/%", ["INBOX/Receipts"]),
    ("", "inbox/*", ["INBOX/Receipts", "INBOX/Receipts/2024"]),
    ("", "inb%", ["INBOX", "inbound"]),  # only INBOX's own letters ignore case
    ("", "Inb%", ["INBOX", "Inbound"]),
    ("", "Archive/%", ["Archive/2023", "Archive/2024"]),
    ("", "Archive/*", ["Archive/2023", "Archive/2024", "Archive/2024/Q1"]),
    ("Archive/", "%", ["Archive/2023", "Archive/2024"]),  # RFC 9051 6.3.9: joined
    ("Archive/", "*/Q%", ["Archive/2024/Q1"]),
    ("", "*/*", ["INBOX/Receipts", "INBOX/Receipts/2024", "Archive/2023", "Archive/2024",
                 "Archive/2024/Q1", "Projekte/Übersicht"]),
    ("", "%/%", ["INBOX/Receipts", "Archive/2023", "Archive/2024", "Projekte/Übersicht"]),
    ("", "*4", ["INBOX/Receipts/2024", "Archive/2024"]),
    ("", "%4", []),
    ("", "*2*", ["INBOX/Receipts/2024", "Archive/2023", "Archive/2024", "Archive/2024/Q1"]),
    ("", "A%2%", []),  # % never crosses "/"
    ("", "A*2%", ["Archive/2023", "Archive/2024"]),
    ("", "Foo.bar", ["Foo.bar"]),  # "." is not a wildcard
    ("", "a%b", ["a%b", "a*b"]),  # (such names cannot be created; old ones still list)
    ("", "x%", ["x"]),
    ("", "x*", ["x"]),
    ("", "*%*%*%x", ["x"]),
    ("", "Projekte/*", ["Projekte/Übersicht"]),
    ("", "*ü*", []),  # case matters outside INBOX
    ("", "*Ü*", ["Projekte/Übersicht"]),
    ("", "", []),
]


@pytest.mark.parametrize(("reference", "pattern", "expected"), TABLE)
def test_pattern_table(reference: str, pattern: str, expected: list[str]) -> None:
    match = Matcher([canonical_pattern(reference, pattern)])
    assert [n for n in NAMES if match(n)] == expected


def test_several_patterns_are_or_ed() -> None:
    match = Matcher(["Sent", "Archive/%"])
    assert [n for n in NAMES if match(n)] == ["Sent", "Archive/2023", "Archive/2024"]


def reference_match(pattern: str, name: str) -> bool:
    """The definition as a table: ok[j] is "the pattern so far matches name[:j]"."""
    ok = [True] + [False] * len(name)
    for ch in pattern:
        new = [False] * (len(name) + 1)
        if ch in "*%":
            new[0] = ok[0]
            for j in range(1, len(name) + 1):
                new[j] = ok[j] or (new[j - 1] and (ch == "*" or name[j - 1] != "/"))
        else:
            for j in range(1, len(name) + 1):
                new[j] = ok[j - 1] and name[j - 1] == ch
        ok = new
    return ok[-1]


def reference(pattern: str, name: str) -> bool:
    pattern = normalize_inbox(pattern)
    if reference_match(pattern, name):
        return True
    if name == "INBOX" or name.startswith("INBOX/"):
        # The first five literal characters may match INBOX's letters in any case.
        head = []
        for i, ch in enumerate(pattern):
            if ch in "*%" or i >= 5:
                head.append(pattern[i:])
                break
            head.append(ch.upper() if ch.isascii() and ch.isalpha() else ch)
        return reference_match("".join(head), name)
    return False


@given(
    st.text(alphabet="ab/*%iInNxX", max_size=10),
    st.one_of(st.text(alphabet="ab/xI", min_size=1, max_size=10),
              st.sampled_from(["INBOX", "INBOX/a", "INBOX/b/a", "inbox"])),
)
def test_same_answers_as_the_definition(pattern: str, name: str) -> None:
    assert Matcher([pattern])(name) == reference(pattern, name)


def test_hostile_patterns_take_linear_time() -> None:
    """Issue 9: ``*%`` x 30 + ``x`` took 90 s on one name with the backtracking regex."""
    names = [f"Projects/2024/client-{i}/" + "a" * 200 + f"-{i}" for i in range(2000)]
    for pattern in ("*%" * 30 + "x", "%a" * 60 + "%x", "*a" * 100 + "x", "%" * 500 + "x",
                    "*" + "a*" * 200 + "b"):
        match = Matcher([pattern])
        started = time.process_time()  # CPU time: other processes do not count
        found = [n for n in names if match(n)]
        assert time.process_time() - started < 3.0, pattern[:20]  # ~0.1 s; was hours
        sample = names[:5] + ["x", "ax", "a" * 300 + "x", "a/x", "ab" * 100]
        assert [n for n in sample if match(n)] == \
            [n for n in sample if reference_match(pattern, n)], pattern[:20]
        assert found == []  # none of the names ends in x or b


def test_list_and_lsub_accept_precomputed_answers() -> None:
    boxes = [Mailbox(i, 1, n, 1, 1, 1, None) for i, n in enumerate(["INBOX", "a", "a/b"], 1)]
    matched = {"a/b"}
    entries = list_entries(boxes, [], ["*"], match=matched.__contains__)
    assert [e.name for e in entries] == ["a/b"]
    assert [e.name for e in lsub_entries(["a/b", "c"], "*", {"c"}.__contains__)] == ["c"]
