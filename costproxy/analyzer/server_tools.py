"""Tools that run on the provider's side, and the fee each of their calls costs (pure).

Some tools are billed per call on top of tokens: Anthropic's ``web_search`` (reported in
``usage.server_tool_use.web_search_requests``), OpenAI Responses' ``web_search``,
``web_search_preview`` and ``file_search`` (one ``*_call`` item in ``output`` per call), and chat
completions' ``web_search_options`` (one fee per request).  ``config/models.yaml``'s ``tool_fees``
says what each call costs per provider (``ToolFee``); ``ModelSpec.tool_fees`` holds its provider's.

Before the call the proxy bounds the calls (``ToolBounds``): a request's own ``max_uses`` per
Anthropic tool, or its Responses ``max_tool_calls`` across all built-in tools, at most
``tool_fees.max_calls``; ``tool_fees.default_max_calls`` where it gives none.  The bound is sent
upstream in those same fields (set or lowered, as ``max_tokens`` is), reserved at each kind's fee,
and after the call no more calls than the bound are charged (``ToolBounds.clamp``).  A Responses
request with a stored prompt (``prompt``), whose tools the proxy cannot see, is bounded under a hard
budget as if it declared every priced kind (``stored_prompt_bounds``).  Calls of a priced kind the
proxy did not bound are charged as reported, beyond the reservation (an overrun).  What a call
adds to the prompt (search results, billed as input tokens) has no bound the proxy can know before
the call; a fee's ``input_tokens_per_call`` reserves an allowance for it (``ModelSpec.tool_inputs``),
and a bill beyond it is an overrun like any other.

A server tool whose kind the fee table does not list is *unpriced*: the proxy cannot bound what
it costs, so under a hard budget it is refused (``UnpricedTool``), and without one it is passed
and the ledger entry says so (``metadata.unpriced_tools``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import field
from datetime import date
from decimal import Decimal
from typing import Any

from costproxy.config_schema import Node
from costproxy.money import NANOS_PER_USD
from costproxy.records import frozen
from costproxy.request import Api

# A version suffix of a tool type: Anthropic's ``web_search_20250305``, OpenAI's
# ``web_search_preview_2025_03_11``.
_VERSION = re.compile(r"(_\d{8}|_\d{4}_\d{2}_\d{2})$")
# Anthropic tools with a ``type`` that run on the client (billed as tokens only, like functions).
ANTHROPIC_CLIENT_TOOLS = frozenset({"bash", "text_editor", "computer", "memory"})
# Responses tools the client runs: the model emits a call item (``function_call``, ``local_shell_call``,
# ``shell_call``, ``apply_patch_call``, ``computer_call``…) and the client executes it; no fee per call.
RESPONSES_CLIENT_TOOLS = frozenset({"function", "custom", "local_shell", "shell", "apply_patch",
                                    "computer_use_preview", "computer_use", "computer"})
# Chat completions' search: billed per request by the search models, not per call.
PER_REQUEST_SEARCH = "web_search_options"
# The most calls of one kind a request is charged, whatever the upstream reports: fifty times the
# highest bound the proxy sends (max_calls ≤ 20 by default), far beyond any real tool loop.
MAX_REPORTED_CALLS = 1_000
MCP_SERVERS = "mcp"  # Anthropic's ``mcp_servers`` (the MCP connector)
MAX_FEE_USD = Decimal(100)  # a fee above $100 per call is a typo
DEFAULT_MAX_CALLS = 5  # calls of a tool reserved for when the request gives no bound
MAX_CALLS = 20  # the most calls one request may reserve for


@frozen
class ToolFee:
    """USD per call of one tool kind, with where the figure comes from."""

    usd: Decimal
    source: str = ""
    as_of: date | None = None
    input_tokens: int = 0  # input tokens each call may add (search results), reserved as an allowance
    nanos: int = field(default=0, init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nanos", math.ceil(self.usd * NANOS_PER_USD))


@frozen
class ToolFees:
    """``tool_fees`` of models.yaml: provider name -> tool kind -> fee, and the call bounds."""

    providers: Mapping[str, Mapping[str, ToolFee]] = field(default_factory=dict)
    default_max_calls: int = DEFAULT_MAX_CALLS
    max_calls: int = MAX_CALLS

    @property
    def priced_kinds(self) -> frozenset[str]:
        """Every tool kind some provider has a fee for."""
        return frozenset(kind for kinds in self.providers.values() for kind in kinds)

    def bound(self, asked: int | None) -> int:
        """The calls reserved for a bound the request asked (``default_max_calls`` without one),
        never above ``max_calls``."""
        return min(self.max_calls, self.default_max_calls if asked is None else asked)

    def of(self, provider: str) -> tuple[tuple[str, int], ...]:
        """``provider``'s fees, (kind, nano-USD per call), as ``ModelSpec.tool_fees`` holds them."""
        return tuple(sorted((kind, fee.nanos) for kind, fee in self.providers.get(provider, {}).items()))

    def inputs_of(self, provider: str) -> tuple[tuple[str, int], ...]:
        """``provider``'s input-token allowances per call, (kind, tokens), where set."""
        return tuple(sorted((kind, fee.input_tokens) for kind, fee in self.providers.get(provider, {}).items()
                            if fee.input_tokens))


NO_TOOL_FEES = ToolFees()


@frozen
class ServerTool:
    """One tool of a request that runs on the provider's side."""

    kind: str  # the tool type without its version suffix (``web_search``)
    param: str  # where the request names it (``tools[0].type``)
    max_calls: int | None = None  # the request's own bound for this tool (Anthropic ``max_uses``)
    index: int = -1  # its position in ``tools`` (-1: a field of the body, such as ``web_search_options``)


@frozen
class ToolBounds:
    """The most calls of each kind the proxy reserved for (and sent upstream)."""

    calls: tuple[tuple[str, int], ...] = ()
    total: int | None = None  # the most calls of all kinds together (Responses ``max_tool_calls``)
    uses: tuple[tuple[int, int], ...] = ()  # Anthropic: (index in ``tools``, ``max_uses`` to send)

    def send(self, api: Api, body: dict[str, Any]) -> None:
        """Set or lower, in the upstream ``body`` of a native request, each field that bounds the
        calls to the bound reserved: Responses ``max_tool_calls``, each Anthropic tool's ``max_uses``."""
        if api is Api.RESPONSES and self.total is not None and not _at_most(body.get("max_tool_calls"), self.total):
            body["max_tool_calls"] = self.total
        if api is Api.MESSAGES and self.uses and isinstance(body.get("tools"), list):
            tools = list(body["tools"])
            for index, uses in self.uses:
                if not _at_most(tools[index].get("max_uses"), uses):
                    tools[index] = {**tools[index], "max_uses": uses}
            body["tools"] = tools

    def clamp(self, reported: Mapping[str, int], fees: Mapping[str, int]) -> dict[str, int]:
        """``reported`` with each priced kind the proxy bounded at most its bound, and all of them at
        most ``total`` (the dearest first, so a clamp never charges less than a reservation could
        hold); kinds without a fee pass as reported (they cost nothing here), and so do kinds the
        proxy never bounded (calls the request did not declare: the ledger records the real bill) —
        each kind at most ``MAX_REPORTED_CALLS``, so no figure from a broken or hostile upstream can
        overflow a counter or lose the ledger entry."""
        bound = dict(self.calls)
        left = self.total
        charged: dict[str, int] = {}
        for kind in sorted(reported, key=lambda k: (-fees.get(k, 0), k)):
            count = min(reported[kind], MAX_REPORTED_CALLS)
            if kind in fees and kind in bound:
                count = min(count, bound[kind])
                if left is not None:
                    count = min(count, left)
                    left -= count
            charged[kind] = count
        return charged

    def fee_bound(self, fees: Mapping[str, int]) -> int:
        """The most the calls can cost at ``fees`` (nano-USD); with input-token allowances per call
        in place of fees, the most input tokens they are reserved for."""
        charged = self.clamp({kind: count for kind, count in self.calls if kind in fees}, fees)
        return sum(count * fees[kind] for kind, count in charged.items())


NO_TOOLS = ToolBounds()


def tool_kind(kind: str) -> str:
    """A tool type without its version suffix."""
    return _VERSION.sub("", kind)


def server_tools(api: Api, body: Mapping[str, Any]) -> list[ServerTool]:
    """The tools of a client's body (in its own API) that run on the provider's side."""
    if api is Api.CHAT:
        if body.get(PER_REQUEST_SEARCH) not in (None, False):
            return [ServerTool(PER_REQUEST_SEARCH, PER_REQUEST_SEARCH, 1)]
        return []
    found: list[ServerTool] = []
    tools = body.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if not isinstance(kind, str):
            continue
        base = tool_kind(kind)
        if api is Api.MESSAGES and (kind == "custom" or base in ANTHROPIC_CLIENT_TOOLS):
            continue
        if api is Api.RESPONSES and base in RESPONSES_CLIENT_TOOLS and not _hosted(tool):
            continue
        uses = tool.get("max_uses") if api is Api.MESSAGES else None
        found.append(ServerTool(base, f"tools[{index}].type", _count(uses), index))
    if api is Api.MESSAGES and body.get("mcp_servers"):
        found.append(ServerTool(MCP_SERVERS, "mcp_servers"))
    return found


def tool_bounds(api: Api, body: Mapping[str, Any], tools: Iterable[ServerTool], fees: ToolFees) -> ToolBounds:
    """What the proxy reserves for: each tool's own bound (or the request's ``max_tool_calls``),
    ``default_max_calls`` without one, never above ``max_calls``.  Only tools some provider has a fee
    for are bounded upstream: the calls of a request with unpriced tools alone are left as asked."""
    calls: dict[str, int] = {}
    uses: list[tuple[int, int]] = []
    asked_total = _count(body.get("max_tool_calls")) if api is Api.RESPONSES else None
    priced = fees.priced_kinds
    for tool in tools:
        if tool.kind == PER_REQUEST_SEARCH:
            calls[tool.kind] = 1
            continue
        asked = tool.max_calls if api is Api.MESSAGES else asked_total
        bound = fees.bound(asked)
        calls[tool.kind] = calls.get(tool.kind, 0) + bound  # the same tool twice: each its own uses
        if api is Api.MESSAGES and tool.index >= 0 and tool.kind in priced:
            uses.append((tool.index, bound))
    if not calls:
        return NO_TOOLS
    total = None
    if api is Api.RESPONSES and priced.intersection(calls):  # only unpriced tools: their calls are not limited
        total = fees.bound(asked_total)
        calls = {kind: total for kind in calls}
    return ToolBounds(tuple(sorted(calls.items())), total, tuple(uses))


def stored_prompt_bounds(body: Mapping[str, Any], bounds: ToolBounds, fees: ToolFees) -> ToolBounds:
    """``bounds`` of a Responses request that uses a stored prompt (``prompt: {id}``), which may
    carry tools its body does not show: every priced kind a Responses tool may be of is bounded
    with the declared ones by one ``max_tool_calls`` (the request's, ``default_max_calls``
    without it, at most ``max_calls``), so the reservation holds that many calls at the dearest fee."""
    total = bounds.total if bounds.total is not None else fees.bound(_count(body.get("max_tool_calls")))
    calls = {kind: total for kind, _ in bounds.calls}
    calls.update((kind, total) for kind in fees.priced_kinds if kind != PER_REQUEST_SEARCH)
    return ToolBounds(tuple(sorted(calls.items())), total, bounds.uses)


def _hosted(tool: Mapping[str, Any]) -> bool:
    """A Responses ``shell`` tool in a container the provider runs (``environment.type``
    ``container_auto`` / ``container_reference``), not in the client's own runtime."""
    environment = tool.get("environment")
    return isinstance(environment, Mapping) and str(environment.get("type", "")).startswith("container")


def _at_most(value: Any, bound: int) -> bool:
    count = _count(value)
    return count is not None and count <= bound


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_tool_fees(node: Node, providers: set[str] | None) -> ToolFees:
    """``tool_fees: {default_max_calls, max_calls, providers: {name: {kind: {usd, source, as_of}}}}``;
    absent: no tool is priced (every server tool is unpriced)."""
    if node.value is None:
        return NO_TOOL_FEES
    max_calls = node.child("max_calls", MAX_CALLS).int(minimum=1, maximum=1000)
    default_node = node.child("default_max_calls", DEFAULT_MAX_CALLS)
    default = default_node.int(minimum=1, maximum=1000)
    if default > max_calls:
        raise default_node.error(f"must be at most max_calls ({max_calls})", default)
    table: dict[str, dict[str, ToolFee]] = {}
    for provider, kinds in node.child("providers", {}).items():
        if providers is not None and provider not in providers:
            raise kinds.error("names no configured provider", provider)
        table[provider] = {}
        for kind, fee_node in kinds.items():
            if tool_kind(kind) != kind:
                raise fee_node.error(f"a tool kind has no version suffix (write {tool_kind(kind)!r})", kind)
            table[provider][kind] = _parse_fee(fee_node)
    node.done()
    return ToolFees(providers=table, default_max_calls=default, max_calls=max_calls)


def _parse_fee(node: Node) -> ToolFee:
    usd_node = node.child("usd")
    if not isinstance(usd_node.value, str):  # a YAML float has already lost the exact figure
        raise usd_node.error('must be a quoted decimal string, e.g. "0.01"', usd_node.value)
    usd = usd_node.decimal(minimum=Decimal(0))
    if usd > MAX_FEE_USD:
        raise usd_node.error(f"must be at most {MAX_FEE_USD} (USD per call)", usd_node.value)
    as_of = node.child("as_of").date()
    fee = ToolFee(usd=usd, source=node.child("source").str(), as_of=as_of,
                  input_tokens=node.child("input_tokens_per_call", 0).int(minimum=0, maximum=1_000_000))
    node.done()
    return fee
