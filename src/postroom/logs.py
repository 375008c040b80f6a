"""Structured logging: one event per line, as ``key=value`` text or JSON.

Call :func:`event` with a name and fields; the formatter chosen in the config renders it.
Secrets never reach here: callers pass user names, never passwords or SASL payloads, and
the SMTP/IMAP/POP3 events that carry credentials hide them from ``repr``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


# Characters that make a value need quotes (a regex scan runs in C; a generator over
# the characters was a visible share of the CPU per SMTP transaction).
_NEEDS_QUOTES = re.compile(r'[ ="\\\n\r\t]')


def _quote(value: object) -> str:
    s = str(value)
    if s == "" or _NEEDS_QUOTES.search(s) is not None:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'
    return s


class TextFormatter(logging.Formatter):
    _second = -1
    _stamp = ""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        # A worker process (server.workers) ends each line with worker=N.
        self.suffix = f" worker={worker}" if worker else ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # one strftime per second, not per line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        ts = self._stamp
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname.lower(), record.name]
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        parts.append(record.getMessage() if fields is None else f"event={_quote(record.getMessage())}")
        if fields:
            # (a loop with the common case inline, not a generator calling _quote per
            # field: a transaction line has some fifteen fields)
            needs_quotes = _NEEDS_QUOTES.search
            for k, v in fields.items():
                if v is None:
                    continue
                s = v if type(v) is str else str(v)
                parts.append(f"{k}={s}" if s and needs_quotes(s) is None else f"{k}={_quote(s)}")
        line = " ".join(parts) + self.suffix
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

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
        if self.worker:
            doc["worker"] = self.worker
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", worker: int | None = None) -> None:
    """Log to stderr; ``worker``: the index of this worker process (``server.workers``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither format shows the caller's file and line, thread or process name; not
    # collecting them saves a stack walk and lookups per record (the logging docs'
    # "Optimization" section). A busy MX logs one line per transaction.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (rendered by the configured formatter).

    The record is made and handed to the logger here rather than through
    ``Logger.log``: that path adds two calls and a check of every ``extra`` key per
    record, and a busy MX logs a line per message. The record is the same (no caller
    file and line: the formatters do not show them, see :func:`setup`)."""
    if logger.isEnabledFor(level):
        record = logger.makeRecord(
            logger.name, level, "(unknown file)", 0, name, (), None, "(unknown function)")
        record.fields = fields
        logger.handle(record)
