"""Reading request bodies: within ``server.max_body_bytes`` and ``server.body_timeout_s``, decoded
from their ``Content-Encoding``.

Every handler reads its body through ``read_body``, so a client that trickles its body (or sends
more than the limit) gets a 408 ``request_timeout`` (or 413 ``body_too_large``) in OpenAI's shape
and ties up nothing for longer.  aiohttp keeps what was read, so ``request.json()`` or
``request.post()`` afterwards read from memory.

A body declared (``Content-Length``) above the limit is refused before any handler runs
(``errors_middleware``), except on the handlers ``sized_when_read`` marks — the proxied endpoints,
whose refusals are ledgered: they are authenticated first, and ``read_body`` refuses it unread.

aiohttp's own decoding of compressed bodies is off (``handler_args`` in ``http.app``): it answered a
body that was not what its ``Content-Encoding`` said with a 500 from the handler, and a coding it
cannot decode (``br``, ``zstd``) with a plain-text 400 before the application — neither in the
endpoint's error shape.  Here a body is decoded once, the limit applying to the decoded size (a
small compressed body cannot expand past it), and a coding that is not supported or a body that is
not valid in its coding is a 400 ``invalid_request`` naming it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from costproxy.errors import BodyTooLarge, InvalidRequest, RequestTimeout
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


SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate", "identity")
MAX_CODINGS = 2  # layers of compression a body may carry (clients send one)


async def read_body(request: web.Request) -> bytes:
    server = request.app[SETTINGS].server
    limit = server.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:  # refused unread
        raise too_large(limit, declared)
    if request.content.is_eof():  # the whole body is already here: nothing to wait for
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large(limit) from None
    else:
        try:
            async with asyncio.timeout(server.body_timeout_s):
                raw = await request.read()
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {server.body_timeout_s:g} s") from None
        except web.HTTPRequestEntityTooLarge:
            raise too_large(limit) from None
    codings = content_codings(request.headers.get("Content-Encoding", ""))
    if not codings:
        return raw
    body = raw
    for coding in reversed(codings):  # the last coding listed was applied last
        body = decode(body, coding, limit)
    request._read_bytes = body  # what request.json() and request.post() read from now on
    return body


def content_codings(header: str) -> list[str]:
    """The codings of a ``Content-Encoding`` header, in the order they were applied, less
    ``identity``; one that is not supported is a 400 naming it."""
    codings = [part.strip().lower() for part in header.split(",") if part.strip()]
    for coding in codings:
        if coding not in SUPPORTED_ENCODINGS:
            raise InvalidRequest(f"Content-Encoding {coding[:40]!r} is not supported: send the body "
                                 f"uncompressed or encoded with one of {', '.join(SUPPORTED_ENCODINGS)}",
                                 param="Content-Encoding")
    applied = [coding for coding in codings if coding != "identity"]
    if len(applied) > MAX_CODINGS:  # each layer is decoded on the event loop: a stack of them stalls it
        raise InvalidRequest(f"Content-Encoding lists {len(applied)} codings; at most {MAX_CODINGS} are decoded",
                             param="Content-Encoding")
    return applied


def decode(data: bytes, coding: str, limit: int) -> bytes:
    """``data`` decoded from ``coding`` (gzip or deflate, zlib-wrapped or raw as aiohttp accepts),
    at most ``limit`` bytes of it."""
    if not data:
        return data
    gzip = coding in ("gzip", "x-gzip")
    out = bytearray()
    rest = data
    try:
        while rest:
            # gzip: a gzip header; deflate: a zlib header (RFC 1950), or raw deflate as some clients send
            wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS if rest[0] & 0x0F == 8 else -zlib.MAX_WBITS
            decompressor = zlib.decompressobj(wbits)
            out += decompressor.decompress(rest, limit + 1 - len(out))
            if len(out) > limit or decompressor.unconsumed_tail:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes once decoded from {coding}")
            if not decompressor.eof:
                raise zlib.error("the compressed data ends early")
            rest = decompressor.unused_data if gzip else b""  # gzip bodies may be several members
            if not gzip and decompressor.unused_data:
                raise zlib.error("data after the end of the compressed stream")
    except zlib.error as exc:
        raise InvalidRequest(f"request body is not valid {coding} data, as its Content-Encoding says: {exc}",
                             param="Content-Encoding") from None
    return bytes(out)
