"""The simulator's ``POST /responses``: OpenAI's Responses API, unary and as its typed event stream.

Same deterministic answers, directives and faults as the chat endpoint (``simulator``).  Tokens:
the prompt is the ``instructions`` plus every input item's text, each counted like a chat message
(``count_tokens(text) + 3``); ``function_call`` items count their arguments, ``reasoning`` items
nothing.  With ``reasoning.effort`` set the answer starts with a ``reasoning`` item (a summary, and
``encrypted_content`` when ``include`` asks for it) and ``REASONING_TOKENS`` more output tokens.
Streams send ``response.created``, ``response.in_progress``, then per output item
``response.output_item.added`` (messages: ``response.content_part.added``, one
``response.output_text.delta`` per word, ``.output_text.done``, ``.content_part.done``; function
calls: ``response.function_call_arguments.delta`` / ``.done``) and ``response.output_item.done``,
and end with ``response.completed`` carrying the usage; no ``[DONE]``, as OpenAI does.
``searches=N`` puts N ``web_search_call`` items before the answer (whatever ``max_tool_calls`` is).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from costproxy.tools.simulator import (
    SimCall,
    Simulator,
    _Abort,
    _compose,
    _error,
    count_tokens,
    typed,
)

REASONING_TOKENS = 8


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def _items(body: Mapping[str, Any]) -> list[Any]:
    value = body.get("input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _Abort(_error(400, "'input' must be a string or a non-empty array", code="invalid_type"))
    return value


def _prompt_tokens(body: Mapping[str, Any], items: list[Any]) -> int:
    total = count_tokens(body["instructions"]) + 3 if isinstance(body.get("instructions"), str) else 0
    for item in items:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            total += count_tokens(_text(item.get("content"))) + 3
        elif kind == "function_call":
            total += count_tokens(str(item.get("arguments", ""))) + 3
        elif kind == "function_call_output":
            total += count_tokens(_text(item.get("output"))) + 3
    return total


def _last_user_text(items: list[Any]) -> str:
    users = [i for i in items if isinstance(i, Mapping) and i.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


def _chat_shaped(body: Mapping[str, Any]) -> dict[str, Any]:
    """What ``_compose`` reads, from a Responses body: function tools and the output cap."""
    tools = [{"type": "function", "function": t} for t in body.get("tools") or []
             if isinstance(t, Mapping) and t.get("type") == "function"]
    items = body.get("input")
    last = items[-1] if isinstance(items, list) and items and isinstance(items[-1], Mapping) else {}
    answered = [{"role": "tool"}] if last.get("type") == "function_call_output" else []
    return {"tools": tools, "max_tokens": body.get("max_output_tokens"), "messages": answered}


async def respond(sim: Simulator, request: web.Request, call: SimCall) -> web.StreamResponse:
    body = await sim._begin(request, call)
    items = _items(body)
    text = _last_user_text(items)
    call.prompt_tokens = _prompt_tokens(body, items)
    plan = sim._resolve(request, call, text)
    await sim._before_answer(request, call, plan)
    answer = _compose(_chat_shaped(body), text, plan)
    reasoning = isinstance(body.get("reasoning"), Mapping) and bool(body["reasoning"].get("effort"))
    call.response_id = f"resp_{call.response_id}"
    call.reply = answer.text
    output = _searches(call, plan.searches) + _output(body, call, answer, reasoning)
    completion = answer.completion_tokens + (REASONING_TOKENS if reasoning else 0)
    response = _response(body, call, [])
    done = {**response, "status": "completed" if answer.finish_reason != "length" else "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"} if answer.finish_reason == "length" else None,
            "output": output}
    if not plan.no_usage:
        done["usage"] = _usage(call, completion, REASONING_TOKENS if reasoning else 0)
    if body.get("stream") is True:
        return await sim.stream_frames(request, call, plan, _events(response, done, plan.no_usage), done=False)
    call.completion_tokens, call.usage_sent = completion, not plan.no_usage
    return web.json_response(done)


def _response(body: Mapping[str, Any], call: SimCall, output: list[Any]) -> dict[str, Any]:
    return {"id": call.response_id, "object": "response", "created_at": 0, "status": "in_progress",
            "model": call.model, "output": output, "instructions": body.get("instructions"),
            "previous_response_id": body.get("previous_response_id"), "tools": body.get("tools") or [],
            "parallel_tool_calls": True, "tool_choice": body.get("tool_choice", "auto"), "usage": None,
            "metadata": body.get("metadata") or {}, "store": body.get("store", True), "error": None,
            "incomplete_details": None, "text": {"format": {"type": "text"}}, "truncation": "disabled"}


def _searches(call: SimCall, count: int) -> list[dict[str, Any]]:
    return [{"id": f"ws_{call.response_id}_{n}", "type": "web_search_call", "status": "completed",
             "action": {"type": "search", "query": f"simulated search {n}"}} for n in range(count)]


def _output(body: Mapping[str, Any], call: SimCall, answer: Any, reasoning: bool) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    if reasoning:
        item: dict[str, Any] = {"id": f"rs_{call.response_id}", "type": "reasoning",
                                "summary": [{"type": "summary_text", "text": "Simulated reasoning."}]}
        if "reasoning.encrypted_content" in (body.get("include") or []):
            item["encrypted_content"] = "c2ltdWxhdGVk"
        output.append(item)
    if answer.tool_call is not None:
        function = answer.tool_call["function"]
        output.append({"id": f"fc_{call.response_id}", "type": "function_call", "status": "completed",
                       "call_id": answer.tool_call["id"], "name": function["name"],
                       "arguments": function["arguments"]})
    else:
        output.append({"id": f"msg_{call.response_id}", "type": "message", "status": "completed",
                       "role": "assistant", "content": [{"type": "output_text", "text": answer.text,
                                                         "annotations": []}]})
    return output


def _usage(call: SimCall, completion: int, reasoning: int) -> dict[str, Any]:
    return {"input_tokens": call.prompt_tokens, "input_tokens_details": {"cached_tokens": call.cached_tokens},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": call.prompt_tokens + completion}


def _events(response: dict[str, Any], done: dict[str, Any], no_usage: bool) -> list[tuple[bytes, int]]:
    """The typed events, each with the output tokens it carries (-1 marks the usage event)."""
    events: list[tuple[dict[str, Any], int]] = [({"type": "response.created", "response": response}, 0),
                                                ({"type": "response.in_progress", "response": response}, 0)]
    for index, item in enumerate(done["output"]):
        events += _item_events(index, item)
    events.append(({"type": "response.completed" if done["status"] == "completed" else "response.incomplete",
                    "response": done}, 0 if no_usage else -1))
    return [(typed({**event, "sequence_number": n}), tokens) for n, (event, tokens) in enumerate(events)]


def _item_events(index: int, item: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    where = {"item_id": item["id"], "output_index": index}
    added = {**item, "status": "in_progress"}
    if item["type"] in ("reasoning", "web_search_call"):
        return [({"type": "response.output_item.added", "output_index": index, "item": item}, 0),
                ({"type": "response.output_item.done", "output_index": index, "item": item},
                 REASONING_TOKENS if item["type"] == "reasoning" else 0)]
    if item["type"] == "function_call":
        arguments = item["arguments"]
        return [({"type": "response.output_item.added", "output_index": index, "item": {**added, "arguments": ""}}, 0),
                ({"type": "response.function_call_arguments.delta", **where, "delta": arguments},
                 1 + len(arguments.split())),
                ({"type": "response.function_call_arguments.done", **where, "arguments": arguments}, 0),
                ({"type": "response.output_item.done", "output_index": index, "item": item}, 0)]
    text = item["content"][0]["text"]
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[tuple[dict[str, Any], int]] = [
        ({"type": "response.output_item.added", "output_index": index, "item": {**added, "content": []}}, 0),
        ({"type": "response.content_part.added", **where, "content_index": 0, "part": part}, 0)]
    for position, word in enumerate(text.split()):
        events.append(({"type": "response.output_text.delta", **where, "content_index": 0,
                        "delta": word if position == 0 else f" {word}", "logprobs": []}, 1))
    events += [({"type": "response.output_text.done", **where, "content_index": 0, "text": text, "logprobs": []}, 0),
               ({"type": "response.content_part.done", **where, "content_index": 0, "part": {**part, "text": text}}, 0),
               ({"type": "response.output_item.done", "output_index": index, "item": item}, 0)]
    return events
