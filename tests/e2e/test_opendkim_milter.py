"""DKIM interoperability with OpenDKIM running as it runs in production: a milter of Postfix.

* OpenDKIM signs, postroom verifies: a private Postfix (``tests/support/postfix.py``, relay
  mode) with two OpenDKIM signing milters chained in ``smtpd_milters`` (one RSA-SHA256, one
  Ed25519-SHA256: OpenDKIM 2.11 has one ``SignatureAlgorithm`` per instance) relays a
  message to postroom's MX. The sending domain publishes ``p=reject`` and an SPF record that
  fails, so only the DKIM signatures can make DMARC pass: the stored message must carry
  ``dkim=pass`` for both algorithms and ``dmarc=pass``. dkimpy checks the same signatures,
  so a bug shared by OpenDKIM and postroom would still show. A message signed by OpenDKIM
  with a key that DNS does not publish is refused (550 5.7.1 from postroom, bounced by
  Postfix), so the pass above is not a default.
* postroom signs, OpenDKIM verifies: postroom's queue delivers a submitted message to a
  private Postfix MX whose OpenDKIM milter verifies it and adds its own
  Authentication-Results (``dkim=pass`` per signature); ``tests/e2e/test_mail_auth.py``
  also checks the same direction with ``opendkim -t``.
"""

from __future__ import annotations

import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest

from postroom.policy import dkim
from support.dns_server import DnsServer, free_port_on
from support.opendkim import OpenDkim
from support.opendkim import available as opendkim_missing
from support.mail_auth import dns_txt_lookup, generate_keys
from support.outbound import wait
from support.postfix import Postfix
from support.postfix import available as postfix_missing
from support.server import PASSWORD, Server

DOMAIN = "example.test"
HOST = f"mail.{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
SIGNER = "signer.test"
PF_MX = "127.0.0.6"


def _fields(data: bytes, name: bytes) -> list[str]:
    """Unfolded fields called ``name`` (Maildir files have LF line ends: made CRLF)."""
    fields, _ = dkim.split_message(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return [raw.decode().replace("\r\n\t", " ").replace("\r\n ", " ").replace("\r\n", "")
            for n, raw in fields if n == name]


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    for reason in (postfix_missing(), opendkim_missing()):
        if reason is not None:
            pytest.fail(f"this test needs a private Postfix and OpenDKIM: {reason}")
    # Postfix's users must be able to reach the directory: not under a private tmp_path.
    root = Path(tempfile.mkdtemp(prefix="postroom-odk-", dir="/tmp"))
    dns = DnsServer().start()
    started: list[Any] = []
    try:
        pf_mx_port = free_port_on([PF_MX])
        srv = Server(
            root / "postroom", roles=("mx", "submission"), hostname=HOST,
            extra=(f'[outbound]\nresolver = "{dns.address}"\n'
                   f'transport = {{ "postfix.test" = "{PF_MX}:{pf_mx_port}" }}\n'
                   '[auth_checks]\ntimeout = "5s"\n'),
        )
        srv.add_user(ALICE)
        srv.add_user(BOB)
        ours = generate_keys(srv, DOMAIN)
        srv.start()
        started.append(srv)

        # The sending side: two OpenDKIM signers behind a relaying Postfix.
        keys = {"rsa": dkim.generate_key("rsa"), "ed25519": dkim.generate_key("ed25519")}
        for alg, key in keys.items():
            dns.set(f"odk-{alg}._domainkey.{SIGNER}", "TXT", [dkim.public_record(key)])
        dns.set(f"_dmarc.{SIGNER}", "TXT", ["v=DMARC1; p=reject"])
        dns.set(SIGNER, "TXT", ["v=spf1 -all"])
        signers = []
        for alg, key in keys.items():
            signer = OpenDkim(
                root / f"odk-{alg}", domain=SIGNER, selector=f"odk-{alg}",
                key_pem=dkim.private_pem(key),
                algorithm="rsa-sha256" if alg == "rsa" else "ed25519-sha256",
            ).setup().start()
            started.append(signer)
            signers.append(signer)
        # The same domain with a key nobody published (signature must fail).
        rogue = OpenDkim(root / "odk-rogue", domain="rogue.test", selector="gone",
                         key_pem=dkim.private_pem(dkim.generate_key("rsa"))).setup().start()
        started.append(rogue)
        dns.set("gone._domainkey.rogue.test", "TXT", [dkim.public_record(dkim.generate_key("rsa"))])
        dns.set("_dmarc.rogue.test", "TXT", ["v=DMARC1; p=reject"])
        dns.set("rogue.test", "TXT", ["v=spf1 -all"])
        relay_port = free_port_on(["127.0.0.1"])
        relay = Postfix(
            root / "pf-relay", port=relay_port, mode="relay",
            relayhost=f"127.0.0.1:{srv.ports['mx']}",
            extra={
                "smtpd_milters": ", ".join([*(s.socket for s in signers), rogue.socket]),
                "milter_default_action": "tempfail",
                "myhostname": "relay.signer.test",
            },
        ).setup().start()
        started.append(relay)

        # The receiving side: a Postfix MX whose OpenDKIM verifies.
        verifier = OpenDkim(root / "odk-verify", mode="v", public_keys=ours).setup().start()
        started.append(verifier)
        mx = Postfix(
            root / "pf-mx", address=PF_MX, port=pf_mx_port, domain="postfix.test",
            extra={"smtpd_milters": verifier.socket, "milter_default_action": "tempfail"},
        ).setup().start()
        started.append(mx)
        yield {"srv": srv, "dns": dns, "relay": relay, "mx": mx, "keys": keys, "ours": ours,
               "signers": signers, "verifier": verifier}
    finally:
        for thing in started:
            if isinstance(thing, OpenDkim):
                thing.terminate()
        for thing in reversed(started):
            thing.stop()
        dns.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _msg(sender: str, to: str, subject: str) -> bytes:
    return (
        f"From: Sender <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@signer.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "Relaxed  canonicalization   folds these spaces. \r\n\r\nAnd keeps this line.\r\n\r\n\r\n"
    ).encode()


def test_opendkim_signed_mail_verifies_in_postroom(env: dict[str, Any]) -> None:
    srv, relay = env["srv"], env["relay"]
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
        s.sendmail(f"news@{SIGNER}", [BOB], _msg(f"news@{SIGNER}", BOB, "opendkim signed"))
    stored = wait(lambda: [m for m in srv.messages(BOB) if b"opendkim signed" in m], 60)[0]
    sigs = _fields(stored, b"dkim-signature")
    assert sorted(dkim.parse_tags(s.partition(":")[2])["a"] for s in sigs) == [
        "ed25519-sha256", "rsa-sha256"], sigs
    assert all(dkim.parse_tags(s.partition(":")[2])["d"] == SIGNER for s in sigs)
    ar = _fields(stored, b"authentication-results")[0]
    assert ar.startswith(f"Authentication-Results: {HOST};"), ar
    assert "spf=fail" in ar, ar  # so DMARC can only pass through DKIM
    for alg in ("rsa-sha256", "ed25519-sha256"):
        assert f"dkim=pass header.d={SIGNER} header.s=odk-{alg.split('-')[0]} header.a={alg}" in ar, ar
    assert "dmarc=pass" in ar, ar

    # A second, independent verifier agrees (dkimpy, same DNS records).
    fields, body = dkim.split_message(stored)
    plain = b"".join(raw for n, raw in fields
                     if n not in (b"return-path", b"authentication-results")
                     and not (n == b"received" and b"(postroom)" in raw)) + b"\r\n" + body
    dnsfunc = dns_txt_lookup(env["dns"])
    for idx in range(2):
        assert dkimpy.DKIM(plain).verify(idx=idx, dnsfunc=dnsfunc), f"dkimpy rejects signature {idx}"


def test_opendkim_signature_with_unpublished_key_is_refused(env: dict[str, Any]) -> None:
    """Signed by OpenDKIM with a key DNS does not publish: dkim=fail, p=reject -> 550."""
    srv, relay = env["srv"], env["relay"]
    before = len(srv.messages(BOB))
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
        s.sendmail("ceo@rogue.test", [BOB], _msg("ceo@rogue.test", BOB, "rogue signed"))
    # Postfix gets 550 5.7.1 from postroom at end of data and bounces (to the sender's
    # domain, which it cannot reach: the bounce stays queued there).
    wait(lambda: "5.7.1" in relay.logs() and "status=bounced" in relay.logs(), 60)
    assert "rogue.test" in relay.logs() or "ceo@rogue.test" in relay.logs()
    assert len(srv.messages(BOB)) == before
    assert not any(b"rogue signed" in m for m in srv.messages(BOB, "Junk") or [])


def test_postroom_signed_mail_verifies_in_opendkim_milter(env: dict[str, Any]) -> None:
    srv, mx = env["srv"], env["mx"]
    msg = _msg(ALICE, "u1@postfix.test", "to opendkim")
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
        s.starttls(context=srv.client_context())
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, ["u1@postfix.test"], msg)
    got = wait(lambda: [m for m in mx.delivered("u1") if b"to opendkim" in m], 60)[0]
    ars = [a for a in _fields(got, b"authentication-results") if "opendkim.test" in a]
    assert ars, got[:2000]
    text = " ".join(ars)
    # OpenDKIM reports every signature it checked, with header.a since 2.11.
    for alg, sel in (("ed25519-sha256", "ed1"), ("rsa-sha256", "rsa1")):
        assert f"header.d={DOMAIN}" in text and f"header.s={sel}" in text, text
        assert f"header.a={alg}" in text, text
    assert text.count("dkim=pass") == 2, text
    assert "dkim=fail" not in text, text
