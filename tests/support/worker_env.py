"""An in-process queue worker on a real SQLite store, for fast worker tests.

``WorkerEnv`` builds the same Services as ``app.py`` (minus listeners), a dict DNS resolver
pointing test domains at capture-server addresses, and runs ``QueueWorker`` in the test's
event loop. Helpers enqueue messages exactly as the SMTP shell does (one ``store.deliver``)
and wait, with a deadline, for queue states.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

from postroom import deliver
from postroom.auth.directory import Directory
from postroom.config import from_mapping
from postroom.net.listener import Shutdown
from postroom.policy.dns import DictResolver
from postroom.queue.worker import QueueWorker
from postroom.services import Services
from postroom.store.api import Delivery, NewQueueEntry, QueuedMessage, QueueRecipient
from postroom.store.sqlite import open_store
from postroom.tls import TlsContexts

HOSTNAME = "mail.local.test"
LOCAL_DOMAIN = "local.test"


def message(subject: str = "hello", body: str = "body", extra: str = "") -> bytes:
    mid = deliver.new_id()
    return (
        f"From: sender@{LOCAL_DOMAIN}\r\nTo: someone@remote.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{mid}@{LOCAL_DOMAIN}>\r\n{extra}\r\n{body}\r\n"
    ).encode()


class WorkerEnv:
    def __init__(
        self, tmp_path: Path, port: int, records: dict[tuple[str, str], Any], **outbound: Any
    ) -> None:
        out = {
            "port": port, "retry_schedule": ["1s"], "connect_timeout": "3s", "read_timeout": "5s",
            "connection_cache_time": "200ms", "queue_poll_interval": "200ms",
        }
        out.update(outbound)
        self.settings = from_mapping(
            {
                "hostname": HOSTNAME,
                "listener": [{"address": "127.0.0.1:25", "role": "mx"}],
                "outbound": out,
            },
            tmp_path / "postroom.toml",
        )
        self.tmp_path = tmp_path
        self.resolver = DictResolver(records)
        self.store: Any = None
        self.worker: QueueWorker | None = None

    async def __aenter__(self) -> WorkerEnv:
        self.store = open_store(self.tmp_path / "data", fsync=False)
        self.services = Services(
            settings=self.settings, store=self.store, directory=Directory(self.store),
            tls=TlsContexts(None, None), shutdown=Shutdown(),
        )
        await self.store.add_domain(LOCAL_DOMAIN)
        self.sender = await self.store.add_user(f"sender@{LOCAL_DOMAIN}", "x", None)
        return self

    async def start(self) -> QueueWorker:
        self.worker = QueueWorker(self.services, resolver=self.resolver)
        await self.worker.start()
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        if self.worker is not None:
            await self.worker.stop()
        await self.store.close()

    async def enqueue(
        self,
        recipients: list[str] | list[QueueRecipient],
        *,
        sender: str = f"sender@{LOCAL_DOMAIN}",
        data: bytes | None = None,
        **entry: Any,
    ) -> str:
        data = deliver.normalize(data if data is not None else message())
        qid = deliver.new_id()
        rcpts = tuple(r if isinstance(r, QueueRecipient) else QueueRecipient(r) for r in recipients)
        queue = NewQueueEntry(qid=qid, sender=sender, recipients=rcpts, **entry)
        await self.store.deliver(Delivery(data=data, summary=deliver.summarize(data), queue=queue))
        return qid

    async def wait(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")

    async def gone(self, qid: str, timeout: float = 15.0) -> None:
        async def check() -> bool:
            return await self.store.queue_get(qid) is None

        await self.wait(check, timeout)

    async def entry(self, qid: str) -> QueuedMessage:
        found = await self.store.queue_get(qid)
        assert found is not None, f"{qid} is not queued"
        return found

    async def inbox(self, address: str | None = None) -> list[EmailMessage]:
        user = self.sender if address is None else await self.store.get_user(address)
        mailbox = await self.store.get_mailbox(user.id, "INBOX")
        metas = await self.store.list_messages(mailbox.id)
        blobs = await self.store.read_blobs([m.blob_id for m in metas])
        return [message_from_bytes(blobs[m.blob_id], policy=default) for m in metas]  # type: ignore[misc]


def report_fields(dsn: EmailMessage) -> list[dict[str, str]]:
    """The per-recipient blocks of a parsed DSN (message/delivery-status), lower-case keys."""
    assert dsn.get_content_type() == "multipart/report"
    part = next(p for p in dsn.walk() if p.get_content_type() in (
        "message/delivery-status", "message/global-delivery-status"))
    payload = part.get_payload()
    assert isinstance(payload, list)
    blocks = [{k.lower(): str(v) for k, v in block.items()} for block in payload]
    if part.get_content_type() == "message/global-delivery-status":
        # The parser reads it as one message: per-message fields as its header, the
        # recipient blocks as its body text. Split those here.
        (first,) = payload
        raw = first.get_payload(decode=True)
        text = raw.decode("utf-8").replace("\r\n", "\n")
        for chunk in text.strip().split("\n\n"):
            fields = message_from_bytes(chunk.encode("utf-8") + b"\n\n", policy=default)
            blocks.append({k.lower(): str(v) for k, v in fields.items()})
    return blocks[1:]  # the first block is per-message
