"""``postroom queue ...``: list, show, flush, delete, hold, release, bounce."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from postroom.admin.service import AdminService
from postroom.store.api import QueuedMessage


def _age(created: int) -> str:
    s = max(0, int(time.time()) - created)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def queue_entry_json(q: QueuedMessage) -> dict[str, Any]:
    return {
        "id": q.qid,
        "created": q.created,
        "sender": q.sender,
        "size": q.size,
        "attempts": q.attempts,
        "next_attempt": q.next_attempt,
        "last_error": q.last_error,
        "held": q.held,
        "kind": q.kind,
        "ret": q.ret,
        "envid": q.envid,
        "recipients": [
            {
                "address": r.address, "state": r.state, "status": r.status,
                "diagnostic": r.diagnostic, "remote_mta": r.remote_mta, "orcpt": r.orcpt,
                "notify": r.notify,
            }
            for r in q.recipients
        ],
    }


def run_queue_command(
    args: argparse.Namespace,
    with_service: Callable[..., Any],
    emit: Callable[..., None],
    ts: Callable[[int | None], str],
    cli_error: type[Exception],
) -> int:
    action = args.action
    if action == "list":
        entries: list[QueuedMessage] = with_service(args, lambda s: s.queue_list())
        rows = []
        for q in entries:
            pending = q.pending
            rcpts = ", ".join(r.address for r in pending[:3]) + (f" (+{len(pending) - 3})" if len(pending) > 3 else "")
            rows.append((
                q.qid, _age(q.created), q.sender or "<>", rcpts,
                "held" if q.held else ts(q.next_attempt), (q.last_error or "")[:60],
            ))
        emit(args, [queue_entry_json(q) for q in entries], rows,
             ("ID", "AGE", "SENDER", "RECIPIENTS", "NEXT ATTEMPT", "LAST ERROR"))
        return 0
    if action == "show":
        entry, data = with_service(args, lambda s: s.queue_show(args.qid))
        if args.json:
            import json

            doc = queue_entry_json(entry)
            doc["headers"] = data.partition(b"\r\n\r\n")[0].decode("utf-8", "replace")
            print(json.dumps(doc, indent=2, ensure_ascii=False))
            return 0
        print(f"id:           {entry.qid}")
        print(f"sender:       {entry.sender or '<>'}")
        print(f"created:      {ts(entry.created)} ({_age(entry.created)} ago)")
        print(f"size:         {entry.size}")
        print(f"attempts:     {entry.attempts}")
        print(f"next attempt: {'held' if entry.held else ts(entry.next_attempt)}")
        print(f"last error:   {entry.last_error or '-'}")
        for r in entry.recipients:
            detail = " ".join(x for x in (r.status, r.diagnostic) if x)
            print(f"recipient:    {r.address} [{r.state}] {detail}".rstrip())
        print()
        print(data.partition(b"\r\n\r\n")[0].decode("utf-8", "replace").replace("\r\n", "\n"))
        return 0
    if action == "flush":
        n = with_service(args, lambda s: s.queue_flush(args.qid, args.domain))
        print(f"{n} message(s) scheduled for immediate delivery")
        return 0
    if action == "delete":
        with_service(args, lambda s: s.queue_delete(args.qid))
        print(f"deleted {args.qid}")
        return 0
    if action in ("hold", "release"):
        with_service(args, lambda s: s.queue_hold(args.qid, action == "hold"))
        print(f"{'held' if action == 'hold' else 'released'} {args.qid}")
        return 0
    if action == "bounce":
        async def bounce(s: AdminService) -> None:
            await s.queue_bounce(args.qid)

        with_service(args, bounce)
        print(f"bounced {args.qid}")
        return 0
    raise cli_error(f"unknown queue action {action}")
