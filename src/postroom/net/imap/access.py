"""Whose mailbox a name means, and what the session may do there (ACL, RFC 4314).

Names are personal (the logged-in user's own mailboxes, all rights) or live in the other
users' namespace (RFC 2342), ``Shared/<owner address>/<owner's mailbox name>``: another
user's mailbox that an ACL entry opens to this user (``Shared/bob@example.org/INBOX``).
NAMESPACE announces that prefix; LIST shows ``Shared`` and ``Shared/<owner>`` as
``\\Noselect`` levels above the visible mailboxes. "Shared" is therefore reserved: no
personal mailbox may be created or renamed under it.

Rights (RFC 4314 2.1) of the user on another user's mailbox are the union of the ACL
entries for their address, ``anyone`` and ``authenticated``. A mailbox on which the user
has no right at all does not exist for them; one they may not list ("l") gives
``NO [NONEXISTENT]`` to whatever they lack (RFC 4314 6: no existence leak), one they may
list gives ``NO [NOPERM]``. Rights are read once per command (or once per SELECT for the
selected mailbox, as RFC 4314 5.1.1 allows).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postroom.proto.imap import responses, utf7
from postroom.proto.imap.grammar import ImapPeerError
from postroom.store.api import (
    ALL_RIGHTS,
    ANYONE,
    AUTHENTICATED,
    FLAG_DELETED,
    FLAG_SEEN,
    ALL_FLAGS,
    Mailbox,
    SharedMailbox,
    User,
)

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

SHARED_PREFIX = "Shared"  # RFC 2342 other users' namespace: Shared/<owner>/<mailbox>
TEXT_NOPERM = "Permission denied"
TEXT_NONEXISTENT = "No such mailbox"


@dataclass(frozen=True, slots=True)
class MailboxRef:
    """A mailbox as one session sees it: the store's row, the name the client uses, the
    owner and the session's rights there."""

    mailbox: Mailbox
    name: str  # as the client names it
    owner_id: int
    owner: str  # the owner's address
    rights: str

    @property
    def personal(self) -> bool:
        return self.rights == ALL_RIGHTS and not self.name.startswith(SHARED_PREFIX + "/")

    def may(self, rights: str) -> bool:
        return all(r in self.rights for r in rights)


def identifiers(user: User) -> tuple[str, ...]:
    """The ACL identifiers that match ``user`` (RFC 4314 2)."""
    return (user.address, ANYONE, AUTHENTICATED)


def is_shared(name: str) -> bool:
    """Does ``name`` lie in the other users' namespace (or is it its root)?"""
    return name == SHARED_PREFIX or name.startswith(SHARED_PREFIX + utf7.DELIMITER)


def split_shared(name: str) -> tuple[str, str]:
    """``Shared/bob@x/a/b`` → ("bob@x", "a/b"); the parts are "" where missing. INBOX is
    case-insensitive in the owner's part as it is in a personal name (RFC 9051 5.1)."""
    rest = name[len(SHARED_PREFIX) + 1 :] if name.startswith(SHARED_PREFIX + "/") else ""
    owner, _, local = rest.partition(utf7.DELIMITER)
    return owner.lower(), utf7.normalize_inbox(local) if local else ""


def shared_name(owner: str, local: str) -> str:
    return f"{SHARED_PREFIX}/{owner}/{local}"


def visible(shared: SharedMailbox) -> Mailbox:
    """The store's row of a shared mailbox, renamed as the client sees it."""
    return dataclasses.replace(shared.mailbox, name=shared_name(shared.owner, shared.mailbox.name))


def with_virtual_rights(rights: str) -> str:
    """RFC 4314 2.1.1: "c" accompanies "k" and "d" any of "x", "t", "e" in responses."""
    out = rights
    if "k" in rights:
        out += "c"
    if any(r in rights for r in "xte"):
        out += "d"
    return out


def flag_mask(rights: str) -> tuple[int, bool]:
    """(system flags, keywords?) the rights let the user set (RFC 4314 4: \\Seen needs
    "s", \\Deleted "t", every other flag and keyword "w")."""
    mask = 0
    if "s" in rights:
        mask |= FLAG_SEEN
    if "t" in rights:
        mask |= FLAG_DELETED
    if "w" in rights:
        mask |= ALL_FLAGS & ~(FLAG_SEEN | FLAG_DELETED)
    return mask, "w" in rights


def read_only(rights: str) -> bool:
    """RFC 4314 5.2: READ-ONLY when none of "i", "e" and the shared flag rights ("s",
    "w", "t": every flag is shared here) is granted."""
    return not any(r in rights for r in "iestw")


def _user(s: ImapSession) -> User:
    assert s.user is not None
    return s.user


async def resolve(s: ImapSession, name: str) -> MailboxRef | None:
    """The mailbox ``name`` means for this session, or None (it does not exist for it)."""
    user = _user(s)
    if not is_shared(name):
        mb = await s.store.get_mailbox(user.id, name)
        if mb is None:
            return None
        return MailboxRef(mb, name, user.id, user.address, ALL_RIGHTS)
    owner_address, local = split_shared(name)
    if not local or owner_address == user.address:
        return None
    owner = await s.store.get_user(owner_address)
    if owner is None:
        return None
    mb = await s.store.get_mailbox(owner.id, local)
    if mb is None:
        return None
    rights = await s.store.acl_rights(mb.id, identifiers(user))
    if not rights:
        return None
    return MailboxRef(mb, shared_name(owner.address, mb.name), owner.id, owner.address, rights)


def no_such_mailbox(tag: str, code: str = responses.NONEXISTENT) -> ImapPeerError:
    return ImapPeerError(TEXT_NONEXISTENT, status="NO", code=code, tag=tag)


def denied(ref: MailboxRef, tag: str) -> ImapPeerError:
    """The refusal for a missing right: NONEXISTENT when the user may not even see the
    mailbox (RFC 4314 6), NOPERM otherwise."""
    if "l" not in ref.rights:
        return no_such_mailbox(tag)
    return ImapPeerError(TEXT_NOPERM, status="NO", code=responses.NOPERM, tag=tag)


async def require(
    s: ImapSession, name: str, rights: str, tag: str, *, code: str = responses.NONEXISTENT
) -> MailboxRef:
    """Resolve ``name`` and insist on ``rights`` (all of them); tagged NO otherwise.

    ``code`` is the response code for a mailbox that does not exist (TRYCREATE for
    APPEND, COPY and MOVE targets)."""
    ref = await resolve(s, name)
    if ref is None:
        raise no_such_mailbox(tag, code)
    if not ref.may(rights):
        raise denied(ref, tag)
    return ref


async def shared_for(s: ImapSession) -> list[SharedMailbox]:
    """Other users' mailboxes this user may list ("l"), for LIST and NOTIFY."""
    user = _user(s)
    found = await s.store.shared_mailboxes(user.id, identifiers(user))
    return [x for x in found if "l" in x.rights]


def placeholders(names: list[str]) -> set[str]:
    """The ``\\Noselect`` levels above shared mailbox names: "Shared", "Shared/<owner>"."""
    out: set[str] = set()
    for name in names:
        owner, _ = split_shared(name)
        out.add(SHARED_PREFIX)
        out.add(f"{SHARED_PREFIX}/{owner}")
    return out
