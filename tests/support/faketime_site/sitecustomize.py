"""Loaded (through PYTHONPATH) by processes that ``support.server.faketime`` runs.

libfaketime 0.9.10 (Debian 12) breaks ``clock_nanosleep`` with an absolute CLOCK_MONOTONIC
deadline when the monotonic clock is left real (FAKETIME_DONT_FAKE_MONOTONIC=1): Python's
``time.sleep`` then raises EINVAL. The same wait through ``select`` (a relative timeout)
is unaffected, so ``time.sleep`` uses it in these processes. Nothing else changes.
"""

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


time.sleep = _sleep
