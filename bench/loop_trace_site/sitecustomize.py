"""Loop-callback tracer for ``bench/loop_lag.py --trace`` (not part of the server).

Put on ``PYTHONPATH`` of a ``postroom serve`` with ``POSTROOM_LOOP_TRACE=<file>``: the
process runs the stdlib event loop (uvloop's callbacks cannot be timed from Python) and
every callback that runs longer than ``POSTROOM_LOOP_TRACE_MS`` (default 20) ms is
written to ``<file>.<pid>`` as one line: wall ms, CPU ms of the loop thread during it,
and where the loop thread was, sampled every 2 ms by a watchdog thread (the innermost
postroom frames, most frequent first). Wall time much larger than CPU time means the
loop thread was waiting for a CPU or for the GIL (other threads, other processes), not
running our code; CPU close to wall points at the code in the samples.
"""

from __future__ import annotations

import os

_OUT = os.environ.get("POSTROOM_LOOP_TRACE")

if _OUT:
    import asyncio.events
    import collections
    import sys
    import threading
    import time

    sys.modules["uvloop"] = None  # type: ignore[assignment]  # import fails: stdlib loop
    _LIMIT = float(os.environ.get("POSTROOM_LOOP_TRACE_MS", "20")) / 1000
    _state: dict[str, object] = {"start": 0.0, "samples": None}
    _main = threading.main_thread().ident
    _file = open(f"{_OUT}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115

    def _where(frame: object) -> str:
        """The innermost frame, then the innermost and outermost postroom frames."""
        ours = []
        f = frame
        while f is not None:
            code = f.f_code  # type: ignore[attr-defined]
            name = code.co_filename
            if "postroom/" in name and "/admin/" not in name and not name.endswith("app.py"):
                ours.append(f"{name.rsplit('postroom/', 1)[-1]}:{f.f_lineno} {code.co_name}")  # type: ignore[attr-defined]
            f = f.f_back  # type: ignore[attr-defined]
        code = frame.f_code  # type: ignore[attr-defined]
        top = f"{code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} {code.co_name}"  # type: ignore[attr-defined]
        if len(ours) > 4:
            ours = ours[:2] + ["..."] + ours[-2:]
        return " < ".join([top, *ours])

    def _watch() -> None:
        while True:
            time.sleep(0.002)
            start = _state["start"]
            if start and time.perf_counter() - start > _LIMIT / 2:  # type: ignore[operator]
                frame = sys._current_frames().get(_main)  # noqa: SLF001
                samples = _state["samples"]
                if frame is not None and samples is not None:
                    samples[_where(frame)] += 1  # type: ignore[index]

    threading.Thread(target=_watch, daemon=True, name="loop-trace").start()

    import gc

    _gc: dict[str, float] = {"start": 0.0, "in_callback": 0.0}
    _gc_log = open(f"{_OUT}.gc.{os.getpid()}", "a", buffering=1)  # noqa: SIM115

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _gc["start"] = time.perf_counter()
            return
        took = time.perf_counter() - _gc["start"]
        if threading.get_ident() == _main:
            _gc["in_callback"] += took
        if took > 0.005:
            extra = ""
            if info["generation"] == 2:
                _gc["full"] = _gc.get("full", 0) + 1
                if _gc["full"] % 8 == 1:  # what the full collections walk, now and then
                    kinds = collections.Counter(type(o).__name__ for o in gc.get_objects(2))
                    extra = f" objects {sum(kinds.values())} " + ",".join(
                        f"{k}={n}" for k, n in kinds.most_common(8))
            _gc_log.write(f"{info['generation']} {took * 1000:.1f} {info['collected']} "
                          f"{threading.current_thread().name}{extra}\n")

    gc.callbacks.append(_on_gc)
    _run = asyncio.events.Handle._run

    def _timed(self: asyncio.events.Handle) -> None:
        if threading.get_ident() != _main:
            return _run(self)
        samples: collections.Counter[str] = collections.Counter()
        _state["samples"] = samples
        _gc["in_callback"] = 0.0
        cpu = time.thread_time()
        _state["start"] = start = time.perf_counter()
        try:
            return _run(self)
        finally:
            wall = time.perf_counter() - start
            _state["start"] = 0.0
            if wall > _LIMIT:
                used = time.thread_time() - cpu
                top = "; ".join(f"{n}x {w}" for w, n in samples.most_common(3))
                _file.write(f"{time.time():.3f} wall {wall * 1000:.1f} cpu {used * 1000:.1f} "
                            f"gc {_gc['in_callback'] * 1000:.1f} | {top}\n")

    asyncio.events.Handle._run = _timed  # type: ignore[method-assign]
