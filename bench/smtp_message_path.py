#!/usr/bin/env python3
"""CPU per message of the in-process steps of an SMTP delivery, without sockets or store.

The steps that pass over every octet of a message, as the MX path runs them: the SMTP
core reads DATA (fed in reads of ``--read`` octets, as the socket delivers them), finds
the end, checks bare CR/LF and NUL; then ``deliver.costly``, ``deliver.prepare_headers``,
the trace headers, and ``deliver.summarize_for_store`` (MIME scan, stored summary,
prerendered ENVELOPE/BODYSTRUCTURE, search texts). What is left of a message's CPU is
the kernel (socket reads, SQLite's writes and fsync), the event loop and the store.

Instruction counts (``bench/smtp_instructions.py``) do not rank these passes the way the
CPU does: ``bytes.find`` with a short needle runs fewer instructions per octet than a
``re`` literal search but takes 2-5x the time (branches), so this measures time: the
minimum over ``--repeat`` rounds of the process CPU time, which a busy machine inflates
less than a median (a round that was not interrupted is the cost of the code).

Bodies: ``x`` (lines of 78 "X", what smtp-source sends), ``text`` (prose with dots and
dashes), ``base64`` (an attachment's lines), ``multipart`` (text and a base64 part).

Usage: bench/smtp_message_path.py [--size 102400] [--body x|text|base64|multipart]
       [--messages 200] [--repeat 7] [--read 16384]
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from postroom import deliver  # noqa: E402
from postroom.proto.smtp import replies as R  # noqa: E402
from postroom.proto.smtp.events import NEED_DATA, MessageComplete  # noqa: E402
from postroom.proto.smtp.server import ServerConfig, ServerConnection  # noqa: E402

HEADER = (
    b"From: <bench@client.test>\r\nTo: <u1@bench.test>\r\nDate: Mon, 7 Dec 2026 03:00:00 +0000\r\n"
    b"Message-Id: <1.bench@client.test>\r\nSubject: bench\r\n"
)


def body(kind: str, size: int) -> bytes:
    if kind == "x":
        lines = b"X" * 78 + b"\r\n"
        return HEADER + b"\r\n" + lines * (size // len(lines))
    if kind == "text":
        line = b"The quick brown fox jumps over the lazy dog - again. And again, it does.\r\n"
        return HEADER + b"\r\n" + line * (size // len(line))
    b64 = base64.encodebytes(bytes(range(256)) * (size * 3 // 4 // 256 + 1))[: size].replace(b"\n", b"\r\n")
    b64 = b64[: b64.rfind(b"\r\n") + 2]
    if kind == "base64":
        return HEADER + b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64
    return (HEADER + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
            b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b64 + b"--b1--\r\n")


def reads(message: bytes, read: int) -> list[bytes]:
    """The client's side of one session, cut as the socket would deliver it."""
    wire = b"EHLO client.test\r\nMAIL FROM:<bench@client.test>\r\nRCPT TO:<u1@bench.test>\r\nDATA\r\n"
    wire += message.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n"
    return [wire[i : i + read] for i in range(0, len(wire), read)]


def one(chunks: list[bytes]) -> None:
    core = ServerConnection(ServerConfig(hostname="mx.bench.test", max_message_size=50 * 1024 * 1024))
    core.send_greeting()
    feed = iter(chunks)
    while True:
        event = core.next_event()
        if event is NEED_DATA:
            core.data_to_send()
            core.receive_data(next(feed))
            continue
        if isinstance(event, MessageComplete):
            data = event.data
            costly = deliver.costly(data)
            data = deliver.prepare_headers(data, drop=deliver.DROP_ALWAYS, submission=None, max_received=50)
            assert data is not None and not costly
            received = deliver.received_header(
                helo="client.test", client_ip="127.0.0.1", hostname="mx.bench.test",
                protocol="ESMTP", qid="239BN8Y63DGG2JD", recipient="u1@bench.test",
            )
            stored = b"".join((deliver.return_path("bench@client.test"), received, data))
            deliver.summarize_for_store(stored, partial(deliver.counted_tail, event.data, event.line_feeds, stored))
            core.accept(R.MESSAGE_ACCEPTED)
            return
        core.accept()  # EHLO, MAIL, RCPT


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=102400)
    ap.add_argument("--body", default="x", choices=("x", "text", "base64", "multipart"))
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--read", type=int, default=16384, help="octets per socket read")
    a = ap.parse_args()
    message = body(a.body, a.size)
    chunks = reads(message, a.read)
    best = float("inf")
    for _ in range(a.repeat):
        started = time.process_time()
        for _ in range(a.messages):
            one(chunks)
        best = min(best, time.process_time() - started)
    print(f"{a.body} body, {len(message)} octets, reads of {a.read}: "
          f"{best / a.messages * 1e6:.0f} us of CPU per message (min of {a.repeat} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
