"""A fast fake OpenAI-compatible upstream for ``bench/proxy_bench.py`` (not a test double).

``costproxy/tools/simulator.py`` is realistic (token-by-token streams, latency, faults) and therefore
too expensive per request to sit under a throughput benchmark: its own CPU would dominate.  This
server answers every ``POST .../chat/completions`` from pre-built bytes with a raw asyncio
protocol (HTTP/1.1 keep-alive, Content-Length request bodies, no pipelining surprises):

* non-streamed: a fixed chat completion with ``usage`` (prompt 96, completion 48 tokens);
* ``"stream": true``: 16 content chunks, a finish chunk, a usage chunk when the request asked
  for ``stream_options.include_usage`` (costproxy always does), then ``data: [DONE]``, all in
  one chunked response.

``--passthrough URL`` runs instead a *bare aiohttp pass-through* (aiohttp server + one shared
``ClientSession``, no auth, no accounting): the floor any aiohttp-based proxy starts from, and
the reference the CPU target in issue 2 is stated against.

Both print ``listening on http://127.0.0.1:PORT`` on stdout once ready.  Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any, cast

import orjson

PROMPT_TOKENS = 96
COMPLETION_TOKENS = 48
CONTENT = ("Paris is the capital of France. It sits on the Seine, has about two million residents "
           "in the city proper, and is known for the Louvre, the Eiffel Tower and its cafes.")
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')


def _usage() -> dict[str, Any]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS, "prompt_tokens_details": {"cached_tokens": 0}}


def _http(status: str, content_type: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _unary() -> bytes:
    body = orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1764000000, "model": "gpt-4o-mini",
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": _usage(),
    })
    return _http("200 OK", b"application/json", body)


def _stream(include_usage: bool) -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764000000,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_bench"}
    words = CONTENT.split(" ")
    step = max(1, len(words) // 16)
    pieces = [" ".join(words[i:i + step]) + " " for i in range(0, len(words), step)]
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}
                                    if i == 0 else {"content": piece}, "finish_reason": None}]}
              for i, piece in enumerate(pieces)]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        events.append({**base, "choices": [], "usage": _usage()})
    chunks = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    wire = b"".join(f"{len(c):x}".encode() + b"\r\n" + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + wire)


UNARY = _unary()
STREAM_WITH_USAGE = _stream(include_usage=True)
STREAM_NO_USAGE = _stream(include_usage=False)
HEALTH = _http("200 OK", b"application/json", b'{"status":"ok"}')
NOT_FOUND = _http("404 Not Found", b"application/json",
                  b'{"error":{"message":"not found","type":"invalid_request_error","code":"not_found"}}')


def answer(head: bytes, body: bytes) -> bytes:
    """The response bytes for one request (request line + headers in ``head``)."""
    line = head.split(b"\r\n", 1)[0]
    if line.startswith(b"POST ") and b"/chat/completions" in line:
        if _STREAM.search(body):
            return STREAM_WITH_USAGE if _INCLUDE_USAGE.search(body) else STREAM_NO_USAGE
        return UNARY
    if line.startswith(b"GET "):
        return HEALTH
    return NOT_FOUND


def _content_length(head: bytes) -> int:
    for header in head.split(b"\r\n")[1:]:
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: parse head, wait for Content-Length bytes, write a canned answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's class is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = _content_length(head)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[end + 4:total]
            self.buffer = self.buffer[total:]
            assert self.transport is not None
            self.transport.write(answer(head, body))


async def serve_fast(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, backlog=1024)
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


async def serve_passthrough(port: int, target: str) -> None:
    """The bare aiohttp floor: read the body, POST it upstream on one pooled session, return it."""
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0))

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(target + request.path, data=body,
                                headers={"content-type": "application/json"}) as upstream:
            if upstream.content_type == "text/event-stream":
                response = web.StreamResponse(status=upstream.status,
                                              headers={"content-type": "text/event-stream"})
                await response.prepare(request)
                async for line in upstream.content:
                    await response.write(line)
                await response.write_eof()
                return response
            payload = await upstream.read()
            return web.Response(body=payload, status=upstream.status, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/readyz", health)
    app.router.add_post("/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on http://127.0.0.1:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--passthrough", metavar="URL", help="run a bare aiohttp pass-through to URL instead")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        print("note: uvloop not installed, using the default asyncio loop", file=sys.stderr)
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    server = serve_passthrough(args.port, args.passthrough) if args.passthrough else serve_fast(args.port)
    try:
        asyncio.run(server)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
