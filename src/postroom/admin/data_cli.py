"""CLI commands that move mail in and out: ``import``, ``export``, ``backup``, ``restore``.

The work is done by functions in ``admin/importer.py``, ``admin/export.py`` and
``admin/backup.py`` (which the HTTP admin API can call as well); this module only parses
arguments, asks for a password, shows progress on stderr (``--quiet`` hides it) and prints
the result (``--json`` for scripts). Exit status: 0 when everything was done; 1 when
something was left out or the run was interrupted (a second run resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from postroom import config, datadir
from postroom.admin.progress import Progress, terminal_sink
from postroom.admin.service import AdminError

Load = Callable[..., config.Settings]


class DataCliError(Exception):
    pass


def _progress(args: argparse.Namespace) -> Progress:
    return Progress(None if args.quiet else terminal_sink())


def _run_with_store(
    settings: config.Settings, fn: Callable[[Any], Coroutine[Any, Any, Any]]
) -> Any:
    from postroom.store.api import StoreError
    from postroom.store.open import open_store

    if not settings.data_dir.is_dir():
        raise DataCliError(f"{settings.data_dir}: data folder missing (run `postroom init`)")

    async def run() -> Any:
        lock = datadir.lock_shared(settings.data_dir)
        try:
            store = await open_store(settings)
        except BaseException:
            datadir.unlock(lock)
            raise
        try:
            return await fn(store)
        finally:
            await store.close()
            datadir.unlock(lock)

    try:
        return asyncio.run(run())
    except (AdminError, datadir.DataDirBusy, StoreError, config.ConfigError) as e:
        raise DataCliError(str(e)) from None


def _imap_password(args: argparse.Namespace) -> str:
    if args.password_stdin and args.password_file:
        raise DataCliError("use only one of --password-stdin, --password-file")
    if args.password_file:
        try:
            return Path(args.password_file).read_text().splitlines()[0]
        except (OSError, IndexError) as e:
            raise DataCliError(f"--password-file: {getattr(e, 'strerror', None) or 'empty file'}") from None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise DataCliError("no password: use --password-stdin or --password-file")
    return getpass.getpass(f"Password of {args.login} on {args.host}: ")


def cmd_import(args: argparse.Namespace, load: Load) -> int:
    from postroom.admin.importer import import_into

    settings = load(args, files=False)
    limit = settings.limits.message_size
    source: Any
    if args.kind == "maildir":
        from postroom.admin.maildir import MaildirSource

        source = MaildirSource(Path(args.path), limit)
    elif args.kind == "mbox":
        from postroom.admin.mbox import MboxSource

        if args.mailbox and (len(args.paths) > 1 or Path(args.paths[0]).is_dir()):
            raise DataCliError("--mailbox names the target of one mbox file; use --into for several")
        source = MboxSource([Path(p) for p in args.paths], limit, mailbox=args.mailbox)
    else:
        from postroom.admin.imap_source import ImapOptions, ImapSource

        host, _, port = args.host.rpartition(":") if args.host.count(":") == 1 else (args.host, "", "")
        options = ImapOptions(
            host=host, login=args.login, password=_imap_password(args),
            port=args.port or (int(port) if port.isdigit() else None), tls=args.tls,
            ca_file=args.ca_file, verify=not args.no_verify, timeout=args.timeout,
            folders=tuple(args.folder or ()), exclude=tuple(args.exclude or ()),
            recopy_renumbered=args.recopy_renumbered,
        )
        source = ImapSource(options, limit)
    progress = _progress(args)
    report = _run_with_store(
        settings, lambda store: import_into(
            store, args.address, source, message_size=limit,
            max_mailboxes=settings.limits.mailboxes_per_user, into=args.into, progress=progress)
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        d = report.as_dict()
        print(f"imported {d['copied']} messages into {report.user} ({d['already']} already "
              f"there, {d['skipped']} left out)")
    if report.interrupted:
        raise DataCliError(f"import interrupted: {report.interrupted} (run it again to resume)")
    if not report.ok:
        bad = [f for f in report.folders if f.error or f.skipped]
        raise DataCliError(f"{len(bad)} folder(s) not copied completely (see above)")
    return 0


def cmd_export(args: argparse.Namespace, load: Load) -> int:
    from postroom.admin.export import export_all, export_user

    settings = load(args, files=False)
    progress = _progress(args)
    dest = Path(args.destination)
    if args.all:
        if args.address or args.mailbox:
            raise DataCliError("--all exports every user: give no ADDRESS or --mailbox")
        reports = _run_with_store(
            settings, lambda store: export_all(store, dest, hostname=settings.hostname,
                                               progress=progress))
    else:
        if not args.address:
            raise DataCliError("name the user to export (or --all)")
        reports = [_run_with_store(
            settings, lambda store: export_user(store, args.address, dest,
                                                hostname=settings.hostname,
                                                mailboxes=args.mailbox, progress=progress))]
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2, ensure_ascii=False))
    else:
        for r in reports:
            d = r.as_dict()
            print(f"exported {r.user}: {len(r.mailboxes)} mailboxes, {d['written']} messages "
                  f"written to {r.destination}")
    failed = [m.mailbox for r in reports for m in r.mailboxes if m.error]
    if failed:
        raise DataCliError(f"not exported: {', '.join(failed)} (see above)")
    return 0


def cmd_backup(args: argparse.Namespace, load: Load) -> int:
    from postroom.admin.backup import backup

    settings = load(args, files=False)
    try:
        report = asyncio.run(backup(settings, Path(args.destination), _progress(args)))
    except (AdminError, datadir.DataDirBusy) as e:
        raise DataCliError(str(e)) from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        c = report.counts
        print(f"backup written to {report.destination}: {c['users']} users, {c['mailboxes']} "
              f"mailboxes, {c['messages']} messages, {len(report.files)} other files "
              f"({report.seconds:.1f} s)")
    return 0


def cmd_restore(args: argparse.Namespace, load: Load) -> int:
    from postroom.admin.backup import restore, verify

    source = Path(args.source)
    try:
        if args.check:
            manifest = verify(source, _progress(args))
            out: dict[str, Any] = {"ok": True, "created": manifest.get("created"),
                                   "counts": manifest.get("counts", {})}
            print(json.dumps(out, indent=2) if args.json else
                  f"{source}: backup of {manifest.get('created')} is complete and intact")
            return 0
        settings = load(args, files=False)
        report = asyncio.run(restore(settings, source, force=args.force, progress=_progress(args)))
    except (AdminError, datadir.DataDirBusy) as e:
        raise DataCliError(str(e)) from None
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"restored into {report.data_dir}" +
              (f" (the previous data folder is {report.replaced})" if report.replaced else ""))
        for ext in report.external:
            print(f"  not restored: {ext['original']} (a copy is in {ext['file']})")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser, run: Callable[..., Any]) -> None:
    """The four commands; ``run(name)`` wraps a command function for cli.py."""
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parents = [common, quiet]

    s = sub.add_parser("import", parents=parents, help="copy mail in from Maildir, mbox or an IMAP server")
    isub = s.add_subparsers(dest="kind", required=True, metavar="SOURCE")
    a = isub.add_parser("maildir", parents=parents, help="ADDRESS PATH: a Maildir (Maildir++ or one folder per level)")
    a.add_argument("address")
    a.add_argument("path")
    a.add_argument("--into", default=None, help="put every folder under this mailbox")
    a = isub.add_parser("mbox", parents=parents, help="ADDRESS PATH...: mbox files, or folders of them")
    a.add_argument("address")
    a.add_argument("paths", nargs="+", metavar="PATH")
    a.add_argument("--mailbox", default=None, help="target mailbox of a single file (default: the file's name)")
    a.add_argument("--into", default=None, help="put every folder under this mailbox")
    a = isub.add_parser("imap", parents=parents, help="ADDRESS --host H --login U: every folder of an IMAP account")
    a.add_argument("address")
    a.add_argument("--host", required=True, help="the IMAP server (HOST or HOST:PORT)")
    a.add_argument("--port", type=int, default=None, help="default: 993 (--tls implicit), else 143")
    a.add_argument("--login", required=True, help="the user name on that server")
    a.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    a.add_argument("--password-file", default=None, help="read the password from the first line of this file")
    a.add_argument("--tls", choices=("implicit", "starttls", "none"), default="implicit",
                   help="implicit TLS (993, default), STARTTLS (143), or none (plain text)")
    a.add_argument("--ca-file", default=None, help="trust the CA certificates in this PEM file")
    a.add_argument("--no-verify", action="store_true", help="do not check the server's certificate")
    a.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server (default 60)")
    a.add_argument("--folder", action="append", help="copy only this folder (repeatable)")
    a.add_argument("--exclude", action="append", help="leave this folder out (repeatable)")
    a.add_argument("--into", default=None, help="put every folder under this mailbox")
    a.add_argument("--recopy-renumbered", action="store_true",
                   help="copy again, whole, folders whose UIDVALIDITY changed since the last run")
    s.set_defaults(func=run(cmd_import))

    s = sub.add_parser("export", parents=parents, help="write a user's mailboxes as Maildir++ (Dovecot's layout)")
    s.add_argument("address", nargs="?", default=None)
    s.add_argument("destination")
    s.add_argument("--mailbox", action="append", help="only this mailbox (repeatable)")
    s.add_argument("--all", action="store_true", help="every user, into DESTINATION/ADDRESS/")
    s.set_defaults(func=run(cmd_export))

    s = sub.add_parser("backup", parents=parents, help="copy the data folder (while the server runs) to a new folder")
    s.add_argument("destination")
    s.set_defaults(func=run(cmd_backup))

    s = sub.add_parser("restore", parents=parents, help="replace the data folder with a backup (server stopped)")
    s.add_argument("source")
    s.add_argument("--force", action="store_true", help="replace a data folder that is not empty (it is kept aside)")
    s.add_argument("--check", action="store_true", help="only verify the backup's checksums")
    s.set_defaults(func=run(cmd_restore))
