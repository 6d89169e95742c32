"""A Messages stream from a Claude upstream, event by event, as chat completion chunks.

``message_start`` → the role chunk; ``content_block_start`` of a ``tool_use`` → a chunk opening
that tool call (its index counts tool calls only, as chat does); ``content_block_delta`` → a
``content``, ``reasoning_content`` or tool-call ``arguments`` chunk; ``message_delta`` → the
chunk with ``finish_reason``; ``message_stop`` → the usage chunk (``choices: []``), after which
``finished`` is true.  ``ping`` and block stops produce nothing.  An ``error`` event raises the
matching ``ProviderError`` (``overloaded_error`` as a retryable 529, ``rate_limit_error`` as 429).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from costproxy.errors import ProviderError, UpstreamHTTPError, UpstreamRateLimited
from costproxy.protocols.anthropic import FINISH_REASON, chat_usage
from costproxy.protocols.shapes import obj
from costproxy.protocols.usage import anthropic_usage

ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
                "overloaded_error": 529, "timeout_error": 504, "billing_error": 402}


def stream_error(data: Mapping[str, Any], provider: str) -> ProviderError:
    """The ``ProviderError`` for a Messages ``error`` event.  It comes inside a stream the provider
    accepted (2xx; ``message_start`` reported the prompt), so it is charged as such — the prompt and
    what was relayed, never released — and not retried (``ProviderError.after_acceptance``)."""
    error = obj(data.get("error"))
    kind = str(error.get("type") or "api_error")
    message = f"provider {provider} stream failed: {error.get('message') or kind}"
    body = {"error": {"type": kind, "message": error.get("message")}}
    failure = UpstreamRateLimited(message) if kind == "rate_limit_error" else UpstreamHTTPError(
        message, status=ERROR_STATUS.get(kind, 502), upstream_body=body)
    return failure.after_acceptance()


class AnthropicToChat:
    """Turns one Messages stream into chat completion chunks."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.finished = False
        self._head: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": int(time.time()),
                                      "model": ""}
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._usage: dict[str, Any] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self._head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def event(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type")
        if kind == "message_start":
            message = obj(data.get("message"))
            self._head["id"], self._head["model"] = message.get("id", ""), message.get("model", "")
            self._usage = dict(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, Mapping):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
            delta = obj(data.get("delta"))
            stop = delta.get("stop_reason")
            return [self._chunk({}, FINISH_REASON.get(stop, "stop") if isinstance(stop, str) else "stop")]
        if kind == "message_stop":
            self.finished = True
            usage = anthropic_usage(self._usage)
            if usage is None:
                return []
            return [{**self._head, "choices": [],
                     "usage": chat_usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)}]
        if kind == "error":
            raise stream_error(data, self.provider)
        return []

    def _block_start(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = data.get("content_block")
        if not isinstance(block, Mapping) or block.get("type") != "tool_use":
            return []
        position = self._tools[int(data.get("index", 0))] = len(self._tools)
        call = {"index": position, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _delta(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        delta = data.get("delta")
        if not isinstance(delta, Mapping):
            return []
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
        if kind == "input_json_delta":
            position = self._tools.get(int(data.get("index", 0)))
            if position is None:
                return []
            return [self._chunk({"tool_calls": [{"index": position,
                                                 "function": {"arguments": delta.get("partial_json", "")}}]})]
        return []
