"""After the call: what was used, what it cost, and the ledger entry that records it.

Usage comes from the provider when it reports it; otherwise (a stream without a usage chunk, a
body without ``usage``) the generated text is counted with the model's tokenizer and the entry is
marked estimated.  A failed call that produced nothing costs nothing and releases its reservation,
unless the provider had accepted it (a 2xx before the failure): a stream is then charged its prompt and
what it relayed, a unary call whose answer was lost, or a stream whose answer was no event stream
(``Outcome.unread``), its worst case.
How usage and text are read depends on the API the upstream spoke: a ``UsageReader`` per attempt
(``ChatUsage`` here; the Responses and Messages readers in ``protocols.usage``).  A reader whose
stream reported the prompt before it ended (Messages) lends that prompt to an estimated entry.

Output is charged at most as far as the provider could have generated it: ``n`` (or ``best_of``)
choices times the output cap the proxy sent (the cap the reservation was made for), plus the
predicted tokens.  A usage reporting more completion tokens than that (a buggy or hostile
upstream: the tester's saw 100,000,000 for ``max_tokens: 100``) is charged that bound
(``plausible_usage``); the provider's own figure stays in the entry's metadata
(``usage_clamped``) for reconciliation, is logged (``usage_clamped``) and counted
(``costproxy_usage_clamped_total``).

Provider-side tool calls (``analyzer.server_tools``) are charged the same way: the calls the
provider reports, each kind at most the bound the proxy sent upstream and reserved for, at the fee
per call of the model's provider (chat's ``web_search_options``: one per request answered by a chat
upstream).  The entry's metadata explains the cost: ``tool_calls`` (kind -> calls charged),
``tool_fee_nanos`` (what they cost), and ``tool_calls_clamped`` (reported and bound) when the
provider reported more than the bound.  Calls of a priced kind the request never declared (a
Responses stored ``prompt`` may carry tools; a provider may run one unasked) were neither bounded nor
reserved for: they are charged as reported — the ledger records the real bill, an overrun of the
reservation — marked ``tool_calls_undeclared`` and logged (``tool_calls_undeclared``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeGuard

import structlog

from costproxy.analyzer.server_tools import PER_REQUEST_SEARCH
from costproxy.budgets.accounts import Reservation
from costproxy.errors import ProxyError
from costproxy.ledger.entry import LedgerEntry, Status, with_metadata
from costproxy.pipeline.admission import settle_limits
from costproxy.pipeline.plan import Plan
from costproxy.pipeline.services import Services, step
from costproxy.registry import ModelSpec, Usage
from costproxy.request import ChatRequest, RequestContext

log = structlog.get_logger("costproxy")


class UsageReader(Protocol):
    """Reads the usage and the generated text of one upstream API's bodies and stream events."""

    @property
    def prompt(self) -> Usage | None:
        """The prompt side reported so far by a stream that has not reported its end yet."""
        ...

    def usage_in(self, data: Mapping[str, Any]) -> Usage | None:
        """The complete usage this body or event reports, if it does."""
        ...

    def texts_in(self, data: Mapping[str, Any]) -> list[str]:
        """Generated text in this body or event (counted when no usage is reported)."""
        ...

    @property
    def tool_calls(self) -> tuple[tuple[str, int], ...]:
        """Provider-side tool calls seen so far by a stream that has not reported its end."""
        ...


class ChatUsage:
    """Chat completions (and completions, embeddings) bodies and chunks.  ``output``: the answer has
    output tokens, so a usage without ``completion_tokens`` is incomplete (embeddings have none)."""

    prompt: Usage | None = None
    tool_calls: tuple[tuple[str, int], ...] = ()  # chat reports none (``web_search_options``: see ``settle``)

    def __init__(self, output: bool = True) -> None:
        self.output = output

    def usage_in(self, data: Mapping[str, Any]) -> Usage | None:
        return usage_from(data, output=self.output)

    def texts_in(self, data: Mapping[str, Any]) -> list[str]:
        return texts_of(data)


CHAT_USAGE = ChatUsage()
EMBEDDINGS_USAGE = ChatUsage(output=False)


@dataclass(slots=True)
class Outcome:
    """What happened, filled in as the call proceeds; ``settle`` turns it into a ledger entry."""

    model: ModelSpec
    usage: Usage = field(default_factory=lambda: Usage(reported=False))
    status: Status = Status.OK
    http_status: int = 200
    error_code: str | None = None
    streamed_text: list[str] = field(default_factory=list)
    usage_seen: bool = False
    cost_nanos: int = 0
    reader: UsageReader = CHAT_USAGE  # of the API the current attempt's upstream speaks
    billed: bool = False  # the provider accepted the call before it failed (``ProviderError.billed``)
    unread: bool = False  # accepted, and nothing of its answer could be read (a stream that is no stream)

    def failed(self, exc: ProxyError) -> None:
        self.status, self.http_status, self.error_code = Status.ERROR, exc.status, exc.code
        self.billed = self.billed or bool(getattr(exc, "billed", False))

    def disconnected(self) -> None:
        """The client hung up (or the server cancelled the handler because it did)."""
        self.status, self.http_status = Status.CLIENT_DISCONNECTED, 499
        self.error_code = Status.CLIENT_DISCONNECTED.value

    def observe(self, data: Mapping[str, Any]) -> None:
        """Take the usage of a response body or stream chunk, or else keep its text for counting."""
        usage = self.reader.usage_in(data)
        if usage is not None:
            self.usage, self.usage_seen = usage, True
        else:
            self.streamed_text.extend(self.reader.texts_in(data))


def usage_from(data: Mapping[str, Any], *, output: bool = True) -> Usage | None:
    """The usage a body or chunk reports, or ``None`` when it reports none or an incomplete one
    (either count missing or not a count: then, as without usage, the answer is counted and the
    entry marked estimated, never a reported usage with 0 output).  Embeddings (``output=False``)
    report only ``prompt_tokens``."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens") if output else usage.get("completion_tokens", 0)
    if not _count(prompt) or not _count(completion):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 cached_tokens=cached if _count(cached) else 0, reported=True)


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def texts_of(data: Mapping[str, Any]) -> list[str]:
    texts: list[str] = []
    choices = data.get("choices")
    if not isinstance(choices, list):
        return texts
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        for holder in (choice.get("message"), choice.get("delta")):
            if isinstance(holder, dict):
                texts.extend(_message_texts(holder))
        if isinstance(choice.get("text"), str):
            texts.append(choice["text"])
    return texts


def _message_texts(message: Mapping[str, Any]) -> list[str]:
    texts = [v for k in ("content", "reasoning_content", "refusal") if isinstance(v := message.get(k), str)]
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts.extend(v for k in ("name", "arguments") if isinstance(v := function.get(k), str))
    return texts


def final_usage(services: Services, plan: Plan, outcome: Outcome) -> Usage:
    if outcome.usage_seen:
        return outcome.usage
    text = "".join(outcome.streamed_text)
    completion = services.counter.estimate_completion_from_text(text, outcome.model.encoding) if text else 0
    prompt, calls = outcome.reader.prompt, outcome.reader.tool_calls
    if prompt is not None:  # the provider told the prompt before the stream broke off
        return replace(prompt, completion_tokens=completion, reported=False, tool_calls=calls)
    return Usage(prompt_tokens=plan.input_tokens, completion_tokens=completion, reported=False, tool_calls=calls)


def ledger_entry(services: Services, plan: Plan, outcome: Outcome, usage: Usage) -> LedgerEntry:
    """The entry of a request that was planned: ``base_entry``'s fields and what the call did, built
    in one go (a ``replace`` of the 30-field frozen entry would build it twice)."""
    ctx, p, request = plan.ctx, plan.ctx.principal, plan.request
    baseline = plan.route.baseline
    return LedgerEntry(
        request_id=ctx.request_id, ts_ms=int(services.clock() * 1000), endpoint=ctx.endpoint,
        status=outcome.status, http_status=outcome.http_status, key_id=p.key_id, user=p.user, team=p.team,
        org=p.org, project=p.project, requested_model=plan.requested_model, stream=bool(request.stream),
        latency_ms=int((time.monotonic() - ctx.started) * 1000), correlation_id=ctx.correlation_id,
        tenant=ctx.tenant,
        served_model=outcome.model.id,
        provider=outcome.model.provider,
        decision_id=plan.route.decision_id,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        cost_nanos=outcome.cost_nanos,
        baseline_nanos=baseline.cost(usage) if baseline is not None else outcome.cost_nanos,
        usage_reported=usage.reported,
        error_code=outcome.error_code,
        task_type=plan.route.task_type,
        metadata=_metadata(plan),
    )


def _metadata(plan: Plan) -> dict[str, Any]:
    """Rules applied, the difficulty bucket of a selected model (``learning`` reads it back), and the
    provider-side tools passed without a fee."""
    metadata: dict[str, Any] = {"rules": list(plan.route.rules)} if plan.route.rules else {}
    if plan.route.difficulty_bucket is not None:
        metadata["difficulty_bucket"] = plan.route.difficulty_bucket
    if plan.unpriced_tools:
        metadata["unpriced_tools"] = list(plan.unpriced_tools)
    return metadata


def base_entry(services: Services, ctx: RequestContext, request: ChatRequest | None,
               requested: str | None) -> LedgerEntry:
    """The part of a ledger entry known before any routing: who asked, what, when."""
    p = ctx.principal
    return LedgerEntry(
        request_id=ctx.request_id, ts_ms=int(services.clock() * 1000), endpoint=ctx.endpoint,
        status=Status.OK, http_status=200, key_id=p.key_id, user=p.user, team=p.team, org=p.org,
        project=p.project, requested_model=requested, stream=bool(request and request.stream),
        latency_ms=int((time.monotonic() - ctx.started) * 1000), correlation_id=ctx.correlation_id,
        tenant=ctx.tenant)


def refusal_entry(services: Services, ctx: RequestContext, request: ChatRequest | None,
                  error: ProxyError) -> LedgerEntry:
    """A request refused before any upstream call: cost 0, the error code, nothing reserved."""
    requested = request.model if request is not None else None
    return replace(base_entry(services, ctx, request, requested), status=Status.REFUSED,
                   http_status=error.status, error_code=error.code, usage_reported=False)


# The most input tokens (prompt, cache reads and writes, each) one call is charged: far beyond any
# context window or server-tool loop, and low enough that no price in models.yaml (under $1,000 per
# million tokens) makes one call cost more than $1,000,000 (money.MAX_AMOUNT_NANOS), so a hostile or
# broken upstream's figure cannot overflow a 64-bit counter or the ledger.
MAX_INPUT_TOKENS = 1_000_000_000
_INPUT_FIELDS = ("prompt_tokens", "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens")


def plausible_usage(plan: Plan, model: ModelSpec, usage: Usage) -> tuple[Usage, dict[str, Any] | None]:
    """``usage`` with its completion tokens at most what ``model`` could generate for this request
    (every choice at the output cap sent, plus predicted tokens) and each input count at most
    ``MAX_INPUT_TOKENS``; with the provider's figures that were cut (and the limits), or ``None``
    when nothing was."""
    cut: dict[str, int] = {}
    for name in _INPUT_FIELDS:
        if getattr(usage, name) > MAX_INPUT_TOKENS:
            cut[name] = getattr(usage, name)
    if cut:
        cut["input_limit"] = MAX_INPUT_TOKENS
        usage = replace(usage, prompt_tokens=min(usage.prompt_tokens, MAX_INPUT_TOKENS),
                        cached_tokens=min(usage.cached_tokens, MAX_INPUT_TOKENS),
                        cache_write_tokens=min(usage.cache_write_tokens, MAX_INPUT_TOKENS),
                        cache_write_1h_tokens=min(usage.cache_write_1h_tokens, MAX_INPUT_TOKENS))
    if model.kind != "embedding" and model.id in plan.output_caps:
        most = plan.worst_case_on(model).billed_output_tokens
        if usage.completion_tokens > most:
            cut.update(completion_tokens=usage.completion_tokens, limit=most)
            usage = replace(usage, completion_tokens=most)
    if not cut:
        return usage, None
    return usage, {**as_reported(cut), "reported": int(usage.reported)}


def as_reported(counts: Mapping[str, int]) -> dict[str, int | str]:
    """A provider's figures as they were, as JSON can hold them (a count past 64 bits as text)."""
    return {name: count if count < 2**63 else str(count) for name, count in counts.items()}


def charged_tool_calls(plan: Plan, model: ModelSpec, usage: Usage,
                       per_request: bool) -> tuple[Usage, dict[str, Any] | None]:
    """``usage`` with its provider-side tool calls as charged: each reported kind under the kind the
    request declared (a Responses ``web_search_call`` of a ``web_search_preview`` tool is one of
    those; with several declared kinds it may be, under the one with the highest fee), at most the
    bound sent upstream; ``per_request``: a chat upstream answered a request with
    ``web_search_options`` (one search fee).  With the ledger metadata that explains the fees, or
    ``None`` when no tool was called."""
    bounds = plan.billable.tools
    declared = [kind for kind, _ in bounds.calls]
    fees = model.fees
    reported: dict[str, int] = {}
    for kind, count in usage.tool_calls:
        # the declared kinds this call may be of (a ``web_search_call`` with both ``web_search`` and
        # ``web_search_preview`` declared: either ran); the dearest, never below the provider's bill.
        # Undeclared (a stored prompt's tools): the dearest priced kind it may be of, the same figure
        # the stored prompt's bound reserved under a hard budget
        kinds = _of_kind(kind, declared) or _of_kind(kind, fees)
        kind = max(kinds, key=lambda d: (fees.get(d, 0), d == kind), default=kind)
        reported[kind] = reported.get(kind, 0) + count
    if per_request and PER_REQUEST_SEARCH in declared:
        reported[PER_REQUEST_SEARCH] = 1
    if not reported:
        return usage, None
    charged = bounds.clamp(reported, fees)
    metadata = _tool_metadata(model, charged)
    undeclared = {kind: charged[kind] for kind in reported if kind in fees and kind not in declared}
    if undeclared:  # not bounded, not reserved for: charged as reported, an overrun of the reservation
        metadata["tool_calls_undeclared"] = undeclared
        log.warning("tool_calls_undeclared", request_id=plan.ctx.request_id, model=model.id, reported=undeclared,
                    fee_nanos=model.tool_cost(undeclared.items()))
    if charged != reported:
        said = as_reported(reported)
        metadata["tool_calls_clamped"] = {"reported": said, "limit": dict(bounds.calls)}
        log.warning("tool_calls_clamped", request_id=plan.ctx.request_id, model=model.id, reported=said,
                    limit=dict(bounds.calls))
    return replace(usage, tool_calls=tuple(sorted(charged.items()))), metadata


def _of_kind(kind: str, names: Iterable[str]) -> list[str]:
    """The tool kinds among ``names`` a reported call of ``kind`` may be of (``web_search`` or
    ``web_search_preview`` for a ``web_search_call``); never chat's per-request ``web_search_options``
    fee, which is no tool a call is of (``charged_tool_calls`` adds it for the request)."""
    return [name for name in names
            if name == kind or (name.startswith(kind + "_") and name != PER_REQUEST_SEARCH)]


def _tool_metadata(model: ModelSpec, charged: dict[str, int]) -> dict[str, Any]:
    """What the ledger entry says of the tool calls charged: kind -> calls, and what they cost."""
    return {"tool_calls": charged, "tool_fee_nanos": model.tool_cost(charged.items())}


async def settle(services: Services, plan: Plan, reservation: Reservation, outcome: Outcome) -> LedgerEntry:
    """Charge what was used (nothing if the call failed before any usage) and write the ledger."""
    usage, clamped = plausible_usage(plan, outcome.model, final_usage(services, plan, outcome))
    if clamped is not None:
        log.warning("usage_clamped", request_id=plan.ctx.request_id, model=outcome.model.id, **clamped)
    produced = (usage.reported or usage.completion_tokens > 0 or outcome.status is Status.CLIENT_DISCONNECTED
                or outcome.billed)
    ok = outcome.status is Status.OK
    usage, tools = charged_tool_calls(plan, outcome.model, usage,
                                      isinstance(outcome.reader, ChatUsage) and (ok or produced))
    outcome.cost_nanos = outcome.model.cost(usage) if (ok or produced) else 0
    if outcome.billed and not outcome.usage_seen and (not plan.stream or outcome.unread):  # generated: unknown
        usage, outcome.cost_nanos = _lost_answer(plan, outcome.model)
        tools = _tool_metadata(outcome.model, dict(usage.tool_calls)) if usage.tool_calls else None
    outcome.usage = usage
    if outcome.cost_nanos == 0 and not ok:
        usage = Usage(reported=usage.reported)
    entry = ledger_entry(services, plan, outcome, usage)
    if clamped is not None or (tools is not None and outcome.cost_nanos):
        extra = {"usage_clamped": clamped} if clamped is not None else {}
        if tools is not None and outcome.cost_nanos:
            extra.update(tools)
        entry = with_metadata(entry, {**entry.metadata, **extra})
    with step(services, "costproxy.settle") as span:
        span.set_attribute("costproxy.cost_nanos", entry.cost_nanos)
        span.set_attribute("costproxy.usage_reported", entry.usage_reported)
        release = outcome.cost_nanos == 0 and not ok
        await asyncio.shield(record(services, plan, reservation, entry, release=release))
    return entry


def _lost_answer(plan: Plan, model: ModelSpec) -> tuple[Usage, int]:
    """A unary call the provider accepted whose answer never arrived whole: what it generated is
    unknown, so it is charged its worst case (never more than was reserved), marked estimated."""
    case = plan.worst_case_on(model)
    completion = case.output_tokens * case.multiplier + case.prediction_tokens
    bounds = plan.billable.tools
    calls = tuple(sorted(bounds.clamp(dict(bounds.calls), model.fees).items()))
    return Usage(prompt_tokens=case.input_tokens, completion_tokens=completion, reported=False,
                 tool_calls=calls), case.nanos


async def record(services: Services, plan: Plan, reservation: Reservation, entry: LedgerEntry, *,
                 release: bool = False) -> None:
    """Settle (or release) the reservation with ``entry``, then correct the tokens the rate limits
    drew at admission to the entry's; run shielded, so a cancelled request still records both."""
    if release:
        await services.accounts.release(reservation, entry)
    else:
        await services.accounts.settle(reservation, entry)
    if plan.admission is not None:
        await settle_limits(services, plan, entry)
