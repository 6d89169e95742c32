"""The simulator's structured output: ``response_format`` (chat completions) and ``text.format``
(the Responses API) answered with JSON, so SDK helpers such as ``client.chat.completions.parse()``,
``client.responses.parse()`` and LangChain's ``with_structured_output`` work against it.

- ``{"type": "json_object"}``: a JSON object, ``{"simulated": true, "answer": "<the usual reply>"}``.
- ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (Responses:
  ``{"type": "json_schema", "name", "schema"}``): a value that validates against the schema,
  generated deterministically from it (``sample``) — the same schema always gets the same answer.
- ``{"type": "text"}`` or none: the usual prose.

``sample`` understands what JSON-schema generators (pydantic, zod) emit and OpenAI's strict mode
allows: ``type`` (and type lists), ``properties`` (every property is filled), ``items`` and
``prefixItems``, ``enum``, ``const``, ``anyOf``/``oneOf`` (the first alternative that is not
``null``), ``allOf`` (merged), ``$ref`` into ``$defs``/``definitions`` (a recursive reference
ends at its first repetition, any structure at a depth of 6, with the smallest valid value),
numeric bounds and ``multipleOf``, string lengths, ``minItems``/``maxItems``/``uniqueItems`` and
the common ``format``s.  A ``pattern`` is honoured
when one of a few plain candidates matches it; otherwise ``SchemaUnsupported`` says so (the
simulator answers 400 naming the pattern) rather than returning something that does not validate.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 6
_FORMATS = {"date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "time": "00:00:00Z",
            "email": "simulated@example.com", "uri": "https://example.com/simulated",
            "url": "https://example.com/simulated", "hostname": "example.com", "ipv4": "192.0.2.1",
            "ipv6": "2001:db8::1", "duration": "P1D", "uri-reference": "/simulated"}


class SchemaUnsupported(ValueError):
    """The schema asks for something the simulator cannot generate; the message says what."""


def requested_format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The structured-output request of a chat (``response_format``) or Responses (``text.format``)
    body, as ``{"type": …, "schema": …}``; None for plain text."""
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping):
        spec = fmt.get("json_schema")
        return {"type": fmt.get("type"), "schema": spec.get("schema") if isinstance(spec, Mapping) else None}
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, Mapping):
        return {"type": fmt.get("type"), "schema": fmt.get("schema")}
    return None


def structured_text(body: Mapping[str, Any], prose: str) -> str | None:
    """The JSON answer the body asks for (``prose``: the reply it would get otherwise), or None."""
    fmt = requested_format(body)
    if fmt is None or fmt["type"] in (None, "text"):
        return None
    if fmt["type"] == "json_object" or (fmt["type"] == "json_schema" and not fmt["schema"]):
        return json.dumps({"simulated": True, "answer": prose})
    if fmt["type"] == "json_schema":
        if not isinstance(fmt["schema"], Mapping):
            raise SchemaUnsupported("the json_schema's 'schema' must be an object")
        return json.dumps(sample(fmt["schema"]), ensure_ascii=False)
    raise SchemaUnsupported(f"unknown response format type {fmt['type']!r}; known: text, json_object, json_schema")


def sample(schema: Mapping[str, Any]) -> Any:
    """A JSON value valid against ``schema`` (deterministic)."""
    return _Sampler(schema).value(schema, "value", 0)


class _Sampler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def value(self, schema: Any, name: str, depth: int, index: int = 0, *,
              active: frozenset[str] = frozenset()) -> Any:
        """``active``: the ``$ref``s being expanded above; meeting one again is recursion, which
        ends here with the smallest valid value."""
        if schema is True or schema == {}:
            return f"simulated {name}"
        if not isinstance(schema, Mapping):
            raise SchemaUnsupported(f"{name}: a schema must be an object or true")
        ref = schema.get("$ref")
        if isinstance(ref, str):
            depth = MAX_DEPTH if ref in active else depth
            active = active | {ref}
        schema = self._resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            options = list(schema["enum"])
            if not options:
                raise SchemaUnsupported(f"{name}: an empty enum has no valid value")
            return options[index % len(options)] if schema.get("_unique") else options[0]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.value(self._first_option(schema[key], depth, active), name, depth, index, active=active)
        if "allOf" in schema:
            return self.value(_merge(self._resolve(part, depth) for part in schema["allOf"]), name, depth, index,
                              active=active)
        kind = _kind(schema)
        if kind == "object":
            return self._object(schema, depth, active)
        if kind == "array":
            return self._array(schema, name, depth, active)
        if kind in ("integer", "number"):
            return _number(schema, kind, index)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return _string(schema, name, index)

    def _resolve(self, schema: Mapping[str, Any], depth: int) -> Mapping[str, Any]:
        seen = 0
        while "$ref" in schema:
            ref = str(schema["$ref"])
            if not ref.startswith("#"):
                raise SchemaUnsupported(f"only local $ref are supported, got {ref!r}")
            target: Any = self.root
            for part in ref[1:].split("/")[1:]:
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, Mapping) or part not in target:
                    raise SchemaUnsupported(f"$ref {ref!r} points nowhere")
                target = target[part]
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **extra} if isinstance(target, Mapping) else target
            seen += 1
            if seen > 32:
                raise SchemaUnsupported(f"$ref {ref!r} loops")
        return schema

    def _first_option(self, options: Any, depth: int, active: frozenset[str]) -> Any:
        """The first option that is not ``null`` (``null`` itself deep down or in a recursion)."""
        if not isinstance(options, list) or not options:
            raise SchemaUnsupported("anyOf/oneOf needs a non-empty list")
        resolved = [self._resolve(o, depth) if isinstance(o, Mapping) else o for o in options]
        recursive = any(isinstance(o, Mapping) and o.get("$ref") in active for o in options)
        if depth >= MAX_DEPTH or recursive:  # end a recursive structure where the schema allows
            for option in resolved:
                if isinstance(option, Mapping) and _kind(option) == "null":
                    return option
        return next((o for o in resolved if not (isinstance(o, Mapping) and _kind(o) == "null")), resolved[0])

    def _object(self, schema: Mapping[str, Any], depth: int, active: frozenset[str]) -> dict[str, Any]:
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        if depth >= MAX_DEPTH:
            props = {k: v for k, v in props.items() if k in required}
        return {key: self.value(sub, key, depth + 1, active=active) for key, sub in props.items()}

    def _array(self, schema: Mapping[str, Any], name: str, depth: int, active: frozenset[str]) -> list[Any]:
        prefix = list(schema.get("prefixItems") or ())
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        count = max(low, len(prefix), 0 if depth >= MAX_DEPTH else 1)
        if high is not None:
            count = min(count, int(high))
        items = schema.get("items", {})
        unique = bool(schema.get("uniqueItems"))
        out = []
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            if unique and isinstance(sub, Mapping):
                sub = {**sub, "_unique": True}
            out.append(self.value(sub, name, depth + 1, i, active=active))
        return out


def _kind(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        return str(kinds[0]) if kinds else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _merge(parts: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = sorted({*merged.get("required", []), *value})
            else:
                merged[key] = value
    return merged


def _number(schema: Mapping[str, Any], kind: str, index: int) -> int | float:
    """The first of a few plain candidates within the bounds (and a multiple of ``multipleOf``)."""
    step = schema.get("multipleOf")
    lo, lo_open = _bound(schema, "minimum", "exclusiveMinimum", lower=True)
    hi, hi_open = _bound(schema, "maximum", "exclusiveMaximum", lower=False)
    candidates: list[float] = [1.0 + index if kind == "integer" else 1.5 + index]
    if lo is not None:
        candidates += [lo, lo + 1, math.floor(lo) + 1]
    if hi is not None:
        candidates += [hi, hi - 1, math.ceil(hi) - 1]
    if lo is not None and hi is not None:
        candidates.append((lo + hi) / 2)
    if step:
        candidates = [f(c / step) * step for c in candidates for f in (math.ceil, math.floor)]
    for value in candidates:
        if kind == "integer" and value != int(value):
            continue
        if (lo is None or value > lo or (value == lo and not lo_open)) and (
                hi is None or value < hi or (value == hi and not hi_open)):
            return int(value) if kind == "integer" else float(value)
    raise SchemaUnsupported(f"no simple {kind} satisfies the bounds of {dict(schema)!r}")


def _bound(schema: Mapping[str, Any], inclusive: str, exclusive: str, *, lower: bool) -> tuple[float | None, bool]:
    """``(bound, open)``: the stricter of the inclusive and the exclusive bound."""
    closed_at, open_at = schema.get(inclusive), schema.get(exclusive)
    if open_at is True:  # draft 4: a boolean makes the inclusive bound exclusive
        return closed_at, True
    if not isinstance(open_at, (int, float)) or isinstance(open_at, bool):
        return closed_at, False
    if closed_at is None:
        return open_at, True
    stricter = open_at >= closed_at if lower else open_at <= closed_at
    return (open_at, True) if stricter else (closed_at, False)


def _string(schema: Mapping[str, Any], name: str, index: int) -> str:
    fmt = schema.get("format")
    if fmt == "uuid":
        text = str(uuid.uuid5(uuid.NAMESPACE_URL, f"costproxy-simulator/{name}/{index}"))
    elif fmt in _FORMATS and not index:
        text = _FORMATS[str(fmt)]
    else:
        text = f"simulated {name}".replace("  ", " ").strip() + (f" {index + 1}" if index else "")
    pattern = schema.get("pattern")
    if pattern is not None:
        text = _matching(str(pattern), text, name)
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    if len(text) < low:
        text += "x" * (low - len(text))
    if high is not None and len(text) > int(high):
        text = text[: int(high)]
    return text


def _matching(pattern: str, text: str, name: str) -> str:
    compiled = re.compile(pattern)
    candidates = (text, text.replace(" ", "_"), text.replace(" ", "-"), "simulated", "SIMULATED", "a", "A", "0",
                  "12345", "abc-123", "2026-01-01", "simulated@example.com", "https://example.com/simulated")
    for candidate in candidates:
        if compiled.search(candidate):
            return candidate
    raise SchemaUnsupported(f"{name}: the simulator cannot generate a string matching pattern {pattern!r}")
