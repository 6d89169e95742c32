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
