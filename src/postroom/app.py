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
import signal
import sys
from typing import Any

from postroom import logs
from postroom.auth.directory import Directory
from postroom.config import Settings
from postroom.net.listener import Handler, ListenerSet, Shutdown
from postroom.peers import LocalPeers, Peers
from postroom.services import Services, load_secret
from postroom.store.api import Store
from postroom.tls import TlsContexts

log = logging.getLogger("postroom")


def build_services(
    settings: Settings, store: Store, tls: TlsContexts, shutdown: Shutdown,
    peers: Peers | None = None,
) -> Services:
    return Services(
        settings=settings, store=store, directory=Directory(store, settings.limits.auth_cache_ttl),
        tls=tls, shutdown=shutdown, secret=load_secret(settings.data_dir),
        peers=peers if peers is not None else LocalPeers(),
    )


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


async def run(settings: Settings, started: asyncio.Future[Any] | None = None) -> int:
    from postroom.store.sqlite import open_store

    loop = asyncio.get_running_loop()
    store = open_store(settings.data_dir, fsync=settings.fsync)
    tls = TlsContexts(settings.tls_cert, settings.tls_key)
    listeners = ListenerSet(settings.limits, tls)
    services = build_services(settings, store, tls, listeners.shutdown)
    by_role = handlers(services)
    workers: list[Any] = []
    started_ok = False
    try:
        for lst in settings.listeners:
            try:
                bound = await listeners.start(lst, by_role[lst.role])
            except OSError as e:
                print(f"postroom: error: cannot listen on {lst}: {bind_error(e)}", file=sys.stderr)
                return 1
            for host, port in bound:
                shown = f"[{host}]" if ":" in host else host
                print(f"listening {lst.role} {shown}:{port}", flush=True)
        from postroom.queue.worker import QueueWorker

        worker = QueueWorker(services)
        workers.append(worker)
        await worker.start()
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
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await store.close()
        if started_ok:
            logs.event(log, "stopped")


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
