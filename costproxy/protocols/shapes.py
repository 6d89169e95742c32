"""Server-sent event frames as the three APIs write them, and safe access to JSON objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


def frame(data: Any, event: str | None = None) -> bytes:
    """One event: ``event: <name>`` (Responses and Messages name every event) and its JSON data."""
    body = b"data: " + orjson.dumps(data) + b"\n\n"
    return b"event: " + event.encode() + b"\n" + body if event else body


def typed(data: dict[str, Any]) -> bytes:
    """An event named after its ``type`` field (how Responses and Messages frame every event)."""
    return frame(data, str(data["type"]))


DONE = b"data: [DONE]\n\n"


def obj(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (clients and providers send anything)."""
    return value if isinstance(value, Mapping) else {}


class ToolCallHold:
    """Parallel tool calls of a chat stream, made sequential for APIs whose streams cannot
    interleave them (Messages blocks, Responses items: each must end before the next starts).

    A chat stream may send the argument pieces of several calls mixed (``index`` says whose): the
    first call seen streams live; the pieces of any other are held (``hold`` answers True) and
    ``release`` hands them back whole, in index order, once the caller knows no more come (the
    choice finished, the stream ended, or text follows the calls)."""

    __slots__ = ("_held", "_live")

    def __init__(self) -> None:
        self._live: Any = None
        self._held: dict[Any, dict[str, Any]] = {}

    def hold(self, call: Mapping[str, Any]) -> bool:
        index = call.get("index", 0)
        if self._live is None:
            self._live = index
        if index == self._live:
            return False
        held = self._held.setdefault(index, {"index": index, "id": None, "name": None, "arguments": ""})
        function = obj(call.get("function"))
        if held["id"] is None and call.get("id"):
            held["id"] = call["id"]
        if held["name"] is None and function.get("name"):
            held["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            held["arguments"] += function["arguments"]
        return True

    def release(self) -> list[dict[str, Any]]:
        """The held calls, in index order; the next call seen streams live again."""
        calls = [self._held[i] for i in sorted(self._held, key=_index_order)]
        self._held, self._live = {}, None
        return calls


def _index_order(index: Any) -> tuple[bool, int, str]:
    """Integers in order, anything else (a broken upstream's index) after them."""
    number = isinstance(index, int) and not isinstance(index, bool)
    return (not number, index if number else 0, str(index))
