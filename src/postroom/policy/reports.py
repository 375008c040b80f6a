"""DMARC aggregate reports (RFC 7489 7.2, appendix C): record, compose, send.

Theory of operation
-------------------
* :class:`DmarcRecorder` counts, in memory, every DMARC evaluation of a domain that has a
  record, keyed by the report's row identity (source address, disposition, results), and
  writes the counts to the store (``dmarc_add``) every ``FLUSH_SECONDS`` and at shutdown,
  in one write: a message costs a dict update, not a database commit. A crash loses at most
  that many seconds of statistics, never mail.
* :func:`compose_xml` turns the rows of one policy domain and one UTC day into the XML of
  RFC 7489 appendix C; :func:`compose_message` gzips it into a MIME message (RFC 7489
  7.2.1.1 names the file and the subject).
* :func:`send_due` runs every ``auth_checks.report_interval`` (and ``postroom dmarc
  send-reports``): for each domain and day that ended at least ``SETTLE_SECONDS`` ago (so
  every server flushed its counts of that day), it checks the ``rua`` addresses (an address
  outside the policy domain's organizational domain must consent with a ``_report._dmarc``
  TXT record, RFC 7489 7.1; an address's size limit ``!10m`` is honoured), DKIM-signs the
  report and queues it in the same transaction that deletes the day's rows
  (``Store.dmarc_delete(report=...)``). A day is therefore reported once: not twice after a
  restart or a crash, and not twice when the CLI and the server run at the same moment.
"""

from __future__ import annotations

import datetime
import email.utils
import gzip
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from postroom import deliver, logs
from postroom.policy import dmarc
from postroom.policy.dns import DnsError, DnsTemporary, Resolver
from postroom.policy.recording import DAY, FLUSH_SECONDS, BatchRecorder, day_start, run_daily
from postroom.store.api import Delivery, DmarcRow, NewQueueEntry, QueueRecipient, Store

log = logging.getLogger("postroom.dmarc")

# A day is reported this long after it ended: every recorder has flushed it by then.
SETTLE_SECONDS = 3 * FLUSH_SECONDS
MAX_REPORT_AGE = 7 * DAY  # a day whose consent lookups keep failing is dropped after this
REPORT_VERSION = "1.0"  # feedback/version (RFC 7489 appendix C)


class DmarcRecorder(BatchRecorder[DmarcRow]):
    def __init__(self, store: Store, *, clock: Any = time.time) -> None:
        super().__init__(lambda rows: store.dmarc_add(rows), log, "DMARC statistics")
        self.store = store
        self.clock = clock

    def add(self, verdict: Any, source_ip: str, mail_from: str) -> None:
        """Count one evaluation (``verdict``: a ``policy.inbound.AuthVerdict``)."""
        dm = verdict.dmarc
        if dm.record is None or dm.result not in ("pass", "fail"):
            return
        disposition = "none" if verdict.override or dm.result == "pass" else dm.applied
        dkim_results = " ".join(f"{d.domain}/{d.selector}/{d.result}" for d in verdict.dkim if d.domain)
        scope = "mfrom" if mail_from else "helo"
        row = DmarcRow(
            period=day_start(self.clock()), policy_domain=dm.policy_domain, header_from=dm.domain,
            source_ip=source_ip, envelope_from=(mail_from.rpartition("@")[2] or verdict.spf.domain).lower(),
            disposition=disposition, dkim="pass" if dm.dkim_aligned else "fail",
            spf="pass" if dm.spf_aligned else "fail", dkim_results=dkim_results,
            spf_result=f"{verdict.spf.domain}/{scope}/{verdict.spf.result}",
            reason=override_reason(verdict), policy=dm.record.tags(),
            rua=dm.record.raw_rua or ",".join(dm.record.rua),
        )
        key = tuple(getattr(row, f) for f in (
            "period", "policy_domain", "header_from", "source_ip", "envelope_from", "disposition",
            "dkim", "spf", "dkim_results", "spf_result", "reason",
        ))
        self.count(key, row)


def override_reason(verdict: Any) -> str:
    """RFC 7489 appendix C ``PolicyOverrideType`` for a failure whose policy was not (fully)
    applied: a trusted forwarder, our enforcement switched off, or ``pct=`` sampling."""
    dm = verdict.dmarc
    if verdict.override == "trusted_forwarder":
        return "trusted_forwarder"
    if verdict.override:
        return "local_policy"
    if dm.result == "fail" and dm.applied != dm.policy:
        return "sampled_out"
    return ""


# --- the report (RFC 7489 appendix C) ----------------------------------------------------


def _policy_tags(policy: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in policy.split() if "=" in p)


def compose_xml(
    rows: Sequence[DmarcRow], *, org_name: str, email_addr: str, report_id: str, begin: int, end: int
) -> bytes:
    """The aggregate report of one policy domain (rows share ``policy_domain``)."""
    first = rows[0]
    tags = _policy_tags(first.policy)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<feedback>",
        f"  <version>{REPORT_VERSION}</version>",
        "  <report_metadata>",
        f"    <org_name>{escape(org_name)}</org_name>",
        f"    <email>{escape(email_addr)}</email>",
        f"    <report_id>{escape(report_id)}</report_id>",
        f"    <date_range><begin>{begin}</begin><end>{end}</end></date_range>",
        "  </report_metadata>",
        "  <policy_published>",
        f"    <domain>{escape(first.policy_domain)}</domain>",
        f"    <adkim>{escape(tags.get('adkim', 'r'))}</adkim>",
        f"    <aspf>{escape(tags.get('aspf', 'r'))}</aspf>",
        f"    <p>{escape(tags.get('p', 'none'))}</p>",
        f"    <sp>{escape(tags.get('sp', tags.get('p', 'none')))}</sp>",
        f"    <pct>{escape(tags.get('pct', '100'))}</pct>",
        f"    <fo>{escape(tags.get('fo', '0'))}</fo>",
        "  </policy_published>",
    ]
    for r in rows:
        out += [
            "  <record>",
            "    <row>",
            f"      <source_ip>{escape(r.source_ip)}</source_ip>",
            f"      <count>{r.count}</count>",
            "      <policy_evaluated>",
            f"        <disposition>{escape(r.disposition)}</disposition>",
            f"        <dkim>{escape(r.dkim)}</dkim>",
            f"        <spf>{escape(r.spf)}</spf>",
        ]
        if r.reason:
            out.append(f"        <reason><type>{escape(r.reason)}</type></reason>")
        out += [
            "      </policy_evaluated>",
            "    </row>",
            "    <identifiers>",
            f"      <envelope_from>{escape(r.envelope_from)}</envelope_from>",
            f"      <header_from>{escape(r.header_from)}</header_from>",
            "    </identifiers>",
            "    <auth_results>",
        ]
        for item in r.dkim_results.split():
            domain, _, rest = item.partition("/")
            selector, _, result = rest.rpartition("/")
            out.append(
                f"      <dkim><domain>{escape(domain)}</domain><selector>{escape(selector)}</selector>"
                f"<result>{escape(result)}</result></dkim>"
            )
        sdomain, _, rest = r.spf_result.partition("/")
        scope, _, sresult = rest.partition("/")
        out += [
            f"      <spf><domain>{escape(sdomain)}</domain><scope>{escape(scope)}</scope>"
            f"<result>{escape(sresult)}</result></spf>",
            "    </auth_results>",
            "  </record>",
        ]
    out.append("</feedback>")
    return ("\r\n".join(out) + "\r\n").encode()


def report_filename(receiver: str, domain: str, begin: int, end: int) -> str:
    """RFC 7489 7.2.1.1 (with erratum 7099): ``receiver!policy-domain!begin!end.xml.gz``."""
    return f"{receiver}!{domain}!{begin}!{end}.xml.gz"


def compose_message(
    rows: Sequence[DmarcRow], *, org_name: str, sender: str, recipients: Sequence[str],
    hostname: str, begin: int, end: int, now: float,
) -> bytes:
    """RFC 7489 7.2.1.1: a MIME message with the gzipped XML attached as application/gzip.
    The subject and file name name the receiver by its domain (our host name); the
    report's ``org_name`` may be any text (``auth_checks.report_org``)."""
    import base64

    domain = rows[0].policy_domain
    report_id = f"{deliver.new_id()}@{hostname}"
    xml = compose_xml(rows, org_name=org_name, email_addr=sender, report_id=report_id, begin=begin, end=end)
    filename = report_filename(hostname, domain, begin, end)
    payload = base64.encodebytes(gzip.compress(xml, mtime=0)).replace(b"\n", b"\r\n")
    boundary = f"=_dmarc_{deliver.new_id()}"
    head = (
        f"From: <{sender}>\r\n"
        f"To: {', '.join('<' + r + '>' for r in recipients)}\r\n"
        f"Subject: Report Domain: {domain} Submitter: {hostname} Report-ID: <{report_id}>\r\n"
        f"Date: {email.utils.formatdate(now, localtime=False)}\r\n"
        f"Message-ID: <{deliver.new_id()}@{hostname}>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
    )
    text = (
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"DMARC aggregate report for {domain} from {hostname} ({_day(begin)}).\r\n\r\n"
        f'--{boundary}\r\nContent-Type: application/gzip; name="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n'
    )
    return head.encode() + text.encode() + payload + f"\r\n--{boundary}--\r\n".encode()


@dataclass
class ReportOutcome:
    """What happened to the report of one policy domain and day (``send_due``)."""

    domain: str
    day: str  # YYYY-MM-DD (UTC)
    status: str  # "queued" | "deferred" (DNS failure: next run) | "dropped" (nobody to send to)
    qid: str = ""
    recipients: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "address: why"
    rows: int = 0


async def _consenting(
    resolver: Resolver | None, policy_domain: str, rua: Sequence[tuple[str, int | None]],
    refused: list[str],
) -> list[tuple[str, int | None]]:
    """The rua addresses we may send to (RFC 7489 7.1 external destination check); the
    others are added to ``refused``. A temporary DNS failure raises DnsTemporary."""
    out: list[tuple[str, int | None]] = []
    for address, limit in rua:
        name = dmarc.verify_external_destination(policy_domain, "mailto:" + address)
        if name is not None:
            if resolver is None:
                refused.append(f"{address}: no resolver for the consent check")
                continue
            try:
                rows = await resolver.txt(name)
            except DnsTemporary:
                raise  # ask again at the next run rather than drop the report
            except DnsError:
                rows = []
            if not any(r.decode("ascii", "replace").replace(" ", "").startswith("v=DMARC1") for r in rows):
                logs.event(log, "dmarc_rua_refused", domain=policy_domain, rua=address)
                refused.append(f"{address}: no consent at {name}")
                continue
        out.append((address, limit))
    return out


async def send_due(services: Any, *, now: float | None = None) -> list[ReportOutcome]:
    """Queue the report of every (policy domain, day) that is due; one outcome each."""
    settings = services.settings
    store: Store = services.store
    now = time.time() if now is None else now
    rows = await store.dmarc_pending(day_start(now - SETTLE_SECONDS))
    groups: dict[tuple[str, int], list[DmarcRow]] = {}
    for r in rows:
        groups.setdefault((r.policy_domain, r.period), []).append(r)
    host = settings.hostname
    sender = settings.auth_checks.report_from or f"postmaster@{host.partition('.')[2] or host}"
    org = settings.auth_checks.report_org or host
    outcomes: list[ReportOutcome] = []
    for (domain, period), group in groups.items():
        outcome = ReportOutcome(domain, _day(period), "dropped", rows=len(group))
        outcomes.append(outcome)
        rua = dmarc.report_addresses(group[-1].rua)
        try:
            allowed = await _consenting(services.resolver, domain, rua, outcome.refused)
        except DnsTemporary:
            if now - period < MAX_REPORT_AGE:
                logs.event(log, "dmarc_report_deferred", domain=domain, day=outcome.day)
                outcome.status, outcome.refused = "deferred", []
                continue
            allowed = []
        report: Delivery | None = None
        qid = deliver.new_id()
        if allowed:
            data = compose_message(
                group, org_name=org, sender=sender, recipients=[a for a, _ in allowed],
                hostname=host, begin=period, end=period + DAY - 1, now=now,
            )
            if services.signer is not None:
                data = await services.signer.sign(data, sender.rpartition("@")[2]) + data
            # RFC 7489 6.2: never send a report larger than an address's size limit.
            for address, limit in allowed:
                if limit is not None and len(data) > limit:
                    logs.event(log, "dmarc_report_too_big", domain=domain, rua=address, size=len(data))
                    outcome.refused.append(f"{address}: report of {len(data)} bytes over its limit {limit}")
                else:
                    outcome.recipients.append(address)
            if outcome.recipients:
                report = Delivery(data=data, summary=b"", queue=NewQueueEntry(
                    qid=qid, sender=sender,
                    recipients=tuple(QueueRecipient(r, notify="NEVER") for r in outcome.recipients),
                ))
        deleted = await store.dmarc_delete(domain, period, report=report)
        if report is not None and deleted:
            outcome.status, outcome.qid = "queued", qid
            logs.event(log, "dmarc_report_sent", domain=domain, day=outcome.day, id=qid,
                       to=",".join(outcome.recipients), rows=len(group))
        elif report is not None:
            outcome.recipients = []  # another sender got there first
    return outcomes


def _day(period: int) -> str:
    return datetime.datetime.fromtimestamp(period, datetime.UTC).strftime("%Y-%m-%d")


async def report_loop(services: Any) -> None:
    """Send due reports once per ``auth_checks.report_interval`` (``recording.run_daily``)."""
    await run_daily(lambda: send_due(services), services.settings.auth_checks.report_interval, log, "DMARC")
