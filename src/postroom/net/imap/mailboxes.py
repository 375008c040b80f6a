"""CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, NAMESPACE.

Mailbox names are names in the store, never paths: the parser has already decoded them
(modified UTF-7, or UTF-8 after ENABLE IMAP4rev2 / UTF8=ACCEPT), normalised INBOX and
applied the name policy (``utf7.check_name``; ``check_new_name`` for CREATE and the
RENAME target: no empty, "." or ".." levels, no wildcards, no control characters). Every
query is scoped by the logged-in user's id, so one user can never name another's
mailbox. Store errors map to the RFC 5530 response codes clients act on: ALREADYEXISTS,
NONEXISTENT, HASCHILDREN, CANNOT, USEATTR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.net.imap.listing import canonical_pattern, list_entries, lsub_entries
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


async def create(s: ImapSession, cmd: Create) -> bytes:
    # RFC 9051 6.3.4, RFC 6154 3 (USE)
    user = _user(s)
    if cmd.mailbox == INBOX:
        raise _no(cmd.tag, "INBOX always exists", responses.ALREADYEXISTS)
    if len(cmd.special_use) > 1:
        raise _no(cmd.tag, "Only one special-use attribute per mailbox", responses.USEATTR)
    use = cmd.special_use[0] if cmd.special_use else None
    try:
        await s.store.create_mailbox(user.id, cmd.mailbox, use)
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
    view = s.selected
    if view is not None and view.name == cmd.mailbox:
        s.unselect()  # deleting the selected mailbox closes it first
        s.write(responses.untagged("OK", "The selected mailbox is now closed", responses.CLOSED))
    try:
        await s.store.delete_mailbox(user.id, cmd.mailbox)
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
    try:
        await s.store.rename_mailbox(user.id, cmd.mailbox, cmd.new_name)
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
    wants_subs = "SUBSCRIBED" in cmd.select_options or "SUBSCRIBED" in cmd.return_options
    subscriptions = await s.store.list_subscriptions(user.id) if wants_subs else []
    entries = list_entries(
        mailboxes, subscriptions, patterns,
        select=cmd.select_options, returns=cmd.return_options,
    )
    by_name = {mb.name: mb for mb in mailboxes}
    status_items = cmd.status_items if "STATUS" in cmd.return_options else None
    for entry in entries:
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
    for entry in lsub_entries(await s.store.list_subscriptions(user.id), pattern):
        s.write(responses.lsub(entry.name, entry.attributes, utf8=s.utf8))
    return responses.ok(cmd.tag, "LSUB completed")


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
    }
    if "HIGHESTMODSEQ" in items:
        s.enable_condstore()  # RFC 7162 3.1: STATUS (HIGHESTMODSEQ) enables CONDSTORE
    return responses.status(mb.name, [(item, values[item]) for item in items], utf8=s.utf8)


async def status(s: ImapSession, cmd: Status) -> bytes:
    user = _user(s)
    mb = await s.store.get_mailbox(user.id, cmd.mailbox)
    if mb is None:
        raise _no(cmd.tag, "No such mailbox", responses.NONEXISTENT)
    s.write(await _status_line(s, mb, cmd.items))
    return responses.ok(cmd.tag, "STATUS completed")


async def namespace(s: ImapSession, cmd: Namespace) -> bytes:
    # RFC 2342 / RFC 9051 6.3.10: one personal namespace, no prefix, delimiter "/".
    s.write(responses.namespace((("", DELIMITER),), None, None, utf8=s.utf8))
    return responses.ok(cmd.tag, "NAMESPACE completed")


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
