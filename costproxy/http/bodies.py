"""Reading request bodies: within ``server.max_body_bytes`` and ``server.body_timeout_s``.

Every handler reads its body through ``read_body``, so a client that trickles its body (or sends
more than the limit) gets a 408 ``request_timeout`` (or 413 ``body_too_large``) in OpenAI's shape
and ties up nothing for longer.  aiohttp keeps what was read, so ``request.json()`` or
``request.post()`` afterwards read from memory.

A body declared (``Content-Length``) above the limit is refused before any handler runs
(``errors_middleware``), except on the handlers ``sized_when_read`` marks — the proxied endpoints,
whose refusals are ledgered: they are authenticated first, and ``read_body`` refuses it unread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from costproxy.errors import BodyTooLarge, RequestTimeout
from costproxy.http.state import SETTINGS

F = TypeVar("F", bound=Callable[..., object])
_SIZED_WHEN_READ = "_costproxy_sized_when_read"


def too_large(limit: int, declared: int | None = None) -> BodyTooLarge:
    """The 413: with the declared size when there is one (``Content-Length``), else without."""
    if declared is None:
        return BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
    return BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")


def sized_when_read(handler: F) -> F:
    """Mark ``handler``: a body declared above the limit is refused by ``read_body`` inside it (where
    its refusal is ledgered), not before it."""
    setattr(handler, _SIZED_WHEN_READ, True)
    return handler


def checks_size_when_read(request: web.Request) -> bool:
    return getattr(request.match_info.handler, _SIZED_WHEN_READ, False) is True


async def read_body(request: web.Request) -> bytes:
    server = request.app[SETTINGS].server
    declared = request.content_length
    if declared is not None and declared > server.max_body_bytes:  # refused unread
        raise too_large(server.max_body_bytes, declared)
    if request.content.is_eof():  # the whole body is already here: nothing to wait for
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(server.max_body_bytes) from None
    try:
        async with asyncio.timeout(server.body_timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {server.body_timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large(server.max_body_bytes) from None
