"""FETCH ENVELOPE / BODYSTRUCTURE / BODY serialisation (RFC 9051 7.5.2, RFC 3501 7.4.2)."""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.policy import SMTP

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.message import MAX_DEPTH, scan
from postroom.proto.imap.bodystructure import body_bytes, bodystructure_bytes, envelope_bytes


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def bs(text: str) -> bytes:
    return bodystructure_bytes(scan(crlf(text)))


# --- a tiny IMAP value parser, to check the grammar of what we send -------------------------

_TOKEN = re.compile(rb'\(|\)| |"((?:[^"\\\r\n]|\\["\\])*)"|\{(\d+)\}\r\n|([^ ()"{\r\n]+)')
Value = bytes | None | int | list["Value"]


def parse_imap(raw: bytes) -> Value:
    """Parse one parenthesized IMAP value into nested lists (strings → bytes, NIL → None)."""
    stack: list[list[Value]] = [[]]
    pos = 0
    while pos < len(raw):
        m = _TOKEN.match(raw, pos)
        assert m is not None, raw[pos : pos + 40]
        pos = m.end()
        tok = m.group()
        if tok == b"(":
            stack.append([])
        elif tok == b")":
            done = stack.pop()
            stack[-1].append(done)
        elif tok == b" ":
            continue
        elif m.group(1) is not None:
            stack[-1].append(re.sub(rb'\\(["\\])', rb"\1", m.group(1)))
        elif m.group(2) is not None:
            n = int(m.group(2))
            stack[-1].append(raw[pos : pos + n])
            assert len(raw) >= pos + n
            pos += n
        else:
            atom = m.group(3)
            stack[-1].append(None if atom == b"NIL" else int(atom))
    assert len(stack) == 1 and len(stack[0]) == 1, "unbalanced"
    return stack[0][0]


def _nstring(v: Value) -> bool:
    return v is None or isinstance(v, bytes)


def _params(v: Value) -> bool:
    return v is None or (
        isinstance(v, list) and len(v) % 2 == 0 and len(v) > 0
        and all(isinstance(x, bytes) for x in v)
    )


def _ext_tail(items: list[Value]) -> None:
    dsp, lang, loc = items
    assert dsp is None or (isinstance(dsp, list) and len(dsp) == 2 and isinstance(dsp[0], bytes)
                           and _params(dsp[1]))
    assert lang is None or (isinstance(lang, list) and all(isinstance(x, bytes) for x in lang))
    assert _nstring(loc)


def check_envelope(env: Value) -> None:
    assert isinstance(env, list) and len(env) == 10
    for i in (0, 1, 8, 9):
        assert _nstring(env[i])
    for i in range(2, 8):
        addrs = env[i]
        assert addrs is None or isinstance(addrs, list)
        for a in addrs or []:
            assert isinstance(a, list) and len(a) == 4 and all(_nstring(x) for x in a)


def check_body(b: Value, extended: bool) -> None:
    """Validate against RFC 3501 body / body-type-1part / body-type-mpart."""
    assert isinstance(b, list) and b
    if isinstance(b[0], list):
        k = 0
        while k < len(b) and isinstance(b[k], list):
            check_body(b[k], extended)
            k += 1
        rest = b[k:]
        assert isinstance(rest[0], bytes)  # media-subtype
        if extended:
            assert len(rest) == 5
            assert _params(rest[1])
            _ext_tail(rest[2:])
        else:
            assert len(rest) == 1
        return
    assert isinstance(b[0], bytes) and isinstance(b[1], bytes)
    assert _params(b[2]) and _nstring(b[3]) and _nstring(b[4]) and isinstance(b[5], bytes)
    assert isinstance(b[6], int) and b[6] >= 0
    rest = b[7:]
    kind = (b[0].lower(), b[1].lower())
    if kind[0] == b"text":
        assert isinstance(rest[0], int)
        rest = rest[1:]
    elif kind == (b"message", b"rfc822"):
        check_envelope(rest[0])
        check_body(rest[1], extended)
        assert isinstance(rest[2], int)
        rest = rest[3:]
    if extended:
        assert len(rest) == 4
        assert _nstring(rest[0])
        _ext_tail(rest[1:])
    else:
        assert rest == []


def check_all(data: bytes) -> None:
    s = scan(data)
    check_body(parse_imap(bodystructure_bytes(s)), True)
    check_body(parse_imap(body_bytes(s)), False)
    check_envelope(parse_imap(envelope_bytes(s)))


# --- BODYSTRUCTURE ---------------------------------------------------------------------------


def test_text_plain() -> None:
    data = crlf(
        "From: alice@example.org\nDate: Mon, 02 Jan 2023 10:00:00 +0100\nMIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        "hello\nworld\n"
    )
    s = scan(data)
    assert bodystructure_bytes(s) == (
        b'("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 14 2 NIL NIL NIL NIL)'
    )
    assert body_bytes(s) == b'("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 14 2)'
    assert bodystructure_bytes(s, extended=False) == body_bytes(s)


def test_defaults_without_content_type() -> None:
    assert bs("Subject: x\n\nbody\n") == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL NIL NIL)'
    )
    # text/* without charset gets the default one appended, other types get NIL
    assert bs("Content-Type: text/html; format=flowed\n\nx") == (
        b'("text" "html" ("format" "flowed" "charset" "us-ascii") NIL NIL "7bit" 1 0'
        b" NIL NIL NIL NIL)"
    )
    assert bs("Content-Type: image/png\nContent-Transfer-Encoding: BASE64\n\nAAAA\n") == (
        b'("image" "png" NIL NIL NIL "base64" 6 NIL NIL NIL NIL)'
    )


def test_all_extension_fields_and_empty_values() -> None:
    got = bs(
        "MIME-Version: 1.0\nContent-Type: Application/PDF; name=\"r.pdf\"\n"
        "Content-ID: <c1@example>\nContent-Description:\nContent-MD5: Q2hlY2sh\n"
        "Content-Disposition: attachment; filename=\"r.pdf\"; size=4\n"
        "Content-Language: en-GB, fr\nContent-Location: http://example.com/r.pdf\n"
        "Content-Transfer-Encoding: base64\n\nAAAA"
    )
    assert got == (
        b'("application" "pdf" ("name" "r.pdf") "<c1@example>" "" "base64" 4 "Q2hlY2sh"'
        b' ("attachment" ("filename" "r.pdf" "size" "4")) ("en-GB" "fr")'
        b' "http://example.com/r.pdf")'
    )


def test_disposition_without_params() -> None:
    got = bs("MIME-Version: 1.0\nContent-Type: image/gif\nContent-Disposition: inline\n\nx")
    assert got == b'("image" "gif" NIL NIL NIL "7bit" 1 NIL ("inline" NIL) NIL NIL)'


def test_rfc2231_parameters_stay_encoded_on_the_wire() -> None:
    got = bs(
        "MIME-Version: 1.0\nContent-Type: application/octet-stream\n"
        "Content-Disposition: attachment;\n filename*0*=utf-8''%E2%82%AC;\n"
        " filename*1=\".bin\"\n\nx"
    )
    assert got == (
        b'("application" "octet-stream" NIL NIL NIL "7bit" 1 NIL'
        b" (\"attachment\" (\"filename*\" \"utf-8''%E2%82%AC.bin\")) NIL NIL)"
    )


def test_multipart_nested_with_message_rfc822() -> None:
    text = (
        "From: Alice <alice@example.org>\nSubject: outer\nMIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"=_outer\"\n\npreamble\n"
        "--=_outer\nContent-Type: multipart/alternative; boundary=alt\n\n"
        "--alt\nContent-Type: text/plain; charset=us-ascii\n\nplain\n"
        "--alt\nContent-Type: text/html; charset=us-ascii\n\n<b>html</b>\n"
        "--alt--\n"
        "--=_outer\nContent-Type: message/rfc822\nContent-Description: fwd\n\n"
        "From: bob@example.net\nTo: carol@example.com\nSubject: inner\n"
        "Date: Tue, 03 Jan 2023 11:00:00 +0000\nMessage-ID: <inner@example.net>\n\n"
        "inner body\n"
        "--=_outer--\nepilogue\n"
    )
    inner_message = crlf(
        "From: bob@example.net\nTo: carol@example.com\nSubject: inner\n"
        "Date: Tue, 03 Jan 2023 11:00:00 +0000\nMessage-ID: <inner@example.net>\n\n"
        "inner body"
    )
    n = len(inner_message)
    assert n == 146  # 23 + 23 + 16 + 39 + 33 + 2 + 10
    expected = (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "alt") NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL "fwd" "7bit" 146'
        b' ("Tue, 03 Jan 2023 11:00:00 +0000" "inner" ((NIL NIL "bob" "example.net"))'
        b' ((NIL NIL "bob" "example.net")) ((NIL NIL "bob" "example.net"))'
        b' ((NIL NIL "carol" "example.com")) NIL NIL NIL "<inner@example.net>")'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL) 6'
        b" NIL NIL NIL NIL)"
        b' "mixed" ("boundary" "=_outer") NIL NIL NIL'
    )
    assert bs(text) == b"(" + expected + b")"
    assert body_bytes(scan(crlf(text))) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0) "alternative")'
        b'("message" "rfc822" NIL NIL "fwd" "7bit" 146'
        b' ("Tue, 03 Jan 2023 11:00:00 +0000" "inner" ((NIL NIL "bob" "example.net"))'
        b' ((NIL NIL "bob" "example.net")) ((NIL NIL "bob" "example.net"))'
        b' ((NIL NIL "carol" "example.com")) NIL NIL NIL "<inner@example.net>")'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0) 6) "mixed")'
    )


def test_multipart_without_parts_shows_one_empty_text_part() -> None:
    s = scan(crlf("Content-Type: multipart/mixed; boundary=\"b\"\n\n"))
    assert bodystructure_bytes(s) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "b") NIL NIL NIL)'
    )
    assert body_bytes(s) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'
    )


def test_multipart_without_boundary_is_a_basic_body() -> None:
    assert bs("MIME-Version: 1.0\nContent-Type: multipart/mixed\n\nabc\n") == (
        b'("multipart" "mixed" NIL NIL NIL "7bit" 5 NIL NIL NIL NIL)'
    )


def test_message_global_depends_on_rev2() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/global\n\n"
        "Subject: s\n\nx\n--b--\n"
    )
    s = scan(data)
    rev1 = bodystructure_bytes(s)
    rev2 = bodystructure_bytes(s, rev2=True)
    assert b'("message" "global" NIL NIL NIL "7bit" 15 NIL NIL NIL NIL)' in rev1
    assert (
        b'("message" "global" NIL NIL NIL "7bit" 15 (NIL "s" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL) 2'
    ) in rev2


def test_eight_bit_and_long_values_become_literals() -> None:
    data = "Content-Type: text/plain; name=\"Grüße.txt\"\n\nx".replace("\n", "\r\n").encode()
    got = bodystructure_bytes(scan(data))
    name = "Grüße.txt".encode()
    assert b'("name" {%d}\r\n' % len(name) + name + b' "charset" "us-ascii")' in got
    check_body(parse_imap(got), True)


def test_digest_default() -> None:
    got = bs("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: s\n\nb\n--d--\n")
    assert got.startswith(b'(("message" "rfc822" NIL NIL NIL "7bit" 15 (NIL "s" NIL')


def test_depth_limit_keeps_the_grammar() -> None:
    data = b"Subject: bottom\r\n\r\nx\r\n"
    for level in range(MAX_DEPTH + 10):
        data = b"Subject: %d\r\nContent-Type: message/rfc822\r\n\r\n" % level + data
    check_all(data)
    nested = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(MAX_DEPTH + 10)
    )
    check_all(nested + b"\r\nx\r\n")


# --- ENVELOPE ----------------------------------------------------------------------------------


def test_envelope_rfc3501_example() -> None:
    data = crlf(
        "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
        "From: Terry Gray <gray@cac.washington.edu>\n"
        "Subject: IMAP4rev1 WG mtg summary and minutes\n"
        "To: imap@cac.washington.edu\n"
        "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
        "Message-Id: <B27397-0100000@cac.washington.edu>\n"
        "MIME-Version: 1.0\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\nbody\n"
    )
    assert envelope_bytes(scan(data)) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes"'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' ((NIL NIL "imap" "cac.washington.edu"))'
        b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU"))'
        b' NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )


def test_envelope_all_fields_groups_and_defaults() -> None:
    data = crlf(
        "Message-ID: <m@x>\nIn-Reply-To: <p@x>\nDate: Thu, 01 Feb 2024 09:08:07 +0000\n"
        "Subject: =?utf-8?Q?caf=C3=A9?= \"quoted\"\n"
        "From: \"Last, First\" <first@example.com>\nSender: \nReply-To: Replies <r@x>\n"
        "To: team: a@x, \"B \\\"Bee\\\"\" <b@x>;, c@x (Cee)\n"
        "Cc: undisclosed-recipients:;\nBcc: <@relay.example:hidden@x>\n\nbody\n"
    )
    assert envelope_bytes(scan(data)) == (
        b'("Thu, 01 Feb 2024 09:08:07 +0000" "=?utf-8?Q?caf=C3=A9?= \\"quoted\\""'
        b' (("Last, First" NIL "first" "example.com"))'
        b' (("Last, First" NIL "first" "example.com"))'
        b' (("Replies" NIL "r" "x"))'
        b' ((NIL NIL "team" NIL)(NIL NIL "a" "x")("B \\"Bee\\"" NIL "b" "x")(NIL NIL NIL NIL)'
        b'("Cee" NIL "c" "x"))'
        b' ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
        b' ((NIL "@relay.example" "hidden" "x"))'
        b' "<p@x>" "<m@x>")'
    )


def test_envelope_missing_and_empty_fields() -> None:
    assert envelope_bytes(scan(b"\r\nbody")) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    got = envelope_bytes(scan(b"Subject:\r\nDate: \r\nTo:\r\nFrom: user\r\n\r\n"))
    # empty unstructured fields are "", an address list without address is NIL; a missing
    # domain is "" rather than NIL, which would announce a group
    assert got == (
        b'("" "" ((NIL NIL "user" "")) ((NIL NIL "user" "")) ((NIL NIL "user" "")) NIL NIL NIL'
        b" NIL NIL)"
    )


def test_envelope_eight_bit_subject_is_a_literal() -> None:
    subject = "Grüße".encode()
    got = envelope_bytes(scan(b"Subject: " + subject + b"\r\n\r\n"))
    assert got == b"(NIL {%d}\r\n" % len(subject) + subject + b" NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_email_package_fixture_parses() -> None:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["Subject"] = "fixture"
    msg.set_content("text\n")
    msg.add_alternative("<p>html</p>\n", subtype="html")
    msg.add_attachment(b"\x00" * 100, maintype="application", subtype="octet-stream",
                       filename="€.bin")
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("x")
    msg.add_attachment(inner)
    check_all(msg.as_bytes(policy=SMTP))


# --- grammar under fuzzing ----------------------------------------------------------------------

_PIECES = [
    b"\r\n", b"\r\n\r\n", b"--b", b"--b--", b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: message/global\r\n",
    b"Content-Type: text/plain; charset=\"x\r\n", b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Disposition: attachment; filename*0*=a; filename*2=c\r\n",
    b"Content-Language: en, (x) de\r\n", b"Content-ID: \xff\r\n", b"Subject: \"\\\r\n",
    b"From: a@b, g: c@d;\r\n", b"To: <\r\n", b"MIME-Version: 1.0\r\n", b"x", b"\xe4", b"\x00",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=6)), max_size=60))
def test_output_always_follows_the_grammar(pieces: list[bytes]) -> None:
    check_all(b"".join(pieces))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_random_bytes_follow_the_grammar(data: bytes) -> None:
    check_all(data)


def test_eight_bit_tokens_are_sent_as_received() -> None:
    data = b"MIME-Version: 1.0\r\nContent-Type: app\xe9/x; n\xe9=v\r\n\r\nx"
    got = bodystructure_bytes(scan(data))
    assert got.startswith(b'({4}\r\napp\xe9 "x" ({2}\r\nn\xe9 "v") NIL NIL "7bit" 1')
