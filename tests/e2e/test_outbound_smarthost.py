"""Outbound through a smarthost that requires AUTH (PLAIN over STARTTLS), with a transport
map entry that overrides it for one domain (Postfix relayhost + transport_maps)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.capture import Behaviour
from support.outbound import World, world_fixture
from support.worker_env import report_fields

USERS = {"relay-account": "relay-secret"}


def config(world: World) -> str:
    smarthost = world.address(Behaviour(auth=USERS, starttls=True, name="smarthost.test"))
    direct = world.address()
    wrong = world.address(Behaviour(auth={"relay-account": "other"}, starttls=True))
    world.smarthost, world.direct, world.wrong = smarthost, direct, wrong  # type: ignore[attr-defined]
    return (
        f'smarthost = "{smarthost}:{world.capture.port}"\n'
        'smarthost_username = "relay-account"\nsmarthost_password = "relay-secret"\n'
        'smarthost_tls = "require"\n'
        f'transport = {{ "direct.test" = "{direct}:{world.capture.port}", '
        f'"badauth.test" = "{wrong}:{world.capture.port}" }}\n'
        'retry_schedule = ["1s"]\nqueue_poll_interval = "1s"\nread_timeout = "5s"\n'
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(tmp_path_factory.mktemp("smarthost"), outbound=config, first=140, count=10)


def test_smarthost_with_auth(world: World) -> None:
    smarthost = world.smarthost  # type: ignore[attr-defined]
    # No DNS at all for these domains: the smarthost takes everything.
    world.send(["a@one.test", "b@two.test", "c@one.test"], subject="via relay")
    (got,) = world.wait_arrived(smarthost)
    assert got.auth_user == "relay-account" and got.tls
    assert sorted(got.recipients) == ["a@one.test", "b@two.test", "c@one.test"]  # one transaction
    world.wait_queue_empty()


def test_transport_map_overrides_smarthost(world: World) -> None:
    direct = world.direct  # type: ignore[attr-defined]
    world.send(["d@direct.test"])
    (got,) = world.wait_arrived(direct)
    assert got.recipients == ["d@direct.test"] and got.auth_user is None


def test_relay_demanding_auth_bounces_unauthenticated_mail(world: World) -> None:
    # transport entries carry no credentials; a relay that demands AUTH refuses MAIL (530)
    world.send(["e@badauth.test"])
    (dsn,) = world.wait_dsn()
    (block,) = report_fields(dsn)
    assert block["final-recipient"] == "rfc822;e@badauth.test" and block["status"] == "5.7.0"
    assert "530" in block["diagnostic-code"]
    world.wait_queue_empty()
