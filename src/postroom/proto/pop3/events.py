"""Events the POP3 core hands to its shell, and the data the shell hands back.

Nouns, frozen: the shell matches on them. Events marked *answer* block the core until the
shell calls the named method on the connection; the others need no answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from postroom.proto.pop3.replies import ResponseCode


class Pop3State(enum.Enum):
    """RFC 1939 section 3, plus CLOSED once the session is over."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class MaildropItem(NamedTuple):
    """One message of the snapshot the shell gives at login.

    ``size``: octets as sent by RETR, before byte-stuffing (:func:`wire_size`);
    ``uidl``: the unique-id, 1-70 characters in 0x21-0x7E (RFC 1939 section 7).
    """

    size: int
    uidl: str


class LoginError(enum.Enum):
    """Why a login was refused; chooses the response code (RFC 2449 section 8, RFC 3206)."""

    AUTH = ResponseCode.AUTH  # wrong credentials
    IN_USE = ResponseCode.IN_USE  # maildrop locked by another session
    LOGIN_DELAY = ResponseCode.LOGIN_DELAY  # too soon after the last login
    SYS_TEMP = ResponseCode.SYS_TEMP  # store unavailable, try later
    SYS_PERM = ResponseCode.SYS_PERM  # account disabled, or similar


@dataclass(frozen=True, slots=True)
class NeedData:
    """Feed more bytes (``receive_data``) before asking for the next event."""


@dataclass(frozen=True, slots=True)
class PassRequest:
    """*answer* ``login_ok(maildrop)`` / ``login_failed(error)``: check the password,
    lock and snapshot the maildrop. ``mechanism``: "USER" (USER/PASS), "PLAIN" or "LOGIN"."""

    username: str
    password: str = field(repr=False)
    mechanism: str = "USER"


@dataclass(frozen=True, slots=True)
class CredentialsRequest:
    """*answer* ``credentials(creds | None)``: the user's stored SCRAM credentials."""

    username: str
    mechanism: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """*answer* ``login_ok(maildrop)`` / ``login_failed(error)``: a SASL exchange proved
    who the client is (SCRAM); lock and snapshot the maildrop."""

    username: str
    mechanism: str


@dataclass(frozen=True, slots=True)
class Retrieve:
    """*answer* ``retrieved(content)`` (returns the bytes to write) or ``retrieve_failed()``.

    ``index`` is 0-based into the login snapshot (message number - 1); ``top_lines`` is
    None for RETR, the body line count for TOP.
    """

    index: int
    top_lines: int | None = None


@dataclass(frozen=True, slots=True)
class StartTls:
    """*answer* ``tls_started()``: write ``data_to_send()``, run the TLS handshake, then
    call it. Unread input has been discarded (RFC 2595 section 4)."""


@dataclass(frozen=True, slots=True)
class Commit:
    """*answer* ``update_done(ok)``: QUIT in TRANSACTION (RFC 1939 section 6). Remove the
    ``deleted`` messages (0-based snapshot indexes, ascending) atomically, then answer."""

    deleted: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: write ``data_to_send()``, close, release the maildrop lock.

    Nothing was deleted unless a Commit was answered with ``update_done(True)``.
    """

    reason: str


Event = (
    NeedData
    | PassRequest
    | CredentialsRequest
    | Authenticated
    | Retrieve
    | StartTls
    | Commit
    | Closed
)
NEED_DATA = NeedData()
