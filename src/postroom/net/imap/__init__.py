"""The IMAP server shell: :class:`ImapHandler` serves the ``imap`` and ``imaps`` roles.

One module per command group (``auth``, ``basic``, ``mailboxes``, ``select``, ``fetch``,
``store_cmd``, ``search``/``thread``, ``copy``, ``idle``), the session loop and update
delivery in ``session``, the selected-mailbox view in ``selected``. The protocol itself
(parsing, serialising) lives in :mod:`postroom.proto.imap`; this package only executes.
"""

from postroom.net.imap.session import ImapHandler, ImapSession

__all__ = ["ImapHandler", "ImapSession"]
