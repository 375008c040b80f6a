"""What IMAP runs in worker processes (net/imap/jobs.py) answers exactly as the shell does
when it does the same work itself, on ordinary and on hostile messages."""

from __future__ import annotations

import base64

from postroom.message import scan
from postroom.net.imap import jobs
from postroom.net.imap.fetch import _Renderer
from postroom.net.imap.light import Light
from postroom.net.imap.search import Candidate, _item
from postroom.net.imap.thread import thread_response
from postroom.proto.imap.fetch import parse_fetch_atts
from postroom.proto.imap.grammar import Parser
from postroom.store.api import MessageMeta
from support import hostile
from support.mailgen import mailbox

TO = "u@example.test"


def _messages() -> list[bytes]:
    msgs = mailbox(40, TO, seed=11)
    msgs.append(hostile.many_parts(TO, 300))
    msgs.append(hostile.huge_header(TO, 3000))
    msgs.append(hostile.big_text(TO, 200_000))
    msgs.append(
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\nSubject: =?utf-8?b?"
        + base64.b64encode("Grüße zq".encode()) + b"?=\r\nX-Tag: Alpha\r\n X-folded zq\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("Müller schreibt zq".encode()) + b"\r\n"
    )
    return msgs


NEEDLES = ("zq", "müller", "grüße", "lorem", "sender", "x-noise", "")
FIELDS = (("x-noise", "29 zz"), ("x-tag", "zq"), ("subject", "grüße"), ("x-tag", ""),
          ("x-absent", ""), ("from", "jürgen"))


def test_text_hits_match_the_shells_own_evaluation() -> None:
    for data in _messages():
        summary = scan(data)
        raw = summary.to_bytes()
        root = summary.root
        c = Candidate(1, None, Light.from_summary(summary), data, summary)  # type: ignore[arg-type]
        hits = jobs.text_hits(data, raw, (root.header_start, root.header_end), NEEDLES, NEEDLES,
                              FIELDS)
        assert hits[0] == {n for n in NEEDLES if c.in_header(n)}
        assert hits[1] == {n for n in NEEDLES if c.in_body(n)}
        assert hits[2] == {p for p in FIELDS if c.field_matches(*p)}
        c.hits = hits  # and the candidate answers from them alike
        assert all(c.in_body(n) == (n in hits[1]) for n in NEEDLES)


def test_thread_rows_thread_like_thread_response() -> None:
    storm = hostile.reference_storm(TO, 120, 12)
    items = []
    for seq, data in enumerate(storm + mailbox(30, TO, seed=2), 1):
        meta = MessageMeta(id=seq, uid=seq, flags=0, keywords=(), size=len(data),
                           internaldate=1_700_000_000 + seq, modseq=1, blob_id=seq)
        items.append(_item(Candidate(seq, meta, Light.from_summary(scan(data))), uid=True))
    for algorithm in ("REFERENCES", "ORDEREDSUBJECT"):
        rows = [jobs.item_row(i) for i in items]
        assert jobs.thread_rows(algorithm, rows) == thread_response(algorithm, items)


def test_render_items_match_the_renderer() -> None:
    data = hostile.many_parts(TO, 600)
    summary = scan(data)
    atts = parse_fetch_atts(Parser(
        b"(ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[2.MIME] BODY.PEEK[600] BINARY.PEEK[7] "
        b"BINARY.SIZE[9] BODY.PEEK[HEADER.FIELDS (SUBJECT TO)]<0.20> RFC822.HEADER)"))
    for rev2 in (False, True):
        renderer = _Renderer.for_items(rev2, "a1")
        expected = tuple(renderer.item(att, summary, data) for att in atts)
        assert jobs.render_items(atts, summary.to_bytes(), data, rev2, "a1") == expected
    unknown = (b"Subject: x\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uu\r\n"
               b"\r\nbegin 644 x\r\n")
    binary = parse_fetch_atts(Parser(b"(BINARY[1])"))
    assert jobs.render_items(binary, scan(unknown).to_bytes(), unknown, False, "a1") is None
