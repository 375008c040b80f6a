"""The SMTP shell: drives ``proto.smtp`` for the mx, submission and submissions roles.

Policy lives here, protocol lives in the core:
* mx: mail for local recipients from anyone; anything else is relay-denied unless the
  client authenticated (AUTH is not offered on mx). Source routes and local parts with
  routing characters (``%``, ``!``, ``@``, ``:``: percent hack, bang paths, quoted
  ``"user@other"@local``) are refused outright from unauthenticated clients, even for a
  local domain with a catch-all; trailing dots are a syntax error in the core.
* submission/submissions: AUTH first (STARTTLS first on 587 unless configured), then the
  envelope sender must be one of the user's addresses; any recipient is allowed.
At end of data: one durable write (local INBOXes + queue), then 250 with the queue id.
The core has already refused what must never be stored (bare CR/LF: 554 5.6.0 after the
real end of data, so nothing can be smuggled; NUL; oversize). Timeouts: the idle timeout
between reads, and ``limits.smtp_data_timeout`` for a whole message (all its reads).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict

from postroom import deliver, logs
from postroom.auth.directory import Resolution
from postroom.config import Listener
from postroom.net.auth import MECHANISMS, AuthTracker
from postroom.net.connection import Connection, ConnectionClosed, Interrupted
from postroom.proto.sasl import Challenge, Success
from postroom.proto.smtp import replies as R
from postroom.proto.smtp.events import (
    CLOSED,
    NEED_DATA,
    AuthAborted,
    AuthResponse,
    AuthStart,
    Hello,
    MailFrom,
    MessageComplete,
    MessageRefused,
    RcptTo,
    ServerConfig,
    StartTls,
    State,
)
from postroom.proto.smtp.grammar import Address
from postroom.proto.smtp.replies import Reply
from postroom.proto.smtp.server import ServerConnection
from postroom.services import Services
from postroom.store.api import Delivery, NewQueueEntry, QueueRecipient
from postroom.tls import describe

log = logging.getLogger("postroom.smtp")

EARLY_TALKER = Reply(554, "5.7.1", "Protocol error: talking before the greeting")
LOOP_DETECTED = Reply(554, "5.4.6", "Too many Received headers: mail loop?")
STORE_FAILED = Reply(451, "4.3.0", "Temporary failure storing the message, try again later")
SOURCE_ROUTE = Reply(550, "5.7.1", "Source routes are not accepted")
ROUTING_CHARS = Reply(550, "5.7.1", "Routing characters in the local part are not accepted")
TOO_MANY_AUTH = Reply(421, "4.7.0", "Too many authentication failures")
_IN_TRANSACTION = (State.MAIL, State.RCPT, State.DATA, State.BDAT)


PASS_CACHE_SIZE = 100_000  # client addresses remembered as polite (greeting_pass_time)
PASS_TOPIC = "smtp.greeting_pass"  # tells the other serving processes (postroom.peers)


def _pass_key(ip: str) -> str:
    """The unit a pass covers: the address (IPv4), or its /64 (IPv6: one host's range)."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network((ip.split("%")[0], 64), strict=False).network_address)
    except ValueError:
        return ip


class SmtpHandler:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._configs: dict[tuple[str, bool, bool], ServerConfig] = {}
        # Early-talker check passes (postscreen-like): client -> time it passed. Shared
        # with the other worker processes, so that a client waits once, not once per worker.
        self._passed: OrderedDict[str, float] = OrderedDict()
        services.peers.subscribe(PASS_TOPIC, self._remember_pass)

    def greeting_wait(self, ip: str) -> float:
        """How long to wait before greeting ``ip`` on the MX role (0: greet at once)."""
        smtp = self.services.settings.smtp
        if smtp.greeting_delay <= 0:
            return 0.0
        passed = self._passed.get(_pass_key(ip))
        if passed is not None and time.monotonic() - passed < smtp.greeting_pass_time:
            return 0.0
        return smtp.greeting_delay

    def passed(self, ip: str) -> None:
        if self.services.settings.smtp.greeting_pass_time <= 0:
            return
        key = _pass_key(ip)
        self._remember_pass(key)
        self.services.peers.publish(PASS_TOPIC, key)

    def _remember_pass(self, key: str) -> None:
        self._passed[key] = time.monotonic()
        self._passed.move_to_end(key)
        while len(self._passed) > PASS_CACHE_SIZE:
            self._passed.popitem(last=False)

    def config(self, role: str, tls_active: bool) -> ServerConfig:
        """The core's configuration for a role, built once (it is frozen and validated)."""
        key = (role, tls_active, self.services.tls.available)
        config = self._configs.get(key)
        if config is None:
            settings = self.services.settings
            submission = role != "mx"
            config = self._configs[key] = ServerConfig(
                hostname=settings.hostname,
                max_message_size=settings.limits.message_size,
                max_recipients=settings.limits.recipients,
                max_line_length=settings.smtp.line_length,
                tls_available=self.services.tls.available,
                tls_active=tls_active,
                auth_mechanisms=MECHANISMS if submission else (),
                auth_requires_tls=settings.smtp.require_tls_for_auth,
                mail_requires_auth=submission,
            )
        return config

    async def refuse(self, conn: Connection, listener: Listener, reason: str) -> None:
        await conn.send(Reply(421, "4.7.0", f"{self.services.settings.hostname} {reason}").to_bytes())

    async def serve(self, conn: Connection, listener: Listener) -> None:
        await SmtpSession(self, conn, listener).run()


class SmtpSession:
    def __init__(self, handler: SmtpHandler, conn: Connection, listener: Listener) -> None:
        self.handler = handler
        self.services = services = handler.services
        self.conn = conn
        self.role = listener.role
        self.submission = listener.role != "mx"
        self.id = deliver.new_id()
        self.auth = AuthTracker(services, "smtp", conn.peer_ip, self.id)
        self.core = ServerConnection(handler.config(self.role, conn.tls is not None))
        self.helo = ""
        self.resolutions: dict[str, Resolution] = {}
        self.rcpt_results: list[str] = []  # "address:code" per RCPT, for the log line
        self.data_started = 0.0

    # ---------------------------------------------------------------------------------
    async def run(self) -> None:
        settings = self.services.settings
        wait = 0.0 if self.submission else self.handler.greeting_wait(self.conn.peer_ip)
        if wait:
            await asyncio.sleep(wait)
            if self.conn.pending():
                logs.event(log, "early_talker", session=self.id, client=self.conn.peer_ip)
                await self.conn.send(EARLY_TALKER.to_bytes())
                return
            self.handler.passed(self.conn.peer_ip)
        self.core.send_greeting()
        idle = settings.limits.smtp_idle_timeout
        while True:
            event = self.core.next_event()
            if event is NEED_DATA:
                out = self.core.data_to_send()
                if out:
                    self.conn.write(out)
                    await self.conn.drain()
                if self.services.shutdown.requested and self.core.state not in _IN_TRANSACTION:
                    self.core.close(R.SHUTTING_DOWN)
                    continue
                timeout = idle
                if self.core.state in (State.DATA, State.BDAT):
                    # limits.smtp_data_timeout bounds the whole message (every BDAT chunk
                    # included), not each read: a client trickling a byte a second must
                    # not hold the session forever (RFC 5321 4.5.3.2.6 asks for >= 10 min).
                    now = time.monotonic()
                    if not self.data_started:
                        self.data_started = now
                    timeout = min(idle, settings.limits.smtp_data_timeout - (now - self.data_started))
                    if timeout <= 0:
                        self.core.close(R.TIMEOUT)
                        continue
                else:
                    self.data_started = 0.0
                try:
                    data = await self.conn.read(timeout)
                except TimeoutError:
                    self.core.close(R.TIMEOUT)
                    continue
                except Interrupted:
                    continue  # loop: shutdown check above decides
                self.core.receive_data(data)
            elif event is CLOSED:
                out = self.core.data_to_send()
                if out:
                    await self.conn.send(out)
                return
            elif isinstance(event, RcptTo):
                await self._rcpt(event)
            elif isinstance(event, MessageComplete):
                await self._message(event)
            elif isinstance(event, MailFrom):
                await self._mail(event)
            elif isinstance(event, Hello):
                self.helo = event.hostname
                self.resolutions.clear()
                self.core.accept()
            elif isinstance(event, StartTls):
                if not await self._starttls():
                    return
            elif isinstance(event, (AuthStart, AuthResponse)):
                await self._auth(event)
            elif isinstance(event, MessageRefused):
                logs.event(
                    log, "message_refused", session=self.id, client=self.conn.peer_ip,
                    reply=f"{event.reply.code} {event.reply.enhanced}", size=event.size,
                )
            elif isinstance(event, AuthAborted):
                pass

    # ---------------------------------------------------------------------------------
    async def _starttls(self) -> bool:
        """Upgrade the connection; False when the handshake failed (the session ends)."""
        ctx = self.services.tls.context
        if ctx is None:
            self.core.reject(R.TLS_NOT_AVAILABLE)
            return True
        self.core.accept()
        await self.conn.send(self.core.data_to_send())
        try:
            await self.conn.start_tls(ctx, timeout=self.services.settings.limits.smtp_idle_timeout)
        except (OSError, TimeoutError, ConnectionClosed) as e:  # ssl.SSLError is an OSError
            # A client that says STARTTLS and then sends anything but a good ClientHello:
            # nothing sensible can be said in clear text any more (RFC 3207 4.1).
            logs.event(
                log, "starttls_failed", session=self.id, client=self.conn.peer_ip,
                error=str(e) or type(e).__name__,
            )
            return False
        self.core.starttls_done(self.handler.config(self.role, True))
        # RFC 3207 4.2: discard what we knew from before TLS (the core forgot EHLO, AUTH
        # and the transaction; forget the user and the resolved recipients here too).
        self.helo = ""
        self.auth.user = None
        self.resolutions.clear()
        return True

    async def _auth(self, event: AuthStart | AuthResponse) -> None:
        if isinstance(event, AuthStart):
            self._mechanism = event.mechanism
            step = await self.auth.start(event.mechanism, event.initial_response)
        else:
            step = await self.auth.respond(event.data)
        if isinstance(step, Challenge):
            self.core.auth_challenge(step.data)
        elif isinstance(step, Success) and self.auth.user is not None:
            await self.auth.succeeded(self.auth.user, self._mechanism)
            self.core.auth_success(self.auth.user.address)
        else:
            must_close = await self.auth.failed(None, self._mechanism)
            self.core.auth_failure()
            if must_close:
                self.core.close(TOO_MANY_AUTH)

    async def _mail(self, event: MailFrom) -> None:
        self.resolutions.clear()
        self.rcpt_results = []
        sender = event.path.address
        if self.submission:
            user = self.auth.user
            assert user is not None  # the core enforces AUTH before MAIL on submission
            if not await self.services.directory.may_send_as(user, str(sender) if sender else ""):
                self.core.reject(R.SENDER_NOT_OWNED)
                return
        self.core.accept()

    async def _rcpt(self, event: RcptTo) -> None:
        refusal = await self._rcpt_refusal(event)
        shown = str(event.path.address) if event.path.address is not None else event.path.raw
        if refusal is None:
            self.rcpt_results.append(f"{shown}:250")
            self.core.accept()
        else:
            self.rcpt_results.append(f"{shown}:{refusal.code}")
            self.core.reject(refusal)

    async def _rcpt_refusal(self, event: RcptTo) -> Reply | None:
        """None when the recipient is accepted (and its resolution remembered)."""
        path = event.path
        address = path.address
        authenticated = self.auth.user is not None
        if address is None:
            return R.BAD_RCPT_SYNTAX
        if path.route and not authenticated:
            return SOURCE_ROUTE
        if address.has_routing_chars and not authenticated:
            # Percent hack, bang paths, "user@other"@local: a second routing layer inside
            # the local part. No mailbox of ours needs one, and a catch-all must not turn
            # them into "accepted" for a relay prober (RFC 5321 3.6.1 / 7.1).
            return ROUTING_CHARS
        target = self._target(address)
        resolution = await self.services.directory.resolve(target)
        if resolution.kind == "local":
            self.resolutions[target] = resolution
            return None
        if resolution.kind == "unknown":
            return R.UNKNOWN_USER
        if authenticated:
            self.resolutions[target] = Resolution("local", (), (target,))
            return None
        return R.RELAY_DENIED

    def _target(self, address: Address) -> str:
        """The address to resolve: ``<Postmaster>`` means postmaster of our domain."""
        if address.is_postmaster and not address.domain:
            hostname = self.services.settings.hostname
            return f"postmaster@{hostname.partition('.')[2] or hostname}"
        return str(address)

    async def _message(self, event: MessageComplete) -> None:
        settings = self.services.settings
        started = time.monotonic()
        data = event.data
        qid = deliver.new_id()
        sender_addr = event.sender.address
        sender = str(sender_addr) if sender_addr is not None else ""
        fields = deliver.header_fields(data)  # parsed once for the loop check and the drops
        if deliver.count_fields(data, b"received", fields) >= settings.outbound.max_received_headers:
            self.core.reject(LOOP_DETECTED)
            self._log(event, qid, "554 5.4.6 loop", started)
            return
        user_ids: dict[int, None] = {}
        external: dict[str, QueueRecipient] = {}
        rcpt_addrs = []
        for rcpt in event.recipients:
            a = rcpt.path.address
            key = self._target(a) if a is not None else ""
            rcpt_addrs.append(key)
            res = self.resolutions.get(key)
            if res is None:
                res = await self.services.directory.resolve(key)
            for uid in res.user_ids:
                user_ids[uid] = None
            for ext in res.external:
                if ext not in external:
                    orcpt = None
                    if rcpt.params.orcpt is not None:
                        orcpt = f"{rcpt.params.orcpt.addr_type};{rcpt.params.orcpt.address}"
                    notify = ",".join(rcpt.params.notify) if rcpt.params.notify else None
                    external[ext] = QueueRecipient(ext, orcpt, notify)
        tls = describe(self.conn.tls)
        protocol = ("UTF8SMTP" if event.mail_params.smtputf8 else "ESMTP") if self.core.esmtp else "SMTP"
        if self.core.esmtp:
            protocol += ("S" if tls else "") + ("A" if self.auth.user else "")
        data = deliver.drop_fields(
            data, deliver.DROP_ALWAYS + (deliver.DROP_ON_SUBMISSION if self.submission else ()), fields
        )
        if self.submission:
            data = deliver.submission_fixups(data, settings.hostname, qid)
        received = deliver.received_header(
            helo=self.helo, client_ip=self.conn.peer_ip, hostname=settings.hostname,
            protocol=protocol, qid=qid, tls=tls,
            recipient=rcpt_addrs[0] if len(rcpt_addrs) == 1 else None,
        )
        stored = received + data
        if user_ids:
            stored = deliver.return_path(sender) + stored
        # The core refused bare CR/LF and NUL already (DATA and BDAT alike), so only a
        # missing final CRLF (BDAT) can break the stored-message invariants.
        if not stored.endswith(b"\r\n"):
            stored += b"\r\n"
        queue = None
        if external:
            queue = NewQueueEntry(
                qid=qid, sender=sender, recipients=tuple(external.values()),
                ret=event.mail_params.ret, envid=event.mail_params.envid,
                smtputf8=bool(event.mail_params.smtputf8),
                body8bit=(event.mail_params.body or "").upper() == "8BITMIME" or event.mail_params.smtputf8,
            )
        loop = asyncio.get_running_loop()
        try:
            texts = None
            if not user_ids:
                summary = b""  # only the queue reads it, and the queue never parses it
            elif len(stored) > 256 * 1024:
                summary, texts = await loop.run_in_executor(None, deliver.summarize_for_store, stored)
            else:
                summary, texts = deliver.summarize_for_store(stored)
            await self.services.store.deliver(
                Delivery(data=stored, summary=summary, user_ids=tuple(user_ids), queue=queue,
                         search_texts=texts)
            )
        except Exception:
            log.exception("delivery failed session=%s", self.id)
            self.core.reject(STORE_FAILED)
            self._log(event, qid, "451 store failed", started)
            return
        self.core.accept(R.MESSAGE_ACCEPTED.with_text(f"Ok: queued as {qid}"))
        self._log(event, qid, "250", started, local=len(user_ids), remote=len(external))

    def _log(self, event: MessageComplete, qid: str, result: str, started: float, **extra: int) -> None:
        sender = event.sender.address
        logs.event(
            log, "transaction", session=self.id, role=self.role, client=self.conn.peer_ip,
            helo=self.helo, tls=describe(self.conn.tls) or None,
            user=self.auth.user.address if self.auth.user else None,
            mail_from=str(sender) if sender else "<>",
            rcpt=",".join(self.rcpt_results) or ",".join(str(r.path.address) for r in event.recipients),
            size=len(event.data), id=qid, result=result,
            ms=round((time.monotonic() - started) * 1000, 1), **extra,
        )
