"""Feedback through the API (SQLite store): validation, who may send it, idempotency per source,
unknown requests, what it teaches the router, and two stores sharing one file's estimates."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from costproxy.http.state import LEARNER, ROUTER, STORE
from costproxy.learning.config import LearningSettings
from costproxy.learning.feedback import FeedbackInput
from costproxy.learning.service import Learner
from costproxy.learning.store import SqliteLearningStore
from costproxy.ledger.entry import LedgerEntry
from costproxy.settings import load_settings
from costproxy.store.backend import local_path
from costproxy.store.sqlite import SqliteStore
from costproxy.tools.explain import explain_main
from tests.conftest import ADMIN_TOKEN, Proxy, ProxyFactory
from tests.e2e.test_cli_tools import write_config

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Classify this sentence as happy or sad."}]}


async def served(proxy: Proxy, key: str | None = None) -> str:
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth(key))
    assert resp.status == 200, await resp.text()
    return resp.headers["x-costproxy-request-id"]


async def post(proxy: Proxy, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await proxy.client.post("/api/v1/feedback", json=body, headers=ADMIN if headers is None else headers)
    return resp.status, await resp.json()


async def test_feedback_is_stored_per_source_and_idempotent(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    rid = await served(proxy)
    status, first = await post(proxy, {"requestId": rid, "thumbs": "up", "source": "user"})
    assert status == 201 and first["score"] == 1.0 and first["learned"] is True
    assert first["model"] and first["taskType"] and first["difficultyBucket"] is not None
    status, again = await post(proxy, {"requestId": rid, "thumbs": "up", "source": "user"})
    assert status == 200 and again == first  # the same feedback again changes nothing
    status, _ = await post(proxy, {"requestId": rid, "score": 0.25, "source": "eval", "comment": "partly"})
    assert status == 201
    status, replaced = await post(proxy, {"requestId": rid, "thumbs": "down", "source": "user"})
    assert status == 200 and replaced["score"] == 0.0 and replaced["createdAt"] == first["createdAt"]
    resp = await proxy.client.get(f"/api/v1/feedback?requestId={rid}", headers=ADMIN)
    listed = await resp.json()
    assert [(f["source"], f["score"]) for f in listed["data"]] == [("eval", 0.25), ("user", 0.0)]
    cell = (first["taskType"], first["difficultyBucket"], first["model"])
    evidence = proxy.app[LEARNER].estimates.evidence(*cell)
    assert (evidence.n, evidence.successes) == (2.0, 0.25)  # the replaced thumbs up no longer counts
    assert proxy.app[ROUTER].estimates is not None
    assert proxy.app[ROUTER].estimates.evidence(*cell) == evidence  # selection sees it at once


async def test_feedback_lets_a_cheaper_model_take_a_share_of_auto_traffic(make_proxy: ProxyFactory) -> None:
    """Evaluation feedback scores the cheapest model at 0.75 on forty answers: below the target on its
    own, so a dearer model serves — and the cheap one keeps the share of the traffic the gap allows,
    which every decision of the cell reports as ``mixShare``."""
    proxy = await make_proxy()
    first, decision = await _served_decision(proxy)
    cheap = decision["model"]
    assert decision["mixShare"] is None  # no evidence yet: nothing is mixed
    answered = [first, *[await served(proxy) for _ in range(39)]]  # all by the cheap model: no evidence yet
    for rid in answered:
        status, body = await post(proxy, {"requestId": rid, "score": 0.75, "source": "eval"})
        assert status == 201 and body["model"] == cheap, body
    shares, models = set(), set()
    for _ in range(40):
        _, decision = await _served_decision(proxy)
        shares.add(decision["mixShare"])
        models.add(decision["model"])
        assert any(r.startswith(f"mix: {cheap} ") for r in decision["reasons"]), decision["reasons"]
    assert len(shares) == 1 and 0 < next(iter(shares)) < 0.5  # one cell, one share
    assert models - {cheap}  # most requests now go to a dearer model


async def test_an_evaluation_system_measures_a_model_auto_does_not_serve(make_proxy: ProxyFactory) -> None:
    """Named through a trusted proxy with its task type, a model's answer is analyzed, and an eval
    score on it counts for that model's cell; a named answer whose task nobody detected teaches nothing."""
    from costproxy.settings import TrustedProxySettings

    relay = TrustedProxySettings(name="evals", secret_env="EVALS_SECRET", secret="evals-secret")
    proxy = await make_proxy(settings_changes={"trusted_proxies": (relay,)})
    body = {**CHAT, "model": "big"}
    trusted = {**proxy.auth(), "X-Costproxy-Proxy-Secret": "evals-secret", "X-Costproxy-Task-Type": "classification"}
    resp = await proxy.client.post("/v1/chat/completions", json=body, headers=trusted)
    assert resp.status == 200 and resp.headers["x-costproxy-model"] == "big", await resp.text()
    status, scored = await post(proxy, {"requestId": resp.headers["x-costproxy-request-id"], "score": 0.5,
                                        "source": "eval"})
    assert status == 201 and scored["learned"] is True and scored["model"] == "big"
    assert scored["taskType"] == "classification" and scored["difficultyBucket"] is not None
    cell = ("classification", scored["difficultyBucket"], "big")
    assert proxy.app[LEARNER].estimates.evidence(*cell).n == 1.0
    plain = await proxy.client.post("/v1/chat/completions", json=body, headers=proxy.auth())
    assert plain.status == 200
    status, untaught = await post(proxy, {"requestId": plain.headers["x-costproxy-request-id"], "score": 0.5,
                                          "source": "eval"})
    assert status == 201 and untaught["learned"] is False  # no task detected: no cell to teach


async def _served_decision(proxy: Proxy) -> tuple[str, dict[str, Any]]:
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    found = await proxy.client.get(f"/api/v1/decisions/{resp.headers['x-costproxy-decision-id']}", headers=ADMIN)
    assert found.status == 200, await found.text()
    return resp.headers["x-costproxy-request-id"], (await found.json())["decision"]


async def test_bad_bodies_and_unknown_requests(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    rid = await served(proxy)
    status, body = await post(proxy, {"requestId": rid, "score": "good", "source": "user"})
    assert status == 400 and body["error"]["param"] == "score" and body["error"]["type"] == "invalid_request_error"
    status, body = await post(proxy, {"requestId": rid, "score": 1, "source": "robot"})
    assert status == 400 and body["error"]["param"] == "source"
    resp = await proxy.client.post("/api/v1/feedback", data=b"[1, 2", headers=ADMIN)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
    status, body = await post(proxy, {"requestId": "req_never_seen", "score": 1, "source": "user"})
    assert status == 404 and body["error"]["param"] == "requestId"
    resp = await proxy.client.get("/api/v1/feedback", headers=ADMIN)
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "requestId"


async def test_who_may_send_feedback(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    rid = await served(proxy)
    status, _ = await post(proxy, {"requestId": rid, "thumbs": "up", "source": "user"}, proxy.auth())
    assert status == 201  # the key that made the request
    other = await proxy.new_key(user="bob", team="other", org="acme")
    status, body = await post(proxy, {"requestId": rid, "thumbs": "down", "source": "user"}, proxy.auth(other))
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await post(proxy, {"requestId": rid, "thumbs": "down", "source": "user"}, {})
    assert status == 401 and "error" in body
    resp = await proxy.client.get(f"/api/v1/feedback?requestId={rid}", headers=proxy.auth())
    assert resp.status == 200  # the key reads its own request's feedback back
    for scopes, expected in (([{"scopeType": "team", "scopeId": "core"}], 201),
                             ([{"scopeType": "team", "scopeId": "other"}], 404)):
        created = await proxy.client.post("/api/v1/tokens", json={"name": "agent", "scopes": scopes}, headers=ADMIN)
        token = (await created.json())["token"]
        status, _ = await post(proxy, {"requestId": rid, "score": 0.5, "source": "agent"},
                               {"Authorization": f"Bearer {token}"})
        assert status == expected
        if expected == 201:
            await proxy.app[STORE].flush()
            resp = await proxy.client.get("/api/v1/budgets", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200  # still read-only otherwise: budgets can be read …
            resp = await proxy.client.post("/api/v1/keys", json={"user": "x"},
                                           headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 403  # … and nothing else written


async def test_the_most_trusted_sources_are_not_open_to_every_caller(make_proxy: ProxyFactory) -> None:
    """Feedback moves auto traffic for every caller of a cell: a key may not pass its thumbs off as an
    evaluation, and nobody outside the proxy may speak as its judge."""
    from costproxy.settings import TrustedProxySettings

    relay = TrustedProxySettings(name="evals", secret_env="EVALS_SECRET", secret="evals-secret")
    proxy = await make_proxy(settings_changes={"trusted_proxies": (relay,)})
    rid = await served(proxy)
    created = await proxy.client.post("/api/v1/tokens", json={"name": "viewer",
                                                              "scopes": [{"scopeType": "team", "scopeId": "core"}]},
                                      headers=ADMIN)
    viewer = {"Authorization": f"Bearer {(await created.json())['token']}"}
    for source, headers in (("eval", proxy.auth()), ("eval", viewer), ("judge", proxy.auth()), ("judge", ADMIN),
                            ("judge", viewer)):
        status, body = await post(proxy, {"requestId": rid, "score": 1, "source": source}, headers)
        assert status == 403, (source, body)
        assert body["error"]["code"] == "forbidden" and body["error"]["param"] == "source"
        assert body["error"]["type"] == "permission_error"
    assert await proxy.app[LEARNER].store.feedback_for(rid) == []  # nothing was recorded
    # a request the caller may not see stays a 404: the source check never tells that it exists
    other = await proxy.new_key(user="bob", team="other", org="acme")
    status, body = await post(proxy, {"requestId": rid, "score": 1, "source": "judge"}, proxy.auth(other))
    assert status == 404
    _, unknown = await post(proxy, {"requestId": "req_never_seen", "score": 1, "source": "user"}, proxy.auth(other))
    # the same answer as for an id never seen: another key learns nothing of which ids exist
    assert body["error"]["message"].replace(rid, "ID") == unknown["error"]["message"].replace("req_never_seen", "ID")
    # the evaluation system behind the trusted proxy, and the admin, may send eval
    trusted = {**proxy.auth(), "X-Costproxy-Proxy-Secret": "evals-secret"}
    status, body = await post(proxy, {"requestId": rid, "score": 0.5, "source": "eval"}, trusted)
    assert status == 201 and body["source"] == "eval", body
    status, body = await post(proxy, {"requestId": rid, "score": 0.75, "source": "eval"}, ADMIN)
    assert status == 200 and body["score"] == 0.75
    for source in ("user", "agent"):
        status, _ = await post(proxy, {"requestId": rid, "thumbs": "up", "source": source}, proxy.auth())
        assert status == 201


def _entry(request_id: str, model: str = "small") -> LedgerEntry:
    return LedgerEntry(request_id=request_id, ts_ms=0, endpoint="chat/completions", status="ok", http_status=200,
                       served_model=model, task_type="classification", key_id="k1",
                       metadata={"difficulty_bucket": 0})


async def test_two_replicas_on_one_file_share_the_estimates(tmp_path: Any) -> None:
    first, second = SqliteStore(str(tmp_path / "l.db")), SqliteStore(str(tmp_path / "l.db"))
    await first.open()
    await second.open()
    try:
        one, two = SqliteLearningStore(first), SqliteLearningStore(second)
        await one.open()
        await two.open()
        a, b = Learner(one, LearningSettings()), Learner(two, LearningSettings())
        await asyncio.gather(*(learner.record(FeedbackInput(f"r{i}", 1.0 if i % 4 else 0.0, "eval"), _entry(f"r{i}"),
                                              "test", i) for i, learner in enumerate([a, b] * 10)))
        for learner in (a, b):
            estimates = await learner.refresh()
            assert estimates.evidence("classification", 0, "small").n == 20.0
            assert estimates.evidence("classification", 0, "small").successes == 15.0
        assert await one.charge("2026-01-01", 600, 1000) and not await two.charge("2026-01-01", 600, 1000)
        assert await two.spent("2026-01-01") == 600
    finally:
        await first.close()
        await second.close()


def test_explain_shows_prior_evidence_and_posterior(tmp_path: Any, capsys: Any) -> None:
    config = write_config(tmp_path)
    document = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**document, "store": {"url": f"sqlite:///{tmp_path / 'store.sqlite3'}"}}))
    message = ["--config", str(config), "--message", "Classify this review as positive or negative: superb"]
    assert explain_main([*message, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert all(s["learned"] is None for s in plain["scores"])
    assert not Path(local_path(load_settings(config))).exists()  # explain created no store
    chosen = plain["chain"][0]
    bucket = int(next(r for r in plain["reasons"] if "bucket" in r).split("bucket ")[1].rstrip(")"))

    async def learn() -> None:
        local = SqliteStore(local_path(load_settings(config)))
        await local.open()
        store = SqliteLearningStore(local)
        await store.open()
        learner = Learner(store, LearningSettings())
        for i in range(30):
            entry = replace(_entry(f"r{i}", chosen), task_type=plain["taskType"],
                            metadata={"difficulty_bucket": bucket})
            await learner.record(FeedbackInput(f"r{i}", 0.0, "eval"), entry, "test", i)
        await local.close()

    asyncio.run(learn())
    assert explain_main(message) == 0
    text = capsys.readouterr().out
    assert "learned: prior" in text and "evidence 30" in text
    assert f"model: {chosen}" not in text  # thirty failures moved the request elsewhere
