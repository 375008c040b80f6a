"""NOTIFY (RFC 5465): events about other mailboxes, and about the selected one at any time.

Theory of operation
-------------------
``NOTIFY SET`` leaves a :class:`Notifications` on the session. It listens on the store's
account channel of the user (``ChangeHub.subscribe_user``: every change of the user's
own mailboxes, mailbox list, subscriptions and METADATA) and on each watched shared
mailbox, and keeps what it last told the client: the visible mailboxes by id (names),
the subscriptions, the STATUS values sent per mailbox, the METADATA entries per watched
mailbox. A listener only records what changed and wakes the session; the session then
calls :meth:`Notifications.flush` whenever it may talk:

* at the end of every command (after the selected mailbox's own updates);
* during IDLE (RFC 5465 4: IDLE sends exactly what NOTIFY asked for);
* between commands: NOTIFY lets the server talk "all the time" (RFC 5465 3.1), so a
  session waiting for the next command is woken, sends, and waits again. A command
  that is only half received is never interrupted.

What is sent (RFC 5465 5):

* MessageNew / MessageExpunge / FlagChange in a watched mailbox that is not selected: a
  STATUS with MESSAGES and UIDNEXT (new and expunged messages), UIDVALIDITY with
  HIGHESTMODSEQ (flags, once CONDSTORE is on) or UNSEEN (flags, without CONDSTORE), and
  HIGHESTMODSEQ with CONDSTORE; only when a value differs from what was last sent.
* In the selected mailbox (SELECTED / SELECTED-DELAYED): the usual EXISTS, FETCH FLAGS,
  EXPUNGE (not before a command allows it with SELECTED-DELAYED), and for new messages
  a FETCH of the attributes MessageNew asked for.
* MailboxName: a LIST for each created (or newly visible), deleted (``\\NonExistent``)
  and renamed (``OLDNAME``) mailbox the filter covers.
* SubscriptionChange: a LIST of the mailbox with ``\\Subscribed`` when it is subscribed.
* MailboxMetadataChange / ServerMetadataChange: ``* METADATA "mailbox" entry ...`` with
  the names of the entries that changed, appeared or disappeared.

Changes the session makes itself (CREATE, SUBSCRIBE, APPEND to another mailbox ...) are
absorbed silently after the command (RFC 5465 5: "SHOULD NOT notify the client if the
event is caused by this client"). Filters: PERSONAL is every mailbox of the user, INBOXES
just INBOX (the only mailbox postroom delivers into), SUBSCRIBED, SUBTREE and MAILBOXES
as written; shared mailboxes are covered by SUBSCRIBED, SUBTREE and MAILBOXES.

Decision: RFC 5465 makes MessageNew and MessageExpunge a pair (BAD otherwise); Dovecot
and its test suite accept either alone, and so does postroom.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from postroom.net.imap import access
from postroom.proto.imap import responses
from postroom.proto.imap.commands import EventGroup, Fetch, Notify
from postroom.proto.imap.fetch import BINARY, BODY_SECTION
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.responses_ext import metadata_names
from postroom.proto.imap.sequence import RangeSet, SequenceSet
from postroom.proto.imap.utf7 import DELIMITER, INBOX
from postroom.store.api import MAILBOXES, MESSAGES, METADATA, SUBSCRIPTIONS, MailboxChange

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

CAPABILITIES = ("NOTIFY",)
MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange"})
MAX_WATCHED = 2000  # mailboxes with message events; more: NO [NOTIFICATIONOVERFLOW]
# Commands whose own effects the client is not told about again (RFC 5465 5).
SELF_CAUSED = frozenset({
    "APPEND", "COPY", "MOVE", "UID COPY", "UID MOVE", "CREATE", "DELETE", "RENAME",
    "SUBSCRIBE", "UNSUBSCRIBE", "SETMETADATA", "SETACL", "DELETEACL",
})
_STATUS_ORDER = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ")


def _digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


@dataclass(slots=True)
class Notifications:
    """One session's NOTIFY state (see the module docstring)."""

    groups: tuple[EventGroup, ...]
    selected: EventGroup | None
    names: dict[int, str] = field(default_factory=dict)  # visible mailboxes by id
    owners: dict[int, int] = field(default_factory=dict)  # mailbox id -> owner id
    subscriptions: set[str] = field(default_factory=set)
    status: dict[int, dict[str, int]] = field(default_factory=dict)
    entries: dict[int, dict[str, bytes]] = field(default_factory=dict)  # name -> digest
    dirty: set[tuple[int, str]] = field(default_factory=set)  # (mailbox id, kind)
    listener: object = None
    shared: set[int] = field(default_factory=set)  # shared mailbox ids listened to

    # -- filters -------------------------------------------------------------------------
    def covers(self, group: EventGroup, name: str, user_id: int, owner_id: int) -> bool:
        f = group.filter
        if f == "PERSONAL":
            return owner_id == user_id
        if f == "INBOXES":
            return owner_id == user_id and name == INBOX
        if f == "SUBSCRIBED":
            return name in self.subscriptions
        if f == "SUBTREE":
            return any(name == m or name.startswith(m + DELIMITER) for m in group.mailboxes)
        if f == "MAILBOXES":
            return name in group.mailboxes
        return False

    def events_for(self, name: str, user_id: int, owner_id: int) -> set[str]:
        out: set[str] = set()
        for g in self.groups:
            if g is not self.selected and self.covers(g, name, user_id, owner_id):
                out |= g.events
        return out

    def server_events(self) -> set[str]:
        return {e for g in self.groups for e in g.events if e == "ServerMetadataChange"}


async def _visible(s: ImapSession) -> tuple[dict[int, str], dict[int, int]]:
    user = s.user
    assert user is not None
    names = {mb.id: mb.name for mb in await s.store.list_mailboxes(user.id)}
    owners = dict.fromkeys(names, user.id)
    for x in await access.shared_for(s):
        names[x.mailbox.id] = access.shared_name(x.owner, x.mailbox.name)
        owners[x.mailbox.id] = x.mailbox.user_id
    return names, owners


def _status_items(events: set[str], s: ImapSession, *, initial: bool) -> list[str]:
    items: set[str] = set()
    if initial:
        # RFC 5465 3.1: what NOTIFY SET STATUS must contain per event.
        if "MessageNew" in events:
            items |= {"MESSAGES", "UIDNEXT", "UIDVALIDITY"}
        if "MessageExpunge" in events:
            items.add("MESSAGES")
        if events & {"FlagChange", "AnnotationChange"}:
            items |= {"UIDVALIDITY", "HIGHESTMODSEQ"}
    else:
        if events & {"MessageNew", "MessageExpunge"}:
            items |= {"MESSAGES", "UIDNEXT"}
            if s.condstore:
                items.add("HIGHESTMODSEQ")  # RFC 5465 5.2, 5.3
        if events & {"FlagChange", "AnnotationChange"}:
            items |= {"UIDVALIDITY", "HIGHESTMODSEQ"} if s.condstore else {"UNSEEN"}
    return [i for i in _STATUS_ORDER if i in items]


async def _status_values(s: ImapSession, mailbox_id: int) -> dict[str, int]:
    st = await s.store.mailbox_status(mailbox_id)
    return {"MESSAGES": st.messages, "UIDNEXT": st.uidnext, "UIDVALIDITY": st.uidvalidity,
            "UNSEEN": st.unseen, "HIGHESTMODSEQ": st.highestmodseq}


async def _entries(s: ImapSession, mailbox_id: int) -> dict[str, bytes]:
    user = s.user
    assert user is not None
    return {k: _digest(v) for k, v in (await s.store.get_metadata(user.id, mailbox_id)).items()}


def _stop(s: ImapSession) -> None:
    n = s.notify
    if n is None:
        return
    user = s.user
    if n.listener is not None and user is not None:
        s.store.changes.unsubscribe_user(user.id, n.listener)  # type: ignore[arg-type]
        for mailbox_id in n.shared:
            s.store.changes.unsubscribe(mailbox_id, n.listener)  # type: ignore[arg-type]
    s.notify = None


async def notify(s: ImapSession, cmd: Notify) -> bytes:
    user = s.user
    assert user is not None
    _stop(s)
    if cmd.groups is None:  # NOTIFY NONE
        return responses.ok(cmd.tag, "NOTIFY completed")
    selected = next((g for g in cmd.groups if g.filter in ("SELECTED", "SELECTED-DELAYED")), None)
    n = Notifications(cmd.groups, selected)
    n.names, n.owners = await _visible(s)
    n.subscriptions = set(await s.store.list_subscriptions(user.id))
    watched = [i for i in n.names if n.events_for(n.names[i], user.id, n.owners[i]) & MESSAGE_EVENTS]
    if len(watched) > MAX_WATCHED:
        raise ImapPeerError("Too many mailboxes to watch", status="NO",
                            code="NOTIFICATIONOVERFLOW", tag=cmd.tag)
    view = s.selected
    for mailbox_id, name in n.names.items():
        events = n.events_for(name, user.id, n.owners[mailbox_id])
        if events & MESSAGE_EVENTS:
            values = await _status_values(s, mailbox_id)
            n.status[mailbox_id] = values
            if cmd.status and not (view is not None and view.mailbox_id == mailbox_id):
                # RFC 5465 3.1: STATUS before the tagged OK with the STATUS indicator.
                items = _status_items(events, s, initial=True)
                s.write(responses.status(name, [(i, values[i]) for i in items], utf8=s.utf8))
        if "MailboxMetadataChange" in events:
            n.entries[mailbox_id] = await _entries(s, mailbox_id)
    if n.server_events():
        n.entries[0] = await _entries(s, 0)

    def on_change(change: MailboxChange) -> None:
        n.dirty.add((change.mailbox_id, change.kind))
        if s.rx.buffered_size == 0:
            s.conn.interrupt()  # talk now if the session waits for a command

    n.listener = on_change
    s.store.changes.subscribe_user(user.id, on_change)
    for mailbox_id in watched:
        if n.owners[mailbox_id] != user.id:
            s.store.changes.subscribe(mailbox_id, on_change)
            n.shared.add(mailbox_id)
    s.notify = n
    return responses.ok(cmd.tag, "NOTIFY completed")  # the session's sync is the implicit NOOP


async def _retrack(s: ImapSession, n: Notifications) -> None:
    """After the mailbox list changed: start (or stop) keeping the STATUS values and the
    METADATA entries of the mailboxes the filters cover now."""
    user = s.user
    assert user is not None
    for mailbox_id in list(n.status):
        if mailbox_id not in n.names:
            del n.status[mailbox_id]
    for mailbox_id in list(n.entries):
        if mailbox_id and mailbox_id not in n.names:
            del n.entries[mailbox_id]
    for mailbox_id, name in n.names.items():
        events = n.events_for(name, user.id, n.owners[mailbox_id])
        if events & MESSAGE_EVENTS and mailbox_id not in n.status:
            n.status[mailbox_id] = await _status_values(s, mailbox_id)
            if n.owners[mailbox_id] != user.id and mailbox_id not in n.shared:
                s.store.changes.subscribe(mailbox_id, n.listener)  # type: ignore[arg-type]
                n.shared.add(mailbox_id)
        if "MailboxMetadataChange" in events and mailbox_id not in n.entries:
            n.entries[mailbox_id] = await _entries(s, mailbox_id)


async def absorb(s: ImapSession) -> None:
    """Take in the session's own changes without telling the client (RFC 5465 5)."""
    n = s.notify
    if n is None or not n.dirty:
        return
    dirty, n.dirty = n.dirty, set()
    user = s.user
    assert user is not None
    if any(kind in (MAILBOXES, SUBSCRIPTIONS) for _, kind in dirty):
        n.names, n.owners = await _visible(s)
        n.subscriptions = set(await s.store.list_subscriptions(user.id))
        await _retrack(s, n)
    for mailbox_id, kind in dirty:
        if kind == MESSAGES and mailbox_id in n.status:
            n.status[mailbox_id] = await _status_values(s, mailbox_id)
        elif kind == METADATA and mailbox_id in n.entries:
            n.entries[mailbox_id] = await _entries(s, mailbox_id)


def _attributes(name: str, names: set[str], subscribed: set[str], exists: bool) -> list[str]:
    attrs = []
    if not exists:
        attrs.append("\\NonExistent")
    else:
        has = any(other.startswith(name + DELIMITER) for other in names)
        attrs.append("\\HasChildren" if has else "\\HasNoChildren")
    if name in subscribed:
        attrs.append("\\Subscribed")
    return attrs


async def flush(s: ImapSession) -> None:
    """Send what changed since the last flush (see the module docstring)."""
    n = s.notify
    if n is None or not n.dirty:
        return
    user = s.user
    assert user is not None
    dirty, n.dirty = n.dirty, set()
    kinds = {kind for _, kind in dirty}
    utf8 = s.utf8
    w = s.write
    if MAILBOXES in kinds or SUBSCRIPTIONS in kinds:
        old_names, old_owners, old_subs = n.names, n.owners, n.subscriptions
        n.names, n.owners = await _visible(s)
        n.subscriptions = set(await s.store.list_subscriptions(user.id))
        all_names = set(n.names.values())

        def wants(event: str, name: str, owner: int) -> bool:
            return any(event in g.events and n.covers(g, name, user.id, owner)
                       for g in n.groups if g is not n.selected)

        if MAILBOXES in kinds:
            for mailbox_id, name in sorted(n.names.items(), key=lambda x: x[1]):
                old = old_names.get(mailbox_id)
                owner = n.owners[mailbox_id]
                if old == name or not (wants("MailboxName", name, owner) or
                                       old is not None and wants("MailboxName", old, owner)):
                    continue
                attrs = _attributes(name, all_names, n.subscriptions, True)
                w(responses.list_response(name, attrs, utf8=utf8, oldname=old))
            for mailbox_id, old in sorted(old_names.items(), key=lambda x: x[1]):
                if mailbox_id not in n.names and wants("MailboxName", old, old_owners[mailbox_id]):
                    w(responses.list_response(old, ("\\NonExistent",), utf8=utf8))
        await _retrack(s, n)
        if SUBSCRIPTIONS in kinds:
            by_name = {v: k for k, v in n.names.items()}
            for name in sorted(n.subscriptions ^ old_subs):
                found = by_name.get(name)
                owner = n.owners.get(found, user.id) if found is not None else user.id
                if wants("SubscriptionChange", name, owner):
                    attrs = _attributes(name, all_names, n.subscriptions, found is not None)
                    w(responses.list_response(name, attrs, utf8=utf8))
    view = s.selected
    for mailbox_id, kind in sorted(dirty):
        if kind == MESSAGES and mailbox_id in n.names and not (view and view.mailbox_id == mailbox_id):
            name = n.names[mailbox_id]
            events = n.events_for(name, user.id, n.owners[mailbox_id])
            items = _status_items(events, s, initial=False)
            if not items:
                continue
            values = await _status_values(s, mailbox_id)
            last = n.status.get(mailbox_id, {})
            n.status[mailbox_id] = values
            if any(values[i] != last.get(i) for i in items):
                w(responses.status(name, [(i, values[i]) for i in items], utf8=utf8))
        elif kind == METADATA and mailbox_id in n.entries:
            before = n.entries[mailbox_id]
            after = await _entries(s, mailbox_id)
            n.entries[mailbox_id] = after
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            if changed:
                w(metadata_names(n.names.get(mailbox_id, "") if mailbox_id else "", changed, utf8=utf8))


async def fetch_new(s: ImapSession, first_uid: int) -> None:
    """The MessageNew attributes of SELECTED for the messages from ``first_uid`` on."""
    n = s.notify
    view = s.selected
    if n is None or n.selected is None or not n.selected.fetch or view is None:
        return
    uids = [u for u in view.uids if u >= first_uid]
    if not uids:
        return
    from postroom.net.imap.fetch import fetch

    # RFC 5465 5.2: never set \Seen as a side effect; UID FETCH adds UID to each FETCH.
    atts = tuple(replace(a, peek=True) if a.kind in (BODY_SECTION, BINARY) else a
                 for a in n.selected.fetch)
    cmd = Fetch("*", True, SequenceSet(RangeSet.from_numbers(uids).ranges), atts)
    await fetch(s, cmd)  # writes the FETCH responses; its tagged answer is not sent


def expunges_now(s: ImapSession) -> bool:
    """May expunges of the selected mailbox be sent between commands (SELECTED)?"""
    n = s.notify
    return n is not None and n.selected is not None and n.selected.filter == "SELECTED" and (
        "MessageExpunge" in n.selected.events)


def stop(s: ImapSession) -> None:
    _stop(s)


HANDLERS = {Notify: notify}
