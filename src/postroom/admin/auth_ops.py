"""Mail-authentication operations: DKIM keys, the DNS records a domain needs and their check,
DMARC report sending. Plain coroutines over the store and settings, called by the CLI
(``admin.auth_cli``) and meant for the HTTP admin API as well.

Key rotation (RFC 6376 3.1 selectors make it painless):

1. ``dkim rotate DOMAIN`` makes a new key per algorithm under a new selector, active after
   ``--delay`` (default 3 days), and marks the current key to stop signing at that moment.
   Publish the new record (``postroom dns DOMAIN`` prints it) before the delay ends.
2. After the delay, mail is signed with the new key automatically.
3. Some days later (mail signed with the old key may still be checked), ``dkim retire
   DOMAIN OLD-SELECTOR`` deletes the old key; then remove its DNS record.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from collections.abc import Sequence
from typing import Any

from postroom.admin.service import AdminError
from postroom.config import AuthChecksSettings, Settings
from postroom.policy import dkim, dnsrecords
from postroom.policy.dns import DnsError, NxDomain, Resolver, lookup_addresses
from postroom.policy.signing import active
from postroom.store.api import AlreadyExists, DkimKey, NotFound, Store

ALGORITHMS = ("ed25519", "rsa")
DEFAULT_ROTATION_DELAY = 3 * 86400


def _domain(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not value or "." not in value or " " in value or "@" in value:
        raise AdminError(f"{value!r} is not a domain name")
    return value


def default_selector(algorithm: str, taken: Sequence[str], now: float) -> str:
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%d")
    base = f"{'ed' if algorithm == 'ed25519' else 'rsa'}{stamp}"
    if base not in taken:
        return base
    for letter in "bcdefghijklmnopqrstuvwxyz":
        if base + letter not in taken:
            return base + letter
    raise AdminError("no free selector name today; give one with --selector")


async def dkim_generate(
    store: Store, domain: str, *, algorithm: str = "ed25519", selector: str | None = None,
    active_from: int | None = None, now: float | None = None,
) -> DkimKey:
    domain = _domain(domain)
    if algorithm not in ALGORITHMS:
        raise AdminError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
    now = time.time() if now is None else now
    if selector is not None and not selector.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise AdminError(f"{selector!r} is not a valid selector")
    existing = [k.selector for k in await store.dkim_keys(domain)]
    selector = selector or default_selector(algorithm, existing, now)
    private = await asyncio.to_thread(dkim.generate_key, algorithm)
    key = DkimKey(
        domain=domain, selector=selector.lower(), algorithm=algorithm,
        private_key=dkim.private_pem(private).decode(), public_record=dkim.public_record(private),
        created=int(now), active_from=int(now if active_from is None else active_from),
    )
    try:
        await store.dkim_key_add(key)
    except AlreadyExists as e:
        raise AdminError(str(e), "conflict") from None
    return key


async def dkim_list(store: Store, domain: str | None = None) -> list[DkimKey]:
    return await store.dkim_keys(_domain(domain) if domain else None)


def key_state(key: DkimKey, now: float) -> str:
    if active(key, now):
        return "active"
    if key.active_from > now:
        return "pending"
    return "retired"


async def dkim_rotate(
    store: Store, domain: str, *, delay: float = DEFAULT_ROTATION_DELAY,
    algorithms: Sequence[str] | None = None, now: float | None = None,
) -> list[DkimKey]:
    """Step 1 of a rotation (see the module docstring): new keys, old ones end at the switch."""
    domain = _domain(domain)
    now = time.time() if now is None else now
    current = [k for k in await store.dkim_keys(domain) if active(k, now)]
    algs = list(algorithms) if algorithms else sorted({k.algorithm for k in current}) or ["ed25519", "rsa"]
    switch = int(now + delay)
    made = []
    for algorithm in algs:
        made.append(await dkim_generate(store, domain, algorithm=algorithm, active_from=switch, now=now))
        for old in current:
            if old.algorithm == algorithm:
                await store.dkim_key_update(domain, old.selector, retire_at=switch)
    return made


async def dkim_retire(store: Store, domain: str, selector: str) -> None:
    try:
        await store.dkim_key_remove(_domain(domain), selector.lower())
    except NotFound as e:
        raise AdminError(str(e), "not_found") from None


# --- DNS records --------------------------------------------------------------------------


async def server_addresses(resolver: Resolver | None, hostname: str, given: Sequence[str]) -> list[str]:
    if given:
        try:
            return [str(ipaddress.ip_address(a)) for a in given]
        except ValueError as e:
            raise AdminError(str(e)) from None
    if resolver is None:
        return []
    try:
        return await asyncio.wait_for(lookup_addresses(resolver, hostname), 10)
    except (DnsError, TimeoutError):
        return []


async def dns_records(
    store: Store, settings: Settings, domain: str, *, addresses: Sequence[str] = (),
    resolver: Resolver | None = None,
) -> list[dnsrecords.Record]:
    from postroom.clients import mta_sts_id

    domain = _domain(domain)
    keys = await store.dkim_keys(domain)
    found = await server_addresses(resolver, settings.hostname, addresses)
    return dnsrecords.required(
        domain, settings.hostname, keys, settings.listeners, found, rua=f"postmaster@{domain}",
        mta_sts_id=mta_sts_id(settings), tlsrpt_rua=tlsrpt_address(settings, domain),
    )


def tlsrpt_address(settings: Settings, domain: str) -> str | None:
    """Where TLS-RPT reports about ``domain`` go (``tls_reports.address``), or None when
    we do not take them in."""
    tr = settings.tls_reports
    if not tr.receive:
        return None
    return tr.address if "@" in tr.address else f"{tr.address}@{domain}"


async def _lookup(resolver: Resolver, record: dnsrecords.Record) -> list[str]:
    name = record.name
    if record.rtype == "TXT":
        return [b.decode("utf-8", "replace") for b in await resolver.txt(name)]
    if record.rtype == "MX":
        return [f"{m.preference} {m.host}" for m in await resolver.mx(name)]
    if record.rtype == "SRV":
        return [f"{s.priority} {s.weight} {s.port} {s.target}" for s in await resolver.srv(name)]
    if record.rtype == "A":
        return await resolver.a(name)
    if record.rtype == "AAAA":
        return await resolver.aaaa(name)
    if record.rtype == "PTR":
        return await resolver.ptr(name)
    if record.rtype == "CNAME":  # where the name leads: its addresses (CNAMEs followed)
        out: list[str] = []
        for query in (resolver.a, resolver.aaaa):
            try:
                out += await query(name)
            except NxDomain:
                pass
        return out
    return []


async def dns_check(
    store: Store, settings: Settings, domain: str, resolver: Resolver, *, addresses: Sequence[str] = (),
) -> list[dnsrecords.Verdict]:
    """Look every required record up and judge it: correct / missing / wrong."""
    from postroom.policy.inbound import AuthChecker

    records = await dns_records(store, settings, domain, addresses=addresses, resolver=resolver)
    server_ips = [r.value for r in records if r.kind in ("A", "AAAA")]
    checker = AuthChecker(resolver, AuthChecksSettings(timeout=15.0), settings.hostname)
    out = []
    for record in records:
        try:
            found = await asyncio.wait_for(_lookup(resolver, record), 15)
        except NxDomain:
            found = []
        except (DnsError, TimeoutError) as e:
            out.append(dnsrecords.Verdict(record, "missing", (), f"lookup failed: {e or 'timeout'}"))
            continue
        spf_pass = None
        if record.kind == "SPF" and server_ips:
            results = [
                await checker.run_spf(ip, record.name, f"postmaster@{record.name}", settings.hostname,
                                      time.monotonic() + 15)
                for ip in server_ips
            ]
            spf_pass = all(r.result == "pass" for r in results)
        out.append(dnsrecords.judge(record, found, spf_pass=spf_pass, addresses=server_ips))
    return out


async def dmarc_send_reports(services: Any) -> list[Any]:
    """The reports of finished days, queued now (``policy.reports.send_due`` outcomes)."""
    from postroom.policy.reports import send_due

    return await send_due(services)


async def tlsrpt_send_reports(services: Any) -> list[Any]:
    """The TLS-RPT reports of finished days, sent now (``policy.tls_reports.send_due``)."""
    from postroom.policy.tls_reports import send_due

    return await send_due(services)


MAX_TLS_REPORTS = 1000  # listed at once


async def tls_reports(store: Any, *, limit: int = 100, domain: str | None = None) -> list[dict[str, Any]]:
    """The TLS-RPT reports received (newest first) as the CLI and the API show them: the
    summary, and the report itself (``document``, RFC 8460 4 JSON)."""
    import datetime
    import json

    def iso(ts: int) -> str:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    rows = await store.tls_reports(limit=max(1, min(limit, MAX_TLS_REPORTS)),
                                   domain=domain.lower() if domain else None)
    return [
        {
            "id": r.id, "received": iso(r.received), "organization": r.organization,
            "report_id": r.report_id, "start": iso(r.start), "end": iso(r.end),
            "domains": r.domains.split(",") if r.domains else [], "successful": r.successful,
            "failed": r.failed, "document": json.loads(r.document),
        }
        for r in rows
    ]
