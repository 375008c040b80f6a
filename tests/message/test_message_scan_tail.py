"""``scan(tail_lf=...)``: LFs counted by the caller give the same summary as counting them.

The SMTP core counts a message's LFs for its bare CR/LF check and hands the count on, so
the scan does not count a text body a second time (``deliver.counted_tail``). The stored
summary and the prerendered IMAP items (BODYSTRUCTURE "lines") must not change by a
single octet: every shape below is scanned with the tail known from every possible offset
and compared with the scan that counts everything.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postroom import deliver
from postroom.message import scan

HEAD = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\nMessage-ID: <1@example.com>\r\n"
TEXT = b"Line one.\r\n.dot line\r\n\r\nlast line\r\n"
RFC822 = (
    b"From: inner@example.net\r\nSubject: inner\r\nContent-Type: text/plain\r\n\r\n"
    b"inner one\r\ninner two\r\n"
)
MULTIPART = (
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
    b"preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nfirst\r\npart\r\n"
    b"--b1\r\nContent-Type: message/rfc822\r\n\r\n" + RFC822 + b"\r\n"
    b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAAA\r\nBBBB\r\n--b1--\r\nepilogue\r\n"
)

SHAPES = {
    "text": HEAD + b"\r\n" + TEXT,
    "text without final CRLF": HEAD + b"\r\n" + TEXT + b"no end",
    "text, LF line ends": (HEAD + b"\r\n" + TEXT).replace(b"\r\n", b"\n"),
    "empty body": HEAD + b"\r\n",
    "headers only": HEAD,
    "headers only, no final CRLF": HEAD[:-2],
    "empty message": b"",
    "empty header": b"\r\n" + TEXT,
    "non-text single part": HEAD + b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\nBBBB\r\n",
    "message/rfc822": HEAD + b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + RFC822,
    "message/rfc822, headers only inside": HEAD + b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: only a header\r\n",
    "multipart": HEAD + MULTIPART,
    "multipart without close delimiter": HEAD + MULTIPART[: MULTIPART.index(b"--b1--")],
    "multipart, boundary never seen": HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
    b"boundary=zz\r\n\r\n" + TEXT,
    "text/html": HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n<p>\r\nx\r\n</p>\r\n",
}


def summaries(data: bytes, split: int) -> tuple[tuple[bytes, object], tuple[bytes, object]]:
    """(counted, with the LFs of ``data[split:]`` given) for the stored summary."""
    tail = (len(data) - split, data.count(b"\n", split))
    return deliver.summarize_for_store(data), deliver.summarize_for_store(data, tail)


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_split_gives_the_same_summary(name: str) -> None:
    data = SHAPES[name]
    for split in range(len(data) + 1):
        counted, given_tail = summaries(data, split)
        assert given_tail == counted, split
        assert scan(data, (len(data) - split, data.count(b"\n", split))) == scan(data)


@given(
    st.lists(st.sampled_from(list(SHAPES.values())), min_size=1, max_size=3),
    st.lists(st.sampled_from([b"Received: x\r\n", b"Return-Path: <a@b>\r\n", b"X: \r\n\t1\r\n"]), max_size=3),
    st.data(),
)
def test_any_shape_and_prepended_fields(parts: list[bytes], trace: list[bytes], draw: st.DataObject) -> None:
    # Shapes glued together make odd messages (a body holding a header, several empty
    # lines); prepended fields are what the SMTP path adds before storing.
    data = b"".join(trace) + b"".join(parts)
    split = draw.draw(st.integers(0, len(data)))
    counted, given_tail = summaries(data, split)
    assert given_tail == counted


def test_a_tail_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ValueError):
        scan(b"abc\r\n", (6, 1))
    with pytest.raises(ValueError):
        scan(b"abc\r\n", (2, -1))


def test_the_tail_count_is_what_the_scan_uses() -> None:
    # Not a test of the summary's value but that the hint is taken: a claim of 1,000
    # LFs in the body shows up as the line count (callers must only pass true counts).
    data = SHAPES["text"]
    body = len(data) - data.index(b"\r\n\r\n") - 4
    assert scan(data, (body, 1000)).root.lines == 1000
    assert scan(data).root.lines == 4


# --- deliver.counted_tail: what the SMTP shell passes --------------------------------------


@pytest.mark.parametrize("name", [n for n in SHAPES if b"\n" not in SHAPES[n].replace(b"\r\n", b"")])
def test_counted_tail_through_the_smtp_steps(name: str) -> None:
    received = SHAPES[name]
    lf = received.count(b"\n")
    data = deliver.prepare_headers(
        b"Return-Path: <forged@x>\r\n" + received if received.startswith(b"From") else received,
        drop=deliver.DROP_ALWAYS, submission=("mx.example", "Q1", "a@example.com"), max_received=50,
    )
    assert data is not None
    if received.startswith(b"From"):
        lf += 1  # the Return-Path line the client sent (and prepare_headers drops)
        received = b"Return-Path: <forged@x>\r\n" + received
    stored = b"".join((deliver.return_path("a@example.com"), b"Received: by mx\r\n", data))
    tail = deliver.counted_tail(received, lf, stored)
    assert tail is not None
    assert deliver.summarize_for_store(stored, tail) == deliver.summarize_for_store(stored)


def test_counted_tail_is_none_when_the_body_changed_or_was_not_counted() -> None:
    received = SHAPES["text"]
    lf = received.count(b"\n")
    assert deliver.counted_tail(received, None, received) is None
    # A step that changed the body (here: a missing final CRLF added) loses the hint.
    assert deliver.counted_tail(received + b"x", lf, received + b"x\r\n") is None
    assert deliver.counted_tail(received, lf, received.replace(b"last", b"LAST")) is None
    assert deliver.counted_tail(received, lf, b"X: 1\r\n" + received) == (
        len(TEXT) + 2, TEXT.count(b"\n") + 1
    )


@pytest.mark.parametrize("name", list(SHAPES))
def test_a_function_is_asked_only_when_a_line_count_can_use_it(name: str) -> None:
    data = SHAPES[name]
    asked: list[int] = []

    def tail() -> tuple[int, int]:
        asked.append(1)
        return len(data), data.count(b"\n")

    assert deliver.summarize_for_store(data, tail) == deliver.summarize_for_store(data)
    root = scan(data).root
    # Only a text or message leaf that runs to the end of the message has a use for it
    # (here: the root; none of these multiparts ends in a text part), and asks once.
    uses = not root.multipart and root.type in ("text", "message")
    assert len(asked) == (1 if uses else 0)
    # None from the function: counted as without it.
    assert scan(data, lambda: None) == scan(data)
