"""``postroom import imap`` against a hostile IMAP server (tests/support/hostile_imap.py):
huge literals, endless continuations and untagged lines, a greeting dripped a byte at a
time, folder names made to escape (``../``, NUL, home references, 1,000 levels) and
10,000 folders. The import must stop with an error that says why, within bounds of time
and memory, and never create anything outside the store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.data_cli import postroom
from support.hostile_imap import HostileImap
from support.imap_state import connect
from support.server import PASSWORD, Server

ALICE = "alice@example.test"
MAX_MAILBOXES = 40


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("hostile-target"), roles=("imaps",),
                 extra=f'[limits]\nauth_delay = "10ms"\nmailboxes_per_user = {MAX_MAILBOXES}\n')
    srv.add_user(ALICE)
    with srv.start():
        yield srv


def run_import(target: Server, behaviour: str, folders: list[bytes] | None = None) -> tuple[float, int, dict, str]:  # type: ignore[type-arg]
    hostile = HostileImap(behaviour, folders).start()
    try:
        started = time.monotonic()
        r = postroom(target.config, "import", "imap", ALICE, "--host", "127.0.0.1", "--port",
                     str(hostile.port), "--login", behaviour, "--password-stdin", "--tls", "none",
                     "--timeout", "2", "--json", stdin="pw\n", timeout=120)
        took = time.monotonic() - started
    finally:
        hostile.stop()
    assert "Traceback" not in r.stderr, r.stderr
    report = json.loads(r.stdout) if r.stdout.strip() else {}
    return took, r.returncode, report, r.stderr


def mailboxes(target: Server) -> list[str]:
    c = connect(target.ports["imaps"], ALICE, PASSWORD, tls=target.client_context())
    try:
        _, lines = c.list('""', '"*"')
        return [line.decode().rpartition(' "/" ')[2].strip('"') for line in lines if line]
    finally:
        c.logout()


@pytest.mark.parametrize(("behaviour", "why"), [
    ("huge_literal", "literal of 999999999999 octets"),
    ("flood", "octets of response lines for one command"),
    ("continuation", "octets of response lines for one command"),
    ("drip", "the server is too slow"),
])
def test_hostile_server_stops_the_import_with_a_reason(target: Server, behaviour: str, why: str) -> None:
    """Before the Watch, the flood and the endless continuation ran (and kept every line
    in memory) as long as the server went on, and the dripped greeting never ended: each
    byte came well within the 2 s socket timeout."""
    took, rc, report, stderr = run_import(target, behaviour)
    assert rc == 1
    assert why in stderr, stderr
    assert took < 30, took
    if report:
        assert why in report["interrupted"]


def test_evil_folder_names_are_left_out(target: Server, tmp_path: Path) -> None:
    names = [b'* LIST () "/" INBOX', b'* LIST () "/" "../../etc"', b'* LIST () "/" "a/../../b"',
             b'* LIST () "/" {3}\r\na\x00b', b'* LIST () "/" "' + b"/".join([b"d"] * 1000) + b'"',
             b'* LIST () "/" "~root"', b'* LIST () "/" "/abs"', b'* LIST () NIL "../x"',
             b'* LIST () "." "..x..y"', b'* LIST () "/" "Shared/bob@example.test/x"',
             b'* LIST () "/" "ok/fine"']
    before = sorted(p for p in Path("/tmp").iterdir() if p.name.startswith(("..", "etc", "abs")))
    took, rc, report, stderr = run_import(target, "names", names)
    assert rc == 1 and "not copied completely" in stderr
    errors = {f["source"]: f["error"] for f in report["folders"]}
    assert errors["ok/fine"] is None and errors["INBOX"] is None
    for bad in ("../../etc", "a/../../b", "a\x00b", "~root", "/abs", "//x//y"):  # last: "..x..y", "."
        assert errors[bad], bad
    assert errors["/".join(["d"] * 1000)]
    have = mailboxes(target)
    # Without a delimiter "../x" is one level: its "/" becomes "_", no hierarchy to climb.
    assert {"ok/fine", "Shared (imported)/bob@example.test/x", ".._x"} <= set(have)
    for name in have:
        assert not name.startswith(("/", "~")) and "\x00" not in name, name
        assert not {".", ".."} & set(name.split("/")), name
    assert sorted(p for p in Path("/tmp").iterdir() if p.name.startswith(("..", "etc", "abs"))) == before
    assert took < 30


def test_ten_thousand_folders_stop_at_the_mailbox_limit(target: Server) -> None:
    folders = [b'* LIST () "/" "many/f%d"' % i for i in range(10_000)]
    took, rc, report, stderr = run_import(target, "many", folders)
    assert rc == 1 and "limits.mailboxes_per_user" in report["interrupted"], report.get("interrupted")
    assert len(mailboxes(target)) == MAX_MAILBOXES
    assert took < 60
