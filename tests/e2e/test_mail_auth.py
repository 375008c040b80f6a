"""Mail authentication end to end: a real ``postroom serve`` with a local DNS server (dnslib).

* Submission: mail from a local user is DKIM-signed (Ed25519 and RSA) before the queue; the
  stored bytes verify with dkimpy and with OpenDKIM (``opendkim -t``, keys given by
  ``TestPublicKeys``), and with postroom's own verifier.
* MX: SPF, DKIM (signed by dkimpy, RSA and Ed25519), DMARC and ARC are checked; one
  Authentication-Results field is added and forged ones claiming our host name are removed;
  ``p=reject`` failures get 550 5.7.1, ``p=quarantine`` failures land in Junk; a trusted
  forwarder is let through.
* An alias forwarding to an external address: the queued copy carries an ARC set that
  dkimpy's ARC verifier accepts.
* Bad input: 100 signatures, a DNS timeout, an SPF include loop, a giant TXT record.
"""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest

from postroom.policy import dkim
from support.dns_server import DnsServer
from support.mail_auth import Remote, dns_txt_lookup, generate_keys
from support.server import PASSWORD, Server

DOMAIN = "example.test"
HOST = f"mail.{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def _msg(from_addr: str, to: str, subject: str, body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return (
        f"From: <{from_addr}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@x>\r\n"
        f"{extra}\r\n{body}"
    ).encode()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    dns = DnsServer().start()
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    root = tmp_path_factory.mktemp("auth")
    extra = (
        f'[outbound]\nresolver = "{dns.address}"\n'
        f'transport = {{ "remote.test" = "127.0.0.1:{refused.getsockname()[1]}" }}\n'
        '[auth_checks]\ntimeout = "3s"\ntrusted_forwarders = ["lists.trusted.test"]\n'
    )
    srv = Server(root, roles=("mx", "submission"), extra=extra, hostname=HOST)
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.admin(lambda admin, store: admin.alias_add(f"fwd@{DOMAIN}", ["someone@remote.test"]))
    keys = generate_keys(srv, DOMAIN, dns)
    srv.start()
    try:
        yield {"srv": srv, "dns": dns, "keys": keys, "root": root}
    finally:
        srv.stop()
        dns.stop()
        refused.close()


def _submit(srv: Server, msg: bytes, to: str) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
        s.starttls(context=srv.client_context())
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, [to], msg)


def _mx(srv: Server, sender: str, to: str, msg: bytes, helo: str = "client.test") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", srv.ports["mx"], local_hostname=helo, timeout=30) as s:
        try:
            s.sendmail(sender, [to], msg)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
    return 250, b""


def _last(srv: Server, user: str, mailbox: str = "INBOX") -> bytes:
    msgs = srv.messages(user, mailbox)
    assert msgs, f"nothing in {user} {mailbox}"
    return msgs[-1]


def _ar(data: bytes) -> str:
    """The Authentication-Results field postroom added (the first one), unfolded."""
    fields, _ = dkim.split_message(data)
    found = [raw for name, raw in fields if name == b"authentication-results"]
    assert found, data[:600]
    return found[0].decode().replace("\r\n\t", " ").replace("\r\n", "")


def _body_of_local_copy(data: bytes) -> bytes:
    """Stored local copies start with Return-Path and our Received: drop them for verifiers."""
    fields, body = dkim.split_message(data)
    keep = [raw for name, raw in fields if name not in (b"return-path", b"received")]
    return b"".join(keep) + b"\r\n" + body


# --- outbound signing -----------------------------------------------------------------


def test_submission_is_signed_and_verifies_in_dkimpy_opendkim_and_postroom(env: dict[str, Any]) -> None:
    srv, keys = env["srv"], env["keys"]
    _submit(srv, _msg(ALICE, BOB, "signed one"), BOB)
    stored = _body_of_local_copy(_last(srv, BOB))
    fields, body = dkim.split_message(stored)
    sigs = [i for i, (n, _) in enumerate(fields) if n == b"dkim-signature"]
    algs = sorted(dkim.parse_signature(fields[i][1])["a"] for i in sigs)
    assert algs == ["ed25519-sha256", "rsa-sha256"]
    for i in sigs:
        sig = dkim.prepare(fields, body, i)
        dkim.verify_prepared(sig, dkim.parse_key(keys[sig.key_name]))

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return keys.get(name.decode().rstrip("."), "").encode()

    # dkimpy checks the first signature by default; check each one by index.
    for idx in range(len(sigs)):
        assert dkimpy.DKIM(stored).verify(idx=idx, dnsfunc=dnsfunc), f"dkimpy rejects signature {idx}"

    opendkim = shutil.which("opendkim") or "/usr/sbin/opendkim"
    assert Path(opendkim).exists(), "opendkim missing: scripts/run-tests installs the Debian package"
    root: Path = env["root"]
    (root / "keys.txt").write_text("".join(f"{n} {t}\n" for n, t in keys.items()))
    (root / "opendkim.conf").write_text(
        f"Mode v\nTestPublicKeys {root / 'keys.txt'}\nSyslog no\n"
    )
    for i in sigs:  # OpenDKIM verifies the first signature it meets: one message per signature
        one = b"".join(raw for j, (n, raw) in enumerate(fields) if n != b"dkim-signature" or j == i)
        (root / f"signed{i}.eml").write_bytes(one + b"\r\n" + body)
        r = subprocess.run([opendkim, "-x", str(root / "opendkim.conf"), "-t", str(root / f"signed{i}.eml")],
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "verification" in out and "succeeded" in out, out


def test_submitted_header_replay_breaks_the_signature(env: dict[str, Any]) -> None:
    """Over-signing: a Subject: added in transit makes the signature fail."""
    srv, keys = env["srv"], env["keys"]
    _submit(srv, _msg(ALICE, BOB, "oversigned"), BOB)
    stored = _body_of_local_copy(_last(srv, BOB))
    tampered = b"Subject: added later\r\n" + stored
    fields, body = dkim.split_message(tampered)
    for i, (n, _) in enumerate(fields):
        if n == b"dkim-signature":
            sig = dkim.prepare(fields, body, i)
            with pytest.raises(dkim.DkimError):
                dkim.verify_prepared(sig, dkim.parse_key(keys[sig.key_name]))


# --- inbound checks -----------------------------------------------------------------------


def test_mx_passes_dkimpy_signed_mail_and_strips_forged_results(env: dict[str, Any]) -> None:
    srv, dns = env["srv"], env["dns"]
    sender = Remote(dns, "good.test", dmarc="v=DMARC1; p=reject", spf="v=spf1 ip4:127.0.0.1 -all")
    for alg in ("rsa", "ed25519"):
        forged = f"Authentication-Results: {HOST}; dkim=pass header.d=paypal.com\r\n" \
                 "Authentication-Results: elsewhere.test; spf=pass\r\n"
        msg = sender.sign(_msg("ceo@good.test", BOB, f"good {alg}", extra=forged), alg)
        assert _mx(srv, "ceo@good.test", BOB, msg)[0] == 250
        stored = _last(srv, BOB)
        ar = _ar(stored)
        assert ar.startswith(f"Authentication-Results: {HOST};"), ar
        assert "spf=pass" in ar and "dkim=pass" in ar and "header.d=good.test" in ar
        assert "dmarc=pass" in ar and "arc=none" in ar
        assert b"paypal.com" not in stored, "forged Authentication-Results kept"
        assert b"Authentication-Results: elsewhere.test" in stored


def test_dmarc_reject_is_refused_at_end_of_data(env: dict[str, Any]) -> None:
    srv, dns = env["srv"], env["dns"]
    Remote(dns, "bank.test", dmarc="v=DMARC1; p=reject; rua=mailto:d@bank.test", spf="v=spf1 -all")
    before = len(srv.messages(BOB))
    code, text = _mx(srv, "ceo@bank.test", BOB, _msg("ceo@bank.test", BOB, "forged"))
    assert code == 550 and b"5.7.1" in text or text.startswith(b"Rejected"), (code, text)
    assert len(srv.messages(BOB)) == before


def test_np_rejects_forged_nonexistent_subdomains(env: dict[str, Any]) -> None:
    """RFC 9091: the organization says sp=none for its real subdomains but np=reject for
    names that do not exist; forged mail from such a name is refused, from a real one not."""
    srv, dns = env["srv"], env["dns"]
    Remote(dns, "org.test", dmarc="v=DMARC1; p=none; sp=none; np=reject", spf="v=spf1 -all")
    dns.set("shop.org.test", "A", ["192.0.2.80"])
    code, text = _mx(srv, "x@invented.org.test", BOB, _msg("x@invented.org.test", BOB, "np forged"))
    assert code == 550 and b"5.7.1" in text, (code, text)
    assert _mx(srv, "x@shop.org.test", BOB, _msg("x@shop.org.test", BOB, "np real"))[0] == 250
    assert "dmarc=fail" in _ar(_last(srv, BOB))


def test_dmarc_quarantine_goes_to_junk(env: dict[str, Any]) -> None:
    srv, dns = env["srv"], env["dns"]
    Remote(dns, "shop.test", dmarc="v=DMARC1; p=quarantine", spf="v=spf1 ip4:192.0.2.1 -all")
    assert _mx(srv, "news@shop.test", BOB, _msg("news@shop.test", BOB, "junk me"))[0] == 250
    junk = _last(srv, BOB, "Junk")
    assert b"junk me" in junk and "dmarc=fail" in _ar(junk) and "spf=fail" in _ar(junk)


def test_trusted_forwarder_arc_is_not_rejected(env: dict[str, Any]) -> None:
    """A list that breaks SPF and DKIM but seals with ARC, and is in trusted_forwarders."""
    srv, dns = env["srv"], env["dns"]
    Remote(dns, "strict.test", dmarc="v=DMARC1; p=reject", spf="v=spf1 -all")
    lst = dkim.generate_key("rsa")
    dns.set("arc._domainkey.lists.trusted.test", "TXT", [dkim.public_record(lst)])
    msg = _msg("boss@strict.test", BOB, "via list")
    pem = dkim.private_pem(lst)
    arc_headers = dkimpy.arc_sign(
        b"Authentication-Results: lists.trusted.test; spf=pass smtp.mailfrom=strict.test\r\n" + msg,
        b"arc", b"lists.trusted.test", pem, b"lists.trusted.test",
    )
    sealed = b"".join(arc_headers).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + msg
    assert _mx(srv, "bounce@lists.trusted.test", BOB, sealed)[0] == 250
    ar = _ar(_last(srv, BOB))
    assert "arc=pass" in ar and "dmarc=fail" in ar, ar


def test_alias_forwarding_is_arc_sealed(env: dict[str, Any]) -> None:
    srv, dns, keys = env["srv"], env["dns"], env["keys"]
    sender = Remote(dns, "fan.test", dmarc="v=DMARC1; p=none", spf="v=spf1 ip4:127.0.0.1 -all")
    msg = sender.sign(_msg("me@fan.test", f"fwd@{DOMAIN}", "forward me"))
    assert _mx(srv, "me@fan.test", f"fwd@{DOMAIN}", msg)[0] == 250
    entries = [q for q in srv.queue() if any(r.address == "someone@remote.test" for r in q.recipients)]
    assert entries
    blob = srv.admin(lambda admin, store: store.read_blob(entries[-1].blob_id))
    assert b"ARC-Seal:" in blob and b"cv=none" in blob
    fields, body = dkim.split_message(blob)
    outgoing = b"".join(raw for n, raw in fields if n not in (b"received", b"return-path")) + b"\r\n" + body

    cv, _, reason = dkimpy.arc_verify(outgoing, dnsfunc=dns_txt_lookup(dns, keys))
    assert cv == b"pass", reason


# --- bad input never stalls ---------------------------------------------------------------


def test_bad_input_gets_clear_results_quickly(env: dict[str, Any]) -> None:
    srv, dns = env["srv"], env["dns"]
    dns.set("loop.test", "TXT", ["v=spf1 include:loop2.test -all"])
    dns.set("loop2.test", "TXT", ["v=spf1 include:loop.test -all"])
    dns.set("giant.test", "TXT", ["v=spf1 " + " ".join(f"ip4:10.0.{i // 250}.{i % 250}" for i in range(600)) + " -all"])
    dns.set("slow.test", "TXT", ["v=spf1 -all"])
    dns.slow.add("slow.test")
    dns.slow.add("_dmarc.slow.test")
    dns.delay = 5.0
    sig = "DKIM-Signature: v=1; a=rsa-sha256; d=x{i}.test; s=s; h=from; bh=AAAA; b=AAAA\r\n"
    many = "".join(sig.format(i=i) for i in range(100))
    cases = {
        "loop.test": ("spf=permerror", ""),
        "giant.test": ("spf=permerror", ""),
        "slow.test": ("spf=temperror", ""),
        "sigs.test": ("dkim=fail", many),
        "garbage.test": ("dkim=permerror", "DKIM-Signature: v=1; a=rsa-sha256; d==; ;;\r\n"),
    }
    try:
        for domain, (expected, extra) in cases.items():
            started = time.monotonic()
            code, _ = _mx(srv, f"x@{domain}", BOB, _msg(f"x@{domain}", BOB, f"bad {domain}", extra=extra))
            elapsed = time.monotonic() - started
            assert code == 250
            assert elapsed < 10, f"{domain} took {elapsed:.1f}s"
            ar = _ar(_last(srv, BOB))
            assert expected in ar, (domain, ar)
    finally:
        dns.slow.clear()


# --- postroom dns DOMAIN [--check] --------------------------------------------------------


def test_dns_records_check_and_a_checking_receiver_accepts(env: dict[str, Any]) -> None:
    import asyncio
    import json

    from postroom.config import AuthChecksSettings
    from postroom.policy.dns import make_resolver
    from postroom.policy.inbound import AuthChecker

    srv, dns = env["srv"], env["dns"]
    r = srv.cli("dns", DOMAIN, "--address", "127.0.0.1", "--json")
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    kinds = {rec["kind"] for rec in records}
    assert {"MX", "A", "SPF", "DKIM", "DMARC", "SRV", "PTR"} <= kinds, kinds
    assert any(rec["value"] == "v=spf1 mx -all" for rec in records)
    plain = srv.cli("dns", DOMAIN, "--address", "127.0.0.1")
    assert "IN MX 10 mail.example.test." in plain.stdout and "_dmarc.example.test." in plain.stdout

    check = srv.cli("dns", DOMAIN, "--address", "127.0.0.1", "--check", "--json")
    assert check.returncode == 3  # nothing published yet
    assert {v["status"] for v in json.loads(check.stdout) if v["kind"] == "MX"} == {"missing"}

    # Publish what `postroom dns` printed, as a user pasting it into a zone would.
    dns.publish(records)
    check = srv.cli("dns", DOMAIN, "--address", "127.0.0.1", "--check", "--json")
    verdicts = json.loads(check.stdout)
    assert check.returncode == 0, [(v["kind"], v["status"], v["detail"]) for v in verdicts if v["status"] != "correct"]
    assert {v["status"] for v in verdicts} == {"correct"}

    dns.set(DOMAIN, "TXT", ["v=spf1 ip4:192.0.2.7 -all"])
    check = srv.cli("dns", DOMAIN, "--address", "127.0.0.1", "--check")
    assert check.returncode == 3 and "WRONG    SPF" in check.stdout, check.stdout
    dns.set(DOMAIN, "TXT", ["v=spf1 mx -all"])

    # All green: mail alice submits passes SPF, DKIM and DMARC at a receiver that checks.
    _submit(srv, _msg(ALICE, BOB, "all green"), BOB)
    sent = _body_of_local_copy(_last(srv, BOB))

    async def receive() -> Any:
        host, port = dns.address.split(":")
        checker = AuthChecker(make_resolver((host, int(port))), AuthChecksSettings(), "mx.receiver.test")
        return await checker.check(sent, ip="127.0.0.1", helo=HOST, mail_from=ALICE)

    verdict = asyncio.run(receive())
    assert verdict.spf.result == "pass" and verdict.dmarc.result == "pass", verdict.header
    assert [d.result for d in verdict.dkim] == ["pass", "pass"], verdict.header
    assert verdict.action == "accept"


def test_dsn_is_signed(env: dict[str, Any]) -> None:
    srv = env["srv"]
    _submit(srv, _msg(ALICE, "nobody@remote.test", "will bounce"), "nobody@remote.test")
    entries = [q for q in srv.queue() if any(r.address == "nobody@remote.test" for r in q.recipients)]
    assert entries
    r = srv.cli("queue", "bounce", entries[-1].qid)
    assert r.returncode == 0, r.stderr
    dsn = _last(srv, ALICE)
    assert b"multipart/report" in dsn
    fields, _ = dkim.split_message(dsn)
    sigs = [dkim.parse_signature(raw) for n, raw in fields if n == b"dkim-signature"]
    assert {s["d"] for s in sigs} == {DOMAIN} and len(sigs) == 2
