"""The PostgreSQL ledger when its server misbehaves (the real PostgreSQL on 127.0.0.1:5432, a fresh
database per test): a database that refuses writes (a standby), a server that is reachable but does
not answer, a migration lock someone else holds.  Reports never answer stale figures, nothing waits
without a bound, and a replica never hangs at start."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from costproxy.budgets.definitions import ensure_budget_schema
from costproxy.cli import main
from costproxy.errors import StoreUnavailable
from costproxy.http.state import BACKEND
from costproxy.ledger.pg_schema import LATEST, LOCK_KEY, rollback
from costproxy.ledger.postgres import PostgresLedger
from costproxy.ledger.shipper import LocalShipper
from costproxy.store.sqlite import SqliteStore
from tests.conftest import ADMIN_TOKEN, ConfigFactory, Proxy, ProxyFactory
from tests.conftest_pg import TcpRelay, pg_server, pg_url  # noqa: F401
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.integration.test_pg_ledger import BUDGET, SMALL, entry, pg_rows
from tests.polling import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REPORTS = ("/api/v1/usage/summary?hours=24", "/api/v1/usage?limit=10", "/api/v1/analytics/overview?tz=UTC",
           "/api/v1/budgets/acme-month/usage/summary")


def read_only(url: str, on: bool) -> None:
    """``default_transaction_read_only`` on the test database (what a standby looks like to a writer),
    every other session ended so that the new setting holds for the replica's next connection."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        change = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
        conn.execute(f"ALTER DATABASE {name} {change}")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                     " AND pid <> pg_backend_pid()", [name])


async def _serve(proxy: Proxy, n: int) -> None:
    for _ in range(n):
        resp = await proxy.client.post("/v1/chat/completions", json=SMALL, headers=proxy.auth())
        assert resp.status == 200


async def _ledger_health(proxy: Proxy) -> dict[str, Any]:
    body: dict[str, Any] = await (await proxy.client.get("/readyz")).json()
    return body["ledger"]  # type: ignore[no-any-return]


async def test_reports_refuse_while_entries_wait_that_postgresql_would_not_take(
        make_proxy: ProxyFactory, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    proxy = await make_proxy(extra={"store": {"url": f"sqlite:///{tmp_path / 'a.sqlite3'}", "ledger_url": pg_url,
                                              "ledger_timeout_s": 2}, "budgets": BUDGET})
    await _serve(proxy, 3)
    await eventually(lambda: len(pg_rows(pg_url)) == 3, 20, what="the first entries in PostgreSQL")
    for path in REPORTS:
        assert (await proxy.client.get(path, headers=ADMIN)).status == 200, path
    read_only(pg_url, True)
    try:
        await _serve(proxy, 4)

        async def unwritable() -> bool:
            health = await _ledger_health(proxy)
            return health["healthy"] is False and "read-only" in health["error"]

        await eventually(unwritable, 20, what="/readyz to say the ledger cannot be written")
        for path in REPORTS:  # never the three old entries as if they were all
            resp = await proxy.client.get(path, headers=ADMIN)
            body = await resp.json()
            assert resp.status == 503 and body["error"]["code"] == "store_unavailable", (path, body)
            assert "is behind" in body["error"]["message"] and "read-only" in body["error"]["message"], body
    finally:
        read_only(pg_url, False)

    async def caught_up() -> Any:
        resp = await proxy.client.get("/api/v1/usage/summary?hours=24", headers=ADMIN)
        return resp.status == 200 and await resp.json()

    summary = await eventually(caught_up, 30, what="reports to answer again once the entries are written")
    assert sum(r["requests"] for r in summary["data"]) == 7


async def test_costproxy_usage_refuses_a_ledger_that_is_behind_or_read_only(
        tmp_path: Path, pg_url: str, write_config: ConfigFactory,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "replica.sqlite3"
    config = str(write_config("http://127.0.0.1:9", extra={"store": {"url": f"sqlite:///{path}", "ledger_url": pg_url,
                                                                      "ledger_timeout_s": 1}}))
    local = SqliteStore(str(path), flush_interval=0.01)
    await local.open()
    await ensure_budget_schema(local)
    ledger = PostgresLedger(pg_url, timeout_s=2)
    await ledger.open()
    shipper = LocalShipper(local, ledger)
    try:
        await shipper.step()  # gives the file its origin
        local.append(replace(entry("old"), ts_ms=int(time.time() * 1000) - 120_000))  # waiting, unshipped, for 2 min
        await eventually(lambda: local.backlog == 0, what="the entry in the SQLite file")
        assert await asyncio.to_thread(main, ["usage", "--config", config]) == 1
        err = capsys.readouterr().err
        assert "is behind: 1 entries" in err and "older than 30 s" in err, err
        assert await shipper.step() == 1
        assert await asyncio.to_thread(main, ["usage", "--config", config]) == 0
        assert "TOTAL" in capsys.readouterr().out
        read_only(pg_url, True)
        try:
            assert await asyncio.to_thread(main, ["usage", "--config", config]) == 1
            assert "is read-only" in capsys.readouterr().err
        finally:
            read_only(pg_url, False)
    finally:
        await ledger.close()
        await local.close()


async def test_a_postgresql_that_does_not_answer_bounds_reports_and_readyz(
        make_proxy: ProxyFactory, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    relay = await TcpRelay().start()
    try:
        proxy = await make_proxy(extra={"store": {"url": f"sqlite:///{tmp_path / 'a.sqlite3'}",
                                                  "ledger_url": relay.url(pg_url), "ledger_timeout_s": 1},
                                        "budgets": BUDGET})
        await _serve(proxy, 2)
        await eventually(lambda: len(pg_rows(pg_url)) == 2, 20, what="the first entries in PostgreSQL")
        await asyncio.gather(*(proxy.client.get(REPORTS[0], headers=ADMIN) for _ in range(3)))  # pooled connections
        relay.freeze()
        await _serve(proxy, 2)

        async def report() -> tuple[int, float]:
            began = time.monotonic()
            resp = await proxy.client.get(REPORTS[0], headers=ADMIN)
            body = await resp.json()
            assert resp.status != 503 or body["error"]["code"] == "store_unavailable"
            return resp.status, time.monotonic() - began

        answers = await asyncio.gather(*(report() for _ in range(6)))  # more than the pool's 4 connections
        assert all(status == 503 for status, _ in answers), answers
        assert max(took for _, took in answers) < 6, answers  # the 1 s bound (+ the pool's wait), not the hang

        async def unhealthy() -> dict[str, Any] | None:
            health = await _ledger_health(proxy)
            return None if health["healthy"] else health

        health = await eventually(unhealthy, 10, what="/readyz to see that shipping makes no progress")
        assert "store.ledger_timeout_s" in health["error"] or "unavailable" in health["error"], health
        relay.thaw()

        async def recovered() -> bool:
            return (await _ledger_health(proxy))["healthy"] is True and len(pg_rows(pg_url)) == 4

        await eventually(recovered, 30, what="shipping to catch up once the server answers")
        assert (await proxy.client.get(REPORTS[0], headers=ADMIN)).status == 200
    finally:
        relay.thaw()
        await relay.cut()


async def test_shipping_that_hangs_is_unhealthy_after_the_bound(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    ledger = PostgresLedger(pg_url, timeout_s=0.3)
    local = SqliteStore(str(tmp_path / "l.sqlite3"))
    await local.open()
    shipper = LocalShipper(local, ledger)
    stuck = asyncio.Event()

    async def hangs() -> int:
        await stuck.wait()
        return 0

    shipper.step = hangs  # type: ignore[method-assign]
    task = asyncio.create_task(shipper.run())
    try:
        assert shipper.healthy
        await eventually(lambda: not shipper.healthy, 5, what="a stuck step to count as unhealthy")
        assert shipper.error is not None and "no progress for over 0.3 s" in shipper.error
        stuck.set()
        await eventually(lambda: shipper.healthy, 5, what="healthy again once the step ends")
    finally:
        stuck.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await local.close()


async def test_start_does_not_wait_for_a_migration_lock_it_does_not_need_and_bounds_the_wait(
        pg_url: str) -> None:  # noqa: F811
    holder = await psycopg.AsyncConnection.connect(pg_url, autocommit=True, application_name="the-lock-holder")
    try:
        await holder.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        fresh = PostgresLedger(pg_url, timeout_s=1)
        began = time.monotonic()
        with capture_logs() as logs:
            await fresh.open()  # a fresh database must be migrated: waits for the lock, boundedly, then goes on
        assert time.monotonic() - began < 5 and not fresh.schema_ready
        waited = [e for e in logs if e["event"] == "ledger_postgres_waiting_for_migration_lock"]
        assert waited and "the-lock-holder" in waited[0]["holder"]
        assert f"pid {holder.info.backend_pid}" in waited[0]["holder"]
        failed = [e for e in logs if e["event"] == "ledger_postgres_unavailable_at_start"]
        assert failed and "migration lock has been held for over 1 s" in failed[0]["error"], logs
        with pytest.raises(StoreUnavailable, match="the-lock-holder"):
            await fresh.write("o", [("1", entry("r"))], (1, 0))  # shipping retries; still held
        await holder.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        assert await fresh.write("o", [("1", entry("r"))], (1, 0)) == 1  # released: migrates, then ships
        assert await fresh.version() == LATEST
        await fresh.close()

        await holder.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        current = PostgresLedger(pg_url, timeout_s=30)
        began = time.monotonic()
        with capture_logs() as logs:
            await current.open()  # the schema is already current: the lock is not needed at all
        assert time.monotonic() - began < 3 and current.schema_ready
        assert not [e for e in logs if e["event"].startswith(("ledger_postgres_waiting", "ledger_postgres_unavail"))]
        await current.close()
    finally:
        await holder.close()


def test_rollback_says_every_replica_must_be_stopped(pg_url: str, write_config: ConfigFactory,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config("http://127.0.0.1:9", extra={"store": {"url": "sqlite:///x.sqlite3",
                                                                      "ledger_url": pg_url}}))
    assert main(["ledger", "migrate", "--config", config]) == 0
    capsys.readouterr()
    assert main(["ledger", "rollback", "--to", "2", "--config", config]) == 1
    assert "stop every replica first" in capsys.readouterr().err
    assert main(["ledger", "rollback", "--to", "2", "--yes", "--config", config]) == 0
    assert "every replica must be stopped before a rollback" in capsys.readouterr().out


@pytest.mark.redis
async def test_redis_replicas_that_do_not_ship_refuse_reports_too(
        make_proxy: ProxyFactory, tmp_path: Path, pg_url: str, redis_space: RedisSpace) -> None:  # noqa: F811
    budgets = {**BUDGET, "key_prefix": redis_space.prefix, "refresh_interval_s": 0.1}
    apps = [await make_proxy(extra={"store": {"url": redis_space.url, "local_path": str(tmp_path / f"{n}.sqlite3"),
                                              "ledger_url": pg_url, "ledger_timeout_s": 2}, "budgets": budgets})
            for n in ("a", "b")]
    await _serve(apps[0], 2)
    await eventually(lambda: len(pg_rows(pg_url)) == 2, 20, what="the first entries in PostgreSQL")
    read_only(pg_url, True)
    try:
        await _serve(apps[1], 3)

        async def both_refuse() -> bool:
            for proxy in apps:
                resp = await proxy.client.get(REPORTS[0], headers=ADMIN)
                body = await resp.json()
                if resp.status != 503 or "read-only" not in body["error"]["message"]:
                    return False
                assert body["error"]["code"] == "store_unavailable"
            return True

        await eventually(both_refuse, 20, what="every replica's reports to refuse, not only the shipper's")
    finally:
        read_only(pg_url, False)

    async def both_answer() -> bool:
        answers = [await proxy.client.get(REPORTS[0], headers=ADMIN) for proxy in apps]
        return len(pg_rows(pg_url)) == 5 and all(a.status == 200 for a in answers)

    await eventually(both_answer, 30, what="reports everywhere once the entries are written")


@pytest.mark.redis
async def test_another_deployment_with_the_same_key_prefix_is_reported_loudly(
        make_proxy: ProxyFactory, tmp_path: Path, pg_url: str, redis_space: RedisSpace) -> None:  # noqa: F811
    budgets = {**BUDGET, "key_prefix": redis_space.prefix, "refresh_interval_s": 0.1}
    store = {"url": redis_space.url, "local_path": str(tmp_path / "a.sqlite3"), "ledger_url": pg_url}
    proxy = await make_proxy(extra={"store": store, "budgets": budgets})
    await _serve(proxy, 1)
    await eventually(lambda: len(pg_rows(pg_url)) == 1, 20, what="the first entry in PostgreSQL")
    assert "warning" not in await _ledger_health(proxy)  # alone: nothing to say
    other = PostgresLedger(pg_url, timeout_s=5)  # a deployment with another Redis, same prefix, ships too
    await other.open()
    try:
        mine = await other.mark_deployment(redis_space.prefix, "the-other-redis", 300)
        assert len(mine) == 1  # and it sees the first deployment's mark
    finally:
        await other.close()
    shipper = proxy.app[BACKEND].shipper
    assert shipper is not None
    shipper._checked_at = None  # type: ignore[attr-defined]  # renew the mark now, not in a minute
    with capture_logs() as logs:
        await _serve(proxy, 1)

        async def warned() -> Any:
            return (await _ledger_health(proxy)).get("warning")

        warning = await eventually(warned, 20, what="the shared key prefix in /readyz")
    assert "the-other-redis" in warning and "same budgets.key_prefix" in warning
    assert [e for e in logs if e["event"] == "ledger_key_prefix_shared"]


async def test_shipping_after_a_rollback_under_a_running_replica_says_what_happened(pg_url: str) -> None:  # noqa: F811
    ledger = PostgresLedger(pg_url, timeout_s=5)
    await ledger.open()
    try:
        assert ledger.schema_ready and await ledger.write("o", [("1", entry("a"))], (1, 0)) == 1
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await rollback(conn, 2, allow_data_loss=True)  # the documented rollback, the replica still running
        with pytest.raises(StoreUnavailable, match=f"is at schema version 2, but this replica migrated it to {LATEST}"):
            await ledger.write("o", [("2", "{not an entry")], (2, 0))  # needs the quarantine table
    finally:
        await ledger.close()


@pytest.mark.redis
async def test_costproxy_usage_in_redis_mode_refuses_while_the_shipping_replica_fails(
        tmp_path: Path, pg_url: str, redis_space: RedisSpace, write_config: ConfigFactory,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config("http://127.0.0.1:9", extra={
        "store": {"url": redis_space.url, "local_path": str(tmp_path / "a.sqlite3"), "ledger_url": pg_url},
        "budgets": {"key_prefix": redis_space.prefix}}))
    ledger = PostgresLedger(pg_url)
    await ledger.open()
    await ledger.close()
    client = redis_space.client()
    try:
        client.set(f"{redis_space.prefix}:ledger-postgres-failing", "PostgreSQL ledger (…) is unavailable: boom")
        assert await asyncio.to_thread(main, ["usage", "--config", config]) == 1
        assert "the replica that ships says: PostgreSQL ledger (…) is unavailable: boom" in capsys.readouterr().err
        client.delete(f"{redis_space.prefix}:ledger-postgres-failing")
        assert await asyncio.to_thread(main, ["usage", "--config", config]) == 0
    finally:
        client.close()
