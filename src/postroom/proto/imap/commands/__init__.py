"""Parsed IMAP commands: one frozen dataclass per command, parsers grouped by state.

:func:`parse_command` turns one complete command (as collected by the receiver: the line
with its literal markers, plus the literal payloads) into a typed :class:`Command`, or
raises :class:`ImapPeerError` carrying the tagged or untagged BAD/NO to send. The state
table (:data:`COMMAND_STATES`, :func:`allowed_in`, :func:`check_state`) answers "not
valid in this state"; the receiver applies it before accepting any literal.
"""

from __future__ import annotations

from collections.abc import Sequence

from postroom.proto.imap.commands import anystate, extensions, mailboxes, messages
from postroom.proto.imap.commands.anystate import (
    Authenticate,
    Capability,
    Id,
    Login,
    Logout,
    Noop,
    StartTls,
)
from postroom.proto.imap.commands.base import (
    COMMAND_STATES,
    NO_ARGUMENT_COMMANDS,
    TEXT_NO_ARGUMENTS,
    Command,
    CommandParser,
    Head,
    State,
    allowed_in,
    check_state,
    parse_head,
)
from postroom.proto.imap.commands.extensions import (
    CancelUpdate,
    DeleteAcl,
    EventGroup,
    GenUrlAuth,
    GetAcl,
    GetMetadata,
    ListRights,
    MyRights,
    Notify,
    ResetKey,
    SetAcl,
    SetMetadata,
    SetQuota,
    UrlFetch,
)
from postroom.proto.imap.commands.mailboxes import (
    Append,
    AppendMessage,
    Compress,
    Create,
    Delete,
    Enable,
    GetQuota,
    GetQuotaRoot,
    Idle,
    List,
    Lsub,
    Namespace,
    QResync,
    Rename,
    Select,
    Status,
    Subscribe,
    Unsubscribe,
)
from postroom.proto.imap.commands.messages import (
    Check,
    Close,
    Copy,
    Expunge,
    Fetch,
    Move,
    Search,
    Sort,
    Store,
    StoreMode,
    Thread,
    Unselect,
)
from postroom.proto.imap.grammar import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ITEMS, ImapPeerError, Parser

PARSERS: dict[str, CommandParser] = {
    **anystate.PARSERS, **mailboxes.PARSERS, **messages.PARSERS, **extensions.PARSERS,
}
assert PARSERS.keys() == COMMAND_STATES.keys()

__all__ = [
    "CancelUpdate",
    "DeleteAcl",
    "EventGroup",
    "GenUrlAuth",
    "GetAcl",
    "GetMetadata",
    "ListRights",
    "MyRights",
    "Notify",
    "ResetKey",
    "SetAcl",
    "SetMetadata",
    "SetQuota",
    "UrlFetch",
    "COMMAND_STATES",
    "NO_ARGUMENT_COMMANDS",
    "PARSERS",
    "TEXT_NO_ARGUMENTS",
    "Append",
    "AppendMessage",
    "Authenticate",
    "Capability",
    "Check",
    "Close",
    "Command",
    "Compress",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Expunge",
    "Fetch",
    "GetQuota",
    "GetQuotaRoot",
    "Head",
    "Id",
    "Idle",
    "List",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "QResync",
    "Rename",
    "Search",
    "Select",
    "Sort",
    "StartTls",
    "State",
    "Status",
    "Store",
    "StoreMode",
    "Subscribe",
    "Thread",
    "Unselect",
    "Unsubscribe",
    "allowed_in",
    "check_state",
    "parse_arguments",
    "parse_command",
    "parse_head",
]


def parse_arguments(
    head: Head,
    line: bytes,
    literals: Sequence[bytes] = (),
    *,
    utf8: bool = False,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> Command:
    """Parse the arguments of a command whose head is already known."""
    p = Parser(line, literals, pos=head.end, utf8=utf8, max_depth=max_depth, max_items=max_items)
    try:
        command = PARSERS[head.name](p, head.tag)
        p.expect_end()
    except ImapPeerError as exc:
        exc.tag = head.tag
        raise
    except RecursionError:
        # Belt and braces: depth limits keep recursion far below this.
        raise ImapPeerError("Command too complex", tag=head.tag) from None
    return command


def parse_command(
    line: bytes,
    literals: Sequence[bytes] = (),
    *,
    state: State | None = None,
    utf8: bool = False,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> Command:
    """One complete command line (without its final CRLF) → a :class:`Command`.

    ``line`` may contain CRLF only right after literal markers ``{n}``, ``{n+}``,
    ``~{n}``; ``literals`` holds the payloads in order. ``state`` (optional) applies the
    legality table; ``utf8`` selects UTF-8 mailbox names (IMAP4rev2 / UTF8=ACCEPT).
    Raises :class:`ImapPeerError` for anything the client got wrong.
    """
    head = parse_head(line, state)
    return parse_arguments(
        head, line, literals, utf8=utf8, max_depth=max_depth, max_items=max_items
    )
