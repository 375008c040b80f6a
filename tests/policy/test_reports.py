"""DMARC aggregate reports without a server: verdicts from the real checker (dict DNS) into
the recorder, the XML against RFC 7489 appendix C, the message (file name, subject, gzip),
and ``send_due`` over a real SQLite store: consent (RFC 7489 7.1), size limits, deferral on
DNS failure, the settle delay, and once-only sending.

The same path over real sockets (a running server, its queue, an SMTP sink) is
``tests/e2e/test_dmarc_reports.py``.
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

from postroom.admin.auth_ops import dkim_generate
from postroom.config import AuthChecksSettings
from postroom.policy import dkim
from postroom.policy.dmarc import parse_uri, report_addresses
from postroom.policy.dns import SERVFAIL, DictResolver
from postroom.policy.inbound import AuthChecker
from postroom.policy.reports import (
    DAY,
    SETTLE_SECONDS,
    DmarcRecorder,
    compose_message,
    compose_xml,
    send_due,
)
from postroom.policy.signing import Signer
from postroom.store.api import DmarcRow
from postroom.store.sqlite import open_store
from support.dmarc_report import check_feedback, report_parts

DAY1 = 20000 * DAY  # a UTC midnight (2024-10-04)


def _msg(from_addr: str, subject: str = "hello") -> bytes:
    return (f"From: <{from_addr}>\r\nTo: <bob@here.test>\r\nSubject: {subject}\r\n"
            "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\nHello.\r\n").encode()


def _row(**kw: Any) -> DmarcRow:
    base: dict[str, Any] = dict(
        period=DAY1, policy_domain="ext.test", header_from="ext.test", source_ip="192.0.2.1",
        envelope_from="ext.test", disposition="none", dkim="pass", spf="fail",
        dkim_results="ext.test/s1/pass other.test/x/fail", spf_result="ext.test/mfrom/softfail",
        reason="", policy="p=none sp=none adkim=r aspf=r pct=100 fo=0",
        rua="mailto:dmarc@reports.test",
    )
    base.update(kw)
    return DmarcRow(**base)


def test_recorder_rows_from_real_verdicts() -> None:
    """pass, fail+p=reject, fail sampled out by pct=0, fail for a trusted forwarder, and a
    domain without a record (not recorded)."""
    rsa = dkim.generate_key("rsa")
    signer = dkim.PrivateKey("ext.test", "s1", "rsa", rsa)
    resolver = DictResolver({
        ("ext.test", "TXT"): ["v=spf1 ip4:192.0.2.1 -all"],
        ("s1._domainkey.ext.test", "TXT"): [dkim.public_record(rsa)],
        ("_dmarc.ext.test", "TXT"): ["v=DMARC1; p=reject; fo=1:d; rua=mailto:dmarc@reports.test!10m"],
        ("sampled.test", "TXT"): ["v=spf1 -all"],
        ("_dmarc.sampled.test", "TXT"): ["v=DMARC1; p=quarantine; pct=0; rua=mailto:d@sampled.test"],
        ("nopolicy.test", "TXT"): ["v=spf1 -all"],
    })
    settings = AuthChecksSettings(trusted_forwarders=("198.51.100.0/24",))
    checker = AuthChecker(resolver, settings, "mx.here.test")
    recorder = DmarcRecorder(types.SimpleNamespace(), clock=lambda: DAY1 + 3600)

    async def run() -> None:
        signed = _msg("a@ext.test")
        signed = dkim.sign(signed, signer) + signed
        cases = [
            (signed, "192.0.2.1", "a@ext.test"),  # pass (DKIM and SPF)
            (signed, "192.0.2.1", "a@ext.test"),  # the same row again: count 2
            (_msg("a@ext.test"), "203.0.113.9", "a@ext.test"),  # fail, p=reject
            (_msg("a@ext.test"), "198.51.100.7", ""),  # fail, trusted forwarder, HELO scope
            (_msg("n@sampled.test"), "203.0.113.9", "n@sampled.test"),  # fail, pct=0
            (_msg("n@nopolicy.test"), "203.0.113.9", "n@nopolicy.test"),  # no record
        ]
        for data, ip, mail_from in cases:
            verdict = await checker.check(data, ip=ip, helo="client.ext.test", mail_from=mail_from)
            recorder.add(verdict, ip, mail_from)

    asyncio.run(run())
    rows = sorted(recorder._pending.values(), key=lambda r: (r.policy_domain, r.source_ip))
    assert [(r.policy_domain, r.source_ip, r.count, r.disposition, r.dkim, r.spf, r.reason) for r in rows] == [
        ("ext.test", "192.0.2.1", 2, "none", "pass", "pass", ""),
        ("ext.test", "198.51.100.7", 1, "none", "fail", "fail", "trusted_forwarder"),
        ("ext.test", "203.0.113.9", 1, "reject", "fail", "fail", ""),
        ("sampled.test", "203.0.113.9", 1, "none", "fail", "fail", "sampled_out"),
    ]
    assert all(r.period == DAY1 for r in rows)
    first = rows[0]
    assert first.dkim_results == "ext.test/s1/pass" and first.spf_result == "ext.test/mfrom/pass"
    assert "fo=1:d" in first.policy and first.rua == "mailto:dmarc@reports.test!10m"
    assert rows[1].spf_result == "client.ext.test/helo/none" and rows[1].envelope_from == "client.ext.test"


def test_report_uris_and_size_limits() -> None:
    assert parse_uri("mailto:a@x.org!10m") == ("a@x.org", 10 << 20)
    assert parse_uri(" mailto:a@x.org!512 ") == ("a@x.org", 512)
    assert parse_uri("mailto:a@x.org!2k") == ("a@x.org", 2048)
    assert parse_uri("mailto:a@x.org!lots") is None
    assert parse_uri("https://x.org/report") is None
    assert report_addresses("mailto:a@x.org, https://x, mailto:b@y.org!1g") == [
        ("a@x.org", None), ("b@y.org", 1 << 30)]


def test_xml_follows_appendix_c() -> None:
    rows = [
        _row(),
        _row(source_ip="2001:db8::1", count=7, disposition="quarantine", dkim="fail",
             dkim_results="", reason="sampled_out", spf_result="bad<&>.test/helo/permerror",
             envelope_from="bad<&>.test"),
    ]
    xml = compose_xml(rows, org_name="Example & Co", email_addr="postmaster@here.test",
                      report_id="R1@mx.here.test", begin=DAY1, end=DAY1 + DAY - 1)
    root = check_feedback(xml)
    assert root.findtext("version") == "1.0"
    meta = root.find("report_metadata")
    assert meta is not None and meta.findtext("org_name") == "Example & Co"
    assert meta.findtext("date_range/begin") == str(DAY1)
    assert meta.findtext("date_range/end") == str(DAY1 + DAY - 1)
    policy = root.find("policy_published")
    assert policy is not None
    assert [(c.tag, c.text) for c in policy] == [
        ("domain", "ext.test"), ("adkim", "r"), ("aspf", "r"), ("p", "none"), ("sp", "none"),
        ("pct", "100"), ("fo", "0")]
    records = root.findall("record")
    assert [r.findtext("row/count") for r in records] == ["1", "7"]
    assert [d.findtext("domain") for d in records[0].findall("auth_results/dkim")] == ["ext.test", "other.test"]
    assert records[1].findall("auth_results/dkim") == []
    assert records[1].findtext("row/policy_evaluated/reason/type") == "sampled_out"
    assert records[1].findtext("identifiers/envelope_from") == "bad<&>.test"
    # A row from before fo= was recorded (older rows) still gives a valid report.
    check_feedback(compose_xml([_row(policy="p=reject sp=reject adkim=s aspf=r pct=50")],
                               org_name="o", email_addr="e@x", report_id="r", begin=0, end=1))


def test_message_name_subject_and_attachment() -> None:
    data = compose_message([_row()], org_name="Example Org", sender="postmaster@here.test",
                           recipients=["dmarc@reports.test"], hostname="mx.here.test",
                           begin=DAY1, end=DAY1 + DAY - 1, now=DAY1 + DAY + 600)
    msg, filename, xml = report_parts(data)
    assert filename == f"mx.here.test!ext.test!{DAY1}!{DAY1 + DAY - 1}.xml.gz"
    subject = str(msg["Subject"])
    assert subject.startswith("Report Domain: ext.test Submitter: mx.here.test Report-ID: <")
    report_id = subject.rpartition("<")[2].rstrip(">")
    root = check_feedback(xml)
    assert root.findtext("report_metadata/report_id") == report_id
    assert root.findtext("report_metadata/email") == "postmaster@here.test"
    assert str(msg["To"]) == "dmarc@reports.test" and msg["Message-ID"]
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")


def test_send_due_consent_limits_deferral_and_once(tmp_path: Path) -> None:
    resolver = DictResolver({
        # ext.test's reports go to another organization, which consents.
        ("ext.test._report._dmarc.reports.test", "TXT"): ["v=DMARC1"],
        # elsewhere.test does not consent to reports about noconsent.test.
        ("elsewhere.test", "TXT"): ["unrelated"],
        # the consent lookup for flaky.test fails: try again next time.
        ("flaky.test._report._dmarc.reports.test", "TXT"): SERVFAIL,
    })

    async def run() -> None:
        store = open_store(tmp_path / "data", fsync=False)
        try:
            await dkim_generate(store, "here.test", algorithm="ed25519", selector="ed1", now=0)
            settings = types.SimpleNamespace(
                hostname="mx.here.test", auth_checks=AuthChecksSettings(report_org="Here"),
            )
            services = types.SimpleNamespace(settings=settings, store=store, resolver=resolver,
                                             signer=Signer(store))
            await store.dmarc_add([
                _row(),
                _row(source_ip="192.0.2.2", rua="mailto:dmarc@reports.test,mailto:tiny@reports.test!100"),
                _row(policy_domain="same.test", header_from="a.same.test", rua="mailto:agg@same.test"),
                _row(policy_domain="noconsent.test", rua="mailto:agg@elsewhere.test"),
                _row(policy_domain="flaky.test", rua="mailto:dmarc@reports.test"),
                _row(period=DAY1 + DAY),  # today, at the first run
            ])
            ended = DAY1 + DAY
            # Just after midnight, recorders may still flush: nothing is sent yet.
            assert await send_due(services, now=ended + 10) == []
            outcomes = await send_due(services, now=ended + SETTLE_SECONDS + 1)
            status = {o.domain: (o.status, o.recipients, o.refused) for o in outcomes}
            assert status == {
                "ext.test": ("queued", ["dmarc@reports.test"], [status["ext.test"][2][0]]),
                "same.test": ("queued", ["agg@same.test"], []),
                "noconsent.test": ("dropped", [], [
                    "agg@elsewhere.test: no consent at noconsent.test._report._dmarc.elsewhere.test"]),
                "flaky.test": ("deferred", [], []),
            }
            assert status["ext.test"][2][0].startswith("tiny@reports.test: report of ")
            sent = [o.qid for o in outcomes if o.status == "queued"]
            queued = {q.qid: q for q in await store.queue_list()}
            assert sorted(queued) == sorted(sent) and len(sent) == 2
            by_rcpt = {q.recipients[0].address: q for q in queued.values()}
            assert sorted(by_rcpt) == ["agg@same.test", "dmarc@reports.test"]
            ext = by_rcpt["dmarc@reports.test"]
            # tiny@ asked for at most 100 bytes: left out, the report is bigger.
            assert [r.address for r in ext.recipients] == ["dmarc@reports.test"]
            assert ext.sender == "postmaster@here.test" and ext.recipients[0].notify == "NEVER"
            data = await store.read_blob(ext.blob_id)
            assert data.startswith(b"DKIM-Signature:") and b"d=here.test" in data[:400]
            _, filename, xml = report_parts(data)
            root = check_feedback(xml)
            assert filename == f"mx.here.test!ext.test!{DAY1}!{DAY1 + DAY - 1}.xml.gz"
            assert root.findtext("report_metadata/org_name") == "Here"
            assert sorted(r.findtext("row/source_ip") or "" for r in root.findall("record")) == [
                "192.0.2.1", "192.0.2.2"]
            assert ("ext.test._report._dmarc.reports.test", "TXT") in resolver.queries
            assert not any(n.endswith("_report._dmarc.same.test") for n, _ in resolver.queries)
            left = {(r.policy_domain, r.period) for r in await store.dmarc_pending(10**10)}
            # noconsent.test: dropped without a report; flaky.test: kept for the next run;
            # today's row: not due.
            assert left == {("flaky.test", DAY1), ("ext.test", DAY1 + DAY)}
            # Once per day: running again (a restart, the CLI) sends nothing more.
            again = await send_due(services, now=ended + SETTLE_SECONDS + 60)
            assert [(o.domain, o.status) for o in again] == [("flaky.test", "deferred")]
            # A week later the consent lookup still fails: the day is dropped.
            late = await send_due(services, now=DAY1 + 8 * DAY)
            assert sorted((o.domain, o.status) for o in late) == [("ext.test", "queued"), ("flaky.test", "dropped")]
            assert {r.policy_domain for r in await store.dmarc_pending(10**10)} == set()
            assert len(await store.queue_list()) == 3
        finally:
            await store.close()

    asyncio.run(run())
