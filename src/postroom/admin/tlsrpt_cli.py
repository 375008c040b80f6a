"""``postroom tlsrpt list`` (reports received) and ``postroom tlsrpt send-reports``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from postroom.admin import auth_ops
from postroom.admin.auth_cli import _run, report_services


def cmd_tlsrpt(args: argparse.Namespace) -> int:
    from postroom.admin.cli import _emit

    if args.action == "list":
        reports = _run(args, lambda st, _: auth_ops.tls_reports(st, limit=args.limit, domain=args.domain))
        rows = []
        for r in reports:
            failures = sorted({
                d["result-type"] for p in r["document"]["policies"] for d in p.get("failure-details", [])
            })
            rows.append((r["received"][:16].replace("T", " "), r["organization"], ",".join(r["domains"]),
                         r["start"][:10], r["successful"], r["failed"], ",".join(failures) or "-"))
        _emit(args, reports, rows, ("received", "from", "domains", "day", "ok", "failed", "failures"))
        return 0

    outcomes = _run(args, lambda st, settings: auth_ops.tlsrpt_send_reports(report_services(st, settings)))
    if args.json:
        print(json.dumps({"reports": [dataclasses.asdict(o) for o in outcomes]}))
        return 0
    for o in outcomes:
        to = f" to {', '.join(o.recipients)} (queue id {o.qid})" if o.recipients else ""
        posted = f" posted to {', '.join(o.posted)}" if o.posted else ""
        print(f"{o.status:8} {o.domain} {o.day}: {o.rows} row(s){to}{posted}")
        for why in o.failed:
            print(f"         not posted to {why}")
    print(f"sent {sum(o.status == 'sent' for o in outcomes)} report(s)")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("tlsrpt", parents=[common], help="TLS-RPT (RFC 8460) reports")
    tsub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = tsub.add_parser("list", parents=[common], help="the reports received about our domains")
    a.add_argument("--domain", default=None, help="only reports about this domain")
    a.add_argument("--limit", type=int, default=100, help="at most this many, newest first (default 100)")
    tsub.add_parser("send-reports", parents=[common], help="send the reports of finished days now")
    s.set_defaults(func=cmd_tlsrpt)
