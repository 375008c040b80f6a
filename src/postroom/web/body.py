"""Reading an HTTP request body within bounds of size and time.

aiohttp bounds a body's size (``client_max_size``, checked while reading) but not the
time it takes to arrive: a handler awaiting ``request.read()`` waits as long as the client
trickles bytes, and a client that declares ``Content-Length: 100000000`` and sends nothing
holds the connection for ever (the keep-alive timer only runs while no request is being
handled). Every handler that reads a body goes through :func:`read_body`, which refuses a
declared length over the bound at once (``413``, nothing read) and gives the body a
deadline like the mail protocols' records (``net/deadline.py``): ``http.request_timeout``
plus one second per ``limits.min_data_rate`` octets, else ``408`` and the connection is
closed.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from postroom.config import Settings
from postroom.web.session import ApiError


def check_length(request: web.Request, limit: int) -> None:
    """413 before reading when the declared body is larger than ``limit`` (RFC 9110 15.5.14)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, f"the request body is larger than {limit} octets")


def deadline(settings: Settings, octets: int) -> float:
    """Seconds a body of ``octets`` may take to arrive."""
    return settings.http.request_timeout + octets / max(1, settings.limits.min_data_rate)


async def read_body(request: web.Request, settings: Settings, limit: int | None = None) -> bytes:
    """The whole body, at most ``limit`` octets (default ``http.request_size``)."""
    limit = settings.http.request_size if limit is None else limit
    check_length(request, limit)
    try:
        async with asyncio.timeout(deadline(settings, request.content_length or limit)):
            body = bytearray()
            while chunk := await request.content.read(65536):
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"the request body is larger than {limit} octets")
            return bytes(body)
    except TimeoutError:
        request[CLOSE] = True  # what is still on the way is not worth reading
        raise ApiError(408, "the request body came too slowly") from None


CLOSE = "postroom.close"


async def send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send ``response`` now and close the connection after it, without aiohttp's
    lingering read of the rest of the body (up to 10 s of a slow client's bytes)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()  # the transport sends what it holds, then closes
