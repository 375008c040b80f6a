"""MIME structure scan: offsets, types, defaults, limits, malformed input."""

from __future__ import annotations

import base64
import time
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from postroom.message import MAX_DEPTH, Part, scan, scanner

CRLF = b"\r\n"


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def body(data: bytes, part: Part) -> bytes:
    return data[part.body_start : part.body_end]


def header(data: bytes, part: Part) -> bytes:
    return data[part.header_start : part.body_start]


def check_offsets(data: bytes, part: Part, lo: int = 0, hi: int | None = None) -> None:
    hi = len(data) if hi is None else hi
    assert lo <= part.header_start <= part.header_end <= part.body_start <= part.body_end <= hi
    for child in part.children:
        check_offsets(data, child, part.body_start, part.body_end)
    if part.message is not None:
        check_offsets(data, part.message, part.body_start, part.body_end)


# --- simple messages --------------------------------------------------------------------


def test_plain_message_offsets_and_defaults() -> None:
    data = crlf("From: a@example.com\nSubject: hi\n\nline 1\nline 2\n")
    s = scan(data)
    root = s.root
    assert header(data, root) == crlf("From: a@example.com\nSubject: hi\n\n")
    assert data[root.header_start : root.header_end] == crlf("From: a@example.com\nSubject: hi\n")
    assert body(data, root) == crlf("line 1\nline 2\n")
    assert (root.type, root.subtype, root.params) == ("text", "plain", ())
    assert root.encoding is None
    assert root.lines == 2
    assert root.size == len(crlf("line 1\nline 2\n"))
    assert not root.multipart and root.children == () and root.message is None
    assert s.size == len(data)


def test_bare_lf_message() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html\n\n"
        b"<p>x</p>\n--b\n\nsecond\n--b--\n"
    )
    root = scan(data).root
    assert root.multipart and len(root.children) == 2
    first, second = root.children
    assert (first.type, first.subtype) == ("text", "html")
    assert body(data, first) == b"<p>x</p>"
    assert body(data, second) == b"second"
    assert header(data, second) == b"\n"


def test_header_only_message() -> None:
    data = b"Subject: no body\r\nFrom: a@b"
    root = scan(data).root
    assert root.header_end == root.body_start == root.body_end == len(data)
    assert scan(data).envelope.subject == b"no body"


def test_empty_header() -> None:
    data = b"\r\nbody only\r\n"
    root = scan(data).root
    assert (root.header_start, root.header_end, root.body_start) == (0, 0, 2)
    assert body(data, root) == b"body only\r\n"


@pytest.mark.parametrize("data", [b"", b"\r\n", b"\n", b"x", b"\x00\xff" * 50, b"--\r\n\r\n--"])
def test_degenerate_inputs(data: bytes) -> None:
    s = scan(data)
    check_offsets(data, s.root)


def test_folded_headers_and_lines_without_colon() -> None:
    data = crlf(
        "Subject: a folded\n\tsubject line\nthis line has no colon\n"
        "Content-Type: text/plain;\n charset=\"utf-8\"\nMIME-Version: 1.0\n\nbody\n"
    )
    s = scan(data)
    assert s.envelope.subject == b"a folded\tsubject line"
    assert s.root.params == (("charset", b"utf-8"),)


def test_first_occurrence_wins() -> None:
    data = crlf(
        "MIME-Version: 1.0\nContent-Type: text/html\nContent-Type: image/png\n"
        "Subject: one\nSubject: two\n\nx"
    )
    s = scan(data)
    assert s.root.mime_type == "text/html"
    assert s.envelope.subject == b"one"


def test_eight_bit_header_bytes_kept_raw() -> None:
    data = "Subject: Grüße\nFrom: Jörg <jörg@bücher.de>\n\nx".replace("\n", "\r\n")
    raw = data.encode("utf-8")
    s = scan(raw)
    assert s.envelope.subject == "Grüße".encode()
    assert s.envelope.from_ is not None
    assert s.envelope.from_[0].mailbox == "jörg".encode()
    latin = data.encode("latin-1")
    assert scan(latin).envelope.subject == "Grüße".encode("latin-1")


# --- MIME types and parameters -------------------------------------------------------------


def test_content_type_parsing_in_scan() -> None:
    data = crlf(
        "MIME-Version: 1.0\n"
        "Content-Type: Text/HTML; Charset=\"UTF-8\"; format=flowed (a comment)\n"
        "Content-Transfer-Encoding: Quoted-Printable\n"
        "Content-ID: <id@x>\nContent-Description: desc\nContent-MD5: abc=\n"
        "Content-Disposition: INLINE; filename=a.html\n"
        "Content-Language: en, de\nContent-Location: http://x/y\n\nx"
    )
    root = scan(data).root
    assert (root.type, root.subtype) == ("text", "html")
    assert root.params == (("charset", b"UTF-8"), ("format", b"flowed"))
    assert root.encoding == "quoted-printable"
    assert root.content_id == b"<id@x>"
    assert root.description == b"desc"
    assert root.md5 == b"abc="
    assert root.disposition == "inline"
    assert root.disposition_params == (("filename", b"a.html"),)
    assert root.language == (b"en", b"de")
    assert root.location == b"http://x/y"
    assert root.charset == "UTF-8"
    assert root.filename == "a.html"


def test_invalid_content_type_means_default() -> None:
    data = crlf("MIME-Version: 1.0\nContent-Type: text\n\nx")
    assert scan(data).root.mime_type == "text/plain"
    data = crlf("MIME-Version: 1.0\nContent-Type: /plain\n\nx")
    assert scan(data).root.mime_type == "text/plain"


def test_content_fields_ignored_without_mime_version_or_content_type() -> None:
    data = crlf("Content-Transfer-Encoding: base64\nContent-ID: <x>\n\nAAAA\n")
    root = scan(data).root
    assert root.encoding is None and root.content_id is None
    data = crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\nAAAA\n")
    assert scan(data).root.encoding == "base64"
    data = crlf("Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\nAAAA\n")
    assert scan(data).root.encoding == "base64"


def test_invalid_transfer_encoding_is_none() -> None:
    data = crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: ?invalid\n\nx")
    assert scan(data).root.encoding is None
    data = crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: base64 (c)\n\nx")
    assert scan(data).root.encoding == "base64"


def test_rfc2231_filename_with_continuations_and_charset() -> None:
    data = crlf(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        "Content-Type: application/pdf;\n name*1*=%E2%82%AC.pdf;\n name*0*=utf-8''caf%C3%A9-\n"
        "Content-Disposition: attachment;\n filename*0*=utf-8'en'%E2%82%AC;\n"
        " filename*1=\" 100%.pdf\"\n\n%PDF\n--b--\n"
    )
    part = scan(data).root.children[0]
    assert part.params == (("name*", b"utf-8''caf%C3%A9-%E2%82%AC.pdf"),)
    assert part.param("name") == "café-€.pdf"
    assert part.disposition_params == (("filename*", b"utf-8'en'%E2%82%AC 100%25.pdf"),)
    assert part.filename == "€ 100%.pdf"


def test_rfc2047_in_parameters_as_clients_send_it() -> None:
    data = crlf(
        "MIME-Version: 1.0\nContent-Type: application/octet-stream;\n"
        " name=\"=?UTF-8?B?w6TDtsO8LnR4dA==?=\"\n\nx"
    )
    root = scan(data).root
    assert root.params == (("name", b"=?UTF-8?B?w6TDtsO8LnR4dA==?="),)
    assert root.filename == "äöü.txt"


# --- multipart ----------------------------------------------------------------------------


def build_attachments() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "attachments"
    msg.set_content("Hello,\nsee attached.\n")
    msg.add_alternative("<p>Hello</p>\n", subtype="html")
    msg.add_attachment(b"\x00\x01binary\xff" * 100, maintype="application",
                       subtype="octet-stream", filename="data.bin")
    msg.add_attachment("plain attachment\n", filename="notes.txt")
    msg.add_attachment(b"GIF89a....", maintype="image", subtype="gif", filename="pic.gif")
    return msg.as_bytes(policy=SMTP)


def test_attachments_structure() -> None:
    data = build_attachments()
    s = scan(data)
    check_offsets(data, s.root)
    root = s.root
    assert root.mime_type == "multipart/mixed" and root.multipart
    kinds = [c.mime_type for c in root.children]
    assert kinds == [
        "multipart/alternative", "application/octet-stream", "text/plain", "image/gif",
    ]
    alt = root.children[0]
    assert [c.mime_type for c in alt.children] == ["text/plain", "text/html"]
    assert body(data, alt.children[0]) == b"Hello,\r\nsee attached.\r\n"
    binpart = root.children[1]
    assert binpart.encoding == "base64"
    assert binpart.disposition == "attachment"
    assert binpart.filename == "data.bin"
    assert base64.b64decode(body(data, binpart)) == b"\x00\x01binary\xff" * 100
    assert root.children[3].filename == "pic.gif"


def test_inline_image_in_related() -> None:
    msg = EmailMessage()
    msg["Subject"] = "related"
    msg.set_content("text")
    msg.add_alternative('<img src="cid:img1@x">', subtype="html")
    msg.get_payload()[1].add_related(b"\x89PNG", "image", "png", cid="<img1@x>")
    data = msg.as_bytes(policy=SMTP)
    root = scan(data).root
    related = root.children[1]
    assert related.mime_type == "multipart/related"
    image = related.children[1]
    assert image.mime_type == "image/png"
    assert image.content_id == b"<img1@x>"


def test_preamble_epilogue_and_padding() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=\"xx\"\n\npreamble\n--xx \t\n\nfirst\n"
        "--xx\t\n\nsecond\n--xx-- \nepilogue\n--xx\n\nnot a part\n"
    )
    root = scan(data).root
    assert [body(data, c) for c in root.children] == [b"first", b"second"]


def test_boundary_on_first_body_line_and_empty_parts() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\nx\n--b--")
    root = scan(data).root
    assert len(root.children) == 2
    assert header(data, root.children[0]) == b"" and body(data, root.children[0]) == b""
    assert body(data, root.children[1]) == b"x"


def test_missing_close_delimiter() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\nmore\n")
    root = scan(data).root
    assert [body(data, c) for c in root.children] == [b"one", b"two\r\nmore\r\n"]


def test_delimiter_needs_line_start_and_line_end() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx --b\n--bx\n--b--x\n--b--\n"
    )
    root = scan(data).root
    assert len(root.children) == 1
    assert body(data, root.children[0]) == crlf("x --b\n--bx\n--b--x")


def test_nested_boundaries_that_are_prefixes() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=foo\n\n"
        "--foo\nContent-Type: multipart/alternative; boundary=foo-bar\n\n"
        "--foo-bar\n\ninner one\n--foo-bar\n\ninner two\n--foo-bar--\n"
        "--foo\n\nouter two\n--foo--\n"
    )
    root = scan(data).root
    assert len(root.children) == 2
    inner = root.children[0]
    assert [body(data, c) for c in inner.children] == [b"inner one", b"inner two"]
    assert body(data, root.children[1]) == b"outer two"

    # and the other way round: the outer boundary is the longer one
    data = crlf(
        "Content-Type: multipart/mixed; boundary=foo-bar\n\n"
        "--foo-bar\nContent-Type: multipart/alternative; boundary=foo\n\n"
        "--foo\n\ninner one\n--foo--\n"
        "--foo-bar\n\nouter two\n--foo-bar--\n"
    )
    root = scan(data).root
    assert len(root.children) == 2
    assert [body(data, c) for c in root.children[0].children] == [b"inner one"]


def test_outer_delimiter_terminates_inner_parts() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=out\n\n"
        "--out\nContent-Type: multipart/mixed; boundary=in\n\n--in\n\nunterminated\n"
        "--out\n\nsecond\n--out--\n"
    )
    root = scan(data).root
    assert len(root.children) == 2
    assert body(data, root.children[0].children[0]) == b"unterminated"


def test_multipart_without_boundary_is_a_leaf() -> None:
    data = crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed\n\n--x\n\nbody\n")
    root = scan(data).root
    assert root.mime_type == "multipart/mixed"
    assert not root.multipart and root.children == ()
    assert body(data, root) == crlf("--x\n\nbody\n")


def test_boundary_never_found_gives_no_children() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=zzz\n\njust text\n")
    root = scan(data).root
    assert root.multipart and root.children == ()


def test_multipart_digest_default_is_message_rfc822() -> None:
    data = crlf(
        "Content-Type: multipart/digest; boundary=d\n\n--d\n\nFrom: x@y\nSubject: one\n\nbody one\n"
        "--d\nContent-Type: text/plain\n\nnot a message\n--d--\n"
    )
    root = scan(data).root
    first, second = root.children
    assert first.mime_type == "message/rfc822"
    assert first.message is not None
    assert first.message.envelope is not None
    assert first.message.envelope.subject == b"one"
    assert second.mime_type == "text/plain"
    # the digest default does not reach grandchildren
    assert first.message.mime_type == "text/plain"


def test_message_rfc822_part() -> None:
    inner = EmailMessage()
    inner["From"] = "Carol <carol@example.net>"
    inner["Subject"] = "inner"
    inner["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    inner.set_content("inner body\n")
    inner.add_attachment(b"zz", maintype="application", subtype="zip", filename="z.zip")
    outer = EmailMessage()
    outer["Subject"] = "outer"
    outer.set_content("see forwarded\n")
    outer.add_attachment(inner)
    data = outer.as_bytes(policy=SMTP)
    s = scan(data)
    check_offsets(data, s.root)
    fwd = s.root.children[1]
    assert fwd.mime_type == "message/rfc822"
    enc = fwd.message
    assert enc is not None and enc.envelope is not None
    assert enc.header_start == fwd.body_start and enc.body_end == fwd.body_end
    assert enc.envelope.subject == b"inner"
    assert enc.envelope.from_ is not None and enc.envelope.from_[0].name == b"Carol"
    assert enc.mime_type == "multipart/mixed"
    assert [c.mime_type for c in enc.children] == ["text/plain", "application/zip"]
    assert fwd.lines == body(data, fwd).count(b"\n")


def test_message_global_is_encapsulated_too() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/global\n\n"
        "Subject: intl\n\nbody\n--b--\n"
    )
    part = scan(data).root.children[0]
    assert part.message is not None
    assert part.message.envelope is not None and part.message.envelope.subject == b"intl"


# --- limits ----------------------------------------------------------------------------------


def nested_multiparts(depth: int) -> bytes:
    head = b""
    tail = b""
    for level in range(depth):
        head += b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
        tail = b"\r\n--b%d--\r\n" % level + tail
    return head + b"\r\ninnermost\r\n" + tail


def depth_of(part: Part) -> int:
    below = [depth_of(c) for c in part.children]
    if part.message is not None:
        below.append(depth_of(part.message))
    return 1 + max(below, default=0)


def test_depth_limit() -> None:
    data = nested_multiparts(MAX_DEPTH + 20)
    s = scan(data)
    check_offsets(data, s.root)
    assert depth_of(s.root) == MAX_DEPTH + 1


def test_depth_limit_on_nested_messages() -> None:
    data = b"Subject: 0\r\n\r\nbottom\r\n"
    for level in range(1, MAX_DEPTH + 30):
        data = b"Subject: %d\r\nContent-Type: message/rfc822\r\n\r\n" % level + data
    s = scan(data)
    check_offsets(data, s.root)
    assert depth_of(s.root) <= MAX_DEPTH + 2


def test_part_count_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner, "MAX_PARTS", 50)
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 200
    s = scan(data)
    check_offsets(data, s.root)
    assert sum(1 for _ in s.parts()) == 50


def test_many_parts_default_limit_is_fast() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 20_000
    s = scan(data)
    assert 9_000 < sum(1 for _ in s.parts()) <= 10_001


def test_walk_order() -> None:
    data = build_attachments()
    types = [p.mime_type for p in scan(data).root.walk()]
    assert types == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html",
        "application/octet-stream", "text/plain", "image/gif",
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"Content-Type: text/plain" + b";" * 2_000_000 + b"\r\n\r\nx",
        b"Content-Type: text/plain; a=" + b'"";' * 700_000 + b"\r\n\r\nx",
        b"To: " + b"," * 2_000_000 + b"\r\n\r\nx",
        b"To: " + b"a@b, " * 400_000 + b"\r\n\r\nx",
        b"To: " + b"<@a:" * 500_000 + b"\r\n\r\nx",
        b"Subject: " + b"Re: " * 500_000 + b"\r\n\r\nx",
        b"References: " + b"<a@b> " * 400_000 + b"\r\n\r\nx",
        b"MIME-Version: 1.0\r\nContent-Language: " + b"en," * 700_000 + b"\r\n\r\nx",
        b"Content-Type: text/plain; a=b " + b"(" * 1_000_000 + b"\r\n\r\nx",
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"\n--ab" * 400_000,
    ],
    ids=["semicolons", "quotes", "commas", "addresses", "routes", "subject", "references",
         "languages", "comment", "near-boundaries"],
)
def test_hostile_field_values_stay_cheap(data: bytes) -> None:
    # CPU time of this thread, not wall time: a loaded machine (other test workers) must
    # not fail a test whose point is "linear, not quadratic", which needs seconds of CPU.
    started = time.thread_time()
    summary = scan(data)
    assert time.thread_time() - started < 2.0
    assert len(summary.to_bytes()) < 300_000
    check_offsets(data, summary.root)


def test_long_field_values_are_cut() -> None:
    subject = b"x" * (scanner.MAX_FIELD_VALUE + 100)
    summary = scan(b"Subject: " + subject + b"\r\n\r\n")
    # the value starts with the space after the colon, which unfolding trims
    assert summary.envelope.subject == subject[: scanner.MAX_FIELD_VALUE - 1]
