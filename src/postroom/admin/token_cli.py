"""``postroom token ...``: API tokens for the HTTP admin API (create, list, revoke).

A token is shown once, when created; the store keeps only its SHA-256 digest, so a lost
token is revoked and replaced, never recovered.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    s: argparse.ArgumentParser = sub.add_parser(
        "token", parents=[common], help="API tokens for the HTTP admin API"
    )
    tsub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = tsub.add_parser("add", parents=[common], help="create a token (printed once)")
    a.add_argument("name", help="what the token is for, e.g. \"monitoring\"")
    tsub.add_parser("list", parents=[common], help="list tokens (names and dates, never secrets)")
    a = tsub.add_parser("remove", parents=[common], help="revoke a token")
    a.add_argument("name")
    return s


def run_token_command(
    args: argparse.Namespace,
    with_service: Callable[..., Any],
    emit: Callable[..., None],
    ts: Callable[[int | None], str],
) -> int:
    if args.action == "add":
        token, secret = with_service(args, lambda s: s.token_add(args.name))
        if args.json:
            print(json.dumps({"name": token.name, "token": secret}))
        else:
            print(f"created token {token.name}: {secret}")
            print("  (shown once: use it as \"Authorization: Bearer TOKEN\")")
    elif args.action == "remove":
        with_service(args, lambda s: s.token_remove(args.name))
        print(json.dumps({"removed": args.name}) if args.json else f"revoked token {args.name}")
    else:
        tokens = with_service(args, lambda s: s.token_list())
        emit(
            args,
            [{"name": t.name, "created": t.created} for t in tokens],
            [(t.name, ts(t.created)) for t in tokens],
            ("TOKEN", "CREATED"),
        )
    return 0
