"""Delivery status notifications leaving the queue: compose (``queue.dsn``), then hand over.

Theory of operation
-------------------
:func:`send_dsn` is the one place a DSN is born. It refuses when no DSN may exist (the
original is itself a DSN, or its reverse-path is null or a mailer daemon: RFC 3461 6.2, no
bounce loops), composes the RFC 3464 report, and makes it durable in one store write:

* to the sender's INBOX when the sender is a local user (or a local alias: its users get it
  and its external targets get a queued copy), with ``Return-Path: <>`` as final delivery of
  a null-sender message;
* otherwise into the queue as ``kind="dsn"`` with the null reverse-path, where the worker
  delivers it like any message but never bounces it.

The caller (the worker, or ``postroom queue bounce``) records the recipients as failed only
*after* this returns: a crash in between sends the DSN twice rather than never.

:func:`bounce_entry` is ``postroom queue bounce ID``: every pending recipient fails now with
a FAILURE DSN (5.0.0, "bounced by the administrator") and the entry leaves the queue.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from postroom import deliver, logs
from postroom.auth.directory import Directory
from postroom.queue.dsn import (
    DSN_REVERSE_PATH,
    Action,
    DsnKind,
    RecipientStatus,
    compose_dsn,
    may_send_dsn,
    should_notify,
)
from postroom.store.api import (
    Delivery,
    NewQueueEntry,
    QueuedMessage,
    QueuedRecipient,
    QueueRecipient,
    RecipientOutcome,
    Store,
)

log = logging.getLogger("postroom.queue")

ADMIN_BOUNCE_STATUS = "5.0.0"
ADMIN_BOUNCE_TEXT = "Message bounced by the mail administrator"


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


def recipient_status(
    rcpt: QueuedRecipient,
    action: Action,
    *,
    status: str,
    diagnostic: str | None,
    remote_mta: str | None,
    last_attempt: float | None = None,
    will_retry_until: float | None = None,
) -> RecipientStatus:
    """One recipient's block for the report, from the queue's view of it."""
    return RecipientStatus(
        final_recipient=rcpt.address,
        action=action,
        status=status,
        original_recipient=rcpt.orcpt,
        remote_mta=remote_mta,
        diagnostic=diagnostic,
        last_attempt=_utc(last_attempt) if last_attempt is not None else None,
        will_retry_until=_utc(will_retry_until) if will_retry_until is not None else None,
    )


def dsn_allowed(msg: QueuedMessage) -> bool:
    """No DSN about a DSN, none to <> or MAILER-DAEMON (RFC 3461 6.2, RFC 5321 6.1)."""
    return msg.kind != "dsn" and may_send_dsn(msg.sender)


def wanted(msg: QueuedMessage, rcpt: QueuedRecipient, kind: DsnKind) -> bool:
    """Does this recipient's NOTIFY ask for a DSN of ``kind``? (RFC 3461 4.1)"""
    return dsn_allowed(msg) and should_notify(rcpt.notify, kind)


async def send_dsn(
    store: Store,
    directory: Directory,
    hostname: str,
    msg: QueuedMessage,
    original: bytes,
    recipients: Sequence[RecipientStatus],
    kind: DsnKind,
    *,
    now: float | None = None,
    signer: Any = None,
    offload: Callable[..., Awaitable[Any]] | None = None,
) -> str | None:
    """Compose one DSN about ``msg`` and store it durably (local INBOX or the queue).
    Returns a short description of where it went, or None when no DSN was sent.
    ``signer`` (``policy.signing.Signer``) DKIM-signs it with the host name's domain keys.
    ``offload``: how to run the MIME parse of a big returned message off the event loop
    (``Services.offload``: a worker process); without it, a thread."""
    if not recipients or not dsn_allowed(msg):
        return None
    now = time.time() if now is None else now
    sender = msg.sender
    report = compose_dsn(
        hostname=hostname,
        original=deliver.strip_return_path(original),
        envelope_from=sender,
        recipients=recipients,
        kind=kind,
        # RFC 3461 4.3: without RET the choice is ours; like Postfix we return it all.
        ret_full=(msg.ret or "FULL").upper() == "FULL",
        envid=msg.envid,
        arrival=_utc(msg.created),
        now=_utc(now),
        message_id=f"{deliver.new_id()}@{hostname}",
        smtputf8=msg.smtputf8,
        queue_id=msg.qid,
    )
    resolution = await directory.resolve(sender)
    if resolution.kind == "unknown":
        # A local domain without that mailbox: nobody can read it, and queueing it would
        # only bounce into the void. Log and drop, as Postfix does for undeliverable bounces.
        logs.event(log, "dsn_dropped", logging.WARNING, id=msg.qid, to=sender, reason="unknown local sender")
        return None
    user_ids = resolution.user_ids if resolution.kind == "local" else ()
    external = resolution.external if resolution.kind == "local" else (sender,)
    data = deliver.normalize(report)
    if signer is not None:
        data = await signer.sign(data, hostname) + data
    if user_ids:
        data = deliver.return_path("") + data
    queue = None
    if external:
        queue = NewQueueEntry(
            qid=deliver.new_id(),
            sender=DSN_REVERSE_PATH,
            recipients=tuple(QueueRecipient(addr) for addr in external),
            smtputf8=not sender.isascii() or not data.partition(b"\r\n\r\n")[0].isascii(),
            body8bit=not data.isascii(),
            kind="dsn",
        )
    if deliver.costly(data):  # a returned original: parse it off the event loop
        if offload is not None:
            summary = await offload(deliver.summarize, data)
        else:
            summary = await asyncio.get_running_loop().run_in_executor(None, deliver.summarize, data)
    else:
        summary = deliver.summarize(data)
    await store.deliver(Delivery(data=data, summary=summary, user_ids=tuple(user_ids), queue=queue))
    where = []
    if user_ids:
        where.append(f"local:{len(user_ids)}")
    if queue is not None:
        where.append(f"queued:{queue.qid}")
    logs.event(
        log, "dsn_sent", id=msg.qid, kind=kind.value, to=sender,
        recipients=len(recipients), where=",".join(where),
    )
    return ",".join(where)


async def bounce_entry(
    store: Store,
    directory: Directory,
    hostname: str,
    qid: str,
    *,
    diagnostic: str = ADMIN_BOUNCE_TEXT,
    signer: Any = None,
) -> int | None:
    """Fail every pending recipient of ``qid`` now, with a DSN to the sender (when one may
    be sent), and remove the entry. Returns the number of recipients bounced, or None when
    there is no such entry."""
    msg = await store.queue_get(qid)
    if msg is None:
        return None
    pending = msg.pending
    now = time.time()
    statuses = [
        recipient_status(
            r, Action.FAILED, status=ADMIN_BOUNCE_STATUS, diagnostic=diagnostic,
            remote_mta=None, last_attempt=now,
        )
        for r in pending
        if wanted(msg, r, DsnKind.FAILURE)
    ]
    if statuses:
        original = await store.read_blob(msg.blob_id)
        await send_dsn(store, directory, hostname, msg, original, statuses, DsnKind.FAILURE, now=now,
                       signer=signer)
    outcomes = [
        RecipientOutcome(r.id, "failed", ADMIN_BOUNCE_STATUS, diagnostic, None) for r in pending
    ]
    await store.queue_record(qid, outcomes, None, diagnostic)
    return len(pending)


OVER_QUOTA_STATUS = "5.2.2"  # RFC 3463: mailbox full
OVER_QUOTA_TEXT = "552 5.2.2 Mailbox full: the recipient's quota is exceeded"


async def bounce_local_failures(
    store: Store,
    directory: Directory,
    hostname: str,
    *,
    qid: str,
    sender: str,
    original: bytes,
    failed: Sequence[tuple[str, str | None, str | None]],
    ret: str | None,
    envid: str | None,
    smtputf8: bool,
) -> str | None:
    """A FAILURE DSN for local recipients refused after the message was accepted (quota:
    the SMTP reply to DATA is one for all recipients, so those over quota are bounced).

    ``failed`` holds (final recipient address, ORCPT "type;addr" or None, NOTIFY or None);
    recipients whose NOTIFY excludes FAILURE get nothing (RFC 3461 4.1)."""
    now = time.time()
    pending = tuple(
        QueuedRecipient(i, addr, orcpt, notify, "pending", None, None, None, int(now))
        for i, (addr, orcpt, notify) in enumerate(failed)
    )
    msg = QueuedMessage(
        qid=qid, blob_id=0, sender=sender, created=int(now), next_attempt=int(now), attempts=1,
        last_error=None, held=False, ret=ret, envid=envid, smtputf8=smtputf8,
        body8bit=False, kind="relay", delay_warned=False, size=len(original), recipients=pending,
    )
    statuses = [
        recipient_status(r, Action.FAILED, status=OVER_QUOTA_STATUS, diagnostic=OVER_QUOTA_TEXT,
                         remote_mta=None, last_attempt=now)
        for r in pending if wanted(msg, r, DsnKind.FAILURE)
    ]
    return await send_dsn(store, directory, hostname, msg, original, statuses, DsnKind.FAILURE, now=now)
