"""Reading request bodies: within ``server.max_body_bytes`` and ``server.body_timeout_s``.

Every handler reads its body through ``read_body``, so a client that trickles its body (or sends
more than the limit) gets a 408 ``request_timeout`` (or 413 ``body_too_large``) in OpenAI's shape
and ties up nothing for longer.  aiohttp keeps what was read, so ``request.json()`` or
``request.post()`` afterwards read from memory.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from costproxy.errors import BodyTooLarge, RequestTimeout
from costproxy.http.state import SETTINGS


async def read_body(request: web.Request) -> bytes:
    if request.content.is_eof():  # the whole body is already here: nothing to wait for
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"request body exceeds the limit of {request.app[SETTINGS].server.max_body_bytes} "
                               "bytes") from None
    server = request.app[SETTINGS].server
    try:
        async with asyncio.timeout(server.body_timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {server.body_timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds the limit of {server.max_body_bytes} bytes") from None
