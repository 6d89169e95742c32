"""/v1/responses with the official openai SDK: native pass-through to a provider that speaks the
Responses API, translation to chat completions (and to a Claude model), stored responses."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from costproxy.http.state import ROUTER
from costproxy.money import format_usd
from tests.integration.conftest import BACKUP, BIG, CLAUDE_PRICE, base_url, ledger_entry, priced

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client_for(proxy: Any, key: str | None = None) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=base_url(proxy), api_key=key or proxy.key, max_retries=0)
    proxy.closers.append(client.close)
    return client


async def test_unary_native_and_stored(protocol_proxy) -> None:
    proxy = await protocol_proxy()
    client = client_for(proxy)
    raw = await client.responses.with_raw_response.create(model="big", input="Say hello to the team please",
                                                          instructions="Be brief.")
    response = raw.parse()
    call = proxy.sim.calls[-1]
    assert call.path == "/v1/responses" and call.body["instructions"] == "Be brief."  # the client's body, natively
    assert response.output_text == call.reply and response.status == "completed"
    assert response.usage is not None and response.usage.input_tokens == call.prompt_tokens
    assert response.usage.output_tokens == call.completion_tokens
    entry = await ledger_entry(proxy, raw.headers["x-costproxy-request-id"])
    cost = priced(BIG, call.prompt_tokens, call.completion_tokens)
    assert entry.cost_nanos == cost and entry.endpoint == "responses" and entry.usage_reported
    assert raw.headers["x-costproxy-cost-usd"] == format_usd(cost) and raw.headers["x-costproxy-model"] == "big"
    stored = await client.responses.retrieve(response.id)
    assert stored.id == response.id and stored.output_text == response.output_text
    items = await client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    await client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


@pytest.mark.parametrize("model", ["big", "backup"])
async def test_stream_native_and_translated(protocol_proxy, model: str) -> None:
    proxy = await protocol_proxy()
    client = client_for(proxy)
    stream = await client.responses.create(model=model, input="Tell me a story", stream=True)
    events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert {"response.output_item.added", "response.content_part.added", "response.output_text.done",
            "response.output_item.done"} <= set(kinds)
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    call = proxy.sim.calls[-1]
    assert call.path == ("/v1/responses" if model == "big" else "/v1/chat/completions")
    assert text == call.reply
    completed = events[-1].response
    assert completed.output_text == text and completed.usage is not None
    assert completed.usage.input_tokens == call.prompt_tokens
    assert completed.usage.output_tokens == call.completion_tokens
    request_ids = [e.request_id for e in await proxy.ledger()]
    entry = await ledger_entry(proxy, request_ids[-1])
    assert entry.stream and entry.usage_reported and entry.status == "ok"
    assert entry.cost_nanos == priced(BIG if model == "big" else BACKUP, call.prompt_tokens, call.completion_tokens)
    assert (await client.responses.retrieve(completed.id)).output_text == text  # streamed answers are stored too


@pytest.mark.parametrize("model", ["big", "backup"])
async def test_tool_call_then_follow_up_with_previous_response_id(protocol_proxy, model: str) -> None:
    proxy = await protocol_proxy()
    client = client_for(proxy)
    first = await client.responses.create(model=model, input="[[sim:tool_call]] What is the weather in Paris?",
                                          tools=[WEATHER_TOOL])
    [call_item] = [item for item in first.output if item.type == "function_call"]
    assert call_item.name == "get_weather" and call_item.arguments == '{"city":"sim"}'
    second = await client.responses.create(model=model, previous_response_id=first.id, tools=[WEATHER_TOOL],
                                           input=[{"type": "function_call_output", "call_id": call_item.call_id,
                                                   "output": "sunny, 21 C"}])
    assert second.output_text
    upstream = proxy.sim.calls[-1].body
    if model == "big":  # natively: the stored conversation inlined as Responses items
        assert "previous_response_id" not in upstream
        assert [i.get("type", "message") for i in upstream["input"]] == ["message", "function_call",
                                                                         "function_call_output"]
    else:  # translated: the same conversation as chat messages
        roles = [m["role"] for m in upstream["messages"]]
        assert roles == ["user", "assistant", "tool"]
        assert upstream["messages"][1]["tool_calls"][0]["id"] == call_item.call_id
        assert upstream["messages"][2] == {"role": "tool", "tool_call_id": call_item.call_id, "content": "sunny, 21 C"}


async def test_reasoning_items_pass_through_natively(protocol_proxy) -> None:
    proxy = await protocol_proxy()
    client = client_for(proxy)
    first = await client.responses.create(model="big", input="Think about 2+2", reasoning={"effort": "low"},
                                          include=["reasoning.encrypted_content"])
    assert [item.type for item in first.output] == ["reasoning", "message"]
    assert first.usage is not None and first.usage.output_tokens_details.reasoning_tokens == 8
    await client.responses.create(model="big", input="And 3+3?", previous_response_id=first.id)
    sent = proxy.sim.calls[-1].body["input"]
    assert [i.get("type", "message") for i in sent] == ["message", "reasoning", "message", "message"]
    assert sent[1]["encrypted_content"] == "c2ltdWxhdGVk"


async def test_built_in_tools_need_a_native_provider(protocol_proxy) -> None:
    proxy = await protocol_proxy()
    client = client_for(proxy)
    with pytest.raises(openai.BadRequestError) as error:
        await client.responses.create(model="backup", input="news today?", tools=[{"type": "web_search"}])
    assert "web_search" in error.value.message and error.value.code == "invalid_request"
    [entry] = await proxy.ledger()
    assert entry.status == "refused" and entry.cost_nanos == 0
    ok = await client.responses.create(model="big", input="news today?", tools=[{"type": "web_search"}])
    assert ok.output_text  # the native provider gets the built-in tool as it is
    assert proxy.sim.calls[-1].body["tools"] == [{"type": "web_search"}]


async def test_auto_picks_a_model_whose_provider_speaks_responses(protocol_proxy) -> None:
    proxy = await protocol_proxy()
    client = client_for(proxy)
    raw = await client.responses.with_raw_response.create(model="auto", input="What happened in the news today?",
                                                          tools=[{"type": "web_search"}])
    assert raw.headers["x-costproxy-model"] in ("big", "small")  # sim has responses_api; sim2 and claude do not
    assert proxy.sim.calls[-1].path == "/v1/responses"
    decision = proxy.app[ROUTER].decisions[raw.headers["x-costproxy-decision-id"]].decision
    assert any("web_search" in reason for reason in decision.reasons)


async def test_store_false_owner_scope_and_unknown_previous(protocol_proxy) -> None:
    proxy = await protocol_proxy()
    client = client_for(proxy)
    unstored = await client.responses.create(model="backup", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)
    stored = await client.responses.create(model="backup", input="hi")
    other = client_for(proxy, await proxy.new_key(user="mallory", org="acme"))
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(stored.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(model="backup", input="continue", previous_response_id=stored.id)
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model="backup", input="x", background=True)
    for bad in ({"input": 42}, {"input": [{"role": "wizard", "content": "x"}]}, {"input": "x", "stream": "yes"},
                {"input": "x", "max_output_tokens": 0}, {"input": [{"type": "function_call", "name": 1}]}):
        resp = await proxy.client.post("/v1/responses", json={"model": "backup", **bad}, headers=proxy.auth())
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_responses_served_by_claude(protocol_proxy, anthropic_sim) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy()
    client = client_for(proxy)
    raw = await client.responses.with_raw_response.create(model="claude", input="Hello there", instructions="Be kind.",
                                                          max_output_tokens=300)
    response = raw.parse()
    call = claude.calls[-1]
    assert call.path == "/v1/messages" and call.body["system"] == "Be kind." and call.body["max_tokens"] == 300
    assert call.headers["x-api-key"] == "sk-ant-test" and call.headers["anthropic-version"]
    assert response.output_text and response.usage is not None
    assert response.usage.input_tokens == call.prompt_tokens
    entry = await ledger_entry(proxy, raw.headers["x-costproxy-request-id"])
    assert entry.cost_nanos == priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens)
    stream = await client.responses.create(model="claude", input="[[sim:tool_call]] weather?", tools=[WEATHER_TOOL],
                                           stream=True)
    events = [event async for event in stream]
    done = events[-1].response
    [item] = done.output
    assert item.type == "function_call" and item.call_id == "toolu_sim_0" and item.arguments == '{"city":"sim"}'
    entry = await ledger_entry(proxy, (await proxy.ledger())[-1].request_id)
    call = claude.calls[-1]
    assert entry.cost_nanos == priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens)
