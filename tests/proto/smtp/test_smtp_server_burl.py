"""BURL (RFC 4468) through the server core: the shell answers BurlFetch with the URL's
octets (or a refusal), mixed with BDAT chunks, whole and byte at a time."""

from __future__ import annotations

from dataclasses import replace

from smtp_harness import CONFIG, ENVELOPE, default_policy, drive_all_ways

from postroom.proto.smtp import replies as R
from postroom.proto.smtp.events import BurlFetch, Event, MessageComplete, MessageRefused
from postroom.proto.smtp.server import ServerConnection

BURL_CONFIG = replace(CONFIG, burl=True)
URLS = {
    "imap://u@h/Drafts/;uid=1;urlauth=submit+u:internal:00": b"Subject: one\r\n\r\nbody\r\n",
    "imap://u@h/Drafts/;uid=2;urlauth=submit+u:internal:00": b"x" * 2000,
}


def policy(conn: ServerConnection, event: Event) -> None:
    if isinstance(event, BurlFetch):
        data = URLS.get(event.url)
        conn.burl_data(data) if data is not None else conn.reject(R.BURL_FAILED)
    else:
        default_policy(conn, event)


def test_burl_advertised_only_when_configured() -> None:
    on = drive_all_ways(b"EHLO c.example\r\n", BURL_CONFIG, policy)
    assert b"250-BURL\r\n" in on.output or b"250 BURL\r\n" in on.output
    off = drive_all_ways(b"EHLO c.example\r\nBURL imap://x LAST\r\n", CONFIG, policy)
    assert b"BURL" not in off.output.split(b"\r\n", 2)[1] and off.codes[-1] == "502 5.5.1"


def test_burl_last_completes_the_message() -> None:
    url = next(iter(URLS))
    t = drive_all_ways(ENVELOPE + b"BURL " + url.encode() + b" LAST\r\nNOOP\r\n", BURL_CONFIG, policy)
    assert [e.data for e in t.of(MessageComplete)] == [URLS[url]]
    assert t.of(BurlFetch) == [BurlFetch(url, True)]
    assert t.codes[-2:] == ["250 2.0.0", "250 2.0.0"]


def test_bdat_then_burl_then_bdat_last() -> None:
    url = next(iter(URLS))
    data = (ENVELOPE + b"BDAT 8\r\nX: 1\r\n\r\nBURL " + url.encode() + b"\r\nBDAT 3 LAST\r\nend")
    t = drive_all_ways(data + b"NOOP\r\n", BURL_CONFIG, policy)
    assert [e.data for e in t.of(MessageComplete)] == [b"X: 1\r\n\r\n" + URLS[url] + b"end"]
    assert t.replies[-3:-1] == [b"250 2.0.0 " + b"%d octets appended" % len(URLS[url]),
                                b"250 2.0.0 Ok: queued as Q1"]


def test_failed_url_ends_the_transaction() -> None:
    t = drive_all_ways(ENVELOPE + b"BURL imap://nowhere LAST\r\nBDAT 1 LAST\r\nx", BURL_CONFIG, policy)
    assert t.codes[-2:] == ["554 5.6.6", "503 5.5.1"]
    assert t.of(MessageComplete) == []


def test_burl_over_the_size_limit() -> None:
    url = list(URLS)[1]  # 2000 octets, the limit is 1000
    t = drive_all_ways(ENVELOPE + b"BURL " + url.encode() + b" LAST\r\nNOOP\r\n", BURL_CONFIG, policy)
    assert t.codes[-2:] == ["552 5.3.4", "250 2.0.0"] and len(t.of(MessageRefused)) == 1


def test_burl_syntax_and_sequence() -> None:
    t = drive_all_ways(b"EHLO c\r\nBURL\r\nBURL a b c\r\nBURL u SOON\r\nBURL imap://x LAST\r\n"
                       b"MAIL FROM:<a@b.example>\r\nDATA\r\n", BURL_CONFIG, policy)
    assert t.codes[1:] == ["501 5.5.4", "501 5.5.4", "501 5.5.4", "503 5.5.1", "250 2.1.0", "503 5.5.1"]
    url = next(iter(URLS))
    t = drive_all_ways(ENVELOPE + b"BURL " + url.encode() + b"\r\nDATA\r\n", BURL_CONFIG, policy)
    assert t.codes[-1] == "503 5.5.1"  # DATA cannot follow chunks (RFC 3030 3, RFC 4468 3)
