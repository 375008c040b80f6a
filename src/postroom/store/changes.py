"""In-process publish/subscribe of mailbox changes and queue wake-ups.

Backends call :meth:`LocalChangeHub.publish` after a commit (never before: a listener that
re-reads must see the change). Listeners are plain callables run on the event loop; they
must be quick (typically they set an ``asyncio.Event``). Only the sessions subscribed to a
mailbox are woken, so one delivery costs O(sessions of that mailbox), not O(all sessions).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from postroom.store.api import MAILBOXES, MESSAGES, ChangeListener, MailboxChange

log = logging.getLogger(__name__)


class LocalChangeHub:
    def __init__(self) -> None:
        self._mailbox: dict[int, list[ChangeListener]] = {}
        self._user: dict[int, list[ChangeListener]] = {}
        self._queue: list[Callable[[], None]] = []

    def subscribe(self, mailbox_id: int, listener: ChangeListener) -> None:
        self._mailbox.setdefault(mailbox_id, []).append(listener)

    def unsubscribe(self, mailbox_id: int, listener: ChangeListener) -> None:
        listeners = self._mailbox.get(mailbox_id)
        if listeners is None:
            return
        try:
            listeners.remove(listener)
        except ValueError:
            return
        if not listeners:
            del self._mailbox[mailbox_id]

    def subscribe_queue(self, listener: Callable[[], None]) -> None:
        self._queue.append(listener)

    def unsubscribe_queue(self, listener: Callable[[], None]) -> None:
        if listener in self._queue:
            self._queue.remove(listener)

    def subscribe_user(self, user_id: int, listener: ChangeListener) -> None:
        self._user.setdefault(user_id, []).append(listener)

    def unsubscribe_user(self, user_id: int, listener: ChangeListener) -> None:
        listeners = self._user.get(user_id)
        if listeners is None or listener not in listeners:
            return
        listeners.remove(listener)
        if not listeners:
            del self._user[user_id]

    def publish(self, change: MailboxChange) -> None:
        # Mailbox listeners (a selected mailbox) hear only message changes; account
        # listeners (NOTIFY, METADATA) hear every kind.
        targets: tuple[ChangeListener, ...] = ()
        if change.kind == MESSAGES:
            targets = tuple(self._mailbox.get(change.mailbox_id, ()))
        if self._user:
            targets += tuple(self._user.get(change.user_id, ()))
        for listener in targets:
            try:
                listener(change)
            except Exception:  # a broken listener must not stop the others
                log.exception("mailbox change listener failed")

    def publish_queue(self) -> None:
        for listener in tuple(self._queue):
            try:
                listener()
            except Exception:
                log.exception("queue listener failed")

    def wake_all(self) -> None:
        """Changes may have gone by unseen (another node's notifications were lost while
        the connection that carries them was down): every listener re-reads once, the
        queue scans, NOTIFY sessions re-list their mailboxes."""
        for mailbox_id in tuple(self._mailbox):
            self.publish(MailboxChange(mailbox_id=mailbox_id, user_id=0, modseq=0))
        for user_id in tuple(self._user):
            self.publish(MailboxChange(mailbox_id=0, user_id=user_id, modseq=0, kind=MAILBOXES))
        self.publish_queue()

    def listener_count(self, mailbox_id: int) -> int:
        return len(self._mailbox.get(mailbox_id, ()))

    def user_listener_count(self) -> int:
        return sum(len(v) for v in self._user.values())
