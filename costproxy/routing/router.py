"""The router with a brain: analyze → steering rules → constraints → select → fallback chain.

``SelectionRouter.route`` is what the pipeline calls for every request; ``explain`` runs the same
steps without calling any model (``POST /api/v1/models/select``, ``costproxy explain``).

- ``auto``, ``auto:economy|balanced|quality`` and the tier names (``economy``, ``standard``,
  ``premium``) always go through the selection engine.
- A concrete model is served as asked unless policy demands otherwise: a rule that routes,
  downgrades or excludes it, a cost limit (rule, header or budget) its worst case does not fit,
  or a budget restriction.  Then the engine chooses among the models the policy allows, and the
  decision says why.
- Fallbacks: the decision's chain for selected models; ``fallback.chains`` in the config for
  concrete ones.  Models behind an open circuit breaker are moved to the end of the chain.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from costproxy.analyzer.profile import RequestProfile, analyze
from costproxy.analyzer.tasks import TASK_TYPES
from costproxy.errors import (
    BudgetExceeded,
    ConfigError,
    InvalidRequest,
    ModelNotAllowed,
    NoEligibleModel,
    ProviderNotConfigured,
)
from costproxy.learning.estimates import OnlineEstimates
from costproxy.money import MoneyError, format_usd, usd_to_nanos
from costproxy.records import frozen
from costproxy.registry import ENDPOINT_KIND, TIERS, ModelSpec, Registry
from costproxy.request import asked_output_cap
from costproxy.routing.breakers import CircuitBreakers
from costproxy.routing.concrete import resolve_concrete
from costproxy.routing.decisions import DecisionRecord, Interner
from costproxy.routing.policy import EMPTY, QUALITY_MODES, Constraints
from costproxy.routing.quality import QualityProfiles
from costproxy.routing.quality_file import QualityHolder, QualityReload
from costproxy.routing.route import MIN_USEFUL_OUTPUT, Route, RouteInput
from costproxy.routing.selection import BudgetPressure, Decision, SelectionConfig, cap_that_fits, select
from costproxy.settings import Settings, provider_readiness
from costproxy.steering import RulesHolder, SteeringOutcome, evaluate
from costproxy.steering.rules import EMPTY_RULESET, Rule, RuleSet

VIRTUAL_PREFIX = "auto"
DECISIONS_KEPT = 10_000
# Every candidate's score is kept for the newest 1,000 decisions; older ones keep the chosen model's
# score and the counts (``DecisionRecord.scores_kept``).  Packed: ``routing.decisions``.
SCORES_KEPT = 1_000


@frozen
class Explanation:
    route: Route
    profile: RequestProfile
    steering: SteeringOutcome
    constraints: Constraints
    decision: Decision | None


def virtual_mode(name: str) -> tuple[bool, str | None, str | None]:
    """``(is_virtual, quality mode, pinned tier)`` for a requested model name."""
    if name == VIRTUAL_PREFIX:
        return True, None, None
    if name.startswith(VIRTUAL_PREFIX + ":"):
        mode = name.split(":", 1)[1]
        if mode not in QUALITY_MODES:
            raise InvalidRequest(f"unknown routing mode {mode!r}: use auto, auto:economy, auto:balanced "
                                 "or auto:quality", param="model")
        return True, mode, None
    if name in TIERS:
        return True, None, name
    return False, None, None


def header_constraints(headers: Mapping[str, str]) -> Constraints:
    """Policy a trusted chaining proxy may pass in headers (already filtered by the middleware)."""
    quality = headers.get("x-costproxy-quality")
    max_cost = headers.get("x-costproxy-max-cost-usd")
    if quality is None and max_cost is None:
        return EMPTY
    nanos = None
    if max_cost is not None:
        try:
            nanos = usd_to_nanos(max_cost, what="X-Costproxy-Max-Cost-Usd")
        except MoneyError as exc:
            raise InvalidRequest(str(exc), param="X-Costproxy-Max-Cost-Usd") from None
        if nanos < 0:  # no model fits below zero: a caller's mistake, not "no eligible model"
            raise InvalidRequest(f"X-Costproxy-Max-Cost-Usd must not be negative (got {max_cost[:40]!r})",
                                 param="X-Costproxy-Max-Cost-Usd")
    if quality is not None and quality not in QUALITY_MODES:
        raise InvalidRequest(f"X-Costproxy-Quality must be one of {', '.join(QUALITY_MODES)}")
    reasons = tuple(f"header {k}: {v}" for k, v in (("quality", quality), ("max cost", max_cost)) if v)
    return Constraints(quality_mode=quality, max_cost_nanos=nanos, reasons=reasons)


def steering_context(request: RouteInput, profile: RequestProfile, virtual: bool,
                     mode: str | None, now: float, header_names: tuple[str, ...] = ()) -> dict[str, Any]:
    ctx = request.ctx
    body = request.body
    p = ctx.principal
    hour, weekday, date = _clock_fields(now)
    context: dict[str, Any] = {
        "request.model": request.requested,
        "request.model_requested_virtual": virtual,
        "request.quality_mode": mode,
        "request.tokens.input": profile.input_tokens,
        "request.tokens.max_output": profile.max_output_tokens,
        "request.task_type": profile.task_type,
        "request.difficulty": profile.difficulty,
        "request.capabilities": sorted(profile.required_capabilities),
        "request.stream": bool(body.get("stream")),
        "request.endpoint": ctx.endpoint,
        "principal.key_id": p.key_id, "principal.user": p.user, "principal.team": p.team,
        "principal.org": p.org, "principal.project": p.project,
        "time.hour": hour, "time.weekday": weekday, "time.date": date,
    }
    for name, value in ctx.headers.items():
        context[f"request.headers.{name.lower()}"] = value
    for name in header_names:  # only the headers some rule tests are looked up
        sent = ctx.client_headers.get(name)
        if sent is not None:
            context.setdefault(f"request.headers.{name}", sent)
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for name, value in metadata.items():
            context[f"request.metadata.{name}"] = value
    context.update(request.budget.fields)
    return context


_CLOCK: list[tuple[int, tuple[int, int, str]]] = [(-1, (0, 0, ""))]  # (UTC second, its time.* fields)


def _clock_fields(now: float) -> tuple[int, int, str]:
    """``time.hour``, ``time.weekday`` and ``time.date`` (UTC) of ``now``, worked out once a second."""
    second = int(now // 1)
    known = _CLOCK[0]
    if known[0] == second:
        return known[1]
    moment = time.gmtime(second)
    fields = (moment.tm_hour, moment.tm_wday, time.strftime("%Y-%m-%d", moment))
    _CLOCK[0] = (second, fields)
    return fields


def switch_demand(model: ModelSpec, c: Constraints) -> str | None:
    """Why policy wants another model than the one named, or ``None`` when it may serve.

    A cost limit is not such a reason: a named model is capped to fit, or refused.
    """
    if c.pinned_model and c.pinned_model != model.id:
        return f"routed to {c.pinned_model}"
    if c.pinned_tier and c.pinned_tier != model.tier:
        return f"routed to tier {c.pinned_tier}"
    if model.id in c.excluded_models:
        return "excluded"
    if c.allowed_models is not None and model.id not in c.allowed_models:
        return f"only {', '.join(sorted(c.allowed_models))} allowed"
    if c.allowed_tiers is not None and model.tier not in c.allowed_tiers:
        return f"only tiers {', '.join(sorted(c.allowed_tiers))} allowed"
    price = c.max_price_per_mtok_output
    if price is not None and model.price.output > Decimal(price):
        return f"output price above {price}/M"
    if c.downgrade:
        return "downgrade"
    return None


def choices_of(body: Mapping[str, Any]) -> int:
    """``n`` (or ``best_of``): completions the provider generates and bills (validated upstream)."""
    values = [v for key in ("n", "best_of") if isinstance(v := body.get(key), int) and not isinstance(v, bool)]
    return max([1, *values])


NO_STEERING = SteeringOutcome(constraints=EMPTY, rejected=None, fired=(), logs=(), shadow_constraints=EMPTY,
                              shadow_rejected=None, outside_rollout=(), ruleset_digest="")
_TASK_FIELDS = frozenset({"request.task_type", "request.difficulty"})
_READS_TASK: dict[str, bool] = {}


def _only_virtual(rule: Rule) -> bool:
    """A rule whose conditions all must hold and include "the client asked for auto"."""
    return rule.operator == "and" and any(
        c.field == "request.model_requested_virtual" and c.operator == "equals" and c.value is True
        for c in rule.conditions)


def _reads_task(ruleset: RuleSet) -> bool:
    """Whether a rule that can match a concrete-model request tests the task type or difficulty.

    Memoised per rule-set digest.  Rules limited to ``auto`` requests do not count: those
    requests are always analyzed.
    """
    known = _READS_TASK.get(ruleset.digest)
    if known is None:
        known = any(c.field in _TASK_FIELDS for rule in ruleset.active if not _only_virtual(rule)
                    for c in rule.conditions)
        if len(_READS_TASK) > 64:
            _READS_TASK.clear()
        _READS_TASK[ruleset.digest] = known
    return known


def applied_rules(steering: SteeringOutcome) -> tuple[str, ...]:
    """Ids of the enforced rules that changed this request (shadow and out-of-rollout ones did not)."""
    return tuple(f.rule_id for f in steering.fired if f.applied) if steering.fired else ()


def undetected_profile(body: Mapping[str, Any], input_tokens: int) -> RequestProfile:
    """A profile without task detection, for a concrete model no rule asks the task of."""
    max_output = asked_output_cap(body)
    return RequestProfile(input_tokens=input_tokens, expected_output_tokens=0, max_output_tokens=max_output,
                          task_type="general_chat", difficulty=0.0, required_capabilities=frozenset(),
                          task_source="not-detected")


class SelectionRouter:
    def __init__(self, registry: Registry, quality: QualityProfiles, config: SelectionConfig,
                 rules: RulesHolder | None, breakers: CircuitBreakers,
                 fallbacks: Mapping[str, tuple[str, ...]] | None = None,
                 unservable: Mapping[str, str] | None = None) -> None:
        self.registry = registry
        self.quality = quality
        self.config = config
        self.rules = rules
        self.breakers = breakers
        self.unservable = dict(unservable or {})  # model id -> why this deployment cannot call it
        self.fallbacks = {model: tuple(m for m in chain if m not in self.unservable)
                          for model, chain in (fallbacks or {}).items()}
        self.candidates = tuple(m for m in registry.models.values()
                                if m.kind == "chat" and m.id not in self.unservable)
        self.quality_file: QualityHolder | None = None  # hot reload of the quality file (build_router)
        # The kept decisions by id, and their ids oldest first: a dict and a deque cost ~50 bytes a
        # decision less than an OrderedDict (its linked nodes), and evict the oldest in O(1) alike.
        self.decisions: dict[str, DecisionRecord] = {}
        self._order: deque[str] = deque()
        self._scored: deque[str] = deque()  # ids of the decisions that still hold every score, oldest first
        # Older decisions alike (same task, size and budget: the chosen score and the reasons are
        # equal) share one copy of them: ~1 KB less per decision where traffic repeats itself.
        self._alike: Interner = Interner(4_096)
        self.estimates: OnlineEstimates | None = None  # what feedback taught (learning/), replaced, never mutated
        self.mixing = True  # learning.mixing: with evidence, a measured cheaper model may take a share of auto traffic

    def reload_quality_if_changed(self) -> QualityReload | None:
        """Reload the quality file when it changed; a valid one replaces ``quality`` in one assignment.
        Blocking file I/O: call it off the event loop."""
        holder = self.quality_file
        result = None if holder is None else holder.reload_if_changed()
        if holder is not None and result is not None and result.ok:
            self.quality = holder.current
        return result

    def route(self, request: RouteInput) -> Route:
        return self.explain(request, extra=request.constraints).route

    def record_result(self, model: ModelSpec, ok: bool) -> None:
        self.breakers.record(model, ok)

    def explain(self, request: RouteInput, *, now: float | None = None,
                extra: Constraints | None = None) -> Explanation:
        virtual, mode, tier = virtual_mode(request.requested)
        kind = ENDPOINT_KIND[request.ctx.endpoint]
        if virtual and kind != "chat":
            raise InvalidRequest(f"automatic model selection is available for chat completions; name a "
                                 f"{kind} model for /{request.ctx.endpoint}", param="model")
        ruleset = self.rules.current if self.rules is not None else EMPTY_RULESET
        hint = request.ctx.headers.get("x-costproxy-task-type")
        if hint is not None and hint not in TASK_TYPES:  # as X-Costproxy-Quality: never ignored
            raise InvalidRequest(f"X-Costproxy-Task-Type must be one of {', '.join(TASK_TYPES)}")
        # Task detection costs ~70 µs: a concrete model needs it only when a rule reads the task.
        detect = virtual or hint is not None or _reads_task(ruleset)
        quality = self.quality  # features: only predictors read them; n-grams: only a text model
        profile = analyze(request.body, request.input_tokens, hint, features=bool(quality.predictors),
                          ngrams=quality.text is not None) if detect else \
            undetected_profile(request.body, request.input_tokens)
        if ruleset.active:
            steering = evaluate(ruleset, steering_context(request, profile, virtual, mode, now or time.time(),
                                                      ruleset.header_names),
                                request.ctx.request_id)
            steering.raise_if_rejected()
        else:
            steering = NO_STEERING
        base = Constraints(quality_mode=mode, pinned_tier=tier) if (mode or tier) else EMPTY
        constraints = (base.merge(header_constraints(request.ctx.headers))
                       .merge(steering.constraints)
                       .merge(request.budget.restrictions)
                       .merge(extra or EMPTY))
        named: ModelSpec | None = None
        if not virtual:
            named = self._servable(resolve_concrete(self.registry, request.requested, request.ctx.endpoint))
            why = switch_demand(named, constraints) if kind == "chat" else None
            if why is None:
                cap = self._named_cap(named, profile, constraints, request) if kind == "chat" else None
                # with the task detected, feedback on this answer teaches the named model's cell too
                # (an evaluation system measures models auto does not serve this way)
                route = Route(chain=self._concrete_chain(named), max_output_tokens=cap,
                              task_type=profile.task_type if detect else None, reasons=constraints.reasons,
                              baseline=named, rules=applied_rules(steering), cache=steering.cache,
                              difficulty_bucket=self.quality.bucket(profile.task_type, profile.difficulty)
                              if detect and kind == "chat" else None)
                return Explanation(route, profile, steering, constraints, None)
            if not constraints.may_switch:
                raise ModelNotAllowed(f"model {named.id!r} cannot serve this request: {why} "
                                      f"({'; '.join(constraints.reasons) or 'policy'}); no rule or budget "
                                      "allows switching it to another model", param="model")
        decision = self._select(request, profile, constraints, named)
        chosen = self.registry.models[decision.model]
        chain = self.breakers.order([chosen, *(self.registry.models[m] for m in decision.fallback_chain)])
        reasons = decision.reasons if named is None else (
            f"switched from {named.id}: {switch_demand(named, constraints)}", *decision.reasons)
        baseline = named or self.registry.baseline() or chosen
        route = Route(chain=tuple(chain), decision_id=decision.id, max_output_tokens=decision.output_cap,
                      task_type=profile.task_type, reasons=reasons, baseline=baseline, rules=applied_rules(steering),
                      cache=steering.cache, difficulty_bucket=self.quality.bucket(profile.task_type,
                                                                                  profile.difficulty))
        self._remember(decision, request, steering)
        return Explanation(route, profile, steering, constraints, decision)

    def _servable(self, model: ModelSpec) -> ModelSpec:
        problem = self.unservable.get(model.id)
        if problem is not None:
            raise ProviderNotConfigured(f"model {model.id!r} cannot be served by this deployment: {problem}",
                                        param="model")
        return model

    def _named_cap(self, model: ModelSpec, profile: RequestProfile, c: Constraints,
                   request: RouteInput) -> int | None:
        """The output cap for a named model: the rules' cap, lowered so the worst case fits the cost
        limit and the budget; a request whose useful minimum cannot fit is refused, never switched."""
        n = choices_of(request.body)
        natural = min(x for x in (profile.max_output_tokens, c.max_output_tokens,
                                  model.max_output_tokens or model.context_window,
                                  model.context_window - profile.input_tokens) if x is not None)
        remaining = request.budget.remaining_nanos
        limits = [x for x in (c.max_cost_nanos, remaining) if x is not None]
        if not limits or natural <= 0 or model.worst_case_cost(profile.input_tokens, natural * n) <= min(limits):
            return c.max_output_tokens
        limit = min(limits)
        fits = cap_that_fits(model, profile.input_tokens, limit) // n
        if fits >= min(MIN_USEFUL_OUTPUT, natural):
            return min(fits, natural)
        worst = model.worst_case_cost(profile.input_tokens, min(MIN_USEFUL_OUTPUT, natural) * n)
        if remaining is not None and limit == remaining:
            raise BudgetExceeded(
                f"budget {request.budget.tightest_budget or ''} has ${format_usd(remaining)} left, less than the "
                f"${format_usd(worst)} {model.id} needs for this prompt and {min(MIN_USEFUL_OUTPUT, natural)} "
                "output tokens", details={"budget": request.budget.tightest_budget,
                                          "remaining_usd": format_usd(remaining)})
        raise ModelNotAllowed(f"the cost limit ${format_usd(limit)} ({'; '.join(c.reasons)}) is below the "
                              f"${format_usd(worst)} {model.id} needs for this prompt", param="model")

    def _concrete_chain(self, model: ModelSpec) -> tuple[ModelSpec, ...]:
        extra = [self.registry.models[m] for m in self.fallbacks.get(model.id, ()) if m in self.registry.models]
        return tuple(self.breakers.order([model, *extra]))

    def _select(self, request: RouteInput, profile: RequestProfile, constraints: Constraints,
                named: ModelSpec | None) -> Decision:
        candidates = [m for m in self.candidates if not (constraints.same_provider and named is not None
                                                         and m.provider != named.provider)]
        view = request.budget
        pressure = BudgetPressure(used_fraction=view.used_fraction, burn_ratio=view.burn_ratio,
                                  remaining_nanos=view.remaining_nanos)
        if not self.candidates and self.unservable:
            missing = sorted(set(self.unservable.values()))
            raise ProviderNotConfigured("no model can serve this request: no configured provider has its key ("
                                        + "; ".join(missing) + ")", param="model")
        healthy = [m for m in candidates if self.breakers.allows(m)]
        baseline = named.id if named is not None else self.registry.baseline_model
        estimates = self.estimates
        # a named model is switched only for what the request demands, never mixed away
        draw = random.random() if (self.mixing and named is None and estimates is not None
                                   and estimates.cells) else None
        try:
            return select(profile, healthy or candidates, self.quality, constraints, pressure, self.config,
                          baseline=baseline, estimates=estimates, draw=draw)
        except NoEligibleModel:
            if view.remaining_nanos is None:
                raise
            unbounded = replace(pressure, remaining_nanos=None)
            try:  # would a model serve if the budget had room? then the budget is what refuses
                select(profile, healthy or candidates, self.quality, constraints, unbounded, self.config,
                       baseline=baseline, estimates=self.estimates)
            except NoEligibleModel:
                raise
            raise BudgetExceeded(
                f"budget {view.tightest_budget or ''} has ${format_usd(view.remaining_nanos)} left, less than "
                "the worst case of every model that can serve this request (lower max_tokens or raise the "
                "budget)", details={"budget": view.tightest_budget,
                                    "remaining_usd": format_usd(view.remaining_nanos)}) from None

    def _remember(self, decision: Decision, request: RouteInput, steering: SteeringOutcome) -> None:
        """Keep the decision, packed (``routing.decisions``); it is turned into JSON only if someone asks."""
        scores = decision.scores
        if decision.id not in self.decisions:
            self._order.append(decision.id)
        self.decisions[decision.id] = DecisionRecord(
            decision, request.ctx.request_id, request.requested, steering.fired, time.time(), self._alike,
            candidates=len(scores), eligible=sum(1 for s in scores if s.eligible))
        self._scored.append(decision.id)
        if len(self._scored) > SCORES_KEPT:
            old = self.decisions.get(self._scored.popleft())
            if old is not None:  # same key: its place in the order does not change
                self.decisions[old.decision_id] = old.stripped(self._alike)
        while len(self._order) > DECISIONS_KEPT:
            self.decisions.pop(self._order.popleft(), None)


def build_router(settings: Settings) -> SelectionRouter:
    """Compose the router from settings: quality profiles, selection config, rules, breakers.

    Blocking (reads the rules directory): call it off the event loop.
    """
    registry = settings.registry
    quality = settings.quality or QualityProfiles(models={}, tier_priors=DEFAULT_TIER_PRIORS)
    rules = RulesHolder(settings.rules_dir, known_models=[*registry.models, *registry.aliases])
    result = rules.reload()
    if not result.ok:
        raise ConfigError(str(settings.rules_dir), "", "invalid steering rules:\n" + "\n".join(
            str(error) for error in result.errors))
    router = SelectionRouter(registry, quality, settings.selection, rules, CircuitBreakers(settings.fallback.breaker),
                             settings.fallback.chains, unservable_models(settings))
    if settings.quality_path is not None:
        router.quality_file = QualityHolder(settings.quality_path, quality)
    router.mixing = settings.learning.mixing
    return router


def unservable_models(settings: Settings) -> dict[str, str]:
    """Model id -> why this deployment cannot call it: its provider's key is not in the environment.
    (Models of disabled providers are not in the registry at all.)"""
    return {model: f"provider {status.name!r} has no API key: {status.detail}"
            for status in provider_readiness(settings) if not status.usable for model in status.models
            if model in settings.registry.models}


# Used when no quality file is configured: a premium model is assumed better than a standard one,
# which is better than an economy one, for every task.
DEFAULT_TIER_PRIORS = {"premium": 0.9, "standard": 0.8, "economy": 0.65}
