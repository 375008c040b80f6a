"""METADATA (RFC 5464): GETMETADATA and SETMETADATA on mailboxes and on the server.

Entries are kept by the store: "/shared/..." ones once per mailbox, "/private/..." ones per
user (RFC 5464 3.3). Names are case-insensitive and stored lower-cased; they come back
lower-cased. Values are octets (a value with NUL goes out as literal8).

Rights: a mailbox's entries, shared or private, need "l" and one of "r", "s", "w",
"i", "p" on it (RFC 5464 3.3 with ACL), which an owner always has. Server entries:
everybody reads them; "/private/" ones everybody may set, "/shared/" ones only the
administrator (``NO [NOPERM]``; RFC 5464 3.3 allows restricting them), and postroom has
no IMAP administrator.

Limits (configuration.md): a value may have at most ``limits.metadata_size`` octets
(``NO [METADATA MAXSIZE n]``); a mailbox (or the server) carries at most
``limits.metadata_entries`` entries visible to one user (``NO [METADATA TOOMANY]``). Per
user, across mailboxes (RFC 5464 4.3 lets a server bound what one user stores): at most
``limits.metadata_entries_per_user`` entries (``NO [METADATA TOOMANY]``) and
``limits.metadata_size_per_user`` octets of values (``NO [METADATA MAXSIZE n]``, n: what
the command could still have set). A user is charged with their "/private/" entries and
the "/shared/" entries of the mailboxes they own (set by them or by someone they shared
the mailbox with). A SETMETADATA that fails changes nothing (RFC 5464 4.3).

GETMETADATA answers one METADATA response with every requested entry; an entry that
does not exist is listed with NIL (as Dovecot and Cyrus do). DEPTH 1 / infinity add the
existing entries below each requested one; MAXSIZE leaves out longer values and reports
the longest of them in ``OK [METADATA LONGENTRIES n]`` (RFC 5464 4.2.1, 4.2.2).
Unsolicited METADATA responses are sent through NOTIFY (MailboxMetadataChange,
ServerMetadataChange), not through ENABLE METADATA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.net.imap import access
from postroom.proto.imap import responses
from postroom.proto.imap.commands import GetMetadata, SetMetadata
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.responses_ext import code_metadata, metadata_values
from postroom.store.api import TooLarge, TooMany

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

CAPABILITIES = ("METADATA",)  # mailbox and server entries (RFC 5464 1)


def _no(tag: str, text: str, code: str | None = None) -> ImapPeerError:
    return ImapPeerError(text, status="NO", code=code, tag=tag)


async def target(s: ImapSession, mailbox: str, tag: str) -> tuple[int, str]:
    """(mailbox id, 0 for the server; the name to answer with)."""
    if not mailbox:
        return 0, ""
    ref = await access.resolve(s, mailbox)
    if ref is None:
        raise access.no_such_mailbox(tag)
    if "l" not in ref.rights or not any(r in ref.rights for r in "rswip"):
        raise access.denied(ref, tag)
    return ref.mailbox.id, ref.name


def _below(name: str, wanted: str, depth: int) -> bool:
    if not name.startswith(wanted + "/"):
        return False
    return depth == -1 or name.count("/") == wanted.count("/") + 1


async def getmetadata(s: ImapSession, cmd: GetMetadata) -> bytes:
    user = s.user
    assert user is not None
    mailbox_id, shown = await target(s, cmd.mailbox, cmd.tag)
    stored = await s.store.get_metadata(user.id, mailbox_id)
    found: dict[str, bytes | None] = {}
    for wanted in cmd.entries:
        found[wanted] = stored.get(wanted)
        if cmd.depth:
            for name in sorted(stored):
                if _below(name, wanted, cmd.depth):
                    found[name] = stored[name]
    longest = 0
    out: list[tuple[str, bytes | None]] = []
    for name, value in found.items():
        if value is not None and cmd.maxsize is not None and len(value) > cmd.maxsize:
            longest = max(longest, len(value))
            continue
        out.append((name, value))
    if out:
        s.write(metadata_values(shown, out, utf8=s.utf8))
    code = code_metadata("LONGENTRIES", longest) if longest else None
    return responses.ok(cmd.tag, "GETMETADATA completed", code)


async def setmetadata(s: ImapSession, cmd: SetMetadata) -> bytes:
    user = s.user
    assert user is not None
    mailbox_id, _ = await target(s, cmd.mailbox, cmd.tag)
    limits = s.settings.limits
    if mailbox_id == 0 and any(name.startswith("/shared/") for name, _ in cmd.entries):
        raise _no(cmd.tag, "Server entries under /shared are set by the administrator",
                  responses.NOPERM)
    for _, value in cmd.entries:
        if value is not None and len(value) > limits.metadata_size:
            raise _no(cmd.tag, "Value too large", code_metadata("MAXSIZE", limits.metadata_size))
    try:
        await s.store.set_metadata(
            user.id, mailbox_id, cmd.entries, limits.metadata_entries,
            (limits.metadata_entries_per_user, limits.metadata_size_per_user))
    except TooMany:
        raise _no(cmd.tag, "Too many entries", code_metadata("TOOMANY")) from None
    except TooLarge as exc:  # the user's values together (RFC 5464 4.3)
        raise _no(cmd.tag, "Too much metadata for this user",
                  code_metadata("MAXSIZE", exc.room)) from None
    return responses.ok(cmd.tag, "SETMETADATA completed")


HANDLERS = {GetMetadata: getmetadata, SetMetadata: setmetadata}
