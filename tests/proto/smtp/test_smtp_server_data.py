"""DATA and BDAT through the server core: framing, smuggling, size, NUL, chunking."""

from __future__ import annotations

import tracemalloc

import pytest
from smtp_harness import CONFIG, ENVELOPE, bytewise, drive, drive_all_ways

from postroom.proto.smtp.events import MailFrom, MessageComplete, MessageRefused, RcptTo
from postroom.proto.smtp.server import CloseReason, ServerConfig, ServerConnection

DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
HEAD = ["250", "250 2.1.0", "250 2.1.5"]


def messages(t: object) -> list[bytes]:
    return [e.data for e in t.of(MessageComplete)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b".\r\n", b""),  # the very first line is the end marker
        (b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"x" * 3000 + b"\r\n.\r\n", b"x" * 3000 + b"\r\n"),  # > 998: not cut
        (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
    ],
)
def test_data_framing(raw: bytes, message: bytes) -> None:
    config = ServerConfig("mx.example.org", max_message_size=10_000)
    t = drive_all_ways(ENVELOPE + DATA + raw + b"NOOP\r\n", config)
    assert messages(t) == [message]
    assert t.codes == HEAD + ["354", "250 2.0.0", "250 2.0.0"]


def test_end_marker_split_everywhere() -> None:
    data = ENVELOPE + DATA + b"one\r\ntwo\r\n.\r\nNOOP\r\n"
    whole = drive([data])
    start = len(ENVELOPE + DATA)
    for cut in range(start, len(data)):
        for cut2 in range(cut + 1, min(len(data), cut + 6)):
            t = drive([data[:cut], data[cut:cut2], data[cut2:]])
            assert t.events == whole.events and t.output == whole.output


# RFC 5321 4.5.2 and the 2023 smuggling CVEs: none of these end the data.
FAKE_ENDS = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r\n\x00.\r\n"]


@pytest.mark.parametrize("fake", FAKE_ENDS, ids=[repr(f) for f in FAKE_ENDS])
def test_smuggling_is_refused_and_nothing_injected(fake: bytes) -> None:
    smuggled = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.org>\r\n"
                b"DATA\r\nFrom: ceo@example.org\r\n\r\npay\r\n")
    data = ENVELOPE + DATA + b"Subject: x\r\n\r\nbody" + fake + smuggled + b".\r\n" + QUIT
    t = drive_all_ways(data)
    # One transaction only: the second MAIL/RCPT were message content, never commands.
    assert len(t.of(MailFrom)) == 1 and len(t.of(RcptTo)) == 1
    assert t.of(MessageComplete) == []
    refused = t.of(MessageRefused)
    assert len(refused) == 1
    assert t.codes == HEAD + ["354", "554 5.6.0", "221 2.0.0"]


# Dot lines before the fault: the decoder looks at each of the first 64 (and notes a bare
# LF meanwhile), then only for the end, and the core checks the message itself.
DOT_LINES = b"".join(b"..%d\r\n" % i for i in range(70))


@pytest.mark.parametrize(
    "content",
    # (the last two: as many CRs as LFs, so only the search for a bare one finds them)
    [b"a\nb\r\n", b"a\rb\r\n", b"trailing\r\r\n", b"\nx\r\n", b"a\n\rb\r\n", b"x\ry\nz\r\n"],
)
@pytest.mark.parametrize("before", [b"", b"..a\r\n", DOT_LINES], ids=["plain", "one-dot-line", "70-dot-lines"])
def test_bare_cr_or_lf_refused(content: bytes, before: bytes) -> None:
    t = drive_all_ways(ENVELOPE + DATA + before + content + b".\r\n" + b"NOOP\r\n")
    assert t.codes == HEAD + ["354", "554 5.6.0", "250 2.0.0"]
    assert b"554 5.6.0 Message contains bare CR or LF\r\n" in t.output


def test_nul_in_data_refused() -> None:
    t = drive_all_ways(ENVELOPE + DATA + b"a\x00b\r\n.\r\n")
    assert t.codes == HEAD + ["354", "554 5.6.0"]
    assert b"NUL" in t.output


def test_transaction_reset_after_refusal() -> None:
    t = drive_all_ways(ENVELOPE + DATA + b"a\nb\r\n.\r\n" + DATA)
    assert t.codes == HEAD + ["354", "554 5.6.0", "503 5.5.1"]


def test_size_limit_during_data() -> None:
    big = (b"y" * 98 + b"\r\n") * 11  # 1100 octets > 1000
    t = drive_all_ways(ENVELOPE + DATA + big + b".\r\nNOOP\r\n", max_bounded=CONFIG.max_auth_line_length)
    assert t.codes == HEAD + ["354", "552 5.3.4", "250 2.0.0"]
    refused = t.of(MessageRefused)
    assert len(refused) == 1 and refused[0].reply.code == 552  # type: ignore[attr-defined]


def test_size_limit_boundary() -> None:
    exact = b"y" * 998 + b"\r\n"  # 1000 octets
    t = drive_all_ways(ENVELOPE + DATA + exact + b".\r\n")
    assert messages(t) == [exact]
    # Doubled dots do not count (RFC 1870 3).
    stuffed = b".." + b"y" * 996 + b"\r\n"
    t = drive_all_ways(ENVELOPE + DATA + stuffed + b".\r\n")
    assert messages(t) == [b"." + b"y" * 996 + b"\r\n"]


def test_oversized_data_memory_stays_bounded() -> None:
    chunk = b"z" * 4094 + b"\r\n"
    chunks = [ENVELOPE + DATA] + [chunk] * 500 + [b".\r\nNOOP\r\n"]
    t = drive(chunks, max_bounded=CONFIG.max_auth_line_length)
    assert t.codes == HEAD + ["354", "552 5.3.4", "250 2.0.0"]


def test_unlimited_size() -> None:
    config = ServerConfig("mx.example.org", max_message_size=0)
    body = b"w" * 100_000 + b"\r\n"
    t = drive([ENVELOPE + DATA + body + b".\r\n"], config)
    assert messages(t) == [body]


def test_commands_pipelined_after_data() -> None:
    data = ENVELOPE + DATA + b"m1\r\n.\r\n" + b"MAIL FROM:<>\r\nRCPT TO:<c@example.org>\r\n" + DATA
    data += b"m2\r\n.\r\n"
    t = drive_all_ways(data)
    assert messages(t) == [b"m1\r\n", b"m2\r\n"]


# --- BDAT (RFC 3030) ---------------------------------------------------------------------


def test_bdat_chunks() -> None:
    data = ENVELOPE + b"BDAT 5\r\nhelloBDAT 8\r\n\r\n.\r\n.\r\nBDAT 0 LAST\r\nNOOP\r\n"
    t = drive_all_ways(data)
    assert messages(t) == [b"hello\r\n.\r\n.\r\n"]  # no dot handling in chunks
    assert t.codes == HEAD + ["250 2.0.0", "250 2.0.0", "250 2.0.0", "250 2.0.0"]
    assert b"250 2.0.0 5 octets received\r\n" in t.output
    message = t.of(MessageComplete)[0]
    assert isinstance(message, MessageComplete) and message.chunked
    assert message.line_feeds == 3  # BDAT messages are counted by the same check


def test_bdat_single_last_chunk() -> None:
    t = drive_all_ways(ENVELOPE + b"BDAT 4 last\r\nab\r\n")
    assert messages(t) == [b"ab\r\n"]


def test_bdat_zero_last_only() -> None:
    t = drive_all_ways(ENVELOPE + b"BDAT 0 LAST\r\n")
    assert messages(t) == [b""]


@pytest.mark.parametrize(
    "command", [b"BDAT\r\n", b"BDAT x\r\n", b"BDAT -1\r\n", b"BDAT 1 NOTLAST\r\n",
                b"BDAT 1 LAST x\r\n", b"BDAT " + b"9" * 21 + b"\r\n", b"BDAT  1\r\n"],
)
def test_bdat_bad_size(command: bytes) -> None:
    t = drive_all_ways(ENVELOPE + command)
    assert t.codes == HEAD + ["501 5.5.4"]


def test_bdat_without_mail_skips_chunk() -> None:
    t = drive_all_ways(b"EHLO c.example\r\nBDAT 4\r\nNOOPNOOP\r\n")
    assert t.codes == ["250", "503 5.5.1", "250 2.0.0"]


def test_bdat_without_valid_recipients_skips_chunk() -> None:
    data = (b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<unknown@example.org>\r\n"
            b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    t = drive_all_ways(data)
    assert t.codes == ["250", "250 2.1.0", "550 5.1.1", "554 5.5.1", "250 2.0.0"]


def test_data_after_bdat_is_refused() -> None:
    t = drive_all_ways(ENVELOPE + b"BDAT 2\r\nabDATA\r\nRCPT TO:<x@example.org>\r\nBDAT 0 LAST\r\n")
    assert t.codes == HEAD + ["250 2.0.0", "503 5.5.1", "503 5.5.1", "250 2.0.0"]
    assert messages(t) == [b"ab"]


def test_bdat_size_exceeded() -> None:
    data = ENVELOPE + b"BDAT 600\r\n" + b"a" * 600 + b"BDAT 500\r\n" + b"b" * 500
    data += b"BDAT 10 LAST\r\n" + b"c" * 10 + b"MAIL FROM:<>\r\n"
    t = drive_all_ways(data, max_bounded=CONFIG.max_auth_line_length)
    assert t.codes == HEAD + ["250 2.0.0", "552 5.3.4", "552 5.3.4", "250 2.1.0"]
    assert len(t.of(MessageRefused)) == 1
    assert t.of(MessageComplete) == []


def test_bdat_chunk_within_limit_that_overflows_is_drained() -> None:
    # The chunk alone fits (1000), the message does not (600 + 900): read, drop, go on.
    chunks = [ENVELOPE + b"BDAT 600\r\n" + b"q" * 600 + b"BDAT 900 LAST\r\n"]
    chunks += [b"q" * 300] * 3 + [b"NOOP\r\n"]
    t = drive(chunks, max_bounded=CONFIG.max_auth_line_length)
    assert t.codes == HEAD + ["250 2.0.0", "552 5.3.4", "250 2.0.0"]


@pytest.mark.parametrize("size", [b"1001", b"200000", b"99999999999999", b"9" * 20])
def test_bdat_chunk_over_the_limit_is_refused_at_once_and_closes(size: bytes) -> None:
    # RFC 3030 2: the octets follow the command; a chunk larger than any message we accept
    # is not read (it could be 90 TB), so the stream cannot be resynchronised: 552, close.
    for chunks in ([ENVELOPE + b"BDAT " + size + b" LAST\r\n" + b"q" * 10 + b"NOOP\r\n"],
                   bytewise(ENVELOPE + b"BDAT " + size + b"\r\nqqqq")):
        t = drive(chunks, eof=False)
        assert t.codes == HEAD + ["552 5.3.4"], t.output
        assert t.conn.closed and t.conn.close_reason is CloseReason.CHUNK_TOO_BIG
        refused = t.of(MessageRefused)
        assert len(refused) == 1 and refused[0].size == int(size)  # type: ignore[attr-defined]
        assert t.of(MessageComplete) == []
    # Also before MAIL: a sequence error cannot be skipped either.
    t = drive([b"EHLO c.example\r\nBDAT " + size + b"\r\nxx"], eof=False)
    assert t.codes == ["250", "552 5.3.4"] and t.conn.closed


def test_bdat_bare_lf_refused_at_last() -> None:
    t = drive_all_ways(ENVELOPE + b"BDAT 3\r\na\nbBDAT 2 LAST\r\n\r\n")
    assert t.codes == HEAD + ["250 2.0.0", "554 5.6.0"]


def test_bdat_crlf_split_across_chunks_is_not_bare() -> None:
    t = drive_all_ways(ENVELOPE + b"BDAT 2\r\na\rBDAT 1 LAST\r\n\n")
    assert messages(t) == [b"a\r\n"]


def test_rset_during_bdat() -> None:
    t = drive_all_ways(ENVELOPE + b"BDAT 2\r\nabRSET\r\nBDAT 1 LAST\r\nx")
    assert t.codes == HEAD + ["250 2.0.0", "250 2.0.0", "503 5.5.1"]


def test_eof_mid_chunk() -> None:
    t = drive_all_ways(ENVELOPE + b"BDAT 100 LAST\r\nshort")
    assert t.of(MessageComplete) == []
    assert t.conn.close_reason is CloseReason.EOF


@pytest.mark.parametrize("framing", ["DATA", "BDAT"])
def test_one_copy_of_the_message_while_the_shell_decides(framing: str) -> None:
    # The reading buffer (the dot decoder's, or the BDAT chunks) is freed before the
    # MessageComplete decision: the shell's delivery then holds the message and its
    # stored copy, not a third copy for as long as the store takes.
    body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1000  # 1 MB
    wire = (DATA + body + b".\r\n") if framing == "DATA" else b"BDAT %d LAST\r\n" % len(body) + body
    conn = ServerConnection(ServerConfig("mx.example.org", max_message_size=0))
    conn.send_greeting()
    tracemalloc.start()
    try:
        conn.receive_data(ENVELOPE + wire)
        while not isinstance(event := conn.next_event(), MessageComplete):
            assert not isinstance(event, MessageRefused)
            conn.accept()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert event.data == body
    assert held < 1.5 * len(body)
