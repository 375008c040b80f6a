"""POP3 maildrop semantics end to end: UPDATE state, \\Seen, locking, UIDL stability, IMAP.

RFC 1939 section 6: messages marked with DELE are removed only when the client says QUIT
in the TRANSACTION state; a session that ends any other way removes nothing. The removal
is one atomic expunge, which IMAP sessions see as EXPUNGE. Unique-ids (section 7) never
change for a message and are never given to another one.
"""

from __future__ import annotations

import imaplib
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pop3_e2e import (
    RawPop3,
    client_ctx,
    deliver,
    mailbox,
    message,
    new_user,
    poplib_login,
    raw,
    running,
)
from support.server import PASSWORD, Server

from postroom.store.api import FLAG_FLAGGED, FLAG_SEEN, FlagChange

MODES = ("stls", "pop3s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("pop3drop"), roles=("pop3", "pop3s", "imap")) as s:
        yield s


def login_when_free(server: Server, user: str, mode: str = "stls", wait: float = 10.0) -> RawPop3:
    """Log in, retrying while the previous session still holds the lock (it is released
    when the server notices the dropped connection, which is not instantaneous)."""
    deadline = time.monotonic() + wait
    while True:
        c = raw(server, mode)
        status = c.login(user)
        if status.startswith(b"+OK"):
            return c
        c.close()
        assert status.startswith(b"-ERR [IN-USE]"), status
        assert time.monotonic() < deadline, "maildrop lock never released"
        time.sleep(0.05)


def uidl(c: RawPop3) -> list[str]:
    status, body = c.multi("UIDL")
    assert status.startswith(b"+OK"), status
    return [line.split()[1].decode() for line in body.splitlines()]


def message_ids(server: Server, user: str) -> list[str]:
    found = []
    for _, data in mailbox(server, user):
        m = re.search(rb"^Message-ID: <([^>]+)>", data, re.MULTILINE | re.IGNORECASE)
        assert m is not None
        found.append(m.group(1).decode())
    return found


def modseq(server: Server, user: str) -> tuple[int, int]:
    async def fn(admin: Any, store: Any) -> tuple[int, int]:
        u = await store.get_user(user)
        mb = await store.get_mailbox(u.id, "INBOX")
        return mb.id, mb.highestmodseq

    result: tuple[int, int] = server.admin(fn)
    return result


# ----------------------------------------------------------------------------- UPDATE state


@pytest.mark.parametrize("how", ["close", "reset"])
def test_dropped_connection_deletes_nothing(server: Server, how: str) -> None:
    user = new_user(server)
    metas = deliver(server, user, [message(i) for i in range(3)])
    c = raw(server, "pop3s", user)
    for i in (1, 2, 3):
        assert c.ok(f"DELE {i}")
    assert c.ok("STAT") == b"+OK 0 0"
    if how == "reset":  # an abortive close (RST) rather than FIN
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    with login_when_free(server, user, "pop3s") as again:
        assert again.ok("STAT").startswith(b"+OK 3 ")
    assert [m.id for m, _ in mailbox(server, user)] == [m.id for m in metas]


@pytest.mark.parametrize("mode", MODES)
def test_quit_deletes_marked_messages_atomically(server: Server, mode: str) -> None:
    user = new_user(server)
    metas = deliver(server, user, [message(i) for i in range(4)])
    mailbox_id, before = modseq(server, user)
    with raw(server, mode, user) as c:
        assert c.ok("DELE 1") and c.ok("DELE 3")
        # Marked, not removed: the store (what IMAP sees) still has all four.
        assert len(mailbox(server, user)) == 4
        assert c.cmd("QUIT") == b"+OK signing off (2 messages deleted)"
        assert c.is_closed()
    left = mailbox(server, user)
    assert [m.id for m, _ in left] == [metas[1].id, metas[3].id]

    async def vanished(admin: Any, store: Any) -> list[int]:
        return list(await store.vanished_since(mailbox_id, before))

    # One expunge, recorded for IMAP (QRESYNC VANISHED / EXPUNGE) with the removed UIDs.
    assert server.admin(vanished) == [metas[0].uid, metas[2].uid]
    assert modseq(server, user)[1] > before


def test_rset_and_authorization_quit_delete_nothing(server: Server) -> None:
    user = new_user(server)
    deliver(server, user, [message(i) for i in range(2)])
    with raw(server, "stls", user) as c:
        assert c.ok("DELE 1") and c.ok("DELE 2")
        assert c.ok("RSET").startswith(b"+OK maildrop has 2 messages")
        assert c.cmd("QUIT") == b"+OK signing off (0 messages deleted)"
    with raw(server, "stls") as c:
        assert c.ok(f"USER {user}")
        assert c.cmd("QUIT").startswith(b"+OK")  # QUIT in AUTHORIZATION: no UPDATE state
    assert len(mailbox(server, user)) == 2


def test_message_expunged_elsewhere_during_the_session(server: Server) -> None:
    """The snapshot keeps its numbering; a message IMAP expunged meanwhile answers -ERR,
    and marking it deleted does not make the UPDATE state fail."""
    user = new_user(server)
    metas = deliver(server, user, [message(i) for i in range(3)])
    mailbox_id = modseq(server, user)[0]
    with raw(server, "pop3s", user) as c:

        async def expunge_second(admin: Any, store: Any) -> None:
            await store.expunge(mailbox_id, [metas[1].uid])

        server.admin(expunge_second)
        assert c.ok("STAT").startswith(b"+OK 3 ")  # the snapshot from login
        assert c.cmd("RETR 2").startswith(b"-ERR")
        for i in (1, 3):
            status, body = c.multi(f"RETR {i}")
            assert status.startswith(b"+OK") and body
        assert c.ok("DELE 2") and c.ok("DELE 3")
        assert c.cmd("QUIT").startswith(b"+OK")
    assert [m.id for m, _ in mailbox(server, user)] == [metas[0].id]


def test_poplib_delete_all_and_quit(server: Server) -> None:
    user = new_user(server)
    deliver(server, user, [message(i) for i in range(5)])
    p = poplib_login(server, user, "pop3s")
    count, _ = p.stat()
    for i in range(1, count + 1):
        p.dele(i)
    assert p.quit().startswith(b"+OK")
    assert mailbox(server, user) == []


# ----------------------------------------------------------------------------- \Seen


def test_retrieved_messages_get_seen(server: Server) -> None:
    user = new_user(server)
    deliver(server, user, [message(i) for i in range(4)])
    with raw(server, "stls", user) as c:
        c.multi("RETR 1")
        c.multi("TOP 2 0")  # TOP is a peek, not a download
        c.multi("RETR 4")
        c.ok("DELE 4")  # retrieved and deleted: gone, no flag to set
        assert c.cmd("QUIT").startswith(b"+OK")
    flags = [m.flags & FLAG_SEEN for m, _ in mailbox(server, user)]
    assert flags == [FLAG_SEEN, 0, 0]


def test_retrieved_messages_get_seen_even_without_quit(server: Server) -> None:
    user = new_user(server)
    deliver(server, user, [message(i) for i in range(2)])
    c = raw(server, "pop3s", user)
    c.multi("RETR 2")
    c.close()
    with login_when_free(server, user) as again:
        again.ok("NOOP")
    flags = [m.flags & FLAG_SEEN for m, _ in mailbox(server, user)]
    assert flags == [0, FLAG_SEEN]


# ----------------------------------------------------------------------------- locking


@pytest.mark.parametrize("mode", MODES)
def test_new_login_takes_over_the_maildrop(server: Server, mode: str) -> None:
    """A second login of the same user ends the first session (its DELE marks dropped,
    as for any session without QUIT) instead of -ERR [IN-USE] until it times out."""
    user = new_user(server)
    deliver(server, user, [message(1), message(2)])
    first = raw(server, mode, user)
    assert first.ok("DELE 1")
    with raw(server, mode) as second:
        assert second.login(user).startswith(b"+OK")  # whatever the mechanism
        assert second.ok("STAT").startswith(b"+OK 2 ")  # the first one's DELE is gone
        # The first session was told why and closed; nothing it does counts any more.
        assert first.line() == b"-ERR [IN-USE] session ended: the same user logged in again"
        assert first.is_closed()
        first.close()
        with raw(server, mode) as third:
            assert third.auth("PLAIN", user).startswith(b"+OK")
            assert second.line().startswith(b"-ERR [IN-USE]") and second.is_closed()
            assert third.ok("DELE 2")
            assert third.cmd("QUIT").startswith(b"+OK")
        with raw(server, mode) as fourth:
            assert fourth.auth("SCRAM-SHA-256", user).startswith(b"+OK")
            assert fourth.ok("STAT").startswith(b"+OK 1 ")  # a QUIT's deletions do apply


def test_different_users_do_not_block_each_other(server: Server) -> None:
    a, b = new_user(server), new_user(server)
    with raw(server, "stls", a) as ca, raw(server, "pop3s", b) as cb:
        assert ca.ok("NOOP") and cb.ok("NOOP")


# ----------------------------------------------------------------------------- UIDL


def imap_login(server: Server, user: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    imap.starttls(client_ctx(server))
    imap.login(user, PASSWORD)
    return imap


def test_uidl_stable_across_imap_flag_changes_and_move(server: Server) -> None:
    """A real IMAP client changes flags and MOVEs a message out and back (new IMAP UIDs):
    POP3 still gives every message the unique-id it had."""
    user = new_user(server)
    deliver(server, user, [message(i) for i in range(4)])
    with raw(server, "stls", user) as c:
        before = dict(zip(uidl(c), message_ids(server, user), strict=True))
        c.cmd("QUIT")

    imap = imap_login(server, user)
    try:
        assert imap.select("INBOX")[0] == "OK"
        assert imap.store("1:*", "+FLAGS", "(\\Flagged $Label1)")[0] == "OK"
        assert imap.store("1:2", "FLAGS", "()")[0] == "OK"
        typ, data = imap.uid("SEARCH", "ALL")
        second = data[0].split()[1].decode()
        assert imap.uid("MOVE", second, "Archive")[0] == "OK"
        assert imap.select("Archive")[0] == "OK"
        assert imap.uid("MOVE", "1:*", "INBOX")[0] == "OK"
    finally:
        imap.logout()

    with raw(server, "pop3s", user) as c:
        after = dict(zip(uidl(c), message_ids(server, user), strict=True))
    assert after == before
    assert list(after) != list(before)  # the moved message is now last, same unique-id


def test_uidl_stable_across_store_level_move(server: Server) -> None:
    """The same through the store API: flag changes, and MOVE out to Archive and back."""
    user = new_user(server)
    deliver(server, user, [message(i) for i in range(3)])
    with raw(server, "stls", user) as c:
        before = dict(zip(uidl(c), message_ids(server, user), strict=True))
        c.cmd("QUIT")

    async def imap_side(admin: Any, store: Any) -> None:
        u = await store.get_user(user)
        inbox = await store.get_mailbox(u.id, "INBOX")
        archive = await store.get_mailbox(u.id, "Archive")
        uids = [m.uid for m in await store.list_messages(inbox.id)]
        await store.store_flags(inbox.id, uids, FlagChange("add", FLAG_FLAGGED, ("$Label1",)))
        moved = await store.move_messages(inbox.id, [uids[0]], archive.id)
        await store.move_messages(archive.id, [moved[0][1]], inbox.id)

    server.admin(imap_side)
    with raw(server, "pop3s", user) as c:
        after = dict(zip(uidl(c), message_ids(server, user), strict=True))
    assert after == before
    assert list(after) == list(before)[1:] + list(before)[:1]


def test_uidl_never_given_to_another_message(server: Server) -> None:
    user = new_user(server)
    deliver(server, user, [message(i) for i in range(3)])
    with raw(server, "stls", user) as c:
        old = uidl(c)
        assert c.ok("DELE 3")  # the newest one: a rowid-based id would be handed out again
        c.cmd("QUIT")
    deliver(server, user, [message(10)])
    with raw(server, "stls", user) as c:
        new = uidl(c)
    assert new[:2] == old[:2]
    assert new[2] not in old


def test_uidl_stable_across_restarts(tmp_path: Path) -> None:
    with running(tmp_path / "srv") as server:
        user = new_user(server)
        deliver(server, user, [message(i) for i in range(3)])
        with raw(server, "pop3s", user) as c:
            first = uidl(c)
            c.multi("RETR 2")
            c.cmd("QUIT")
    with running(tmp_path / "srv") as server:
        deliver(server, user, [message(3)])
        with raw(server, "stls", user) as c:
            second = uidl(c)
    assert second[:3] == first
    assert second[3] not in first
    assert len(set(second)) == 4


def test_shutdown_says_goodbye_and_deletes_nothing(tmp_path: Path) -> None:
    with running(tmp_path / "srv") as server:
        user = new_user(server)
        deliver(server, user, [message(i) for i in range(3)])
        c = raw(server, "pop3s", user)
        assert c.ok("DELE 1") and c.ok("DELE 2")
        waiting = raw(server, "stls")  # still in AUTHORIZATION
        server.stop()  # SIGTERM: idle sessions are told at once, then the server exits
        assert c.line().startswith(b"-ERR [SYS/TEMP]")
        assert waiting.line().startswith(b"-ERR [SYS/TEMP]")
        assert c.is_closed() and waiting.is_closed()
        c.close()
        waiting.close()
    assert len(mailbox(server, user)) == 3


# ----------------------------------------------------------------------------- IMAP view


def test_imap_session_sees_pop3_deletions_as_expunges(server: Server) -> None:
    user = new_user(server)
    metas = deliver(server, user, [message(i) for i in range(4)])
    imap = imap_login(server, user)
    try:
        typ, data = imap.select("INBOX")
        assert typ == "OK" and data == [b"4"]
        with raw(server, "pop3s", user) as c:
            assert c.ok("DELE 2") and c.ok("DELE 4")
            typ, _ = imap.noop()  # nothing happened yet
            assert typ == "OK" and "EXPUNGE" not in imap.untagged_responses
            assert c.cmd("QUIT").startswith(b"+OK")
        deadline = time.monotonic() + 10
        expunged: list[bytes] = []
        while len(expunged) < 2 and time.monotonic() < deadline:
            imap.noop()
            expunged += imap.untagged_responses.pop("EXPUNGE", [])
            time.sleep(0.05)
        # RFC 9051 7.4.1: each EXPUNGE is a sequence number in the mailbox as it is after
        # the ones before it; replayed in order they must leave messages 1 and 3.
        remaining = [m.uid for m in metas]
        for number in expunged:
            del remaining[int(number) - 1]
        assert remaining == [metas[0].uid, metas[2].uid], expunged
        typ, data = imap.uid("SEARCH", "ALL")
        assert typ == "OK"
        assert [int(x) for x in data[0].split()] == [metas[0].uid, metas[2].uid]
    finally:
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


# ----------------------------------------------------------------------------- read-ahead


def test_retr_in_any_order_with_shared_blobs_and_a_big_message(server: Server) -> None:
    """The shell reads messages in batches (and the next batch in the background): every
    access order must still give each message's own bytes, also when two messages share
    one stored blob (IMAP COPY within INBOX) and when one message outweighs a batch."""
    user = new_user(server)
    big = message(0, size=3 * 1024 * 1024)
    deliver(server, user, [message(i) for i in range(1, 150)] + [big] + [message(200)])

    async def copy_within_inbox(admin: Any, store: Any) -> None:
        u = await store.get_user(user)
        inbox = await store.get_mailbox(u.id, "INBOX")
        uids = [m.uid for m in await store.list_messages(inbox.id)]
        await store.copy_messages(inbox.id, [uids[0], uids[70], uids[149]], inbox.id)

    server.admin(copy_within_inbox)
    stored = [data for _, data in mailbox(server, user)]
    metas = [m for m, _ in mailbox(server, user)]
    assert metas[-1].blob_id == metas[149].blob_id  # the copies share the blob
    n = len(stored)
    orders = [
        list(range(1, n + 1)),
        list(range(n, 0, -1)),
        [1, n, 2, n - 1, 75, 76, 3, 151, 150, 152, 70, 71, 140, 141],
    ]
    for order in orders:
        with raw(server, "pop3s", user) as c:
            for i in order:
                status, body = c.multi(f"RETR {i}")
                assert status == b"+OK %d octets" % len(stored[i - 1]), (i, status)
                assert body.replace(b"\r\n..", b"\r\n.") == stored[i - 1], i
            c.cmd("QUIT")
