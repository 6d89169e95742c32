"""What a client asked for, validated once at the edge (sans-IO).

``RequestContext`` is who asks and how (request id, principal, endpoint, trusted headers);
``ChatRequest`` is the OpenAI body of ``/chat/completions``, ``/completions`` or ``/embeddings``
after ``parse_request`` has type-checked every field the proxy itself reads.  Fields the proxy
does not read pass through to the provider untouched, in ``body``.

A request in another API (OpenAI's Responses, Anthropic's Messages; ``Api``) is converted at its
edge into the same ``ChatRequest``: ``body`` is its chat form, which token counting, the analyzer,
steering, selection and budgets read, and ``native`` keeps the client's own body for a provider that
speaks that API (see ``pipeline.exchange``).

Every rejection is an ``InvalidJSON`` or ``InvalidRequest`` naming the field (``param``), so a bad
request is refused with a clear 400 before anything is counted, reserved or sent upstream.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import field
from enum import StrEnum
from typing import Any

import orjson

from costproxy.errors import InvalidJSON, InvalidRequest
from costproxy.identity.principal import Principal
from costproxy.records import frozen

MAX_N = 128  # OpenAI's own limit on ``n``
# The fields that cap a chat-form request's output per choice.  OpenAI itself refuses a request that
# sets both (400 ``invalid_parameter_combination``), but OpenAI-compatible upstreams may accept both
# and honour either one, so the proxy reserves for the larger and caps every one it forwards.
OUTPUT_CAP_FIELDS = ("max_completion_tokens", "max_tokens")
# Every output-cap field of any API the proxy speaks (chat, Responses, Messages): a native body
# forwarded as it is must carry none above the cap its reservation was made for.
ANY_OUTPUT_CAP_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class Endpoint(StrEnum):
    """The OpenAI endpoints the pipeline serves; the value is the path after ``/v1/``."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


class Api(StrEnum):
    """An HTTP API a client or a provider speaks."""

    CHAT = "chat"  # OpenAI chat completions (and the legacy completions and embeddings)
    RESPONSES = "responses"  # OpenAI Responses
    MESSAGES = "messages"  # Anthropic Messages


@frozen
class RequestContext:
    request_id: str
    principal: Principal
    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)  # trusted costproxy/tenant headers
    # the request's headers as steering rules may read them: any header a client sent, except its
    # credentials; the identity and control headers only from a trusted proxy (as ``headers``)
    client_headers: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    tenant: str | None = None
    started: float = field(default_factory=time.monotonic)


@frozen
class ChatRequest:
    """A validated OpenAI request body and the facts the proxy reads from it."""

    endpoint: Endpoint
    body: Mapping[str, Any]  # the client's JSON object, passed through to the provider
    model: str | None  # as asked; ``None`` when the body names none (the config's default applies)
    stream: bool = False
    include_usage: bool = False  # the client asked for ``stream_options.include_usage``
    max_output_tokens: int | None = None  # the larger of ``max_completion_tokens`` and ``max_tokens``
    n: int = 1  # completions generated per prompt (``best_of`` for legacy completions)
    api: Api = Api.CHAT  # the API the client spoke; ``body`` is always its chat form
    native: Mapping[str, Any] | None = None  # the client's own body when ``api`` is not CHAT
    # Features of ``native`` that have no chat form (built-in tools, documents...): only a provider
    # speaking ``api`` natively can serve them; elsewhere the request is a 400 naming them.
    native_only: tuple[str, ...] = ()
    upstream_headers: Mapping[str, str] = field(default_factory=dict)  # for a native upstream only


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ``InvalidJSON``."""
    if not raw:
        raise InvalidJSON("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJSON("request body must be a JSON object")
    return body


def parse_request(endpoint: Endpoint, body: dict[str, Any]) -> ChatRequest:
    """Type-check what the proxy reads; the rest of ``body`` is the provider's to judge."""
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    stream = _optional_bool(body, "stream")
    if endpoint is Endpoint.EMBEDDINGS and stream:
        raise InvalidRequest("embeddings cannot be streamed", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    include_usage = _optional_bool(options or {}, "include_usage", "stream_options.include_usage")
    if endpoint is Endpoint.CHAT:
        _check_messages(body.get("messages"))
        _check_tools(body)
    elif endpoint is Endpoint.COMPLETIONS:
        _check_prompt(body.get("prompt"), "prompt")
    else:
        _check_prompt(body.get("input"), "input")
    _check_object(body, "response_format")
    _check_object(body, "metadata")
    _check_object(body, "prediction")
    n = _positive_int(body, "n", maximum=MAX_N) or 1
    if endpoint is Endpoint.COMPLETIONS:
        n = max(n, _positive_int(body, "best_of", maximum=MAX_N) or 1)
    return ChatRequest(endpoint=endpoint, body=body, model=model, stream=bool(stream),
                       include_usage=bool(include_usage), max_output_tokens=_max_output(body), n=n)


def _optional_bool(body: Mapping[str, Any], key: str, param: str | None = None) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{param or key}' must be true or false", param=param or key)
    return value


def _positive_int(body: Mapping[str, Any], key: str, *, maximum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and abs(value) >= 2 ** 63:  # orjson reads a huge integer as a float
        raise InvalidRequest(f"'{key}' must be an integer{f' of at most {maximum}' if maximum else ''} "
                             f"(got a number too large for one)", param=key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{key}' must be an integer", param=key)
    if value < 1:
        raise InvalidRequest(f"'{key}' must be at least 1 (got {value})", param=key)
    if maximum is not None and value > maximum:
        raise InvalidRequest(f"'{key}' must be at most {maximum} (got {value})", param=key)
    return value


def _max_output(body: Mapping[str, Any]) -> int | None:
    asked = [v for key in OUTPUT_CAP_FIELDS if (v := _positive_int(body, key)) is not None]
    return max(asked) if asked else None


def asked_output_cap(body: Mapping[str, Any]) -> int | None:
    """The output cap a chat-form body asks for, read leniently (for profiles and estimates): the
    larger of ``max_completion_tokens`` and ``max_tokens`` (an upstream may honour either), or
    ``None`` when neither is a positive integer."""
    asked = [v for key in OUTPUT_CAP_FIELDS
             if isinstance(v := body.get(key), int) and not isinstance(v, bool) and v > 0]
    return max(asked) if asked else None


def _check_object(body: Mapping[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidRequest(f"'{key}' must be an object", param=key)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list", param="messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # (a list or an object cannot even be looked up)
            raise InvalidRequest(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}", param=f"{where}.role")
        _check_content(message.get("content"), f"{where}.content")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidRequest(f"'{where}.name' must be a string", param=f"{where}.name")
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise InvalidRequest(f"'{where}.tool_calls' must be a list", param=f"{where}.tool_calls")
            for position, call in enumerate(calls):
                _check_function(call.get("function") if isinstance(call, dict) else None,
                                f"{where}.tool_calls[{position}].function", "arguments")
        if message.get("function_call") is not None:
            _check_function(message["function_call"], f"{where}.function_call", "arguments")


def _check_content(content: Any, where: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or a list of content parts", param=where)
    for index, part in enumerate(content):
        spot = f"{where}[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"'{spot}' must be an object with a string 'type'", param=spot)
        kind = part["type"]
        if kind == "text" and not isinstance(part.get("text"), str):
            raise InvalidRequest(f"'{spot}.text' must be a string", param=f"{spot}.text")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                raise InvalidRequest(f"'{spot}.image_url.url' must be a string", param=f"{spot}.image_url.url")


def _check_function(function: Any, where: str, text_key: str) -> None:
    if not isinstance(function, dict):
        raise InvalidRequest(f"'{where}' must be an object", param=where)
    if not isinstance(function.get("name"), str):
        raise InvalidRequest(f"'{where}.name' must be a string", param=f"{where}.name")
    value = function.get(text_key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'{where}.{text_key}' must be a string", param=f"{where}.{text_key}")


def _check_tools(body: Mapping[str, Any]) -> None:
    for key in ("tools", "functions"):
        items = body.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise InvalidRequest(f"'{key}' must be a list", param=key)
        for index, item in enumerate(items):
            where = f"{key}[{index}]"
            if not isinstance(item, dict):
                raise InvalidRequest(f"'{where}' must be an object", param=where)
            if key == "functions":
                _check_function(item, where, "description")
            elif item.get("type", "function") == "function":
                _check_function(item.get("function"), f"{where}.function", "description")
    for key in ("tool_choice", "function_call"):  # (the legacy ``function_call`` is counted like tool_choice)
        choice = body.get(key)
        if choice is not None and not isinstance(choice, (str, dict)):
            raise InvalidRequest(f"'{key}' must be a string or an object", param=key)


def _check_prompt(value: Any, key: str) -> None:
    """A string, a list of strings, a list of token ids, or a list of such lists; never empty."""
    if isinstance(value, str):
        if key == "input" and not value:
            raise InvalidRequest(f"'{key}' must not be empty", param=key)
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"'{key}' is required: a string, a list of strings or a list of token ids",
                             param=key)
    if all(isinstance(v, str) for v in value) or all(_is_token(v) for v in value):
        return
    if all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
        return
    raise InvalidRequest(f"'{key}' must be a string, a list of strings, a list of token ids or a list of "
                         "lists of token ids", param=key)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
