"""QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA.

One quota root per user, covering every mailbox the user owns. A user's own root is
named "" (RFC 9208 4.2.2's example); another user's root, seen through a shared mailbox,
is named by that user's namespace, ``Shared/<owner>``. Resources: STORAGE (in units of
1024 octets, usage rounded up, limit rounded down) and MESSAGE; only limited resources
are listed (RFC 9208 4.2.1: "an empty list means there are no administrative resource
limits"). Usage comes from the counters the store keeps per user.

Rights (RFC 9208 6): GETQUOTA of one's own root needs none; another user's root and
GETQUOTAROOT of a shared mailbox need "r" on a mailbox of that owner.

SETQUOTA is refused (``NO [NOPERM]``, and QUOTASET is not advertised): quotas are the
administrator's, set with ``postroom user quota`` (docs/operations.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.net.imap import access
from postroom.proto.imap import responses
from postroom.proto.imap.commands import GetQuota, GetQuotaRoot, SetQuota
from postroom.proto.imap.grammar import ImapPeerError
from postroom.store.api import Quota

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

CAPABILITIES = ("QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE")  # RFC 9208 3.1.1
TEXT_SETQUOTA = "Quotas are set by the administrator (postroom user quota)"


def resources(q: Quota) -> list[tuple[str, int, int]]:
    """(resource, usage, limit) for every limited resource (RFC 9208 5.1, 5.2)."""
    out = []
    if q.storage_limit is not None:
        out.append(("STORAGE", (q.storage_used + 1023) // 1024, q.storage_limit // 1024))
    if q.messages_limit is not None:
        out.append(("MESSAGE", q.messages_used, q.messages_limit))
    return out


def _root_of(owner: str, user_address: str) -> str:
    return "" if owner == user_address else f"{access.SHARED_PREFIX}/{owner}"


async def _quota_of_root(s: ImapSession, root: str, tag: str) -> Quota:
    user = s.user
    assert user is not None
    if root == "":
        return await s.store.get_quota(user.id)
    owner_address, rest = access.split_shared(root + "/")
    if rest or not owner_address or not root.startswith(access.SHARED_PREFIX + "/"):
        raise ImapPeerError("No such quota root", status="NO", code=responses.NONEXISTENT, tag=tag)
    for x in await access.shared_for(s):
        if x.owner == owner_address and "r" in x.rights:
            return await s.store.get_quota(x.mailbox.user_id)
    raise ImapPeerError("No such quota root", status="NO", code=responses.NONEXISTENT, tag=tag)


async def getquota(s: ImapSession, cmd: GetQuota) -> bytes:
    q = await _quota_of_root(s, cmd.root, cmd.tag)
    s.write(responses.quota(cmd.root, resources(q)))
    return responses.ok(cmd.tag, "GETQUOTA completed")


async def getquotaroot(s: ImapSession, cmd: GetQuotaRoot) -> bytes:
    user = s.user
    assert user is not None
    if access.is_shared(cmd.mailbox):
        ref = await access.require(s, cmd.mailbox, "r", cmd.tag)
        root = _root_of(ref.owner, user.address)
        q = await s.store.get_quota(ref.owner_id)
    else:
        # RFC 9208 4.1.2: the mailbox need not exist (which root would apply).
        root, q = "", await s.store.get_quota(user.id)
    s.write(responses.quotaroot(cmd.mailbox, [root], utf8=s.utf8))
    s.write(responses.quota(root, resources(q)))
    return responses.ok(cmd.tag, "GETQUOTAROOT completed")


async def setquota(s: ImapSession, cmd: SetQuota) -> bytes:
    raise ImapPeerError(TEXT_SETQUOTA, status="NO", code=responses.NOPERM, tag=cmd.tag)


HANDLERS = {GetQuota: getquota, GetQuotaRoot: getquotaroot, SetQuota: setquota}
