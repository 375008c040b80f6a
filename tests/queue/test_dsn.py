"""DSN composition: compose, parse back with the stdlib email parser, check every field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser, Parser
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.queue.dsn import (
    DSN_REVERSE_PATH,
    SUBJECTS,
    Action,
    DsnKind,
    RecipientStatus,
    compose_dsn,
    header_section,
    may_send_dsn,
    should_notify,
    wants_dsn,
)

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
ARRIVAL = NOW - timedelta(hours=5)
RETRY_UNTIL = ARRIVAL + timedelta(days=5)
ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net, carol@example.net\r\n"
    b"Subject: Lunch\r\n"
    b"Message-ID: <orig@example.org>\r\n"
    b"\r\n"
    b"Shall we?\r\n"
    b".leading dot line\r\n"
)

BOB = RecipientStatus(
    final_recipient="bob@example.net",
    action=Action.FAILED,
    status="5.1.1",
    original_recipient="rfc822;Bob@Example.net",
    remote_mta="mx1.example.net",
    diagnostic="550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown",
    last_attempt=NOW,
)
CAROL = RecipientStatus(
    final_recipient="carol@example.net",
    action=Action.DELAYED,
    status="4.4.1",
    remote_mta="mx2.example.net",
    diagnostic="connect to mx2.example.net: Connection refused",
    last_attempt=NOW,
    will_retry_until=RETRY_UNTIL,
)


def compose(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "hostname": "mail.example.org",
        "original": ORIGINAL,
        "envelope_from": "alice@example.org",
        "recipients": [BOB],
        "kind": DsnKind.FAILURE,
        "ret_full": True,
        "envid": "QQ314159",
        "arrival": ARRIVAL,
        "now": NOW,
        "message_id": "<dsn.1@mail.example.org>",
    }
    args.update(overrides)
    return compose_dsn(**args)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def status_blocks(part: Message, data: bytes | None = None) -> list[Message]:
    """The per-message block then one block per recipient, for either report type.

    The stdlib splits message/delivery-status into blocks itself; it treats
    message/global-delivery-status like message/rfc822, so for that type the report is
    cut out of the raw DSN bytes (``data``) and split here.
    """
    if part.get_content_type() == "message/delivery-status":
        payload = part.get_payload()
        assert isinstance(payload, list)
        return payload
    assert data is not None
    boundary = part_boundary(data)
    section = data.split(b"\r\n--" + boundary + b"\r\n")[2]
    body = section.split(b"\r\n\r\n", 1)[1].decode("utf-8")
    blocks = [b for b in body.split("\r\n\r\n") if b.strip()]
    return [Parser(policy=policy.default).parsestr(b + "\r\n") for b in blocks]


def part_boundary(data: bytes) -> bytes:
    boundary = parse(data).get_boundary()
    assert boundary is not None
    return boundary.encode()


def test_failure_dsn_every_field() -> None:
    data = compose(queue_id="4Fz9")
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    assert data.isascii()
    msg = parse(data)
    assert not msg.defects
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.org"
    assert msg["From"].addresses[0].display_name == "Mail Delivery System"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Message-ID"] == "<dsn.1@mail.example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert parsedate_to_datetime(msg["Date"]) == NOW
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, report, returned = msg.iter_parts()

    assert text.get_content_type() == "text/plain"
    body = text.get_content()
    assert "mail.example.org" in body
    assert "<bob@example.net>: could not be delivered (status 5.1.1)" in body
    assert "Recipient address rejected: User" in body
    assert "attached below" in body

    assert report.get_content_type() == "message/delivery-status"
    per_message, bob = status_blocks(report, data)
    assert per_message["Reporting-MTA"] == "dns; mail.example.org"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["X-Postroom-Queue-ID"] == "4Fz9"
    assert per_message["X-Postroom-Sender"] == "rfc822;alice@example.org"
    assert parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert bob["Original-Recipient"] == "rfc822;Bob@Example.net"
    assert bob["Final-Recipient"] == "rfc822;bob@example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.example.net"
    assert bob["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"
    )
    assert parsedate_to_datetime(bob["Last-Attempt-Date"]) == NOW
    assert bob["Will-Retry-Until"] is None

    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "Lunch"
    assert inner["Message-ID"] == "<orig@example.org>"
    # Returned byte for byte (the part ends with the CRLF before the delimiter).
    assert ORIGINAL + b"\r\n--" in data


def test_delay_dsn_headers_only_and_retry_until() -> None:
    data = compose(kind=DsnKind.DELAY, recipients=[CAROL], envid=None)
    msg = parse(data)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    text, report, returned = msg.iter_parts()
    assert "Will retry until" in text.get_content()
    per_message, carol = status_blocks(report, data)
    assert per_message["Original-Envelope-Id"] is None
    assert per_message["X-Postroom-Queue-ID"] is None
    assert carol["Original-Recipient"] is None
    assert carol["Action"] == "delayed"
    assert carol["Status"] == "4.4.1"
    assert parsedate_to_datetime(carol["Will-Retry-Until"]) == RETRY_UNTIL
    # RFC 3461 4.3: no failure -> headers only, even with RET=FULL.
    assert returned.get_content_type() == "text/rfc822-headers"
    headers = returned.get_content()
    assert "Subject: Lunch" in headers
    assert "Shall we?" not in headers


def test_success_dsn() -> None:
    delivered = RecipientStatus("bob@example.net", Action.DELIVERED, "2.0.0", last_attempt=NOW)
    relayed = RecipientStatus(
        "carol@example.net",
        Action.RELAYED,
        "2.0.0",
        remote_mta="mx2.example.net",
        will_retry_until=RETRY_UNTIL,  # ignored: not delayed
    )
    data = compose(kind=DsnKind.SUCCESS, recipients=[delivered, relayed])
    msg = parse(data)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    _, report, returned = msg.iter_parts()
    _, bob, carol = status_blocks(report, data)
    assert (bob["Action"], bob["Status"]) == ("delivered", "2.0.0")
    assert (carol["Action"], carol["Remote-MTA"]) == ("relayed", "dns; mx2.example.net")
    assert carol["Will-Retry-Until"] is None
    assert returned.get_content_type() == "text/rfc822-headers"


def test_mixed_failed_and_delayed_recipients() -> None:
    data = compose(recipients=[BOB, CAROL])
    msg = parse(data)
    _, report, _ = msg.iter_parts()
    blocks = status_blocks(report, data)
    assert [b["Action"] for b in blocks[1:]] == ["failed", "delayed"]


def test_ret_hdrs_returns_headers() -> None:
    msg = parse(compose(ret_full=False))
    text, _, returned = msg.iter_parts()
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "headers of your message" in text.get_content()


def test_large_original_returns_headers_even_with_ret_full() -> None:
    big = ORIGINAL + b"x" * 2000 + b"\r\n"
    data = compose(original=big, max_returned=1000)
    msg = parse(data)
    text, _, returned = msg.iter_parts()
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "larger than 1000 bytes" in text.get_content()
    assert b"x" * 100 not in data


def test_header_section_truncation_and_edges() -> None:
    assert header_section(b"A: 1\nB: 2\n\nbody\n") == (b"A: 1\r\nB: 2\r\n", False)
    assert header_section(b"\r\nbody only") == (b"", False)
    assert header_section(b"A: 1") == (b"A: 1\r\n", False)
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(100))
    cut, truncated = header_section(headers + b"\r\nbody", limit=500)
    assert truncated and len(cut) <= 500 and cut.endswith(b"\r\n")
    assert headers.startswith(cut)


def test_bare_lf_original_is_normalized() -> None:
    data = compose(original=ORIGINAL.replace(b"\r\n", b"\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert ORIGINAL in data


def test_smtputf8_original_uses_global_types() -> None:
    original = "From: José <josé@exemple.fr>\r\nSubject: Café\r\n\r\nDéjà vu\r\n".encode()
    rcpt = RecipientStatus(
        "зоя@пример.рф",
        Action.FAILED,
        "5.1.1",
        original_recipient="utf-8;зоя@пример.рф",
        diagnostic="550 5.1.1 Пользователь неизвестен",
    )
    data = compose(
        original=original, envelope_from="josé@exemple.fr", recipients=[rcpt], smtputf8=True
    )
    assert not data.isascii()
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    # RFC 6532 UTF-8 header (the stdlib bytes parser would show it as surrogates).
    assert "To: <josé@exemple.fr>\r\n".encode() in data
    text, report, returned = msg.iter_parts()
    assert text.get_content_charset() == "utf-8"
    assert "зоя@пример.рф" in text.get_content()
    assert report.get_content_type() == "message/global-delivery-status"
    assert msg.get_param("report-type") == "global-delivery-status"
    _, block = status_blocks(report, data)
    assert block["Final-Recipient"] == "utf-8;зоя@пример.рф"
    assert block["Original-Recipient"] == "utf-8;зоя@пример.рф"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 Пользователь неизвестен"
    assert returned.get_content_type() == "message/global"
    assert original + b"\r\n--" in data


def test_smtputf8_headers_only_is_global_headers() -> None:
    data = compose(smtputf8=True, ret_full=False)
    _, report, returned = parse(data).iter_parts()
    assert report.get_content_type() == "message/global-delivery-status"
    assert returned.get_content_type() == "message/global-headers"


def test_8bit_original_without_smtputf8_is_labelled_8bit() -> None:
    original = b"Subject: x\r\nContent-Type: text/plain; charset=latin-1\r\n\r\ncaf\xe9\r\n"
    data = compose(original=original)
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    _, report, returned = msg.iter_parts()
    assert report.get_content_type() == "message/delivery-status"
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"


def test_injection_is_neutralised_and_non_ascii_replaced() -> None:
    evil = RecipientStatus(
        "bob@example.net",
        Action.FAILED,
        "5.7.1",
        remote_mta="mx.example.net\r\nX-Injected: 1",
        diagnostic="550 5.7.1 no\r\nX-Injected: yes\r\n\r\nbody? caf\u00e9 \x00",
    )
    data = compose(recipients=[evil], envid="ID\r\nX-Injected: 2")
    assert data.isascii()
    msg = parse(data)
    _, report, _ = msg.iter_parts()
    blocks = status_blocks(report, data)
    assert len(blocks) == 2
    for block in blocks:
        assert block["X-Injected"] is None
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.7.1 no X-Injected: yes body? caf?"
    assert blocks[0]["Original-Envelope-Id"] == "ID X-Injected: 2"


def test_long_diagnostic_is_folded_and_capped() -> None:
    diag = "550 5.1.1 " + " ".join(f"word{i}" for i in range(1000)) + " " + "z" * 3000
    data = compose(
        recipients=[RecipientStatus("b@x.example", Action.FAILED, "5.1.1", diagnostic=diag)]
    )
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    _, report, _ = parse(data).iter_parts()
    value = status_blocks(report, data)[1]["Diagnostic-Code"]
    assert value.startswith("smtp; 550 5.1.1 word0 word1")
    assert value.endswith("...")
    assert len(value) <= 2100


def test_boundary_not_in_content() -> None:
    first = compose()
    boundary = parse(first).get_boundary()
    assert boundary is not None
    # An original that happens to contain our boundary forces a different one.
    tricky = ORIGINAL + b"--" + boundary.encode() + b"\r\n"
    second = compose(original=tricky)
    other = parse(second).get_boundary()
    assert other is not None and other != boundary
    assert len(list(parse(second).iter_parts())) == 3


def test_deterministic() -> None:
    assert compose() == compose()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recipients": []},
        {"envelope_from": ""},
        {"envelope_from": "<>"},
        {"recipients": [RecipientStatus("b@x.example", Action.FAILED, "550")]},
        {"now": datetime(2026, 1, 1)},  # naive
    ],
)
def test_api_misuse(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        compose(**kwargs)


@pytest.mark.parametrize(
    ("notify", "kind", "expected"),
    [
        (None, DsnKind.FAILURE, True),
        (None, DsnKind.DELAY, True),
        (None, DsnKind.SUCCESS, False),
        ("NEVER", DsnKind.FAILURE, False),
        ("never", DsnKind.DELAY, False),
        ("SUCCESS", DsnKind.SUCCESS, True),
        ("SUCCESS", DsnKind.FAILURE, False),
        ("SUCCESS,FAILURE", DsnKind.FAILURE, True),
        ("SUCCESS,FAILURE", DsnKind.DELAY, False),
        ("FAILURE, DELAY", DsnKind.DELAY, True),
        (["DELAY"], DsnKind.DELAY, True),
        (frozenset({"SUCCESS", "NEVER"}), DsnKind.SUCCESS, False),
    ],
)
def test_should_notify(notify: object, kind: DsnKind, expected: bool) -> None:
    assert should_notify(notify, kind) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("", False),
        ("<>", False),
        (DSN_REVERSE_PATH, False),
        ("MAILER-DAEMON@example.org", False),
        ("mailer-daemon@example.org", False),
        ('"MAILER-DAEMON"@example.org', False),
        ("MAILER-DAEMON", False),
        ("alice@example.org", True),
        ("<alice@example.org>", True),
        ("mailer-daemon-fan@example.org", True),
    ],
)
def test_may_send_dsn(sender: str, expected: bool) -> None:
    assert may_send_dsn(sender) is expected


def test_wants_dsn() -> None:
    assert wants_dsn("alice@example.org", None, DsnKind.FAILURE)
    assert not wants_dsn("", None, DsnKind.FAILURE)
    assert not wants_dsn("alice@example.org", "NEVER", DsnKind.FAILURE)


def test_subjects_cover_every_kind() -> None:
    assert set(SUBJECTS) == set(DsnKind)


@settings(max_examples=60, deadline=None)
@given(
    original=st.binary(max_size=3000),
    diagnostic=st.text(max_size=300) | st.text(alphabet="\U0001f600 x", max_size=3000),
    rcpt_local=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="@<>"),
        min_size=1,
        max_size=20,
    ),
    kind=st.sampled_from(list(DsnKind)),
    ret_full=st.booleans(),
)
def test_any_input_parses_back(
    original: bytes, diagnostic: str, rcpt_local: str, kind: DsnKind, ret_full: bool
) -> None:
    """Whatever the original and the remote's text, the DSN parses into three parts with
    exactly one status block per recipient and no line over 998 octets."""
    rcpt = RecipientStatus(
        f"{rcpt_local}@example.net", Action.FAILED, "5.0.0", diagnostic=diagnostic or None
    )
    data = compose(
        original=original, recipients=[rcpt], kind=kind, ret_full=ret_full, max_returned=2000
    )
    assert b"\n" not in data.replace(b"\r\n", b"")
    ours = b"".join(data.split(b"\r\n--" + part_boundary(data))[:3])  # not the original
    for line in ours.split(b"\r\n"):
        assert len(line) <= 998
    msg = parse(data)
    parts = list(msg.iter_parts())
    assert len(parts) == 3
    blocks = status_blocks(parts[1], data)
    assert len(blocks) == 2
    assert blocks[1]["Action"] == "failed"
