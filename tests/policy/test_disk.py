"""The free-space guard's decisions and logging, with a fake clock and fake disk."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from postroom.policy.disk import CHECK_INTERVAL, FreeSpaceGuard, free_octets


class FakeDisk:
    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, path: Path) -> int:
        self.calls += 1
        return self.free


def test_threshold_size_and_caching(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    disk = FakeDisk(100)
    g = FreeSpaceGuard(Path("/data"), 50, clock=lambda: now[0], measure=disk)
    with caplog.at_level(logging.INFO, logger="postroom.disk"):
        assert g.has_room() and g.has_room(50) and not g.has_room(51)  # SIZE that would not fit
        assert disk.calls == 1  # measured once per CHECK_INTERVAL
        disk.free = 10
        assert g.has_room()  # still the cached figure
        now[0] += CHECK_INTERVAL
        assert not g.has_room() and not g.has_room() and not g.has_room(0)
        now[0] += CHECK_INTERVAL
        disk.free = 60
        assert g.has_room()
    events = [r.getMessage() for r in caplog.records]
    assert events == ["free_space_low", "free_space_ok"]  # once each, not per refusal


def test_zero_threshold_is_no_guard() -> None:
    disk = FakeDisk(0)
    g = FreeSpaceGuard(Path("/data"), 0, measure=disk)
    assert g.has_room(10**12) and disk.calls == 0


def test_unreadable_path_counts_as_full(tmp_path: Path) -> None:
    g = FreeSpaceGuard(tmp_path / "missing", 1)
    assert not g.has_room()
    assert free_octets(tmp_path) > 0
