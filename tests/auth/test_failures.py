"""The per-address and per-user failure rules (auth/failures.py), on a fake clock."""

from __future__ import annotations

import pytest

from postroom.auth.failures import (
    FREE_FAILURES,
    MAX_PENALTY,
    GuardPolicy,
    MemoryLoginGuard,
    client_key,
    user_key,
)
from postroom.config import Limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(**kw: object) -> tuple[MemoryLoginGuard, Clock]:
    clock = Clock()
    return MemoryLoginGuard(GuardPolicy(**kw), clock), clock  # type: ignore[arg-type]


@pytest.mark.parametrize(("ip", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("not an address", "not an address"),
])
def test_client_key_is_the_address_or_its_64(ip: str, key: str) -> None:
    assert client_key(ip) == key


def test_user_key_folds_case_and_bounds_length() -> None:
    assert user_key(" Alice@Example.ORG ") == "alice@example.org"
    assert len(user_key("a" * 5000)) == 320


def test_penalty_grows_after_the_free_failures_and_is_capped() -> None:
    policy = GuardPolicy(delay=1.0)
    assert [policy.penalty(n) for n in range(FREE_FAILURES)] == [0.0] * FREE_FAILURES
    assert policy.penalty(FREE_FAILURES) == 1.0
    assert policy.penalty(FREE_FAILURES + 2) == 4.0
    assert policy.penalty(1000) == MAX_PENALTY
    assert GuardPolicy(delay=0.0).penalty(50) == 0.0


def test_address_is_blocked_at_the_threshold_for_one_window() -> None:
    g, clock = guard(ip_failures=3, ip_window=60.0, user_failures=0)
    key = "192.0.2.1"
    assert g.admission(key) == 0.0
    assert g.record_failure(key, "a@x") == (False, False)
    assert g.record_failure(key, "b@x") == (False, False)
    assert g.admission(key) == 1.0  # the third attempt waits
    assert g.record_failure(key, "c@x") == (True, False)  # blocked: reported once
    assert g.admission(key) is None
    assert g.record_failure(key, "d@x") == (False, False)  # refused ones do not extend it
    assert g.admission("192.0.2.2") == 0.0  # other addresses are untouched
    clock.now += 59.0
    assert g.admission(key) is None
    clock.now += 1.5
    assert g.admission(key) == 0.0  # the block ended and its failures are forgotten


def test_failures_older_than_the_window_are_forgotten() -> None:
    g, clock = guard(ip_failures=3, ip_window=60.0)
    g.record_failure("k", None)
    clock.now += 40
    g.record_failure("k", None)
    clock.now += 30  # the first one is 70 s old
    assert g.record_failure("k", None) == (False, False)
    assert g.admission("k") == 1.0  # two recent failures


def test_user_is_locked_by_failures_from_many_addresses() -> None:
    g, clock = guard(ip_failures=10, user_failures=4, user_window=100.0)
    for i in range(3):
        assert g.record_failure(f"198.51.100.{i}", "Victim@Example.org") == (False, False)
    assert not g.user_locked("victim@example.org")
    assert g.record_failure("198.51.100.9", "victim@example.org") == (False, True)
    assert g.user_locked("VICTIM@example.org")
    assert not g.user_locked("other@example.org")
    assert all(g.admission(f"198.51.100.{i}") == 0.0 for i in range(3))  # addresses clean
    clock.now += 101
    assert not g.user_locked("victim@example.org")


def test_unknown_user_names_lock_too() -> None:
    """A lock must not tell which users exist."""
    g, _ = guard(user_failures=2)
    g.record_failure("a", "nobody@example.org")
    g.record_failure("b", "nobody@example.org")
    assert g.user_locked("nobody@example.org")


def test_zero_thresholds_never_block_or_lock() -> None:
    g, _ = guard(ip_failures=0, user_failures=0, delay=0.0)
    for _ in range(100):
        assert g.record_failure("k", "u") == (False, False)
    assert g.admission("k") == 0.0
    assert not g.user_locked("u")


def test_exempt_networks_are_not_tracked() -> None:
    g, _ = guard(exempt=("127.0.0.0/8", "2001:db8::/32"))
    assert g.key_for("127.0.0.1") is None
    assert g.key_for("::ffff:127.0.0.5") is None
    assert g.key_for("2001:db8::5") is None
    assert g.key_for("192.0.2.1") == "192.0.2.1"


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import postroom.auth.failures as failures

    monkeypatch.setattr(failures, "MAX_ENTRIES", 50)
    g, _ = guard(ip_failures=5)
    for i in range(500):
        g.record_failure(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert len(g._addresses.records) <= 50 and len(g._users.records) <= 50


def test_built_from_the_limits_defaults() -> None:
    g = MemoryLoginGuard.from_limits(Limits())
    assert (g.policy.ip_failures, g.policy.user_failures) == (10, 30)
    # One address alone is blocked before it could lock a user.
    assert g.policy.ip_failures < g.policy.user_failures
