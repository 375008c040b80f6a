"""Retry, expiry and bounce policy of the outbound queue, as pure functions and classes.

Theory of operation
-------------------
Everything here is arithmetic over numbers the caller passes in: ``now`` and ``created`` are
POSIX timestamps in seconds (``time.time()`` in the shell, a plain float in tests), durations
are seconds. Nothing reads a clock, sleeps, draws random numbers or touches storage, so every
decision can be tested with a table of (inputs -> decision).

Three questions are answered:

1. *Was that failure temporary or permanent?* :func:`classify` maps an SMTP reply (anything
   with an integer ``code``) or a :class:`TransportError` (what the shell saw instead of a
   reply: timeout, refused connection, DNS answer) to :class:`Severity`, and
   :func:`status_of` gives the RFC 3463 enhanced status code to report in a DSN.

2. *When do we try again, and when do we give up?* :func:`after_attempt` takes the policy
   (:class:`RetryPolicy`), the message age and the number of attempts, and returns either
   :class:`Defer` (retry at a time, maybe send a delay warning first) or :class:`Bounce`
   (permanent failure, or queue lifetime exceeded).

   The default schedule follows Postfix: the first attempt happens on arrival; after the
   n-th failed attempt the wait is ``min_backoff * 2**(n-1)`` capped at ``max_backoff``
   (Postfix ``minimal_backoff_time = 300s``, ``maximal_backoff_time = 4000s``), i.e. 5 min,
   10 min, 20 min, 40 min, then every 66 min 40 s. The last retry is pulled in to land
   exactly on the expiry time (default lifetime 5 days, Postfix ``maximal_queue_lifetime``),
   so "Will-Retry-Until" in a delay DSN is the truth. A delay warning is due once, when a
   message is still deferred after ``delay_warning`` (default 4 hours). An explicit
   ``schedule`` tuple (last value repeating) replaces the doubling when an operator wants
   one.

3. *Is the destination down?* :class:`DestinationBackoff` is the per-destination state
   machine: after a destination-level failure (no connection, greeting refused, timeout) it
   is DOWN for a backoff period and no new connection is admitted; when the period expires
   exactly one connection, the *probe*, is admitted; while it runs everyone else waits; if
   it succeeds the destination is UP again, if it fails the backoff doubles. A probe whose
   result never arrives (lost worker) is forgotten after ``probe_timeout``.
   :class:`Destinations` keeps one machine per destination name and forgets healthy ones,
   so its size is bounded by the number of destinations currently down.

Example (the worker, after a delivery attempt with some recipients temporarily failed)::

    decision = after_attempt(policy, now=time.time(), created=msg.created,
                             attempts=msg.attempts, severity=classify(reply),
                             warned=msg.delay_warned, jitter=random.random())
    if isinstance(decision, Defer):
        if decision.send_delay_warning: ...compose a DELAY DSN (queue/dsn.py)...
        queue.retry(msg, at=decision.retry_at)
    else:
        ...compose a FAILURE DSN with decision.reason...
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class Severity(enum.Enum):
    """How a failure should be treated: try again later, or give up and bounce now."""

    TEMPORARY = "temporary"
    PERMANENT = "permanent"


class TransportError(enum.Enum):
    """What the shell observed instead of an SMTP reply.

    These are the failures that never produce a reply line, so the DSN's status and the
    retry decision must come from this table instead of a server's answer.
    """

    TIMEOUT = "timeout"  # no (complete) reply within the RFC 5321 4.5.3.2 timeout
    CONNECTION_REFUSED = "connection-refused"  # or unreachable / connect timed out
    CONNECTION_LOST = "connection-lost"  # peer closed or reset mid-conversation
    TLS_FAILED = "tls-failed"  # handshake or certificate policy failure
    PROTOCOL_ERROR = "protocol-error"  # garbage reply (see proto/smtp/client.py)
    DNS_SERVFAIL = "dns-servfail"  # resolver failure: try later
    DNS_TIMEOUT = "dns-timeout"
    DNS_NXDOMAIN = "dns-nxdomain"  # the domain does not exist
    NULL_MX = "null-mx"  # RFC 7505: the domain accepts no mail
    NO_ADDRESS = "no-address"  # MX hosts exist but none has an A/AAAA record now
    LOCAL_LOOP = "local-loop"  # the best MX is ourselves


# RFC 3463 enhanced status codes for each transport failure.
_TRANSPORT_TABLE: dict[TransportError, tuple[Severity, str]] = {
    TransportError.TIMEOUT: (Severity.TEMPORARY, "4.4.2"),  # X.4.2 bad connection
    TransportError.CONNECTION_REFUSED: (Severity.TEMPORARY, "4.4.1"),  # X.4.1 no answer
    TransportError.CONNECTION_LOST: (Severity.TEMPORARY, "4.4.2"),
    TransportError.TLS_FAILED: (Severity.TEMPORARY, "4.7.5"),  # X.7.5 cryptographic failure
    TransportError.PROTOCOL_ERROR: (Severity.TEMPORARY, "4.5.0"),  # X.5.0 protocol status
    TransportError.DNS_SERVFAIL: (Severity.TEMPORARY, "4.4.3"),  # X.4.3 directory failure
    TransportError.DNS_TIMEOUT: (Severity.TEMPORARY, "4.4.3"),
    TransportError.DNS_NXDOMAIN: (Severity.PERMANENT, "5.1.2"),  # X.1.2 bad dest. system
    TransportError.NULL_MX: (Severity.PERMANENT, "5.1.10"),  # RFC 7505 section 4.2
    TransportError.NO_ADDRESS: (Severity.TEMPORARY, "4.4.4"),  # X.4.4 unable to route
    TransportError.LOCAL_LOOP: (Severity.PERMANENT, "5.4.6"),  # X.4.6 routing loop
}


class ReplyLike(Protocol):
    """The part of ``proto.smtp.replies.Reply`` the policy needs (kept structural so this
    module imports nothing from the protocol layer)."""

    @property
    def code(self) -> int: ...


def classify(result: ReplyLike | TransportError, *, rcpt: bool = False) -> Severity:
    """Temporary (4xx, timeouts, connection and DNS resolver failures) or permanent (5xx,
    NXDOMAIN, null MX, mail loop).

    ``rcpt`` says the reply answered a RCPT command: RFC 5321 4.5.3.1.10 asks clients to
    treat 552 there ("too many recipients" from old servers) as temporary. Replies outside
    4xx/5xx (a 2xx/3xx where a failure was expected cannot reach here in practice) are
    treated as temporary so that nothing is bounced on a misunderstanding.
    """
    if isinstance(result, TransportError):
        return _TRANSPORT_TABLE[result][0]
    code = result.code
    if 500 <= code <= 599:
        if rcpt and code == 552:  # RFC 5321 4.5.3.1.10
            return Severity.TEMPORARY
        return Severity.PERMANENT
    return Severity.TEMPORARY


def status_of(result: ReplyLike | TransportError, *, rcpt: bool = False) -> str:
    """The RFC 3463 status code ("5.1.1") to put in the DSN's Status field.

    For a reply, its own enhanced code is used when it has one whose class agrees with the
    basic code (RFC 3463 section 2: on disagreement the basic code wins); otherwise the
    generic X.0.0 of the severity.
    """
    if isinstance(result, TransportError):
        return _TRANSPORT_TABLE[result][1]
    cls = "5" if classify(result, rcpt=rcpt) is Severity.PERMANENT else "4"
    enhanced = _enhanced_text(getattr(result, "enhanced", None))
    if enhanced is not None and enhanced[0] == cls:
        return enhanced
    return f"{cls}.0.0"


def _enhanced_text(value: object) -> str | None:
    """Accept an enhanced status as "5.1.1" or (5, 1, 1); None when absent or malformed."""
    if isinstance(value, tuple) and len(value) == 3:
        value = ".".join(str(part) for part in value)
    if not isinstance(value, str):
        return None
    parts = value.split(".")
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() and len(p) <= 3 for p in parts):
        return None
    if parts[0] not in ("2", "4", "5"):
        return None
    return value


# --- retry schedule ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The queue's timing knobs (seconds). Defaults follow Postfix; see the module docstring.

    ``bounce_lifetime`` applies to messages with a null reverse-path (our own DSNs): they are
    not worth keeping as long, and bouncing them is impossible anyway (Postfix
    ``bounce_queue_lifetime``; same default). ``delay_warning = 0`` disables warnings.
    ``jitter_fraction`` spreads retries of messages that failed together by up to that
    fraction of the backoff, using the caller's random number.
    """

    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    schedule: tuple[float, ...] = ()
    lifetime: float = 5 * DAY
    bounce_lifetime: float = 5 * DAY
    delay_warning: float = 4 * HOUR
    jitter_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.min_backoff <= self.max_backoff:
            raise ValueError("need 0 < min_backoff <= max_backoff")
        if any(step <= 0 for step in self.schedule):
            raise ValueError("schedule steps must be positive")
        if self.lifetime < 0 or self.bounce_lifetime < 0 or self.delay_warning < 0:
            raise ValueError("lifetimes and delay_warning must not be negative")
        if not 0 <= self.jitter_fraction <= 1:
            raise ValueError("jitter_fraction must be within [0, 1]")

    def backoff(self, attempts: int) -> float:
        """Wait after the ``attempts``-th failed attempt (1 = the first attempt failed)."""
        n = max(attempts, 1)
        if self.schedule:
            return self.schedule[min(n, len(self.schedule)) - 1]
        # Compare exponents rather than computing 2**n, which grows without bound.
        if n > 64:
            return self.max_backoff
        return min(self.max_backoff, self.min_backoff * (1 << (n - 1)))

    def expires_at(self, created: float, *, null_sender: bool = False) -> float:
        """The time after which a temporary failure becomes a bounce."""
        return created + (self.bounce_lifetime if null_sender else self.lifetime)


class BounceReason(enum.Enum):
    PERMANENT = "permanent"  # the last failure was permanent
    EXPIRED = "expired"  # still temporary, but the queue lifetime is over


@dataclass(frozen=True, slots=True)
class Defer:
    """Keep the message; try again at ``retry_at``. Send a delay DSN first if asked."""

    retry_at: float
    send_delay_warning: bool


@dataclass(frozen=True, slots=True)
class Bounce:
    """Give up on the remaining recipients and return a failure DSN."""

    reason: BounceReason


Decision = Defer | Bounce


def after_attempt(
    policy: RetryPolicy,
    *,
    now: float,
    created: float,
    attempts: int,
    severity: Severity,
    warned: bool = False,
    null_sender: bool = False,
    jitter: float = 0.0,
) -> Decision:
    """Decide what happens to recipients that just failed with ``severity``.

    ``attempts`` counts delivery attempts made so far, including the one that just failed;
    ``warned`` says a delay warning was already sent; ``jitter`` is a caller-supplied number
    in [0, 1) (``random.random()``) so that this stays deterministic under test.
    """
    if severity is Severity.PERMANENT:
        return Bounce(BounceReason.PERMANENT)
    expires = policy.expires_at(created, null_sender=null_sender)
    if now >= expires:
        return Bounce(BounceReason.EXPIRED)
    wait = policy.backoff(attempts)
    wait += wait * policy.jitter_fraction * min(max(jitter, 0.0), 1.0)
    # Land the last retry exactly on the expiry time, so nothing waits a full backoff past
    # the lifetime and "Will-Retry-Until" is accurate.
    retry_at = min(now + wait, expires)
    return Defer(retry_at, delay_warning_due(policy, now=now, created=created, warned=warned))


def delay_warning_due(policy: RetryPolicy, *, now: float, created: float, warned: bool) -> bool:
    """True once a still-deferred message is older than ``delay_warning`` (RFC 3464 delay
    DSNs; sent at most once, whether the sender asked for it is dsn.should_notify's job)."""
    return not warned and policy.delay_warning > 0 and now - created >= policy.delay_warning


# --- per-destination backoff ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Timing of the destination-down state machine (seconds).

    ``probe_timeout`` is a safety net: a probe that never reported back (the worker died)
    stops blocking the destination after this long. It must exceed the longest legitimate
    transaction, hence the generous default.
    """

    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    probe_timeout: float = HOUR

    def __post_init__(self) -> None:
        if not 0 < self.min_backoff <= self.max_backoff:
            raise ValueError("need 0 < min_backoff <= max_backoff")
        if self.probe_timeout <= 0:
            raise ValueError("probe_timeout must be positive")

    def backoff(self, failures: int) -> float:
        n = max(failures, 1)
        if n > 64:
            return self.max_backoff
        return min(self.max_backoff, self.min_backoff * (1 << (n - 1)))


class DestinationState(enum.Enum):
    UP = "up"
    DOWN = "down"  # waiting for the backoff to expire
    PROBING = "probing"  # one connection is testing whether it is back


class Admission(enum.Enum):
    """Answer of :meth:`DestinationBackoff.admit`."""

    GO = "go"  # destination is up: connect
    PROBE = "probe"  # destination was down: connect, you are the one probe
    WAIT = "wait"  # do not connect now; see ready_at()


class DestinationBackoff:
    """Per-destination state: destination down, one probe at a time, the rest wait until
    the probe succeeds or the backoff expires.

    Call :meth:`admit` before connecting and exactly one of :meth:`succeeded`,
    :meth:`failed` or :meth:`abandoned` when the attempt ends, passing ``probe=True`` when
    :meth:`admit` said PROBE. Only destination-level failures count as failures (no
    connection, timeouts, greeting refused or 421); a recipient rejected by a working server
    is a success for this machine.
    """

    __slots__ = ("failures", "policy", "probe_started", "state", "until")

    def __init__(self, policy: DestinationPolicy | None = None) -> None:
        self.policy = policy if policy is not None else DestinationPolicy()
        self.state = DestinationState.UP
        self.failures = 0  # consecutive failed probes (+1 for the failure that downed it)
        self.until = 0.0  # DOWN: earliest probe time
        self.probe_started = 0.0

    def admit(self, now: float) -> Admission:
        if self.state is DestinationState.UP:
            return Admission.GO
        if self.state is DestinationState.PROBING:
            if now - self.probe_started < self.policy.probe_timeout:
                return Admission.WAIT
            # The probe was lost: let a new one go.
        elif now < self.until:
            return Admission.WAIT
        self.state = DestinationState.PROBING
        self.probe_started = now
        return Admission.PROBE

    def ready_at(self, now: float) -> float:
        """Earliest time :meth:`admit` may say something other than WAIT (``now`` if it
        already would). For PROBING this is the probe timeout; the probe's completion will
        normally come first."""
        if self.state is DestinationState.UP:
            return now
        if self.state is DestinationState.PROBING:
            return max(now, self.probe_started + self.policy.probe_timeout)
        return max(now, self.until)

    def succeeded(self, now: float, *, probe: bool = False) -> None:
        """Any success proves the destination works, probe or not."""
        del now, probe  # uniform signature; a success needs neither
        self.state = DestinationState.UP
        self.failures = 0

    def failed(self, now: float, *, probe: bool = False) -> None:
        if probe or self.state is DestinationState.UP:
            # The first failure downs the destination; each failed probe doubles the wait.
            self.failures += 1
            self.state = DestinationState.DOWN
            self.until = now + self.policy.backoff(self.failures)
        # A connection that started before the outage was noticed and fails now tells us
        # nothing new: leave DOWN/PROBING as they are.

    def abandoned(self, now: float, *, probe: bool = False) -> None:
        """The attempt ended without a verdict (shutdown, cancelled): let the next caller
        probe straight away instead of waiting for ``probe_timeout``."""
        if probe and self.state is DestinationState.PROBING:
            self.state = DestinationState.DOWN
            self.until = now


class Destinations:
    """One :class:`DestinationBackoff` per destination name; healthy ones are forgotten."""

    __slots__ = ("_table", "policy")

    def __init__(self, policy: DestinationPolicy | None = None) -> None:
        self.policy = policy if policy is not None else DestinationPolicy()
        self._table: dict[str, DestinationBackoff] = {}

    def __len__(self) -> int:
        return len(self._table)

    def state(self, name: str) -> DestinationState:
        entry = self._table.get(name)
        return entry.state if entry is not None else DestinationState.UP

    def admit(self, name: str, now: float) -> Admission:
        entry = self._table.get(name)
        return entry.admit(now) if entry is not None else Admission.GO

    def ready_at(self, name: str, now: float) -> float:
        entry = self._table.get(name)
        return entry.ready_at(now) if entry is not None else now

    def succeeded(self, name: str, now: float, *, probe: bool = False) -> None:
        self._table.pop(name, None)

    def failed(self, name: str, now: float, *, probe: bool = False) -> None:
        entry = self._table.get(name)
        if entry is None:
            entry = self._table[name] = DestinationBackoff(self.policy)
        entry.failed(now, probe=probe)

    def abandoned(self, name: str, now: float, *, probe: bool = False) -> None:
        entry = self._table.get(name)
        if entry is not None:
            entry.abandoned(now, probe=probe)
