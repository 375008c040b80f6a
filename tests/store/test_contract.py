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
    NewMessage,
    NotFound,
    TooLarge,
    TooMany,
    OverQuota,
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
        # alias targets in the order they were added; a local address that is neither
        info = await store.lookup_address("sales@example.test")
        assert info.alias_targets == ("alice@example.test", "ext@remote.test")
        info = await store.lookup_address("nobody@example.test")
        assert info.domain_is_local and info.user is None and info.alias_targets == ()
        # a user that is also an alias source: both
        await store.add_alias("alice@example.test", ["ext@remote.test"])
        info = await store.lookup_address("alice@example.test")
        assert info.user.id == u.id and info.alias_targets == ("ext@remote.test",)
        assert await store.remove_alias("alice@example.test") == 1
        # added out of alphabetical order: still in the order added (the (source, target)
        # index would hand them over sorted by target)
        await store.add_alias("team@example.test", ["zed@remote.test"])
        await store.add_alias("team@example.test", ["amy@remote.test", "max@remote.test"])
        info = await store.lookup_address("team@example.test")
        assert info.alias_targets == ("zed@remote.test", "amy@remote.test", "max@remote.test")
        assert await store.remove_alias("team@example.test") == 3
        assert await store.remove_alias("sales@example.test", "ext@remote.test") == 1
        assert len(await store.list_aliases("example.test")) == 2
        with pytest.raises(NotFound):
            await store.remove_alias("nope@example.test")

    store_run(body)


def test_sendas_grants(store_run: Any) -> None:
    async def body(store: Any) -> None:
        await _user(store)
        await _user(store, "bob@example.test")
        g = await store.add_sendas("alice@example.test", "news@example.test")
        assert (g.user, g.address) == ("alice@example.test", "news@example.test")
        await store.add_sendas("alice@example.test", "@lists.example")  # any domain
        await store.add_sendas("bob@example.test", "news@example.test")
        with pytest.raises(AlreadyExists):
            await store.add_sendas("alice@example.test", "news@example.test")
        with pytest.raises(NotFound):
            await store.add_sendas("nobody@example.test", "news@example.test")
        grants = [(x.user, x.address) for x in await store.list_sendas()]
        assert grants == [
            ("alice@example.test", "@lists.example"),
            ("alice@example.test", "news@example.test"),
            ("bob@example.test", "news@example.test"),
        ]
        assert [x.address for x in await store.list_sendas("bob@example.test")] == ["news@example.test"]
        assert await store.list_sendas("nobody@example.test") == []
        await store.remove_sendas("alice@example.test", "news@example.test")
        with pytest.raises(NotFound):
            await store.remove_sendas("alice@example.test", "news@example.test")
        with pytest.raises(NotFound):
            await store.remove_sendas("nobody@example.test", "news@example.test")
        # Grants go with their user (and do not pass to a new user of the same name).
        await store.remove_user("bob@example.test")
        await _user(store, "bob@example.test")
        assert await store.list_sendas("bob@example.test") == []
        assert [x.address for x in await store.list_sendas()] == ["@lists.example"]

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


def test_mailbox_and_subscription_bounds(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        have = len(await store.list_mailboxes(u.id))
        top = have + 3
        with pytest.raises(TooMany):  # 4 new names (3 superiors) where 3 fit: none created
            await store.create_mailbox(u.id, "a/b/c/d", max_mailboxes=top)
        assert len(await store.list_mailboxes(u.id)) == have
        await store.create_mailbox(u.id, "a/b/c", max_mailboxes=top)
        with pytest.raises(TooMany):
            await store.create_mailbox(u.id, "x", max_mailboxes=top)
        with pytest.raises(TooMany):
            await store.rename_mailbox(u.id, "a/b/c", "n/c", max_mailboxes=top)
        with pytest.raises(TooMany):
            await store.rename_mailbox(u.id, "INBOX", "Old", max_mailboxes=top)
        await store.rename_mailbox(u.id, "a/b/c", "a/c", max_mailboxes=top)
        await store.create_mailbox(u.id, "x")  # no bound given: none applies
        assert len(await store.list_mailboxes(u.id)) == top + 1
        base = len(await store.list_subscriptions(u.id))
        await store.set_subscribed(u.id, "s1", True, max_subscriptions=base + 1)
        with pytest.raises(TooMany):
            await store.set_subscribed(u.id, "s2", True, max_subscriptions=base + 1)
        await store.set_subscribed(u.id, "s1", True, max_subscriptions=base + 1)  # already there
        await store.set_subscribed(u.id, "s1", False, max_subscriptions=base + 1)
        await store.set_subscribed(u.id, "s2", True, max_subscriptions=base + 1)
        assert "s2" in await store.list_subscriptions(u.id)

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


def test_queue_record_intermediate_then_last_reference(store_run: Any) -> None:
    """An intermediate record (``final=False``) updates the recipients and keeps the
    entry, its lease and its attempt count; the record that leaves no recipient pending
    removes the entry and, for a message only the queue held, its bytes."""

    async def body(store: Any) -> None:
        entry = NewQueueEntry(qid="QI", sender="", recipients=(
            QueueRecipient("x@remote.test"), QueueRecipient("y@remote.test")))
        r = await store.deliver(Delivery(data=MSG, summary=b"S", queue=entry))
        (q,) = await store.queue_list()
        (q,) = await store.queue_due(q.created, 10, 300, "node1")
        x, y = q.recipients
        assert not await store.queue_record(
            "QI", [RecipientOutcome(x.id, "delivered", "2.0.0", "250 ok", "mx")], None, None,
            final=False)
        q = await store.queue_get("QI")
        assert q.attempts == 0 and [t.state for t in q.recipients] == ["delivered", "pending"]
        assert await store.queue_due(q.created, 10, 300, "node2") == []  # still leased
        assert await store.queue_record(
            "QI", [RecipientOutcome(y.id, "failed", "5.1.1", "550 no")], None, "550 no")
        assert await store.queue_get("QI") is None and await store.queue_list() == []
        with pytest.raises(NotFound):
            await store.read_blob(r.blob_id)
        assert await store.queue_record("QI", [], None, None)  # gone: nothing left to do

    store_run(body)


def test_queue_leases_between_nodes(store_run: Any) -> None:
    """Two nodes on one store: a leased entry is worked by one of them; its lease lasts
    while the holder renews it and passes to the other once renewals stop."""

    async def body(store: Any) -> None:
        entry = NewQueueEntry(qid="QL", sender="", recipients=(QueueRecipient("x@remote.test"),))
        await store.deliver(Delivery(data=MSG, summary=b"S", queue=entry))
        (q,) = await store.queue_list()
        now = q.created
        assert [m.qid for m in await store.queue_due(now, 10, 60, "node1")] == ["QL"]
        assert await store.queue_due(now + 59, 10, 60, "node2") == []
        assert await store.queue_renew_leases("node2", ["QL"], now + 500) == 0  # not its lease
        assert await store.queue_renew_leases("node1", ["QL", "nope"], now + 120) == 1
        assert await store.queue_due(now + 119, 10, 60, "node2") == []
        assert await store.queue_next_due() == now + 120
        (taken,) = await store.queue_due(now + 120, 10, 60, "node2")  # node1 stopped renewing
        assert taken.qid == "QL"
        assert await store.queue_renew_leases("node1", ["QL"], now + 300) == 0  # lost it
        assert await store.queue_release_leases("node1") == 0
        assert await store.queue_release_leases("node2") == 1

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
        assert await store.try_lock_maildrop(7)
        assert not await store.try_lock_maildrop(7)
        await store.unlock_maildrop(7)
        assert await store.try_lock_maildrop(7)

    store_run(body)


def test_flag_names_roundtrip() -> None:
    bits, kws = names_to_flags(["\\Seen", "\\recent", "\\FLAGGED", "Work", "$Junk", "Work"])
    assert bits == FLAG_SEEN | FLAG_FLAGGED and kws == ("$Junk", "Work")
    assert flags_to_names(bits, kws) == ["\\Seen", "\\Flagged", "$Junk", "Work"]


def test_mailbox_snapshot(store_run: Any) -> None:
    async def body(store: Any) -> None:
        from array import array

        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        assert await store.mailbox_snapshot(u.id, "Nope") is None
        empty = await store.mailbox_snapshot(u.id, "INBOX", claim_recent=True)
        assert (empty.id, empty.user_id, empty.name) == (inbox.id, u.id, "INBOX")
        assert empty.uids == array("I") and empty.flags == b"" and empty.keywords == {}
        assert empty.recent_from == empty.uidnext == 1
        await store.append(inbox.id, MSG, b"S", FLAG_SEEN)
        await store.append(inbox.id, MSG, b"S", FLAG_FLAGGED | FLAG_DELETED, ["$Work", "Alpha"])
        await store.append(inbox.id, MSG, b"S", 0, ["$Work"])
        await store.expunge(inbox.id, [1])
        await store.store_flags(inbox.id, [3], FlagChange("add", FLAG_SEEN))
        snap = await store.mailbox_snapshot(u.id, "INBOX")
        mb = await store.get_mailbox_by_id(inbox.id)
        assert isinstance(snap.uids, array) and list(snap.uids) == [2, 3]
        assert snap.flags == bytes([FLAG_FLAGGED | FLAG_DELETED, FLAG_SEEN])
        assert snap.keywords == {2: ("$Work", "Alpha"), 3: ("$Work",)}
        assert (snap.uidvalidity, snap.uidnext, snap.highestmodseq) == (
            mb.uidvalidity, mb.uidnext, mb.highestmodseq)
        # Without claiming, recent_from is the first unclaimed UID and nothing is claimed.
        assert (snap.recent_from, snap.uidnext) == (1, 4)
        assert (await store.mailbox_status(inbox.id)).recent == 2
        assert (await store.mailbox_snapshot(u.id, "INBOX")).recent_from == 1
        first = await store.mailbox_snapshot(u.id, "INBOX", claim_recent=True)
        second = await store.mailbox_snapshot(u.id, "INBOX", claim_recent=True)
        assert first.recent_from == 1 and second.recent_from == 4
        assert (await store.mailbox_status(inbox.id)).recent == 0
        assert (await store.mailbox_snapshot(u.id, "INBOX")).recent_from == 4
        # a large mailbox keeps UID order and flags aligned
        arch = await store.get_mailbox(u.id, "Archive")
        for i in range(300):
            await store.append(arch.id, MSG, b"S", i % 32 & ~FLAG_DELETED)
        big = await store.mailbox_snapshot(u.id, "Archive")
        assert list(big.uids) == list(range(1, 301))
        assert list(big.flags) == [i % 32 & ~FLAG_DELETED for i in range(300)]

    store_run(body)


def test_changes_since_claims_recent_of_new_messages(store_run: Any) -> None:
    """changes_since(claim_above=...) claims \\Recent as claim_recent(uidnext) would, in
    the same call, only when a message above claim_above is among the changes."""

    async def body(store: Any) -> None:
        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        for _ in range(2):
            await store.append(inbox.id, MSG, b"S")
        start = (await store.mailbox_status(inbox.id)).highestmodseq
        # Nothing above UID 2 changed: no claim, the mark stays.
        await store.store_flags(inbox.id, [1], FlagChange("add", FLAG_SEEN))
        changes = await store.changes_since(inbox.id, start, claim_above=2)
        assert [m.uid for m in changes.changed] == [1] and changes.recent_from is None
        assert await store.claim_recent(inbox.id, claim=False) == 1
        # Two new messages: a read-only session sees the mark, which does not move ...
        for _ in range(2):
            await store.append(inbox.id, MSG, b"S")
        looked = await store.changes_since(inbox.id, start, claim_above=2, claim=False)
        assert looked.recent_from == 1 and looked.uidnext == 5
        assert (await store.mailbox_status(inbox.id)).recent == 4
        # ... a read-write one claims up to the UIDNEXT it saw; the next session gets none.
        first = await store.changes_since(inbox.id, start, claim_above=2)
        assert [m.uid for m in first.changed] == [1, 3, 4]
        assert (first.recent_from, first.uidnext) == (1, 5)
        second = await store.changes_since(inbox.id, start, claim_above=2)
        assert second.recent_from == 5
        assert (await store.mailbox_status(inbox.id)).recent == 0
        # Without claim_above: no claim and no mark.
        await store.append(inbox.id, MSG, b"S")
        plain = await store.changes_since(inbox.id, start)
        assert plain.recent_from is None and plain.uidnext == 6
        assert await store.claim_recent(inbox.id, claim=False) == 5
        with pytest.raises(NotFound):
            await store.changes_since(99999, 0, claim_above=0)

    store_run(body)


def test_claim_recent_upto(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        for _ in range(3):
            await store.append(inbox.id, MSG, b"S")
        # A read-only session only looks: the mark does not move.
        assert await store.claim_recent(inbox.id, claim=False) == 1
        assert await store.claim_recent(inbox.id, 2, claim=False) == 1
        assert (await store.mailbox_status(inbox.id)).recent == 3
        # A session that has seen UIDs below 3 claims those only.
        assert await store.claim_recent(inbox.id, 3) == 1
        assert await store.claim_recent(inbox.id, 4, claim=False) == 3
        assert await store.claim_recent(inbox.id, 2, claim=False) == 2  # none below 2
        assert (await store.mailbox_status(inbox.id)).recent == 1
        assert await store.claim_recent(inbox.id, 2) == 3  # nothing left below 2
        assert await store.claim_recent(inbox.id) == 3  # up to UIDNEXT
        assert await store.claim_recent(inbox.id) == 4
        snap = await store.mailbox_snapshot(u.id, "INBOX", claim_recent=True)
        assert snap.recent_from == snap.uidnext == 4
        await store.append(inbox.id, MSG, b"S")
        snap = await store.mailbox_snapshot(u.id, "INBOX", claim_recent=True)
        assert (snap.recent_from, snap.uidnext) == (4, 5)
        with pytest.raises(NotFound):
            await store.claim_recent(99999)
        # a re-created mailbox (new UIDVALIDITY) starts with everything \Recent again
        await store.create_mailbox(u.id, "Box")
        box = await store.get_mailbox(u.id, "Box")
        await store.append(box.id, MSG, b"S")
        assert await store.claim_recent(box.id) == 1
        await store.delete_mailbox(u.id, "Box")
        await store.create_mailbox(u.id, "Box")
        box2 = await store.get_mailbox(u.id, "Box")
        await store.append(box2.id, MSG, b"S")
        assert (await store.mailbox_status(box2.id)).recent == 1
        assert await store.claim_recent(box2.id) == 1

    store_run(body)


def _msg(from_: str, subject: str, extra: str = "") -> bytes:
    return f"From: {from_}\r\nSubject: {subject}\r\n{extra}\r\nbody\r\n".encode()


def test_search_envelope_with_texts_from_the_caller(store_run: Any) -> None:
    """Delivery.search_texts: the caller's own parse is stored as is (SMTP passes it)."""

    async def body(store: Any) -> None:
        from postroom.deliver import summarize_for_store

        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        data = _msg("Alice Smith <ALICE@example.org>", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
        summary, texts = summarize_for_store(data)
        await store.deliver(Delivery(data=data, summary=summary, user_ids=(u.id,), search_texts=texts))
        # texts that disagree with the summary show which one the backend used
        other = ("zed <z@z.test>", None, None, None, "other")
        await store.deliver(Delivery(data=data, summary=summary, user_ids=(u.id,), search_texts=other))
        found = await store.search_envelope(inbox.id, [("from", "alice"), ("subject", "grüsse"), ("from", "zed")])
        assert found == [[1], [1], [2]]

    store_run(body)


def test_search_envelope(store_run: Any) -> None:
    async def body(store: Any) -> None:
        from postroom.deliver import summarize

        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        arch = await store.get_mailbox(u.id, "Archive")
        msgs = [
            _msg("=?utf-8?q?J=C3=BCrgen?= <jurgen@example.de>", "=?utf-8?q?Gr=C3=BC=C3=9Fe?="),
            _msg("Alice Smith <ALICE@example.org>", "Quarterly report",
                 "To: Team: a@x.org, b@y.org;\r\nCc: carol@example.org\r\n"),
            _msg("bob@example.test", "Re: Lunch?", "Bcc: secret@example.org\r\n"),
        ]
        for i, data in enumerate(msgs):
            if i == 1:  # through deliver(), with a real summary
                await store.deliver(Delivery(data=data, summary=summarize(data), user_ids=(u.id,)))
            else:  # through append(), with an unusable summary (re-scanned)
                await store.append(inbox.id, data, b"S")

        async def find(*keys: tuple[str, str], mailbox: int = inbox.id) -> list[list[int]]:
            return await store.search_envelope(mailbox, list(keys))

        assert await find(("from", "JÜRGEN"), ("from", "JURGEN@example"), ("from", "alice smith")) \
            == [[1], [1], [2]]
        assert await find(("subject", "GRÜSSE"), ("subject", "grüße"), ("subject", "report")) \
            == [[1], [1], [2]]
        assert await find(("to", "team:"), ("to", "b@y.org"), ("cc", "CAROL"), ("bcc", "secret")) \
            == [[2], [2], [2], [3]]
        assert await find(("cc", ""), ("subject", ""), ("to", "")) == [[2], [1, 2, 3], [2]]
        assert await find(("from", "nobody")) == [[]]
        assert await find() == []
        with pytest.raises(ValueError):
            await find(("body", "x"))
        # the texts follow the messages: COPY, MOVE, EXPUNGE, renaming INBOX
        assert await store.copy_messages(inbox.id, [1], arch.id) == [(1, 1)]
        assert await store.move_messages(inbox.id, [2], arch.id) == [(2, 2)]
        assert await find(("from", "example"), mailbox=arch.id) == [[1, 2]]
        assert await find(("from", "example")) == [[1, 3]]
        await store.expunge(arch.id, [1])
        assert await find(("from", "example"), mailbox=arch.id) == [[2]]
        assert await find(("from", "jürgen")) == [[1]]  # the original is untouched
        await store.rename_mailbox(u.id, "INBOX", "Old")
        old = await store.get_mailbox(u.id, "Old")
        assert await find(("from", "example"), mailbox=old.id) == [[1, 2]]
        assert await find(("from", "example")) == [[]]
        await store.delete_mailbox(u.id, "Old")
        assert await find(("from", ""), mailbox=old.id) == [[]]
        await store.remove_user(u.address)
        assert await find(("from", ""), mailbox=arch.id) == [[]]

    store_run(body)


def test_read_messages(store_run: Any) -> None:
    async def body(store: Any) -> None:
        from postroom.deliver import summarize
        from postroom.message import MessageSummary

        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        big = b"Subject: big\r\nFrom: a@example.test\r\n\r\n" + b"x" * 200_000 + b"\r\n"
        await store.append(inbox.id, MSG, summarize(MSG), FLAG_SEEN, ["$A"])
        await store.append(inbox.id, big, summarize(big))
        await store.append(inbox.id, MSG, b"not a summary")
        await store.expunge(inbox.id, [1])
        got = await store.read_messages(inbox.id, [3, 1, 2, 99])
        assert [c.meta.uid for c in got] == [2, 3]  # existing ones, in UID order
        assert all(c.summary is None and c.data is None for c in got)
        assert got[0].meta == (await store.get_messages(inbox.id, [2]))[0]
        both = await store.read_messages(inbox.id, [2, 3], summary=True, data=True)
        assert [c.data for c in both] == [big, MSG]
        assert MessageSummary.from_bytes(both[0].summary).size == len(big)
        assert both[1].summary == b"not a summary"
        heads = await store.read_messages(inbox.id, [2, 3], data=True, header_only=True)
        head_end = big.index(b"\r\n\r\n") + 4
        for c, full, end in ((heads[0], big, head_end), (heads[1], MSG, MSG.index(b"\r\n\r\n") + 4)):
            assert c.summary is None
            assert len(c.data) >= end and full.startswith(c.data)
        assert await store.read_messages(inbox.id, []) == []

    store_run(body)


def test_dkim_keys(store_run: Any) -> None:
    from postroom.store.api import AlreadyExists, DkimKey, NotFound

    async def body(store: Any) -> None:
        k1 = DkimKey("example.org", "a1", "ed25519", "PEM1", "v=DKIM1; k=ed25519; p=AA", 100, 100)
        k2 = DkimKey("example.org", "b2", "rsa", "PEM2", "v=DKIM1; k=rsa; p=BB", 200, 300)
        k3 = DkimKey("other.org", "a1", "rsa", "PEM3", "v=DKIM1; k=rsa; p=CC", 50, 50)
        for k in (k2, k1, k3):
            await store.dkim_key_add(k)
        with pytest.raises(AlreadyExists):
            await store.dkim_key_add(k1)
        assert await store.dkim_keys("example.org") == [k1, k2]
        assert [k.domain for k in await store.dkim_keys()] == ["example.org", "example.org", "other.org"]
        await store.dkim_key_update("example.org", "a1", retire_at=400)
        await store.dkim_key_update("example.org", "b2", active_from=250)
        got = await store.dkim_keys("example.org")
        assert (got[0].retire_at, got[0].active_from, got[1].active_from) == (400, 100, 250)
        assert got[1].retire_at is None and got[0].private_key == "PEM1"
        await store.dkim_key_remove("example.org", "a1")
        assert [k.selector for k in await store.dkim_keys("example.org")] == ["b2"]
        with pytest.raises(NotFound):
            await store.dkim_key_remove("example.org", "a1")
        with pytest.raises(NotFound):
            await store.dkim_key_update("example.org", "zz", retire_at=1)
def test_user_admin_flag(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        assert (await store.get_user(u.address)).admin is False
        await store.set_user_admin(u.address, True)
        assert (await store.get_user(u.address)).admin is True
        assert (await store.get_user_by_id(u.id)).admin is True
        assert [x.admin for x in await store.list_users()] == [True]
        await store.set_user_admin(u.address, False)
        assert (await store.get_user(u.address)).admin is False
        with pytest.raises(NotFound):
            await store.set_user_admin("nobody@example.test", True)

    store_run(body)


def test_api_tokens(store_run: Any) -> None:
    async def body(store: Any) -> None:
        t = await store.add_api_token("ci", "d1")
        assert t.name == "ci" and t.created > 0
        with pytest.raises(AlreadyExists):
            await store.add_api_token("ci", "d2")
        await store.add_api_token("backup", "d3")
        assert [x.name for x in await store.list_api_tokens()] == ["backup", "ci"]
        assert (await store.find_api_token("d1")).name == "ci"
        assert await store.find_api_token("nope") is None
        assert await store.remove_api_token("ci") is True
        assert await store.remove_api_token("ci") is False
        assert await store.find_api_token("d1") is None

    store_run(body)


def test_app_passwords(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        v = await _user(store, "bob@example.test")
        p1 = await store.add_app_password(u.id, "phone", "a1")
        p2 = await store.add_app_password(u.id, "laptop", "a2")
        await store.add_app_password(v.id, "phone", "b1")
        assert [p.name for p in await store.list_app_passwords(u.id)] == ["phone", "laptop"]
        assert (await store.find_app_password(u.id, "a2")).id == p2.id
        assert await store.find_app_password(u.id, "b1") is None  # another user's
        assert await store.remove_app_password(v.id, p1.id) is False  # not bob's to revoke
        assert await store.remove_app_password(u.id, p1.id) is True
        assert await store.find_app_password(u.id, "a1") is None
        with pytest.raises(NotFound):
            await store.add_app_password(9999, "x", "c")
        await store.remove_user(u.address)  # a removed user's passwords go with it
        assert await store.list_app_passwords(u.id) == []

    store_run(body)


def test_dmarc_rows_aggregate(store_run: Any) -> None:
    from postroom.store.api import DmarcRow

    async def body(store: Any) -> None:
        row = DmarcRow(86400, "example.org", "example.org", "192.0.2.1", "example.org", "none",
                       "pass", "fail", "example.org/s1/pass", "example.org/mfrom/softfail", "",
                       "p=none", "mailto:r@example.org")
        other_day = DmarcRow(**{**_fields(row), "period": 2 * 86400})
        await store.dmarc_add([row, row])
        await store.dmarc_add([row, other_day])
        pending = await store.dmarc_pending(2 * 86400)
        assert len(pending) == 1 and pending[0].count == 3 and pending[0].rua == "mailto:r@example.org"
        assert len(await store.dmarc_pending(3 * 86400)) == 2
        assert await store.dmarc_delete("example.org", 86400) == 1
        assert [r.period for r in await store.dmarc_pending(10**9)] == [2 * 86400]

    store_run(body)


def test_web_sessions(store_run: Any) -> None:
    async def body(store: Any) -> None:
        import time

        u = await _user(store)
        now = int(time.time())
        await store.add_web_session("s1", u.id, now + 3600)
        await store.add_web_session("s2", u.id, now + 3600)
        s = await store.get_web_session("s1")
        assert s.user_id == u.id and s.expires == now + 3600
        assert await store.remove_web_sessions(digest="s1") == 1
        assert await store.get_web_session("s1") is None
        await store.add_web_session("old", u.id, now - 1)
        await store.add_web_session("s3", u.id, now + 60)  # adding forgets expired ones
        assert await store.get_web_session("old") is None
        assert await store.remove_web_sessions(user_id=u.id) == 2
        assert await store.get_web_session("s2") is None

    store_run(body)


def test_dmarc_delete_queues_the_report_once(store_run: Any) -> None:
    """The report is queued in the transaction that deletes its rows, and only if there
    were rows: a second sender of the same day queues nothing."""
    from postroom.store.api import Delivery, DmarcRow, NewQueueEntry, QueueRecipient

    def report(qid: str) -> Delivery:
        return Delivery(data=b"Subject: report\r\n\r\nx\r\n", summary=b"", queue=NewQueueEntry(
            qid=qid, sender="postmaster@example.net",
            recipients=(QueueRecipient("dmarc@example.org", notify="NEVER"),),
        ))

    async def body(store: Any) -> None:
        row = DmarcRow(86400, "example.org", "example.org", "192.0.2.1", "example.org", "none",
                       "pass", "fail", "", "example.org/mfrom/pass", "", "p=none",
                       "mailto:dmarc@example.org")
        await store.dmarc_add([row, DmarcRow(**{**_fields(row), "source_ip": "192.0.2.2"})])
        assert await store.dmarc_delete("example.org", 86400, report=report("Q1")) == 2
        assert await store.dmarc_delete("example.org", 86400, report=report("Q2")) == 0
        queued = await store.queue_list()
        assert [q.qid for q in queued] == ["Q1"]
        assert [r.notify for r in queued[0].recipients] == ["NEVER"]
        assert await store.read_blob(queued[0].blob_id) == b"Subject: report\r\n\r\nx\r\n"
        assert await store.dmarc_pending(10**9) == []

    store_run(body)


def _fields(row: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}


# -- quota (RFC 9208) ---------------------------------------------------------------------


def test_quota_usage_is_maintained_by_every_write(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        other = await _user(store, "bob@example.test")
        inbox = await store.get_mailbox(u.id, "INBOX")
        arch = await store.get_mailbox(u.id, "Archive")
        bob_inbox = await store.get_mailbox(other.id, "INBOX")
        q = await store.get_quota(u.id)
        assert (q.storage_used, q.messages_used, q.storage_limit, q.messages_limit) == (0, 0, None, None)
        await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id, other.id)))
        await store.append(inbox.id, MSG, b"S")
        await store.append_many(arch.id, [NewMessage(MSG, b"S"), NewMessage(MSG * 2, b"S")])
        q = await store.get_quota(u.id)
        assert (q.storage_used, q.messages_used) == (5 * len(MSG), 4)
        await store.copy_messages(inbox.id, [1, 2], arch.id)
        assert (await store.get_quota(u.id)).messages_used == 6
        await store.move_messages(arch.id, [3], inbox.id)  # within one user: no change
        assert (await store.get_quota(u.id)).storage_used == 7 * len(MSG)
        await store.move_messages(inbox.id, [1], bob_inbox.id)  # to another user
        assert (await store.get_quota(u.id)).storage_used == 6 * len(MSG)
        assert (await store.get_quota(other.id)).messages_used == 2
        await store.expunge(arch.id, [1, 2])
        assert (await store.get_quota(u.id)).storage_used == 3 * len(MSG)
        await store.create_mailbox(u.id, "Old")
        old = await store.get_mailbox(u.id, "Old")
        await store.copy_messages(inbox.id, [2], old.id)
        await store.delete_mailbox(u.id, "Old")
        q = await store.get_quota(u.id)
        assert (q.storage_used, q.messages_used) == (3 * len(MSG), 3)
        assert set(await store.list_quotas()) == {u.id, other.id}
def test_delivery_log_bounded(store_run: Any) -> None:
    async def body(store: Any) -> None:
        from postroom.store.api import DeliveryLogEntry

        def entry(i: int) -> DeliveryLogEntry:
            return DeliveryLogEntry(
                time=1000 + i, direction="in", qid=f"q{i}", sender="a@x.test",
                recipient="b@y.test", result="accepted", detail="250",
            )

        await store.append_delivery_log([entry(i) for i in range(5)], keep=100)
        await store.append_delivery_log([entry(i) for i in range(5, 12)], keep=8)
        got = await store.list_delivery_log(100)
        assert [e.qid for e in got] == [f"q{i}" for i in range(11, 3, -1)]
        assert got[0].time == 1011 and got[0].detail == "250"
        older = await store.list_delivery_log(3, before_id=got[2].id)
        assert [e.qid for e in older] == ["q8", "q7", "q6"]

    store_run(body)


def test_quota_limits_refuse_writes_atomically(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        other = await _user(store, "bob@example.test")
        inbox = await store.get_mailbox(u.id, "INBOX")
        q = await store.set_quota("alice@example.test", 3 * len(MSG), None)
        assert q.storage_limit == 3 * len(MSG) and q.allows(3 * len(MSG)) and not q.allows(3 * len(MSG) + 1)
        with pytest.raises(NotFound):
            await store.set_quota("nobody@example.test", 1, None)
        await store.append(inbox.id, MSG, b"S")
        # MULTIAPPEND over quota stores nothing at all
        with pytest.raises(OverQuota):
            await store.append_many(inbox.id, [NewMessage(MSG, b"S")] * 3)
        assert [m.uid for m in await store.list_messages(inbox.id)] == [1]
        uv, uids = await store.append_many(inbox.id, [NewMessage(MSG, b"S", FLAG_SEEN, ("$a",))] * 2)
        assert uids == [2, 3] and uv == inbox.uidvalidity
        assert (await store.get_quota(u.id)).exceeded
        with pytest.raises(OverQuota):
            await store.append(inbox.id, MSG, b"S")
        with pytest.raises(OverQuota):
            await store.copy_messages(inbox.id, [1], (await store.get_mailbox(u.id, "Archive")).id)
        # delivery with enforce_quota skips only the users who are full
        r = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id, other.id),
                                         enforce_quota=True))
        assert r.over_quota == (u.id,) and len(r.placed) == 1
        r = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id,), enforce_quota=True))
        assert r.over_quota == (u.id,) and r.placed == []
        junk = await store.get_mailbox(u.id, "Junk")  # explicit mailboxes count too
        r = await store.deliver(Delivery(data=MSG, summary=b"S", mailbox_ids=(junk.id,),
                                         enforce_quota=True))
        assert r.over_quota == (u.id,) and r.placed == []
        # without enforce_quota (e.g. bounces) it is stored anyway
        r = await store.deliver(Delivery(data=MSG, summary=b"S", user_ids=(u.id,)))
        assert len(r.placed) == 1
        await store.set_quota("alice@example.test", None, 4)
        q = await store.get_quota(u.id)
        assert q.storage_limit is None and q.messages_limit == 4 and q.exceeded

    store_run(body)


def test_append_many_flags_and_notification(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        seen: list[MailboxChange] = []
        store.changes.subscribe(inbox.id, seen.append)
        _, uids = await store.append_many(inbox.id, [
            NewMessage(MSG, b"S", FLAG_SEEN, ("$x",), 1_000_000), NewMessage(MSG + b"x\r\n", b"S"),
        ])
        msgs = await store.list_messages(inbox.id)
        assert [m.uid for m in msgs] == uids == [1, 2]
        assert msgs[0].flags == FLAG_SEEN and msgs[0].keywords == ("$x",)
        assert msgs[0].internaldate == 1_000_000 and msgs[1].size == len(MSG) + 3
        assert len(seen) == 1
        with pytest.raises(NotFound):
            await store.append_many(99999, [NewMessage(MSG, b"S")])

    store_run(body)


def test_flag_change_mask_and_copy_mask(store_run: Any) -> None:
    async def body(store: Any) -> None:
        u = await _user(store)
        inbox = await store.get_mailbox(u.id, "INBOX")
        arch = await store.get_mailbox(u.id, "Archive")
        await store.append(inbox.id, MSG, b"S", FLAG_SEEN | FLAG_DELETED, ["$k"])
        # replace, but only \Seen may change: \Deleted and keywords stay
        r = await store.store_flags(inbox.id, [1], FlagChange("replace", FLAG_FLAGGED, ("$j",),
                                                             mask=FLAG_SEEN, keywords_allowed=False))
        (m,) = r.changed
        assert m.flags == FLAG_DELETED and m.keywords == ("$k",)
        r = await store.store_flags(inbox.id, [1], FlagChange("add", FLAG_FLAGGED, mask=FLAG_SEEN))
        assert r.changed == []
        await store.copy_messages(inbox.id, [1], arch.id, flag_mask=FLAG_SEEN, keywords=False)
        (c,) = await store.list_messages(arch.id)
        assert c.flags == 0 and c.keywords == ()
        await store.move_messages(inbox.id, [1], arch.id, flag_mask=FLAG_DELETED)
        moved = [x for x in await store.list_messages(arch.id) if x.uid == 2][0]
        assert moved.flags == FLAG_DELETED and moved.keywords == ("$k",)

    store_run(body)


# -- ACL (RFC 4314) ---------------------------------------------------------------------


def test_acl_entries_and_shared_mailboxes(store_run: Any) -> None:
    async def body(store: Any) -> None:
        alice = await _user(store)
        bob = await _user(store, "bob@example.test")
        inbox = await store.get_mailbox(alice.id, "INBOX")
        arch = await store.get_mailbox(alice.id, "Archive")
        assert await store.get_acl(inbox.id) == []
        await store.set_acl(inbox.id, "bob@example.test", "rl")
        await store.set_acl(arch.id, "anyone", "lrs")
        await store.set_acl(arch.id, "bob@example.test", "wtt")
        assert await store.get_acl(inbox.id) == [("bob@example.test", "lr")]
        assert await store.acl_rights(arch.id, ["bob@example.test", "anyone"]) == "lrswt"
        assert await store.acl_rights(arch.id, []) == ""
        shared = await store.shared_mailboxes(bob.id, ["bob@example.test", "anyone"])
        assert [(x.owner, x.mailbox.name, x.rights) for x in shared] == [
            ("alice@example.test", "Archive", "lrswt"), ("alice@example.test", "INBOX", "lr"),
        ]
        assert await store.shared_mailboxes(alice.id, ["alice@example.test", "anyone"]) == []
        # a child inherits the parent's ACL; a rename keeps it; an empty right set removes
        await store.create_mailbox(alice.id, "Archive/2024")
        child = await store.get_mailbox(alice.id, "Archive/2024")
        assert dict(await store.get_acl(child.id)) == {"anyone": "lrs", "bob@example.test": "wt"}
        await store.rename_mailbox(alice.id, "Archive/2024", "Archive/Y2024")
        assert len(await store.get_acl(child.id)) == 2
        await store.set_acl(inbox.id, "bob@example.test", "")
        assert await store.get_acl(inbox.id) == []
        # deleting the mailbox or the user named in an entry removes the entries
        await store.delete_mailbox(alice.id, "Archive/Y2024")
        with pytest.raises(NotFound):
            await store.get_acl(child.id)
        with pytest.raises(NotFound):
            await store.set_acl(child.id, "anyone", "l")
        await store.remove_user("bob@example.test")
        assert await store.get_acl(arch.id) == [("anyone", "lrs")]

    store_run(body)


# -- METADATA (RFC 5464) ---------------------------------------------------------------


def test_metadata_private_shared_and_limits(store_run: Any) -> None:
    async def body(store: Any) -> None:
        alice = await _user(store)
        bob = await _user(store, "bob@example.test")
        inbox = await store.get_mailbox(alice.id, "INBOX")
        await store.set_metadata(alice.id, inbox.id, [("/private/comment", b"mine"),
                                                      ("/shared/comment", b"ours")], 10)
        await store.set_metadata(bob.id, inbox.id, [("/private/comment", b"bob's")], 10)
        assert await store.get_metadata(alice.id, inbox.id) == {
            "/private/comment": b"mine", "/shared/comment": b"ours"}
        assert await store.get_metadata(bob.id, inbox.id) == {
            "/private/comment": b"bob's", "/shared/comment": b"ours"}
        await store.set_metadata(alice.id, 0, [("/private/vendor/x/y", b"\x00bin")], 10)
        assert await store.get_metadata(alice.id, 0) == {"/private/vendor/x/y": b"\x00bin"}
        assert await store.get_metadata(bob.id, 0) == {}
        # all or nothing: the third entry is over the limit of 3, none is stored
        with pytest.raises(TooMany):
            await store.set_metadata(alice.id, inbox.id, [("/private/a", b"1"), ("/private/b", b"2")], 3)
        assert len(await store.get_metadata(alice.id, inbox.id)) == 2
        # replacing and removing never count as new entries
        await store.set_metadata(alice.id, inbox.id, [("/private/comment", b"new"),
                                                      ("/shared/comment", None)], 1)
        assert await store.get_metadata(alice.id, inbox.id) == {"/private/comment": b"new"}
        with pytest.raises(NotFound):
            await store.get_metadata(alice.id, 99999)
        # entries follow a rename and go with the mailbox
        await store.create_mailbox(alice.id, "Notes")
        notes = await store.get_mailbox(alice.id, "Notes")
        await store.set_metadata(alice.id, notes.id, [("/shared/comment", b"n")], 10)
        await store.rename_mailbox(alice.id, "Notes", "Notes2")
        assert await store.get_metadata(alice.id, notes.id) == {"/shared/comment": b"n"}
        await store.delete_mailbox(alice.id, "Notes2")
        await store.create_mailbox(alice.id, "Notes2")
        again = await store.get_mailbox(alice.id, "Notes2")
        assert await store.get_metadata(alice.id, again.id) == {}

    store_run(body)


def test_metadata_bounded_per_user_across_mailboxes(store_run: Any) -> None:
    """``per_user`` (entries, octets) counts a user's "/private/" entries everywhere and
    the "/shared/" entries of the mailboxes they own, whoever set those; over it the call
    changes nothing (TooMany / TooLarge with the octets it could have set)."""

    async def body(store: Any) -> None:
        alice = await _user(store)
        bob = await _user(store, "bob@example.test")
        inbox = await store.get_mailbox(alice.id, "INBOX")
        await store.create_mailbox(alice.id, "Notes")
        notes = await store.get_mailbox(alice.id, "Notes")
        bound = (4, 100)
        await store.set_metadata(alice.id, inbox.id, [("/private/a", b"x" * 10)], 10, bound)
        await store.set_metadata(alice.id, notes.id, [("/shared/b", b"x" * 10)], 10, bound)
        await store.set_metadata(alice.id, 0, [("/private/c", b"x" * 10)], 10, bound)
        # bob's private entry on alice's mailbox is bob's; bob's shared one there is alice's
        await store.set_metadata(bob.id, inbox.id, [("/private/z", b"x" * 90)], 10, bound)
        await store.set_metadata(bob.id, inbox.id, [("/shared/d", b"x" * 10)], 10, bound)
        with pytest.raises(TooMany):  # a fifth entry of alice's, in another mailbox
            await store.set_metadata(alice.id, notes.id, [("/private/e", b"1")], 10, bound)
        with pytest.raises(TooLarge) as info:  # 40 octets used: 60 left
            await store.set_metadata(alice.id, inbox.id, [("/private/a", b"x" * 71)], 10, bound)
        assert info.value.room == 70  # the 10 octets it replaces are free for it
        assert (await store.get_metadata(alice.id, inbox.id))["/private/a"] == b"x" * 10
        await store.set_metadata(alice.id, inbox.id, [("/private/a", b"x" * 70)], 10, bound)
        # removing frees room; a call that removes only never fails
        await store.set_metadata(alice.id, 0, [("/private/c", None)], 10, (1, 1))
        await store.set_metadata(alice.id, notes.id, [("/private/e", b"1")], 10, bound)
        assert len(await store.get_metadata(alice.id, notes.id)) == 2
        # without ``per_user`` only the per-mailbox bound applies
        await store.set_metadata(alice.id, notes.id, [("/private/f", b"x" * 500)], 10)

    store_run(body)


def test_change_kinds_reach_account_listeners(store_run: Any) -> None:
    async def body(store: Any) -> None:
        alice = await _user(store)
        inbox = await store.get_mailbox(alice.id, "INBOX")
        account: list[MailboxChange] = []
        mailbox: list[MailboxChange] = []
        store.changes.subscribe_user(alice.id, account.append)
        store.changes.subscribe(inbox.id, mailbox.append)
        await store.create_mailbox(alice.id, "New")
        await store.set_subscribed(alice.id, "New", True)
        await store.set_metadata(alice.id, inbox.id, [("/private/comment", b"x")], 10)
        await store.append(inbox.id, MSG, b"S")
        await store.set_acl(inbox.id, "anyone", "l")
        kinds = [c.kind for c in account]
        assert kinds == ["mailboxes", "subscriptions", "metadata", "messages", "mailboxes"]
        assert [c.kind for c in mailbox] == ["messages"]
        store.changes.unsubscribe_user(alice.id, account.append)
        await store.append(inbox.id, MSG, b"S")
        assert len(account) == 5

    store_run(body)


# -- URLAUTH (RFC 4467) -------------------------------------------------------------------


def test_urlauth_keys(store_run: Any) -> None:
    async def body(store: Any) -> None:
        alice = await _user(store)
        bob = await _user(store, "bob@example.test")
        inbox = await store.get_mailbox(alice.id, "INBOX")
        arch = await store.get_mailbox(alice.id, "Archive")
        assert await store.urlauth_key(inbox.id, create=False) is None
        key = await store.urlauth_key(inbox.id)
        assert len(key) >= 16 and await store.urlauth_key(inbox.id) == key
        other = await store.urlauth_key(arch.id)
        assert other != key
        await store.reset_urlauth_keys(bob.id, inbox.id)  # not bob's mailbox: no effect
        assert await store.urlauth_key(inbox.id, create=False) == key
        await store.reset_urlauth_keys(alice.id, inbox.id)
        assert await store.urlauth_key(inbox.id, create=False) is None
        assert await store.urlauth_key(arch.id, create=False) == other
        await store.reset_urlauth_keys(alice.id)
        assert await store.urlauth_key(arch.id, create=False) is None
        assert await store.urlauth_key(inbox.id) != key
def test_queue_stats(store_run: Any) -> None:
    async def body(store: Any) -> None:
        stats = await store.queue_stats()
        assert (stats.messages, stats.oldest) == (0, None)
        for qid in ("Q1", "Q2"):
            await store.deliver(
                Delivery(
                    data=MSG, summary=b"",
                    queue=NewQueueEntry(qid=qid, sender="a@example.test",
                                        recipients=(QueueRecipient("x@remote.test"),)),
                )
            )
        stats = await store.queue_stats()
        assert stats.messages == 2 and stats.oldest is not None
        assert stats.oldest == min(q.created for q in await store.queue_list())


def test_import_messages_remembers_keys(store_run: Any) -> None:
    async def body(store: Any) -> None:
        from postroom.deliver import summarize
        from postroom.store.api import ImportedMessage, NewMessage, OverQuota

        u = await _user(store)
        bob = await _user(store, "bob@example.test")
        inbox = await store.get_mailbox(u.id, "INBOX")
        seen: list[MailboxChange] = []
        store.changes.subscribe(inbox.id, seen.append)
        other = b"From: b@example.test\r\nSubject: two\r\n\r\nbye\r\n"

        def item(key: str, data: bytes, **kw: Any) -> ImportedMessage:
            return ImportedMessage(key, NewMessage(data, summarize(data), **kw))

        first = [
            item("7:1", MSG, flags=FLAG_SEEN | FLAG_FLAGGED, keywords=("$Label1", "$Label1", "x"),
                 internaldate=1_000_000_000),
            item("7:2", other),
        ]
        assert await store.import_messages(inbox.id, "imap://h/INBOX", first) == [1, 2]
        assert seen and seen[-1].mailbox_id == inbox.id
        msgs = await store.list_messages(inbox.id)
        assert [(m.uid, m.flags, m.keywords) for m in msgs] == [
            (1, FLAG_SEEN | FLAG_FLAGGED, ("$Label1", "x")), (2, 0, ())]
        assert msgs[0].internaldate == 1_000_000_000 and msgs[1].internaldate > 1_600_000_000
        assert (await store.read_blobs([msgs[1].blob_id]))[msgs[1].blob_id] == other
        # Found by SEARCH like any APPENDed message.
        assert await store.search_envelope(inbox.id, [("subject", "two")]) == [[2]]
        assert await store.imported_keys(u.id, "imap://h/INBOX") == {"7:1", "7:2"}
        assert await store.imported_keys(u.id, "imap://h/Sent") == set()
        assert await store.imported_keys(bob.id, "imap://h/INBOX") == set()
        # A second run skips what is remembered, even in another mailbox of the same user.
        trash = await store.get_mailbox(u.id, "Trash")
        again = await store.import_messages(trash.id, "imap://h/INBOX", [item("7:2", other), item("7:3", MSG)])
        assert again == [0, 1]
        assert len(await store.list_messages(trash.id)) == 1
        assert len(await store.list_messages(inbox.id)) == 2
        # Same key under another origin, or for another user, is a different message.
        bob_inbox = await store.get_mailbox(bob.id, "INBOX")
        assert await store.import_messages(bob_inbox.id, "imap://h/INBOX", [item("7:1", MSG)]) == [1]
        assert await store.import_messages(inbox.id, "mbox:/x", [item("7:1", MSG)]) == [3]
        assert await store.import_messages(inbox.id, "mbox:/x", []) == []
        with pytest.raises(NotFound):
            await store.import_messages(999_999, "mbox:/x", [item("k", MSG)])
        # Imports count against the quota like APPEND: over it, nothing of the batch is
        # stored and no key is remembered.
        used = await store.get_quota(u.id)
        assert used.messages_used == 4 and used.storage_used == 3 * len(MSG) + len(other)
        await store.set_quota("alice@example.test", None, 5)
        with pytest.raises(OverQuota):
            await store.import_messages(inbox.id, "q", [item("a", MSG), item("b", MSG)])
        assert await store.imported_keys(u.id, "q") == set()
        assert await store.import_messages(inbox.id, "q", [item("a", MSG)]) == [4]
        # The record goes with the user.
        await store.remove_user("alice@example.test")
        again_user = await _user(store)
        assert await store.imported_keys(again_user.id, "imap://h/INBOX") == set()

    store_run(body)


def test_tlsrpt_rows_aggregate_and_report_once(store_run: Any) -> None:
    """Counts add up per (day, domain, policy, failure); a policy string of any length is
    one key; the report is queued with the rows' deletion, once."""
    from postroom.store.api import Delivery, NewQueueEntry, QueueRecipient, TlsResultRow

    long_policy = "version: STSv1\nmode: enforce\n" + "\n".join(f"mx: mx{i}.example.org" for i in range(400))
    ok = TlsResultRow(86400, "example.org", "sts", long_policy, "*.example.org")
    bad = TlsResultRow(86400, "example.org", "sts", long_policy, "*.example.org", "certificate-expired",
                       "192.0.2.1", "mx1.example.org", "198.51.100.1", "expired", 2)
    other_policy = TlsResultRow(86400, "example.org", "no-policy-found", "", "")
    tomorrow = TlsResultRow(2 * 86400, "example.org", "no-policy-found", "", "")

    def report(qid: str) -> Delivery:
        return Delivery(data=b"Subject: tlsrpt\r\n\r\nx\r\n", summary=b"", queue=NewQueueEntry(
            qid=qid, sender="postmaster@example.net",
            recipients=(QueueRecipient("tls@example.org", notify="NEVER"),),
        ))

    async def body(store: Any) -> None:
        await store.tlsrpt_add([ok, ok, bad])
        await store.tlsrpt_add([ok, bad, other_policy, tomorrow])
        pending = await store.tlsrpt_pending(2 * 86400)
        counts = {(r.policy_type, r.result_type): r.count for r in pending}
        assert counts == {("sts", ""): 3, ("sts", "certificate-expired"): 4, ("no-policy-found", ""): 1}
        failure = next(r for r in pending if r.result_type)
        assert failure == TlsResultRow(**{**_fields(bad), "count": 4})
        assert next(r for r in pending if r.policy_type == "sts").policy_string == long_policy
        assert len(await store.tlsrpt_pending(3 * 86400)) == 4
        assert await store.tlsrpt_delete("example.org", 86400, report=report("T1")) == 3
        assert await store.tlsrpt_delete("example.org", 86400, report=report("T2")) == 0
        assert [q.qid for q in await store.queue_list()] == ["T1"]
        assert [r.period for r in await store.tlsrpt_pending(10**9)] == [2 * 86400]
        assert await store.tlsrpt_delete("example.org", 2 * 86400) == 1

    store_run(body)


def test_mta_sts_policies_kept_replaced_and_pruned(store_run: Any) -> None:
    from postroom.store.api import StsPolicyRow

    a = StsPolicyRow("example.org", "id1", "enforce", ("mx1.example.org", "*.example.org"), 86400, 1000, 87400)
    b = StsPolicyRow("example.net", "x", "none", (), 600, 1000, 1600)

    async def body(store: Any) -> None:
        assert await store.sts_policy("example.org") is None
        await store.sts_policy_put(a)
        await store.sts_policy_put(b)
        assert await store.sts_policy("example.org") == a
        assert await store.sts_policy("example.net") == b
        newer = StsPolicyRow("example.org", "id2", "testing", ("mx2.example.org",), 300, 2000, 2300)
        await store.sts_policy_put(newer)
        assert await store.sts_policy("example.org") == newer
        assert await store.sts_policies_prune(1600) == 1  # b expired at 1600
        assert await store.sts_policy("example.net") is None
        assert await store.sts_policy("example.org") == newer

    store_run(body)


def test_tls_reports_received(store_run: Any) -> None:
    from postroom.store.api import TlsReport

    def report(org: str, rid: str, received: int, domains: str) -> TlsReport:
        return TlsReport(0, received, org, rid, 86400, 2 * 86400 - 1, domains, 10, 1, '{"x": 1}')

    async def body(store: Any) -> None:
        first = await store.tls_report_add(report("Google Inc.", "r1", 100, "example.org"))
        second = await store.tls_report_add(report("Other", "r1", 200, "a_b.example,example.net"))
        assert first is not None and second is not None and first != second
        assert await store.tls_report_add(report("Google Inc.", "r1", 300, "example.org")) is None
        listed = await store.tls_reports()
        assert [r.id for r in listed] == [second, first]  # newest first
        assert listed[1] == TlsReport(first, 100, "Google Inc.", "r1", 86400, 2 * 86400 - 1, "example.org",
                                      10, 1, '{"x": 1}')
        assert [r.id for r in await store.tls_reports(limit=1)] == [second]
        assert [r.id for r in await store.tls_reports(domain="example.net")] == [second]
        assert [r.id for r in await store.tls_reports(domain="example.org")] == [first]
        assert await store.tls_reports(domain="example") == []  # whole names only
        assert await store.tls_reports(domain="a%b.example") == []  # LIKE patterns are escaped
        assert [r.id for r in await store.tls_reports(domain="a_b.example")] == [second]

    store_run(body)
