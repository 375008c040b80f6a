"""Record deadlines and per-user session counting, without sockets or sleeping."""

from __future__ import annotations

import pytest

from postroom.net.auth import UserSessions
from postroom.net.deadline import RecordDeadline


def test_a_record_must_be_whole_within_the_timeout() -> None:
    d = RecordDeadline(timeout=10, min_rate=0)
    assert not d.active
    assert d.read_timeout(100.0) == 10  # the wait for a record starts it
    assert d.active
    # Trickling: each read comes well within the timeout, yet the record is late at 110.
    for now in (103.0, 106.0, 109.0):
        d.received(1)
        assert d.read_timeout(now) == pytest.approx(110.0 - now)
    assert d.read_timeout(110.0) <= 0
    d.done()  # answered: the next record has the whole timeout again
    assert d.read_timeout(200.0) == 10


def test_data_extends_the_deadline_at_the_minimum_rate() -> None:
    d = RecordDeadline(timeout=10, min_rate=500)
    d.read_timeout(0.0)
    d.received(5000)  # 10 s more
    assert d.read_timeout(15.0) == 5.0  # the per-read idle limit still applies...
    assert d.read_timeout(19.0) == pytest.approx(1.0)  # ...and so does the record's end
    d.received(500)
    assert d.read_timeout(19.0) == pytest.approx(2.0)
    assert d.read_timeout(21.5) <= 0


def test_received_without_a_record_is_ignored() -> None:
    d = RecordDeadline(timeout=5, min_rate=1)
    d.received(1000)
    assert d.read_timeout(0.0) == 5


def test_user_sessions_per_user_and_address() -> None:
    s = UserSessions(limit=2)
    assert s.enter(1, "192.0.2.1") and s.enter(1, "192.0.2.1")
    assert not s.enter(1, "192.0.2.1")  # a third from the same address
    assert s.enter(1, "192.0.2.2") and s.enter(2, "192.0.2.1")  # other address, other user
    s.leave(1, "192.0.2.1")
    assert s.enter(1, "192.0.2.1")
    for _ in range(3):
        s.leave(1, "192.0.2.1")  # never below zero
    assert s.enter(1, "192.0.2.1") and s.enter(1, "192.0.2.1") and not s.enter(1, "192.0.2.1")
