"""Rate limits: what a limit is, which limits apply to a caller, and what a caller is told.

A ``RateLimit`` caps the requests and/or the tokens per minute of one scope — an org, a team, a
project, a user or a key — either one named scope (``scope_id: search``) or every scope of its
type, each on its own (``scope_id: "*"``: e.g. every key gets 60 requests per minute).  A named
limit replaces the ``*`` default of its scope type for that scope; a scope has at most one
limit.  A request draws from the limit of every scope of its principal (key, user, project,
team, org) and is admitted only if all of them have room.

Buckets are counted per organisation: the bucket of team ``search`` in org ``acme`` is not the
one of team ``search`` in org ``other`` (and in Redis every bucket of one org shares a hash tag,
so one admission is one atomic script on a Redis Cluster too).

``Admission`` is what the pipeline keeps for a request: the meters it drew from and their
readings, which become OpenAI's ``x-ratelimit-*`` headers (``headers``) and the token correction at
settlement.  Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from costproxy.config_schema import Node
from costproxy.errors import ConfigError, InvalidRequest
from costproxy.identity.principal import Principal
from costproxy.ratelimits.gcra import MAX_UNITS_PER_MINUTE, Meter, Reading
from costproxy.records import frozen
from costproxy.wire import JSON_SCOPE, SCOPE_FROM_JSON, canonical, iso, spellings

SCOPE_TYPES = ("org", "team", "project", "user", "key")
EVERY = "*"  # scope_id of a limit that applies to every scope of its type, each on its own
NO_ORG = "_"  # the bucket partition of principals without an org
REQUESTS, TOKENS = "requests", "tokens"
MAX_ID_CHARS = 128


@frozen
class RateLimit:
    id: str
    scope_type: str  # org | team | project | user | key
    scope_id: str  # a scope id, or "*" for every scope of the type
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    burst_requests: int | None = None  # capacity; default: requests_per_minute
    burst_tokens: int | None = None  # capacity; default: tokens_per_minute
    name: str = ""
    description: str = ""
    source: str = "config"  # config (YAML, read-only) | api
    created_at_ms: int | None = None
    updated_at_ms: int | None = None
    created_by: str | None = None

    @property
    def read_only(self) -> bool:
        return self.source == "config"

    def meters(self, bucket: str, tokens: int) -> list[tuple[str, Meter]]:
        """``(metric, meter)`` for each metric this limit caps, on the buckets of ``bucket``."""
        found: list[tuple[str, Meter]] = []
        if self.requests_per_minute is not None:
            found.append((REQUESTS, Meter(f"{bucket}:r", self.requests_per_minute,
                                          self.burst_requests or self.requests_per_minute, 1)))
        if self.tokens_per_minute is not None:
            found.append((TOKENS, Meter(f"{bucket}:t", self.tokens_per_minute,
                                        self.burst_tokens or self.tokens_per_minute, tokens)))
        return found


@frozen
class Applied:
    """A limit as it applies to one request: the concrete scope it counts."""

    limit: RateLimit
    scope_type: str
    scope_id: str
    partition: str  # the principal's org (or NO_ORG): buckets are per org

    @property
    def bucket(self) -> str:
        """The bucket's name inside its partition (``:r`` / ``:t`` are appended per metric)."""
        return f"rl:{self.scope_type}:{self.scope_id}"

    @property
    def label(self) -> str:
        return f"{self.scope_type} {self.scope_id}"


class LimitIndex:
    """Every limit by scope, for the lookups of the request path (immutable once built)."""

    def __init__(self, limits: Iterable[RateLimit] = ()) -> None:
        self.limits = {limit.id: limit for limit in limits}
        self._by_scope = {(limit.scope_type, limit.scope_id): limit for limit in self.limits.values()}
        self._memo: dict[Principal, tuple[Applied, ...]] = {}
        self._meters: dict[Principal, tuple[tuple[Applied, str, Meter], ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_scope)

    def for_scope(self, scope_type: str, scope_id: str) -> RateLimit | None:
        """The limit that counts this scope: its own, else its type's ``*`` default."""
        return self._by_scope.get((scope_type, scope_id)) or self._by_scope.get((scope_type, EVERY))

    def holder(self, scope_type: str, scope_id: str) -> RateLimit | None:
        """The limit defined for exactly this scope (``*`` included), if any."""
        return self._by_scope.get((scope_type, scope_id))

    def applied(self, principal: Principal) -> tuple[Applied, ...]:
        """The limits a request of ``principal`` draws from (memoised: principals repeat)."""
        known = self._memo.get(principal)
        if known is not None:
            return known
        partition = principal.org or NO_ORG
        found = tuple(Applied(limit, kind, value, partition) for kind, value in principal.scopes()
                      if (limit := self.for_scope(kind, value)) is not None)
        if len(self._memo) > 50_000:
            self._memo.clear()
        self._memo[principal] = found
        return found

    def meters(self, principal: Principal) -> tuple[tuple[Applied, str, Meter], ...]:
        """``(applied, metric, meter)`` of every bucket the principal draws from; a tokens meter
        costs 0 here (the request's tokens are set at admission).  Memoised."""
        known = self._meters.get(principal)
        if known is None:
            known = tuple((a, metric, meter) for a in self.applied(principal)
                          for metric, meter in a.limit.meters(a.bucket, 0))
            if len(self._meters) > 50_000:
                self._meters.clear()
            self._meters[principal] = known
        return known


# --- what a request drew, and what it is told ------------------------------------------------------


@frozen
class Draw:
    """One meter of one admission: which scope, which metric, and the bucket reading after it."""

    applied: Applied
    metric: str
    meter: Meter
    reading: Reading


@frozen
class Admission:
    """The rate limits a request was admitted under (kept in the plan until settlement)."""

    draws: tuple[Draw, ...]
    tokens: int  # tokens charged at admission (the worst case)

    def headers(self) -> dict[str, str]:
        return limit_headers(self.draws)

    def token_draws(self) -> tuple[Draw, ...]:
        return tuple(d for d in self.draws if d.metric == TOKENS)


def limit_headers(draws: Iterable[Draw]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``: per metric, the limit
    with the least room left (several scopes may limit one request)."""
    tightest: dict[str, tuple[int, int, Draw]] = {}
    for draw in draws:
        rank = (draw.reading.remaining, draw.meter.rate, draw)
        best = tightest.get(draw.metric)
        if best is None or rank[:2] < best[:2]:
            tightest[draw.metric] = rank
    headers: dict[str, str] = {}
    for metric in (REQUESTS, TOKENS):
        chosen = tightest.get(metric)
        if chosen is not None:
            remaining, rate, draw = chosen
            headers[f"x-ratelimit-limit-{metric}"] = str(rate)
            headers[f"x-ratelimit-remaining-{metric}"] = str(remaining)
            headers[f"x-ratelimit-reset-{metric}"] = duration(draw.reading.reset_ms)
    return headers


def duration(ms: int) -> str:
    """A duration as OpenAI's reset headers write it (Go's format): ``0s``, ``20ms``, ``1.5s``, ``6m0s``."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


# --- reading limits: YAML (snake_case) and JSON (camelCase) ---------------------------------------

# internal name -> (YAML key, JSON key)
_NAMES = {"id": ("id", "id"), "name": ("name", "name"), "description": ("description", "description"),
          "scope_type": ("scope_type", "scopeType"), "scope_id": ("scope_id", "scopeId"),
          "requests_per_minute": ("requests_per_minute", "requestsPerMinute"),
          "tokens_per_minute": ("tokens_per_minute", "tokensPerMinute"),
          "burst_requests": ("burst_requests", "burstRequests"), "burst_tokens": ("burst_tokens", "burstTokens")}
_NUMBERS = ("requests_per_minute", "tokens_per_minute", "burst_requests", "burst_tokens")
_JSON_READ_ONLY = ("createdAt", "updatedAt", "createdBy", "source", "readOnly")


def read_limit(node: Node, style: int, source: str, base: RateLimit | None = None) -> RateLimit:
    """One limit from ``node`` (style 0: YAML keys, 1: JSON keys); ``base``: a partial update."""
    node.mapping()
    values: dict[str, Any] = {} if base is None else {
        name: getattr(base, name) for name in ("id", "scope_type", "scope_id", "name", "description", *_NUMBERS)}
    key = {name: names[style] for name, names in _NAMES.items()}
    for name in ("id", "scope_id"):
        if base is None or node.has(key[name]):
            values[name] = _identifier(node.child(key[name]))
    if base is not None and values["id"] != base.id:
        raise node.child(key["id"]).error("cannot be changed", values["id"])
    for name in ("name", "description"):
        if node.has(key[name]):
            child = node.child(key[name])
            values[name] = "" if child.value is None else child.str(allow_empty=True)
    if base is None or node.has(key["scope_type"]):
        values["scope_type"] = _scope_type(node.child(key["scope_type"]), style)
    for name in _NUMBERS:
        if node.has(key[name]):
            child = node.child(key[name])
            values[name] = None if child.value is None else child.int(minimum=1, maximum=MAX_UNITS_PER_MINUTE)
    if style == 1:
        for extra in _JSON_READ_ONLY:
            node.child(extra, None)
    node.done()
    _check_numbers(node, values, key)
    return RateLimit(**values, source=source)


def _identifier(node: Node) -> str:
    text = node.str()
    if len(text) > MAX_ID_CHARS or not text.isprintable():
        raise node.error(f"must be at most {MAX_ID_CHARS} printable characters", text)
    return text


def _scope_type(node: Node, style: int) -> str:
    raw = node.str()
    kind = SCOPE_FROM_JSON.get(raw) if style == 1 else raw
    if kind not in SCOPE_TYPES:
        choices = JSON_SCOPE.values() if style == 1 else SCOPE_TYPES
        raise node.error(f"must be one of {', '.join(choices)}", raw)
    return kind


def _check_numbers(node: Node, values: Mapping[str, Any], key: Mapping[str, str]) -> None:
    if values.get("requests_per_minute") is None and values.get("tokens_per_minute") is None:
        raise node.error(f"give {key['requests_per_minute']}, {key['tokens_per_minute']} or both", node.value)
    for burst, rate in (("burst_requests", "requests_per_minute"), ("burst_tokens", "tokens_per_minute")):
        if values.get(burst) is not None and values.get(rate) is None:
            raise node.child(key[burst]).error(f"needs {key[rate]}", values[burst])


JSON_KEYS = (*(names[1] for names in _NAMES.values()), *_JSON_READ_ONLY)


def limit_from_json(data: Any, *, base: RateLimit | None = None, stored: bool = False) -> RateLimit:
    """A limit from an API body (``base``: PATCH), or as stored; errors are 400s naming the key as the
    client spelled it.  Every key is accepted in its snake_case spelling too (the YAML names)."""
    if stored:
        return read_limit(Node(data, "body"), 1, "api", base)
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    spelled = spellings(data, JSON_KEYS)
    try:
        return read_limit(Node(canonical(data, JSON_KEYS), "body"), 1, "api", base)
    except ConfigError as exc:
        param = spelled.get(exc.path, exc.path) or None
        message = str(exc).replace(f"body: {exc.path}:", f"body: {param}:") if param else str(exc)
        raise InvalidRequest(message, param=param) from None


def limit_to_json(limit: RateLimit) -> dict[str, Any]:
    return {"id": limit.id, "name": limit.name, "description": limit.description,
            "scopeType": JSON_SCOPE[limit.scope_type], "scopeId": limit.scope_id,
            "requestsPerMinute": limit.requests_per_minute, "tokensPerMinute": limit.tokens_per_minute,
            "burstRequests": limit.burst_requests, "burstTokens": limit.burst_tokens,
            "source": limit.source, "readOnly": limit.read_only, "createdAt": iso(limit.created_at_ms),
            "updatedAt": iso(limit.updated_at_ms), "createdBy": limit.created_by}


def stamped(limit: RateLimit, now_ms: int, actor: str | None, before: RateLimit | None = None) -> RateLimit:
    """``limit`` as the API stores it: created stamps kept from ``before``, updated now."""
    if before is None:
        return replace(limit, source="api", created_at_ms=now_ms, updated_at_ms=now_ms, created_by=actor)
    return replace(limit, source="api", created_at_ms=before.created_at_ms, created_by=before.created_by,
                   updated_at_ms=now_ms)


def check_unique(limits: Iterable[RateLimit], new: RateLimit) -> str | None:
    """Why ``new`` cannot join ``limits`` (same id is an update, not a clash), or None."""
    for limit in limits:
        if limit.id != new.id and (limit.scope_type, limit.scope_id) == (new.scope_type, new.scope_id):
            return (f"{new.scope_type} {new.scope_id!r} already has rate limit {limit.id!r}; "
                    "a scope has one limit (update that one)")
    return None


def limit_body(limit: RateLimit) -> str:
    """A limit as stored (the API's JSON plus the stamps JSON does not read back)."""
    data = {k: v for k, v in limit_to_json(limit).items() if k not in _JSON_READ_ONLY}
    data["_stamps"] = [limit.created_at_ms, limit.updated_at_ms, limit.created_by]
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def limit_from_body(body: str | bytes) -> RateLimit:
    data = json.loads(body)
    created, updated, created_by = data.pop("_stamps", [None, None, None])
    return replace(limit_from_json(data, stored=True), created_at_ms=created, updated_at_ms=updated,
                   created_by=created_by)


def scope_name(limit: RateLimit) -> str:
    """The scope a limit holds, as one string (a scope has at most one limit)."""
    return f"{limit.scope_type}\x1f{limit.scope_id}"
