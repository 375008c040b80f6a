"""Delivery status notifications (RFC 3464, RFC 3461, RFC 6533): who gets one, and its bytes.

Theory of operation
-------------------
The queue decides *that* something happened to some recipients (failed, delayed, delivered,
relayed); this module decides whether the sender asked to hear about it
(:func:`should_notify`, :func:`may_send_dsn`) and composes the report
(:func:`compose_dsn`). Everything is pure: the caller passes the clock values, the
Message-ID and the host name, and stores the returned bytes in the queue with an empty
reverse-path (``MAIL FROM:<>``, :data:`DSN_REVERSE_PATH`) addressed to the original sender.

The message is written by hand rather than through ``email.generator``: the returned
original must be copied byte for byte (re-serialising it could change 8-bit content or
header folding, and it may be malformed), and every field needs exact control over
sanitising and folding. The tests parse the result back with the stdlib ``email`` parser.

Shape (RFC 3464 section 2; RFC 6522 for multipart/report)::

    multipart/report; report-type=delivery-status  (RFC 6522 3)
      text/plain                      what happened, per recipient, for a human
      message/delivery-status         Reporting-MTA, Arrival-Date, ...; then one block per
                                      recipient: Final-Recipient, Action, Status, ...
      message/rfc822                  the original (RET=FULL, failures only, size-capped)
      | text/rfc822-headers           or only its header section

For SMTPUTF8 originals (or any non-ASCII address) the RFC 6533 types are used instead
(report-type=global-delivery-status, ``message/global-delivery-status``,
``message/global``, ``message/global-headers``) with "utf-8" addresses. Sending the DSN:
when ``envelope_from`` is not ASCII its To: header is UTF-8, so flag the queued DSN
SMTPUTF8 (RFC 6532); when ``dsn.isascii()`` is false the parts are labelled ``8bit`` and
the client core sends BODY=8BITMIME, or converts for a 7-bit peer (global types may be
base64-encoded, RFC 6532 3.5; an 8-bit message/rfc822 is converted inside, RFC 2046 5.2.1).

Policy choices (documented deviations are marked)
-------------------------------------------------
* RET: the caller passes ``ret_full``. When the sender gave no RET, RFC 3461 4.3 leaves the
  choice to us; we suggest full (as Postfix does) subject to the size cap below.
* Only failure DSNs return the full message; delay and success DSNs return headers only
  (RFC 3461 4.3: a DSN without failures SHOULD return only headers).
* Size cap: an original larger than ``max_returned`` (default 1 MiB) is returned as headers
  only even with RET=FULL, and the text part says so; the header section itself is
  truncated at a line boundary to the same cap. Bounces of huge messages would otherwise
  fill the sender's mailbox (and our queue) with a second copy.
* Loops: never to the null reverse-path (RFC 5321 6.1, RFC 3461 6.2), never to a
  MAILER-DAEMON address, for any kind of DSN (stricter than "only for bounces": a delay
  warning to a mailer daemon loops just as well).
"""

from __future__ import annotations

import enum
import hashlib
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

#: The reverse-path a DSN is sent with (RFC 5321 4.5.5, RFC 3461 6.2): null.
DSN_REVERSE_PATH = ""

#: Larger originals are returned as headers only, whatever RET says.
MAX_RETURNED = 1024 * 1024

FROM_DISPLAY_NAME = "Mail Delivery System"
DAEMON_LOCAL_PART = "MAILER-DAEMON"

# Longest diagnostic kept (characters), so a 200-line reply cannot bloat every DSN.
MAX_DIAGNOSTIC = 2000
FOLD_WIDTH = 78
# RFC 5322 2.1.1 / RFC 6532: a line must not exceed 998 octets; words are cut at 240
# characters, which stays below that even when every character takes four octets.
MAX_WORD = 240


class DsnKind(enum.Enum):
    """Which report this is; decides the Subject and the NOTIFY keyword that enables it."""

    FAILURE = "failure"
    DELAY = "delay"
    SUCCESS = "success"


SUBJECTS = {
    DsnKind.FAILURE: "Undelivered Mail Returned to Sender",
    DsnKind.DELAY: "Delayed Mail (still being retried)",
    DsnKind.SUCCESS: "Successful Mail Delivery Report",
}


class Action(enum.Enum):
    """RFC 3464 2.3.3 action-value."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"  # handed to a system that does not do DSNs (RFC 3461 4.2)
    EXPANDED = "expanded"  # delivered to an alias/list that expanded it


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One recipient's block in the report.

    ``original_recipient`` is the ORCPT value *decoded from xtext*, as "addr-type;address"
    (e.g. "rfc822;bob@example.org"); a bare address gets "rfc822;". ``diagnostic`` is the
    remote SMTP reply as text ("550 5.1.1 No such user"; lines of a multi-line reply may be
    joined with spaces or newlines, they are flattened here). ``remote_mta`` is the host
    name (or address literal) of the server that gave it. ``will_retry_until`` is only
    written for ``Action.DELAYED`` (RFC 3464 2.3.9).
    """

    final_recipient: str
    action: Action
    status: str
    original_recipient: str | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


# --- who gets a DSN ---------------------------------------------------------------------

_NOTIFY_KEYWORD = {DsnKind.FAILURE: "FAILURE", DsnKind.DELAY: "DELAY", DsnKind.SUCCESS: "SUCCESS"}
# RFC 3461 4.1: without NOTIFY, "FAILURE,DELAY" is the default behaviour.
DEFAULT_NOTIFY = frozenset({"FAILURE", "DELAY"})


def should_notify(notify: str | Iterable[str] | None, kind: DsnKind) -> bool:
    """Did the recipient's NOTIFY parameter ask for a DSN of this kind? (RFC 3461 4.1)

    ``notify`` is the raw parameter value ("SUCCESS,FAILURE", "NEVER"), an iterable of
    keywords, or None when the parameter was absent. NEVER wins over anything else (the
    server refuses that combination; if one slips through, silence is the safe reading).
    """
    if notify is None:
        keywords = DEFAULT_NOTIFY
    else:
        items = notify.split(",") if isinstance(notify, str) else notify
        keywords = frozenset(item.strip().upper() for item in items)
        if "NEVER" in keywords:
            return False
    return _NOTIFY_KEYWORD[kind] in keywords


def may_send_dsn(envelope_from: str) -> bool:
    """False for reverse-paths that must never receive a DSN: the null path (RFC 5321 6.1,
    RFC 3461 6.2: no DSN about a DSN) and MAILER-DAEMON addresses (their own reports would
    come back to us in a loop)."""
    address = envelope_from.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if not address:
        return False
    local = address.rpartition("@")[0] if "@" in address else address
    return local.strip('"').upper() != DAEMON_LOCAL_PART


def wants_dsn(envelope_from: str, notify: str | Iterable[str] | None, kind: DsnKind) -> bool:
    """Both rules at once: the queue's single question per (recipient, event)."""
    return may_send_dsn(envelope_from) and should_notify(notify, kind)


# --- composing ----------------------------------------------------------------------------

# C0, DEL, C1 and the Unicode line/paragraph separators: nothing that can break a line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPACES = re.compile(r" {2,}")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")


def _clean(value: str, *, utf8: bool, limit: int = MAX_DIAGNOSTIC) -> str:
    """One header-safe line: control characters (CR/LF included: no header injection)
    become spaces, runs of spaces collapse, non-ASCII becomes "?" unless UTF-8 is allowed
    (RFC 6533), and the result is capped at ``limit`` characters."""
    value = _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()
    if not utf8 and not value.isascii():
        value = value.encode("ascii", "replace").decode("ascii")
    if len(value) > limit:
        value = value[: limit - 3].rstrip() + "..."
    return value


def _fold(name: str, value: str) -> str:
    """``Name: value`` folded at spaces to about FOLD_WIDTH columns (RFC 5322 2.2.3), CRLF
    terminated. Unfolding gives back ``value`` (words longer than MAX_WORD are split)."""
    words: list[str] = []
    for word in value.split(" "):
        while len(word) > MAX_WORD:
            words.append(word[:MAX_WORD])
            word = word[MAX_WORD:]
        words.append(word)
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > FOLD_WIDTH and line != f"{name}:":
            lines.append(line)
            line = " " + word
        else:
            line = f"{line} {word}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _date(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("DSN dates must be timezone-aware datetimes")
    return format_datetime(value)


def _address_field(address: str, *, utf8: bool) -> str:
    """``rfc822; addr`` or, for non-ASCII addresses in a global DSN, ``utf-8; addr``
    (RFC 6533 section 3)."""
    address = _clean(address, utf8=utf8, limit=MAX_DIAGNOSTIC)
    kind = "rfc822" if address.isascii() else "utf-8"
    return f"{kind};{address}"


def _original_recipient_field(value: str, *, utf8: bool) -> str:
    value = _clean(value, utf8=utf8)
    addr_type, sep, address = value.partition(";")
    if not sep:
        return _address_field(value, utf8=utf8)
    return f"{addr_type.strip()};{address.strip()}"


def _normalize_crlf(data: bytes) -> bytes:
    """Every line ending becomes CRLF (the stored message may carry bare LF or CR)."""
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return _LINE_END.sub(b"\r\n", data)


def header_section(message: bytes, limit: int = MAX_RETURNED) -> tuple[bytes, bool]:
    """The header section of ``message`` (CRLF endings, without the blank line) and whether
    it had to be truncated to ``limit`` bytes (cut after the last whole line that fits)."""
    message = _normalize_crlf(message)
    if message.startswith(b"\r\n"):
        return b"", False
    end = message.find(b"\r\n\r\n")
    headers = message if end < 0 else message[: end + 2]
    if headers and not headers.endswith(b"\r\n"):
        headers += b"\r\n"
    if len(headers) <= limit:
        return headers, False
    cut = headers.rfind(b"\r\n", 0, limit - 1)
    return (headers[: cut + 2] if cut >= 0 else b""), True


def _boundary(seed: str, parts: Sequence[bytes]) -> str:
    """A boundary derived from the Message-ID (no randomness in pure code) and checked not
    to occur in any part (RFC 2046 5.1.1)."""
    counter = 0
    while True:
        digest = hashlib.sha256(f"{seed}/{counter}".encode()).hexdigest()[:32]
        boundary = f"=_postroom_{digest}"
        needle = boundary.encode()
        if not any(needle in part for part in parts):
            return boundary
        counter += 1


_ACTION_TEXT = {
    Action.FAILED: "could not be delivered",
    Action.DELAYED: "not delivered yet, still trying",
    Action.DELIVERED: "delivered",
    Action.RELAYED: "passed on to a system that does not report delivery",
    Action.EXPANDED: "delivered to an alias or list and passed on to its members",
}

_INTRO = {
    DsnKind.FAILURE: (
        "Your message could not be delivered to one or more of its recipients. "
        "The mail system has stopped trying for the recipients listed below."
    ),
    DsnKind.DELAY: (
        "Your message has not been delivered yet to the recipients listed below. "
        "The mail system keeps trying until the time shown; you do not need to send it "
        "again. If it still cannot be delivered by then, you will get another notice."
    ),
    DsnKind.SUCCESS: (
        "As you asked, this is a report on the delivery of your message to the "
        "recipients listed below."
    ),
}


def _human_text(
    *,
    hostname: str,
    kind: DsnKind,
    recipients: Sequence[RecipientStatus],
    returned: str,
    utf8: bool,
) -> str:
    """The text/plain part. Wrapped to 76 columns so no line nears the 998 limit."""
    wrap = textwrap.TextWrapper(width=76, break_long_words=True, break_on_hyphens=False)
    indented = textwrap.TextWrapper(
        width=76,
        initial_indent="    ",
        subsequent_indent="    ",
        break_long_words=True,
        break_on_hyphens=False,
    )
    paragraphs = [
        wrap.fill(f"This is the mail delivery system at {hostname}."),
        wrap.fill(_INTRO[kind]),
    ]
    for rcpt in recipients:
        lines = [
            wrap.fill(
                f"<{_clean(rcpt.final_recipient, utf8=utf8)}>: "
                f"{_ACTION_TEXT[rcpt.action]} (status {rcpt.status})"
            )
        ]
        if rcpt.remote_mta:
            lines.append(indented.fill(f"Server: {_clean(rcpt.remote_mta, utf8=utf8)}"))
        if rcpt.diagnostic:
            lines.append(indented.fill(f"It said: {_clean(rcpt.diagnostic, utf8=utf8)}"))
        if rcpt.action is Action.DELAYED and rcpt.will_retry_until is not None:
            lines.append(indented.fill(f"Will retry until: {_date(rcpt.will_retry_until)}"))
        paragraphs.append("\n".join(lines))
    if returned:
        paragraphs.append(wrap.fill(returned))
    return "\r\n\r\n".join(p.replace("\n", "\r\n") for p in paragraphs) + "\r\n"


def compose_dsn(
    *,
    hostname: str,
    original: bytes,
    envelope_from: str,
    recipients: Sequence[RecipientStatus],
    kind: DsnKind,
    ret_full: bool,
    envid: str | None,
    arrival: datetime,
    now: datetime,
    message_id: str,
    smtputf8: bool = False,
    queue_id: str | None = None,
    max_returned: int = MAX_RETURNED,
) -> bytes:
    """Return the complete DSN message (CRLF line endings), ready to store in the queue.

    ``hostname`` is our host name (Reporting-MTA, and the From: domain); ``original`` the
    message as received; ``envelope_from`` its reverse-path, which becomes To: (check
    :func:`may_send_dsn` first); ``envid`` the ENVID decoded from xtext; ``smtputf8`` says
    the original was received with SMTPUTF8 (selects the RFC 6533 global types);
    ``message_id`` is our new Message-ID, with or without angle brackets; ``queue_id`` an
    optional queue identifier reported as X-Postroom-Queue-ID. Dates must be aware.

    Raises ValueError (API misuse) for an empty recipient list, a malformed status, or a
    null ``envelope_from``.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if not envelope_from.strip("<> "):
        raise ValueError("no DSN to the null reverse-path (RFC 3461 6.2)")
    for rcpt in recipients:
        if not _STATUS.match(rcpt.status):
            raise ValueError(f"malformed status code {rcpt.status!r}")
    texts = [envelope_from, *(r.final_recipient for r in recipients)]
    texts += [r.original_recipient for r in recipients if r.original_recipient]
    utf8 = smtputf8 or not all(text.isascii() for text in texts)

    # The returned original.
    original = _normalize_crlf(original)
    note = ""
    full = kind is DsnKind.FAILURE and ret_full and len(original) <= max_returned
    if full:
        returned = original
        returned_type = "message/global" if utf8 else "message/rfc822"
        description = "Undelivered Message"
        note = "Your message is attached below."
    else:
        returned, truncated = header_section(original, max_returned)
        returned_type = "message/global-headers" if utf8 else "text/rfc822-headers"
        description = "Message Headers"
        if kind is DsnKind.FAILURE and ret_full:
            note = (
                f"Your message was larger than {max_returned} bytes, so only its headers "
                "are attached below."
            )
        else:
            note = "The headers of your message are attached below."
        if truncated:
            note += " They were too long and have been cut short."

    # The machine-readable report (RFC 3464 2.2 per-message, 2.3 per-recipient fields).
    report = _fold("Reporting-MTA", f"dns; {_clean(hostname, utf8=False)}")
    if queue_id:
        report += _fold("X-Postroom-Queue-ID", _clean(queue_id, utf8=False))
    report += _fold("X-Postroom-Sender", _address_field(envelope_from, utf8=utf8))
    if envid:
        report += _fold("Original-Envelope-Id", _clean(envid, utf8=utf8))  # RFC 3464 2.2.1
    report += _fold("Arrival-Date", _date(arrival))  # RFC 3464 2.2.5
    for rcpt in recipients:
        block = "\r\n"
        if rcpt.original_recipient:  # RFC 3464 2.3.1, RFC 3461 4.2
            block += _fold(
                "Original-Recipient", _original_recipient_field(rcpt.original_recipient, utf8=utf8)
            )
        block += _fold("Final-Recipient", _address_field(rcpt.final_recipient, utf8=utf8))
        block += _fold("Action", rcpt.action.value)
        block += _fold("Status", rcpt.status)
        if rcpt.remote_mta:
            block += _fold("Remote-MTA", f"dns; {_clean(rcpt.remote_mta, utf8=utf8)}")
        if rcpt.diagnostic:  # RFC 3464 2.3.6
            block += _fold("Diagnostic-Code", f"smtp; {_clean(rcpt.diagnostic, utf8=utf8)}")
        if rcpt.last_attempt is not None:
            block += _fold("Last-Attempt-Date", _date(rcpt.last_attempt))
        if rcpt.action is Action.DELAYED and rcpt.will_retry_until is not None:
            block += _fold("Will-Retry-Until", _date(rcpt.will_retry_until))  # RFC 3464 2.3.9
        report += block
    report_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    report_bytes = report.encode("utf-8")

    text = _human_text(
        hostname=_clean(hostname, utf8=False),
        kind=kind,
        recipients=recipients,
        returned=note,
        utf8=utf8,
    ).encode("utf-8")

    text_cte = "7bit" if text.isascii() else "8bit"
    report_cte = "7bit" if report_bytes.isascii() else "8bit"
    returned_cte = "7bit" if returned.isascii() else "8bit"
    eight_bit = "8bit" in (text_cte, report_cte, returned_cte)
    boundary = _boundary(f"{message_id}/{now.isoformat()}", [text, report_bytes, returned])

    mid = message_id.strip().strip("<>")
    to_address = _clean(envelope_from.strip().strip("<>"), utf8=utf8)
    head = (
        f'From: "{FROM_DISPLAY_NAME}" <{DAEMON_LOCAL_PART}@{_clean(hostname, utf8=False)}>\r\n'
        f"To: <{to_address}>\r\n"
        f"Subject: {SUBJECTS[kind]}\r\n"
        f"Date: {_date(now)}\r\n"
        f"Message-ID: <{_clean(mid, utf8=False)}>\r\n"
        "Auto-Submitted: auto-replied\r\n"  # RFC 3834 5, RFC 3461 6.2
        "MIME-Version: 1.0\r\n"
        # RFC 6522 3: report-type names the second part's subtype.
        f"Content-Type: multipart/report; report-type={report_type.partition('/')[2]};\r\n"
        f'\tboundary="{boundary}"\r\n'
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}\r\n"
        "\r\n"
        "This is a MIME-encapsulated delivery status notification.\r\n"
    )
    charset = "us-ascii" if text.isascii() else "utf-8"
    delimiter = f"\r\n--{boundary}\r\n".encode()
    out = [
        head.encode("utf-8"),
        delimiter,
        (
            f"Content-Type: text/plain; charset={charset}\r\n"
            "Content-Description: Notification\r\n"
            f"Content-Transfer-Encoding: {text_cte}\r\n\r\n"
        ).encode(),
        text,
        delimiter,
        (
            f"Content-Type: {report_type}\r\n"
            "Content-Description: Delivery report\r\n"
            f"Content-Transfer-Encoding: {report_cte}\r\n\r\n"
        ).encode(),
        report_bytes,
        delimiter,
        (
            f"Content-Type: {returned_type}\r\n"
            f"Content-Description: {description}\r\n"
            f"Content-Transfer-Encoding: {returned_cte}\r\n\r\n"
        ).encode(),
        returned,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(out)
