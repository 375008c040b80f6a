"""Limits and bad input over real sockets: every refusal is the protocol's reply, in order.

After each refusal the test checks the connection is still in step (the next command gets
its own reply and nothing else): a server that mis-frames input would answer twice.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from support.smtp_e2e import ALICE, BOB, DOMAIN, RawSmtp, client_ctx, message, servers, split_trace

SENDER = "sender@remote.example"


def _in_step(c: RawSmtp) -> None:
    """The connection is in step: one NOOP, one reply, nothing else waiting."""
    assert c.cmd("NOOP").status == "250 2.0.0"
    assert c.buf == b""


def test_command_line_length_default_and_configured(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            # RFC 5321 4.5.3.1.4 says 512; longer real-world lines are tolerated to 4 KiB.
            assert c.cmd("NOOP " + "x" * 1000).status == "250 2.0.0"
            assert c.cmd("NOOP " + "x" * 4089).status == "250 2.0.0"  # 4096 with CRLF
            assert c.cmd("NOOP " + "x" * 4090).status == "500 5.5.2"
            assert c.cmd("NOOP " + "x" * 100_000).status == "500 5.5.2"  # one reply only
            _in_step(c)
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")  # the transaction still works
        srv.stop()
    with servers(tmp_path / "b") as pool:
        srv = pool.make(extra="[smtp]\nline_length = 512\n")
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.cmd("NOOP " + "x" * 505).status == "250 2.0.0"  # 512 with CRLF
            assert c.cmd("NOOP " + "x" * 506).status == "500 5.5.2"
            _in_step(c)


def test_data_lines_over_998_are_kept_whole(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        long_line = b"".join(bytes([0x41 + i % 26]) for i in range(20_000))
        sent = message("long lines", long_line + b"\r\n" + b"." * 1500 + b"\r\nend\r\n")
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.mail(SENDER, [ALICE], sent).code == 250
        assert split_trace(srv.messages(ALICE)[0])[1] == sent


def test_size_limit_at_mail_data_and_bdat(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra='[limits]\nmessage_size = "10K"\nauth_delay = "10ms"\n')
        big = message("big", b"y" * 20_000 + b"\r\n")
        ok = message("fits", b"z" * 5_000 + b"\r\n")
        with RawSmtp(srv.ports["mx"]) as c:
            assert "SIZE 10240" in c.ehlo().lines
            assert c.cmd(f"MAIL FROM:<{SENDER}> SIZE=20000").status == "552 5.3.4"
            c.expect(f"MAIL FROM:<{SENDER}> SIZE=5000", "250 2.1.0")
            c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            c.expect("DATA", "354")
            # Over the limit during DATA: read to the real end, then one 552.
            c.send(big + b".\r\n")
            assert c.reply().status == "552 5.3.4"
            _in_step(c)
            # Over the limit in BDAT (declared chunk sizes), with chunks that each fit:
            # the chunks are drained and the session goes on. (A single chunk over the
            # limit closes the connection unread: test_smtp_hardening.py.)
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            third = len(big) // 3 + 1
            chunks = [big[:third], big[third : 2 * third], big[2 * third :]]
            for i, (chunk, status) in enumerate(zip(chunks, ["250 2.0.0", "552 5.3.4", "552 5.3.4"], strict=True)):
                last = " LAST" if i == 2 else ""
                c.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
                assert c.reply().status == status
            _in_step(c)
            # The connection is still usable for a message that fits.
            assert c.mail(SENDER, [ALICE], ok).code == 250
        assert [split_trace(m)[1] for m in srv.messages(ALICE)] == [ok]


@pytest.mark.parametrize("limit", [None, 5])
def test_recipient_limit(tmp_path: Path, limit: int | None) -> None:
    extra = f'[limits]\nrecipients = {limit}\nauth_delay = "10ms"\n' if limit else ""
    n = limit or 100
    with servers(tmp_path) as pool:
        srv = pool.make(extra=extra)
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            # Pipelined, as a bulk sender would: n accepted, then 452 4.5.3 (RFC 5321
            # 4.5.3.1.10), which does not count as an error: 30 more are fine.
            rcpts = [ALICE if i % 2 else BOB for i in range(n + 30)]
            c.send("".join(f"RCPT TO:<{r}>\r\n" for r in rcpts).encode())
            statuses = [r.status for r in c.replies(len(rcpts))]
            assert statuses == ["250 2.1.5"] * n + ["452 4.5.3"] * 30
            c.expect("DATA", "354")
            c.send(message("many") + b".\r\n")
            assert c.reply().code == 250
        assert len(srv.messages(ALICE)) == 1 and len(srv.messages(BOB)) == 1


def test_syntax_sequence_and_unknown_commands(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        with RawSmtp(srv.ports["mx"]) as c:
            for line, status in [
                (f"MAIL FROM:<{SENDER}>", "503 5.5.1"),  # before EHLO
                ("EHLO", "501 5.5.4"),
                ("FOOBAR", "500 5.5.1"),
            ]:
                assert c.cmd(line).status == status, line
            c.ehlo()
            for line, status in [
                (f"RCPT TO:<{ALICE}>", "503 5.5.1"),  # before MAIL
                ("DATA", "503 5.5.1"),
                ("BDAT 3 LAST\r\na", "503 5.5.1"),  # chunk "a" CRLF skipped
                ("MAIL FROM:<bad", "501 5.1.7"),
                ("MAIL FROM:<a@@remote.example>", "501 5.1.7"),
                (f"MAIL FROM:{SENDER}", "501 5.1.7"),  # no angle brackets
                ("MAIL TO:<x@remote.example>", "501 5.5.4"),
                (f"MAIL FROM:<{SENDER}> SIZE=abc", "501 5.5.4"),
                (f"MAIL FROM:<{SENDER}> FROBNICATE=1", "555 5.5.4"),
                ("VRFY", "501 5.5.4"),
                (f"VRFY {ALICE}", "252 2.5.0"),  # never confirms users
                ("EXPN staff", "502 5.5.1"),
                ("WHATEVER and more", "500 5.5.1"),
            ]:
                r = c.cmd(line)
                assert r.status == status, (line, r)
            _in_step(c)
        # A second connection: every refusal counts towards the 20-error limit.
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            for line, status in [
                (f"MAIL FROM:<{SENDER}>", "250 2.1.0"),
                (f"MAIL FROM:<{SENDER}>", "503 5.5.1"),  # nested
                ("RCPT TO:<a b@example.test>", "501 5.1.3"),
                ("RCPT TO:<>", "501 5.1.3"),
                (f"RCPT TO:<{ALICE}> NOTIFY=SOMETIMES", "501 5.5.4"),
                ("DATA", "503 5.5.1"),  # no recipient yet
                (f"RCPT TO:<{ALICE}>", "250 2.1.5"),
                ("DATA extra", "501 5.5.4"),
                ("RSET", "250 2.0.0"),
                ("DATA", "503 5.5.1"),
            ]:
                r = c.cmd(line)
                assert r.status == status, (line, r)
            _in_step(c)
            assert c.cmd("QUIT").status == "221 2.0.0"
            assert c.is_closed()


def test_too_many_errors_close_and_http_is_cut(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            c.send(b"BOGUS\r\n" * 25)
            statuses = []
            while True:
                try:
                    statuses.append(c.reply().status)
                except Exception:
                    break
            assert statuses == ["500 5.5.1"] * 20 + ["421 4.7.0"], statuses
            assert c.is_closed()
        with RawSmtp(srv.ports["mx"]) as c:
            assert c.cmd("GET / HTTP/1.1").status == "421 4.7.0"
            assert c.is_closed()


def test_nul_bytes_refused(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.cmd(b"NOOP \x00").status == "500 5.5.2"
            assert c.cmd(f"MAIL FROM:<{SENDER}>\x00".encode()).status == "500 5.5.2"
            _in_step(c)
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            c.expect("DATA", "354")
            c.send(b"Subject: nul\r\n\r\nbefore\x00after\r\n.\r\n")
            assert c.reply().status == "554 5.6.0"
            _in_step(c)
        assert srv.messages(ALICE) == []


SMUGGLING = {
    "bare LF": b"\n",
    "bare CR": b"\r",
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smtp_smuggling_refused(tmp_path: Path, name: str) -> None:
    seq = SMUGGLING[name]
    with servers(tmp_path) as pool:
        srv = pool.make()
        smuggled = (
            f"MAIL FROM:<ceo@{DOMAIN}>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n"
            "From: ceo\r\nSubject: smuggled\r\n\r\nsmuggled body"
        ).encode()
        payload = b"Subject: cover\r\n\r\nfirst part" + seq + smuggled + seq + b"tail\r\n.\r\n"
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            c.expect("DATA", "354")
            c.send(payload)
            # Exactly one reply for the whole thing, after the real end of data.
            assert c.reply().status == "554 5.6.0"
            _in_step(c)
            # Also when the pieces arrive in separate writes (the marker split apart).
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            c.expect("DATA", "354")
            for i in range(0, len(payload), 7):
                c.send(payload[i : i + 7])
            assert c.reply().status == "554 5.6.0"
            _in_step(c)
        assert srv.messages(ALICE) == [] and srv.messages(BOB) == []


def test_starttls_command_injection(tmp_path: Path) -> None:
    """CVE-2011-0411: commands sent with STARTTLS in one write are never executed."""
    with servers(tmp_path) as pool:
        srv = pool.make()
        for port in (srv.ports["mx"], srv.ports["submission"]):
            with RawSmtp(port) as c:
                c.ehlo()
                c.send(f"STARTTLS\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\n".encode())
                assert c.reply().status == "220 2.0.0"
                assert c.buf == b""
                c.sock = client_ctx(srv).wrap_socket(c.sock, server_hostname="mail.example.test")
                assert isinstance(c.sock, ssl.SSLSocket)
                # Nothing answered for the injected commands; the session starts afresh.
                _in_step(c)
                assert c.cmd(f"RCPT TO:<{ALICE}>").status == "503 5.5.1"
                assert c.cmd(f"MAIL FROM:<{SENDER}>").status == "503 5.5.1"  # EHLO first
                ehlo = c.ehlo()
                assert "STARTTLS" not in ehlo.lines
                assert c.cmd(f"RCPT TO:<{ALICE}>").status == "503 5.5.1"  # no MAIL survived
                assert c.cmd("STARTTLS").status == "503 5.5.1"  # already active
        assert srv.messages(ALICE) == []


def test_failed_starttls_handshake_ends_session_quietly(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            c.expect("STARTTLS", "220 2.0.0")
            c.send(b"EHLO this is not a ClientHello\r\n")
            assert c.is_closed()
        with RawSmtp(srv.ports["mx"]) as c:  # the server is fine
            c.ehlo()
            assert c.mail(SENDER, [ALICE], message("after")).code == 250
        srv.stop()
        assert "event=starttls_failed" in srv.logs()
