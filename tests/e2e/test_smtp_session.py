"""Session-level behaviour of the running server: AUTH throttling, timeouts, connection
caps, early talkers, graceful shutdown on SIGTERM and certificate reload on SIGHUP."""

from __future__ import annotations

import base64
import secrets
import select
import signal
import socket
import ssl
import time
from pathlib import Path

from support.smtp_e2e import ALICE, BOB, HOSTNAME, RawSmtp, client_ctx, message, servers, split_trace
from support.server import PASSWORD

from postroom.proto.sasl import client_mechanism
from postroom.tls import write_self_signed

SENDER = "sender@remote.example"


def _scram_failure_time(c: RawSmtp, password: str) -> tuple[float, str]:
    """A SCRAM-SHA-256 exchange with a wrong password; the time of its last step only.

    The last step (client proof -> 535) costs the server an HMAC, no argon2, so what is
    measured is the failure delay itself, not a password hash on a busy machine.
    """
    mech = client_mechanism("SCRAM-SHA-256", ALICE, password, nonce_source=lambda: secrets.token_urlsafe(24))
    first = mech.start()
    assert first.data is not None
    r = c.cmd(f"AUTH SCRAM-SHA-256 {base64.b64encode(first.data).decode()}")
    assert r.code == 334, r
    step = mech.respond(base64.b64decode(r.lines[0]))
    assert step.data is not None  # type: ignore[union-attr]
    t = time.monotonic()
    r = c.cmd(base64.b64encode(step.data))  # type: ignore[union-attr]
    return time.monotonic() - t, r.status


def test_auth_failures_delayed_growing_then_closed(tmp_path: Path) -> None:
    extra = '[limits]\nauth_delay = "300ms"\nauth_failures = 3\n'
    with servers(tmp_path) as pool:
        srv = pool.make(extra=extra)
        with RawSmtp(srv.ports["submissions"], tls=client_ctx(srv)) as c:
            c.ehlo()
            results = [_scram_failure_time(c, "wrong password") for _ in range(3)]
            assert [status for _, status in results] == ["535 5.7.8"] * 3
            assert c.reply().status == "421 4.7.0"  # third failure: goodbye
            assert c.is_closed()
        times = [t for t, _ in results]
        # 0.3 s, 0.6 s, 1.2 s: the delay doubles with each failure on the connection.
        assert times[0] >= 0.3 and times[1] >= 0.6 and times[2] >= 1.2, times
        assert times[1] - times[0] > 0.15 and times[2] - times[1] > 0.3, times
        # Every mechanism counts and is delayed: PLAIN and LOGIN failures too.
        with RawSmtp(srv.ports["submissions"], tls=client_ctx(srv)) as c:
            c.ehlo()
            t = time.monotonic()
            assert c.auth_plain(ALICE, "wrong").status == "535 5.7.8"
            assert time.monotonic() - t >= 0.3
            assert c.auth("LOGIN", ALICE, "wrong again").status == "535 5.7.8"
            assert time.monotonic() - t >= 0.9
            assert c.auth_plain(ALICE).status == "235 2.7.0"  # the right password still works


def test_credentials_never_logged(tmp_path: Path) -> None:
    secret = "Sup3r-Secret-Passw0rd"
    with servers(tmp_path) as pool:
        srv = pool.make(users=())
        srv.add_user(ALICE, secret)
        attempts = [
            ("PLAIN", secret), ("PLAIN", secret + "x"), ("LOGIN", secret), ("LOGIN", "not-" + secret),
            ("SCRAM-SHA-256", secret), ("SCRAM-SHA-256", secret + "y"),
        ]
        for mech, password in attempts:
            with RawSmtp(srv.ports["submissions"], tls=client_ctx(srv)) as c:
                c.ehlo()
                r = c.auth(mech, ALICE, password)
                assert r.code == (235 if password == secret else 535), (mech, r)
        srv.stop()
        log = srv.logs()
        assert "event=auth" in log and "result=failed" in log and "result=ok" in log
        for needle in (
            secret,
            base64.b64encode(f"\0{ALICE}\0{secret}".encode()).decode(),
            base64.b64encode(secret.encode()).decode(),
            base64.b64encode(secret.encode()).decode()[:12],
        ):
            assert needle not in log


def test_idle_timeout(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra='[limits]\nsmtp_idle_timeout = "1s"\nauth_delay = "10ms"\n')
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            t = time.monotonic()
            r = c.reply(timeout=5)
            waited = time.monotonic() - t
            assert r.status == "421 4.4.2"
            assert 0.9 <= waited < 3, waited
            assert c.is_closed()
        # Activity keeps the session alive past the timeout.
        with RawSmtp(srv.ports["mx"]) as c:
            for _ in range(4):
                time.sleep(0.5)
                assert c.cmd("NOOP").status == "250 2.0.0"


def test_data_timeout_bounds_the_whole_message(tmp_path: Path) -> None:
    extra = '[limits]\nsmtp_idle_timeout = "5s"\nsmtp_data_timeout = "2s"\nauth_delay = "10ms"\n'
    with servers(tmp_path) as pool:
        srv = pool.make(extra=extra)
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            c.expect("DATA", "354")
            t = time.monotonic()
            # A byte every 0.3 s never trips the 5 s idle timeout; the 2 s data limit does.
            closed_at = None
            for i in range(30):
                c.send(b"Subject: slow\r\n" if i == 0 else b"x")
                readable, _, _ = select.select([c.sock], [], [], 0.3)
                if readable:
                    closed_at = time.monotonic() - t
                    break
            assert c.reply().status == "421 4.4.2"
            assert closed_at is not None and 1.8 <= closed_at < 4, closed_at
        assert srv.messages(ALICE) == []


def test_connection_caps_per_ip_and_total(tmp_path: Path) -> None:
    extra = '[limits]\nconnections_per_ip = 2\nconnections_total = 3\nauth_delay = "10ms"\n'
    with servers(tmp_path) as pool:
        srv = pool.make(extra=extra)
        port = srv.ports["mx"]
        a1 = RawSmtp(port, source="127.0.0.1")
        a2 = RawSmtp(port, source="127.0.0.1")
        assert a1.greeting and a1.greeting.code == 220 and a2.greeting and a2.greeting.code == 220
        with RawSmtp(port, source="127.0.0.1") as a3:
            assert a3.greeting is not None and a3.greeting.status == "421 4.7.0"
            assert "from your address" in a3.greeting.text
            assert a3.is_closed()
        b1 = RawSmtp(port, source="127.0.0.2")  # another client address: its own quota
        assert b1.greeting is not None and b1.greeting.code == 220
        with RawSmtp(port, source="127.0.0.3") as c1:  # total of 3 reached
            assert c1.greeting is not None and c1.greeting.status == "421 4.7.0"
            assert "too many connections" in c1.greeting.text
        # The TLS port counts towards the same total.
        ctx = client_ctx(srv)
        try:
            with RawSmtp(srv.ports["submissions"], tls=ctx, source="127.0.0.4") as d:
                refused = d.greeting is not None and d.greeting.status == "421 4.7.0"
        except (ssl.SSLError, ConnectionError, OSError):
            refused = True
        assert refused
        # Freed slots are reusable.
        a1.cmd("QUIT")
        a1.close()
        assert a2.cmd("NOOP").status == "250 2.0.0"
        deadline = time.monotonic() + 5
        while True:
            with RawSmtp(port, source="127.0.0.1") as again:
                assert again.greeting is not None
                if again.greeting.code == 220 or time.monotonic() > deadline:
                    assert again.greeting.code == 220
                    break
            time.sleep(0.1)
        a2.close()
        b1.close()


def test_early_talker_refused_on_mx_only(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra='[smtp]\ngreeting_delay = "1s"\n')  # the default pass time
        # Early talker: sends EHLO at once.
        with RawSmtp(srv.ports["mx"], greeting=False) as c:
            c.send(b"EHLO spambot.example\r\n")
            r = c.reply(timeout=5)
            assert r.status == "554 5.7.1", r
            assert c.is_closed()
        # Polite client: waits for the greeting, which comes after the delay.
        t = time.monotonic()
        with RawSmtp(srv.ports["mx"]) as c:
            assert c.greeting is not None and c.greeting.code == 220
            assert time.monotonic() - t >= 0.95
            c.ehlo()
        # Having passed, the address is greeted at once (postscreen-like pass cache).
        t = time.monotonic()
        with RawSmtp(srv.ports["mx"]) as c:
            assert c.greeting is not None and c.greeting.code == 220
            assert time.monotonic() - t < 0.8
        # Submission has no greeting delay: clients there are ours.
        t = time.monotonic()
        with RawSmtp(srv.ports["submission"]) as c:
            assert c.greeting is not None and c.greeting.code == 220
            assert time.monotonic() - t < 0.8
        srv.stop()
        assert "event=early_talker" in srv.logs()


def test_early_talker_check_without_pass_cache(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(extra='[smtp]\ngreeting_delay = "500ms"\ngreeting_pass_time = "0s"\n')
        for _ in range(2):  # every connection waits, a polite one just as the first
            t = time.monotonic()
            with RawSmtp(srv.ports["mx"]) as c:
                assert c.greeting is not None and c.greeting.code == 220
                assert time.monotonic() - t >= 0.45
        with RawSmtp(srv.ports["mx"], greeting=False) as c:
            c.send(b"EHLO spambot.example\r\n")
            assert c.reply(timeout=5).status == "554 5.7.1"
        srv.stop()


def test_sigterm_finishes_running_transaction(tmp_path: Path) -> None:
    extra = '[limits]\nshutdown_grace = "6s"\nauth_delay = "10ms"\n'
    with servers(tmp_path) as pool:
        srv = pool.make(extra=extra)
        assert srv.proc is not None
        sent = message("in flight", b"x" * 5000 + b"\r\n")
        busy = RawSmtp(srv.ports["mx"])
        idle = RawSmtp(srv.ports["mx"])
        busy.ehlo()
        idle.ehlo()
        busy.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
        busy.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
        busy.expect("DATA", "354")
        busy.send(sent[:3000])
        t = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        # The idle session is told at once; new connections are no longer accepted.
        assert idle.reply(timeout=5).status == "421 4.3.2"
        assert idle.is_closed()
        time.sleep(1.0)
        refused = False
        try:
            with RawSmtp(srv.ports["mx"], timeout=2) as late:
                refused = late.greeting is not None and late.greeting.code == 421
        except (ConnectionError, OSError, AssertionError):
            refused = True
        assert refused
        # The busy session finishes its message within the grace period: 250, then 421.
        busy.send(sent[3000:] + b".\r\n")
        assert busy.reply().code == 250
        assert busy.reply(timeout=5).status == "421 4.3.2"
        assert busy.is_closed()
        assert srv.proc.wait(10) == 0
        assert time.monotonic() - t < 6
        srv.proc = None
        srv.log.close()
        assert [split_trace(m)[1] for m in srv.messages(ALICE)] == [sent]
        busy.close()
        idle.close()


def test_sigterm_grace_period_cuts_slow_transaction(tmp_path: Path) -> None:
    extra = '[limits]\nshutdown_grace = "1s"\nauth_delay = "10ms"\n'
    with servers(tmp_path) as pool:
        srv = pool.make(extra=extra)
        assert srv.proc is not None
        with RawSmtp(srv.ports["mx"]) as slow:
            slow.ehlo()
            slow.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            slow.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            slow.expect("DATA", "354")
            slow.send(b"Subject: never finished\r\n\r\n")
            t = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            assert slow.is_closed(timeout=8)
            assert srv.proc.wait(10) == 0
            assert 0.9 <= time.monotonic() - t < 5
        srv.proc = None
        srv.log.close()
        assert srv.messages(ALICE) == []


def _peer_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOSTNAME) as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return der


def test_sighup_reloads_certificate_without_dropping(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        assert srv.proc is not None
        verify_none = ssl.create_default_context()
        verify_none.check_hostname = False
        verify_none.verify_mode = ssl.CERT_NONE
        old_der = ssl.PEM_cert_to_DER_cert(srv.cert.read_text())
        assert _peer_cert(srv.ports["submissions"], verify_none) == old_der
        # An established TLS session, authenticated, mid-way through a transaction.
        old = RawSmtp(srv.ports["submissions"], tls=client_ctx(srv))
        old.ehlo()
        assert old.auth_plain(ALICE).status == "235 2.7.0"
        old.expect(f"MAIL FROM:<{ALICE}>", "250 2.1.0")
        write_self_signed(srv.cert, srv.key, HOSTNAME)  # a new key and certificate
        new_der = ssl.PEM_cert_to_DER_cert(srv.cert.read_text())
        assert new_der != old_der
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "tls_reloaded" not in srv.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "tls_reloaded" in srv.logs()
        # New connections get the new certificate, on implicit TLS and on STARTTLS.
        assert _peer_cert(srv.ports["submissions"], verify_none) == new_der
        with RawSmtp(srv.ports["submission"]) as c:
            c.ehlo()
            c.starttls(verify_none)
            assert isinstance(c.sock, ssl.SSLSocket)
            assert c.sock.getpeercert(binary_form=True) == new_der
            c.ehlo()
            assert c.auth_plain(ALICE).status == "235 2.7.0"
        # The old connection carries on with its transaction, on the old certificate.
        assert isinstance(old.sock, ssl.SSLSocket)
        assert old.sock.getpeercert(binary_form=True) == old_der
        old.expect(f"RCPT TO:<{BOB}>", "250 2.1.5")
        old.expect("DATA", "354")
        sent = message("across the reload")
        old.send(sent + b".\r\n")
        assert old.reply().code == 250
        old.expect("QUIT", "221 2.0.0")
        old.close()
        assert split_trace(srv.messages(BOB)[0])[1] == sent
        assert PASSWORD not in srv.logs()


def test_one_log_line_per_transaction(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        sent = message("logged")
        with RawSmtp(srv.ports["submission"]) as c:
            c.ehlo()
            c.starttls(client_ctx(srv))
            c.ehlo()
            assert c.auth_plain(ALICE).status == "235 2.7.0"
            c.expect(f"MAIL FROM:<{ALICE}>", "250 2.1.0")
            c.expect(f"RCPT TO:<{BOB}>", "250 2.1.5")
            c.expect("RCPT TO:<nobody@example.test>", "550 5.1.1")
            c.expect("DATA", "354")
            c.send(sent + b".\r\n")
            r = c.reply()
            assert r.code == 250
            qid = r.text.rsplit(" ", 1)[1]
        srv.stop()
        lines = [x for x in srv.logs().splitlines() if "event=transaction" in x]
        assert len(lines) == 1, lines
        line = lines[0]
        for part in (
            "role=submission", "client=127.0.0.1", "helo=client.example.org", 'tls="TLSv1.',
            f"user={ALICE}", f"mail_from={ALICE}", f"rcpt={BOB}:250,nobody@example.test:550",
            f"size={len(sent)}", f"id={qid}", "result=250", "ms=", "session=",
        ):
            assert part in line, (part, line)
