"""Wiring: load settings, open the store, start listeners and workers, handle signals.

Everything is built here and passed down explicitly; nothing else creates services.
``serve`` prints one ``listening ROLE ADDRESS:PORT`` line per bound socket (the real port
when the config says port 0, which tests use) and then ``ready``.

With ``server.workers`` above 1, ``serve`` runs the supervisor instead
(``postroom.processes``): it binds the sockets and prints the same lines, and worker
processes build their services with :func:`build_services` and :func:`handlers`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from typing import Any

from postroom import config, datadir, gc_pacing, logs, privileges
from postroom.activity import DeliveryLog
from postroom.auth.directory import Directory
from postroom.auth.failures import MemoryLoginGuard, SharedLoginGuard
from postroom.config import HTTP_ROLES, Listener, Settings
from postroom.metrics import Metrics
from postroom.net.listener import Handler, ListenerSet, Shutdown
from postroom.net.offload import CpuPool
from postroom.peers import LocalPeers, Peers
from postroom.policy.disk import FreeSpaceGuard
from postroom.policy.dns import make_resolver
from postroom.services import Services, load_secret
from postroom.store.api import Store
from postroom.store.open import node_name, node_peers
from postroom.tls import TlsContexts

log = logging.getLogger("postroom")


def build_services(
    settings: Settings, store: Store, tls: TlsContexts, shutdown: Shutdown,
    peers: Peers | None = None, metrics: Metrics | None = None,
    bound: dict[str, list[tuple[str, int]]] | None = None,
) -> Services:
    """What every handler receives; the same in one process and in each worker process.

    Call it after the privilege drop: the CPU worker pool (``limits.cpu_workers``, per
    serving process) starts its processes on first use, as the final user.

    ``peers``: the other serving processes (default: the backend's own channel between
    nodes, PostgreSQL's NOTIFY; else none). ``metrics``: the process's figures (its
    store timings are already wired by :func:`open_store`); ``bound``: where each role
    listens (auto-configuration answers)."""
    metrics = metrics if metrics is not None else Metrics()
    peers = peers if peers is not None else node_peers(store) or LocalPeers()
    services = Services(
        settings=settings, store=store,
        directory=Directory(store, settings.limits.auth_cache_ttl, settings.smtp.postmaster),
        tls=tls, shutdown=shutdown, secret=load_secret(settings.data_dir),
        resolver=make_resolver(
            settings.outbound.resolver, timeout=settings.dns.timeout,
            cache_entries=settings.dns.cache_entries, observe=metrics.dns_query,
        ),
        free_space=FreeSpaceGuard(settings.data_dir, settings.limits.free_space_threshold),
        peers=peers,
        node=node_name(settings),
        cpu=CpuPool(settings.limits.cpu_workers),
        # Failed logins count in every serving process (docs/operations.md).
        login_guard=SharedLoginGuard(MemoryLoginGuard.from_limits(settings.limits), peers),
        metrics=metrics, delivery_log=DeliveryLog(settings.logging.delivery_log),
        bound=bound if bound is not None else {},
    )
    _auth_services(services)
    return services


def handlers(services: Services) -> dict[str, Handler]:
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


async def start_http(
    services: Services, listeners: ListenerSet,
) -> tuple[Any, dict[str, tuple[Any, bytes]]]:
    """The HTTP service, when an http/https listener exists: (service, protocols by role
    for :meth:`ListenerSet.attach`/``adopt``); (None, {}) otherwise. It runs in one process
    only (the supervisor with ``server.workers``): it is light, and the admin actions
    it offers (queue, DKIM, DNS checks) belong with the outbound queue."""
    if not {lst.role for lst in services.settings.listeners} & HTTP_ROLES:
        return None, {}
    from postroom.web.server import REFUSAL, HttpService

    http = HttpService(services)
    await http.setup()
    return http, {role: (http.protocol_factory, REFUSAL) for role in HTTP_ROLES}


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
    tls_reports = settings.tls_reports
    if tls_reports.send or tls_reports.receive:
        from postroom.policy.tls_reports import TlsRecorder, TlsReportInbox

        if tls_reports.send and services.resolver is not None:
            services.tls_results = TlsRecorder(services.store)  # flushed where the queue runs
        if tls_reports.receive:
            services.tls_inbox = TlsReportInbox(services.store, tls_reports.address)


def tls_report_tasks(services: Services) -> list[asyncio.Task[None]]:
    """Where the queue runs: flush its TLS-RPT counts, send the daily reports."""
    if services.tls_results is None:
        return []
    from postroom.policy.tls_reports import report_loop

    return [
        asyncio.create_task(services.tls_results.run(), name="tlsrpt-recorder"),
        asyncio.create_task(report_loop(services), name="tlsrpt-reports"),
    ]


async def run(settings: Settings, started: asyncio.Future[Any] | None = None) -> int:
    """Bind, drop root if configured (``server.user``), then open the store and serve.

    The order matters for ``server.user``: ports below 1024 need root (or
    CAP_NET_BIND_SERVICE), and everything that creates files (the store, the server
    secret, the queue journal) must run as the final user so that it owns them.
    """
    from postroom.store.api import StoreError
    from postroom.store.open import open_store

    loop = asyncio.get_running_loop()
    lock = lock_data_dir(settings)
    if lock is None:
        return 1
    metrics = Metrics()
    if settings.acme.enabled:
        from postroom.acme.manager import prepare

        try:
            prepare(settings, final_owner(settings))
        except (OSError, privileges.PrivilegeError) as e:
            print(f"postroom: error: tls.acme: {e}", file=sys.stderr)
            datadir.unlock(lock)
            return 1
    tls = TlsContexts(settings.tls_cert, settings.tls_key)
    listeners = ListenerSet(settings.limits, tls, metrics)
    bound_by_role: dict[str, list[tuple[str, int]]] = {}
    for lst in settings.listeners:
        try:
            if lst.role in HTTP_ROLES:  # served by the HTTP service's protocol (attached below)
                bound = await listeners.start_protocol(lst)
            else:
                bound = await listeners.start(lst)
        except OSError as e:
            print(f"postroom: error: cannot listen on {lst}: {bind_error(e)}", file=sys.stderr)
            datadir.unlock(lock)
            return 1
        bound_by_role.setdefault(lst.role, []).extend(bound)
        for host, port in bound:
            announce(lst, host, port)
    if not drop_privileges(settings):
        datadir.unlock(lock)
        return 1
    try:
        store = await open_store(settings, timing=metrics.store_op)
    except (StoreError, config.ConfigError) as e:
        # An unreachable database, or a schema this postroom must not touch (newer than
        # it knows, or older with store.auto_migrate off): say so and stop.
        print(f"postroom: error: {e}", file=sys.stderr)
        await listeners.close(0)
        datadir.unlock(lock)
        return 1
    services = build_services(
        settings, store, tls, listeners.shutdown, metrics=metrics, bound=bound_by_role,
    )
    by_role = handlers(services)
    workers: list[Any] = []
    side_tasks: list[asyncio.Task[None]] = []
    background: list[asyncio.Task[Any]] = []  # ours: cancelled at any exit
    http = None
    started_ok = False
    try:
        http, protocols = await start_http(services, listeners)
        await listeners.attach(by_role, protocols)
        from postroom.queue.worker import QueueWorker

        worker = QueueWorker(services)
        workers.append(worker)
        await worker.start()
        services.delivery_log.start(store)
        background.append(asyncio.create_task(metrics.watch_loop(), name="loop-watch"))
        background.append(asyncio.create_task(gc_pacing.run(), name="gc-pacing"))
        acme = None
        if settings.acme.enabled:
            from postroom.acme.manager import AcmeManager

            acme = AcmeManager(services)
            side_tasks.append(asyncio.create_task(acme.run(), name="acme"))
        if services.dmarc_reports is not None:
            from postroom.policy.reports import report_loop

            side_tasks.append(asyncio.create_task(services.dmarc_reports.run(), name="dmarc-recorder"))
            side_tasks.append(asyncio.create_task(report_loop(services), name="dmarc-reports"))
        side_tasks += tls_report_tasks(services)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_hangup, tls, acme)
        logs.event(log, "started", hostname=settings.hostname, listeners=len(settings.listeners))
        started_ok = True
        services.ready = True
        print("ready", flush=True)
        if started is not None:
            started.set_result(services)
        await stop.wait()
        logs.event(log, "stopping", connections=listeners.connection_count)
        services.ready = False
        if http is not None:
            await http.close()
        await listeners.close(settings.limits.shutdown_grace)
        for worker in workers:
            await worker.stop()
        await stop_tasks(side_tasks)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await stop_tasks(background)
        if http is not None:
            await http.close()
        await services.delivery_log.stop()
        if services.cpu is not None:
            services.cpu.close()
        await store.close()
        datadir.unlock(lock)
        if started_ok:
            logs.event(log, "stopped")


def lock_data_dir(settings: Settings) -> int | None:
    """The data folder's shared lock (``postroom.datadir``), held by every serving process;
    None (the error printed) while a restore holds it."""
    try:
        return datadir.lock_shared(settings.data_dir)
    except datadir.DataDirBusy as e:
        print(f"postroom: error: {e}", file=sys.stderr)
        return None


def announce(lst: Listener, host: str, port: int) -> None:
    """The ``listening ROLE ADDRESS:PORT`` line (tests and scripts read the real port)."""
    shown = f"[{host}]" if ":" in host else host
    print(f"listening {lst.role} {shown}:{port}", flush=True)


def drop_privileges(settings: Settings) -> bool:
    """After binding: switch to ``server.user`` if configured; False (the error printed)
    when that fails. Warns when the TLS key is no longer readable (reloads would fail)."""
    if settings.server.user:
        try:
            if privileges.drop(settings.server.user, settings.server.group):
                logs.event(log, "privileges_dropped", user=settings.server.user, uid=os.getuid())
        except (privileges.PrivilegeError, OSError) as e:
            print(f"postroom: error: server.user: {e}", file=sys.stderr)
            return False
    if settings.tls_key is not None and not os.access(settings.tls_key, os.R_OK):
        logs.event(log, "tls_key_unreadable", logging.WARNING, key=str(settings.tls_key),
                   effect="certificate reloads (SIGHUP) will fail")
    return True


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks and give them a moment to finish (a last flush)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=10)


def on_hangup(tls: TlsContexts, acme: Any) -> None:
    """SIGHUP: reload the certificate files; with ACME, also look again at once whether a
    certificate is due (new domains)."""
    tls.reload()
    if acme is not None:
        acme.check_now()


def final_owner(settings: Settings) -> tuple[int, int] | None:
    """(uid, gid) of ``server.user`` when running as root and dropping to it, else None."""
    if not settings.server.user or os.geteuid() != 0:
        return None
    return privileges.account(settings.server.user, settings.server.group)


def bind_error(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address already in use (another server on that port?)"
    if e.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if e.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine"
    return e.strerror or str(e)


def runner() -> asyncio.Runner:
    """The event loop every postroom process runs (uvloop when installed)."""
    # The SQLite writer and reader threads need the GIL back after every sqlite3 call, and
    # each 250 waits for the writer. With the default 5 ms switch interval a busy event loop
    # makes them wait up to 5 ms each time; 1 ms gave 10-20% more SMTP messages/s at 20
    # sessions (bench/smtp_accept.py, paired runs) for no measurable CPU cost.
    sys.setswitchinterval(0.001)
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def serve(settings: Settings) -> int:
    logs.setup(settings.logging.level, settings.logging.format)
    workers = settings.server.worker_count()
    with runner() as r:
        if workers > 1:
            from postroom.processes.supervisor import supervise

            return r.run(supervise(settings, workers))
        return r.run(run(settings))
