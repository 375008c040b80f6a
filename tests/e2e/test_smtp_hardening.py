"""SMTP hardening over real sockets: slow clients, postmaster, absurd BDAT chunks, From:
ownership and send-as grants, other protocols on the port, repeated MAIL parameters.

Each test sends the bytes that broke an earlier version (issue 9) to a running server.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.slow import trickle
from support.smtp_e2e import (
    ALICE,
    BOB,
    CAROL,
    RawSmtp,
    add_alias,
    client_ctx,
    message,
    servers,
    smtplib_submission,
    split_trace,
)

SENDER = "sender@remote.example"
FAST = '[limits]\nsmtp_idle_timeout = "2s"\nmin_data_rate = 1000\nauth_delay = "10ms"\n'


def _envelope(c: RawSmtp) -> None:
    """EHLO, MAIL from a remote sender, RCPT to a local user."""
    c.ehlo()
    c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
    c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")


def test_trickled_command_line_is_cut_like_an_idle_client(tmp_path: Path) -> None:
    # One byte every 0.4 s is never 2 s idle; the whole line must still come within 2 s.
    with servers(tmp_path) as pool:
        srv = pool.make(extra=FAST)
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            answered = trickle(c.sock, b"NOOP " + b"x" * 200 + b"\r\n", 0.4, 12)
            assert answered is not None and 1.8 <= answered < 5, answered
            assert c.reply().status == "421 4.4.2"
            assert c.is_closed()
        # Whole commands, each a little under the timeout apart, are fine (idle rule only).
        with RawSmtp(srv.ports["mx"]) as c:
            for _ in range(3):
                time.sleep(1.2)
                assert c.cmd("NOOP").status == "250 2.0.0"


def test_data_must_progress_at_the_minimum_rate(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra=FAST)
        with RawSmtp(srv.ports["mx"]) as c:
            _envelope(c)
            c.expect("DATA", "354")
            # ~3 octets/s against a 1000 octets/s minimum: cut after the 2 s of slack.
            answered = trickle(c.sock, b"Subject: slow\r\n\r\n" + b"x" * 200, 0.3, 12)
            assert answered is not None and 1.8 <= answered < 5, answered
            assert c.reply().status == "421 4.4.2"
        # Above the rate, a message may take longer than the idle timeout in total.
        body = b"".join(b"%06d " % i + b"y" * 90 + b"\r\n" for i in range(60))  # 5.8 KB
        data = message("steady", body) + b".\r\n"
        with RawSmtp(srv.ports["mx"]) as c:
            _envelope(c)
            c.expect("DATA", "354")
            t = time.monotonic()
            for i in range(0, len(data), 1500):  # 1500 octets every 0.8 s: ~1900/s
                c.send(data[i : i + 1500])
                time.sleep(0.8)
            assert time.monotonic() - t > 2.5
            assert c.reply().code == 250
        assert len(srv.messages(ALICE)) == 1


def test_bdat_chunks_count_like_data(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra=FAST)
        with RawSmtp(srv.ports["mx"]) as c:
            _envelope(c)
            c.send(b"BDAT 300 LAST\r\n")
            answered = trickle(c.sock, b"z" * 300, 0.3, 12)
            assert answered is not None and answered < 5, answered
            assert c.reply().status == "421 4.4.2"
        assert srv.messages(ALICE) == []


def test_postmaster_of_every_hosted_domain_is_accepted(tmp_path: Path) -> None:
    # RFC 5321 4.5.1: no alias configured, still accepted; the first user (ALICE) gets it.
    with servers(tmp_path) as pool:
        srv = pool.make(users=(ALICE, BOB, CAROL, "dave@other.test"))
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            for rcpt in ("postmaster@example.test", "PostMaster@Other.Test", "Postmaster", "POSTMASTER"):
                c.expect(f"RCPT TO:<{rcpt}>", "250 2.1.5")
            c.expect("RCPT TO:<postmaster@elsewhere.example>", "554 5.7.1")  # not ours
            c.expect("DATA", "354")
            c.send(message("to the postmaster") + b".\r\n")
            assert c.reply().code == 250
        assert len(srv.messages(ALICE)) == 1 and srv.messages(BOB) == []
        srv.stop()
        # A configured postmaster instead of the first user.
        srv2 = pool.make(extra='[smtp]\ngreeting_delay = "0s"\npostmaster = "bob@example.test"\n')
        with RawSmtp(srv2.ports["mx"]) as c:
            c.ehlo()
            assert c.mail(SENDER, ["postmaster@example.test"], message("pm")).code == 250
        assert len(srv2.messages(BOB)) == 1 and srv2.messages(ALICE) == []


@pytest.mark.parametrize("size", ["99999999999999", "10241"])
def test_bdat_chunk_over_the_limit_refused_at_once(tmp_path: Path, size: str) -> None:
    extra = '[limits]\nmessage_size = "10K"\nauth_delay = "10ms"\n'
    with servers(tmp_path) as pool:
        srv = pool.make(extra=extra)
        with RawSmtp(srv.ports["mx"]) as c:
            _envelope(c)
            t = time.monotonic()
            # Not a single octet of the chunk is sent: the answer must not wait for it.
            r = c.cmd(f"BDAT {size} LAST")
            assert r.status == "552 5.3.4" and time.monotonic() - t < 2
            assert c.is_closed()  # the octets cannot be skipped: the stream is over
        assert srv.messages(ALICE) == []


def _submit(srv, user: str, mail_from: str, data: bytes) -> str:  # type: ignore[no-untyped-def]
    with RawSmtp(srv.ports["submissions"], tls=client_ctx(srv)) as c:
        c.ehlo()
        assert c.auth_plain(user).code == 235
        r = c.cmd(f"MAIL FROM:<{mail_from}>")
        if r.code != 250:
            return r.status
        c.expect(f"RCPT TO:<{CAROL}>", "250 2.1.5")
        c.expect("DATA", "354")
        c.send(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return c.reply().status


def _msg(from_fields: str) -> bytes:
    return (from_fields + "To: carol@example.test\r\nSubject: who\r\n\r\nhi\r\n").encode()


def test_submission_from_header_must_be_owned(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(roles=("submissions",), users=(ALICE, BOB, CAROL))
        add_alias(srv, "sales@example.test", ALICE)
        for from_fields, status in [
            (f"From: Alice <{ALICE}>\r\n", "250"),
            ("From: <alice+news@example.test>\r\n", "250"),
            ("From: Sales <sales@example.test>\r\n", "250"),  # an alias that reaches her
            (f"From: The Boss <{BOB}>\r\n", "550 5.7.1"),  # someone else
            ("From: ceo@bank.example\r\n", "550 5.7.1"),
            (f"From: {ALICE}\r\nFrom: {BOB}\r\n", "550 5.7.1"),  # two From: fields
            (f"From: {ALICE}\r\nFrom: {ALICE}\r\n", "550 5.7.1"),
            (f"From: {ALICE}, {BOB}\r\n", "550 5.7.1"),  # two addresses
            ("From: friends: alice@example.test;\r\n", "550 5.7.1"),  # a group
            ("From: \r\n", "550 5.7.1"),  # a field without an address
            ("From: alice\r\n", "550 5.7.1"),  # no domain
        ]:
            got = _submit(srv, ALICE, ALICE, _msg(from_fields))
            assert got == status or str(got).split()[0] == status, (from_fields, got)
        # No From: at all: the (owned) envelope sender is added as From:.
        assert _submit(srv, ALICE, ALICE, _msg("")).startswith("250")
        stored = srv.messages(CAROL)
        assert len(stored) == 4
        assert b"\r\nFrom: <alice@example.test>\r\n" in split_trace(stored[-1])[1]
        # The envelope sender is checked the same way (at MAIL).
        assert _submit(srv, ALICE, BOB, _msg(f"From: {ALICE}\r\n")) == "553 5.7.1"


def test_sendas_grant_allows_envelope_and_from(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(roles=("submissions",), users=(ALICE, BOB, CAROL))
        news = _msg("From: News <news@lists.example>\r\n")
        assert _submit(srv, ALICE, "news@lists.example", news) == "553 5.7.1"
        assert _submit(srv, ALICE, ALICE, news) == "550 5.7.1"

        async def grant(admin, store):  # type: ignore[no-untyped-def]
            await admin.sendas_add(ALICE, "@lists.example")
            await admin.sendas_add(ALICE, BOB)

        srv.admin(grant)  # the running server sees it at once
        assert _submit(srv, ALICE, "news@lists.example", news).startswith("250")
        assert _submit(srv, ALICE, ALICE, _msg(f"From: {BOB}\r\n")).startswith("250")
        assert _submit(srv, BOB, BOB, news) == "550 5.7.1"  # grants are per user

        async def revoke(admin, store):  # type: ignore[no-untyped-def]
            await admin.sendas_remove(ALICE, "@lists.example")

        srv.admin(revoke)
        assert _submit(srv, ALICE, ALICE, news) == "550 5.7.1"


@pytest.mark.parametrize(
    "first",
    [b"GET / HTTP/1.1\r\n", b"OPTIONS * HTTP/1.1\r\n", b"Host: mail.example.test\r\n"],
)
def test_http_request_on_smtp_closes_at_first_line(tmp_path: Path, first: bytes) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        for role in ("mx", "submission"):
            with RawSmtp(srv.ports[role]) as c:
                c.send(first + b"Host: mail.example.test\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n")
                assert c.reply().status == "421 4.7.0"
                assert c.is_closed() and c.buf == b""  # one reply for the whole request


def test_repeated_size_parameter_from_smtplib(tmp_path: Path) -> None:
    # smtplib adds "size=N" itself; a caller that passed "SIZE=N" too sends it twice.
    with servers(tmp_path) as pool:
        srv = pool.make()
        data = message("size twice")
        with smtplib_submission(srv) as s:
            assert s.sendmail(ALICE, [BOB], data, mail_options=[f"SIZE={len(data)}"]) == {}
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            c.expect(f"MAIL FROM:<{SENDER}> SIZE=123 size=123", "250 2.1.0")
            c.expect("RSET", "250 2.0.0")
            c.expect(f"MAIL FROM:<{SENDER}> SIZE=123 size=124", "501 5.5.4")  # conflicting
            c.expect(f"MAIL FROM:<{SENDER}> BODY=8BITMIME BODY=8BITMIME SIZE=5", "250 2.1.0")
        assert len(srv.messages(BOB)) == 1
