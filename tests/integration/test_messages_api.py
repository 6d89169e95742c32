"""/v1/messages with the official anthropic SDK: native pass-through to a Claude provider
(``kind: anthropic``, prompt caching priced), translation to an OpenAI model, count_tokens, errors
in Anthropic's shape; and chat completions served by Claude."""

from __future__ import annotations

import base64
import inspect
import struct
import zlib
from typing import Any

import anthropic
import openai
import pytest

from costproxy.money import format_usd
from tests.integration.conftest import BIG, CLAUDE_PRICE, base_url, ledger_entry, priced

TOOL = {"name": "get_weather", "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def png() -> str:
    """A valid 1x1 PNG, base64."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png()}}


async def parsed(raw: Any) -> Any:
    """``raw.parse()``, awaited when the SDK's raw response parses asynchronously."""
    result = raw.parse()
    return await result if inspect.isawaitable(result) else result


def claude_client(proxy: Any, key: str | None = None) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(base_url=base_url(proxy)[:-3], api_key=key or proxy.key, max_retries=0)
    proxy.closers.append(client.close)
    return client


async def test_native_tool_use_image_and_prompt_cache(protocol_proxy, anthropic_sim) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy()
    client = claude_client(proxy)
    system = [{"type": "text", "text": "You are a weather assistant. " * 40, "cache_control": {"type": "ephemeral"}}]
    messages: list[Any] = [{"role": "user", "content": [IMAGE, {"type": "text",
                                                                "text": "[[sim:tool_call]] Weather in this city?"}]}]
    raw = await client.messages.with_raw_response.create(model="claude", max_tokens=512, system=system, tools=[TOOL],
                                                         messages=messages)
    message = await parsed(raw)
    call = claude.calls[-1]
    assert call.body["messages"] == messages and call.body["system"] == system  # the client's body, untouched
    assert call.body["tools"] == [TOOL]
    assert call.headers["anthropic-version"] == raw.http_request.headers["anthropic-version"]  # the client's
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "sim"}
    assert message.stop_reason == "tool_use" and message.usage.cache_creation_input_tokens == call.cache_write > 0
    entry = await ledger_entry(proxy, raw.headers["x-costproxy-request-id"])
    assert entry.endpoint == "messages" and entry.cache_write_tokens == call.cache_write
    assert entry.cost_nanos == priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens, write=call.cache_write)
    messages += [{"role": "assistant", "content": [b.model_dump() for b in message.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Sunny"}]}]
    raw = await client.messages.with_raw_response.create(model="claude", max_tokens=512, system=system, tools=[TOOL],
                                                         messages=messages)
    answer = await parsed(raw)
    call = claude.calls[-1]
    assert answer.content[0].type == "text" and answer.stop_reason == "end_turn"
    assert call.cache_read > 0 and answer.usage.cache_read_input_tokens == call.cache_read  # the prefix, cached
    entry = await ledger_entry(proxy, raw.headers["x-costproxy-request-id"])
    assert entry.cached_tokens == call.cache_read and entry.prompt_tokens == call.prompt_tokens
    assert entry.cost_nanos == priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens, cached=call.cache_read)


async def test_native_stream_with_one_hour_cache_write(protocol_proxy, anthropic_sim) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy()
    client = claude_client(proxy)
    system = [{"type": "text", "text": "Long shared context. " * 50,
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    async with client.messages.stream(model="claude", max_tokens=400, system=system,
                                      messages=[{"role": "user", "content": "Tell me a story"}]) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    call = claude.calls[-1]
    assert call.streamed and text == final.content[0].text and text
    assert final.usage.output_tokens == call.output_tokens
    assert final.usage.cache_creation_input_tokens == call.cache_write
    entry = await ledger_entry(proxy, (await proxy.ledger())[-1].request_id)
    assert entry.usage_reported and entry.stream and entry.cache_write_1h_tokens == call.cache_write_1h > 0
    assert entry.cost_nanos == priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens, write=call.cache_write,
                                      write_1h=call.cache_write_1h)


@pytest.mark.parametrize("model", ["claude", "big"])
async def test_stream_with_tool_use_and_an_image(protocol_proxy, model: str) -> None:
    proxy = await protocol_proxy()
    client = claude_client(proxy)
    question = {"role": "user", "content": [IMAGE, {"type": "text", "text": "[[sim:tool_call]] Weather there?"}]}
    async with client.messages.stream(model=model, max_tokens=200, tools=[TOOL], messages=[question]) as stream:
        final = await stream.get_final_message()
    [block] = final.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "sim"}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 0
    entry = await ledger_entry(proxy, (await proxy.ledger())[-1].request_id)
    assert entry.status == "ok" and entry.usage_reported and entry.served_model == model and entry.cost_nanos > 0


async def test_messages_served_by_an_openai_model(protocol_proxy) -> None:
    proxy = await protocol_proxy()
    client = claude_client(proxy)
    raw = await client.messages.with_raw_response.create(
        model="big", max_tokens=300, system="Be brief.", tools=[TOOL],
        messages=[{"role": "user", "content": [IMAGE, {"type": "text", "text": "[[sim:tool_call]] Where is this?"}]}])
    message = await parsed(raw)
    call = proxy.sim.calls[-1]
    assert call.path == "/v1/chat/completions"
    sent = call.body["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[1]["content"][0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png()}"}}
    assert call.body["tools"][0]["function"]["name"] == "get_weather" and call.body["max_tokens"] == 300
    [block] = message.content
    assert block.type == "tool_use" and block.input == {"city": "sim"} and message.stop_reason == "tool_use"
    assert message.usage.input_tokens == call.prompt_tokens and message.usage.output_tokens == call.completion_tokens
    entry = await ledger_entry(proxy, raw.headers["x-costproxy-request-id"])
    assert entry.cost_nanos == priced(BIG, call.prompt_tokens, call.completion_tokens)
    async with client.messages.stream(model="big", max_tokens=300,
                                      messages=[{"role": "user", "content": "Tell me a story"}]) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    call = proxy.sim.calls[-1]
    assert text == call.reply and final.usage.output_tokens == call.completion_tokens
    assert final.usage.input_tokens == call.prompt_tokens and final.stop_reason == "end_turn"
    entry = await ledger_entry(proxy, (await proxy.ledger())[-1].request_id)
    assert entry.cost_nanos == priced(BIG, call.prompt_tokens, call.completion_tokens)


@pytest.mark.parametrize("provider_count", [False, True])
async def test_count_tokens(protocol_proxy, anthropic_sim, provider_count: bool) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy(count_tokens=provider_count)
    client = claude_client(proxy)
    messages = [{"role": "user", "content": "How many tokens is this sentence, roughly?"}]
    counted = await client.messages.count_tokens(model="claude", messages=messages, system="Be brief.")
    if provider_count:
        assert counted.input_tokens == 3 + 2 + 9  # the Anthropic simulator's own rule
    else:
        assert 10 <= counted.input_tokens <= 40  # the proxy's tokenizer estimate
    assert claude.calls == [] and await proxy.ledger() == []  # counting is free and calls no model
    # a model this proxy does not serve is a 404, as /v1/messages answers it; auto is counted
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(model="no-such-model", messages=messages)
    assert (await client.messages.count_tokens(model="auto", messages=messages)).input_tokens > 0


async def test_reservation_uses_the_provider_count_when_enabled(protocol_proxy, anthropic_sim) -> None:
    _, claude = anthropic_sim  # its count (1 + 300 words * 4 // 3 + 3) is above the proxy's tokenizer count
    proxy = await protocol_proxy(count_tokens=True)
    client = claude_client(proxy)
    raw = await client.messages.with_raw_response.create(model="claude", max_tokens=100,
                                                         messages=[{"role": "user", "content": "hi " * 300}])
    call = claude.calls[-1]
    reserved = raw.headers["x-costproxy-max-cost-usd"]
    # the worst case: every prompt token at the dearest input-side price (a 1-hour cache write)
    assert reserved == format_usd(call.prompt_tokens * 6000 + 100 * 15000)


async def test_errors_have_anthropic_shape(protocol_proxy) -> None:
    proxy = await protocol_proxy()
    resp = await proxy.client.post("/v1/messages", json={"model": "claude", "messages": [
        {"role": "user", "content": "x"}]}, headers={"x-api-key": proxy.key})
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as denied:
        await claude_client(proxy, "cp-not-a-key").messages.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    client = claude_client(proxy)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await client.messages.create(model="claude", max_tokens=10,
                                     messages=[{"role": "user", "content": "[[sim:fault=529]] x"}])
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    for bad in ({"messages": []}, {"messages": [{"role": "robot", "content": "x"}]},
                {"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
                {"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}},
                {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}):
        resp = await proxy.client.post("/v1/messages", json={"model": "claude", "max_tokens": 5, **bad},
                                       headers={"x-api-key": proxy.key})
        assert resp.status == 400 and (await resp.json())["type"] == "error", bad
    entries = await proxy.ledger()
    assert [e.status for e in entries].count("refused") == 6 and entries[-6].cost_nanos == 0


async def test_features_only_messages_has_are_refused_on_openai_models(protocol_proxy) -> None:
    proxy = await protocol_proxy()
    client = claude_client(proxy)
    with pytest.raises(anthropic.BadRequestError) as error:
        await client.messages.create(model="big", max_tokens=10, extra_body={"top_k": 5},
                                     messages=[{"role": "user", "content": "x"}])
    assert "top_k" in error.value.message


async def test_hang_up_mid_claude_stream_charges_the_reported_prompt(protocol_proxy, anthropic_sim) -> None:
    _, claude = anthropic_sim
    claude.chunk_delay_ms = 30
    proxy = await protocol_proxy()
    resp = await proxy.client.post("/v1/messages", headers={"x-api-key": proxy.key}, json={
        "model": "claude", "max_tokens": 500, "stream": True,
        "messages": [{"role": "user", "content": "[[sim:tokens=200]] write a lot"}]})
    request_id = resp.headers["x-costproxy-request-id"]
    seen = b""
    while seen.count(b"content_block_delta") < 3:
        seen += await resp.content.readany()
    resp.close()
    entry = await ledger_entry(proxy, request_id)
    call = claude.calls[-1]
    assert entry.status == "client_disconnected" and not entry.usage_reported
    assert entry.prompt_tokens == call.prompt_tokens  # as message_start reported it, not estimated
    assert 1 <= entry.completion_tokens < 200 and entry.cost_nanos > priced(CLAUDE_PRICE, call.prompt_tokens, 0)


async def test_chat_completions_served_by_claude(protocol_proxy, anthropic_sim) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy()
    client = openai.AsyncOpenAI(base_url=base_url(proxy), api_key=proxy.key, max_retries=0)
    proxy.closers.append(client.close)
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": TOOL["input_schema"]}}]
    raw = await client.chat.completions.with_raw_response.create(
        model="claude", tools=tools, messages=[{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "[[sim:tool_call]] weather?"}])
    completion = raw.parse()
    call = claude.calls[-1]
    assert call.body["system"] == "Be brief." and call.body["tools"][0]["input_schema"] == TOOL["input_schema"]
    [tool_call] = completion.choices[0].message.tool_calls or []
    assert tool_call.function.name == "get_weather" and completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.prompt_tokens == call.prompt_tokens
    stream = await client.chat.completions.create(model="claude", stream=True, stream_options={"include_usage": True},
                                                  messages=[{"role": "user", "content": "Tell me a story"}])
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    call = claude.calls[-1]
    assert text and chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == call.output_tokens
    entry = await ledger_entry(proxy, (await proxy.ledger())[-1].request_id)
    assert entry.cost_nanos == priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens)
