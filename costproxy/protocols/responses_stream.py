"""Chat completion chunks, as the Responses API's typed event stream for a Responses client.

``response.created`` and ``response.in_progress`` on the first chunk; each run of ``content``,
``reasoning_content`` or one tool call's ``arguments`` is an output item:
``response.output_item.added``, (messages) ``response.content_part.added``, the deltas
(``response.output_text.delta``, ``response.reasoning_text.delta``,
``response.function_call_arguments.delta``), then the ``.done`` events and
``response.output_item.done``.  The end is ``response.completed`` (``response.incomplete`` when the
output was cut) carrying the whole Response with its usage, which is also ``final`` (the proxy
stores it for ``previous_response_id``).  Every event has its ``sequence_number``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from costproxy.errors import ProxyError
from costproxy.protocols.responses import (
    finish,
    function_call_item,
    message_item,
    new_id,
    output_text,
    reasoning_item,
)
from costproxy.protocols.shapes import ToolCallHold, obj, typed


class ChatToResponses:
    """Encodes one chat chunk stream as Responses events (``chunk`` per chunk, then ``end``)."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response  # the skeleton: in progress, no output yet
        self.final: dict[str, Any] | None = None
        self._sequence = 0
        self._started = False
        self._open: dict[str, Any] | None = None  # the output item being streamed
        self._finish: Any = None
        self._usage: Any = None
        self._tools = ToolCallHold()

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return typed(data)

    def _start(self, chunk: Mapping[str, Any]) -> list[bytes]:
        self._started = True
        if chunk.get("model"):
            self.response["model"] = chunk["model"]
        return [self._event("response.created", response=self.response),
                self._event("response.in_progress", response=self.response)]

    def chunk(self, chunk: Mapping[str, Any]) -> list[bytes]:
        frames = [] if self._started else self._start(chunk)
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, Mapping):
                continue
            delta = obj(choice.get("delta"))
            frames.extend(self._delta(delta))
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                frames.extend(self._held_calls())
        return frames

    def _held_calls(self) -> list[bytes]:
        """The function calls held back (``ToolCallHold``), each as one whole item."""
        frames: list[bytes] = []
        for call in self._tools.release():
            frames += self._open_item("function_call", key=f"call{call['index']}",
                                      call_id=str(call["id"] or new_id("call")), name=str(call["name"] or ""))
            item = self._open
            if item is not None and call["arguments"]:
                item["text"] += call["arguments"]
                frames.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                          output_index=item["index"], delta=call["arguments"]))
        return frames

    def _delta(self, delta: Mapping[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        for key, kind in (("reasoning_content", "reasoning"), ("content", "message"), ("refusal", "message")):
            text = delta.get(key)
            if isinstance(text, str) and text:
                frames += self._held_calls()  # text after function calls: the held ones go first
                if self._open is None or self._open["kind"] != kind:
                    frames += self._open_item(kind)
                frames.append(self._text_delta(text))
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, Mapping) or self._tools.hold(call):
                continue
            function = obj(call.get("function"))
            key = f"call{call.get('index', 0)}"
            if self._open is None or self._open.get("key") != key:
                frames += self._open_item("function_call", key=key, call_id=str(call.get("id") or new_id("call")),
                                          name=str(function.get("name") or ""))
            item = self._open
            arguments = function.get("arguments")
            if item is not None and isinstance(arguments, str) and arguments:
                item["text"] += arguments
                frames.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                          output_index=item["index"], delta=arguments))
        return frames

    def _open_item(self, kind: str, **extra: str) -> list[bytes]:
        frames = self._close()
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = self._open = {"kind": kind, "id": new_id(prefix), "index": len(self.response["output"]),
                             "text": "", **extra}
        if kind == "message":
            added = message_item(item["id"], "", status="in_progress")
        elif kind == "reasoning":
            added = reasoning_item(item["id"], "")
        else:
            added = function_call_item(item["id"], extra["call_id"], extra["name"], "", status="in_progress")
        frames.append(self._event("response.output_item.added", output_index=item["index"], item=added))
        if kind == "message":
            frames.append(self._event("response.content_part.added", item_id=item["id"], output_index=item["index"],
                                      content_index=0, part=output_text("")))
        return frames

    def _text_delta(self, text: str) -> bytes:
        item = self._open
        assert item is not None
        item["text"] += text
        kind = "response.output_text.delta" if item["kind"] == "message" else "response.reasoning_text.delta"
        extra: dict[str, Any] = {"logprobs": []} if item["kind"] == "message" else {}
        return self._event(kind, item_id=item["id"], output_index=item["index"], content_index=0, delta=text,
                           **extra)

    def _close(self) -> list[bytes]:
        item, self._open = self._open, None
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": item["index"]}
        if item["kind"] == "message":
            done = message_item(item["id"], item["text"])
            frames = [self._event("response.output_text.done", **where, content_index=0, text=item["text"],
                                  logprobs=[]),
                      self._event("response.content_part.done", **where, content_index=0,
                                  part=output_text(item["text"]))]
        elif item["kind"] == "reasoning":
            done = reasoning_item(item["id"], item["text"])
            frames = [self._event("response.reasoning_text.done", **where, content_index=0, text=item["text"])]
        else:
            done = function_call_item(item["id"], item["call_id"], item["name"], item["text"])
            frames = [self._event("response.function_call_arguments.done", **where, name=item["name"],
                                  arguments=item["text"])]
        self.response["output"].append(done)
        frames.append(self._event("response.output_item.done", output_index=item["index"], item=done))
        return frames

    def end(self) -> list[bytes]:
        frames = [] if self._started else self._start({})
        frames += self._held_calls()
        frames += self._close()
        self.final = finish(self.response, self._finish, self._usage)
        kind = "response.completed" if self.final["status"] == "completed" else "response.incomplete"
        frames.append(self._event(kind, response=self.final))
        return frames

    def error(self, error: ProxyError) -> bytes:
        return self._event("error", code=error.code, message=error.message, param=error.param)
