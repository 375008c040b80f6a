"""MX and submission policy over real sockets: relay refusals, recipients, envelope senders."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.smtp_e2e import ALICE, BOB, CAROL, DOMAIN, RawSmtp, add_alias, client_ctx, message, servers, split_trace

REMOTE = "user@remote.example"

# (RCPT argument, acceptable statuses). Every one is a way to make an MX relay; every one
# must be refused by an MX to an unauthenticated client.
RELAY_TRICKS = [
    (f"<{REMOTE}>", {"554 5.7.1"}),
    ("<user@REMOTE.EXAMPLE>", {"554 5.7.1"}),
    (f"<@{DOMAIN}:{REMOTE}>", {"550 5.7.1"}),  # source route
    (f"<@mail.{DOMAIN},@relay.example:{REMOTE}>", {"550 5.7.1"}),
    (f"<@{DOMAIN}:alice@{DOMAIN}>", {"550 5.7.1"}),  # even to a local user
    (f"<user%remote.example@{DOMAIN}>", {"550 5.7.1"}),  # percent hack
    (f"<alice%{DOMAIN}@{DOMAIN}>", {"550 5.7.1"}),  # percent hack, local target
    (f"<user%remote.example@{DOMAIN.upper()}>", {"550 5.7.1"}),
    (f"<remote.example!user@{DOMAIN}>", {"550 5.7.1"}),  # bang path
    (f'<"user@remote.example"@{DOMAIN}>', {"550 5.7.1"}),  # quoted local part
    (f'<"user%remote.example"@{DOMAIN}>', {"550 5.7.1"}),
    (f"<{REMOTE}.>", {"501 5.1.3"}),  # trailing dot
    (f"<alice@{DOMAIN}.>", {"501 5.1.3"}),
    ("<user@[127.0.0.1]>", {"554 5.7.1"}),  # IP literal
    ("<alice@[127.0.0.1]>", {"554 5.7.1"}),
    ("<user@[IPv6:::1]>", {"554 5.7.1"}),
    ("<user@remote.example@other.example>", {"501 5.1.3"}),
]


@pytest.fixture
def free_refused_port() -> object:
    """A loopback port that is bound but not listening: connecting to it is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


def _outbound(port: int) -> str:
    # Should a queue worker run, it meets a refused connection and keeps the entries queued.
    return (
        "[outbound]\n"
        f'transport = {{ "remote.example" = "127.0.0.1:{port}", "partner.example" = "127.0.0.1:{port}" }}\n'
    )


def _queue_cli(srv) -> list[dict]:  # type: ignore[no-untyped-def]
    r = subprocess.run(
        [sys.executable, "-m", "postroom", "-c", str(srv.config), "queue", "list", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_mx_refuses_every_relay_trick(tmp_path: Path, free_refused_port: int) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra=_outbound(free_refused_port))
        add_alias(srv, f"@{DOMAIN}", BOB)  # a catch-all must not make tricks "local"
        for arg, allowed in RELAY_TRICKS:
            # A connection per trick: refusals count as errors (max 20 per connection).
            with RawSmtp(srv.ports["mx"]) as c:
                c.ehlo()
                c.expect("MAIL FROM:<sender@remote.example>", "250 2.1.0")
                r = c.cmd(f"RCPT TO:{arg}")
                assert r.status in allowed, (arg, r)
                assert c.cmd("DATA").status in ("554 5.5.1", "503 5.5.1")  # no data phase
        # A client may still mail a local user, with an upper-case domain too.
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.mail("sender@remote.example", ["Alice@EXAMPLE.TEST"], message("ok")).code == 250
        assert srv.queue() == []
        assert len(srv.messages(ALICE)) == 1
        assert srv.messages(BOB) == []


def test_authenticated_user_may_relay(tmp_path: Path, free_refused_port: int) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra=_outbound(free_refused_port))
        sent = message("outbound")
        with RawSmtp(srv.ports["submissions"], tls=client_ctx(srv)) as c:
            c.ehlo()
            assert c.auth_plain(ALICE).status == "235 2.7.0"
            r = c.mail(ALICE, [REMOTE, BOB], sent)
            assert r.code == 250, r
        [entry] = srv.queue()
        assert entry.sender == ALICE
        assert [x.address for x in entry.recipients] == [REMOTE]
        assert len(srv.messages(BOB)) == 1
        listed = _queue_cli(srv)
        assert [q["id"] for q in listed] == [entry.qid]
        assert [x["address"] for x in listed[0]["recipients"]] == [REMOTE]


def test_mx_unknown_user_aliases_plus_catch_all(tmp_path: Path, free_refused_port: int) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra=_outbound(free_refused_port), users=(ALICE, BOB, CAROL))
        add_alias(srv, f"team@{DOMAIN}", ALICE, BOB, "one@remote.example", "two@partner.example")
        add_alias(srv, f"nested@{DOMAIN}", f"team@{DOMAIN}", CAROL)
        sent = message("to the team")
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            c.expect("MAIL FROM:<sender@remote.example>", "250 2.1.0")
            assert c.cmd(f"RCPT TO:<nobody@{DOMAIN}>").status == "550 5.1.1"
            c.expect(f"RCPT TO:<team@{DOMAIN}>", "250 2.1.5")
            c.expect(f"RCPT TO:<nested@{DOMAIN}>", "250 2.1.5")  # overlaps: each once
            c.expect(f"RCPT TO:<carol+news@{DOMAIN}>", "250 2.1.5")  # plus-addressing
            c.expect("DATA", "354")
            c.send(sent + b".\r\n")
            assert c.reply().code == 250
        for user in (ALICE, BOB, CAROL):
            [stored] = srv.messages(user)
            assert split_trace(stored)[1] == sent
        [entry] = srv.queue()
        assert sorted(r.address for r in entry.recipients) == ["one@remote.example", "two@partner.example"]
        listed = _queue_cli(srv)
        assert sorted(r["address"] for r in listed[0]["recipients"]) == ["one@remote.example", "two@partner.example"]
        # Local copies carry the envelope sender as Return-Path (RFC 5321 4.4).
        assert srv.messages(ALICE)[0].startswith(b"Return-Path: <sender@remote.example>\r\n")

        # Catch-all: unknown local parts now reach carol; known users keep their mail.
        add_alias(srv, f"@{DOMAIN}", CAROL)
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.mail("sender@remote.example", [f"whoever@{DOMAIN}", f"bob+x@{DOMAIN}"], message("ca")).code == 250
        assert len(srv.messages(CAROL)) == 2
        assert len(srv.messages(BOB)) == 2


def test_submission_requires_tls_then_auth(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        with RawSmtp(srv.ports["submission"]) as c:
            ehlo = c.ehlo()
            assert "STARTTLS" in ehlo.lines
            assert not any(x.startswith("AUTH") for x in ehlo.lines)
            assert c.cmd(f"MAIL FROM:<{ALICE}>").status == "530 5.7.0"
            # AUTH before STARTTLS is refused even though the mechanism exists.
            assert c.auth_plain(ALICE).status == "538 5.7.11"
            c.starttls(client_ctx(srv))
            assert c.cmd(f"MAIL FROM:<{ALICE}>").status == "503 5.5.1"  # EHLO again first
            ehlo = c.ehlo()
            assert "AUTH SCRAM-SHA-256 PLAIN LOGIN" in ehlo.lines
            assert c.cmd(f"MAIL FROM:<{ALICE}>").status == "530 5.7.0"
            assert c.auth_plain(ALICE).status == "235 2.7.0"
            c.expect(f"MAIL FROM:<{ALICE}>", "250 2.1.0")


def test_submission_sender_must_be_own(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        add_alias(srv, f"sales@{DOMAIN}", ALICE)
        add_alias(srv, f"@{DOMAIN}", ALICE)  # catch-all does not give sender rights
        with RawSmtp(srv.ports["submissions"], tls=client_ctx(srv)) as c:
            c.ehlo()
            assert c.auth_plain(ALICE).status == "235 2.7.0"
            for sender, status in [
                (BOB, "553 5.7.1"),
                ("someone@remote.example", "553 5.7.1"),
                (f"nobody@{DOMAIN}", "553 5.7.1"),
                (f"bob+alice@{DOMAIN}", "553 5.7.1"),
                (ALICE, "250 2.1.0"),
                ("ALICE@Example.Test", "250 2.1.0"),
                (f"alice+tag@{DOMAIN}", "250 2.1.0"),
                (f"sales@{DOMAIN}", "250 2.1.0"),
                ("", "250 2.1.0"),  # null sender (MDNs)
            ]:
                r = c.cmd(f"MAIL FROM:<{sender}>")
                assert r.status == status, (sender, r)
                c.expect("RSET", "250 2.0.0")
            r = c.mail(f"sales@{DOMAIN}", [BOB], message("from sales"))
            assert r.code == 250
        assert srv.messages(BOB)[0].startswith(f"Return-Path: <sales@{DOMAIN}>\r\n".encode())
