"""SMTP client core: pre-send checks (SIZE, SMTPUTF8, 8BITMIME), conversion, wire forms."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_client_smtp import GREET, Run, ehlo, run, send

from postroom.proto.smtp.client import (
    Cause,
    Envelope,
    Outcome,
    Recipient,
    SmtpClient,
    Stage,
    TransactionResult,
    downgrade_8bit,
    normalize_crlf,
    orcpt_for,
)
from postroom.proto.smtp.dotstuff import has_bare_line_ending, stuff, unstuff
from postroom.proto.smtp.grammar import parse_rcpt_params
from postroom.proto.smtp.replies import SmtpUsageError

ENV = Envelope.simple("alice@example.org", ["bob@example.net"])
MSG = b"Subject: hi\r\n\r\nHello\r\n"
EIGHT_BIT = (
    b"Subject: menu\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9e\r\n"
)


def refused(r: Run) -> TransactionResult:
    """The pre-check refusal: nothing after EHLO was written."""
    result = r.result()
    assert r.writes == [b"EHLO client.example\r\n"]
    assert result.stage is Stage.PRECHECK and result.cause is Cause.LOCAL
    assert all(x.cause is Cause.LOCAL for x in result.results)
    assert r.last is not None and r.client.idle
    return result


# --- SIZE ----------------------------------------------------------------------------------


def test_size_precheck_refuses_without_sending() -> None:
    r = run([GREET, ehlo("SIZE 20", "PIPELINING"), send(ENV)])
    result = refused(r)
    assert result.reply.code == 552 and result.reply.enhanced == "5.3.4"
    assert "20 bytes" in result.reply.text
    assert result.results[0].outcome is Outcome.PERMANENT


def test_size_at_the_limit_goes() -> None:
    r = run([GREET, ehlo("SIZE 22", "PIPELINING"), send(ENV)])
    assert r.writes[-1].startswith(b"MAIL FROM:<alice@example.org> SIZE=22\r\n")


def test_size_zero_means_no_limit() -> None:
    r = run([GREET, ehlo("SIZE 0"), send(ENV, b"x" * 100_000)])
    assert r.writes[-1] == b"MAIL FROM:<alice@example.org> SIZE=100002\r\n"


# --- SMTPUTF8 ------------------------------------------------------------------------------


def test_utf8_recipient_without_smtputf8() -> None:
    env = Envelope.simple("alice@example.org", ["bob@example.net", "зоя@example.net"])
    r = run(
        [GREET, ehlo("PIPELINING"), send(env), b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n"]
    )
    assert r.writes[1] == b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
    bob, zoya = r.result().results
    assert bob.outcome is Outcome.DELIVERED
    assert zoya.outcome is Outcome.PERMANENT and zoya.reply.enhanced == "5.6.7"
    assert zoya.stage is Stage.PRECHECK and zoya.cause is Cause.LOCAL


def test_utf8_sender_without_smtputf8() -> None:
    env = Envelope.simple("josé@example.org", ["bob@example.net"])
    result = refused(run([GREET, ehlo("PIPELINING"), send(env)]))
    assert result.reply.code == 553 and result.reply.enhanced == "5.6.7"


def test_idn_domain_goes_as_a_label_without_smtputf8() -> None:
    env = Envelope.simple("alice@bücher.example", ["bob@пример.рф"])
    r = run([GREET, ehlo("PIPELINING"), send(env)])
    assert r.writes[-1] == (
        b"MAIL FROM:<alice@xn--bcher-kva.example>\r\nRCPT TO:<bob@xn--e1afmkfd.xn--p1ai>\r\n"
        b"DATA\r\n"
    )


def test_utf8_with_smtputf8_server() -> None:
    env = Envelope.simple("josé@example.org", ["зоя@example.net"])
    message = "Subject: привет\r\n\r\nтекст\r\n".encode()
    r = run([GREET, ehlo("PIPELINING", "SMTPUTF8", "8BITMIME"), send(env, message)])
    assert (
        r.writes[-1]
        == (
            "MAIL FROM:<josé@example.org> BODY=8BITMIME SMTPUTF8\r\n"
            "RCPT TO:<зоя@example.net>\r\nDATA\r\n"
        ).encode()
    )


def test_smtputf8_message_with_utf8_headers_to_old_server() -> None:
    env = Envelope("alice@example.org", (Recipient("bob@example.net"),), smtputf8=True)
    message = "Subject: привет\r\n\r\nhi\r\n".encode()
    result = refused(run([GREET, ehlo("PIPELINING", "8BITMIME"), send(env, message)]))
    assert result.reply.enhanced == "5.6.7"


def test_smtputf8_flag_with_ascii_headers_goes_without_it() -> None:
    env = Envelope("alice@example.org", (Recipient("bob@example.net"),), smtputf8=True)
    r = run([GREET, ehlo("PIPELINING", "8BITMIME"), send(env, MSG)])
    assert r.writes[-1].startswith(b"MAIL FROM:<alice@example.org>\r\n")
    r = run([GREET, ehlo("PIPELINING", "SMTPUTF8"), send(env, MSG)])
    assert r.writes[-1].startswith(b"MAIL FROM:<alice@example.org> SMTPUTF8\r\n")


# --- 8BITMIME ------------------------------------------------------------------------------


def test_8bit_body_to_8bitmime_server() -> None:
    r = run([GREET, ehlo("PIPELINING", "8BITMIME"), send(ENV, EIGHT_BIT)])
    assert r.writes[-1].startswith(b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n")


def test_8bit_body_converted_for_7bit_server() -> None:
    r = run(
        [
            GREET,
            ehlo("PIPELINING"),
            send(ENV, EIGHT_BIT),
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 ok\r\n",
        ]
    )
    assert r.writes[1].startswith(b"MAIL FROM:<alice@example.org>\r\n")  # no BODY=
    body = r.writes[2]
    assert body.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in body
    assert b"caf=C3=A9" in body
    result = r.result()
    assert result.converted_8bit and result.results[0].outcome is Outcome.DELIVERED
    parsed = message_from_bytes(unstuff(body[:-3]), policy=default)
    assert parsed.get_content().rstrip("\r\n") == "café crème brûlée"


def test_unconvertible_8bit_is_refused() -> None:
    message = b"Subject: caf\xc3\xa9\r\n\r\nplain\r\n"  # raw 8-bit header: nothing to encode
    result = refused(run([GREET, ehlo("PIPELINING"), send(ENV, message)]))
    assert result.reply.code == 554 and result.reply.enhanced == "5.6.3"


def test_downgrade_multipart_and_nested_message() -> None:
    message = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XX"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain; charset=latin-1\r\n\r\nna\xefve\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
        b"\r\n\x00\x01\xff\xfe\r\n"
        b"--XX\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
        b"--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n"
        b"--XX--\r\n"
    )
    out = downgrade_8bit(message)
    assert out is not None and out.isascii()
    assert not has_bare_line_ending(out)
    parsed = message_from_bytes(out, policy=default)
    assert parsed["Content-Transfer-Encoding"] == "7bit"
    text, blob, inner, b64 = parsed.iter_parts()
    assert text.get_content().rstrip("\r\n") == "naïve"
    assert blob.get_content() == b"\x00\x01\xff\xfe"
    assert blob["Content-Transfer-Encoding"] == "base64"
    inner_msg = inner.get_payload()[0]
    assert inner_msg.get_content().rstrip("\r\n") == "été"
    assert b64.get_content() == "hi"


def test_downgrade_adds_mime_version_and_keeps_headers() -> None:
    message = (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel;\r\n"
        b"\th=from:subject; bh=abc=; b=def=\r\nSubject: x\r\n\r\nna\xc3\xafve\r\n"
    )
    out = downgrade_8bit(message)
    assert out is not None
    assert out.startswith(
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel;\r\n"
        b"\th=from:subject; bh=abc=; b=def=\r\nSubject: x\r\n"
    )
    assert b"MIME-Version: 1.0\r\n" in out
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in out


def test_downgrade_ascii_message_is_unchanged_in_substance() -> None:
    out = downgrade_8bit(MSG)
    assert out == MSG


# --- addresses and parameters ----------------------------------------------------------


def test_unusable_addresses() -> None:
    env = Envelope.simple("alice@example.org", ["no-at-sign", "bob@example.net"])
    r = run([GREET, ehlo("PIPELINING"), send(env)])
    assert b"no-at-sign" not in r.sent
    env = Envelope.simple("not an address", ["bob@example.net"])
    result = refused(run([GREET, ehlo("PIPELINING"), send(env)]))
    assert result.reply.enhanced == "5.1.7"
    env = Envelope.simple("alice@example.org", ["x@", "<y@example.net>"])
    result = refused(run([GREET, ehlo("PIPELINING"), send(env)]))
    assert [x.reply.enhanced for x in result.results] == ["5.1.3", "5.1.3"]


def test_quoted_local_part_is_requoted() -> None:
    env = Envelope.simple('"john doe"@example.org', ['"a\\"b"@example.net'])
    r = run([GREET, ehlo("PIPELINING"), send(env)])
    assert r.writes[-1].startswith(
        b'MAIL FROM:<"john doe"@example.org>\r\nRCPT TO:<"a\\"b"@example.net>\r\n'
    )


@pytest.mark.parametrize(
    "address", ["bob@example.net", "b+o=b@example.net", "зоя@пример.рф", "a\\b+c=@example.net"]
)
def test_orcpt_for_round_trips_through_the_server_grammar(address: str) -> None:
    value = orcpt_for(address)
    assert value.isascii() and " " not in value
    params = parse_rcpt_params({"ORCPT": value})
    assert params.orcpt is not None and params.orcpt.address == address


def test_precheck_method() -> None:
    r = run([GREET, ehlo("SIZE 10", "PIPELINING")])
    client = r.client
    refusal = client.precheck(ENV, MSG)
    assert refusal is not None and refusal.enhanced == "5.3.4"
    assert client.precheck(ENV, b"x\r\n") is None
    assert client.data_to_send() == b"" and client.idle  # nothing sent, nothing changed
    with pytest.raises(SmtpUsageError):
        SmtpClient("c.example").precheck(ENV, MSG)  # no EHLO yet


# --- line ends and dots --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"a", b"a\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\rb\r\n\n", b"a\r\nb\r\n\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n"),
    ],
)
def test_normalize_crlf(data: bytes, expected: bytes) -> None:
    assert normalize_crlf(data) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.lists(st.sampled_from([b"\r", b"\n", b".", b"x", b"\r\n"]), max_size=40).map(b"".join)
)
def test_normalize_then_stuff_round_trips(data: bytes) -> None:
    body = normalize_crlf(data)
    assert not has_bare_line_ending(body)
    assert body.replace(b"\r\n", b"") == data.replace(b"\r\n", b"").replace(b"\r", b"").replace(
        b"\n", b""
    )
    wire = stuff(body)
    assert wire.endswith(b".\r\n")
    assert b"\r\n.\r\n" not in (b"\r\n" + wire)[:-3]  # no early end of data
    assert unstuff(wire[:-3]) == body
