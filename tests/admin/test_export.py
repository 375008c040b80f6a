"""``postroom export``: Maildir++ that Dovecot serves as is, never a write outside the target.

* Dovecot (with its listescape plugin and "/" as separator) serves an export, and an IMAP
  client sees the same folders, bytes, flags, keywords, INTERNALDATEs, UIDs and
  UIDVALIDITYs as on postroom.
* Mailbox names that are paths (``..``, ``/``, ``~``, control characters: possible in the
  store even where IMAP CREATE refuses them) all stay one directory inside the target;
  a symbolic link planted in the target is refused, not followed.
* Export then import gives the same mailboxes back; a second export only adds and renames.
"""

from __future__ import annotations

import imaplib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import dovecot as dc
from support.data_cli import ok_json, postroom
from support.imap_state import account_state, append, connect, contents
from support.server import PASSWORD, Server

ALICE = "alice@example.test"
BOB = "bob@example.test"

FOLDERS = ["Sent", "Lists/python", "Lists/python/2024", "v1.2 notes", "Årsrapport & mer", "back\\slash"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "srv", roles=("imaps",))
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def message(i: int) -> bytes:
    return (f"From: s{i}@remote.example\r\nSubject: message {i}\r\nMessage-ID: <x{i}@remote.example>\r\n"
            f"\r\nbody {i}\r\n").encode()


def fill(srv: Server) -> None:
    conn = connect(srv.ports["imaps"], ALICE, PASSWORD, tls=srv.client_context())
    from postroom.proto.imap.utf7 import encode_utf7

    for name in FOLDERS:
        conn.create('"' + encode_utf7(name).decode().replace("\\", "\\\\") + '"')
    flags = ["\\Seen", "", "\\Answered \\Flagged $Label1", "\\Draft $Forwarded project-x", "\\Deleted"]
    for i, folder in enumerate(["INBOX", "INBOX", "INBOX", *FOLDERS]):
        append(conn, folder.replace("\\", "\\\\"), message(i), flags[i % len(flags)], 1_000_000_000 + i * 3600)
    conn.logout()


def state(srv: Server, user: str = ALICE) -> dict:  # type: ignore[type-arg]
    return account_state(srv.ports["imaps"], user, PASSWORD, tls=srv.client_context())


def uidvalidities(conn: imaplib.IMAP4, names: list[str]) -> dict[str, int]:
    from postroom.proto.imap.utf7 import encode_utf7

    out = {}
    for name in names:
        typ, _ = conn.select('"' + encode_utf7(name).decode().replace("\\", "\\\\") + '"', readonly=True)
        assert typ == "OK", name
        out[name] = int(conn.response("UIDVALIDITY")[1][0])
    return out


needs_dovecot = pytest.mark.skipif(dc.available() is not None, reason=str(dc.available()))


@needs_dovecot
def test_export_served_by_dovecot(server: Server) -> None:
    fill(server)
    with dc.scratch_root() as root:
        d = dc.Dovecot(root, ["alice"], PASSWORD, "example.test",
                       extra="mail_plugins = $mail_plugins listescape\n"
                             "namespace inbox {\n  separator = /\n  inbox = yes\n}\n")
        d.setup()
        target = d.maildir("alice")
        report = ok_json(server.config, "export", ALICE, str(target))
        assert report[0]["ok"] and report[0]["written"] == 3 + len(FOLDERS)
        for dirpath, dirnames, filenames in os.walk(d.mailroot):
            for name in [*dirnames, *filenames, ""]:
                os.chown(os.path.join(dirpath, name), d.uid, d.gid)
        d.start()
        try:
            ours, theirs = state(server), account_state(d.port, "alice@example.test", PASSWORD)
            assert {k: v for k, v in theirs.items() if v} == {k: v for k, v in ours.items() if v}
            names = ["INBOX", *FOLDERS]
            c1 = connect(server.ports["imaps"], ALICE, PASSWORD, tls=server.client_context())
            c2 = connect(d.port, "alice@example.test", PASSWORD)
            assert uidvalidities(c1, names) == uidvalidities(c2, names)
            c1.logout()
            c2.logout()
        finally:
            d.stop()


HOSTILE = ["../../outside", "a/../../b", "~root", ".hidden", "cur", "tmp/new", "x\x01y", "evil\\2e", "/abs"]


def test_export_hostile_names_stay_inside(server: Server, tmp_path: Path) -> None:
    fill(server)

    async def add_hostile(admin, store):  # type: ignore[no-untyped-def]
        from postroom.deliver import summarize

        user = await store.get_user(ALICE)
        for i, name in enumerate(HOSTILE):
            mb = await store.create_mailbox(user.id, name)  # the store takes any name
            data = message(100 + i)
            await store.append(mb.id, data, summarize(data), 0, (), 1_000_000_000)

    server.admin(add_hostile)
    outside = tmp_path / "exports"
    outside.mkdir()
    dest = outside / "alice"
    before = set(tmp_path.rglob("*"))
    r = postroom(server.config, "export", ALICE, str(dest), "--quiet")
    # "/abs" (and its parent "", which the store created) have an empty level: refused.
    assert r.returncode == 1 and "not exported: , /abs" in r.stderr, r.stderr
    created = set(tmp_path.rglob("*")) - before
    assert created and all(p == dest or dest in p.parents for p in created)
    assert {p.name for p in outside.iterdir()} == {"alice"}
    dirs = {p.name for p in dest.iterdir() if p.is_dir()}
    assert {".\\2e\\2e.\\2e\\2e.outside", ".a.\\2e\\2e.\\2e\\2e.b", ".\\7eroot", ".\\2ehidden",
            ".cur", ".tmp.new", ".evil\\5c2e"} <= dirs
    # Every mailbox directory holds its message, in its own cur/.
    for name in HOSTILE[:-1]:
        from postroom.admin.maildir import folder_dirname

        dirname = folder_dirname(name)
        assert dirname is not None
        files = list((dest / dirname / "cur").iterdir())
        assert len(files) == 1 and files[0].read_bytes() == message(100 + HOSTILE.index(name))

    # A symbolic link planted where a mailbox goes is refused, not followed.
    victim = tmp_path / "victim"
    victim.mkdir()
    evil = outside / "bob"
    evil.mkdir()
    os.symlink(victim, evil / ".Sent")
    conn = connect(server.ports["imaps"], BOB, PASSWORD, tls=server.client_context())
    append(conn, "Sent", message(7))
    conn.logout()
    r = postroom(server.config, "export", BOB, str(evil), "--quiet")
    assert r.returncode == 1 and "Sent" in r.stderr
    assert list(victim.iterdir()) == []


def test_export_import_roundtrip_and_incremental(server: Server, tmp_path: Path) -> None:
    fill(server)
    dest = tmp_path / "export"
    first = ok_json(server.config, "export", ALICE, str(dest))
    assert first[0]["written"] == 3 + len(FOLDERS)
    # Imported into another user, the export gives the same mailboxes back.
    back = ok_json(server.config, "import", "maildir", BOB, str(dest))
    assert back["copied"] == 3 + len(FOLDERS)
    assert contents(state(server, BOB)) == contents(state(server))
    # A second export writes nothing, renames files whose flags changed, adds new mail.
    conn = connect(server.ports["imaps"], ALICE, PASSWORD, tls=server.client_context())
    conn.select("INBOX")
    conn.uid("STORE", "2", "+FLAGS", "(\\Seen $Label2)")
    append(conn, "INBOX", message(50), "", 1_100_000_000)
    conn.logout()
    second = ok_json(server.config, "export", ALICE, str(dest), "--mailbox", "INBOX")
    inbox = second[0]["mailboxes"][0]
    assert (inbox["written"], inbox["renamed"], inbox["unchanged"]) == (1, 1, 2)
    names = sorted(p.name for p in (dest / "cur").iterdir())
    assert len(names) == 4 and names[1].endswith(":2,Sb")  # \Seen, and the new keyword b
    assert (dest / "dovecot-keywords").read_text() == "0 $Label1\n1 $Label2\n"
    # --all: one folder per user.
    every = ok_json(server.config, "export", "--all", str(tmp_path / "all"))
    assert sorted(r["user"] for r in every) == [ALICE, BOB]
    assert (tmp_path / "all" / ALICE / "cur").is_dir() and (tmp_path / "all" / BOB / ".Sent").is_dir()
