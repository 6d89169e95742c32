"""Anthropic Messages clients (``POST /v1/messages``): their request in chat form, and a chat
completion answered back as a Message.

``parse_messages`` type-checks what the proxy reads (400 naming the field otherwise) and builds the
chat form: ``system`` → a system message; ``text`` / ``image`` blocks → ``text`` / ``image_url``
parts; assistant ``tool_use`` → ``tool_calls``; user ``tool_result`` → ``tool`` messages (before
the rest of that turn); custom ``tools`` → functions; ``tool_choice`` auto / any / tool / none →
auto / required / a function / none (``disable_parallel_tool_use`` → ``parallel_tool_calls:
false``); ``stop_sequences`` → ``stop``; ``metadata.user_id`` → ``user``; ``thinking`` → a
``reasoning_effort`` by budget.  ``cache_control`` markers and ``thinking`` blocks have no chat
form and are dropped from it (a Claude upstream gets the client's body untouched).  What only the
Messages API can do is listed in ``native_only``: ``top_k``, documents, images inside tool
results, server tools (web search, code execution, MCP, …), ``container``, ``mcp_servers``,
``context_management``.

``message_from_chat`` answers a chat completion as a Message (``finish_reason`` → ``stop_reason``,
usage with cache reads as ``cache_read_input_tokens``); ``error_body`` is Anthropic's error shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from costproxy.errors import InvalidRequest, ProxyError
from costproxy.protocols.shapes import obj
from costproxy.request import Api, ChatRequest, Endpoint

STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
               "content_filter": "refusal"}
ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
              403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
              413: "request_too_large", 422: "invalid_request_error", 429: "rate_limit_error",
              504: "timeout_error", 529: "overloaded_error"}
_NATIVE_FIELDS = ("top_k", "container", "mcp_servers", "context_management")
_DROPPED_BLOCKS = ("thinking", "redacted_thinking")


def error_body(error: ProxyError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``; costproxy's code rides along."""
    kind = error.type if error.type in ERROR_TYPE.values() else ERROR_TYPE.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message, "code": error.code}}


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def parse_messages(body: dict[str, Any], headers: Mapping[str, str] | None = None) -> ChatRequest:
    """The chat form of a Messages body (see the module docstring)."""
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise _bad("model: must be a non-empty string", "model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens: a positive integer is required", "max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream: must be true or false", "stream")
    native: list[str] = [key for key in _NATIVE_FIELDS if body.get(key) is not None]
    chat: dict[str, Any] = {"messages": _system(body.get("system")) + _messages(body.get("messages"), native),
                            "max_tokens": max_tokens}
    if model is not None:
        chat["model"] = model
    if stream:
        chat["stream"] = True
    _options(body, chat, native)
    return ChatRequest(endpoint=Endpoint.CHAT, body=chat, model=model, stream=stream, include_usage=False,
                       max_output_tokens=max_tokens, api=Api.MESSAGES, native=body, native_only=tuple(native),
                       upstream_headers=dict(headers or {}))


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if not isinstance(system, list):
        raise _bad("system: must be a string or a list of text blocks", "system")
    texts = []
    for index, block in enumerate(system):
        if not isinstance(block, Mapping) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f"system.{index}: must be a text block", f"system.{index}")
        texts.append(block["text"])
    return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []


def _messages(messages: Any, native: list[str]) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: a non-empty list is required", "messages")
    chat: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, Mapping):
            raise _bad(f"{where}: must be an object", where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            chat.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _bad(f"{where}.content: must be a string or a list of content blocks", f"{where}.content")
        blocks = [_block(block, f"{where}.content.{i}", native) for i, block in enumerate(content)]
        chat.extend(_assistant(blocks) if role == "assistant" else _user(blocks))
    return chat


def _block(block: Any, where: str, native: list[str]) -> dict[str, Any]:
    """Check one content block; returns it with a chat-form ``part`` (or none) attached."""
    if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
        raise _bad(f"{where}: must be an object with a string 'type'", where)
    kind = block["type"]
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise _bad(f"{where}.text: must be a string", f"{where}.text")
        return {"kind": kind, "part": {"type": "text", "text": block["text"]}}
    if kind == "image":
        return {"kind": kind, "part": _image(block.get("source"), where, native)}
    if kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise _bad(f"{where}: tool_use needs a string 'id' and 'name'", where)
        if not isinstance(block.get("input", {}), Mapping):
            raise _bad(f"{where}.input: must be an object", f"{where}.input")
        return {"kind": kind, "call": {"id": block["id"], "type": "function", "function": {
            "name": block["name"], "arguments": orjson.dumps(block.get("input", {})).decode()}}}
    if kind == "tool_result":
        return {"kind": kind, "result": _tool_result(block, where, native)}
    if kind not in _DROPPED_BLOCKS:
        native.append(f"{kind} blocks")
    return {"kind": kind}


def _image(source: Any, where: str, native: list[str]) -> dict[str, Any] | None:
    if not isinstance(source, Mapping):
        raise _bad(f"{where}.source: must be an object", f"{where}.source")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad(f"{where}.source: base64 images need 'media_type' and 'data'", f"{where}.source")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    native.append(f"image sources of type {source.get('type')!r}")
    return None


def _tool_result(block: Mapping[str, Any], where: str, native: list[str]) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str):
        raise _bad(f"{where}.tool_use_id: must be a string", f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                native.append("non-text content in tool_result blocks")
        content = "\n".join(texts)
    elif not isinstance(content, str):
        raise _bad(f"{where}.content: must be a string or a list of blocks", f"{where}.content")
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _assistant(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = "".join(b["part"]["text"] for b in blocks if b["kind"] == "text")
    calls = [b["call"] for b in blocks if b["kind"] == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _user(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = [b["result"] for b in blocks if b["kind"] == "tool_result"]
    parts = [b["part"] for b in blocks if b.get("part") is not None]
    if not parts:
        return results
    if all(p["type"] == "text" for p in parts):
        return [*results, {"role": "user", "content": "\n".join(p["text"] for p in parts)}]
    return [*results, {"role": "user", "content": parts}]


def _options(body: Mapping[str, Any], chat: dict[str, Any], native: list[str]) -> None:
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad(f"{key}: must be a number", key)
            chat[key] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: must be a list of strings", "stop_sequences")
        chat["stop"] = stops
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise _bad("metadata: must be an object", "metadata")
        if isinstance(metadata.get("user_id"), str):
            chat["user"] = metadata["user_id"]
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, Mapping):
            raise _bad("thinking: must be an object", "thinking")
        if thinking.get("type") in ("enabled", "adaptive"):
            budget = thinking.get("budget_tokens")
            budget = budget if isinstance(budget, int) else 4096
            chat["reasoning_effort"] = "low" if budget < 2048 else "medium" if budget < 8192 else "high"
    _tools(body, chat, native)


def _tools(body: Mapping[str, Any], chat: dict[str, Any], native: list[str]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools: must be a list", "tools")
        functions = []
        for index, tool in enumerate(tools):
            where = f"tools.{index}"
            if not isinstance(tool, Mapping):
                raise _bad(f"{where}: must be an object", where)
            if tool.get("type") not in (None, "custom"):
                native.append(f"server tool {tool.get('type')!r}")
                continue
            if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), Mapping):
                raise _bad(f"{where}: a tool needs a string 'name' and an object 'input_schema'", where)
            function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            functions.append({"type": "function", "function": function})
        if functions:
            chat["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, Mapping) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _bad("tool_choice: must be an object with type auto, any, tool or none", "tool_choice")
    kind = choice["type"]
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _bad("tool_choice.name: required for type 'tool'", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


def message_from_chat(completion: Mapping[str, Any], message_id: str) -> dict[str, Any]:
    """A chat completion answered as a Message."""
    choices = completion.get("choices")
    choice = obj(choices[0]) if isinstance(choices, list) and choices else obj(None)
    reply = obj(choice.get("message"))
    content: list[dict[str, Any]] = []
    if isinstance(reply.get("reasoning_content"), str) and reply["reasoning_content"]:
        content.append({"type": "thinking", "thinking": reply["reasoning_content"], "signature": ""})
    if isinstance(reply.get("content"), str) and reply["content"]:
        content.append({"type": "text", "text": reply["content"]})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _arguments(function.get("arguments"))})
    finish = choice.get("finish_reason")
    return {"id": message_id, "type": "message", "role": "assistant", "model": completion.get("model"),
            "content": content, "stop_reason": STOP_REASON.get(finish, "end_turn") if finish else "end_turn",
            "stop_sequence": None, "usage": messages_usage(completion.get("usage"))}


def messages_usage(usage: Any) -> dict[str, Any]:
    """Chat usage in Messages' terms: ``input_tokens`` excludes the cache reads."""
    if not isinstance(usage, Mapping):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0
    return {"input_tokens": prompt - cached, "output_tokens": completion, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}


def _arguments(arguments: Any) -> Any:
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
