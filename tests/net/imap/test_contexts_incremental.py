"""Incremental updates of search contexts (net/imap/contexts.py, RFC 5267 4.3): the pure
parts (changelog, ordering, merge) directly, then the whole path over a socket: contexts
updated message by message must equal what a fresh SEARCH/SORT answers after every one
of a random series of arrivals, flag changes and expunges by another session."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import pytest
from imap_util import deliver

from postroom.net.imap.contexts import Context, merge, per_message, precedes
from postroom.net.imap.search import Candidate, sort_candidates, sorted_sliced
from postroom.net.imap.selected import CHANGELOG_UIDS, SelectedMailbox
from postroom.proto.imap.search import AgeKey, And, FlagKey, HeaderKey, Not, Or, SizeKey
from postroom.store.api import Changes, MessageMeta
from support.server import Server

# -- the pure parts ----------------------------------------------------------------------


def _meta(uid: int, flags: int = 0, modseq: int = 1) -> MessageMeta:
    return MessageMeta(id=uid, uid=uid, flags=flags, keywords=(), modseq=modseq,
                       size=100 + uid, internaldate=1_700_000_000 + uid, blob_id=uid)


def _view(uids: list[int]) -> SelectedMailbox:
    return SelectedMailbox(1, "INBOX", readonly=False, uidvalidity=1, uidnext=max(uids) + 1,
                           modseq=1, uids=uids)


def test_changelog_answers_what_changed_and_forgets_past_its_bound() -> None:
    view = _view(list(range(1, 11)))
    view.update_flags([_meta(3)])  # no context yet: nothing is kept
    assert view.changelog == [] and view.changed_since(0) is None
    view.contexts["t"] = Context("t", True, FlagKey("\\Seen"), None, [], view.generation)
    g0 = view.generation
    assert view.changed_since(g0) == set()
    view.update_flags([_meta(4), _meta(5)])
    g1 = view.generation
    view.apply(Changes(changed=[_meta(11), _meta(12)], vanished=[], uidnext=13,
                       highestmodseq=2), expunge=True, rev1=False, condstore=False, qresync=False)
    view.remove([5], qresync=False)
    assert view.changed_since(g0) == {4, 5, 11, 12}
    assert view.changed_since(g1) == {11, 12, 5}
    assert view.changed_since(view.generation) == set()
    # past CHANGELOG_UIDS changed UIDs the oldest generations are forgotten
    many = [_meta(u) for u in range(1, 11) if u != 5]
    for _ in range(CHANGELOG_UIDS // len(many) + 1):
        view.update_flags(many)
    assert view.changed_since(g0) is None
    assert view.changed_since(view.generation - 1) == {m.uid for m in many}


def test_per_message_programs() -> None:
    seen, flagged = FlagKey("\\Seen"), FlagKey("\\Flagged")
    assert per_message(Or(seen, And((flagged, HeaderKey("SUBJECT", "x"), Not(SizeKey("LARGER", 5))))))
    assert not per_message(Or(seen, Not(AgeKey("YOUNGER", 60))))  # RFC 5032: the clock
    assert not per_message(AgeKey("OLDER", 60))


@dataclass
class _L:
    base_subject: str
    sort_from: str = ""
    sent_date: tuple[int, int] | None = None


def _cand(uid: int, subject: str, size: int) -> Candidate:
    meta = MessageMeta(id=uid, uid=uid, flags=0, keywords=(), modseq=1, size=size,
                       internaldate=uid, blob_id=uid)
    return Candidate(uid, meta, _L(subject))  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(20))
def test_precedes_is_the_order_of_sort_candidates(seed: int) -> None:
    rng = random.Random(seed)
    items = [_cand(u, rng.choice("abc"), rng.choice((1, 2, 3))) for u in range(1, 30)]
    criteria = tuple((rng.choice(("SUBJECT", "SIZE", "ARRIVAL")), rng.random() < 0.5)
                     for _ in range(rng.randint(1, 3)))
    expected = list(items)
    sort_candidates(expected, criteria)
    import functools

    got = sorted(items, key=functools.cmp_to_key(
        lambda a, b: -1 if precedes(a, b, criteria) else (1 if precedes(b, a, criteria) else 0)))
    assert [c.meta.uid for c in got] == [c.meta.uid for c in expected]


@pytest.mark.parametrize("seed", range(10))
def test_sorted_sliced_is_sort_candidates(seed: int) -> None:
    import asyncio

    rng = random.Random(seed)
    items = [_cand(u, rng.choice("abcd"), rng.choice((1, 2, 3))) for u in range(1, 700)]
    criteria = tuple((rng.choice(("SUBJECT", "SIZE", "ARRIVAL")), rng.random() < 0.5)
                     for _ in range(rng.randint(1, 3)))
    expected = list(items)
    sort_candidates(expected, criteria)
    got = asyncio.run(sorted_sliced(items, criteria))
    assert [c.meta.uid for c in got] == [c.meta.uid for c in expected]


def test_merge_places_inserts_before_the_member_at_their_position() -> None:
    assert merge([10, 20, 30], []) == [10, 20, 30]
    assert merge([10, 20, 30], [(0, 1), (0, 2), (2, 25), (3, 99)]) == [1, 2, 10, 20, 25, 30, 99]
    assert merge([], [(0, 5), (0, 6)]) == [5, 6]


# -- over a socket: incremental == full, under random changes ----------------------------

_UPDATE = re.compile(rb'\* ESEARCH \(TAG "([^"]+)"\) UID(?: REMOVEFROM \(([^)]*)\))?(?: ADDTO \(([^)]*)\))?')


def _numbers(seqset: bytes) -> list[int]:
    out: list[int] = []
    for part in seqset.split(b","):
        a, _, b = part.partition(b":")
        lo, hi = int(a), int(b or a)
        out.extend(range(lo, hi + 1) if lo <= hi else range(lo, hi - 1, -1))
    return out


def _pairs(body: bytes | None) -> list[tuple[int, list[int]]]:
    if not body:
        return []
    words = body.split()
    return [(int(words[i]), _numbers(words[i + 1])) for i in range(0, len(words), 2)]


def _apply(result: list[int], line: bytes, sorted_: bool) -> list[int]:
    m = _UPDATE.match(line)
    assert m, line
    for _, nums in _pairs(m.group(2)):
        for n in nums:
            result.remove(n)
    for pos, nums in _pairs(m.group(3)):
        if sorted_:
            result[pos - 1 : pos - 1] = nums  # RFC 5267 4.3.3: from that position on
        else:
            result = sorted(result + nums)
    return result


def _message(rng: random.Random, n: int) -> bytes:
    subject = rng.choice(["alpha", "beta", "gamma", "Re: beta", "delta"])
    sender = rng.choice(["ann", "bob", "cy"])
    day = rng.randint(1, 28)
    body = "x" * rng.randint(1, 400)
    return (f"From: {sender}@example.org\r\nTo: u@example.test\r\nSubject: {subject}\r\n"
            f"Date: {day:02d} Mar 2024 10:00:00 +0000\r\nMessage-ID: <{n}.{rng.random()}@x>\r\n"
            f"\r\n{body}\r\n").encode()


CONTEXTS = [
    ("SORT", "(SUBJECT)", "ALL"),
    ("SORT", "(REVERSE DATE FROM)", "UNSEEN"),
    ("SORT", "(SIZE REVERSE SUBJECT)", "OR FLAGGED SUBJECT beta"),
    ("SORT", "(REVERSE ARRIVAL)", "NOT DELETED"),
    ("SEARCH", "", "UNSEEN"),
    ("SEARCH", "", "FLAGGED BODY xxx"),
]


def test_incremental_contexts_equal_a_fresh_evaluation(server: Server, user: str, raw) -> None:
    rng = random.Random(20261207)
    c = raw(user)
    parts = b"".join(b" {%d+}\r\n%s" % (len(m), m) for m in (_message(rng, i) for i in range(40)))
    c.send(b"a1 APPEND INBOX" + parts + b"\r\n")
    _, done = c.until_tagged("a1")
    assert b" OK " in done, done
    c.ok("SELECT INBOX")
    tracked: dict[bytes, tuple[tuple[str, str, str], list[int]]] = {}
    for kind, criteria, key in CONTEXTS:
        command = f"UID {kind} RETURN (UPDATE ALL) " + (
            f"{criteria} UTF-8 {key}" if kind == "SORT" else key)
        untagged, done = c.cmd(command)
        tag = done.split(b" ")[0]
        m = re.search(rb" ALL (\S+)\r\n", untagged[0])
        tracked[tag] = ((kind, criteria, key), _numbers(m.group(1)) if m else [])
    other = raw(user)
    other.ok("SELECT INBOX")
    uids = list(range(1, 41))
    n = 40
    for step in range(30):
        action = rng.random()
        if action < 0.3:
            n += 1
            deliver(server, user, _message(rng, n))
            uids.append(n)
        elif action < 0.85 and uids:
            picked = rng.sample(uids, min(len(uids), rng.randint(1, 4)))
            sign = rng.choice("+-")
            flag = rng.choice(["\\Seen", "\\Flagged", "\\Deleted"])
            other.ok(f"UID STORE {','.join(map(str, picked))} {sign}FLAGS.SILENT ({flag})")
        else:
            other.ok("EXPUNGE")
            found = other.ok("UID SEARCH ALL")
            uids = [int(x) for x in found[0].split()[2:]]
        for line in c.ok("NOOP"):
            if line.startswith(b"* ESEARCH"):
                tag = line.split(b'"')[1]
                spec, result = tracked[tag]
                tracked[tag] = (spec, _apply(result, line, spec[0] == "SORT"))
        for (kind, criteria, key), result in tracked.values():
            if kind == "SORT":
                fresh = c.ok(f"UID SORT {criteria} UTF-8 {key}")
            else:
                fresh = c.ok(f"UID SEARCH {key}")
            want = [int(x) for x in fresh[0].split()[2:]]
            if kind == "SEARCH":
                want.sort()
            assert result == want, (step, kind, criteria, key)
