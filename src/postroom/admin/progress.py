"""Progress of long operations (import, export, backup, restore), for people and for APIs.

Why a small object rather than print calls inside the operations: the same import runs
from the CLI (a line on stderr, refreshed in place on a terminal) and, later, from the HTTP
admin API (a JSON snapshot polled by the web UI). The operation only counts; a *sink*
decides how to show it, and is called at most once per ``interval`` (plus at every phase
change and for notes), so showing progress never costs more than counting it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

Sink = Callable[[str, bool], None]  # (text, final): final lines are kept, others replaced


@dataclass
class Snapshot:
    phase: str
    done: int
    total: int | None
    octets: int
    unit: str
    elapsed: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "done": self.done, "total": self.total,
            "octets": self.octets, "unit": self.unit, "elapsed": round(self.elapsed, 3),
        }


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover - unreachable


class Progress:
    """Counts of the current phase; ``sink`` (optional) shows them."""

    def __init__(
        self,
        sink: Sink | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.interval = interval
        self.clock = clock
        self.notes: list[str] = []
        self._phase = ""
        self._unit = "messages"
        self._total: int | None = None
        self._done = 0
        self._octets = 0
        self._started = clock()
        self._shown = 0.0

    def phase(self, name: str, total: int | None = None, unit: str = "messages") -> None:
        """Start a new phase (a folder, "database", "files"); the previous one is finished."""
        self._phase, self._total, self._unit = name, total, unit
        self._done = self._octets = 0
        self._started = self.clock()
        self._show(force=True)

    def advance(self, n: int = 1, octets: int = 0) -> None:
        self._done += n
        self._octets += octets
        self._show()

    def set(self, done: int, octets: int = 0) -> None:
        """Absolute position (for copies measured from outside, e.g. a file's size)."""
        self._done, self._octets = done, octets
        self._show()

    def finish(self, summary: str | None = None) -> None:
        """End the phase with a line that stays (``summary`` or the final counts)."""
        if self.sink is not None:
            self.sink(summary if summary is not None else self.describe(), True)
        self._shown = self.clock()

    def note(self, text: str) -> None:
        """Something the user should read (a skipped message, a refused folder)."""
        self.notes.append(text)
        if self.sink is not None:
            self.sink(text, True)

    def snapshot(self) -> Snapshot:
        return Snapshot(self._phase, self._done, self._total, self._octets, self._unit,
                        self.clock() - self._started)

    def describe(self) -> str:
        s = self.snapshot()
        count = f"{s.done}/{s.total}" if s.total is not None else str(s.done)
        parts = [f"{s.phase}: {count} {s.unit}"]
        if s.octets:
            parts.append(human_size(s.octets))
        if s.elapsed >= 1 and s.done:
            parts.append(f"{s.done / s.elapsed:.0f} {s.unit}/s")
        if s.total:
            parts.append(f"{100 * s.done // s.total}%")
        return ", ".join(parts)

    def _show(self, force: bool = False) -> None:
        if self.sink is None:
            return
        now = self.clock()
        if force or now - self._shown >= self.interval:
            self._shown = now
            self.sink(self.describe(), False)


def terminal_sink(stream: TextIO | None = None) -> Sink:
    """Show progress on ``stream`` (stderr): refreshed in place on a terminal, otherwise
    one line per update (which the caller already limits to one per interval)."""
    out = stream if stream is not None else sys.stderr
    tty = out.isatty()
    width = 0

    def sink(text: str, final: bool) -> None:
        nonlocal width
        if tty:
            pad = " " * max(0, width - len(text))
            out.write("\r" + text + pad + ("\n" if final else ""))
            width = 0 if final else len(text)
        else:
            out.write(text + "\n")
        out.flush()

    return sink
