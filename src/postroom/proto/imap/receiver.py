"""Incremental, literal-aware IMAP command receiver (server side).

Theory of operation
-------------------
The network shell owns the socket; this object owns everything between the bytes and a
typed command. Three verbs, as in h11: ``receive_data(bytes)`` (and ``receive_eof()``),
``next_event()``, and a handful of mode switches the shell calls at command boundaries.

``next_event()`` returns one of:

* a :class:`~postroom.proto.imap.commands.Command` (``Login``, ``Fetch``, ...): execute it;
* :data:`NEED_DATA`: read more bytes from the socket and call ``receive_data``;
* :class:`ContinuationRequest`: the client announced a synchronising literal ``{n}`` that
  we accept; write ``responses.continuation()`` ("+ Ready for literal data") and go on;
* :class:`IdleDone`, :class:`AuthResponse`, :class:`AuthCancelled`: only in the IDLE and
  AUTHENTICATE modes below;
* :class:`ConnectionClosed`: the client closed (an unfinished command is dropped).

When the client got something wrong, ``next_event()`` raises :class:`ImapPeerError`; its
``response`` is the exact bytes to send (tagged ``BAD``/``NO``, untagged ``* BAD``, or
``* BYE``). If ``exc.close`` is set, send it and close; otherwise just go on calling
``next_event()``: the receiver has already skipped whatever belonged to the bad command.
Nothing else escapes for any input (``ImapUsageError`` means the shell broke the rules).

Parsing is lazy: bytes are only looked at inside ``next_event()``, one command at a time.
So the shell can change ``receiver.state`` (after LOGIN, SELECT, CLOSE, ...),
``receiver.limits`` (e.g. ``Limits.authenticated(append_limit)`` after login) and
``receiver.utf8`` (after ENABLE UTF8=ACCEPT / IMAP4rev2) between two commands, and the
next pipelined command is judged by the new values. ``state`` is checked on the command
head, before any literal is accepted: a command not valid in this state is refused with
no "+" ever sent (RFC 9051 7.5).

Literals (RFC 9051 4.3, RFC 7888, RFC 3516):

* ``{n}``: within limits → ContinuationRequest, then the n octets are read. Over a limit →
  tagged ``BAD [TOOBIG]`` (``NO [TOOBIG]`` for APPEND, the APPENDLIMIT case, RFC 7889) and
  the command is over: the client must not send the data (RFC 9051 7.5).
* ``{n+}`` (LITERAL+): the octets follow without waiting. Over a limit, we *read and
  discard* them and the rest of the command (it may announce more ``{m+}`` literals), then
  answer the same tagged error, so the stream stays in sync and the client gets a clean
  answer (RFC 7888 4 allows this or closing). A literal too large to be worth discarding
  (``Limits.max_discard``) gets ``* BYE [TOOBIG]`` and close instead.
* ``~{n}`` (literal8) is accepted only in APPEND and SETMETADATA.

The whole command (line segments with their literal markers, plus the payloads) is
collected first and parsed once, linearly; nothing is re-parsed after each literal. A
command line longer than ``Limits.max_line`` (text outside literals) is answered with
``* BYE [TOOBIG]`` and close: skipping its tail could hide a ``{n+}`` marker and make us
read literal data as commands. Buffering is bounded by the limits at every step, and the
sequence of events is the same however the input is split.

Modes and buffer access, each only right after a command (or mode event) was returned:

* IDLE (RFC 2177): after ``Idle``, write "+ idling" and call ``expect_idle_done(tag)``;
  the next event is :class:`IdleDone` once the client sends ``DONE`` (anything else is a
  tagged BAD and ends the IDLE).
* AUTHENTICATE (RFC 9051 6.2.2): after writing a "+ challenge", call
  ``expect_auth_response(tag)``; the next event is :class:`AuthResponse` (decoded base64)
  or :class:`AuthCancelled` ("*"), one line, length-limited. Bad base64 → tagged BAD.
* STARTTLS: after the tagged OK, ``discard_buffered()`` drops anything the client sent
  after the command (CVE-2011-0411 command injection), then TLS starts.
* COMPRESS=DEFLATE: after the tagged OK, ``take_buffered()`` returns the raw bytes that
  followed the command (already compressed); inflate them and feed the result back.

Example shell loop::

    rx = Receiver()
    while True:
        try:
            event = rx.next_event()
        except ImapPeerError as exc:
            await write(exc.response)
            if exc.close:
                break
            continue
        if event is NEED_DATA:
            data = await read()
            rx.receive_data(data) if data else rx.receive_eof()
        elif isinstance(event, ContinuationRequest):
            await write(responses.continuation())
        elif isinstance(event, ConnectionClosed):
            break
        else:
            await execute(event)        # may set rx.state, rx.limits, call a mode switch
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import NoReturn

from postroom.proto.buffer import LineTooLong, StreamReader, UnexpectedEOF
from postroom.proto.imap.commands import (
    NO_ARGUMENT_COMMANDS,
    TEXT_NO_ARGUMENTS,
    Command,
    Head,
    State,
    parse_arguments,
    parse_head,
)
from postroom.proto.imap.grammar import BAD, NO, ImapPeerError, ImapUsageError, decode_base64
from postroom.proto.imap.responses import LIMIT, TOOBIG

KIB = 1024
MIB = 1024 * KIB

TEXT_LINE_TOO_LONG = "Command line too long"
TEXT_LITERAL_TOO_BIG = "Literal too large"
TEXT_COMMAND_TOO_BIG = "Command too large"
TEXT_TOO_MANY_LITERALS = "Too many literals in one command"
TEXT_LITERAL8 = "literal8 is only allowed in APPEND and SETMETADATA"
# Commands whose grammar has literal8 (RFC 3516 4.2 APPEND, RFC 5464 5 SETMETADATA values).
LITERAL8_COMMANDS = frozenset({"APPEND", "SETMETADATA"})
TEXT_EXPECTED_DONE = "Expected DONE"
TEXT_NOT_IMAP = "This is an IMAP server, not an HTTP server"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits; the shell swaps them (e.g. after authentication).

    ``max_line`` counts command text outside literals (all segments of one command);
    ``max_literal`` bounds each literal of any command but APPEND, whose literals are
    bounded by ``max_append_literal`` (the APPENDLIMIT); ``max_command`` bounds text plus
    literals; ``max_discard`` is the largest refused ``{n+}`` literal we still read and
    throw away instead of closing.
    """

    max_line: int = 64 * KIB
    max_literal: int = 8 * KIB
    max_append_literal: int = 8 * KIB
    max_command: int = 128 * KIB
    max_literals: int = 32
    max_depth: int = 16
    max_items: int = 10_000
    max_discard: int = 1 * MIB

    @classmethod
    def authenticated(cls, append_limit: int = 50 * MIB) -> Limits:
        """Defaults after login: APPEND up to ``append_limit`` (MULTIAPPEND: twice that
        for the whole command), 64 KiB for any other literal."""
        return cls(
            max_literal=64 * KIB,
            max_append_literal=append_limit,
            max_command=2 * append_limit + 64 * KIB,
            max_literals=1000,
            max_discard=2 * append_limit,
        )


PRE_AUTH_LIMITS = Limits()
AUTH_LINE_MAX = 16 * KIB  # one SASL response line (RFC 4954-sized tokens and more)


class NeedData:
    """Sentinel type: feed more bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class ContinuationRequest:
    """Write ``+ Ready`` now: the client waits before sending ``size`` literal octets."""

    tag: str
    size: int


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The client ended IDLE with DONE: send the tagged OK of the IDLE command."""

    tag: str


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """One SASL response line, base64-decoded (may be empty)."""

    tag: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthCancelled:
    """The client sent "*": answer tagged BAD (RFC 9051 6.2.2)."""

    tag: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """End of stream: close without a BYE."""


Event = (
    Command
    | NeedData
    | ContinuationRequest
    | IdleDone
    | AuthResponse
    | AuthCancelled
    | ConnectionClosed
)
_Gen = Generator[Event | None, None, None]

# A literal announcement at the very end of a line segment: "{" digits ["+"] "}" CRLF,
# possibly preceded by "~" (literal8). Bare LF is tolerated like everywhere else.
_MARKER = re.compile(rb"\{(\d+)(\+?)\}")
# An HTTP request line ("GET / HTTP/1.1"): never an IMAP command, whose second word is a
# command name, not a request target followed by an HTTP version (RFC 9112 3).
_HTTP_REQUEST = re.compile(
    rb"(?:GET|POST|HEAD|PUT|DELETE|OPTIONS|CONNECT|TRACE|PATCH) \S+ HTTP/[0-9](?:\.[0-9])?\r?\n"
)
_MAX_DIGITS = 20


def _marker(line: bytes) -> tuple[int, bool, bool] | None:
    """(size, non-synchronising, literal8) if ``line`` ends with a literal marker.

    A size with absurdly many digits is returned as -1 (refused as too large).
    """
    end = len(line) - (2 if line.endswith(b"\r\n") else 1)
    if end < 3 or line[end - 1] != 0x7D:  # "}"
        return None
    start = line.rfind(b"{", 0, end)
    if start < 0:
        return None
    m = _MARKER.fullmatch(line, start, end)
    if m is None:
        return None
    digits = m.group(1)
    size = int(digits) if len(digits) <= _MAX_DIGITS else -1
    return size, bool(m.group(2)), start > 0 and line[start - 1] == 0x7E


def _strip_eol(line: bytes) -> bytes:
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


def _literal_error(
    limits: Limits, head: Head, size: int, binary: bool, count: int, total: int
) -> ImapPeerError | None:
    """Why the literal announced at this point is refused, or None to accept it."""
    tag = head.tag
    if head.name in NO_ARGUMENT_COMMANDS:
        return ImapPeerError(TEXT_NO_ARGUMENTS, tag=tag)
    if count >= limits.max_literals:
        return ImapPeerError(TEXT_TOO_MANY_LITERALS, tag=tag, code=LIMIT)
    append = head.name == "APPEND"
    if binary and head.name not in LITERAL8_COMMANDS:
        return ImapPeerError(TEXT_LITERAL8, tag=tag)
    # RFC 7889 / RFC 9051 7.1: APPEND over the limit is NO [TOOBIG]; others are BAD.
    status = NO if append else BAD
    if size < 0 or size > (limits.max_append_literal if append else limits.max_literal):
        return ImapPeerError(TEXT_LITERAL_TOO_BIG, tag=tag, status=status, code=TOOBIG)
    if total + size > limits.max_command:
        return ImapPeerError(TEXT_COMMAND_TOO_BIG, tag=tag, status=status, code=TOOBIG)
    return None


class Receiver:
    """Bytes in, commands out: see the module docstring for how a shell drives it."""

    def __init__(
        self,
        limits: Limits = PRE_AUTH_LIMITS,
        *,
        state: State = State.NOT_AUTHENTICATED,
        utf8: bool = False,
    ) -> None:
        self.limits = limits
        self.state = state
        self.utf8 = utf8
        self._reader = StreamReader()
        self._gen: _Gen = self._commands()
        self._boundary = True
        # The generator would read a fresh command line next (not IDLE/AUTHENTICATE
        # mode, not in the middle of a line or literal): the fast path may run.
        self._fresh = True
        self._closed = False
        # Octets of the command in progress held outside the buffer (text + literals).
        self._held = 0

    # --- input ------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if data and not self._closed:
            self._reader.feed_data(data)

    def receive_eof(self) -> None:
        self._reader.feed_eof()

    @property
    def buffered_size(self) -> int:
        """Octets held: unconsumed input plus the command being collected."""
        return len(self._reader) + self._held

    # --- events -----------------------------------------------------------------------------
    def next_event(self) -> Event:
        if self._closed:
            return ConnectionClosed()
        try:
            if self._fresh and self._boundary:
                fast = self._fast_command()
                if fast is not None:
                    return fast
            event = next(self._gen)
        except ImapPeerError as exc:
            self._held = 0
            self._boundary = True
            if exc.close:
                self._closed = True
            else:
                self._gen = self._commands()
                self._fresh = True
            raise
        except UnexpectedEOF:
            self._closed = True
            self._held = 0
            return ConnectionClosed()
        if event is None:
            self._boundary = False
            return NEED_DATA
        if isinstance(event, ContinuationRequest):
            self._boundary = False
        else:
            # After a command, or the DONE / SASL line that ends a mode, the generator
            # goes on with a fresh command line.
            self._boundary = self._fresh = True
        return event

    def _fast_command(self) -> Event | None:
        """The common case without the generators: a whole command line without literals
        is waiting (or nothing, or part of a line, is). None: let the generator decide
        (literals, empty lines, limits, end of stream), exactly as if this did not exist;
        it has consumed nothing then."""
        reader = self._reader
        buf = reader.buffer
        end = buf.find(b"\n")
        max_line = self.limits.max_line
        if end < 0:
            if len(buf) < max_line and not reader.eof:
                return NEED_DATA  # the generator is not entered: still at the boundary
            return None
        last = end - 1 if end and buf[end - 1] == 0x0D else end
        if end + 1 > max_line or last == 0 or buf[last - 1] == 0x7D:  # "}": maybe a literal
            return None
        line = bytes(buf[: end + 1])
        if _HTTP_REQUEST.fullmatch(line):
            return None  # an HTTP request line: the generator answers BYE and closes
        del buf[: end + 1]
        limits = self.limits
        return parse_arguments(
            parse_head(line, self.state), line[:last], (), utf8=self.utf8,
            max_depth=limits.max_depth, max_items=limits.max_items,
        )

    # --- mode switches and buffer access (at command boundaries only) -------------------------
    def _require_boundary(self, what: str) -> None:
        if not self._boundary or self._closed:
            raise ImapUsageError(f"{what} is only allowed right after a command")

    def expect_idle_done(self, tag: str) -> None:
        """The next event is IdleDone (or a tagged BAD if the client sends anything else)."""
        self._require_boundary("expect_idle_done")
        self._gen = self._idle(tag)
        self._fresh = False

    def expect_auth_response(self, tag: str, max_len: int = AUTH_LINE_MAX) -> None:
        """The next event is one AuthResponse / AuthCancelled line of at most ``max_len``."""
        self._require_boundary("expect_auth_response")
        self._gen = self._auth(tag, max_len)
        self._fresh = False

    def discard_buffered(self) -> int:
        """Drop unprocessed input (STARTTLS, CVE-2011-0411); returns how many octets."""
        self._require_boundary("discard_buffered")
        n = len(self._reader)
        self._reader.discard()
        return n

    def take_buffered(self) -> bytes:
        """Remove and return unprocessed input (COMPRESS: it is already compressed)."""
        self._require_boundary("take_buffered")
        data = bytes(self._reader.buffer)
        self._reader.discard()
        return data

    # --- generators -------------------------------------------------------------------------
    def _commands(self) -> _Gen:
        while True:
            command = yield from self._command()
            if command is not None:
                self._held = 0
                yield command

    def _line(self, budget: int) -> Generator[None, None, bytes]:
        try:
            return (yield from self._reader.read_line(max(budget, 0)))
        except LineTooLong:
            raise ImapPeerError(TEXT_LINE_TOO_LONG, code=TOOBIG, close=True) from None

    def _literal(self, n: int) -> Generator[None, None, bytes]:
        """Exactly ``n`` octets with a single copy out of the buffer (APPEND can be big)."""
        reader = self._reader
        while len(reader.buffer) < n:
            if reader.eof:
                raise UnexpectedEOF()
            yield None
        buf = reader.buffer
        with memoryview(buf) as view:
            data = bytes(view[:n])
        del buf[:n]
        return data

    def _command(self) -> Generator[Event | None, None, Command | None]:
        limits = self.limits
        line = yield from self._line(limits.max_line)
        if line == b"\r\n" or line == b"\n":
            return None  # empty lines between commands are ignored
        if _HTTP_REQUEST.fullmatch(line):
            # Another protocol entirely (ALPACA-style cross-protocol requests): answering
            # each of its lines with BAD only helps the attack. One BYE, then close.
            raise ImapPeerError(TEXT_NOT_IMAP, close=True)
        try:
            head = parse_head(line, self.state)
        except ImapPeerError as exc:
            yield from self._abandon(line, exc)
        segments = [line]
        literals: list[bytes] = []
        text = total = len(line)
        self._held = total
        while (marker := _marker(line)) is not None:
            size, nonsync, binary = marker
            error = _literal_error(limits, head, size, binary, len(literals), total)
            if error is not None:
                yield from self._abandon(line, error)
            if not nonsync:
                yield ContinuationRequest(head.tag, size)
            literals.append((yield from self._literal(size)))
            line = yield from self._line(limits.max_line - text)
            segments.append(line)
            text += len(line)
            total += size + len(line)
            self._held = total
        return parse_arguments(
            head,
            _strip_eol(b"".join(segments)),
            literals,
            utf8=self.utf8,
            max_depth=limits.max_depth,
            max_items=limits.max_items,
        )

    def _abandon(self, line: bytes, error: ImapPeerError) -> Generator[None, None, NoReturn]:
        """Skip the rest of a refused command, then raise ``error``.

        After a synchronising literal marker (or none) the client sends nothing more for
        this command. After ``{n+}`` it is already sending: discard those octets and any
        further segments and ``{m+}`` literals (RFC 7888 4).
        """
        limits = self.limits
        discarded = 0
        while (marker := _marker(line)) is not None and marker[1]:
            size = marker[0]
            discarded += 1
            if size < 0 or size > limits.max_discard or discarded > limits.max_literals:
                raise ImapPeerError(TEXT_LITERAL_TOO_BIG, code=TOOBIG, close=True)
            yield from self._reader.skip_exact(size)
            line = yield from self._line(limits.max_line)
        raise error

    def _idle(self, tag: str) -> _Gen:
        line = yield from self._line(self.limits.max_line)
        if _strip_eol(line).upper() != b"DONE":
            yield from self._abandon(line, ImapPeerError(TEXT_EXPECTED_DONE, tag=tag))
        yield IdleDone(tag)
        yield from self._commands()

    def _auth(self, tag: str, max_len: int) -> _Gen:
        line = _strip_eol((yield from self._line(max_len)))
        if line == b"*":
            yield AuthCancelled(tag)
        else:
            try:
                data = decode_base64(line)  # the empty line is an empty response
            except ImapPeerError as exc:
                exc.tag = tag
                raise
            yield AuthResponse(tag, data)
        yield from self._commands()
