"""Small commands: CAPABILITY, NOOP, CHECK, LOGOUT, ID, ENABLE, COMPRESS.

NOOP and CHECK do nothing themselves: the session's post-command sync is what reports
new mail, flag changes and expunges (RFC 9051 6.1.2). ENABLE (RFC 5161) switches the
session's dialect: CONDSTORE and QRESYNC (RFC 7162), IMAP4rev2 (RFC 9051: no \\Recent,
ESEARCH answers, UTF-8 mailbox names) and UTF8=ACCEPT (RFC 6855).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from postroom import __version__, logs
from postroom.net.imap.compress import Deflate
from postroom.proto.imap import responses
from postroom.proto.imap.commands import (
    Capability,
    Check,
    Compress,
    Enable,
    Id,
    Logout,
    Noop,
)

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

log = logging.getLogger("postroom.imap")


async def capability(s: ImapSession, cmd: Capability) -> bytes:
    s.write(responses.capability(s.capabilities()))
    return responses.ok(cmd.tag, "CAPABILITY completed")


async def noop(s: ImapSession, cmd: Noop) -> bytes:
    return responses.ok(cmd.tag, "NOOP completed")


async def check(s: ImapSession, cmd: Check) -> bytes:
    return responses.ok(cmd.tag, "CHECK completed")


async def logout(s: ImapSession, cmd: Logout) -> bytes:
    # RFC 9051 6.1.3: BYE first, then the tagged OK, then close.
    s.write(responses.bye("Logging out"))
    s.closing = True
    s.unselect()
    return responses.ok(cmd.tag, "LOGOUT completed")


async def id_command(s: ImapSession, cmd: Id) -> bytes:
    # RFC 2971: log what the client says about itself, answer with our name only.
    if cmd.params:
        s.client_id = " ".join(f"{k}={v}" for k, v in cmd.params if v)[:200]
        logs.event(log, "imap_client_id", session=s.id, client_id=s.client_id)
    s.write(responses.id_response((("name", "postroom"), ("version", __version__))))
    return responses.ok(cmd.tag, "ID completed")


async def enable(s: ImapSession, cmd: Enable) -> bytes:
    enabled: list[str] = []
    for cap in cmd.capabilities:
        word = cap.upper()
        if word == "CONDSTORE" and not s.condstore:
            s.condstore = True
            enabled.append("CONDSTORE")
        elif word == "QRESYNC" and not s.qresync:
            # RFC 7162 3.2.3: QRESYNC implies CONDSTORE.
            s.qresync = True
            s.condstore = True
            enabled.append("QRESYNC")
        elif word == "IMAP4REV2" and not s.rev2:
            s.rev2 = True
            s.utf8 = s.rx.utf8 = True
            enabled.append("IMAP4rev2")
        elif word == "UTF8=ACCEPT" and not s.utf8:
            s.utf8 = s.rx.utf8 = True
            enabled.append("UTF8=ACCEPT")
    s.write(responses.enabled(enabled))
    return responses.ok(cmd.tag, "ENABLE completed")


async def compress(s: ImapSession, cmd: Compress) -> bytes | None:
    # RFC 4978 3: the tagged OK is the last uncompressed data.
    if s.deflate is not None:
        return responses.no(cmd.tag, "Compression is already active", responses.COMPRESSIONACTIVE)
    s.write(responses.ok(cmd.tag, "DEFLATE active"))
    await s.flush()
    rest = s.rx.take_buffered()  # what the client sent right after: already compressed
    s.deflate = Deflate()
    if rest:
        data = s.deflate.decompress(rest)
        if data:
            s.rx.receive_data(data)
    return None


HANDLERS = {
    Capability: capability,
    Noop: noop,
    Check: check,
    Logout: logout,
    Id: id_command,
    Enable: enable,
    Compress: compress,
}
