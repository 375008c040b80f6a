"""Property tests: random command streams split at random points.

Invariants (h11's fuzz idea): the core never raises on peer bytes, buffers at most one
line/limit, and the events and output bytes do not depend on how the input was split.
Every output line is a well-formed reply line.
"""

from __future__ import annotations

import base64
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtp_harness import CONFIG, bytewise, drive, split_at

from postroom.proto.smtp.replies import parse_reply_line
from support import SLOW

FUZZ_CONFIG = replace(CONFIG, max_errors=30, burl=True)
BOUND = FUZZ_CONFIG.max_auth_line_length
PLAIN = base64.b64encode(b"\0user\0secret")

TOKENS = [
    b"EHLO c.example\r\n",
    b"HELO c.example\r\n",
    b"EHLO bad.example\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME RET=FULL ENVID=x+2B\r\n",
    b"MAIL FROM:<spammer@x.example>\r\n",
    "MAIL FROM:<\u00fc@x.example> SMTPUTF8\r\n".encode(),
    b"MAIL FROM:<a@b.example> SIZE=99999\r\n",
    b"RCPT TO:<b@c.example>\r\n",
    b"RCPT TO:<unknown@c.example>\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"RCPT TO:<b@c.example> NOTIFY=SUCCESS ORCPT=rfc822;b@c.example\r\n",
    b"RCPT TO:<@r.example:b%c@c.example>\r\n",
    b"DATA\r\n",
    b"hello\r\n",
    b".\r\n",
    b"..dot\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\x00",
    b"BDAT 5\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT x\r\n",
    b"12345",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"EXPN x\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN " + PLAIN + b"\r\n",
    PLAIN + b"\r\n",
    b"*\r\n",
    b"AUTH LOGIN\r\n",
    b"dXNlcg==\r\n",
    # BURL (RFC 4468), accepted after AUTH; the harness resolves every URL but "bad" ones
    b"BURL imap://u@h/INBOX/;uid=1;urlauth=submit+u:internal:" + b"0" * 64 + b"\r\n",
    b"BURL imap://u@h/Drafts/;UID=2/;SECTION=1 LAST\r\n",
    b"BURL imap://bad@h/x LAST\r\n",
    b"BURL\r\n",
    b"BURL  LAST\r\n",
    b"BURL x y z\r\n",
    b"BURL x last\r\n",
    b"x" * 4100,
    b"\r\n",
    b"\n",
    b"\r",
    b"\xff",
]

_ENVELOPE = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\n"
# Prefixes that put the session in each interesting state, so that random tokens after them
# exercise DATA, BDAT and AUTH, not only "send EHLO first".
PREFIXES = [
    b"",
    b"EHLO c.example\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n",
    b"EHLO c.example\r\n" + _ENVELOPE,
    b"EHLO c.example\r\n" + _ENVELOPE + b"DATA\r\n",
    b"EHLO c.example\r\n" + _ENVELOPE + b"BDAT 7\r\n",
    b"EHLO c.example\r\nAUTH PLAIN\r\n",
    b"EHLO c.example\r\nAUTH LOGIN\r\n",
    b"EHLO c.example\r\nAUTH PLAIN " + PLAIN + b"\r\n" + _ENVELOPE,
]
# Whole transactions as single tokens, to get back into deep states after a reset.
TOKENS += [
    _ENVELOPE + b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
    _ENVELOPE + b"BDAT 3 LAST\r\nabc",
    _ENVELOPE + b"DATA\r\n",
]

streams = st.tuples(
    st.sampled_from(PREFIXES),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)), max_size=30),
).map(lambda t: t[0] + b"".join(t[1]))


def check(data: bytes, cuts: list[int]) -> None:
    reference = drive([data], FUZZ_CONFIG, max_bounded=BOUND)
    for line in reference.output.split(b"\r\n")[:-1]:
        parse_reply_line(line)  # raises MalformedReply if we ever emit garbage
    for chunks in (split_at(data, cuts), bytewise(data)):
        other = drive(chunks, FUZZ_CONFIG, max_bounded=BOUND)
        assert other.events == reference.events
        assert other.output == reference.output
        assert other.conn.close_reason == reference.conn.close_reason


@settings(max_examples=1500 if SLOW else 150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams, st.lists(st.integers(0, 6000), max_size=12))
def test_command_streams_split_anywhere(data: bytes, cuts: list[int]) -> None:
    check(data, cuts)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    check(data, cuts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), max_size=20), st.lists(st.integers(0, 900), max_size=8))
def test_random_message_bodies(lines: list[bytes], cuts: list[int]) -> None:
    body = b"\r\n".join(lines) + b"\r\n.\r\n"
    data = b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<b@c.example>\r\nDATA\r\n"
    check(data + body + b"NOOP\r\n", cuts)
