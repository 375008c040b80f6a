"""The metrics object: cheap updates, and what Prometheus reads from them."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from postroom.metrics import Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_gauges_histograms() -> None:
    m = Metrics()
    for _ in range(3):
        m.command("smtp", "mail")
    m.connection_opened("mx")
    m.connection_opened("mx")
    m.connection_closed("mx")
    m.connection_refused("mx", "too many connections")
    m.delivery("out", "deferred", 2)
    m.store_op(True, 0.0004)
    m.store_op(True, 0.002)
    m.store_op(True, 100.0)  # beyond the last bucket: only +Inf
    m.login("imap", False, 0.05)
    m.set_queue(4, 1000, now=1100)
    s = samples(m)
    assert s[("postroom_commands_total", (("command", "mail"), ("protocol", "smtp")))] == 3
    assert s[("postroom_connections_total", (("role", "mx"),))] == 2
    assert s[("postroom_connections_open", (("role", "mx"),))] == 1
    assert s[("postroom_connections_refused_total", (("reason", "too many connections"), ("role", "mx")))] == 1
    assert s[("postroom_deliveries_total", (("direction", "out"), ("result", "deferred")))] == 2
    assert s[("postroom_store_seconds_bucket", (("le", "0.0005"), ("op", "write")))] == 1
    assert s[("postroom_store_seconds_bucket", (("le", "0.0025"), ("op", "write")))] == 2
    assert s[("postroom_store_seconds_bucket", (("le", "2.5"), ("op", "write")))] == 2
    assert s[("postroom_store_seconds_bucket", (("le", "+Inf"), ("op", "write")))] == 3
    assert s[("postroom_store_seconds_count", (("op", "write"),))] == 3
    assert abs(s[("postroom_store_seconds_sum", (("op", "write"),))] - 100.0024) < 1e-9
    assert s[("postroom_login_seconds_count", (("protocol", "imap"), ("result", "failed")))] == 1
    assert s[("postroom_queue_messages", ())] == 4
    assert s[("postroom_queue_oldest_age_seconds", ())] == 100
    m.set_queue(0, None)
    assert samples(m)[("postroom_queue_oldest_age_seconds", ())] == 0


def test_loop_watchdog_sees_a_blocked_loop() -> None:
    m = Metrics()

    async def main() -> None:
        task = asyncio.create_task(m.watch_loop(interval=0.05))
        await asyncio.sleep(0.06)
        import time

        time.sleep(0.2)  # block the loop on purpose
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(main())
    s = samples(m)
    assert s[("postroom_event_loop_lag_seconds_count", ())] >= 2
    assert s[("postroom_event_loop_lag_seconds_bucket", (("le", "0.1"),))] < s[
        ("postroom_event_loop_lag_seconds_count", ())]  # one wake-up was >= 0.1 s late
