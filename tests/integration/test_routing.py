"""Selection, steering and fallback through the running app against the simulated upstream."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import yaml

from costproxy.http.state import ROUTER, SERVICES
from tests.polling import eventually

ADMIN = {"Authorization": "Bearer test-admin-token"}
SIMPLE = {"model": "auto", "messages": [{"role": "user", "content": "Classify the sentiment of: I love it."}]}


async def test_auto_selects_cheaper_model_with_decision(make_proxy) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    served = resp.headers["x-costproxy-model"]
    assert served in {"small", "backup"}  # an economy model is enough for classification
    decision_id = resp.headers["x-costproxy-decision-id"]
    [entry] = await proxy.ledger()
    assert entry.decision_id == decision_id and entry.requested_model == "auto"
    assert entry.baseline_nanos > entry.cost_nanos  # baseline: the premium default "big"
    explained = await proxy.client.get(f"/api/v1/decisions/{decision_id}", headers=ADMIN)
    record = await explained.json()
    assert record["decision"]["model"] == served and record["decision"]["reasons"]


async def test_quality_mode_prefers_premium(make_proxy) -> None:
    proxy = await make_proxy()
    body = {**SIMPLE, "model": "auto:quality",
            "messages": [{"role": "user", "content": "Prove that there are infinitely many primes, rigorously."}]}
    resp = await proxy.client.post("/v1/chat/completions", json=body, headers=proxy.auth())
    assert resp.status == 200
    assert resp.headers["x-costproxy-model"] == "big"


async def test_capabilities_respected(make_proxy) -> None:
    proxy = await make_proxy()
    body = {"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}]}]}
    resp = await proxy.client.post("/v1/chat/completions", json=body, headers=proxy.auth())
    assert resp.status == 200
    assert resp.headers["x-costproxy-model"] == "big"  # the only vision model


async def test_fallback_to_next_model_on_upstream_500(make_proxy) -> None:
    proxy = await make_proxy()
    first = await proxy.client.post("/api/v1/models/select", headers=ADMIN,
                                     json={"content": {"messages": SIMPLE["messages"]}})
    selection = await first.json()
    primary, fallbacks = selection["selectedModel"], selection["fallbackChain"]
    assert fallbacks
    proxy.sim.plan(model=primary, fault="500", times=1)
    resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers=proxy.auth())
    assert resp.status == 200
    assert resp.headers["x-costproxy-model"] == fallbacks[0]
    [entry] = await proxy.ledger()
    assert entry.served_model == fallbacks[0] and entry.status == "ok"


async def test_circuit_opens_after_repeated_failures(make_proxy) -> None:
    proxy = await make_proxy()
    selection = await (await proxy.client.post("/api/v1/models/select", headers=ADMIN,
                                               json={"content": {"messages": SIMPLE["messages"]}})).json()
    primary = selection["selectedModel"]
    proxy.sim.plan(model=primary, fault="503")
    for _ in range(3):
        resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers=proxy.auth())
        assert resp.status == 200
    calls_before = sum(1 for c in proxy.sim.calls if c.model == primary)
    resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers=proxy.auth())
    assert resp.status == 200 and resp.headers["x-costproxy-model"] != primary
    assert sum(1 for c in proxy.sim.calls if c.model == primary) == calls_before  # not even tried


async def test_steering_reject_and_route_and_cap(make_proxy) -> None:
    rules = {"rules": [
        {"id": "no-interns", "name": "block intern team", "priority": 1,
         "conditions": [{"field": "principal.team", "operator": "equals", "value": "interns"}],
         "actions": [{"type": "reject", "params": {"message": "interns may not call models"}}]},
        {"id": "pin-classification", "name": "classification to backup", "priority": 5,
         "conditions": [{"field": "request.task_type", "operator": "equals", "value": "classification"}],
         "actions": [{"type": "route", "params": {"model": "backup"}},
                     {"type": "cap-output-tokens", "params": {"max_tokens": 7}}]},
    ]}
    proxy = await make_proxy(rules={"team.yaml": rules})
    intern = await proxy.new_key(team="interns", user="ivy")
    resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers=proxy.auth(intern))
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "rule_rejected"
    resp = await proxy.client.post("/v1/chat/completions", json={**SIMPLE, "model": "big"}, headers=proxy.auth())
    assert resp.status == 200 and resp.headers["x-costproxy-model"] == "backup"
    assert proxy.sim.calls[-1].body["max_tokens"] == 7


async def test_rules_hot_reload_keeps_last_good_set(make_proxy, tmp_path, monkeypatch) -> None:
    import costproxy.http.app as app_module

    monkeypatch.setattr(app_module, "RULES_POLL_SECONDS", 0.05)
    proxy = await make_proxy()
    holder = proxy.app[SERVICES].router.rules
    rules_file = tmp_path / "rules" / "live.yaml"
    good: dict[str, Any] = {"rules": [{"id": "deny-big", "name": "deny", "priority": 1, "conditions": [],
                                       "actions": [{"type": "reject", "params": {"message": "closed"}}]}]}
    rules_file.write_text(yaml.safe_dump(good))
    await eventually(lambda: holder.current.get("deny-big") is not None, what="the new rule loaded")
    resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers=proxy.auth())
    assert resp.status == 403
    rules_file.write_text("rules: [{id: broken, priority: x}]")
    await eventually(lambda: holder.last_result is not None and not holder.last_result.ok,
                     what="the broken file read and refused")
    assert holder.current.get("deny-big") is not None  # last good set still in force
    assert holder.last_result is not None and not holder.last_result.ok


async def test_select_api_shape(make_proxy) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/api/v1/models/select", headers=ADMIN, json={
        "requestId": "r-1",
        "content": {"messages": [{"role": "user", "content": "Translate 'good morning' into French."}]},
        "metadata": {"userId": "u1", "teamId": "core", "taskType": "translation", "qualityRequirement": "economy"},
        "constraints": {"excludedModels": ["backup"], "maxCost": "0.01", "requiredCapabilities": ["tools"]}})
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert data["requestId"] == "r-1" and data["selectedModel"] == "small"
    assert data["taskType"] == "translation"
    assert set(data) >= {"alternatives", "reasoning", "estimatedCost", "budgetImpact", "qualityExpectation",
                         "fallbackChain"}
    assert "backup" not in data["fallbackChain"]
    caps = await (await proxy.client.get("/api/v1/models/capabilities", headers=ADMIN)).json()
    assert {m["model"] for m in caps["data"]} >= {"big", "small"}
    estimate = await (await proxy.client.post("/api/v1/models/estimate", headers=ADMIN, json={
        "content": {"messages": SIMPLE["messages"]}, "models": ["big", "small"], "outputTokens": 100})).json()
    assert [r["model"] for r in estimate["data"]] == ["small", "big"]


async def test_concrete_model_skips_task_detection_unless_a_rule_reads_it(make_proxy) -> None:
    auto_only = {"rules": [{"id": "cap-auto-classification", "name": "c", "priority": 1, "conditions": [
        {"field": "request.model_requested_virtual", "operator": "equals", "value": True},
        {"field": "request.task_type", "operator": "equals", "value": "classification"}],
        "actions": [{"type": "cap-output-tokens", "params": {"max_tokens": 9}}]}]}
    proxy = await make_proxy(rules={"r.yaml": auto_only})
    resp = await proxy.client.post("/v1/chat/completions", json={**SIMPLE, "model": "small"},
                                   headers=proxy.auth())
    assert resp.status == 200
    [entry] = await proxy.ledger()
    assert entry.task_type is None  # not analyzed: no rule could use it
    resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers=proxy.auth())
    assert proxy.sim.calls[-1].body["max_tokens"] == 9  # auto: analyzed, the rule applied


# --- the caller's intent: a named model is served as asked, capped to fit, or refused ---------------

NAMED = {"model": "big", "messages": [{"role": "user", "content": "Tell me about the sea."}]}


def team_budget(limit: str, **extra: Any) -> dict[str, Any]:
    return {"budgets": [{"id": "core", "scope_type": "team", "scope_id": "core", "limit_usd": limit,
                         "period": "monthly", **extra}]}


async def test_a_budget_too_small_for_the_full_answer_caps_the_named_model(make_proxy) -> None:
    # big: $2.50 in / $10 out per 1M; 4,096 output tokens would cost ~$0.041, the team has $0.005
    proxy = await make_proxy(extra=team_budget("0.005"))
    resp = await proxy.client.post("/v1/chat/completions", json=NAMED, headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    assert resp.headers["x-costproxy-model"] == "big"
    cap = proxy.sim.calls[-1].body["max_tokens"]
    assert 16 <= cap < 500  # lowered so the worst case fits what is left, not switched
    assert int(float(resp.headers["x-costproxy-max-cost-usd"]) * 1e9) <= 5_000_000


async def test_a_budget_that_cannot_fit_a_useful_answer_refuses_the_named_model(make_proxy) -> None:
    proxy = await make_proxy(extra=team_budget("0.0001"))  # less than 16 output tokens of big
    resp = await proxy.client.post("/v1/chat/completions", json=NAMED, headers=proxy.auth())
    body = await resp.json()
    assert resp.status == 429 and body["error"]["code"] == "budget_exceeded", body
    assert resp.headers["x-should-retry"] == "false"
    assert not proxy.sim.calls
    [entry] = await proxy.ledger()
    assert (entry.status, entry.cost_nanos, entry.error_code) == ("refused", 0, "budget_exceeded")


async def test_restrict_models_refuses_a_named_model_it_excludes(make_proxy) -> None:
    restricted = team_budget("10", thresholds=[{"percent": 1, "actions": [
        {"type": "restrict-models", "tiers": ["economy"]}]}])
    proxy = await make_proxy(extra=restricted)
    await proxy.client.post("/api/v1/budgets/core/usage", headers=ADMIN, json={"amount": "0.2", "source": "manual"})
    resp = await proxy.client.post("/v1/chat/completions", json=NAMED, headers=proxy.auth())
    body = await resp.json()
    assert resp.status == 403 and body["error"]["code"] == "model_not_allowed", body
    assert "budget core: restrict-models" in body["error"]["message"]
    ok = await proxy.client.post("/v1/chat/completions", json={**NAMED, "model": "small"}, headers=proxy.auth())
    assert ok.status == 200 and ok.headers["x-costproxy-model"] == "small"


async def test_auto_downgrade_switches_a_named_model_only_to_its_targets(make_proxy) -> None:
    downgrading = team_budget("10", thresholds=[{"percent": 1, "actions": [
        {"type": "auto-downgrade", "models": ["small"]}]}])
    proxy = await make_proxy(extra=downgrading)
    await proxy.client.post("/api/v1/budgets/core/usage", headers=ADMIN, json={"amount": "0.2", "source": "manual"})
    resp = await proxy.client.post("/v1/chat/completions", json=NAMED, headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    assert (resp.headers["x-costproxy-requested-model"], resp.headers["x-costproxy-model"]) == ("big", "small")
    decision = await (await proxy.client.get(f"/api/v1/decisions/{resp.headers['x-costproxy-decision-id']}",
                                              headers=ADMIN)).json()
    assert decision["decision"]["model"] == "small"


async def test_a_cost_header_never_switches_a_named_model(make_proxy) -> None:
    from costproxy.settings import TrustedProxySettings

    relay = TrustedProxySettings(name="relay", secret_env="RELAY_SECRET", secret="relay-secret")
    proxy = await make_proxy(settings_changes={"trusted_proxies": (relay,)})
    trusted = {**proxy.auth(), "X-Costproxy-Proxy-Secret": "relay-secret"}
    capped = await proxy.client.post("/v1/chat/completions", json=NAMED,
                                     headers={**trusted, "X-Costproxy-Max-Cost-Usd": "0.001"})
    assert capped.status == 200 and capped.headers["x-costproxy-model"] == "big"  # capped, not switched
    assert proxy.sim.calls[-1].body["max_tokens"] < 100
    refused = await proxy.client.post("/v1/chat/completions", json=NAMED,
                                      headers={**trusted, "X-Costproxy-Max-Cost-Usd": "0.000001"})
    body = await refused.json()
    assert refused.status == 403 and body["error"]["code"] == "model_not_allowed", body
    assert "cost limit" in body["error"]["message"]
    assert len(proxy.sim.calls) == 1


async def test_a_preferred_model_is_a_preference_not_a_pin(make_proxy) -> None:
    """/models/select with constraints.preferredModel: chosen when it can serve; otherwise what auto
    chooses, with the reason the preferred model is not it — never an error for the deployment's state."""
    proxy = await make_proxy()
    content = {"messages": SIMPLE["messages"]}

    async def select(constraints: dict, status: int = 200) -> dict:
        resp = await proxy.client.post("/api/v1/models/select", headers=ADMIN,
                                       json={"content": content, "constraints": constraints})
        body = await resp.json()
        assert resp.status == status, body
        return body

    chosen = await select({"preferredModel": "big"})
    assert chosen["selectedModel"] == "big"
    assert chosen["preferredModel"] == {"model": "big", "selected": True, "code": None, "reason": None}
    auto = await select({})
    assert auto["preferredModel"] is None and auto["selectedModel"] != "big"
    excluded = await select({"preferredModel": "big", "excludedModels": ["big"]})
    assert excluded["selectedModel"] == auto["selectedModel"]
    assert excluded["preferredModel"]["selected"] is False and excluded["preferredModel"]["code"] == "model_not_allowed"
    proxy.app[ROUTER].unservable["big"] = "provider sim has no API key (SIM_API_KEY is not set)"
    unkeyed = await select({"preferredModel": "big"})
    assert unkeyed["selectedModel"] == auto["selectedModel"]
    assert unkeyed["preferredModel"]["code"] == "provider_not_configured"
    assert "SIM_API_KEY" in unkeyed["preferredModel"]["reason"]
    listed = {m["model"]: m for m in (await (await proxy.client.get("/api/v1/models/capabilities",
                                                                       headers=ADMIN)).json())["data"]}
    assert listed["big"]["servable"] is False and "SIM_API_KEY" in listed["big"]["notServableReason"]
    assert listed["small"]["servable"] is True and listed["small"]["notServableReason"] is None
    # the API's minQuality bounds the preferred model as it bounds auto's choice
    strict = await select({"preferredModel": "small", "minQuality": 0.945})  # small 0.94, big 0.95 here
    assert strict["selectedModel"] != "small" and strict["preferredModel"]["selected"] is False
    assert strict["preferredModel"]["code"] == "constraint_not_met"
    assert "min_quality" in strict["preferredModel"]["reason"]
    assert (await select({"preferredModel": "small", "minQuality": 0.5}))["selectedModel"] == "small"
    typo = await select({"preferredModel": "no-such-model"}, status=404)  # the caller's mistake stays an error
    assert typo["error"]["code"] == "model_not_found"


async def test_rules_read_any_header_a_client_sends_but_not_credentials_or_untrusted_identity(make_proxy) -> None:
    """``request.headers.<name>`` is any header the client sent (docs/rules.md); the client's
    credentials are never visible to rules, and the identity and control headers only from a
    trusted proxy, as everywhere else."""
    from costproxy.settings import TrustedProxySettings

    def reject_when(rule_id: str, header: str, operator: str, value: str | None, priority: int) -> dict[str, Any]:
        condition = {"field": f"request.headers.{header}", "operator": operator}
        if value is not None:
            condition["value"] = value
        return {"id": rule_id, "name": rule_id, "priority": priority, "conditions": [condition],
                "actions": [{"type": "reject", "params": {"message": f"{rule_id} fired"}}]}

    rules = {"rules": [reject_when("probe", "X-Probe", "equals", "block", 1),
                       reject_when("agent", "user-agent", "contains", "probe-agent", 2),
                       reject_when("tenant", "x-tenant-id", "equals", "blockme", 3),
                       reject_when("secret", "authorization", "exists", None, 4),
                       reject_when("api-key", "x-api-key", "exists", None, 5)]}
    relay = TrustedProxySettings(name="relaycore", secret_env="X", secret="s3cret", sources=("127.0.0.0/8",))
    proxy = await make_proxy(rules={"headers.yaml": rules}, settings_changes={"trusted_proxies": (relay,)})

    async def answer(**headers: str) -> tuple[int, str]:
        resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers={**proxy.auth(), **headers})
        body = await resp.json()
        return resp.status, body["error"]["message"] if resp.status != 200 else "ok"

    assert await answer() == (200, "ok")  # the bearer key and the x-api-key-less request pass rule 4 and 5
    assert await answer(**{"x-probe": "block"}) == (403, "probe fired")
    assert await answer(**{"X-PROBE": "block"}) == (403, "probe fired")
    assert await answer(**{"x-probe": "other"}) == (200, "ok")
    assert await answer(**{"User-Agent": "probe-agent/1.0"}) == (403, "agent fired")
    assert await answer(**{"X-Tenant-ID": "blockme"}) == (200, "ok")  # from a client: ignored, as for routing
    assert await answer(**{"X-Tenant-ID": "blockme", "X-Costproxy-Proxy-Secret": "s3cret"}) == (403, "tenant fired")
    assert await answer(**{"x-api-key": proxy.auth()["Authorization"][7:]}) == (200, "ok")


async def test_a_negative_cost_limit_is_a_400_not_no_eligible_model(make_proxy) -> None:
    """A negative X-Costproxy-Max-Cost-Usd or constraints.maxCost was a 422 'exceeds the limit $-1'."""
    from costproxy.settings import TrustedProxySettings

    relay = TrustedProxySettings(name="relay", secret_env="RELAY_SECRET", secret="relay-secret")
    proxy = await make_proxy(settings_changes={"trusted_proxies": (relay,)})
    trusted = {**proxy.auth(), "X-Costproxy-Proxy-Secret": "relay-secret"}
    for body in (SIMPLE, NAMED):
        resp = await proxy.client.post("/v1/chat/completions", json=body,
                                       headers={**trusted, "X-Costproxy-Max-Cost-Usd": "-1"})
        answer = await resp.json()
        assert resp.status == 400 and answer["error"]["code"] == "invalid_request", answer
        assert "must not be negative" in answer["error"]["message"]
        assert answer["error"]["param"] == "X-Costproxy-Max-Cost-Usd"
    assert not proxy.sim.calls
    resp = await proxy.client.post("/api/v1/models/select", headers=ADMIN, json={
        "content": {"messages": SIMPLE["messages"]}, "constraints": {"maxCost": "-1"}})
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["param"] == "constraints.maxCost", answer
    assert "must not be negative" in answer["error"]["message"]


async def test_the_estimate_refuses_unknown_keys_and_honours_max_tokens(make_proxy) -> None:
    """/models/estimate accepted {"bogusField": 1} (README: no key is ever silently ignored) and priced
    the worst case for the model's whole output limit whatever the request's max_tokens."""
    proxy = await make_proxy()
    messages = SIMPLE["messages"]

    async def estimate(body: dict, status: int = 200) -> dict:
        resp = await proxy.client.post("/api/v1/models/estimate", headers=ADMIN, json=body)
        answer = await resp.json()
        assert resp.status == status, answer
        return answer

    for body, param in [({"messages": messages, "bogusField": 1}, "bogusField"),
                        ({"messages": messages, "model": "small"}, "model"),
                        ({"content": {"messages": messages}, "max_tokens": 5}, "max_tokens"),
                        ({"content": [], "models": ["small"]}, "content")]:
        error = (await estimate(body, 400))["error"]
        assert error["code"] == "invalid_request" and error["param"] == param, error
    unbounded = {r["model"]: r for r in (await estimate({"messages": messages, "models": ["small"]}))["data"]}
    assert unbounded["small"]["maxOutputTokens"] == 4096  # the model's limit
    for body in ({"messages": messages, "models": ["small"], "max_tokens": 10, "outputTokens": 50},
                 {"content": {"messages": messages, "max_completion_tokens": 10}, "models": ["small"],
                  "outputTokens": 50}):
        [row] = (await estimate(body))["data"]
        assert row["maxOutputTokens"] == 10 and row["outputTokens"] == 10, row
        assert Decimal(row["worstCaseCost"]) < Decimal(unbounded["small"]["worstCaseCost"])
    error = (await estimate({"messages": messages, "max_tokens": 0}, 400))["error"]
    assert error["param"] == "max_tokens", error


async def test_selection_refuses_a_task_or_quality_it_does_not_know(make_proxy) -> None:
    """A ``taskType``, ``qualityRequirement`` or ``budgetPriority`` the proxy does not know was
    ignored: the answer was then for another question than the one asked. A 400 names the field;
    so does a trusted proxy's ``X-Costproxy-Task-Type`` (as ``X-Costproxy-Quality`` already did)."""
    from costproxy.settings import TrustedProxySettings

    relay = TrustedProxySettings(name="relaycore", secret_env="X", secret="s3cret", sources=("127.0.0.0/8",))
    proxy = await make_proxy(settings_changes={"trusted_proxies": (relay,)})
    content = {"messages": SIMPLE["messages"]}
    for field, value in (("taskType", "teleport"), ("qualityRequirement", "ultra"), ("budgetPriority", "urgent")):
        resp = await proxy.client.post("/api/v1/models/select", headers=ADMIN,
                                       json={"content": content, "metadata": {field: value}})
        assert resp.status == 400, field
        assert (await resp.json())["error"]["param"] == f"metadata.{field}"
    fine = await proxy.client.post("/api/v1/models/select", headers=ADMIN, json={"content": content, "metadata": {
        "taskType": "classification", "qualityRequirement": "economy", "budgetPriority": "high"}})
    assert fine.status == 200
    headers = {**proxy.auth(), "X-Costproxy-Proxy-Secret": "s3cret", "X-Costproxy-Task-Type": "teleport"}
    resp = await proxy.client.post("/v1/chat/completions", json=SIMPLE, headers=headers)
    assert resp.status == 400 and "X-Costproxy-Task-Type" in (await resp.json())["error"]["message"]
