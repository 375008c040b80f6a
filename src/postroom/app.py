"""Wiring: load settings, open the store, start listeners and workers, handle signals.

Everything is built here and passed down explicitly; nothing else creates services.
``serve`` prints one ``listening ROLE ADDRESS:PORT`` line per bound socket (the real port
when the config says port 0, which tests use) and then ``ready``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from typing import Any

from postroom import config, datadir, logs, privileges
from postroom.auth.directory import Directory
from postroom.config import Settings
from postroom.net.listener import Handler, ListenerSet
from postroom.net.offload import CpuPool
from postroom.policy.disk import FreeSpaceGuard
from postroom.policy.dns import make_resolver
from postroom.services import Services, load_secret
from postroom.tls import TlsContexts

log = logging.getLogger("postroom")


def _handlers(services: Services) -> dict[str, Handler]:
    """One handler per protocol family, built only for the roles the config uses."""
    roles = {lst.role for lst in services.settings.listeners}
    handlers: dict[str, Handler] = {}
    if roles & {"mx", "submission", "submissions"}:
        from postroom.net.smtp import SmtpHandler

        smtp = SmtpHandler(services)
        handlers.update(mx=smtp, submission=smtp, submissions=smtp)
    if roles & {"imap", "imaps"}:
        from postroom.net.imap import ImapHandler

        imap = ImapHandler(services)
        handlers.update(imap=imap, imaps=imap)
    if roles & {"pop3", "pop3s"}:
        from postroom.net.pop3 import Pop3Handler

        pop3 = Pop3Handler(services)
        handlers.update(pop3=pop3, pop3s=pop3)
    return handlers


def _auth_services(services: Services) -> None:
    """DKIM signing (always built: it is idle without keys), inbound checks and the DMARC
    report recorder (only when an mx listener exists and the settings ask for them)."""
    from postroom.policy.signing import Signer

    settings = services.settings
    services.signer = Signer(services.store, enabled=settings.dkim.sign)
    has_mx = any(lst.role == "mx" for lst in settings.listeners)
    if has_mx and settings.auth_checks.enabled and services.resolver is not None:
        from postroom.policy.inbound import AuthChecker

        services.auth_checker = AuthChecker(services.resolver, settings.auth_checks, settings.hostname)
        if settings.auth_checks.reports:
            from postroom.policy.reports import DmarcRecorder

            services.dmarc_reports = DmarcRecorder(services.store)


async def run(settings: Settings, started: asyncio.Future[Any] | None = None) -> int:
    """Bind, drop root if configured (``server.user``), then open the store and serve.

    The order matters for ``server.user``: ports below 1024 need root (or
    CAP_NET_BIND_SERVICE), and everything that creates files (the store, the server
    secret, the queue journal) must run as the final user so that it owns them.
    """
    from postroom.store.api import StoreError
    from postroom.store.open import node_name, open_store

    loop = asyncio.get_running_loop()
    try:
        lock = datadir.lock_shared(settings.data_dir)
    except datadir.DataDirBusy as e:
        print(f"postroom: error: {e}", file=sys.stderr)
        return 1
    tls = TlsContexts(settings.tls_cert, settings.tls_key)
    listeners = ListenerSet(settings.limits, tls)
    for lst in settings.listeners:
        try:
            bound = await listeners.start(lst)
        except OSError as e:
            print(f"postroom: error: cannot listen on {lst}: {_bind_error(e)}", file=sys.stderr)
            datadir.unlock(lock)
            return 1
        for host, port in bound:
            shown = f"[{host}]" if ":" in host else host
            print(f"listening {lst.role} {shown}:{port}", flush=True)
    if settings.server.user:
        try:
            if privileges.drop(settings.server.user, settings.server.group):
                logs.event(log, "privileges_dropped", user=settings.server.user, uid=os.getuid())
        except (privileges.PrivilegeError, OSError) as e:
            print(f"postroom: error: server.user: {e}", file=sys.stderr)
            datadir.unlock(lock)
            return 1
    if settings.tls_key is not None and not os.access(settings.tls_key, os.R_OK):
        logs.event(log, "tls_key_unreadable", logging.WARNING, key=str(settings.tls_key),
                   effect="certificate reloads (SIGHUP) will fail")
    try:
        store = await open_store(settings)
    except (StoreError, config.ConfigError) as e:
        # An unreachable database, or a schema this postroom must not touch (newer than
        # it knows, or older with store.auto_migrate off): say so and stop.
        print(f"postroom: error: {e}", file=sys.stderr)
        await listeners.close(0)
        datadir.unlock(lock)
        return 1
    # Worker processes start on first use, so as the final user (after the privilege drop).
    cpu = CpuPool(settings.limits.cpu_workers)
    services = Services(
        settings=settings, store=store,
        directory=Directory(store, settings.limits.auth_cache_ttl, settings.smtp.postmaster),
        tls=tls, shutdown=listeners.shutdown, secret=load_secret(settings.data_dir),
        resolver=make_resolver(
            settings.outbound.resolver, timeout=settings.dns.timeout,
            cache_entries=settings.dns.cache_entries,
        ),
        free_space=FreeSpaceGuard(settings.data_dir, settings.limits.free_space_threshold),
        node=node_name(settings),
        cpu=cpu,
    )
    _auth_services(services)
    handlers = _handlers(services)
    workers: list[Any] = []
    side_tasks: list[asyncio.Task[None]] = []
    started_ok = False
    try:
        await listeners.attach(handlers)
        from postroom.queue.worker import QueueWorker

        worker = QueueWorker(services)
        workers.append(worker)
        await worker.start()
        if services.dmarc_reports is not None:
            from postroom.policy.reports import report_loop

            side_tasks.append(asyncio.create_task(services.dmarc_reports.run(), name="dmarc-recorder"))
            side_tasks.append(asyncio.create_task(report_loop(services), name="dmarc-reports"))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, tls.reload)
        logs.event(log, "started", hostname=settings.hostname, listeners=len(settings.listeners))
        started_ok = True
        print("ready", flush=True)
        if started is not None:
            started.set_result(services)
        await stop.wait()
        logs.event(log, "stopping", connections=listeners.connection_count)
        await listeners.close(settings.limits.shutdown_grace)
        for worker in workers:
            await worker.stop()
        for task in side_tasks:
            task.cancel()
        if side_tasks:
            await asyncio.wait(side_tasks, timeout=10)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        cpu.close()
        await store.close()
        datadir.unlock(lock)
        if started_ok:
            logs.event(log, "stopped")


def _bind_error(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address already in use (another server on that port?)"
    if e.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if e.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return e.strerror or str(e)


def serve(settings: Settings) -> int:
    logs.setup(settings.logging.level, settings.logging.format)
    # The SQLite writer and reader threads need the GIL back after every sqlite3 call, and
    # each 250 waits for the writer. With the default 5 ms switch interval a busy event loop
    # makes them wait up to 5 ms each time; 1 ms gave 10-20% more SMTP messages/s at 20
    # sessions (bench/smtp_accept.py, paired runs) for no measurable CPU cost.
    sys.setswitchinterval(0.001)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(run(settings))
