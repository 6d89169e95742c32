"""``/api/v1`` routes: client keys, ledger queries.  Other subsystems add their own routes here.

``POST   /api/v1/keys``          ``{name?, userId?, teamId?, organizationId?, projectId?, expiresAt? |
                                 expiresInSeconds?}`` (also ``user``, ``team``, ``org``, ``project``)
                                 → the key, shown once
``GET    /api/v1/keys``          every key, with its last use and request count from the ledger
``DELETE /api/v1/keys/{id}``     revoke
``GET    /api/v1/usage``         the latest ledger entries; ``/usage/summary`` spend grouped;
``GET    /api/v1/requests/{id}`` the ledger entries of one request
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from aiohttp import web

from costproxy.budgets.codec import usd
from costproxy.errors import Forbidden, InvalidJSON, InvalidRequest, NotFound
from costproxy.http.bodies import read_body
from costproxy.http.state import ADMIN_ROLE, KEY_STORE, KEYRING, LEDGER
from costproxy.identity.key_store import KeyStore, SqliteKeyStore
from costproxy.identity.principal import KeyRecord, hash_key, new_key, new_key_id
from costproxy.ledger.analytics import key_activity
from costproxy.ledger.entry import LedgerEntry
from costproxy.ledger.reader import SPEND_COLUMNS as GROUP_COLUMNS
from costproxy.ledger.reader import spend_by
from costproxy.money import format_usd
from costproxy.store.sqlite import SqliteStore
from costproxy.wire import (
    canonical,
    iso,
    iso_seconds,
    optional_name,
    query_value,
    spellings,
    time_field,
    with_deprecated,
)

KEY_FIELDS = ("name", "user", "team", "org", "project")
# JSON name -> the key store's field; the store's names (``org``…) are accepted as aliases
KEY_JSON = {"name": "name", "userId": "user", "teamId": "team", "organizationId": "org", "projectId": "project"}
KEY_ALIASES = {"user": "userId", "team": "teamId", "org": "organizationId", "organization": "organizationId",
               "project": "projectId"}
MAX_FIELD_CHARS = 256
MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
GROUP_ALIASES = {"organization": "org"}


def require_admin(request: web.Request) -> None:
    if request.get(ADMIN_ROLE) != "admin":
        raise Forbidden("this endpoint needs the admin token; the presented token is read-only")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: no NaN or Infinity, and no lone surrogate in a string — Python's json
    accepts all three; a lone surrogate then failed as a 500 where it was stored, or put a usage
    record's ledger entry in quarantine (the model endpoints' orjson refuses it too).  Numbers too
    big for a float still parse (as infinity), so the field's own check names it."""
    value = json.loads(text, parse_constant=_no_constant)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _utf8(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _utf8(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff without its pair)") from None


async def json_body(request: web.Request) -> dict[str, Any]:
    await read_body(request)
    try:
        body = await request.json(loads=_strict_json)
    except ValueError as exc:  # includes bodies that are not UTF-8
        raise InvalidJSON(f"request body is not valid JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise InvalidJSON("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidJSON("request body must be a JSON object")
    return body


async def issue_key(store: KeyStore | SqliteStore, fields: dict[str, Any], now: float) -> tuple[str, KeyRecord]:
    """Create a client key; the secret is returned once and only its hash is stored.  A bare
    ``SqliteStore`` (tools and tests holding the file) means its ``api_keys`` table."""
    for name in KEY_FIELDS:
        optional_name(fields.get(name), name, MAX_FIELD_CHARS)
    expires = fields.get("expiresAt")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))
                                or not 0 < expires <= MAX_UNIX_SECONDS):
        raise InvalidRequest("'expiresAt' must be a unix timestamp in seconds (before the year 10000)",
                             param="expiresAt")
    secret = new_key()
    record = KeyRecord(id=new_key_id(), key_hash=hash_key(secret), prefix=secret[:7],
                       name=fields.get("name") or "", user=fields.get("user"), team=fields.get("team"),
                       org=fields.get("org"), project=fields.get("project"), created_at=now,
                       expires_at=float(expires) if expires is not None else None)
    await (SqliteKeyStore(store) if isinstance(store, SqliteStore) else store).insert(record)
    return secret, record


def key_json(record: KeyRecord, now: float) -> dict[str, Any]:
    """A client key in the API's names (``user``, ``team``, ``org``, ``project``: deprecated)."""
    expired = record.expires_at is not None and record.expires_at <= now
    return {"id": record.id, "prefix": record.prefix, "name": record.name, "userId": record.user,
            "teamId": record.team, "organizationId": record.org, "projectId": record.project,
            "createdAt": iso_seconds(record.created_at), "expiresAt": iso_seconds(record.expires_at),
            "revokedAt": iso_seconds(record.revoked_at), "active": record.active and not expired,
            "user": record.user, "team": record.team, "org": record.org, "project": record.project}


def key_fields(body: dict[str, Any], now: float) -> dict[str, Any]:
    """A ``POST /api/v1/keys`` body as ``issue_key`` fields; ``expiresAt`` is any time
    ``costproxy.wire`` accepts, ``expiresInSeconds`` a positive whole number."""
    names = (*KEY_JSON, "expiresAt", "expiresInSeconds")
    data, sent = canonical(body, names, KEY_ALIASES), spellings(body, names, KEY_ALIASES)
    fields: dict[str, Any] = {KEY_JSON[name]: data[name] for name in KEY_JSON if name in data}
    for name in KEY_JSON:
        optional_name(data.get(name), sent.get(name, name), MAX_FIELD_CHARS)
    seconds = data.get("expiresInSeconds")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 < seconds <= MAX_UNIX_SECONDS - now:
            raise InvalidRequest(f"'{sent['expiresInSeconds']}' must be a positive whole number that ends before "
                                 "9999-12-31T23:59:59Z", param=sent["expiresInSeconds"])
        fields["expiresAt"] = now + seconds
    elif data.get("expiresAt") is not None:
        fields["expiresAt"] = time_field(data["expiresAt"], sent["expiresAt"]) / 1000
        if fields["expiresAt"] <= now:
            raise InvalidRequest(f"'{sent['expiresAt']}' is in the past", param=sent["expiresAt"])
    return fields


async def create_key(request: web.Request) -> web.Response:
    require_admin(request)
    now = time.time()
    secret, record = await issue_key(request.app[KEY_STORE], key_fields(await json_body(request), now), now)
    request.app[KEYRING].add(record)
    return web.json_response({**key_json(record, now), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """Every key with its last use and request count, derived from the ledger (nothing is written
    per request for it; in Redis mode it is what this replica's ledger mirror holds)."""
    activity = await key_activity(request.app[LEDGER])
    data, now = [], time.time()
    for record in request.app[KEYRING].all():
        last, count = activity.get(record.id, (None, 0))
        data.append({**key_json(record, now), "lastUsedAt": iso(last), "requests": count})
    return web.json_response({"data": data})


async def revoke_key(request: web.Request) -> web.Response:
    require_admin(request)
    key_id = request.match_info["key_id"]
    keys, ring = request.app[KEY_STORE], request.app[KEYRING]
    if ring.get(key_id) is None:
        ring.replace(await keys.load_all())  # created by another replica since the last refresh?
        if ring.get(key_id) is None:
            raise NotFound(f"no key with id {key_id}")
    await keys.revoke(key_id, time.time())
    ring.replace(await keys.load_all())
    record = ring.get(key_id)
    return web.json_response(key_json(record, time.time()) if record else {"id": key_id})


def int_param(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    """A whole-number query parameter within ``[minimum, maximum]``, else 400 naming it."""
    raw = request.query.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 20:
        raise InvalidRequest(f"'{name}' must be a whole number from {minimum} to {maximum}, got {raw[:40]!r}",
                             param=name)
    value = int(text)
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"'{name}' must be from {minimum} to {maximum}, got {value}", param=name)
    return value


MAX_HOURS = 24 * 366 * 10  # ten years of ledger


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    """A ledger entry in the API's names; the snake_case names of earlier versions stay, deprecated."""
    return with_deprecated({
        "requestId": entry.request_id, "timestamp": iso(entry.ts_ms), "endpoint": entry.endpoint,
        "status": entry.status, "httpStatus": entry.http_status, "keyId": entry.key_id, "userId": entry.user,
        "teamId": entry.team, "organizationId": entry.org, "projectId": entry.project,
        "requestedModel": entry.requested_model, "servedModel": entry.served_model, "provider": entry.provider,
        "decisionId": entry.decision_id, "promptTokens": entry.prompt_tokens,
        "completionTokens": entry.completion_tokens, "cachedTokens": entry.cached_tokens,
        "cacheWriteTokens": entry.cache_write_tokens, "cacheWrite1hTokens": entry.cache_write_1h_tokens,
        "cost": usd(entry.cost_nanos), "baseline": usd(entry.baseline_nanos), "currency": "USD",
        "usageReported": entry.usage_reported, "stream": entry.stream, "latencyMs": entry.latency_ms,
        "errorCode": entry.error_code, "taskType": entry.task_type, "correlationId": entry.correlation_id,
        "tenant": entry.tenant, "source": entry.source, "metadata": entry.metadata,
    }, entry.public())


async def recent_usage(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, 1, 1000)
    entries = await request.app[LEDGER].recent_entries(limit)
    return web.json_response({"data": [entry_json(e) for e in entries]})


async def request_entries(request: web.Request) -> web.Response:
    entries = await request.app[LEDGER].entries_for(request.match_info["request_id"])
    if not entries:
        raise NotFound(f"no ledger entry for request {request.match_info['request_id']}")
    return web.json_response({"data": [entry_json(e) for e in entries]})


async def usage_summary(request: web.Request) -> web.Response:
    raw = query_value(request.query, "groupBy") or "model"
    group = GROUP_ALIASES.get(raw, raw)
    if group not in GROUP_COLUMNS:
        raise InvalidRequest(f"'groupBy' must be one of {', '.join(GROUP_COLUMNS)}, organization", param="groupBy")
    since_ms = int((time.time() - _hours(request) * 3600) * 1000)
    rows = await spend_by(request.app[LEDGER], group, since_ms)
    data = []
    for r in rows:
        cost, base = r["cost"] or 0, r["base"] or 0
        data.append({"key": r["k"], "requests": r["n"], "amount": usd(cost), "baseline": usd(base),
                     "saving": usd(base - cost), "promptTokens": r["tin"] or 0, "completionTokens": r["tout"] or 0,
                     group: r["k"], "costUsd": format_usd(cost), "baselineUsd": format_usd(base),
                     "savingUsd": format_usd(base - cost), "cacheHits": r["hits"] or 0,
                     "cacheSaving": usd(r["cache_saved"] or 0)})
    return web.json_response({"groupBy": group, "currency": "USD", "data": data})


def _hours(request: web.Request) -> float:
    """``hours``: a finite number from 0 to ``MAX_HOURS`` (no inf, NaN, negative or 1e300)."""
    raw = request.query.get("hours", "24")
    try:
        hours = float(raw)
    except ValueError:
        hours = math.nan
    if not (math.isfinite(hours) and 0 <= hours <= MAX_HOURS):
        raise InvalidRequest(f"'hours' must be a number from 0 to {MAX_HOURS}, got {raw[:40]!r}", param="hours")
    return hours


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/keys", create_key)
    app.router.add_get("/api/v1/keys", list_keys)
    app.router.add_delete("/api/v1/keys/{key_id}", revoke_key)
    app.router.add_get("/api/v1/usage", recent_usage)
    app.router.add_get("/api/v1/usage/summary", usage_summary)
    app.router.add_get("/api/v1/requests/{request_id}", request_entries)
