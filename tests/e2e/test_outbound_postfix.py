"""A real Postfix (Debian package, private instance) as the receiving MX: postroom looks up
the MX in the test DNS server, connects to Postfix's smtpd on 127.0.0.5, and Postfix's
virtual(8) writes the message into a Maildir, where we read it back."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from support.dns_server import DnsServer, free_port_on
from support.outbound import wait
from support.postfix import Postfix, available
from support.server import PASSWORD, Server

POSTFIX_ADDRESS = "127.0.0.5"
REASON = available()


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    if REASON is not None:
        pytest.fail(f"this test needs a private Postfix: {REASON}")
    # Postfix's users must be able to reach the directory: not under a private tmp_path.
    root = Path(tempfile.mkdtemp(prefix="postroom-pf-", dir="/tmp"))
    port = free_port_on([POSTFIX_ADDRESS])
    pf = Postfix(root, address=POSTFIX_ADDRESS, port=port, domain="postfix.test").setup().start()
    yield pf
    pf.stop()
    pf.remove()


def test_delivery_to_a_real_postfix(postfix: Postfix, tmp_path: Path) -> None:
    dns = DnsServer({
        ("postfix.test", "MX"): [(10, "mx.postfix.test")],
        ("mx.postfix.test", "A"): [POSTFIX_ADDRESS],
    }).start()
    server = Server(
        tmp_path, roles=("submission",),
        extra=f'[outbound]\nresolver = "{dns.address}"\nport = {postfix.port}\n'
        '[smtp]\nrequire_tls_for_auth = false\n',
    )
    server.add_user("alice@example.test")
    server.start()
    try:
        import smtplib

        with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
            s.login("alice@example.test", PASSWORD)
            for i in range(3):
                s.sendmail(
                    "alice@example.test", ["u1@postfix.test", "u2@postfix.test"],
                    f"From: alice@example.test\r\nTo: u1@postfix.test\r\nSubject: to postfix {i}\r\n\r\n"
                    f"line one\r\n.leading dot\r\n".encode(),
                )
        got = wait(lambda: (lambda m: m if len(m) >= 3 else None)(postfix.delivered("u1")), 30)
        # Postfix delivers to each mailbox on its own: u2's copies may come a moment later
        assert len(wait(lambda: (lambda m: m if len(m) >= 3 else None)(postfix.delivered("u2")), 30)) == 3
        msg = message_from_bytes(got[0], policy=default)
        assert msg["Return-Path"] == "<alice@example.test>"  # the envelope sender, via Postfix
        assert msg["Delivered-To"] == "u1@postfix.test"
        received = msg.get_all("Received")
        assert any("by mail.example.test (postroom)" in r for r in received)
        assert any("postfix-test.localdomain" in r for r in received)
        assert sorted(str(message_from_bytes(m, policy=default)["Subject"]) for m in got) == [
            f"to postfix {i}" for i in range(3)
        ]
        assert msg.get_content().replace("\r\n", "\n").endswith("line one\n.leading dot\n")
        wait(lambda: not server.queue() or None, 10)
        assert "status=sent" in postfix.logs()
    finally:
        server.stop()
        dns.stop()
