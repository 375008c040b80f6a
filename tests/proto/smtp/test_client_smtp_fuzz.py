"""SMTP client core under hypothesis: any split gives the same events; garbage and random
replies only ever end the session cleanly, with bounded buffering and one result per message.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_client_smtp import EOF, GREET, Step, drive, ehlo, send

from postroom.proto.sasl import client_mechanism
from postroom.proto.smtp.client import (
    CLOSED,
    IDLE,
    NEED_DATA,
    Closed,
    Envelope,
    Expect,
    SessionFailed,
    SmtpClient,
    TransactionResult,
)

ENV = Envelope.simple("alice@example.org", ["bob@example.net", "carol@example.net"])
SCRIPTS: list[list[Step]] = [
    [  # pipelined, DATA, second message with a refusal and RSET, quit
        GREET,
        ehlo("PIPELINING", "SIZE 1000", "8BITMIME", "DSN"),
        send(ENV),
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.1 busy\r\n354 go\r\n",
        b"250-2.0.0 queued\r\n250 2.0.0 as 12\r\n",
        send(ENV),
        b"250 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n554 5.5.1 nobody\r\n",
        b"250 reset\r\n",
        lambda c: c.quit(),
        b"221 bye\r\n",
    ],
    [  # HELO fallback, unpipelined, then 421 mid-transaction
        b"220-hello\r\n220 there\r\n",
        b"502 5.5.1 EHLO?\r\n",
        b"250 old.example\r\n",
        send(ENV),
        b"250 ok\r\n",
        b"250 ok\r\n",
        b"421 4.3.2 bye\r\n",
    ],
    [  # CHUNKING, STARTTLS refused, EOF
        GREET,
        ehlo("CHUNKING", "STARTTLS", "PIPELINING"),
        lambda c: c.starttls(),
        b"454 4.7.0 no TLS today\r\n",
        send(ENV),
        b"250 ok\r\n250 ok\r\n250 ok\r\n250 2.0.0 ok\r\n",
        EOF,
    ],
]


def splitter(cuts: list[int]) -> object:
    def split(data: bytes) -> list[bytes]:
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        return [data[a:b] for a, b in itertools.pairwise(points) if b > a]

    return split


@settings(max_examples=150, deadline=None)
@given(script=st.sampled_from(range(len(SCRIPTS))), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_same_events_for_any_split(script: int, cuts: list[int]) -> None:
    whole = drive(SCRIPTS[script])
    split = drive(SCRIPTS[script], split=splitter(cuts))  # type: ignore[arg-type]
    assert split.events == whole.events
    assert split.sent == whole.sent
    assert split.last == whole.last


def pump(client: SmtpClient, events: list[object]) -> object:
    while True:
        event = client.next_event()
        client.data_to_send()
        if event in (NEED_DATA, IDLE, CLOSED):
            return event
        events.append(event)


def check_session(client: SmtpClient, chunks: list[bytes], sends: int) -> None:
    """Feed ``chunks`` (acting when idle), then EOF; check the invariants."""
    events: list[object] = []
    sent = 0
    state = pump(client, events)
    for chunk in chunks:
        if state is CLOSED:
            break
        if state is IDLE and client.idle:
            if sent < sends:
                client.send_message(ENV, b"Subject: x\r\n\r\nbody\r\n")
                sent += 1
            else:
                client.quit()
            state = pump(client, events)
            if state is CLOSED:
                break
        client.receive_data(chunk)
        state = pump(client, events)
        # Bounded buffering: at most one incomplete line is ever kept.
        assert len(client._reader) < client.max_line
    client.receive_eof()
    pump(client, events)
    assert client.next_event() is CLOSED
    assert isinstance(events[-1], SessionFailed | Closed)
    results = [e for e in events if isinstance(e, TransactionResult)]
    assert len(results) == sent  # exactly one result per message
    for result in results:
        assert [r.recipient for r in result.results] == list(ENV.recipients)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes_never_escape(chunks: list[bytes]) -> None:
    check_session(SmtpClient("client.example", max_line=128, max_lines=5), chunks, sends=2)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=100), max_size=10))
def test_random_bytes_after_a_good_start(chunks: list[bytes]) -> None:
    client = SmtpClient("client.example", max_line=256)
    client.receive_data(GREET + ehlo("PIPELINING", "CHUNKING", "AUTH PLAIN", "STARTTLS"))
    check_session(client, chunks, sends=2)


CODES = [
    220,
    221,
    235,
    250,
    334,
    354,
    421,
    450,
    451,
    452,
    500,
    501,
    502,
    503,
    504,
    535,
    550,
    552,
    554,
]
reply_line = st.builds(
    lambda code, sep, text: b"%d%s%s\r\n" % (code, sep, text),
    st.sampled_from(CODES),
    st.sampled_from([b" ", b"-", b""]),
    st.sampled_from(
        [
            b"",
            b"ok",
            b"2.0.0 fine",
            b"5.1.1 no",
            b"4.2.0 later",
            b"PIPELINING",
            b"CHUNKING",
            b"SIZE 10",
            b"8BITMIME",
            b"DSN",
            b"VXNlcm5hbWU6",
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(reply_line, max_size=40), st.booleans(), st.booleans())
def test_random_replies_keep_every_promise(
    lines: list[bytes], pipelining: bool, chunking: bool
) -> None:
    """Plausible replies in any order: one TransactionResult per message, clean end."""
    client = SmtpClient("client.example", use_pipelining=pipelining, use_chunking=chunking)
    check_session(client, lines, sends=3)


POSITIVE = {
    Expect.GREETING: b"220 hi",
    Expect.EHLO: None,  # drawn from EHLO_REPLIES
    Expect.HELO: b"250 old.example",
    Expect.STARTTLS: b"220 go ahead",
    Expect.AUTH: b"235 2.7.0 ok",
    Expect.MAIL: b"250 2.1.0 ok",
    Expect.RCPT: b"250 2.1.5 ok",
    Expect.DATA: b"354 go",
    Expect.DATA_END: b"250 2.0.0 queued",
    Expect.RSET: b"250 ok",
    Expect.QUIT: b"221 bye",
}
EHLO_REPLIES = [
    ehlo("PIPELINING", "SIZE 100", "8BITMIME", "DSN", "STARTTLS", "AUTH PLAIN LOGIN"),
    ehlo("CHUNKING", "PIPELINING", "SMTPUTF8"),
    ehlo("CHUNKING", "AUTH LOGIN"),
    b"250 plain.example\r\n",
]
MESSAGES = [b"Subject: x\r\n\r\nbody\r\n", b"Subject: y\r\n\r\ncaf\xc3\xa9\r\n", b"z" * 150]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_interactive_random_server(data: st.DataObject) -> None:
    """A server that answers each awaited reply with a random class, cut at random points;
    the shell acts at random when idle. Invariants: nothing raises, one TransactionResult per
    message, every session ends with SessionFailed or Closed."""
    client = SmtpClient("client.example", pipeline_bdat_max=data.draw(st.sampled_from([0, 1000])))
    events: list[object] = []
    messages = 0
    for _ in range(60):
        state = pump(client, events)
        if state is CLOSED:
            break
        if client.state.name == "TLS_HANDSHAKE":
            if data.draw(st.booleans()):
                client.tls_established()
            else:
                client.tls_failed()
            continue
        if state is IDLE:
            ext = client.extensions
            assert ext is not None and client.idle
            choices = ["send", "send", "quit", "eof"]
            if ext.starttls and not client.tls:
                choices.append("starttls")
            if ext.auth & {"PLAIN", "LOGIN"} and not client.authenticated:
                choices.append("auth")
            action = data.draw(st.sampled_from(choices))
            if action == "send":
                client.send_message(ENV, data.draw(st.sampled_from(MESSAGES)))
                messages += 1
            elif action == "quit":
                client.quit()
            elif action == "starttls":
                client.starttls()
            elif action == "auth":
                name = data.draw(st.sampled_from(sorted(ext.auth & {"PLAIN", "LOGIN"})))
                client.authenticate(client_mechanism(name, "user", "pass"))
            else:
                client.receive_eof()
            continue
        expect = client.expecting
        assert expect is not None
        kind = data.draw(st.sampled_from(["ok"] * 12 + ["4xx", "5xx", "421", "garbage", "334"]))
        if kind == "ok":
            reply = (
                data.draw(st.sampled_from(EHLO_REPLIES))
                if expect is Expect.EHLO
                else (POSITIVE[expect] + b"\r\n")
            )
        elif kind == "4xx":
            reply = b"450 4.0.0 later\r\n"
        elif kind == "5xx":
            reply = data.draw(
                st.sampled_from([b"550 5.0.0 no\r\n", b"502 what\r\n", b"552 5.3.4 big\r\n"])
            )
        elif kind == "421":
            reply = b"421 4.3.2 bye\r\n"
        elif kind == "334":
            reply = b"334 VXNlcm5hbWU6\r\n"
        else:
            reply = data.draw(st.binary(max_size=30)) + b"\r\n"
        cut = data.draw(st.integers(0, len(reply)))
        for piece in (reply[:cut], reply[cut:]):
            if piece and client.state.name not in ("CLOSED", "TLS_HANDSHAKE"):
                client.receive_data(piece)
                pump(client, events)
    else:
        client.receive_eof()
    client.receive_eof() if client.state.name != "TLS_HANDSHAKE" else client.tls_failed()
    pump(client, events)
    assert client.next_event() is CLOSED
    assert isinstance(events[-1], SessionFailed | Closed)
    results = [e for e in events if isinstance(e, TransactionResult)]
    assert len(results) == messages
    for result in results:
        assert len(result.results) == len(ENV.recipients)
