"""Field values: Content-Type/params/RFC 2231, addresses, RFC 2047, transfer decoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.message import address as address_module
from postroom.message.address import Address, parse_address_list
from postroom.message.encoded import decode_charset, decode_transfer, decode_words
from postroom.message.headers import (
    decode_param,
    parse_content_language,
    parse_content_type,
    parse_disposition,
    parse_token,
    unfold,
)

# --- unfolding and tokens ---------------------------------------------------------------------


def test_unfold() -> None:
    assert unfold(b" a\r\n b\r\n\tc \r\n") == b"a b\tc"
    assert unfold(b"x\n y") == b"x y"


@pytest.mark.parametrize(
    ("raw", "token"),
    [
        (b"base64", b"base64"),
        (b"  Base64  ", b"Base64"),
        (b"(c) 8bit (d)", b"8bit"),
        (b"?invalid", None),
        (b"base64 junk", None),
        (b"", None),
    ],
)
def test_parse_token(raw: bytes, token: bytes | None) -> None:
    assert parse_token(raw) == token


# --- Content-Type -----------------------------------------------------------------------------

CT_CASES = [
    (b"text/plain", ("text", "plain", ())),
    (b"TEXT/Plain; CHARSET=US-ASCII", ("text", "plain", (("charset", b"US-ASCII"),))),
    (b'text/plain; charset="utf-8"', ("text", "plain", (("charset", b"utf-8"),))),
    (b"text / plain ; charset = utf-8 ;", ("text", "plain", (("charset", b"utf-8"),))),
    (b"(c) text/plain (c); charset=us-ascii (Plain text)",
     ("text", "plain", (("charset", b"us-ascii"),))),
    (b'multipart/mixed; boundary="----=_Part_1"',
     ("multipart", "mixed", (("boundary", b"----=_Part_1"),))),
    (b"multipart/alternative; boundary=----=_NextPart_000_0012_01D0",
     ("multipart", "alternative", (("boundary", b"----=_NextPart_000_0012_01D0"),))),
    (b'text/x-myown; foo="quoted\\"string"; bar=baz',
     ("text", "x-myown", (("foo", b'quoted"string'), ("bar", b"baz")))),
    (b"application/pdf; name=my file (1).pdf",
     ("application", "pdf", (("name", b"my file"),))),
    (b"application/pdf; name=report(1).pdf",
     ("application", "pdf", (("name", b"report(1).pdf"),))),
    (b"text/plain;;; charset=a; junk; =x; charset=b",
     ("text", "plain", (("charset", b"a"), ("charset", b"b")))),
    (b'text/plain; name="unterminated', ("text", "plain", (("name", b"unterminated"),))),
    (b'text/plain; name="semi;colon"; x=1',
     ("text", "plain", (("name", b"semi;colon"), ("x", b"1")))),
    (b"text", None),
    (b"text/", None),
    (b"/plain", None),
    (b"", None),
    (b"\xff\xfe/\x80", ("\xff\xfe", "\x80", ())),
]


@pytest.mark.parametrize(("raw", "parsed"), CT_CASES)
def test_parse_content_type(raw: bytes, parsed: object) -> None:
    assert parse_content_type(raw) == parsed


RFC2231_CASES = [
    # continuations, merged in index order whatever the header order
    (b"x/y; name*1=\"b\"; name*0=\"a\"; name*2=c", (("name", b"abc"),)),
    # extended single value
    (b"x/y; title*=us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A",
     (("title*", b"us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A"),)),
    # RFC 2231 4.1 example: mixed extended and plain segments
    ((b"x/y; title*0*=us-ascii'en'This%20is%20even%20more%20;"
      b" title*1*=%2A%2A%2Afun%2A%2A%2A%20; title*2=\"isn't it!\""),
     (("title*", b"us-ascii'en'This%20is%20even%20more%20%2A%2A%2Afun%2A%2A%2A%20isn't it!"),)),
    # first segment not extended: an empty charset/language is declared
    (b"x/y; n*0=\"100%\"; n*1*=%41", (("n*", b"''100%25%41"),)),
    # missing index: kept apart
    (b"x/y; n*0=a; n*2=c", (("n*0", b"a"), ("n*2", b"c"))),
    # not RFC 2231 at all
    (b"x/y; n*x=a", (("n*x", b"a"),)),
    # order of first appearance kept
    (b"x/y; a=1; n*0=x; b=2; n*1=y", (("a", b"1"), ("n", b"xy"), ("b", b"2"))),
]


@pytest.mark.parametrize(("raw", "params"), RFC2231_CASES)
def test_rfc2231_merge(raw: bytes, params: object) -> None:
    parsed = parse_content_type(raw)
    assert parsed is not None
    assert parsed[2] == params


def test_decode_param() -> None:
    params = (
        ("title*", b"us-ascii'en'This%20is%20%2A%2A%2Afun%2A%2A%2A"),
        ("name", b"=?ISO-8859-1?Q?caf=E9?=.txt"),
        ("raw", "Grüße.txt".encode()),
        ("latin", "Grüße.txt".encode("latin-1")),
        ("n*", b"''100%25%41"),
        ("bad*", b"no-quotes%41"),
    )
    assert decode_param(params, "title") == "This is ***fun***"
    assert decode_param(params, "name") == "café.txt"
    assert decode_param(params, "raw") == "Grüße.txt"
    assert decode_param(params, "latin") == "Grüße.txt"
    assert decode_param(params, "n") == "100%A"
    assert decode_param(params, "bad") == "no-quotesA"
    assert decode_param(params, "missing") is None
    # the extended form wins over the plain one
    both = (("filename", b"fallback.txt"), ("filename*", b"utf-8''%E2%82%AC.txt"))
    assert decode_param(both, "filename") == "€.txt"


def test_parse_disposition() -> None:
    assert parse_disposition(b"Attachment; filename=\"a b.txt\"; size=3") == (
        "attachment", (("filename", b"a b.txt"), ("size", b"3")),
    )
    assert parse_disposition(b"inline") == ("inline", ())
    assert parse_disposition(b"; filename=x") is None


def test_parse_content_language() -> None:
    assert parse_content_language(b"en, fi, se") == (b"en", b"fi", b"se")
    assert parse_content_language(b"(comment) en-US") == (b"en-US",)
    assert parse_content_language(b"") is None
    assert parse_content_language(b"en,, de") == (b"en",)


def test_many_parameters_are_capped() -> None:
    raw = b"text/plain" + b"".join(b"; p%d=v" % i for i in range(10_000))
    parsed = parse_content_type(raw)
    assert parsed is not None
    assert len(parsed[2]) == 64


# --- addresses ----------------------------------------------------------------------------------

A = Address
GROUP_END = A(None, None, None, None)

ADDRESS_CASES = [
    (b"user@domain", (A(None, None, b"user", b"domain"),)),
    (b"From Real <fromuser@fromdomain.org>",
     (A(b"From Real", None, b"fromuser", b"fromdomain.org"),)),
    (b"user@domain (Real Name)", (A(b"Real Name", None, b"user", b"domain"),)),
    (b"group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;",
     (A(None, None, b"group", None), A(None, None, b"g1", b"d1.org"),
      A(None, None, b"g2", b"d2.org"), GROUP_END, A(None, None, b"group2", None),
      A(None, None, b"g3", b"d3.org"), GROUP_END)),
    (b"group:;, group2: (foo) ;",
     (A(None, None, b"group", None), GROUP_END, A(None, None, b"group2", None), GROUP_END)),
    (b"undisclosed-recipients:;", (A(None, None, b"undisclosed-recipients", None), GROUP_END)),
    (b"grp: a@b", (A(None, None, b"grp", None), A(None, None, b"a", b"b"), GROUP_END)),
    (b"<@route:user@domain>", (A(None, b"@route", b"user", b"domain"),)),
    (b"<@a,@b:c@d>", (A(None, b"@a,@b", b"c", b"d"),)),
    (b'"Doe, John" <john@x.com>, jane@y.org',
     (A(b"Doe, John", None, b"john", b"x.com"), A(None, None, b"jane", b"y.org"))),
    (b'"Quote \\" inside" <q@x>', (A(b'Quote " inside', None, b"q", b"x"),)),
    (b"John Doe john@example.com", (A(b"John Doe", None, b"john", b"example.com"),)),
    (b"John Q. Public <jqp@x>", (A(b"John Q. Public", None, b"jqp", b"x"),)),
    (b"john . doe @ example . com", (A(None, None, b"john.doe", b"example.com"),)),
    (b'"john doe"@example.com', (A(None, None, b"john doe", b"example.com"),)),
    (b"x@[1.2.3.4]", (A(None, None, b"x", b"[1.2.3.4]"),)),
    (b"user", (A(None, None, b"user", b""),)),
    (b"Undisclosed recipients", (A(b"Undisclosed recipients", None, b"", b""),)),
    (b"<>", (A(None, None, b"", b""),)),
    (b"<a@b", (A(None, None, b"a", b"b"),)),
    (b"Name <user>", (A(b"Name", None, b"user", b""),)),
    (b"a@b,,c@d", (A(None, None, b"a", b"b"), A(None, None, b"c", b"d"))),
    (b"=?utf-8?q?J=C3=B6rg?= <j@x.de>", (A(b"=?utf-8?q?J=C3=B6rg?=", None, b"j", b"x.de"),)),
    ("Jörg <jörg@bücher.de>".encode(), (A("Jörg".encode(), None, "jörg".encode(),
                                          "bücher.de".encode()),)),
    (b"a@b (c (nested) d)", (A(b"c (nested) d", None, b"a", b"b"),)),
    (b"unterminated: a@b, c@d", (A(None, None, b"unterminated", None),
                                 A(None, None, b"a", b"b"), A(None, None, b"c", b"d"), GROUP_END)),
    (b"", None),
    (b"   ", None),
    (b"(only a comment)", None),
    (b",,,", None),
]


@pytest.mark.parametrize(("raw", "parsed"), ADDRESS_CASES)
def test_parse_address_list(raw: bytes, parsed: object) -> None:
    assert parse_address_list(raw) == parsed


def slow_parse(value: bytes) -> tuple[Address, ...] | None:
    saved = address_module._fast_path
    address_module._fast_path = lambda _v: None
    try:
        return parse_address_list(value)
    finally:
        address_module._fast_path = saved


_atom = st.text(alphabet="abcXYZ09-_+éü", min_size=1, max_size=6).map(
    lambda t: t.encode("utf-8")
)
_dot_atom = st.lists(_atom, min_size=1, max_size=3).map(b".".join)
_name = st.one_of(
    st.none(),
    st.lists(_atom, min_size=1, max_size=3).map(b" ".join),
    st.text(alphabet="ab ,.é<@", max_size=8).map(lambda t: b'"' + t.encode() + b'"'),
)
_spec = st.tuples(_dot_atom, _dot_atom).map(lambda t: t[0] + b"@" + t[1])
_one = st.tuples(_name, _spec, st.booleans()).map(
    lambda t: (t[0] + b" <" + t[1] + b">") if t[0] is not None else
    (b"<" + t[1] + b">" if t[2] else t[1])
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_one, min_size=1, max_size=4), st.sampled_from([b",", b", ", b" ,  "]))
def test_fast_path_agrees_with_full_parser(addresses: list[bytes], sep: bytes) -> None:
    value = sep.join(addresses)
    assert parse_address_list(value) == slow_parse(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_address_parser_never_raises(value: bytes) -> None:
    parsed = parse_address_list(value)
    if parsed is not None:
        depth = 0
        for a in parsed:
            if a.is_group_start:
                depth += 1
            elif a.is_group_end:
                depth -= 1
            assert depth in (0, 1)
        assert depth == 0


def test_address_count_is_capped() -> None:
    value = b", ".join(b"u%d@x" % i for i in range(12_000))
    parsed = parse_address_list(value)
    assert parsed is not None and len(parsed) == address_module.MAX_ADDRESSES


# --- RFC 2047 and charsets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain", "plain"),
        (b"=?ISO-8859-1?Q?a?=", "a"),
        (b"=?ISO-8859-1?Q?a?= b", "a b"),
        (b"=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=", "ab"),  # RFC 2047 8 examples
        (b"=?ISO-8859-1?Q?a?=\r\n  =?ISO-8859-1?Q?b?=", "ab"),
        (b"=?ISO-8859-1?Q?a_b?=", "a b"),
        (b"=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=", "a b"),
        (b"(=?ISO-8859-1?Q?a?=)", "(a)"),
        (b"=?utf-8?B?w6TDtsO8?=", "äöü"),
        (b"=?utf-8?b?w6TDtsO8?=", "äöü"),
        (b"=?UTF-8*en?Q?hi?=", "hi"),
        # a multi-byte character split across two words
        (b"=?utf-8?B?ww==?= =?utf-8?B?pA==?=", "ä"),
        (b"=?utf-8?Q?=C3?= =?utf-8?Q?=A4?=", "ä"),
        (b"=?x-unknown?Q?caf=C3=A9?=", "café"),
        (b"=?bogus-charset?Q?caf=E9?=", "café"),
        (b"=?utf-8?B?####?=", ""),
        (b"=?utf-8?B?w6Q?=", "ä"),  # missing padding
        (b"=?utf-8?X?abc?=", "=?utf-8?X?abc?="),  # unknown encoding: left alone
        (b"=?zlib?Q?abc?=", "abc"),  # bytes-to-bytes codec refused
        ("raw Grüße".encode(), "raw Grüße"),
        ("raw Grüße".encode("latin-1"), "raw Grüße"),
        (b"=?koi8-r?B?8NLJ18XU?=", "Привет"),
    ],
)
def test_decode_words(raw: bytes, text: str) -> None:
    assert decode_words(raw) == text


def test_decode_charset_fallbacks() -> None:
    assert decode_charset("é".encode(), "us-ascii") == "é"
    assert decode_charset("é".encode("latin-1"), "us-ascii") == "é"
    assert decode_charset("é".encode("latin-1"), None) == "é"
    assert decode_charset(b"\x93quoted\x94", "iso-8859-1") == "\u201cquoted\u201d"
    assert decode_charset(b"\xff", "utf-8") == "\ufffd"
    assert decode_charset("\u4e2d".encode("gb18030"), "gb2312") == "\u4e2d"
    assert decode_charset(b"abc", "idna") == "abc"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100), st.text(max_size=12))
def test_decoders_never_raise(raw: bytes, charset: str) -> None:
    decode_words(raw)
    decode_words(b"=?" + charset.encode("utf-8", "replace") + b"?Q?" + raw + b"?=")
    decode_charset(raw, charset)
    decode_transfer(raw, "base64")
    decode_transfer(raw, "quoted-printable")


def test_decode_transfer() -> None:
    assert decode_transfer(b"aGVsbG8=\r\n", "base64") == b"hello"
    assert decode_transfer(b"aGVs\r\nbG8", "base64") == b"hello"
    assert decode_transfer(b"aGV*sb!G8", "base64") == b"hello"
    assert decode_transfer(b"a=3Db=\r\nc\r\n", "quoted-printable") == b"a=bc\r\n"
    assert decode_transfer(b"under_score", "quoted-printable") == b"under_score"
    assert decode_transfer(b"as is\r\n", None) == b"as is\r\n"
    assert decode_transfer(b"as is", "8bit") == b"as is"
    assert decode_transfer(b"as is", "binary") == b"as is"
    assert decode_transfer(b"x", "x-uuencode") is None


def test_quoted_printable_rfc2045_rules() -> None:
    qp = "quoted-printable"
    # RFC 2045 6.7 rule 3: trailing whitespace is dropped; "=" then whitespace before the
    # line end is still a soft line break (the issue 13 example).
    assert decode_transfer(b"hello  \r\nfoo\t \t= \r\nb", qp) == b"hello\r\nfoo\t \tb"
    assert decode_transfer(b"foo = \t\r\nbar\r\n", qp) == b"foo bar\r\n"
    assert decode_transfer(b"end=  ", qp) == b"end"
    assert decode_transfer(b"x=\nY=\r\nz=", qp) == b"xYz"  # bare LF is a line end too
    assert decode_transfer(b"a=3D=3db\r\n", qp) == b"a==b\r\n"  # lowercase hex accepted
    assert decode_transfer(b"bad =ZZ and =\r\n", qp) == b"bad =ZZ and "  # left as it is
    assert decode_transfer(b"caf=C3=A9\r\n", qp) == "café\r\n".encode()
    assert decode_transfer(b"no escapes\r\nat all\r\n", qp) == b"no escapes\r\nat all\r\n"
    assert decode_transfer(b"spaces \r\n\tand tabs\t\r\n", qp) == b"spaces\r\n\tand tabs\r\n"


def test_quoted_printable_is_linear() -> None:
    import time

    body = b" " * 2_000_000 + b"x\r\n" + b"=41" * 200_000 + b"= \r\n" * 100_000
    started = time.perf_counter()
    out = decode_transfer(body, "quoted-printable")
    assert out == b" " * 2_000_000 + b"x\r\n" + b"A" * 200_000
    assert time.perf_counter() - started < 2.0
