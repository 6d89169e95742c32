"""Chat completions → Anthropic's Messages API, for Claude upstreams (``kind: anthropic``).

Request (``messages_request``), from the chat form:

- ``system`` / ``developer`` messages → ``system`` (joined; Messages has one system prompt);
- user text and ``image_url`` parts → ``text`` and ``image`` blocks (``data:`` URLs → base64
  sources, other URLs → url sources); ``tool`` messages → ``tool_result`` blocks in a user turn;
- assistant ``content`` and ``tool_calls`` → ``text`` and ``tool_use`` blocks (arguments parsed);
- consecutive turns of one role are merged (Messages alternates user and assistant);
- ``tools`` (functions) → ``{name, description, input_schema}``; ``tool_choice`` auto / required /
  none / a function → auto / any / none / tool; ``parallel_tool_calls: false`` →
  ``disable_parallel_tool_use``;
- ``max_tokens`` is always sent (Messages requires it): the output cap the pipeline computed;
- ``stop`` → ``stop_sequences``, ``user`` → ``metadata.user_id``, ``temperature`` (clamped to
  Anthropic's 0–1), ``top_p``, ``reasoning_effort`` → ``thinking`` with a token budget (its
  effort's, lowered under ``max_tokens`` as Anthropic requires: ``fit_thinking``; when not even
  Anthropic's 1,024-token minimum fits, a 400 — or ``budget_exceeded`` when the budget lowered
  the cap — never a silent answer without thinking);
- refused with a 400 naming the field (Messages cannot do them): ``n`` > 1, ``response_format``
  json_object / json_schema, ``logprobs``, ``logit_bias``, ``web_search_options`` (Claude searches
  through a native Messages body's ``web_search`` tool), audio and file parts, non-function tools;
  ignored: ``seed``, ``frequency_penalty``, ``presence_penalty``, ``stream_options``, ``store``,
  ``metadata`` (costproxy's steering reads it; Messages' metadata holds only ``user_id``).

Response (``chat_completion``): text blocks → ``content``, ``tool_use`` → ``tool_calls``,
``thinking`` → ``reasoning_content``; ``stop_reason`` → ``finish_reason``; usage with the cache
reads as ``prompt_tokens_details.cached_tokens`` and the prompt counting every cached part.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from costproxy.errors import BudgetExceeded, InvalidRequest
from costproxy.protocols.usage import anthropic_usage

THINKING_BUDGET = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}
NO_THINKING = "none"  # OpenAI's reasoning_effort for no reasoning: sent without ``thinking``
FINISH_REASON = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                 "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_REFUSED = ("logprobs", "top_logprobs", "logit_bias", "audio", "prediction", "functions", "function_call",
            "web_search_options")  # search: send a native Messages body with the web_search tool instead


def messages_request(body: Mapping[str, Any], model: str, max_tokens: int) -> dict[str, Any]:
    """The Messages body for a chat-form ``body`` (see the module docstring)."""
    _refuse_unsupported(body)
    system, turns = _turns(body.get("messages") or [])
    request: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        request["system"] = system
    if body.get("stream") is True:
        request["stream"] = True
    stop = body.get("stop")
    if isinstance(stop, str):
        request["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        request["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    if isinstance(body.get("user"), str):
        request["metadata"] = {"user_id": body["user"]}
    _sampling(body, request, max_tokens)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        request["tools"] = [_tool(tool, i) for i, tool in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None:
        request["tool_choice"] = choice
    return request


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise InvalidRequest("Anthropic models generate one choice per request: 'n' must be 1", param="n")
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") not in (None, "text"):
        raise InvalidRequest("Anthropic models cannot serve 'response_format' "
                             f"{response_format.get('type')!r} through the Messages API", param="response_format")
    for key in _REFUSED:
        if body.get(key) not in (None, False):
            raise InvalidRequest(f"'{key}' is not supported by Anthropic models", param=key)


THINKING_MIN = 1024  # Anthropic: 1,024 <= thinking.budget_tokens < max_tokens


def fit_thinking(budget: int, max_tokens: int) -> int | None:
    """The thinking budget that fits under ``max_tokens`` (at most ``budget``), or None if not even
    Anthropic's minimum does."""
    fitted = min(budget, max_tokens - 1)
    return fitted if fitted >= THINKING_MIN else None


def no_room_to_think(max_tokens: int, asked: int | None, param: str) -> InvalidRequest | BudgetExceeded:
    """The refusal when extended thinking cannot fit under the output cap: the client's own cap
    (a 400), or one the budget lowered from what the client asked (``budget_exceeded``)."""
    if asked is not None and asked <= max_tokens:
        return InvalidRequest(f"extended thinking on Claude models needs max_tokens above {THINKING_MIN} "
                              f"(a thinking budget of at least {THINKING_MIN} tokens, below max_tokens); "
                              f"max_tokens is {max_tokens}", param=param)
    return BudgetExceeded(f"the budget left affords at most {max_tokens} output tokens, and extended thinking on "
                          f"Claude models needs more than {THINKING_MIN}; lower the thinking budget or use a "
                          "cheaper model")


def _sampling(body: Mapping[str, Any], request: dict[str, Any], max_tokens: int) -> None:
    effort = body.get("reasoning_effort")
    if effort is not None and effort != NO_THINKING and effort not in THINKING_BUDGET:
        raise InvalidRequest(f"reasoning_effort must be one of {', '.join([NO_THINKING, *THINKING_BUDGET])}, got "
                             f"{effort!r}", param="reasoning_effort")
    budget = THINKING_BUDGET.get(effort) if isinstance(effort, str) else None
    if budget is not None:
        fitted = fit_thinking(budget, max_tokens)
        if fitted is None:
            asked = [v for k in ("max_completion_tokens", "max_tokens")
                     if isinstance(v := body.get(k), int) and not isinstance(v, bool)]
            raise no_room_to_think(max_tokens, max(asked) if asked else None, "reasoning_effort")
        request["thinking"] = {"type": "enabled", "budget_tokens": fitted}
        return  # extended thinking runs at the default temperature and top_p
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        request["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and not isinstance(top_p, bool):
        request["top_p"] = top_p


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


def _turns(messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"messages[{index}].content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, index)
        elif role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": str(message.get("tool_call_id") or ""),
                       "content": _text(message.get("content"))}]
            role = "user"
        else:
            raise InvalidRequest(f"'messages[{index}].role' {role!r} cannot be sent to an Anthropic model; "
                                 "use tool messages", param=f"messages[{index}].role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), turns


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content or []):
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(image_block(part["image_url"]["url"], f"{where}[{index}]"))
        else:
            raise InvalidRequest(f"content parts of type {kind!r} cannot be sent to an Anthropic model",
                                 param=f"{where}[{index}].type")
    return blocks


def image_block(url: str, where: str) -> dict[str, Any]:
    """An ``image`` block for an image URL (``data:<type>;base64,<data>`` or http(s))."""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0]
        if not header.endswith(";base64") or not media_type.startswith("image/"):
            raise InvalidRequest("an image data URL must look like data:image/<type>;base64,<data>", param=where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_blocks(message: Mapping[str, Any], index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for position, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": str(call.get("id") or f"toolu_{index}_{position}"),
                       "name": function.get("name", ""), "input": tool_input(function.get("arguments"))})
    return blocks


def tool_input(arguments: Any) -> dict[str, Any]:
    """Function-call arguments (a JSON string) as the object Messages wants in ``tool_use.input``."""
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest("tool call arguments must be a JSON object to be sent to an Anthropic model",
                             param="messages") from None
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _tool(tool: Any, index: int) -> dict[str, Any]:
    if tool.get("type", "function") != "function":
        raise InvalidRequest(f"tools of type {tool.get('type')!r} cannot be sent to an Anthropic model",
                             param=f"tools[{index}].type")
    function = tool["function"]
    result: dict[str, Any] = {"name": function["name"],
                              "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if isinstance(function.get("description"), str):
        result["description"] = function["description"]
    return result


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    result: dict[str, Any] | None = None
    if choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str):
            raise InvalidRequest("'tool_choice' must name a function for an Anthropic model", param="tool_choice")
        result = {"type": "tool", "name": name}
    if parallel is False and (result is None or result["type"] != "none"):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def chat_completion(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Messages response as a chat completion (see the module docstring)."""
    texts, reasoning, calls = [], [], []
    for block in message.get("content") or []:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            reasoning.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input")).decode()
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": arguments}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                             "refusal": None}
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)
    if calls:
        reply["tool_calls"] = calls
    stop = message.get("stop_reason")
    completion: dict[str, Any] = {
        "id": message.get("id"), "object": "chat.completion", "created": int(time.time()),
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": FINISH_REASON.get(stop, "stop") if isinstance(stop, str) else "stop"}],
    }
    usage = anthropic_usage(message.get("usage"))
    if usage is not None:
        completion["usage"] = chat_usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    return completion


def chat_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
