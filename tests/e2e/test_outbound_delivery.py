"""Outbound delivery end to end: a real ``postroom serve``, a local DNS server (dnspython
resolver), capture SMTP servers playing the remote MX hosts on 127.0.0.x, submission over
smtplib. DSNs are read back from the sender's INBOX and parsed with the stdlib email package.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.capture import Behaviour
from support.dns_server import NXDOMAIN, SERVFAIL
from support.outbound import World, wait, world_fixture
from support.worker_env import report_fields

OUTBOUND = """retry_schedule = ["1s"]
max_queue_lifetime = "6s"
delay_warning = "1h"
queue_poll_interval = "1s"
connection_cache_time = "1s"
read_timeout = "5s"
connect_timeout = "3s"
tls_policy = { "require.test" = "require", "verify.test" = "verify", "verifybad.test" = "verify" }
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(tmp_path_factory.mktemp("outbound"), outbound=OUTBOUND)


def dsn_for(world: World, recipient: str, timeout: float = 20) -> dict[str, str]:
    """The report block about ``recipient`` in alice's INBOX (waits for it)."""

    def find() -> dict[str, str] | None:
        for dsn in world.wait_dsn(timeout=timeout):
            for block in report_fields(dsn):
                kind = "rfc822" if recipient.isascii() else "utf-8"  # RFC 6533 3
                if block["final-recipient"] == f"{kind};{recipient}":
                    return block
        return None

    return wait(find, timeout)


def test_envelope_and_body(world: World) -> None:
    address = world.mx("ok.test")
    world.send(["bob@ok.test", "carol@example.test"], subject="envelope check")
    (got,) = world.wait_arrived(address)
    assert got.mail_from == "alice@example.test" and got.recipients == ["bob@ok.test"]
    assert got.helo == "mail.example.test"
    # Return-Path is for final delivery only: carol's copy has it, the outbound one not.
    assert got.data.startswith(b"Received: from "), got.data[:80]
    assert b"by mail.example.test (postroom)" in got.data.split(b"\r\n\r\n")[0]
    assert b"\r\nSubject: envelope check\r\n" in got.data and got.data.endswith(b"Hello.\r\n")
    assert b"return-path" not in got.data.lower()
    (local,) = world.inbox("carol@example.test")
    assert local["Return-Path"] == "<alice@example.test>"
    world.wait_queue_empty()


def test_retry_after_4xx_succeeds(world: World) -> None:
    address = world.mx("greylist.test", Behaviour(starttls=False, replies={"rcpt": ["450 4.7.1 greylisted, come back"]}))
    world.send(["dave@greylist.test"])
    entry = wait(lambda: next((q for q in world.queue() if q.attempts >= 1), None))
    assert "greylisted" in (entry.last_error or "")
    (got,) = world.wait_arrived(address, timeout=15)
    assert got.recipients == ["dave@greylist.test"]
    world.wait_queue_empty()


def test_5xx_bounces_with_dsn(world: World) -> None:
    world.mx("reject.test", Behaviour(starttls=False, replies={"rcpt": ["550 5.1.1 <nobody@reject.test>: user unknown"]}))
    world.send(["nobody@reject.test"], subject="will bounce")
    block = dsn_for(world, "nobody@reject.test")
    assert block["action"] == "failed" and block["status"] == "5.1.1"
    assert block["remote-mta"] == "dns; mx.reject.test" and "550 5.1.1" in block["diagnostic-code"]
    dsn = next(d for d in world.inbox() if "will bounce" in d.as_string())
    returned = next(p for p in dsn.walk() if p.get_content_type() == "message/rfc822")
    assert "will bounce" in returned.as_string()
    world.wait_queue_empty()


def test_expiry_bounces(world: World) -> None:
    world.mx("full.test", Behaviour(starttls=False, replies={"rcpt": ["452 4.2.2 over quota"] * 100}))
    world.send(["erin@full.test"])
    block = dsn_for(world, "erin@full.test", timeout=25)
    assert block["action"] == "failed" and block["status"] == "4.2.2"  # the last (temporary) status
    assert "over quota" in block["diagnostic-code"]
    world.wait_queue_empty()


def test_mx_fallback_order(world: World) -> None:
    refusing = world.address(Behaviour(starttls=False, greeting="421 4.3.2 busy"))
    good = world.address()
    spare = world.address()
    world.dns.set("multi.test", "MX", [(30, "mx3.multi.test"), (10, "mx1.multi.test"), (20, "mx2.multi.test"), (40, "mx4.multi.test")])
    world.dns.set("mx1.multi.test", "A", ["127.0.0.250"])  # nothing listens: refused
    world.dns.set("mx2.multi.test", "A", [refusing])
    world.dns.set("mx3.multi.test", "A", [good])
    world.dns.set("mx4.multi.test", "A", [spare])
    world.send(["frank@multi.test"])
    (got,) = world.wait_arrived(good)
    assert got.recipients == ["frank@multi.test"]
    assert world.arrived(spare) == []
    with world.capture.lock:
        order = [s.address for s in world.capture.sessions if s.address in (refusing, good, spare)]
    assert order == [refusing, good]


def test_null_mx_nxdomain_and_loop_bounce(world: World) -> None:
    world.dns.set("nullmx.test", "MX", [(0, ".")])
    world.dns.set("gone.test", "MX", NXDOMAIN)
    world.dns.set("loop.test", "MX", [(10, "mx.loop.test")])
    world.dns.set("mx.loop.test", "A", ["127.0.0.1"])  # our own listener address
    world.send(["g@nullmx.test", "h@gone.test", "i@loop.test"], subject="three bounces")
    blocks = {r: dsn_for(world, r) for r in ("g@nullmx.test", "h@gone.test", "i@loop.test")}
    assert blocks["g@nullmx.test"]["status"] == "5.1.10"  # RFC 7505
    assert blocks["h@gone.test"]["status"] == "5.1.2"
    assert blocks["i@loop.test"]["status"] == "5.4.6" and "loops back" in blocks["i@loop.test"]["diagnostic-code"]
    world.wait_queue_empty()


def test_a_fallback_and_servfail_retry(world: World) -> None:
    implicit = world.address()
    world.dns.set("nomx.test", "A", [implicit])
    flaky = world.address()
    world.dns.set("flaky.test", "MX", SERVFAIL)
    world.send(["j@nomx.test", "k@flaky.test"])
    (got,) = world.wait_arrived(implicit)
    assert got.recipients == ["j@nomx.test"]
    entry = wait(lambda: next((q for q in world.queue() if q.attempts >= 1), None))
    (pending,) = entry.pending
    assert pending.address == "k@flaky.test" and pending.status == "4.4.3"
    world.dns.set("flaky.test", "MX", [(10, "mx.flaky.test")])  # the DNS recovers
    world.dns.set("mx.flaky.test", "A", [flaky])
    (got,) = world.wait_arrived(flaky)
    assert got.recipients == ["k@flaky.test"]
    world.wait_queue_empty()


def test_tls_policies(world: World) -> None:
    may = world.mx("may.test", Behaviour(), name="mx.tls.test")
    require_no_tls = world.mx("require.test", Behaviour(starttls=False))
    verified = world.mx("verify.test", Behaviour(), name="mx.verify.test")
    wrong_name = world.mx("verifybad.test", Behaviour(), name="mx.other.test")
    world.send(["l@may.test", "m@require.test", "n@verify.test", "o@verifybad.test"])
    assert world.wait_arrived(may)[0].tls
    assert world.wait_arrived(verified)[0].tls

    def deferred() -> dict[str, str] | None:
        found = {r.address: r.diagnostic or "" for q in world.queue() for r in q.pending}
        return found if {"m@require.test", "o@verifybad.test"} <= set(found) and all(found.values()) else None

    found = wait(deferred)
    assert "TLS is required" in found["m@require.test"]
    assert "certificate verify failed" in found["o@verifybad.test"].lower()
    assert world.arrived(require_no_tls) == [] and world.arrived(wrong_name) == []
    # let them expire quietly: a bounce for each
    dsn_for(world, "m@require.test", timeout=25)
    dsn_for(world, "o@verifybad.test", timeout=25)


def test_connection_reuse(world: World) -> None:
    address = world.mx("reuse.test", Behaviour(starttls=False, delay=0.05))
    for i in range(6):
        world.send([f"p{i}@reuse.test"])
    world.wait_arrived(address, 6)
    with world.capture.lock:
        sessions = [s for s in world.capture.sessions if s.address == address]
    assert sum(s.transactions for s in sessions) == 6
    assert len(sessions) < 6, "each message used its own connection"


def test_drop_mid_data_then_retry(world: World) -> None:
    address = world.mx("dropper.test", Behaviour(starttls=False, drop_in_data=1))
    world.send(["q@dropper.test"], data="Subject: big\r\n\r\n" + "x" * 70 + "\r\n" * 1)
    (got,) = world.wait_arrived(address, timeout=15)
    assert got.recipients == ["q@dropper.test"]


def test_8bit_and_utf8_peers(world: World) -> None:
    seven = world.mx("sevenbit.test", Behaviour(starttls=False, extensions=("PIPELINING",)))
    world.dns.set("ascii.test", "MX", [(10, "mx.sevenbit.test")])
    body = (
        "From: alice@example.test\r\nSubject: umlauts\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße aus Köln\r\n"
    ).encode()
    world.send(["r@sevenbit.test"], body, mail_options=("BODY=8BITMIME",))
    (got,) = world.wait_arrived(seven)
    assert got.data.isascii() and b"Content-Transfer-Encoding: quoted-printable" in got.data
    assert "BODY=8BITMIME" not in got.mail_params
    world.send(["jürgen@ascii.test"], mail_options=("SMTPUTF8",))
    block = dsn_for(world, "jürgen@ascii.test")
    assert block["status"] == "5.6.7"
