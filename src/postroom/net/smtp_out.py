"""The outbound SMTP shell: one connection to one remote server, driving ``proto.smtp.client``.

Theory of operation
-------------------
:meth:`SmtpOut.connect` opens a TCP connection (``connect_timeout``), reads the greeting,
says EHLO, upgrades with STARTTLS as the TLS policy asks, and authenticates when the route
carries credentials (a smarthost). It returns a ready session or raises :class:`SetupError`
(nothing was sent: the caller may try the next address). :meth:`SmtpOut.send` then delivers
one message and returns the core's ``TransactionResult``; call it again for the next message
to the same destination (connection reuse) while :attr:`SmtpOut.usable`. :meth:`SmtpOut.close`
says QUIT.

TLS policies (``[outbound] tls_policy``, RFC 3207 practice):

* ``none``: never STARTTLS.
* ``may`` (default): STARTTLS when offered, any certificate (an unauthenticated encrypted
  channel beats plaintext; RFC 7435 opportunistic security). If the handshake fails the
  caller retries the same address in plaintext (``SetupError.tls_failed``), as Postfix does.
* ``require``: STARTTLS must be offered and succeed; any certificate.
* ``verify``: as ``require``, and the certificate must be valid for the MX host name (system
  CAs, or ``[outbound] tls_ca_file``). Also what an MTA-STS ``enforce`` policy asks
  (RFC 8461 4.2; ``queue.security`` picks it per MX host).
* ``dane``: as ``require``, and the chain the server sends must match the MX host's
  DNSSEC-validated TLSA records (RFC 7672; ``OutboundOptions.tlsa``, ``policy.dane``).

AUTH (RFC 4954) uses PLAIN, else LOGIN, and only over TLS or to a loopback address: a
password never crosses a network in clear.

All reads use the RFC 5321 4.5.3.2 timeouts the core names, capped by ``read_timeout``; a
write of message data that cannot drain for ``DATA_BLOCK_TIMEOUT`` ends the session. The
shell owns no protocol logic: it moves bytes and reports what only it can see (end of
stream, timeouts, the TLS handshake).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from postroom.net.connection import ByteStream
from postroom.policy.dane import TlsaRecord
from postroom.policy.dane import verify as dane_verify
from postroom.proto.sasl import client_mechanism
from postroom.proto.smtp.client import (
    CLOSED,
    DATA_BLOCK_TIMEOUT,
    IDLE,
    NEED_DATA,
    AuthFailed,
    AuthSucceeded,
    Cause,
    Closed,
    Envelope,
    Extensions,
    Greeting,
    SessionFailed,
    SessionReady,
    SmtpClient,
    StartTlsRefused,
    TlsStart,
    TransactionResult,
)
from postroom.proto.smtp.replies import Reply
from postroom.queue.model import TransportError
from postroom.queue.routing import Target
from postroom.tls import describe

QUIT_TIMEOUT = 5.0  # a polite QUIT is not worth waiting long for
TLS_HANDSHAKE_TIMEOUT = 60.0

_CAUSES = {
    Cause.TIMEOUT: TransportError.TIMEOUT,
    Cause.CONNECTION_LOST: TransportError.CONNECTION_LOST,
    Cause.TLS_FAILED: TransportError.TLS_FAILED,
    Cause.PROTOCOL_ERROR: TransportError.PROTOCOL_ERROR,
}


@dataclass(frozen=True, slots=True)
class OutboundOptions:
    """How to talk to one destination."""

    helo_name: str
    tls_policy: str = "may"
    connect_timeout: float = 30.0
    read_timeout: float = 600.0
    username: str = ""
    password: str = ""
    ca_file: Path | None = None
    tlsa: tuple[TlsaRecord, ...] = ()  # the ``dane`` policy's records


MANDATORY_TLS = frozenset({"require", "verify", "dane"})


class SetupError(Exception):
    """The session with one address could not be set up; nothing was sent. Always a
    temporary condition for the message (a 5xx greeting too: another MX, or later, may
    work, like Postfix's ``smtp_skip_5xx_greeting``). ``status`` is an RFC 3463 code of
    class 4; ``error`` the transport failure (None when the server said ``reply``)."""

    def __init__(
        self,
        diagnostic: str,
        *,
        status: str,
        error: TransportError | None = None,
        reply: Reply | None = None,
        tls_failed: bool = False,
        tls_result: str = "",
        local_ip: str = "",
    ) -> None:
        super().__init__(diagnostic)
        self.diagnostic = diagnostic
        self.status = status
        self.error = error
        self.reply = reply
        self.tls_failed = tls_failed
        self.tls_result = tls_result  # RFC 8460 4.3 result type when TLS was the problem
        self.local_ip = local_ip  # our end of the connection (TLS-RPT sending-mta-ip)

    @property
    def at_greeting(self) -> bool:
        return self.reply is not None


def reply_text(reply: Reply) -> str:
    """"550 5.1.1 text" on one line, as DSN diagnostics and logs show replies."""
    code = f"{reply.code} {reply.enhanced} " if reply.enhanced else f"{reply.code} "
    return code + " ".join(line.strip() for line in reply.lines).strip()


def _temporary_status(reply: Reply | None, default: str = "4.0.0") -> str:
    if reply is not None and reply.enhanced:
        return "4" + reply.enhanced[1:]
    return default


# --- the byte pipe ---------------------------------------------------------------------------


class _Stream(ByteStream):
    """Client side of one TCP connection: awaitable reads with a timeout, bounded buffering,
    write backpressure, STARTTLS (the byte pipe itself is ``net.connection.ByteStream``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    async def read(self, timeout: float) -> bytes:
        """Received bytes (at least one), or b"" at end of stream; TimeoutError."""
        if not self._chunks and not self._eof:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            finally:
                self._waiter = None
        return self._take() if self._chunks else b""

    async def drain(self, timeout: float) -> None:
        if self._write_paused and not self._closed:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._drain_waiter
            finally:
                self._drain_waiter = None

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> str:
        """Upgrade (client side); returns a description of the protocol and cipher."""
        assert self.transport is not None
        self._drop_received()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(TLS_HANDSHAKE_TIMEOUT):
            new = await loop.start_tls(
                self.transport, self, context, server_side=False, server_hostname=server_hostname
            )
        if new is None:
            raise ConnectionError("connection closed during the TLS handshake")
        self.transport = new
        return describe(new.get_extra_info("ssl_object"))

    def peer_chain(self) -> list[bytes]:
        """The certificates the server sent, leaf first, DER, unverified (for DANE).
        ``get_unverified_chain`` is public from Python 3.13; 3.10-3.12 have it on the
        underlying ``_ssl`` object."""
        assert self.transport is not None
        obj: Any = self.transport.get_extra_info("ssl_object")
        if obj is None:
            return []
        getter = getattr(obj, "get_unverified_chain", None) or obj._sslobj.get_unverified_chain
        chain = getter() or []
        return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]


# --- TLS contexts ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _opportunistic_context() -> ssl.SSLContext:
    """Encrypt, authenticate nothing (``may``/``require``): RFC 7435 opportunistic TLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@lru_cache(maxsize=8)
def _verifying_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# OpenSSL X509_V_ERR_* codes that TLS-RPT names (RFC 8460 4.3.1)
_X509_EXPIRED = 10
_X509_HOSTNAME_MISMATCH = 62
_X509_UNTRUSTED = frozenset({2, 18, 19, 20, 21, 27})


def tls_result_of(error: BaseException) -> str:
    """The RFC 8460 4.3.1 result type of a failed handshake."""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code == _X509_EXPIRED:
            return "certificate-expired"
        if code == _X509_HOSTNAME_MISMATCH:
            return "certificate-host-mismatch"
        if code in _X509_UNTRUSTED:
            return "certificate-not-trusted"
    return "validation-failure"


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# --- the session -------------------------------------------------------------------------------


class SmtpOut:
    """One outbound SMTP session; see the module docstring."""

    def __init__(self, target: Target, options: OutboundOptions, stream: _Stream, *, tls: bool) -> None:
        self.target = target
        self.options = options
        self.stream = stream
        self.want_tls = tls and options.tls_policy != "none"
        self.core = SmtpClient(options.helo_name)
        self.extensions: Extensions | None = None
        self.tls = ""  # "TLSv1.3 TLS_AES_256_GCM_SHA384" once encrypted
        self.tls_error = ""
        self.tls_result = ""  # RFC 8460 4.3 result type of a TLS failure
        self.starttls_offered = False
        sockname = stream.transport.get_extra_info("sockname") if stream.transport is not None else None
        self.local_ip = str(sockname[0]) if sockname else ""
        self.messages = 0

    @classmethod
    async def connect(
        cls, target: Target, options: OutboundOptions, *, tls: bool = True
    ) -> SmtpOut:
        """A ready session with ``target``, or SetupError. ``tls=False`` skips STARTTLS
        (the plaintext retry after a failed handshake under the ``may`` policy)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(options.connect_timeout):
                _, stream = await loop.create_connection(_Stream, target.address, target.port)
        except TimeoutError:
            raise SetupError(
                f"connect to {target.label}: timed out", status="4.4.1",
                error=TransportError.CONNECTION_REFUSED,
            ) from None
        except OSError as e:
            raise SetupError(
                f"connect to {target.label}: {e.strerror or e}", status="4.4.1",
                error=TransportError.CONNECTION_REFUSED,
            ) from None
        session = cls(target, options, stream, tls=tls)
        try:
            await session._setup()
        except SetupError as e:
            stream.abort()
            e.local_ip = session.local_ip
            e.tls_result = e.tls_result or (session.tls_result if e.tls_failed else "")
            raise
        except BaseException:
            stream.abort()
            raise
        return session

    @property
    def usable(self) -> bool:
        """Another message may be sent on this connection."""
        return self.core.idle and not self.stream.closed

    @property
    def remote_mta(self) -> str:
        return self.target.name

    async def _step(self) -> Any:
        """Run the core until it has something for us (an event, IDLE or CLOSED)."""
        core = self.core
        while True:
            event = core.next_event()
            out = core.data_to_send()
            if out:
                self.stream.write(out)
                try:
                    await self.stream.drain(DATA_BLOCK_TIMEOUT)  # RFC 5321 4.5.3.2.5
                except TimeoutError:
                    core.timed_out()
                    continue
            if event is NEED_DATA:
                timeout = min(core.timeout or self.options.read_timeout, self.options.read_timeout)
                try:
                    data = await self.stream.read(timeout)
                except TimeoutError:
                    core.timed_out()
                    continue
                if data:
                    core.receive_data(data)
                else:
                    core.receive_eof()
                continue
            return event

    def _failed(self, event: SessionFailed) -> SetupError:
        reply = event.reply
        if event.cause is Cause.REPLY:
            return SetupError(
                f"{self.target.label} said: {reply_text(reply)}",
                status=_temporary_status(reply), reply=reply,
            )
        error = _CAUSES.get(event.cause, TransportError.CONNECTION_LOST)
        where = f" ({event.during.value})" if event.during is not None else ""
        detail = f": {self.tls_error}" if event.cause is Cause.TLS_FAILED and self.tls_error else ""
        return SetupError(
            f"{self.target.label}: {reply.text}{where}{detail}",
            status=_temporary_status(reply, "4.4.2"), error=error,
            tls_failed=event.cause is Cause.TLS_FAILED,
        )

    async def _refuse(
        self, diagnostic: str, status: str, error: TransportError, tls_result: str = ""
    ) -> SetupError:
        await self.close()
        return SetupError(f"{self.target.label}: {diagnostic}", status=status, error=error, tls_result=tls_result)

    async def _setup(self) -> None:
        policy = self.options.tls_policy
        while True:
            event = await self._step()
            if isinstance(event, Greeting):
                continue
            if isinstance(event, SessionReady):
                self.extensions = event.extensions
                self.starttls_offered = self.starttls_offered or event.extensions.starttls
                if not event.tls and self.want_tls:
                    if event.extensions.starttls:
                        self.core.starttls()
                        continue
                    if policy in MANDATORY_TLS:
                        raise await self._refuse(
                            "TLS is required, but was not offered by the host", "4.7.4",
                            TransportError.TLS_FAILED, "starttls-not-supported",
                        )
                if await self._maybe_auth():
                    continue
                return
            if isinstance(event, TlsStart):
                await self._handshake()
                continue
            if isinstance(event, StartTlsRefused):
                if policy in MANDATORY_TLS:
                    raise await self._refuse(
                        f"STARTTLS refused: {reply_text(event.reply)}", "4.7.4",
                        TransportError.TLS_FAILED, "starttls-not-supported",
                    )
                if await self._maybe_auth():
                    continue
                return
            if isinstance(event, AuthSucceeded):
                return
            if isinstance(event, AuthFailed):
                reason = f" ({event.reason})" if event.reason else ""
                raise await self._refuse(
                    f"authentication failed: {reply_text(event.reply)}{reason}",
                    _temporary_status(event.reply, "4.7.0"), TransportError.PROTOCOL_ERROR,
                )
            if isinstance(event, SessionFailed):
                raise self._failed(event)
            raise SetupError(  # IDLE / CLOSED / Closed: the server went away
                f"{self.target.label}: connection closed during set-up", status="4.4.2",
                error=TransportError.CONNECTION_LOST,
            )

    async def _handshake(self) -> None:
        verify = self.options.tls_policy == "verify"
        if verify:
            ctx = _verifying_context(self.options.ca_file)
            server_hostname: str | None = self.target.name
        else:
            ctx = _opportunistic_context()
            server_hostname = None if _is_ip(self.target.name) else self.target.name
        if self.options.tls_policy == "dane":  # SNI is the MX name (RFC 7672 8.1)
            server_hostname = None if _is_ip(self.target.name) else self.target.name
        try:
            self.tls = await self.stream.start_tls(ctx, server_hostname)
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError, ValueError) as e:
            self.tls_error = str(e) or type(e).__name__
            self.tls_result = tls_result_of(e)
            self.core.tls_failed()
            return
        if self.options.tls_policy == "dane":
            problem = dane_verify(self.options.tlsa, self.stream.peer_chain(), self.target.name)
            if problem is not None:
                self.tls_error = f"DANE: {problem}"
                self.tls_result = "validation-failure"
                self.core.tls_failed()
                return
        self.core.tls_established()

    async def _maybe_auth(self) -> bool:
        """Start AUTH when the route has credentials; True when an exchange started."""
        options = self.options
        if not options.username or self.core.authenticated:
            return False
        ext = self.core.extensions
        assert ext is not None
        if not self.tls and not _is_loopback(self.target.address):
            raise await self._refuse(
                "refusing to send credentials without TLS", "4.7.0", TransportError.TLS_FAILED
            )
        for name in ("PLAIN", "LOGIN"):
            if name in ext.auth:
                self.core.authenticate(client_mechanism(name, options.username, options.password))
                return True
        raise await self._refuse(
            "the host offers no AUTH mechanism we use (PLAIN, LOGIN)", "4.7.0",
            TransportError.PROTOCOL_ERROR,
        )

    async def send(self, envelope: Envelope, message: bytes) -> TransactionResult:
        """Deliver one message; the core's per-recipient verdicts. Never raises for
        anything the server does: a lost connection is a temporary result."""
        self.core.send_message(envelope, message)
        while True:
            event = await self._step()
            if isinstance(event, TransactionResult):
                self.messages += 1
                return event
            if event is CLOSED or event is IDLE or isinstance(event, (SessionFailed, Closed)):
                # Not reachable with a correct core: every send ends with a result first.
                raise RuntimeError(f"SMTP client core ended a transaction without a result: {event!r}")

    async def close(self) -> None:
        """QUIT (bounded wait), then close the socket."""
        try:
            if self.core.idle and not self.stream.closed:
                self.core.quit()
                async with asyncio.timeout(QUIT_TIMEOUT):
                    while True:
                        event = await self._step()
                        if event is CLOSED or isinstance(event, (Closed, SessionFailed)):
                            break
                        if event is IDLE:
                            break
        except (TimeoutError, OSError, ConnectionError):
            pass
        finally:
            self.stream.close()

    def abort(self) -> None:
        self.stream.abort()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
