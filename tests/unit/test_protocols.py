"""The API translations (sans-IO): chat form ↔ Messages, Messages and Responses clients, the usage
each API reports, and the stream converters."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import orjson
import pytest

from costproxy.errors import BudgetExceeded, InvalidRequest, UpstreamHTTPError
from costproxy.protocols.anthropic import chat_completion, messages_request
from costproxy.protocols.anthropic_stream import AnthropicToChat
from costproxy.protocols.messages import parse_messages
from costproxy.protocols.messages_stream import ChatToMessages
from costproxy.protocols.responses import parse_responses, response_from_chat, skeleton
from costproxy.protocols.responses_stream import ChatToResponses
from costproxy.protocols.usage import AnthropicUsage, ResponsesUsage
from costproxy.registry import ModelPrice, ModelSpec, Usage


def events(frames: list[bytes]) -> list[dict[str, Any]]:
    """The data of SSE frames, each checked to be named by its type."""
    out = []
    for raw in frames:
        name, data = raw.decode().split("\n", 1)
        payload = orjson.loads(data[len("data: "):])
        assert name == f"event: {payload['type']}"
        out.append(payload)
    return out


def test_chat_form_to_messages_request() -> None:
    body = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"q": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
        {"role": "user", "content": "thanks"},
        {"role": "developer", "content": "No emojis."}],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "parallel_tool_calls": False, "stop": "END", "temperature": 1.7, "user": "u1"}
    request = messages_request(body, "claude-x", 99)
    assert request["system"] == "Be brief.\n\nNo emojis." and request["max_tokens"] == 99
    assert request["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    assert request["messages"][1]["content"] == [{"type": "tool_use", "id": "c1", "name": "look", "input": {"q": 1}}]
    # the tool result and the next user text share one user turn (Messages alternates roles)
    assert request["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "c1", "content": "a cat"}, {"type": "text", "text": "thanks"}]}
    assert request["tools"] == [{"name": "look", "input_schema": {"type": "object"}}]
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert request["stop_sequences"] == ["END"] and request["temperature"] == 1.0
    assert request["metadata"] == {"user_id": "u1"}
    thinking = messages_request({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "medium"},
                                "m", 9000)
    assert thinking["thinking"] == {"type": "enabled", "budget_tokens": 4096}


def test_reasoning_effort_becomes_a_thinking_budget_that_fits_under_max_tokens() -> None:
    """Anthropic needs 1,024 <= budget_tokens < max_tokens: the effort's budget is lowered to fit,
    and when not even the minimum fits the caller is told, never answered without thinking."""
    def thinking(cap: int, **body: Any) -> Any:
        return messages_request({"messages": [{"role": "user", "content": "x"}], **body}, "m", cap).get("thinking")

    assert thinking(8000, reasoning_effort="high", max_tokens=8000) == {"type": "enabled", "budget_tokens": 7999}
    assert thinking(20000, reasoning_effort="high") == {"type": "enabled", "budget_tokens": 16384}
    assert thinking(1025, reasoning_effort="low", max_tokens=1025) == {"type": "enabled", "budget_tokens": 1024}
    with pytest.raises(InvalidRequest) as own:  # the caller's own cap leaves no room: a 400 naming it
        thinking(1024, reasoning_effort="low", max_tokens=1024)
    assert own.value.param == "reasoning_effort" and "above 1024" in own.value.message
    with pytest.raises(BudgetExceeded) as lowered:  # the budget lowered the cap below thinking's minimum
        thinking(600, reasoning_effort="medium", max_tokens=4000)
    assert "at most 600 output tokens" in lowered.value.message
    assert thinking(600, max_tokens=4000) is None  # no reasoning asked: nothing to fit
    assert thinking(40000, reasoning_effort="xhigh") == {"type": "enabled", "budget_tokens": 32768}
    assert thinking(40000, reasoning_effort="none") is None  # OpenAI's "no reasoning"
    for unknown in ("HIGH", "extreme", 3, ""):  # never a silent answer without the thinking asked for
        with pytest.raises(InvalidRequest) as bad:
            thinking(40000, reasoning_effort=unknown)
        assert bad.value.param == "reasoning_effort"


@pytest.mark.parametrize("extra", [{"n": 2}, {"response_format": {"type": "json_object"}}, {"logprobs": True},
                                   {"web_search_options": {}},
                                   {"tools": [{"type": "custom", "custom": {"name": "x"}}]}])
def test_chat_features_messages_cannot_do_are_400(extra: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        messages_request({"messages": [{"role": "user", "content": "x"}], **extra}, "m", 10)


def test_message_to_chat_completion_and_usage() -> None:
    message = {"id": "msg_1", "model": "claude-x", "stop_reason": "tool_use", "content": [
        {"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": 1}}],
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 40, "cache_creation": {"ephemeral_1h_input_tokens": 15}}}
    completion = chat_completion(message)
    reply = completion["choices"][0]["message"]
    assert reply["content"] == "Let me look." and reply["reasoning_content"] == "hmm"
    assert reply["tool_calls"][0]["function"] == {"name": "look", "arguments": '{"q":1}'}
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["usage"]["prompt_tokens"] == 150 and completion["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 100}
    assert AnthropicUsage().usage_in({"type": "message", **message}) == Usage(
        prompt_tokens=150, completion_tokens=5, cached_tokens=100, cache_write_tokens=40, cache_write_1h_tokens=15)


def test_anthropic_server_tool_use_blocks_count_as_calls() -> None:
    search = {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}
    start = {"type": "message_start", "message": {"usage": {
        "input_tokens": 7, "output_tokens": 1, "server_tool_use": {"web_search_requests": 0}}}}
    events = [start, {"type": "content_block_start", "index": 0, "content_block": search},
              {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_start", "index": 2, "content_block": search}]
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    for stream in (events, [*events, error]):  # breaks off, or ends in an error, after two searches
        reader = AnthropicUsage()
        assert [reader.usage_in(event) for event in stream] == [None] * len(stream)
        assert reader.tool_calls == (("web_search", 2),)
    # the usage, when it comes, says how many were billed; without server_tool_use, the blocks do
    assert reader.usage_in({"type": "message_delta", "usage": {"output_tokens": 3, "server_tool_use": {
        "web_search_requests": 1}}}).tool_calls == (("web_search", 1),)
    assert reader.usage_in({"type": "message_delta", "usage": {"output_tokens": 3}}).tool_calls == (
        ("web_search", 2),)
    message = {"type": "message", "content": [search, search, search, {"type": "text", "text": "x"}],
               "usage": {"input_tokens": 5, "output_tokens": 2}}
    assert AnthropicUsage().usage_in(message).tool_calls == (("web_search", 3),)
    reported = {**message, "usage": {**message["usage"], "server_tool_use": {"web_search_requests": 2}}}
    assert AnthropicUsage().usage_in(reported).tool_calls == (("web_search", 2),)


def test_anthropic_stream_usage_and_chunks() -> None:
    reader, decoder = AnthropicUsage(), AnthropicToChat("claude")
    stream = [
        {"type": "message_start", "message": {"id": "m1", "model": "c", "usage": {
            "input_tokens": 7, "output_tokens": 1, "cache_creation_input_tokens": 20}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
        {"type": "message_stop"}]
    chunks, usages = [], []
    for event in stream:
        usages.append(reader.usage_in(event))
        chunks += decoder.event(event)
        if event["type"] == "message_start":
            assert reader.prompt == Usage(prompt_tokens=27, cache_write_tokens=20)  # known before the end
    assert [u for u in usages if u] == [Usage(prompt_tokens=27, completion_tokens=12, cache_write_tokens=20)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[1] == {"content": "Hi"}
    assert deltas[2]["tool_calls"][0] == {"index": 0, "id": "t", "type": "function",
                                          "function": {"name": "f", "arguments": ""}}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls" and decoder.finished
    assert chunks[-1]["usage"]["prompt_tokens"] == 27 and chunks[-1]["usage"]["completion_tokens"] == 12
    with pytest.raises(UpstreamHTTPError) as failure:
        AnthropicToChat("claude").event({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    # inside a stream the provider accepted: charged (its prompt, what was relayed), never retried
    assert failure.value.status == 529 and failure.value.billed and not failure.value.retryable


def test_messages_client_request_in_chat_form() -> None:
    chat = parse_messages({"model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "S"}], "top_k": 3,
                           "tools": [{"name": "f", "input_schema": {"type": "object"}}, {"type": "web_search_20250305",
                                                                                        "name": "web_search"}],
                           "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
                           "messages": [{"role": "user", "content": [
                               {"type": "tool_result", "tool_use_id": "t1",
                                "content": [{"type": "text", "text": "42"}]},
                               {"type": "text", "text": "and now?", "cache_control": {"type": "ephemeral"}},
                               {"type": "document", "source": {}}]}]})
    assert chat.body["messages"] == [{"role": "system", "content": "S"},
                                     {"role": "tool", "tool_call_id": "t1", "content": "42"},
                                     {"role": "user", "content": "and now?"}]
    assert chat.body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat.body["parallel_tool_calls"] is False and chat.max_output_tokens == 50
    assert chat.native_only == ("top_k", "document blocks", "server tool 'web_search_20250305'")


@pytest.mark.parametrize("body", [{"max_tokens": 0}, {"max_tokens": True}, {"messages": "hi"},
                                  {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": 1}]}]},
                                  {"system": 5}, {"temperature": "hot"}, {"stop_sequences": [1]},
                                  {"tools": [{"name": "f"}]}, {"metadata": []}, {"thinking": "yes"}])
def test_messages_client_bad_fields_are_400(body: dict[str, Any]) -> None:
    base = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(InvalidRequest):
        parse_messages({**base, **body})


def test_responses_client_request_in_chat_form() -> None:
    chat = parse_responses({"model": "m", "instructions": "I", "max_output_tokens": 30,
                            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
                            "reasoning": {"effort": "high"}, "tools": [{"type": "file_search"}],
                            "input": [{"role": "developer", "content": "D"},
                                      {"type": "message", "role": "user", "content": [
                                          {"type": "input_text", "text": "see"},
                                          {"type": "input_image", "image_url": "https://x/i.png"}]},
                                      {"type": "reasoning", "id": "rs_1", "summary": []},
                                      {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                                      {"type": "function_call_output", "call_id": "c", "output": "ok"}]})
    assert chat.body["messages"] == [
        {"role": "system", "content": "I"}, {"role": "system", "content": "D"},
        {"role": "user", "content": [{"type": "text", "text": "see"},
                                     {"type": "image_url", "image_url": {"url": "https://x/i.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    assert chat.body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert chat.body["reasoning_effort"] == "high" and chat.body["max_tokens"] == 30
    assert chat.native_only == ("built-in tool 'file_search'",)


def test_chat_completion_as_response_and_responses_usage() -> None:
    completion = {"model": "m", "choices": [{"message": {"content": "Hi", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}}}
    response = response_from_chat(completion, {"input": "x"}, "resp_1", "resp_0")
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["previous_response_id"] == "resp_0"
    assert ResponsesUsage().usage_in(response) == Usage(prompt_tokens=9, completion_tokens=4, cached_tokens=2)


def test_chat_chunks_as_responses_and_messages_events() -> None:
    chunks = [{"model": "m", "choices": [{"delta": {"role": "assistant", "content": "Hel"}}]},
              {"choices": [{"delta": {"content": "lo"}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f",
                                                                                       "arguments": '{"a"'}}]}}]},
              {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]},
              {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
              {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}]
    responses = ChatToResponses(skeleton({"input": "x"}, "resp_1", "m"))
    got = events([f for c in chunks for f in responses.chunk(c)] + responses.end())
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert [e["type"] for e in got] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    final = responses.final
    assert final is not None and final["usage"]["input_tokens"] == 5
    assert final["output"][0]["content"][0]["text"] == "Hello" and final["output"][1]["arguments"] == '{"a":1}'
    messages = ChatToMessages("msg_1", 4)
    got = events([f for c in chunks for f in messages.chunk(c)] + messages.end())
    assert [e["type"] for e in got] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert got[5]["content_block"] == {"type": "tool_use", "id": "c", "name": "f", "input": {}}
    assert got[-2]["delta"]["stop_reason"] == "tool_use" and got[-2]["usage"]["input_tokens"] == 5


def test_parallel_tool_calls_interleaved_in_a_chat_stream_come_out_whole() -> None:
    """A chat stream may mix the argument pieces of parallel calls (``index`` says whose). Messages
    blocks and Responses items cannot interleave, so a block was opened at every change of index: four
    blocks, two without id or name and with half the JSON (the Anthropic SDK raised). The first call
    streams live; the others are held and come out whole, in index order, when the choice finishes."""
    def piece(index: int, arguments: str, **first: str) -> dict[str, Any]:
        call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if first:
            call.update(id=first["id"], type="function")
            call["function"]["name"] = first["name"]
        return {"choices": [{"delta": {"tool_calls": [call]}}]}

    chunks = [{"model": "m", "choices": [{"delta": {"role": "assistant", "content": "Checking."}}]},
              piece(0, '{"city":', id="c0", name="weather"), piece(1, '{"ci', id="c1", name="weather"),
              piece(0, '"Paris"}'), piece(1, 'ty":"Rome"}'), piece(2, "{}", id="c2", name="time"),
              {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
              {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}]
    messages = ChatToMessages("msg_1", 4)
    got = events([f for c in chunks for f in messages.chunk(c)] + messages.end())
    blocks: dict[int, dict[str, Any]] = {}
    for event in got:
        if event["type"] == "content_block_start":
            blocks[event["index"]] = {**event["content_block"], "json": ""}
        elif event["type"] == "content_block_delta" and event["delta"]["type"] == "input_json_delta":
            blocks[event["index"]]["json"] += event["delta"]["partial_json"]
    calls = [(b["id"], b["name"], orjson.loads(b["json"])) for b in blocks.values() if b["type"] == "tool_use"]
    assert calls == [("c0", "weather", {"city": "Paris"}), ("c1", "weather", {"city": "Rome"}), ("c2", "time", {})]
    starts = [e["index"] for e in got if e["type"] == "content_block_start"]
    stops = [e["index"] for e in got if e["type"] == "content_block_stop"]
    assert starts == stops == sorted(starts)  # each block ends before the next starts
    responses = ChatToResponses(skeleton({"input": "x"}, "resp_1", "m"))
    got = events([f for c in chunks for f in responses.chunk(c)] + responses.end())
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    final = responses.final
    assert final is not None
    functions = [(o["call_id"], o["name"], orjson.loads(o["arguments"])) for o in final["output"]
                 if o["type"] == "function_call"]
    assert functions == [("c0", "weather", {"city": "Paris"}), ("c1", "weather", {"city": "Rome"}),
                         ("c2", "time", {})]
    streamed: dict[str, str] = {}
    for event in got:
        if event["type"] == "response.function_call_arguments.delta":
            streamed[event["item_id"]] = streamed.get(event["item_id"], "") + event["delta"]
    assert sorted(streamed.values()) == sorted(['{"city":"Paris"}', '{"city":"Rome"}', "{}"])


def model_with(price: ModelPrice) -> ModelSpec:
    return ModelSpec(id="m", provider="p", upstream_model="m", kind="chat", tier="premium", context_window=1000,
                     max_output_tokens=100, capabilities=frozenset(), price=price)


def test_cache_reads_and_writes_are_priced_exactly() -> None:
    price = ModelPrice(Decimal(3), Decimal(15), Decimal("0.30"), "t", date(2026, 1, 1), Decimal("3.75"), Decimal(6))
    spec = model_with(price)
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=500, cache_write_tokens=300,
                  cache_write_1h_tokens=100)
    assert spec.cost(usage) == 200 * 3000 + 500 * 300 + 200 * 3750 + 100 * 6000 + 10 * 15000
    assert spec.worst_case_cost(1000, 10) == 1000 * 6000 + 10 * 15000
    exotic = model_with(ModelPrice(Decimal("3.0001"), Decimal(15), None, "t", date(2026, 1, 1), Decimal("3.75001")))
    assert exotic.price.nanos_per_token is None  # sub-nano prices: the Decimal path, rounded up once
    # 6 x 3000.1 + 4 x 3750.01 (the 1 h write falls back to cache_write) = 33000.64 nano-USD, rounded up once
    assert exotic.cost(Usage(prompt_tokens=10, cache_write_tokens=4, cache_write_1h_tokens=1)) == 33001
    plain = model_with(ModelPrice(Decimal(1), Decimal(2), source="t", as_of=date(2026, 1, 1)))
    assert plain.cost(Usage(prompt_tokens=10, cache_write_tokens=10)) == 10 * 1000  # writes at the input price


def test_a_native_responses_streams_last_error_event_numbers_after_the_upstreams() -> None:
    """The error event the proxy adds to a broken Responses stream said ``sequence_number: 0``,
    going back from the upstream's numbers."""
    from costproxy.errors import UpstreamUnavailable
    from costproxy.pipeline.exchange import NativeRelay
    from costproxy.request import Api

    relay = NativeRelay(Api.RESPONSES, "openai")
    for number, kind in enumerate(("response.created", "response.in_progress", "response.output_text.delta")):
        relay.frames(b"", {"type": kind, "sequence_number": number}, False)
    [error] = events([relay.error(UpstreamUnavailable("provider openai stream broke"))])
    assert error["type"] == "error" and error["sequence_number"] == 3
    assert events([NativeRelay(Api.RESPONSES, "openai").error(UpstreamUnavailable("x"))])[0]["sequence_number"] == 0


def test_a_chat_upstreams_error_event_reaches_the_client_once_with_its_message() -> None:
    """An OpenAI upstream's ``{"error": …}`` mid-stream was dropped on a translated stream (the client
    read "stream ended before its last event") and followed by a second error event on a chat one."""
    from costproxy.pipeline.exchange import ChatRelay, TranslatedRelay

    first = {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}
    failed = {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}
    translated = TranslatedRelay(None, ChatToMessages("msg_1", 4), "openai")
    frames = translated.frames(b"", first, False) + translated.frames(b"", failed, False)
    assert translated.finished and translated.failure is not None and translated.end() == []
    [error] = [e for e in events(frames) if e["type"] == "error"]
    assert "The server had an error" in error["error"]["message"]
    chat = ChatRelay(False, "openai")
    raw = b"data: " + orjson.dumps(failed) + b"\n\n"
    assert chat.frames(raw, failed, False) == [raw] and chat.finished and chat.end() == []
    assert chat.failure is not None and "The server had an error" in chat.failure.message
