"""Publish/subscribe of mailbox changes and queue wake-ups, in this process and beyond.

Backends call :meth:`LocalChangeHub.publish` after a commit (never before: a listener that
re-reads must see the change). Listeners are plain callables run on the event loop; they
must be quick (typically they set an ``asyncio.Event``). Only the sessions subscribed to a
mailbox are woken, so one delivery costs O(sessions of that mailbox), not O(all sessions).
Mailbox listeners (a selected mailbox) hear only message changes; account listeners
(NOTIFY, METADATA: :meth:`subscribe_user`) hear every kind of change of the user.

Several processes (or nodes) sharing one store: the hub is given a :class:`ChangeRelay`
that carries what this process publishes to the others, and calls :meth:`receive` /
:meth:`receive_queue` with what they publish. The relay is told which mailboxes and which
users this process watches (a first subscriber, a last unsubscriber), so a change only
travels to the processes that have someone to wake. Implementations:
``postroom.processes.bus`` (worker processes of one SQLite server, through the
supervisor). PostgreSQL does without a relay: its backend sends every change on one
LISTEN/NOTIFY channel and feeds what other processes sent to :meth:`receive`
(``postroom.store.postgres.notify``).

One race every relay must close: a session subscribes, then reads; a change committed
by another process after that read but before the other side learnt of the watch would
be lost. The process bus closes it by replaying, to a new watch, the changes that went by
since the watch was sent (the supervisor keeps the last seconds of them); when it cannot
tell (older than what it keeps), it confirms the watch as "maybe missed" and the hub wakes
the mailbox's listeners once (:meth:`watch_confirmed`), which makes them read what
changed since their own state. On PostgreSQL every process listens to every change from
its start, so the race does not arise; after a lost connection every listener re-reads
once (:meth:`wake_all`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from postroom.store.api import MAILBOXES, MESSAGES, ChangeListener, MailboxChange

log = logging.getLogger(__name__)

# A mailbox's watch outlives its last listener this long (and at most this many such
# watches are kept): clients re-SELECT the same mailboxes all the time, and a watch still
# in force needs no round trip when a listener comes back.
LINGER_SECONDS = 30.0
LINGER_MAX = 10_000


class ChangeRelay(Protocol):
    """Carries changes between the processes or nodes that share a store."""

    def watch(self, mailbox_id: int) -> None: ...
    def unwatch(self, mailbox_id: int) -> None: ...
    def watch_user(self, user_id: int) -> None: ...
    def unwatch_user(self, user_id: int) -> None: ...
    def watch_queue(self) -> None: ...  # this process runs the outbound queue
    def send_change(self, change: MailboxChange) -> None: ...
    def send_queue(self) -> None: ...


class LocalChangeHub:
    def __init__(self, relay: ChangeRelay | None = None) -> None:
        self._mailbox: dict[int, list[ChangeListener]] = {}
        self._user: dict[int, list[ChangeListener]] = {}
        self._queue: list[Callable[[], None]] = []
        self.relay = relay
        self._lingering: OrderedDict[int, float] = OrderedDict()  # watched, no listener

    def subscribe(self, mailbox_id: int, listener: ChangeListener) -> None:
        listeners = self._mailbox.get(mailbox_id)
        if listeners is None:
            listeners = self._mailbox[mailbox_id] = []
            if self.relay is not None and self._lingering.pop(mailbox_id, None) is None:
                self.relay.watch(mailbox_id)
        listeners.append(listener)

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
            if self.relay is not None:
                self._linger(mailbox_id)

    def _linger(self, mailbox_id: int) -> None:
        """Keep the relay's watch a while; end the watches that lingered long enough."""
        assert self.relay is not None
        now = time.monotonic()
        lingering = self._lingering
        lingering[mailbox_id] = now
        lingering.move_to_end(mailbox_id)
        while lingering:
            oldest, since = next(iter(lingering.items()))
            if now - since < LINGER_SECONDS and len(lingering) <= LINGER_MAX:
                break
            del lingering[oldest]
            self.relay.unwatch(oldest)

    def subscribe_queue(self, listener: Callable[[], None]) -> None:
        if not self._queue and self.relay is not None:
            self.relay.watch_queue()
        self._queue.append(listener)

    def unsubscribe_queue(self, listener: Callable[[], None]) -> None:
        if listener in self._queue:
            self._queue.remove(listener)

    def subscribe_user(self, user_id: int, listener: ChangeListener) -> None:
        listeners = self._user.get(user_id)
        if listeners is None:
            listeners = self._user[user_id] = []
            if self.relay is not None:
                self.relay.watch_user(user_id)
        listeners.append(listener)

    def unsubscribe_user(self, user_id: int, listener: ChangeListener) -> None:
        listeners = self._user.get(user_id)
        if listeners is None or listener not in listeners:
            return
        listeners.remove(listener)
        if not listeners:
            del self._user[user_id]
            if self.relay is not None:
                self.relay.unwatch_user(user_id)

    def publish(self, change: MailboxChange) -> None:
        """A commit of this process changed a mailbox: wake its listeners here and there."""
        self.receive(change)
        if self.relay is not None:
            self.relay.send_change(change)

    def publish_queue(self) -> None:
        self.receive_queue()
        if self.relay is not None:
            self.relay.send_queue()

    def receive(self, change: MailboxChange) -> None:
        """Wake this process's listeners (a change made here or in another process)."""
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

    def receive_queue(self) -> None:
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

    def watch_confirmed(self, mailbox_id: int, user_id: int = 0) -> None:
        """A change to the mailbox may have gone by unseen (see the module docstring): its
        listeners read again."""
        for listener in tuple(self._mailbox.get(mailbox_id, ())):
            try:
                listener(MailboxChange(mailbox_id=mailbox_id, user_id=user_id, modseq=0))
            except Exception:
                log.exception("mailbox change listener failed")

    def listener_count(self, mailbox_id: int) -> int:
        return len(self._mailbox.get(mailbox_id, ()))

    def user_listener_count(self) -> int:
        return sum(len(v) for v in self._user.values())

    def may_have_listeners(self, mailbox_id: int) -> bool:
        """Whether a change to the mailbox may wake anyone, here or in another process."""
        return (
            self.relay is not None or mailbox_id in self._mailbox or bool(self._user)
        )
