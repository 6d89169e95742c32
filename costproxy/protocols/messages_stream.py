"""Chat completion chunks, as Anthropic's Messages stream for a Messages client.

``message_start`` (with the proxy's count of the prompt, corrected in ``message_delta``) on the
first chunk; each run of ``content`` / ``reasoning_content`` / one tool call's ``arguments``
becomes a content block (``content_block_start``, ``content_block_delta`` with ``text_delta`` /
``thinking_delta`` / ``input_json_delta``, ``content_block_stop``); ``finish_reason`` and the usage
chunk end in ``message_delta`` (stop reason and the final usage) and ``message_stop``.
Every frame is named by its ``event:`` line, as Anthropic's SDKs require.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from costproxy.errors import ProxyError
from costproxy.protocols.messages import STOP_REASON, error_body, messages_usage
from costproxy.protocols.shapes import ToolCallHold, obj, typed


class ChatToMessages:
    """Encodes one chat chunk stream as Messages events (``chunk`` per chunk, then ``end``)."""

    final: dict[str, Any] | None = None

    def __init__(self, message_id: str, input_tokens: int) -> None:
        self.message_id = message_id
        self.input_tokens = input_tokens
        self._started = False
        self._block: tuple[str, int] | None = None  # (kind or tool call index, content block index)
        self._blocks = 0
        self._stop: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._tools = ToolCallHold()

    def _start(self, chunk: Mapping[str, Any]) -> list[bytes]:
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id, "type": "message", "role": "assistant", "model": chunk.get("model"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
        return [typed({"type": "message_start", "message": message})]

    def _open(self, key: str, block: dict[str, Any]) -> list[bytes]:
        frames = self._close()
        self._block = (key, self._blocks)
        frames.append(typed({"type": "content_block_start", "index": self._blocks, "content_block": block}))
        self._blocks += 1
        return frames

    def _close(self) -> list[bytes]:
        if self._block is None:
            return []
        index, self._block = self._block[1], None
        return [typed({"type": "content_block_stop", "index": index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        assert self._block is not None
        return typed({"type": "content_block_delta", "index": self._block[1], "delta": delta})

    def chunk(self, chunk: Mapping[str, Any]) -> list[bytes]:
        frames = [] if self._started else self._start(chunk)
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, Mapping):
                continue
            delta = obj(choice.get("delta"))
            frames.extend(self._choice_delta(delta))
            if isinstance(choice.get("finish_reason"), str):
                self._stop = STOP_REASON.get(choice["finish_reason"], "end_turn")
                frames.extend(self._held_tools())
        return frames

    def _held_tools(self) -> list[bytes]:
        """The tool calls held back (``ToolCallHold``), each as one whole ``tool_use`` block."""
        frames: list[bytes] = []
        for call in self._tools.release():
            frames += self._open(f"tool{call['index']}", {"type": "tool_use", "id": call["id"], "name": call["name"],
                                                          "input": {}})
            if call["arguments"]:
                frames.append(self._delta({"type": "input_json_delta", "partial_json": call["arguments"]}))
        return frames

    def _choice_delta(self, delta: Mapping[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        thinking = delta.get("reasoning_content")
        text = delta.get("content")
        if (isinstance(thinking, str) and thinking) or (isinstance(text, str) and text):
            frames += self._held_tools()  # text after tool calls: the held ones go first, in their order
        if isinstance(thinking, str) and thinking:
            if self._block is None or self._block[0] != "thinking":
                frames += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            frames.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        if isinstance(text, str) and text:
            if self._block is None or self._block[0] != "text":
                frames += self._open("text", {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, Mapping) or self._tools.hold(call):
                continue
            key = f"tool{call.get('index', 0)}"
            function = obj(call.get("function"))
            if self._block is None or self._block[0] != key:
                frames += self._open(key, {"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                                           "input": {}})
            if isinstance(function.get("arguments"), str) and function["arguments"]:
                frames.append(self._delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
        return frames

    def end(self) -> list[bytes]:
        frames = [] if self._started else self._start({})
        frames += self._held_tools()
        frames += self._close()
        usage = messages_usage(self._usage) if self._usage is not None else {"output_tokens": 0}
        frames.append(typed({"type": "message_delta", "delta": {"stop_reason": self._stop or "end_turn",
                                                                "stop_sequence": None}, "usage": usage}))
        frames.append(typed({"type": "message_stop"}))
        return frames

    def error(self, error: ProxyError) -> bytes:
        return typed(error_body(error))
