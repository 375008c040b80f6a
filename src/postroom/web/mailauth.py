"""Admin API routes for mail authentication: DKIM keys and a domain's DNS records with
their check. The operations are ``postroom.admin.auth_ops``, the ones ``postroom dkim``
and ``postroom dns`` run; private keys never leave the store through here.
"""

from __future__ import annotations

import time
from typing import Any

from postroom.admin import auth_ops
from postroom.address import AddressError, normalize_domain
from postroom.store.api import DkimKey
from postroom.web.api import Ctx
from postroom.web.openapi import (
    INTEGER,
    NULLABLE_INTEGER,
    Json,
    Param,
    Route,
    array,
    obj,
    ref,
    string,
)
from postroom.web.session import ApiError

ALGORITHM = {"type": "string", "enum": list(auth_ops.ALGORITHMS)}
SCHEMAS: dict[str, Json] = {
    "DkimKey": obj(
        {"domain": string(253), "selector": string(63), "algorithm": string(16), "state": string(16),
         "created": INTEGER, "active_from": INTEGER, "retire_at": NULLABLE_INTEGER,
         "record": string(4096)},
        ("domain", "selector", "algorithm", "state", "created", "active_from", "retire_at", "record"),
    ),
    "DnsRecord": obj(
        {"kind": string(16), "name": string(300), "rtype": string(8), "value": string(4096),
         "note": string(300), "zone": string(4500)},
        ("kind", "name", "rtype", "value", "note", "zone"),
    ),
    "DnsVerdict": obj(
        {"kind": string(16), "name": string(300), "rtype": string(8), "value": string(4096),
         "note": string(300), "zone": string(4500),
         "status": {"type": "string", "enum": ["correct", "missing", "wrong"]},
         "found": array(string(4096)), "detail": string(500)},
        ("kind", "name", "rtype", "value", "status", "found", "detail"),
    ),
    # A received TLS-RPT report (RFC 8460 4): a summary, and the report as parsed.
    "TlsReport": obj(
        {"id": INTEGER, "received": string(32), "organization": string(1024), "report_id": string(1024),
         "start": string(32), "end": string(32), "domains": array(string(1024)),
         "successful": INTEGER, "failed": INTEGER, "document": {"type": "object"}},
        ("id", "received", "organization", "report_id", "start", "end", "domains", "successful",
         "failed", "document"),
    ),
}


def key_json(k: DkimKey, now: float | None = None) -> Json:
    return {
        "domain": k.domain, "selector": k.selector, "algorithm": k.algorithm,
        "state": auth_ops.key_state(k, time.time() if now is None else now),
        "created": k.created, "active_from": k.active_from, "retire_at": k.retire_at,
        "record": k.public_record,
    }


async def _hosted(ctx: Ctx, name: str) -> str:
    """A path's domain: one this server hosts, else 404."""
    try:
        domain = normalize_domain(name)
    except AddressError:
        raise ApiError(404, "no such domain") from None
    if await ctx.services.store.get_domain(domain) is None:
        raise ApiError(404, f"no domain {domain}")
    return domain


async def dkim_list(ctx: Ctx) -> list[Json]:
    possible, domain = ctx.domain_filter()
    if not possible:
        return []
    return [key_json(k) for k in await auth_ops.dkim_list(ctx.services.store, domain)]


async def dkim_generate(ctx: Ctx) -> Json:
    domain = await _hosted(ctx, ctx.body["domain"])
    key = await auth_ops.dkim_generate(
        ctx.services.store, domain, algorithm=ctx.body.get("algorithm", "ed25519"),
        selector=ctx.body.get("selector") or None,
    )
    return key_json(key)


async def dkim_rotate(ctx: Ctx) -> list[Json]:
    domain = await _hosted(ctx, ctx.path("name"))
    algorithm = ctx.body.get("algorithm")
    keys = await auth_ops.dkim_rotate(
        ctx.services.store, domain, delay=float(ctx.body.get("delay", auth_ops.DEFAULT_ROTATION_DELAY)),
        algorithms=[algorithm] if algorithm else None,
    )
    return [key_json(k) for k in keys]


async def dkim_retire(ctx: Ctx) -> None:
    domain = await _hosted(ctx, ctx.path("domain"))
    await auth_ops.dkim_retire(ctx.services.store, domain, ctx.path("selector"))


async def _addresses(ctx: Ctx) -> list[str]:
    return await auth_ops.server_addresses(ctx.services.resolver, ctx.services.settings.hostname, ())


async def dns_records(ctx: Ctx) -> list[Any]:
    domain = await _hosted(ctx, ctx.path("name"))
    s = ctx.services
    records = await auth_ops.dns_records(s.store, s.settings, domain, addresses=await _addresses(ctx))
    return [r.to_json() for r in records]


async def dns_check(ctx: Ctx) -> list[Any]:
    domain = await _hosted(ctx, ctx.path("name"))
    s = ctx.services
    if s.resolver is None:
        raise ApiError(503, "no DNS resolver configured")
    verdicts = await auth_ops.dns_check(s.store, s.settings, domain, s.resolver, addresses=await _addresses(ctx))
    return [v.to_json() for v in verdicts]


async def dmarc_send_reports(ctx: Ctx) -> Json:
    """Queue the DMARC aggregate reports of finished days now (``postroom dmarc
    send-reports``); the server also does so on its own every day."""
    import dataclasses

    outcomes = await auth_ops.dmarc_send_reports(ctx.services)
    return {"reports": [dataclasses.asdict(o) for o in outcomes]}


async def tls_reports(ctx: Ctx) -> list[Any]:
    """TLS-RPT reports received about our domains (``postroom tlsrpt list``)."""
    possible, domain = ctx.domain_filter()
    if not possible:
        return []
    limit = ctx.query_int("limit", 100, 1, auth_ops.MAX_TLS_REPORTS)
    return await auth_ops.tls_reports(ctx.services.store, limit=limit, domain=domain)


async def tlsrpt_send_reports(ctx: Ctx) -> Json:
    """Send the TLS-RPT reports of finished days now (``postroom tlsrpt send-reports``)."""
    import dataclasses

    outcomes = await auth_ops.tlsrpt_send_reports(ctx.services)
    return {"reports": [dataclasses.asdict(o) for o in outcomes]}


A = "admin"
_DOMAIN = Param("domain", "path", string(253))
_NAME = Param("name", "path", string(253))
ROUTES: list[Route] = [
    Route("GET", "/api/v1/dkim", dkim_list, "DKIM keys with their DNS records", "mail authentication",
          A, params=(Param("domain", "query", string(253), description="only this domain"),),
          response=array(ref("DkimKey"))),
    Route("POST", "/api/v1/dkim", dkim_generate, "Make a DKIM key that signs now", "mail authentication",
          A, ok=201, body=obj({"domain": string(253, 1), "algorithm": ALGORITHM, "selector": string(63, 1)},
                              ("domain",)),
          response=ref("DkimKey"), errors=(400, 404, 409)),
    Route("POST", "/api/v1/domains/{name}/dkim-rotation", dkim_rotate,
          "Rotate: new keys that sign after the delay; the old ones stop then", "mail authentication", A,
          ok=201, params=(_NAME,),
          body=obj({"delay": INTEGER | {"minimum": 0, "maximum": 90 * 86400}, "algorithm": ALGORITHM}),
          response=array(ref("DkimKey"))),
    Route("DELETE", "/api/v1/dkim/{domain}/{selector}", dkim_retire, "Delete an old DKIM key",
          "mail authentication", A, ok=204, params=(_DOMAIN, Param("selector", "path", string(63)))),
    Route("POST", "/api/v1/dmarc/send-reports", dmarc_send_reports,
          "Queue the DMARC aggregate reports of finished days now", "mail authentication", A,
          response=obj({"reports": array({"type": "object"})}, ("reports",))),
    Route("GET", "/api/v1/tls-reports", tls_reports, "TLS-RPT reports received, newest first",
          "mail authentication", A,
          params=(Param("domain", "query", string(253), description="only reports about this domain"),
                  Param("limit", "query", INTEGER | {"minimum": 1, "maximum": auth_ops.MAX_TLS_REPORTS})),
          response=array(ref("TlsReport")), errors=(400,)),
    Route("POST", "/api/v1/tls-reports/send", tlsrpt_send_reports,
          "Send the TLS-RPT reports of finished days now", "mail authentication", A,
          response=obj({"reports": array({"type": "object"})}, ("reports",))),
    Route("GET", "/api/v1/domains/{name}/dns", dns_records, "The DNS records the domain needs",
          "mail authentication", A, params=(_NAME,), response=array(ref("DnsRecord"))),
    Route("GET", "/api/v1/domains/{name}/dns/check", dns_check,
          "Look the records up: correct, missing or wrong", "mail authentication", A, params=(_NAME,),
          response=array(ref("DnsVerdict")), errors=(400, 503)),
]
