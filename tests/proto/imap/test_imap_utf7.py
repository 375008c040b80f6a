"""Modified UTF-7 (RFC 3501 5.1.3) and the mailbox-name policy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.proto.imap import utf7
from postroom.proto.imap.utf7 import MailboxNameError

ROUND_TRIPS = [
    ("INBOX", b"INBOX"),
    ("", b""),
    ("a&b", b"a&-b"),
    ("&", b"&-"),
    ("~peter/mail/日本語/台北", b"~peter/mail/&ZeVnLIqe-/&U,BTFw-"),  # RFC 3501 5.1.3 example
    ("Entwürfe", b"Entw&APw-rfe"),
    ("é", b"&AOk-"),
    ("éé", b"&AOkA6Q-"),
    ("😀", b"&2D3eAA-"),  # astral: a UTF-16 surrogate pair
    ("a\tb", b"a&AAk-b"),  # control characters are base64 too
    ("Ünïcödé & more", b"&ANw-n&AO8-c&APY-d&AOk- &- more"),
]


@pytest.mark.parametrize(("text", "wire"), ROUND_TRIPS)
def test_round_trip(text: str, wire: bytes) -> None:
    assert utf7.encode_utf7(text) == wire
    assert utf7.decode_utf7(wire) == text


REJECTED = [
    b"&",  # unterminated
    b"a&AOk",  # unterminated shift
    b"&AGE-",  # "a" must represent itself
    b"&ACY-",  # "&" must be "&-"
    b"&AOk-&AOk-",  # adjacent shifts are not canonical
    b"&AOl-",  # non-zero padding bits
    b"&A-",  # too short to hold a UTF-16 unit
    b"&AOkA-",  # a leftover base64 digit
    b"&AOk=-",  # padding is not used
    b"&AO/-",  # "/" is "," in modified base64
    b"&2D0-",  # lone high surrogate
    b"a\xc3\xa9",  # 8-bit in modified UTF-7
    b"a\x01",  # control character raw
    b"&Jjo!",  # bad character in the shift
]


@pytest.mark.parametrize("wire", REJECTED)
def test_rejects_non_canonical(wire: bytes) -> None:
    with pytest.raises(MailboxNameError):
        utf7.decode_utf7(wire)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_round_trip_property(text: str) -> None:
    # Lone surrogates are not characters a client can send in either encoding.
    if any("\ud800" <= c <= "\udfff" for c in text):
        return
    wire = utf7.encode_utf7(text)
    assert all(0x20 <= b < 0x7F for b in wire)
    assert utf7.decode_utf7(wire) == text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=30))
def test_decode_random_bytes_only_raises_name_error(data: bytes) -> None:
    try:
        text = utf7.decode_utf7(data)
    except MailboxNameError:
        return
    # Whatever decodes must be the unique canonical encoding of its text.
    assert utf7.encode_utf7(text) == data


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"inbox", "INBOX"),
        (b"InBoX", "INBOX"),
        (b"INBOX", "INBOX"),
        (b"inbox/Sub", "INBOX/Sub"),
        (b"inboxes", "inboxes"),
        (b"Archive/inbox", "Archive/inbox"),
    ],
)
def test_inbox_normalization(raw: bytes, expected: str) -> None:
    assert utf7.decode_mailbox_name(raw, utf8=False) == expected
    assert utf7.decode_mailbox_name(raw, utf8=True) == expected


def test_dotless_i_is_not_inbox() -> None:
    # str.upper() maps "ı" to "I"; INBOX matching must be ASCII-only.
    assert utf7.normalize_inbox("ınbox") == "ınbox"


def test_utf8_mode_takes_ampersand_literally() -> None:
    assert utf7.decode_mailbox_name(b"R&D", utf8=True) == "R&D"
    assert utf7.decode_mailbox_name("Entwürfe".encode(), utf8=True) == "Entwürfe"
    with pytest.raises(MailboxNameError):
        utf7.decode_mailbox_name(b"R&D", utf8=False)
    with pytest.raises(MailboxNameError):
        utf7.decode_mailbox_name(b"\xff\xfe", utf8=True)


def test_raw_utf8_refused_without_utf8_mode() -> None:
    # RFC 9051 5.1 / RFC 6855 3: 8-bit names only after ENABLE UTF8=ACCEPT (or IMAP4rev2).
    with pytest.raises(MailboxNameError, match="8-bit"):
        utf7.decode_mailbox_name("Entwürfe".encode(), utf8=False)


def test_encode_mailbox_name() -> None:
    assert utf7.encode_mailbox_name("Entwürfe", utf8=False) == b"Entw&APw-rfe"
    assert utf7.encode_mailbox_name("Entwürfe", utf8=True) == "Entwürfe".encode()


@pytest.mark.parametrize(
    "name",
    ["", "a\x00b", "a\nb", "a\x7fb", "a\x85b", "x" * 513, "é" * 257],
)
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(MailboxNameError):
        utf7.check_name(name)


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "a/", "a//b", "../x", "a/./b", "a/../b", "a*", "50%", "/".join("a" * 33),
     "~root", "~", "~/mail", ".", "..", "a/..", "./a"],
)
def test_check_new_name_rejects(name: str) -> None:
    with pytest.raises(MailboxNameError):
        utf7.check_new_name(name)


@pytest.mark.parametrize("name", ["a~", "a/~b", ".hidden", "a/..b", "a/b/c", "Entwürfe", "x" * 512, "/".join("a" * 32)])
def test_check_new_name_accepts(name: str) -> None:
    utf7.check_new_name(name)
