"""The Store contract, run unchanged against every backend (POSTROOM_TEST_BACKENDS)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from postroom.store.api import (
    FLAG_DELETED,
    FLAG_FLAGGED,
    FLAG_SEEN,
    AlreadyExists,
    Conflict,
    Delivery,
    FlagChange,
    MailboxChange,
    NewQueueEntry,
    NotFound,
    QueueRecipient,
    RecipientOutcome,
    StoreError,
    names_to_flags,
    flags_to_names,
)

MSG = b"From: a@example.test\r\nSubject: hi\r\n\r\nhello\r\n"


async def _user(store: Any, address: str = "alice@example.test") -> Any:
    if await store.get_domain(address.rpartition("@")[2]) is None:
        await store.add_domain(address.rpartition("@")[2])
    return await store.add_user(address, "hash", "scram")


def test_domains(store_run: Any) -> None:
    async def body(store: Any) -> None:
        d = await store.add_domain("example.test")
        assert d.name == "example.test"
        with pytest.raises(AlreadyExists):
            await store.add_domain("example.test")
        assert [x.name for x in await store.list_domains()] == ["example.test"]
        await store.add_user("bob@example.test", "h", None)
        with pytest.raises(Conflict):
            await store.remove_domain("example.test")
        await store.remove_user("bob@example.test")
        await store.add_alias("x@example.test", ["y@elsewhere.test"])
        with pytest.raises(Conflict):
            await store.remove_domain("example.test")
        await store.remove_alias("x@example.test")
        await store.remove_domain("example.test")
        assert await store.list_domains() == []
        with pytest.raises(NotFound):
            await store.remove_domain("example.test")

    store_run(body)


def test_users_and_default_mailboxes(store_run: Any) -> None:
    async def body(store: Any) -> None:
        with pytest.raises(NotFound):
            await store.add_user("a@nodomain.test", "h", None)
        u = await _user(store)
        assert "hash" not in repr(u) and "scram" not in repr(u)
        with pytest.raises(AlreadyExists):
            await store.add_user("alice@example.test", "h", None)
        names = {m.name: m.special_use for m in await store.list_mailboxes(u.id)}
        assert names == {
            "INBOX": None, "Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash",
            "Junk": "\\Junk", "Archive": "\\Archive",
        }
        assert set(await store.list_subscriptions(u.id)) == set(names)
        await store.set_password("alice@example.test", "h2", "s2")
        got = await store.get_user("alice@example.test")
        assert got.password_hash == "h2" and got.scram == "s2"
        assert (await store.get_user_by_id(u.id)).address == "alice@example.test"
        assert [x.address for x in await store.list_users("example.test")] == ["alice@example.test"]
        with pytest.raises(NotFound):
            await store.set_password("nobody@example.test", "h", None)

    store_run(body)


def test_aliases_and_lookup(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        await store.add_alias("sales@example.test", ["alice@example.test", "ext@remote.test"])
        await store.add_alias("@example.test", ["alice@example.test"])
        assert await store.alias_targets("sales@example.test") == ["alice@example.test", "ext@remote.test"]
        info = await store.lookup_address("alice@example.test")
        assert info.domain_is_local and info.user.id == u.id and info.alias_targets == ()
        info = await store.lookup_address("sales@example.test")
        assert info.user is None and len(info.alias_targets) == 2
        assert (await store.lookup_address("@example.test")).alias_targets == ("alice@example.test",)
        assert not (await store.lookup_address("x@remote.test")).domain_is_local
        assert await store.remove_alias("sales@example.test", "ext@remote.test") == 1
        assert len(await store.list_aliases("example.test")) == 2
        with pytest.raises(NotFound):
            await store.remove_alias("nope@example.test")

    store_run(body)


def test_deliver_shares_one_blob(store_run: Any) -> None:
    async def body(store: Any) -> None:
        users = [await _user(store, f"u{i}@example.test") for i in range(50)]
        seen: list[MailboxChange] = []
        inbox0 = await store.get_mailbox(users[0].id, "INBOX")
        store.changes.subscribe(inbox0.id, seen.append)
        r = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=tuple(u.id for u in users)))
        assert len(r.placed) == 50 and all(uid == 1 for _, uid in r.placed)
        assert len(seen) == 1 and seen[0].mailbox_id == inbox0.id
        # one blob, read back byte for byte from every mailbox
        blob_ids = set()
        for u in users:
            inbox = await store.get_mailbox(u.id, "INBOX")
            (m,) = await store.list_messages(inbox.id)
            blob_ids.add(m.blob_id)
            assert m.size == len(MSG)
        assert len(blob_ids) == 1
        bid = blob_ids.pop()
        assert await store.read_blob(bid) == MSG
        assert (await store.read_summaries([bid]))[bid] == b"S"
        # expunging 49 copies keeps the blob; the 50th removes it
        for u in users[:-1]:
            inbox = await store.get_mailbox(u.id, "INBOX")
            assert await store.expunge(inbox.id, [1]) == [1]
        assert await store.read_blob(bid) == MSG
        inbox = await store.get_mailbox(users[-1].id, "INBOX")
        await store.expunge(inbox.id, [1])
        with pytest.raises(NotFound):
            await store.read_blob(bid)

    store_run(body)


def test_uids_modseq_flags(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        uv, uid1 = await store.append(inbox.id, MSG, b"S", FLAG_SEEN, ["$Label1"], 1_000_000)
        _, uid2 = await store.append(inbox.id, MSG, b"S")
        assert uv == inbox.uidvalidity and (uid1, uid2) == (1, 2)
        msgs = await store.list_messages(inbox.id)
        assert [m.uid for m in msgs] == [1, 2]
        assert msgs[0].flags == FLAG_SEEN and msgs[0].keywords == ("$Label1",)
        assert msgs[0].internaldate == 1_000_000
        assert msgs[1].modseq > msgs[0].modseq
        st = await store.mailbox_status(inbox.id)
        assert (st.messages, st.unseen, st.uidnext, st.size) == (2, 1, 3, 2 * len(MSG))
        before = st.highestmodseq
        r = await store.store_flags(inbox.id, [1, 2], FlagChange("add", FLAG_FLAGGED, ("Work",)))
        assert {m.uid for m in r.changed} == {1, 2}
        assert all(m.modseq == before + 1 for m in r.changed)
        r = await store.store_flags(inbox.id, [1], FlagChange("add", FLAG_FLAGGED))
        assert r.changed == [] and [m.uid for m in r.unchanged] == [1]
        # UNCHANGEDSINCE: message 1 was modified at before+1 > before
        r = await store.store_flags(inbox.id, [1], FlagChange("replace", 0), unchangedsince=before)
        assert r.failed_uids == [1]
        r = await store.store_flags(inbox.id, [1], FlagChange("remove", FLAG_SEEN, ("work",)))
        (m1,) = r.changed
        assert m1.flags == FLAG_FLAGGED and m1.keywords == ("$Label1",)
        changes = await store.changes_since(inbox.id, before + 1)
        assert [m.uid for m in changes.changed] == [1] and changes.vanished == []
        # expunge: UIDs never reused
        await store.store_flags(inbox.id, [2], FlagChange("add", FLAG_DELETED))
        assert await store.expunge(inbox.id, [2]) == [2]
        _, uid3 = await store.append(inbox.id, MSG, b"S")
        assert uid3 == 3
        assert await store.vanished_since(inbox.id, 0) == [2]
        assert await store.expunge(inbox.id, [2]) == []

    store_run(body)


def test_copy_move_recent(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        arch = await store.get_mailbox(u.id, "Archive")
        for _ in range(3):
            await store.append(inbox.id, MSG, b"S", FLAG_SEEN)
        ids = {m.uid: m.id for m in await store.list_messages(inbox.id)}
        assert await store.copy_messages(inbox.id, [1, 3], arch.id) == [(1, 1), (3, 2)]
        assert await store.move_messages(inbox.id, [2], arch.id) == [(2, 3)]
        moved = [m for m in await store.list_messages(arch.id) if m.uid == 3][0]
        assert moved.id == ids[2], "MOVE keeps the message id (POP3 UIDL stability)"
        assert moved.flags == FLAG_SEEN
        assert [m.uid for m in await store.list_messages(inbox.id)] == [1, 3]
        assert await store.vanished_since(inbox.id, 0) == [2]
        assert await store.claim_recent(arch.id) == 1
        assert await store.claim_recent(arch.id) == 4
        st = await store.mailbox_status(arch.id)
        assert st.recent == 0 and st.messages == 3
        with pytest.raises(NotFound):
            await store.copy_messages(inbox.id, [1], 99999)

    store_run(body)


def test_mailbox_hierarchy(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        await store.create_mailbox(u.id, "a/b/c")
        names = {m.name for m in await store.list_mailboxes(u.id)}
        assert {"a", "a/b", "a/b/c"} <= names
        with pytest.raises(AlreadyExists):
            await store.create_mailbox(u.id, "a/b")
        with pytest.raises(Conflict):
            await store.delete_mailbox(u.id, "a")
        with pytest.raises(Conflict):
            await store.create_mailbox(u.id, "Other", "\\Sent")
        ab = await store.get_mailbox(u.id, "a/b")
        await store.rename_mailbox(u.id, "a", "z/y")
        names = {m.name for m in await store.list_mailboxes(u.id)}
        assert {"z", "z/y", "z/y/b", "z/y/b/c"} <= names and "a" not in names
        renamed = await store.get_mailbox(u.id, "z/y/b")
        assert renamed.id == ab.id and renamed.uidvalidity == ab.uidvalidity
        await store.delete_mailbox(u.id, "z/y/b/c")
        with pytest.raises(StoreError):
            await store.delete_mailbox(u.id, "INBOX")
        with pytest.raises(StoreError):
            await store.rename_mailbox(u.id, "z", "z/q")
        # a re-created name gets a new UIDVALIDITY
        c1 = await store.create_mailbox(u.id, "tmp")
        await store.delete_mailbox(u.id, "tmp")
        c2 = await store.create_mailbox(u.id, "tmp")
        assert c2.uidvalidity != c1.uidvalidity

    store_run(body)


def test_rename_inbox_moves_messages(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        for _ in range(2):
            await store.append(inbox.id, MSG, b"S")
        await store.rename_mailbox(u.id, "INBOX", "Old")
        old = await store.get_mailbox(u.id, "Old")
        assert [m.uid for m in await store.list_messages(old.id)] == [1, 2]
        assert await store.list_messages(inbox.id) == []
        _, uid = await store.append(inbox.id, MSG, b"S")
        assert uid == 3, "INBOX UIDs continue after the rename"

    store_run(body)


def test_subscriptions(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        await store.set_subscribed(u.id, "Gone", True)
        await store.set_subscribed(u.id, "Junk", False)
        subs = await store.list_subscriptions(u.id)
        assert "Gone" in subs and "Junk" not in subs

    store_run(body)


def test_remove_user_releases_blobs(store_run: Any) -> None:
    async def body(store: Any) -> None:
        a = await _user(store, "a@example.test")
        b = await _user(store, "b@example.test")
        r = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(a.id, b.id)))
        await store.remove_user("a@example.test")
        assert await store.read_blob(r.blob_id) == MSG
        await store.remove_user("b@example.test")
        with pytest.raises(NotFound):
            await store.read_blob(r.blob_id)

    store_run(body)


def test_queue_lifecycle(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        woken: list[int] = []
        store.changes.subscribe_queue(lambda: woken.append(1))
        entry = NewQueueEntry(
            qid="Q123", sender="alice@example.test",
            recipients=(QueueRecipient("x@remote.test", "rfc822;x@remote.test", "FAILURE"),
                        QueueRecipient("y@other.test")),
            ret="HDRS", envid="E1",
        )
        r = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id,), queue=entry))
        assert r.queued == "Q123" and woken
        (q,) = await store.queue_list()
        assert q.sender == "alice@example.test" and q.size == len(MSG) and q.ret == "HDRS"
        assert [x.address for x in q.pending] == ["x@remote.test", "y@other.test"]
        now = q.created
        leased = await store.queue_due(now, 10, 300, "node1")
        assert [x.qid for x in leased] == ["Q123"]
        assert await store.queue_due(now, 10, 300, "node1") == [], "leased entries are not handed out twice"
        assert await store.queue_release_leases("node1") == 1
        (q,) = await store.queue_due(now, 10, 300, "node1")
        x, y = q.recipients
        done = await store.queue_record(
            "Q123", [RecipientOutcome(x.id, "delivered", "2.0.0", "250 ok", "mx.remote.test")],
            next_attempt=now + 60, last_error="451 try later",
        )
        assert not done
        q = await store.queue_get("Q123")
        assert q.attempts == 1 and q.next_attempt == now + 60 and q.last_error == "451 try later"
        assert [r.state for r in q.recipients] == ["delivered", "pending"]
        assert await store.queue_due(now, 10, 300, "node1") == []
        assert await store.queue_next_due() == now + 60
        assert await store.queue_hold("Q123", True)
        assert await store.queue_flush() == 0
        assert await store.queue_hold("Q123", False)
        assert await store.queue_flush(domain="other.test") == 1
        (q,) = await store.queue_due(q.next_attempt, 10, 300, "node1")
        done = await store.queue_record("Q123", [RecipientOutcome(y.id, "failed", "5.1.1", "550 no")], None, None)
        assert done and await store.queue_get("Q123") is None
        # the local copy still holds the blob
        assert await store.read_blob(r.blob_id) == MSG
        assert not await store.queue_delete("Q123")

    store_run(body)


def test_queue_delete_releases_blob(store_run: Any) -> None:
    async def body(store: Any) -> None:
        entry = NewQueueEntry(qid="Q9", sender="", recipients=(QueueRecipient("x@remote.test"),))
        r = await store.deliver(Delivery(data=MSG, summary=b"S", queue=entry))
        assert await store.queue_delete("Q9")
        with pytest.raises(NotFound):
            await store.read_blob(r.blob_id)

    store_run(body)


def test_concurrent_writers_and_reader(store_run: Any) -> None:
    async def body(store: Any) -> None:
        users = [await _user(store, f"w{i}@example.test") for i in range(4)]
        inboxes = [await store.get_mailbox(u.id, "INBOX") for u in users]

        async def writer(i: int) -> None:
            for _ in range(50):
                await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(users[i % 4].id,)))

        async def reader() -> int:
            n = 0
            for _ in range(50):
                for ib in inboxes:
                    msgs = await store.list_messages(ib.id)
                    uids = [m.uid for m in msgs]
                    assert uids == sorted(set(uids))
                    n += 1
                await asyncio.sleep(0)
            return n

        results = await asyncio.gather(*(writer(i) for i in range(20)), reader())
        assert results[-1] == 200
        for ib in inboxes:
            msgs = await store.list_messages(ib.id)
            assert [m.uid for m in msgs] == list(range(1, 251))

    store_run(body)


def test_maildrop_lock(store_run: Any) -> None:
    async def body(store: Any) -> None:
        assert store.try_lock_maildrop(7)
        assert not store.try_lock_maildrop(7)
        store.unlock_maildrop(7)
        assert store.try_lock_maildrop(7)

    store_run(body)


def test_flag_names_roundtrip() -> None:
    bits, kws = names_to_flags(["\\Seen", "\\recent", "\\FLAGGED", "Work", "$Junk", "Work"])
    assert bits == FLAG_SEEN | FLAG_FLAGGED and kws == ("$Junk", "Work")
    assert flags_to_names(bits, kws) == ["\\Seen", "\\Flagged", "$Junk", "Work"]
