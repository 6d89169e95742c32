"""The README's table of ``x-costproxy-*`` headers is true: every header it lists is on a unary answer,
and on a stream it is present, ``pending``, or absent exactly as its "on streams" column says, with
the final SSE comment carrying the field the column names; no undocumented header is sent."""

from __future__ import annotations

import re
from typing import Any

import orjson

from costproxy.money import format_usd
from tests.conftest import ROOT, ProxyFactory

BUDGET = {"budgets": {"definitions": [{"id": "team-core", "scope_type": "team", "scope_id": "core",
                                       "limit_usd": "5", "period": "monthly"}]}}
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Classify this sentence as happy or sad."}]}
ROW = re.compile(r"^\| `(x-costproxy-[a-z-]+)` \| (.+?) \| (.+?) \|$", re.M)


def documented() -> dict[str, str]:
    """Header -> its "on streams" cell."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| header | meaning | on streams |"):]
    table = table[: table.index("\n\n")]
    rows = {m.group(1): m.group(3) for m in ROW.finditer(table)}
    assert len(rows) >= 10, rows
    return rows


def comment_fields(cell: str) -> list[str]:
    return re.findall(r"`([a-z_]+)` in the final comment", cell)


async def test_every_documented_header_is_on_unary_answers(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=BUDGET)
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 200
    sent = {k.lower() for k in resp.headers if k.lower().startswith("x-costproxy-")}
    assert sent == set(documented())
    assert resp.headers["x-costproxy-requested-model"] == "auto"
    assert re.fullmatch(r"\d+\.\d{9}", resp.headers["x-costproxy-cost-usd"])


async def test_streams_carry_or_defer_each_header_as_documented(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=BUDGET)
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=proxy.auth())
    assert resp.status == 200
    text = (await resp.read()).decode()
    comment = re.search(r"^: costproxy (\{.*\})$", text, re.M)
    assert comment is not None and text.index("data: [DONE]") < comment.start()
    final: dict[str, Any] = orjson.loads(comment.group(1))
    for header, cell in documented().items():
        value = resp.headers.get(header)
        if cell.startswith("yes"):
            assert value, header
        elif cell.startswith("`pending`"):
            assert value == "pending", header
        else:
            assert cell.startswith("absent") and value is None, (header, value)
        for name in comment_fields(cell):
            assert final.get(name) not in (None, ""), (header, name, final)
    assert final["request_id"] == resp.headers["x-costproxy-request-id"] and final["usage"] == "reported"
    entry = [e for e in await proxy.ledger() if e.request_id == final["request_id"]][-1]
    assert entry.cost_nanos > 0 and final["cost_usd"] == format_usd(entry.cost_nanos)
    assert final["baseline_cost_usd"] == format_usd(entry.baseline_nanos)
    assert final["budget_remaining_usd"] == format_usd(5 * 10**9 - entry.cost_nanos)
