"""ENVELOPE and BODYSTRUCTURE rendered at delivery are exactly what FETCH renders live, and
a summary without them (stored before they existed) still reads as before."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.deliver import summarize
from postroom.message import MessageSummary, scan
from postroom.message.model import header_block_end, header_summary
from postroom.proto.imap.bodystructure import bodystructure_bytes, envelope_bytes
from postroom.proto.imap.prerender import prerender, prerendered

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from support.mailgen import mailbox  # noqa: E402


def _check(data: bytes) -> None:
    raw = summarize(data)
    summary = scan(data)
    items = prerendered(raw)
    assert items is not None
    assert items.envelope == envelope_bytes(summary)
    assert items.bodystructure == bodystructure_bytes(summary, True)
    assert items.bodystructure_rev2 == bodystructure_bytes(summary, True, rev2=True)
    # the summary itself still reads the same, whatever follows it
    assert MessageSummary.from_bytes(raw) == summary
    assert MessageSummary.from_bytes(raw.decode("ascii")) == summary
    assert header_block_end(raw) == summary.root.body_start
    assert header_summary(raw) is not None
    assert raw.isascii()


def test_generated_mail_renders_alike() -> None:
    for data in mailbox(60, "u@example.test", seed=7):
        _check(data)


def test_eight_bit_headers_and_message_global() -> None:
    _check("From: Jörg <j@example.de>\r\nSubject: Grüße\r\n\r\nhi\r\n".encode())
    inner = b"Subject: inner\r\nFrom: x@y\r\n\r\nin\r\n"
    data = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: message/global\r\n\r\n" + inner + b"--b--\r\n"
    )
    _check(data)
    items = prerendered(summarize(data))
    assert items is not None and items.bodystructure != items.bodystructure_rev2


def test_summaries_without_prerendered_items() -> None:
    summary = scan(b"Subject: old\r\n\r\nbody\r\n")
    assert prerendered(summary.to_bytes()) is None
    assert prerendered(summary.to_bytes() + b"\nnot json") is None
    assert prerendered(summary.to_bytes() + b"\n[1]") is None


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_any_message_round_trips(data: bytes) -> None:
    summary = scan(data)
    raw = summary.to_bytes() + b"\n" + prerender(summary)
    items = prerendered(raw)
    assert items is not None and items.envelope == envelope_bytes(summary)
    assert MessageSummary.from_bytes(raw) == summary


def test_smtp_delivery_stores_the_prerendered_items_too() -> None:
    """SMTP delivery computes its summary with the search texts (summarize_for_store):
    the stored bytes are the same as APPEND's, prerendered items included."""
    from postroom.deliver import summarize_for_store

    data = b"From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    stored, _ = summarize_for_store(data)
    assert stored == summarize(data)
    assert prerendered(stored) is not None
