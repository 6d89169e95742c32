"""A hostile fake OpenAI provider for the chaos test: it keeps its own books of what it billed.

It answers ``POST /v1/chat/completions`` (unary and SSE, any ``n``, ``tools`` or legacy
``functions``) for any model.  What a request gets is written by the test into the last user
message as ``[[chaos:key=value ...]]``:

    words=N      words per choice (each of them one o200k token), cut at the request's output cap
    delay_ms=N   pause between stream frames
    fault=F      forces a fault on this call; without it ``fault_rate`` of the calls (chosen from the
                 request id) get one of ``FAULTS``:
                 500 | 429 | drop (close before answering) | hang_before (answer only after
                 ``hang_s``, and only if the caller is still there) | hang_after (a unary answer
                 sends its headers, then hangs before the body; a stream sends everything but
                 ``[DONE]`` and hangs) | reset (abort the connection mid-stream)
    kind=K       the client's kind of request, copied into the bill (the test's own label)

Its books (``bills``) hold one ``Bill`` per call it charged for, by the ``x-request-id`` the proxy
sent: a call is charged once its response headers went out.  The prompt is counted with
tiktoken's o200k_base over the text the request carries (message texts, and the JSON of
``tools`` / ``functions``), then inflated by a factor between 1 and ``1 + margin`` chosen from the
request id, as a vendor whose tokenizer differs by up to the registry's ``input_margin`` would.
Completion tokens are those actually written before the call ended (all of them once finished).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import orjson
import tiktoken
from aiohttp import web

FAULTS = ("500", "429", "drop", "hang_before", "hang_after", "reset")
WORDS = (" the", " and", " of", " to", " in", " is", " it", " that")  # one o200k token each
_DIRECTIVE = re.compile(r"\[\[chaos:([^\]]*)\]\]")


@dataclass
class Bill:
    request_id: str
    kind: str
    fault: str
    prompt_tokens: int
    completion_tokens: int = 0
    usage_sent: bool = False  # the usage went out in a completed write
    finished: bool = False  # the whole answer went out
    began: float = field(default_factory=time.monotonic)  # when it was charged
    ended: float = 0.0  # when the provider was done with it


@dataclass
class FakeProvider:
    encoding: tiktoken.Encoding
    margin: Fraction
    model_max_output: int
    hang_s: float = 4.0
    fault_rate: float = 0.1
    bills: dict[str, list[Bill]] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    # ------------------------------------------------------------------ counting
    def prompt_tokens(self, body: dict[str, Any], request_id: str) -> int:
        texts: list[str] = []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(p.get("text", "") for p in content if isinstance(p, dict))
        for name in ("tools", "functions"):
            for tool in body.get(name) or []:
                definition = tool.get("function", tool) if isinstance(tool, dict) else tool
                texts.append(json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
        counted = sum(len(self.encoding.encode(t, disallowed_special=())) for t in texts)
        digest = hashlib.sha256(request_id.encode()).digest()
        share = Fraction(digest[0], 255)  # 0 .. 1 of the margin; a quarter of the calls use all of it
        if digest[1] < 64:
            share = Fraction(1)
        return int(counted * (1 + self.margin * share))

    def fault_for(self, request_id: str) -> str:
        digest = hashlib.sha256(b"fault:" + request_id.encode()).digest()
        if digest[0] >= self.fault_rate * 256:
            return ""
        return FAULTS[digest[1] % len(FAULTS)]

    def cap(self, body: dict[str, Any]) -> int:
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return min(value, self.model_max_output)
        return self.model_max_output

    # ------------------------------------------------------------------ serving
    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        body = await request.json()
        request_id = request.headers.get("x-request-id", "")
        options = directives(body)
        fault = options.get("fault", "") or self.fault_for(request_id)
        self.faults[fault] = self.faults.get(fault, 0) + 1
        if fault in ("500", "429"):
            status = int(fault)
            headers = {"retry-after": "1"} if status == 429 else {}
            return web.json_response({"error": {"message": f"chaos {fault}", "type": "server_error",
                                                "param": None, "code": None}}, status=status, headers=headers)
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()  # the connection ends before any response
            return web.Response(status=499)
        if fault == "hang_before":
            await asyncio.sleep(self.hang_s)
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # the caller left: nothing generated, nothing billed
        n = body.get("n") if isinstance(body.get("n"), int) else 1
        words = min(int(options.get("words", "20")), self.cap(body))
        bill = Bill(request_id, options.get("kind", ""), fault, self.prompt_tokens(body, request_id))
        if body.get("stream"):
            return await self._stream(request, body, bill, n, words, options)
        return await self._unary(request, body, bill, n, words)

    def _charge(self, bill: Bill) -> None:
        self.bills.setdefault(bill.request_id, []).append(bill)

    async def _unary(self, request: web.Request, body: dict[str, Any], bill: Bill, n: int,
                     words: int) -> web.StreamResponse:
        choices = [{"index": i, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "".join(WORDS[j % 8] for j in range(words))}}
                   for i in range(n)]
        bill.completion_tokens = n * words
        usage = {"prompt_tokens": bill.prompt_tokens, "completion_tokens": bill.completion_tokens,
                 "total_tokens": bill.prompt_tokens + bill.completion_tokens}
        data = orjson.dumps({"id": "chatcmpl-" + bill.request_id, "object": "chat.completion",
                             "created": int(time.time()), "model": body.get("model"), "choices": choices,
                             "usage": usage})
        response = web.StreamResponse(headers={"content-type": "application/json",
                                               "content-length": str(len(data))})
        await response.prepare(request)
        self._charge(bill)
        try:
            if bill.fault == "hang_after":
                await asyncio.sleep(self.hang_s)
            await response.write(data)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            bill.ended = time.monotonic()
            return response
        bill.usage_sent = bill.finished = True
        bill.ended = time.monotonic()
        return response

    async def _stream(self, request: web.Request, body: dict[str, Any], bill: Bill, n: int, words: int,
                      options: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        self._charge(bill)
        delay = int(options.get("delay_ms", "0")) / 1000
        base = {"id": "chatcmpl-" + bill.request_id, "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model")}
        include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
        try:
            await _frame(response, {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                          "finish_reason": None} for i in range(n)]})
            for j in range(words):
                if bill.fault == "reset" and j == words // 2:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                for i in range(n):
                    await _frame(response, {**base, "choices": [{"index": i, "delta": {"content": WORDS[j % 8]},
                                                                 "finish_reason": None}]})
                    bill.completion_tokens += 1
                if delay:
                    await asyncio.sleep(delay)
            await _frame(response, {**base, "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}
                                                        for i in range(n)]})
            if include_usage:
                await _frame(response, {**base, "choices": [], "usage": {
                    "prompt_tokens": bill.prompt_tokens, "completion_tokens": bill.completion_tokens,
                    "total_tokens": bill.prompt_tokens + bill.completion_tokens}})
                bill.usage_sent = True
            if bill.fault == "hang_after":
                await asyncio.sleep(self.hang_s)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            bill.finished = True
        except (ConnectionError, RuntimeError):
            pass
        bill.ended = time.monotonic()
        return response


async def _frame(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + orjson.dumps(payload) + b"\n\n")


def directives(body: dict[str, Any]) -> dict[str, str]:
    """``key=value`` pairs of every ``[[chaos:...]]`` in the messages."""
    found: dict[str, str] = {}
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            for group in _DIRECTIVE.findall(content):
                for pair in group.split():
                    key, _, value = pair.partition("=")
                    found[key] = value
    return found


async def serve_provider(provider: FakeProvider) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(provider.app(), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/v1"
