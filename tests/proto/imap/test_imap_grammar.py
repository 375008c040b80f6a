"""The formal-syntax primitives (RFC 9051 9) one production at a time."""

from __future__ import annotations

import datetime

import pytest

from postroom.proto.imap.grammar import (
    ImapPeerError,
    ImapUsageError,
    Parser,
    canonical_flag,
    decode_base64,
)


def parse(data: bytes, literals: tuple[bytes, ...] = (), **kw: object) -> Parser:
    return Parser(data, literals, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "value", "rest"),
    [
        (b"abc def", b"abc", b" def"),
        (b"a.b-c_d$e!f", b"a.b-c_d$e!f", b""),
        (b"x[1] y", b"x[1", b"] y"),  # "]" ends an atom
        (b"x(y", b"x", b"(y"),
        (b"x{y", b"x", b"{y"),
        (b'x"y', b"x", b'"y'),
        (b"x%y*", b"x", b"%y*"),
        (b"x\\y", b"x", b"\\y"),
    ],
)
def test_atom(data: bytes, value: bytes, rest: bytes) -> None:
    p = parse(data)
    assert p.atom() == value
    assert data[p.pos :] == rest


@pytest.mark.parametrize("data", [b"", b" x", b"(x", b"\x01", b"\x80", b"]"])
def test_atom_rejects(data: bytes) -> None:
    with pytest.raises(ImapPeerError):
        parse(data).atom()


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'""', b""),
        (b'"hello world"', b"hello world"),
        (b'"a\\"b"', b'a"b'),
        (b'"a\\\\b"', b"a\\b"),
        ('"Grüße"'.encode(), "Grüße".encode()),  # 8-bit: UTF-8 checked by the user
    ],
)
def test_quoted(data: bytes, value: bytes) -> None:
    p = parse(data)
    assert p.quoted() == value
    assert p.at_end()


@pytest.mark.parametrize(
    "data", [b'"abc', b'"a\\b"', b'"a\rb"', b'"a\nb"', b'"a\x00b"', b"abc", b'"\\"']
)
def test_quoted_rejects(data: bytes) -> None:
    with pytest.raises(ImapPeerError):
        parse(data).quoted()


def test_literal_forms() -> None:
    p = parse(b"{3}\r\n {4+}\r\n ~{2}\r\n", (b"abc", b"defg", b"\x00\x01"))
    assert p.string() == b"abc"
    p.sp()
    assert p.astring() == b"defg"
    p.sp()
    assert p.literal(binary=True) == b"\x00\x01"
    assert p.at_end()


def test_literal_with_bare_lf() -> None:
    p = parse(b"{3}\n", (b"abc",))
    assert p.string() == b"abc"


def test_literal8_only_where_allowed() -> None:
    with pytest.raises(ImapPeerError):
        parse(b"~{2}\r\n", (b"ab",)).string()


def test_nul_in_plain_literal_refused() -> None:
    with pytest.raises(ImapPeerError):
        parse(b"{3}\r\n", (b"a\x00b",)).string()


def test_literal_bookkeeping_is_usage_error() -> None:
    with pytest.raises(ImapUsageError):
        parse(b"{3}\r\n", ()).string()
    with pytest.raises(ImapUsageError):
        parse(b"{3}\r\n", (b"ab",)).string()


@pytest.mark.parametrize(
    ("data", "value"),
    [(b"abc", b"abc"), (b"a]b", b"a]b"), (b'"x y"', b"x y"), (b"{1}\r\n", b"z")],
)
def test_astring(data: bytes, value: bytes) -> None:
    assert parse(data, (b"z",)).astring() == value


@pytest.mark.parametrize(
    ("data", "value"), [(b"NIL", None), (b"nil", None), (b'"NIL"', b"NIL"), (b'""', b"")]
)
def test_nstring(data: bytes, value: bytes | None) -> None:
    assert parse(data).nstring() == value


def test_nstring_rejects_atom() -> None:
    with pytest.raises(ImapPeerError):
        parse(b"abc").nstring()


@pytest.mark.parametrize(("data", "value"), [(b"0", 0), (b"4294967295", 4294967295), (b"007", 7)])
def test_number(data: bytes, value: int) -> None:
    assert parse(data).number() == value


@pytest.mark.parametrize("data", [b"4294967296", b"x", b"-1", b"9" * 5000])
def test_number_rejects(data: bytes) -> None:
    with pytest.raises(ImapPeerError):
        parse(data).number()


def test_nz_and_modseq() -> None:
    with pytest.raises(ImapPeerError):
        parse(b"0").nz_number()
    assert parse(b"9223372036854775807").mod_sequence_value() == 2**63 - 1
    with pytest.raises(ImapPeerError):
        parse(b"9223372036854775808").mod_sequence_value()
    with pytest.raises(ImapPeerError):
        parse(b"0").mod_sequence_value()
    assert parse(b"0").mod_sequence_valzer() == 0


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"1-Feb-1994", datetime.date(1994, 2, 1)),
        (b'"01-feb-1994"', datetime.date(1994, 2, 1)),
        (b"29-Feb-2024", datetime.date(2024, 2, 29)),
        (b"31-DEC-9999", datetime.date(9999, 12, 31)),
    ],
)
def test_date(data: bytes, value: datetime.date) -> None:
    assert parse(data).date() == value


@pytest.mark.parametrize(
    "data",
    [b"29-Feb-2023", b"1-Foo-1994", b"1-Feb-94", b"123-Feb-1994", b'"1-Feb-1994', b"0-Jan-2000"],
)
def test_date_rejects(data: bytes) -> None:
    with pytest.raises(ImapPeerError):
        parse(data).date()


def test_date_time() -> None:
    tz = datetime.timezone(-datetime.timedelta(hours=7))
    expected = datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz)
    assert parse(b'"17-Jul-1996 02:44:25 -0700"').date_time() == expected
    five = datetime.datetime(2020, 1, 5, 0, 0, 0, tzinfo=datetime.UTC)
    assert parse(b'" 5-Jan-2020 00:00:00 +0000"').date_time() == five
    assert parse(b'"5-Jan-2020 00:00:00 +0000"').date_time() == five
    assert parse(b'"05-jan-2020 00:00:00 +0000"').date_time() == five


@pytest.mark.parametrize(
    "data",
    [
        b"17-Jul-1996 02:44:25 -0700",  # not quoted
        b'"17-Jul-1996 24:00:00 -0700"',
        b'"17-Jul-1996 02:44:25 -0760"',
        b'"17-Jul-1996 02:44:25"',
        b'"31-Apr-1996 02:44:25 +0000"',
        b'"17-Jul-1996 2:44:25 +0000"',
    ],
)
def test_date_time_rejects(data: bytes) -> None:
    with pytest.raises(ImapPeerError):
        parse(data).date_time()


def test_flags() -> None:
    p = parse(b"(\\seen \\ANSWERED $Forwarded \\Flagged \\Deleted \\Draft foo \\Seen)")
    assert p.flag_list() == (
        "\\Seen",
        "\\Answered",
        "$Forwarded",
        "\\Flagged",
        "\\Deleted",
        "\\Draft",
        "foo",
    )
    assert parse(b"()").flag_list() == ()
    assert canonical_flag("\\DRAFT") == "\\Draft"
    assert canonical_flag("Keyword") == "Keyword"


@pytest.mark.parametrize("data", [b"(\\Recent)", b"(\\Foo)", b"(\\)", b"(a b", b"(a  b)", b"( a)"])
def test_flags_rejects(data: bytes) -> None:
    with pytest.raises(ImapPeerError):
        parse(data).flag_list()


def test_recent_allowed_on_request() -> None:
    assert parse(b"\\recent").flag(allow_recent=True) == "\\Recent"


def test_depth_and_items_limits() -> None:
    nested = b"(" * 5 + b")" * 5

    def item(p: Parser) -> object:
        return p.paren_list(lambda: item(p)) if p.peek() == 0x28 else p.atom()

    p = parse(nested, max_depth=5)
    item(p)
    with pytest.raises(ImapPeerError) as exc:
        item(parse(nested, max_depth=4))
    assert b"[LIMIT]" in exc.value.response
    wide = b"(" + b" ".join([b"a"] * 11) + b")"
    ok = parse(wide, max_items=11)
    assert len(ok.paren_list(ok.atom)) == 11
    with pytest.raises(ImapPeerError):
        p = parse(wide, max_items=10)
        p.paren_list(p.atom)


@pytest.mark.parametrize(
    ("raw", "value"), [(b"", b""), (b"AGJvYgBwdw==", b"\x00bob\x00pw"), (b"YQ==", b"a")]
)
def test_base64(raw: bytes, value: bytes) -> None:
    assert decode_base64(raw) == value


@pytest.mark.parametrize("raw", [b"YQ", b"Y===", b"YQ==YQ==", b"Y Q==", b"*", b"YQ=\x00"])
def test_base64_rejects(raw: bytes) -> None:
    with pytest.raises(ImapPeerError):
        decode_base64(raw)


def test_mailbox_and_pattern() -> None:
    assert parse(b"inbox").mailbox() == "INBOX"
    assert parse(b'"Entw&APw-rfe"').mailbox() == "Entwürfe"
    assert parse('"Entwürfe"'.encode(), utf8=True).mailbox() == "Entwürfe"
    assert parse(b"%/*]x").list_mailbox() == "%/*]x"
    assert parse(b'""').list_mailbox() == ""
    with pytest.raises(ImapPeerError):
        parse(b'""').mailbox()
    with pytest.raises(ImapPeerError):
        parse(b"R&D").mailbox()


def test_peer_error_responses() -> None:
    assert ImapPeerError("Oops").response == b"* BAD Oops\r\n"
    assert ImapPeerError("Oops", tag="a1").response == b"a1 BAD Oops\r\n"
    assert ImapPeerError("No", tag="a1", status="NO", code="TOOBIG").response == (
        b"a1 NO [TOOBIG] No\r\n"
    )
    assert ImapPeerError("Bye", tag="a1", close=True).response == b"* BYE Bye\r\n"
