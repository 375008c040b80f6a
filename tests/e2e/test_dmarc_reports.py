"""DMARC aggregate reports end to end: recorded by a running ``postroom serve`` from real
SMTP sessions on its MX, sent as reports through its queue to SMTP sinks.

A report covers a finished UTC day, so the server that receives the mail runs two days in
the past (libfaketime moves its wall clock, ``support.server.faketime``); the server that
sends runs at the real time. In order:

1. (two days ago) mail arrives on the MX from ``ext.test`` (reports to another
   organization, which consents with ``ext.test._report._dmarc.reports.test``), from
   ``bank.test`` (``p=reject``: refused, and still counted) and from ``noconsent.test``
   (reports to an organization that did not consent); the server stops, flushing its counts;
2. (now) ``postroom dmarc send-reports`` queues the reports while the server runs; its queue
   delivers them to the sinks: each one DKIM-signed (dkimpy verifies), with the RFC 7489
   subject and file name, gzipped XML valid against appendix C with the right rows and date
   range; nothing goes to the address that did not consent; a second run sends nothing;
3. (two days ago) mail from ``loop.test``; (now) the server's own daily run, with a 1 s
   interval, sends its report once: not again at the next runs, not again after a restart.
"""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest

from postroom.policy.reports import DAY
from support.capture import Behaviour, Capture, Received
from support.dmarc_report import check_feedback, report_parts
from support.dns_server import DnsServer
from support.mail_auth import Remote, dns_txt_lookup, generate_keys
from support.outbound import wait
from support.server import Server, faketime

DOMAIN = "example.test"
HOST = f"mail.{DOMAIN}"
BOB = f"bob@{DOMAIN}"
SINKS = {"reports.test": "127.0.0.61", "bank.test": "127.0.0.62", "elsewhere.test": "127.0.0.63"}
PAST = faketime("-2d")


def _config(dns: DnsServer, capture: Capture, interval: str) -> str:
    return (
        f'[outbound]\nresolver = "{dns.address}"\nport = {capture.port}\n'
        'queue_poll_interval = "1s"\n'
        f'[auth_checks]\ntimeout = "5s"\nreport_interval = "{interval}"\n'
    )


def _msg(from_addr: str, subject: str) -> bytes:
    return (f"From: <{from_addr}>\r\nTo: <{BOB}>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@x>\r\n"
            "\r\nHello.\r\n").encode()


def _mx(srv: Server, sender: str, msg: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", srv.ports["mx"], local_hostname="client.test", timeout=30) as s:
        try:
            s.sendmail(sender, [BOB], msg)
        except smtplib.SMTPDataError as e:
            return e.smtp_code
    return 250


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("dmarc")
    dns = DnsServer().start()
    capture = Capture(tuple(SINKS.values()), default=Behaviour(starttls=False))
    capture.start()
    for domain, address in SINKS.items():
        dns.set(domain, "MX", [(10, f"mx.{domain}")])
        dns.set(f"mx.{domain}", "A", [address])
    srv = Server(root, roles=("mx",), hostname=HOST, extra=_config(dns, capture, "1h"))
    srv.add_user(BOB)
    generate_keys(srv, DOMAIN, dns)
    try:
        yield {"srv": srv, "dns": dns, "capture": capture, "root": root}
    finally:
        srv.stop()
        capture.stop()
        dns.stop()


def _receive_in_the_past(srv: Server, sends: list[tuple[str, bytes, int]]) -> int:
    """Run the server two days ago, send each (sender, message, expected code), stop (the
    recorder flushes its counts at shutdown). Returns the day's start (the report period)."""
    srv.start(env=PAST)
    try:
        for sender, msg, code in sends:
            assert _mx(srv, sender, msg) == code, sender
    finally:
        assert srv.stop() == 0
    pending = srv.admin(lambda admin, store: store.dmarc_pending(10**11))
    assert pending, "nothing recorded"
    periods = {r.period for r in pending}
    assert len(periods) == 1 and (time.time() - 3 * DAY) < periods.pop() < (time.time() - DAY)
    return pending[0].period


def _check_report(data: bytes, dns: DnsServer, domain: str, period: int) -> Any:
    """DKIM, subject, file name, XML structure; returns the XML root."""
    assert dkimpy.DKIM(data).verify(dnsfunc=dns_txt_lookup(dns)), "report's DKIM signature fails"
    msg, filename, xml = report_parts(data)
    assert str(msg["From"]) == f"postmaster@{DOMAIN}"
    assert str(msg["Subject"]).startswith(f"Report Domain: {domain} Submitter: {HOST} Report-ID: <")
    assert filename == f"{HOST}!{domain}!{period}!{period + DAY - 1}.xml.gz"
    root = check_feedback(xml)
    assert root.findtext("report_metadata/date_range/begin") == str(period)
    assert root.findtext("report_metadata/date_range/end") == str(period + DAY - 1)
    assert root.findtext("report_metadata/email") == f"postmaster@{DOMAIN}"
    assert root.findtext("policy_published/domain") == domain
    return root


def test_reports_recorded_on_mx_sent_by_cli_through_the_queue(env: dict[str, Any]) -> None:
    srv, dns, capture = env["srv"], env["dns"], env["capture"]
    ext = Remote(dns, "ext.test", dmarc="v=DMARC1; p=none; rua=mailto:dmarc@reports.test",
                 spf="v=spf1 ip4:127.0.0.1 -all")
    dns.set("ext.test._report._dmarc.reports.test", "TXT", ["v=DMARC1"])
    Remote(dns, "bank.test", dmarc="v=DMARC1; p=reject; rua=mailto:dmarc@bank.test", spf="v=spf1 -all")
    Remote(dns, "noconsent.test", dmarc="v=DMARC1; p=none; rua=mailto:agg@elsewhere.test",
           spf="v=spf1 ip4:127.0.0.1 -all")
    sends = [("news@ext.test", ext.sign(_msg("news@ext.test", f"ext {i}")), 250) for i in range(3)]
    sends += [
        ("bounce@other.test", _msg("ceo@ext.test", "forged ext"), 250),  # DMARC fail, p=none
        ("ceo@bank.test", _msg("ceo@bank.test", "forged bank"), 550),  # p=reject
        ("x@noconsent.test", _msg("x@noconsent.test", "no consent"), 250),
    ]
    period = _receive_in_the_past(srv, sends)

    srv.start()
    try:
        first = srv.cli("dmarc", "send-reports", "--json")
        assert first.returncode == 0, first.stderr
        queued = json.loads(first.stdout)["queued"]
        assert len(queued) == 2, queued  # ext.test and bank.test; noconsent.test refused
        again = srv.cli("dmarc", "send-reports", "--json")
        assert json.loads(again.stdout)["queued"] == []
        ext_mail = wait(lambda: capture.arrived(SINKS["reports.test"]), 30)
        bank_mail = wait(lambda: capture.arrived(SINKS["bank.test"]), 30)
        wait(lambda: not srv.queue() or None, 30)
    finally:
        srv.stop()
    assert capture.arrived(SINKS["elsewhere.test"]) == []
    reports = {r["domain"]: r for r in json.loads(first.stdout)["reports"]}
    assert reports["noconsent.test"]["status"] == "dropped", reports
    assert reports["noconsent.test"]["refused"] == [
        "agg@elsewhere.test: no consent at noconsent.test._report._dmarc.elsewhere.test"]
    assert reports["ext.test"]["recipients"] == ["dmarc@reports.test"]
    assert "Traceback" not in srv.logs(), srv.logs()
    assert len(ext_mail) == 1 and len(bank_mail) == 1
    assert ext_mail[0].mail_from == f"postmaster@{DOMAIN}"
    assert ext_mail[0].recipients == ["dmarc@reports.test"]

    root = _check_report(ext_mail[0].data, dns, "ext.test", period)
    assert root.findtext("policy_published/p") == "none"
    rows = {(r.findtext("row/policy_evaluated/dkim"), r.findtext("row/policy_evaluated/spf")):
            r for r in root.findall("record")}
    assert set(rows) == {("pass", "pass"), ("fail", "fail")}
    good, forged = rows[("pass", "pass")], rows[("fail", "fail")]
    assert good.findtext("row/count") == "3" and good.findtext("row/source_ip") == "127.0.0.1"
    assert good.findtext("identifiers/header_from") == "ext.test"
    assert good.findtext("identifiers/envelope_from") == "ext.test"
    assert [(d.findtext("domain"), d.findtext("selector"), d.findtext("result"))
            for d in good.findall("auth_results/dkim")] == [("ext.test", "rsa", "pass")]
    assert good.findtext("auth_results/spf/result") == "pass"
    assert good.findtext("auth_results/spf/scope") == "mfrom"
    assert forged.findtext("row/count") == "1"
    assert forged.findtext("row/policy_evaluated/disposition") == "none"
    assert forged.findtext("identifiers/envelope_from") == "other.test"

    bank = _check_report(bank_mail[0].data, dns, "bank.test", period)
    [record] = bank.findall("record")
    assert record.findtext("row/policy_evaluated/disposition") == "reject"
    assert record.findtext("auth_results/spf/result") == "fail"
    assert srv.admin(lambda admin, store: store.dmarc_pending(10**11)) == []


def test_daily_run_sends_once_and_not_again_after_a_restart(env: dict[str, Any]) -> None:
    srv, dns, capture = env["srv"], env["dns"], env["capture"]
    sender = Remote(dns, "loop.test", dmarc="v=DMARC1; p=quarantine; rua=mailto:loop@reports.test",
                    spf="v=spf1 ip4:127.0.0.1 -all")
    dns.set("loop.test._report._dmarc.reports.test", "TXT", ["v=DMARC1; "])
    before = len(capture.arrived(SINKS["reports.test"]))
    period = _receive_in_the_past(srv, [("a@loop.test", sender.sign(_msg("a@loop.test", "loop")), 250)])

    srv.config.write_text(srv.config.read_text().replace('report_interval = "1h"', 'report_interval = "1s"'))

    def loop_reports() -> list[Received]:
        return [m for m in capture.arrived(SINKS["reports.test"]) if m.recipients == ["loop@reports.test"]]

    srv.start()
    try:
        got = wait(loop_reports, 30)
        time.sleep(3)  # three more runs of the 1 s schedule
        assert len(loop_reports()) == 1
    finally:
        srv.stop()
    srv.start()  # a restart runs the schedule again from the start
    try:
        time.sleep(3)
        assert len(loop_reports()) == 1
        assert not srv.queue()
    finally:
        srv.stop()
    assert srv.logs().count("dmarc_report_sent") == 1  # loop.test (the CLI sent the others)
    assert "Traceback" not in srv.logs(), srv.logs()
    assert len(capture.arrived(SINKS["reports.test"])) == before + 1
    root = _check_report(got[0].data, dns, "loop.test", period)
    assert root.findtext("policy_published/p") == "quarantine"
    assert root.findtext("record/row/policy_evaluated/dkim") == "pass"
