"""Deterministic synthetic mail for benchmarks: the same bytes go to postroom and to Dovecot.

Sizes follow a mail-like mix: 80% 1-8 KB, 15% 8-64 KB, 5% 64-256 KB (mean about 12 KB).
Messages have CRLF line endings and a final CRLF (postroom's stored form, which Dovecot's
Maildir keeps as is), 50 distinct senders and word-salad subjects so that SEARCH FROM and
SEARCH SUBJECT have something to find. Every tenth message is a small multipart with an
attachment, so header and body fetches are not all plain text.
"""

from __future__ import annotations

import email.utils
import random

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu invoice "
    "meeting report budget schedule review release server queue backup holiday project"
).split()


def pick_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.80:
        return rng.randint(1024, 8192)
    if r < 0.95:
        return rng.randint(8192, 65536)
    return rng.randint(65536, 262144)


_LINES: list[bytes] = []


def _line_pool() -> list[bytes]:
    """2,000 fixed lines of word salad, built once: bodies are drawn from them (fast)."""
    if not _LINES:
        rng = random.Random(12345)
        for _ in range(2000):
            words: list[str] = []
            while sum(len(w) + 1 for w in words) < 60:
                words.append(rng.choice(WORDS))
            _LINES.append(" ".join(words).encode() + b"\r\n")
    return _LINES


def _text(rng: random.Random, n: int) -> bytes:
    pool = _line_pool()
    out: list[bytes] = []
    size = 0
    while size < n:
        line = pool[rng.randrange(len(pool))]
        out.append(line)
        size += len(line)
    return b"".join(out)


def message(rng: random.Random, i: int, to: str, t0: int = 1_700_000_000) -> bytes:
    sender = f"sender{rng.randint(1, 50)}@example.org"
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))
    date = email.utils.formatdate(t0 + i * 37, localtime=False)
    head = (
        f"Received: from client.example.org ([127.0.0.1]) by bench.test; {date}\r\n"
        f"From: Sender {i % 50} <{sender}>\r\nTo: <{to}>\r\nSubject: {subject} #{i}\r\n"
        f"Date: {date}\r\nMessage-ID: <bench.{i}.{rng.randint(0, 1 << 30)}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()
    size = pick_size(rng)
    if i % 10 == 9:
        boundary = f"b{i}x{rng.randint(0, 1 << 30)}"
        attachment = _text(rng, max(size - 1500, 200))
        body = (
            f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n".encode()
            + _text(rng, 600)
            + f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: attachment; filename=\"report{i}.txt\"\r\n\r\n".encode()
            + attachment
            + f"--{boundary}--\r\n".encode()
        )
        return head + f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n".encode() + body
    head += b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    return head + _text(rng, max(size - len(head), 100))


def mailbox(count: int, to: str, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [message(rng, i, to) for i in range(count)]
