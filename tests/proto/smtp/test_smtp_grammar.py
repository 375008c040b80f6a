"""Envelope grammar: paths, addresses, relay tricks, parameters, xtext (RFC 5321/6531/3461)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.proto.smtp import replies as R
from postroom.proto.smtp.grammar import (
    AddressError,
    MailParams,
    Orcpt,
    RcptParams,
    format_path,
    parse_address,
    parse_domain,
    parse_ehlo_reply,
    parse_esmtp_params,
    parse_forward_path,
    parse_mail_params,
    parse_rcpt_params,
    parse_reverse_path,
    quote_local_part,
    split_path_argument,
    xtext_decode,
    xtext_encode,
)
from postroom.proto.smtp.replies import Reply, SmtpError


def _code(exc: pytest.ExceptionInfo[SmtpError]) -> str:
    return f"{exc.value.reply.code} {exc.value.reply.enhanced}"


# --- paths --------------------------------------------------------------------------------


def test_simple_path() -> None:
    path = parse_forward_path("<Bob@Example.ORG>", utf8=False)
    addr = path.address
    assert addr is not None
    assert (addr.local, addr.domain, addr.domain_raw) == ("Bob", "example.org", "Example.ORG")
    assert not addr.quoted and not addr.literal and not addr.has_routing_chars
    assert str(addr) == "Bob@example.org"
    assert str(path) == "<Bob@example.org>"
    assert path.route == () and not path.is_null


def test_null_reverse_path() -> None:
    path = parse_reverse_path("<>", utf8=False)
    assert path.is_null and path.address is None and str(path) == "<>"


def test_null_forward_path_refused() -> None:
    with pytest.raises(SmtpError) as exc:
        parse_forward_path("<>", utf8=False)
    assert _code(exc) == "501 5.1.3"


@pytest.mark.parametrize("text", ["<Postmaster>", "<postmaster>", "<POSTMASTER>"])
def test_postmaster_without_domain(text: str) -> None:
    addr = parse_forward_path(text, utf8=False).address
    assert addr is not None and addr.is_postmaster and addr.domain == ""
    # RFC 5321 4.1.1.3: only for RCPT.
    with pytest.raises(SmtpError):
        parse_reverse_path(text, utf8=False)


def test_postmaster_with_domain() -> None:
    addr = parse_forward_path("<PostMaster@example.org>", utf8=False).address
    assert addr is not None and addr.is_postmaster and addr.domain == "example.org"


def test_quoted_local_part() -> None:
    addr = parse_forward_path(r'<"john \"j\" doe"@example.org>', utf8=False).address
    assert addr is not None
    assert addr.quoted
    assert addr.local == 'john "j" doe'
    assert addr.local_raw == r'"john \"j\" doe"'
    assert addr.local_wire == r'"john \"j\" doe"'
    # A quoted local part that is a valid dot-string has the unquoted canonical form.
    addr2 = parse_forward_path('<"john.doe"@example.org>', utf8=False).address
    assert addr2 is not None and addr2.quoted and addr2.local == "john.doe"
    assert str(addr2) == "john.doe@example.org"


def test_quoted_local_with_angle_bracket_in_command() -> None:
    assert split_path_argument('<"a>b"@example.org> SIZE=1') == ('<"a>b"@example.org>', "SIZE=1")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("<a@[192.0.2.1]>", "[192.0.2.1]"),
        ("<a@[IPv6:2001:DB8::1]>", "[IPv6:2001:db8::1]"),
        ("<a@[ipv6:2001:db8:0:0:0:0:0:1]>", "[IPv6:2001:db8::1]"),
        ("<a@[IPv6:::ffff:192.0.2.1]>", "[IPv6:::ffff:c000:201]"),
        ("<a@[x-tag:stuff]>", "[x-tag:stuff]"),
    ],
)
def test_domain_literals(text: str, canonical: str) -> None:
    addr = parse_forward_path(text, utf8=False).address
    assert addr is not None and addr.literal and addr.domain == canonical


@pytest.mark.parametrize(
    "text",
    [
        "<a@[256.0.0.1]>",
        "<a@[1.2.3]>",
        "<a@[IPv6:fe80::1%eth0]>",
        "<a@[IPv6:zz::1]>",
        "<a@[1.2.3.4>",
        "<a@[]>",
    ],
)
def test_bad_domain_literals(text: str) -> None:
    with pytest.raises(SmtpError) as exc:
        parse_forward_path(text, utf8=False)
    assert _code(exc) == "501 5.1.3"


def test_source_route_kept_separately() -> None:
    path = parse_forward_path("<@hop1.example,@HOP2.example:user@final.example>", utf8=False)
    assert path.route == ("hop1.example", "hop2.example")
    assert path.address is not None and path.address.domain == "final.example"


@pytest.mark.parametrize(
    "text",
    ["<@hop1.example user@final.example>", "<@:user@x.example>", "<@a.example,b.example:u@x.example>"],
)
def test_bad_source_routes(text: str) -> None:
    with pytest.raises(SmtpError):
        parse_forward_path(text, utf8=False)


@pytest.mark.parametrize(
    "text",
    [
        "<user%other.example@local.example>",  # percent hack
        "<other.example!user@local.example>",  # bang path
        '<"user@other.example"@local.example>',  # quoted @
        '<"other.example:user"@local.example>',
    ],
)
def test_relay_tricks_are_flagged(text: str) -> None:
    addr = parse_forward_path(text, utf8=False).address
    assert addr is not None and addr.has_routing_chars


@pytest.mark.parametrize(
    "text",
    [
        "<user@local.example.>",  # trailing dot
        "<user@.local.example>",
        "<user@local..example>",
        "<user@other@local.example>",
        "<user.@local.example>",
        "<.user@local.example>",
        "<us..er@local.example>",
        "<user@-local.example>",
        "<user@local-.example>",
        "<user@local_x.example>",
        "<user>",
        "<@local.example>",
        "<user@>",
        "user@local.example",  # no brackets
        "<user@local.example",
        "<user local@example.org>",
        '<"unterminated@example.org>',
        "<a@xn--zzzz-.example>",  # invalid A-label
    ],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(SmtpError) as exc:
        parse_forward_path(text, utf8=False)
    assert _code(exc) == "501 5.1.3"
    with pytest.raises(SmtpError) as exc2:
        parse_reverse_path(text, utf8=False)
    assert _code(exc2) == "501 5.1.7"


def test_length_limits() -> None:
    ok_local = "a" * 64
    parse_forward_path(f"<{ok_local}@example.org>", utf8=False)
    with pytest.raises(SmtpError) as exc:
        parse_forward_path(f"<{'a' * 65}@example.org>", utf8=False)
    assert _code(exc) == "501 5.1.3"
    # label > 63
    with pytest.raises(SmtpError):
        parse_forward_path(f"<a@{'b' * 64}.example>", utf8=False)
    # path > 256 octets (domain of many short labels)
    long_domain = ".".join(["abcdefghi"] * 25)  # 249 chars
    with pytest.raises(SmtpError):
        parse_forward_path(f"<abcdef@{long_domain}>", utf8=False)
    # UTF-8 counts octets: 22 three-octet characters = 66 octets > 64
    with pytest.raises(SmtpError):
        parse_forward_path("<" + "\u7528" * 22 + "@example.org>", utf8=True)


def test_smtputf8_addresses() -> None:
    path = parse_forward_path("<\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a>", utf8=True)
    addr = path.address
    assert addr is not None
    assert addr.needs_smtputf8
    assert addr.local == "\u7528\u6237"
    assert addr.domain == "xn--fsqu00a.xn--4rr70v"
    assert addr.domain_unicode == "\u4f8b\u5b50.\u5e7f\u544a"
    assert format_path(addr, utf8=True) == "<\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a>"
    # Upper-case U-labels are mapped (UTS 46) and A-labels decode back.
    addr2 = parse_forward_path("<x@B\u00dcCHER.example>", utf8=True).address
    assert addr2 is not None and addr2.domain == "xn--bcher-kva.example"
    addr3 = parse_forward_path("<x@XN--BCHER-KVA.example>", utf8=False).address
    assert addr3 is not None and addr3.domain_unicode == "b\u00fccher.example"
    assert not addr3.needs_smtputf8


@pytest.mark.parametrize("text", ["<\u00fc@example.org>", "<u@b\u00fccher.example>",
                                  '<"\u00fc"@example.org>'])
def test_utf8_without_smtputf8(text: str) -> None:
    with pytest.raises(SmtpError) as exc:
        parse_forward_path(text, utf8=False)
    assert _code(exc) == "553 5.6.7"
    with pytest.raises(SmtpError) as exc2:
        parse_reverse_path(text, utf8=False)
    assert _code(exc2) == "553 5.6.7"


def test_parse_address_and_domain() -> None:
    addr = parse_address("a.b+tag@Example.org")
    assert addr.local == "a.b+tag" and addr.domain == "example.org"
    with pytest.raises(AddressError):
        parse_address("nope")
    with pytest.raises(AddressError) as exc:
        parse_address("\u00fc@example.org", utf8=False)
    assert exc.value.non_ascii
    assert parse_domain("Mail.Example.ORG") == ("mail.example.org", "mail.example.org")
    assert parse_domain("[127.0.0.1]") == ("[127.0.0.1]", "[127.0.0.1]")
    with pytest.raises(AddressError):
        parse_domain("foo bar")
    with pytest.raises(AddressError):
        parse_domain("\u4f8b\u5b50.com", utf8=False)


@pytest.mark.parametrize(
    ("local", "wire"),
    [("a.b", "a.b"), ("a b", '"a b"'), ('a"b', r'"a\"b"'), ("a\\b", r'"a\\b"'), ("a..b", '"a..b"'),
     ("", '""')],
)
def test_quote_local_part(local: str, wire: str) -> None:
    assert quote_local_part(local) == wire


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<a@b.c>", ("<a@b.c>", "")),
        ("  <a@b.c>  SIZE=1  BODY=7BIT ", ("<a@b.c>", "SIZE=1  BODY=7BIT")),
        ("<>", ("<>", "")),
        ("<a@b.c>SIZE=1", None),
        ("a@b.c", None),
        ("<a@b.c", None),
        ("", None),
    ],
)
def test_split_path_argument(text: str, expected: tuple[str, str] | None) -> None:
    assert split_path_argument(text) == expected


# --- parameters -----------------------------------------------------------------------------


def test_parse_esmtp_params() -> None:
    assert parse_esmtp_params("size=10 Body=8BITMIME SMTPUTF8") == {
        "SIZE": "10",
        "BODY": "8BITMIME",
        "SMTPUTF8": None,
    }
    assert parse_esmtp_params("") == {}


@pytest.mark.parametrize("text", ["SIZE=1 size=2", "=1", "-X=1", "A=", "A=b=c", "A=\x01", "A\tB"])
def test_bad_esmtp_params(text: str) -> None:
    with pytest.raises(SmtpError) as exc:
        parse_esmtp_params(text)
    assert _code(exc) == "501 5.5.4"


def test_mail_params() -> None:
    params = parse_mail_params(
        parse_esmtp_params("SIZE=123 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2B1 AUTH=<>")
    )
    assert params == MailParams(123, "8BITMIME", True, "HDRS", "QQ+1", "<>")
    assert parse_mail_params({"AUTH": "user+40example.org"}).auth == "user@example.org"
    assert parse_mail_params({}) == MailParams()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("SIZE=abc", "501 5.5.4"),
        ("SIZE", "501 5.5.4"),
        ("SIZE=" + "9" * 21, "501 5.5.4"),
        ("BODY=BINARYMIME", "501 5.5.4"),
        ("SMTPUTF8=yes", "501 5.5.4"),
        ("RET=ALL", "501 5.5.4"),
        ("ENVID=" + "a" * 101, "501 5.5.4"),
        ("ENVID=a+ZZ", "501 5.5.4"),
        ("ENVID=+0A", "501 5.5.4"),  # decodes to a control character
        ("AUTH", "501 5.5.4"),
        ("AUTH=+ZZ", "501 5.5.4"),
        ("FOO=bar", "555 5.5.4"),
        ("NOTIFY=NEVER", "555 5.5.4"),
    ],
)
def test_bad_mail_params(text: str, code: str) -> None:
    with pytest.raises(SmtpError) as exc:
        parse_mail_params(parse_esmtp_params(text))
    assert _code(exc) == code


def test_extensions_switch_parameters_off() -> None:
    with pytest.raises(SmtpError) as exc:
        parse_mail_params({"SMTPUTF8": None}, extensions={"SIZE"})
    assert exc.value.reply.code == 555
    with pytest.raises(SmtpError):
        parse_rcpt_params({"NOTIFY": "NEVER"}, extensions={"SIZE"})


def test_rcpt_params() -> None:
    params = parse_rcpt_params(parse_esmtp_params("NOTIFY=delay,SUCCESS ORCPT=rfc822;bob+40x.org"))
    assert params == RcptParams(
        ("SUCCESS", "DELAY"), Orcpt("rfc822", "bob@x.org", "rfc822;bob+40x.org")
    )
    assert parse_rcpt_params({"NOTIFY": "never"}).notify == ("NEVER",)
    utf = parse_rcpt_params({"ORCPT": "UTF-8;\\x{263A}@x.org"}).orcpt
    assert utf == Orcpt("utf-8", "\u263a@x.org", "UTF-8;\\x{263A}@x.org")


@pytest.mark.parametrize(
    "text",
    [
        "NOTIFY=NEVER,SUCCESS",
        "NOTIFY=SUCCESS,SUCCESS",
        "NOTIFY=SOMETIMES",
        "NOTIFY",
        "ORCPT=rfc822",
        "ORCPT=;a@b",
        "ORCPT=rfc822;",
        "ORCPT=rfc822;a+G0",
        "ORCPT=utf-8;\\x{D800}",
        "ORCPT=utf-8;\\x{110000}",
        "ORCPT=rfc822;" + "a" * 500,
    ],
)
def test_bad_rcpt_params(text: str) -> None:
    with pytest.raises(SmtpError) as exc:
        parse_rcpt_params(parse_esmtp_params(text))
    assert exc.value.reply.code == 501


# --- xtext --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plain", "encoded"),
    [("abc", "abc"), ("a+b", "a+2Bb"), ("a=b", "a+3Db"), ("a b", "a+20b"), ("\u00e9", "+C3+A9"),
     ("", "")],
)
def test_xtext(plain: str, encoded: str) -> None:
    assert xtext_encode(plain) == encoded
    assert xtext_decode(encoded) == plain


@pytest.mark.parametrize("bad", ["a+", "a+2", "a+GG", "a b", "a=b", "\u00e9", "+FF"])
def test_xtext_decode_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        xtext_decode(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_xtext_round_trip(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates are not text we can send
    assert xtext_decode(xtext_encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.booleans())
def test_path_parser_only_raises_smtp_error(text: str, utf8: bool) -> None:
    for fn in (parse_forward_path, parse_reverse_path):
        try:
            fn(text, utf8=utf8)
        except SmtpError as exc:
            assert exc.reply.code in (501, 553)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_param_parsers_only_raise_smtp_error(text: str) -> None:
    try:
        parse_mail_params(parse_esmtp_params(text))
        parse_rcpt_params(parse_esmtp_params(text))
    except SmtpError as exc:
        assert exc.reply.code in (501, 555)


def test_parse_ehlo_reply() -> None:
    reply = Reply(250, None, "mx.example.org hello\nPIPELINING\nSIZE 1000\nauth PLAIN LOGIN\n")
    name, ext = parse_ehlo_reply(reply)
    assert name == "mx.example.org"
    assert ext == {"PIPELINING": "", "SIZE": "1000", "AUTH": "PLAIN LOGIN"}
    assert R.OK.code == 250
