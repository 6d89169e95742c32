"""The JSON vocabulary of the ``/api/v1`` integration API: one naming convention for every handler.

- **Keys are camelCase**, in the RelayCore/Auterity names (DESIGN §3.6).  On input, the snake_case
  spelling of every key is accepted as an alias (``scope_id`` for ``scopeId``), and so are the
  names of the YAML configuration where a body mirrors it (``limit_usd`` for ``amount``): each
  body names its alias table (``canonical``).  A body that gives one key under two spellings is a
  400 naming both; a key that is neither a name nor an alias is a 400 too — never ignored.
- **Times are ISO 8601 in UTC** with milliseconds and ``Z`` (``2026-01-31T12:00:00.000Z``) in
  every response.  On input (bodies and query parameters) a time is an ISO 8601 date-time (any
  offset; without one it is UTC), a date (midnight UTC), or a unix time as a number: seconds
  below ``10**11``, milliseconds from there (``10**11`` seconds is the year 5138, ``10**11``
  milliseconds is 1973, so the two never overlap for times between 1973 and 5138).
- **Scope types** are ``organization | team | project | user | key``; ``org`` is accepted on input.

Pure functions, no I/O: the HTTP handlers, the budget codec, webhooks and tokens all use them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from costproxy.errors import InvalidRequest

JSON_SCOPE = {"org": "organization", "team": "team", "project": "project", "user": "user", "key": "key"}
SCOPE_FROM_JSON = {**{v: k for k, v in JSON_SCOPE.items()}, "org": "org"}
SCOPE_NAMES = ", ".join(JSON_SCOPE.values())

MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MS_THRESHOLD = 10**11  # a unix time below this is in seconds, from it in milliseconds
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


# --- times -------------------------------------------------------------------------------------


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC (``…T…:….mmmZ``); None and 0 (unknown) give None."""
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_seconds(seconds: float | None) -> str | None:
    """Unix seconds (the key store's unit) as ISO 8601 UTC."""
    return None if seconds is None else iso(round(seconds * 1000))


class TimeInvalid(ValueError):
    """A value is not a time this API accepts; the message says what is."""


TIME_RULE = "an ISO 8601 date-time such as 2026-01-31T12:00:00Z, or a unix time in seconds or milliseconds"


def instant_ms(value: Any) -> int:
    """A time from a body or a query (see the module docstring) as epoch milliseconds."""
    if isinstance(value, bool) or value is None:
        raise TimeInvalid(f"must be {TIME_RULE}")
    if isinstance(value, (int, float)):
        return _from_number(value)
    if not isinstance(value, str) or not value.strip():
        raise TimeInvalid(f"must be {TIME_RULE}")
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        if len(text.lstrip("-").partition(".")[0].lstrip("0")) > 15:  # past 9999 as ms; int() and float()
            raise TimeInvalid("must lie between 1970 and 9999")  # of 300+ digits fail (ValueError, inf)
        return _from_number(float(text) if "." in text else int(text))
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = int(moment.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise TimeInvalid(f"must be {TIME_RULE}") from None
    return _bounded(ms)


def _from_number(number: float) -> int:
    # an int is compared as it is: turned into a float (math.isfinite, * 1000) one of 309 digits or
    # more overflows; a JSON body may hold one
    if (isinstance(number, float) and not math.isfinite(number)) or number < 0:
        raise TimeInvalid(f"must be {TIME_RULE} (a number must be finite and not negative)")
    if number > MAX_TIMESTAMP_MS:
        raise TimeInvalid("must lie between 1970 and 9999")
    ms = number * 1000 if number < MS_THRESHOLD else number
    if ms > MAX_TIMESTAMP_MS:
        raise TimeInvalid("must lie between 1970 and 9999")
    return int(ms)


def _bounded(ms: int) -> int:
    if not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise TimeInvalid("must lie between 1970 and 9999")
    return ms


def time_field(value: Any, param: str) -> int:
    """``instant_ms`` for a body or query field: a bad value is a 400 naming ``param``."""
    try:
        return instant_ms(value)
    except TimeInvalid as exc:
        raise InvalidRequest(f"'{param}' {exc} (got {str(value)[:60]!r})", param=param) from None


# --- URLs --------------------------------------------------------------------------------------

_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*\.?")


def http_url_problem(url: str) -> str | None:
    """Why ``url`` is not an absolute http(s) URL the proxy's HTTP client can call (a webhook, a
    provider's ``base_url``), or None: a scheme of http or https, a host name or IP address (IPv6 in
    brackets), an optional port from 1 to 65535, and no space or control character anywhere."""
    from yarl import URL  # aiohttp's own URL type: what it accepts is what delivery will use

    if re.search(r"[\x00-\x20\x7f]", url):
        return "must not contain spaces or control characters (percent-encode them)"
    if not re.match(r"(?i)https?://", url):
        return "must be an http:// or https:// URL"
    try:
        parsed = URL(url)
        host, port = parsed.raw_host, parsed.explicit_port
    except (ValueError, TypeError) as exc:
        return f"is not a valid URL ({exc})"
    if not host:
        return "must name a host"
    if ":" not in host and not _HOST_NAME.fullmatch(host):  # an IPv6 address parsed already
        return f"has an invalid host name {host[:60]!r}"
    if port is not None and not 0 < port <= 65535:
        return "has a port outside 1-65535"
    return None


# --- names -------------------------------------------------------------------------------------


def snake(name: str) -> str:
    """``scopeType`` -> ``scope_type`` (the alias every camelCase key accepts on input)."""
    return _CAMEL_HUMP.sub(r"_\1", name).lower()


def canonical(body: Mapping[str, Any], names: Iterable[str], aliases: Mapping[str, str] | None = None,
              *, where: str = "", strict: bool = True) -> dict[str, Any]:
    """``body`` with every alias renamed to its canonical (camelCase) key.

    ``names``: the canonical keys; each one's snake_case spelling is an alias.  ``aliases``: more
    alias -> canonical pairs (e.g. the YAML names).  Giving a key twice (under two spellings) is a
    400 naming both.  ``strict``: any other key is a 400 naming it; else it is kept as given.
    ``where``: the JSON path of ``body`` for error messages (``alerts[0]``).
    """
    known = tuple(names)
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in body.items():
        name = canonical_name(key, known, aliases)
        if name in spelled:
            raise InvalidRequest(f"{_path(where, name)}: given twice, as '{spelled[name]}' and as '{key}'",
                                 param=_path(where, name))
        if strict and name not in known:
            raise InvalidRequest(f"{_path(where, key)}: unknown field; known: {', '.join(known)}",
                                 param=_path(where, key))
        spelled[name] = key
        out[name] = value
    return out


def canonical_name(key: str, names: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> str:
    """The canonical key ``key`` spells (itself when it is neither a name nor an alias)."""
    if key in names:
        return key
    if aliases and key in aliases:
        return aliases[key]
    return next((n for n in names if snake(n) == key), key)


def spellings(body: Mapping[str, Any], names: Iterable[str], aliases: Mapping[str, str] | None = None
              ) -> dict[str, str]:
    """Canonical key -> the key as the client spelled it, so errors name what was sent."""
    known = tuple(names)
    return {canonical_name(key, known, aliases): key for key in body}


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def query_value(query: Mapping[str, str], name: str) -> str | None:
    """A query parameter by its camelCase name or its snake_case alias (``group_by``)."""
    if name in query:
        return query[name]
    return query.get(snake(name))


def optional_name(value: Any, param: str, limit: int = 256) -> str | None:
    """An optional identifier or name field: ``None``, or a non-empty string of at most ``limit``
    characters; else a 400 naming ``param``."""
    if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > limit):
        raise InvalidRequest(f"'{param}' must be a non-empty string of at most {limit} characters", param=param)
    return value


def scope_kind(raw: Any, param: str = "scopeType") -> str:
    """A JSON scope type (``organization``, or ``org``) as the internal one; else a 400."""
    kind = SCOPE_FROM_JSON.get(str(raw)) if isinstance(raw, str) else None
    if kind is None:
        raise InvalidRequest(f"'{param}' must be one of {SCOPE_NAMES} (got {str(raw)[:40]!r})", param=param)
    return kind


def with_deprecated(current: dict[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` plus the keys of ``old`` it does not have: the deprecated names a response
    keeps for clients that already read them (listed in the README and marked in the OpenAPI)."""
    return {**current, **{k: v for k, v in old.items() if k not in current}}
