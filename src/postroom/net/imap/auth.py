"""Capabilities, STARTTLS, LOGIN and AUTHENTICATE (RFC 9051 6.2, RFC 4959 SASL-IR).

Passwords never travel in clear text unless the configuration says so
(``imap.allow_plaintext_auth``): on the plain port before STARTTLS we advertise
``LOGINDISABLED`` (RFC 9051 6.2.3), refuse LOGIN and the PLAIN/LOGIN mechanisms with
``NO [PRIVACYREQUIRED]`` (RFC 5530), and offer only SCRAM-SHA-256, which does not reveal
the password. Every failure is delayed and counted by the shared
:class:`~postroom.net.auth.AuthTracker` (same policy as SMTP AUTH and POP3); after
``limits.auth_failures`` failures the connection is closed with ``* BYE``. A login the
per-address or per-user rules refuse (auth/failures.py) gets ``NO [UNAVAILABLE]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postroom.net.auth import MECHANISMS, TEXT_REFUSED, LoginRefused
from postroom.proto.imap import responses
from postroom.proto.imap.commands import Authenticate, Login, StartTls
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.receiver import AuthCancelled, AuthResponse
from postroom.proto.sasl import PLAINTEXT_MECHANISMS, Challenge, Success

if TYPE_CHECKING:
    from postroom.net.imap.session import ImapSession

# Everything we implement beyond the base protocol (advertised before and after login, so
# clients that read the greeting only, like Python's imaplib, see all of it).
EXTENSIONS = (
    "LITERAL+",  # RFC 7888
    "SASL-IR",  # RFC 4959
    "ID",  # RFC 2971
    "ENABLE",  # RFC 5161
    "IDLE",  # RFC 2177
    "NAMESPACE",  # RFC 2342
    "UNSELECT",  # RFC 3691
    "CHILDREN",  # RFC 3348
    "LIST-EXTENDED",  # RFC 5258
    "LIST-STATUS",  # RFC 5819
    "SPECIAL-USE",  # RFC 6154
    "CREATE-SPECIAL-USE",  # RFC 6154 3
    "UIDPLUS",  # RFC 4315
    "MOVE",  # RFC 6851
    "CONDSTORE",  # RFC 7162
    "QRESYNC",  # RFC 7162
    "ESEARCH",  # RFC 4731
    "SEARCHRES",  # RFC 5182
    "WITHIN",  # RFC 5032
    "SORT",  # RFC 5256
    "SORT=DISPLAY",  # RFC 5957
    "THREAD=ORDEREDSUBJECT",  # RFC 5256
    "THREAD=REFERENCES",  # RFC 5256
    "BINARY",  # RFC 3516
    "MULTIAPPEND",  # RFC 3502 (atomic: append.py)
    "UTF8=ACCEPT",  # RFC 6855
    "STATUS=SIZE",  # RFC 8438
    "CATENATE",  # RFC 4469
    "QUOTA",  # RFC 9208 (no QUOTASET: quota.py)
    "QUOTA=RES-STORAGE",
    "QUOTA=RES-MESSAGE",
    "ACL",  # RFC 4314
    "RIGHTS=texk",
    "ESORT",  # RFC 5267 3 (contexts.py)
    "CONTEXT=SEARCH",  # RFC 5267 4
    "CONTEXT=SORT",
    "PARTIAL",  # RFC 9394: SEARCH/SORT RETURN (PARTIAL) and the FETCH modifier (fetch.py)
    "METADATA",  # RFC 5464 (metadata.py)
    "URLAUTH",  # RFC 4467 (urlauth.py; BURL on submission)
    "NOTIFY",  # RFC 5465 (notify.py)
)
TEXT_AUTH_FAILED = "Authentication failed"
TEXT_PRIVACY = "Use STARTTLS (or the IMAPS port) before sending a password"


def mechanisms(s: ImapSession) -> tuple[str, ...]:
    """SASL mechanisms offered now: the plaintext ones only where passwords may travel."""
    if s.plaintext_ok:
        return MECHANISMS
    return tuple(m for m in MECHANISMS if m not in PLAINTEXT_MECHANISMS)


def capabilities(s: ImapSession) -> list[str]:
    caps = ["IMAP4rev1", "IMAP4rev2"]
    if s.user is None:
        if s.services.tls.available and not s.tls_active and not s.listener.implicit_tls:
            caps.append("STARTTLS")
        if not s.plaintext_ok:
            caps.append("LOGINDISABLED")
        caps.extend("AUTH=" + m for m in mechanisms(s))
    caps.extend(EXTENSIONS)
    caps.append(f"APPENDLIMIT={s.settings.limits.message_size}")  # RFC 7889
    if s.deflate is None:
        caps.append("COMPRESS=DEFLATE")  # RFC 4978
    return caps


async def starttls(s: ImapSession, cmd: StartTls) -> bytes | None:
    # RFC 9051 6.2.1
    ctx = s.services.tls.context
    if s.tls_active:
        raise ImapPeerError("TLS is already active", tag=cmd.tag)
    if ctx is None:
        raise ImapPeerError("TLS is not available", status="NO", tag=cmd.tag)
    s.write(responses.ok(cmd.tag, "Begin TLS negotiation now"))
    await s.flush()
    # Anything pipelined after STARTTLS was sent in clear text: drop it (CVE-2011-0411).
    s.rx.discard_buffered()
    await s.conn.start_tls(ctx, timeout=s.settings.limits.smtp_idle_timeout)
    return None


async def login(s: ImapSession, cmd: Login) -> bytes:
    # RFC 9051 6.2.3
    if not s.plaintext_ok:
        raise ImapPeerError(TEXT_PRIVACY, status="NO", code="PRIVACYREQUIRED", tag=cmd.tag)
    try:
        password = cmd.password.decode("utf-8")
    except UnicodeDecodeError:
        password = None
    try:
        user = await s.auth.verify_password(cmd.username, password) if password else None
    except LoginRefused as e:
        return await _failed(s, cmd.tag, cmd.username, "LOGIN", e.reason)
    if user is None:
        return await _failed(s, cmd.tag, cmd.username, "LOGIN")
    await s.login(user, "LOGIN")
    return _logged_in(s, cmd.tag)


async def authenticate(s: ImapSession, cmd: Authenticate) -> bytes:
    # RFC 9051 6.2.2, RFC 4959 (initial response)
    name = cmd.mechanism
    if name not in MECHANISMS:
        raise ImapPeerError("Unsupported authentication mechanism", status="NO", tag=cmd.tag)
    if name not in mechanisms(s):
        raise ImapPeerError(TEXT_PRIVACY, status="NO", code="PRIVACYREQUIRED", tag=cmd.tag)
    try:
        step = await s.auth.start(name, cmd.initial_response)
        while isinstance(step, Challenge):
            s.write(responses.continuation_data(step.data))
            s.rx.expect_auth_response(cmd.tag)
            event = await s.next_event(raise_errors=True)
            if isinstance(event, AuthCancelled):
                # RFC 9051 6.2.2: "*" cancels; the server answers BAD.
                return responses.bad(cmd.tag, "Authentication cancelled")
            if not isinstance(event, AuthResponse):
                from postroom.net.imap.session import Closing

                raise Closing()
            step = await s.auth.respond(event.data)
    except LoginRefused as e:
        s.auth.user = None
        return await _failed(s, cmd.tag, None, name, e.reason)
    user = s.auth.user
    if isinstance(step, Success) and user is not None:
        await s.login(user, name)
        return _logged_in(s, cmd.tag)
    s.auth.user = None
    return await _failed(s, cmd.tag, None, name)


def _logged_in(s: ImapSession, tag: str) -> bytes:
    # RFC 9051 7.1: the capabilities change at login; say them right away.
    return responses.ok(tag, "Logged in", responses.code_capability(capabilities(s)))


async def _failed(
    s: ImapSession, tag: str, username: str | None, mechanism: str, refused: str = ""
) -> bytes:
    must_close = await s.auth.failed(username, mechanism, refused)
    if refused:
        # Blocked address or locked user (auth/failures.py): the password was not
        # checked; RFC 5530 UNAVAILABLE is temporary, so clients do not ask the user
        # for another password.
        reply = responses.no(tag, TEXT_REFUSED, responses.UNAVAILABLE)
    else:
        reply = responses.no(tag, TEXT_AUTH_FAILED, responses.AUTHENTICATIONFAILED)
    if must_close:
        from postroom.net.imap.session import Closing

        s.write(reply)
        s.write(responses.bye("Too many authentication failures"))
        raise Closing()
    return reply


HANDLERS = {StartTls: starttls, Login: login, Authenticate: authenticate}
