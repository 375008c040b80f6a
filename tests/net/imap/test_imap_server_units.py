"""Unit tests of the IMAP shell's pure parts: the selected-mailbox view (sequence map,
pending expunges, update responses), LIST matching, THREAD algorithms, DEFLATE."""

from __future__ import annotations

import asyncio
import os
import zlib

import pytest

from postroom.net.imap.compress import MAX_INFLATE, Deflate, DeflateError
from postroom.net.imap.listing import Matcher, list_entries, lsub_entries
from postroom.net.imap.selected import SelectedMailbox
from postroom.net.imap.thread import Item, is_reply_or_forward, thread_response
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.sequence import RangeSet, SequenceSet
from postroom.store.api import FLAG_DELETED, FLAG_SEEN, Changes, Mailbox, MessageMeta


def meta(uid: int, modseq: int, flags: int = 0, keywords: tuple[str, ...] = ()) -> MessageMeta:
    return MessageMeta(id=uid, uid=uid, flags=flags, keywords=keywords, modseq=modseq,
                       size=10, internaldate=0, blob_id=uid)


def view(uids: list[int], modseq: int = 10) -> SelectedMailbox:
    return SelectedMailbox(1, "INBOX", readonly=False, uidvalidity=7, uidnext=max(uids, default=0) + 1,
                           modseq=modseq, uids=uids)


def apply(v: SelectedMailbox, changes: Changes, **kw: bool) -> list[bytes]:
    opts = {"expunge": True, "rev1": True, "condstore": False, "qresync": False}
    opts.update(kw)
    return v.apply(changes, **opts)


# -- sequence sets --------------------------------------------------------------------

def test_positions_for_sequence_numbers_and_uids() -> None:
    v = view([3, 5, 9, 12])
    assert v.positions(SequenceSet.parse("1:*"), uid=False) == [0, 1, 2, 3]
    assert v.positions(SequenceSet.parse("2,4"), uid=False) == [1, 3]
    assert v.positions(SequenceSet.parse("*"), uid=False) == [3]
    assert v.positions(SequenceSet.parse("5:9"), uid=True) == [1, 2]
    assert v.positions(SequenceSet.parse("13:*"), uid=True) == [3]  # "*" is the last UID
    assert v.positions(SequenceSet.parse("100:200"), uid=True) == []
    with pytest.raises(ImapPeerError):
        v.positions(SequenceSet.parse("5"), uid=False)
    with pytest.raises(ImapPeerError):
        view([]).positions(SequenceSet.parse("1:*"), uid=False)
    assert view([]).positions(SequenceSet.parse("1:*"), uid=True) == []


def test_saved_search_result_in_both_number_spaces() -> None:
    from postroom.proto.imap.sequence import RangeSet

    v = view([3, 5, 9, 12])
    v.saved = RangeSet.from_numbers([5, 12])
    assert v.positions(SequenceSet.parse("$"), uid=True) == [1, 3]
    assert v.positions(SequenceSet.parse("$"), uid=False) == [1, 3]
    v.remove([5], qresync=False)
    assert list(v.saved) == [12]


# -- applying changes -------------------------------------------------------------------

def test_new_messages_give_exists_and_recent() -> None:
    v = view([1, 2])
    out = apply(v, Changes(highestmodseq=12, uidnext=5, changed=[meta(3, 11), meta(4, 12)],
                           vanished=[]), recent_from=3)
    assert out == [b"* 4 EXISTS\r\n", b"* 2 RECENT\r\n"]
    assert list(v.uids) == [1, 2, 3, 4] and v.modseq == 12
    assert v.is_recent(3) and v.is_recent(4) and not v.is_recent(2)
    # IMAP4rev2: no RECENT
    v2 = view([1])
    assert apply(v2, Changes(5, 3, [meta(2, 5)], []), rev1=False) == [b"* 2 EXISTS\r\n"]


def test_flag_changes_become_fetch_responses() -> None:
    v = view([1, 2, 3])
    out = apply(v, Changes(11, 4, [meta(2, 11, FLAG_SEEN)], []), condstore=True)
    assert out == [b"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (11))\r\n"]


def test_own_reported_changes_are_not_echoed() -> None:
    v = view([1, 2, 3])
    v.note_reported([meta(2, 11, FLAG_SEEN)])
    out = apply(v, Changes(11, 4, [meta(2, 11, FLAG_SEEN), meta(3, 11, FLAG_DELETED)], []))
    assert out == [b"* 3 FETCH (UID 3 FLAGS (\\Deleted))\r\n"]
    assert v.reported == {}


def test_expunges_wait_until_allowed() -> None:
    v = view([1, 2, 3, 4])
    out = apply(v, Changes(12, 6, [meta(5, 12)], [2, 3]), expunge=False)
    # Sequence numbers must not move: the expunged stay, the new one is message 5.
    assert out == [b"* 5 EXISTS\r\n", b"* 0 RECENT\r\n"]  # recent went to another session
    assert list(v.uids) == [1, 2, 3, 4, 5] and v.pending == {2, 3}
    # A flag change of a pending message is not reported.
    assert apply(v, Changes(13, 6, [meta(2, 13, FLAG_SEEN)], []), expunge=False) == []
    out = apply(v, Changes(13, 6, [], []), expunge=True)
    assert out == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert list(v.uids) == [1, 4, 5] and not v.pending


def test_expunges_as_vanished_with_qresync() -> None:
    v = view([1, 2, 3, 4, 7])
    out = apply(v, Changes(12, 8, [], [2, 3, 7, 99]), qresync=True)
    assert out == [b"* VANISHED 2:3,7\r\n"]
    assert list(v.uids) == [1, 4]


def test_new_keyword_announces_flags() -> None:
    v = view([1])
    out = apply(v, Changes(11, 2, [meta(1, 11, 0, ("$Forwarded",))], []))
    assert out[0].startswith(b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Forwarded)")
    assert out[1] == b"* 1 FETCH (UID 1 FLAGS ($Forwarded))\r\n"


def test_announce_names_keywords_the_client_has_not_seen() -> None:
    v = view([1, 2])
    v.keywords = {"$Known"}
    assert v.announce([meta(1, 11, keywords=("$Known",)), meta(2, 11)]) is None
    line = v.announce([meta(1, 12, keywords=("$Known", "$New"))])
    assert line == b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Known $New)\r\n"
    assert v.announce([meta(1, 12, keywords=("$New",))]) is None  # said once


def test_remove_reports_descending_sequence_numbers() -> None:
    v = view([10, 20, 30, 40])
    assert v.remove([20, 40], qresync=False) == [b"* 4 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert v.seq_of(30) == 2 and v.seq_of(20) is None


# -- LIST ---------------------------------------------------------------------------------

def mailboxes(*names: str, special: dict[str, str] | None = None) -> list[Mailbox]:
    special = special or {}
    return [Mailbox(i, 1, n, 1, 1, 1, special.get(n)) for i, n in enumerate(names, 1)]


def test_matcher_wildcards_and_inbox_case() -> None:
    m = Matcher(["%"])
    assert m("INBOX") and m("Sent") and not m("a/b")
    m = Matcher(["*"])
    assert m("a/b/c")
    m = Matcher(["a/%"])
    assert m("a/b") and not m("a/b/c") and not m("a")
    m = Matcher(["inb%"])
    assert m("INBOX") and m("inbound") and not m("Inbound")  # only INBOX ignores case
    assert Matcher(["inbox/*"])("INBOX/x")
    assert Matcher(["Foo.bar"])("Foo.bar") and not Matcher(["Foo.bar"])("Fooxbar")


def test_list_entries_attributes() -> None:
    boxes = mailboxes("INBOX", "Sent", "a", "a/b", special={"Sent": "\\Sent"})
    entries = list_entries(boxes, ["a/b", "gone"], ["*"], returns=frozenset({"SUBSCRIBED"}))
    got = {e.name: e.attributes for e in entries}
    assert got == {
        "INBOX": ["\\HasNoChildren"], "Sent": ["\\HasNoChildren", "\\Sent"],
        "a": ["\\HasChildren"], "a/b": ["\\HasNoChildren", "\\Subscribed"],
    }
    assert [e.name for e in entries][0] == "INBOX"
    subs = list_entries(boxes, ["a/b", "gone"], ["*"], select=frozenset({"SUBSCRIBED"}))
    assert {e.name: e.attributes for e in subs} == {
        "a/b": ["\\HasNoChildren", "\\Subscribed"], "gone": ["\\NonExistent", "\\Subscribed"],
    }
    rec = list_entries(boxes, ["a/b"], ["%"], select=frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}))
    assert [(e.name, e.childinfo) for e in rec] == [("a", ("SUBSCRIBED",))]
    # RFC 5258 3.5: a parent stands in only for a subscribed child the patterns miss
    both = list_entries(boxes, ["a/b"], ["a", "a/b"], select=frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}))
    assert [(e.name, e.childinfo) for e in both] == [("a/b", ())]
    star = list_entries(boxes, ["a/b"], ["*"], select=frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}))
    assert [(e.name, e.childinfo) for e in star] == [("a/b", ())]
    special = list_entries(boxes, [], ["*"], select=frozenset({"SPECIAL-USE"}))
    assert [e.name for e in special] == ["Sent"]


def test_lsub_noselect_parents() -> None:
    entries = lsub_entries(["a/b", "c"], "%")
    assert [(e.name, e.attributes) for e in entries] == [("a", ["\\Noselect"]), ("c", [])]
    assert [e.name for e in lsub_entries(["a/b", "c"], "*")] == ["a/b", "c"]


# -- THREAD --------------------------------------------------------------------------------

def item(n: int, subject: str = "s", mid: str | None = None, refs: tuple[str, ...] = (),
         date: int | None = None, reply: bool = False) -> Item:
    return Item(number=n, seq=n, date=date if date is not None else n, subject=subject,
                reply=reply, message_id=mid, references=refs)


def test_orderedsubject() -> None:
    items = [item(1, "a"), item(2, "b"), item(3, "a"), item(4, "a"), item(5, "c")]
    assert thread_response("ORDEREDSUBJECT", items) == b"* THREAD (1 (3)(4))(2)(5)\r\n"
    assert thread_response("ORDEREDSUBJECT", [item(1, "a"), item(2, "a")]) == b"* THREAD (1 2)\r\n"


def test_references_chain_branch_and_missing_parent() -> None:
    items = [
        item(1, "x", "1@x"),
        item(2, "x", "2@x", ("1@x",), reply=True),
        item(3, "x", "3@x", ("1@x", "2@x"), reply=True),
        item(4, "x", "4@x", ("1@x",), reply=True),
        item(5, "other", "5@x"),
        item(6, "y", "6@x", ("missing@x",), reply=True),
        item(7, "z", "7@x", ("missing@x",), reply=True),
    ]
    # 1 has two children (2→3 and 4); 6 and 7 share a dummy parent (kept at the root).
    assert thread_response("REFERENCES", items) == b"* THREAD (1 (2 3)(4))(5)((6)(7))\r\n"


def test_references_loops_and_duplicates_are_safe() -> None:
    items = [
        item(1, "a", "1@x", ("2@x",)),
        item(2, "a", "2@x", ("1@x",)),  # loop: refused
        item(3, "b", "1@x"),  # duplicate Message-ID: a thread of its own
    ]
    out = thread_response("REFERENCES", items)
    assert out.startswith(b"* THREAD ") and out.count(b"1") == 1 and b"3" in out


def test_references_loop_breaks_the_earlier_parent() -> None:
    """RFC 5256 4 step 1.B: the current parent link is broken before the new one is tried;
    when the new one would make a loop, the message is left a root (imaptest "thread")."""
    items = [
        item(1, "", "a@b", date=3),
        item(2, "", "b@b", ("a@b", "c@b"), date=1),  # chain a -> c, then c -> 2
        item(3, "", "c@b", ("b@b",), date=2),  # parent b would be a loop; a is dropped
    ]
    assert thread_response("REFERENCES", items) == b"* THREAD (3 2)(1)\r\n"
    rest = [item(1, "", "b@b", ("a@b", "c@b"), date=1), item(2, "", "c@b", ("b@b",), date=2)]
    assert thread_response("REFERENCES", rest) == b"* THREAD (2 1)\r\n"
    # 1.A keeps an existing link: r stays under p although 4 names q before it
    kept = [item(1, "", "p@x", date=1), item(2, "", "q@x", date=2),
            item(3, "", "r@x", ("p@x",), date=3), item(4, "", "s@x", ("q@x", "r@x"), date=4)]
    assert thread_response("REFERENCES", kept) == b"* THREAD (1 3 4)(2)\r\n"


def test_references_merges_same_subject_roots() -> None:
    items = [item(1, "topic", "1@x"), item(2, "topic", "2@x", reply=True)]
    assert thread_response("REFERENCES", items) == b"* THREAD (1 2)\r\n"
    items = [item(1, "topic", "1@x"), item(2, "topic", "2@x")]
    assert thread_response("REFERENCES", items) == b"* THREAD ((1)(2))\r\n"


def test_references_deep_thread_is_not_recursive() -> None:
    n = 5000
    items = [item(1, "deep", "m1")] + [
        item(i, "deep", f"m{i}", (f"m{i - 1}",), reply=True) for i in range(2, n + 1)
    ]
    out = thread_response("REFERENCES", items)
    assert out == b"* THREAD (" + b" ".join(b"%d" % i for i in range(1, n + 1)) + b")\r\n"


def test_reply_detection() -> None:
    assert is_reply_or_forward("Re: hi") and is_reply_or_forward("[list] Fwd: x")
    assert is_reply_or_forward("hi (fwd)") and is_reply_or_forward("[Fwd: hi]")
    assert not is_reply_or_forward("Regarding things")


# -- COMPRESS ------------------------------------------------------------------------------

def test_deflate_round_trip_and_bomb_bound() -> None:
    d = Deflate()
    inflate = zlib.decompressobj(-15)
    assert inflate.decompress(d.compress(b"* OK hello\r\n")) == b"* OK hello\r\n"
    client = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = client.compress(b"A" * (10 * MAX_INFLATE)) + client.flush(zlib.Z_SYNC_FLUSH)
    out = d.decompress(bomb)
    assert len(out) == MAX_INFLATE and d.has_pending()
    total = len(out)
    while d.has_pending():
        total += len(d.decompress(b""))
    assert total == 10 * MAX_INFLATE
    with pytest.raises(DeflateError):
        Deflate().decompress(b"\xff\xff\xff\xff garbage")


# -- the light summary view ----------------------------------------------------------------

@pytest.mark.parametrize("message", [
    b"Subject: plain\r\nFrom: a@example.org\r\n\r\nbody\r\n",
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nFrom: =?utf-8?q?J=C3=BCrgen?= <j@example.de>\r\n"
    b"To: undisclosed-recipients:;\r\nCc: Team: a@x.org, b@y.org;\r\n"
    b"Date: Tue, 02 Jan 2024 10:00:00 +0100\r\nMessage-ID: <m1@x>\r\n"
    b"References: <a@x> <b@x>\r\nIn-Reply-To: <b@x>\r\n\r\nbody\r\n",
    b"no header at all\r\n",
    b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\nSubject: Re: parts\r\n\r\n--b\r\n"
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: i@x\r\n\r\nin\r\n--b--\r\n",
])
def test_light_view_agrees_with_full_parse(message: bytes) -> None:
    from postroom.deliver import normalize, summarize
    from postroom.message import MessageSummary
    from postroom.net.imap.light import Light, light

    raw = summarize(normalize(message))
    fast = light(raw)
    slow = Light.from_summary(MessageSummary.from_bytes(raw))
    assert fast is not None
    for name in ("header_start", "header_end", "sent_date", "base_subject", "sort_from",
                 "sort_to", "sort_cc", "display_from", "display_to", "message_id",
                 "in_reply_to", "references"):
        assert getattr(fast, name) == getattr(slow, name), name
    for index in (1, 2, 5, 6, 7):  # subject, from, to, cc, bcc as SORT/THREAD read them
        assert fast._field(index) == slow._field(index), index
    assert fast.subject_raw() == slow.subject_raw()


def test_light_view_declines_unknown_formats() -> None:
    from postroom.net.imap.light import light

    assert light(b"[99, 1, [0, 0, 0, 0]]") is None
    assert light(b"not json") is None
    assert light(b'[1, 1, "x"]') is None


def test_own_writes_need_no_reread_but_others_do() -> None:
    v = view([1, 2], modseq=10)
    v.notify(11)  # our own STORE's notification arrives before the write returns
    v.update_flags([meta(1, 11, FLAG_SEEN)])
    v.own_write([meta(1, 11, FLAG_SEEN)])
    assert v.modseq == 11 and not v.needs_read()
    v.notify(0)  # a delivery does not say its modseq
    assert v.needs_read()
    w = view([1, 2], modseq=10)
    w.notify(12)
    w.own_write([meta(1, 12, FLAG_SEEN)])  # someone else took modseq 11
    assert w.modseq == 10 and w.needs_read()
    assert w.flags[0] == 0  # flags change only when told
    w.update_flags([meta(1, 12, FLAG_SEEN, ("$x",))])
    assert w.flags[0] == FLAG_SEEN and w.kw == {1: ("$x",)}


def test_view_flags_follow_changes_and_expunges() -> None:
    v = view([1, 2, 3])
    apply(v, Changes(11, 5, [meta(2, 11, FLAG_DELETED), meta(4, 11, FLAG_SEEN, ("$k",))], []))
    assert list(v.uids) == [1, 2, 3, 4] and list(v.flags) == [0, FLAG_DELETED, 0, FLAG_SEEN]
    assert v.kw == {4: ("$k",)}
    apply(v, Changes(12, 5, [], [2, 4]))
    assert list(v.uids) == [1, 3] and list(v.flags) == [0, 0] and v.kw == {}


# -- SEARCH masks agree with message-by-message evaluation ----------------------------

SLOW = os.environ.get("POSTROOM_SLOW") == "1"


def _key_strategy():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    from postroom.proto.imap.search import AllKey, And, FlagKey, HeaderKey, Not, Or, SeqKey
    from postroom.proto.imap.sequence import STAR

    number = st.one_of(st.integers(1, 70), st.just(STAR))
    seqset = st.builds(
        SequenceSet,
        st.lists(st.tuples(number, number), min_size=1, max_size=3).map(tuple),
        st.booleans(),
    )
    flag = st.sampled_from(["\\Seen", "\\Deleted", "\\Flagged", "\\Answered", "\\Draft",
                            "\\Recent", "$Work", "$work", "Other"])
    leaves = st.one_of(
        st.just(AllKey()),
        st.builds(FlagKey, flag, st.booleans()),
        st.builds(SeqKey, seqset, st.booleans()),
        st.builds(HeaderKey, st.sampled_from(["from", "subject", "bcc"]), st.sampled_from(["a", "b", ""])),
    )
    return st.recursive(leaves, lambda inner: st.one_of(
        st.builds(Not, inner),
        st.builds(Or, inner, inner),
        st.builds(And, st.lists(inner, max_size=3).map(tuple)),
    ), max_leaves=8)


def _view_strategy():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    @st.composite
    def build(draw):  # type: ignore[no-untyped-def]
        uids = sorted(draw(st.sets(st.integers(1, 80), max_size=40)))
        v = view(uids)
        v.flags = bytearray(draw(st.lists(st.integers(0, 31), min_size=len(uids),
                                          max_size=len(uids))))
        for uid in uids:
            kws = draw(st.sets(st.sampled_from(["$Work", "Later"]), max_size=2))
            if kws:
                v.kw[uid] = tuple(sorted(kws))
        if uids and draw(st.booleans()):
            lo = draw(st.sampled_from(uids))
            # as claims accumulate: possibly several ranges, possibly an empty (inverted) one
            v.recent = [(lo, draw(st.integers(lo, 90)))] + draw(
                st.lists(st.tuples(st.integers(1, 90), st.integers(1, 90)), max_size=2))
        v.pending = set(draw(st.sets(st.sampled_from(uids), max_size=3))) if uids else set()
        if uids and draw(st.booleans()):
            v.saved = RangeSet.from_numbers(draw(st.sets(st.sampled_from(uids), max_size=5)))
        matches = {(f, n): sorted(draw(st.sets(st.integers(1, 90), max_size=20)))
                   for f in ("from", "subject", "bcc") for n in ("a", "b", "")}
        return v, matches

    return build()


def test_search_masks_agree_with_the_per_message_evaluator() -> None:
    import time as _time

    from hypothesis import given, settings

    from postroom.net.imap import search_mask
    from postroom.net.imap.search import Candidate, Compiler
    from postroom.net.imap.selected import Known

    @settings(max_examples=3000 if SLOW else 400)
    @given(_view_strategy(), _key_strategy())
    def check(built, key) -> None:  # type: ignore[no-untyped-def]
        v, matches = built
        assert search_mask.maskable(key)
        try:
            predicate = Compiler(v, _time.time(), matches).compile(key)
        except ImapPeerError:
            return
        expected = [
            i for i, uid in enumerate(v.uids)
            if uid not in v.pending
            and predicate(Candidate(i + 1, Known(uid, v.flags[i], v.kw.get(uid, ()))))  # type: ignore[arg-type]
        ]
        assert asyncio.run(search_mask.evaluate(v, key, matches)) == expected
        assert v.recent_count() == sum(1 for uid in v.uids if v.is_recent(uid))

    check()
