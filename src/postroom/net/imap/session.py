"""The IMAP session: the read loop around the sans-IO receiver, state, and updates.

Theory of operation
-------------------
``ImapSession.run`` asks the receiver (:mod:`postroom.proto.imap.receiver`) for the next
event, reading from the connection whenever it says NEED_DATA, and executes each command
with the handler registered for its type (one module per command group: ``auth``,
``basic``, ``mailboxes``, ``select``, ``fetch``, ``store_cmd``, ``search``, ``copy``,
``idle``). A handler returns the tagged completion (``responses.ok(tag, ...)``), or raises
:class:`ImapPeerError` carrying a tagged NO/BAD; anything it writes before that are
untagged responses. Output is collected and written in one system call per command (or
every ``FLUSH_AT`` octets for big FETCH responses, with backpressure).

Updates from other writers (see :mod:`.selected`): before a UID command and after every
command in the selected state, :meth:`ImapSession.sync` reads what changed since the
view's modseq, if the change listener marked the view dirty, and sends EXISTS, FETCH and,
when the command allows it (RFC 9051 7.5.1), EXPUNGE. In IDLE the listener also wakes the
pending read (``Connection.interrupt``), so new mail reaches the client at once.

Every command runs under a time budget (:mod:`postroom.net.budget`,
``limits.command_time``): long loops in the handlers yield to other connections every few
milliseconds, and a command past its budget ends with ``NO [LIMIT]``. Waiting for the
client (reading, or writing to a slow reader) does not count against it.

Timeouts (RFC 9051 5.4): an authenticated client is logged out after
``limits.imap_idle_timeout`` of silence (30 minutes by default, the RFC minimum), and each
command, literals included, must arrive whole within that time of the previous answer plus
time for its size at ``limits.min_data_rate`` (``net/deadline.py``), so trickling bytes
does not keep a session. Before login the client has ``limits.login_timeout`` in total
from connecting (3 minutes, as Dovecot), however busy it keeps the connection, and only
``MAX_BAD_BEFORE_LOGIN`` bad commands: an HTTP request or a port scanner is gone after
its first lines (the receiver closes at once on an HTTP request line). IDLE is exempt:
every ``KEEPALIVE`` seconds without traffic the server sends ``* OK Still here``, which
keeps NAT mappings alive and finds dead peers. A shutdown (``Connection.interrupt`` from
the listener set) says ``* BYE`` between commands; a command in progress finishes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from postroom import deliver, logs
from postroom.config import Listener
from postroom.net import budget
from postroom.net.auth import AuthTracker, UserSessions
from postroom.net.budget import BudgetExceeded
from postroom.net.connection import Connection, Interrupted
from postroom.net.deadline import RecordDeadline
from postroom.net.imap import contexts, notify
from postroom.net.imap.notify import Notifications
from postroom.net.imap.compress import Deflate, DeflateError
from postroom.net.imap.light import LightCache
from postroom.net.imap.structure_cache import StructureCache
from postroom.net.imap.selected import SelectedMailbox
from postroom.proto.imap import responses
from postroom.proto.imap.commands import Command, State
from postroom.proto.imap.grammar import NO, ImapPeerError
from postroom.proto.imap.receiver import (
    NEED_DATA,
    ConnectionClosed,
    ContinuationRequest,
    Event,
    Limits,
    Receiver,
)
from postroom.services import Services
from postroom.store.api import MailboxChange, NotFound, StoreError, StoreUnavailable, User

log = logging.getLogger("postroom.imap")

FLUSH_AT = 256 * 1024
COMPRESS_IN_THREAD = 256 * 1024
KEEPALIVE = 25 * 60.0
MAX_BAD_STREAK = 20  # consecutive refused commands before we hang up on the client
# Commands answered BAD before login after which we hang up (Dovecot: 10 in any state):
# real clients send none; HTTP requests, other protocols and scanners send many.
MAX_BAD_BEFORE_LOGIN = 5
# Commands during which expunges of other sessions must not be reported (RFC 9051 7.5.1):
# those that use sequence numbers (UID forms are different commands and may report them).
NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "SORT", "THREAD"})

Handler = Callable[["ImapSession", Any], Awaitable[bytes | None]]


class Closing(Exception):
    """End the session now; whatever it had to say is already written."""


def no(tag: str, text: str, code: str | None = None) -> ImapPeerError:
    """A tagged ``NO [code] text`` to raise from a handler."""
    return ImapPeerError(text, status=NO, code=code, tag=tag)


def _handlers() -> dict[type, Handler]:
    from postroom.net.imap import auth, basic, copy, fetch, idle, mailboxes, search, select
    from postroom.net.imap import store_cmd
    from postroom.net.imap import acl, append, metadata, notify, quota, urlauth

    table: dict[type, Handler] = {}
    for module in (auth, basic, copy, fetch, idle, mailboxes, search, select, store_cmd,
                   acl, append, metadata, notify, quota, urlauth):
        table.update(module.HANDLERS)  # type: ignore[attr-defined]
    return table


class ImapHandler:
    """What ``app.py`` wires for the ``imap`` and ``imaps`` roles.

    It owns what all IMAP sessions share: the command table and the light-summary cache
    (:class:`~.light.LightCache`) that makes repeated searches and sorts cheap.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.handlers = _handlers()
        self.lights = LightCache()
        # (user id, mailbox name) -> mailbox id, from earlier SELECTs: lets SELECT listen
        # for changes before its one read (see select.py). A stale entry is detected.
        self.mailbox_ids: dict[tuple[int, str], int] = {}
        self.structures = StructureCache(services.settings.imap.fetch_cache)
        # Logged-in sessions per (user, client address): limits.connections_per_user_ip.
        self.user_sessions = UserSessions(
            services.settings.limits.connections_per_user_ip, services.user_ip_counts
        )

    async def refuse(self, conn: Connection, listener: Listener, reason: str) -> None:
        await conn.send(responses.bye(reason, responses.UNAVAILABLE))

    async def serve(self, conn: Connection, listener: Listener) -> None:
        session = ImapSession(self.services, conn, listener, self.handlers, self.lights)
        session.mailbox_ids = self.mailbox_ids
        session.structures = self.structures
        session.user_sessions = self.user_sessions
        await session.run()


class ImapSession:
    __slots__ = (
        "services", "store", "conn", "listener", "handlers", "id", "auth", "rx", "user",
        "selected", "rev2", "condstore", "qresync", "utf8", "deflate", "idling",
        "_out", "_out_size", "_bad_streak", "_bad_total", "closing", "commands", "client_id",
        "lights", "mailbox_ids", "structures", "notify", "_record", "_login_by", "user_sessions",
    )

    def __init__(
        self,
        services: Services,
        conn: Connection,
        listener: Listener,
        handlers: dict[type, Handler],
        lights: LightCache | None = None,
    ) -> None:
        self.services = services
        self.lights = lights if lights is not None else LightCache()
        self.mailbox_ids: dict[tuple[int, str], int] = {}
        self.structures = StructureCache()  # replaced by the handler's shared one
        self.user_sessions = UserSessions(
            services.settings.limits.connections_per_user_ip, services.user_ip_counts
        )
        self.store = services.store
        self.conn = conn
        self.listener = listener
        self.handlers = handlers
        self.id = deliver.new_id()
        self.auth = AuthTracker(services, "imap", conn.peer_ip, self.id)
        self.rx = Receiver()
        self.user: User | None = None
        self.selected: SelectedMailbox | None = None
        self.rev2 = False  # ENABLE IMAP4rev2
        self.condstore = False  # RFC 7162: enabled explicitly or by first use
        self.qresync = False
        self.utf8 = False  # UTF-8 mailbox names (IMAP4rev2 or UTF8=ACCEPT)
        self.deflate: Deflate | None = None
        self.idling = False
        self._out: list[bytes] = []
        self._out_size = 0
        self._bad_streak = 0
        self._bad_total = 0
        limits = services.settings.limits
        self._record = RecordDeadline(limits.imap_idle_timeout, limits.min_data_rate)
        self._login_by = time.monotonic() + limits.login_timeout
        self.closing = False
        self.commands = 0
        self.client_id: str | None = None
        self.notify: Notifications | None = None  # NOTIFY SET in force (RFC 5465)

    # -- properties --------------------------------------------------------------------
    @property
    def settings(self) -> Any:
        return self.services.settings

    @property
    def tls_active(self) -> bool:
        return self.conn.tls is not None

    @property
    def plaintext_ok(self) -> bool:
        """May a password travel on this connection (LOGIN, PLAIN)? RFC 9051 6.2.3."""
        return self.tls_active or self.settings.imap.allow_plaintext_auth

    @property
    def rev1(self) -> bool:
        return not self.rev2

    # -- output ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    async def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out_size = 0
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            out.clear()
            return  # aborted (see below) or closed by the peer: nobody to tell
        if self.deflate is not None:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            if len(data) > COMPRESS_IN_THREAD:
                # zlib releases the GIL: a big response (a 50 MB body) is compressed on
                # a thread while the loop serves the others; order is kept (we await).
                data = await asyncio.to_thread(self.deflate.compress, data)
            else:
                data = self.deflate.compress(data)
            self.conn.write(data)
        else:
            if len(out) == 1:
                self.conn.write(out[0])
            else:
                self.conn.writelines(out)  # no joined copy of big FETCH responses
            out.clear()
        if not self.conn.write_blocked:
            return  # the usual case: no drain to wait for, no timer to set up
        try:
            # A client that stops reading must not hold the session (and its output)
            # forever: the same limit as for one that stops talking. Waiting for it is
            # not the command's work: its budget is paused meanwhile.
            with budget.paused():
                async with asyncio.timeout(self.settings.limits.imap_idle_timeout):
                    await self.conn.drain()
        except TimeoutError:
            self.conn.abort()
            self.closing = True
            raise Closing() from None

    async def maybe_flush(self) -> None:
        """Flush when enough output piled up (big FETCH): bounded memory, backpressure."""
        if self._out_size >= FLUSH_AT:
            await self.flush()

    def capabilities(self) -> list[str]:
        from postroom.net.imap.auth import capabilities

        return capabilities(self)

    # -- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        started = time.monotonic()
        code = responses.code_capability(self.capabilities())
        self.write(responses.greeting(f"{self.settings.hostname} postroom IMAP ready", code))
        try:
            while not self.closing:
                event = await self.next_event()
                if isinstance(event, ConnectionClosed):
                    break
                if isinstance(event, Command):
                    await self.execute(event)
            await self.flush()
        except Closing:
            try:
                await self.flush()  # the BYE or last answer, if the client still reads
            except Closing:
                pass
        except DeflateError as exc:
            logs.event(log, "imap_compress_error", logging.INFO, session=self.id, error=str(exc))
        except StoreUnavailable:
            # Outside a command (the update after it, IDLE's wake-up): end the session with
            # a reason the client understands; it reconnects, and reads again then.
            logs.event(log, "store_unavailable", logging.WARNING, session=self.id)
            with contextlib.suppress(Closing, ConnectionError, OSError):
                self.write(responses.bye("Mail store unavailable, try again later",
                                         responses.UNAVAILABLE))
                await self.flush()
        finally:
            notify.stop(self)
            self.unselect()
            if self.user is not None:
                self.user_sessions.leave(self.user.id, self.conn.peer_ip)
            logs.event(
                log, "imap_session", session=self.id, client=self.conn.peer_ip,
                user=self.user.address if self.user else None, commands=self.commands,
                duration=round(time.monotonic() - started, 3),
            )

    async def next_event(self, *, raise_errors: bool = False) -> Event:
        """The next receiver event, reading as needed; protocol errors are answered here.

        With ``raise_errors`` (IDLE, AUTHENTICATE continuations) a refused line is raised
        to the caller instead, which answers it as the command's tagged completion.
        """
        rx = self.rx
        while True:
            try:
                event = rx.next_event()
            except ImapPeerError as exc:
                self._record.done()
                if exc.close:
                    self.write(exc.response)
                    raise Closing() from None
                if raise_errors:
                    raise
                self.write(exc.response)
                self._bad_streak += 1
                self._bad_total += 1
                if self._bad_streak >= MAX_BAD_STREAK or (
                    self.user is None and self._bad_total >= MAX_BAD_BEFORE_LOGIN
                ):
                    self.write(responses.bye("Too many invalid commands"))
                    raise Closing() from None
                continue
            if event is not NEED_DATA and not isinstance(event, ContinuationRequest):
                self._record.done()  # a whole command (or response line) arrived
            if event is NEED_DATA:
                await self.flush()
                with budget.paused():  # IDLE, AUTHENTICATE: waiting for the client
                    data = await self._read()
                if data:
                    rx.receive_data(data)
                else:
                    rx.receive_eof()
            elif isinstance(event, ContinuationRequest):
                self.write(responses.continuation())
            else:
                return event

    async def _read(self) -> bytes:
        """Bytes from the client (inflated when compressing); b"" at end of stream."""
        if self.deflate is not None and self.deflate.has_pending():
            data = self.deflate.decompress(b"")
            if data:
                return data
        while True:
            if self.services.shutdown.requested and self.rx.buffered_size == 0:
                self.write(responses.bye("Server shutting down", responses.UNAVAILABLE))
                raise Closing()
            now = time.monotonic()
            login_bound = False
            if self.idling:
                self._record.done()
                timeout = min(KEEPALIVE, self.settings.limits.imap_idle_timeout)
            else:
                # The command being read must be whole by its deadline (net/deadline.py);
                # before login, the login deadline counts from the connection's start.
                # Which one a timeout means is decided here: timers may fire a bit early.
                timeout = self._record.read_timeout(now)
                login_bound = self.user is None and self._login_by - now <= timeout
                if login_bound:
                    timeout = self._login_by - now
                if timeout <= 0:
                    self._timed_out(login_bound)
            try:
                raw = await self.conn.read(timeout)
            except TimeoutError:
                if self.idling:
                    self.write(responses.untagged("OK", "Still here"))
                    await self.flush()
                    continue
                self._timed_out(login_bound)
            except Interrupted:
                if self.services.shutdown.requested:
                    continue
                if self.idling:
                    await self.unsolicited(expunge=True)
                elif self.notify is not None and self.rx.buffered_size == 0:
                    # RFC 5465 3.1: with NOTIFY the client listens all the time; never in
                    # the middle of a command it is still sending.
                    await self.unsolicited(expunge=notify.expunges_now(self))
                continue
            self._record.received(len(raw))
            if not raw:
                return b""
            if self.deflate is None:
                return raw
            data = self.deflate.decompress(raw)
            if data:
                return data

    async def unsolicited(self, *, expunge: bool) -> None:
        """Updates between commands (IDLE, NOTIFY): the selected mailbox, contexts, the
        NOTIFY events, written at once."""
        await self.sync(expunge=expunge)
        if self.selected is not None and self.selected.contexts:
            await contexts.refresh(self)
        if self.notify is not None:
            await notify.flush(self)
        await self.flush()

    def _timed_out(self, login: bool) -> NoReturn:
        """Say why the session ends (login deadline, slow command, idle) and end it."""
        if login:
            text = "Disconnected: no login within the time allowed"
        elif self.rx.buffered_size:
            text = "Disconnected: command not received in time"
        else:
            text = "Autologout: idle for too long"
        self.write(responses.bye(text))
        raise Closing()

    async def execute(self, cmd: Command) -> None:
        self.commands += 1
        self.services.metrics.command("imap", cmd.name.lower())
        handler = self.handlers.get(type(cmd))
        tagged: bytes | None
        try:
            if handler is None:
                raise ImapPeerError("Command not supported", status=NO, tag=cmd.tag)
            with budget.scope(self.settings.limits.command_time, self.auth.owner):
                if self.selected is not None and getattr(cmd, "uid", False):
                    await self.sync(expunge=True)
                tagged = await handler(self, cmd)
            self._bad_streak = 0
        except BudgetExceeded as exc:
            # RFC 5530 LIMIT: the command ran into the per-command time budget.
            logs.event(log, "command_budget", logging.WARNING, session=self.id,
                       command=cmd.name, limit=exc.limit)
            tagged = responses.no(cmd.tag, "Command took too long, try a narrower one",
                                  responses.LIMIT)
        except ImapPeerError as exc:
            if exc.tag is None:
                exc.tag = cmd.tag
            if exc.close:
                self.write(exc.response)
                raise Closing() from None
            tagged = exc.response
            self._bad_streak = 0
        except (Closing, ConnectionError, DeflateError):
            raise
        except NotFound as exc:
            tagged = responses.no(cmd.tag, str(exc) or "No such mailbox", responses.NONEXISTENT)
        except StoreUnavailable:  # RFC 5530 3: a subsystem is down; the client retries later
            logs.event(log, "store_unavailable", logging.WARNING, session=self.id, command=cmd.name)
            tagged = responses.no(cmd.tag, "Mail store unavailable, try again later",
                                  responses.UNAVAILABLE)
        except StoreError as exc:
            tagged = responses.no(cmd.tag, str(exc) or "Failed")
        except Exception:
            log.exception("imap command failed session=%s command=%s", self.id, cmd.name)
            tagged = responses.no(cmd.tag, "Internal server error", responses.SERVERBUG)
        own = self.notify is not None and cmd.name in notify.SELF_CAUSED
        if self.selected is not None and not self.closing:
            await self.sync(expunge=cmd.name not in NO_EXPUNGE_DURING, announce=not own)
            if self.selected is not None and self.selected.contexts:
                await contexts.refresh(self)  # RFC 5267 ADDTO/REMOVEFROM
        if self.notify is not None and not self.closing:
            await (notify.absorb(self) if own else notify.flush(self))
        if tagged is not None:
            self.write(tagged)

    # -- the selected mailbox ----------------------------------------------------------
    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (FETCH MODSEQ/CHANGEDSINCE, SEARCH MODSEQ, STORE
        UNCHANGEDSINCE, STATUS HIGHESTMODSEQ) ran: RFC 7162 3.1 turns CONDSTORE on, and
        when that happens with a mailbox selected the client learns its HIGHESTMODSEQ
        at once (the view's, which the updates that follow start from)."""
        if self.condstore:
            return
        self.condstore = True
        view = self.selected
        if view is not None:
            self.write(responses.untagged("OK", "Highest", responses.code_highestmodseq(view.modseq)))

    def select(self, view: SelectedMailbox) -> None:
        """Make ``view`` the selected mailbox and listen for changes to it."""
        self.unselect()
        conn = self.conn

        def on_change(change: MailboxChange) -> None:
            view.notify(change.modseq)
            if self.idling:
                conn.interrupt()

        view.listener = on_change
        self.store.changes.subscribe(view.mailbox_id, on_change)
        self.selected = view
        self.rx.state = State.SELECTED

    def unselect(self) -> None:
        view = self.selected
        if view is None:
            return
        if view.listener is not None:
            self.store.changes.unsubscribe(view.mailbox_id, view.listener)  # type: ignore[arg-type]
            view.listener = None
        self.selected = None
        if self.user is not None:
            self.rx.state = State.AUTHENTICATED

    async def sync(self, *, expunge: bool, announce: bool = True) -> None:
        """Send what changed in the selected mailbox since the view's modseq.

        ``announce``: new messages get the FETCH that NOTIFY's MessageNew asked for
        (not for the session's own APPEND or COPY, RFC 5465 5.2)."""
        view = self.selected
        if view is None:
            return
        if not view.needs_read():
            view.dirty = False
            if expunge and view.pending:
                for line in view.remove(tuple(view.pending), qresync=self.qresync):
                    self.write(line)
            return
        view.dirty = False
        view.notified = 0
        try:
            # IMAP4rev1: \Recent of new messages claimed in the same store call.
            changes = await self.store.changes_since(
                view.mailbox_id, view.modseq, claim_above=view.last_uid if self.rev1 else None,
                claim=not view.readonly,
            )
        except NotFound:
            # Deleted (or renamed away as INBOX's content) under us: nothing sane remains.
            self.write(responses.bye("The selected mailbox was deleted"))
            self.closing = True
            raise Closing() from None
        # Read-only (EXAMINE) views see unclaimed messages as \Recent without claiming.
        recent_from = changes.recent_from
        first_new = view.last_uid + 1
        for line in view.apply(
            changes, expunge=expunge, rev1=self.rev1, condstore=self.condstore,
            qresync=self.qresync, recent_from=recent_from,
        ):
            self.write(line)
        if announce and self.notify is not None and view.last_uid >= first_new:
            await notify.fetch_new(self, first_new)

    # -- authentication ------------------------------------------------------------------
    async def login(self, user: User, mechanism: str) -> None:
        """Enter the authenticated state; ``NO [LIMIT]`` when ``user`` already has
        ``limits.connections_per_user_ip`` sessions from this client's address."""
        if not self.user_sessions.enter(user.id, self.conn.peer_ip):
            logs.event(
                log, "user_ip_limit", logging.WARNING, session=self.id,
                client=self.conn.peer_ip, user=user.address,
            )
            raise ImapPeerError(
                "Too many connections for this user from your address",
                status=NO, code=responses.LIMIT,
            )
        await self.auth.succeeded(user, mechanism)
        self.user = user
        self.rx.state = State.AUTHENTICATED
        self.rx.limits = Limits.authenticated(self.settings.limits.message_size)
