"""Provider-side tools and their fees (costproxy.analyzer.server_tools): which tools they are, the
bounds the proxy reserves and sends, the clamp, the worst case with fees, and the fee table's load
errors."""

from __future__ import annotations

import copy
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.analyzer.server_tools import (
    NO_TOOLS,
    ToolBounds,
    ToolFee,
    ToolFees,
    server_tools,
    stored_prompt_bounds,
    tool_bounds,
)
from costproxy.analyzer.worst_case import BillableInput, output_cap_within, worst_case
from costproxy.errors import ConfigError
from costproxy.protocols.usage import responses_tool_calls
from costproxy.registry import ModelPrice, ModelSpec, Usage, parse_registry
from costproxy.request import Api

ROOT = Path(__file__).resolve().parents[2]
FEE = ToolFee(usd=Decimal("0.01"))
LIMITS = ToolFees(providers={"openai": {"web_search": FEE, "file_search": FEE}}, default_max_calls=5, max_calls=20)
SEARCH = {"type": "web_search_20250305", "name": "web_search"}


def claude(fees: tuple[tuple[str, int], ...] = (("web_search", 10_000_000),)) -> ModelSpec:
    return ModelSpec(id="c", provider="anthropic", upstream_model="c", kind="chat", tier="premium",
                     context_window=200_000, max_output_tokens=8192, capabilities=frozenset(),
                     price=ModelPrice(input=Decimal(3), output=Decimal(15)), tool_fees=fees)


def test_server_tools_of_each_api() -> None:
    messages = {"tools": [SEARCH, {"name": "f", "input_schema": {}}, {"type": "bash_20250124", "name": "bash"},
                          {"type": "code_execution_20250825", "name": "code_execution", "max_uses": 2}],
                "mcp_servers": [{"type": "url", "url": "https://x"}]}
    assert [(t.kind, t.param) for t in server_tools(Api.MESSAGES, messages)] == [
        ("web_search", "tools[0].type"), ("code_execution", "tools[3].type"), ("mcp", "mcp_servers")]
    responses = {"tools": [{"type": "function", "name": "f"}, {"type": "web_search_preview_2025_03_11"},
                           {"type": "file_search", "vector_store_ids": ["v"]}]}
    assert [t.kind for t in server_tools(Api.RESPONSES, responses)] == ["web_search_preview", "file_search"]
    assert [t.kind for t in server_tools(Api.CHAT, {"web_search_options": {}})] == ["web_search_options"]
    assert server_tools(Api.CHAT, {"tools": [{"type": "function"}]}) == []


def test_responses_tools_the_client_runs_are_no_server_tools() -> None:
    # the model emits a call item and the client executes it: no fee per call, like a function
    client = [{"type": "local_shell"}, {"type": "shell"}, {"type": "shell", "environment": {"type": "local"}},
              {"type": "apply_patch"}, {"type": "computer_use_preview", "display_width": 1024,
                                        "display_height": 768, "environment": "browser"}, {"type": "computer"}]
    assert server_tools(Api.RESPONSES, {"tools": client}) == []
    hosted = {"tools": [{"type": "shell", "environment": {"type": "container_auto"}}]}  # OpenAI's container
    assert [(t.kind, t.param) for t in server_tools(Api.RESPONSES, hosted)] == [("shell", "tools[0].type")]
    output = [{"type": kind} for kind in ("local_shell_call", "shell_call", "apply_patch_call", "computer_call",
                                          "function_call", "custom_tool_call", "web_search_call")]
    assert responses_tool_calls(output) == (("web_search", 1),)


def test_bounds_default_lower_and_keep_what_the_request_asks() -> None:
    body = {"tools": [SEARCH, {**SEARCH, "max_uses": 50}, {**SEARCH, "max_uses": 2}]}
    bounds = tool_bounds(Api.MESSAGES, body, server_tools(Api.MESSAGES, body),
                         ToolFees(providers={"a": {}}, default_max_calls=5, max_calls=20))
    assert bounds.calls == (("web_search", 5 + 20 + 2),) and bounds.total is None
    responses = {"tools": [{"type": "web_search"}, {"type": "file_search"}], "max_tool_calls": 3}
    bounds = tool_bounds(Api.RESPONSES, responses, server_tools(Api.RESPONSES, responses), LIMITS)
    assert bounds.calls == (("file_search", 3), ("web_search", 3)) and bounds.total == 3
    assert tool_bounds(Api.RESPONSES, responses, server_tools(Api.RESPONSES, responses), ToolFees()).total is None
    unpriced: dict[str, Any] = {"tools": [{"type": "code_interpreter"}]}  # nothing is sent for it
    tool_bounds(Api.RESPONSES, unpriced, server_tools(Api.RESPONSES, unpriced), LIMITS).send(Api.RESPONSES, unpriced)
    assert "max_tool_calls" not in unpriced
    sent: dict[str, Any] = dict(responses, max_tool_calls=30)
    ToolBounds(bounds.calls, 20).send(Api.RESPONSES, sent)
    assert sent["max_tool_calls"] == 20


def test_clamp_charges_at_most_the_bound_dearest_first() -> None:
    fees = {"web_search": 10, "file_search": 2}
    bounds = ToolBounds((("file_search", 3), ("web_search", 3)), total=3)
    assert bounds.clamp({"web_search": 2, "file_search": 5}, fees) == {"web_search": 2, "file_search": 1}
    assert bounds.fee_bound(fees) == 30
    assert ToolBounds((("web_search", 2),)).clamp({"web_search": 9, "code_interpreter": 4}, {"web_search": 10}) \
        == {"web_search": 2, "code_interpreter": 4}  # a kind without a fee is recorded as reported
    # a priced kind the proxy never bounded (the request did not declare it) is the real bill
    assert ToolBounds((("file_search", 2),), total=2).clamp({"web_search": 3, "file_search": 4}, fees) \
        == {"web_search": 3, "file_search": 2}
    assert NO_TOOLS.clamp({"web_search": 3}, fees) == {"web_search": 3}


def test_a_stored_prompt_is_bounded_as_if_it_declared_every_priced_kind() -> None:
    fees = ToolFees(providers={"openai": {"web_search": FEE, "web_search_preview": ToolFee(usd=Decimal("0.025"))},
                               "sim2": {"web_search_options": FEE}}, default_max_calls=5, max_calls=20)
    bounds = stored_prompt_bounds({"prompt": {"id": "pmpt_1"}}, NO_TOOLS, fees)
    assert bounds.calls == (("web_search", 5), ("web_search_preview", 5)) and bounds.total == 5
    assert bounds.fee_bound({"web_search": 10, "web_search_preview": 25}) == 5 * 25  # the dearest, 5 times
    body: dict[str, Any] = {"prompt": {"id": "pmpt_1"}, "max_tool_calls": 50}
    bounds = stored_prompt_bounds(body, NO_TOOLS, fees)
    bounds.send(Api.RESPONSES, body)
    assert bounds.total == 20 and body["max_tool_calls"] == 20
    declared = {"tools": [{"type": "code_interpreter"}], "max_tool_calls": 2}  # declared tools share the bound
    bounds = stored_prompt_bounds(declared, tool_bounds(Api.RESPONSES, declared,
                                                        server_tools(Api.RESPONSES, declared), fees), fees)
    assert bounds.calls == (("code_interpreter", 2), ("web_search", 2), ("web_search_preview", 2))


def test_the_worst_case_and_the_cost_include_the_fees_exactly() -> None:
    model = claude()
    plain = BillableInput(tokens=100, encoding="o200k_base")
    searching = BillableInput(tokens=100, encoding="o200k_base", tools=ToolBounds((("web_search", 5),)))
    base = worst_case(plain, model, 200)
    case = worst_case(searching, model, 200)
    assert case.nanos == base.nanos + 5 * 10_000_000 and case.tool_nanos == 50_000_000
    assert worst_case(plain, model, 200).tool_nanos == 0 and plain.tools is NO_TOOLS
    # lowering the output cap to fit a budget leaves room for the fees first
    budget = 50_000_000 + model.price_of(case.input_tokens, 100)
    assert output_cap_within(searching, model, budget, case.input_tokens) == 100
    usage = Usage(prompt_tokens=100, completion_tokens=50, tool_calls=(("web_search", 3),))
    assert model.cost(usage) == 100 * 3000 + 50 * 15000 + 30_000_000


def test_an_input_allowance_per_call_is_reserved_as_input_tokens() -> None:
    model = replace(claude(), tool_inputs=(("web_search", 1000),))
    plain = BillableInput(tokens=100, encoding="o200k_base")
    searching = replace(plain, tools=ToolBounds((("web_search", 5),)))
    base, case = worst_case(plain, model, 200), worst_case(searching, model, 200)
    assert case.input_tokens == base.input_tokens + 5 * 1000
    assert case.nanos == base.nanos + 5 * 1000 * 3000 + 5 * 10_000_000
    table = registry_with({"providers": {"anthropic": {"web_search": {
        "usd": "0.01", "source": "s", "as_of": "2026-11-30", "input_tokens_per_call": 4000}}}})
    assert {m.tool_inputs for m in table.models.values() if m.provider == "anthropic"} == {(("web_search", 4000),)}


def registry_with(tool_fees: Any) -> Any:
    document = copy.deepcopy(yaml.safe_load((ROOT / "config" / "models.yaml").read_text()))
    document["tool_fees"] = tool_fees
    return parse_registry(document, "models.yaml", {"openai", "anthropic", "azure", "google", "groq", "together",
                                                    "mistral", "deepseek", "ollama"})


def test_the_shipped_table_loads_into_each_model() -> None:
    registry = parse_registry(yaml.safe_load((ROOT / "config" / "models.yaml").read_text()), "models.yaml")
    assert registry.models["gpt-4o"].fees["file_search"] == 2_500_000
    claude_ids = [m for m in registry.models.values() if m.provider == "anthropic"]
    assert all(m.fees["web_search"] == 10_000_000 for m in claude_ids)


@pytest.mark.parametrize(("table", "message"), [
    ({"providers": {"nobody": {}}}, "tool_fees.providers.nobody: names no configured provider"),
    ({"providers": {"openai": {"web_search": {"usd": 0.01, "source": "s", "as_of": "2026-11-30"}}}},
     "tool_fees.providers.openai.web_search.usd: must be a quoted decimal string"),
    ({"providers": {"openai": {"web_search": {"usd": "-1", "source": "s", "as_of": "2026-11-30"}}}},
     "must be >= 0"),
    ({"providers": {"openai": {"web_search": {"usd": "500", "source": "s", "as_of": "2026-11-30"}}}},
     "must be at most 100"),
    ({"providers": {"openai": {"web_search_2025_08_26": {"usd": "1", "source": "s", "as_of": "2026-11-30"}}}},
     "no version suffix"),
    ({"providers": {"openai": {"web_search": {"usd": "1", "source": "s"}}}}, "as_of: is required"),
    ({"providers": {"openai": {"web_search": {"usd": "1", "source": "s", "as_of": "2026-11-30", "per": 1}}}},
     "per: unknown key"),
    ({"default_max_calls": 30, "max_calls": 20}, "must be at most max_calls"),
    ({"max_calls": 0}, "must be >= 1"),
    ({"providers": {}, "bound": 3}, "tool_fees.bound: unknown key"),
])
def test_a_bad_fee_table_is_a_load_error_naming_the_key(table: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        registry_with(table)


def test_a_reported_call_is_never_taken_for_chats_per_request_search_fee() -> None:
    """A Responses ``web_search_call`` no tool declared (a stored prompt's) is charged as the dearest
    kind it may be of — ``web_search`` or ``web_search_preview`` — never as chat's per-request
    ``web_search_options`` fee, whose name shares the prefix (it was, at that fee, for every call)."""
    from costproxy.pipeline.settle import _of_kind

    names = ["file_search", "web_search", "web_search_options", "web_search_preview"]
    assert _of_kind("web_search", names) == ["web_search", "web_search_preview"]
    assert _of_kind("web_search_preview", names) == ["web_search_preview"]
    assert _of_kind("web_search_options", names) == ["web_search_options"]
    assert _of_kind("file_search", names) == ["file_search"]


def test_a_tool_call_count_past_any_loop_is_charged_at_most_the_cap_and_stays_storable() -> None:
    """An upstream reporting 10^19 searches the request never declared was charged as reported: the
    entry's cost and counts did not fit a ledger row (quarantined: the request left the ledger), and
    10^9 searches cost $10,000,000 on a call. Each kind is charged at most ``MAX_REPORTED_CALLS``."""
    from types import SimpleNamespace

    import orjson

    from costproxy.analyzer.server_tools import MAX_REPORTED_CALLS
    from costproxy.pipeline.settle import charged_tool_calls

    plan: Any = SimpleNamespace(billable=SimpleNamespace(tools=NO_TOOLS), ctx=SimpleNamespace(request_id="r1"))
    model = claude()
    usage = Usage(prompt_tokens=10, completion_tokens=5, tool_calls=(("web_search", 10**19),))
    charged, metadata = charged_tool_calls(plan, model, usage, False)
    assert dict(charged.tool_calls) == {"web_search": MAX_REPORTED_CALLS}
    assert metadata is not None and metadata["tool_calls_clamped"]["reported"] == {"web_search": str(10**19)}
    assert metadata["tool_calls_undeclared"] == {"web_search": MAX_REPORTED_CALLS}
    orjson.dumps(metadata)  # the ledger row can hold it
    assert model.cost(charged) == 10 * 3000 + 5 * 15000 + MAX_REPORTED_CALLS * 10_000_000
