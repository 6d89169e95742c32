"""Webhook subscriptions, signatures, message formats and the retry schedule (pure, no I/O).

A ``Subscription`` says where events go (``url``), which ones (``events``; empty = all), for which
budgets (``budget_ids`` / ``scopes``; empty = all) and in which ``format``: ``json`` posts the
event envelope of DESIGN §3.6 ``{id, type, source, timestamp, correlationId, payload}``;
``slack`` posts a Slack-compatible ``{text, blocks}`` message (incoming webhooks, Mattermost,
Rocket.Chat and Teams' Slack adapter all accept it).

Every POST is signed with the subscriber's secret, like Stripe's scheme::

    X-Costproxy-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

Receivers recompute the HMAC over the raw body, compare in constant time and refuse timestamps
older than a tolerance (5 minutes in ``verify``) to stop replays.  Each attempt is signed afresh.

Retries: connection errors, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff
and full jitter (``backoff_delay``), honouring ``Retry-After`` up to the cap; any other status is
final.  A ``Delivery`` records every attempt's outcome for the history API.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import secrets
from dataclasses import field, replace
from typing import Any

from costproxy.errors import InvalidRequest
from costproxy.records import frozen
from costproxy.wire import JSON_SCOPE, SCOPE_FROM_JSON, canonical, http_url_problem, iso, spellings

EVENT_TYPES = ("budget.threshold_crossed", "budget.exhausted", "budget.status_changed", "request.blocked",
               "model.switched", "budget.overrun", "webhook.test")
FORMATS = ("json", "slack")
DELIVERY_STATES = ("pending", "delivered", "failed")
SIGNATURE_HEADER = "X-Costproxy-Signature"
SECRET_PREFIX = "whsec_"
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_TOLERANCE_S = 300
_SIGNATURE = re.compile(r"^t=(\d+),v1=([0-9a-f]{64})$")


class WebhookInvalid(ValueError):
    """A subscription field has a bad value; ``field`` is the JSON key."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        self.detail = message
        super().__init__(f"{field_name}: {message}")

    def spelled(self, sent: dict[str, str]) -> WebhookInvalid:
        """The same error naming the key as the client spelled it (an alias)."""
        return WebhookInvalid(sent.get(self.field, self.field), self.detail)


@frozen
class Subscription:
    id: str
    url: str
    secret: str = field(repr=False)
    events: frozenset[str] = frozenset()  # empty: every event type
    format: str = "json"
    budget_ids: frozenset[str] = frozenset()  # empty: every budget
    scopes: frozenset[tuple[str, str]] = frozenset()  # (scope type, scope id); empty: every scope
    enabled: bool = True
    description: str = ""
    created_at_ms: int = 0
    updated_at_ms: int = 0
    created_by: str | None = None

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^\s/]+", self.url):
            raise WebhookInvalid("url", f"must be an http(s) URL, got {self.url!r}")
        unknown = sorted(self.events - set(EVENT_TYPES))
        if unknown:
            raise WebhookInvalid("events", f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
        if self.format not in FORMATS:
            raise WebhookInvalid("format", f"must be one of {', '.join(FORMATS)}")
        if len(self.secret) < 16:
            raise WebhookInvalid("secret", "must be at least 16 characters")

    def wants(self, event_type: str, payload: dict[str, Any]) -> bool:
        """Does this subscription take an event of ``event_type`` about ``payload``'s budget?"""
        if not self.enabled or (self.events and event_type not in self.events):
            return False
        if event_type == "webhook.test":
            return True
        if self.budget_ids and payload.get("budgetId") not in self.budget_ids:
            return False
        scope = (SCOPE_FROM_JSON.get(str(payload.get("scopeType"))), payload.get("scopeId"))
        if self.scopes and scope not in self.scopes:
            return False
        return True

    def to_json(self, *, reveal_secret: bool = False) -> dict[str, Any]:
        return {
            "id": self.id, "url": self.url, "events": sorted(self.events), "format": self.format,
            "budgetIds": sorted(self.budget_ids),
            "scopes": [{"scopeType": JSON_SCOPE[t], "scopeId": i} for t, i in sorted(self.scopes)],
            "enabled": self.enabled, "description": self.description,
            "secret": self.secret if reveal_secret else mask(self.secret),
            "createdAt": iso(self.created_at_ms), "updatedAt": iso(self.updated_at_ms), "createdBy": self.created_by,
        }

    def stored(self) -> dict[str, Any]:
        return {**self.to_json(reveal_secret=True), "createdAt": self.created_at_ms, "updatedAt": self.updated_at_ms}


def subscription_from_stored(data: dict[str, Any]) -> Subscription:
    return Subscription(
        id=data["id"], url=data["url"], secret=data["secret"], events=frozenset(data["events"]),
        format=data["format"], budget_ids=frozenset(data["budgetIds"]),
        scopes=frozenset((SCOPE_FROM_JSON[s["scopeType"]], s["scopeId"]) for s in data["scopes"]),
        enabled=data["enabled"],
        description=data["description"], created_at_ms=data["createdAt"], updated_at_ms=data["updatedAt"],
        created_by=data["createdBy"])


_EDITABLE = {"url", "secret", "events", "format", "budgetIds", "scopes", "enabled", "description"}


def subscription_from_json(data: Any, *, sub_id: str, now_ms: int, actor: str | None,
                           base: Subscription | None = None) -> Subscription:
    """A subscription from an API body; with ``base`` the body is a partial update (PATCH)."""
    if not isinstance(data, dict):
        raise WebhookInvalid("body", "must be a JSON object")
    names = (*sorted(_EDITABLE), "id")
    try:
        return _subscription(canonical(data, names), sub_id, now_ms, actor, base)
    except InvalidRequest as exc:
        raise WebhookInvalid(exc.param or "body", exc.message.partition(": ")[2]) from None
    except WebhookInvalid as exc:
        raise exc.spelled(spellings(data, names)) from None


def _subscription(data: dict[str, Any], sub_id: str, now_ms: int, actor: str | None,
                  base: Subscription | None) -> Subscription:
    values: dict[str, Any] = {} if base is None else {"url": base.url, "secret": base.secret, "events": base.events,
                                                      "format": base.format, "budget_ids": base.budget_ids,
                                                      "scopes": base.scopes, "enabled": base.enabled,
                                                      "description": base.description}
    if base is None and "url" not in data:
        raise WebhookInvalid("url", "is required")
    for key, name in (("url", "url"), ("secret", "secret"), ("format", "format"), ("description", "description")):
        if key in data:
            values[name] = _string(data[key], key, allow_empty=key == "description")
    if "url" in data:  # checked where a URL is given, not on load: one stored before stays loadable
        problem = http_url_problem(values["url"])
        if problem is not None:
            raise WebhookInvalid("url", problem)
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            raise WebhookInvalid("enabled", "must be true or false")
        values["enabled"] = data["enabled"]
    if "events" in data:
        values["events"] = frozenset(_strings(data["events"], "events"))
    if "budgetIds" in data:
        values["budget_ids"] = frozenset(_strings(data["budgetIds"], "budgetIds"))
    if "scopes" in data:
        values["scopes"] = _scopes(data["scopes"])
    values.setdefault("secret", new_secret())
    created = base.created_at_ms if base is not None else now_ms
    return Subscription(id=sub_id, created_at_ms=created, updated_at_ms=now_ms,
                        created_by=base.created_by if base is not None else actor, **values)


def _string(value: Any, key: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise WebhookInvalid(key, "must be a non-empty string")
    return value


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise WebhookInvalid(key, "must be a list of strings")
    return [_string(v, key) for v in value]


def _scopes(value: Any) -> frozenset[tuple[str, str]]:
    if not isinstance(value, list):
        raise WebhookInvalid("scopes", "must be a list of {scopeType, scopeId}")
    found: set[tuple[str, str]] = set()
    for raw in value:
        item = canonical(raw, ("scopeType", "scopeId"), strict=False) if isinstance(raw, dict) else raw
        if not isinstance(item, dict) or set(item) != {"scopeType", "scopeId"}:
            raise WebhookInvalid("scopes", "each scope is {scopeType, scopeId}")
        kind = SCOPE_FROM_JSON.get(str(item["scopeType"]))
        if kind is None:
            raise WebhookInvalid("scopes", f"unknown scopeType {item['scopeType']!r}")
        found.add((kind, _string(item["scopeId"], "scopes")))
    return frozenset(found)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def mask(secret: str) -> str:
    return secret[: len(SECRET_PREFIX) + 4] + "…"


def sortable_id(prefix: str, ms: int, seq: int) -> str:
    """An id that sorts by time, then by issue order within a process (``seq``), then randomly."""
    return f"{prefix}{ms:012x}{seq % 0xFFFFFF:06x}{secrets.token_hex(6)}"


# --- signatures ----------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Costproxy-Signature`` header value for ``body`` sent at ``timestamp`` (unix s)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: int = DEFAULT_TOLERANCE_S) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    match = _SIGNATURE.match(header.strip())
    if match is None:
        return False
    timestamp = int(match.group(1))
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header.strip())


# --- retry schedule ------------------------------------------------------------------------


def retryable(status: int | None) -> bool:
    """``None`` is a connection error or a timeout."""
    return status is None or status in RETRYABLE_STATUSES


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None,
                  retry_after_s: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter over an
    exponentially growing window (AWS's "full jitter"), never under a quarter of the window so
    retries keep spreading out; ``Retry-After`` wins when given, up to ``cap_s``."""
    if retry_after_s is not None and retry_after_s >= 0:
        return min(cap_s, retry_after_s)
    window = min(cap_s, base_s * (1 << min(62, max(0, attempt - 1))))
    draw = rng.random() if rng is not None else random.random()
    return window * (0.25 + 0.75 * draw)


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own schedule


# --- deliveries ----------------------------------------------------------------------------


@frozen
class Attempt:
    at_ms: int
    status_code: int | None
    error: str | None
    duration_ms: int


@frozen
class Delivery:
    id: str
    subscription_id: str
    event: dict[str, Any]  # the envelope
    state: str = "pending"
    attempts: tuple[Attempt, ...] = ()
    created_at_ms: int = 0
    next_attempt_ms: int | None = None
    finished_at_ms: int | None = None

    @property
    def event_type(self) -> str:
        return str(self.event["type"])

    def after(self, attempt: Attempt, *, state: str, next_attempt_ms: int | None) -> Delivery:
        finished = attempt.at_ms if state != "pending" else None
        return replace(self, attempts=(*self.attempts, attempt), state=state, next_attempt_ms=next_attempt_ms,
                       finished_at_ms=finished)

    def to_json(self, *, with_event: bool = True) -> dict[str, Any]:
        last = self.attempts[-1] if self.attempts else None
        data: dict[str, Any] = {
            "id": self.id, "subscriptionId": self.subscription_id, "eventId": self.event["id"],
            "eventType": self.event_type, "status": self.state, "attemptCount": len(self.attempts),
            "lastStatusCode": last.status_code if last else None, "lastError": last.error if last else None,
            "createdAt": iso(self.created_at_ms), "nextAttemptAt": iso(self.next_attempt_ms),
            "finishedAt": iso(self.finished_at_ms),
            "attempts": [{"at": iso(a.at_ms), "statusCode": a.status_code, "error": a.error,
                          "durationMs": a.duration_ms} for a in self.attempts],
        }
        if with_event:
            data["event"] = self.event
        return data

    def stored(self) -> dict[str, Any]:
        return {"id": self.id, "subscriptionId": self.subscription_id, "event": self.event, "state": self.state,
                "attempts": [[a.at_ms, a.status_code, a.error, a.duration_ms] for a in self.attempts],
                "createdAt": self.created_at_ms, "nextAttempt": self.next_attempt_ms,
                "finishedAt": self.finished_at_ms}


def delivery_from_stored(data: dict[str, Any]) -> Delivery:
    return Delivery(id=data["id"], subscription_id=data["subscriptionId"], event=data["event"], state=data["state"],
                    attempts=tuple(Attempt(*a) for a in data["attempts"]), created_at_ms=data["createdAt"],
                    next_attempt_ms=data["nextAttempt"], finished_at_ms=data["finishedAt"])


# --- message formats -----------------------------------------------------------------------

_ICONS = {"budget.threshold_crossed": ":warning:", "budget.exhausted": ":no_entry:",
          "budget.status_changed": ":chart_with_upwards_trend:", "request.blocked": ":octagonal_sign:",
          "model.switched": ":twisted_rightwards_arrows:", "webhook.test": ":white_check_mark:",
          "budget.overrun": ":rotating_light:"}


def headline(envelope: dict[str, Any]) -> str:
    """One human line for an event (Slack text, logs)."""
    kind, p = envelope["type"], envelope.get("payload", {})
    name = p.get("budgetName") or p.get("budgetId") or "budget"
    spend = f"${p.get('currentAmount')} of ${p.get('limit')} ({p.get('percentUsed')}%)"
    if kind == "budget.threshold_crossed":
        return f"Budget {name} crossed {p.get('threshold')}%: {spend}, period {p.get('periodKey')}"
    if kind == "budget.exhausted":
        return f"Budget {name} is exhausted: {spend}, period {p.get('periodKey')}"
    if kind == "budget.status_changed":
        return f"Budget {name} is now {p.get('status')} (was {p.get('previousStatus')}): {spend}"
    if kind == "request.blocked":
        return f"Request {p.get('requestId')} blocked by budget {name}: {p.get('reason')}"
    if kind == "budget.overrun":
        return (f"Budget {name}: request {p.get('requestId')} was billed ${p.get('overrunAmount')} more than "
                f"reserved: {spend}")
    if kind == "model.switched":
        return f"Request {p.get('requestId')}: {p.get('requestedModel')} switched to {p.get('servedModel')}"
    return f"costproxy webhook test for subscription {p.get('subscriptionId')}"


def slack_message(envelope: dict[str, Any]) -> dict[str, Any]:
    text = f"{_ICONS.get(envelope['type'], '')} {headline(envelope)}".strip()
    context = f"{envelope['type']} · {envelope['timestamp']} · {envelope['source']} · event {envelope['id']}"
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ]}
