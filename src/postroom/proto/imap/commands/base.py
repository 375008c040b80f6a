"""What every command shares: the base class, connection states, the legality table and
the command head (tag + name) parser.

The head is parsed on its own because the receiver must know the tag and the command
before it answers a literal announcement: a command that is unknown or not valid in the
current state is refused before the client sends any literal data (RFC 9051 7.5).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from postroom.proto.imap.grammar import ATOM, TAG, ImapPeerError, Parser


class State(enum.Enum):
    """Connection states (RFC 9051 3)."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"

    # Members are singletons compared by identity: the C-level identity hash agrees with
    # that, and spares the Python-level Enum.__hash__ on every command's state check.
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every parsed command: ``tag`` is echoed in the tagged response."""

    tag: str
    NAME: ClassVar[str] = ""

    @property
    def name(self) -> str:
        """The command name as in the legality table ("UID FETCH" for UID forms)."""
        return self.NAME


# Error texts.
TEXT_BAD_TAG = "Missing or invalid tag"
TEXT_NO_COMMAND = "Missing command"
TEXT_UNKNOWN = "Unknown command"
TEXT_BAD_STATE = "Command not valid in this state"
TEXT_NO_ARGUMENTS = "This command takes no arguments"

_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})

# Which command is valid in which state (RFC 9051 6.1-6.4, RFC 3501 6, extensions).
# Nothing is valid in LOGOUT. Commands of the authenticated state are valid in the selected
# state too (RFC 9051 3.3). ENABLE is allowed after SELECT as RFC 5161 3 permits.
COMMAND_STATES: dict[str, frozenset[State]] = {
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,  # RFC 2971 3.1
    "STARTTLS": _NOT_AUTH,
    "AUTHENTICATE": _NOT_AUTH,
    "LOGIN": _NOT_AUTH,
    "ENABLE": _AUTH,
    "SELECT": _AUTH,
    "EXAMINE": _AUTH,
    "CREATE": _AUTH,
    "DELETE": _AUTH,
    "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH,
    "UNSUBSCRIBE": _AUTH,
    "LIST": _AUTH,
    "LSUB": _AUTH,
    "NAMESPACE": _AUTH,
    "STATUS": _AUTH,
    "APPEND": _AUTH,
    "IDLE": _AUTH,  # RFC 2177 3
    "COMPRESS": _AUTH,  # RFC 4978 3
    "GETQUOTA": _AUTH,  # RFC 9208 4.2
    "GETQUOTAROOT": _AUTH,
    "SETQUOTA": _AUTH,
    "SETACL": _AUTH,  # RFC 4314 3
    "DELETEACL": _AUTH,
    "GETACL": _AUTH,
    "LISTRIGHTS": _AUTH,
    "MYRIGHTS": _AUTH,
    "GETMETADATA": _AUTH,  # RFC 5464 4
    "SETMETADATA": _AUTH,
    "GENURLAUTH": _AUTH,  # RFC 4467 7
    "RESETKEY": _AUTH,
    "URLFETCH": _AUTH,
    "NOTIFY": _AUTH,  # RFC 5465 8
    "CANCELUPDATE": _SELECTED,  # RFC 5267 5
    "CHECK": _SELECTED,
    "CLOSE": _SELECTED,
    "UNSELECT": _SELECTED,  # RFC 3691
    "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED,
    "FETCH": _SELECTED,
    "STORE": _SELECTED,
    "COPY": _SELECTED,
    "MOVE": _SELECTED,  # RFC 6851
    "SORT": _SELECTED,  # RFC 5256
    "THREAD": _SELECTED,
    "UID COPY": _SELECTED,
    "UID MOVE": _SELECTED,
    "UID FETCH": _SELECTED,
    "UID SEARCH": _SELECTED,
    "UID STORE": _SELECTED,
    "UID EXPUNGE": _SELECTED,  # RFC 4315 2.1
    "UID SORT": _SELECTED,
    "UID THREAD": _SELECTED,
}

# Commands without arguments: a literal announced for one is refused at once.
NO_ARGUMENT_COMMANDS = frozenset(
    {
        "CAPABILITY",
        "NOOP",
        "LOGOUT",
        "STARTTLS",
        "NAMESPACE",
        "IDLE",
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
    }
)


def allowed_in(name: str, state: State) -> bool:
    """Is the command (as in :data:`COMMAND_STATES`) valid in ``state``?"""
    states = COMMAND_STATES.get(name)
    return states is not None and state in states


def check_state(command: Command, state: State) -> None:
    """Raise the tagged ``BAD`` for a command not valid in ``state``."""
    if not allowed_in(command.name, state):
        raise ImapPeerError(TEXT_BAD_STATE, tag=command.tag)


class Head(NamedTuple):
    """Tag and command name of a command line; ``end`` is where the arguments start."""

    tag: str
    name: str
    end: int


def parse_head(line: bytes, state: State | None = None) -> Head:
    """Tag and command name of ``line`` (RFC 9051 2.2.1, ``command = tag SP ...``).

    No valid tag → untagged ``* BAD``; no or unknown command, or (when ``state`` is
    given) a command not valid in that state → tagged ``BAD``.
    """
    m = TAG.match(line)
    if m is None or m.end() < len(line) and line[m.end()] not in (0x20, 0x0D, 0x0A):
        raise ImapPeerError(TEXT_BAD_TAG)
    tag = m.group().decode("ascii")
    pos = m.end()
    if line[pos : pos + 1] != b" ":
        raise ImapPeerError(TEXT_NO_COMMAND, tag=tag)
    m = ATOM.match(line, pos + 1)
    if m is None:
        raise ImapPeerError(TEXT_NO_COMMAND, tag=tag)
    word = m.group().upper()
    pos = m.end()
    if word == b"UID":
        m = ATOM.match(line, pos + 1) if line[pos : pos + 1] == b" " else None
        if m is None:
            raise ImapPeerError(TEXT_UNKNOWN, tag=tag)
        word = b"UID " + m.group().upper()
        pos = m.end()
    # Known names only, as bytes: no decoding of what the client sent (every command).
    name = _NAMES.get(word)
    if name is None:
        raise ImapPeerError(TEXT_UNKNOWN, tag=tag)
    if state is not None and state not in COMMAND_STATES[name]:
        raise ImapPeerError(TEXT_BAD_STATE, tag=tag)
    return _new_head(Head, (tag, name, pos))


_NAMES = {name.encode("ascii"): name for name in COMMAND_STATES}
_new_head = tuple.__new__  # Head(...) without the Python-level NamedTuple __new__


# A command parser: the cursor stands right after the command name.
CommandParser = Callable[[Parser, str], Command]


def no_arguments(cls: Callable[[str], Command]) -> CommandParser:
    """Parser for a command without arguments (the caller checks the line ends)."""

    def parse(p: Parser, tag: str) -> Command:
        return cls(tag)

    return parse
