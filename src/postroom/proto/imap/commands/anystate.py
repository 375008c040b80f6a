"""Commands of any state and of the not-authenticated state (RFC 9051 6.1, 6.2).

CAPABILITY, NOOP, LOGOUT, ID (RFC 2971), STARTTLS, AUTHENTICATE (with SASL-IR, RFC 4959)
and LOGIN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postroom.proto.imap.commands.base import Command, CommandParser, no_arguments
from postroom.proto.imap.grammar import Parser, decode_base64, decode_utf8

# RFC 2971 3.3: at most 30 pairs, field names up to 30 octets, values up to 1024 octets.
ID_MAX_PAIRS = 30
ID_MAX_FIELD = 30
ID_MAX_VALUE = 1024


@dataclass(frozen=True, slots=True)
class Capability(Command):
    NAME = "CAPABILITY"


@dataclass(frozen=True, slots=True)
class Noop(Command):
    NAME = "NOOP"


@dataclass(frozen=True, slots=True)
class Logout(Command):
    NAME = "LOGOUT"


@dataclass(frozen=True, slots=True)
class StartTls(Command):
    """After the tagged OK, discard buffered input (``Receiver.discard_buffered``)."""

    NAME = "STARTTLS"


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """``mechanism`` upper-cased; ``initial_response`` decoded (None: none sent, b"": "=")."""

    NAME = "AUTHENTICATE"
    mechanism: str
    initial_response: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Login(Command):
    """The password is kept as sent (octets, never logged)."""

    NAME = "LOGIN"
    username: str
    password: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Id(Command):
    """Client identification (RFC 2971); ``params`` None for ``ID NIL``."""

    NAME = "ID"
    params: tuple[tuple[str, str | None], ...] | None


def parse_authenticate(p: Parser, tag: str) -> Authenticate:
    # authenticate = "AUTHENTICATE" SP auth-type [SP (base64 / "=")]
    p.sp()
    mechanism = p.keyword("a SASL mechanism")
    initial = None
    if p.try_sp():
        raw = p.atom("an initial response")
        # RFC 4959 3: "=" is the empty initial response; otherwise strict base64.
        initial = b"" if raw == b"=" else decode_base64(raw)
    return Authenticate(tag, mechanism, initial)


def parse_login(p: Parser, tag: str) -> Login:
    # login = "LOGIN" SP userid SP password ; both astring
    p.sp()
    username = decode_utf8(p.astring(), "user name")
    p.sp()
    password = p.astring()
    return Login(tag, username, password)


def parse_id(p: Parser, tag: str) -> Id:
    # id = "ID" SP id-params-list ; id-params-list = "(" *(string SP nstring) ")" / nil
    p.sp()
    if p.try_keyword("NIL"):
        return Id(tag, None)
    pairs: list[tuple[str, str | None]] = []

    def pair() -> None:
        key = p.string()
        p.sp()
        value = p.nstring()
        if len(key) > ID_MAX_FIELD or (value is not None and len(value) > ID_MAX_VALUE):
            raise p.error("ID field or value too long")
        pairs.append(
            (
                key.decode("utf-8", "replace"),
                None if value is None else value.decode("utf-8", "replace"),
            )
        )
        if len(pairs) > ID_MAX_PAIRS:
            raise p.error("Too many ID fields")

    p.paren_list(pair)
    return Id(tag, tuple(pairs))


PARSERS: dict[str, CommandParser] = {
    "CAPABILITY": no_arguments(Capability),
    "NOOP": no_arguments(Noop),
    "LOGOUT": no_arguments(Logout),
    "STARTTLS": no_arguments(StartTls),
    "AUTHENTICATE": parse_authenticate,
    "LOGIN": parse_login,
    "ID": parse_id,
}
