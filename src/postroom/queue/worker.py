"""The queue runner: leases due messages, delivers them over SMTP, records, retries, bounces.

Theory of operation
-------------------
*Scheduling.* One loop leases due entries from the store (``queue_due``, lease owner =
this node) and starts a task per message, up to ``max_messages`` at once and within a
memory budget for message bytes. It sleeps until the next entry is due, a queue wake-up
arrives (a delivery or a ``queue flush/hold`` in this process), a message finishes, or
``queue_poll_interval`` passes (which is how ``postroom queue flush/release`` run from
another process are noticed). On start it releases this node's leases left by a previous
run (a crash), so those messages are retried at once.

*Leases between nodes.* Several nodes may share one queue (PostgreSQL). A lease lasts
``outbound.lease_time`` and a heartbeat renews the leases of the messages this worker is
working on every third of that time (``queue_renew_leases``): however long a delivery
takes, no other node takes it while this one lives, and when a node dies its messages come
due again within one lease time, for a surviving node to finish.

*Destinations.* A message task groups its pending recipients by next hop
(``routing.Router.next_hop``: transport entry, smarthost or the domain's MX) and hands one
job per group (at most ``RCPT_LIMIT`` recipients) to that destination. Each destination
has a job list and up to ``per_destination`` connection tasks, all of them within the
global ``concurrency`` limit. A connection task resolves the route (DNS, cached briefly),
tries the addresses in order (next MX on a refused connection or a bad greeting), then
delivers job after job over the same SMTP session (connection reuse), and keeps an idle
session for ``connection_cache_time`` in case another message for the destination comes,
unless another destination is waiting for a connection slot.

*Destination down.* When no address of a destination accepts a session, the destination
is marked down (``model.Destinations``): its waiting jobs are deferred at once, and no
connection is tried until the backoff expires; then exactly one connection probes it while
new jobs wait for the probe's verdict (a probe that succeeds serves them all).

*Durability.* Per-recipient results are written right after the remote's reply
(``queue_record(..., final=False)``, started before the session moves on), so a crash loses
nothing that the remote accepted except in one unavoidable window: between the remote's
250 and the commit of that record (a few milliseconds: one group-committed write) a crash
makes us deliver the message again after the restart (a duplicate, never a loss). For a
process crash (SIGKILL, OOM) that window is cut to microseconds by the delivered journal
(``queue.journal``): one unsynced append right after the reply, replayed at the next start.
Permanent failures are recorded only after their DSN is durable (a crash in between sends
the DSN twice rather than never). The message task then makes one final record: the retry
time for recipients still pending (``model.after_attempt``: the configured
``retry_schedule`` up to ``max_queue_lifetime``), expiry, the delay warning flag. An entry
leaves the queue only when no recipient is pending.

*Bounces.* FAILURE DSNs for permanent failures and expiry, one DELAY DSN per message after
``delay_warning``, and "relayed" SUCCESS DSNs for recipients that asked for them when the
remote server does not do DSN (RFC 3461 4.2): ``queue.bounce``. Never for a null sender or
a DSN. A message with more than ``max_received_headers`` Received fields is a loop: it
bounces (5.4.6) without a delivery attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import idna

from postroom import deliver, logs
from postroom.net.smtp_out import OutboundOptions, SetupError, SmtpOut, reply_text
from postroom.policy.mtasts import MtaStsPolicies
from postroom.policy.tls_reports import AppliedPolicy
from postroom.queue.security import Plan, PolicyRouteError, TransportSecurity
from postroom.policy.dns import Resolver, make_resolver
from postroom.proto.smtp.client import (
    Cause,
    Envelope,
    Outcome,
    Recipient,
    Stage,
    TransactionResult,
    orcpt_for,
)
from postroom.proto.smtp.grammar import xtext_encode
from postroom.queue.bounce import recipient_status, send_dsn, wanted
from postroom.queue.dsn import Action, DsnKind
from postroom.queue.journal import DeliveredJournal
from postroom.queue.model import (
    Admission,
    Bounce,
    DestinationPolicy,
    Destinations,
    DestinationState,
    RetryPolicy,
    Severity,
    after_attempt,
    classify,
    status_of,
)
from postroom.queue.routing import NextHop, RouteError, Router, Target
from postroom.services import Services
from postroom.store.api import QueuedMessage, QueuedRecipient, RecipientOutcome, StoreUnavailable

log = logging.getLogger("postroom.queue")

RCPT_LIMIT = 50  # recipients per transaction (Postfix smtp_destination_recipient_limit)
MAX_ADDRESSES = 5  # addresses tried per connection (Postfix smtp_mx_address_limit)
ROUTE_CACHE_SECONDS = 60.0
ROUTE_CACHE_SIZE = 1000
BYTE_BUDGET = 256 * 1024 * 1024  # message bytes held in memory by deliveries in progress
ERROR_RETRY = 60.0  # an unexpected internal error: retry the message after this
SCAN_COALESCE = 0.01  # seconds between a wake-up and the scan it triggers
DESTINATION_MAX_BACKOFF = 4000.0
BATCH_READ_MAX = 64 * 1024  # messages up to this size are read together with their scan


@dataclass(slots=True)
class _Outcome:
    """One recipient's result of this attempt."""

    rcpt: QueuedRecipient
    state: str  # "delivered" | "pending" | "failed"
    status: str
    diagnostic: str
    remote_mta: str | None = None
    relayed: bool = False  # delivered to a server without DSN support (RFC 3461 4.2)
    not_before: float = 0.0  # destination down: no retry before this
    recorded: bool = False


@dataclass(eq=False, slots=True)
class _Job:
    msg: QueuedMessage
    rcpts: list[QueuedRecipient]
    data: bytes
    hop: NextHop
    future: asyncio.Future[list[_Outcome]]


@dataclass(eq=False)
class _Destination:
    hop: NextHop
    jobs: deque[_Job] = field(default_factory=deque)
    conns: int = 0  # connection tasks alive
    waiting: int = 0  # ... of which have not taken a job yet (slot, DNS, connect)
    idle: deque[asyncio.Future[None]] = field(default_factory=deque)  # idle sessions' waits

    def wake_one(self) -> bool:
        """Hand the newest job to one idle session (not all of them: no thundering herd)."""
        while self.idle:
            waiter = self.idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def wake_all(self) -> None:
        while self.idle:
            waiter = self.idle.popleft()
            if not waiter.done():
                waiter.set_result(None)


class _ByteBudget:
    """Caps the message bytes held by deliveries in progress (a big one runs alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, size: int) -> int:
        size = min(max(size, 1), self.limit)
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
        return size

    async def release(self, size: int) -> None:
        async with self._cond:
            self.used -= size
            self._cond.notify_all()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _domain(address: str) -> str:
    domain = address.rpartition("@")[2].lower().rstrip(".")
    if domain.isascii() or domain.startswith("["):
        return domain
    try:  # IDNA2008 A-label for DNS (RFC 5890); the envelope keeps what the sender wrote
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain


def _notify(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(v.strip().upper() for v in value.split(",") if v.strip())


def _orcpt(value: str | None) -> str | None:
    """The stored (decoded) ORCPT as it goes on the wire (RFC 3461 4.2, RFC 6533)."""
    if not value:
        return None
    addr_type, sep, address = value.partition(";")
    if not sep or not address:
        return None
    if addr_type.strip().lower() == "utf-8" or not address.isascii():
        return orcpt_for(address)
    return f"{addr_type.strip()};{xtext_encode(address)}"


class QueueWorker:
    """See the module docstring. ``resolver`` replaces the configured DNS (tests)."""

    def __init__(
        self,
        services: Services,
        *,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.services = services
        self.store = services.store
        settings = services.settings
        self.out = out = settings.outbound
        self.rng = rng if rng is not None else random.Random()
        if resolver is None:
            resolver = services.resolver if services.resolver is not None else make_resolver(
                out.resolver, observe=services.metrics.dns_query
            )
        self.resolver = resolver
        self.router = Router(settings, self.resolver, rng=self.rng)
        schedule = out.retry_schedule
        self.policy = RetryPolicy(
            min_backoff=min(schedule), max_backoff=max(schedule), schedule=schedule,
            lifetime=out.max_queue_lifetime, bounce_lifetime=out.max_queue_lifetime,
            delay_warning=out.delay_warning,
        )
        # A destination that is down is probed again on the retry schedule's rhythm, but at
        # least every DESTINATION_MAX_BACKOFF (Postfix's maximal_backoff_time): a recovered
        # destination should not wait hours for its probe.
        low = min(schedule)
        self.destinations = Destinations(
            DestinationPolicy(
                min_backoff=low, max_backoff=max(low, min(max(schedule), DESTINATION_MAX_BACKOFF))
            )
        )
        ca = Path(out.tls_ca_file) if out.tls_ca_file else None
        if ca is not None and not ca.is_absolute():
            ca = settings.path.parent / ca
        self.ca_file = ca
        self.security = TransportSecurity(
            self.resolver, dane=out.dane,
            mta_sts=MtaStsPolicies(
                self.resolver, ca_file=str(ca) if ca else None, port=out.mta_sts_port, store=self.store,
            ) if out.mta_sts else None,
            explicit=frozenset(out.tls_policy),
        )
        self.tls_results = services.tls_results  # policy.tls_reports.TlsRecorder, or None
        self.max_messages = max(100, out.concurrency * 10)
        self._slots = asyncio.Semaphore(out.concurrency)
        self._slot_waiters = 0
        self._budget = _ByteBudget(BYTE_BUDGET)
        self._dests: dict[str, _Destination] = {}
        self._routes: OrderedDict[str, tuple[float, list[Target]]] = OrderedDict()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._lease_seconds = max(3, int(self.out.lease_time))
        self._stopping = False
        self.journal = DeliveredJournal(settings.data_dir / "delivered.journal")

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self._replay_journal()
        released = await self.store.queue_release_leases(self.services.node)
        if released:
            logs.event(log, "queue_leases_released", count=released, node=self.services.node)
        self.store.changes.subscribe_queue(self._wake.set)
        self._loop_task = asyncio.create_task(self._loop(), name="queue-worker")
        self._renew_task = asyncio.create_task(self._renew_loop(), name="queue-leases")

    async def stop(self, grace: float | None = None) -> None:
        """Stop: no new transaction starts; those in flight may finish for ``grace`` seconds
        (default: ``limits.shutdown_grace``, at most 10), so that a restart does not repeat
        them; then everything is cut. Unfinished messages keep their state and are retried
        by the next start (their leases are released here)."""
        self._stopping = True
        self.store.changes.unsubscribe_queue(self._wake.set)
        if self._loop_task is not None:
            self._loop_task.cancel()
        for dest in self._dests.values():
            dest.wake_all()  # idle sessions say QUIT now
        if grace is None:
            grace = min(self.services.settings.limits.shutdown_grace, 10.0)
        if self._conn_tasks and grace > 0:
            await asyncio.wait(set(self._conn_tasks), timeout=grace)
        tasks = [t for t in (self._loop_task, self._renew_task, *self._active.values(),
                             *self._conn_tasks) if t]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._side_tasks:  # records in flight: let them commit
            await asyncio.wait(self._side_tasks, timeout=10)
        if self.security.mta_sts is not None:
            await self.security.mta_sts.close()
        with contextlib.suppress(Exception):
            await self.store.queue_release_leases(self.services.node)
        self.journal.close()

    async def _replay_journal(self) -> None:
        """Record what the previous run noted as delivered but may not have recorded (see
        ``queue.journal``), before any message is leased again."""
        entries = await asyncio.to_thread(self.journal.open)
        try:
            for entry in entries:
                await self.store.queue_record(entry.qid, entry.outcomes, None, None, final=False)
        except Exception:
            # Keep the journal (replaying is idempotent): the next start tries again.
            log.exception("replaying the delivered journal failed")
            return
        if entries:
            logs.event(log, "queue_journal_replayed", transactions=len(entries))
        self.journal.clear()

    def wake(self) -> None:
        self._wake.set()

    async def _renew_loop(self) -> None:
        """The lease heartbeat (see "Leases between nodes" above)."""
        while not self._stopping:
            await asyncio.sleep(self._lease_seconds / 3)
            working = list(self._active)
            if not working:
                continue
            try:
                await self.store.queue_renew_leases(
                    self.services.node, working, int(time.time()) + self._lease_seconds
                )
            except StoreUnavailable:
                pass  # retried at the next beat, well within the lease
            except Exception:
                log.exception("renewing queue leases failed")

    # --- scheduling -----------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.max_messages - len(self._active)
            leased = 0
            if free > 0:
                try:
                    due = await self.store.queue_due(
                        int(time.time()), free, self._lease_seconds, self.services.node
                    )
                except StoreUnavailable:
                    due = []  # the database is away: scan again at the next poll
                except Exception:
                    log.exception("queue scan failed")
                    due = []
                due = [m for m in due if m.qid not in self._active]
                # Small messages are read in one go (one store round trip per scan rather
                # than per message); big ones are read by their task within the budget.
                small = [m.blob_id for m in due if m.size <= BATCH_READ_MAX]
                blobs: dict[int, bytes] = {}
                if small:
                    try:
                        blobs = await self.store.read_blobs(small)
                    except Exception:
                        log.exception("reading queued messages failed")
                for msg in due:
                    leased += 1
                    self._active[msg.qid] = asyncio.create_task(
                        self._message(msg, blobs.get(msg.blob_id)), name=f"queue-{msg.qid}"
                    )
            timeout = self.out.queue_poll_interval
            if free > 0 and leased == 0:  # idle: also wake when the next entry is due
                # (while messages are in flight, each one that ends wakes a new scan)
                try:
                    nxt = await self.store.queue_next_due()
                except Exception:
                    nxt = None
                if nxt is not None:
                    timeout = min(timeout, max(0.05, nxt - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.05)):
                    await self._wake.wait()
                # Let wake-ups that come in a burst (many deliveries, many finished
                # messages) share one scan: each scan is a write transaction.
                await asyncio.sleep(SCAN_COALESCE)

    async def _message(self, msg: QueuedMessage, raw: bytes | None = None) -> None:
        held = 0
        try:
            if raw is None:
                held = await self._budget.acquire(msg.size)
                raw = await self.store.read_blob(msg.blob_id)
            data = deliver.strip_return_path(raw)
            pending = msg.pending
            received = deliver.count_fields(data, b"received")
            if not pending:
                outcomes: list[_Outcome] = []
            elif received > self.out.max_received_headers:
                text = f"Too many Received headers ({received}): mail forwarding loop"
                outcomes = [_Outcome(r, "failed", "5.4.6", text) for r in pending]
            else:
                outcomes = await self._deliver(msg, data, pending)
            await self._finish(msg, raw, outcomes)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery of %s failed", msg.qid)
            with contextlib.suppress(Exception):
                await self.store.queue_record(
                    msg.qid, [], int(time.time() + ERROR_RETRY), "internal error, see the log"
                )
        finally:
            if held:
                await self._budget.release(held)
            self._active.pop(msg.qid, None)
            self._wake.set()

    async def _deliver(
        self, msg: QueuedMessage, data: bytes, pending: list[QueuedRecipient]
    ) -> list[_Outcome]:
        groups: dict[str, tuple[NextHop, list[QueuedRecipient]]] = {}
        for rcpt in pending:
            hop = self.router.next_hop(_domain(rcpt.address))
            groups.setdefault(hop.key, (hop, []))[1].append(rcpt)
        loop = asyncio.get_running_loop()
        jobs = []
        for hop, rcpts in groups.values():
            for i in range(0, len(rcpts), RCPT_LIMIT):
                job = _Job(msg, rcpts[i : i + RCPT_LIMIT], data, hop, loop.create_future())
                jobs.append(job)
                self._submit(job)
        results = await asyncio.gather(*(job.future for job in jobs))
        return [o for result in results for o in result]

    # --- destinations -----------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        dest = self._dests.get(job.hop.key)
        if dest is None:
            dest = self._dests[job.hop.key] = _Destination(job.hop)
        dest.jobs.append(job)
        if not dest.wake_one():
            self._spawn(dest)

    def _spawn(self, dest: _Destination) -> None:
        """Start connections while jobs outnumber the connections about to take them."""
        while (
            not self._stopping
            and len(dest.jobs) > dest.waiting
            and dest.conns < self.out.per_destination
        ):
            dest.conns += 1
            dest.waiting += 1
            task = asyncio.create_task(self._connection(dest), name=f"smtp-out-{dest.hop.key}")
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)

    def _options(self, hop: NextHop) -> OutboundOptions:
        return OutboundOptions(
            helo_name=self.router.helo_name,
            tls_policy=hop.tls_policy,
            connect_timeout=self.out.connect_timeout,
            read_timeout=self.out.read_timeout,
            username=hop.username,
            password=hop.password,
            ca_file=self.ca_file,
        )

    async def _acquire_slot(self) -> None:
        if self._slots.locked():
            self._slot_waiters += 1
            for other in self._dests.values():  # idle sessions give their slot up
                other.wake_all()
            try:
                await self._slots.acquire()
            finally:
                self._slot_waiters -= 1
        else:
            await self._slots.acquire()

    async def _connection(self, dest: _Destination) -> None:
        hop = dest.hop
        session: SmtpOut | None = None
        probe = False
        waiting = True
        slot = False
        try:
            await self._acquire_slot()
            slot = True
            if not dest.jobs or self._stopping:
                return
            now = time.time()
            admission = self.destinations.admit(hop.key, now)
            if admission is Admission.WAIT:
                if self.destinations.state(hop.key) is DestinationState.PROBING:
                    return  # the probe takes the waiting jobs once it is through
                ready = self.destinations.ready_at(hop.key, now)
                self._defer_all(
                    dest, "4.4.1", f"{hop.key}: destination is down, not trying until later",
                    None, ready,
                )
                return
            probe = admission is Admission.PROBE
            try:
                targets = await self._targets(hop)
                plan = await self.security.plan(hop, targets, self._options(hop))
            except RouteError as e:
                if isinstance(e, PolicyRouteError) and self.tls_results is not None:
                    self.tls_results.failure(e.applied, e.result_type, detail=e.detail)
                if probe:
                    self.destinations.abandoned(hop.key, time.time(), probe=True)
                    probe = False
                self._route_failed(dest, e)
                return
            self._note_sts_failure(plan)
            session, error = await self._open(plan)
            if session is None:
                assert error is not None
                now = time.time()
                self.destinations.failed(hop.key, now, probe=probe)
                probe = False
                ready = self.destinations.ready_at(hop.key, now)
                self._defer_all(dest, error.status, error.diagnostic, error.remote, ready)
                return
            self.destinations.succeeded(hop.key, time.time(), probe=probe)
            if probe:
                self._spawn(dest)  # the destination is back: parallel sessions again
            probe = False
            while session.usable and not self._stopping:
                job = dest.jobs.popleft() if dest.jobs else await self._next_job(dest)
                if job is None:
                    break
                if waiting:
                    dest.waiting -= 1
                    waiting = False
                await self._send(session, job)
        except asyncio.CancelledError:
            if session is not None:
                session.abort()
                session = None
            if probe:
                self.destinations.abandoned(hop.key, time.time(), probe=True)
            raise
        except Exception:
            log.exception("outbound connection to %s failed", hop.key)
            if session is not None:
                session.abort()
                session = None
            if probe:
                self.destinations.abandoned(hop.key, time.time(), probe=True)
            self._defer_all(dest, "4.3.0", "internal error, see the log", None, 0.0)
        finally:
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.close()
            if slot:
                self._slots.release()
            dest.conns -= 1
            if waiting:
                dest.waiting -= 1
            if dest.jobs:
                if self.destinations.state(hop.key) is not DestinationState.PROBING:
                    self._spawn(dest)  # what this session could not take needs another one
            elif dest.conns == 0 and self._dests.get(hop.key) is dest:
                del self._dests[hop.key]

    async def _next_job(self, dest: _Destination) -> _Job | None:
        """Keep an idle session for ``connection_cache_time``, unless a slot is wanted."""
        deadline = time.monotonic() + self.out.connection_cache_time
        loop = asyncio.get_running_loop()
        while not dest.jobs:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._slot_waiters or self._stopping:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            dest.idle.append(waiter)
            handle = loop.call_later(remaining, _expire, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                if not waiter.done():  # cancelled: leave no dead entry behind
                    waiter.cancel()
        return dest.jobs.popleft()

    async def _targets(self, hop: NextHop) -> list[Target]:
        now = time.monotonic()
        cached = self._routes.get(hop.key)
        if cached is not None and cached[0] > now:
            return cached[1]
        targets = await self.router.resolve(hop)
        self._routes[hop.key] = (now + ROUTE_CACHE_SECONDS, targets)
        self._routes.move_to_end(hop.key)
        while len(self._routes) > ROUTE_CACHE_SIZE:
            self._routes.popitem(last=False)
        return targets

    async def _open(self, plan: Plan) -> tuple[SmtpOut | None, _SetupFailure | None]:
        """A session with the first address that works (RFC 5321 5.1: try the next MX),
        each with the TLS options ``queue.security`` chose for it. Each TLS outcome is
        counted for TLS-RPT (RFC 8460)."""
        failure: _SetupFailure | None = None
        for target, options in plan.attempts[:MAX_ADDRESSES]:
            try:
                session = await SmtpOut.connect(target, options)
            except SetupError as e:
                failure = _SetupFailure(e.status, e.diagnostic, target.name)
                self._note_tls(plan, target, options, e)
                if not (e.tls_failed and options.tls_policy == "may"):
                    continue
            else:
                self._note_tls(plan, target, options, session)
                return session, None
            try:  # opportunistic TLS failed: this address, in plaintext
                return await SmtpOut.connect(target, options, tls=False), None
            except SetupError as e:
                failure = _SetupFailure(e.status, e.diagnostic, target.name)
        return None, failure

    def _note_tls(self, plan: Plan, target: Target, options: OutboundOptions, outcome: SmtpOut | SetupError) -> None:
        """Count one session set-up for TLS-RPT: a TLS session is a success; a TLS
        failure, or plaintext because the host offers no STARTTLS, a failure."""
        recorder = self.tls_results
        if recorder is None or not plan.domain or options.tls_policy == "none":
            return
        applied = plan.applied(target, options)
        if isinstance(outcome, SmtpOut):
            if outcome.tls:
                recorder.success(applied)
            elif not outcome.starttls_offered:
                recorder.failure(applied, "starttls-not-supported", sending_ip=outcome.local_ip,
                                 receiving_mx=target.name, receiving_ip=target.address)
        elif outcome.tls_result:
            recorder.failure(applied, outcome.tls_result, sending_ip=outcome.local_ip, receiving_mx=target.name,
                             receiving_ip=target.address, detail=outcome.diagnostic)

    def _note_sts_failure(self, plan: Plan) -> None:
        """RFC 8460 4.3.2.2: the MTA-STS policy could not be fetched (or was invalid)."""
        if self.tls_results is not None and plan.domain and plan.sts_failure is not None:
            result, why = plan.sts_failure
            self.tls_results.failure(AppliedPolicy(plan.domain, "sts"), result, detail=why)

    def _defer_all(
        self, dest: _Destination, status: str, diagnostic: str, remote: str | None, not_before: float
    ) -> None:
        while dest.jobs:
            job = dest.jobs.popleft()
            self._resolve(
                job,
                [_Outcome(r, "pending", status, diagnostic, remote, not_before=not_before) for r in job.rcpts],
            )

    def _route_failed(self, dest: _Destination, error: RouteError) -> None:
        permanent = classify(error.error) is Severity.PERMANENT
        status = status_of(error.error)
        while dest.jobs:
            job = dest.jobs.popleft()
            state = "failed" if permanent else "pending"
            self._resolve(job, [_Outcome(r, state, status, error.detail) for r in job.rcpts])

    def _resolve(self, job: _Job, outcomes: list[_Outcome]) -> None:
        if not job.future.done():
            job.future.set_result(outcomes)

    async def _send(self, session: SmtpOut, job: _Job) -> None:
        msg = job.msg
        envelope = Envelope(
            sender=msg.sender,
            recipients=tuple(Recipient(r.address, _notify(r.notify), _orcpt(r.orcpt)) for r in job.rcpts),
            ret=msg.ret,
            envid=msg.envid,
            smtputf8=msg.smtputf8,
        )
        started = time.monotonic()
        try:
            result = await session.send(envelope, job.data)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sending %s to %s failed", msg.qid, session.target.label)
            session.abort()
            self._resolve(job, [_Outcome(r, "pending", "4.3.0", "internal error") for r in job.rcpts])
            return
        outcomes = self._outcomes(session, job, result)
        for o in outcomes:
            logs.event(
                log, "delivery", id=msg.qid, to=o.rcpt.address, relay=session.target.label,
                tls=session.tls or None,
                status={"delivered": "sent", "pending": "deferred", "failed": "bounced"}[o.state],
                dsn=o.status, reply=o.diagnostic,
                ms=round((time.monotonic() - started) * 1000, 1),
            )
        if not any(o.state == "delivered" for o in outcomes):
            self._resolve(job, outcomes)
            return
        # Record the delivered recipients now, without holding up the session: this write is
        # the only thing between the remote's 250 and "never delivered twice". The journal
        # line covers a process crash until it commits (see queue.journal).
        self.journal.note(msg.qid, self._delivered_records(outcomes))
        task = asyncio.create_task(self._record_delivered(job, outcomes))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    @staticmethod
    def _delivered_records(outcomes: list[_Outcome]) -> list[RecipientOutcome]:
        return [RecipientOutcome(o.rcpt.id, "delivered", o.status, o.diagnostic, o.remote_mta)
                for o in outcomes if o.state == "delivered"]

    async def _record_delivered(self, job: _Job, outcomes: list[_Outcome]) -> None:
        try:
            await self.store.queue_record(
                job.msg.qid, self._delivered_records(outcomes), None, None, final=False,
            )
            for o in outcomes:
                if o.state == "delivered":
                    o.recorded = True
        except Exception:
            log.exception("recording the delivery of %s failed", job.msg.qid)
        finally:
            self.journal.settled()
            self._resolve(job, outcomes)

    def _outcomes(self, session: SmtpOut, job: _Job, result: TransactionResult) -> list[_Outcome]:
        out = []
        remote = session.remote_mta
        for rcpt, rr in zip(job.rcpts, result.results, strict=True):
            reply = rr.reply
            if rr.cause is Cause.REPLY:
                diagnostic = reply_text(reply)
            elif rr.cause is Cause.LOCAL:
                diagnostic = reply_text(reply)
            else:
                diagnostic = f"{reply_text(reply)} (talking to {session.target.label})"
            mta = remote if rr.cause is not Cause.LOCAL else None
            if rr.outcome is Outcome.DELIVERED:
                status = reply.enhanced if reply.enhanced and reply.enhanced[0] == "2" else "2.0.0"
                relayed = not result.dsn
                out.append(_Outcome(rcpt, "delivered", status, diagnostic, mta, relayed=relayed))
            else:
                status = status_of(reply, rcpt=rr.stage is Stage.RCPT)
                state = "failed" if rr.outcome is Outcome.PERMANENT else "pending"
                out.append(_Outcome(rcpt, state, status, diagnostic, mta))
        return out

    # --- after an attempt ---------------------------------------------------------------------

    async def _finish(self, msg: QueuedMessage, original: bytes, outcomes: list[_Outcome]) -> None:
        now = time.time()
        failed = [o for o in outcomes if o.state == "failed"]
        pending = [o for o in outcomes if o.state == "pending"]
        unrecorded = [o for o in outcomes if o.state == "delivered" and not o.recorded]
        expired: list[_Outcome] = []
        retry_at: int | None = None
        warn = False
        expires = self.policy.expires_at(msg.created, null_sender=not msg.sender)
        if pending:
            decision = after_attempt(
                self.policy, now=now, created=msg.created, attempts=msg.attempts + 1,
                severity=Severity.TEMPORARY, warned=msg.delay_warned,
                null_sender=not msg.sender, jitter=self.rng.random(),
            )
            if isinstance(decision, Bounce):
                expired, pending = pending, []
            else:
                at = max(decision.retry_at, *(o.not_before for o in pending))
                retry_at = math.ceil(min(at, max(expires, now + 1)))
                warn = decision.send_delay_warning
        hostname = self.services.settings.hostname
        directory = self.services.directory
        # DSNs before the record that ends the recipients (see the module docstring).
        bounced = [o for o in failed + expired if wanted(msg, o.rcpt, DsnKind.FAILURE)]
        if bounced:
            statuses = [
                recipient_status(
                    o.rcpt, Action.FAILED, status=o.status, diagnostic=o.diagnostic,
                    remote_mta=o.remote_mta, last_attempt=now,
                )
                for o in bounced
            ]
            await send_dsn(self.store, directory, hostname, msg, original, statuses, DsnKind.FAILURE, now=now,
                           signer=self.services.signer, offload=self.services.offload)
        if warn:
            delayed = [o for o in pending if wanted(msg, o.rcpt, DsnKind.DELAY)]
            if delayed:
                statuses = [
                    recipient_status(
                        o.rcpt, Action.DELAYED, status=o.status, diagnostic=o.diagnostic,
                        remote_mta=o.remote_mta, last_attempt=now, will_retry_until=expires,
                    )
                    for o in delayed
                ]
                await send_dsn(self.store, directory, hostname, msg, original, statuses, DsnKind.DELAY, now=now,
                           signer=self.services.signer, offload=self.services.offload)
        relayed = [
            o for o in outcomes
            if o.state == "delivered" and o.relayed and wanted(msg, o.rcpt, DsnKind.SUCCESS)
        ]
        if relayed:
            statuses = [
                recipient_status(
                    o.rcpt, Action.RELAYED, status=o.status, diagnostic=o.diagnostic,
                    remote_mta=o.remote_mta, last_attempt=now,
                )
                for o in relayed
            ]
            await send_dsn(self.store, directory, hostname, msg, original, statuses, DsnKind.SUCCESS, now=now,
                           signer=self.services.signer, offload=self.services.offload)
        self._note_outcomes(msg, outcomes, expired)
        records = [
            RecipientOutcome(o.rcpt.id, state, o.status, o.diagnostic, o.remote_mta)
            for state, group in (
                ("failed", failed), ("expired", expired), ("pending", pending),
                ("delivered", unrecorded),
            )
            for o in group
        ]
        if not records and outcomes:
            return  # everything was delivered and recorded: the entry is gone already
        last = pending or expired or failed
        last_error = None
        if last:
            o = last[0]
            last_error = f"{o.remote_mta}: {o.diagnostic}" if o.remote_mta else o.diagnostic
        for o in expired:
            logs.event(log, "expired", id=msg.qid, to=o.rcpt.address, dsn=o.status, reply=o.diagnostic)
        await self.store.queue_record(
            msg.qid, records, retry_at, last_error, True if warn else None
        )


    _RESULTS = {"delivered": "delivered", "pending": "deferred", "failed": "failed"}

    def _note_outcomes(self, msg: QueuedMessage, outcomes: list[_Outcome], expired: list[_Outcome]) -> None:
        """Metrics and the recent delivery log (postroom.activity): one entry per recipient."""
        metrics = self.services.metrics
        record = self.services.delivery_log.record
        gone = {id(o) for o in expired}
        for o in outcomes:
            result = "expired" if id(o) in gone else self._RESULTS.get(o.state, o.state)
            metrics.delivery("out", result)
            detail = " ".join(x for x in (o.status, o.remote_mta, o.diagnostic) if x)
            record("out", msg.qid, msg.sender or "<>", o.rcpt.address, result, detail)


@dataclass(frozen=True, slots=True)
class _SetupFailure:
    status: str
    diagnostic: str
    remote: str | None
