"""``postroom backup`` of a running server and ``postroom restore``, checked over IMAP.

The backup is taken while SMTP deliveries keep arriving. The restored copy, served by a
second server, must be one consistent instant of the original: in every mailbox, exactly
the original's first messages (same UIDs, bytes, flags, keywords, dates) and nothing torn;
everything acknowledged before the backup started is there. A backup taken while nothing
changes restores to the same state byte for byte, with the accounts (passwords), the
queue and the server secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.data_cli import fails, ok_json, postroom
from support.imap_state import account_state, append, connect
from support.server import PASSWORD, Server

ALICE = "alice@example.test"
BOB = "bob@example.test"
EXTRA = '[outbound]\ntransport = { "far.example" = "127.0.0.1:1" }\n'  # refused: stays queued


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "srv", roles=("mx", "submission", "imaps"), extra=EXTRA, backend="sqlite")
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def smtp_message(i: int, size: int = 2000) -> bytes:
    body = ("x" * 70 + "\r\n") * (size // 72)
    return (f"From: s{i}@remote.example\r\nTo: {ALICE}\r\nSubject: load {i}\r\n"
            f"Message-ID: <load{i}@remote.example>\r\n\r\n{body}").encode()


def deliver(srv: Server, n: int, start: int = 0) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["mx"], timeout=30) as s:
        for i in range(start, start + n):
            # every fourth one large enough for a body file (store/sqlite/bodies.py)
            s.sendmail(f"s{i}@remote.example", [ALICE, BOB], smtp_message(i, 40_000 if i % 4 == 0 else 2000))


def fill(srv: Server) -> None:
    deliver(srv, 20)
    conn = connect(srv.ports["imaps"], ALICE, PASSWORD, tls=srv.client_context())
    conn.create('"Lists/python"')
    append(conn, "Lists/python", b"Subject: kept\r\n\r\nwith flags\r\n", "\\Seen $Label1", 1_000_000_000)
    conn.select("INBOX")
    conn.uid("STORE", "1:5", "+FLAGS", "(\\Flagged project-x)")
    conn.logout()
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
        s.starttls(context=srv.client_context())
        s.login(ALICE, PASSWORD)
        s.sendmail(ALICE, ["someone@far.example"], b"Subject: queued\r\n\r\nwaits in the queue\r\n")


def states(srv: Server) -> dict[str, dict]:  # type: ignore[type-arg]
    return {u: account_state(srv.ports["imaps"], u, PASSWORD, tls=srv.client_context()) for u in (ALICE, BOB)}


def restored_server(tmp_path: Path, backup: Path, name: str) -> Server:
    srv = Server(tmp_path / name, roles=("mx", "submission", "imaps"), extra=EXTRA, backend="sqlite")
    report = ok_json(srv.config, "restore", str(backup))
    assert report["replaced"] is None  # the new server's data folder was empty
    return srv.start()


def test_backup_under_load_is_one_instant(server: Server, tmp_path: Path) -> None:
    fill(server)
    before = states(server)
    stop = threading.Event()
    sent = [0]

    def load() -> None:
        i = 1000
        while not stop.is_set() and i < 1000 + 2000:
            deliver(server, 5, i)
            i += 5
            sent[0] = i - 1000

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.3)
        r = postroom(server.config, "backup", str(tmp_path / "bk"), "--json", "--quiet")
        at_backup = sent[0]
        time.sleep(0.3)
    finally:
        stop.set()
        loader.join(60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert at_backup > 0 and report["counts"]["users"] == 2
    after = states(server)
    assert len(after[ALICE][("INBOX",)]) > len(before[ALICE][("INBOX",)])  # mail kept arriving

    restored = restored_server(tmp_path, tmp_path / "bk", "restored")
    try:
        got = states(restored)
    finally:
        restored.stop()
    for user in (ALICE, BOB):
        assert got[user].keys() == after[user].keys()
        for folder, msgs in got[user].items():
            # A prefix of what the original holds now, and at least what it held before.
            assert msgs == after[user][folder][: len(msgs)], (user, folder)
            assert len(msgs) >= len(before[user][folder])
    # Both users' INBOXes were written in the same transactions: same instant, same count.
    assert len(got[ALICE][("INBOX",)]) == len(got[BOB][("INBOX",)])


def test_backup_restore_byte_for_byte(server: Server, tmp_path: Path) -> None:
    fill(server)
    original = states(server)
    secret = (server.data / "server.key").read_bytes()
    out = ok_json(server.config, "backup", str(tmp_path / "bk"))
    manifest = json.loads((tmp_path / "bk" / "MANIFEST.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert "data/server.key" in paths
    assert any(p.startswith("data/bodies/") and p.endswith(".seg") for p in paths)
    assert "data/bodies/.lock" not in paths
    assert out["counts"]["messages"] == sum(len(v) for s in original.values() for v in s.values())
    assert (tmp_path / "bk" / "config" / "postroom.toml").read_bytes() == server.config.read_bytes()
    assert not (tmp_path / "bk.partial").exists()

    restored = restored_server(tmp_path, tmp_path / "bk", "restored")
    try:
        assert states(restored) == original  # every mailbox: UIDs, flags, dates, bytes
        assert (restored.data / "server.key").read_bytes() == secret
        listed = postroom(restored.config, "queue", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        queue = json.loads(listed.stdout)
        assert len(queue) == 1 and queue[0]["sender"] == ALICE
        c = connect(restored.ports["imaps"], BOB, PASSWORD, tls=restored.client_context())
        c.logout()  # the password still works: accounts came along
    finally:
        restored.stop()


def test_restore_refusals(server: Server, tmp_path: Path) -> None:
    fill(server)
    bk = tmp_path / "bk"
    ok_json(server.config, "backup", str(bk))
    assert "already exists" in fails(server.config, "backup", str(bk))
    assert "inside the data folder" in fails(server.config, "backup", str(server.data / "bk"))
    check = ok_json(server.config, "restore", "--check", str(bk))
    assert check["ok"] and check["counts"]["users"] == 2
    # The server runs on that data folder: restore refuses to pull it away.
    assert "in use" in fails(server.config, "restore", "--force", str(bk))
    # A damaged copy is refused before anything changes.
    damaged = tmp_path / "damaged"
    shutil.copytree(bk, damaged)
    db = damaged / "postroom.sqlite3"
    data = bytearray(db.read_bytes())
    data[len(data) // 2] ^= 0xFF
    db.write_bytes(bytes(data))
    assert "wrong checksum" in fails(server.config, "restore", "--check", str(damaged))
    fresh = Server(tmp_path / "fresh", roles=("imaps",), backend="sqlite")
    assert "wrong checksum" in fails(fresh.config, "restore", str(damaged))
    assert list(fresh.data.iterdir()) == []
    (damaged / "MANIFEST.json").unlink()
    assert "not a postroom backup" in fails(fresh.config, "restore", str(damaged))
    # A data folder with content is only replaced with --force, and kept aside.
    server.stop()
    before = hashlib.sha256((server.data / "postroom.sqlite3").read_bytes()).hexdigest()
    assert "not empty" in fails(server.config, "restore", str(bk))
    report = ok_json(server.config, "restore", "--force", str(bk))
    kept = Path(report["replaced"])
    assert kept.name.startswith("data.replaced-")
    assert hashlib.sha256((kept / "postroom.sqlite3").read_bytes()).hexdigest() == before
    server.start()


def test_interrupted_backup_is_finished_by_the_next_run(server: Server, tmp_path: Path) -> None:
    fill(server)
    original = states(server)
    ok_json(server.config, "backup", str(tmp_path / "first"))
    # What a backup killed midway leaves: a .partial folder with a torn database and no
    # manifest. Running the same command again completes it.
    partial = tmp_path / "bk.partial"
    (tmp_path / "first").rename(partial)
    (partial / "MANIFEST.json").unlink()
    with (partial / "postroom.sqlite3").open("r+b") as f:
        f.truncate(4096)
    r = postroom(server.config, "backup", str(tmp_path / "bk"))
    assert r.returncode == 0, r.stderr
    assert "database:" in r.stderr and "files:" in r.stderr  # progress on stderr
    assert not partial.exists() and (tmp_path / "bk" / "MANIFEST.json").exists()
    restored = restored_server(tmp_path, tmp_path / "bk", "restored")
    try:
        assert states(restored) == original
    finally:
        restored.stop()


def test_restore_refuses_symbolic_links_and_special_files(server: Server, tmp_path: Path) -> None:
    """A backup never contains a symbolic link (backup leaves them out), so restore refuses
    one anywhere in a backup folder, before anything changes: followed, a link named like
    ``data/server.key`` (with a manifest rewritten to match) copies any file the restoring
    user can read, ``/etc/shadow`` when run as root, into the data folder the server reads.
    A FIFO named like a file would make the restore wait forever."""
    fill(server)
    bk = tmp_path / "bk"
    ok_json(server.config, "backup", str(bk))
    outside = tmp_path / "outside"
    outside.mkdir()
    stolen = outside / "secret"
    stolen.write_bytes(b"root's secret, not part of any backup\n")

    def variant(name: str, change) -> tuple[Path, Server]:  # type: ignore[no-untyped-def]
        evil = tmp_path / name
        shutil.copytree(bk, evil, symlinks=True)
        change(evil)
        return evil, Server(tmp_path / f"{name}-srv", roles=("imaps",))

    def link_key(evil: Path) -> None:
        manifest = json.loads((evil / "MANIFEST.json").read_text())
        data = stolen.read_bytes()
        for entry in manifest["files"]:
            if entry["path"] == "data/server.key":
                entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        (evil / "MANIFEST.json").write_text(json.dumps(manifest))
        (evil / "data" / "server.key").unlink()
        (evil / "data" / "server.key").symlink_to(stolen)

    def link_folder(evil: Path) -> None:
        shutil.move(evil / "data", outside / "data")
        (evil / "data").symlink_to(outside / "data")

    def link_manifest(evil: Path) -> None:
        shutil.move(evil / "MANIFEST.json", outside / "MANIFEST.json")
        (evil / "MANIFEST.json").symlink_to(outside / "MANIFEST.json")

    def fifo_key(evil: Path) -> None:
        (evil / "data" / "server.key").unlink()
        os.mkfifo(evil / "data" / "server.key")

    for name, change, why in (("key", link_key, "symbolic link"), ("folder", link_folder, "symbolic link"),
                              ("manifest", link_manifest, "symbolic link"),
                              ("fifo", fifo_key, "not a regular file")):
        evil, fresh = variant(name, change)
        assert why in fails(fresh.config, "restore", "--check", str(evil)), name
        assert why in fails(fresh.config, "restore", str(evil)), name
        assert list(fresh.data.iterdir()) == [], name  # nothing written
    # The untouched backup still restores.
    fresh = Server(tmp_path / "plain-srv", roles=("imaps",))
    ok_json(fresh.config, "restore", str(bk))
    assert (fresh.data / "server.key").read_bytes() == (server.data / "server.key").read_bytes()


def test_backup_and_restore_refuse_a_postgresql_store(tmp_path: Path) -> None:
    """PostgreSQL is backed up with its own tools; postroom says so instead of copying a
    data folder that holds no mail."""
    srv = Server(tmp_path / "pg", roles=("imaps",), backend="postgresql")
    for args in (("backup", str(tmp_path / "b")), ("restore", str(tmp_path / "b"))):
        r = srv.cli(*args)
        assert r.returncode == 1 and "pg_dump" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()
