"""Helpers shared by the IMAP integration tests: delivering mail over real SMTP, building
messages, and small parsers for imaplib's answers."""

from __future__ import annotations

import re
import smtplib
from typing import Any

from support.server import Server


def deliver(server: Server, rcpt: str, message: bytes, sender: str = "sender@example.org") -> None:
    """Send one message to ``rcpt`` through the server's MX listener (real SMTP)."""
    with smtplib.SMTP("127.0.0.1", server.ports["mx"], timeout=15) as smtp:
        smtp.sendmail(sender, [rcpt], message)


def simple(subject: str = "hello", body: str = "Hi there", **headers: str) -> bytes:
    lines = [f"Subject: {subject}", "From: Sender <sender@example.org>"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


def fetch_items(data: list[Any]) -> dict[int, bytes]:
    """imaplib FETCH data → {sequence number: the response text with its literals}.

    imaplib splits a response at each literal: ``(b'1 (BODY[] {5}', b'hello')`` then the
    rest of the line as bytes (``b')'`` or ``b' FLAGS (\\Seen))'``).
    """
    out: dict[int, bytes] = {}
    current: int | None = None
    for entry in data:
        if entry is None:
            continue
        if isinstance(entry, tuple):
            head, literal = entry
            if current is not None and not re.match(rb"\d+ \(", head):
                out[current] += head + literal
                continue
            current = int(head.split(b" ", 1)[0])
            out[current] = head + literal
        elif current is not None and not re.match(rb"\d+ \(", entry):
            out[current] += entry
        else:
            current = int(entry.split(b" ", 1)[0])
            out[current] = entry
    return out


def flags_of(text: bytes) -> set[str]:
    m = re.search(rb"FLAGS \(([^)]*)\)", text)
    assert m is not None, text
    return set(m.group(1).decode().split())


def rest(done: bytes) -> bytes:
    """A tagged response without its tag (tags depend on how many commands ran before)."""
    return done.split(b" ", 1)[1]
