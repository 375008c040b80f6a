"""``postroom dkim ...``, ``postroom dns DOMAIN``, ``postroom dmarc send-reports``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import types
from typing import Any

from postroom.admin import auth_ops
from postroom.config import parse_duration


def _run(args: argparse.Namespace, fn: Any) -> Any:
    """``fn(store, settings)`` with the configured store (the CLI's one way to open it)."""
    from postroom.admin.cli import _with_service

    return _with_service(args, lambda service: fn(service.store, service.settings))


def _resolver(settings: Any) -> Any:
    from postroom.policy.dns import make_resolver

    return make_resolver(settings.outbound.resolver, timeout=min(settings.dns.timeout, 10.0))


def _key_json(k: Any, now: float) -> dict[str, Any]:
    return {
        "domain": k.domain, "selector": k.selector, "algorithm": k.algorithm,
        "state": auth_ops.key_state(k, now), "active_from": k.active_from, "retire_at": k.retire_at,
        "dns_name": f"{k.selector}._domainkey.{k.domain}", "dns_txt": k.public_record,
    }


def cmd_dkim(args: argparse.Namespace) -> int:
    from postroom.admin.cli import CliError, _emit, _ts

    now = time.time()
    if args.action == "generate":
        key = _run(args, lambda st, _: auth_ops.dkim_generate(
            st, args.domain, algorithm=args.algorithm, selector=args.selector))
        keys = [key]
    elif args.action == "rotate":
        try:
            delay = parse_duration(args.delay)
        except ValueError as e:
            raise CliError(f"--delay: {e}") from None
        algs = [args.algorithm] if args.algorithm else None
        keys = _run(args, lambda st, _: auth_ops.dkim_rotate(st, args.domain, delay=delay, algorithms=algs))
    elif args.action == "retire":
        _run(args, lambda st, _: auth_ops.dkim_retire(st, args.domain, args.selector))
        print(json.dumps({"retired": args.selector}) if args.json else
              f"retired {args.selector}._domainkey.{args.domain}: remove its DNS record")
        return 0
    else:
        keys = _run(args, lambda st, _: auth_ops.dkim_list(st, args.domain))
    if args.json:
        print(json.dumps([_key_json(k, now) for k in keys], indent=2))
        return 0
    if args.action == "list":
        _emit(args, None, [(k.domain, k.selector, k.algorithm, auth_ops.key_state(k, now), _ts(k.active_from),
                            _ts(k.retire_at)) for k in keys],
              ("DOMAIN", "SELECTOR", "ALGORITHM", "STATE", "SIGNS FROM", "RETIRES"))
        for k in keys:
            print(f"{k.selector}._domainkey.{k.domain}. IN TXT \"{k.public_record}\"")
        return 0
    for k in keys:
        when = "now" if k.active_from <= now else f"from {_ts(k.active_from)}"
        print(f"new {k.algorithm} key {k.selector} for {k.domain}, signs {when}. Publish:")
        print(f"  {k.selector}._domainkey.{k.domain}. IN TXT \"{k.public_record}\"")
    return 0


def cmd_dns(args: argparse.Namespace) -> int:
    addresses = args.address or []

    async def run(store: Any, settings: Any) -> Any:
        resolver = _resolver(settings)
        if args.check:
            return await auth_ops.dns_check(store, settings, args.domain, resolver, addresses=addresses)
        return await auth_ops.dns_records(store, settings, args.domain, addresses=addresses, resolver=resolver)

    items = _run(args, run)
    if args.json:
        print(json.dumps([i.to_json() for i in items], indent=2))
    elif not args.check:
        print(f"; DNS records for {args.domain} (zone file syntax)")
        for r in items:
            print(f"; {r.kind}: {r.note}")
            print(r.zone_line())
        if not any(r.kind == "PTR" for r in items):
            print("; PTR: the server's address is unknown (give --address IP): its reverse DNS must name the host")
    else:
        for v in items:
            line = f"{v.status.upper():8} {v.record.kind:6} {v.record.name} {v.record.rtype} {v.record.value}"
            print(line if len(line) < 160 else line[:157] + "...")
            if v.status != "correct":
                found = "; ".join(v.found) if v.found else "nothing"
                print(f"         found: {found if len(found) < 200 else found[:197] + '...'}"
                      + (f" ({v.detail})" if v.detail else ""))
    return 0 if not args.check or all(v.status == "correct" for v in items) else 3


def report_services(store: Any, settings: Any) -> Any:
    """What sending reports needs (store, resolver, DKIM signer), for a CLI command."""
    from postroom.policy.signing import Signer

    return types.SimpleNamespace(
        settings=settings, store=store, resolver=_resolver(settings),
        signer=Signer(store, enabled=settings.dkim.sign),
    )


def cmd_dmarc(args: argparse.Namespace) -> int:
    outcomes = _run(args, lambda st, settings: auth_ops.dmarc_send_reports(report_services(st, settings)))
    queued = [o.qid for o in outcomes if o.status == "queued"]
    if args.json:
        print(json.dumps({"queued": queued, "reports": [dataclasses.asdict(o) for o in outcomes]}))
        return 0
    for o in outcomes:
        to = f" to {', '.join(o.recipients)} (queue id {o.qid})" if o.recipients else ""
        print(f"{o.status:8} {o.domain} {o.day}: {o.rows} row(s){to}")
        for why in o.refused:
            print(f"         not sent to {why}")
    print(f"queued {len(queued)} report(s)")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("dkim", parents=[common], help="DKIM signing keys (kept in the database)")
    ksub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = ksub.add_parser("generate", parents=[common], help="DOMAIN: make a key that signs now")
    a.add_argument("domain")
    a.add_argument("--selector", default=None)
    a.add_argument("--algorithm", choices=auth_ops.ALGORITHMS, default="ed25519")
    a = ksub.add_parser("list", parents=[common], help="[DOMAIN]: keys and their DNS records")
    a.add_argument("domain", nargs="?")
    a = ksub.add_parser("rotate", parents=[common],
                        help="DOMAIN: new key(s) that sign after --delay; the old stop then")
    a.add_argument("domain")
    a.add_argument("--delay", default="3d", help="time to publish the new record (default 3d)")
    a.add_argument("--algorithm", choices=auth_ops.ALGORITHMS, default=None)
    a = ksub.add_parser("retire", parents=[common], help="DOMAIN SELECTOR: delete an old key")
    a.add_argument("domain")
    a.add_argument("selector")
    s.set_defaults(func=cmd_dkim)

    s = sub.add_parser("dns", parents=[common], help="DOMAIN: the DNS records to create (--check: verify them)")
    s.add_argument("domain")
    s.add_argument("--check", action="store_true", help="look each record up: correct / missing / wrong")
    s.add_argument("--address", action="append", help="the server's public IP (default: the host name's A/AAAA)")
    s.set_defaults(func=cmd_dns)

    s = sub.add_parser("dmarc", parents=[common], help="DMARC aggregate reports")
    msub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    msub.add_parser("send-reports", parents=[common], help="send the reports of finished days now")
    s.set_defaults(func=cmd_dmarc)
