"""The ``postroom`` command line.

Exit codes: 0 ok; 1 an error, printed as one line on stderr (never a traceback);
2 a usage error (argparse's convention). Every listing prints a table for people and,
with ``--json``, a JSON document for scripts. The CLI opens the same store as a running
server (SQLite WAL allows that safely), so it works while ``postroom serve`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from postroom import __version__, config
from postroom.admin.service import AdminError, AdminService

DEFAULT_CONFIG = "postroom.toml"


class CliError(Exception):
    pass


def _config_path(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    env = os.environ.get("POSTROOM_CONFIG")
    if env:
        return Path(env)
    if Path(DEFAULT_CONFIG).exists() or not Path("/etc/postroom/postroom.toml").exists():
        return Path(DEFAULT_CONFIG)
    return Path("/etc/postroom/postroom.toml")


def _load(args: argparse.Namespace, *, files: bool = True) -> config.Settings:
    try:
        settings = config.load(_config_path(args))
        if files:
            config.check_files(settings)
    except config.ConfigError as e:
        raise CliError(str(e)) from None
    return settings


def _with_service(
    args: argparse.Namespace, fn: Callable[[AdminService], Coroutine[Any, Any, Any]]
) -> Any:
    from postroom.store.api import StoreError
    from postroom.store.open import open_store

    settings = _load(args, files=False)
    if not settings.data_dir.is_dir():
        raise CliError(f"{settings.data_dir}: data folder missing (run `postroom init`)")

    async def run() -> Any:
        store = await open_store(settings)
        try:
            return await fn(AdminService(store, settings))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (AdminError, StoreError, config.ConfigError) as e:
        raise CliError(str(e)) from None


def _ts(t: int | None) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: Any, rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif rows:
        print(_table(rows, headers))
    else:
        print("(none)")


def _read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """Return (password, generated)."""
    from postroom.auth import passwords

    chosen = [x for x in ("password", "password_stdin", "generate") if getattr(args, x)]
    if len(chosen) > 1:
        raise CliError("use only one of --password, --password-stdin, --generate")
    if args.generate:
        return passwords.generate_password(), True
    if args.password is not None:
        return args.password, False
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n"), False
    if not sys.stdin.isatty():
        raise CliError("no password given: use --password-stdin, --password or --generate")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise CliError("the passwords do not match")
    return first, False


# -- commands --------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from postroom.admin.init import InitOptions, initialise

    opts = InitOptions(
        config_path=_config_path(args),
        hostname=args.hostname,
        domain=args.domain,
        data_dir=args.data_dir,
        user=args.user,
        ports=args.ports,
        bind=args.bind,
        force=args.force,
    )
    try:
        report = initialise(opts)
    except AdminError as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {report['config']}")
        print(f"data folder {report['data_dir']}")
        print(f"self-signed certificate {report['cert']}")
        if report.get("domain"):
            print(f"domain {report['domain']}")
        if report.get("user"):
            print(f"user {report['user']} password: {report['password']}")
            print("  (shown once: write it down or change it with `postroom user passwd`)")
            print(f"  web admin: https://{report['hostname']}/admin/ (this user is an admin)")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    if args.json:
        print(json.dumps({"ok": True, "config": str(settings.path)}))
    else:
        print(f"{settings.path}: ok")
        for lst in settings.listeners:
            print(f"  listener {lst}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the schema migrations this postroom knows (``--check``: only report)."""
    from postroom.store import open as store_open
    from postroom.store.api import StoreError

    settings = _load(args, files=False)
    if settings.store.backend == "sqlite" and not settings.data_dir.is_dir():
        raise CliError(f"{settings.data_dir}: data folder missing (run `postroom init`)")
    try:
        if args.check:
            found, known = asyncio.run(store_open.schema_status(settings))
            after = found
        else:
            found, after = asyncio.run(store_open.migrate(settings))
            known = after
    except (StoreError, config.ConfigError) as e:
        raise CliError(str(e)) from None
    state = "up to date" if after == known else "needs `postroom migrate`"
    if found > known:
        state = "newer than this postroom: upgrade postroom"
    if args.json:
        print(json.dumps({"backend": settings.store.backend, "before": found, "version": after,
                          "known": known, "up_to_date": after == known}))
    elif after != found:
        print(f"{settings.store.backend}: schema version {found} -> {after}")
    else:
        print(f"{settings.store.backend}: schema version {after} ({state})")
    return 0 if after == known else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from postroom.app import serve

    settings = _load(args)
    return serve(settings)


def cmd_domain(args: argparse.Namespace) -> int:
    if args.action == "add":
        d = _with_service(args, lambda s: s.domain_add(args.name))
        print(json.dumps({"domain": d.name}) if args.json else f"added domain {d.name}")
    elif args.action == "remove":
        _with_service(args, lambda s: s.domain_remove(args.name))
        print(json.dumps({"removed": args.name}) if args.json else f"removed domain {args.name}")
    else:
        domains = _with_service(args, lambda s: s.domain_list())
        _emit(
            args,
            [{"name": d.name, "created": d.created} for d in domains],
            [(d.name, _ts(d.created)) for d in domains],
            ("DOMAIN", "CREATED"),
        )
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    if args.action in ("add", "passwd"):
        password, generated = _read_password(args)
        if args.action == "add":
            u = _with_service(args, lambda s: s.user_add(args.address, password))
            address = u.address
        else:
            _with_service(args, lambda s: s.user_passwd(args.address, password))
            address = args.address
        if args.json:
            out: dict[str, Any] = {"user": address}
            if generated:
                out["password"] = password
            print(json.dumps(out))
        else:
            print(("added user " if args.action == "add" else "changed password of ") + address)
            if generated:
                print(f"password: {password}")
    elif args.action == "remove":
        _with_service(args, lambda s: s.user_remove(args.address))
        print(json.dumps({"removed": args.address}) if args.json else f"removed user {args.address}")
    elif args.action == "admin":
        _with_service(args, lambda s: s.user_admin(args.address, not args.off))
        verb = "may no longer" if args.off else "may now"
        print(json.dumps({"user": args.address, "admin": not args.off}) if args.json
              else f"{args.address} {verb} use the web admin")
    elif args.action == "quota":
        storage = _quota_value(args.size, config.parse_size)
        messages = _quota_value(args.messages, int) if args.messages is not None else None
        q = _with_service(args, lambda s: s.user_quota_set(
            args.address, storage, messages, keep_messages=args.messages is None))
        if args.json:
            print(json.dumps({"user": args.address, **_quota_json(q)}))
        else:
            print(f"quota of {args.address}: {_quota_text(q)}")
    elif args.action == "sendas":
        return _user_sendas(args)
    else:
        rows = _with_service(args, lambda s: s.user_list_quotas(args.domain))
        _emit(
            args,
            [{"address": u.address, "domain": u.domain, "created": u.created, "admin": u.admin,
              **_quota_json(q)} for u, q in rows],
            [(u.address, _ts(u.created), _quota_text(q), "admin" if u.admin else "") for u, q in rows],
            ("USER", "CREATED", "QUOTA (used / limit)", "ROLE"),
        )
    return 0


def _quota_value(text: str, parse: Callable[[str], int]) -> int | None:
    """"none" (or "unlimited") clears a limit; otherwise a size ("512M") or a count."""
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        value = parse(text)
    except ValueError:
        raise CliError(f"{text!r} is not a quota: use a size like 500M or 2G, or none") from None
    if value < 0:
        raise CliError("a quota cannot be negative")
    return value


def _size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


def _quota_text(q: Any) -> str:
    storage = f"{_size(q.storage_used)} / {_size(q.storage_limit) if q.storage_limit is not None else '-'}"
    if q.messages_limit is not None:
        storage += f", {q.messages_used} / {q.messages_limit} messages"
    return storage


def _quota_json(q: Any) -> dict[str, Any]:
    return {
        "storage_used": q.storage_used, "storage_limit": q.storage_limit,
        "messages_used": q.messages_used, "messages_limit": q.messages_limit,
    }


def _user_sendas(args: argparse.Namespace) -> int:
    """``postroom user sendas add|remove USER ADDRESS|@DOMAIN`` and ``list [USER]``."""
    if args.sendas_action == "add":
        g = _with_service(args, lambda s: s.sendas_add(args.user, args.address))
        print(json.dumps({"user": g.user, "address": g.address}) if args.json
              else f"{g.user} may now send as {g.address}")
    elif args.sendas_action == "remove":
        _with_service(args, lambda s: s.sendas_remove(args.user, args.address))
        print(json.dumps({"removed": {"user": args.user, "address": args.address}}) if args.json
              else f"{args.user} may no longer send as {args.address}")
    else:
        grants = _with_service(args, lambda s: s.sendas_list(args.user))
        _emit(
            args,
            [{"user": g.user, "address": g.address} for g in grants],
            [(g.user, g.address) for g in grants],
            ("USER", "MAY SEND AS"),
        )
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    if args.action == "add":
        added = _with_service(args, lambda s: s.alias_add(args.source, args.targets))
        if args.json:
            print(json.dumps([{"source": a.source, "target": a.target} for a in added]))
        else:
            for a in added:
                print(f"added alias {a.source} -> {a.target}")
    elif args.action == "remove":
        target = args.targets[0] if args.targets else None
        if args.targets and len(args.targets) > 1:
            raise CliError("alias remove takes one target at most")
        n = _with_service(args, lambda s: s.alias_remove(args.source, target))
        print(json.dumps({"removed": n}) if args.json else f"removed {n} alias entr{'y' if n == 1 else 'ies'}")
    else:
        aliases = _with_service(args, lambda s: s.alias_list(args.domain))
        _emit(
            args,
            [{"source": a.source, "target": a.target} for a in aliases],
            [(a.source, a.target) for a in aliases],
            ("ALIAS", "TARGET"),
        )
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from postroom.admin.queue_cli import run_queue_command

    return run_queue_command(args, _with_service, _emit, _ts, CliError)


def _data_command(fn: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace], int]:
    """import/export/backup/restore live in admin/data_cli.py; errors become CliError."""

    def run(args: argparse.Namespace) -> int:
        from postroom.admin.data_cli import DataCliError

        try:
            return fn(args, _load)
        except DataCliError as e:
            raise CliError(str(e)) from None

    return run


def cmd_token(args: argparse.Namespace) -> int:
    from postroom.admin.token_cli import run_token_command

    return run_token_command(args, _with_service, _emit, _ts)


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="postroom", description="postroom mail server")
    p.add_argument("--version", action="version", version=f"postroom {__version__}")
    # SUPPRESS defaults: options may come at any level ("postroom -c f user add x" or
    # "postroom user add x -c f") without an inner level resetting an outer value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default=argparse.SUPPRESS,
        help=f"configuration file (default: $POSTROOM_CONFIG or ./{DEFAULT_CONFIG})",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p.set_defaults(config=None, json=False)
    p.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", parents=[common], help="write a config, data folder and certificate")
    s.add_argument("--hostname", default=None, help="this server's DNS name (default: mail.DOMAIN)")
    s.add_argument("--domain", default=None, help="first mail domain to host (e.g. example.org)")
    s.add_argument("--data-dir", default=None, help="data folder (default: ./data next to the config)")
    s.add_argument("--user", default=None, help="create this user (local part or address) with a generated password")
    s.add_argument(
        "--ports", choices=("auto", "standard", "unprivileged"), default="auto",
        help="standard 25/587/465/143/993/110/995/80/443, or "
        "2525/2587/2465/2143/2993/2110/2995/2080/2443 (auto: standard when root)",
    )
    s.add_argument("--bind", default="*", help="address to listen on (default: * = all, IPv4 and IPv6)")
    s.add_argument("--force", action="store_true", help="overwrite an existing config file")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", parents=[common], help="run the server")
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("check-config", parents=[common], help="validate the configuration and exit")
    s.set_defaults(func=cmd_check_config)
    s = sub.add_parser("migrate", parents=[common],
                       help="bring the database schema up to date (--check: only report)")
    s.add_argument("--check", action="store_true",
                   help="report the schema version; exit 1 when migrations are pending")
    s.set_defaults(func=cmd_migrate)

    s = sub.add_parser("domain", parents=[common], help="manage mail domains")
    dsub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in ("add", "remove"):
        a = dsub.add_parser(action, parents=[common], help=f"{action} a domain")
        a.add_argument("name")
    dsub.add_parser("list", parents=[common], help="list domains")
    s.set_defaults(func=cmd_domain)

    s = sub.add_parser("user", parents=[common], help="manage users (mailboxes)")
    usub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "add a user"), ("passwd", "change a user's password")):
        a = usub.add_parser(action, parents=[common], help=text)
        a.add_argument("address")
        a.add_argument("--password", default=None, help="the password (visible to other local users: prefer the others)")
        a.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
        a.add_argument("--generate", action="store_true", help="generate a strong password and print it")
    a = usub.add_parser("remove", parents=[common], help="remove a user and all their mail")
    a.add_argument("address")
    a = usub.add_parser("list", parents=[common], help="list users with their quota and usage")
    a.add_argument("--domain", default=None)
    a = usub.add_parser("admin", parents=[common], help="let a user log in to the web admin")
    a.add_argument("address")
    a.add_argument("--off", action="store_true", help="take the right away again")
    a = usub.add_parser(
        "quota", parents=[common],
        help="ADDRESS SIZE|none: storage quota (e.g. 500M, 2G); --messages N|none for a count",
    )
    a.add_argument("address")
    a.add_argument("size", help='storage limit such as "500M", "2G", or "none"')
    a.add_argument("--messages", default=None, help='limit on the number of messages, or "none"')
    a = usub.add_parser(
        "sendas", parents=[common],
        help="grant a user the right to submit mail as another address or a whole @domain",
    )
    ssub = a.add_subparsers(dest="sendas_action", required=True, metavar="ACTION")
    for action, text in (("add", "USER ADDRESS|@DOMAIN: allow"), ("remove", "USER ADDRESS|@DOMAIN: revoke")):
        g = ssub.add_parser(action, parents=[common], help=text)
        g.add_argument("user")
        g.add_argument("address")
    g = ssub.add_parser("list", parents=[common], help="[USER]: list grants")
    g.add_argument("user", nargs="?", default=None)
    s.set_defaults(func=cmd_user)

    s = sub.add_parser("alias", parents=[common], help="manage aliases (forwarding addresses)")
    asub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser("add", parents=[common], help="SOURCE TARGET...: SOURCE may be @domain (catch-all)")
    a.add_argument("source")
    a.add_argument("targets", nargs="+")
    a = asub.add_parser("remove", parents=[common], help="SOURCE [TARGET]: remove one target or all")
    a.add_argument("source")
    a.add_argument("targets", nargs="*")
    a = asub.add_parser("list", parents=[common], help="list aliases")
    a.add_argument("--domain", default=None)
    s.set_defaults(func=cmd_alias)

    s = sub.add_parser("queue", parents=[common], help="inspect and manage the outbound queue")
    qsub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    qsub.add_parser("list", parents=[common], help="list queued messages")
    for action, text in (
        ("show", "show one message (envelope, recipients, headers)"),
        ("delete", "delete a message without notice"),
        ("hold", "stop delivery attempts of a message"),
        ("release", "resume delivery attempts of a held message"),
        ("bounce", "give up: return the message to its sender now"),
    ):
        a = qsub.add_parser(action, parents=[common], help=text)
        a.add_argument("qid")
    a = qsub.add_parser("flush", parents=[common], help="retry now: every message, one ID, or --domain")
    a.add_argument("qid", nargs="?")
    a.add_argument("--domain", default=None)
    s.set_defaults(func=cmd_queue)

    from postroom.admin.auth_cli import add_parsers

    add_parsers(sub, common)

    from postroom.admin.tlsrpt_cli import add_parsers as add_tlsrpt_parsers

    add_tlsrpt_parsers(sub, common)

    from postroom.admin.data_cli import add_parsers as add_data_parsers

    add_data_parsers(sub, common, _data_command)

    from postroom.admin.token_cli import add_parser as add_token_parser

    add_token_parser(sub, common).set_defaults(func=cmd_token)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"postroom: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
