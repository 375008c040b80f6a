"""Retry schedule, classification and destination backoff: tables of inputs -> decisions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.queue.model import (
    DAY,
    HOUR,
    Admission,
    Bounce,
    BounceReason,
    Defer,
    DestinationBackoff,
    DestinationPolicy,
    Destinations,
    DestinationState,
    RetryPolicy,
    Severity,
    TransportError,
    after_attempt,
    classify,
    delay_warning_due,
    status_of,
)


@dataclass(frozen=True)
class FakeReply:
    code: int
    enhanced: object = None
    text: str = ""


T, P = Severity.TEMPORARY, Severity.PERMANENT


@pytest.mark.parametrize(
    ("result", "rcpt", "severity", "status"),
    [
        (FakeReply(421), False, T, "4.0.0"),
        (FakeReply(450, "4.2.0"), False, T, "4.2.0"),
        (FakeReply(451, (4, 3, 0)), False, T, "4.3.0"),
        (FakeReply(452, "4.5.3"), True, T, "4.5.3"),
        (FakeReply(550, "5.1.1"), True, P, "5.1.1"),
        (FakeReply(554), False, P, "5.0.0"),
        (FakeReply(552, "5.3.4"), False, P, "5.3.4"),
        # RFC 5321 4.5.3.1.10: 552 to RCPT is "too many recipients" -> temporary.
        (FakeReply(552, "5.5.3"), True, T, "4.0.0"),
        # Enhanced class disagreeing with the basic code: basic code wins (RFC 3463).
        (FakeReply(550, "4.1.1"), False, P, "5.0.0"),
        (FakeReply(450, "5.1.1"), False, T, "4.0.0"),
        (FakeReply(550, "5.x.1"), False, P, "5.0.0"),
        (FakeReply(550, "5.1"), False, P, "5.0.0"),
        (FakeReply(354), False, T, "4.0.0"),
        (TransportError.TIMEOUT, False, T, "4.4.2"),
        (TransportError.CONNECTION_REFUSED, False, T, "4.4.1"),
        (TransportError.CONNECTION_LOST, False, T, "4.4.2"),
        (TransportError.TLS_FAILED, False, T, "4.7.5"),
        (TransportError.PROTOCOL_ERROR, False, T, "4.5.0"),
        (TransportError.DNS_SERVFAIL, False, T, "4.4.3"),
        (TransportError.DNS_TIMEOUT, False, T, "4.4.3"),
        (TransportError.DNS_NXDOMAIN, False, P, "5.1.2"),
        (TransportError.NULL_MX, False, P, "5.1.10"),
        (TransportError.NO_ADDRESS, False, T, "4.4.4"),
        (TransportError.LOCAL_LOOP, False, P, "5.4.6"),
    ],
)
def test_classify_and_status(result: object, rcpt: bool, severity: Severity, status: str) -> None:
    assert classify(result, rcpt=rcpt) is severity  # type: ignore[arg-type]
    assert status_of(result, rcpt=rcpt) == status  # type: ignore[arg-type]


def test_every_transport_error_is_classified() -> None:
    for error in TransportError:
        assert classify(error) in (T, P)
        assert status_of(error)[0] == ("4" if classify(error) is T else "5")


def test_default_schedule_is_postfix_like() -> None:
    policy = RetryPolicy()
    assert [policy.backoff(n) for n in range(1, 8)] == [300, 600, 1200, 2400, 4000, 4000, 4000]
    assert policy.backoff(0) == 300
    assert policy.backoff(10_000) == 4000
    assert policy.lifetime == 5 * DAY and policy.delay_warning == 4 * HOUR


def test_explicit_schedule_repeats_last_step() -> None:
    policy = RetryPolicy(schedule=(60, 300, 900))
    assert [policy.backoff(n) for n in range(1, 6)] == [60, 300, 900, 900, 900]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_backoff": 0},
        {"min_backoff": 10, "max_backoff": 5},
        {"schedule": (60, 0)},
        {"lifetime": -1},
        {"delay_warning": -1},
        {"jitter_fraction": 2},
    ],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_after_attempt_table() -> None:
    policy = RetryPolicy()
    created = 1_000_000.0
    # Permanent failure bounces at once.
    assert after_attempt(policy, now=created, created=created, attempts=1, severity=P) == Bounce(
        BounceReason.PERMANENT
    )
    # First temporary failure: retry in 5 minutes, no warning yet.
    assert after_attempt(policy, now=created + 1, created=created, attempts=1, severity=T) == Defer(
        created + 301, False
    )
    # Third failure: 20 minutes.
    assert after_attempt(
        policy, now=created + 1000, created=created, attempts=3, severity=T
    ) == Defer(created + 2200, False)
    # Old enough for a delay warning, not yet sent.
    decision = after_attempt(
        policy, now=created + 5 * HOUR, created=created, attempts=9, severity=T
    )
    assert decision == Defer(created + 5 * HOUR + 4000, True)
    # ...already sent: no second warning.
    decision = after_attempt(
        policy, now=created + 5 * HOUR, created=created, attempts=9, severity=T, warned=True
    )
    assert decision == Defer(created + 5 * HOUR + 4000, False)
    # The last retry is pulled in to the expiry time.
    expires = created + 5 * DAY
    decision = after_attempt(
        policy, now=expires - 100, created=created, attempts=99, severity=T, warned=True
    )
    assert decision == Defer(expires, False)
    # At/after expiry a temporary failure becomes a bounce.
    assert after_attempt(
        policy, now=expires, created=created, attempts=100, severity=T, warned=True
    ) == Bounce(BounceReason.EXPIRED)


def test_null_sender_uses_bounce_lifetime() -> None:
    policy = RetryPolicy(bounce_lifetime=DAY)
    decision = after_attempt(
        policy, now=DAY + 1, created=0, attempts=5, severity=T, null_sender=True
    )
    assert decision == Bounce(BounceReason.EXPIRED)
    decision = after_attempt(policy, now=DAY + 1, created=0, attempts=5, severity=T)
    assert isinstance(decision, Defer)


def test_jitter_is_bounded_and_deterministic() -> None:
    policy = RetryPolicy(jitter_fraction=0.1)
    low = after_attempt(policy, now=0, created=0, attempts=1, severity=T, jitter=0.0)
    high = after_attempt(policy, now=0, created=0, attempts=1, severity=T, jitter=0.999)
    assert isinstance(low, Defer) and isinstance(high, Defer)
    assert low.retry_at == 300
    assert 300 < high.retry_at < 330


def test_delay_warning_disabled() -> None:
    policy = RetryPolicy(delay_warning=0)
    assert not delay_warning_due(policy, now=10 * DAY, created=0, warned=False)


@settings(max_examples=200, deadline=None)
@given(
    created=st.floats(0, 2e9),
    age=st.floats(0, 10 * DAY),
    attempts=st.integers(1, 10_000),
    jitter=st.floats(0, 1, exclude_max=True),
)
def test_retry_never_goes_backwards_or_past_expiry(
    created: float, age: float, attempts: int, jitter: float
) -> None:
    policy = RetryPolicy()
    now = created + age
    decision = after_attempt(
        policy, now=now, created=created, attempts=attempts, severity=T, jitter=jitter
    )
    if isinstance(decision, Defer):
        assert now < decision.retry_at <= policy.expires_at(created)
    else:
        assert decision.reason is BounceReason.EXPIRED
        assert now >= policy.expires_at(created)


# --- destination backoff ----------------------------------------------------------------


def test_destination_down_probe_up() -> None:
    d = DestinationBackoff(DestinationPolicy(min_backoff=100, max_backoff=350, probe_timeout=1000))
    assert d.admit(0) is Admission.GO
    assert d.admit(0) is Admission.GO  # any number while up
    d.failed(10)
    assert d.state is DestinationState.DOWN
    assert d.admit(50) is Admission.WAIT
    assert d.ready_at(50) == 110
    # Another connection that was already in flight fails too: nothing changes.
    d.failed(60)
    assert d.ready_at(60) == 110
    # Backoff expired: exactly one probe.
    assert d.admit(110) is Admission.PROBE
    assert d.admit(111) is Admission.WAIT
    assert d.admit(112) is Admission.WAIT
    # Probe fails: backoff doubles.
    d.failed(120, probe=True)
    assert d.ready_at(120) == 320
    assert d.admit(319) is Admission.WAIT
    assert d.admit(320) is Admission.PROBE
    d.failed(330, probe=True)
    assert d.ready_at(330) == 330 + 350  # capped at max_backoff
    assert d.admit(680) is Admission.PROBE
    d.succeeded(700, probe=True)
    assert d.state is DestinationState.UP and d.failures == 0
    assert d.admit(701) is Admission.GO
    # Next outage starts again from min_backoff.
    d.failed(800)
    assert d.ready_at(800) == 900


def test_lost_probe_times_out_and_abandon_releases() -> None:
    d = DestinationBackoff(DestinationPolicy(min_backoff=100, max_backoff=100, probe_timeout=500))
    d.failed(0)
    assert d.admit(100) is Admission.PROBE
    assert d.admit(599) is Admission.WAIT
    assert d.ready_at(200) == 600
    assert d.admit(600) is Admission.PROBE  # the first probe never reported back
    d.abandoned(610, probe=True)
    assert d.admit(610) is Admission.PROBE
    # A non-probe abandon does not release someone else's probe.
    d.abandoned(620)
    assert d.admit(620) is Admission.WAIT


def test_success_while_down_from_an_older_connection_brings_it_up() -> None:
    d = DestinationBackoff()
    d.failed(0)
    d.succeeded(5)
    assert d.admit(6) is Admission.GO


def test_destinations_table_forgets_healthy() -> None:
    table = Destinations(DestinationPolicy(min_backoff=100, max_backoff=1000))
    assert table.admit("a.example", 0) is Admission.GO
    assert table.state("a.example") is DestinationState.UP
    table.failed("a.example", 0)
    table.failed("b.example", 0)
    assert len(table) == 2
    assert table.admit("a.example", 50) is Admission.WAIT
    assert table.ready_at("a.example", 50) == 100
    assert table.ready_at("c.example", 50) == 50
    assert table.admit("a.example", 100) is Admission.PROBE
    assert table.state("a.example") is DestinationState.PROBING
    table.abandoned("a.example", 101, probe=True)
    assert table.admit("a.example", 101) is Admission.PROBE
    table.succeeded("a.example", 102, probe=True)
    assert len(table) == 1
    assert table.admit("a.example", 103) is Admission.GO
    table.abandoned("zzz", 0)  # unknown: no-op
    assert len(table) == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["admit", "ok", "fail", "abandon"]), st.floats(0, 10_000)),
        max_size=60,
    )
)
def test_at_most_one_probe_outstanding(ops: list[tuple[str, float]]) -> None:
    """Whatever happens, while a probe is in flight (and not timed out) nobody else is let in."""
    policy = DestinationPolicy(min_backoff=10, max_backoff=100, probe_timeout=1e9)
    d = DestinationBackoff(policy)
    now = 0.0
    probe_out = False
    for op, delta in ops:
        now += delta
        if op == "admit":
            answer = d.admit(now)
            if probe_out:
                assert answer is Admission.WAIT
            if answer is Admission.PROBE:
                probe_out = True
        elif op == "ok":
            d.succeeded(now, probe=probe_out)
            probe_out = False
        elif op == "fail":
            d.failed(now, probe=probe_out)
            probe_out = False
            assert d.state is DestinationState.DOWN
            assert d.ready_at(now) <= now + policy.max_backoff
        else:
            d.abandoned(now, probe=probe_out)
            probe_out = False
