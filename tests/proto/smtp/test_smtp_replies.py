"""Reply rendering and parsing (RFC 5321 4.2, RFC 2034)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.proto.smtp import replies as R
from postroom.proto.smtp.replies import (
    MalformedReply,
    Reply,
    SmtpError,
    SmtpUsageError,
    parse_reply,
    parse_reply_line,
)


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (R.OK, b"250 2.0.0 Ok\r\n"),
        (Reply(250, None, "a\nb\nc"), b"250-a\r\n250-b\r\n250 c\r\n"),
        (Reply(550, "5.1.1", "one\ntwo"), b"550-5.1.1 one\r\n550 5.1.1 two\r\n"),
        (R.START_MAIL_INPUT, b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        (Reply(250, None, ""), b"250\r\n"),
        (Reply(250, None, "x\n"), b"250-x\r\n250\r\n"),
        # Control characters cannot forge extra lines.
        (Reply(550, "5.0.0", "evil\r250 ok"), b"550 5.0.0 evil?250 ok\r\n"),
        (Reply(250, None, "caf\u00e9"), "250 caf\u00e9\r\n".encode()),
    ],
)
def test_to_bytes(reply: Reply, wire: bytes) -> None:
    assert reply.to_bytes() == wire


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [(199, None), (600, None), (250, "5.0.0"), (550, "2.0.0"), (250, "2.0"), (250, "x.y.z")],
)
def test_bad_reply_is_usage_error(code: int, enhanced: str | None) -> None:
    with pytest.raises(SmtpUsageError):
        Reply(code, enhanced, "x")


def test_properties() -> None:
    assert R.OK.is_positive and not R.OK.is_error
    assert R.START_MAIL_INPUT.is_intermediate
    assert R.TEMP_FAIL.is_transient and R.TEMP_FAIL.is_error
    assert R.UNKNOWN_USER.is_permanent
    assert R.SERVICE_UNAVAILABLE.closes and not R.OK.closes
    assert R.OK.with_text("Ok: queued as X").to_bytes() == b"250 2.0.0 Ok: queued as X\r\n"
    assert Reply(250, None, "a\nb").lines == ("a", "b")
    assert "550" in str(SmtpError(R.UNKNOWN_USER))


def test_every_constant_renders() -> None:
    for name in dir(R):
        value = getattr(R, name)
        if isinstance(value, Reply):
            wire = value.to_bytes()
            assert wire.endswith(b"\r\n")
            # RFC 2034: every 2xx/4xx/5xx constant carries an enhanced code.
            if value.code // 100 in (2, 4, 5):
                assert value.enhanced is not None, name


@pytest.mark.parametrize(
    ("line", "code", "last", "text"),
    [
        (b"250 ok\r\n", 250, True, "ok"),
        (b"250-ok\r\n", 250, False, "ok"),
        (b"250\r\n", 250, True, ""),
        (b"250\n", 250, True, ""),
        (b"421 4.7.0 bye", 421, True, "4.7.0 bye"),
        (b"250 caf\xff", 250, True, "caf\ufffd"),
    ],
)
def test_parse_reply_line(line: bytes, code: int, last: bool, text: str) -> None:
    parsed = parse_reply_line(line)
    assert (parsed.code, parsed.last, parsed.text) == (code, last, text)


@pytest.mark.parametrize("line", [b"", b"25\r\n", b"abc ok\r\n", b"2500 ok\r\n", b"250x\r\n",
                                  b"150 ok\r\n", b"260 ok\r\n"])
def test_parse_reply_line_malformed(line: bytes) -> None:
    with pytest.raises(MalformedReply):
        parse_reply_line(line)


def test_parse_reply_multiline_enhanced() -> None:
    reply = parse_reply([b"550-5.1.1 first\r\n", b"550-5.1.1 second\r\n", b"550 5.1.1 third\r\n"])
    assert reply == Reply(550, "5.1.1", "first\nsecond\nthird")


def test_parse_reply_enhanced_class_mismatch_kept_as_text() -> None:
    reply = parse_reply([b"250 5.0.0 weird\r\n"])
    assert reply == Reply(250, None, "5.0.0 weird")


def test_parse_reply_ehlo() -> None:
    reply = parse_reply([b"250-mx.example.org\r\n", b"250-SIZE 100\r\n", b"250 8BITMIME\r\n"])
    assert reply.enhanced is None
    assert reply.lines == ("mx.example.org", "SIZE 100", "8BITMIME")


@pytest.mark.parametrize(
    "lines",
    [[], [b"250-a\r\n", b"251 b\r\n"], [b"250 a\r\n", b"250 b\r\n"], [b"250-a\r\n"]],
)
def test_parse_reply_malformed(lines: list[bytes]) -> None:
    with pytest.raises(MalformedReply):
        parse_reply(lines)


_texts = st.lists(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30), min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from([220, 250, 251, 354, 421, 450, 451, 452, 500, 550, 554]),
    detail=st.integers(0, 999),
    texts=_texts,
)
def test_round_trip(code: int, detail: int, texts: list[str]) -> None:
    enhanced = None if code // 100 == 3 else f"{code // 100}.{detail % 10}.{detail}"
    texts = [t.strip(" ") for t in texts]
    reply = Reply(code, enhanced, "\n".join(texts))
    lines = [line + b"\r\n" for line in reply.to_bytes().split(b"\r\n")[:-1]]
    assert parse_reply(lines) == reply
