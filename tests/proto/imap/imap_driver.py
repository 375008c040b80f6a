"""Drivers for the IMAP core tests: feed bytes whole and one byte at a time.

Imported by the test modules as ``imap_driver`` (conftest.py puts this folder on sys.path,
whatever pytest import mode is configured).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from postroom.proto.imap.commands import State
from postroom.proto.imap.grammar import ImapPeerError
from postroom.proto.imap.receiver import (
    NEED_DATA,
    ConnectionClosed,
    Limits,
    Receiver,
)


@dataclass(frozen=True)
class Refused:
    """What a raised ImapPeerError looked like: comparable in event lists."""

    response: bytes
    close: bool = False


def drive_chunks(
    chunks: Iterable[bytes],
    *,
    limits: Limits | None = None,
    state: State = State.AUTHENTICATED,
    utf8: bool = False,
    eof: bool = True,
    on_event: Callable[[Receiver, Any], None] | None = None,
    check_bounded: bool = False,
) -> list[Any]:
    """Feed ``chunks`` one by one, draining events after each; refusals become Refused."""
    rx = Receiver(limits or Limits.authenticated(), state=state, utf8=utf8)
    out: list[Any] = []
    pending = list(chunks)
    if eof:
        pending.append(b"")
    for index, chunk in enumerate(pending):
        if eof and index == len(pending) - 1:
            rx.receive_eof()
        else:
            rx.receive_data(chunk)
        while True:
            try:
                event = rx.next_event()
            except ImapPeerError as exc:
                out.append(Refused(exc.response, exc.close))
                if exc.close:
                    return out
                continue
            if event is NEED_DATA:
                if check_bounded:
                    lim = rx.limits
                    held_limit = lim.max_command + lim.max_line + len(chunk)
                    assert rx.buffered_size <= held_limit
                break
            out.append(event)
            if isinstance(event, ConnectionClosed):
                return out
            if on_event is not None:
                on_event(rx, event)
    return out


def drive(data: bytes, *, step: int | None = None, **kwargs: Any) -> list[Any]:
    if step is None:
        return drive_chunks([data], **kwargs)
    return drive_chunks([data[i : i + step] for i in range(0, len(data), step)], **kwargs)


def drive_both(data: bytes, **kwargs: Any) -> list[Any]:
    """Events for ``data`` fed whole; asserts byte-at-a-time feeding gives the same."""
    whole = drive(data, **kwargs)
    bytewise = drive(data, step=1, **kwargs)
    assert whole == bytewise
    return whole
