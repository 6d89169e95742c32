"""OpenAI Responses clients (``POST /v1/responses``): their request in chat form, and a chat
completion answered back as a Response.

``parse_responses`` type-checks what the proxy reads (400 naming the field otherwise) and builds
the chat form: ``instructions`` → a system message; ``input`` (a string, or items) → messages:
``message`` items (``input_text`` / ``output_text`` / ``input_image`` parts; ``developer`` as
``system``), ``function_call`` items → assistant ``tool_calls``, ``function_call_output`` → ``tool``
messages; function ``tools`` → chat functions; ``tool_choice``; ``text.format`` →
``response_format``; ``reasoning.effort`` → ``reasoning_effort``; ``max_output_tokens`` →
``max_tokens``; ``temperature``, ``top_p``, ``parallel_tool_calls``, ``user``, ``metadata``,
``service_tier``, ``safety_identifier``, ``prompt_cache_key`` as they are.  ``reasoning`` items
(a previous turn's reasoning) have no chat form and are dropped from it.  What only the Responses
API can do is listed in ``native_only``: built-in tools (web search, file search, code
interpreter, computer use, image generation, MCP, shell, custom tools), ``input_file`` parts,
file-id images, ``item_reference`` and built-in tool items, reusable ``prompt``s.  Refused
everywhere: ``background`` (the proxy settles a call when it ends) and ``conversation`` (use
``previous_response_id``, which the proxy resolves from its own store).

``response_from_chat`` answers a chat completion as a Response object, and ``skeleton`` is the
Response before any output (the stream's ``response.created``); items are built by ``message_item``,
``function_call_item`` and ``reasoning_item``, shared with ``responses_stream``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from costproxy.errors import InvalidRequest
from costproxy.protocols.shapes import obj
from costproxy.request import Api, ChatRequest, Endpoint

_COPIED = ("temperature", "top_p", "parallel_tool_calls", "user", "metadata", "service_tier", "safety_identifier",
           "prompt_cache_key", "top_logprobs")
_ROLES = ("user", "assistant", "system", "developer")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def input_items(value: Any) -> list[Any]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise _bad("'input' must be a string or a list of input items", "input")
    return value


def parse_responses(body: dict[str, Any], history: list[Any] | None = None) -> ChatRequest:
    """The chat form of a Responses body whose conversation so far (``previous_response_id``,
    resolved by the caller) is ``history``; ``native`` is the body with that history inlined."""
    for refused in ("background", "conversation"):
        if body.get(refused) not in (None, False):
            raise _bad(f"'{refused}' is not supported by costproxy" + (
                "; use previous_response_id" if refused == "conversation" else
                ": a response is settled when its call ends"), refused)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise _bad("'model' must be a non-empty string", "model")
    for key in ("stream", "store"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise _bad(f"'{key}' must be true or false", key)
    max_output = body.get("max_output_tokens")
    if max_output is not None and (isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1):
        raise _bad("'max_output_tokens' must be a positive integer", "max_output_tokens")
    items = [*(history or []), *input_items(body.get("input"))]
    if not items:
        raise _bad("'input' must not be empty", "input")
    native_only: list[str] = ["reusable prompts"] if body.get("prompt") is not None else []
    messages = _instructions(body.get("instructions")) + _messages(items, native_only)
    chat: dict[str, Any] = {"messages": messages}
    if model is not None:
        chat["model"] = model
    if body.get("stream"):
        chat["stream"] = True
    if max_output is not None:
        chat["max_tokens"] = max_output
    chat.update({key: body[key] for key in _COPIED if body.get(key) is not None})
    _format_and_reasoning(body, chat)
    _tools(body, chat, native_only)
    native = {k: v for k, v in body.items() if k != "previous_response_id"}
    native["input"] = items
    return ChatRequest(endpoint=Endpoint.CHAT, body=chat, model=model, stream=bool(body.get("stream")),
                       max_output_tokens=max_output, api=Api.RESPONSES, native=native,
                       native_only=tuple(dict.fromkeys(native_only)))


def _instructions(value: Any) -> list[dict[str, Any]]:
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise _bad("'instructions' must be a string", "instructions")
    return [{"role": "system", "content": value}]


def _messages(items: list[Any], native_only: list[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, Mapping):
            raise _bad(f"'{where}' must be an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, where, native_only))
        elif kind == "function_call":
            _function_call(item, where, messages)
        elif kind == "function_call_output":
            messages.append(_function_output(item, where))
        elif kind != "reasoning":
            native_only.append(f"{kind} items" if isinstance(kind, str) else "items without a type")
    return messages


def _message(item: Mapping[str, Any], where: str, native_only: list[str]) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise _bad(f"'{where}.role' must be one of {', '.join(_ROLES)}", f"{where}.role")
    role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _bad(f"'{where}.content' must be a string or a list of content parts", f"{where}.content")
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        spot = f"{where}.content[{position}]"
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise _bad(f"'{spot}' must be an object with a string 'type'", spot)
        kind = part["type"]
        if kind in ("input_text", "output_text", "text", "refusal"):
            text = part.get("refusal" if kind == "refusal" else "text")
            if not isinstance(text, str):
                raise _bad(f"'{spot}.text' must be a string", f"{spot}.text")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            native_only.append("file-id images" if kind == "input_image" else f"{kind} parts")
    if role != "user" or all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p.get("text", "") for p in parts)}
    return {"role": role, "content": parts}


def _function_call(item: Mapping[str, Any], where: str, messages: list[dict[str, Any]]) -> None:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise _bad(f"'{where}.{key}' must be a string", f"{where}.{key}")
    call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"],
                                                                     "arguments": item["arguments"]}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last:
        last["tool_calls"].append(call)
    elif last is not None and last["role"] == "assistant":
        last["tool_calls"] = [call]
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _function_output(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(item.get("call_id"), str):
        raise _bad(f"'{where}.call_id' must be a string", f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, list):
        output = "".join(p.get("text", "") for p in output if isinstance(p, Mapping))
    if not isinstance(output, str):
        raise _bad(f"'{where}.output' must be a string or a list of content parts", f"{where}.output")
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}


def _format_and_reasoning(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    text = body.get("text")
    if text is not None and not isinstance(text, Mapping):
        raise _bad("'text' must be an object", "text")
    fmt = (text or {}).get("format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), Mapping):
            raise _bad("'text.format.schema' must be an object", "text.format.schema")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", **schema}}
    elif isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, Mapping):
        raise _bad("'reasoning' must be an object", "reasoning")
    if reasoning and isinstance(reasoning.get("effort"), str) and reasoning["effort"] != "none":
        chat["reasoning_effort"] = reasoning["effort"]


def _tools(body: Mapping[str, Any], chat: dict[str, Any], native_only: list[str]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("'tools' must be a list", "tools")
        functions = []
        for index, tool in enumerate(tools):
            if not isinstance(tool, Mapping) or not isinstance(tool.get("type"), str):
                raise _bad(f"'tools[{index}]' must be an object with a string 'type'", f"tools[{index}]")
            if tool["type"] != "function":
                native_only.append(f"built-in tool {tool['type']!r}")
                continue
            if not isinstance(tool.get("name"), str):
                raise _bad(f"'tools[{index}].name' must be a string", f"tools[{index}].name")
            function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            functions.append({"type": "function", "function": function})
        if functions:
            chat["tools"] = functions
    choice = body.get("tool_choice")
    if choice in ("auto", "none", "required"):
        chat["tool_choice"] = choice
    elif isinstance(choice, Mapping) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        if not isinstance(choice, Mapping):
            raise _bad("'tool_choice' must be a string or an object", "tool_choice")
        native_only.append(f"tool_choice {choice.get('type')!r}")


# --- the answer ----------------------------------------------------------------------------------


def skeleton(native: Mapping[str, Any], response_id: str, model: Any, created_at: int | None = None,
             previous_response_id: str | None = None) -> dict[str, Any]:
    """A Response before any output: the request's settings echoed, ``status: in_progress``."""
    fmt = obj(native.get("text"))
    return {
        "id": response_id, "object": "response", "created_at": created_at or int(time.time()),
        "status": "in_progress", "background": False, "error": None, "incomplete_details": None,
        "instructions": native.get("instructions"), "max_output_tokens": native.get("max_output_tokens"),
        "model": model, "output": [], "parallel_tool_calls": native.get("parallel_tool_calls", True),
        "previous_response_id": previous_response_id, "reasoning": native.get("reasoning") or {},
        "store": native.get("store", True), "temperature": native.get("temperature"),
        "text": {"format": {"type": "text"}, **fmt}, "tool_choice": native.get("tool_choice", "auto"),
        "tools": native.get("tools") or [], "top_p": native.get("top_p"), "truncation": "disabled",
        "usage": None, "user": native.get("user"), "metadata": native.get("metadata") or {},
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [output_text(text)] if status == "completed" else []}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else []}


def finish(response: dict[str, Any], finish_reason: Any, usage: Any) -> dict[str, Any]:
    """Set status, incomplete details and usage from the chat completion's ending."""
    if finish_reason in ("length", "content_filter"):
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens" if finish_reason == "length"
                                          else "content_filter"}
    else:
        response["status"] = "completed"
    response["usage"] = responses_usage_body(usage)
    return response


def responses_usage_body(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, Mapping) else 0
    reasoning = completion_details.get("reasoning_tokens") if isinstance(completion_details, Mapping) else 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached or 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning or 0},
            "total_tokens": prompt + completion}


def response_from_chat(completion: Mapping[str, Any], native: Mapping[str, Any], response_id: str,
                       previous_response_id: str | None = None) -> dict[str, Any]:
    """A chat completion answered as a Response object."""
    response = skeleton(native, response_id, completion.get("model"), previous_response_id=previous_response_id)
    choices = completion.get("choices")
    choice = obj(choices[0]) if isinstance(choices, list) and choices else obj(None)
    reply = obj(choice.get("message"))
    output: list[dict[str, Any]] = []
    if isinstance(reply.get("reasoning_content"), str) and reply["reasoning_content"]:
        output.append(reasoning_item(new_id("rs"), reply["reasoning_content"]))
    text = reply.get("content") or reply.get("refusal")
    if isinstance(text, str) and text:
        output.append(message_item(new_id("msg"), text))
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(function_call_item(new_id("fc"), str(call.get("id")), str(function.get("name")),
                                         str(function.get("arguments") or "")))
    response["output"] = output
    return finish(response, choice.get("finish_reason"), completion.get("usage"))
