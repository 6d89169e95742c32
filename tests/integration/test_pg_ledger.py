"""The PostgreSQL ledger against the real PostgreSQL on 127.0.0.1:5432 (a fresh database per test):
migrations up, down and up again through the CLI; several app instances writing one ledger with
reports that agree; the writer while PostgreSQL goes away and comes back; rows PostgreSQL refuses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from costproxy.cli import main
from costproxy.http.state import BACKEND
from costproxy.ledger.entry import LedgerEntry
from costproxy.ledger.pg_schema import LATEST
from costproxy.ledger.postgres import PostgresLedger
from costproxy.ledger.shipper import LocalShipper
from costproxy.store.sqlite import SqliteStore
from tests.conftest import ADMIN_TOKEN, ConfigFactory, Proxy, ProxyFactory
from tests.conftest_pg import TcpRelay, pg_server, pg_url  # noqa: F401
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SMALL = {"model": "small", "messages": [{"role": "user", "content": "hello"}]}
BUDGET = {"definitions": [{"id": "acme-month", "name": "ACME", "scope_type": "org", "scope_id": "acme",
                           "limit_usd": "100", "period": "monthly"}]}


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def pg_rows(url: str, sql: str = "SELECT request_id FROM costproxy_ledger ORDER BY request_id") -> list[Any]:
    with psycopg.connect(url) as conn:
        return [r[0] if len(r) == 1 else r for r in conn.execute(sql).fetchall()]  # type: ignore[arg-type]


def test_migrate_rollback_and_migrate_again_through_the_cli(pg_url: str, write_config: ConfigFactory,  # noqa: F811
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config("http://127.0.0.1:9", extra={"store": {"url": "sqlite:///x.sqlite3",
                                                                      "ledger_url": pg_url}}))
    assert main(["ledger", "status", "--config", config]) == 0
    assert f"schema version 0 (this costproxy knows up to {LATEST})" in capsys.readouterr().out
    assert main(["ledger", "migrate", "--to", "2", "--config", config]) == 0
    assert {"costproxy_ledger", "costproxy_ledger_origins"} <= tables(pg_url)
    assert "costproxy_ledger_quarantine" not in tables(pg_url)
    assert main(["ledger", "migrate", "--config", config]) == 0
    assert "costproxy_ledger_quarantine" in tables(pg_url)
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO costproxy_ledger (origin, origin_id, request_id, ts_ms, endpoint, status,"
                     " http_status, prompt_tokens, completion_tokens, cached_tokens, cost_nanos, baseline_nanos,"
                     " usage_reported, stream, latency_ms, source, metadata) VALUES ('o', '1', 'kept', 1,"
                     " 'chat/completions', 'ok', 200, 1, 1, 0, 5, 5, true, false, 1, 'proxy', '{}')")
    capsys.readouterr()
    assert main(["ledger", "rollback", "--config", config]) == 1  # 3 drops the quarantine table: needs --yes
    assert "add --yes" in capsys.readouterr().err
    assert main(["ledger", "rollback", "--yes", "--config", config]) == 0
    assert "costproxy_ledger_quarantine" not in tables(pg_url) and pg_rows(pg_url) == ["kept"]
    assert main(["ledger", "rollback", "--to", "1", "--config", config]) == 0  # indexes only: no --yes
    with psycopg.connect(pg_url) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'costproxy_ledger'")}
    assert "costproxy_ledger_key_ts" not in indexes and "costproxy_ledger_ts" in indexes
    assert main(["ledger", "rollback", "--to", "0", "--yes", "--config", config]) == 0
    assert not {"costproxy_ledger", "costproxy_ledger_origins"} & tables(pg_url)
    assert main(["ledger", "migrate", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"schema version {LATEST} (was 0)" in out and all(f"applied {n}:" in out for n in range(1, LATEST + 1))
    assert main(["ledger", "migrate", "--to", "9", "--config", config]) == 1
    assert "--to must be between 0 and" in capsys.readouterr().err


def test_the_cli_says_what_is_missing(write_config: ConfigFactory, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config("http://127.0.0.1:9"))
    assert main(["ledger", "status", "--config", config]) == 1
    assert "no PostgreSQL ledger is configured" in capsys.readouterr().err
    unreachable = str(write_config("http://127.0.0.1:9", extra={"store": {
        "url": "sqlite:///x.sqlite3", "ledger_url": "postgresql://nobody:secret@127.0.0.1:9/none"}}))
    assert main(["ledger", "migrate", "--config", unreachable]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the PostgreSQL ledger at postgresql://nobody:***@127.0.0.1:9/none" in err
    assert "secret" not in err


async def _app(make_proxy: ProxyFactory, tmp_path: Path, name: str, ledger_url: str) -> Proxy:
    return await make_proxy(extra={"store": {"url": f"sqlite:///{tmp_path / (name + '.sqlite3')}",
                                             "ledger_url": ledger_url}, "budgets": BUDGET})


async def _get(proxy: Proxy, path: str) -> Any:
    resp = await proxy.client.get(path, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_several_instances_write_one_ledger_and_their_reports_agree(
        make_proxy: ProxyFactory, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    apps = [await _app(make_proxy, tmp_path, name, pg_url) for name in ("a", "b", "c")]
    sent = 0
    for n, proxy in enumerate(apps):
        for _ in range(n + 2):
            resp = await proxy.client.post("/v1/chat/completions", json=SMALL, headers=proxy.auth())
            assert resp.status == 200
            sent += 1
    local = [entry for proxy in apps for entry in await proxy.ledger()]
    assert len(local) == sent

    async def all_written() -> bool:
        return len(pg_rows(pg_url)) == sent

    await eventually(all_written, 20, what="every instance's entries in PostgreSQL")
    assert sorted(pg_rows(pg_url)) == sorted(e.request_id for e in local)  # each exactly once
    day = time.strftime("%Y-%m-%d", time.gmtime())
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400))
    paths = ("/api/v1/usage/summary?groupBy=key&hours=1", "/api/v1/usage?limit=100",
             f"/api/v1/analytics/spend?groupBy=team&from={day}T00:00:00Z&to={tomorrow}T00:00:00Z&tz=UTC",
             f"/api/v1/analytics/spend?groupBy=key&from={day}T00:00:00Z&to={tomorrow}T00:00:00Z&bucket=hour")
    for path in paths:
        answers = [await _get(proxy, path) for proxy in apps]
        assert answers[0] == answers[1] == answers[2], path
    summary = await _get(apps[0], "/api/v1/usage/summary?groupBy=model&hours=1")
    assert [r["requests"] for r in summary["data"]] == [sent]
    budget = [await _get(p, "/api/v1/budgets/acme-month/usage/summary") for p in apps]
    assert budget[0]["totals"] == budget[1]["totals"] == budget[2]["totals"]
    assert budget[0]["totals"]["requests"] == sent
    overview = [await _get(p, "/api/v1/analytics/overview?tz=UTC") for p in apps]
    figures = [(o["today"], o["period"]["requests"], o["period"]["amount"], o["autoShare"]) for o in overview]
    assert figures[0] == figures[1] == figures[2] and overview[0]["period"]["requests"] == sent
    one = local[0].request_id
    found = [await _get(p, f"/api/v1/requests/{one}") for p in apps]
    assert found[0] == found[1] == found[2]
    health = await (await apps[0].client.get("/readyz")).json()
    assert health["ledger"]["store"] == "postgresql" and health["ledger"]["healthy"] is True


def entry(request_id: str, **fields: Any) -> LedgerEntry:
    values: dict[str, Any] = {"org": "acme", "user": "alice", "cost_nanos": 11, "metadata": {"budgets": {"b": "1"}},
                              **fields}
    return LedgerEntry(request_id=request_id, ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                       status="ok", http_status=200, **values)


async def test_the_writer_keeps_rows_while_postgresql_is_away_and_catches_up(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    relay = await TcpRelay().start()
    local = SqliteStore(str(tmp_path / "local.sqlite3"), flush_interval=0.01)
    await local.open()
    from costproxy.budgets.definitions import ensure_budget_schema

    await ensure_budget_schema(local)
    ledger = PostgresLedger(relay.url(pg_url), timeout_s=1.0)
    await ledger.open()
    shipper = LocalShipper(local, ledger, interval_s=0.05)
    task = asyncio.create_task(shipper.run())
    try:
        for i in range(20):
            local.append(entry(f"before-{i}"))

        async def shipped(n: int) -> bool:
            return len(pg_rows(pg_url)) == n

        await eventually(lambda: shipped(20), 20, what="the first entries")
        await relay.cut()
        for i in range(30):
            local.append(entry(f"during-{i}"))

        async def failing() -> bool:
            return not shipper.healthy

        await eventually(failing, 20, what="the writer to notice")
        assert shipper.last_error and "unavailable" in shipper.last_error
        # kept, not dropped (a batch whose commit reply the cut swallowed counts as not yet confirmed)
        assert len(pg_rows(pg_url)) == 20 and await shipper.backlog() >= 30
        await relay.restore()

        async def recovered() -> bool:
            return shipper.healthy and len(pg_rows(pg_url)) == 50

        await eventually(recovered, 20, what="the writer to catch up")
        ids = pg_rows(pg_url)
        assert len(ids) == len(set(ids)) == 50
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await shipper.drain()
        await ledger.close()
        await local.close()
        await relay.cut()


async def test_rows_postgresql_refuses_are_quarantined_and_the_rest_written(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    ledger = PostgresLedger(pg_url)
    await ledger.open()
    try:
        rows = [("1", entry("good-1")), ("2", entry("nul\x00byte")), ("3", entry("huge", cost_nanos=2**70)),
                ("4", "{not json"), ("5", entry("good-2", user="bob\ud800"))]
        written = await ledger.write("test", rows, (5, 0))
        assert written == 1 and pg_rows(pg_url) == ["good-1"]
        quarantined = pg_rows(pg_url, "SELECT origin_id, error FROM costproxy_ledger_quarantine ORDER BY origin_id")
        assert [q[0] for q in quarantined] == ["2", "3", "4", "5"]
        assert await ledger.write("test", rows, (5, 0)) == 0  # written twice: stored once
        assert await ledger.positions("test") == {"test": (5, 0)}
        await ledger.write("test", [("6", entry("late"))], (3, 0))
        assert await ledger.positions("test") == {"test": (5, 0)}  # a position never goes back
    finally:
        await ledger.close()


async def test_a_restored_sqlite_file_ships_as_a_new_origin(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    from costproxy.budgets.definitions import ensure_budget_schema

    path = tmp_path / "local.sqlite3"
    local = SqliteStore(str(path))
    await local.open()
    await ensure_budget_schema(local)
    ledger = PostgresLedger(pg_url)
    await ledger.open()
    try:
        shipper = LocalShipper(local, ledger)
        for i in range(3):
            local.append(entry(f"a{i}"))
        await shipper.drain()
        first_origin = shipper.origin
        await local.execute("DELETE FROM ledger WHERE request_id = 'a2'")  # an older backup came back
        await local.execute("UPDATE sqlite_sequence SET seq = 2 WHERE name = 'ledger'")
        local.append(entry("b0"))
        again = LocalShipper(local, ledger)
        await again.drain()
        assert again.origin != first_origin
        assert sorted(pg_rows(pg_url)) == ["a0", "a1", "a2", "b0"]
    finally:
        await ledger.close()
        await local.close()


@pytest.mark.redis
async def test_redis_replicas_write_postgresql_once_and_the_streams_wait_for_it(
        make_proxy: ProxyFactory, tmp_path: Path, pg_url: str, redis_space: RedisSpace) -> None:  # noqa: F811
    budgets = {**BUDGET, "key_prefix": redis_space.prefix, "refresh_interval_s": 0.1, "ledger_trim_interval_s": 0.2}
    apps = [await make_proxy(extra={"store": {"url": redis_space.url, "local_path": str(tmp_path / f"{n}.sqlite3"),
                                              "ledger_url": pg_url}, "budgets": budgets}) for n in ("a", "b")]
    for proxy in apps:
        proxy.app[BACKEND].accounts.keeper.grace_ms = 0  # type: ignore[attr-defined]
    sent = 0
    for proxy in apps * 3:
        resp = await proxy.client.post("/v1/chat/completions", json=SMALL, headers=proxy.auth())
        assert resp.status == 200
        sent += 1
    client = redis_space.client()
    stream = f"{redis_space.prefix}:{{acme}}:ledger"

    async def written_and_trimmed() -> bool:
        return len(pg_rows(pg_url)) == sent and client.xlen(stream) == 0

    try:
        await eventually(written_and_trimmed, 20, what="PostgreSQL to hold every entry and the stream to be trimmed")
        holders = {k.decode() for k in client.hkeys(f"{redis_space.prefix}:{{acme}}:ledger:mirrors")}
    finally:
        client.close()
    assert "postgres" in holders and len(holders) == 3  # two mirrors and the PostgreSQL shipper
    assert len(set(pg_rows(pg_url))) == sent  # once each, though both replicas could ship
    answers = [await _get(proxy, "/api/v1/usage/summary?groupBy=user&hours=1") for proxy in apps]
    assert answers[0] == answers[1] and answers[0]["data"][0]["requests"] == sent
