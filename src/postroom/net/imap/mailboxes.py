"""CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, NAMESPACE.

Mailbox names are names in the store, never paths: the parser has already decoded them
(modified UTF-7, or UTF-8 after ENABLE IMAP4rev2 / UTF8=ACCEPT), normalised INBOX and
applied the name policy (``utf7.check_name``; ``check_new_name`` for CREATE and the
RENAME target: no empty, "." or ".." levels, no wildcards, no control characters). Every
query is scoped by the logged-in user's id, so one user can never name another's
mailbox, except through the other users' namespace ``Shared/<owner>/...`` where the ACL
decides (``access``; RFC 4314 4: CREATE needs "k" on the parent, DELETE "x", RENAME "x"
and "k", STATUS "r"; LIST shows what has "l"). Store errors map to the RFC 5530 response
codes clients act on: ALREADYEXISTS, NONEXISTENT, HASCHILDREN, CANNOT, USEATTR, NOPERM.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from postroom.net import budget
from postroom.net.imap import access
from postroom.net.imap.listing import (
    Matcher,
    canonical_pattern,
    list_entries,
    lsub_entries,
    names_to_match,
)
from postroom.proto.imap import responses
from postroom.proto.imap.commands import (
    Create,
    Delete,
    List,
    Lsub,
    Namespace,
    Rename,
    Status,
    Subscribe,
    Unsubscribe,
)
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.utf7 import DELIMITER, INBOX
from postroom.store.api import AlreadyExists, Conflict, Mailbox, NotFound, StoreError, User

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession


def _no(tag: str, text: str, code: str | None = None) -> ImapPeerError:
    return ImapPeerError(text, status="NO", code=code, tag=tag)


def _user(s: ImapSession) -> User:
    assert s.user is not None
    return s.user


async def _shared_target(s: ImapSession, name: str, tag: str) -> tuple[int, str]:
    """(owner id, owner's name) for creating ``name`` in another user's namespace: RFC
    4314 4 asks for "k" on the nearest existing parent; a top-level name there (or one
    under "Shared" itself) has no parent to grant it."""
    owner_address, local = access.split_shared(name)
    parent = local
    while DELIMITER in parent:
        parent = parent.rpartition(DELIMITER)[0]
        ref = await access.resolve(s, access.shared_name(owner_address, parent))
        if ref is not None:
            if not ref.may("k"):
                raise access.denied(ref, tag)
            return ref.owner_id, local
    raise _no(tag, "Cannot create mailboxes there", responses.NOPERM)


async def create(s: ImapSession, cmd: Create) -> bytes:
    # RFC 9051 6.3.4, RFC 6154 3 (USE)
    user = _user(s)
    if cmd.mailbox == INBOX:
        raise _no(cmd.tag, "INBOX always exists", responses.ALREADYEXISTS)
    if len(cmd.special_use) > 1:
        raise _no(cmd.tag, "Only one special-use attribute per mailbox", responses.USEATTR)
    use = cmd.special_use[0] if cmd.special_use else None
    owner_id, name = user.id, cmd.mailbox
    if access.is_shared(cmd.mailbox):
        if await access.resolve(s, cmd.mailbox) is not None:
            raise _no(cmd.tag, "Mailbox already exists", responses.ALREADYEXISTS)
        owner_id, name = await _shared_target(s, cmd.mailbox, cmd.tag)
    try:
        await s.store.create_mailbox(owner_id, name, use)
    except AlreadyExists:
        raise _no(cmd.tag, "Mailbox already exists", responses.ALREADYEXISTS) from None
    except Conflict as exc:
        raise _no(cmd.tag, str(exc), responses.USEATTR) from None
    return responses.ok(cmd.tag, "CREATE completed")


async def delete(s: ImapSession, cmd: Delete) -> bytes:
    # RFC 9051 6.3.5: INBOX cannot be deleted; a mailbox with children is refused here
    # (the store keeps no \Noselect placeholders).
    user = _user(s)
    if cmd.mailbox == INBOX:
        raise _no(cmd.tag, "INBOX cannot be deleted", responses.CANNOT)
    owner_id, name = user.id, cmd.mailbox
    if access.is_shared(cmd.mailbox):
        ref = await access.require(s, cmd.mailbox, "x", cmd.tag)  # RFC 4314 4
        owner_id, name = ref.owner_id, ref.mailbox.name
        if name == INBOX:
            raise _no(cmd.tag, "INBOX cannot be deleted", responses.CANNOT)
    view = s.selected
    if view is not None and view.name == cmd.mailbox:
        s.unselect()  # deleting the selected mailbox closes it first
        s.write(responses.untagged("OK", "The selected mailbox is now closed", responses.CLOSED))
    try:
        await s.store.delete_mailbox(owner_id, name)
    except NotFound:
        raise _no(cmd.tag, "No such mailbox", responses.NONEXISTENT) from None
    except Conflict:
        raise _no(cmd.tag, "Delete the child mailboxes first", responses.HASCHILDREN) from None
    return responses.ok(cmd.tag, "DELETE completed")


async def rename(s: ImapSession, cmd: Rename) -> bytes:
    # RFC 9051 6.3.6; renaming INBOX moves its messages (done by the store)
    user = _user(s)
    if cmd.new_name == INBOX:
        raise _no(cmd.tag, "Cannot rename to INBOX", responses.ALREADYEXISTS)
    if cmd.mailbox == cmd.new_name:
        raise _no(cmd.tag, "Source and destination are the same", responses.ALREADYEXISTS)
    owner_id, old, new = user.id, cmd.mailbox, cmd.new_name
    if access.is_shared(cmd.mailbox) or access.is_shared(cmd.new_name):
        # RFC 4314 4: "x" on the mailbox, "k" on the new parent; never across owners.
        ref = await access.require(s, cmd.mailbox, "x", cmd.tag)
        if access.is_shared(cmd.mailbox) != access.is_shared(cmd.new_name):
            raise _no(cmd.tag, "Cannot rename to another user's mailboxes", responses.CANNOT)
        target_owner, new = await _shared_target(s, cmd.new_name, cmd.tag)
        if target_owner != ref.owner_id:
            raise _no(cmd.tag, "Cannot rename to another user's mailboxes", responses.CANNOT)
        owner_id, old = ref.owner_id, ref.mailbox.name
    try:
        await s.store.rename_mailbox(owner_id, old, new)
    except NotFound:
        raise _no(cmd.tag, "No such mailbox", responses.NONEXISTENT) from None
    except AlreadyExists:
        raise _no(cmd.tag, "Mailbox already exists", responses.ALREADYEXISTS) from None
    except Conflict as exc:
        raise _no(cmd.tag, str(exc), responses.CANNOT) from None
    except StoreError as exc:
        raise _no(cmd.tag, str(exc) or "Cannot rename", responses.CANNOT) from None
    view = s.selected
    if view is not None and view.name == cmd.mailbox and cmd.mailbox != INBOX:
        view.name = cmd.new_name
    return responses.ok(cmd.tag, "RENAME completed")


async def subscribe(s: ImapSession, cmd: Subscribe) -> bytes:
    # RFC 9051 6.3.7: subscribing to a mailbox that does not exist is allowed.
    await s.store.set_subscribed(_user(s).id, cmd.mailbox, True)
    return responses.ok(cmd.tag, "SUBSCRIBE completed")


async def unsubscribe(s: ImapSession, cmd: Unsubscribe) -> bytes:
    # Idempotent, like SUBSCRIBE: clients that clean up twice should not see errors.
    await s.store.set_subscribed(_user(s).id, cmd.mailbox, False)
    return responses.ok(cmd.tag, "UNSUBSCRIBE completed")


async def list_command(s: ImapSession, cmd: List) -> bytes:
    user = _user(s)
    utf8 = s.utf8
    if not cmd.extended and cmd.patterns == ("",):
        # RFC 9051 6.3.9: an empty pattern asks for the delimiter and the root.
        s.write(responses.list_response("", ("\\Noselect",), utf8=utf8))
        return responses.ok(cmd.tag, "LIST completed")
    patterns = [canonical_pattern(cmd.reference, p) for p in cmd.patterns]
    mailboxes = await s.store.list_mailboxes(user.id)
    # Other users' mailboxes this user may see (RFC 4314 "l"), under Shared/<owner>/,
    # with Shared and Shared/<owner> as \Noselect levels (see access.py).
    noselect: set[str] = set()
    readable: set[str] = {mb.name for mb in mailboxes}
    if any(_may_reach_shared(p) for p in patterns):
        shared = await access.shared_for(s)
        visible = [access.visible(x) for x in shared]
        readable.update(v.name for v, x in zip(visible, shared, strict=True) if "r" in x.rights)
        noselect = access.placeholders([v.name for v in visible])
        mailboxes = [mb for mb in mailboxes if not access.is_shared(mb.name)] + visible + [
            Mailbox(0, 0, name, 0, 0, 0) for name in sorted(noselect)
        ]
    wants_subs = "SUBSCRIBED" in cmd.select_options or "SUBSCRIBED" in cmd.return_options
    subscriptions = await s.store.list_subscriptions(user.id) if wants_subs else []
    matched = await _matching(patterns, (mb.name for mb in mailboxes), subscriptions)
    entries = list_entries(
        mailboxes, subscriptions, patterns,
        select=cmd.select_options, returns=cmd.return_options, match=matched.__contains__,
    )
    by_name = {mb.name: mb for mb in mailboxes if mb.name in readable}
    status_items = cmd.status_items if "STATUS" in cmd.return_options else None
    for entry in entries:
        await budget.tick()
        if entry.name in noselect:
            entry.attributes.insert(0, "\\Noselect")
        s.write(responses.list_response(
            entry.name, entry.attributes, utf8=utf8, childinfo=entry.childinfo,
        ))
        mb = by_name.get(entry.name)
        if status_items and mb is not None:
            # RFC 5819: STATUS right after the LIST line of each selectable mailbox.
            s.write(await _status_line(s, mb, status_items))
        await s.maybe_flush()
    return responses.ok(cmd.tag, "LIST completed")


async def lsub(s: ImapSession, cmd: Lsub) -> bytes:
    user = _user(s)
    pattern = canonical_pattern(cmd.reference, cmd.pattern)
    if not pattern:
        s.write(responses.lsub("", ("\\Noselect",), utf8=s.utf8))
        return responses.ok(cmd.tag, "LSUB completed")
    subscriptions = await s.store.list_subscriptions(user.id)
    matched = await _matching([pattern], (), subscriptions)
    for entry in lsub_entries(subscriptions, pattern, matched.__contains__):
        s.write(responses.lsub(entry.name, entry.attributes, utf8=s.utf8))
    return responses.ok(cmd.tag, "LSUB completed")


async def _matching(patterns: list[str], mailboxes: Iterable[str],
                    subscriptions: Iterable[str]) -> set[str]:
    """The names that match, tested in slices: a user may have many thousands."""
    match = Matcher(patterns)
    found: set[str] = set()
    for name in names_to_match(mailboxes, subscriptions):
        await budget.tick()
        if match(name):
            found.add(name)
    return found


async def _status_line(s: ImapSession, mb: Mailbox, items: tuple[str, ...]) -> bytes:
    st = await s.store.mailbox_status(mb.id)
    values = {
        "MESSAGES": st.messages,
        "UIDNEXT": st.uidnext,
        "UIDVALIDITY": st.uidvalidity,
        "UNSEEN": st.unseen,
        "DELETED": st.deleted,  # RFC 9051 6.3.11
        "SIZE": st.size,  # RFC 8438
        "RECENT": st.recent,  # RFC 3501 only
        "HIGHESTMODSEQ": st.highestmodseq,  # RFC 7162 3.1.6
        "APPENDLIMIT": s.settings.limits.message_size,  # RFC 7889
        "DELETED-STORAGE": st.deleted_size,  # RFC 9208 4.1.4 (octets, like SIZE)
    }
    if "HIGHESTMODSEQ" in items:
        s.enable_condstore()  # RFC 7162 3.1: STATUS (HIGHESTMODSEQ) enables CONDSTORE
    return responses.status(mb.name, [(item, values[item]) for item in items], utf8=s.utf8)


async def status(s: ImapSession, cmd: Status) -> bytes:
    ref = await access.require(s, cmd.mailbox, "r", cmd.tag)  # RFC 4314 4
    mb = ref.mailbox
    if not ref.personal:
        mb = replace(mb, name=ref.name)
    s.write(await _status_line(s, mb, cmd.items))
    return responses.ok(cmd.tag, "STATUS completed")


async def namespace(s: ImapSession, cmd: Namespace) -> bytes:
    # RFC 2342 / RFC 9051 6.3.10: the personal namespace (no prefix) and the other users'
    # one, "Shared/<owner>/" (see access.py); delimiter "/" in both.
    other = ((access.SHARED_PREFIX + DELIMITER, DELIMITER),)
    s.write(responses.namespace((("", DELIMITER),), other, None, utf8=s.utf8))
    return responses.ok(cmd.tag, "NAMESPACE completed")


def _may_reach_shared(pattern: str) -> bool:
    """Can the LIST pattern match a name in the other users' namespace?"""
    head = pattern
    for wildcard in ("*", "%"):
        head = head.split(wildcard, 1)[0]
    prefix = access.SHARED_PREFIX
    return prefix.startswith(head) if len(head) < len(prefix) else head.startswith(prefix)


HANDLERS = {
    Create: create,
    Delete: delete,
    Rename: rename,
    Subscribe: subscribe,
    Unsubscribe: unsubscribe,
    List: list_command,
    Lsub: lsub,
    Status: status,
    Namespace: namespace,
}
