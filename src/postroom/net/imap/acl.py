"""ACL (RFC 4314): SETACL, DELETEACL, GETACL, LISTRIGHTS, MYRIGHTS.

Decisions (docs/protocols.md):

* Identifiers are user addresses, ``anyone`` and ``authenticated`` (both: every logged-in
  user; postroom has no anonymous IMAP). An ACL entry for an address that is not a user
  here is refused (``NO``), so typos do not silently grant nothing. Negative rights
  ("-fred", RFC 4314 2) are not supported (``NO [CANNOT]``).
* The owner of a mailbox always has every right and cannot be given an entry; GETACL
  lists the owner first with all rights, as RFC 4314's examples do.
* No right is tied to another: LISTRIGHTS offers each one alone. The obsolete "c" and
  "d" (RFC 4314 2.1.1) mean "k" and "xte" on input, and accompany them on output.
* Rights are checked on every command (``access``) and read once per SELECT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.net.imap import access
from postroom.proto.imap import responses
from postroom.proto.imap.commands import DeleteAcl, GetAcl, ListRights, MyRights, SetAcl
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap import responses_ext
from postroom.store.api import ALL_RIGHTS, ANYONE, AUTHENTICATED

if TYPE_CHECKING:
    from postroom.net.imap.access import MailboxRef
    from postroom.net.imap.session import ImapSession

CAPABILITIES = ("ACL", "RIGHTS=texk")  # RFC 4314 5.1.1: the rights beyond RFC 2086
_EXPAND = {"c": "k", "d": "xte"}  # RFC 4314 2.1.1, "create" = k, "delete" = e t x


def _no(tag: str, text: str, code: str | None = None) -> ImapPeerError:
    return ImapPeerError(text, status="NO", code=code, tag=tag)


def expand(rights: str) -> str:
    """Virtual rights replaced by their members, canonical order."""
    letters = "".join(_EXPAND.get(r, r) for r in rights)
    return "".join(r for r in ALL_RIGHTS if r in letters)


async def _identifier(s: ImapSession, ref: MailboxRef, identifier: str, tag: str) -> str:
    """The stored form of an identifier an entry may be set for."""
    if identifier.startswith("-"):
        raise _no(tag, "Negative rights are not supported", responses.CANNOT)
    if identifier.lower() in (ANYONE, AUTHENTICATED):
        return identifier.lower()
    local, at, domain = identifier.rpartition("@")
    address = f"{local}@{domain.lower()}" if at else identifier
    if address == ref.owner:
        raise _no(tag, "The owner always has every right", responses.CANNOT)
    if not at or await s.store.get_user(address) is None:
        raise _no(tag, "No such user", responses.NONEXISTENT)
    return address


async def setacl(s: ImapSession, cmd: SetAcl) -> bytes:
    ref = await access.require(s, cmd.mailbox, "a", cmd.tag)
    identifier = await _identifier(s, ref, cmd.identifier, cmd.tag)
    rights = expand(cmd.rights)
    if cmd.mode:
        current = dict(await s.store.get_acl(ref.mailbox.id)).get(identifier, "")
        if cmd.mode == "+":
            rights = expand(current + rights)
        else:
            rights = "".join(r for r in current if r not in rights)
    await s.store.set_acl(ref.mailbox.id, identifier, rights)
    return responses.ok(cmd.tag, "SETACL completed")


async def deleteacl(s: ImapSession, cmd: DeleteAcl) -> bytes:
    ref = await access.require(s, cmd.mailbox, "a", cmd.tag)
    identifier = await _identifier(s, ref, cmd.identifier, cmd.tag)
    await s.store.set_acl(ref.mailbox.id, identifier, "")
    return responses.ok(cmd.tag, "DELETEACL completed")


async def getacl(s: ImapSession, cmd: GetAcl) -> bytes:
    ref = await access.require(s, cmd.mailbox, "a", cmd.tag)
    entries = [(ref.owner, access.with_virtual_rights(ALL_RIGHTS))]
    entries += [(i, access.with_virtual_rights(r)) for i, r in await s.store.get_acl(ref.mailbox.id)]
    s.write(responses_ext.acl(ref.name, entries, utf8=s.utf8))
    return responses.ok(cmd.tag, "GETACL completed")


async def listrights(s: ImapSession, cmd: ListRights) -> bytes:
    ref = await access.require(s, cmd.mailbox, "a", cmd.tag)
    local, at, domain = cmd.identifier.rpartition("@")
    if at and f"{local}@{domain.lower()}" == ref.owner:
        required, optional = access.with_virtual_rights(ALL_RIGHTS), []
    else:
        required, optional = "", list(access.with_virtual_rights(ALL_RIGHTS))
    # RFC 4314 3.4: the identifier comes back as the client wrote it.
    s.write(responses_ext.listrights(ref.name, cmd.identifier, required, optional, utf8=s.utf8))
    return responses.ok(cmd.tag, "LISTRIGHTS completed")


async def myrights_command(s: ImapSession, cmd: MyRights) -> bytes:
    ref = await access.resolve(s, cmd.mailbox)
    if ref is None:
        raise access.no_such_mailbox(cmd.tag)
    if not any(r in ref.rights for r in "lrikxa"):  # RFC 4314 4: "Any"
        raise access.denied(ref, cmd.tag)
    s.write(responses_ext.myrights(ref.name, access.with_virtual_rights(ref.rights), utf8=s.utf8))
    return responses.ok(cmd.tag, "MYRIGHTS completed")


HANDLERS = {
    SetAcl: setacl,
    DeleteAcl: deleteacl,
    GetAcl: getacl,
    ListRights: listrights,
    MyRights: myrights_command,
}
