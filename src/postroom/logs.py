"""Structured logging: one event per line, as ``key=value`` text or JSON.

Call :func:`event` with a name and fields; the formatter chosen in the config renders it.
Secrets never reach here: callers pass user names, never passwords or SASL payloads, and
the SMTP/IMAP/POP3 events that carry credentials hide them from ``repr``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _quote(value: object) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' ="\\\n\r\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'
    return s


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname.lower(), record.name]
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        parts.append(record.getMessage() if fields is None else f"event={_quote(record.getMessage())}")
        if fields:
            parts.extend(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields is None:
            doc["msg"] = record.getMessage()
        else:
            doc["event"] = record.getMessage()
            doc.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})
