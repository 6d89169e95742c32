"""Webhooks without sockets: signatures, retry schedule, subscriptions, formats, deliveries; plus the
pure parts around them (read-only tokens, report ranges and calendar buckets, event payloads)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from typing import Any, cast

import pytest

from costproxy.alerts.config import AlertSettings, parse_alert_settings
from costproxy.alerts.manager import Raised, budget_payload, claim_name, envelope
from costproxy.alerts.webhooks import (
    EVENT_TYPES,
    Attempt,
    Delivery,
    Subscription,
    WebhookInvalid,
    backoff_delay,
    delivery_from_stored,
    headline,
    retry_after,
    retryable,
    signature,
    slack_message,
    subscription_from_json,
    subscription_from_stored,
    verify,
)
from costproxy.budgets.book import BudgetEvent
from costproxy.budgets.definitions import BudgetStore
from costproxy.budgets.model import BudgetSpec, Threshold, ThresholdAction, window_at
from costproxy.budgets.reports import RangeInvalid, Row, by_calendar, report, time_range
from costproxy.errors import ConfigError
from costproxy.identity.access_tokens import TokenInvalid, TokenRing, hash_token, issue

SECRET = "whsec_0123456789abcdef0123456789"
BODY = b'{"id":"evt_1","type":"budget.exhausted"}'
NOW = 1_795_600_000  # 2026-11-25T09:46:40Z


# --- signatures ------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    header = signature(SECRET, NOW, BODY)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert verify(SECRET, header, BODY, now=NOW + 10)


@pytest.mark.parametrize("change", ["body", "secret", "stale", "future", "garbage", "timestamp"])
def test_verify_refuses_tampering_and_replays(change: str) -> None:
    header, body, secret, now = signature(SECRET, NOW, BODY), BODY, SECRET, NOW
    if change == "body":
        body = BODY.replace(b"exhausted", b"status_changed")
    elif change == "secret":
        secret = SECRET + "x"
    elif change == "stale":
        now = NOW + 301
    elif change == "future":
        now = NOW - 301
    elif change == "garbage":
        header = "v1=deadbeef"
    else:
        header = header.replace(f"t={NOW}", f"t={NOW + 1}")
    assert not verify(secret, header, body, now=now)


# --- retry schedule --------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        window = min(600.0, 2.0 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 2.0, 600.0, rng) for _ in range(200)]
        assert all(window * 0.25 <= d <= window for d in delays)
        assert len({round(d, 6) for d in delays}) > 150  # jittered, not synchronised
    assert backoff_delay(3, 2.0, 600.0, rng, retry_after_s=42) == 42
    assert backoff_delay(3, 2.0, 600.0, rng, retry_after_s=10_000) == 600
    assert backoff_delay(10_000, 2.0, 600.0, rng) <= 600


@pytest.mark.parametrize(("status", "again"), [(None, True), (408, True), (429, True), (500, True), (503, True),
                                               (400, False), (401, False), (404, False), (410, False)])
def test_retryable_statuses(status: int | None, again: bool) -> None:
    assert retryable(status) is again


def test_retry_after_header_values() -> None:
    assert retry_after("12") == 12.0 and retry_after("0.5") == 0.5 and retry_after("-3") == 0.0
    assert retry_after(None) is None and retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None


# --- subscriptions ---------------------------------------------------------------------------


def test_subscription_parse_defaults_update_and_round_trip() -> None:
    sub = subscription_from_json({"url": "https://hooks.example/costs", "events": ["budget.exhausted"],
                                  "scopes": [{"scopeType": "organization", "scopeId": "acme"}]},
                                 sub_id="whk_1", now_ms=1000, actor="ops")
    assert sub.secret.startswith("whsec_") and len(sub.secret) > 40
    assert sub.scopes == frozenset({("org", "acme")}) and sub.format == "json" and sub.created_by == "ops"
    shown = sub.to_json()
    assert shown["secret"].endswith("…") and sub.secret not in str(shown)
    assert sub.secret in str(sub.to_json(reveal_secret=True))
    assert subscription_from_stored(sub.stored()) == sub
    updated = subscription_from_json({"enabled": False, "format": "slack"}, sub_id="whk_1", now_ms=2000,
                                     actor="someone", base=sub)
    assert (updated.enabled, updated.format, updated.secret, updated.url) == (False, "slack", sub.secret, sub.url)
    assert (updated.created_at_ms, updated.updated_at_ms, updated.created_by) == (1000, 2000, "ops")


@pytest.mark.parametrize(("body", "field"), [
    ({}, "url"), ({"url": "ftp://x"}, "url"), ({"url": "https://x", "events": ["budget.exploded"]}, "events"),
    ({"url": "https://x", "format": "xml"}, "format"), ({"url": "https://x", "secret": "short"}, "secret"),
    ({"url": "https://x", "colour": "red"}, "colour"), ({"url": "https://x", "enabled": "yes"}, "enabled"),
    ({"url": "https://x", "scopes": [{"scopeType": "galaxy", "scopeId": "m31"}]}, "scopes"),
    ({"url": "http://[::1"}, "url"), ({"url": "http://a b"}, "url"), ({"url": "http://x:99999/"}, "url"),
    ({"url": "http://-x-/hook"}, "url"), ({"url": "https://"}, "url"), ({"url": "http://x/\nHost: y"}, "url"),
])
def test_subscription_errors_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(WebhookInvalid) as info:
        subscription_from_json(body, sub_id="whk_1", now_ms=0, actor=None)
    assert info.value.field == field


def test_subscription_filters() -> None:
    sub = Subscription(id="s", url="https://x", secret=SECRET, events=frozenset({"budget.threshold_crossed"}),
                       budget_ids=frozenset({"b1"}))
    assert sub.wants("budget.threshold_crossed", {"budgetId": "b1"})
    assert not sub.wants("budget.threshold_crossed", {"budgetId": "b2"})
    assert not sub.wants("budget.exhausted", {"budgetId": "b1"})
    scoped = Subscription(id="s", url="https://x", secret=SECRET, scopes=frozenset({("team", "core")}))
    assert scoped.wants("request.blocked", {"scopeType": "team", "scopeId": "core"})
    assert not scoped.wants("request.blocked", {"scopeType": "team", "scopeId": "web"})
    assert scoped.wants("webhook.test", {})
    assert not Subscription(id="s", url="https://x", secret=SECRET, enabled=False).wants("webhook.test", {})


# --- formats and deliveries ------------------------------------------------------------------


def _event(kind: str = "budget.threshold_crossed") -> dict[str, object]:
    return {"id": "evt_1", "type": kind, "source": "costproxy", "timestamp": "2026-11-25T07:06:40.000Z",
            "correlationId": "req_1", "payload": {"budgetId": "team-core", "budgetName": "Core team", "threshold": 80,
                                                  "currentAmount": "8", "limit": "10", "percentUsed": 80.0,
                                                  "periodKey": "2026-11"}}


def test_slack_message_is_text_and_blocks() -> None:
    message = slack_message(_event())
    assert message["text"] == ":warning: Budget Core team crossed 80%: $8 of $10 (80.0%), period 2026-11"
    assert message["blocks"][0]["text"]["text"] == message["text"]
    assert "evt_1" in message["blocks"][1]["elements"][0]["text"]
    for kind in ("budget.exhausted", "budget.status_changed", "request.blocked", "model.switched", "webhook.test"):
        assert headline(_event(kind))


def test_delivery_attempts_and_storage_round_trip() -> None:
    delivery = Delivery(id="dlv_1", subscription_id="s", event=_event(), created_at_ms=1, next_attempt_ms=1)
    failed = delivery.after(Attempt(10, 503, "HTTP 503", 5), state="pending", next_attempt_ms=2010)
    done = failed.after(Attempt(2010, 200, None, 3), state="delivered", next_attempt_ms=None)
    assert done.state == "delivered" and done.finished_at_ms == 2010 and len(done.attempts) == 2
    assert delivery_from_stored(done.stored()) == done
    shown = done.to_json(with_event=False)
    assert (shown["attemptCount"], shown["lastStatusCode"], shown["eventType"]) == (2, 200, "budget.threshold_crossed")
    assert "event" not in shown and done.to_json()["event"]["id"] == "evt_1"


# --- events ----------------------------------------------------------------------------------


def test_envelope_and_budget_payload() -> None:
    spec = BudgetSpec(id="team-core", scope_type="team", scope_id="core", limit_nanos=10_000_000_000, name="Core",
                      thresholds=(Threshold(50), Threshold(80, (ThresholdAction("notify"),
                                                               ThresholdAction("auto-downgrade")), ("slack",), "!")))
    budgets = BudgetStore(cast(Any, None), [spec])  # static budgets only: the backend is never used
    event = BudgetEvent("threshold_crossed", "team-core", "2026-11", NOW * 1000, 8_000_000_000, 10_000_000_000,
                        "critical", "warning", 80, "req_9")
    payload = budget_payload(event, budgets)
    assert payload == {
        "budgetId": "team-core", "periodKey": "2026-11", "status": "critical", "previousStatus": "warning",
        "currentAmount": "8", "limit": "10", "remaining": "2", "percentUsed": 80.0, "currency": "USD",
        "requestId": "req_9", "threshold": 80, "budgetName": "Core", "scopeType": "team", "scopeId": "core",
        "period": "monthly", "hardLimit": True, "actions": ["notify", "auto-downgrade"], "message": "!",
        "notificationChannels": ["slack"]}
    assert claim_name(event) == "fired:team-core:2026-11:threshold:80"
    wrapped = envelope(Raised("budget.threshold_crossed", NOW * 1000, payload, "req_9"), "costproxy")
    assert set(wrapped) == {"id", "type", "source", "timestamp", "correlationId", "payload"}
    assert wrapped["id"].startswith("evt_") and wrapped["timestamp"] == "2026-11-25T09:46:40.000Z"


def test_an_overrun_is_a_budget_overrun_event_per_request() -> None:
    spec = BudgetSpec(id="team-core", scope_type="team", scope_id="core", limit_nanos=10_000_000_000, name="Core")
    budgets = BudgetStore(cast(Any, None), [spec])
    event = BudgetEvent("overrun", "team-core", "2026-11", NOW * 1000, 9_000_000_130, 10_000_000_000, "critical",
                        None, None, "req_7", "charged 130, reserved 100", 30, "team")
    payload = budget_payload(event, budgets)
    assert payload["overrunAmount"] == "0.00000003" and payload["requestId"] == "req_7"
    assert claim_name(event) == "fired:team-core:2026-11:overrun:req_7"  # one per request, not per period
    assert "budget.overrun" in EVENT_TYPES
    text = headline({"type": "budget.overrun", "payload": payload})
    assert "req_7" in text and "0.00000003" in text


def test_alert_settings_are_strict() -> None:
    assert parse_alert_settings(None, "costproxy.yaml") == AlertSettings()
    assert parse_alert_settings({"max_attempts": 3}, "f").max_attempts == 3
    with pytest.raises(ConfigError, match=r"alerts\.max_atempts: unknown key"):
        parse_alert_settings({"max_atempts": 3}, "f")
    with pytest.raises(ConfigError, match=r"alerts\.timeout_s"):
        parse_alert_settings({"timeout_s": "soon"}, "f")


# --- read-only tokens ------------------------------------------------------------------------


def test_tokens_hashed_looked_up_scoped_and_expiring() -> None:
    secret, token = issue({"name": "agent", "scopes": [{"scopeType": "team", "scopeId": "core"}],
                           "expiresInSeconds": 60}, now_ms=1000, actor="admin")
    assert secret.startswith("cpro-") and token.token_hash == hash_token(secret) and secret not in str(token.stored())
    ring = TokenRing([token])
    assert ring.lookup(secret, 2000) == token and ring.by_role(token.role) == token
    assert ring.lookup(secret, 61_000) is None  # expired
    assert ring.lookup("cpro-" + "x" * 43, 2000) is None and ring.lookup("cp-abc", 2000) is None
    assert token.sees("team", "core") and not token.sees("org", "acme")
    assert token.may_call("GET", "/api/v1/budgets/x/status")
    assert token.may_call("POST", "/api/v1/budgets/x/check-constraints")
    assert not token.may_call("POST", "/api/v1/budgets/x/usage")
    assert not token.may_call("GET", "/api/v1/usage")  # scope-limited: budget and model routes only
    _, wide = issue({}, now_ms=0, actor=None)
    assert wide.may_call("GET", "/api/v1/usage") and not wide.may_call("DELETE", "/api/v1/keys/k")
    for bad in ({"scopes": [{"scopeType": "team"}]}, {"expiresAt": 5}, {"expiresInSeconds": -1}, {"role": "admin"}):
        with pytest.raises(TokenInvalid):
            issue(bad, now_ms=10**12, actor=None)


# --- reports ---------------------------------------------------------------------------------


def _spec(**kw: object) -> BudgetSpec:
    return BudgetSpec(id="b", scope_type="team", scope_id="core", limit_nanos=100, **kw)  # type: ignore[arg-type]


def test_time_ranges() -> None:
    spec = _spec(period="monthly", timezone="Europe/Berlin")
    now = int(datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp() * 1000)
    window = window_at(spec, now)
    assert time_range(None, spec, window, now).period_key == "2026-11"
    assert time_range("previous", spec, window, now).period_key == "2026-10"
    assert time_range("7d", spec, window, now).start_ms == now - 7 * 86_400_000
    assert time_range("all", spec, window, now).start_ms is None
    span = time_range("2026-11-01/2026-11-02T00:00:00Z", spec, window, now)
    assert (span.start_ms, span.end_ms) == (1_793_491_200_000, 1_793_577_600_000)
    for bad in ("yesterday", "2026-11-02/2026-11-01", "x/y"):
        with pytest.raises(RangeInvalid):
            time_range(bad, spec, window, now)
    with pytest.raises(RangeInvalid):
        time_range("previous", _spec(period="total"), window_at(_spec(period="total"), now), now)


def test_calendar_buckets_follow_the_budget_time_zone_across_dst() -> None:
    # 2026-10-25: Europe/Berlin leaves summer time; 22:00Z on the 24th is already the 25th in Berlin.
    def at(*parts: int) -> int:
        return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)

    rows = [Row(at(2026, 10, 24, 21, 45), 1, 1), Row(at(2026, 10, 24, 22, 0), 2, 1),
            Row(at(2026, 10, 25, 22, 45), 4, 1), Row(at(2026, 10, 25, 23, 0), 8, 1)]
    days = by_calendar(rows, "day", "Europe/Berlin")
    assert [(r.key, r.amount_nanos) for r in days] == [("2026-10-24", 1), ("2026-10-25", 6), ("2026-10-26", 8)]
    weeks = by_calendar(rows, "week", "Europe/Berlin")
    assert [(r.key, r.amount_nanos) for r in weeks] == [("2026-W43", 7), ("2026-W44", 8)]
    assert date(2026, 10, 26).isocalendar().week == 44


def test_report_shape() -> None:
    spec = _spec(period="monthly")
    span = time_range("all", spec, window_at(spec, 0), 0)
    series = [Row(0, 30, 2, 10, 20, 50), Row(900_000, 70, 1, 5, 5, 70)]
    body = report(spec, span, "model", [Row("m1", 70, 1), Row("m2", 30, 2)], series, [Row("u1", 100, 3)],
                  [Row("m1", 70, 1), Row("m2", 30, 2)])
    assert body["totals"] == {"amount": "0.0000001", "requests": 3, "promptTokens": 15, "completionTokens": 25,
                              "baselineAmount": "0.00000012", "savings": "0.00000002", "averageCost": "0.000000033"}
    assert [(d["key"], d["percent"]) for d in body["data"]] == [("m1", 70.0), ("m2", 30.0)]  # type: ignore[index]
    assert body["topSpenders"][0]["userId"] == "u1"  # type: ignore[index]


def test_the_pure_parts_stay_sans_io() -> None:
    from tests.unit.test_layers import IO_MODULES, PACKAGE, UPPER_LAYERS, imports_of

    for relative in ("alerts/webhooks.py", "identity/access_tokens.py", "budgets/reports.py"):
        for name in imports_of(PACKAGE / relative):
            assert name.split(".")[0] not in IO_MODULES and not name.startswith(UPPER_LAYERS), (relative, name)


def test_a_malformed_url_is_refused_on_update_but_a_stored_one_still_loads() -> None:
    """The URL is checked where one is given (POST, PATCH): a subscription stored before the check
    must not stop the catalog (and the read-only tokens beside it) from loading."""
    sub = subscription_from_json({"url": "http://[::1]:8080/hook"}, sub_id="whk_1", now_ms=0, actor=None)
    with pytest.raises(WebhookInvalid) as info:
        subscription_from_json({"url": "http://a b"}, sub_id="whk_1", now_ms=1, actor=None, base=sub)
    assert info.value.field == "url" and "space" in info.value.detail
    old = subscription_from_stored({**sub.stored(), "url": "http://a b"})
    assert old.url == "http://a b"
    assert subscription_from_json({"enabled": False}, sub_id="whk_1", now_ms=1, actor=None, base=old).url == old.url
