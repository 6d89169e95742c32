"""A simulated OpenAI-compatible provider: the upstream of ``costproxy demo`` and of the tests.

Every response carries ``x-simulated-provider: costproxy-simulator`` and every completion the
``system_fingerprint`` ``"costproxy-simulator"``, so no one mistakes it for a real model.

Endpoints, with and without ``/v1``: ``POST /chat/completions``, ``POST /completions``,
``POST /embeddings``, ``POST /responses`` (OpenAI's Responses API, see ``simulator_responses``),
``GET /models``; Azure style ``POST /openai/deployments/{deployment}/
{chat/completions|completions|embeddings}?api-version=…`` (the deployment is the model; a missing
``api-version`` is a 404, as on Azure). Any model name is accepted and echoed back.

Auth: ``Authorization: Bearer <key>`` or ``api-key: <key>`` is required (401 otherwise) unless
``require_auth=False``; with ``accepted_keys`` set, only those keys pass. The key is recorded.

Answers are deterministic: a canned paragraph that opens by saying it is simulated, whose length
and sentences depend on a hash of the last user message (the prompt for ``/completions``), cut at
``max_completion_tokens`` or ``max_tokens`` (then ``finish_reason`` is ``"length"``).  With
``response_format`` (chat) or ``text.format`` (Responses) asking for JSON, the answer is a JSON
object, or a value generated from the given JSON schema that validates against it
(``simulator_structured``), so the SDKs' ``.parse()`` helpers work.
Embeddings are unit vectors hashed from each input (8 dims, or ``dimensions``; float lists or
``encoding_format: base64`` as the openai SDK asks). Token counts, also deterministic:
    text tokens        = whitespace-separated words * 4 // 3
    chat prompt        = sum over messages of (text tokens of its text content + 3)
    completions prompt = sum of text tokens of each prompt; embeddings: of each input
                         (a token-array input counts its length)
    completion         = one token per reply word; a tool call: 1 + words in its arguments
Streams are real SSE: a role chunk (``content: ""``), one chunk per word, a finish chunk, a usage
chunk (``choices: []``) if ``stream_options.include_usage``, then ``data: [DONE]``.

Controls, applied in this order (later wins): ``SimConfig`` defaults, the first matching plan
(``sim.plan(model="gpt-4o", times=2, fault="500")``; ``model=None`` matches any model,
``times=None`` never runs out; plans apply to POST endpoints only), ``x-sim-<name>`` request
headers (``x-sim-fault: 429``, ``x-sim-latency-ms: 200``; a flag is on with ``1``/``true``), and
``[[sim:<name>]]`` / ``[[sim:<name>=<value>]]`` in the last user message (the prompt, or the
embedding inputs). Directives:
    reply=TEXT        answer exactly TEXT (words re-joined by single spaces)
    tokens=N          answer with N filler words
    fault=F           F in: an HTTP status 400-599 (OpenAI error body; 429 adds ``retry-after``),
                      ``timeout`` (hang ``hang_s`` or until the client leaves, then answer),
                      ``malformed`` (200 with invalid JSON; a stream gets a garbage frame),
                      ``drop`` (close the connection before any response),
                      ``hang_body`` (unary: a 200 status line and the start of a body, then
                      hang ``hang_s`` or until the client leaves: the call was accepted, and billed)
    malformed, drop   same as fault=malformed, fault=drop
    latency_ms=N      wait N ms before answering
    chunk_delay_ms=N  wait N ms between stream frames
    drop_after=N      stream N ``data:`` frames (the role chunk is the first), then close the
                      connection without ``[DONE]``
    no_usage          no usage chunk in streams (even if asked), no ``usage`` in JSON bodies
    cached=N          report N (at most prompt_tokens) as ``prompt_tokens_details.cached_tokens``
    retry_after=N     seconds in the ``retry-after`` header of a 429
    tool_call         with ``tools`` in the request, call the first tool once (unless the
                      conversation ends with a tool result: then answer it)
An unknown directive is a 400, so a typo never silently does nothing.

``sim.calls`` records every request in order (a ``SimCall``: what was asked, what was sent back,
how much usage was reported, whether the response completed); ``sim.reset()`` clears calls and
plans. ``start_simulator()`` serves it on loopback and returns ``(runner, base_url, sim)``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import re
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from costproxy.records import frozen
from costproxy.tools.simulator_structured import SchemaUnsupported, structured_text

SIM_NAME = "costproxy-simulator"
DEFAULT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o3-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
SENTENCES = (
    "This answer comes from the costproxy simulator, not from a real model.",
    "It is deterministic, so the same question always gets the same reply.",
    "Token counts are computed with a simple documented rule.",
    "Point costproxy at a real provider to get real answers.",
    "Budgets, ledger entries and savings still work exactly as in production.",
    "Streamed, it arrives one word per chunk, like a real provider.",
)
_DIRECTIVE = re.compile(r"\[\[sim:([^\]=]*)(?:=([^\]]*))?\]\]")
_INT_DIRECTIVES = ("tokens", "latency_ms", "chunk_delay_ms", "drop_after", "cached", "retry_after", "searches")
_FLAG_FAULTS = ("malformed", "drop")
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_value", "Simulated invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (simulated)."),
    404: ("invalid_request_error", "model_not_found", "Resource not found (simulated)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (simulated)."),
    500: ("server_error", None, "The server had an error while processing your request (simulated)."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later (simulated)."),
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Chunk = tuple[dict[str, Any], int]  # a stream payload and the completion tokens it carries


@frozen
class SimConfig:
    require_auth: bool = True
    accepted_keys: tuple[str, ...] = ()  # empty: any key passes
    models: tuple[str, ...] = DEFAULT_MODELS
    latency_ms: int = 0
    chunk_delay_ms: int = 0
    retry_after_s: int = 1
    embedding_dims: int = 8
    hang_s: float = 30.0  # how long fault=timeout waits for the client to give up
    shutdown_timeout_s: float = 1.0


@dataclass(slots=True)
class Behaviour:
    """What the simulator does for one request, after all controls are applied."""

    reply: str | None = None
    tokens: int | None = None
    fault: str | None = None
    latency_ms: int = 0
    chunk_delay_ms: int = 0
    drop_after: int | None = None
    no_usage: bool = False
    cached: int = 0
    retry_after: int = 1
    tool_call: bool = False
    searches: int = 0  # web searches the provider says it ran (Messages and Responses only)

    def apply(self, directives: Mapping[str, str | int | bool | None]) -> None:
        """Set each directive; ``ValueError`` names an unknown directive or a bad value."""
        for name, value in directives.items():
            if name in _FLAG_FAULTS:
                if _flag(value):
                    self.fault = name
            elif name in ("no_usage", "tool_call"):
                setattr(self, name, _flag(value))
            elif name in _INT_DIRECTIVES:
                setattr(self, name, _non_negative(name, value))
            elif name in ("reply", "fault"):
                setattr(self, name, None if value is None else str(value))
            else:
                raise ValueError(f"unknown simulator directive {name!r}")
        if self.fault is not None and self.fault not in ("timeout", "hang_body", *_FLAG_FAULTS):
            if not (self.fault.isdigit() and 400 <= int(self.fault) <= 599):
                raise ValueError(f"bad simulator fault {self.fault!r}")


@dataclass(slots=True)
class SimCall:
    """One request the simulator received and what it sent back."""

    path: str
    method: str
    query: dict[str, str]
    headers: dict[str, str]
    auth: str | None  # the key seen in Authorization (Bearer) or api-key
    body: Any = None  # the request JSON, None for GET or an unparseable body
    model: str | None = None
    response_id: str = ""
    status: int = 0  # 0: no HTTP response was sent (dropped or client gone)
    fault: str | None = None
    streamed: bool = False
    prompt_tokens: int = 0  # what the request counts, whether or not it was billed
    completion_tokens: int = 0  # generated so far (a dropped stream counts what it sent)
    cached_tokens: int = 0
    usage_sent: bool = False
    completed: bool = False  # the whole response reached the client's socket
    dropped: bool = False
    chunks_sent: int = 0  # SSE data frames, [DONE] excluded
    reply: str = ""


@dataclass(slots=True)
class _Plan:
    model: str | None
    remaining: int | None
    directives: dict[str, str | int | bool | None]


@frozen
class _Answer:
    words: tuple[str, ...]
    finish_reason: str
    tool_call: dict[str, Any] | None = None
    tool_tokens: int = 0

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def completion_tokens(self) -> int:
        return self.tool_tokens if self.tool_call else len(self.words)


class _Abort(Exception):
    """Ends a handler early with a ready response."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


class Simulator:
    """The simulated provider's state: configuration, plans and the record of calls."""

    def __init__(self, config: SimConfig | None = None, **options: Any) -> None:
        self.config = config if config is not None else SimConfig(**options)
        self.calls: list[SimCall] = []
        self._plans: list[_Plan] = []

    def plan(self, *, model: str | None = None, times: int | None = None, **directives: Any) -> None:
        """Apply ``directives`` to the next ``times`` requests (all if None) for ``model`` (any if None)."""
        Behaviour().apply(directives)
        self._plans.append(_Plan(model, times, dict(directives)))

    def reset(self) -> None:
        self.calls.clear()
        self._plans.clear()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.on_response_prepare.append(_label_response)
        for prefix in ("", "/v1"):
            app.router.add_post(f"{prefix}/chat/completions", self._route(self._chat))
            app.router.add_post(f"{prefix}/completions", self._route(self._completions))
            app.router.add_post(f"{prefix}/embeddings", self._route(self._embeddings))
            app.router.add_post(f"{prefix}/responses", self._route(self._responses))
            app.router.add_get(f"{prefix}/models", self._route(self._models))
        azure = "/openai/deployments/{deployment}"
        app.router.add_post(f"{azure}/chat/completions", self._route(self._chat))
        app.router.add_post(f"{azure}/completions", self._route(self._completions))
        app.router.add_post(f"{azure}/embeddings", self._route(self._embeddings))
        return app

    def _behaviour(self, model: str, headers: Mapping[str, str], text: str) -> Behaviour:
        """Resolve config, plan, ``x-sim-*`` headers and ``[[sim:…]]`` directives (later wins)."""
        cfg = self.config
        result = Behaviour(
            latency_ms=cfg.latency_ms, chunk_delay_ms=cfg.chunk_delay_ms, retry_after=cfg.retry_after_s
        )
        for plan in self._plans:
            if plan.model in (None, model) and plan.remaining != 0:
                plan.remaining = None if plan.remaining is None else plan.remaining - 1
                result.apply(plan.directives)
                break
        result.apply({k[6:].lower().replace("-", "_"): v for k, v in headers.items() if _is_sim(k)})
        result.apply({m.group(1).strip().lower(): m.group(2) for m in _DIRECTIVE.finditer(text)})
        return result

    # -- request plumbing ---------------------------------------------------------------------

    def _route(self, endpoint: Callable[[web.Request, SimCall], Awaitable[web.StreamResponse]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            call = SimCall(
                path=request.path,
                method=request.method,
                query=dict(request.query),
                headers={name.lower(): value for name, value in request.headers.items()},
                auth=_auth_key(request),
                response_id=f"sim-{len(self.calls):06d}",
            )
            self.calls.append(call)
            try:
                self._check_auth(call)
                response = await endpoint(request, call)
            except _Abort as abort:
                response = abort.response
            if not (response.prepared or call.dropped or _client_gone(request)):
                call.status, call.completed = response.status, True
            return response

        return handle

    def _check_auth(self, call: SimCall) -> None:
        if not self.config.require_auth:
            return
        if call.auth is None:
            raise _Abort(_error(401, "You didn't provide an API key (simulated).", code=None))
        if self.config.accepted_keys and call.auth not in self.config.accepted_keys:
            raise _Abort(_error(401))

    async def _begin(self, request: web.Request, call: SimCall) -> dict[str, Any]:
        """Parse the JSON body and name the model (the Azure deployment wins)."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise _Abort(_error(400, "We could not parse the JSON body of your request.")) from None
        if not isinstance(body, dict):
            raise _Abort(_error(400, "The request body must be a JSON object."))
        call.body = body
        deployment = request.match_info.get("deployment")
        if deployment is not None and "api-version" not in request.query:
            raise _Abort(_error(404, "Resource not found", code="404"))
        model = deployment or body.get("model")
        if not isinstance(model, str) or not model:
            raise _Abort(_error(400, "you must provide a model parameter", code="missing_required_parameter"))
        call.model = model
        return body

    def _resolve(self, request: web.Request, call: SimCall, text: str) -> Behaviour:
        try:
            plan = self._behaviour(call.model or "", request.headers, text)
        except ValueError as exc:
            raise _Abort(_error(400, str(exc), code="invalid_sim_directive")) from None
        call.fault = plan.fault
        call.cached_tokens = min(plan.cached, call.prompt_tokens)
        return plan

    async def _before_answer(self, request: web.Request, call: SimCall, plan: Behaviour) -> None:
        """Wait, then raise the planned fault; ``malformed`` streams are left to the stream writer."""
        await _wait(request, plan.latency_ms)
        if plan.fault == "timeout":
            await _wait(request, self.config.hang_s * 1000)
        elif plan.fault == "hang_body" and not (isinstance(call.body, dict) and call.body.get("stream")):
            response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
            await response.prepare(request)
            await response.write(b'{"id": "sim-accepted", "choices": [')
            await _wait(request, self.config.hang_s * 1000)
            call.dropped = True
            _close(request)
            raise _Abort(response)
        elif plan.fault == "drop":
            call.dropped = True
            _close(request)
            raise _Abort(web.Response())
        elif plan.fault == "malformed" and not (isinstance(call.body, dict) and call.body.get("stream")):
            raise _Abort(
                web.Response(body=b'{"id": "sim-broken", "choices": [{"mess', content_type="application/json")
            )
        elif plan.fault is not None and plan.fault.isdigit():
            raise _Abort(_error(int(plan.fault), retry_after=plan.retry_after))

    # -- endpoints ------------------------------------------------------------------------------

    async def _chat(self, request: web.Request, call: SimCall) -> web.StreamResponse:
        body = await self._begin(request, call)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Abort(_error(400, "'messages' must be a non-empty array", code="invalid_type"))
        text = _last_user_text(messages)
        call.prompt_tokens = sum(count_tokens(_content_text(m)) + 3 for m in messages if isinstance(m, dict))
        plan = self._resolve(request, call, text)
        await self._before_answer(request, call, plan)
        answer = _compose(body, text, plan)
        base = self._base(call, "chat.completion")
        if body.get("stream") is True:
            return await self._stream(request, call, plan, _chat_chunks(base, answer), answer)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.tool_call is not None:
            message.update(content=None, tool_calls=[answer.tool_call])
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}
        return self._json(call, plan, answer, {**base, "choices": [choice]})

    async def _completions(self, request: web.Request, call: SimCall) -> web.StreamResponse:
        body = await self._begin(request, call)
        prompt = body.get("prompt", "")
        prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt or [""]]
        call.prompt_tokens = sum(count_tokens(p) for p in prompts)
        plan = self._resolve(request, call, prompts[-1])
        await self._before_answer(request, call, plan)
        answer = _compose(body, prompts[-1], plan)
        base = self._base(call, "text_completion")
        if body.get("stream") is True:
            return await self._stream(request, call, plan, _text_chunks(base, answer), answer)
        choice = {"text": answer.text, "index": 0, "logprobs": None, "finish_reason": answer.finish_reason}
        return self._json(call, plan, answer, {**base, "choices": [choice]})

    async def _embeddings(self, request: web.Request, call: SimCall) -> web.StreamResponse:
        body = await self._begin(request, call)
        if body.get("input") in (None, "", []):
            raise _Abort(_error(400, "'input' is required", code="missing_required_parameter"))
        inputs = _embedding_inputs(body["input"])
        call.prompt_tokens = sum(tokens for _, tokens in inputs)
        plan = self._resolve(request, call, " ".join(text for text, _ in inputs))
        await self._before_answer(request, call, plan)
        dims = body.get("dimensions") or self.config.embedding_dims
        if not isinstance(dims, int) or not 1 <= dims <= 4096:
            raise _Abort(_error(400, "'dimensions' must be an integer from 1 to 4096", code="invalid_value"))
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": _embedding(text, dims, as_base64)}
            for i, (text, _) in enumerate(inputs)
        ]
        payload: dict[str, Any] = {"object": "list", "data": data, "model": call.model}
        if not plan.no_usage:
            payload["usage"] = {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
            call.usage_sent = True
        return web.json_response(payload, dumps=_dumps)

    async def _responses(self, request: web.Request, call: SimCall) -> web.StreamResponse:
        from costproxy.tools.simulator_responses import respond

        return await respond(self, request, call)

    async def _models(self, request: web.Request, call: SimCall) -> web.StreamResponse:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": SIM_NAME} for m in self.config.models]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    # -- responses ------------------------------------------------------------------------------

    def _base(self, call: SimCall, kind: str) -> dict[str, Any]:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        call.response_id = f"{prefix}-{call.response_id}"
        return {
            "id": call.response_id,
            "object": kind,
            "created": int(time.time()),
            "model": call.model,
            "system_fingerprint": SIM_NAME,
        }

    def _json(self, call: SimCall, plan: Behaviour, answer: _Answer, payload: dict[str, Any]) -> web.Response:
        call.completion_tokens, call.reply = answer.completion_tokens, answer.text
        if not plan.no_usage:
            payload["usage"] = _usage(call)
            call.usage_sent = True
        return web.json_response(payload, dumps=_dumps)

    async def _stream(
        self, request: web.Request, call: SimCall, plan: Behaviour, chunks: list[Chunk], answer: _Answer
    ) -> web.StreamResponse:
        call.reply, call.streamed = answer.text, True
        if _include_usage(call.body) and not plan.no_usage:
            usage = _usage(call, answer.completion_tokens)
            chunks = [({**c, "usage": None}, n) for c, n in chunks] + [
                ({**chunks[0][0], "choices": [], "usage": usage}, -1)
            ]
        frames = [(b"data: " + orjson.dumps(chunk) + b"\n\n", tokens) for chunk, tokens in chunks]
        return await self.stream_frames(request, call, plan, frames)

    async def stream_frames(self, request: web.Request, call: SimCall, plan: Behaviour,
                            frames: list[tuple[bytes, int]], *, done: bool = True) -> web.StreamResponse:
        """Send SSE ``frames`` (each with the completion tokens it carries, -1 for the usage frame)
        under the plan's delays and faults; ``done`` ends with ``data: [DONE]``."""
        call.streamed = True
        if plan.fault == "malformed":
            frames = [frames[0], (b'data: {"id": "sim-broken", "choices": [{"delta": \n\n', 0)]
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        response.headers["cache-control"] = "no-cache"
        try:
            await response.prepare(request)
            call.status = response.status
            await self._write_frames(request, call, plan, frames, response, done)
        except ConnectionResetError:
            call.completed = False
        return response

    async def _write_frames(
        self,
        request: web.Request,
        call: SimCall,
        plan: Behaviour,
        frames: list[tuple[bytes, int]],
        response: web.StreamResponse,
        done: bool = True,
    ) -> None:
        for frame, tokens in frames:
            if plan.drop_after is not None and call.chunks_sent >= plan.drop_after:
                break
            if call.chunks_sent and plan.chunk_delay_ms:
                await asyncio.sleep(plan.chunk_delay_ms / 1000)
            await response.write(frame)
            call.chunks_sent += 1
            call.usage_sent = call.usage_sent or tokens < 0
            call.completion_tokens += max(tokens, 0)
        if plan.drop_after is not None:
            call.dropped = True
            _close(request)
            return
        if done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        call.completed = True


async def start_simulator(
    host: str = "127.0.0.1", port: int = 0, **options: Any
) -> tuple[web.AppRunner, str, Simulator]:
    """Serve a new ``Simulator(**options)``; returns the runner, ``http://host:port/v1`` and the simulator."""
    sim = Simulator(**options)
    runner = web.AppRunner(sim.build_app(), shutdown_timeout=sim.config.shutdown_timeout_s)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown_host}:{bound_port}/v1", sim


def count_tokens(text: str) -> int:
    """The simulator's deterministic tokenizer: whitespace-separated words * 4 // 3."""
    return len(text.split()) * 4 // 3


# -- pure pieces ------------------------------------------------------------------------------


def _compose(body: Mapping[str, Any], text: str, plan: Behaviour) -> _Answer:
    tools = body.get("tools")
    messages = body.get("messages")
    answered = isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) \
        and messages[-1].get("role") == "tool"
    if plan.tool_call and isinstance(tools, list) and tools and not answered:
        return _tool_answer(tools[0])
    if plan.reply is not None:
        words = tuple(plan.reply.split())
    elif plan.tokens is not None:
        filler = itertools.cycle(" ".join(SENTENCES).split())
        words = tuple(itertools.islice(filler, plan.tokens))
    else:
        digest = hashlib.sha256(text.encode()).digest()
        rest = SENTENCES[1:]
        start, count = digest[0] % len(rest), 1 + digest[1] % 3
        prose = " ".join([SENTENCES[0], *(rest[(start + i) % len(rest)] for i in range(count))])
        try:
            structured = structured_text(body, prose)
        except SchemaUnsupported as exc:
            raise _Abort(_error(400, str(exc), code="invalid_value")) from None
        words = tuple((structured or prose).split())
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and len(words) > limit:
        return _Answer(words[:limit], "length")
    return _Answer(words, "stop")


def _tool_answer(tool: Any) -> _Answer:
    function = tool.get("function", {}) if isinstance(tool, dict) else {}
    required = function.get("parameters", {}).get("required", [])
    arguments = orjson.dumps({name: "sim" for name in required}).decode()
    call = {
        "id": "call_sim_0",
        "type": "function",
        "function": {"name": function.get("name", "tool"), "arguments": arguments},
    }
    return _Answer((), "tool_calls", call, 1 + len(arguments.split()))


def _chat_chunks(base: dict[str, Any], answer: _Answer) -> list[Chunk]:
    head = {**base, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    if answer.tool_call is not None:
        fn = answer.tool_call["function"]
        opening = {**answer.tool_call, "index": 0, "function": {"name": fn["name"], "arguments": ""}}
        args = {"index": 0, "function": {"arguments": fn["arguments"]}}
        body = [
            (chunk({"role": "assistant", "content": None, "tool_calls": [opening]}), 1),
            (chunk({"tool_calls": [args]}), answer.tool_tokens - 1),
        ]
    else:
        words = [(chunk({"content": w if i == 0 else f" {w}"}), 1) for i, w in enumerate(answer.words)]
        body = [(chunk({"role": "assistant", "content": ""}), 0), *words]
    return [*body, (chunk({}, answer.finish_reason), 0)]


def _text_chunks(base: dict[str, Any], answer: _Answer) -> list[Chunk]:
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

    words = [(chunk(w if i == 0 else f" {w}"), 1) for i, w in enumerate(answer.words)]
    return [(chunk(""), 0), *words, (chunk("", answer.finish_reason), 0)]


def _usage(call: SimCall, completion_tokens: int | None = None) -> dict[str, Any]:
    completion = call.completion_tokens if completion_tokens is None else completion_tokens
    return {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": call.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": call.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _embedding(text: str, dims: int, as_base64: bool) -> list[float] | str:
    raw = hashlib.shake_256(text.encode()).digest(2 * dims)
    vector = [int.from_bytes(raw[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dims, 2)]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    vector = [v / norm for v in vector]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
    return vector


def _embedding_inputs(raw: Any) -> list[tuple[str, int]]:
    items = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    return [
        (" ".join(map(str, item)), len(item))
        if isinstance(item, list)
        else (str(item), count_tokens(str(item)))
        for item in items
    ]


def _content_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _last_user_text(messages: list[Any]) -> str:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return _content_text(users[-1]) if users else ""


def _include_usage(body: Any) -> bool:
    options = body.get("stream_options") if isinstance(body, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def _error(
    status: int, message: str | None = None, *, code: str | None = "", retry_after: int | None = None
) -> web.Response:
    kind, default_code, default_message = _ERRORS.get(
        status,
        ("server_error" if status >= 500 else "invalid_request_error", None, f"Simulated HTTP {status}."),
    )
    error = {
        "message": message or default_message,
        "type": kind,
        "param": None,
        "code": default_code if code == "" else code,
    }
    headers = {"retry-after": str(retry_after)} if status == 429 and retry_after is not None else None
    return web.json_response({"error": error}, status=status, headers=headers, dumps=_dumps)


async def _wait(request: web.Request, ms: float) -> None:
    """Sleep ``ms`` milliseconds, waking early when the client hangs up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ms / 1000
    # aiohttp signals a hang-up only by cancelling the handler (off by default), hence the polling.
    while (left := deadline - loop.time()) > 0 and not _client_gone(request):  # noqa: ASYNC110
        await asyncio.sleep(min(left, 0.05))


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


async def _label_response(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-simulated-provider"] = SIM_NAME


def _auth_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.headers.get("api-key")


def _is_sim(header: str) -> bool:
    return header.lower().startswith("x-sim-")


def _flag(value: str | int | bool | None) -> bool:
    return value is None or value is True or str(value).strip().lower() in ("", "1", "true", "yes", "on")


def _non_negative(name: str, value: str | int | bool | None) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"simulator directive {name!r} needs a whole number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"simulator directive {name!r} must not be negative, got {value!r}")
    return number


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def typed(data: dict[str, Any]) -> bytes:
    """An SSE frame named after its ``type`` (Responses and Messages streams)."""
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def directives_in(text: str) -> dict[str, str | None]:
    """The ``[[sim:<name>=<value>]]`` directives of a text."""
    return {m.group(1).strip().lower(): m.group(2) for m in _DIRECTIVE.finditer(text)}
