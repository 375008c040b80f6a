"""``postroom migrate`` and the schema checks a node makes when it starts (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.postgres import free_port, shared_cluster
from support.server import Server

from postroom.store.schema import MIGRATIONS

KNOWN = len(MIGRATIONS)


def _pg_server(tmp_path: Path, url: str, extra: str = "") -> Server:
    return Server(tmp_path, roles=("imap",), extra=f'[store]\nbackend = "postgresql"\nurl = "{url}"\n{extra}')


def test_migrate_by_hand_then_serve(tmp_path: Path) -> None:
    cluster = shared_cluster()
    url = cluster.create_database(f"mig{free_port()}")
    srv = _pg_server(tmp_path, url, "auto_migrate = false\n")
    # An empty database and auto_migrate off: the node refuses and says what to do.
    with pytest.raises(RuntimeError, match="run `postroom migrate`"):
        srv.start()
    check = srv.cli("migrate", "--check")
    assert check.returncode == 1 and "schema version 0 (needs `postroom migrate`)" in check.stdout
    done = srv.cli("migrate")
    assert done.returncode == 0 and f"schema version 0 -> {KNOWN}" in done.stdout, done.stderr
    again = srv.cli("migrate", "--check", "--json")
    assert again.returncode == 0 and f'"version": {KNOWN}' in again.stdout
    srv.start()
    srv.stop()


def test_a_node_refuses_a_newer_schema(tmp_path: Path) -> None:
    cluster = shared_cluster()
    name = f"new{free_port()}"
    url = cluster.create_database(name)
    srv = _pg_server(tmp_path, url)
    assert srv.cli("migrate").returncode == 0
    cluster.psql(f"UPDATE meta SET value = '{KNOWN + 1}' WHERE key = 'schema_version'", name)
    with pytest.raises(RuntimeError, match=f"schema version {KNOWN + 1}, newer than this postroom"):
        srv.start()
    r = srv.cli("migrate")
    assert r.returncode == 1 and "upgrade postroom" in r.stderr and "Traceback" not in r.stderr


def test_an_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    srv = _pg_server(tmp_path, f"postgresql://postroom@127.0.0.1:{free_port()}/none")
    with pytest.raises(RuntimeError, match="cannot connect to the database"):
        srv.start(timeout=60)
    r = srv.cli("user", "list")
    assert r.returncode == 1 and "cannot connect to the database" in r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in srv.logs()


def test_migrate_on_sqlite(tmp_path: Path) -> None:
    srv = Server(tmp_path, roles=("imap",), backend="sqlite")
    r = srv.cli("migrate", "--check")
    assert r.returncode == 1 and "schema version 0" in r.stdout
    r = srv.cli("migrate")
    assert r.returncode == 0 and f"sqlite: schema version 0 -> {KNOWN}" in r.stdout
    assert srv.cli("migrate", "--check").returncode == 0
