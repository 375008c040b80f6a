"""``/metrics``, ``/healthz`` and ``/readyz`` of a running server that has done real work.

SMTP, IMAP and POP3 clients use the server, a message goes out to a domain without DNS
records, then Prometheus' own text parser (prometheus_client.parser) reads ``/metrics``,
and each family must show what happened: connections per role, commands, deliveries in
and out, login and store latency, the DNS query, the queue, the event-loop watchdog. The
same with two serving worker processes: the supervisor's /metrics is the sum of all.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.dns_server import DnsServer
from support.http import HttpServer, closed_port
from support.server import PASSWORD

USER = "metrics@example.test"


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def server(
    tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, request: pytest.FixtureRequest,
) -> Iterator[HttpServer]:
    """In one process, and with two worker processes (server.workers = 2), where the
    supervisor serves HTTP and /metrics adds up what each worker counted."""
    port = closed_port("127.0.0.3")
    # slow.test's MX is a loopback address (not one of the server's own, which would be a
    # mail loop) on a port nobody listens on: mail to it stays queued.
    dns.set("slow.test", "MX", [(10, "mx.slow.test")])
    dns.set("mx.slow.test", "A", ["127.0.0.3"])
    extra = f'[outbound]\nresolver = "{dns.address}"\nport = {port}\nretry_schedule = ["1h"]\n'
    srv = HttpServer(tmp_path_factory.mktemp("metrics"), extra=extra, workers=request.param)
    srv.setup_admin()
    srv.add_user(USER)
    srv.start()
    yield srv
    srv.stop()


def scrape(server: HttpServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = server.call("GET", "/metrics", token="")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_real_traffic(server: HttpServer) -> None:
    before = scrape(server)
    for i in range(3):
        with smtplib.SMTP("127.0.0.1", server.ports["mx"], timeout=30) as s:
            s.sendmail("someone@far.test", [USER], f"Subject: {i}\r\n\r\nhello\r\n".encode())
    with smtplib.SMTP("127.0.0.1", server.ports["mx"], timeout=30) as s:
        s.ehlo()
        code, _ = s.mail("someone@far.test")
        assert code == 250
        assert s.rcpt("nobody@example.test")[0] == 550
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as s:
        s.starttls(context=server.client_context())
        s.login(USER, PASSWORD)
        s.sendmail(USER, ["x@unresolvable.test"], b"Subject: out\r\n\r\nbye\r\n")
        s.sendmail(USER, ["y@slow.test"], b"Subject: stays\r\n\r\nlater\r\n")
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.client_context())
    imap.login(USER, PASSWORD)
    imap.select("INBOX")
    imap.fetch("1:*", "(FLAGS)")
    imap.logout()
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.client_context()).login(USER, "wrong")
    pop = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=server.client_context())
    pop.user(USER)
    pop.pass_(PASSWORD)
    pop.retr(1)
    pop.quit()

    deadline = time.monotonic() + 20
    while True:  # the outbound attempt is asynchronous: wait for its deferral
        after = scrape(server)
        outs = {k[1]: v for k, v in after.items() if k[0] == "postroom_deliveries_total"}
        if all(value(after, "postroom_deliveries_total", direction="out", result=r) >= 1
               for r in ("failed", "deferred")) and value(after, "postroom_event_loop_lag_seconds_count"):
            break  # (the loop watchdog fires every 0.5 s: a fast run may end before its first)
        assert time.monotonic() < deadline, f"the outbound attempt never showed: {outs}"
        time.sleep(0.2)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert grew("postroom_connections_total", 4, role="mx")
    assert grew("postroom_connections_total", 1, role="imaps")
    assert grew("postroom_connections_total", 1, role="pop3s")
    assert value(after, "postroom_connections_open", role="https") >= 1  # this scrape
    assert grew("postroom_commands_total", 4, protocol="smtp", command="mail")
    assert grew("postroom_commands_total", 4, protocol="smtp", command="rcpt")
    assert grew("postroom_commands_total", 1, protocol="smtp", command="auth")
    assert grew("postroom_commands_total", 1, protocol="imap", command="select")
    assert grew("postroom_commands_total", 1, protocol="imap", command="fetch")
    assert grew("postroom_commands_total", 1, protocol="pop3", command="retr")
    assert grew("postroom_deliveries_total", 4, direction="in", result="accepted")
    assert grew("postroom_login_seconds_count", 1, protocol="imap", result="ok")
    assert grew("postroom_login_seconds_count", 1, protocol="pop3", result="ok")
    assert grew("postroom_login_seconds_count", 1, protocol="imap", result="failed")
    assert grew("postroom_login_seconds_count", 1, protocol="smtp", result="ok")
    assert grew("postroom_store_seconds_count", 5, op="write")
    assert grew("postroom_store_seconds_count", 5, op="read")
    # The outbound attempt asked DNS for the MX of a name that does not exist, and the
    # recipient failed for good (RFC 5321 5.1: no such domain).
    assert grew("postroom_dns_seconds_count", 1, type="MX", result="nxdomain")
    assert grew("postroom_deliveries_total", 1, direction="out", result="failed")
    assert value(after, "postroom_queue_messages") >= 1
    assert value(after, "postroom_queue_oldest_age_seconds") >= 0
    assert value(after, "postroom_event_loop_lag_seconds_count") >= 1
    # Histogram buckets are cumulative and end in +Inf = count.
    assert value(after, "postroom_store_seconds_bucket", op="write", le="+Inf") == value(
        after, "postroom_store_seconds_count", op="write")
    assert value(after, "postroom_info", version="0.1.0") == 1


def test_health_endpoints(server: HttpServer) -> None:
    status, _, body = server.call("GET", "/healthz", token="")
    assert status == 200 and body == {"status": "ok"}
    status, _, body = server.call("GET", "/readyz", token="")
    assert status == 200 and body["status"] == "ready" and body["store_ms"] >= 0


def test_metrics_from_elsewhere_need_a_token(server: HttpServer) -> None:
    """Every test client is on loopback; the rule for the others is checked through the
    same function the handler uses."""
    from postroom.web.public import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("127.0.0.9")
    assert not _loopback("192.0.2.1") and not _loopback("2001:db8::1") and not _loopback(None)
    status, _, _ = server.call("GET", "/metrics")  # with the admin token: also fine
    assert status == 200
