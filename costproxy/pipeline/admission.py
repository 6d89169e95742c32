"""The rate limits' part in a request: drawn at admission, corrected at settlement.

``admit_limits`` runs once the plan knows the request's worst case (after routing, before the
budget reservation): one request and the worst-case tokens — every input token plus every output
token the request allows, for each of its ``n`` choices, on the dearest model of the fallback
chain — are drawn from every limit of the caller (``ratelimits.limiter``), or the request is
refused with 429 ``rate_limited`` and ``retry-after``.  ``settle_limits`` corrects the tokens to the
ledger entry's (what the provider reported, 0 for a failed call or a cache hit).

``limit_headers`` are OpenAI's ``x-ratelimit-*`` headers for the answer; ``refusal_headers`` the same
for an error answer (read without drawing when the request never reached admission).
"""

from __future__ import annotations

from dataclasses import replace

from costproxy.errors import ProxyError
from costproxy.ledger.entry import LedgerEntry
from costproxy.pipeline.plan import Plan
from costproxy.pipeline.services import Services, step
from costproxy.request import RequestContext


def worst_case_tokens(plan: Plan) -> int:
    """The most tokens the request can use: its input plus every allowed output token of every
    choice, on the model of the chain that allows the most."""
    choices = plan.request.n
    return max(plan.input_tokens + plan.output_caps[model.id] * choices for model in plan.route.chain)


async def admit_limits(services: Services, plan: Plan) -> Plan:
    limiter = services.limits
    if limiter is None or not limiter.applies(plan.ctx.principal):
        return plan
    with step(services, "costproxy.rate_limit") as span:
        tokens = worst_case_tokens(plan)
        span.set_attribute("costproxy.rate_limit.tokens", tokens)
        admission = await limiter.admit(plan.ctx.principal, tokens)
    return plan if admission is None else replace(plan, admission=admission)


async def settle_limits(services: Services, plan: Plan | None, entry: LedgerEntry | None) -> None:
    """Correct the tokens drawn at admission to the entry's (none: the request was refused)."""
    if plan is None or plan.admission is None or services.limits is None:
        return
    used = 0 if entry is None else entry.prompt_tokens + entry.completion_tokens
    await services.limits.settle(plan.admission, used)


def limit_headers(plan: Plan) -> dict[str, str]:
    return plan.admission.headers() if plan.admission is not None else {}


async def add_refusal_headers(services: Services, ctx: RequestContext, plan: Plan | None, error: ProxyError) -> None:
    """Put the caller's ``x-ratelimit-*`` headers on an error answer (a rate-limit refusal has its own)."""
    if any(name.startswith("x-ratelimit-") for name in error.headers):
        return
    if plan is not None and plan.admission is not None:
        error.headers.update(plan.admission.headers())
    elif services.limits is not None and services.limits.applies(ctx.principal):
        error.headers.update(await services.limits.headers(ctx.principal))
