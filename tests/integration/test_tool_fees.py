"""Provider-side tool fees (``analyzer.server_tools``), against the fake providers: Anthropic's
web search (``usage.server_tool_use``) and the Responses API's ``web_search_call`` items, unary
and streamed; chat's ``web_search_options``.  The cost is the tokens plus the calls at their fee,
the reservation holds the bounded calls, the bound travels upstream (``max_uses`` /
``max_tool_calls``), a provider reporting more calls than the bound is charged the bound, a tool
without a fee is refused under a hard budget and passed and marked without one, and a hard budget
is never exceeded by searches."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import BIG, CLAUDE_PRICE, ledger_entry, priced, protocol_models

SEARCH = {"type": "web_search_20250305", "name": "web_search"}
CENT = 10_000_000  # $0.01 in nano-USD
PREVIEW = 25_000_000
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def fee(usd: str) -> dict[str, str]:
    return {"usd": usd, "source": "test", "as_of": "2026-11-30"}


def fee_models() -> dict[str, Any]:
    models = protocol_models()
    models["tool_fees"] = {"default_max_calls": 3, "max_calls": 4, "providers": {
        "claude": {"web_search": fee("0.01"), "web_fetch": fee("0")},
        "sim": {"web_search": fee("0.01"), "web_search_preview": fee("0.025"), "file_search": fee("0.0025")},
        "sim2": {"web_search_options": fee("0.025")}}}
    return models


def hard_budget(limit: str) -> dict[str, Any]:
    return {"budgets": [{"id": "alice", "scope_type": "user", "scope_id": "alice", "limit_usd": limit,
                         "period": "monthly"}]}


def nanos(header: str) -> int:
    return int(Decimal(header) * 1_000_000_000)


async def messages(proxy: Any, text: str, tools: list[Any], **extra: Any) -> Any:
    return await proxy.client.post("/v1/messages", headers={"x-api-key": proxy.key, "anthropic-version": "2023-06-01"},
                                   json={"model": "claude", "max_tokens": 100, "tools": tools,
                                         "messages": [{"role": "user", "content": text}], **extra})


async def responses(proxy: Any, text: str, tools: list[Any], **extra: Any) -> Any:
    return await proxy.client.post("/v1/responses", headers=proxy.auth(),
                                   json={"model": "big", "max_output_tokens": 100, "input": text, "tools": tools,
                                         **extra})


# --- Anthropic web search -------------------------------------------------------------------------


async def test_anthropic_searches_cost_tokens_plus_fees_and_the_bound_goes_upstream(protocol_proxy,
                                                                                  anthropic_sim) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy(models=fee_models())
    resp = await messages(proxy, "[[sim:searches=2]] What happened today?", [SEARCH])
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["usage"]["server_tool_use"] == {"web_search_requests": 2}  # relayed as the provider sent it
    call = claude.calls[-1]
    assert call.body["tools"] == [{**SEARCH, "max_uses": 3}]  # absent: the default bound, injected
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    tokens = priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens)
    assert entry.cost_nanos == tokens + 2 * CENT
    assert entry.metadata["tool_calls"] == {"web_search": 2} and entry.metadata["tool_fee_nanos"] == 2 * CENT
    assert "tool_calls_clamped" not in entry.metadata
    # the reservation holds the three searches on top of the tokens' worst case
    assert nanos(resp.headers["x-costproxy-max-cost-usd"]) >= tokens + 3 * CENT
    for asked, sent in ((10, 4), (1, 1), (0, 0)):  # above max_calls: lowered; within it: kept
        resp = await messages(proxy, "[[sim:searches=0]] hello", [{**SEARCH, "max_uses": asked}])
        assert resp.status == 200, await resp.text()
        assert claude.calls[-1].body["tools"][0]["max_uses"] == sent


async def test_anthropic_streamed_searches_are_charged_and_clamped_to_the_bound(protocol_proxy,
                                                                              anthropic_sim) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy(models=fee_models())
    resp = await messages(proxy, "[[sim:searches=2]] news please", [SEARCH], stream=True)
    text = await resp.text()
    assert resp.status == 200 and '"web_search_requests":2' in text.replace(" ", "")
    call = claude.calls[-1]
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.usage_reported and entry.metadata["tool_calls"] == {"web_search": 2}
    assert entry.cost_nanos == priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens) + 2 * CENT
    # a provider that reports more searches than max_uses allowed is charged the bound, and the
    # ledger keeps what it said
    resp = await messages(proxy, "[[sim:searches=7]] news please", [{**SEARCH, "max_uses": 2}], stream=True)
    await resp.text()
    call = claude.calls[-1]
    assert call.body["tools"][0]["max_uses"] == 2
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.cost_nanos == priced(CLAUDE_PRICE, call.prompt_tokens, call.output_tokens) + 2 * CENT
    assert entry.metadata["tool_calls"] == {"web_search": 2}
    assert entry.metadata["tool_calls_clamped"] == {"reported": {"web_search": 7}, "limit": {"web_search": 2}}
    resp = await messages(proxy, "[[sim:searches=9]] again", [{**SEARCH, "max_uses": 2}])  # unary too
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.metadata["tool_calls"] == {"web_search": 2} and entry.metadata["tool_fee_nanos"] == 2 * CENT


async def test_a_hard_budget_is_never_exceeded_by_searches(protocol_proxy, anthropic_sim) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy(models=fee_models(), **hard_budget("0.1"))
    statuses = []
    for _ in range(8):  # each asks for up to 3 searches and the provider reports 9 (it ignores max_uses)
        resp = await messages(proxy, "[[sim:searches=9]] search hard", [{**SEARCH, "max_uses": 3}])
        statuses.append(resp.status)
        if resp.status != 200:
            assert (await resp.json())["error"]["type"] in ("rate_limit_error", "invalid_request_error")
    assert 200 in statuses and 429 in statuses
    entries = [e for e in await proxy.ledger() if e.status == "ok"]
    assert all(e.metadata["tool_calls"] == {"web_search": 3} for e in entries)
    spent = sum(e.cost_nanos for e in await proxy.ledger())
    assert 3 * CENT * len(entries) < spent <= 100_000_000
    assert len(claude.calls) == len(entries)


async def test_an_anthropic_stream_that_breaks_off_is_charged_the_searches_it_relayed(protocol_proxy,
                                                                                       anthropic_sim) -> None:
    proxy = await protocol_proxy(models=fee_models())
    # message_start, ping, then two searches (server_tool_use: start, delta, stop; result: start,
    # stop): the connection drops after them, before message_delta reports the usage
    text = "[[sim:searches=2]] [[sim:drop_after=12]] [[sim:chunk_delay_ms=20]] latest news"
    resp = await messages(proxy, text, [SEARCH], stream=True)
    assert (await resp.text()).count('"type":"server_tool_use"') == 2
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.status == "error" and not entry.usage_reported
    assert entry.metadata["tool_calls"] == {"web_search": 2}
    assert entry.cost_nanos == priced(CLAUDE_PRICE, entry.prompt_tokens, entry.completion_tokens) + 2 * CENT


async def test_a_client_that_hangs_up_on_an_anthropic_stream_pays_the_searches_seen(protocol_proxy,
                                                                                   anthropic_sim) -> None:
    _, claude = anthropic_sim
    claude.chunk_delay_ms = 30
    proxy = await protocol_proxy(models=fee_models())
    resp = await messages(proxy, "[[sim:searches=3]] [[sim:tokens=200]] latest news", [SEARCH], stream=True)
    request_id = resp.headers["x-costproxy-request-id"]
    seen = b""
    while seen.count(b"web_search_tool_result") < 3:  # the three searches' results relayed
        seen += await resp.content.readany()
    resp.close()
    entry = await ledger_entry(proxy, request_id)
    assert entry.status == "client_disconnected" and not entry.usage_reported
    assert entry.metadata["tool_calls"] == {"web_search": 3}
    assert entry.cost_nanos == priced(CLAUDE_PRICE, entry.prompt_tokens, entry.completion_tokens) + 3 * CENT


# --- tools without a fee ---------------------------------------------------------------------------


async def test_an_unpriced_server_tool_is_refused_under_a_hard_budget(protocol_proxy, anthropic_sim,
                                                                     simulator) -> None:
    _, claude = anthropic_sim
    _, sim = simulator
    proxy = await protocol_proxy(models=fee_models(), **hard_budget("5"))
    code = {"type": "code_execution_20250825", "name": "code_execution"}
    resp = await messages(proxy, "run some code", [SEARCH, code])
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "unpriced_tool" and "code_execution" in error["message"]
    resp = await responses(proxy, "draw a chart", [{"type": "code_interpreter", "container": {"type": "auto"}}])
    assert resp.status == 400
    error = (await resp.json())["error"]  # OpenAI's shape
    assert {k: error[k] for k in ("type", "param", "code")} == {
        "type": "invalid_request_error", "param": "tools[0].type", "code": "unpriced_tool"}
    assert "code_interpreter" in error["message"]
    assert claude.calls == [] and [c for c in sim.calls if c.path.endswith("responses")] == []
    refused = [e for e in await proxy.ledger() if e.error_code == "unpriced_tool"]
    assert [e.status for e in refused] == ["refused", "refused"] and all(e.cost_nanos == 0 for e in refused)


async def test_responses_tools_the_client_runs_pass_under_a_hard_budget(protocol_proxy, simulator) -> None:
    _, sim = simulator
    proxy = await protocol_proxy(models=fee_models(), **hard_budget("5"))
    computer = {"type": "computer_use_preview", "display_width": 1024, "display_height": 768,
                "environment": "browser"}
    for tool in ({"type": "local_shell"}, {"type": "shell"}, {"type": "apply_patch"}, computer):
        resp = await responses(proxy, "hi", [tool])
        assert resp.status == 200, await resp.text()
        assert sim.calls[-1].body["tools"] == [tool] and "max_tool_calls" not in sim.calls[-1].body
        entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
        assert "unpriced_tools" not in entry.metadata


async def test_an_unpriced_server_tool_passes_without_a_hard_budget_and_is_marked(protocol_proxy,
                                                                                 anthropic_sim) -> None:
    _, claude = anthropic_sim
    proxy = await protocol_proxy(models=fee_models())
    code = {"type": "code_execution_20250825", "name": "code_execution"}
    resp = await messages(proxy, "[[sim:searches=1]] run some code", [SEARCH, code])
    assert resp.status == 200, await resp.text()
    assert claude.calls[-1].body["tools"][1] == code  # passed untouched (no max_uses on an unpriced tool)
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.metadata["unpriced_tools"] == ["code_execution"]
    assert entry.metadata["tool_calls"] == {"web_search": 1}


# --- OpenAI Responses built-in tools --------------------------------------------------------------


async def test_responses_web_search_calls_are_charged_unary_and_streamed(protocol_proxy, simulator) -> None:
    _, sim = simulator
    proxy = await protocol_proxy(models=fee_models())
    resp = await responses(proxy, "[[sim:searches=2]] latest news", [{"type": "web_search"}])
    assert resp.status == 200, await resp.text()
    call = sim.calls[-1]
    assert call.body["max_tool_calls"] == 3  # the default bound, injected
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    tokens = priced(BIG, call.prompt_tokens, call.completion_tokens)
    assert entry.cost_nanos == tokens + 2 * CENT and entry.metadata["tool_calls"] == {"web_search": 2}
    assert nanos(resp.headers["x-costproxy-max-cost-usd"]) >= tokens + 3 * CENT
    # web_search_preview is billed at its own fee; the stream's calls are counted, clamped to max_tool_calls
    resp = await responses(proxy, "[[sim:searches=5]] latest news", [{"type": "web_search_preview"}],
                           stream=True, max_tool_calls=9)
    assert resp.status == 200 and "web_search_call" in await resp.text()
    call = sim.calls[-1]
    assert call.body["max_tool_calls"] == 4  # above max_calls: lowered
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.cost_nanos == priced(BIG, call.prompt_tokens, call.completion_tokens) + 4 * PREVIEW
    assert entry.metadata["tool_calls"] == {"web_search_preview": 4}
    assert entry.metadata["tool_calls_clamped"]["reported"] == {"web_search_preview": 5}


async def test_a_web_search_call_of_either_declared_search_tool_is_charged_the_dearer_fee(protocol_proxy,
                                                                                          simulator) -> None:
    _, sim = simulator
    proxy = await protocol_proxy(models=fee_models())
    # a web_search_call does not say which tool ran it: web_search_preview ($0.025) may have
    for stream in (False, True):
        resp = await responses(proxy, "[[sim:searches=2]] latest news",
                               [{"type": "web_search"}, {"type": "web_search_preview"}], stream=stream)
        assert resp.status == 200 and "web_search_call" in await resp.text()
        call = sim.calls[-1]
        entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
        assert entry.metadata["tool_calls"] == {"web_search_preview": 2}
        assert entry.cost_nanos == priced(BIG, call.prompt_tokens, call.completion_tokens) + 2 * PREVIEW
        assert nanos(resp.headers["x-costproxy-max-cost-usd"]) >= entry.cost_nanos


async def test_calls_the_request_never_declared_are_charged_as_reported(protocol_proxy, simulator) -> None:
    _, sim = simulator
    proxy = await protocol_proxy(models=fee_models())
    # a stored prompt may carry tools the body does not show; without a hard budget it is not bounded
    resp = await proxy.client.post("/v1/responses", headers=proxy.auth(), json={
        "model": "big", "max_output_tokens": 100, "prompt": {"id": "pmpt_1"}, "input": "[[sim:searches=3]] news"})
    assert resp.status == 200, await resp.text()
    call = sim.calls[-1]
    assert "max_tool_calls" not in call.body
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    # a web_search_call of a tool the proxy never saw: the dearest kind it may be of (web_search or
    # web_search_preview), as a hard budget's bound of a stored prompt reserves it — never below the bill
    assert entry.metadata["tool_calls"] == {"web_search_preview": 3} and entry.metadata["tool_calls_undeclared"] == {
        "web_search_preview": 3}
    assert entry.cost_nanos == priced(BIG, call.prompt_tokens, call.completion_tokens) + 3 * PREVIEW
    # a declared kind is still clamped; an undeclared one beside it is the real bill
    resp = await responses(proxy, "[[sim:searches=2]] docs", [{"type": "file_search", "vector_store_ids": ["v"]}])
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.metadata["tool_calls_undeclared"] == {"web_search_preview": 2}
    assert entry.metadata["tool_fee_nanos"] == 2 * PREVIEW


async def test_a_stored_prompt_under_a_hard_budget_is_bounded_and_reserved(protocol_proxy, simulator) -> None:
    _, sim = simulator
    proxy = await protocol_proxy(models=fee_models(), **hard_budget("5"))
    resp = await proxy.client.post("/v1/responses", headers=proxy.auth(), json={
        "model": "big", "max_output_tokens": 100, "prompt": {"id": "pmpt_1"}, "input": "[[sim:searches=2]] news"})
    assert resp.status == 200, await resp.text()
    call = sim.calls[-1]
    assert call.body["max_tool_calls"] == 3  # the default bound, sent
    tokens = priced(BIG, call.prompt_tokens, call.completion_tokens)
    # which search tool the prompt has is unknown: charged, and reserved, at the dearest fee
    assert nanos(resp.headers["x-costproxy-max-cost-usd"]) >= tokens + 3 * PREVIEW
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.metadata["tool_calls"] == {"web_search_preview": 2} and "tool_calls_undeclared" not in entry.metadata
    assert entry.cost_nanos == tokens + 2 * PREVIEW


async def test_chat_web_search_options_is_one_search_fee_per_request(protocol_proxy, simulator) -> None:
    _, sim = simulator
    proxy = await protocol_proxy(models=fee_models())
    resp = await proxy.client.post("/v1/chat/completions", headers=proxy.auth(), json={
        "model": "backup", "max_tokens": 50, "web_search_options": {},
        "messages": [{"role": "user", "content": "what is new?"}]})
    assert resp.status == 200, await resp.text()
    call = sim.calls[-1]
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    backup = {"input": "0.10", "output": "0.40"}
    assert entry.cost_nanos == priced(backup, call.prompt_tokens, call.completion_tokens) + PREVIEW
    assert entry.metadata["tool_calls"] == {"web_search_options": 1}
    assert nanos(resp.headers["x-costproxy-max-cost-usd"]) >= entry.cost_nanos


async def test_a_responses_stream_that_breaks_off_is_charged_the_searches_it_relayed(protocol_proxy) -> None:
    proxy = await protocol_proxy(models=fee_models())
    # created, in_progress, then two searches (added + done each): the connection drops after them
    text = "[[sim:searches=2]] [[sim:drop_after=6]] [[sim:chunk_delay_ms=20]] latest news"
    resp = await responses(proxy, text, [{"type": "web_search"}], stream=True)
    assert (await resp.text()).count('"type":"response.output_item.done"') == 2
    entry = await ledger_entry(proxy, resp.headers["x-costproxy-request-id"])
    assert entry.status == "error" and not entry.usage_reported
    assert entry.metadata["tool_calls"] == {"web_search": 2}
    assert entry.cost_nanos == priced(BIG, entry.prompt_tokens, entry.completion_tokens) + 2 * CENT


async def test_concurrent_searches_stay_within_a_hard_budget(protocol_proxy, anthropic_sim) -> None:
    proxy = await protocol_proxy(models=fee_models(), **hard_budget("0.1"))
    # twelve at once, each reserving three searches; the provider reports nine (it ignores max_uses)
    answers = await asyncio.gather(*(messages(proxy, "[[sim:searches=9]] search", [{**SEARCH, "max_uses": 3}])
                                     for _ in range(12)))
    statuses = sorted(a.status for a in answers)
    assert statuses.count(200) >= 2 and 429 in statuses
    ledger = await proxy.ledger()
    assert sum(e.cost_nanos for e in ledger) <= 100_000_000
    assert all(e.metadata["tool_calls"] == {"web_search": 3} for e in ledger if e.status == "ok")
    status = await (await proxy.client.get("/api/v1/budgets/alice/status", headers=ADMIN)).json()
    assert status["reserved"] == "0"


async def test_the_estimate_api_counts_the_search_fee_of_web_search_options(protocol_proxy) -> None:
    """``/api/v1/models/estimate`` prices what a call would cost: with ``web_search_options`` the
    search fee of a model whose provider charges one is in both its estimate and its worst case."""
    proxy = await protocol_proxy(models=fee_models())
    messages = [{"role": "user", "content": "What happened in the news today?"}]

    async def estimate(**extra: Any) -> dict[str, Any]:
        resp = await proxy.client.post("/api/v1/models/estimate", headers=ADMIN, json={
            "content": {"messages": messages, **extra}, "models": ["backup", "small"], "outputTokens": 50})
        assert resp.status == 200, await resp.text()
        return {row["model"]: row for row in (await resp.json())["data"]}

    plain, searching = await estimate(), await estimate(web_search_options={})
    for key in ("estimatedCost", "worstCaseCost"):
        assert Decimal(searching["backup"][key]) - Decimal(plain["backup"][key]) == Decimal("0.025")  # sim2's fee
        assert searching["small"][key] == plain["small"][key]  # sim charges no per-request search fee
