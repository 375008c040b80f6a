"""Test harness for the SMTP server core: a scripted shell, split modes, transcripts.

Not a test module (no ``test_`` prefix); imported by the ``test_smtp_*`` files, which pytest
runs with their own directory on ``sys.path``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from postroom.proto.smtp import replies as R
from postroom.proto.smtp.events import (
    CLOSED,
    DECISION_EVENTS,
    NEED_DATA,
    AuthResponse,
    AuthStart,
    BurlFetch,
    Event,
    Hello,
    MailFrom,
    MessageComplete,
    RcptTo,
    StartTls,
)
from postroom.proto.smtp.server import ServerConfig, ServerConnection, State

CONFIG = ServerConfig(
    hostname="mx.example.org",
    max_message_size=1000,
    max_recipients=3,
    max_errors=50,
    auth_mechanisms=("PLAIN", "LOGIN"),
    auth_requires_tls=False,
)

QUEUED = R.MESSAGE_ACCEPTED.with_text("Ok: queued as Q1")
POLICY_REFUSED = R.Reply(550, "5.7.1", "Sender refused by policy")
BAD_HELO = R.Reply(550, "5.7.1", "Go away")

Policy = Callable[[ServerConnection, Event], None]


def default_policy(conn: ServerConnection, event: Event) -> None:
    """A deterministic shell: refuses a few magic names, accepts the rest.

    * Hello ``bad.example`` → 550; MAIL from ``spammer@...`` → 550 5.7.1;
      RCPT to ``unknown...@...`` → 550 5.1.1, ``later...`` → 450 4.2.1.
    * AUTH: PLAIN ``\\0user\\0secret`` succeeds (initial response or after 334); LOGIN
      asks twice; anything else fails with 535.
    """
    if isinstance(event, Hello):
        if event.hostname == "bad.example":
            conn.reject(BAD_HELO)
        else:
            conn.accept()
    elif isinstance(event, MailFrom):
        if event.path.address is not None and event.path.address.local == "spammer":
            conn.reject(POLICY_REFUSED)
        else:
            conn.accept()
    elif isinstance(event, RcptTo):
        local = event.path.address.local if event.path.address else ""
        if local.startswith("unknown"):
            conn.reject(R.UNKNOWN_USER)
        elif local.startswith("later"):
            conn.reject(R.MAILBOX_BUSY)
        else:
            conn.accept()
    elif isinstance(event, MessageComplete):
        conn.accept(QUEUED)
    elif isinstance(event, StartTls):
        conn.accept()
    elif isinstance(event, AuthStart):
        if event.mechanism == "PLAIN":
            if event.initial_response is None:
                conn.auth_challenge(b"")
            elif event.initial_response == b"\0user\0secret":
                conn.auth_success("user")
            else:
                conn.auth_failure()
        else:
            conn.auth_challenge(b"Username:")
    elif isinstance(event, AuthResponse):
        if event.data == b"\0user\0secret":
            conn.auth_success("user")
        elif event.data == b"user":
            conn.auth_challenge(b"Password:")
        elif event.data == b"secret":
            conn.auth_success("user")
        else:
            conn.auth_failure()
    elif isinstance(event, BurlFetch):
        # BURL (RFC 4468): a URL naming "bad" does not resolve; the others give 300 octets
        # (so that a few of them run into max_message_size).
        if "bad" in event.url:
            conn.reject(R.BURL_FAILED)
        else:
            conn.burl_data(b"Subject: burl\r\n\r\n" + b"x" * 280 + b"\r\n")
    else:  # pragma: no cover - every decision event is handled above
        raise TypeError(event)


@dataclass
class Transcript:
    events: list[Event]
    output: bytes
    conn: ServerConnection

    @property
    def replies(self) -> list[bytes]:
        """Reply lines (continuation lines included), greeting dropped."""
        return self.output.split(b"\r\n")[1:-1]

    @property
    def codes(self) -> list[str]:
        """Final reply line of each reply: ``"250 2.1.0"`` style prefixes, greeting dropped."""
        out = []
        for line in self.replies:
            if line[3:4] == b"-":
                continue
            parts = line.split(b" ")
            code = parts[0].decode()
            if len(parts) > 1 and parts[1][:1].isdigit() and b"." in parts[1]:
                code += " " + parts[1].decode()
            out.append(code)
        return out

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def drive(
    chunks: Iterable[bytes],
    config: ServerConfig = CONFIG,
    policy: Policy = default_policy,
    *,
    eof: bool = True,
    max_bounded: int | None = None,
) -> Transcript:
    """Run a connection over ``chunks`` like the asyncio shell would.

    A chunk is fed only when the core asks for data. After an accepted STARTTLS the
    "handshake" happens at once (``starttls_done``). ``max_bounded`` asserts that the
    receive buffer never holds more than that many bytes when the core asks for data.
    """
    conn = ServerConnection(config)
    conn.send_greeting()
    pending = list(chunks)
    pending.reverse()
    events: list[Event] = []
    out = bytearray()
    eof_sent = False
    for _ in range(10_000_000):
        ev = conn.next_event()
        if ev is NEED_DATA:
            out += conn.data_to_send()
            if max_bounded is not None:
                assert len(conn._reader.buffer) <= max_bounded
            if pending:
                conn.receive_data(pending.pop())
            elif eof and not eof_sent:
                eof_sent = True
                conn.receive_data(b"")
            else:
                break
            continue
        if ev is CLOSED:
            break
        assert not isinstance(ev, type(NEED_DATA))
        events.append(ev)
        if isinstance(ev, DECISION_EVENTS):
            policy(conn, ev)
            if conn.state is State.TLS_HANDSHAKE:
                out += conn.data_to_send()
                conn.starttls_done()
    else:  # pragma: no cover
        raise AssertionError("driver did not terminate")
    out += conn.data_to_send()
    return Transcript(events, bytes(out), conn)


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, points: Sequence[int]) -> list[bytes]:
    cuts = sorted({p for p in points if 0 < p < len(data)})
    out = []
    prev = 0
    for cut in cuts:
        out.append(data[prev:cut])
        prev = cut
    out.append(data[prev:])
    return out


def random_splits(data: bytes, seed: int, n: int = 8) -> list[bytes]:
    rng = random.Random(seed)
    return split_at(data, [rng.randrange(1, max(2, len(data))) for _ in range(n)])


SPLITTERS = {"whole": whole, "bytewise": bytewise, "random": lambda d: random_splits(d, 7)}


def drive_all_ways(data: bytes, config: ServerConfig = CONFIG, policy: Policy = default_policy,
                   **kw: object) -> Transcript:
    """Drive whole, byte at a time and randomly split; assert identical results."""
    results = [drive(split(data), config, policy, **kw) for split in SPLITTERS.values()]  # type: ignore[arg-type]
    first = results[0]
    for other in results[1:]:
        assert other.events == first.events
        assert other.output == first.output
        assert other.conn.close_reason == first.conn.close_reason
    return first


EHLO = b"EHLO client.example\r\n"
ENVELOPE = EHLO + b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\n"
