"""The ``/api/v1`` API keeps its word: every documented operation is called, and every JSON answer is
validated against the schema ``/openapi.json`` serves for it (closed objects: no undocumented key,
no missing required key, camelCase, ISO-8601 times).  Also: aliases on input are honoured or
refused with a 400 naming the key — never ignored — and the RelayCore/Auterity status names."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from costproxy.http.app import create_app
from costproxy.http.keys_api import issue_key
from costproxy.http.state import ALERTS, KEYRING, STORE
from tests.conftest import ADMIN_TOKEN, ConfigFactory, Proxy, load_test_settings
from tests.integration.api_harness import Receiver, Recorder, covered, operations, problems
from tests.polling import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Classify this sentence as happy or sad."}]}
TEAM = {"id": "team-core", "scope_type": "team", "scope_id": "core", "org": "acme", "limit_usd": "1",
        "period": "monthly", "thresholds": [50, {"percent": 80, "actions": [
            "notify", {"type": "restrict-models", "tiers": ["economy"]}]}, 100]}
ISO_Z = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"


@dataclass
class Api:
    proxy: Proxy
    recorder: Recorder
    receiver: Receiver
    hook_url: str


@pytest.fixture
async def api(aiohttp_client: Any, simulator: Any, write_config: ConfigFactory) -> AsyncIterator[Api]:
    url, sim = simulator
    settings = load_test_settings(write_config(url, extra={
        "budgets": {"definitions": [TEAM]},
        "alerts": {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "refresh_interval_s": 0.1}}))
    app = create_app(settings)
    recorder, receiver = Recorder(), Receiver()
    recorder.install(app)
    client = await aiohttp_client(app)
    key, record = await issue_key(app[STORE], {"user": "alice", "team": "core", "org": "acme"}, time.time())
    app[KEYRING].add(record)
    hook_url = await receiver.start()
    yield Api(Proxy(client, app, key, sim), recorder, receiver, hook_url)
    await receiver.close()


async def call(proxy: Proxy, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    resp = await proxy.client.request(method, path, headers=kwargs.pop("headers", ADMIN), **kwargs)
    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    assert resp.status == status, (method, path, body)
    return body


async def _budgets(proxy: Proxy) -> str:
    created = await call(proxy, "POST", "/api/v1/budgets", 201, json={
        "name": "Alice daily", "scope_type": "user", "scope_id": "alice", "organization_id": "acme",
        "limit_usd": "2.50", "period": "daily", "thresholds": [{"percent": 50, "channels": ["ops"]}]})
    bid = created["id"]
    await call(proxy, "GET", "/api/v1/budgets?scope_type=user&withStatus=true")
    await call(proxy, "GET", f"/api/v1/budgets/{bid}")
    await call(proxy, "PATCH", f"/api/v1/budgets/{bid}", json={"description": "for alice"})
    await call(proxy, "PUT", f"/api/v1/budgets/{bid}", json={**created, "amount": "3"})
    await call(proxy, "GET", f"/api/v1/budgets/{bid}/status")
    await call(proxy, "GET", "/api/v1/budgets/status/org/acme")
    await call(proxy, "GET", "/api/v1/budgets/status/team/core")
    await call(proxy, "POST", "/api/v1/budgets/team-core/check-constraints", json={"estimated_cost": "0.01"})
    granted = await call(proxy, "POST", "/api/v1/budgets/team-core/overrides", 201, json={
        "type": "increase", "amount": "0.5", "expires_at": int(time.time()) + 3600, "reason": "demo"})
    await call(proxy, "GET", "/api/v1/budgets/team-core/overrides")
    await call(proxy, "DELETE", f"/api/v1/budgets/team-core/overrides/{granted['id']}")
    return str(bid)


async def _spend(proxy: Proxy) -> None:
    for _ in range(2):
        resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
        assert resp.status == 200
    usage = {"amount": "0.85", "source": "relaycore", "timestamp": "2026-11-25T10:00:00Z",
             "metadata": {"request_id": "rc-1", "modelId": "gpt-4o", "userId": "bob"}}
    recorded = await call(proxy, "POST", "/api/v1/budgets/team-core/usage", 201, json=usage)
    assert recorded["usage"]["timestamp"] == "2026-11-25T10:00:00.000Z"
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", 200, json=usage)  # a duplicate: charged once
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", 409, json={
        "amount": "0.85", "metadata": {"requestId": "rc-1"}})  # another record under a used key: refused
    for path in ("usage", "usage/summary", "reports?group_by=user", "reports?groupBy=day&timeRange=all",
                 "alerts", "audit"):
        await call(proxy, "GET", f"/api/v1/budgets/team-core/{path}")
    await call(proxy, "POST", "/api/v1/budgets/team-core/alerts/50/acknowledge", json={"note": "seen"})
    entries = await call(proxy, "GET", "/api/v1/usage?limit=5")
    await call(proxy, "GET", f"/api/v1/requests/{entries['data'][0]['requestId']}")
    for group in ("model", "organization", "key"):
        await call(proxy, "GET", f"/api/v1/usage/summary?groupBy={group}")


async def _webhooks(proxy: Proxy, hook_url: str) -> None:
    sub = await call(proxy, "POST", "/api/v1/webhooks", 201, json={
        "url": hook_url, "budget_ids": ["team-core"], "scopes": [{"scope_type": "org", "scope_id": "acme"}]})
    wid = sub["id"]
    assert sub["scopes"] == [{"scopeType": "organization", "scopeId": "acme"}]
    await call(proxy, "GET", "/api/v1/webhooks")
    await call(proxy, "GET", f"/api/v1/webhooks/{wid}")
    await call(proxy, "PATCH", f"/api/v1/webhooks/{wid}", json={"description": "ops channel"})
    delivery = await call(proxy, "POST", f"/api/v1/webhooks/{wid}/test", 202)
    manager = proxy.app[ALERTS]
    assert manager is not None

    async def idle() -> bool:
        return manager.sender.running() == 0

    await eventually(idle, what="webhook deliveries to finish")
    await call(proxy, "GET", f"/api/v1/webhooks/{wid}/deliveries")
    await call(proxy, "GET", f"/api/v1/webhooks/{wid}/deliveries/{delivery['id']}")
    await call(proxy, "POST", f"/api/v1/webhooks/{wid}/deliveries/{delivery['id']}/redeliver", 202)
    await call(proxy, "POST", f"/api/v1/webhooks/{wid}/rotate-secret")
    await eventually(idle, what="webhook deliveries to finish")
    await call(proxy, "GET", "/api/v1/events?limit=20")
    await call(proxy, "DELETE", f"/api/v1/webhooks/{wid}")


async def _identity(proxy: Proxy) -> None:
    token = await call(proxy, "POST", "/api/v1/tokens", 201, json={
        "name": "agent", "scopes": [{"scopeType": "team", "scopeId": "core"}], "expires_at": "2099-01-01T00:00:00Z"})
    assert token["expiresAt"] == "2099-01-01T00:00:00.000Z"
    await call(proxy, "GET", "/api/v1/tokens")
    await call(proxy, "GET", f"/api/v1/tokens/{token['id']}")
    await call(proxy, "GET", "/api/v1/budgets/status/team/core", headers={"Authorization": f"Bearer {token['token']}"})
    await call(proxy, "DELETE", f"/api/v1/tokens/{token['id']}")
    key = await call(proxy, "POST", "/api/v1/keys", 201, json={"userId": "carol", "org": "acme",
                                                               "expiresInSeconds": 3600})
    assert (key["organizationId"], key["org"], key["userId"]) == ("acme", "acme", "carol")
    await call(proxy, "GET", "/api/v1/keys")
    await call(proxy, "DELETE", f"/api/v1/keys/{key['id']}")


async def _routing(proxy: Proxy) -> None:
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    decision_id = resp.headers["x-costproxy-decision-id"]
    await call(proxy, "GET", f"/api/v1/decisions/{decision_id}")
    await call(proxy, "GET", "/api/v1/decisions?limit=5")
    await call(proxy, "POST", "/api/v1/models/select", json={
        "request_id": "sel-1", "content": {"messages": CHAT["messages"]},
        "metadata": {"teamId": "core", "org": "acme"}, "constraints": {"max_cost": "0.01"}})
    await call(proxy, "POST", "/api/v1/models/estimate", json={"messages": CHAT["messages"], "models": ["small"]})
    await call(proxy, "GET", "/api/v1/models/capabilities")
    await call(proxy, "GET", "/api/v1/rules")
    await call(proxy, "GET", "/api/v1/analytics/rules?range=1d")
    await call(proxy, "GET", "/api/v1/analytics/overview?tz=Europe/Berlin")
    await call(proxy, "GET", f"/api/v1/analytics/spend?groupBy=organization&from={int(time.time()) - 3600}")


async def _limits(proxy: Proxy) -> None:
    """Rate limits (snake_case spellings honoured on input) and the response cache's figures."""
    created = await call(proxy, "POST", "/api/v1/rate-limits", 201, json={
        "scope_type": "user", "scope_id": "alice", "requests_per_minute": 1000, "name": "alice"})
    lid = created["id"]
    assert created["scopeType"] == "user" and created["requestsPerMinute"] == 1000
    await call(proxy, "GET", "/api/v1/rate-limits?scope_type=user")
    await call(proxy, "GET", f"/api/v1/rate-limits/{lid}")
    await call(proxy, "PATCH", f"/api/v1/rate-limits/{lid}", json={"tokensPerMinute": 10**6})
    await call(proxy, "PUT", f"/api/v1/rate-limits/{lid}", json={**created, "burstRequests": 50})
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.headers["x-ratelimit-limit-requests"] == "1000"
    await call(proxy, "GET", "/api/v1/rate-limits/status?user=alice&org=acme")
    await call(proxy, "GET", "/api/v1/cache")
    await call(proxy, "DELETE", "/api/v1/cache")
    await call(proxy, "DELETE", f"/api/v1/rate-limits/{lid}")
    error = (await call(proxy, "POST", "/api/v1/rate-limits", 400, json={
        "scopeType": "team", "scope_type": "team", "scopeId": "x", "requestsPerMinute": 1}))["error"]
    assert error["param"] == "scopeType" and "given twice" in error["message"]


async def _feedback(proxy: Proxy) -> None:
    """Feedback on a request: new (201), said again (200), read back; snake_case spellings honoured."""
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    request_id = resp.headers["x-costproxy-request-id"]
    await call(proxy, "POST", "/api/v1/feedback", 201, json={"request_id": request_id, "thumbs": "up",
                                                              "source": "user"})
    await call(proxy, "POST", "/api/v1/feedback", 200, json={"requestId": request_id, "score": 0.5,
                                                              "source": "user", "comment": "half right"})
    listed = await call(proxy, "GET", f"/api/v1/feedback?request_id={request_id}")
    assert [f["score"] for f in listed["data"]] == [0.5]


async def test_every_documented_operation_answers_what_the_document_says(api: Api) -> None:
    proxy, recorder = api.proxy, api.recorder
    document = await call(proxy, "GET", "/openapi.json")
    budget_id = await _budgets(proxy)
    await _spend(proxy)
    await _webhooks(proxy, api.hook_url)
    await _identity(proxy)
    await _routing(proxy)
    await _limits(proxy)
    await _feedback(proxy)
    await call(proxy, "DELETE", f"/api/v1/budgets/{budget_id}")
    assert problems(document, recorder.answers) == []
    assert operations(document) - covered(recorder.answers) == set()


async def test_the_scope_status_speaks_relaycore_and_auterity(api: Api) -> None:
    proxy = api.proxy
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", 201, json={"amount": "0.81"})
    scope = await call(proxy, "GET", "/api/v1/budgets/status/org/acme")
    assert scope["scopeType"] == "organization" and scope["budgets"] == []
    scope = await call(proxy, "GET", "/api/v1/budgets/status/team/core")
    assert scope["aggregateStatus"] == scope["status"] == "critical"
    restrictions = scope["costRestrictions"]
    assert restrictions["modelDowngrading"] is False and restrictions["blockNonEssential"] is False
    assert restrictions["restrictedModels"] == ["backup", "small"]  # the servable economy chat models
    assert restrictions["maxCostPerRequest"] == "0.19"
    budget = scope["budgets"][0]
    assert budget["currentSpend"] == budget["currentAmount"] == "0.81"
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", 201, json={"amount": "0.19"})
    scope = await call(proxy, "GET", "/api/v1/budgets/status/team/core")
    assert scope["aggregateStatus"] == "exhausted" and scope["costRestrictions"]["blockNonEssential"] is True
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 429  # what blockNonEssential announces: the proxy refuses requests now
    check = await call(proxy, "POST", "/api/v1/budgets/team-core/check-constraints", json={"estimatedCost": 0})
    assert check["blockNonEssential"] is True and check["currentSpend"] == "1"


@pytest.mark.parametrize(("body", "param"), [
    ({"scopeType": "team", "scopeId": "x", "amount": "1", "limit_usd": "2"}, "amount"),  # twice
    ({"scopeType": "team", "scopeId": "x", "amount": "1", "limitUsd": "2"}, "limitUsd"),  # unknown
    ({"scopeType": "team", "scope_id": "x", "amount": "1", "alerts": [{"percent": 50, "threshold": 60}]},
     "alerts[0].threshold"),
    ({"scopeType": "galaxy", "scopeId": "x", "amount": "1"}, "scopeType"),
])
async def test_budget_bodies_never_ignore_a_key(api: Api, body: dict[str, Any],
                                                param: str) -> None:
    proxy = api.proxy
    error = (await call(proxy, "POST", "/api/v1/budgets", 400, json=body))["error"]
    assert error["param"] == param and error["code"] == "invalid_request" and error["type"]


async def test_yaml_names_create_the_same_budget_as_camel_case(api: Api) -> None:
    proxy = api.proxy
    yaml_body = {"id": "a", "scope_type": "org", "scope_id": "acme", "limit_usd": "5", "period": "weekly",
                 "on_exhausted": "downgrade", "downgrade_to": {"same_provider": True},
                 "thresholds": [{"percent": 80, "channels": ["ops"], "actions": [
                     {"type": "restrict-models", "max_price_per_mtok": "1"}]}], "parent": "team-core"}
    camel_body = {"id": "b", "scopeType": "organization", "scopeId": "acme", "amount": "5", "period": "weekly",
                  "onExhausted": "downgrade", "downgradeTo": {"sameProvider": True},
                  "alerts": [{"threshold": 80, "notificationChannels": ["ops"], "actions": [
                      {"type": "restrict-models", "maxPricePerMTok": "1"}]}], "parentBudgetId": "team-core"}
    a = await call(proxy, "POST", "/api/v1/budgets", 201, json=yaml_body)
    b = await call(proxy, "POST", "/api/v1/budgets", 201, json=camel_body)
    volatile = ("id", "createdAt", "updatedAt")
    assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    assert a["scopeType"] == "organization" and a["amount"] == "5"


@pytest.mark.parametrize("stamp", ["2026-11-25T11:00:00+01:00", "2026-11-25T10:00:00", 1_795_600_800,
                                   1_795_600_800_000, "1795600800", 1_795_600_800.0])
async def test_times_are_accepted_as_iso_or_unix_and_answered_in_iso(api: Api,
                                                                     stamp: Any) -> None:
    proxy = api.proxy
    recorded = await call(proxy, "POST", "/api/v1/budgets/team-core/usage", 201,
                          json={"amount": "0.01", "timestamp": stamp})
    assert recorded["usage"]["timestamp"] == "2026-11-25T10:00:00.000Z"


async def test_time_errors_name_the_field(api: Api) -> None:
    proxy = api.proxy
    for body, param in (({"amount": "1", "timestamp": "yesterday"}, "timestamp"),
                        ({"amount": "1", "timestamp": -5}, "timestamp")):
        error = (await call(proxy, "POST", "/api/v1/budgets/team-core/usage", 400, json=body))["error"]
        assert error["param"] == param, error
    error = (await call(proxy, "POST", "/api/v1/keys", 400, json={"user": "x", "expires_at": "soon"}))["error"]
    assert error["param"] == "expires_at"
    error = (await call(proxy, "POST", "/api/v1/keys", 400, json={"org": "a", "organizationId": "b"}))["error"]
    assert error["param"] == "organizationId" and "given twice" in error["message"]
    error = (await call(proxy, "GET", "/api/v1/analytics/spend?from=tuesday", 400))["error"]
    assert error["param"] == "from"


async def test_every_time_in_a_response_is_iso_utc(api: Api) -> None:
    proxy = api.proxy
    await call(proxy, "POST", "/api/v1/keys", 201, json={"user": "dave", "expiresAt": 4_102_444_800})
    keys = await call(proxy, "GET", "/api/v1/keys")
    for key in keys["data"]:
        assert re.match(ISO_Z, key["createdAt"]) and (key["expiresAt"] is None or re.match(ISO_Z, key["expiresAt"]))
    assert "2100-01-01T00:00:00.000Z" in [k["expiresAt"] for k in keys["data"]]
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    entry = (await call(proxy, "GET", f"/api/v1/requests/{resp.headers['x-costproxy-request-id']}"))["data"][0]
    assert re.match(ISO_Z, entry["timestamp"]) and entry["ts_ms"] > 0  # ts_ms: deprecated, still sent
    assert entry["cost"] == entry["cost_usd"].rstrip("0").rstrip(".") or entry["cost"] == "0"


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/api/v1/budgets", {"scope_type": "team", "scope_id": "x", "limit_usd": True}, "limit_usd"),
    ("/api/v1/budgets", {"scopeType": "team", "scope_id": 7, "amount": "1"}, "scope_id"),
    ("/api/v1/budgets", {"scopeType": "team", "scopeId": "x", "amount": "1", "on_exhausted": "explode"},
     "on_exhausted"),
    ("/api/v1/budgets", {"scopeType": "team", "scopeId": "x", "amount": "1", "start_date": 12.5}, "start_date"),
    ("/api/v1/budgets/team-core/usage", {"amount": "1", "time_stamp": "x"}, "time_stamp"),
    ("/api/v1/budgets/team-core/usage", {"amount": [], "source": "manual"}, "amount"),
    ("/api/v1/budgets/team-core/usage", {"amount": "1", "metadata": {"user_id": 5}}, "metadata.userId"),
    ("/api/v1/budgets/team-core/overrides", {"type": "approval", "reason": "r", "expires_at": {}}, "expires_at"),
    ("/api/v1/budgets/team-core/overrides", {"type": "approval", "reason": "r", "duration_minutes": "10"},
     "duration_minutes"),
    ("/api/v1/budgets/team-core/check-constraints", {"estimated_cost": "a lot"}, "estimated_cost"),
    ("/api/v1/keys", {"user_id": ["x"]}, "user_id"),
    ("/api/v1/keys", {"expires_in_seconds": -1}, "expires_in_seconds"),
    ("/api/v1/tokens", {"expires_at": "later"}, "expires_at"),
    ("/api/v1/tokens", {"scopes": [{"scope_type": "galaxy", "scope_id": "m31"}]}, "scopes"),
    ("/api/v1/webhooks", {"url": "https://x", "budget_ids": "team-core"}, "budget_ids"),
    ("/api/v1/models/select", {"metadata": {"team": 5}, "constraints": {"max_cost": "x"}}, "constraints.maxCost"),
    ("/api/v1/models/select", {"metadata": {"userId": ["x"]}}, "metadata.userId"),
    ("/api/v1/models/select", {"metadata": {"team_id": {}}}, "metadata.teamId"),
    ("/api/v1/models/select", {"metadata": {"organizationId": [1, "x", {}]}}, "metadata.organizationId"),
    ("/api/v1/models/select", {"requestId": {"a": 1}}, "requestId"),
    ("/api/v1/models/estimate", {"messages": [{"role": "user", "content": "hi"}],
                                 "outputTokens": 10 ** 30}, "outputTokens"),
    ("/api/v1/models/estimate", {"messages": [{"role": "user", "content": "hi"}], "outputTokens": True},
     "outputTokens"),
    ("/api/v1/models/estimate", {"messages": [{"role": "user", "content": "hi"}], "outputTokens": -1},
     "outputTokens"),
    ("/api/v1/models/estimate", {"messages": [{"role": "user", "content": "hi"}], "models": ""}, "models"),
    ("/api/v1/models/estimate", {"messages": [{"role": "user", "content": "hi"}], "models": [0]}, "models"),
])
async def test_wrong_types_under_any_spelling_are_a_400_naming_the_key(api: Api, path: str, body: dict[str, Any],
                                                                       param: str) -> None:
    error = (await call(api.proxy, "POST", path, 400, json=body))["error"]
    assert error["param"] == param, error
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    assert await api.proxy.ledger() == []  # nothing was charged or recorded


@pytest.mark.parametrize("path", ["/api/v1/keys", "/api/v1/feedback", "/api/v1/budgets/team-core/usage",
                                  "/api/v1/models/select", "/api/v1/tokens"])
async def test_a_lone_surrogate_is_invalid_json_on_every_admin_body(api: Api, path: str) -> None:
    """The model endpoints refused it already; the admin bodies accepted it and then failed where it was
    stored (a 500), or charged a budget whose ledger entry went to quarantine."""
    before = await call(api.proxy, "GET", "/api/v1/budgets/team-core/status")
    bodies = [b'{"name": "\\ud800", "user": "alice"}', b'{"requestId": "\\ud800", "score": 0.5, "source": "user"}',
              b'{"amount": "1", "description": "\\ud800", "metadata": {"userId": "\\udfff"}}']
    for raw in bodies:
        resp = await api.proxy.client.post(path, data=raw, headers={**ADMIN, "content-type": "application/json"})
        body = await resp.json()
        assert resp.status == 400 and body["error"]["code"] == "invalid_json", body
    after = await call(api.proxy, "GET", "/api/v1/budgets/team-core/status")
    assert after["currentSpend"] == before["currentSpend"] and await api.proxy.ledger() == []


async def test_a_budget_outside_its_dates_is_reported_as_not_in_force(api: Api) -> None:
    """What the status API says is what the proxy does: a budget that ended, one that has not
    started and a non-recurring one past its period charge and enforce nothing (a request of their
    scope is served), so their status says ``active: false`` with no cost restrictions, the
    constraint check lets the spend through, and the scope's aggregate ignores them."""
    proxy = api.proxy
    dated = {"ended": {"period": "daily", "endDate": "2026-01-01"},
             "future": {"period": "daily", "startDate": "2099-06-01"},
             "once": {"period": "monthly", "startDate": "2026-01-15", "recurring": False}}
    for name, extra in dated.items():
        await call(proxy, "POST", "/api/v1/budgets", status=201, json={
            "id": f"dated-{name}", "name": name, "scopeType": "team", "scopeId": "dated", "amount": "0.000001",
            **extra})
    key, record = await issue_key(proxy.app[STORE], {"user": "dora", "team": "dated", "org": "acme"}, time.time())
    proxy.app[KEYRING].add(record)
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200, await resp.text()  # none of them applies now
    for name in dated:
        status = await call(proxy, "GET", f"/api/v1/budgets/dated-{name}/status")
        assert status["active"] is False, (name, status)
        restrictions = status["costRestrictions"]
        assert not restrictions["blocked"] and not restrictions["blockNonEssential"], (name, restrictions)
        assert restrictions["maxCostPerRequest"] is None and not restrictions["modelDowngrading"]
        check = await call(proxy, "POST", f"/api/v1/budgets/dated-{name}/check-constraints",
                           json={"estimatedCost": "1"})
        assert check["canProceed"] is True and "not in force" in check["reason"], (name, check)
    assert (await call(proxy, "GET", "/api/v1/budgets/dated-future/status"))["activeFrom"].startswith("2099-06-01")
    scope = await call(proxy, "GET", "/api/v1/budgets/status/team/dated")
    assert len(scope["budgets"]) == 3 and scope["aggregateStatus"] == "normal"
    assert scope["costRestrictions"]["blocked"] is False and scope["costRestrictions"]["maxCostPerRequest"] is None
    team = await call(proxy, "GET", "/api/v1/budgets/team-core/status")
    assert team["active"] is True and team["activeFrom"] is None and team["activeUntil"] is None
