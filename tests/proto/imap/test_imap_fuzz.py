"""Property tests: random and mutated input, random splits.

Invariants: only ImapPeerError leaves the receiver (the driver re-raises anything else);
the events are the same however the input is split; buffering stays within the limits;
every complete command line without literals gets exactly one answer (a command or a
refusal); end of input always ends in ConnectionClosed or a closing refusal.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imap_driver import Refused, drive_chunks

from postroom.proto.imap.commands import Command, State, parse_command
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.receiver import ConnectionClosed, Limits

SLOW = bool(os.environ.get("POSTROOM_SLOW"))
EXAMPLES = 3000 if SLOW else 250
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CORPUS = [
    b"a1 CAPABILITY\r\n",
    b"a1 LOGIN {3}\r\nbob {2+}\r\npw\r\n",
    b'a1 LOGIN "bob" "p\\"w"\r\n',
    b"a1 AUTHENTICATE PLAIN AGJvYgBwdw==\r\n",
    b'a1 ID ("name" "x" "version" NIL)\r\n',
    b"a1 ENABLE CONDSTORE QRESYNC\r\n",
    b"a1 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211 (1:3 4:6)))\r\n",
    b"a1 CREATE Sent (USE (\\Sent))\r\n",
    b"a1 RENAME foo bar/baz\r\n",
    b'a1 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "%") RETURN (STATUS (MESSAGES))\r\n',
    b"a1 STATUS INBOX (MESSAGES UIDNEXT HIGHESTMODSEQ)\r\n",
    b'a1 APPEND INBOX (\\Seen) "05-Jan-2020 10:00:00 +0000" {5}\r\nhello ~{3}\r\na\x00b\r\n',
    b"a1 APPEND INBOX UTF8 (~{2+}\r\nhi)\r\n",
    (
        b"a1 UID FETCH 1:*,$ (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.100>) "
        b"(CHANGEDSINCE 5 VANISHED)\r\n"
    ),
    b"a1 FETCH 1 (BINARY.PEEK[1]<0.5> BINARY.SIZE[2] MODSEQ RFC822.SIZE)\r\n",
    (
        b"a1 SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR FROM {3}\r\nbob NOT (SEEN LARGER 5) "
        b'UID 1:3,$ MODSEQ "/flags/\\\\draft" all 5 SINCE 1-Feb-1994\r\n'
    ),
    b"a1 UID STORE 1:* (UNCHANGEDSINCE 5) +FLAGS.SILENT (\\Seen $Junk)\r\n",
    b"a1 UID MOVE 1:5 Trash\r\n",
    b"a1 SORT (REVERSE DATE SUBJECT) UTF-8 ALL\r\n",
    b"a1 UID THREAD REFERENCES UTF-8 SUBJECT x\r\n",
    b"a1 UID EXPUNGE 3000:3002\r\n",
    b"a1 IDLE\r\n",
    b"a1 COMPRESS DEFLATE\r\n",
    # the extensions: ACL, QUOTA, METADATA, URLAUTH, NOTIFY, CATENATE, contexts
    b"a1 SETACL Shared/bob@x/INBOX anyone +lrcd\r\n",
    b"a1 LISTRIGHTS INBOX {4}\r\nfred\r\n",
    b'a1 SETQUOTA "" (STORAGE 512 MESSAGE 10)\r\n',
    b"a1 GETMETADATA (MAXSIZE 10 DEPTH infinity) INBOX (/private/a /shared/vendor/x/y)\r\n",
    b"a1 SETMETADATA INBOX (/private/a ~{2}\r\n\x00b /shared/b NIL /shared/c {1+}\r\nx)\r\n",
    b'a1 GENURLAUTH "imap://u@h/INBOX/;uid=1;urlauth=authuser" INTERNAL\r\n',
    b'a1 URLFETCH "imap://u@h/INBOX/;uid=1;urlauth=authuser:internal:00" ("u" BINARY)\r\n',
    b"a1 RESETKEY INBOX INTERNAL\r\n",
    b"a1 NOTIFY SET STATUS (selected (MessageNew (UID FLAGS) MessageExpunge)) (subtree (a b) NONE)\r\n",
    b'a1 CANCELUPDATE "a0"\r\n',
    b'a1 APPEND INBOX CATENATE (URL "/INBOX/;UID=1" TEXT {3}\r\nabc) CATENATE (TEXT ~{1}\r\n\x00)\r\n',
    b"a1 UID SORT RETURN (PARTIAL -1:-5 UPDATE) (ARRIVAL) UTF-8 ALL\r\n",
]
SMALL = Limits(
    max_line=120,
    max_literal=16,
    max_append_literal=40,
    max_command=200,
    max_literals=4,
    max_depth=4,
    max_items=20,
    max_discard=64,
)
STATES = st.sampled_from([State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED])
LIMITS = st.sampled_from([SMALL, Limits(), Limits.authenticated(append_limit=1000)])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return [c for c in out if c]


def check(data: bytes, cuts: list[int], **kw: Any) -> list[Any]:
    whole = drive_chunks([data], check_bounded=True, **kw)
    pieces = drive_chunks(split(data, cuts), check_bounded=True, **kw)
    assert whole == pieces
    bytewise = drive_chunks([data[i : i + 1] for i in range(len(data))], **kw)
    assert whole == bytewise
    last = whole[-1]
    assert last == ConnectionClosed() or (isinstance(last, Refused) and last.close)
    return whole


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid commands, then byte-level damage and random literals."""
    parts = draw(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=4))
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "literal", "dup"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.sampled_from(b' ()[]{}<>"\\*%$:,.~+-0123456789\r\nAZ\x00\xff'))
        elif op == "literal":
            payload = draw(st.binary(max_size=24))
            kind = draw(st.sampled_from([b"{%d}", b"{%d+}", b"~{%d}", b"{%d+}"]))
            n = len(payload) + draw(st.sampled_from([0, 0, 0, -1, 1, 10**6]))
            data[pos:pos] = kind % max(n, 0) + b"\r\n" + payload
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 30))]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6), STATES, LIMITS)
def test_random_bytes(data: bytes, cuts: list[int], state: State, limits: Limits) -> None:
    check(data, cuts, state=state, limits=limits)


@FUZZ
@given(mutated(), st.lists(st.integers(0, 2000), max_size=6), STATES, LIMITS, st.booleans())
def test_mutated_commands(
    data: bytes, cuts: list[int], state: State, limits: Limits, utf8: bool
) -> None:
    check(data, cuts, state=state, limits=limits, utf8=utf8)


# Lines built from IMAP-ish tokens, without any "{" so every line is one command.
TOKENS = st.sampled_from(
    [
        b"a1",
        b"UID",
        b"FETCH",
        b"SEARCH",
        b"STORE",
        b"LIST",
        b"SELECT",
        b"LOGIN",
        b"NOOP",
        b"APPEND",
        b"ID",
        b"NIL",
        b"(",
        b")",
        b"[",
        b"]",
        b"<0.5>",
        b"1:*",
        b"$",
        b"\\Seen",
        b'"x"',
        b'"',
        b"BODY[",
        b"HEADER.FIELDS",
        b"OR",
        b"NOT",
        b"ALL",
        b"INBOX",
        b"&AOk-",
        b"\xc3\xa9",
        b"\x00",
        b"*",
        b"+",
        b"-",
        b"1-Feb-1994",
        b"FLAGS",
        b"RETURN",
        b"CHARSET",
        b"SETACL",
        b"GETMETADATA",
        b"SETMETADATA",
        b"NOTIFY",
        b"SET",
        b"CATENATE",
        b"URL",
        b"TEXT",
        b"PARTIAL",
        b"-1:-3",
        b"/private/a",
        b"URLFETCH",
        b"CANCELUPDATE",
    ]
)
LINE = st.lists(
    st.one_of(TOKENS, st.just(b" "), st.binary(max_size=3).map(lambda b: b.replace(b"{", b""))),
    max_size=14,
).map(lambda ts: b"".join(ts).replace(b"\n", b"").replace(b"{", b"") + b"\r\n")


@FUZZ
@given(st.lists(LINE, min_size=1, max_size=5), st.lists(st.integers(0, 400), max_size=5), STATES)
def test_every_line_gets_one_answer(lines: list[bytes], cuts: list[int], state: State) -> None:
    events = check(b"".join(lines), cuts, state=state)
    answers = [e for e in events if isinstance(e, (Command, Refused))]
    expected = len([ln for ln in lines if ln != b"\r\n"])
    if any(isinstance(e, Refused) and e.close for e in events):
        assert len(answers) <= expected
    else:
        assert len(answers) == expected


@FUZZ
@given(mutated(), STATES, st.booleans())
def test_parse_command_direct(data: bytes, state: State, utf8: bool) -> None:
    """The pure parser on one line (markers included, literals as announced or not)."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        parse_command(line, (), state=state, utf8=utf8)
    except ImapPeerError:
        pass


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 5000), st.sampled_from([b"(", b"NOT ", b"OR ALL ", b"BODY[1."]))
def test_deep_nesting_is_refused_not_crashed(n: int, unit: bytes) -> None:
    data = b"a SEARCH " + unit * n + b"ALL\r\n"
    events = check(data, [], state=State.SELECTED, limits=Limits.authenticated())
    assert events[-1] == ConnectionClosed()
