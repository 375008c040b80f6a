"""Real IMAP sync clients against ``postroom serve``: mbsync (isync) and offlineimap3.

Each client syncs an account both ways, over IMAPS and over STARTTLS on the imap port:
* down: mail delivered by SMTP to the mx listener lands in the client's local Maildir,
  byte for byte (the clients store LF line endings; compared after normalising);
* up: local flag changes (a Maildir file renamed with a new ``:2,`` suffix), a message
  moved between local folders (renamed without its client UID, as the clients require of
  a mail reader), a message deleted locally, and a new local message;
* then the server's state is read back twice: over IMAP with imaplib and through the store,
  which must agree;
* and a flag set on the server (imaplib STORE) comes down to the local file name.

The clients run with a temporary HOME and config, trust the test certificate
(``cert.pem`` written by ``tests/support/server.py``), connect to ``localhost`` (the
certificate's DNS name; mbsync 1.4 does not match IP addresses), and have a 60 s timeout.
(offlineimap3 checks the certificate on IMAPS only: its STARTTLS path calls imaplib2's
``starttls()`` without a CA file.)
"""

from __future__ import annotations

import email
import imaplib
import os
import re
import shutil
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.server import PASSWORD, Server

from postroom.store.api import FLAG_ANSWERED, FLAG_DELETED, FLAG_DRAFT, FLAG_FLAGGED, FLAG_SEEN

ALICE = "alice@example.test"
SENDER = "someone@remote.example"
IMAP_FLAGS = {FLAG_SEEN: "\\Seen", FLAG_ANSWERED: "\\Answered", FLAG_FLAGGED: "\\Flagged",
              FLAG_DELETED: "\\Deleted", FLAG_DRAFT: "\\Draft"}


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "srv", roles=("imap", "imaps", "mx"))
    srv.add_user(ALICE)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def deliver(srv: Server, subject: str, body: str, extra_headers: str = "") -> bytes:
    """One message through SMTP (mx); returns the bytes the client sent (CRLF)."""
    msg = (
        f"From: Someone <{SENDER}>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.example>\r\n{extra_headers}\r\n{body}"
    ).encode()
    with smtplib.SMTP("127.0.0.1", srv.ports["mx"], local_hostname="client.example.org", timeout=10) as s:
        s.sendmail(SENDER, [ALICE], msg)
    return msg


_TUID = re.compile(rb"^X-TUID: [^\n]*\n", re.MULTILINE)


def lf(data: bytes) -> bytes:
    """LF line endings, without the ``X-TUID`` header mbsync adds to what it copies."""
    return _TUID.sub(b"", data.replace(b"\r\n", b"\n"), count=1)


def store_state(srv: Server) -> dict[str, list[tuple[bytes, int, tuple[str, ...]]]]:
    """Every mailbox of alice as read through the store: (bytes, flags, keywords) by UID."""

    async def fn(admin, store):  # type: ignore[no-untyped-def]
        user = await store.get_user(ALICE)
        out = {}
        for mb in await store.list_mailboxes(user.id):
            msgs = await store.list_messages(mb.id)
            blobs = await store.read_blobs([m.blob_id for m in msgs])
            out[mb.name] = [(blobs[m.blob_id], m.flags, m.keywords) for m in msgs]
        return out

    return srv.admin(fn)


def imap_state(srv: Server) -> dict[str, list[tuple[bytes, set[str]]]]:
    """Every mailbox of alice as read over IMAPS with imaplib: (bytes, flags) by UID."""
    out: dict[str, list[tuple[bytes, set[str]]]] = {}
    with imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.client_context(), timeout=20) as m:
        m.login(ALICE, PASSWORD)
        typ, lines = m.list()
        assert typ == "OK"
        names = [re.search(rb'"/" "?([^"]*)"?$', ln).group(1).decode() for ln in lines if isinstance(ln, bytes)]
        for name in names:
            typ, data = m.select(f'"{name}"', readonly=True)
            assert typ == "OK", (name, data)
            msgs: list[tuple[bytes, set[str]]] = []
            if int(data[0]):
                typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
                assert typ == "OK"
                for item in data:
                    if isinstance(item, tuple):
                        flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split()
                        msgs.append((item[1], set(flags) - {"\\Recent"}))
            out[name] = msgs
    return out


def flags_of(bits: int, keywords: tuple[str, ...] = ()) -> set[str]:
    return {name for bit, name in IMAP_FLAGS.items() if bits & bit} | set(keywords)


def assert_store_matches_imap(srv: Server) -> dict[str, list[tuple[bytes, int, tuple[str, ...]]]]:
    stored = store_state(srv)
    seen = imap_state(srv)
    assert set(stored) == set(seen)
    for name, msgs in stored.items():
        assert [(b, flags_of(f, k)) for b, f, k in msgs] == seen[name], name
    return stored


def maildir_files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") for p in (folder / sub).iterdir() if p.is_file())


def maildir_flags(path: Path) -> str:
    name = path.name
    return name.rsplit(":2,", 1)[1] if ":2," in name else ""


def find_local(folder: Path, subject: str) -> Path:
    for p in maildir_files(folder):
        if email.message_from_bytes(p.read_bytes())["Subject"] == subject:
            return p
    raise AssertionError(f"{subject!r} not in {folder}: {[p.name for p in maildir_files(folder)]}")


def set_local_flags(path: Path, flags: str) -> Path:
    """What a mail reader does to flag a message: rename into cur/ with a new suffix."""
    base = path.name.split(":2,")[0]
    new = path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(flags))}"
    path.rename(new)
    return new


def move_local(path: Path, dest: Path, strip: re.Pattern[str]) -> Path:
    """Move to another Maildir folder, dropping the sync client's UID from the name."""
    name = strip.sub("", path.name)
    new = dest / "cur" / name
    path.rename(new)
    return new


def write_local(folder: Path, name: str, data: bytes, flags: str) -> None:
    (folder / "cur").mkdir(parents=True, exist_ok=True)
    (folder / "cur" / f"{name}:2,{flags}").write_bytes(data)


def run(cmd: list[str], home: Path) -> str:
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    if (home / "openssl.cnf").exists():
        env["OPENSSL_CONF"] = str(home / "openssl.cnf")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-4000:] + (e.stderr or b"")[-4000:]
        raise AssertionError(f"{cmd[0]} timed out after 60 s:\n{out.decode(errors='replace')}") from None
    assert r.returncode == 0, f"{cmd[0]} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def server_set_flag(srv: Server, subject: str, flag: str) -> None:
    with imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.client_context(), timeout=20) as m:
        m.login(ALICE, PASSWORD)
        m.select("INBOX")
        typ, data = m.uid("SEARCH", "SUBJECT", f'"{subject}"')
        assert typ == "OK"
        [uid] = data[0].split()
        typ, _ = m.uid("STORE", uid.decode(), "+FLAGS", f"({flag})")
        assert typ == "OK"


# -- the scenario both clients run ---------------------------------------------------------------
MULTIPART_BODY = (
    "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "Grüße aus Köln\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
    "Content-Disposition: attachment; filename=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    "AAECAwQFBgcICQ==\r\n--b1--\r\n"
)


def two_way_sync(
    srv: Server, home: Path, sync: list[str], local: Path, uid_in_name: re.Pattern[str],
    delete_local: Callable[[Path], object],
) -> None:
    # 1. New mail down.
    sent = {
        "first": deliver(srv, "first", "one\r\n"),
        "second": deliver(srv, "second", "two\r\n.dot line\r\n"),
        "third": deliver(srv, "third", MULTIPART_BODY,
                         "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n"),
    }
    run(sync, home)
    inbox = local / "INBOX"
    stored = {email.message_from_bytes(b)["Subject"]: b for b in srv.messages(ALICE)}
    assert set(stored) == set(sent)
    for subject, data in sent.items():
        assert stored[subject].endswith(data)  # after our Return-Path and Received
        assert lf(find_local(inbox, subject).read_bytes()) == lf(stored[subject])
    # Incremental: one more message comes down on the next run.
    sent["fourth"] = deliver(srv, "fourth", "four\r\n")
    run(sync, home)
    assert len(maildir_files(inbox)) == 4
    fourth = find_local(inbox, "fourth")
    assert lf(fourth.read_bytes()) == lf(srv.messages(ALICE)[-1])

    # 2. Local changes up: flags, a move, a deletion, a new message.
    set_local_flags(find_local(inbox, "first"), "FS")
    move_local(find_local(inbox, "second"), local / "Archive", uid_in_name)
    delete_local(find_local(inbox, "fourth"))
    draft = b"From: Alice <alice@example.test>\nTo: <bob@remote.example>\nSubject: draft\n\nunfinished\n"
    write_local(local / "Drafts", "1700000000.M1P1.localhost", draft, "D")
    run(sync, home)

    state = assert_store_matches_imap(srv)
    by_subject = {
        name: {email.message_from_bytes(b)["Subject"]: (b, flags_of(f, k)) for b, f, k in msgs}
        for name, msgs in state.items()
    }
    assert set(by_subject["INBOX"]) == {"first", "third"}
    assert by_subject["INBOX"]["first"][1] == {"\\Flagged", "\\Seen"}
    assert by_subject["INBOX"]["third"][1] == set()
    assert set(by_subject["Archive"]) == {"second"}
    assert lf(by_subject["Archive"]["second"][0]) == lf(stored["second"])
    assert set(by_subject["Drafts"]) == {"draft"}
    uploaded, draft_flags = by_subject["Drafts"]["draft"]
    assert b"\n" not in uploaded.replace(b"\r\n", b"")  # stored with CRLF line endings
    assert lf(uploaded) == draft
    assert draft_flags == {"\\Draft"}
    for name in ("Sent", "Trash", "Junk"):
        assert by_subject[name] == {}, name

    # 3. A flag set on the server comes down to the local file name.
    server_set_flag(srv, "third", "\\Answered")
    run(sync, home)
    assert maildir_flags(find_local(inbox, "third")) == "R"
    assert maildir_flags(find_local(inbox, "first")) == "FS"
    assert len(maildir_files(inbox)) == 2  # the deleted and the moved message stay gone


# -- mbsync (isync) ------------------------------------------------------------------------------
MBSYNC_UID = re.compile(r",U=\d+")


def mbsync_config(srv: Server, home: Path, mode: str) -> Path:
    port = srv.ports["imaps"] if mode == "imaps" else srv.ports["imap"]
    # IMAPS authenticates with SCRAM-SHA-256 (mbsync's first choice), STARTTLS with LOGIN.
    mechs = "" if mode == "imaps" else "AuthMechs LOGIN\n"
    cfg = home / ".mbsyncrc"
    cfg.write_text(
        f"""IMAPAccount alice
Host localhost
Port {port}
User {ALICE}
Pass "{PASSWORD}"
SSLType {"IMAPS" if mode == "imaps" else "STARTTLS"}
CertificateFile {srv.cert}
SystemCertificates no
Timeout 20
{mechs}
IMAPStore remote
Account alice

MaildirStore local
Path {home}/Mail/
Inbox {home}/Mail/INBOX
SubFolders Verbatim

Channel alice
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
"""
    )
    return cfg


@pytest.mark.parametrize("mode", ["imaps", "starttls"])
def test_mbsync_two_way(server: Server, tmp_path: Path, mode: str) -> None:
    home = tmp_path / "home"
    (home / "Mail").mkdir(parents=True)
    cfg = mbsync_config(server, home, mode)
    # mbsync: a message flagged T (trashed) locally is expunged on both sides (Expunge Both).
    two_way_sync(
        server, home, ["mbsync", "-c", str(cfg), "-a"], home / "Mail", MBSYNC_UID,
        lambda p: set_local_flags(p, "ST"),
    )
    log = server.logs()
    assert ("mechanism=SCRAM-SHA-256" if mode == "imaps" else "mechanism=LOGIN") in log
    assert "Traceback" not in log


# -- offlineimap3 --------------------------------------------------------------------------------
OFFLINEIMAP_UID = re.compile(r",U=\d+|,FMD5=[0-9a-f]+")


def offlineimap_config(srv: Server, home: Path, mode: str) -> Path:
    port = srv.ports["imaps"] if mode == "imaps" else srv.ports["imap"]
    tls = "ssl = yes\nstarttls = no\n" if mode == "imaps" else "ssl = no\nstarttls = yes\n"
    cfg = home / ".offlineimaprc"
    cfg.write_text(
        f"""[general]
accounts = alice
metadata = {home}/.offlineimap
ui = basic
maxsyncaccounts = 1

[Account alice]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {home}/Mail
sep = /

[Repository remote]
type = IMAP
remotehost = localhost
remoteport = {port}
remoteuser = {ALICE}
remotepass = {PASSWORD}
{tls}sslcacertfile = {srv.cert}
auth_mechanisms = PLAIN
timeout = 20
maxconnections = 1
holdconnectionopen = no
"""
    )
    return cfg


@pytest.mark.parametrize("mode", ["imaps", "starttls"])
def test_offlineimap_two_way(server: Server, tmp_path: Path, mode: str) -> None:
    home = tmp_path / "home"
    (home / "Mail").mkdir(parents=True)
    cfg = offlineimap_config(server, home, mode)
    # offlineimap3's imaplib2 reads and writes one TLS connection from two threads; with
    # TLS 1.3 (tickets after the handshake) it hangs now and then, against Dovecot as well
    # (8 of 50 STARTTLS runs measured; 0 of 50 with TLS 1.2). Cap the client at TLS 1.2.
    (home / "openssl.cnf").write_text(
        "openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n"
        "[ssl_sect]\nsystem_default = tls_sect\n[tls_sect]\nMaxProtocol = TLSv1.2\n"
        "CipherString = DEFAULT:@SECLEVEL=2\n"
    )
    cmd = ["offlineimap", "-c", str(cfg), "-o", "-u", "basic", "-d", "imap"]
    # offlineimap: a message deleted locally (file removed) is expunged on the server.
    two_way_sync(server, home, cmd, home / "Mail", OFFLINEIMAP_UID, Path.unlink)
    log = server.logs()
    assert "mechanism=PLAIN" in log
    assert "Traceback" not in log


def test_clients_installed() -> None:
    """The Debian packages scripts/run-tests installs (isync, offlineimap3)."""
    assert shutil.which("mbsync"), "apt-get install isync"
    assert shutil.which("offlineimap"), "apt-get install offlineimap3"
