"""The receiver: literals of all three forms, limits, continuation, modes, buffer access."""

from __future__ import annotations

from typing import Any

import pytest
from imap_driver import Refused, drive, drive_both

from postroom.proto.imap import commands as c
from postroom.proto.imap.commands import State
from postroom.proto.imap.grammar import ImapPeerError, ImapUsageError
from postroom.proto.imap.receiver import (
    NEED_DATA,
    AuthCancelled,
    AuthResponse,
    ConnectionClosed,
    ContinuationRequest,
    IdleDone,
    Limits,
    Receiver,
)
from postroom.proto.imap.sequence import SequenceSet

CLOSED = ConnectionClosed()
SMALL = Limits(
    max_line=100,
    max_literal=10,
    max_append_literal=20,
    max_command=60,
    max_literals=3,
    max_discard=50,
)


def events(data: bytes, **kw: Any) -> list[Any]:
    return drive_both(data, **kw)


# --- literals ------------------------------------------------------------------------------
def test_synchronising_literal_asks_for_continuation() -> None:
    assert events(b"a LOGIN {3}\r\nbob pw\r\n", state=State.NOT_AUTHENTICATED) == [
        ContinuationRequest("a", 3),
        c.Login("a", "bob", b"pw"),
        CLOSED,
    ]


def test_non_synchronising_literal_does_not() -> None:
    assert events(b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n", state=State.NOT_AUTHENTICATED) == [
        c.Login("a", "bob", b"pw"),
        CLOSED,
    ]


def test_literal8_in_append() -> None:
    data = b"a APPEND INBOX ~{5}\r\nx\x00y\r\n\r\n"
    assert events(data) == [
        ContinuationRequest("a", 5),
        c.Append("a", "INBOX", (c.AppendMessage(b"x\x00y\r\n", binary=True),)),
        CLOSED,
    ]


def test_literal8_refused_elsewhere_before_continuation() -> None:
    assert events(b"a LOGIN ~{3}\r\n", state=State.NOT_AUTHENTICATED) == [
        Refused(b"a BAD literal8 is only allowed in APPEND and SETMETADATA\r\n"),
        CLOSED,
    ]


def test_literal_holding_crlf_and_markers_is_opaque() -> None:
    body = b"a NOOP {5}\r\n\r\nb CAPABILITY\r\n"
    data = b"t APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n"
    assert events(data) == [c.Append("t", "INBOX", (c.AppendMessage(body),)), CLOSED]


def test_zero_length_literal() -> None:
    assert events(b'a LOGIN {0}\r\n ""\r\n', state=State.NOT_AUTHENTICATED) == [
        ContinuationRequest("a", 0),
        c.Login("a", "", b""),
        CLOSED,
    ]


def test_bare_lf_line_endings_tolerated() -> None:
    assert events(b"a LOGIN {3}\nbob pw\nb NOOP\n", state=State.NOT_AUTHENTICATED) == [
        ContinuationRequest("a", 3),
        c.Login("a", "bob", b"pw"),
        c.Noop("b"),
        CLOSED,
    ]


def test_marker_not_at_line_end_is_just_text() -> None:
    assert events(b"a LOGIN {3} pw\r\n", state=State.NOT_AUTHENTICATED) == [
        Refused(b"a BAD Invalid literal\r\n"),
        CLOSED,
    ]


# --- literal limits ----------------------------------------------------------------------
def test_sync_literal_over_limit_refused_without_continuation() -> None:
    # The client must not send the data after the BAD; what follows is the next command.
    assert events(b"a LOGIN {11}\r\nb NOOP\r\n", limits=SMALL, state=State.NOT_AUTHENTICATED) == [
        Refused(b"a BAD [TOOBIG] Literal too large\r\n"),
        c.Noop("b"),
        CLOSED,
    ]


def test_append_over_limit_is_no_toobig() -> None:
    assert events(b"a APPEND INBOX {21}\r\nb NOOP\r\n", limits=SMALL) == [
        Refused(b"a NO [TOOBIG] Literal too large\r\n"),
        c.Noop("b"),
        CLOSED,
    ]
    ok = events(b"a APPEND INBOX {20}\r\n" + b"x" * 20 + b"\r\n", limits=SMALL)
    assert ok[0] == ContinuationRequest("a", 20)
    assert isinstance(ok[1], c.Append)


def test_nonsync_literal_over_limit_is_read_and_discarded() -> None:
    data = b"a LOGIN {11+}\r\n" + b"b NOOP\r\nxxx" + b" {3+}\r\nc N\r\nd NOOP\r\n"
    assert events(data, limits=SMALL, state=State.NOT_AUTHENTICATED) == [
        Refused(b"a BAD [TOOBIG] Literal too large\r\n"),
        c.Noop("d"),
        CLOSED,
    ]


def test_nonsync_discard_stops_at_sync_marker() -> None:
    data = b"a LOGIN {11+}\r\n" + b"x" * 11 + b" {3}\r\nd NOOP\r\n"
    assert events(data, limits=SMALL, state=State.NOT_AUTHENTICATED) == [
        Refused(b"a BAD [TOOBIG] Literal too large\r\n"),
        c.Noop("d"),
        CLOSED,
    ]


def test_nonsync_literal_beyond_discard_limit_closes() -> None:
    data = b"a LOGIN {51+}\r\n" + b"x" * 51
    assert events(data, limits=SMALL, state=State.NOT_AUTHENTICATED) == [
        Refused(b"* BYE [TOOBIG] Literal too large\r\n", close=True)
    ]
    huge = b"a LOGIN {99999999999999999999999999+}\r\n"
    assert events(huge, limits=SMALL, state=State.NOT_AUTHENTICATED) == [
        Refused(b"* BYE [TOOBIG] Literal too large\r\n", close=True)
    ]


def test_huge_sync_literal_digits_refused() -> None:
    assert events(b"a LOGIN {99999999999999999999999999}\r\n", state=State.NOT_AUTHENTICATED) == [
        Refused(b"a BAD [TOOBIG] Literal too large\r\n"),
        CLOSED,
    ]


def test_whole_command_size_limit() -> None:
    # Each literal fits max_append_literal (20), but the command passes max_command (60).
    data = b"a APPEND INBOX {20}\r\n" + b"x" * 20 + b" {20}\r\n"
    assert events(data, limits=SMALL) == [
        ContinuationRequest("a", 20),
        Refused(b"a NO [TOOBIG] Command too large\r\n"),
        CLOSED,
    ]


def test_too_many_literals() -> None:
    data = b"a ID ({1}\r\na {1}\r\nb {1}\r\nc {1}\r\n"
    out = events(data, limits=SMALL)
    assert out[-2:] == [Refused(b"a BAD [LIMIT] Too many literals in one command\r\n"), CLOSED]


def test_literal_for_command_without_arguments() -> None:
    assert events(b"a NOOP {3}\r\nb NOOP\r\n") == [
        Refused(b"a BAD This command takes no arguments\r\n"),
        c.Noop("b"),
        CLOSED,
    ]


def test_unknown_command_refused_before_literal() -> None:
    assert events(b"a XYZZY {3}\r\nb NOOP\r\n") == [
        Refused(b"a BAD Unknown command\r\n"),
        c.Noop("b"),
        CLOSED,
    ]
    # ...and a non-synchronising literal of it is skipped, not executed
    assert events(b"a XYZZY {8+}\r\nb LOGOUT\r\n\r\nc NOOP\r\n") == [
        Refused(b"a BAD Unknown command\r\n"),
        c.Noop("c"),
        CLOSED,
    ]


def test_state_checked_before_literal() -> None:
    data = b"a APPEND INBOX {5}\r\n"
    assert events(data, state=State.NOT_AUTHENTICATED) == [
        Refused(b"a BAD Command not valid in this state\r\n"),
        CLOSED,
    ]


def test_bad_tag_with_nonsync_literal_is_skipped() -> None:
    assert events(b"* LOGIN {6+}\r\nb NOOP\r\nc NOOP\r\n") == [
        Refused(b"* BAD Missing or invalid tag\r\n"),
        c.Noop("c"),
        CLOSED,
    ]


# --- line limits ----------------------------------------------------------------------------
def test_line_over_limit_closes_however_split() -> None:
    data = b"a NOOP " + b"x" * 200 + b"\r\nb NOOP\r\n"
    expected = [Refused(b"* BYE [TOOBIG] Command line too long\r\n", close=True)]
    assert events(data, limits=SMALL) == expected
    assert drive(data, step=7, limits=SMALL) == expected
    # without a newline at all
    assert drive(b"x" * 500, limits=SMALL, eof=False) == expected


def test_line_limit_counts_all_segments() -> None:
    # each segment is short, but the text outside literals adds up past max_line
    seg = b"a ID (" + b'"k" "v" ' * 6 + b"{1}\r\n"
    data = seg + b"x" + b' "v" ' * 30 + b")\r\n"
    assert events(data, limits=SMALL)[-1] == Refused(
        b"* BYE [TOOBIG] Command line too long\r\n", close=True
    )


def test_exact_line_limit_is_fine() -> None:
    line = b"a NOOP\r\n"
    limits = Limits(max_line=len(line))
    assert events(line, limits=limits) == [c.Noop("a"), CLOSED]
    assert events(line + line, limits=limits) == [c.Noop("a"), c.Noop("a"), CLOSED]


@pytest.mark.parametrize(
    "request_line",
    [b"GET / HTTP/1.1\r\n", b"POST /login HTTP/1.0\r\n", b"CONNECT mail:143 HTTP/1.1\r\n"],
)
def test_http_request_line_closes_at_once(request_line: bytes) -> None:
    # ALPACA-style cross-protocol request: one BYE, no BAD per header line.
    data = request_line + b"Host: x\r\nUser-Agent: y\r\n\r\n"
    expected = [Refused(b"* BYE This is an IMAP server, not an HTTP server\r\n", close=True)]
    for state in (State.NOT_AUTHENTICATED, State.AUTHENTICATED):
        assert drive_both(data, state=state) == expected
    # After a real command too; and a mailbox that happens to be called HTTP/1.1 is fine.
    assert events(b"a NOOP\r\n" + data)[1:] == expected
    assert events(b"a SELECT HTTP/1.1\r\n")[0] == c.Select("a", "HTTP/1.1")


def test_empty_lines_ignored() -> None:
    assert events(b"\r\n\n\r\na NOOP\r\n") == [c.Noop("a"), CLOSED]


# --- laziness: state, limits and utf8 changes between pipelined commands ---------------------
def test_state_and_limits_change_between_pipelined_commands() -> None:
    seen: list[Any] = []

    def execute(rx: Receiver, event: Any) -> None:
        seen.append(event)
        if isinstance(event, c.Login):
            rx.state = State.AUTHENTICATED
            rx.limits = Limits.authenticated(append_limit=100)
        elif isinstance(event, c.Select):
            rx.state = State.SELECTED
        elif isinstance(event, c.Enable):
            rx.utf8 = True

    data = (
        b"a LOGIN bob pw\r\n"
        b"b APPEND INBOX {50}\r\n" + b"x" * 50 + b"\r\n"
        b"c SELECT INBOX\r\n"
        b"d FETCH 1 FLAGS\r\n"
        b"e ENABLE UTF8=ACCEPT\r\n"
        b"f COPY 1 R&D\r\n"
    )
    for step in (None, 1, 5):
        seen.clear()
        out = drive(data, step=step, state=State.NOT_AUTHENTICATED, on_event=execute)
        assert out[-1] == CLOSED
        assert [type(e).__name__ for e in out[:-1]] == [
            "Login",
            "ContinuationRequest",
            "Append",
            "Select",
            "Fetch",
            "Enable",
            "Copy",
        ]
        assert out[-2] == c.Copy("f", False, SequenceSet.parse("1"), "R&D")


# --- IDLE --------------------------------------------------------------------------------
def _idle_driver(rx: Receiver, event: Any) -> None:
    if isinstance(event, c.Idle):
        rx.expect_idle_done(event.tag)


def test_idle_done() -> None:
    data = b"a IDLE\r\nDONE\r\nb NOOP\r\n"
    for step in (None, 1):
        assert drive(data, step=step, on_event=_idle_driver) == [
            c.Idle("a"),
            IdleDone("a"),
            c.Noop("b"),
            CLOSED,
        ]
    assert drive(b"a IDLE\r\ndone\r\n", on_event=_idle_driver)[1] == IdleDone("a")


def test_idle_other_line_is_bad() -> None:
    data = b"a IDLE\r\nb NOOP\r\nc NOOP\r\n"
    assert drive(data, on_event=_idle_driver) == [
        c.Idle("a"),
        Refused(b"a BAD Expected DONE\r\n"),
        c.Noop("c"),
        CLOSED,
    ]


def test_idle_line_limit() -> None:
    out = drive(b"a IDLE\r\n" + b"D" * 200, limits=SMALL, on_event=_idle_driver, eof=False)
    assert out[-1] == Refused(b"* BYE [TOOBIG] Command line too long\r\n", close=True)


# --- AUTHENTICATE -----------------------------------------------------------------------------
def _auth_driver(rounds: int) -> Any:
    left = [rounds]

    def on_event(rx: Receiver, event: Any) -> None:
        if isinstance(event, (c.Authenticate, AuthResponse)) and left[0] > 0:
            left[0] -= 1
            rx.expect_auth_response(event.tag, max_len=40)

    return on_event


def test_authenticate_responses() -> None:
    data = b"a AUTHENTICATE PLAIN\r\nAGJvYgBwdw==\r\n\r\nb NOOP\r\n"
    for step in (None, 1):
        assert drive(data, step=step, state=State.NOT_AUTHENTICATED, on_event=_auth_driver(2)) == [
            c.Authenticate("a", "PLAIN"),
            AuthResponse("a", b"\x00bob\x00pw"),
            AuthResponse("a", b""),
            c.Noop("b"),
            CLOSED,
        ]


def test_authenticate_cancel_and_bad_base64() -> None:
    out = drive(
        b"a AUTHENTICATE PLAIN\r\n*\r\n", state=State.NOT_AUTHENTICATED, on_event=_auth_driver(1)
    )
    assert out[1] == AuthCancelled("a")
    out = drive(
        b"a AUTHENTICATE PLAIN\r\n!!\r\nb NOOP\r\n",
        state=State.NOT_AUTHENTICATED,
        on_event=_auth_driver(1),
    )
    assert out[1:] == [Refused(b"a BAD Invalid base64\r\n"), c.Noop("b"), CLOSED]


def test_authenticate_line_limit() -> None:
    out = drive(
        b"a AUTHENTICATE PLAIN\r\n" + b"A" * 44 + b"\r\n",
        state=State.NOT_AUTHENTICATED,
        on_event=_auth_driver(1),
    )
    assert out[-1] == Refused(b"* BYE [TOOBIG] Command line too long\r\n", close=True)


def test_auth_response_repr_hides_data() -> None:
    assert "secret" not in repr(AuthResponse("a", b"secret"))


# --- buffer access: STARTTLS and COMPRESS ------------------------------------------------------
def test_starttls_discards_injected_commands() -> None:
    rx = Receiver()
    rx.receive_data(b"a STARTTLS\r\nb LOGIN evil pw\r\n")
    assert rx.next_event() == c.StartTls("a")
    assert rx.discard_buffered() == len(b"b LOGIN evil pw\r\n")
    assert rx.next_event() is NEED_DATA
    rx.receive_data(b"c NOOP\r\n")
    assert rx.next_event() == c.Noop("c")


def test_compress_hands_over_the_rest_untouched() -> None:
    rx = Receiver(Limits.authenticated(), state=State.AUTHENTICATED)
    rx.receive_data(b"a COMPRESS DEFLATE\r\n\x78\x9c\x00\x01")
    assert rx.next_event() == c.Compress("a", "DEFLATE")
    assert rx.take_buffered() == b"\x78\x9c\x00\x01"
    assert rx.buffered_size == 0
    rx.receive_data(b"b NOOP\r\n")  # what the shell feeds after inflating
    assert rx.next_event() == c.Noop("b")


def test_mode_switches_only_at_boundaries() -> None:
    rx = Receiver()
    rx.receive_data(b"a LOGIN {3}\r\n")
    assert rx.next_event() == ContinuationRequest("a", 3)
    for call in (rx.discard_buffered, rx.take_buffered, lambda: rx.expect_idle_done("a")):
        with pytest.raises(ImapUsageError):
            call()
    rx.receive_data(b"bo")
    assert rx.next_event() is NEED_DATA
    with pytest.raises(ImapUsageError):
        rx.expect_auth_response("a")


# --- end of stream and closing ------------------------------------------------------------------
def test_eof_mid_command_and_after_close() -> None:
    assert events(b"a LOGIN {5}\r\nbo", state=State.NOT_AUTHENTICATED) == [
        ContinuationRequest("a", 5),
        CLOSED,
    ]
    assert events(b"a NOO") == [CLOSED]
    rx = Receiver(SMALL)
    rx.receive_data(b"x" * 200)
    with pytest.raises(ImapPeerError) as exc:
        rx.next_event()
    assert exc.value.close
    assert rx.next_event() == CLOSED
    rx.receive_data(b"a NOOP\r\n")  # ignored after close
    assert rx.next_event() == CLOSED


def test_large_append_literal_single_object() -> None:
    body = b"x" * (3 * 1024 * 1024)
    rx = Receiver(Limits.authenticated(), state=State.AUTHENTICATED)
    rx.receive_data(b"a APPEND INBOX {%d}\r\n" % len(body))
    assert rx.next_event() == ContinuationRequest("a", len(body))
    for i in range(0, len(body), 65536):
        assert rx.next_event() is NEED_DATA
        rx.receive_data(body[i : i + 65536])
    rx.receive_data(b"\r\n")
    event = rx.next_event()
    assert isinstance(event, c.Append)
    assert event.messages[0].data == body
    assert rx.buffered_size == 0
