"""``postroom import imap`` against real IMAP servers: Dovecot, and postroom itself.

Each test fills a source account over IMAP (APPEND with flags, keywords and dates, folders
with hierarchy and non-ASCII names), runs the CLI as a user would, and then reads both
accounts back over IMAP (``support/imap_state.py``) and compares every folder, message
byte, flag and INTERNALDATE. Resuming is tested by killing the import with SIGKILL in the
middle and running it again: nothing may be missing and nothing doubled.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import dovecot as dc
from support.data_cli import fails, ok_json, postroom
from support.imap_state import account_state, append, connect, contents
from support.server import PASSWORD, Server

from postroom.proto.imap.utf7 import encode_utf7

ALICE = "alice@example.test"
SOURCE_USER = "carol"
SOURCE_DOMAIN = "source.test"
SOURCE_LOGIN = f"{SOURCE_USER}@{SOURCE_DOMAIN}"

needs_dovecot = pytest.mark.skipif(dc.available() is not None, reason=str(dc.available()))


def message(i: int, size: int = 0) -> bytes:
    body = "".join(f"line {n} of message {i}\r\n" for n in range(max(1, size // 24)))
    return (f"From: Sender {i} <s{i}@remote.example>\r\nTo: {SOURCE_LOGIN}\r\n"
            f"Subject: message {i} =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <m{i}@remote.example>\r\n"
            f"Date: Mon, 1 Jan 2018 10:00:00 +0000\r\n\r\n{body}").encode()


# (folder, flags, internaldate): hierarchy in three levels, a non-ASCII name, keywords,
# every system flag, dates from 2003 on, and one big message.
FILL = [
    ("INBOX", "\\Seen", 1_050_000_000),
    ("INBOX", "", 1_060_000_000),
    ("INBOX", "\\Answered \\Flagged $Label1", 1_070_000_000),
    ("INBOX", "\\Deleted", 1_080_000_000),
    ("Sent", "\\Seen", 1_090_000_000),
    ("Lists", "\\Seen $Forwarded project-x", 1_100_000_000),
    ("Lists/python", "\\Draft", 1_110_000_000),
    ("Lists/python/2024", "\\Seen \\Answered", 1_120_000_000),
    ("Årsrapport & mer", "\\Flagged", 1_130_000_000),
]


def fill(conn: object, delimiter: str, big: bool = True) -> None:
    for folder in {f for f, _, _ in FILL if f != "INBOX"}:
        for i in range(1, folder.count("/") + 2):
            name = delimiter.join(folder.split("/")[:i])
            conn.create('"' + encode_utf7(name).decode() + '"')  # type: ignore[attr-defined]
    for i, (folder, flags, when) in enumerate(FILL):
        append(conn, folder.replace("/", delimiter), message(i, 300_000 if big and i == 2 else 0),
               flags, when)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "target", roles=("imaps",), backend="sqlite")
    srv.add_user(ALICE)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def dovecot() -> Iterator[dc.Dovecot]:
    with dc.scratch_root() as root:
        d = dc.Dovecot(root, [SOURCE_USER], PASSWORD, SOURCE_DOMAIN)
        d.setup()
        d.start()
        try:
            yield d
        finally:
            d.stop()


def target_state(srv: Server) -> dict:  # type: ignore[type-arg]
    return account_state(srv.ports["imaps"], ALICE, PASSWORD, tls=srv.client_context())


def import_args(port: int, *extra: str) -> list[str]:
    return ["import", "imap", ALICE, "--host", "127.0.0.1", "--port", str(port), "--login",
            SOURCE_LOGIN, "--password-stdin", *extra]


@needs_dovecot
def test_import_from_dovecot_copies_everything_and_resumes(dovecot: dc.Dovecot, target: Server) -> None:
    conn = connect(dovecot.port, SOURCE_LOGIN, PASSWORD)
    typ, listed = conn.list('""', '""')
    delimiter = listed[0].split(b'"')[1].decode()  # Dovecot's Maildir++ default: "."
    fill(conn, delimiter)
    conn.logout()
    source = account_state(dovecot.port, SOURCE_LOGIN, PASSWORD)
    assert len(source) == 6 and sum(len(v) for v in source.values()) == len(FILL)

    report = ok_json(target.config, *import_args(dovecot.port, "--tls", "none"), stdin=PASSWORD + "\n")
    assert report["ok"] and report["copied"] == len(FILL) and report["already"] == 0
    got = target_state(target)
    assert contents(got) == contents(source)
    # Levels came from Dovecot's delimiter; postroom names them with "/".
    assert ("Lists", "python", "2024") in got and ("Årsrapport & mer",) in got

    # A second run finds everything there.
    again = ok_json(target.config, *import_args(dovecot.port, "--tls", "none"), stdin=PASSWORD + "\n")
    assert again["copied"] == 0 and again["already"] == len(FILL)
    # New mail on the source, and a run limited to one folder, copies just that.
    conn = connect(dovecot.port, SOURCE_LOGIN, PASSWORD)
    append(conn, "INBOX", message(99), "\\Seen", 1_200_000_000)
    append(conn, "Sent", message(98), "", 1_200_000_001)
    conn.logout()
    third = ok_json(target.config, *import_args(dovecot.port, "--tls", "none", "--folder", "INBOX"),
                    stdin=PASSWORD + "\n")
    assert third["copied"] == 1 and [f["source"] for f in third["folders"]] == ["INBOX"]
    got = contents(target_state(target))
    assert got[("INBOX",)][-1] == (frozenset({"\\Seen"}), 1_200_000_000, message(99))
    assert len(got[("Sent",)]) == 1


@needs_dovecot
def test_import_killed_midway_resumes_exactly(dovecot: dc.Dovecot, target: Server, tmp_path: Path) -> None:
    n = 3000
    dovecot.write_maildir(SOURCE_USER, [message(i, 2000) for i in range(n)])
    source = account_state(dovecot.port, SOURCE_LOGIN, PASSWORD)
    assert len(source[("INBOX",)]) == n
    proc = subprocess.Popen(
        [sys.executable, "-m", "postroom", "-c", str(target.config),
         *import_args(dovecot.port, "--tls", "none", "--quiet")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(PASSWORD.encode() + b"\n")
    proc.stdin.close()
    db = sqlite3.connect(target.data / "postroom.sqlite3", timeout=5)
    copied = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            copied = db.execute("SELECT count(*) FROM imported").fetchone()[0]
            if copied >= 200:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait(30)
        db.close()
    assert proc.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    assert 0 < copied < n
    report = ok_json(target.config, *import_args(dovecot.port, "--tls", "none"), stdin=PASSWORD + "\n")
    assert report["already"] >= copied and report["already"] + report["copied"] == n
    assert report["copied"] > 0
    got = target_state(target)
    assert contents(got) == contents(source)  # every message once, in source order


@pytest.fixture
def postroom_source(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "source", roles=("imap", "imaps"), hostname="mail.source.test")
    srv.add_user(SOURCE_LOGIN)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_import_from_postroom_over_tls(postroom_source: Server, target: Server) -> None:
    conn = connect(postroom_source.ports["imaps"], SOURCE_LOGIN, PASSWORD, tls=postroom_source.client_context())
    fill(conn, "/", big=False)
    conn.logout()
    source = account_state(postroom_source.ports["imaps"], SOURCE_LOGIN, PASSWORD,
                           tls=postroom_source.client_context())
    ca = str(postroom_source.cert)
    # The source's certificate is self-signed: refused unless trusted or unchecked.
    err = fails(target.config, *import_args(postroom_source.ports["imaps"]), stdin=PASSWORD + "\n")
    assert "certificate is not trusted" in err and "--ca-file" in err
    err = fails(target.config, *import_args(postroom_source.ports["imaps"], "--ca-file", ca),
                stdin="wrong password\n")
    assert "login failed" in err
    # STARTTLS on the imap port, only INBOX and Sent first ...
    first = ok_json(target.config, *import_args(postroom_source.ports["imap"], "--tls", "starttls",
                                                "--ca-file", ca, "--folder", "INBOX", "--folder", "Sent"),
                    stdin=PASSWORD + "\n")
    assert first["copied"] == 5
    # ... then the rest over implicit TLS (the certificate names 127.0.0.1).
    rest = ok_json(target.config, *import_args(postroom_source.ports["imaps"], "--ca-file", ca),
                   stdin=PASSWORD + "\n")
    assert rest["copied"] == len(FILL) - 5 and rest["already"] == 5
    assert contents(target_state(target)) == contents(source)
    # What was copied is remembered per user: a run with --into copies nothing again ...
    again = ok_json(target.config, *import_args(postroom_source.ports["imaps"], "--no-verify",
                                                "--into", "Old server"), stdin=PASSWORD + "\n")
    assert again["copied"] == 0 and again["already"] == len(FILL)
    # ... but for another user (--no-verify accepts the certificate), --into puts every
    # folder under the prefix, INBOX included.
    target.add_user("dave@example.test")
    args = import_args(postroom_source.ports["imaps"], "--no-verify", "--into", "Old server")
    args[2] = "dave@example.test"
    prefixed = ok_json(target.config, *args, stdin=PASSWORD + "\n")
    assert prefixed["copied"] == len(FILL)
    got = contents(account_state(target.ports["imaps"], "dave@example.test", PASSWORD,
                                 tls=target.client_context()))
    assert got == {("Old server", *levels): msgs for levels, msgs in contents(source).items()}


def test_import_errors(target: Server, tmp_path: Path) -> None:
    err = fails(target.config, "import", "imap", "nobody@example.test", "--host", "127.0.0.1",
                "--port", "1", "--login", "x", "--password-stdin", "--tls", "none", stdin="pw\n")
    assert "no user nobody@example.test" in err
    err = fails(target.config, *import_args(1, "--tls", "none"), stdin="pw\n")
    assert "127.0.0.1:1" in err and "refused" in err.lower()
    no_password = [a for a in import_args(1, "--tls", "none") if a != "--password-stdin"]
    r = postroom(target.config, *no_password)  # and stdin is not a terminal to ask on
    assert r.returncode == 1 and "no password" in r.stderr, r.stderr


def test_import_of_folders_in_our_shared_namespace(postroom_source: Server, target: Server) -> None:
    """A source lists other users' folders shared with the login (``Shared/erin@.../INBOX``
    from postroom, Dovecot's shared namespace; or any folder a hostile server names so).
    Kept under that name they would be personal mailboxes hidden behind postroom's own
    other-users namespace: copied, and never readable over IMAP. They go under
    ``Shared (imported)/`` instead, where the user sees them."""
    erin = "erin@source.test"
    postroom_source.add_user(erin)
    conn = connect(postroom_source.ports["imaps"], erin, PASSWORD, tls=postroom_source.client_context())
    append(conn, "INBOX", message(1), "\\Seen", 1_050_000_000)
    assert conn._simple_command("SETACL", "INBOX", SOURCE_LOGIN, "lr")[0] == "OK"  # type: ignore[attr-defined]
    conn.logout()
    conn = connect(postroom_source.ports["imaps"], SOURCE_LOGIN, PASSWORD, tls=postroom_source.client_context())
    append(conn, "INBOX", message(2), "", 1_060_000_000)
    conn.logout()
    result = ok_json(target.config, *import_args(postroom_source.ports["imaps"], "--no-verify"),
                     stdin=PASSWORD + "\n")
    assert result["copied"] == 2, result
    got = contents(target_state(target))
    assert sum(len(v) for v in got.values()) == 2, got.keys()
    assert ("Shared (imported)", erin, "INBOX") in got, got.keys()
