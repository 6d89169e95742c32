"""The budget HTTP API: CRUD, status shapes, usage from other systems, constraints, reports,
overrides, acknowledgements, read-only scoped tokens, the OpenAPI document, and a status endpoint
that keeps answering while Redis is away."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from costproxy.budgets.codec import usd
from costproxy.errors import ConfigError
from costproxy.http.app import create_app
from costproxy.http.state import STORE
from tests.conftest import ADMIN_TOKEN, Proxy, ProxyFactory, load_test_settings
from tests.conftest_redis import RedisServer, own_redis  # noqa: F401
from tests.polling import eventually

USD = 1_000_000_000
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "small", "messages": [{"role": "user", "content": "Classify this sentence as happy or sad."}]}


def static(*definitions: dict[str, Any]) -> dict[str, Any]:
    return {"budgets": {"definitions": list(definitions)}}


TEAM = {"id": "team-core", "scope_type": "team", "scope_id": "core", "limit_usd": "1", "period": "monthly"}


async def call(proxy: Proxy, method: str, path: str, *, status: int = 200, headers: dict[str, str] | None = None,
               **kwargs: Any) -> Any:
    resp = await proxy.client.request(method, path, headers=headers or ADMIN, **kwargs)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_crud_round_trip_and_validation(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=static(TEAM))
    created = await call(proxy, "POST", "/api/v1/budgets", status=201, json={
        "name": "Alice daily", "scopeType": "user", "scopeId": "alice", "amount": "2.50", "period": "daily",
        "alerts": [{"threshold": 50, "actions": ["notify"]}, {"threshold": 90, "actions": ["auto-downgrade"]}],
        "tags": ["eng"]})
    budget_id = created["id"]
    assert created["amount"] == "2.5" and created["scopeType"] == "user" and created["createdBy"] == "admin"
    assert [a["threshold"] for a in created["alerts"]] == [50, 90]
    assert (await call(proxy, "GET", f"/api/v1/budgets/{budget_id}"))["name"] == "Alice daily"
    listed = await call(proxy, "GET", "/api/v1/budgets?scopeType=user&scopeId=alice&withStatus=true")
    assert [b["id"] for b in listed["data"]] == [budget_id] and listed["data"][0]["status"]["status"] == "normal"
    patched = await call(proxy, "PATCH", f"/api/v1/budgets/{budget_id}", json={"amount": 3})
    assert patched["amount"] == "3" and patched["name"] == "Alice daily"
    replaced = await call(proxy, "PUT", f"/api/v1/budgets/{budget_id}", json={
        "scopeType": "user", "scopeId": "alice", "amount": "4", "period": "weekly"})
    assert (replaced["amount"], replaced["period"], replaced["name"]) == ("4", "weekly", "")
    bad = await call(proxy, "POST", "/api/v1/budgets", status=400, json={"scopeType": "user", "scopeId": "x",
                                                                         "amount": "0.0000000001"})
    assert bad["error"]["param"] == "amount"
    assert (await call(proxy, "PATCH", "/api/v1/budgets/team-core", status=403, json={"amount": 5}))["error"][
        "code"] == "forbidden"  # defined in the configuration file: read-only
    audit = await call(proxy, "GET", f"/api/v1/budgets/{budget_id}/audit")
    assert [r["action"] for r in audit["data"]] == ["budget.updated", "budget.updated", "budget.created"]
    await call(proxy, "DELETE", f"/api/v1/budgets/{budget_id}")
    await call(proxy, "GET", f"/api/v1/budgets/{budget_id}", status=404)


async def test_status_shapes_after_real_spend(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=static({**TEAM, "limit_usd": "0.00004", "thresholds": [
        50, {"percent": 80, "actions": ["notify", {"type": "restrict-models", "tiers": ["economy"]}]}, 100]}))
    answers = []
    for _ in range(3):  # the first spends 69 % of the limit; the worst case of another no longer fits
        resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
        body = await resp.json()
        answers.append((resp.status, body["error"]["code"] if resp.status != 200 else body["model"]))
    assert answers == [(200, "small"), (429, "budget_exceeded"), (429, "budget_exceeded")]
    spent = sum(e.cost_nanos for e in await proxy.ledger())
    status = await call(proxy, "GET", "/api/v1/budgets/team-core/status")
    assert status["budgetId"] == "team-core" and status["currency"] == "USD" and status["limit"] == "0.00004"
    assert spent > 0 and status["currentAmount"] == usd(spent)
    for key in ("percentUsed", "remaining", "daysRemaining", "burnRate", "projectedTotal", "status",
                "activeAlerts", "lastUpdated", "costRestrictions"):
        assert key in status
    assert status["stale"] is False
    crossed = [a["threshold"] for a in status["activeAlerts"]]
    assert crossed == [t for t in (50, 80, 100) if spent * 100 >= 40_000 * t]
    assert all(a["acknowledged"] is False and a["triggeredAt"] for a in status["activeAlerts"])
    scope = await call(proxy, "GET", "/api/v1/budgets/status/team/core")
    assert scope["scopeType"] == "team" and [b["budgetId"] for b in scope["budgets"]] == ["team-core"]
    assert scope["status"] == status["status"]
    if 80 in crossed:
        assert scope["costRestrictions"]["allowedTiers"] == ["economy"]
    assert (await call(proxy, "GET", "/api/v1/budgets/status/organization/acme"))["budgets"] == []
    await call(proxy, "GET", "/api/v1/budgets/status/galaxy/acme", status=400)


async def test_usage_recorded_exactly_once_and_listed(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=static(TEAM))
    body = {"amount": "0.123456789", "currency": "USD", "source": "relaycore", "description": "direct call",
            "metadata": {"requestId": "rc-1", "modelId": "gpt-x", "userId": "bob", "tags": ["batch"]}}
    first = await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=201, json=body)
    assert first["duplicate"] is False and first["status"]["currentAmount"] == "0.123456789"
    again = await call(proxy, "POST", "/api/v1/budgets/team-core/usage", json=body)
    assert again["duplicate"] is True and again["status"]["currentAmount"] == "0.123456789"
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=201, json={"amount": 1, "source": "manual"})
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=400, json={"amount": "1", "source": "proxy"})
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=400, json={"amount": 0.1 + 0.2})
    entries = [e for e in await proxy.ledger() if e.endpoint == "usage"]
    assert (entries[0].cost_nanos, entries[0].source, entries[0].request_id) == (123_456_789, "relaycore", "rc-1")
    assert sum(e.cost_nanos for e in entries) == 1_123_456_789
    listed = await call(proxy, "GET", "/api/v1/budgets/team-core/usage?limit=10")
    assert [u["amount"] for u in listed["data"]] == ["1", "0.123456789"]
    assert listed["data"][1]["metadata"] == {"requestId": "rc-1", "modelId": "gpt-x", "userId": "bob",
                                             "teamId": "core", "projectId": None, "tags": ["batch"]}
    summary = await call(proxy, "GET", "/api/v1/budgets/team-core/usage/summary")
    assert summary["totals"]["amount"] == "1.123456789" and summary["status"] == "exhausted"
    assert {s["source"]: s["amount"] for s in summary["bySource"]} == {"manual": "1", "relaycore": "0.123456789"}


async def test_check_constraints_reports_and_overrides(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=static(TEAM))
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=201,
               json={"amount": "0.7", "metadata": {"modelId": "m1", "userId": "u1"}})
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=201,
               json={"amount": "0.1", "metadata": {"modelId": "m2", "userId": "u2"}})
    ok = await call(proxy, "POST", "/api/v1/budgets/team-core/check-constraints", json={"estimatedCost": "0.1"})
    assert ok["canProceed"] is True and ok["remaining"] == "0.2" and ok["status"] == "critical"
    no = await call(proxy, "POST", "/api/v1/budgets/team-core/check-constraints", json={"estimatedCost": "0.5"})
    assert no["canProceed"] is False and "request a temporary increase" in no["suggestedActions"]
    report = await call(proxy, "GET", "/api/v1/budgets/team-core/reports?groupBy=model")
    assert report["totals"]["amount"] == "0.8" and report["totals"]["requests"] == 2
    assert [(r["key"], r["amount"], r["percent"]) for r in report["data"]] == [("m1", "0.7", 87.5), ("m2", "0.1", 12.5)]
    assert [s["userId"] for s in report["topSpenders"]] == ["u1", "u2"]
    by_day = await call(proxy, "GET", "/api/v1/budgets/team-core/reports?groupBy=day&timeRange=7d")
    assert len(by_day["data"]) == 1 and by_day["data"][0]["amount"] == "0.8"
    await call(proxy, "GET", "/api/v1/budgets/team-core/reports?groupBy=planet", status=400)
    await call(proxy, "GET", "/api/v1/budgets/team-core/reports?timeRange=yesterday-ish", status=400)
    grant = await call(proxy, "POST", "/api/v1/budgets/team-core/overrides", status=201,
                       json={"type": "increase", "amount": "1", "durationMinutes": 60, "reason": "launch day"})
    assert (await call(proxy, "GET", "/api/v1/budgets/team-core/status"))["limit"] == "2"
    assert (await call(proxy, "POST", "/api/v1/budgets/team-core/check-constraints",
                       json={"estimatedCost": "0.5"}))["canProceed"] is True
    revoked = await call(proxy, "DELETE", f"/api/v1/budgets/team-core/overrides/{grant['id']}")
    assert revoked["active"] is False and revoked["revokedBy"] == "admin"
    assert (await call(proxy, "GET", "/api/v1/budgets/team-core/status"))["limit"] == "1"


async def test_acknowledging_a_fired_threshold(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=static(TEAM))
    await call(proxy, "POST", "/api/v1/budgets/team-core/alerts/50/acknowledge", status=400, json={})
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=201, json={"amount": "0.6"})
    ack = await call(proxy, "POST", "/api/v1/budgets/team-core/alerts/50/acknowledge",
                     headers={**ADMIN, "X-Costproxy-Actor": "finance@acme"}, json={"note": "expected"})
    assert ack["acknowledgedBy"] == "finance@acme"
    [alert] = (await call(proxy, "GET", "/api/v1/budgets/team-core/status"))["activeAlerts"]
    assert (alert["threshold"], alert["acknowledged"], alert["acknowledgedBy"], alert["note"]) == (
        50, True, "finance@acme", "expected")


async def test_read_only_scoped_tokens(make_proxy: ProxyFactory) -> None:
    org = {"id": "org-acme", "scope_type": "org", "scope_id": "acme", "limit_usd": "10"}
    proxy = await make_proxy(extra=static(TEAM, org))
    created = await call(proxy, "POST", "/api/v1/tokens", status=201, json={
        "name": "planner agent", "scopes": [{"scopeType": "team", "scopeId": "core"}], "expiresInSeconds": 3600})
    secret = created["token"]
    assert secret.startswith("cpro-") and created["role"] == "read-only"
    rows = await proxy.app[STORE].query("SELECT body FROM alert_docs WHERE kind = 'tokens'")
    assert secret not in rows[0]["body"]  # stored hashed, shown once
    agent = {"Authorization": f"Bearer {secret}"}
    assert (await call(proxy, "GET", "/api/v1/budgets/team-core/status", headers=agent))["budgetId"] == "team-core"
    assert [b["id"] for b in (await call(proxy, "GET", "/api/v1/budgets", headers=agent))["data"]] == ["team-core"]
    await call(proxy, "GET", "/api/v1/budgets/org-acme/status", headers=agent, status=404)
    await call(proxy, "GET", "/api/v1/budgets/status/organization/acme", headers=agent, status=404)
    assert (await call(proxy, "POST", "/api/v1/budgets/team-core/check-constraints", headers=agent,
                       json={"estimatedCost": "0.01"}))["canProceed"] is True
    await call(proxy, "POST", "/api/v1/budgets/team-core/usage", headers=agent, status=403, json={"amount": "1"})
    await call(proxy, "PATCH", "/api/v1/budgets/team-core", headers=agent, status=403, json={"amount": "1"})
    await call(proxy, "GET", "/api/v1/keys", headers=agent, status=403)  # scoped: budget routes only
    await call(proxy, "GET", "/api/v1/tokens", headers=agent, status=403)
    wide = (await call(proxy, "POST", "/api/v1/tokens", status=201, json={"name": "dashboard"}))["token"]
    assert (await call(proxy, "GET", "/api/v1/keys", headers={"Authorization": f"Bearer {wide}"}))["data"]
    await call(proxy, "POST", "/api/v1/keys", headers={"Authorization": f"Bearer {wide}"}, status=403, json={})
    listed = await call(proxy, "GET", "/api/v1/tokens")
    assert {t["name"] for t in listed["data"]} == {"planner agent", "dashboard"}
    assert all("token" not in t for t in listed["data"])
    await call(proxy, "DELETE", f"/api/v1/tokens/{created['id']}")
    await call(proxy, "GET", "/api/v1/budgets", headers=agent, status=401)


async def test_scoped_token_selects_only_for_principals_in_its_scopes(make_proxy: ProxyFactory) -> None:
    """Selection reads the budgets of every scope its metadata names; a scope-limited token may not
    learn another team's remaining amount or budget name through it (404, as its status would)."""
    secret_budget = {"id": "secret-budget", "name": "Secret", "scope_type": "team", "scope_id": "other",
                     "limit_usd": "123.456"}
    proxy = await make_proxy(extra=static(TEAM, secret_budget))
    token = (await call(proxy, "POST", "/api/v1/tokens", status=201, json={
        "name": "core agent", "scopes": [{"scopeType": "team", "scopeId": "core"}]}))["token"]
    agent = {"Authorization": f"Bearer {token}"}
    select = {"content": {"messages": [{"role": "user", "content": "hi"}]}}
    # the admin token sees the other team's budget in the answer
    admin = await call(proxy, "POST", "/api/v1/models/select", json={**select, "metadata": {"teamId": "other"}})
    assert admin["budgetImpact"]["remainingBefore"].startswith("123.456")
    await call(proxy, "GET", "/api/v1/budgets/status/team/other", headers=agent, status=404)
    for metadata, param in (({"teamId": "other"}, "metadata.teamId"), ({"team": "other"}, "metadata.teamId"),
                            ({"teamId": "core", "userId": "alice"}, "metadata.userId"),
                            ({"teamId": "core", "organizationId": "acme"}, "metadata.organizationId")):
        refused = await call(proxy, "POST", "/api/v1/models/select", headers=agent, status=404,
                             json={**select, "metadata": metadata})
        assert refused["error"]["code"] == "not_found" and refused["error"]["param"] == param, refused
        assert "secret" not in str(refused).lower() and "123" not in str(refused)
    own = await call(proxy, "POST", "/api/v1/models/select", headers=agent, json={**select, "metadata": {
        "teamId": "core"}})
    assert own["budgetImpact"]["remainingBefore"].startswith("1.0")
    anonymous = await call(proxy, "POST", "/api/v1/models/select", headers=agent, json=select)
    assert "remainingBefore" not in anonymous["budgetImpact"]
    # estimate names no principal (a metadata key is refused as unknown): nothing of any budget in it
    estimated = await call(proxy, "POST", "/api/v1/models/estimate", headers=agent, json=select)
    assert "123.456" not in str(estimated) and "secret" not in str(estimated).lower()
    refused = await call(proxy, "POST", "/api/v1/models/estimate", headers=agent, status=400,
                         json={**select, "metadata": {"teamId": "other"}})
    assert refused["error"]["param"] == "metadata" and "123.456" not in str(refused)


def _template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


async def test_openapi_covers_every_api_route(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.get("/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    assert document["openapi"].startswith("3.1")
    documented = {(_template(p), m.upper()) for p, ops in document["paths"].items() for m in ops}
    served = set()
    for route in proxy.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and path.startswith("/api/v1/") and route.method not in ("HEAD", "OPTIONS"):
            served.add((_template(path), route.method))
    assert served - documented == set()
    assert documented - served == set()


# --- Redis briefly unreachable ---------------------------------------------------------------------


@pytest.mark.redis
async def test_status_answers_from_local_state_while_redis_is_down(
        aiohttp_client: Any, simulator: Any, write_config: Any, own_redis: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    url, _ = simulator
    config = {"budgets": {"refresh_interval_s": 0.1, "definitions": [TEAM]},
              "alerts": {"refresh_interval_s": 0.1}}
    settings = load_test_settings(write_config(url, extra=config), COSTPROXY_STORE_URL=own_redis.endpoint + "/0")
    app: web.Application = create_app(settings)
    client = await aiohttp_client(app)
    resp = await client.post("/api/v1/budgets/team-core/usage", headers=ADMIN, json={"amount": "0.25"})
    assert resp.status == 201, await resp.text()
    own_redis.stop()

    async def stale() -> bool:  # answered from local state once a refresh failed
        async with client.get("/api/v1/budgets/team-core/status", headers=ADMIN) as resp:
            body = await resp.json()
            assert resp.status == 200 and body["currentAmount"] == "0.25", body
            return body["stale"] is True and float(resp.headers["x-costproxy-stale-seconds"]) > 0

    await eventually(stale, what="the status marked stale")
    resp = await client.get("/api/v1/budgets/team-core/status", headers=ADMIN)
    body = await resp.json()
    assert resp.status == 200 and body["stale"] is True and body["staleSeconds"] > 0
    resp = await client.post("/api/v1/budgets", headers=ADMIN, json={"scopeType": "user", "scopeId": "x",
                                                                      "amount": "1"})
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "store_unavailable"
    own_redis.start()

    async def fresh() -> Any:
        body = await (await client.get("/api/v1/budgets/team-core/status", headers=ADMIN)).json()
        return body if body["stale"] is False else None

    body = await eventually(fresh, what="the status fresh again")
    assert body["currentAmount"] == "0"  # a fresh Redis: no persistence


async def test_a_webhooks_section_is_refused_not_ignored(make_proxy: ProxyFactory) -> None:
    with pytest.raises(ConfigError, match="webhooks: webhook subscriptions are managed through"):
        await make_proxy(extra={"webhooks": [{"url": "https://hooks.example"}]})


@pytest.mark.parametrize("alerts", [True, False])
async def test_usage_idempotency_holds_without_the_alert_manager(make_proxy: ProxyFactory, alerts: bool) -> None:
    proxy = await make_proxy(extra={**static(TEAM), "alerts": {"enabled": alerts}})
    body = {"amount": "0.25", "source": "relaycore", "metadata": {"requestId": "rc-1"}}
    replies = await asyncio.gather(*(proxy.client.post("/api/v1/budgets/team-core/usage", json=body, headers=ADMIN)
                                     for _ in range(8)))
    assert sorted(r.status for r in replies) == [200] * 7 + [201]
    keyed = {**ADMIN, "Idempotency-Key": "batch-7"}
    first = await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=201, headers=keyed,
                       json={"amount": "0.5", "source": "manual"})
    again = await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=200, headers=keyed,
                       json={"amount": "0.5", "source": "manual"})
    assert first["duplicate"] is False and again["duplicate"] is True and again["idempotencyKey"] == "batch-7"
    assert first["idempotencyKey"] == "batch-7"  # the 201 says which key claimed it, as the 200 does
    status = await call(proxy, "GET", "/api/v1/budgets/team-core/status")
    assert status["currentAmount"] == "0.75"
    usage = await call(proxy, "GET", "/api/v1/budgets/team-core/usage")
    assert len(usage["data"]) == 2
    bad = await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=400,
                     headers={**ADMIN, "Idempotency-Key": "x" * 300}, json={"amount": "1"})
    assert bad["error"]["param"] == "Idempotency-Key"
    empty = await call(proxy, "POST", "/api/v1/budgets/team-core/usage", status=400,
                       headers={**ADMIN, "Idempotency-Key": " "}, json={"amount": "1", "source": "manual"})
    assert empty["error"]["param"] == "Idempotency-Key"  # not "no key": each retry would be charged


async def test_a_query_parameter_the_operation_does_not_document_is_a_400(make_proxy: ProxyFactory) -> None:
    """A misspelt filter (``since`` for ``from``) was ignored, and the unfiltered answer looked like
    the answer to the question asked. Documented parameters pass in both spellings."""
    proxy = await make_proxy(extra=static(TEAM))
    refused = await call(proxy, "GET", "/api/v1/budgets?scope=team", status=400)
    assert refused["error"]["param"] == "scope" and "scopeType" in refused["error"]["message"]
    events = await call(proxy, "GET", "/api/v1/events?from=2026-01-01", status=400)
    assert events["error"]["param"] == "from"
    await call(proxy, "GET", "/api/v1/budgets?scopeType=team&withStatus=true")
    await call(proxy, "GET", "/api/v1/budgets?scope_type=team&with_status=true")  # snake_case spellings
    await call(proxy, "GET", "/api/v1/events?limit=5")
