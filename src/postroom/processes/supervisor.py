"""The supervisor: binds the listeners, starts the worker processes, keeps them running.

``postroom serve`` with ``server.workers`` N > 1 runs this instead of the one-process
server (``app.run``). The supervisor

* opens the store (migrations run here, once) and keeps the WAL checkpointer;
* binds every listener (:func:`~postroom.net.listener.bind_sockets`), prints the same
  ``listening ROLE HOST:PORT`` lines as ``app.run`` and, once every worker is serving,
  ``ready``;
* starts N workers (``postroom.processes.worker``), each given the listening sockets and
  its end of the process bus (``bus.py``), and restarts one that exits (after 0.5 s,
  doubling up to 10 s while it keeps dying within 10 s of its start);
* relays mailbox changes between workers, answers \\Recent claims, and runs the outbound
  queue (one runner per server, so destination concurrency limits stay global);
* forwards SIGHUP to the workers (certificate reload) and, on SIGTERM/SIGINT, stops them
  (each finishes its sessions for ``limits.shutdown_grace``) before it stops the queue.

With ``store.backend = "postgresql"`` each worker is one more client of the database,
like a node of its own: its own connection pool and LISTEN/NOTIFY connection, changes
between workers (IMAP IDLE, NOTIFY) travel by NOTIFY as between nodes, \\Recent is
claimed on the mailbox row, and ``postroom.peers`` notes go by NOTIFY too. The bus then
carries only what is about this server: readiness, metrics, and the workers' queue
wake-ups (a message a worker queued is the supervisor's queue's to send; between nodes a
delivery wakes only its own node's queue). Why not relay changes over the bus as for
SQLite: NOTIFY must reach the other nodes anyway, and two paths would deliver every
change twice.

Durability does not depend on the supervisor: workers commit their own deliveries, and a
worker whose supervisor dies (even by SIGKILL) sees its bus close, stops accepting,
finishes its sessions and exits. A worker killed by SIGKILL loses only what it had not
acknowledged; connections waiting in the shared accept queue go to the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from postroom import app, datadir, gc_pacing, logs, privileges
from postroom.config import HTTP_ROLES, ConfigError, Settings
from postroom.metrics import Metrics
from postroom.net.listener import ListenerSet, bind_sockets
from postroom.processes.bus import Hub, encode
from postroom.processes.counts import SharedCounts
from postroom.peers import Peers
from postroom.queue.worker import QueueWorker
from postroom.store.api import Store, StoreError
from postroom.store.changes import LocalChangeHub
from postroom.store.open import open_store
from postroom.store.sqlite.backend import DB_NAME, SQLiteStore
from postroom.tls import TlsContexts

log = logging.getLogger("postroom")

RESTART_MIN = 0.5
RESTART_MAX = 10.0
STABLE_AFTER = 10.0  # a worker that ran this long restarts at once if it dies
READY_TIMEOUT = 120.0


class WorkerProcess:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = RESTART_MIN
        self.gone = asyncio.Event()  # set when the process has exited and was reaped
        self.gone.set()
        self.ready: asyncio.Future[None] | None = None  # the bus said "ready"


class Supervisor:
    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.hub = Hub()
        self.sockets: dict[int, list[socket.socket]] = {}  # served by the workers
        self.own_sockets: dict[int, list[socket.socket]] = {}  # HTTP: served here
        self.workers = [WorkerProcess(i + 1) for i in range(count)]
        self.counts = SharedCounts.create(count)  # connections per address, in total
        self.user_counts = SharedCounts.create(count)  # IMAP sessions per (user, address)
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- life cycle ----------------------------------------------------------------------
    async def run(self) -> int:
        """As ``app.run``: lock the data folder, bind, drop root if configured
        (``server.user``; the workers are started after, as that user), open the store,
        then start the workers and the queue."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        lock = app.lock_data_dir(settings)
        if lock is None:
            return 1
        store: Store | None = None
        services = None
        queue: QueueWorker | None = None
        side_tasks: list[asyncio.Task[None]] = []
        http = None
        metrics = Metrics()
        if settings.acme.enabled:  # the placeholder certificate, before anybody loads it
            from postroom.acme.manager import prepare

            try:
                prepare(settings, app.final_owner(settings))
            except (OSError, privileges.PrivilegeError) as e:
                print(f"postroom: error: tls.acme: {e}", file=sys.stderr)
                datadir.unlock(lock)
                return 1
        tls = TlsContexts(settings.tls_cert, settings.tls_key)
        tls.after_reload = self._hup_workers
        acme = None
        # The supervisor's own listeners: the HTTP service (admin, /metrics, autoconfig).
        listeners = ListenerSet(settings.limits, tls, metrics)
        bound_by_role: dict[str, list[tuple[str, int]]] = {}
        started_ok = False
        try:
            for i, lst in enumerate(settings.listeners):
                try:
                    socks = bind_sockets(lst)
                except OSError as e:
                    print(f"postroom: error: cannot listen on {lst}: {app.bind_error(e)}", file=sys.stderr)
                    return 1
                if lst.role in HTTP_ROLES:
                    self.own_sockets[i] = socks
                else:
                    self.sockets[i] = socks
                for sock in socks:
                    host, port = sock.getsockname()[:2]
                    bound_by_role.setdefault(lst.role, []).append((host, port))
                    app.announce(lst, host, port)
            if not app.drop_privileges(settings):
                return 1
            peers: Peers | None = self.hub
            if settings.store.backend == "sqlite":
                store = sqlite = SQLiteStore(
                    settings.data_dir / DB_NAME, fsync=settings.fsync, relay=self.hub
                )
                sqlite.engine.timing = metrics.store_op
                marks = sqlite.recent_marks
                self.hub.handlers.update({
                    "recent.claim": marks.claim_now,
                    "recent.claim_known": marks.claim_known_now,
                    "recent.known": marks.known_now,
                    "recent.forget": marks.forget,
                })
            else:
                # PostgreSQL: the workers are nodes of the database like any other (see
                # the module docstring); the schema is migrated here, before they start.
                try:
                    store = await open_store(settings, timing=metrics.store_op)
                except (StoreError, ConfigError) as e:
                    print(f"postroom: error: {e}", file=sys.stderr)
                    return 1
                peers = None  # the database's NOTIFY channel (app.build_services)
            assert isinstance(store.changes, LocalChangeHub)
            self.hub.hub = store.changes  # the workers' queue wake-ups (and SQLite changes)
            services = app.build_services(
                settings, store, tls, listeners.shutdown, peers=peers, metrics=metrics,
                bound=bound_by_role,
            )
            metrics.others = self._worker_metrics
            for w in self.workers:
                await self._spawn(w)
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(w.ready for w in self.workers if w.ready is not None)),
                    READY_TIMEOUT,
                )
            except (ConnectionError, TimeoutError) as e:
                why = str(e) or f"not ready after {READY_TIMEOUT:.0f} s"
                print(f"postroom: error: a worker process did not start: {why}", file=sys.stderr)
                return 1
            queue = QueueWorker(services)
            await queue.start()
            services.delivery_log.start(store)
            side_tasks.append(asyncio.create_task(metrics.watch_loop(), name="loop-watch"))
            side_tasks.append(asyncio.create_task(gc_pacing.run(), name="gc-pacing"))
            http, protocols = await app.start_http(services, listeners)
            for i, socks in self.own_sockets.items():
                lst = settings.listeners[i]
                await listeners.adopt(lst, None, socks, protocols[lst.role])
            if settings.acme.enabled:
                # Here, next to the HTTP service that answers HTTP-01 and the https
                # listener that answers TLS-ALPN-01 (the CA connects to ports 80 and 443).
                from postroom.acme.manager import AcmeManager

                acme = AcmeManager(services)
                side_tasks.append(asyncio.create_task(acme.run(), name="acme"))
            if services.dmarc_reports is not None:
                # The workers record the DMARC results of their MX sessions; the reports
                # go out once per server, from here.
                from postroom.policy.reports import report_loop

                side_tasks.append(asyncio.create_task(report_loop(services), name="dmarc-reports"))
            side_tasks += app.tls_report_tasks(services)
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            loop.add_signal_handler(signal.SIGHUP, app.on_hangup, tls, acme)
            logs.event(
                log, "started", hostname=settings.hostname, listeners=len(settings.listeners),
                workers=self.count,
            )
            started_ok = True
            services.ready = True
            print("ready", flush=True)
            await stop.wait()
            logs.event(log, "stopping", workers=self.count)
            services.ready = False
            return 0
        finally:
            self.stopping = True
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if http is not None:
                await http.close()
            await listeners.close(settings.limits.shutdown_grace)
            await self._stop_workers()
            if queue is not None:
                await queue.stop()
            await app.stop_tasks(side_tasks)
            if services is not None:
                await services.delivery_log.stop()
            for socks in self.sockets.values():
                for sock in socks:
                    sock.close()
            if services is not None and services.cpu is not None:
                services.cpu.close()
            if store is not None:
                await store.close()
            for counts in (self.counts, self.user_counts):
                counts.close()
                os.close(counts.fd)
            datadir.unlock(lock)
            if started_ok:
                logs.event(log, "stopped")

    def _hup_workers(self) -> None:
        """The supervisor's certificate was reloaded (SIGHUP, or ACME installed a new one):
        the workers reload theirs from the same files."""
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGHUP)

    async def _worker_metrics(self) -> list[dict[str, Any]]:
        """Every worker's figures, for ``/metrics`` (one bus call per worker)."""
        return list((await self.hub.gather("metrics")).values())

    # -- workers ---------------------------------------------------------------------------
    async def _spawn(self, w: WorkerProcess) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {i: [s.fileno() for s in socks] for i, socks in self.sockets.items()}
        inherited = [
            theirs.fileno(), self.counts.fd, self.user_counts.fd,
            *(fd for group in fds.values() for fd in group),
        ]
        try:
            w.proc = subprocess.Popen(
                [sys.executable, "-m", "postroom.processes.worker", str(theirs.fileno())],
                pass_fds=inherited, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        w.started = time.monotonic()
        w.gone.clear()
        # The start frame fits the socket buffer: written before the loop owns the socket.
        start = {
            "index": w.index, "workers": self.count, "settings": self.settings, "sockets": fds,
            "counts": self.counts.fd, "user_counts": self.user_counts.fd,
        }
        ours.sendall(encode(("start", start)))
        ours.setblocking(False)
        peer = await self.hub.attach(w.index, ours, lambda: self._exited(w))
        w.ready = peer.ready
        logs.event(log, "worker_spawned", worker=w.index, pid=w.proc.pid)

    def _exited(self, w: WorkerProcess) -> None:
        task = asyncio.ensure_future(self._reap(w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, w: WorkerProcess) -> None:
        proc = w.proc
        assert proc is not None
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        self.counts.clear(w.index)  # its connections died with it
        self.user_counts.clear(w.index)
        w.gone.set()
        if self.stopping:
            return
        ran = time.monotonic() - w.started
        logs.event(
            log, "worker_exited", logging.ERROR, worker=w.index, pid=proc.pid, code=code,
            ran=round(ran, 1),
        )
        w.backoff = RESTART_MIN if ran >= STABLE_AFTER else min(RESTART_MAX, w.backoff * 2)
        await asyncio.sleep(w.backoff if ran < STABLE_AFTER else 0)
        if self.stopping:
            return
        try:
            await self._spawn(w)
        except OSError as e:
            logs.event(log, "worker_spawn_failed", logging.ERROR, worker=w.index, error=str(e))
            self._exited(w)  # try again after the next backoff

    async def _stop_workers(self) -> None:
        running = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for w in running:
            with contextlib.suppress(ProcessLookupError):
                assert w.proc is not None
                w.proc.send_signal(signal.SIGTERM)
        grace = self.settings.limits.shutdown_grace + 5
        waits = [asyncio.ensure_future(w.gone.wait()) for w in running]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for t in pending:
                t.cancel()
        for w in running:
            if w.proc is not None and w.proc.poll() is None:
                logs.event(log, "worker_killed", logging.WARNING, worker=w.index, pid=w.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await asyncio.get_running_loop().run_in_executor(None, w.proc.wait)


async def supervise(settings: Settings, count: int) -> int:
    return await Supervisor(settings, count).run()
