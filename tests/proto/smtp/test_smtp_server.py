"""Server core: commands, replies and sequencing, fed whole / byte at a time / split."""

from __future__ import annotations

import pytest
from smtp_harness import (
    CONFIG,
    EHLO,
    ENVELOPE,
    QUEUED,
    drive,
    drive_all_ways,
)

from postroom.proto.smtp import replies as R
from postroom.proto.smtp.events import (
    Hello,
    MailFrom,
    MessageComplete,
    RcptTo,
    Reset,
)
from postroom.proto.smtp.replies import SmtpUsageError
from postroom.proto.smtp.server import CloseReason, ServerConfig, ServerConnection, State

MAIL = b"MAIL FROM:<alice@example.com>\r\n"
RCPT = b"RCPT TO:<bob@example.org>\r\n"
BODY = b"Subject: hi\r\n\r\nhello\r\n.\r\n"

# (id, client bytes, final-line codes of the replies after the greeting)
TABLE: list[tuple[str, bytes, list[str]]] = [
    ("full session", ENVELOPE + b"DATA\r\n" + BODY + b"QUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("helo", b"HELO client.example\r\nQUIT\r\n", ["250", "221 2.0.0"]),
    ("ehlo/helo without argument", b"EHLO\r\nHELO   \r\n", ["501 5.5.4", "501 5.5.4"]),
    ("helo refused by shell", b"EHLO bad.example\r\n" + MAIL, ["550 5.7.1", "503 5.5.1"]),
    ("mail before helo", MAIL, ["503 5.5.1"]),
    ("rcpt before mail", EHLO + RCPT, ["250", "503 5.5.1"]),
    ("nested mail", ENVELOPE + MAIL, ["250", "250 2.1.0", "250 2.1.5", "503 5.5.1"]),
    ("data before rcpt", EHLO + MAIL + b"DATA\r\n", ["250", "250 2.1.0", "503 5.5.1"]),
    ("data before mail", EHLO + b"DATA\r\n", ["250", "503 5.5.1"]),
    ("data with argument", ENVELOPE + b"DATA x\r\n", ["250", "250 2.1.0", "250 2.1.5", "501 5.5.4"]),
    # RFC 2920 3.1: all recipients refused, pipelined DATA → 554; the data is read as commands.
    ("pipelined data after refused rcpts",
     EHLO + MAIL + b"RCPT TO:<unknown@example.org>\r\nRCPT TO:<later@example.org>\r\nDATA\r\n"
     + b"hello\r\n.\r\n",
     ["250", "250 2.1.0", "550 5.1.1", "450 4.2.1", "554 5.5.1", "500 5.5.1", "500 5.5.1"]),
    ("unknown command", b"FOO bar\r\n\r\n", ["500 5.5.1", "500 5.5.1"]),
    ("mail syntax", EHLO + b"MAIL TO:<a@b.example>\r\nMAIL FROM:a@b.example\r\nMAIL\r\n",
     ["250", "501 5.5.4", "501 5.1.7", "501 5.5.4"]),
    ("bad sender", EHLO + b"MAIL FROM:<a@b..example>\r\n", ["250", "501 5.1.7"]),
    ("bad recipient", EHLO + MAIL + b"RCPT TO:<a@@b.example>\r\nRCPT TO:<>\r\nRCPT FROM:<a@b.c>\r\n",
     ["250", "250 2.1.0", "501 5.1.3", "501 5.1.3", "501 5.5.4"]),
    ("unknown parameter", EHLO + b"MAIL FROM:<a@b.example> FOO=1\r\n", ["250", "555 5.5.4"]),
    ("unknown rcpt parameter", EHLO + MAIL + b"RCPT TO:<a@b.example> SIZE=1\r\n",
     ["250", "250 2.1.0", "555 5.5.4"]),
    ("conflicting repeated parameter", EHLO + b"MAIL FROM:<a@b.example> SIZE=1 size=2\r\n",
     ["250", "501 5.5.4"]),
    # smtplib adds SIZE to a caller's own size=: the same value twice is accepted.
    ("repeated parameter, same value", EHLO + b"MAIL FROM:<a@b.example> SIZE=123 size=123\r\n",
     ["250", "250 2.1.0"]),
    ("size over limit at MAIL", EHLO + b"MAIL FROM:<a@b.example> SIZE=1001\r\n"
     + b"MAIL FROM:<a@b.example> SIZE=1000\r\n", ["250", "552 5.3.4", "250 2.1.0"]),
    ("mail parameters", EHLO + b"MAIL FROM:<> BODY=8BITMIME RET=HDRS ENVID=x+2By AUTH=<>\r\n"
     + b"RCPT TO:<bob@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.org\r\n",
     ["250", "250 2.1.0", "250 2.1.5"]),
    ("rset", ENVELOPE + b"RSET x\r\nRSET\r\nDATA\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "501 5.5.4", "250 2.0.0", "503 5.5.1"]),
    ("noop help vrfy expn", b"NOOP\r\nNOOP whatever\r\nHELP\r\nHELP MAIL\r\nVRFY bob\r\nVRFY\r\n"
     + b"EXPN list\r\n", ["250 2.0.0", "250 2.0.0", "214 2.0.0", "214 2.0.0", "252 2.5.0",
                          "501 5.5.4", "502 5.5.1"]),
    ("quit with argument", b"QUIT now\r\nQUIT\r\nNOOP\r\n", ["501 5.5.4", "221 2.0.0"]),
    ("recipient limit", EHLO + MAIL + RCPT * 4, ["250", "250 2.1.0"] + ["250 2.1.5"] * 3
     + ["452 4.5.3"]),
    ("refused recipients do not count", EHLO + MAIL + b"RCPT TO:<unknown1@example.org>\r\n" * 2
     + RCPT * 3, ["250", "250 2.1.0", "550 5.1.1", "550 5.1.1"] + ["250 2.1.5"] * 3),
    ("NUL in command", b"NO\x00OP\r\nNOOP\r\n", ["500 5.5.2", "250 2.0.0"]),
    ("bare CR in command", b"NOOP\rRSET\r\n", ["500 5.5.2"]),
    ("invalid UTF-8 in command", b"NOOP \xff\xfe\r\n", ["500 5.5.2"]),
    ("bare LF ends a command line", b"NOOP\nNOOP\r\n", ["250 2.0.0", "250 2.0.0"]),
    ("line too long", b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n", ["500 5.5.2", "250 2.0.0"]),
    ("line at the limit", b"NOOP " + b"x" * (4096 - 7) + b"\r\n", ["250 2.0.0"]),
    ("line one over the limit", b"NOOP " + b"x" * (4096 - 6) + b"\r\nNOOP\r\n",
     ["500 5.5.2", "250 2.0.0"]),
    ("case-insensitive verbs", b"ehlo x.example\r\nmail from:<a@b.example>\r\nrcpt to:<c@d.example>\r\n",
     ["250", "250 2.1.0", "250 2.1.5"]),
    ("space after colon tolerated", EHLO + b"MAIL FROM: <a@b.example>\r\n", ["250", "250 2.1.0"]),
    ("sender refused by shell", EHLO + b"MAIL FROM:<spammer@b.example>\r\n" + MAIL,
     ["250", "550 5.7.1", "250 2.1.0"]),
    ("ehlo resets the transaction", ENVELOPE + EHLO + b"DATA\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "250", "503 5.5.1"]),
    ("smtputf8", EHLO + "MAIL FROM:<j\u00fcrgen@b\u00fccher.example> SMTPUTF8\r\n".encode()
     + "RCPT TO:<\u7528\u6237@example.org>\r\n".encode(), ["250", "250 2.1.0", "250 2.1.5"]),
    ("utf8 without smtputf8", EHLO + "MAIL FROM:<j\u00fcrgen@example.org>\r\n".encode() + MAIL
     + "RCPT TO:<\u7528\u6237@example.org>\r\n".encode(),
     ["250", "553 5.6.7", "250 2.1.0", "553 5.6.7"]),
    ("postmaster", EHLO + MAIL + b"RCPT TO:<Postmaster>\r\n", ["250", "250 2.1.0", "250 2.1.5"]),
    ("starttls not offered", b"STARTTLS\r\n", ["502 5.5.1"]),
    ("http proxy probe", b"POST / HTTP/1.1\r\nHost: x\r\n", ["421 4.7.0"]),
    ("connect probe", b"CONNECT a:25 HTTP/1.0\r\n", ["421 4.7.0"]),
    ("other http verbs", b"EHLO x\r\nOPTIONS * HTTP/1.1\r\nNOOP\r\n", ["250", "421 4.7.0"]),
    ("any http request line", b"BREW /pot HTTP/1.1\r\nNOOP\r\n", ["421 4.7.0"]),
    ("header field as command", b"NOOP\r\nHost: mail.example.org\r\nNOOP\r\n",
     ["250 2.0.0", "421 4.7.0"]),
    ("not foreign: unknown word", b"HTTP/1.1 GET\r\nNOOP\r\n", ["500 5.5.1", "250 2.0.0"]),
]


@pytest.mark.parametrize(("data", "codes"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_table(data: bytes, codes: list[str]) -> None:
    transcript = drive_all_ways(data)
    assert transcript.codes == codes


def test_ehlo_reply_lists_extensions() -> None:
    t = drive([EHLO])
    assert t.output == (
        b"220 mx.example.org ESMTP\r\n"
        b"250-mx.example.org\r\n"
        b"250-PIPELINING\r\n"
        b"250-SIZE 1000\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n"
        b"250-CHUNKING\r\n"
        b"250-DSN\r\n"
        b"250 AUTH PLAIN LOGIN\r\n"
    )
    assert t.events == [Hello(True, "client.example", True)]
    assert t.conn.helo == "client.example" and t.conn.esmtp


def test_ehlo_minimal_config() -> None:
    config = ServerConfig(
        "mx.example.org", pipelining=False, eightbitmime=False, smtputf8=False,
        chunking=False, dsn=False,
    )
    t = drive([EHLO], config)
    assert t.output.endswith(b"250-mx.example.org\r\n250-SIZE\r\n250 ENHANCEDSTATUSCODES\r\n")
    # Parameters of extensions not offered are unknown; BDAT is not implemented.
    t = drive([EHLO + b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\nBDAT 0 LAST\r\n"], config)
    assert t.codes == ["250", "555 5.5.4", "502 5.5.1"]


def test_helo_reply() -> None:
    t = drive([b"HELO client.example\r\n"])
    assert t.output.endswith(b"250 mx.example.org\r\n")
    assert t.events == [Hello(False, "client.example", True)]


@pytest.mark.parametrize(
    ("arg", "valid"),
    [("client.example", True), ("[192.0.2.1]", True), ("[IPv6:::1]", True), ("localhost", True),
     ("not a name", False), ("under_score.example", False), ("trailing.", False)],
)
def test_hello_valid_flag(arg: str, valid: bool) -> None:
    t = drive([f"EHLO {arg}\r\n".encode()])
    assert t.events == [Hello(True, arg, valid)]


def test_full_session_events() -> None:
    t = drive_all_ways(ENVELOPE + b"DATA\r\n" + BODY + b"QUIT\r\n")
    kinds = [type(e) for e in t.events]
    assert kinds == [Hello, MailFrom, RcptTo, MessageComplete]
    message = t.of(MessageComplete)[0]
    assert isinstance(message, MessageComplete)
    assert message.data == b"Subject: hi\r\n\r\nhello\r\n"
    assert message.sender.address is not None
    assert str(message.sender.address) == "alice@example.com"
    assert [str(r.path) for r in message.recipients] == ["<bob@example.org>"]
    assert not message.chunked and message.size == len(message.data)
    assert message.line_feeds == 3  # counted by the bare CR/LF check, for the MIME scan
    assert b"250 2.0.0 Ok: queued as Q1\r\n" in t.output
    assert t.conn.close_reason is CloseReason.QUIT
    assert "hello" not in repr(message)


def test_reset_event_and_state() -> None:
    t = drive_all_ways(ENVELOPE + b"RSET\r\n")
    assert isinstance(t.events[-1], Reset)
    assert t.conn.sender is None and t.conn.recipients == ()


def test_too_many_errors_closes() -> None:
    t = drive_all_ways(b"FOO\r\n" * 60)
    assert t.codes == ["500 5.5.1"] * 50 + ["421 4.7.0"]
    assert t.conn.close_reason is CloseReason.TOO_MANY_ERRORS


def test_refused_recipients_count_as_errors_but_452_does_not() -> None:
    config = ServerConfig("mx.example.org", max_errors=3, max_recipients=1)
    data = (EHLO + MAIL + b"RCPT TO:<unknown@example.org>\r\n" * 2 + RCPT + RCPT * 5
            + b"FOO\r\nNOOP\r\n")
    t = drive([data], config)
    assert t.codes == ["250", "250 2.1.0", "550 5.1.1", "550 5.1.1", "250 2.1.5"] + [
        "452 4.5.3"] * 5 + ["500 5.5.1", "421 4.7.0"]
    assert t.conn.close_reason is CloseReason.TOO_MANY_ERRORS


def test_error_count_restarts_after_accepted_message() -> None:
    config = ServerConfig("mx.example.org", max_errors=3)
    data = b"FOO\r\nFOO\r\n" + ENVELOPE + b"DATA\r\n" + BODY + b"FOO\r\nFOO\r\nNOOP\r\n"
    t = drive([data], config)
    assert t.codes[-3:] == ["500 5.5.1", "500 5.5.1", "250 2.0.0"]
    assert t.conn.error_count == 2


def test_eof_mid_transaction_ends_cleanly() -> None:
    t = drive_all_ways(ENVELOPE + b"DATA\r\nSubject: x\r\n\r\npartial")
    assert [type(e) for e in t.events] == [Hello, MailFrom, RcptTo]
    assert t.conn.close_reason is CloseReason.EOF
    assert t.conn.state is State.CLOSED


def test_eof_mid_command() -> None:
    t = drive_all_ways(b"NOOP\r\nNOO")
    assert t.codes == ["250 2.0.0"]
    assert t.conn.close_reason is CloseReason.EOF


def test_forbidden_command_reason() -> None:
    t = drive([b"GET / HTTP/1.0\r\n"])
    assert t.conn.close_reason is CloseReason.PROTOCOL_ABUSE


def test_pipelined_decisions_one_at_a_time() -> None:
    conn = ServerConnection(CONFIG)
    conn.send_greeting()
    conn.receive_data(ENVELOPE + RCPT + b"DATA\r\n" + BODY)
    seen = []
    out = []
    while True:
        ev = conn.next_event()
        if not isinstance(ev, (Hello, MailFrom, RcptTo, MessageComplete)):
            break
        seen.append(type(ev).__name__)
        with pytest.raises(SmtpUsageError):
            conn.next_event()  # the decision must come first
        # Nothing after the pending command was answered yet.
        out.append(conn.data_to_send())
        conn.accept(QUEUED if isinstance(ev, MessageComplete) else None)
    assert seen == ["Hello", "MailFrom", "RcptTo", "RcptTo", "MessageComplete"]
    assert out[0] == b"220 mx.example.org ESMTP\r\n"
    assert out[1].startswith(b"250-mx.example.org")
    assert out[2] == b"250 2.1.0 Ok\r\n"
    assert out[3] == b"250 2.1.5 Ok\r\n"
    assert out[4] == b"250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    assert conn.data_to_send() == b"250 2.0.0 Ok: queued as Q1\r\n"


def test_states() -> None:
    conn = ServerConnection(CONFIG)
    assert conn.state is State.GREETING
    conn.send_greeting()
    assert conn.state is State.CONNECTED
    conn.receive_data(EHLO + MAIL + RCPT + b"DATA\r\nabc")
    conn.next_event()
    conn.accept()
    assert conn.state is State.READY
    conn.next_event()
    conn.accept()
    assert conn.state is State.MAIL
    conn.next_event()
    conn.accept()
    assert conn.next_event() is not None
    assert conn.state is State.DATA
    conn.receive_data(b"\r\n.\r\n")
    assert isinstance(conn.next_event(), MessageComplete)
    conn.reject(R.TEMP_FAIL)
    assert conn.state is State.READY
    assert conn.data_to_send().endswith(b"451 4.3.0 Temporary failure, try again later\r\n")
