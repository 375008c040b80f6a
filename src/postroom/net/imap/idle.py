"""IDLE (RFC 2177, RFC 9051 6.3.13): push updates until the client says DONE.

The session sends ``+ idling``, switches the receiver to its IDLE mode and sends whatever
is pending. From then on it waits on the socket only: the selected mailbox's change
listener interrupts that wait (``Connection.interrupt``), the session syncs and flushes
(expunges may be reported: no command using sequence numbers is in progress), and waits
again. Silence is not a timeout in IDLE; every ``KEEPALIVE`` seconds the client gets
``* OK Still here`` instead (see :mod:`.session`). A shutdown ends IDLE with ``* BYE``.
Nothing is allocated per wait, so thousands of idle clients cost little.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.proto.imap import responses
from postroom.proto.imap.commands import Idle
from postroom.proto.imap.receiver import IdleDone

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession


async def idle(s: ImapSession, cmd: Idle) -> bytes:
    from postroom.net.imap.session import Closing

    s.write(responses.continuation("idling"))
    s.rx.expect_idle_done(cmd.tag)
    s.idling = True
    try:
        await s.unsolicited(expunge=True)
        event = await s.next_event(raise_errors=True)
    finally:
        s.idling = False
    if not isinstance(event, IdleDone):
        raise Closing()  # end of stream while idling
    return responses.ok(cmd.tag, "IDLE terminated")


HANDLERS = {Idle: idle}
