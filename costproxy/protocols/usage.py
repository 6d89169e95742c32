"""The usage each API reports, read into one ``Usage`` (prompt tokens include cached and written).

OpenAI Responses: ``usage.input_tokens`` (cache reads in ``input_tokens_details.cached_tokens``) and
``output_tokens`` (reasoning included), in the body or in the ``response`` of the last stream event.

Anthropic Messages: ``input_tokens`` counts only the uncached part of the prompt; the prompt is
``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``, and ``cache_creation``
splits the writes by lifetime.  A stream reports the prompt in ``message_start`` and the final
``output_tokens`` (cumulative, sometimes with the prompt fields again) in ``message_delta``: only
then is the usage complete.  Until then ``prompt`` holds what is known, so a client that hangs up
mid-stream is charged the exact prompt and the counted output.

Provider-side tool calls (``Usage.tool_calls``, priced by ``analyzer.server_tools``): Anthropic
reports them in ``usage.server_tool_use`` (``web_search_requests``…; in a stream, in
``message_delta``'s usage) and shows each as a ``server_tool_use`` content block (``name``:
``web_search``…; in a stream, in ``content_block_start``), Responses as one ``*_call`` output item
per call (``web_search_call``, ``file_search_call``…; in a stream, each in
``response.output_item.done`` and all in the final response).  A stream that breaks off (the client
hangs up, the upstream drops the connection or sends an error event) lends the calls seen so far
(``tool_calls``) to its estimate: for Anthropic, per kind the larger of the blocks seen and the
usage reported, since the usage arrives only at the end.  An Anthropic answer whose usage has no
``server_tool_use`` is charged the ``server_tool_use`` blocks of its content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeGuard

from costproxy.registry import Usage


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int(value: Any) -> int:
    return value if _count(value) else 0


# Call items of tools the client runs (``analyzer.server_tools.RESPONSES_CLIENT_TOOLS``): no provider fee.
_CLIENT_CALLS = ("function_call", "custom_tool_call", "local_shell_call", "shell_call", "apply_patch_call",
                 "computer_call")


def _calls(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((kind, count) for kind, count in counts.items() if count > 0))


def anthropic_tool_calls(usage: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """``usage.server_tool_use``: ``{"web_search_requests": 3}`` -> ``(("web_search", 3),)``."""
    used = usage.get("server_tool_use")
    if not isinstance(used, Mapping):
        return ()
    return _calls({key.removesuffix("_requests"): _int(value) for key, value in used.items()
                   if isinstance(key, str) and key.endswith("_requests")})


def anthropic_blocks(blocks: Any) -> dict[str, int]:
    """The ``server_tool_use`` content blocks among ``blocks``, counted by tool name."""
    counts: dict[str, int] = {}
    for block in blocks if isinstance(blocks, list) else ():
        if isinstance(block, Mapping) and block.get("type") == "server_tool_use" \
                and isinstance(name := block.get("name"), str):
            counts[name] = counts.get(name, 0) + 1
    return counts


def responses_tool_calls(output: Any) -> tuple[tuple[str, int], ...]:
    """The provider-side calls among a Response's ``output`` items: ``web_search_call`` -> ``web_search``."""
    counts: dict[str, int] = {}
    for item in output if isinstance(output, list) else ():
        kind = item.get("type") if isinstance(item, Mapping) else None
        if isinstance(kind, str) and kind.endswith("_call") and kind not in _CLIENT_CALLS:
            counts[kind[:-5]] = counts.get(kind[:-5], 0) + 1
    return _calls(counts)


def anthropic_usage(usage: Any) -> Usage | None:
    """A Messages ``usage`` object as ``Usage``; ``None`` unless both token counts are there."""
    if not isinstance(usage, Mapping) or not _count(usage.get("input_tokens")) \
            or not _count(usage.get("output_tokens")):
        return None
    read, write = _int(usage.get("cache_read_input_tokens")), _int(usage.get("cache_creation_input_tokens"))
    breakdown = usage.get("cache_creation")
    long_writes = _int(breakdown.get("ephemeral_1h_input_tokens")) if isinstance(breakdown, Mapping) else 0
    return Usage(prompt_tokens=usage["input_tokens"] + read + write, completion_tokens=usage["output_tokens"],
                 cached_tokens=read, cache_write_tokens=write, cache_write_1h_tokens=min(long_writes, write),
                 tool_calls=anthropic_tool_calls(usage))


def responses_usage(usage: Any, output: Any = None) -> Usage | None:
    """A Responses ``usage`` object as ``Usage``, with the provider-side calls of its ``output``."""
    if not isinstance(usage, Mapping) or not _count(usage.get("input_tokens")) \
            or not _count(usage.get("output_tokens")):
        return None
    details = usage.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    return Usage(prompt_tokens=usage["input_tokens"], completion_tokens=usage["output_tokens"],
                 cached_tokens=min(cached, usage["input_tokens"]), tool_calls=responses_tool_calls(output))


class AnthropicUsage:
    """Reads a Messages body, or a Messages stream event by event."""

    def __init__(self) -> None:
        self._start: dict[str, Any] = {}
        self.prompt: Usage | None = None
        self._reported: tuple[tuple[str, int], ...] = ()  # ``server_tool_use`` of a ``message_delta``
        self._blocks: dict[str, int] = {}  # ``server_tool_use`` blocks started so far, by tool name

    @property
    def tool_calls(self) -> tuple[tuple[str, int], ...]:
        """Per kind, the larger of the calls reported and the ``server_tool_use`` blocks seen."""
        counts = dict(self._blocks)
        for kind, count in self._reported:
            counts[kind] = max(count, counts.get(kind, 0))
        return _calls(counts)

    def usage_in(self, data: Mapping[str, Any]) -> Usage | None:
        kind = data.get("type")
        if kind == "message":
            usage = data.get("usage")
            return _with_blocks(anthropic_usage(usage), usage, anthropic_blocks(data.get("content")))
        if kind == "content_block_start":
            self._blocks = _merged(self._blocks, anthropic_blocks([data.get("content_block")]))
            return None
        if kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, Mapping) else None
            if isinstance(usage, Mapping):
                self._start = dict(usage)
                known = anthropic_usage({**usage, "output_tokens": 0})
                self.prompt = known
            return None
        if kind == "message_delta" and isinstance(data.get("usage"), Mapping):
            merged = {**self._start, **{k: v for k, v in data["usage"].items() if v is not None}}
            self._reported = anthropic_tool_calls(merged)
            return _with_blocks(anthropic_usage(merged), data["usage"], self._blocks)
        return None

    def texts_in(self, data: Mapping[str, Any]) -> list[str]:
        if data.get("type") == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, Mapping):
                return [v for k in ("text", "partial_json", "thinking") if isinstance(v := delta.get(k), str)]
        elif data.get("type") == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, Mapping) and isinstance(block.get("name"), str):
                return [block["name"]]
        return []


def _merged(counts: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    return {kind: counts.get(kind, 0) + more.get(kind, 0) for kind in {*counts, *more}}


def _with_blocks(usage: Usage | None, reported: Any, blocks: Mapping[str, int]) -> Usage | None:
    """A complete Anthropic ``usage`` whose own usage object has no ``server_tool_use``: its calls are
    the ``server_tool_use`` blocks of the answer."""
    if usage is None or not blocks or (isinstance(reported, Mapping) and "server_tool_use" in reported):
        return usage
    return replace(usage, tool_calls=_calls(blocks))


_RESPONSE_DONE = ("response.completed", "response.incomplete", "response.failed")
_TEXT_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta", "response.refusal.delta",
                "response.reasoning_text.delta", "response.reasoning_summary_text.delta",
                "response.custom_tool_call_input.delta")


class ResponsesUsage:
    """Reads a Responses body, or a Responses stream event by event."""

    prompt: Usage | None = None

    def __init__(self) -> None:
        self._items: list[Any] = []  # output items done so far (a stream)

    @property
    def tool_calls(self) -> tuple[tuple[str, int], ...]:
        return responses_tool_calls(self._items)

    def usage_in(self, data: Mapping[str, Any]) -> Usage | None:
        if data.get("object") == "response":
            return responses_usage(data.get("usage"), data.get("output"))
        kind = data.get("type")
        if kind == "response.output_item.done":
            self._items.append(data.get("item"))
        elif kind in _RESPONSE_DONE and isinstance(data.get("response"), Mapping):
            response = data["response"]
            return responses_usage(response.get("usage"), response.get("output") or self._items)
        return None

    def texts_in(self, data: Mapping[str, Any]) -> list[str]:
        if data.get("type") in _TEXT_DELTAS and isinstance(data.get("delta"), str):
            return [data["delta"]]
        return []
