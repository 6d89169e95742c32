"""Leases through the whole app: a stream that outlives the reservation TTL keeps its money held,
and a request whose lease cannot be kept is ended (and still settled), never left spending."""

from __future__ import annotations

import time
from typing import Any

import orjson

from costproxy.http.state import BACKEND

BUDGET = {"budgets": {"reservation_ttl_s": 1, "definitions": [
    {"id": "core", "scope_type": "team", "scope_id": "core", "limit_usd": "5", "period": "monthly"}]}}
STREAM = {"model": "small", "stream": True, "max_tokens": 60,
          "messages": [{"role": "user", "content": "Tell me a long story [[sim:tokens=40]]"}]}


def reserved(proxy: Any) -> int:
    status = proxy.app[BACKEND].budgets.status_now("core")
    return int(status.reserved_nanos)


async def test_a_stream_longer_than_the_ttl_keeps_its_reservation(make_proxy: Any) -> None:
    proxy = await make_proxy(extra=BUDGET)
    proxy.sim.plan(chunk_delay_ms=100)  # ~4 s of stream against a 1 s lease
    resp = await proxy.client.post("/v1/chat/completions", json=STREAM, headers=proxy.auth())
    assert resp.status == 200
    held: list[int] = []
    started = time.monotonic()
    async for _ in resp.content:
        held.append(reserved(proxy))
    assert time.monotonic() - started > 3  # the stream outlived three TTLs
    assert min(held[1:-2]) > 0  # renewed all along: never reclaimed while the stream ran
    [entry] = await proxy.ledger()
    assert entry.status == "ok" and entry.usage_reported and entry.cost_nanos > 0
    assert reserved(proxy) == 0
    status = proxy.app[BACKEND].budgets.status_now("core")
    assert status.spent_nanos == entry.cost_nanos


async def test_a_stream_whose_lease_is_lost_ends_with_an_error_event(make_proxy: Any, monkeypatch: Any) -> None:
    proxy = await make_proxy(extra=BUDGET)
    accounts = proxy.app[BACKEND].accounts

    async def lost(reservation: Any, ttl_s: float | None = None) -> bool:
        return False  # the lease was reclaimed (e.g. this replica's loop stalled past the TTL)

    monkeypatch.setattr(accounts, "renew", lost)
    proxy.sim.plan(chunk_delay_ms=100)
    resp = await proxy.client.post("/v1/chat/completions", json=STREAM, headers=proxy.auth())
    body = (await resp.read()).decode()
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    errors = [orjson.loads(e)["error"] for e in events if e.startswith("{") and '"error"' in e]
    assert errors and errors[-1]["code"] == "reservation_lost", body[-400:]
    assert "[DONE]" not in events[-1]
    [entry] = await proxy.ledger()
    assert entry.status == "error" and entry.error_code == "reservation_lost"
    assert reserved(proxy) == 0  # settled: what was generated is charged, nothing stays held


async def test_a_unary_call_whose_lease_cannot_be_renewed_answers_503(make_proxy: Any, monkeypatch: Any) -> None:
    from costproxy.errors import StoreUnavailable

    proxy = await make_proxy(extra=BUDGET)

    async def unreachable(reservation: Any, ttl_s: float | None = None) -> bool:
        raise StoreUnavailable("budget store unreachable")

    monkeypatch.setattr(proxy.app[BACKEND].accounts, "renew", unreachable)
    proxy.sim.plan(latency_ms=4000)  # outlives the 1 s lease: ended before it lapses, and before any answer
    resp = await proxy.client.post("/v1/chat/completions", json={**STREAM, "stream": False}, headers=proxy.auth())
    body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "reservation_lost", body
    [entry] = await proxy.ledger()
    assert (entry.status, entry.error_code, entry.cost_nanos) == ("error", "reservation_lost", 0)  # not accepted
    assert reserved(proxy) == 0
    # accepted (a 200 status line), then its lease was lost while the body hung: the provider bills it all,
    # so it is charged its worst case, estimated (it was charged 0: billed but uncharged, in the chaos test)
    proxy.sim.reset()  # plans add up: the 4 s latency would apply again
    proxy.sim.plan(fault="hang_body")
    resp = await proxy.client.post("/v1/chat/completions", json={**STREAM, "stream": False}, headers=proxy.auth())
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "reservation_lost"
    _, entry = await proxy.ledger()
    assert (entry.status, entry.error_code, entry.usage_reported) == ("error", "reservation_lost", False)
    assert 0 < entry.cost_nanos == proxy.app[BACKEND].budgets.status_now("core").spent_nanos
    assert reserved(proxy) == 0
