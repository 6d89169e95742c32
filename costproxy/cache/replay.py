"""A stored answer, written as the server-sent events of the client's API (a cache hit that streams).

The inverse of ``capture``: the whole answer becomes the events a provider would have sent,
one delta per part rather than per token —

- chat completions: a first chunk with the role, then the reasoning, the content (with its
  logprobs), the refusal and each tool call, a chunk with the ``finish_reason`` per choice, the
  usage chunk when the client asked for ``stream_options.include_usage``, and ``[DONE]``;
- legacy completions: one chunk per choice (text, logprobs, finish reason), the usage chunk when
  asked, ``[DONE]``;
- Responses: ``response.created`` / ``in_progress``, for each output item ``output_item.added``,
  its parts and deltas, ``output_item.done``, then ``response.completed`` (or ``incomplete``), all
  numbered by ``sequence_number``;
- Messages: ``message_start``, per content block ``content_block_start``, its delta
  (``text_delta``, ``input_json_delta``, ``thinking_delta`` and ``signature_delta``) and
  ``content_block_stop``, then ``message_delta`` and ``message_stop``.

Pure: a dict in, frames out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from costproxy.protocols.shapes import DONE, frame, obj, typed
from costproxy.request import Api


def replay(api: Api, endpoint: str, answer: Mapping[str, Any], *, include_usage: bool) -> list[bytes]:
    if api is Api.RESPONSES:
        return response_events(answer)
    if api is Api.MESSAGES:
        return message_events(answer)
    if endpoint == "completions":
        return completion_chunks(answer, include_usage)
    return chat_chunks(answer, include_usage)


def chat_chunks(answer: Mapping[str, Any], include_usage: bool) -> list[bytes]:
    head = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint", "service_tier") if k in answer}
    head["object"] = "chat.completion.chunk"

    def chunk(index: int, delta: dict[str, Any], finish: Any = None, logprobs: Any = None) -> bytes:
        data = {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            data["usage"] = None
        return frame(data)

    frames: list[bytes] = []
    for choice in answer.get("choices") or []:
        index = int(choice.get("index") or 0)
        message = obj(choice.get("message"))
        frames.append(chunk(index, {"role": message.get("role") or "assistant", "content": "", "refusal": None}))
        if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
            frames.append(chunk(index, {"reasoning_content": message["reasoning_content"]}))
        if isinstance(message.get("content"), str) and message["content"]:
            frames.append(chunk(index, {"content": message["content"]}, logprobs=choice.get("logprobs")))
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            frames.append(chunk(index, {"refusal": message["refusal"]}))
        for position, call in enumerate(message.get("tool_calls") or []):
            frames.append(chunk(index, {"tool_calls": [{"index": position, **call}]}))
        frames.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    if include_usage:
        frames.append(frame({**head, "choices": [], "usage": answer.get("usage")}))
    frames.append(DONE)
    return frames


def completion_chunks(answer: Mapping[str, Any], include_usage: bool) -> list[bytes]:
    head = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint") if k in answer}
    head["object"] = "text_completion"
    frames = [frame({**head, "choices": [{"text": choice.get("text") or "", "index": choice.get("index", 0),
                                          "logprobs": choice.get("logprobs"),
                                          "finish_reason": choice.get("finish_reason") or "stop"}]})
              for choice in answer.get("choices") or []]
    if include_usage:
        frames.append(frame({**head, "choices": [], "usage": answer.get("usage")}))
    frames.append(DONE)
    return frames


class _Sequence:
    def __init__(self) -> None:
        self.number = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.number, **fields}
        self.number += 1
        return typed(data)


def response_events(answer: Mapping[str, Any]) -> list[bytes]:
    seq = _Sequence()
    started = {**answer, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    frames = [seq.event("response.created", response=started), seq.event("response.in_progress", response=started)]
    for index, item in enumerate(answer.get("output") or []):
        frames += _item_events(seq, index, obj(item))
    kind = "response.incomplete" if answer.get("status") == "incomplete" else "response.completed"
    frames.append(seq.event(kind, response=dict(answer)))
    return frames


def _item_events(seq: _Sequence, index: int, item: Mapping[str, Any]) -> list[bytes]:
    kind, item_id = item.get("type"), item.get("id")
    where = {"item_id": item_id, "output_index": index}
    if kind == "message":
        added: dict[str, Any] = {**item, "status": "in_progress", "content": []}
    elif kind == "function_call":
        added = {**item, "status": "in_progress", "arguments": ""}
    else:
        added = dict(item)
    frames = [seq.event("response.output_item.added", output_index=index, item=added)]
    if kind == "message":
        for position, part in enumerate(item.get("content") or []):
            frames += _part_events(seq, where, position, obj(part))
    elif kind == "function_call":
        arguments = str(item.get("arguments") or "")
        frames.append(seq.event("response.function_call_arguments.delta", **where, delta=arguments))
        frames.append(seq.event("response.function_call_arguments.done", **where, name=item.get("name"),
                                arguments=arguments))
    frames.append(seq.event("response.output_item.done", output_index=index, item=dict(item)))
    return frames


def _part_events(seq: _Sequence, where: dict[str, Any], position: int, part: Mapping[str, Any]) -> list[bytes]:
    at = {**where, "content_index": position}
    if part.get("type") == "output_text":
        text = str(part.get("text") or "")
        empty = {**part, "text": "", "annotations": []}
        return [seq.event("response.content_part.added", **at, part=empty),
                seq.event("response.output_text.delta", **at, delta=text, logprobs=part.get("logprobs") or []),
                seq.event("response.output_text.done", **at, text=text, logprobs=part.get("logprobs") or []),
                seq.event("response.content_part.done", **at, part=dict(part))]
    if part.get("type") == "refusal":
        text = str(part.get("refusal") or "")
        return [seq.event("response.content_part.added", **at, part={"type": "refusal", "refusal": ""}),
                seq.event("response.refusal.delta", **at, delta=text),
                seq.event("response.refusal.done", **at, refusal=text),
                seq.event("response.content_part.done", **at, part=dict(part))]
    return [seq.event("response.content_part.added", **at, part=dict(part)),
            seq.event("response.content_part.done", **at, part=dict(part))]


def message_events(answer: Mapping[str, Any]) -> list[bytes]:
    usage = dict(obj(answer.get("usage")))
    start = {**answer, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 0}}
    frames = [typed({"type": "message_start", "message": start})]
    for index, block in enumerate(answer.get("content") or []):
        frames += _block_events(index, obj(block))
    frames.append(typed({"type": "message_delta", "delta": {"stop_reason": answer.get("stop_reason"),
                                                            "stop_sequence": answer.get("stop_sequence")},
                         "usage": usage}))
    frames.append(typed({"type": "message_stop"}))
    return frames


def _block_events(index: int, block: Mapping[str, Any]) -> list[bytes]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        begin: dict[str, Any] = {"type": "text", "text": ""}
        deltas.append({"type": "text_delta", "text": str(block.get("text") or "")})
    elif kind in ("tool_use", "server_tool_use"):
        begin = {**block, "input": {}}
        deltas.append({"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input") or {}).decode()})
    elif kind == "thinking":
        begin = {"type": "thinking", "thinking": "", "signature": ""}
        deltas.append({"type": "thinking_delta", "thinking": str(block.get("thinking") or "")})
        deltas.append({"type": "signature_delta", "signature": str(block.get("signature") or "")})
    else:
        begin = dict(block)
    return [typed({"type": "content_block_start", "index": index, "content_block": begin}),
            *(typed({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas),
            typed({"type": "content_block_stop", "index": index})]
