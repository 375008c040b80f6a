"""The SMTP shell: drives ``proto.smtp`` for the mx, submission and submissions roles.

Policy lives here, protocol lives in the core:
* mx: mail for local recipients from anyone; anything else is relay-denied unless the
  client authenticated (AUTH is not offered on mx). Source routes and local parts with
  routing characters (``%``, ``!``, ``@``, ``:``: percent hack, bang paths, quoted
  ``"user@other"@local``) are refused outright from unauthenticated clients, even for a
  local domain with a catch-all; trailing dots are a syntax error in the core.
* submission/submissions: AUTH first (STARTTLS first on 587 unless configured), then the
  envelope sender and the one header ``From:`` address must be the user's (own address,
  alias, send-as grant: ``policy/sender.py``); any recipient is allowed.
At end of data: one durable write (local INBOXes + queue), then 250 with the queue id.
The core has already refused what must never be stored (bare CR/LF: 554 5.6.0 after the
real end of data, so nothing can be smuggled; NUL; oversize). Timeouts: every command
line, message and BDAT chunk must arrive whole within ``limits.smtp_idle_timeout`` of the
previous reply, plus time for its size at ``limits.min_data_rate`` (``net/deadline.py``),
and ``limits.smtp_data_timeout`` bounds a whole message (all its reads).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from functools import partial

from postroom import deliver, imapurl, logs
from postroom.auth.directory import Resolution
from postroom.config import Listener
from postroom.net import budget
from postroom.net.auth import MECHANISMS, AuthTracker, LoginRefused
from postroom.net.budget import BudgetExceeded
from postroom.net.connection import Connection, ConnectionClosed, Interrupted
from postroom.net.deadline import RecordDeadline
from postroom.policy.authres import drop_forged, resinfo_text
from postroom.policy.inbound import AuthVerdict
from postroom.policy.sender import from_header_refusal
from postroom.policy.signing import header_from_domain
from postroom.proto.imap.url import UrlError, parse_url
from postroom.proto.sasl import Challenge, Success
from postroom.proto.smtp import replies as R
from postroom.proto.smtp.events import (
    CLOSED,
    NEED_DATA,
    AuthResponse,
    AuthStart,
    BurlFetch,
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
from postroom.store.api import Delivery, NewQueueEntry, QueueRecipient, StoreUnavailable
from postroom.tls import describe

log = logging.getLogger("postroom.smtp")

EARLY_TALKER = Reply(554, "5.7.1", "Protocol error: talking before the greeting")
LOOP_DETECTED = Reply(554, "5.4.6", "Too many Received headers: mail loop?")
STORE_FAILED = Reply(451, "4.3.0", "Temporary failure storing the message, try again later")
# limits.command_time ran out while the message was being prepared (RFC 3463 4.3.0:
# a temporary mail system problem; the client keeps the message and retries).
PROCESSING_TIMEOUT = Reply(451, "4.3.0", "Message processing took too long, try again later")
SOURCE_ROUTE = Reply(550, "5.7.1", "Source routes are not accepted")
ROUTING_CHARS = Reply(550, "5.7.1", "Routing characters in the local part are not accepted")
TOO_MANY_AUTH = Reply(421, "4.7.0", "Too many authentication failures")
# RFC 3463 5.2.2 mailbox full; RFC 5321 4.2.2: 552 exceeded storage allocation (quota).
MAILBOX_FULL = R.MAILBOX_FULL.with_text("Mailbox full: the recipient's quota is exceeded")
_NONE = Resolution("unknown")
DMARC_REJECT = Reply(550, "5.7.1", "Rejected by DMARC policy")  # RFC 7489 10.3
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
                burl=submission,  # RFC 4468: messages saved over IMAP, by URLAUTH URL
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
        self.mail_size: int | None = None  # MAIL FROM SIZE= (RFC 1870), for quota at RCPT

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
        limits = settings.limits
        record = RecordDeadline(limits.smtp_idle_timeout, limits.min_data_rate)
        while True:
            event = self.core.next_event()
            if event is NEED_DATA:
                out = self.core.data_to_send()
                if out:
                    record.done()  # a reply ends the record it answers
                    self.conn.write(out)
                    if self.conn.write_blocked:  # (no coroutine per reply when it is not)
                        await self.conn.drain()
                state = self.core.state  # (a property that walks the core's flags)
                if self.services.shutdown.requested and state not in _IN_TRANSACTION:
                    self.core.close(R.SHUTTING_DOWN)
                    continue
                now = time.monotonic()
                # Each command line, and each message (DATA) or BDAT chunk, must be
                # complete within smtp_idle_timeout of the previous reply, plus one second
                # per min_data_rate octets received (see net/deadline.py): a client that
                # trickles a byte now and then is cut like an idle one.
                timeout = record.read_timeout(now)
                if state is State.DATA or state is State.BDAT:
                    # limits.smtp_data_timeout bounds the whole message (every BDAT chunk
                    # included) on top of that.
                    if not self.data_started:
                        self.data_started = now
                    timeout = min(timeout, limits.smtp_data_timeout - (now - self.data_started))
                else:
                    self.data_started = 0.0
                if timeout <= 0:
                    self.core.close(R.TIMEOUT)
                    continue
                try:
                    data = await self.conn.read(timeout)
                except TimeoutError:
                    self.core.close(R.TIMEOUT)
                    continue
                except Interrupted:
                    continue  # loop: shutdown check above decides
                record.received(len(data))
                self.core.receive_data(data)
            elif event is CLOSED:
                out = self.core.data_to_send()
                if out:
                    await self.conn.send(out)
                return
            else:
                try:
                    if not await self._decide(event):
                        return
                except StoreUnavailable:
                    self._unavailable()

    def _unavailable(self) -> None:
        """The store went away while a command was being decided (a database restart):
        answer it with a temporary error, so the client retries later (RFC 5321 4.2.5)."""
        logs.event(log, "store_unavailable", logging.WARNING, session=self.id)
        event = self.core.awaiting
        if isinstance(event, (AuthStart, AuthResponse)):
            self.core.auth_failure(R.AUTH_TEMP_FAIL)
        elif event is not None:
            self.core.reject(R.TEMP_FAIL)

    async def _decide(self, event: object) -> bool:
        """Act on one event of the core (all but reading and closing); False: the
        session ends (a failed TLS handshake)."""
        if isinstance(event, RcptTo):
            await self._rcpt(event)
        elif isinstance(event, MessageComplete):
            await self._message(event)
        elif isinstance(event, BurlFetch):
            await self._burl(event)
        elif isinstance(event, MailFrom):
            await self._mail(event)
        elif isinstance(event, Hello):
            self.services.metrics.command("smtp", "ehlo" if event.esmtp else "helo")
            self.helo = event.hostname
            self.resolutions.clear()
            self.core.accept()
        elif isinstance(event, StartTls):
            self.services.metrics.command("smtp", "starttls")
            return await self._starttls()
        elif isinstance(event, (AuthStart, AuthResponse)):
            await self._auth(event)
        elif isinstance(event, MessageRefused):
            reply = f"{event.reply.code} {event.reply.enhanced}"
            logs.event(
                log, "message_refused", session=self.id, client=self.conn.peer_ip,
                reply=reply, size=event.size,
            )
            self.services.metrics.command("smtp", "data")
            self.services.metrics.delivery("in", "refused")
            self.services.delivery_log.record(
                "in", "", "", ",".join(self.rcpt_results), "refused", f"{reply} {event.reply.text}"
            )
        return True

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
        try:
            with budget.scope(self.services.settings.limits.command_time, self.auth.owner):
                if isinstance(event, AuthStart):
                    self.services.metrics.command("smtp", "auth")
                    self._mechanism = event.mechanism
                    step = await self.auth.start(event.mechanism, event.initial_response)
                else:
                    step = await self.auth.respond(event.data)
        except BudgetExceeded:
            # Every password-check slot stayed busy (a login flood): RFC 4954 6 454.
            self.core.auth_failure(R.AUTH_TEMP_FAIL)
            return
        except LoginRefused as e:
            # Blocked address or locked user (auth/failures.py): the password was not
            # checked; 454 is temporary, counted and delayed like a failure.
            must_close = await self.auth.failed(None, self._mechanism, e.reason)
            self.core.auth_failure(R.AUTH_TEMP_FAIL)
            if must_close:
                self.core.close(TOO_MANY_AUTH)
            return
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
        self.services.metrics.command("smtp", "mail")
        self.resolutions.clear()
        self.rcpt_results = []
        self.mail_size = event.params.size
        if not self.services.free_space.has_room(event.params.size or 0):
            # The data folder's disk is nearly full (policy/disk.py): come back later.
            # RFC 1870 6.1: 452 also when the declared SIZE does not fit for now.
            self.core.reject(R.INSUFFICIENT_STORAGE)
            return
        sender = event.path.address
        if self.submission:
            user = self.auth.user
            assert user is not None  # the core enforces AUTH before MAIL on submission
            if not await self.services.directory.may_send_as(user, str(sender) if sender else ""):
                self.core.reject(R.SENDER_NOT_OWNED)
                return
        self.core.accept()

    async def _rcpt(self, event: RcptTo) -> None:
        self.services.metrics.command("smtp", "rcpt")
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
            if await self._over_quota(resolution):
                return MAILBOX_FULL
            self.resolutions[target] = resolution
            return None
        if resolution.kind == "unknown":
            return R.UNKNOWN_USER
        if authenticated:
            self.resolutions[target] = Resolution("local", (), (target,))
            return None
        return R.RELAY_DENIED

    async def _burl(self, event: BurlFetch) -> None:
        """BURL (RFC 4468): the octets of a URLAUTH URL of our own IMAP store, fetched as
        the submission server for the authenticated user ("submit+user" URLs, and any
        the user could URLFETCH). Anything else: 554 5.6.6, and the transaction ends."""
        user = self.auth.user
        try:
            url = parse_url(event.url)
            mailbox = await imapurl.authorized(
                self.services.store, url, imapurl.Requester(user, submit=True))
            data = await imapurl.read_part(self.services.store, mailbox, url)
        except (UrlError, imapurl.BadUrl) as exc:
            logs.event(log, "burl_failed", logging.INFO, session=self.id,
                       user=user.address if user else None, reason=str(exc))
            self.core.reject(R.BURL_FAILED)
            return
        self.core.burl_data(data)

    async def _over_quota(self, resolution: Resolution) -> bool:
        """Refuse at RCPT (552 5.2.2) when every local mailbox the recipient reaches is
        full already, or cannot take the size declared with MAIL FROM SIZE= (RFC 1870)."""
        if not resolution.user_ids or resolution.external:
            return False
        size = self.mail_size or 0
        for user_id in resolution.user_ids:
            q = await self.services.store.get_quota(user_id)
            if not q.exceeded and (not size or q.allows(size)):
                return False
        return True

    def _target(self, address: Address) -> str:
        """The address to resolve: ``<Postmaster>`` is the bare ``postmaster``, which the
        directory routes to the configured postmaster (RFC 5321 4.1.1.3, 4.5.1)."""
        if address.is_postmaster and not address.domain:
            return "postmaster"
        return str(address)

    async def _message(self, event: MessageComplete) -> None:
        """End of data, under the command budget (``limits.command_time``): the header walk
        and the MIME parse of a big or complex message run in a worker process; past the
        budget the message is refused with 451 4.3.0 and nothing is stored."""
        started = time.monotonic()
        qid = deliver.new_id()
        try:
            with budget.scope(self.services.settings.limits.command_time, self.auth.owner):
                await self._accept_message(event, qid, started)
        except BudgetExceeded:
            # Nothing was stored; the client keeps the message and tries again later.
            self.core.reject(PROCESSING_TIMEOUT)
            self._log(event, qid, "451 budget", started)

    async def _accept_message(self, event: MessageComplete, qid: str, started: float) -> None:
        settings = self.services.settings
        sender_addr = event.sender.address
        sender = str(sender_addr) if sender_addr is not None else ""
        # Loop check (RFC 5321 6.3), fields we never keep, Message-ID/Date on submission:
        # walks of the header, line by line; in a worker for big or complex messages.
        prepare = partial(
            deliver.prepare_headers,
            drop=deliver.DROP_ALWAYS + (deliver.DROP_ON_SUBMISSION if self.submission else ()),
            # the author of a From:-less submission: the envelope sender or the login
            submission=(settings.hostname, qid, sender or (self.auth.user.address if self.auth.user else ""))
            if self.submission else None,
            max_received=settings.outbound.max_received_headers,
        )
        costly = deliver.costly(event.data)
        data = await self.services.offload(prepare, event.data) if costly else prepare(event.data)
        if data is None:
            self.core.reject(LOOP_DETECTED)
            self._log(event, qid, "554 5.4.6 loop", started)
            return
        if not self.services.free_space.has_room(len(event.data)):
            self.core.reject(R.INSUFFICIENT_STORAGE)
            self._log(event, qid, "452 4.3.1 disk space", started)
            return
        if self.submission and self.auth.user is not None:
            # (the header as the client wrote it, before our fixes)
            refusal = await from_header_refusal(event.data, self.auth.user, self.services.directory)
            if refusal is not None:
                self.core.reject(refusal)
                self._log(event, qid, f"{refusal.code} {refusal.enhanced} from", started)
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
        verdict: AuthVerdict | None = None
        if self.submission:
            data = await self._dkim_sign(data)
        else:
            checked = await self._auth_check(event, data, qid, started)
            if checked is None:
                return
            data, verdict = checked
            if verdict is not None and external:
                data = await self._arc_seal(data, verdict, rcpt_addrs)
        received = deliver.received_header(
            helo=self.helo, client_ip=self.conn.peer_ip, hostname=settings.hostname,
            protocol=protocol, qid=qid, tls=tls,
            recipient=rcpt_addrs[0] if len(rcpt_addrs) == 1 else None,
        )
        # One copy of the message, not one per prepended field.
        stored = b"".join((deliver.return_path(sender), received, data) if user_ids else (received, data))
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
        mailbox_ids: tuple[int, ...] = ()
        if verdict is not None and verdict.action == "junk" and user_ids:
            mailbox_ids, others = await deliver.junk_mailboxes(self.services.store, tuple(user_ids))
            user_ids = dict.fromkeys(others)
        try:
            texts = None
            if not user_ids and not mailbox_ids:
                summary = b""  # only the queue reads it, and the queue never parses it
            elif costly:
                # The core counted the body's LFs already: the scan does not count them again.
                tail = deliver.counted_tail(event.data, event.line_feeds, stored)
                summary, texts = await self.services.offload(deliver.summarize_for_store, stored, tail)
            else:
                # (worked out only if the scan has a line count it can use it for)
                summary, texts = deliver.summarize_for_store(
                    stored, partial(deliver.counted_tail, event.data, event.line_feeds, stored)
                )
            result = await self.services.store.deliver(Delivery(
                data=stored, summary=summary, user_ids=tuple(user_ids),
                mailbox_ids=mailbox_ids, queue=queue, enforce_quota=True, search_texts=texts,
            ))
            if result.over_quota:
                if not result.placed and result.queued is None:
                    # Nobody could take it: one 552 5.2.2 for the whole transaction.
                    self.core.reject(MAILBOX_FULL)
                    self._log(event, qid, "552 5.2.2 over quota", started)
                    return
                await self._bounce_over_quota(event, qid, stored, result.over_quota)
        except BudgetExceeded:
            raise  # answered by _message
        except Exception as e:
            if isinstance(e, StoreUnavailable):  # a database restart: expected, no traceback
                logs.event(log, "store_unavailable", logging.WARNING, session=self.id, qid=qid)
            else:
                log.exception("delivery failed session=%s", self.id)
            self.core.reject(STORE_FAILED)
            self._log(event, qid, "451 store failed", started)
            return
        self.core.accept(R.MESSAGE_ACCEPTED.with_text(f"Ok: queued as {qid}"))
        inbox = self.services.tls_inbox
        if inbox is not None and user_ids and not self.submission and inbox.wants(rcpt_addrs):
            inbox.take(stored, qid)  # a TLS-RPT report (RFC 8460) about our domains
        self._log(event, qid, "250", started, local=len(user_ids) - len(result.over_quota),
                  remote=len(external), over_quota=len(result.over_quota))

    async def _bounce_over_quota(
        self, event: MessageComplete, qid: str, stored: bytes, over: tuple[int, ...]
    ) -> None:
        """Some local recipients are over quota, others got the message: DATA has one
        reply, so it is 250 and the full ones get a FAILURE DSN (5.2.2), made durable
        before the 250 (docs/protocols.md)."""
        from postroom.queue.bounce import bounce_local_failures

        failed = []
        for user_id in over:
            user = await self.services.store.get_user_by_id(user_id)
            if user is None:
                continue
            rcpt = None
            for r in event.recipients:
                a = r.path.address
                if a is not None and user_id in self.resolutions.get(self._target(a), _NONE).user_ids:
                    rcpt = r
                    break
            orcpt = notify = None
            if rcpt is not None:
                if rcpt.params.orcpt is not None:
                    orcpt = f"{rcpt.params.orcpt.addr_type};{rcpt.params.orcpt.address}"
                elif str(rcpt.path.address) != user.address:
                    orcpt = f"rfc822;{rcpt.path.address}"
                notify = ",".join(rcpt.params.notify) if rcpt.params.notify else None
            failed.append((user.address, orcpt, notify))
        sender = event.sender.address
        await bounce_local_failures(
            self.services.store, self.services.directory, self.services.settings.hostname,
            qid=qid, sender=str(sender) if sender is not None else "", original=stored,
            failed=failed, ret=event.mail_params.ret, envid=event.mail_params.envid,
            smtputf8=bool(event.mail_params.smtputf8),
        )

    # -- mail authentication (policy/): one call each, at end of data -------------------
    async def _dkim_sign(self, data: bytes) -> bytes:
        """Submission: DKIM-sign with the From: domain's keys (RFC 6376), once, before
        the message is queued."""
        signer = self.services.signer
        if signer is None:
            return data
        return await signer.sign(data, header_from_domain(data)) + data

    async def _auth_check(
        self, event: MessageComplete, data: bytes, qid: str, started: float
    ) -> tuple[bytes, AuthVerdict | None] | None:
        """MX: drop forged Authentication-Results, run SPF/DKIM/DMARC/ARC and prepend our
        Authentication-Results. None when the message was refused (DMARC p=reject)."""
        hostname = self.services.settings.hostname
        data, forged = drop_forged(data, hostname)
        checker = self.services.auth_checker
        if checker is None:
            return data, None
        sender = event.sender.address
        verdict = await checker.check(
            data, ip=self.conn.peer_ip, helo=self.helo, mail_from=str(sender) if sender else ""
        )
        self.services.metrics.auth_check("message", verdict.ms / 1000)
        recorder = self.services.dmarc_reports
        if recorder is not None:
            recorder.add(verdict, self.conn.peer_ip, str(sender) if sender else "")
        logs.event(
            log, "auth", session=self.id, id=qid, spf=verdict.spf.result,
            dkim=",".join(d.result for d in verdict.dkim) or "none", dmarc=verdict.dmarc.result,
            arc=verdict.arc, action=verdict.action, override=verdict.override or None,
            forged_ar=forged or None, ms=round(verdict.ms, 1),
        )
        if verdict.action == "reject":
            domain = verdict.dmarc.domain
            self.core.reject(DMARC_REJECT.with_text(
                f"Rejected by the DMARC policy of {domain} (no aligned SPF or DKIM pass)"
            ))
            self._log(event, qid, "550 5.7.1 dmarc", started)
            return None
        return verdict.header + data, verdict

    async def _arc_seal(self, data: bytes, verdict: AuthVerdict, rcpt_addrs: list[str]) -> bytes:
        """MX mail that an alias forwards to external addresses: add our ARC set (RFC 8617)
        so the final receiver can trust our results when forwarding broke SPF or DKIM."""
        signer = self.services.signer
        if signer is None or not self.services.settings.auth_checks.arc_seal:
            return data
        domains = [a.rpartition("@")[2] for a in rcpt_addrs if a in self.resolutions and self.resolutions[a].external]
        if not domains:
            return data
        return await signer.seal(
            data, domains[0], chain=verdict.arc, authserv_id=self.services.settings.hostname,
            results=resinfo_text(verdict.results),
        ) + data

    def _log(self, event: MessageComplete, qid: str, result: str, started: float, **extra: int) -> None:
        sender = event.sender.address
        accepted = result == "250"
        services = self.services
        services.metrics.command("smtp", "data")
        services.metrics.delivery("in", "accepted" if accepted else "refused")
        services.delivery_log.record(
            "in", qid, str(sender) if sender else "<>",
            ",".join(str(r.path.address) for r in event.recipients),
            "accepted" if accepted else "refused", result,
        )
        logs.event(
            log, "transaction", session=self.id, role=self.role, client=self.conn.peer_ip,
            helo=self.helo, tls=describe(self.conn.tls) or None,
            user=self.auth.user.address if self.auth.user else None,
            mail_from=str(sender) if sender else "<>",
            rcpt=",".join(self.rcpt_results) or ",".join(str(r.path.address) for r in event.recipients),
            size=len(event.data), id=qid, result=result,
            ms=round((time.monotonic() - started) * 1000, 1), **extra,
        )
