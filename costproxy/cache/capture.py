"""A streamed answer, accumulated from the frames the client received into the whole answer.

The cache stores answers whole, in the client's API (a chat completion, a text completion, a
Response, a Message), so one entry serves a later request whether it streams or not.  For a
stream, ``Capture.feed`` reads the server-sent events exactly as they were written to the client
(after any translation, with the usage chunk stripped if the client did not ask for it) and
``answer`` rebuilds the object the non-streaming API would have returned — or ``None`` when the
stream did not end properly (an error event, a hang-up, a missing finish), which is then not
cached.  Pure: bytes in, a dict out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from costproxy.protocols.shapes import obj
from costproxy.request import Api

_HEAD = ("id", "created", "model", "system_fingerprint", "service_tier")


class Capture:
    def __init__(self, api: Api, endpoint: str) -> None:
        self.api = api
        self._buffer = b""
        self.done = False
        self.broken = False
        if api is Api.RESPONSES:
            self._parts: _Parts = _ResponseParts()
        elif api is Api.MESSAGES:
            self._parts = _MessageParts()
        else:
            self._parts = _CompletionParts() if endpoint == "completions" else _ChatParts()

    def feed(self, data: bytes) -> None:
        """Read what was written to the client: whole events, or pieces of them."""
        self._buffer += data
        *events, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            payload = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if not payload or self.broken:
                continue
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                data_ = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.broken = True
                continue
            if isinstance(data_, dict):
                self.broken = self.broken or self._parts.event(data_)
                self.done = self.done or self._parts.finished

    def answer(self) -> dict[str, Any] | None:
        if self.broken or not self.done:
            return None
        return self._parts.answer()


class _Parts:
    finished = False  # the API's own last event went by (APIs without [DONE])

    def event(self, data: dict[str, Any]) -> bool:
        """Take one event; True when it says the stream failed."""
        raise NotImplementedError

    def answer(self) -> dict[str, Any] | None:
        raise NotImplementedError


class _ChoiceParts(_Parts):
    """The chunks of the two choice-based APIs: a head, per-choice deltas, usage at the end."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Any = None

    def event(self, data: dict[str, Any]) -> bool:
        if "error" in data:
            return True
        for key in _HEAD:
            if data.get(key) is not None:
                self.head[key] = data[key]
        if data.get("usage") is not None:
            self.usage = data["usage"]
        for choice in data.get("choices") or []:
            if isinstance(choice, Mapping):
                self._choice(choice)
        return False

    def _choice(self, choice: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _complete(self) -> bool:
        return bool(self.choices) and all(s["finish_reason"] is not None for s in self.choices.values())


def _merge_tail(state: dict[str, Any], choice: Mapping[str, Any]) -> None:
    """Logprobs and the finish reason, the same in both choice-based APIs."""
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, Mapping):
        merged = state["logprobs"] = state["logprobs"] or {}
        for key, value in logprobs.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
    if choice.get("finish_reason") is not None:
        state["finish_reason"] = choice["finish_reason"]


class _ChatParts(_ChoiceParts):
    def _choice(self, choice: Mapping[str, Any]) -> None:
        state = self.choices.setdefault(int(choice.get("index") or 0), {
            "role": "assistant", "content": [], "refusal": [], "reasoning_content": [], "tools": {},
            "logprobs": None, "finish_reason": None})
        delta = obj(choice.get("delta"))
        if isinstance(delta.get("role"), str):
            state["role"] = delta["role"]
        for key in ("content", "refusal", "reasoning_content"):
            if isinstance(delta.get(key), str):
                state[key].append(delta[key])
        for call in delta.get("tool_calls") or []:
            if isinstance(call, Mapping):
                _tool_delta(state["tools"], call)
        _merge_tail(state, choice)

    def answer(self) -> dict[str, Any] | None:
        if not self._complete():
            return None
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message: dict[str, Any] = {"role": state["role"],
                                       "content": "".join(state["content"]) if state["content"] else None,
                                       "refusal": "".join(state["refusal"]) if state["refusal"] else None}
            if state["reasoning_content"]:
                message["reasoning_content"] = "".join(state["reasoning_content"])
            if state["tools"]:
                message["tool_calls"] = [state["tools"][i] for i in sorted(state["tools"])]
            choices.append({"index": index, "message": message, "logprobs": state["logprobs"],
                            "finish_reason": state["finish_reason"]})
        return {**self.head, "object": "chat.completion", "choices": choices, "usage": self.usage}


def _tool_delta(tools: dict[int, dict[str, Any]], call: Mapping[str, Any]) -> None:
    tool = tools.setdefault(int(call.get("index") or 0), {"id": None, "type": "function",
                                                          "function": {"name": "", "arguments": ""}})
    if call.get("id"):
        tool["id"] = call["id"]
    if call.get("type"):
        tool["type"] = call["type"]
    function = obj(call.get("function"))
    for key in ("name", "arguments"):
        if isinstance(function.get(key), str):
            tool["function"][key] += function[key]


class _CompletionParts(_ChoiceParts):
    def _choice(self, choice: Mapping[str, Any]) -> None:
        state = self.choices.setdefault(int(choice.get("index") or 0),
                                        {"text": [], "logprobs": None, "finish_reason": None})
        if isinstance(choice.get("text"), str):
            state["text"].append(choice["text"])
        _merge_tail(state, choice)

    def answer(self) -> dict[str, Any] | None:
        if not self._complete():
            return None
        choices = [{"text": "".join(s["text"]), "index": i, "logprobs": s["logprobs"],
                    "finish_reason": s["finish_reason"]} for i, s in sorted(self.choices.items())]
        return {**self.head, "object": "text_completion", "choices": choices, "usage": self.usage}


class _ResponseParts(_Parts):
    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None

    def event(self, data: dict[str, Any]) -> bool:
        kind = data.get("type")
        if kind in ("response.completed", "response.incomplete") and isinstance(data.get("response"), dict):
            self.final, self.finished = data["response"], True
        return kind in ("error", "response.failed")

    def answer(self) -> dict[str, Any] | None:
        return self.final


class _MessageParts(_Parts):
    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.partial: dict[int, str] = {}

    def event(self, data: dict[str, Any]) -> bool:
        kind = data.get("type")
        if kind == "message_start" and isinstance(data.get("message"), dict):
            self.message = {**data["message"], "content": []}
        elif kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            self.blocks[int(data.get("index") or 0)] = dict(data["content_block"])
        elif kind == "content_block_delta":
            return self._delta(int(data.get("index") or 0), obj(data.get("delta")))
        elif kind == "content_block_stop":
            return self._stop(int(data.get("index") or 0))
        elif kind == "message_delta" and self.message is not None:
            self.message.update({k: v for k, v in obj(data.get("delta")).items()})
            self.message["usage"] = {**obj(self.message.get("usage")), **obj(data.get("usage"))}
        elif kind == "message_stop":
            self.finished = True
        return kind == "error"

    def _delta(self, index: int, delta: Mapping[str, Any]) -> bool:
        block = self.blocks.get(index)
        if block is None:
            return True
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + str(delta.get("text", ""))
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
        elif kind == "signature_delta":
            block["signature"] = str(delta.get("signature", ""))
        elif kind == "input_json_delta":
            self.partial[index] = self.partial.get(index, "") + str(delta.get("partial_json", ""))
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))
        return False

    def _stop(self, index: int) -> bool:
        text = self.partial.pop(index, None)
        block = self.blocks.get(index)
        if text is None or block is None:
            return block is None
        try:
            block["input"] = orjson.loads(text) if text.strip() else {}
        except orjson.JSONDecodeError:
            return True
        return False

    def answer(self) -> dict[str, Any] | None:
        if self.message is None:
            return None
        return {**self.message, "content": [self.blocks[i] for i in sorted(self.blocks)]}
