"""Property tests: whatever the bytes, scan() returns a consistent summary and never raises."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.message import MessageSummary, Part, header_values, scan, sent_date, text_parts


def _seeds() -> list[bytes]:
    inner = EmailMessage()
    inner["From"] = "Inner <inner@example.net>"
    inner["Subject"] = "=?utf-8?B?w6TDtsO8?="
    inner.set_content("inner\n")
    msg = EmailMessage()
    msg["From"] = '"Doe, J" <j@example.com>, grp: a@b, c@d;'
    msg["To"] = "x@y"
    msg["Date"] = "Tue, 03 Sep 2024 10:11:12 +0200"
    msg["Subject"] = "Re: [l] seed"
    msg.set_content("plain body\n")
    msg.add_alternative("<p>html</p>\n", subtype="html")
    msg.add_attachment(b"\x00\x01" * 40, maintype="application", subtype="octet-stream",
                       filename="a b.bin")
    msg.add_attachment(inner)
    digest = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: s\r\n\r\nb\r\n"
        b"--d\r\nContent-Type: multipart/mixed; boundary=dd\r\n\r\n--dd\r\n\r\nx\r\n--dd--\r\n"
        b"--d--\r\n"
    )
    return [msg.as_bytes(policy=SMTP), digest, b"Subject: x\n\nbody\n"]


SEEDS = _seeds()


def check(data: bytes, summary: MessageSummary) -> None:
    assert summary.size == len(data)
    root = summary.root
    assert root.header_start == 0 and root.body_end == len(data)

    def visit(part: Part, lo: int, hi: int, depth: int) -> int:
        assert lo <= part.header_start <= part.header_end <= part.body_start
        assert part.body_start <= part.body_end <= hi
        assert part.lines >= 0
        assert depth <= 60
        count = 1
        previous_end = part.body_start
        for child in part.children:
            assert child.header_start >= previous_end  # siblings in order, disjoint
            previous_end = child.body_end
            count += visit(child, part.body_start, part.body_end, depth + 1)
        if part.message is not None:
            assert not part.children
            count += visit(part.message, part.body_start, part.body_end, depth + 1)
        return count

    total = visit(root, 0, len(data), 0)
    assert total <= 10_001
    assert MessageSummary.from_bytes(summary.to_bytes()) == summary
    # the SEARCH helpers accept whatever the scan produced
    header_values(data, summary, "subject")
    for _text in text_parts(data, summary):
        pass
    sent_date(summary)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    check(data, scan(data))


# Bytes that steer the scanner into interesting states when sprinkled into messages.
_TOKENS = [
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b"--b", b"--d", b"--dd--", b":", b";", b"\"",
    b"(", b")", b"<", b">", b"@", b",", b"=?utf-8?B?", b"?=", b"*0*=", b"''", b"%",
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"MIME-Version: 1.0\r\n", b"\xff", b"\x00",
    b" ", b"\t",
]

_mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "duplicate", "lf"]),
    st.floats(min_value=0, max_value=1),
    st.integers(min_value=0, max_value=80),
    st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=12)),
)


def mutate(data: bytes, mutations: list[tuple[str, float, int, bytes]]) -> bytes:
    for kind, where, length, payload in mutations:
        at = int(where * len(data))
        if kind == "insert":
            data = data[:at] + payload + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + length :]
        elif kind == "replace":
            data = data[:at] + payload + data[at + len(payload) :]
        elif kind == "duplicate":
            data = data[:at] + data[at : at + length] * 3 + data[at:]
        else:
            data = data.replace(b"\r\n", b"\n")
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(_mutation, max_size=6))
def test_mutated_messages(seed: bytes, mutations: list[tuple[str, float, int, bytes]]) -> None:
    data = mutate(seed, mutations)
    check(data, scan(data))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS + [b"x", b"Subject: s"]), max_size=300))
def test_token_soup(tokens: list[bytes]) -> None:
    data = b"".join(tokens)
    check(data, scan(data))


def test_seeds_scan_cleanly() -> None:
    for seed in SEEDS:
        check(seed, scan(seed))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(_mutation, max_size=6))
def test_search_texts_from_the_scan_match_the_stored_summary(
    seed: bytes, mutations: list[tuple[str, float, int, bytes]]
) -> None:
    """SMTP passes the texts it computed from its own scan (Delivery.search_texts); they
    must be exactly what the store derives from the stored summary (APPEND, old rows)."""
    from postroom.deliver import summarize, summarize_for_store
    from postroom.message import search_texts_of

    data = mutate(seed, mutations)
    summary, texts = summarize_for_store(data)
    assert summary == summarize(data)
    assert texts == search_texts_of(summary, data)
