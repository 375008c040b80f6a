"""deliver.py: the pure preparation steps the SMTP and IMAP shells may run in a worker."""

from __future__ import annotations

from typing import Any

from postroom import deliver
from support import hostile
from support.mailgen import mailbox

SMALL = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def test_costly_finds_what_would_hold_the_loop() -> None:
    assert not deliver.costly(SMALL)
    assert not any(deliver.costly(m) for m in mailbox(300, "u@example.org"))  # ordinary mail
    assert deliver.costly(hostile.many_parts("u@example.org", 200))  # many parts
    assert deliver.costly(b"x" * (deliver.COSTLY_SIZE + 1))  # big
    assert deliver.costly(hostile.huge_header("u@example.org", 2000))  # many header lines
    assert deliver.costly(b"To: " + b"," * 5000 + b"\r\n\r\nbody\r\n")  # many tokens
    assert deliver.costly(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                          b"Content-Type: text/plain; " + b";" * 5000 + b"\r\n\r\nx\r\n--b--\r\n")


def test_costly_counts_delimiter_lines_only_where_the_scanner_splits() -> None:
    dashes = b"--b\r\nx\r\n" * (deliver.COSTLY_PARTS + 1)
    # text/plain (or no Content-Type): one leaf whatever its lines, cheap to scan
    assert not deliver.costly(b"Subject: dashes\r\n\r\n" + dashes)
    assert not deliver.costly(b"Content-Type: text/plain\r\n\r\n" + dashes)
    # the same lines are delimiters in a multipart, also inside message/rfc822
    multipart = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + dashes
    assert deliver.costly(multipart)
    assert deliver.costly(b"Content-Type: MESSAGE/rfc822\r\n\r\n" + multipart)
    assert deliver.costly(b"Content-Type:\r\n Multipart/Mixed; boundary=b\r\n\r\n" + dashes)
    # LF line ends (IMAP APPEND, before normalising): header_end() finds no CRLF CRLF
    lf = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + dashes).replace(b"\r\n", b"\n")
    assert deliver.costly(lf)


def test_costly_counts_part_headers_not_part_bodies() -> None:
    top = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    many = b";(<\"" * deliver.COSTLY_TOKENS  # each one a token for the header parsers
    # in a part body: octets nobody parses
    assert not deliver.costly(top + b"--b\r\nContent-Type: text/plain\r\n\r\n" + many + b"\r\n--b--\r\n")
    # in a part header, also one without an empty line after it
    assert deliver.costly(top + b"--b\r\nContent-Type: text/plain; " + many + b"\r\n\r\nx\r\n--b--\r\n")
    assert deliver.costly(top + b"--b\r\nContent-Type: text/plain; " + many + b"\r\n")
    # in the header of a message inside a part (not after a "--" line): counted too
    inner = b"From: " + many + b"\r\n\r\nhi\r\n"
    assert deliver.costly(top + b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n")
    # and in the header of the message a message/rfc822 message holds
    inner_multipart = inner.replace(b"\r\n\r\n", b"\r\n" + top[:-2] + b"\r\n", 1) + b"--b\r\n\r\nx\r\n--b--\r\n"
    assert deliver.costly(b"Content-Type: message/rfc822\r\n\r\n" + inner_multipart)
    # and in a part of a multipart/digest, which is a message/rfc822 without saying so
    digest = b"Content-Type: multipart/digest; boundary=b\r\n\r\n--b\r\n\r\n" + inner + b"--b--\r\n"
    assert deliver.costly(digest)


def test_prepare_headers_does_what_the_shell_did() -> None:
    data = b"Return-Path: <evil@example.org>\r\nBcc: hidden@example.org\r\n" + SMALL
    fixed = deliver.prepare_headers(
        data, drop=deliver.DROP_ALWAYS + deliver.DROP_ON_SUBMISSION,
        submission=("mail.example.test", "QID123", "a@example.org"), max_received=5,
    )
    assert fixed is not None and fixed.startswith(b"From: a@example.org\r\n")
    assert b"Return-Path" not in fixed and b"Bcc" not in fixed
    assert b"Message-ID: <QID123@mail.example.test>\r\n" in fixed and b"\r\nDate: " in fixed
    assert deliver.prepare_headers(SMALL, drop=(), submission=None, max_received=5) == SMALL
    looping = b"Received: x\r\n" * 5 + SMALL
    assert deliver.prepare_headers(looping, drop=(), submission=None, max_received=5) is None


def test_prepare_append_normalizes_and_summarizes() -> None:
    data, summary = deliver.prepare_append(b"Subject: x\n\nbare LF\n")
    assert data == b"Subject: x\r\n\r\nbare LF\r\n"
    assert summary == deliver.summarize(data)


def test_new_id_is_the_time_in_base_31_then_random_digits(monkeypatch: Any) -> None:
    alphabet = "0123456789BCDFGHJKLMNPQRSTVWXYZ"

    def base31(n: int) -> str:
        out = ""
        while n:
            n, r = divmod(n, 31)
            out = alphabet[r] + out
        return out

    ids = []
    for ms in (1_800_000_000_000, 1_800_000_000_960, 1_800_000_000_961, 1_800_000_123_456):
        monkeypatch.setattr(deliver.time, "time", lambda ms=ms: ms / 1000)
        qid = deliver.new_id()
        assert qid[:-6] == base31(ms), (ms, qid)
        assert len(qid) == len(base31(ms)) + 6 and set(qid) <= set(alphabet)
        ids.append(qid)
    assert ids == sorted(ids)
    monkeypatch.undo()
    assert len({deliver.new_id() for _ in range(1000)}) == 1000


def test_fold_equals_the_word_loop() -> None:
    """fold() finds its breaks with rfind; the result is the word loop's for any value:
    long and short words, words longer than a line, empty words, a long name."""
    import random

    rng = random.Random(14)
    alphabet = "abc.@<>[]();:-"
    for _ in range(3000):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 3, 8, 20, 40, 90))))
                 for _ in range(rng.randrange(1, 14))]
        value = " ".join(words)
        name = rng.choice(("Received", "X", "A-Very-Long-Field-Name-" * 3))
        assert deliver.fold(name, value) == deliver._fold_words(name, value), (name, value)
    got = deliver.fold("Received", "from a ([127.0.0.1]) by mail.example.org (postroom) with ESMTP "
                       "id 239C200W530XFH9 for <u1@example.org>; Mon, 07 Dec 2026 06:16:58 -0000")
    assert got == (b"Received: from a ([127.0.0.1]) by mail.example.org (postroom) with ESMTP id\r\n"
                   b"\t239C200W530XFH9 for <u1@example.org>; Mon, 07 Dec 2026 06:16:58 -0000\r\n")
    assert all(len(line) <= 78 for line in got.split(b"\r\n"))
