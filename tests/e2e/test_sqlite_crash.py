"""``costproxy serve`` on its SQLite file SIGKILLed with streams in flight: at the next start the
reservations it died holding are charged their worst case as ``lapsed`` entries, once (docs/budgets.md,
"Reserve, settle, release", step 4)."""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from costproxy.money import usd_to_nanos
from tests.conftest import ADMIN_TOKEN
from tests.e2e.harness import Serving, SimulatorThread, get_json, wait_healthy
from tests.e2e.test_server import new_key, post, start, write_config
from tests.polling import eventually_sync

BUDGET = "infra-monthly"
SLOW = "tell a long story [[sim:tokens=400]] [[sim:chunk_delay_ms=250]]"  # ~100 s: still running at the kill


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as thread:
        yield thread


def read(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """What a crash leaves: only committed rows (read through a connection of the test's own)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def budget(base: str) -> tuple[int, int]:
    """(spent, reserved) of the team's budget, nano-USD, from the status API."""
    request = urllib.request.Request(f"{base}/api/v1/budgets/{BUDGET}/status",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        status = json.loads(resp.read())
    return usd_to_nanos(status["currentAmount"]), usd_to_nanos(status["reserved"])


def stream_in_background(base: str, key: str, ids: list[str], frames: list[bytes]) -> None:
    """A slow stream; its request id (the proxy's: a client's X-Request-ID is ignored) joins ``ids``."""
    request = post(base, key, {"model": "small", "stream": True, "max_tokens": 1000,
                               "messages": [{"role": "user", "content": SLOW}]})

    def run() -> None:
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                ids.append(resp.headers["x-costproxy-request-id"])
                for line in resp:
                    frames.append(line)
        except OSError:
            pass  # the server was killed under it

    threading.Thread(target=run, daemon=True).start()


def lapsed(db: Path) -> list[tuple[Any, ...]]:
    return read(db, "SELECT request_id, cost_nanos, usage_reported, error_code, metadata FROM ledger "
                    "WHERE status = 'lapsed' ORDER BY request_id")


def test_a_sigkilled_server_charges_its_streams_in_flight_as_lapsed_at_the_next_start(
        sim: SimulatorThread, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.url, budgets={"definitions": [
        {"id": BUDGET, "scope_type": "team", "scope_id": "infra", "limit_usd": "100", "period": "monthly"}]})
    db = tmp_path / "ledger.sqlite3"
    key = new_key(config)
    serving, base = start(config)
    wait_healthy(base, serving.proc)
    with urllib.request.urlopen(post(base, key, {"model": "small", "messages": [{"role": "user", "content": "hi"}]}),
                                timeout=30) as resp:
        assert resp.status == 200
    settled = eventually_sync(lambda: budget(base)[0], what="the first request settled")
    ids: list[str] = []
    streams: list[list[bytes]] = [[], [], []]
    for frames in streams:
        stream_in_background(base, key, ids, frames)
    eventually_sync(lambda: len(ids) == 3 and all(len(f) >= 3 for f in streams), what="the three streams under way")
    ids.sort()
    listed = ", ".join(f"'{request_id}'" for request_id in ids)  # the proxy's ids: req_ and hex
    journaled = eventually_sync(
        lambda: (rows := read(db, "SELECT token, body FROM budget_reservations")) and len(rows) == 3 and rows,
        what="the three reservations on disk")
    bodies = {json.loads(body)["request_id"]: json.loads(body) for _, body in journaled}
    assert sorted(bodies) == ids
    worst = {request_id: body["amount_nanos"] for request_id, body in bodies.items()}
    assert budget(base) == (settled, sum(worst.values()))  # held in memory: exactly what is on disk
    assert not any(b"[DONE]" in b"".join(f) for f in streams)  # still streaming

    serving.proc.kill()  # SIGKILL: no drain, no flush
    assert serving.proc.wait(30) == -9
    assert read(db, f"SELECT COUNT(*) FROM ledger WHERE request_id IN ({listed})") == [(0,)]

    again, base = start(config)
    try:
        wait_healthy(base, again.proc)
        rows = lapsed(db)
        assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(i, worst[i], 0, "replica_lost") for i in ids]
        for row in rows:
            metadata = json.loads(row[4])
            assert metadata["budgets"] == bodies[row[0]]["budgets"] and list(metadata["budgets"]) == [BUDGET]
            assert "serving process ended" in metadata["lapsed"]["reason"]
        assert read(db, "SELECT COUNT(*) FROM budget_reservations") == [(0,)]
        charged = settled + sum(worst.values())
        assert budget(base) == (charged, 0)
    finally:
        again.proc.kill()  # a second crash, right after the reconciliation: nothing may count twice
        again.proc.wait(30)

    third, base = start(config)
    try:
        wait_healthy(base, third.proc)
        assert budget(base) == (charged, 0)
        assert len(lapsed(db)) == 3
    finally:
        assert third.stop() == 0
    fourth, base = start(config)  # and after a clean stop (a checkpoint at close)
    try:
        wait_healthy(base, fourth.proc)
        assert budget(base) == (charged, 0)
        assert len(lapsed(db)) == 3
        assert get_json(f"{base}/readyz")
    finally:
        assert fourth.stop() == 0


def test_no_reservation_is_left_on_disk_when_requests_finish(sim: SimulatorThread, tmp_path: Path) -> None:
    """Settled streams and unary calls remove their rows: a restart after a SIGKILL charges nothing more."""
    config = write_config(tmp_path, sim.url, budgets={"definitions": [
        {"id": BUDGET, "scope_type": "team", "scope_id": "infra", "limit_usd": "100", "period": "monthly"}]})
    db = tmp_path / "ledger.sqlite3"
    key = new_key(config)
    serving: Serving
    serving, base = start(config)
    wait_healthy(base, serving.proc)
    for stream in (False, True, False):
        body = {"model": "small", "stream": stream, "messages": [
            {"role": "user", "content": "a few words [[sim:tokens=20]] [[sim:chunk_delay_ms=30]]"}]}
        with urllib.request.urlopen(post(base, key, body), timeout=30) as resp:
            resp.read()
    eventually_sync(lambda: read(db, "SELECT COUNT(*) FROM ledger WHERE status = 'ok'") == [(3,)],
                    what="three entries on disk")
    spent, _ = budget(base)
    serving.proc.kill()
    serving.proc.wait(30)
    again, base = start(config)
    try:
        wait_healthy(base, again.proc)
        assert budget(base) == (spent, 0) and lapsed(db) == []
    finally:
        assert again.stop() == 0
