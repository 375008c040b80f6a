"""Prometheus metrics: what the server counts, and the ``/metrics`` text.

Why one object on its own registry rather than prometheus_client's global default
registry: wiring stays explicit (``app.py`` builds one :class:`Metrics` and hands it down
in ``Services``), and tests can run several servers' worth of objects in one process.

Cost on the hot paths: prometheus_client's own Counter and Histogram take a lock and
resolve labels on every update, about 2-4 µs each on the 2-core development machine, and
an SMTP message touches about ten of them. Every update here happens on the event-loop
thread, so no lock is needed: counters are plain dict entries (``+= 1``, ~0.1 µs) and
histograms plain lists of bucket counts (a ``bisect``), turned into Prometheus metric
families by a collector only when ``/metrics`` is scraped. The official client still does
the exposition format, types and the registry. Figures that need the store (queue size and
age) are also read at scrape time.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from postroom import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Latency buckets in seconds: sub-millisecond store reads to multi-second DNS time-outs.
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# How often the event-loop watchdog wakes up; its lateness is the lag.
LOOP_WATCH_INTERVAL = 0.5


class _Histogram:
    """Bucket counts per label set, without a lock (event-loop thread only)."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # labels -> [count per bucket..., +Inf count, sum]
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        row[bisect.bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=label_names)
        for labels, row in sorted(self.series.items()):
            cumulative = 0.0
            buckets = []
            for bound, n in zip((*self.bounds, float("inf")), row[:-1], strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            fam.add_metric(list(labels), buckets, row[-1])
        return fam


_COUNTERS = ("connections", "connections_open", "connections_refused", "commands", "deliveries",
             "http_requests")
_HISTOGRAMS = ("logins", "auth_checks", "dns", "store", "loop_lag")


class Metrics:
    """Everything postroom counts. Update methods are for the event-loop thread only.

    With serving worker processes (``server.workers``) each process counts its own; the
    supervisor serves ``/metrics`` and adds up the workers' :meth:`state` (``others``,
    asked over the process bus at scrape time by :meth:`refresh`)."""

    def __init__(self) -> None:
        self.connections: dict[tuple[str, ...], int] = {}
        self.connections_open: dict[tuple[str, ...], int] = {}
        self.connections_refused: dict[tuple[str, ...], int] = {}
        self.commands: dict[tuple[str, ...], int] = {}
        self.deliveries: dict[tuple[str, ...], int] = {}
        self.http_requests: dict[tuple[str, ...], int] = {}
        self.logins = _Histogram(_SLOW)
        self.auth_checks = _Histogram(_SLOW)
        self.dns = _Histogram(_SLOW)
        self.store = _Histogram(_FAST)
        self.loop_lag = _Histogram(_LAG)
        self.queue_messages = 0
        self.queue_oldest_age = 0.0
        self.others: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None
        self._other_states: list[dict[str, Any]] = []
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]  # a collector: collect()

    # -- updates (hot paths) -------------------------------------------------------------
    def command(self, protocol: str, command: str) -> None:
        key = (protocol, command)
        self.commands[key] = self.commands.get(key, 0) + 1

    def delivery(self, direction: str, result: str, n: int = 1) -> None:
        key = (direction, result)
        self.deliveries[key] = self.deliveries.get(key, 0) + n

    def connection_opened(self, role: str) -> None:
        key = (role,)
        self.connections[key] = self.connections.get(key, 0) + 1
        self.connections_open[key] = self.connections_open.get(key, 0) + 1

    def connection_closed(self, role: str) -> None:
        key = (role,)
        self.connections_open[key] = self.connections_open.get(key, 0) - 1

    def connection_refused(self, role: str, reason: str) -> None:
        key = (role, reason)
        self.connections_refused[key] = self.connections_refused.get(key, 0) + 1

    def login(self, protocol: str, ok: bool, seconds: float) -> None:
        self.logins.observe((protocol, "ok" if ok else "failed"), seconds)

    def auth_check(self, check: str, seconds: float) -> None:
        self.auth_checks.observe((check,), seconds)

    def dns_query(self, rdtype: str, result: str, seconds: float) -> None:
        self.dns.observe((rdtype, result), seconds)

    def store_op(self, write: bool, seconds: float) -> None:
        self.store.observe(("write",) if write else ("read",), seconds)

    def http_request(self, route: str, status: int) -> None:
        key = (route, f"{status // 100}xx")
        self.http_requests[key] = self.http_requests.get(key, 0) + 1

    # -- figures read at scrape time -------------------------------------------------------
    def set_queue(self, messages: int, oldest: int | None, now: float | None = None) -> None:
        self.queue_messages = messages
        now = time.time() if now is None else now
        self.queue_oldest_age = 0.0 if oldest is None else max(0.0, now - oldest)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- several processes ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """This process's counts as plain data (picklable), for another process to add."""
        out: dict[str, Any] = {name: dict(getattr(self, name)) for name in _COUNTERS}
        for name in _HISTOGRAMS:
            hist: _Histogram = getattr(self, name)
            out[name] = {labels: list(row) for labels, row in hist.series.items()}
        return out

    async def refresh(self) -> None:
        """Fetch the other processes' counts (before a scrape)."""
        self._other_states = await self.others() if self.others is not None else []

    def _counts(self, name: str) -> Mapping[tuple[str, ...], int]:
        own: dict[tuple[str, ...], int] = getattr(self, name)
        if not self._other_states:
            return own
        total = dict(own)
        for state in self._other_states:
            for labels, n in state.get(name, {}).items():
                total[labels] = total.get(labels, 0) + n
        return total

    def _histogram(self, name: str) -> _Histogram:
        own: _Histogram = getattr(self, name)
        if not self._other_states:
            return own
        total = _Histogram(own.bounds)
        total.series = {labels: list(row) for labels, row in own.series.items()}
        for state in self._other_states:
            for labels, row in state.get(name, {}).items():
                mine = total.series.setdefault(labels, [0.0] * len(row))
                for i, v in enumerate(row):
                    mine[i] += v
        return total

    # -- the collector (called by the registry at scrape time) ---------------------------------
    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("postroom_info", "Always 1; the version as a label", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield _counter("postroom_connections", "Connections accepted, per listener role",
                       ["role"], self._counts("connections"))
        opened = GaugeMetricFamily("postroom_connections_open", "Connections open now, per listener role",
                                   labels=["role"])
        for labels, n in sorted(self._counts("connections_open").items()):
            opened.add_metric(list(labels), n)
        yield opened
        yield _counter("postroom_connections_refused",
                       "Connections refused at accept (limits, shutting down)",
                       ["role", "reason"], self._counts("connections_refused"))
        yield _counter("postroom_commands", "Protocol commands handled, per protocol and command",
                       ["protocol", "command"], self._counts("commands"))
        yield _counter("postroom_deliveries",
                       "Messages accepted or refused at end of data by SMTP (direction=in) and "
                       "per-recipient outcomes of outbound attempts (direction=out)",
                       ["direction", "result"], self._counts("deliveries"))
        yield _counter("postroom_http_requests", "HTTP requests, per route group and status class",
                       ["route", "status"], self._counts("http_requests"))
        yield self._histogram("logins").family("postroom_login_seconds",
                                 "Time to check a password (IMAP/POP3/SMTP AUTH, web login)",
                                 ["protocol", "result"])
        yield self._histogram("auth_checks").family("postroom_auth_check_seconds",
                                      "Time of a message's authentication checks (SPF, DKIM, ARC, DMARC run "
                                      "together: check=message)",
                                      ["check"])
        yield self._histogram("dns").family("postroom_dns_seconds", "DNS query time, per record type and result",
                              ["type", "result"])
        yield self._histogram("store").family("postroom_store_seconds",
                                "Store operation time (a write includes its group commit)", ["op"])
        yield self._histogram("loop_lag").family(
            "postroom_event_loop_lag_seconds",
            f"How late the event loop runs a timer due every {LOOP_WATCH_INTERVAL} s", [],
        )
        yield GaugeMetricFamily("postroom_queue_messages", "Messages in the outbound queue",
                                value=self.queue_messages)
        yield GaugeMetricFamily("postroom_queue_oldest_age_seconds",
                                "Age of the oldest queued message in seconds (0: empty)",
                                value=self.queue_oldest_age)

    # -- the event-loop watchdog -----------------------------------------------------------
    async def watch_loop(self, interval: float = LOOP_WATCH_INTERVAL) -> None:
        """Sleep ``interval`` again and again; how much later than asked we wake up is the
        time the loop spent on other work it could not interrupt (the lag every client
        sees). Runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe((), max(0.0, loop.time() - start - interval))


def _counter(
    name: str, doc: str, label_names: list[str], values: Mapping[tuple[str, ...], int]
) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=label_names)
    for labels, n in sorted(values.items()):
        fam.add_metric(list(labels), n)
    return fam
