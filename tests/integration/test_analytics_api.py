"""The /api/v1 calls the console reads: overview, spend over time (JSON and CSV), key last use, the
rule set and its validation state, savings per rule, recent decisions, and refused requests."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.budgets.codec import usd
from costproxy.http.openapi import document
from costproxy.http.state import SERVICES, STORE
from tests.conftest import ADMIN_TOKEN, Proxy, ProxyFactory
from tests.polling import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
AUTO = {"model": "auto", "messages": [{"role": "user", "content": "Classify the sentiment: I love this phone."}]}
SMALL = {"model": "small", "messages": [{"role": "user", "content": "hello"}]}
RULES = {"version": 1, "rules": [
    {"id": "cheap-classify", "name": "Classification goes economy", "priority": 10,
     "conditions": [{"field": "request.model_requested_virtual", "operator": "equals", "value": True},
                    {"field": "request.task_type", "operator": "equals", "value": "classification"}],
     "actions": [{"type": "route", "params": {"tier": "economy"}}]},
]}


async def get(proxy: Proxy, path: str, status: int = 200) -> Any:
    resp = await proxy.client.get(path, headers=ADMIN)
    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    assert resp.status == status, body
    return body


async def send(proxy: Proxy, body: dict[str, Any], key: str | None = None, status: int = 200) -> None:
    """Send one request and wait, with a bound, for its ledger entry: the answer can reach the client
    a moment before the entry is queued, and a report read at once would then miss it."""
    resp = await proxy.client.post("/v1/chat/completions", json=body, headers=proxy.auth(key))
    assert resp.status == status, await resp.text()
    request_id = resp.headers["x-costproxy-request-id"]
    await eventually(lambda: proxy.app[STORE].entries_for(request_id), what=f"the ledger entry of {request_id}")


async def test_overview_figures_match_the_ledger(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(rules={"r.yaml": RULES})
    for _ in range(3):
        await send(proxy, AUTO)
    await send(proxy, SMALL)
    body = await get(proxy, "/api/v1/analytics/overview?tz=Europe/Berlin")
    entries = await proxy.ledger()
    cost, base = sum(e.cost_nanos for e in entries), sum(e.baseline_nanos for e in entries)
    assert body["timezone"] == "Europe/Berlin" and body["currency"] == "USD"
    for part in ("today", "period"):
        assert body[part]["amount"] == usd(cost) and body[part]["baseline"] == usd(base)
        assert body[part]["saving"] == usd(base - cost) and body[part]["requests"] == 4
    assert Decimal(body["period"]["forecast"]) >= Decimal(body["period"]["amount"])
    auto = [e for e in entries if e.requested_model == "auto"]
    assert {e.served_model for e in auto} == {"backup"}  # the cheapest economy model of the test registry
    assert body["autoShare"] == [{"model": "backup", "requests": 3, "amount": usd(sum(e.cost_nanos for e in auto)),
                                  "percent": 100.0}]
    assert body["budgetsAtRisk"] == [] and body["today"]["refused"] == 0
    assert isinstance(body["serverMs"], (int, float))  # a duration: its value is the machine's
    bad = await get(proxy, "/api/v1/analytics/overview?tz=Mars/Olympus", status=400)
    assert bad["error"]["param"] == "tz" and bad["error"]["code"] == "invalid_request"


async def test_refused_requests_are_counted_never_charged(make_proxy: ProxyFactory) -> None:
    budget = {"id": "tiny", "scope_type": "team", "scope_id": "core", "limit_usd": "0.000001", "period": "daily"}
    proxy = await make_proxy(extra={"budgets": {"definitions": [budget]}})
    await send(proxy, SMALL, status=429)
    await send(proxy, {**SMALL, "model": "nope"}, status=404)  # refused, but not by policy: not counted
    entries = await proxy.ledger()
    assert [(e.status, e.error_code, e.cost_nanos, e.team) for e in entries] == [
        ("refused", "budget_exceeded", 0, "core"), ("refused", "model_not_found", 0, "core")]
    body = await get(proxy, "/api/v1/analytics/overview")
    assert body["today"]["refused"] == 1 and body["today"]["requests"] == 0
    risk = body["budgetsAtRisk"]
    assert risk == [] or risk[0]["budgetId"] == "tiny"


async def test_spend_by_group_over_time_with_drill_down_and_csv(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    other = await proxy.new_key(user="bob", team="search", org="acme")
    no_team = await proxy.new_key(user="carol")
    for key in (proxy.key, proxy.key, other, no_team):
        await send(proxy, SMALL, key)
    body = await get(proxy, "/api/v1/analytics/spend?groupBy=team&range=24h&tz=Asia/Kolkata")
    entries = await proxy.ledger()
    by_team: dict[str | None, int] = {}
    for e in entries:
        by_team[e.team] = by_team.get(e.team, 0) + e.cost_nanos
    assert body["bucket"] == "hour" and body["timezone"] == "Asia/Kolkata" and len(body["labels"]) in (24, 25)
    assert all(label.endswith(":00") for label in body["labels"])  # local hours, :30 offset folded
    assert {r["label"]: r["amount"] for r in body["rows"]} == {
        ("(none)" if k is None else k): usd(v) for k, v in by_team.items()}
    assert body["rows"][0]["key"] == "core" and body["rows"][0]["requests"] == 2
    assert body["totals"]["amount"] == usd(sum(by_team.values()))
    for series in body["series"]:
        assert len(series["amounts"]) == len(body["labels"])
    chart_total = sum(Decimal(a) for s in body["series"] for a in s["amounts"])
    assert chart_total == Decimal(body["totals"]["amount"])
    drilled = await get(proxy, "/api/v1/analytics/spend?groupBy=key&range=24h&team=core")
    assert [r["key"] for r in drilled["rows"]] == [entries[0].key_id] and drilled["filters"] == {"team": "core"}
    nobody = await get(proxy, "/api/v1/analytics/spend?groupBy=user&range=24h&team=(none)")
    assert [r["key"] for r in nobody["rows"]] == ["carol"]
    text = await get(proxy, "/api/v1/analytics/spend?groupBy=team&range=24h&tz=Asia/Kolkata&format=csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["team", "requests", "cost_usd", "baseline_usd", "saving_usd", "saving_percent",
                       "share_percent", "prompt_tokens", "completion_tokens"]
    assert [r[0] for r in rows[1:-1]] == [r["label"] for r in body["rows"]]
    assert [r[2] for r in rows[1:-1]] == [r["amount"] for r in body["rows"]]
    assert rows[-1][:3] == ["TOTAL", "4", body["totals"]["amount"]]


@pytest.mark.parametrize("query,param", [
    ("groupBy=colour", "groupBy"), ("range=forever", "range"), ("range=500d", "range"),
    ("range=90d&bucket=hour", "bucket"), ("bucket=fortnight", "bucket"), ("top=many", "top"),
    ("format=xml", "format"), ("from=2026-01-02&to=2026-01-01", "to"), ("from=yesterday", "from"),
    ("tz=Nowhere", "tz"),
])
async def test_spend_rejects_bad_parameters_by_name(make_proxy: ProxyFactory, query: str, param: str) -> None:
    proxy = await make_proxy()
    body = await get(proxy, f"/api/v1/analytics/spend?{query}", status=400)
    assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error"


async def test_spend_over_explicit_dates_in_weeks(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    await send(proxy, SMALL)
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400))
    body = await get(proxy, f"/api/v1/analytics/spend?groupBy=model&from=2026-01-01&to={today}&bucket=week")
    assert body["bucket"] == "week" and body["labels"][0] == "2026-W01" and body["rows"][0]["key"] == "small"


async def test_keys_show_their_last_use_from_the_ledger(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    idle = await proxy.new_key(user="idle")
    before = time.time()
    await send(proxy, SMALL)
    await send(proxy, SMALL)
    keys = {k["userId"]: k for k in (await get(proxy, "/api/v1/keys"))["data"]}
    last_used = datetime.fromisoformat(keys["alice"]["lastUsedAt"].replace("Z", "+00:00")).timestamp()
    assert keys["alice"]["requests"] == 2 and last_used >= before - 1
    assert keys["idle"]["lastUsedAt"] is None and keys["idle"]["requests"] == 0
    assert idle.startswith("cp-")


async def test_rule_set_state_savings_per_rule_and_decisions(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = await make_proxy(rules={"r.yaml": RULES})
    for _ in range(2):
        await send(proxy, AUTO)
    await send(proxy, SMALL)
    rules = await get(proxy, "/api/v1/rules")
    assert rules["valid"] is True and [r["id"] for r in rules["rules"]] == ["cheap-classify"]
    assert rules["rules"][0]["actions"] == [{"type": "route", "params": {"tier": "economy"}}]
    assert rules["loadedAt"] is not None and rules["files"] and rules["lastReload"]["errors"] == []
    savings = await get(proxy, "/api/v1/analytics/rules?range=1d")
    entries = await proxy.ledger()
    ruled = [e for e in entries if e.metadata.get("rules") == ["cheap-classify"]]
    assert len(ruled) == 2
    assert savings["data"] == [{"ruleId": "cheap-classify", "name": "Classification goes economy", "inForce": True,
                                "requests": 2, "amount": usd(sum(e.cost_nanos for e in ruled)),
                                "baseline": usd(sum(e.baseline_nanos for e in ruled)),
                                "saving": usd(sum(e.baseline_nanos - e.cost_nanos for e in ruled)),
                                "savingPercent": savings["data"][0]["savingPercent"]}]
    assert savings["noRule"]["requests"] == 1
    decisions = await get(proxy, "/api/v1/decisions?limit=5")
    assert len(decisions["data"]) == 2 and decisions["data"][0]["rulesFired"] == ["cheap-classify"]
    newest = decisions["data"][0]
    assert newest["outcome"]["servedModel"] == ruled[-1].served_model and Decimal(newest["outcome"]["saving"]) > 0
    assert newest["outcome"]["cost"] == usd(ruled[-1].cost_nanos) and newest["requestId"] == ruled[-1].request_id
    assert (await get(proxy, f"/api/v1/decisions/{newest['id']}"))["decision"]["model"] == newest["model"]
    await get(proxy, "/api/v1/decisions?limit=x", status=400)
    broken = {"version": 1, "rules": [{"id": "bad", "priority": 1, "actions": [{"type": "explode"}]}]}
    rules_dir = proxy.app[SERVICES].router.rules.directory  # type: ignore[attr-defined]
    (rules_dir / "broken.yaml").write_text(yaml.safe_dump(broken))

    async def refused() -> Any:  # the reloader polls every 2 s
        state = await get(proxy, "/api/v1/rules")
        return None if state["valid"] else state

    state = await eventually(refused, what="the broken rule file refused")
    assert state["valid"] is False and [r["id"] for r in state["rules"]] == ["cheap-classify"]
    assert state["lastReload"]["errors"][0]["ruleId"] == "bad" and "broken.yaml" in state["lastReload"]["errors"][0][
        "file"]


def test_openapi_documents_the_console_calls() -> None:
    paths = document()["paths"]
    for path in ("/api/v1/analytics/overview", "/api/v1/analytics/spend", "/api/v1/analytics/rules",
                 "/api/v1/rules", "/api/v1/decisions"):
        assert "get" in paths[path], path
    assert "lastUsedAt" in document()["components"]["schemas"]["Key"]["properties"]


async def test_the_overview_rollup_equals_a_scan_of_the_ledger(make_proxy: ProxyFactory) -> None:
    from costproxy.http.state import STORE
    from costproxy.ledger import analytics
    from costproxy.ledger.analytics import LedgerFilter

    budget = {"id": "tiny", "scope_type": "user", "scope_id": "zed", "limit_usd": "0.000001", "period": "daily"}
    proxy = await make_proxy(rules={"r.yaml": RULES}, extra={"budgets": {"definitions": [budget]}})
    store = proxy.app[STORE]
    zed = await proxy.new_key(user="zed")
    now = int(time.time() * 1000)
    today = analytics.local_midnight(now, "Asia/Kathmandu")  # +05:45: a midnight on a quarter hour
    for round_ in range(3):
        await send(proxy, AUTO)
        await send(proxy, SMALL)
        await send(proxy, SMALL, zed, status=429)
        rolled = await analytics.overview_sums(store, LedgerFilter(start_ms=0), today, now - 3_600_000)
        scanned = await analytics.overview_sums(store, LedgerFilter(start_ms=0, end_ms=now + 86_400_000), today,
                                                now - 3_600_000)
        assert rolled.period == scanned.period and rolled.today == scanned.today
        assert rolled.refused_period == scanned.refused_period == round_ + 1
        assert await analytics.auto_share(store, LedgerFilter(start_ms=0)) == await analytics.auto_share(
            store, LedgerFilter(start_ms=0, end_ms=now + 86_400_000))
    assert await analytics.catch_up(store) == 0  # every entry is folded once


async def test_a_request_refused_before_its_model_was_read_never_breaks_the_overview(
        make_proxy: ProxyFactory) -> None:
    """Its ledger entry has no requested model; folding it into the rollup once failed on the NOT NULL
    ``virtual`` column, and the overview answered 503 from then on."""
    proxy = await make_proxy()
    await send(proxy, SMALL)
    assert (await get(proxy, "/api/v1/analytics/overview"))["today"]["requests"] == 1
    resp = await proxy.client.post("/v1/chat/completions", data=b'{"model": ',
                                   headers={**proxy.auth(), "content-type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
    request_id = resp.headers["x-costproxy-request-id"]
    entries = await eventually(lambda: proxy.app[STORE].entries_for(request_id), what="the refused entry")
    assert entries[0].requested_model is None
    for _ in range(2):  # and again: the rollup moved past it
        body = await get(proxy, "/api/v1/analytics/overview")
        assert body["today"]["requests"] == 1 and body["today"]["refused"] == 0
    await send(proxy, AUTO)
    assert (await get(proxy, "/api/v1/analytics/overview"))["today"]["requests"] == 2
