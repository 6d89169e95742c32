"""The judge against the fake provider: a sampled auto answer is compared with the reference model's,
the verdict becomes feedback with source judge, both calls are ledgered as evaluation overhead, and
the judge's own daily budget stops it before any call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from costproxy.http.state import JUDGE, LEARNER, ROUTER
from costproxy.ledger.entry import LedgerEntry
from tests.conftest import Proxy, ProxyFactory
from tests.polling import eventually

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Classify this sentence as happy or sad."}]}


def judged(budget_usd: str, rate: float = 1.0) -> dict[str, Any]:
    return {"learning": {"judge": {"enabled": True, "sample_rate": rate, "daily_budget_usd": budget_usd,
                                   "max_output_tokens": 64}}}


async def ask(proxy: Proxy) -> str:
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 200
    assert (await resp.json())["model"] != "big"  # a cheap model answered: there is something to judge
    return resp.headers["x-costproxy-request-id"]


async def test_the_judge_turns_a_comparison_into_feedback_and_ledgers_its_calls(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=judged("1.00"))
    proxy.sim.plan(model="big", reply="8")  # the reference answers "8", and so does the judge (big too)
    rid = await ask(proxy)
    learner = proxy.app[LEARNER]

    async def verdict_in() -> bool:
        return any(f.source == "judge" for f in await learner.store.feedback_for(rid))

    await eventually(verdict_in, what="the judge's verdict")
    feedback = next(f for f in await learner.store.feedback_for(rid) if f.source == "judge")
    # "8/10 as good as the reference" is relative: the cell learns 0.8 times the reference's quality there
    assert feedback.task_type is not None and feedback.bucket is not None
    big = proxy.app[ROUTER].quality.cell("big", "premium", feedback.task_type, feedback.bucket).value
    assert big < 1.0 and feedback.score == pytest.approx(0.8 * big)
    assert feedback.comment is not None and "8/10 against big" in feedback.comment
    assert feedback.actor == "judge" and feedback.weight == 1.0
    big_calls = [c for c in proxy.sim.calls if c.model == "big"]
    assert len(big_calls) == 2 and "REFERENCE ANSWER" in big_calls[1].body["messages"][0]["content"]
    judge = proxy.app[JUDGE]
    assert judge is not None and not judge.tasks

    async def ledgered() -> list[Any]:
        return [e for e in await proxy.ledger() if e.source == "judge"]

    await eventually(ledgered, what="the judge's ledger entries")
    overhead = await ledgered()
    assert {e.request_id for e in overhead} == {f"{rid}:judge-reference", f"{rid}:judge-verdict"}
    assert all(e.metadata == {"kind": "evaluation", "judged_request": rid} and e.cost_nanos > 0 and e.user is None
               for e in overhead)
    day = judge.day()
    assert await learner.store.spent(day) == sum(e.cost_nanos for e in overhead)  # worst case corrected


async def test_the_judges_budget_caps_it_before_any_call(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=judged("0.000001"))
    rid = await ask(proxy)
    judge = proxy.app[JUDGE]
    assert judge is not None

    async def settled() -> bool:
        return not judge.tasks

    await eventually(settled, what="the judge's task to end")
    assert [c for c in proxy.sim.calls if c.model == "big"] == []
    assert await proxy.app[LEARNER].store.feedback_for(rid) == []
    assert await proxy.app[LEARNER].store.spent(judge.day()) == 0


async def test_the_judge_is_off_by_default_and_samples_its_rate(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    assert proxy.app[JUDGE] is None
    sampled = await make_proxy(extra=judged("1.00", rate=0.0))
    await ask(sampled)
    judge = sampled.app[JUDGE]
    assert judge is not None and not judge.tasks and [c for c in sampled.sim.calls if c.model == "big"] == []


async def test_a_streamed_auto_answer_is_captured_and_judged(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=judged("1.00"))
    proxy.sim.plan(model="big", reply="6")  # the reference's answer and the judge's verdict
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=proxy.auth())
    assert resp.status == 200
    body = await resp.text()
    assert "data: [DONE]" in body
    rid = resp.headers["x-costproxy-request-id"]
    learner = proxy.app[LEARNER]

    async def verdict_in() -> bool:
        return any(f.source == "judge" for f in await learner.store.feedback_for(rid))

    await eventually(verdict_in, what="the judge's verdict on the stream")
    feedback = next(f for f in await learner.store.feedback_for(rid) if f.source == "judge")
    assert feedback.score == pytest.approx(0.6 * 0.95)  # 6/10 of big's quality on classification
    served = next(c for c in proxy.sim.calls if c.model != "big")
    verdict_prompt = [c for c in proxy.sim.calls if c.model == "big"][1].body["messages"][0]["content"]
    # the candidate the judge read is the text the client was streamed, assembled
    assert served.body["stream"] is True and "CANDIDATE ANSWER:\n" in verdict_prompt
    streamed = "".join(
        (chunk["choices"][0].get("delta") or {}).get("content") or ""
        for line in body.splitlines() if line.startswith("data: {")
        for chunk in [json.loads(line[6:])] if chunk.get("choices"))
    assert streamed and verdict_prompt.split("CANDIDATE ANSWER:\n", 1)[1] == streamed


async def test_a_stream_not_drawn_is_not_copied(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=judged("1.00", rate=0.0))
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=proxy.auth())
    assert resp.status == 200 and "[DONE]" in await resp.text()
    judge = proxy.app[JUDGE]
    assert judge is not None and not judge.tasks and [c for c in proxy.sim.calls if c.model == "big"] == []


async def test_the_reference_quality_behind_a_verdict_is_what_selection_believes(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=judged("1.00"))
    judge, learner = proxy.app[JUDGE], proxy.app[LEARNER]
    assert judge is not None and judge.reference is not None and judge.quality is not None
    big = judge.reference
    assert judge.quality(big, "classification", 0) == 0.95  # the quality profile's estimate
    assert judge.quality(big, "summarization", 0) == 0.9  # its overall, for a task it has no entry for
    # feedback measured the reference lower on classification: a verdict there is worth less
    learner.estimates = learner.estimates.with_observation(("classification", 0, "big"), 100, 50)
    measured = judge.quality(big, "classification", 0)
    assert measured == pytest.approx((0.95 * learner.estimates.strength + 50) / (learner.estimates.strength + 100))
    entry = LedgerEntry(request_id="r1", ts_ms=1, endpoint="chat/completions", status="ok", http_status=200,
                        requested_model="auto", served_model="small", task_type="classification",
                        metadata={"difficulty_bucket": 0})
    value, note = judge.absolute(1.0, entry, big)
    assert value == pytest.approx(measured, abs=1e-6) and "whose quality here is" in note
    # a request the router did not classify teaches nothing: its verdict is kept as it was
    unrouted = LedgerEntry(request_id="r2", ts_ms=1, endpoint="chat/completions", status="ok", http_status=200,
                           requested_model="auto", served_model="small")
    assert judge.absolute(0.7, unrouted, big) == (0.7, "")
