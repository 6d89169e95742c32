"""Money and query-parameter bounds at the admin API: out-of-range input is a 400 in OpenAI's
shape that charges nothing, never a 500, and never data the ledger cannot store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from costproxy.budgets.definitions import BudgetStore, SqliteDefinitions, ensure_budget_schema, spec_body
from costproxy.budgets.model import BudgetSpec
from costproxy.store.sqlite import SqliteStore
from tests.conftest import ADMIN_TOKEN, Proxy, ProxyFactory

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TEAM = {"id": "team-core", "scope_type": "team", "scope_id": "core", "limit_usd": "1", "period": "monthly"}
TOO_BIG = ["10000000000", 1e20, 4.8e21, "1e999999999", "-1e999999999", "1000000.000000001"]
NOT_MONEY = ["NaN", "Infinity", "-Infinity", True, [], {}, None, "1,5", "", "0x10", "1e-999999999"]


async def post(proxy: Proxy, path: str, body: Any) -> tuple[int, Any]:
    resp = await proxy.client.post(path, json=body, headers=ADMIN)
    return resp.status, await resp.json()


def assert_openai_400(status: int, body: Any, param: str | None = None) -> None:
    assert status == 400, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_request" and error["message"]
    if param is not None:
        assert error["param"] == param


async def spent(proxy: Proxy) -> str:
    resp = await proxy.client.get("/api/v1/budgets/team-core/status", headers=ADMIN)
    assert resp.status == 200
    return str((await resp.json())["currentAmount"])


@pytest.mark.parametrize("amount", [*TOO_BIG, *NOT_MONEY])
async def test_usage_beyond_the_bounds_is_a_400_that_charges_nothing(make_proxy: ProxyFactory, amount: Any) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [TEAM]}})
    status, body = await post(proxy, "/api/v1/budgets/team-core/usage", {"amount": amount, "source": "manual"})
    assert_openai_400(status, body, "amount")
    assert await spent(proxy) == "0"
    assert await proxy.ledger() == []
    status, _ = await post(proxy, "/api/v1/budgets/team-core/usage", {"amount": "1000000", "source": "manual"})
    assert status == 201
    assert await spent(proxy) == "1000000"
    assert len(await proxy.ledger()) == 1


@pytest.mark.parametrize("stamp", [10**30, -1, "99999-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", True, "x"])
async def test_usage_timestamps_are_bounded(make_proxy: ProxyFactory, stamp: Any) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [TEAM]}})
    status, body = await post(proxy, "/api/v1/budgets/team-core/usage", {"amount": "1", "timestamp": stamp})
    assert_openai_400(status, body, "timestamp")
    assert await proxy.ledger() == []


@pytest.mark.parametrize("amount", [*TOO_BIG, "NaN", True, []])
async def test_budget_amounts_overrides_and_costs_are_bounded(make_proxy: ProxyFactory, amount: Any) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [TEAM]}})
    status, body = await post(proxy, "/api/v1/budgets", {"scopeType": "user", "scopeId": "a", "amount": amount})
    assert_openai_400(status, body, "amount")
    status, body = await post(proxy, "/api/v1/budgets/team-core/overrides",
                              {"type": "increase", "amount": amount, "durationMinutes": 5, "reason": "r"})
    assert_openai_400(status, body, "amount")
    status, body = await post(proxy, "/api/v1/budgets/team-core/check-constraints", {"estimatedCost": amount})
    assert_openai_400(status, body, "estimatedCost")
    resp = await proxy.client.get("/api/v1/budgets", headers=ADMIN)
    assert [b["id"] for b in (await resp.json())["data"]] == ["team-core"]


@pytest.mark.parametrize("query", [
    "hours=inf", "hours=-inf", "hours=1e300", "hours=-1", "hours=nan", "hours=NaN", "hours=abc", "hours=",
    "hours=87841", "limit=0", "limit=-5", "limit=abc", "limit=1e3", "limit=1001", "limit=99999999999999999999999",
])
async def test_query_parameters_are_validated(make_proxy: ProxyFactory, query: str) -> None:
    proxy = await make_proxy()
    path = "/api/v1/usage/summary?" if query.startswith("hours") else "/api/v1/usage?"
    resp = await proxy.client.get(path + query, headers=ADMIN)
    assert_openai_400(resp.status, await resp.json(), query.split("=")[0])


async def test_valid_query_parameters_still_answer(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [TEAM]}})
    for path in ("/api/v1/usage/summary?hours=0.5", "/api/v1/usage/summary?hours=87840", "/api/v1/usage?limit=1000",
                 "/api/v1/budgets/team-core/usage?limit=1&offset=0", "/api/v1/budgets/team-core/audit?limit=3"):
        resp = await proxy.client.get(path, headers=ADMIN)
        assert resp.status == 200, (path, await resp.text())
    for path, param in (("/api/v1/budgets/team-core/usage?offset=-1", "offset"),
                        ("/api/v1/budgets/team-core/audit?limit=0", "limit"),
                        ("/api/v1/budgets/team-core/reports?timeRange=0001-01-01/9999-12-31T23:59:59-14:00",
                         "timeRange")):
        resp = await proxy.client.get(path, headers=ADMIN)
        assert_openai_400(resp.status, await resp.json(), param)


@pytest.mark.parametrize(("field", "value"), [
    ("source", 7), ("source", "elsewhere"), ("description", ["x"]), ("currency", "EUR"), ("currency", None),
    ("metadata", "x"), ("metadata", {"requestId": 5}), ("metadata", {"tags": "a"}), ("metadata", {"unknown": 1}),
    ("timestamp", None), ("extra", 1),
])
async def test_usage_fields_of_the_wrong_type_are_400s(make_proxy: ProxyFactory, field: str, value: Any) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [TEAM]}})
    status, body = await post(proxy, "/api/v1/budgets/team-core/usage", {"amount": "1", field: value})
    assert_openai_400(status, body)
    assert await proxy.ledger() == [] and await spent(proxy) == "0"


async def test_budgets_stored_before_the_bound_still_load(tmp_path: Path) -> None:
    """A definition written before amounts were bounded (say $5M) keeps working after an upgrade."""
    store = SqliteStore(str(tmp_path / "old.sqlite3"))
    await store.open()
    try:
        await ensure_budget_schema(store)
        old = BudgetSpec(id="big", scope_type="org", scope_id="acme", limit_nanos=5_000_000 * 10**9, period="annual")
        await store.execute("INSERT INTO budget_defs (id, body, updated_at_ms) VALUES (?, ?, 0)",
                            ("big", spec_body(old)))
        budgets = BudgetStore(SqliteDefinitions(store), [])
        await budgets.load()
        assert budgets.require("big").limit_nanos == 5_000_000 * 10**9
    finally:
        await store.close()


@pytest.mark.parametrize("raw", [
    '{"amount": NaN}', '{"amount": Infinity}', '{"amount": -Infinity}', '{"amount": 1e400}',
    '{"amount": "1", "x": ' + "[" * 5000 + "]" * 5000 + "}", b'{"amount": "\xff"}', "[1]", '"x"',
])
async def test_bodies_that_are_not_strict_json_objects_are_400s(make_proxy: ProxyFactory, raw: str | bytes) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [TEAM]}})
    data = raw.encode() if isinstance(raw, str) else raw
    resp = await proxy.client.post("/api/v1/budgets/team-core/usage", data=data,
                                   headers={**ADMIN, "Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["code"] in ("invalid_json", "invalid_request")
    assert await proxy.ledger() == []


@pytest.mark.parametrize(("duration", "param"), [
    ('"durationMinutes": 1e400', "durationMinutes"), ('"durationMinutes": 1' + "0" * 400, "durationMinutes"),
    ('"expiresAt": 1' + "0" * 30, "expiresAt"), ('"durationMinutes": 1e-400', "durationMinutes"),
])
async def test_override_durations_are_bounded(make_proxy: ProxyFactory, duration: str, param: str) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [TEAM]}})
    raw = '{"type": "approval", "reason": "r", ' + duration + "}"
    resp = await proxy.client.post("/api/v1/budgets/team-core/overrides", data=raw.encode(),
                                   headers={**ADMIN, "Content-Type": "application/json"})
    assert_openai_400(resp.status, await resp.json(), param)


@pytest.mark.parametrize(("body", "param"), [
    ({"user": "u" * 257}, "user"), ({"name": ""}, "name"), ({"team": 5}, "team"),
    ({"expiresAt": 1e300}, "expiresAt"), ({"expiresAt": -5}, "expiresAt"), ({"expiresAt": "soon"}, "expiresAt"),
])
async def test_key_fields_are_bounded(make_proxy: ProxyFactory, body: dict[str, Any], param: str) -> None:
    proxy = await make_proxy()
    status, answer = await post(proxy, "/api/v1/keys", body)
    assert_openai_400(status, answer, param)
