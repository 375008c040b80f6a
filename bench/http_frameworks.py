#!/usr/bin/env python3
"""Which HTTP framework for postroom's HTTP service: requests/s and latency, measured.

Each candidate runs the way postroom would run it: inside one uvloop event loop of a child
process (no separate server process, no worker processes), listening on a loopback port,
answering one small JSON endpoint (``GET /api/v1/status`` -> ``{"status": "ok", ...}``).
The load comes from ``wrk`` (Debian's ``wrk`` package) in another process:

* ``c20``: 20 keep-alive connections, 2 wrk threads: throughput (requests/s) and p50/p99;
* ``c1``: one connection, one request at a time: the latency of a lone request.

Candidates:

* ``aiohttp``: aiohttp's web server (``web.Application`` + ``AppRunner``), its protocol
  factory handed to ``loop.create_server`` as postroom's listener would;
* ``starlette``: Starlette on uvicorn's httptools protocol, started with
  ``uvicorn.Server.startup(sockets=...)`` inside the same loop (no uvicorn process,
  no signal handling of its own);
* ``starlette-h11``: the same on uvicorn's pure-Python h11 protocol;
* ``plain``: a bare asyncio.Protocol that splits requests at CRLFCRLF and writes a fixed
  response: the ceiling, i.e. what any framework costs on top.

Each candidate is measured ``--runs`` times, interleaved, and the medians printed. The
machine is shared, so compare the candidates within one run, not across runs.

Usage: bench/http_frameworks.py [--runs 3] [--seconds 5] [--only aiohttp,plain]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

BODY = {"status": "ok", "version": "0.1.0", "connections": 0}
CANDIDATES = ("aiohttp", "starlette", "starlette-h11", "plain")


# -- the child: one candidate in one uvloop loop ----------------------------------------


def _serve(name: str, port: int) -> None:
    import asyncio

    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        sock.setblocking(False)
        if name == "aiohttp":
            from aiohttp import web

            async def status(request: web.Request) -> web.Response:
                return web.json_response(BODY)

            app = web.Application()
            app.router.add_get("/api/v1/status", status)
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            await loop.create_server(runner.server, sock=sock, backlog=1024)
        elif name.startswith("starlette"):
            import uvicorn
            from starlette.applications import Starlette
            from starlette.responses import JSONResponse
            from starlette.routing import Route

            async def status_s(request: object) -> JSONResponse:
                return JSONResponse(BODY)

            app_s = Starlette(routes=[Route("/api/v1/status", status_s)])
            config = uvicorn.Config(
                app_s, http="h11" if name.endswith("h11") else "httptools", loop="none",
                lifespan="off", access_log=False, log_level="warning",
            )
            server = uvicorn.Server(config)
            config.load()
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
        else:
            payload = json.dumps(BODY).encode()
            response = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
            )

            class Plain(asyncio.Protocol):
                def connection_made(self, transport: asyncio.BaseTransport) -> None:
                    self.t = transport
                    self.buf = b""

                def data_received(self, data: bytes) -> None:
                    self.buf += data
                    while b"\r\n\r\n" in self.buf:
                        _, _, self.buf = self.buf.partition(b"\r\n\r\n")
                        self.t.write(response)  # type: ignore[attr-defined]

            await loop.create_server(Plain, sock=sock, backlog=1024)
        print("ready", flush=True)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# -- the parent: start a child, load it with wrk ----------------------------------------


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def _wrk(port: int, connections: int, threads: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
         f"http://127.0.0.1:{port}/api/v1/status"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw errors: {out}")
    return {"rps": rps, "p50": p50, "p99": p99}


def _measure(name: str, seconds: float) -> dict[str, dict[str, float]]:
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", name, "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{name} did not start")
        _wrk(port, 4, 1, 1)  # warm-up
        return {
            "c20": _wrk(port, 20, 2, seconds),
            "c1": _wrk(port, 1, 1, seconds),
        }
    finally:
        child.terminate()
        child.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", default=",".join(CANDIDATES))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _serve(args.child, args.port)
        return 0
    if shutil.which("wrk") is None:
        print("skipped: wrk not installed (apt-get install wrk)")
        return 0
    names = [n for n in args.only.split(",") if n]
    results: dict[str, list[dict[str, dict[str, float]]]] = {n: [] for n in names}
    for run in range(args.runs):
        order = names if run % 2 == 0 else list(reversed(names))
        for name in order:
            r = _measure(name, args.seconds)
            results[name].append(r)
            print(
                f"run {run + 1} {name:14} c20 {r['c20']['rps']:8.0f} req/s "
                f"p50 {r['c20']['p50']:.2f} ms p99 {r['c20']['p99']:.2f} ms | "
                f"c1 {r['c1']['rps']:7.0f} req/s p50 {r['c1']['p50']:.3f} ms",
                flush=True,
            )
            time.sleep(0.5)
    print("medians:")
    base = statistics.median(r["c20"]["rps"] for r in results[names[-1]]) if "plain" in names else None
    for name in names:
        rs = results[name]
        med = {
            k: {m: statistics.median(r[k][m] for r in rs) for m in ("rps", "p50", "p99")}
            for k in ("c20", "c1")
        }
        ratio = f" ({med['c20']['rps'] / base:.2f}x plain)" if base else ""
        print(
            f"{name:14} c20 {med['c20']['rps']:8.0f} req/s{ratio} p50 {med['c20']['p50']:.2f} ms "
            f"p99 {med['c20']['p99']:.2f} ms | c1 {med['c1']['rps']:7.0f} req/s "
            f"p50 {med['c1']['p50']:.3f} ms p99 {med['c1']['p99']:.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
