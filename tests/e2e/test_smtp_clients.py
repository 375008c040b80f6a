"""Real clients against ``postroom serve``: smtplib, swaks, a raw socket; messages read back.

Every delivered message is read back through the store and compared byte for byte with
what the client sent, after the two fields the server prepends (``Return-Path`` and
``Received``), whose content is checked too (RFC 5321 4.4).
"""

from __future__ import annotations

import base64
import re
import secrets
import smtplib
import subprocess
from pathlib import Path

import pytest
from support.smtp_e2e import (
    ALICE,
    BOB,
    DOMAIN,
    HOSTNAME,
    RawSmtp,
    add_users_fast,
    client_ctx,
    message,
    servers,
    split_trace,
)
from support.server import PASSWORD

from postroom.proto.sasl import client_mechanism

SENDER = "someone@remote.example"
_QID_RE = re.compile(r"queued as ([0-9A-Z]+)")


def _qid(text: str) -> str:
    m = _QID_RE.search(text)
    assert m, text
    return m.group(1)


def _check_stored(stored: bytes, sent: bytes, *, sender: str, protocol: str, qid: str, rcpt: str | None) -> bytes:
    """Return-Path + Received + exactly ``sent``; returns the Received field."""
    fields, rest = split_trace(stored)
    assert len(fields) == 2, fields
    assert fields[0] == f"Return-Path: <{sender}>\r\n".encode()
    received = fields[1].decode()
    flat = re.sub(r"\r\n[ \t]+", " ", received)
    assert flat.startswith("Received: from client.example.org ([127.0.0.1]) by mail.example.test (postroom) ")
    assert f" with {protocol} " in flat, flat
    assert f" id {qid}" in flat
    if rcpt:
        assert f" for <{rcpt}>;" in flat
    else:
        assert " for <" not in flat
    assert re.search(r"; \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [-+]\d{4}\r\n$", flat), flat
    assert rest == sent
    assert PASSWORD not in stored.decode("utf-8", "replace")
    return flat


def test_smtplib_mx_plain_byte_for_byte(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        body = b"Line one\r\n.starts with a dot\r\n" + b"x" * 900 + b"\r\n\r\nlast\r\n"
        sent = message("mx plain", body)
        with smtplib.SMTP("127.0.0.1", srv.ports["mx"], local_hostname="client.example.org", timeout=10) as s:
            code, text = s.ehlo()
            assert code == 250
            assert "auth" not in s.esmtp_features  # no AUTH on mx
            assert "starttls" in s.esmtp_features
            s.mail(SENDER)
            assert s.rcpt(ALICE)[0] == 250
            code, text = s.data(sent)
            assert code == 250
        [stored] = srv.messages(ALICE)
        _check_stored(stored, sent, sender=SENDER, protocol="ESMTP", qid=_qid(text.decode()), rcpt=ALICE)


def test_smtplib_mx_starttls_received_names_tls(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        sent = message("mx tls")
        with smtplib.SMTP("127.0.0.1", srv.ports["mx"], local_hostname="client.example.org", timeout=10) as s:
            s.starttls(context=client_ctx(srv))
            s.ehlo()
            version = s.sock.version()
            cipher = s.sock.cipher()[0]
            s.mail(SENDER)
            s.rcpt(ALICE)
            s.rcpt(BOB)
            code, text = s.data(sent)
            assert code == 250
        for user in (ALICE, BOB):
            [stored] = srv.messages(user)
            flat = _check_stored(stored, sent, sender=SENDER, protocol="ESMTPS", qid=_qid(text.decode()), rcpt=None)
            assert f"(using {version} with cipher {cipher})" in flat


def _smtplib_login(s: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    """PLAIN and LOGIN through smtplib's own auth(); SCRAM-SHA-256 through docmd."""
    if mechanism == "PLAIN":
        s.user, s.password = user, password
        return s.auth("PLAIN", s.auth_plain)
    if mechanism == "LOGIN":
        s.user, s.password = user, password
        return s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    mech = client_mechanism(mechanism, user, password, nonce_source=lambda: secrets.token_urlsafe(24))
    first = mech.start()
    assert first.data is not None
    code, resp = s.docmd("AUTH", f"{mechanism} {base64.b64encode(first.data).decode()}")
    while code == 334:
        step = mech.respond(base64.b64decode(resp))
        assert step.data is not None, step  # type: ignore[union-attr]
        code, resp = s.docmd(base64.b64encode(step.data).decode())  # type: ignore[union-attr]
    return code, resp


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
def test_smtplib_submission_starttls_auth(tmp_path: Path, mechanism: str) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        sent = message(f"submission {mechanism}")
        with smtplib.SMTP("127.0.0.1", srv.ports["submission"], local_hostname="client.example.org", timeout=10) as s:
            s.ehlo()
            assert "auth" not in s.esmtp_features  # only after STARTTLS
            s.starttls(context=client_ctx(srv))
            s.ehlo()
            assert s.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
            code, _ = _smtplib_login(s, mechanism, ALICE, PASSWORD)
            assert code == 235
            s.mail(ALICE)
            assert s.rcpt(BOB)[0] == 250
            code, text = s.data(sent)
            assert code == 250
        [stored] = srv.messages(BOB)
        flat = _check_stored(stored, sent, sender=ALICE, protocol="ESMTPSA", qid=_qid(text.decode()), rcpt=BOB)
        assert "alice" not in flat.lower().partition(" for <")[0]  # no user name either
        assert PASSWORD not in srv.logs()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "SCRAM-SHA-256"])
def test_smtplib_submissions_implicit_tls(tmp_path: Path, mechanism: str) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        sent = message(f"submissions {mechanism}")
        with smtplib.SMTP_SSL(
            "127.0.0.1", srv.ports["submissions"], local_hostname="client.example.org",
            context=client_ctx(srv), timeout=10,
        ) as s:
            s.ehlo()
            assert "starttls" not in s.esmtp_features
            code, _ = _smtplib_login(s, mechanism, ALICE, PASSWORD)
            assert code == 235
            wrong, _ = _smtplib_login_fresh_fails(srv, mechanism)
            assert wrong == 535
            s.mail(ALICE)
            s.rcpt(BOB)
            code, text = s.data(sent)
            assert code == 250
        [stored] = srv.messages(BOB)
        _check_stored(stored, sent, sender=ALICE, protocol="ESMTPSA", qid=_qid(text.decode()), rcpt=BOB)


def _smtplib_login_fresh_fails(srv, mechanism: str) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """A wrong password on a second connection: 535 5.7.8, whatever the mechanism."""
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], context=client_ctx(srv), timeout=10) as s:
        s.ehlo()
        try:
            return _smtplib_login(s, mechanism, ALICE, "wrong password")
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error


def test_submission_adds_message_id_and_date(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        head = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: no id\r\nBcc: hidden@{DOMAIN}\r\n".encode()
        sent = head + b"\r\nbody\r\n"
        with RawSmtp(srv.ports["submissions"], tls=client_ctx(srv)) as c:
            c.ehlo()
            assert c.auth_plain(ALICE).status == "235 2.7.0"
            r = c.mail(ALICE, [BOB], sent)
            assert r.code == 250, r
            qid = _qid(r.text)
        [stored] = srv.messages(BOB)
        fields, rest = split_trace(stored)
        assert len(fields) == 2
        # Bcc is dropped on submission; Date and Message-ID go at the end of the header.
        m = re.fullmatch(
            rb"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: no id\r\n"
            rb"Date: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [-+]\d{4}\r\n"
            rb"Message-ID: <([0-9A-Z]+)@mail\.example\.test>\r\n\r\nbody\r\n",
            rest,
        )
        assert m, rest
        assert m.group(1).decode() == qid
        # With both present, nothing is added.
        kept = message("has both")
        with RawSmtp(srv.ports["submissions"], tls=client_ctx(srv)) as c:
            c.ehlo()
            c.auth_plain(ALICE)
            assert c.mail(ALICE, [BOB], kept).code == 250
        assert split_trace(srv.messages(BOB)[1])[1] == kept


def test_mx_keeps_message_id_absent(tmp_path: Path) -> None:
    """MX is not submission: a message without Message-ID/Date is stored as sent."""
    with servers(tmp_path) as pool:
        srv = pool.make()
        sent = b"Subject: bare\r\n\r\nbody\r\n"
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.mail(SENDER, [ALICE], sent).code == 250
        assert split_trace(srv.messages(ALICE)[0])[1] == sent


# -- swaks ---------------------------------------------------------------------------------


def _swaks(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--ehlo", "client.example.org", "--timeout", "10", *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.parametrize(
    "mode,auth",
    [
        ("plain", "PLAIN"),
        ("plain", "LOGIN"),
        ("starttls", "PLAIN"),
        ("starttls", "LOGIN"),
        ("implicit", "PLAIN"),
        ("implicit", "LOGIN"),
    ],
)
def test_swaks_submission(tmp_path: Path, mode: str, auth: str) -> None:
    # Plain AUTH is possible only when configured (smtp.require_tls_for_auth = false).
    extra = "[smtp]\nrequire_tls_for_auth = false\n" if mode == "plain" else ""
    with servers(tmp_path) as pool:
        srv = pool.make(extra=extra)
        port = srv.ports["submissions" if mode == "implicit" else "submission"]
        tls = {"plain": [], "starttls": ["--tls"], "implicit": ["--tls-on-connect"]}[mode]
        token = secrets.token_hex(6)
        r = _swaks(
            "--port", str(port), *tls, "--auth", auth, "--auth-user", ALICE, "--auth-password", PASSWORD,
            "--from", ALICE, "--to", BOB, "--header", f"Subject: swaks {token}",
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "235 2.7.0" in r.stdout
        [stored] = srv.messages(BOB)
        assert f"Subject: swaks {token}".encode() in stored
        protocol = {"plain": "ESMTPA", "starttls": "ESMTPSA", "implicit": "ESMTPSA"}[mode]
        assert f"with {protocol} ".encode() in stored
        assert PASSWORD not in srv.logs()


def test_swaks_mx_plain_and_starttls(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        for tls in ([], ["--tls"]):
            r = _swaks("--port", str(srv.ports["mx"]), *tls, "--from", SENDER, "--to", ALICE)
            assert r.returncode == 0, r.stdout + r.stderr
        stored = srv.messages(ALICE)
        assert len(stored) == 2
        assert b"with ESMTP " in stored[0] and b"with ESMTPS " in stored[1]


def test_swaks_pipelining(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        r = _swaks("--port", str(srv.ports["mx"]), "--pipeline", "--from", SENDER, "--to", f"{ALICE},{BOB}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "PIPELINING" in r.stdout
        assert len(srv.messages(ALICE)) == 1 and len(srv.messages(BOB)) == 1
        # One unknown recipient among the pipelined ones: the others still get the message.
        r = _swaks("--port", str(srv.ports["mx"]), "--pipeline", "--from", SENDER, "--to", f"{ALICE},nobody@{DOMAIN}")
        assert "550 5.1.1" in r.stdout, r.stdout
        assert len(srv.messages(ALICE)) == 2


# -- raw socket: pipelining, BDAT, one blob for many recipients ----------------------------


def test_raw_pipelining_replies_in_order(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        sent = message("pipelined")
        with RawSmtp(srv.ports["mx"]) as c:
            assert "PIPELINING" in c.ehlo().lines
            c.send(
                f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<nobody@{DOMAIN}>\r\n"
                f"RCPT TO:<{BOB}>\r\nDATA\r\n".encode()
            )
            assert [r.status for r in c.replies(5)] == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354"]
            # The message, the next transaction and QUIT in one write.
            c.send(
                sent + b".\r\n" + f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n".encode()
                + sent + b".\r\nQUIT\r\n"
            )
            replies = c.replies(6)
            assert [r.code for r in replies] == [250, 250, 250, 354, 250, 221]
            assert c.is_closed()
        assert [split_trace(m)[1] for m in srv.messages(ALICE)] == [sent]
        assert [split_trace(m)[1] for m in srv.messages(BOB)] == [sent, sent]


def test_raw_bdat_chunking(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make()
        sent = message("chunked", b"a line\r\n.leading dot is data in BDAT\r\n" + b"y" * 3000 + b"\r\n")
        parts = [sent[:10], sent[10:2000], sent[2000:]]
        with RawSmtp(srv.ports["mx"]) as c:
            assert "CHUNKING" in c.ehlo().lines
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            c.send(f"BDAT {len(parts[0])}\r\n".encode() + parts[0])
            assert c.reply().status == "250 2.0.0"
            # Pipelined: two chunks, the last one marked LAST, in one write.
            c.send(
                f"BDAT {len(parts[1])}\r\n".encode() + parts[1]
                + f"BDAT {len(parts[2])} LAST\r\n".encode() + parts[2]
            )
            first, last = c.replies(2)
            assert first.status == "250 2.0.0" and last.status == "250 2.0.0", (first, last)
            assert "queued as" in last.text
            # DATA after BDAT in a new transaction works; BDAT 0 LAST alone sends empty.
            c.expect(f"MAIL FROM:<{SENDER}>", "250 2.1.0")
            c.expect(f"RCPT TO:<{ALICE}>", "250 2.1.5")
            c.expect("BDAT 0 LAST", "250 2.0.0")
        stored = srv.messages(ALICE)
        assert split_trace(stored[0])[1] == sent
        assert split_trace(stored[1])[1] == b""  # empty message: only our trace fields


def test_one_blob_for_fifty_local_recipients(tmp_path: Path) -> None:
    with servers(tmp_path) as pool:
        srv = pool.make(start=False)
        rcpts = [f"r{i:02d}@{DOMAIN}" for i in range(50)]
        add_users_fast(srv, rcpts)
        srv.start()
        sent = message("fifty", b"z" * 20000 + b"\r\n")
        with RawSmtp(srv.ports["mx"]) as c:
            c.ehlo()
            assert c.mail(SENDER, rcpts, sent).code == 250

        async def blobs(admin, store):  # type: ignore[no-untyped-def]
            ids = []
            for address in rcpts:
                user = await store.get_user(address)
                box = await store.get_mailbox(user.id, "INBOX")
                msgs = await store.list_messages(box.id)
                assert len(msgs) == 1
                ids.append(msgs[0].blob_id)
            return ids

        ids = srv.admin(blobs)
        assert len(ids) == 50 and len(set(ids)) == 1
        stored = srv.messages(rcpts[7])[0]
        assert split_trace(stored)[1] == sent
        assert f"by {HOSTNAME}".encode() in stored
