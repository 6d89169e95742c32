"""Rule actions: ``{type, params}``, validated at parse time and turned into ``Constraints``.

Every action that shapes the model choice becomes a ``Constraints`` value once, when the file
is parsed, so evaluating a rule only merges precomputed values.

=================  =====================================================  ==========================
type               params                                                 effect
=================  =====================================================  ==========================
route              model | tier (exactly one)                             pin a model / a tier
reject             message, status? (400-499, default 403)                refuse the request
select-model       quality, min_quality?, allowed_models?,                quality target and limits
                   excluded_models?, max_cost_usd?
downgrade          to_tier?, same_provider?                               cheapest sufficient model
set-cost-limit     max_cost_usd                                           worst-case cost cap
cap-output-tokens  max_tokens                                             lower max_tokens
cache              ttl_s?, share? (principal|user|project|team|org|       answer deterministic
                   global)                                                requests from the cache
log                message, level? (debug|info|warning|error)             log line, changes nothing
=================  =====================================================  ==========================

``route``, ``select-model`` and ``downgrade`` are the operator's explicit permission to serve a
request that names a concrete model with another one (``Constraints.may_switch``); a cost limit
alone never switches a named model: the proxy lowers its output cap to fit, or refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from costproxy.cache.policy import MAX_TTL_S, SHARES, CacheDirective
from costproxy.config_schema import Node
from costproxy.money import MoneyError, format_usd, usd_to_nanos
from costproxy.records import frozen
from costproxy.registry import TIERS
from costproxy.routing.policy import QUALITY_MODES, Constraints

ACTION_TYPES = (
    "route",
    "reject",
    "select-model",
    "downgrade",
    "set-cost-limit",
    "cap-output-tokens",
    "cache",
    "log",
)
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_REJECT_STATUS = 403


@frozen
class Action:
    type: str
    params: Mapping[str, Any]  # validated and normalised (read-only)
    constraints: Constraints | None = None  # None for reject and log
    model_refs: tuple[tuple[str, str], ...] = ()  # (field path in the rule, model name)
    cache: CacheDirective | None = None  # the cache action only


def parse_action(node: Node, rule_id: str) -> Action:
    action_type = node.child("type").str(choices=ACTION_TYPES)
    params = node.child("params", None)
    params.mapping()  # a mapping, or omitted when every param is optional
    action = _PARSERS[action_type](params, f"rule {rule_id}: {action_type}")
    params.done()
    node.done()
    return action


def _frozen(params: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({k: v for k, v in params.items() if v is not None})


def _max_cost(node: Node) -> int:
    amount = node.decimal()
    try:
        nanos = usd_to_nanos(amount, what="max_cost_usd")
    except MoneyError as exc:
        raise node.error(str(exc), node.value) from None
    if nanos <= 0:
        raise node.error("must be greater than 0", node.value)
    return nanos


def _models(node: Node, *, non_empty: bool) -> tuple[str, ...]:
    models = tuple(node.str_list())
    if non_empty and not models:
        raise node.error("must list at least one model", node.value)
    return models


def _refs(node: Node, models: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((f"{node.path}[{i}]", model) for i, model in enumerate(models))


def _route(params: Node, reason: str) -> Action:
    model_node = params.child("model", None)
    tier_node = params.child("tier", None)
    if (model_node.value is None) == (tier_node.value is None):
        raise params.error("give exactly one of model or tier", params.value)
    if model_node.value is not None:
        model = model_node.str()
        constraints = Constraints(pinned_model=model, may_switch=True, reasons=(f"{reason} model {model}",))
        return Action("route", _frozen({"model": model}), constraints, ((model_node.path, model),))
    tier = tier_node.str(choices=TIERS)
    constraints = Constraints(pinned_tier=tier, may_switch=True, reasons=(f"{reason} tier {tier}",))
    return Action("route", _frozen({"tier": tier}), constraints)


def _reject(params: Node, reason: str) -> Action:
    message = params.child("message").str()
    status = params.child("status", DEFAULT_REJECT_STATUS).int(minimum=400, maximum=499)
    return Action("reject", _frozen({"message": message, "status": status}))


def _select_model(params: Node, reason: str) -> Action:
    quality = params.child("quality").str(choices=QUALITY_MODES)
    min_node = params.child("min_quality", None)
    min_quality = None if min_node.value is None else min_node.number(minimum=0.0, maximum=1.0)
    allowed_node = params.child("allowed_models", None)
    allowed = None if allowed_node.value is None else _models(allowed_node, non_empty=True)
    excluded_node = params.child("excluded_models", None)
    excluded = _models(excluded_node, non_empty=False)
    cost_node = params.child("max_cost_usd", None)
    max_cost = None if cost_node.value is None else _max_cost(cost_node)
    constraints = Constraints(
        quality_mode=quality,
        min_quality=min_quality,
        allowed_models=None if allowed is None else frozenset(allowed),
        excluded_models=frozenset(excluded),
        max_cost_nanos=max_cost,
        may_switch=True,
        reasons=(f"{reason} quality {quality}",),
    )
    shown = {
        "quality": quality,
        "min_quality": min_quality,
        "allowed_models": allowed,
        "excluded_models": excluded or None,
        "max_cost_usd": None if max_cost is None else format_usd(max_cost),
    }
    refs = _refs(allowed_node, allowed or ()) + _refs(excluded_node, excluded)
    return Action("select-model", _frozen(shown), constraints, refs)


def _downgrade(params: Node, reason: str) -> Action:
    same = params.child("same_provider", False).bool()
    tier_node = params.child("to_tier", None)
    if tier_node.value is None:
        constraints = Constraints(downgrade=True, may_switch=True, same_provider=same, reasons=(reason,))
        return Action("downgrade", _frozen({"same_provider": same or None}), constraints)
    tier = tier_node.str(choices=TIERS)
    tiers = frozenset(TIERS[: TIERS.index(tier) + 1])  # TIERS runs from cheapest to dearest
    constraints = Constraints(downgrade=True, allowed_tiers=tiers, may_switch=True, same_provider=same,
                              reasons=(f"{reason} to tier {tier}",))
    return Action("downgrade", _frozen({"to_tier": tier, "same_provider": same or None}), constraints)


def _set_cost_limit(params: Node, reason: str) -> Action:
    nanos = _max_cost(params.child("max_cost_usd"))
    usd = format_usd(nanos)
    constraints = Constraints(max_cost_nanos=nanos, reasons=(f"{reason} {usd} USD",))
    return Action("set-cost-limit", _frozen({"max_cost_usd": usd}), constraints)


def _cap_output_tokens(params: Node, reason: str) -> Action:
    tokens = params.child("max_tokens").int(minimum=1)
    constraints = Constraints(max_output_tokens=tokens, reasons=(f"{reason} {tokens}",))
    return Action("cap-output-tokens", _frozen({"max_tokens": tokens}), constraints)


def _cache(params: Node, reason: str) -> Action:
    ttl_node = params.child("ttl_s", None)
    ttl = None if ttl_node.value is None else ttl_node.int(minimum=1, maximum=MAX_TTL_S)
    share_node = params.child("share", None)
    share = None if share_node.value is None else share_node.str(choices=SHARES)
    return Action("cache", _frozen({"ttl_s": ttl, "share": share}), cache=CacheDirective(ttl_s=ttl, share=share))


def _log(params: Node, reason: str) -> Action:
    message = params.child("message").str()
    level = params.child("level", "info").str(choices=LOG_LEVELS)
    return Action("log", _frozen({"message": message, "level": level}))


_PARSERS: dict[str, Callable[[Node, str], Action]] = {
    "route": _route,
    "reject": _reject,
    "select-model": _select_model,
    "downgrade": _downgrade,
    "set-cost-limit": _set_cost_limit,
    "cap-output-tokens": _cap_output_tokens,
    "cache": _cache,
    "log": _log,
}
