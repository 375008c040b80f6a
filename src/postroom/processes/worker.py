"""One worker process: serves SMTP, IMAP and POP3 on the sockets the supervisor bound.

Started by the supervisor as ``python -m postroom.processes.worker FD``: FD is this
worker's end of the process bus, whose first frame carries everything else (the
settings as the supervisor loaded them, so a config file edited meanwhile cannot give
workers different settings; the worker's index; which inherited descriptors are the
listening sockets of which listener).

A worker writes to the store itself (its own SQLite connections; the engine's
cross-process lock keeps group commit), never checkpoints (the supervisor does), claims
\\Recent through the supervisor, and runs no outbound queue. On PostgreSQL it is a client
of the database like a node (its own pool, NOTIFY for changes and notes; see
``supervisor.py``). It stops gracefully on SIGTERM/SIGINT and when the bus closes (the
supervisor is gone, even by SIGKILL): it stops accepting, lets sessions finish for
``limits.shutdown_grace``, then exits. SIGHUP reloads its TLS certificate.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from typing import Any

from postroom import app, datadir, gc_pacing, logs
from postroom.config import ConfigError, Settings
from postroom.metrics import Metrics
from postroom.net.listener import ListenerSet
from postroom.processes.bus import RemoteRecent, WorkerBus, read_frame
from postroom.processes.counts import SharedCounts
from postroom.peers import Peers
from postroom.store.api import Store, StoreError
from postroom.store.open import open_store
from postroom.store.sqlite.backend import DB_NAME, SQLiteStore
from postroom.tls import TlsContexts

log = logging.getLogger("postroom.worker")


async def run(
    settings: Settings, index: int, workers: int, bus_sock: socket.socket,
    sockets: dict[int, list[int]], counts_fd: int, user_counts_fd: int,
) -> int:
    loop = asyncio.get_running_loop()
    lock = app.lock_data_dir(settings)  # while it writes, a restore must not move the folder
    if lock is None:
        return 1
    bus = WorkerBus()
    await bus.connect(bus_sock)
    metrics = Metrics()
    peers: Peers | None = bus
    store: Store
    if settings.store.backend == "sqlite":
        store = sqlite = SQLiteStore(
            settings.data_dir / DB_NAME, fsync=settings.fsync, checkpoint=False,
            relay=bus, recent=RemoteRecent(bus),
        )
        sqlite.engine.timing = metrics.store_op
        bus.hub = store.changes
    else:
        # A PostgreSQL client of its own (see processes/supervisor.py): changes and
        # notes travel by NOTIFY; only queue wake-ups go to the supervisor's queue.
        try:
            store = await open_store(settings, timing=metrics.store_op)
        except (StoreError, ConfigError) as e:
            print(f"postroom: error: worker {index}: {e}", file=sys.stderr)
            datadir.unlock(lock)
            return 1
        store.changes.subscribe_queue(bus.send_queue)
        peers = None  # the database's NOTIFY channel (app.build_services)
    tls = TlsContexts(settings.tls_cert, settings.tls_key)
    counts = SharedCounts(counts_fd, workers, index)
    user_counts = SharedCounts(user_counts_fd, workers, index)
    listeners = ListenerSet(settings.limits, tls, metrics, others=counts)
    services = app.build_services(
        settings, store, tls, listeners.shutdown, peers=peers, metrics=metrics,
    )
    services.user_ip_counts = user_counts
    services.node = f"worker{index}"
    bus.handlers["counters"] = lambda: dict(services.counters)
    bus.handlers["metrics"] = metrics.state  # added up by the supervisor's /metrics
    by_role = app.handlers(services)
    side_tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(metrics.watch_loop(), name="loop-watch"),
        asyncio.create_task(gc_pacing.run(), name="gc-pacing"),
    ]
    services.delivery_log.start(store)
    if services.dmarc_reports is not None:  # records this worker's results (sent by the supervisor)
        side_tasks.append(asyncio.create_task(services.dmarc_reports.run(), name="dmarc-recorder"))
    try:
        for lst_index, fds in sockets.items():
            lst = settings.listeners[lst_index]
            await listeners.adopt(lst, by_role[lst.role], [socket.socket(fileno=fd) for fd in fds])
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGHUP, tls.reload)
        bus.ready()
        logs.event(log, "worker_started")
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(bus.closed.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        if bus.closed.is_set() and not stop.is_set():
            logs.event(log, "worker_supervisor_gone", logging.WARNING)
        await listeners.close(settings.limits.shutdown_grace)
        await app.stop_tasks(side_tasks)
        await services.delivery_log.stop()
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if services.cpu is not None:
            services.cpu.close()
        await store.close()
        counts.close()
        user_counts.close()
        datadir.unlock(lock)
        logs.event(log, "worker_stopped")


def main() -> int:
    bus_sock = socket.socket(fileno=int(sys.argv[1]))
    bus_sock.setblocking(True)
    start: dict[str, Any] = read_frame(bus_sock)[1]
    bus_sock.setblocking(False)
    settings: Settings = start["settings"]
    logs.setup(settings.logging.level, settings.logging.format, worker=start["index"])
    # A terminal's Ctrl-C reaches the whole process group; the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with app.runner() as r:
        return r.run(run(
            settings, start["index"], start["workers"], bus_sock, start["sockets"],
            start["counts"], start["user_counts"],
        ))


if __name__ == "__main__":
    sys.exit(main())
