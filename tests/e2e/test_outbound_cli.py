"""``postroom queue ...`` run as a separate process while ``postroom serve`` delivers: list,
show, hold, release, flush (one id and --domain), delete, bounce. The server notices changes
made by another process through its periodic queue scan (``queue_poll_interval``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support.capture import Behaviour
from support.outbound import World, wait, world_fixture
from support.worker_env import report_fields

OUTBOUND = 'retry_schedule = ["1h"]\nqueue_poll_interval = "300ms"\nread_timeout = "5s"\n'


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(tmp_path_factory.mktemp("queuecli"), outbound=OUTBOUND, first=160, count=10)


def cli(world: World, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    assert world.server is not None
    proc = subprocess.run(
        [sys.executable, "-m", "postroom", "-c", str(world.server.config), "queue", *args],
        capture_output=True, text=True, timeout=60,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def deferred(world: World, recipient: str) -> str:
    """Wait until the message to ``recipient`` failed once; its queue id."""
    entry = wait(lambda: next((q for q in world.queue() if q.attempts >= 1 and any(r.address == recipient for r in q.recipients)), None))
    return str(entry.qid)


def test_queue_commands_while_running(world: World) -> None:
    behaviour = Behaviour(starttls=False, replies={"rcpt": ["451 4.3.0 not today"] * 3})
    address = world.mx("later.test", behaviour)
    world.send(["x@later.test"], subject="queued for cli")
    qid = deferred(world, "x@later.test")

    listing = cli(world, "list").stdout
    assert qid in listing and "x@later.test" in listing and "not today" in listing
    (doc,) = [d for d in json.loads(cli(world, "list", "--json").stdout) if d["id"] == qid]
    assert doc["attempts"] == 1 and doc["recipients"][0]["state"] == "pending"
    assert doc["recipients"][0]["status"] == "4.3.0"
    shown = cli(world, "show", qid).stdout
    assert "x@later.test [pending]" in shown and "Subject: queued for cli" in shown

    cli(world, "hold", qid)
    assert "held" in cli(world, "list").stdout
    failed = cli(world, "flush", qid, ok=False)
    assert failed.returncode == 1 and "on hold" in failed.stderr
    cli(world, "release", qid)
    with world.capture.lock:
        behaviour.replies["rcpt"].clear()  # the remote recovers
    assert world.arrived(address) == []  # next attempt is an hour away: nothing yet
    cli(world, "flush", qid)  # the server notices within its poll interval
    (got,) = world.wait_arrived(address, timeout=10)
    assert got.recipients == ["x@later.test"]
    world.wait_queue_empty()


def test_flush_by_domain_delete_and_bounce(world: World) -> None:
    behaviour = Behaviour(starttls=False, replies={"rcpt": ["452 4.2.2 busy"] * 100})
    address = world.mx("stuck.test", behaviour)
    world.send(["del@stuck.test"])
    doomed = deferred(world, "del@stuck.test")
    world.send(["bnc@stuck.test"], subject="to be bounced")
    bounced = deferred(world, "bnc@stuck.test")

    cli(world, "delete", doomed)
    assert all(q.qid != doomed for q in world.queue())
    assert cli(world, "delete", doomed, ok=False).returncode == 1

    assert "1 message(s)" in cli(world, "flush", "--domain", "stuck.test").stdout
    wait(lambda: next((q for q in world.queue() if q.qid == bounced and q.attempts >= 2), None), 10)

    cli(world, "bounce", bounced)
    (dsn,) = world.wait_dsn()
    (block,) = report_fields(dsn)
    assert block["final-recipient"] == "rfc822;bnc@stuck.test" and block["status"] == "5.0.0"
    assert "to be bounced" in dsn.as_string()
    world.wait_queue_empty()
    assert world.arrived(address) == []
    assert cli(world, "show", bounced, ok=False).returncode == 1
