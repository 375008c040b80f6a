"""FETCH of nested MIME built with the stdlib email package (attachments, inline images,
message/rfc822, non-ASCII headers), compared with what the scanner says and with what
the email package itself decodes."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import pytest
from imap_raw import RawImap
from imap_util import deliver

from postroom.message import scan
from postroom.proto.imap.bodystructure import body_bytes, bodystructure_bytes, envelope_bytes
from support.server import Server

PNG = bytes(range(256)) * 8  # binary, with NULs
PDF = b"%PDF-1.4\n" + b"\x00\x01\x02 binary stuff \xff" * 100


def build() -> bytes:
    inner = EmailMessage()
    inner["From"] = "Inner Sender <inner@example.org>"
    inner["To"] = "x@example.test"
    inner["Subject"] = "The forwarded one"
    inner.set_content("Inner body text\n")
    inner.add_attachment(b"inner attachment", maintype="application", subtype="octet-stream",
                         filename="inner.bin")

    msg = EmailMessage()
    msg["From"] = "Zoë Ünicode <zoe@example.org>"
    msg["To"] = "Ærøskøbing <aero@example.test>, plain@example.test"
    msg["Subject"] = "Grüße — nested MIME ☃"
    msg["Message-ID"] = "<nested@example.org>"
    msg["Date"] = "Thu, 04 Jan 2024 12:00:00 +0000"
    msg.set_content("Plain text part with ünïcödé\n")
    msg.add_alternative(
        '<html><body><p>HTML</p><img src="cid:logo@example"></body></html>\n', subtype="html"
    )
    html = msg.get_payload()[1]
    html.add_related(PNG, maintype="image", subtype="png", cid="<logo@example>")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="résumé.pdf")
    msg.add_attachment(inner)
    return msg.as_bytes(policy=email.policy.SMTP)


@pytest.fixture
def mime(server: Server, user: str, raw) -> tuple[RawImap, bytes]:
    deliver(server, user, build())
    stored = server.messages(user)[0]
    c = raw(user)
    c.ok("SELECT INBOX")
    return c, stored


def literal_of(response: bytes, name: bytes) -> bytes:
    m = re.search(re.escape(name) + rb" ~?\{(\d+)\}\r\n", response)
    assert m is not None, (name, response[:300])
    return response[m.end(): m.end() + int(m.group(1))]


def test_structure_matches_scanner(mime: tuple[RawImap, bytes]) -> None:
    c, stored = mime
    summary = scan(stored)
    line = c.ok("FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")[0]
    assert b"ENVELOPE " + envelope_bytes(summary) in line
    assert b"BODYSTRUCTURE " + bodystructure_bytes(summary) in line
    assert b"BODY " + body_bytes(summary) in line
    # the structure the client sees: mixed(alternative(plain, related(html, png)), pdf, rfc822)
    assert line.count(b'"mixed"') == 4  # outer and inner message, in BODYSTRUCTURE and BODY
    assert b'"alternative"' in line and b'"related"' in line
    assert b'("image" "png"' in line and b'"<logo@example>"' in line
    assert b'("message" "rfc822"' in line
    assert b'"filename*" "utf-8\'\'r%C3%A9sum%C3%A9.pdf"' in line or b"filename" in line


def test_sections_match_email_package(mime: tuple[RawImap, bytes]) -> None:
    c, stored = mime
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    parts = parsed.get_payload()
    alternative, pdf_part, rfc822_part = parts
    plain = alternative.get_payload()[0]
    related = alternative.get_payload()[1]
    png_part = related.get_payload()[1]

    r = c.ok("FETCH 1 (BODY.PEEK[1.1] BINARY.PEEK[1.1] BINARY.PEEK[1.2.2] BINARY.SIZE[1.2.2] BINARY.PEEK[2] "
             "BODY.PEEK[2.MIME] BODY.PEEK[3.HEADER] BODY.PEEK[3.TEXT] BODY.PEEK[3.1] "
             "BINARY.PEEK[3.2] BODY.PEEK[1.2.2]<0.10>)")[0]
    raw_plain = literal_of(r, b"BODY[1.1]")
    assert raw_plain and raw_plain in stored  # the part's body as stored
    assert literal_of(r, b"BINARY[1.1]") == plain.get_payload(decode=True)  # CTE undone
    assert literal_of(r, b"BINARY[1.1]").decode("utf-8") == plain.get_content()
    assert literal_of(r, b"BINARY[1.2.2]") == png_part.get_content() == PNG
    assert b"BINARY.SIZE[1.2.2] %d" % len(PNG) in r
    assert literal_of(r, b"BINARY[2]") == pdf_part.get_content() == PDF
    assert b"~{" in r  # binary content with NUL goes as literal8 (RFC 3516)
    mime_header = literal_of(r, b"BODY[2.MIME]")
    assert mime_header.lower().startswith(b"content-type: application/pdf")
    assert mime_header.endswith(b"\r\n\r\n")
    inner = rfc822_part.get_payload()[0]
    assert b"Subject: The forwarded one" in literal_of(r, b"BODY[3.HEADER]")
    assert literal_of(r, b"BODY[3.TEXT]").startswith(b"--")
    assert literal_of(r, b"BODY[3.1]").decode().strip() == \
        inner.get_payload()[0].get_content().strip()
    assert literal_of(r, b"BINARY[3.2]") == b"inner attachment"
    assert literal_of(r, b"BODY[1.2.2]<0>") == stored[stored.index(b"\r\n\r\n", stored.index(
        b"Content-Type: image/png")) + 4:][:10]
    # a part that does not exist is empty, not an error
    r = c.ok("FETCH 1 (BODY.PEEK[9] BODY.PEEK[1.9.9])")[0]
    assert b"BODY[9] {0}" in r or b'BODY[9] ""' in r


def test_non_ascii_headers_in_envelope_and_search(mime: tuple[RawImap, bytes]) -> None:
    c, stored = mime
    r = c.ok("FETCH 1 (ENVELOPE)")[0]
    assert b"=?utf-8?" in r.lower()  # ENVELOPE sends header values undecoded
    assert c.ok('SEARCH CHARSET UTF-8 SUBJECT "grüße"') == [b"* SEARCH 1\r\n"]
    assert c.ok('SEARCH CHARSET UTF-8 FROM "zoë"') == [b"* SEARCH 1\r\n"]
    assert c.ok('SEARCH CHARSET UTF-8 TO "ærøskøbing"') == [b"* SEARCH 1\r\n"]
    assert c.ok('SEARCH CHARSET UTF-8 BODY "ünïcödé"') == [b"* SEARCH 1\r\n"]
    assert c.ok('SEARCH BODY "Inner body text"') == [b"* SEARCH 1\r\n"]  # inside rfc822


def test_malformed_mime_is_served(server: Server, user: str, raw) -> None:
    broken = (b"From: x@example.org\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n"
              b"--never-closed\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-weird\r\n\r\n"
              b"text\r\n--never-closed\r\nContent-Type: message/rfc822\r\n\r\nnot really a message")
    deliver(server, user, broken)
    c = raw(user)
    c.ok("SELECT INBOX")
    r = c.ok("FETCH 1 (BODYSTRUCTURE BODY.PEEK[1] BODY.PEEK[2.HEADER])")[0]
    assert b"BODYSTRUCTURE (" in r
    _, done = c.cmd("FETCH 1 (BINARY.PEEK[1])")
    assert b"NO [UNKNOWN-CTE]" in done
    assert c.ok("NOOP") == []


def test_prerendered_and_old_summaries_fetch_alike(server: Server, user: str, raw) -> None:
    """A message stored with the items rendered at delivery and the same message stored
    with a summary from before that (no second line) answer ENVELOPE/BODYSTRUCTURE/BODY
    byte for byte alike, in IMAP4rev1 and IMAP4rev2."""
    from postroom.deliver import normalize, summarize

    data = normalize(build())

    async def put(admin, store):  # type: ignore[no-untyped-def]
        u = await store.get_user(user)
        inbox = await store.get_mailbox(u.id, "INBOX")
        await store.append(inbox.id, data, summarize(data))
        await store.append(inbox.id, data, scan(data).to_bytes())

    server.admin(put)
    for rev2 in (False, True):
        c = raw(user)
        if rev2:
            c.ok("ENABLE IMAP4rev2")
        c.ok("EXAMINE INBOX")
        new, old = c.ok("FETCH 1:2 (ENVELOPE BODYSTRUCTURE BODY)")
        assert new.startswith(b"* 1 FETCH (ENVELOPE (") and old.startswith(b"* 2 FETCH (")
        assert new[len(b"* 1"):] == old[len(b"* 2"):]
        assert bodystructure_bytes(scan(data), True, rev2=rev2) in new
