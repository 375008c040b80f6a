"""TLS-RPT (RFC 8460) at run time: record outbound TLS results, send the daily reports,
take in the reports others send us.

Theory of operation
-------------------
* :class:`TlsRecorder` (the queue's side): every outbound session set-up adds one count,
  in memory, to the row of its recipient domain, applied policy (``sts``, ``tlsa`` or
  ``no-policy-found``) and UTC day: a success, or a failure with its RFC 8460 4.3 result
  type and where it happened (our address, the MX host and its address). The counts go
  to the store in batches (``policy.recording``), off the delivery path.
* :func:`send_due` runs every ``tls_reports.report_interval`` (and ``postroom tlsrpt
  send-reports``): for each domain and day that ended ``SETTLE_SECONDS`` ago, it looks up
  ``_smtp._tls.DOMAIN`` (RFC 8460 3). No record: the rows are dropped. A temporary DNS
  failure: tried again at the next run, for up to ``MAX_REPORT_AGE``. Otherwise the report
  (RFC 8460 4) goes to every ``mailto:`` address as one DKIM-signed mail, queued in the
  same transaction that deletes the day's rows (sent once, as DMARC reports are), and is
  then POSTed to every ``https:`` address (RFC 8460 5.2). The rows are gone by then, so a
  POST that fails (after ``HTTPS_ATTEMPTS`` tries) is logged and not repeated: we chose
  once-only over at-least-once so that a crash or a racing CLI never sends twice.
* :class:`TlsReportInbox` (the SMTP side): a message accepted for the configured
  ``tls_reports.address`` that looks like a report is parsed after the 250 (the message is
  in the mailbox already) and, when valid, stored for ``postroom tlsrpt list`` and the API.
  A malformed one stays an ordinary message; the log says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from postroom import deliver, logs
from postroom.policy import tlsrpt
from postroom.policy.dns import DnsError, DnsTemporary, Resolver
from postroom.policy.recording import DAY, FLUSH_SECONDS, BatchRecorder, day_start, run_daily
from postroom.store.api import Delivery, NewQueueEntry, QueueRecipient, Store, TlsReport, TlsResultRow

log = logging.getLogger("postroom.tlsrpt")

SETTLE_SECONDS = 3 * FLUSH_SECONDS  # every recorder has flushed a day this long after it ended
MAX_REPORT_AGE = 7 * DAY
HTTPS_TIMEOUT = 60.0
HTTPS_ATTEMPTS = 3
HTTPS_BACKOFF = 2.0  # seconds before the second try, doubled for the third
MAX_PARSING = 8  # reports parsed at once; more arriving meanwhile stay plain messages


@dataclass(frozen=True, slots=True)
class AppliedPolicy:
    """The policy a session was held to (RFC 8460 4.4 ``policy``)."""

    domain: str
    type: str = "no-policy-found"  # "sts" | "tlsa" | "no-policy-found"
    string: str = ""  # policy lines joined by "\n"
    mx_host: str = ""  # mx patterns / the MX host, joined by "\n"


class TlsRecorder(BatchRecorder[TlsResultRow]):
    def __init__(self, store: Store, *, clock: Any = time.time) -> None:
        super().__init__(lambda rows: store.tlsrpt_add(rows), log, "TLS-RPT results")
        self.clock = clock

    def success(self, policy: AppliedPolicy) -> None:
        self._add(policy, "", "", "", "", "")

    def failure(
        self, policy: AppliedPolicy, result_type: str, *, sending_ip: str = "", receiving_mx: str = "",
        receiving_ip: str = "", detail: str = "",
    ) -> None:
        self._add(policy, result_type, sending_ip, receiving_mx, receiving_ip, detail[:200])

    def _add(self, p: AppliedPolicy, result: str, sip: str, mx: str, rip: str, detail: str) -> None:
        if not p.domain:
            return
        row = TlsResultRow(
            period=day_start(self.clock()), policy_domain=p.domain.lower(), policy_type=p.type,
            policy_string=p.string, mx_host=p.mx_host, result_type=result, sending_ip=sip,
            receiving_mx=mx, receiving_ip=rip, detail=detail,
        )
        self.count((row.period, row.policy_domain, p.type, p.string, p.mx_host, result, sip, mx, rip, detail), row)


# --- sending --------------------------------------------------------------------------


@dataclass
class ReportOutcome:
    """What happened to the report of one policy domain and day (``send_due``)."""

    domain: str
    day: str  # YYYY-MM-DD (UTC)
    status: str  # "sent" | "deferred" (DNS failure: next run) | "dropped" (no rua) | "failed"
    qid: str = ""
    recipients: list[str] = field(default_factory=list)  # mailto: addresses queued
    posted: list[str] = field(default_factory=list)  # https: URIs that took it
    failed: list[str] = field(default_factory=list)  # "uri: why"
    rows: int = 0


def settings_of(services: Any) -> tuple[str, str, str]:
    """(sender, organization, contact) for our reports."""
    settings = services.settings
    own, dmarc = settings.tls_reports, settings.auth_checks
    host = settings.hostname
    sender = own.report_from or dmarc.report_from or f"postmaster@{host.partition('.')[2] or host}"
    org = own.report_org or dmarc.report_org or host
    return sender, org, own.report_contact or sender


async def _rua(resolver: Resolver | None, domain: str) -> tuple[str, ...] | None:
    """The domain's reporting URIs; None: it asks for none. DnsTemporary propagates."""
    if resolver is None:
        return None
    try:
        records = await resolver.txt(f"_smtp._tls.{domain}")
    except DnsTemporary:
        raise
    except DnsError:
        return None
    return tlsrpt.parse_record(records)


async def send_due(services: Any, *, now: float | None = None) -> list[ReportOutcome]:
    """Send the report of every (policy domain, day) that is due; one outcome each."""
    store: Store = services.store
    now = time.time() if now is None else now
    rows = await store.tlsrpt_pending(day_start(now - SETTLE_SECONDS))
    groups: dict[tuple[str, int], list[TlsResultRow]] = {}
    for r in rows:
        groups.setdefault((r.policy_domain, r.period), []).append(r)
    host = services.settings.hostname
    sender, org, contact = settings_of(services)
    outcomes: list[ReportOutcome] = []
    for (domain, period), group in groups.items():
        outcome = ReportOutcome(domain, tlsrpt._iso(period)[:10], "dropped", rows=len(group))
        outcomes.append(outcome)
        try:
            rua = await _rua(services.resolver, domain)
        except DnsTemporary:
            if now - period < MAX_REPORT_AGE:
                logs.event(log, "tlsrpt_report_deferred", domain=domain, day=outcome.day)
                outcome.status = "deferred"
                continue
            rua = None
        if not rua:
            await store.tlsrpt_delete(domain, period)
            continue
        await _send_one(services, outcome, group, rua, sender=sender, org=org, contact=contact,
                        host=host, period=period, now=now)
    return outcomes


async def _send_one(
    services: Any, outcome: ReportOutcome, group: Sequence[TlsResultRow], rua: Sequence[str], *,
    sender: str, org: str, contact: str, host: str, period: int, now: float,
) -> None:
    domain = outcome.domain
    qid = deliver.new_id()
    report = tlsrpt.compose_report(
        group, org_name=org, contact=contact, report_id=f"{outcome.day}.{domain}.{qid}@{host}",
        begin=period, end=period + DAY - 1,
    )
    gz = tlsrpt.gzip_report(report)
    mailto = [u[7:] for u in rua if u.startswith("mailto:")]
    https = [u for u in rua if u.startswith("https://")]
    delivery: Delivery | None = None
    if mailto:
        data = tlsrpt.compose_message(
            report, gz, sender=sender, recipients=mailto, submitter=host, domain=domain,
            filename=tlsrpt.report_filename(host, domain, period, period + DAY - 1, qid),
            message_id=f"{qid}@{host}", now=now,
        )
        if services.signer is not None:
            data = await services.signer.sign(data, sender.rpartition("@")[2]) + data
        delivery = Delivery(data=data, summary=b"", queue=NewQueueEntry(
            qid=qid, sender=sender, recipients=tuple(QueueRecipient(a, notify="NEVER") for a in mailto),
        ))
    if not await services.store.tlsrpt_delete(domain, period, report=delivery):
        outcome.status = "dropped"  # another sender got there first
        return
    outcome.status = "sent"
    if delivery is not None:
        outcome.qid, outcome.recipients = qid, mailto
    for uri in https:
        why = await post_report(services, uri, gz)
        if why is None:
            outcome.posted.append(uri)
        else:
            outcome.failed.append(f"{uri}: {why}")
            logs.event(log, "tlsrpt_post_failed", logging.WARNING, domain=domain, uri=uri, error=why)
    if not outcome.recipients and not outcome.posted:
        outcome.status = "failed"
    logs.event(log, "tlsrpt_report_sent", domain=domain, day=outcome.day, id=outcome.qid or None,
               to=",".join(outcome.recipients) or None, posted=",".join(outcome.posted) or None,
               rows=len(group))


async def post_report(services: Any, uri: str, gz: bytes) -> str | None:
    """RFC 8460 5.2: POST the gzipped report; None when a 2xx answered, else why not.
    Names are resolved through our resolver; the certificate is checked (system CAs or
    ``[outbound] tls_ca_file``)."""
    import aiohttp

    from postroom.policy.mtasts import OurResolver, https_context

    why = ""
    for attempt in range(HTTPS_ATTEMPTS):
        if attempt:
            await asyncio.sleep(HTTPS_BACKOFF * 2 ** (attempt - 1))
        connector = aiohttp.TCPConnector(
            resolver=OurResolver(services.resolver) if services.resolver is not None else None,
            ssl=https_context(_ca_file(services)), use_dns_cache=False,
        )
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=HTTPS_TIMEOUT),
            ) as session:
                async with session.post(
                    uri, data=gz, allow_redirects=False,
                    headers={"Content-Type": tlsrpt.MEDIA_GZIP, "User-Agent": "postroom"},
                ) as resp:
                    if 200 <= resp.status < 300:
                        return None
                    why = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status != 429:
                        return why  # the server will not take it
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            why = f"{type(e).__name__}: {e}"[:300]
    return why


def _ca_file(services: Any) -> str | None:
    ca = services.settings.outbound.tls_ca_file
    if not ca:
        return None
    path = services.settings.path.parent / ca
    return str(path)


async def report_loop(services: Any) -> None:
    """Send due reports once per ``tls_reports.report_interval`` (``recording.run_daily``)."""
    await run_daily(lambda: send_due(services), services.settings.tls_reports.report_interval, log, "TLS-RPT")


# --- receiving ------------------------------------------------------------------------


class TlsReportInbox:
    """Recognizes mail for ``tls_reports.address`` and stores the reports it carries."""

    def __init__(self, store: Store, address: str, *, clock: Any = time.time) -> None:
        self.store = store
        self.address = address.lower()
        self.clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()

    def wants(self, recipients: Sequence[str]) -> bool:
        for r in recipients:
            r = r.lower()
            if r == self.address or ("@" not in self.address and r.partition("@")[0] == self.address):
                return True
        return False

    def take(self, message: bytes, qid: str) -> None:
        """Parse and store in the background (the message is already stored)."""
        end = message.find(b"\r\n\r\n", 0, 65536)
        head = message[: end if end >= 0 else 65536]
        if not tlsrpt.looks_like_report(head):
            return
        if len(self._tasks) >= MAX_PARSING:  # a flood: the message is stored, it is enough
            logs.event(log, "tlsrpt_report_skipped", logging.WARNING, id=qid, reason="too many at once")
            return
        task = asyncio.create_task(self.store_report(message, qid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def store_report(self, message: bytes, qid: str) -> int | None:
        """The stored report's id; None when the message holds none, a malformed one or
        one stored already."""
        try:
            parsed = await asyncio.to_thread(_parse_message, message)
        except tlsrpt.ReportError as e:
            logs.event(log, "tlsrpt_report_invalid", logging.WARNING, id=qid, error=str(e)[:200])
            return None
        except Exception:  # a parser bug must not cost the message: it is stored already
            log.exception("TLS-RPT report not parsed id=%s", qid)
            return None
        if parsed is None:
            return None
        import json

        report = TlsReport(
            id=0, received=int(self.clock()), organization=parsed.organization, report_id=parsed.report_id,
            start=parsed.start, end=parsed.end, domains=",".join(parsed.domains),
            successful=parsed.successful, failed=parsed.failed,
            document=json.dumps(parsed.document, separators=(",", ":")),
        )
        try:
            stored = await self.store.tls_report_add(report)
        except Exception:
            log.exception("TLS-RPT report not stored id=%s", qid)
            return None
        logs.event(log, "tlsrpt_report_received", id=qid, org=parsed.organization,
                   report_id=parsed.report_id, domains=report.domains, successful=parsed.successful,
                   failed=parsed.failed, duplicate=None if stored else True)
        return stored


def _parse_message(message: bytes) -> tlsrpt.ParsedReport | None:
    data = tlsrpt.extract_report(message)
    return None if data is None else tlsrpt.parse_report(data)
