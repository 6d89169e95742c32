"""Read-only scoped tokens for the ``/api/v1`` integration API (agents, dashboards, chaining proxies).

A token looks like ``cpro-`` + 43 URL-safe characters (256 bits); only its SHA-256 is stored and it
is shown once, at creation, like client keys (``costproxy.identity.principal``).  A token is always
read-only: it may call every ``GET`` route and the side-effect-free ``POST`` routes (constraint
checks, model selection and estimates), never a write — except feedback on a request it sees
(``POST /api/v1/feedback``: an annotation, changing no configuration).  ``scopes`` optionally narrows
it to some budget scopes (``(scope type, scope id)``): a scoped token sees only those budgets (and
their events and requests) and may call only the budget, event, model-selection and feedback routes
(selection only for principals inside its scopes: ``costproxy.http.selection_api``).

The middleware asks ``TokenRing.role`` for the admin role of a presented token: it answers
``read-only:<token id>`` (``costproxy.http.keys_api.require_admin`` treats anything but ``admin``
as read-only), so handlers can find the token again with ``TokenRing.by_role``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import field
from typing import Any

from costproxy.errors import InvalidRequest
from costproxy.records import frozen
from costproxy.wire import (
    JSON_SCOPE,
    MAX_TIMESTAMP_MS,
    SCOPE_FROM_JSON,
    TimeInvalid,
    canonical,
    instant_ms,
    iso,
    spellings,
)

TOKEN_PREFIX = "cpro-"
ROLE_PREFIX = "read-only:"
# all a scope-limited token may call (the analytics calls filter the ledger to its scopes)
SCOPED_PATHS = ("/api/v1/budgets", "/api/v1/models/", "/api/v1/events", "/api/v1/analytics/overview",
                "/api/v1/analytics/spend", "/api/v1/feedback")
READ_ONLY_POSTS = ("/check-constraints", "/api/v1/models/select", "/api/v1/models/estimate", "/api/v1/feedback")


class TokenInvalid(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        self.detail = message
        super().__init__(f"{field_name}: {message}")


@frozen
class ScopedToken:
    id: str
    token_hash: str = field(repr=False)
    prefix: str = ""  # first characters, safe to show
    name: str = ""
    scopes: frozenset[tuple[str, str]] = frozenset()  # empty: every budget
    created_at_ms: int = 0
    created_by: str | None = None
    expires_at_ms: int | None = None
    revoked_at_ms: int | None = None
    revoked_by: str | None = None

    def active(self, now_ms: int) -> bool:
        return self.revoked_at_ms is None and (self.expires_at_ms is None or now_ms < self.expires_at_ms)

    @property
    def role(self) -> str:
        return ROLE_PREFIX + self.id

    def sees(self, scope_type: str, scope_id: str) -> bool:
        return not self.scopes or (scope_type, scope_id) in self.scopes

    def may_call(self, method: str, path: str) -> bool:
        """Read-only everywhere; a scope-limited token only on budget and model routes."""
        if method not in ("GET", "HEAD") and not path.endswith(READ_ONLY_POSTS):
            return False
        return not self.scopes or path.startswith(SCOPED_PATHS)

    def to_json(self, now_ms: int) -> dict[str, Any]:
        return {"id": self.id, "prefix": self.prefix, "name": self.name, "role": "read-only",
                "scopes": [{"scopeType": JSON_SCOPE[t], "scopeId": i} for t, i in sorted(self.scopes)],
                "createdAt": iso(self.created_at_ms), "createdBy": self.created_by,
                "expiresAt": iso(self.expires_at_ms), "revokedAt": iso(self.revoked_at_ms),
                "revokedBy": self.revoked_by, "active": self.active(now_ms)}

    def stored(self) -> dict[str, Any]:
        return {"id": self.id, "hash": self.token_hash, "prefix": self.prefix, "name": self.name,
                "scopes": sorted([t, i] for t, i in self.scopes), "createdAt": self.created_at_ms,
                "createdBy": self.created_by, "expiresAt": self.expires_at_ms, "revokedAt": self.revoked_at_ms,
                "revokedBy": self.revoked_by}


def token_from_stored(data: dict[str, Any]) -> ScopedToken:
    return ScopedToken(id=data["id"], token_hash=data["hash"], prefix=data["prefix"], name=data["name"],
                       scopes=frozenset((t, i) for t, i in data["scopes"]), created_at_ms=data["createdAt"],
                       created_by=data["createdBy"], expires_at_ms=data["expiresAt"],
                       revoked_at_ms=data["revokedAt"], revoked_by=data["revokedBy"])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue(data: Any, *, now_ms: int, actor: str | None) -> tuple[str, ScopedToken]:
    """A new token from ``{name?, scopes?: [{scopeType, scopeId}], expiresAt? | expiresInSeconds?}``;
    ``expiresAt`` is any time ``costproxy.wire.instant_ms`` reads (ISO 8601, unix s or ms)."""
    if not isinstance(data, dict):
        raise TokenInvalid("body", "must be a JSON object")
    names = ("name", "scopes", "expiresAt", "expiresInSeconds")
    try:
        return _issue(canonical(data, names), now_ms, actor)
    except InvalidRequest as exc:
        raise TokenInvalid(exc.param or "body", exc.message.partition(": ")[2]) from None
    except TokenInvalid as exc:  # name the key as the client spelled it
        raise TokenInvalid(spellings(data, names).get(exc.field, exc.field), exc.detail) from None


def _issue(data: dict[str, Any], now_ms: int, actor: str | None) -> tuple[str, ScopedToken]:
    name = data.get("name", "")
    if not isinstance(name, str):
        raise TokenInvalid("name", "must be a string")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ScopedToken(id="tok_" + secrets.token_hex(8), token_hash=hash_token(secret), prefix=secret[:9],
                        name=name, scopes=_scopes(data.get("scopes", [])), created_at_ms=now_ms, created_by=actor,
                        expires_at_ms=_expiry(data, now_ms))
    return secret, token


def _scopes(value: Any) -> frozenset[tuple[str, str]]:
    if not isinstance(value, list):
        raise TokenInvalid("scopes", "must be a list of {scopeType, scopeId}")
    found = set()
    for raw in value:
        item = canonical(raw, ("scopeType", "scopeId"), strict=False) if isinstance(raw, dict) else raw
        if not isinstance(item, dict) or set(item) != {"scopeType", "scopeId"}:
            raise TokenInvalid("scopes", "each scope is {scopeType, scopeId}")
        kind = SCOPE_FROM_JSON.get(str(item["scopeType"]))
        if kind is None or not isinstance(item["scopeId"], str) or not item["scopeId"].strip():
            raise TokenInvalid("scopes", f"bad scope {item!r}")
        found.add((kind, item["scopeId"]))
    return frozenset(found)


def _expiry(data: dict[str, Any], now_ms: int) -> int | None:
    if data.get("expiresInSeconds") is not None:
        seconds = data["expiresInSeconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise TokenInvalid("expiresInSeconds", "must be a positive integer")
        if now_ms + seconds * 1000 > MAX_TIMESTAMP_MS:  # a time nobody can write down (or store)
            raise TokenInvalid("expiresInSeconds", "must end before 9999-12-31T23:59:59Z")
        return now_ms + seconds * 1000
    expires = data.get("expiresAt")
    if expires is None:
        return None
    try:
        expires_ms = instant_ms(expires)
    except TimeInvalid as exc:
        raise TokenInvalid("expiresAt", str(exc)) from None
    if expires_ms <= now_ms:
        raise TokenInvalid("expiresAt", "is in the past")
    return expires_ms


class TokenRing:
    """Tokens by hash, in memory: the middleware's lookup never waits for a store."""

    def __init__(self, tokens: Iterable[ScopedToken] = ()) -> None:
        self._by_hash: dict[str, ScopedToken] = {}
        self._by_id: dict[str, ScopedToken] = {}
        self.replace(tokens)

    def replace(self, tokens: Iterable[ScopedToken]) -> None:
        listed = list(tokens)
        self._by_hash = {t.token_hash: t for t in listed}
        self._by_id = {t.id: t for t in listed}

    def add(self, token: ScopedToken) -> None:
        self._by_hash[token.token_hash] = token
        self._by_id[token.id] = token

    def lookup(self, presented: str, now_ms: int) -> ScopedToken | None:
        if not presented.startswith(TOKEN_PREFIX):
            return None
        digest = hash_token(presented)
        token = self._by_hash.get(digest)
        if token is None or not hmac.compare_digest(token.token_hash, digest) or not token.active(now_ms):
            return None
        return token

    def get(self, token_id: str) -> ScopedToken | None:
        return self._by_id.get(token_id)

    def by_role(self, role: str | None) -> ScopedToken | None:
        if role is None or not role.startswith(ROLE_PREFIX):
            return None
        return self._by_id.get(role[len(ROLE_PREFIX):])

    def all(self) -> list[ScopedToken]:
        return sorted(self._by_id.values(), key=lambda t: t.created_at_ms)
