"""Money accounting at the edges of what upstreams do: every output-cap field forwarded stays
within the reservation, an answer lost after the provider accepted the call is charged, and
reported usage is believed only as far as the provider could have billed it.

``Hostile`` is an OpenAI-compatible upstream whose answer the test chooses per call."""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from costproxy.http.app import create_app
from costproxy.http.keys_api import issue_key
from costproxy.http.state import KEYRING, STORE
from tests.conftest import TEST_MODELS, ConfigFactory, Proxy, load_test_settings
from tests.integration.conftest import ProtocolProxy, ledger_entry

SMALL_IN, SMALL_OUT = 150, 600  # nano-USD per token of "small"
CHAT = {"model": "small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100}


@dataclass
class Hostile:
    """Answers ``POST /v1/chat/completions`` with what ``answer`` says (set by the test)."""

    answer: Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse] | web.StreamResponse] | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        assert self.answer is not None
        result = self.answer(request, body)
        return await result if isinstance(result, Awaitable) else result


TWENTY = " ".join(["word"] * 20)  # 20 o200k tokens


def completion(usage: Any, text: str = TWENTY) -> web.Response:
    data = {"id": "x", "object": "chat.completion", "created": 1, "model": "small",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage}
    return web.Response(body=orjson.dumps(data), content_type="application/json")


HostileProxy = Callable[..., Awaitable[tuple[Proxy, Hostile]]]


@pytest.fixture
def hostile_proxy(aiohttp_server: Any, aiohttp_client: Any, write_config: ConfigFactory) -> HostileProxy:
    async def make(extra: dict[str, Any] | None = None) -> tuple[Proxy, Hostile]:
        hostile = Hostile()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", hostile.chat)
        server = await aiohttp_server(app)
        settings = load_test_settings(write_config(str(server.make_url("/v1")), models=copy.deepcopy(TEST_MODELS),
                                                   extra=extra))
        proxy_app = create_app(settings)
        client = await aiohttp_client(proxy_app)
        secret, record = await issue_key(proxy_app[STORE], {"user": "alice", "team": "core", "org": "acme",
                                                            "project": "p1"}, time.time())
        proxy_app[KEYRING].add(record)
        return Proxy(client, proxy_app, secret, None), hostile  # type: ignore[arg-type]

    return make


def budget(limit_usd: str) -> dict[str, Any]:
    return {"budgets": {"definitions": [{"id": "core", "scope_type": "team", "scope_id": "core",
                                         "limit_usd": limit_usd, "period": "monthly"}]}}


async def test_native_bodies_carry_no_foreign_cap_above_the_reserved_one(protocol_proxy: ProtocolProxy,
                                                                         simulator: Any, anthropic_sim: Any) -> None:
    """A Responses body forwarded as it is may carry ``max_tokens`` too, a Messages body
    ``max_completion_tokens``: a lenient upstream could honour them, so they are lowered to the
    cap the reservation covers."""
    _, sim = simulator
    _, claude = anthropic_sim
    proxy = await protocol_proxy()
    resp = await proxy.client.post("/v1/responses", json={"model": "big", "input": "Hi", "max_output_tokens": 5,
                                                          "max_tokens": 100_000, "max_completion_tokens": 7},
                                   headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    forwarded = sim.calls[-1].body
    assert (forwarded["max_output_tokens"], forwarded["max_tokens"], forwarded["max_completion_tokens"]) == (5, 5, 5)
    resp = await proxy.client.post("/v1/messages", json={"model": "claude", "max_tokens": 5, "max_completion_tokens":
                                                         100_000, "messages": [{"role": "user", "content": "Hi"}]},
                                   headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    forwarded = claude.calls[-1].body
    assert (forwarded["max_tokens"], forwarded["max_completion_tokens"]) == (5, 5)


async def test_an_upstream_honouring_max_tokens_stays_within_a_hard_budget(hostile_proxy: HostileProxy) -> None:
    """The tester's case: ``max_completion_tokens: 5`` with ``max_tokens: 100000`` to an upstream
    that generates ``max_tokens``; a $0.001 budget must end at most at $0.001."""
    proxy, hostile = await hostile_proxy(budget("0.001"))

    def honour(request: web.Request, body: dict[str, Any]) -> web.Response:
        n = body.get("max_tokens") or 16
        return completion({"prompt_tokens": 10, "completion_tokens": n, "total_tokens": n + 10}, "w " * n)

    hostile.answer = honour
    for _ in range(3):
        await proxy.client.post("/v1/chat/completions", headers=proxy.auth(), json={
            **CHAT, "max_completion_tokens": 5, "max_tokens": 100_000})
    spent = sum(e.cost_nanos for e in await proxy.ledger())
    assert 0 < spent <= 1_000_000


UNREADABLE = [
    pytest.param(lambda request, body: web.Response(text="{not json", content_type="application/json"), id="not-json"),
    pytest.param(lambda request, body: web.Response(text="[1, 2]", content_type="application/json"), id="json-array"),
    pytest.param(lambda request, body: web.Response(text="<html>oops</html>", content_type="text/html"), id="html"),
    pytest.param(lambda request, body: web.Response(text="", content_type="application/json"), id="empty"),
]


@pytest.mark.parametrize("answer", UNREADABLE)
async def test_an_unreadable_2xx_answer_is_charged_its_worst_case(hostile_proxy: HostileProxy, answer: Any) -> None:
    """The provider accepted the call (2xx) and may bill it; its answer is lost, so the README's
    rule applies: charged the worst case, marked estimated, and not retried on another model."""
    proxy, hostile = await hostile_proxy(budget("1"))
    hostile.answer = answer
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 502 and (await resp.json())["error"]["code"] == "upstream_bad_response"
    [entry] = await proxy.ledger()
    assert entry.status == "error" and not entry.usage_reported
    assert entry.completion_tokens == 100 and entry.prompt_tokens > 0
    assert entry.cost_nanos == entry.prompt_tokens * SMALL_IN + 100 * SMALL_OUT
    assert len(hostile.bodies) == 1
    status = await proxy.client.get("/api/v1/budgets/core/status", headers={"Authorization": "Bearer test-admin-token"})
    assert (await status.json())["currentAmount"] != "0"


@pytest.mark.parametrize("body", [b'{"id": "x", "usage": {"completion_tokens": 50}}\n\n', b"<html>oops</html>\n\n"])
async def test_a_body_under_an_event_stream_header_is_never_relayed_as_an_event(hostile_proxy: HostileProxy,
                                                                                body: bytes) -> None:
    proxy, hostile = await hostile_proxy()

    async def impostor(request: web.Request, answer: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        return response

    hostile.answer = impostor
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=proxy.auth())
    received = await resp.read()
    # the stream's head is out by then: it ends with an error event, and the impostor body never reaches the client
    assert b"upstream_bad_response" in received and b"[DONE]" not in received, received
    assert body.strip() not in received
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.status == "error" and entry.cost_nanos > 0  # the provider accepted the call


async def test_a_malformed_first_stream_event_still_charges_the_prompt(hostile_proxy: HostileProxy) -> None:
    proxy, hostile = await hostile_proxy()

    async def garbage(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {not json\n\n")
        return response

    hostile.answer = garbage
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=proxy.auth())
    assert b"upstream_bad_response" in await resp.read()
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.status == "error" and entry.prompt_tokens > 0 and entry.cost_nanos == entry.prompt_tokens * SMALL_IN



async def answered(request: web.Request, body: dict[str, Any], content: str,
                   usage: dict[str, Any]) -> web.StreamResponse:
    """A completion with ``usage`` — unary, or streamed as one content chunk and a usage chunk."""
    if not body.get("stream"):
        return completion(usage)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    base = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "small"}
    for frame in ({**base, "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": "stop"}]},
                  {**base, "choices": [], "usage": usage}):
        await response.write(b"data: " + orjson.dumps(frame) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


@pytest.mark.parametrize("stream", [False, True])
async def test_implausible_output_is_charged_at_most_n_times_the_cap_sent(hostile_proxy: HostileProxy,
                                                                          stream: bool) -> None:
    """An upstream reporting 100,000,000 completion tokens for ``max_tokens: 100`` (n = 2) is
    charged 200, with its own figure kept for reconciliation: a $1 budget is not spent $60."""
    proxy, hostile = await hostile_proxy(budget("1"))
    usage = {"prompt_tokens": 5, "completion_tokens": 100_000_000, "total_tokens": 100_000_005}

    async def lying(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await answered(request, body, "word ", usage)

    hostile.answer = lying
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "n": 2, "stream": stream},
                                   headers=proxy.auth())
    assert resp.status == 200
    await resp.read()
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.usage_reported and (entry.prompt_tokens, entry.completion_tokens) == (5, 200)
    assert entry.cost_nanos == 5 * SMALL_IN + 200 * SMALL_OUT
    assert entry.metadata["usage_clamped"] == {"completion_tokens": 100_000_000, "limit": 200, "reported": 1}
    metrics = await proxy.client.get("/metrics", headers={"Authorization": "Bearer test-admin-token"})
    assert 'costproxy_usage_clamped_total{model="small"} 1.0' in await metrics.text()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("usage", [{"prompt_tokens": 5}, {"completion_tokens": 7}, {"prompt_tokens": 5,
                                                                                      "completion_tokens": "7"}])
async def test_a_usage_missing_a_count_is_not_reported(hostile_proxy: HostileProxy, stream: bool,
                                                       usage: dict[str, Any]) -> None:
    """``{"prompt_tokens": 5}`` is no report of the output: the answer's 20 words are counted and
    the entry is estimated, as for a missing usage, never a reported usage with 0 output."""
    proxy, hostile = await hostile_proxy()

    async def partial(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await answered(request, body, TWENTY, usage)

    hostile.answer = partial
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers=proxy.auth())
    assert resp.status == 200
    await resp.read()
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert not entry.usage_reported
    assert entry.completion_tokens == 20 and entry.prompt_tokens > 0  # the answer's text, counted
    assert entry.cost_nanos == entry.prompt_tokens * SMALL_IN + 20 * SMALL_OUT


async def test_embeddings_usage_without_completion_tokens_is_reported(make_proxy: Any) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/v1/embeddings", json={"model": "embed", "input": "hello world"},
                                   headers=proxy.auth())
    assert resp.status == 200
    [entry] = await proxy.ledger()
    assert entry.usage_reported and entry.prompt_tokens > 0 and entry.completion_tokens == 0


NOT_A_STREAM = [
    pytest.param(lambda request, body: web.Response(text="<html>oops</html>", content_type="text/html"), id="html"),
    pytest.param(lambda request, body: web.Response(text="[1, 2]", content_type="application/json"), id="json-array"),
    pytest.param(lambda request, body: web.Response(text='{"error": {"message": "boom"}}',
                                                    content_type="application/json"), id="error-object"),
]


@pytest.mark.parametrize("answer", NOT_A_STREAM)
async def test_a_stream_answered_with_no_event_stream_is_a_bad_response(hostile_proxy: HostileProxy,
                                                                        answer: Any) -> None:
    """The content type is checked when the stream opens, before any byte reaches the client: the
    client gets a 502 in OpenAI's shape (never the raw body inside its SSE stream), the call is
    charged its worst case (the provider accepted it; its answer is lost) and not retried."""
    proxy, hostile = await hostile_proxy(budget("1"))
    hostile.answer = answer
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=proxy.auth())
    assert resp.status == 502 and resp.content_type == "application/json"
    raw = await resp.read()
    assert b"oops" not in raw and b"boom" not in raw and b"[1, 2]" not in raw
    assert orjson.loads(raw)["error"]["code"] == "upstream_bad_response"
    [entry] = await proxy.ledger()
    assert entry.status == "error" and not entry.usage_reported and entry.completion_tokens == 100
    assert entry.cost_nanos == entry.prompt_tokens * SMALL_IN + 100 * SMALL_OUT
    assert len(hostile.bodies) == 1


async def test_a_thinking_budget_stays_below_the_max_tokens_the_budget_lowered(protocol_proxy: ProtocolProxy,
                                                                               anthropic_sim: Any) -> None:
    """Anthropic refuses ``thinking.budget_tokens >= max_tokens``: when a hard budget lowers a native
    Messages body's ``max_tokens``, its thinking budget is lowered with it; when not even the
    1,024-token minimum fits, the request is refused as the budget's, and nothing is forwarded."""
    _, claude = anthropic_sim
    body = {"model": "claude", "max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 4000},
            "messages": [{"role": "user", "content": "Hi"}]}
    budgets = [{"id": "core", "scope_type": "team", "scope_id": "core", "limit_usd": "0.03", "period": "monthly"},
               {"id": "tight", "scope_type": "team", "scope_id": "tight", "limit_usd": "0.01", "period": "monthly"}]
    proxy = await protocol_proxy(budgets={"definitions": budgets})  # core: ~1,990 output tokens of claude at $15/M
    resp = await proxy.client.post("/v1/messages", json=body, headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    forwarded = claude.calls[-1].body
    assert 1024 <= forwarded["thinking"]["budget_tokens"] == forwarded["max_tokens"] - 1 < 2000
    assert forwarded["thinking"]["type"] == "enabled"

    sent = len(claude.calls)
    tight = await proxy.new_key(user="bob", team="tight", org="acme")  # ~660 output tokens: thinking cannot fit
    resp = await proxy.client.post("/v1/messages", json=body, headers=proxy.auth(tight))
    assert resp.status == 429, await resp.text()
    error = (await resp.json())["error"]
    assert error["type"] == "insufficient_quota" or "budget" in error["message"]
    assert "extended thinking" in error["message"] and len(claude.calls) == sent
    [entry] = [e for e in await proxy.ledger() if e.status != "ok"]
    assert entry.cost_nanos == 0 and entry.error_code == "budget_exceeded"


async def test_a_budget_without_a_name_is_named_by_its_id_in_a_refusal(protocol_proxy: ProtocolProxy) -> None:
    """The refusal names the tightest hard budget as "name (id)", or by its id alone when it has no
    name — never "budget  (id)" with an empty name."""
    proxy = await protocol_proxy(**budget("0.000001"))
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "model": "auto"}, headers=proxy.auth())
    assert resp.status == 429, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "budget_exceeded" and error["message"].startswith("budget core has $"), error
    assert error["budget"] == "core"


async def _anthropic_upstream_that_errors(aiohttp_server: Any, aiohttp_client: Any, write_config: ConfigFactory,
                                          blocks: list[dict[str, Any]], models: dict[str, Any]) -> Proxy:
    """A proxy in front of an Anthropic upstream whose stream sends ``message_start`` (a prompt of 25
    tokens), ``blocks`` (each a ``content_block_start``), then an ``overloaded_error`` event."""
    async def messages(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                      "model": "m", "content": [], "stop_reason": None,
                                                      "usage": {"input_tokens": 25, "output_tokens": 1}}}
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        events = [("message_start", start)]
        events += [("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
                   for index, block in enumerate(blocks)]
        for name, data in (*events, ("error", error)):
            await response.write(f"event: {name}\ndata: {orjson.dumps(data).decode()}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    server = await aiohttp_server(app)
    settings = load_test_settings(write_config(str(server.make_url("/v1")), models=models,
                                               provider_overrides={"kind": "anthropic",
                                                                   "api_key_env": "ANTHROPIC_TEST_KEY"}))
    proxy_app = create_app(settings)
    client = await aiohttp_client(proxy_app)
    secret, record = await issue_key(proxy_app[STORE], {"user": "alice", "team": "core", "org": "acme"}, time.time())
    proxy_app[KEYRING].add(record)
    return Proxy(client, proxy_app, secret, None)  # type: ignore[arg-type]


async def test_an_anthropic_stream_that_errors_after_message_start_is_charged_its_reported_prompt(
        aiohttp_server: Any, aiohttp_client: Any, write_config: ConfigFactory) -> None:
    """An ``error`` event (``overloaded_error``) right after ``message_start`` comes inside a stream
    the provider accepted, whose ``message_start`` reported the prompt: the call is charged that
    prompt, never released, and the client gets the error as the stream's last event."""
    proxy = await _anthropic_upstream_that_errors(aiohttp_server, aiohttp_client, write_config, [],
                                                  copy.deepcopy(TEST_MODELS))
    resp = await proxy.client.post("/v1/messages", headers=proxy.auth(), json={
        "model": "small", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    text = await resp.text()
    assert resp.status == 200 and "overloaded_error" in text
    [entry] = await proxy.ledger()
    assert entry.status == "error" and entry.prompt_tokens == 25
    assert entry.cost_nanos == 25 * SMALL_IN + entry.completion_tokens * SMALL_OUT > 0


async def test_an_anthropic_stream_that_errors_after_searches_is_charged_them(
        aiohttp_server: Any, aiohttp_client: Any, write_config: ConfigFactory) -> None:
    """The usage that counts the searches comes only at the end (``message_delta``): an ``error``
    event after two ``server_tool_use`` blocks is charged the two searches they show."""
    models = copy.deepcopy(TEST_MODELS)
    models["tool_fees"] = {"providers": {"sim": {"web_search": {"usd": "0.01", "source": "test",
                                                                "as_of": "2026-11-30"}}}}
    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    proxy = await _anthropic_upstream_that_errors(aiohttp_server, aiohttp_client, write_config,
                                                  [search, {**search, "id": "srvtoolu_2"}], models)
    resp = await proxy.client.post("/v1/messages", headers=proxy.auth(), json={
        "model": "small", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "news?"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    assert resp.status == 200 and "overloaded_error" in await resp.text()
    [entry] = await proxy.ledger()
    assert entry.status == "error" and entry.metadata["tool_calls"] == {"web_search": 2}
    assert entry.cost_nanos == 25 * SMALL_IN + entry.completion_tokens * SMALL_OUT + 2 * 10_000_000


@pytest.mark.parametrize("stream", [False, True])
async def test_an_input_count_past_any_call_is_charged_at_most_the_input_limit_and_ledgered(
        hostile_proxy: HostileProxy, stream: bool) -> None:
    """An upstream reporting 10^19 prompt tokens (past 64 bits) crashed the settle: a unary 500, a
    stream's '500' inside its body, the counter charged and no ledger entry. Each input count is
    charged at most ``MAX_INPUT_TOKENS``; the provider's figure is kept (as text past 64 bits)."""
    from costproxy.pipeline.settle import MAX_INPUT_TOKENS

    proxy, hostile = await hostile_proxy(budget("1"))
    usage = {"prompt_tokens": 10**19, "completion_tokens": 3, "total_tokens": 10**19 + 3,
             "prompt_tokens_details": {"cached_tokens": 10**18}}

    async def lying(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await answered(request, body, "word ", usage)

    hostile.answer = lying
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers=proxy.auth())
    assert resp.status == 200
    text = (await resp.read()).decode()
    assert "internal_error" not in text
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert (entry.prompt_tokens, entry.completion_tokens) == (MAX_INPUT_TOKENS, 3)
    assert entry.metadata["usage_clamped"]["prompt_tokens"] == str(10**19)
    assert entry.metadata["usage_clamped"]["cached_tokens"] == 10**18
    assert entry.metadata["usage_clamped"]["input_limit"] == MAX_INPUT_TOKENS
    assert 0 < entry.cost_nanos <= MAX_INPUT_TOKENS * SMALL_IN + 3 * SMALL_OUT


async def test_a_thinking_request_translated_for_a_model_that_cannot_reason_leaves_the_effort_out(
        protocol_proxy: ProtocolProxy, simulator: Any) -> None:
    """Messages' ``thinking`` and Responses' ``reasoning.effort`` become ``reasoning_effort`` on a chat
    upstream; a model without the ``reasoning`` capability refuses that field (OpenAI: 400
    unsupported_parameter), so it answers without it — a model that can reason still gets it."""
    from tests.integration.conftest import protocol_models

    _, sim = simulator
    models = protocol_models()
    models["models"]["thinker"] = {**models["models"]["small"], "capabilities": ["tools", "streaming", "reasoning"]}
    proxy = await protocol_proxy(models=models)
    thinking = {"max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2048},
                "messages": [{"role": "user", "content": "Hi"}]}
    for model, expected in (("small", None), ("thinker", "medium")):
        resp = await proxy.client.post("/v1/messages", json={"model": model, **thinking}, headers=proxy.auth())
        assert resp.status == 200, await resp.text()
        assert sim.calls[-1].body.get("reasoning_effort") == expected, model


async def test_a_responses_field_claude_cannot_serve_is_named_as_the_client_sent_it(
        protocol_proxy: ProtocolProxy) -> None:
    """A Responses ``text.format`` json_schema for a Claude model was refused naming
    ``response_format``, a field the client never sent (the chat form's name for it)."""
    proxy = await protocol_proxy()
    resp = await proxy.client.post("/v1/responses", headers=proxy.auth(), json={
        "model": "claude", "input": "Hi", "max_output_tokens": 50,
        "text": {"format": {"type": "json_schema", "name": "r", "schema": {"type": "object"}}}})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == "text.format", body
    assert "response_format" not in body["error"]["message"]
