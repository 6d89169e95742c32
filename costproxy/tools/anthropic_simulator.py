"""A simulated Anthropic Messages API provider, for tests and demos (``kind: anthropic``).

Speaks ``POST /v1/messages`` (unary and streamed) and ``POST /v1/messages/count_tokens`` the way
Anthropic does: ``x-api-key`` and ``anthropic-version`` are required (401 / 400 otherwise), errors
have Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``; 529
``overloaded_error``), streams are named events (``message_start``, ``content_block_start``, ``ping``,
``content_block_delta``, ``content_block_stop``, ``message_delta``, ``message_stop``) without
``[DONE]``.  Every response carries ``x-simulated-provider: costproxy-anthropic-simulator``.

It keeps its own books, like a real provider's invoice: each call (``AnthropicCall``) records the
tokens it reported.  Tokens follow the OpenAI simulator's rule (``count_tokens``: words * 4 // 3):
the system prompt, each message's text (+3), each tool definition's name, description and schema
(+10), and ``IMAGE_TOKENS`` per image.  Prompt caching is real: a ``cache_control`` breakpoint
makes the prompt up to and including that block a cache entry (``ttl`` ``5m`` or ``1h``); the first
request writes it (``cache_creation_input_tokens``, split by lifetime in ``cache_creation``), later
requests with the same prefix read it (``cache_read_input_tokens``); ``input_tokens`` is the rest.

Answers and directives are the OpenAI simulator's (``[[sim:reply=…]]``, ``tokens=N``, ``tool_call``,
``fault=529``, ``drop_after=N``, ``chunk_delay_ms=N``; see ``simulator``), read from the last user
message; ``tool_call`` answers with a ``tool_use`` block for the first tool; ``searches=N`` puts N
``server_tool_use`` / ``web_search_tool_result`` block pairs before the answer and reports N
web searches in ``usage.server_tool_use.web_search_requests`` (as said, whatever ``max_uses`` is: a
provider that overruns the bound).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from costproxy.tools.simulator import Behaviour, _compose, count_tokens, directives_in, typed

NAME = "costproxy-anthropic-simulator"
IMAGE_TOKENS = 100
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


@dataclass(slots=True)
class AnthropicCall:
    path: str
    headers: dict[str, str]
    body: Any = None
    model: str | None = None
    status: int = 0
    streamed: bool = False
    input_tokens: int = 0  # uncached part of the prompt, as reported
    cache_read: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    output_tokens: int = 0
    searches: int = 0  # web searches reported (``server_tool_use.web_search_requests``)
    usage_sent: bool = False  # the final usage reached the client (message_delta, or the body)
    completed: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read + self.cache_write


@dataclass(slots=True)
class AnthropicSimulator:
    api_key: str = "sk-ant-test"
    chunk_delay_ms: int = 0
    calls: list[AnthropicCall] = field(default_factory=list)
    cache: set[str] = field(default_factory=set)  # prefix digests written to the prompt cache

    def build_app(self) -> web.Application:
        app = web.Application()
        app.on_response_prepare.append(_label)
        for prefix in ("", "/v1"):
            app.router.add_post(f"{prefix}/messages", self._messages)
            app.router.add_post(f"{prefix}/messages/count_tokens", self._count)
        return app

    async def _begin(self, request: web.Request, call: AnthropicCall) -> dict[str, Any]:
        if request.headers.get("x-api-key") != self.api_key:
            raise _Fail(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            raise _Fail(400, "anthropic-version: header is required")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise _Fail(400, "invalid JSON body") from None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _Fail(400, "model: Field required")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise _Fail(400, "messages: Field required")
        call.body, call.model = body, body["model"]
        return body

    async def _count(self, request: web.Request) -> web.StreamResponse:
        call = AnthropicCall(path=request.path, headers=dict(request.headers))
        try:
            body = await self._begin(request, call)
        except _Fail as fail:
            return fail.response()
        return web.json_response({"input_tokens": sum(tokens for tokens, _ in _prompt_pieces(body))})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        call = AnthropicCall(path=request.path, headers={k.lower(): v for k, v in request.headers.items()})
        self.calls.append(call)
        try:
            body = await self._begin(request, call)
            if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
                raise _Fail(400, "max_tokens: Field required")
            plan = Behaviour(chunk_delay_ms=self.chunk_delay_ms)
            plan.apply(directives_in(_last_user_text(body["messages"])))
            if plan.fault is not None and plan.fault.isdigit():
                raise _Fail(int(plan.fault), "simulated failure")
        except _Fail as fail:
            call.status = fail.status
            return fail.response()
        except ValueError as exc:
            return _Fail(400, str(exc)).response()
        self._cache_usage(body, call)
        message = self._answer(body, call, plan)
        if body.get("stream") is True:
            return await self._stream(request, call, plan, message)
        call.status, call.completed, call.usage_sent = 200, True, True
        return web.json_response(message)

    def _cache_usage(self, body: Mapping[str, Any], call: AnthropicCall) -> None:
        """Split the prompt into cache reads, cache writes and the rest, at the last breakpoint."""
        pieces = _prompt_pieces(body)
        total = sum(tokens for tokens, _ in pieces)
        breakpoints = [i for i, (_, ttl) in enumerate(pieces) if ttl is not None]
        if not breakpoints:
            call.input_tokens = total
            return
        last = breakpoints[-1]
        prefix = sum(tokens for tokens, _ in pieces[: last + 1])
        digest = hashlib.sha256(json.dumps(_prefix(body, last), sort_keys=True).encode()).hexdigest()
        if digest in self.cache:
            call.cache_read = prefix
        else:
            self.cache.add(digest)
            call.cache_write = prefix
            call.cache_write_1h = prefix if pieces[last][1] == "1h" else 0
        call.input_tokens = total - prefix

    def _answer(self, body: Mapping[str, Any], call: AnthropicCall, plan: Behaviour) -> dict[str, Any]:
        tools = [{"type": "function", "function": {"name": t.get("name"), "parameters": t.get("input_schema", {})}}
                 for t in body.get("tools") or [] if isinstance(t, Mapping)]
        last = body["messages"][-1].get("content") if isinstance(body["messages"][-1], Mapping) else None
        answered = isinstance(last, list) and any(isinstance(b, Mapping) and b.get("type") == "tool_result"
                                                  for b in last)
        answer = _compose({"tools": tools, "max_tokens": body["max_tokens"],
                           "messages": [{"role": "tool"}] if answered else []},
                          _last_user_text(body["messages"]), plan)
        if answer.tool_call is not None:
            function = answer.tool_call["function"]
            content: list[dict[str, Any]] = [{"type": "tool_use", "id": "toolu_sim_0", "name": function["name"],
                                              "input": orjson.loads(function["arguments"])}]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": answer.text}]
            stop = "max_tokens" if answer.finish_reason == "length" else "end_turn"
        content = _searches(plan.searches) + content
        call.output_tokens, call.searches = answer.completion_tokens, plan.searches
        return {"id": f"msg_sim_{len(self.calls):06d}", "type": "message", "role": "assistant",
                "model": call.model, "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": self._usage(call)}

    def _usage(self, call: AnthropicCall) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": call.input_tokens, "output_tokens": call.output_tokens,
            "cache_creation_input_tokens": call.cache_write, "cache_read_input_tokens": call.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": call.cache_write - call.cache_write_1h,
                               "ephemeral_1h_input_tokens": call.cache_write_1h}}
        if call.searches:
            usage["server_tool_use"] = {"web_search_requests": call.searches}
        return usage

    async def _stream(self, request: web.Request, call: AnthropicCall, plan: Behaviour,
                      message: dict[str, Any]) -> web.StreamResponse:
        call.streamed = True
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        call.status = 200
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**self._usage(call), "output_tokens": 1, "server_tool_use": {"web_search_requests": 0}}}
        final: dict[str, Any] = {"output_tokens": call.output_tokens}
        if call.searches:
            final["server_tool_use"] = {"web_search_requests": call.searches}
        events: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
        for index, block in enumerate(message["content"]):
            events += _block_events(index, block)
        events += [{"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": final}, {"type": "message_stop"}]
        try:
            for sent, event in enumerate(events):
                if plan.drop_after is not None and sent >= plan.drop_after:
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if sent and plan.chunk_delay_ms:
                    await asyncio.sleep(plan.chunk_delay_ms / 1000)
                await response.write(typed(event))
                call.usage_sent = call.usage_sent or event["type"] == "message_delta"
            await response.write_eof()
            call.completed = True
        except ConnectionResetError:
            call.completed = False
        return response


def _searches(count: int) -> list[dict[str, Any]]:
    """Each search as Anthropic shows it: a ``server_tool_use`` block and its result."""
    blocks: list[dict[str, Any]] = []
    for n in range(count):
        blocks += [{"type": "server_tool_use", "id": f"srvtoolu_sim_{n}", "name": "web_search",
                    "input": {"query": f"simulated search {n}"}},
                   {"type": "web_search_tool_result", "tool_use_id": f"srvtoolu_sim_{n}",
                    "content": [{"type": "web_search_result", "url": f"https://example.com/{n}",
                                 "title": f"Result {n}", "encrypted_content": "c2lt", "page_age": None}]}]
    return blocks


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    if block["type"] == "web_search_tool_result":
        return [{"type": "content_block_start", "index": index, "content_block": block},
                {"type": "content_block_stop", "index": index}]
    if block["type"] in ("tool_use", "server_tool_use"):
        opened = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}]
    else:
        opened = {"type": "text", "text": ""}
        words = block["text"].split()
        deltas = [{"type": "text_delta", "text": w if i == 0 else f" {w}"} for i, w in enumerate(words)]
    return [{"type": "content_block_start", "index": index, "content_block": opened},
            *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
            {"type": "content_block_stop", "index": index}]


def _block_text(block: Any) -> tuple[int, str | None]:
    """Tokens of one content block and its cache breakpoint's lifetime (None: no breakpoint)."""
    if not isinstance(block, Mapping):
        return 0, None
    kind = block.get("type")
    if kind == "image":
        tokens = IMAGE_TOKENS
    elif kind == "tool_use":
        tokens = count_tokens(json.dumps(block.get("input", {})))
    elif kind == "tool_result":
        content = block.get("content")
        tokens = count_tokens(content if isinstance(content, str) else _text(content))
    else:
        tokens = count_tokens(str(block.get("text", "")))
    control = block.get("cache_control")
    return tokens, (str(control.get("ttl", "5m")) if isinstance(control, Mapping) else None)


def _prompt_pieces(body: Mapping[str, Any]) -> list[tuple[int, str | None]]:
    """The prompt in cache order (tools, system, messages), block by block: (tokens, breakpoint)."""
    pieces: list[tuple[int, str | None]] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, Mapping):
            text = f"{tool.get('name', '')} {tool.get('description', '')} {json.dumps(tool.get('input_schema', {}))}"
            control = tool.get("cache_control")
            pieces.append((count_tokens(text) + 10, str(control.get("ttl", "5m")) if isinstance(control, Mapping)
                           else None))
    system = body.get("system")
    if isinstance(system, str):
        pieces.append((count_tokens(system), None))
    elif isinstance(system, list):
        pieces += [_block_text(block) for block in system]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            pieces.append((count_tokens(content) + 3, None))
        elif isinstance(content, list):
            blocks = [_block_text(block) for block in content]
            pieces += [(tokens + (3 if i == 0 else 0), ttl) for i, (tokens, ttl) in enumerate(blocks)]
    return pieces


def _prefix(body: Mapping[str, Any], last: int) -> Any:
    """What the cache entry holds: the tools, system and messages in order, up to piece ``last``."""
    flat: list[Any] = [*(body.get("tools") or [])]
    system = body.get("system")
    flat += system if isinstance(system, list) else [system] if system else []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        flat += content if isinstance(content, list) else [content]
    return [body.get("model"), flat[: last + 1]]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, Mapping))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


class _Fail(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> web.Response:
        kind = ERROR_TYPES.get(self.status, "api_error")
        return web.json_response({"type": "error", "error": {"type": kind, "message": self.message}},
                                 status=self.status)


async def _label(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-simulated-provider"] = NAME


async def start_anthropic_simulator(host: str = "127.0.0.1", port: int = 0,
                                    **options: Any) -> tuple[web.AppRunner, str, AnthropicSimulator]:
    """Serve a new ``AnthropicSimulator(**options)``; returns the runner, ``http://host:port/v1``, it."""
    sim = AnthropicSimulator(**options)
    runner = web.AppRunner(sim.build_app(), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}/v1", sim
