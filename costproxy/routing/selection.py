"""The selection engine: the cheapest model expected to do the job (sans-IO, pure).

``select`` works in four steps over the candidate models:

1. **Eligibility.**  A model can serve the request when it is a chat model, has every required
   capability (request and constraints), its context window holds the input plus the output the
   request needs, and the policy constraints allow it (pinned model or tier, allowed/excluded
   models and tiers, output price cap, ``min_quality``).  Its *worst case* — every allowed output
   token used, ``ModelSpec.worst_case_cost`` — must fit ``max_cost_nanos`` and the remaining
   budget; when it does not, a lower output cap is tried (the proxy then injects it as
   ``max_tokens``), as long as the cap still leaves room for the expected answer.
2. **Scores.**  Expected quality for this request — from its query features when the profiles hold
   a predictor for the model and task, else for its task type and difficulty bucket (``QualityProfiles``)
   and expected cost: input tokens plus expected output tokens at the model's prices, exactly as
   ``ModelSpec.cost`` computes it (whole nano-USD per token rates are precomputed per model).
3. **Quality target.**  ``reference − gap``, where *gap* is the shortfall the quality mode accepts
   (``economy_gap``, ``balanced_gap``, ``quality_gap``) and *reference* depends on
   ``target_reference``: ``baseline`` (the default) is the expected quality of the registry's
   ``baseline_model`` for this request — what the caller would otherwise have used, and what savings
   are measured against — and ``best`` the highest expected quality among the eligible models.  With
   ``baseline`` the reference falls back to *best* when no baseline is given or it is not a candidate,
   and ``auto:quality`` always aims at the best (whoever asks for quality wants the best).  The target
   never exceeds *best*.  Budget pressure widens the gap gradually (``pressure_gap``
   at full pressure) and ``downgrade`` widens it to the maximum; the gap never exceeds ``max_gap``
   and the target never falls below ``quality_floor`` — the floor.
4. **Choice.**  The cheapest eligible model whose expected quality meets the target.  Optionally
   (``quality_per_usd``, off by default) money gets an exchange rate instead: among the models
   meeting the target, the one with the best *value* ``quality − quality_per_usd × cost in USD``
   wins, so a model that costs a little more for much more quality is preferred, and a request
   with a lot of money at stake leans cheaper than a trivial one.  The fallback chain lists the
   other sufficient models, cheapest first, other providers before the chosen one's, then the
   remaining eligible models by expected quality.

Learning (``learning/estimates.py``): with ``estimates`` — the evidence feedback has added up per
task, difficulty bucket and model — a candidate's expected quality is its Beta posterior around the
profile's estimate (the prior): a candidate is credited with its *conservative* quality (the prior
until its lower confidence bound rises above it; the posterior mean when evidence is worse) and
the reference with its *optimistic* one, so all of a cell's traffic moves to a cheaper model only
when the lower bound of its expected retention clears the target.  Without evidence nothing changes.

Mixing (with ``draw``, the router's ``learning.mixing``; not with ``quality_per_usd``): a cheaper
model feedback has measured, whose lower bound misses the target, may still take a *share* of the
traffic, as long as the mix's expected quality meets the target — the gap is spent on a fraction
of the requests instead of on none.  With ``q`` the quality a sufficient model (*base*) meets the
target with (the reference's optimistic one, another's conservative one), ``p`` the partner's lower
confidence bound — its prior weighing no more observations than the evidence has, so one lucky
answer proves little and a failure never raises the share — and ``t`` the target before the cap,
the share is ``(q − t) / (q − p)``.  Of every base and partner on their cost–quality frontiers, the
pair with the lowest expected cost per request wins, if it costs less than the cheapest sufficient
model alone; a request goes to the partner when its uniform ``draw`` falls below the share, else to
the base (which may be dearer than the cheapest sufficient model: the mix is cheaper in
expectation).  As a wider gap only adds plans and widens every base's slack, more budget pressure
never raises the expected cost.  Only models with evidence in the request's cell take part, and
none whose posterior mean is below the reference less ``max_gap`` (or below ``quality_floor`` or
the constraints' ``min_quality``): no request goes to a model the evidence puts below what the
deepest downgrade would accept.

Traffic the calibration never saw starts on the reference: with a calibrated quality file (one that
counts its ``samples``), a model with fewer than ``min_task_samples`` calibration rows on the request's
task — its estimate is a fallback from other tasks, or rests on a handful of rows — is *unproven*
there: it may not replace the reference model until feedback proves it, and then it is credited with
the lower confidence bound of its posterior alone, its prior weighing only as many observations as it
has rows.  Other tasks' numbers say little about a new one (a model as good as the best on two
benchmarks was far worse on a third); an unproven model stays eligible for fallbacks, a budget that
downgrades may still choose it, and hand-written priors (no counts) are taken as written.

Budget pressure is ``max(used, burn)`` in [0, 1]: *used* rises linearly from 0 at
``pressure_start`` (fraction of the budget spent) to 1 when it is spent; *burn* rises from 0 at a
burn ratio (spend rate / sustainable rate) of ``burn_start`` to 1 at ``burn_full``.  More pressure
never yields a more expensive choice: the target only goes down, and the cheapest model meeting a
lower target costs no more (with ``quality_per_usd`` too: a model newly admitted by a lower target
has less quality, so it can only win by being cheaper).  With mixing the choice of one request
depends on its draw; the expected cost over the draw never rises with pressure (see "Mixing").
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from costproxy.analyzer.profile import RequestProfile
from costproxy.errors import NoEligibleModel
from costproxy.ids import Ids
from costproxy.learning.estimates import OnlineEstimates, Posterior
from costproxy.money import NANOS_PER_USD, TOKENS_PER_PRICE_UNIT, format_usd
from costproxy.records import frozen
from costproxy.registry import MARGIN_SCALE, ModelSpec, Usage
from costproxy.routing.policy import QUALITY_MODES, Constraints
from costproxy.routing.quality import QualityProfiles

_EPSILON = 1e-9
# Decision ids: 32 hex digits like a uuid4's (``costproxy.ids``: no system call per decision)
_decision_id = Ids("", 16)
TARGET_REFERENCES = ("baseline", "best")


@frozen
class BudgetPressure:
    used_fraction: float = 0.0  # of the tightest budget in the caller's chain
    burn_ratio: float = 0.0  # spend rate / rate that would exactly exhaust it at period end
    remaining_nanos: int | None = None  # the least remaining amount across the chain


@frozen
class SelectionConfig:
    default_mode: str = "balanced"
    economy_gap: float = 0.10
    balanced_gap: float = 0.03
    quality_gap: float = 0.0
    pressure_start: float = 0.5
    burn_start: float = 1.0
    burn_full: float = 2.0
    pressure_gap: float = 0.10
    max_gap: float = 0.20
    quality_floor: float = 0.0
    max_fallbacks: int = 3
    quality_per_usd: float | None = None  # None: the cheapest sufficient model wins
    target_reference: str = "baseline"  # TARGET_REFERENCES: what the mode's gap is measured from
    min_task_samples: int = 30  # calibration rows a model needs on a task before it may replace the reference

    def gap(self, mode: str) -> float:
        return {"economy": self.economy_gap, "quality": self.quality_gap}.get(mode, self.balanced_gap)

    def pressure(self, pressure: BudgetPressure) -> float:
        """Pressure level in [0, 1] (see the module docstring)."""
        used = _ramp(pressure.used_fraction, self.pressure_start, 1.0)
        burn = _ramp(pressure.burn_ratio, self.burn_start, self.burn_full)
        return max(used, burn)


# Not frozen: ``select`` builds one per candidate model on every ``auto`` request, and a frozen
# dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs three times a plain one.
# Treat it as read-only all the same; ``unsafe_hash`` keeps it hashable as it was when frozen.
@dataclass(slots=True, unsafe_hash=True)
class CandidateScore:
    model: str
    provider: str
    tier: str
    expected_quality: float
    quality_source: str  # text | predictor | bucket | task | model | tier | default (quality.LEVELS), or online
    expected_cost_nanos: int
    worst_case_nanos: int
    output_cap: int  # max output tokens the worst case assumes
    eligible: bool
    reason_excluded: str | None = None
    learned: Posterior | None = None  # the online estimate around the profile's prior, when there is evidence
    proven: bool = True  # False: too few calibration rows on this task and no feedback (module docstring)
    by_feedback: bool = False  # proven by feedback alone: credited with its lower bound (module docstring)

    @property
    def reference_quality(self) -> float:
        """Its quality as the reference of the target (optimistic once evidence exists: the upper
        bound when feedback alone speaks for it)."""
        if self.learned is None:
            return self.expected_quality
        return self.learned.upper if self.by_feedback else self.learned.optimistic


@frozen
class Decision:
    id: str
    model: str
    scores: tuple[CandidateScore, ...]
    reasons: tuple[str, ...]
    fallback_chain: tuple[str, ...]
    quality_target: float
    expected_quality: float
    estimated_cost_nanos: int
    worst_case_nanos: int
    output_cap: int  # inject as max_tokens when below what the request asked for
    task_type: str
    difficulty: float
    mode: str
    pressure: float
    # With ``draw``: the share of this traffic the mix sends to its cheaper model (module docstring,
    # "Mixing"); None when no model was mixed in
    mix_share: float | None = None

    def score(self, model_id: str) -> CandidateScore | None:
        return next((s for s in self.scores if s.model == model_id), None)


def _ramp(value: float, start: float, full: float) -> float:
    if value <= start:
        return 0.0
    if full <= start or value >= full:
        return 1.0
    return (value - start) / (full - start)


# --- eligibility --------------------------------------------------------------------------------


def _policy_exclusion(model: ModelSpec, constraints: Constraints) -> str | None:
    if constraints.pinned_model is not None and model.id != constraints.pinned_model:
        return f"pinned to {constraints.pinned_model}"
    if constraints.pinned_tier is not None and model.tier != constraints.pinned_tier:
        return f"pinned to tier {constraints.pinned_tier}"
    if constraints.allowed_models is not None and model.id not in constraints.allowed_models:
        return "not in allowed models"
    if model.id in constraints.excluded_models:
        return "excluded by policy"
    if constraints.allowed_tiers is not None and model.tier not in constraints.allowed_tiers:
        return f"tier {model.tier} not allowed"
    cap = constraints.max_price_per_mtok_output
    if cap is not None and model.price.output > Decimal(cap):
        return f"output price {model.price.output}/M above cap {cap}/M"
    return None


def _restricts(constraints: Constraints) -> bool:
    """Whether ``_policy_exclusion`` can exclude anything under ``constraints`` (skip it when not)."""
    return (constraints.pinned_model is not None or constraints.pinned_tier is not None
            or constraints.allowed_models is not None or bool(constraints.excluded_models)
            or constraints.allowed_tiers is not None or constraints.max_price_per_mtok_output is not None)


def _output_limit(profile: RequestProfile, constraints: Constraints) -> int | None:
    """The lower of the request's and the constraints' output caps (``None``: neither)."""
    caps = [c for c in (profile.max_output_tokens, constraints.max_output_tokens) if c]
    return min(caps) if caps else None


def _natural_cap(tariff: _Tariff, profile: RequestProfile, constraints: Constraints) -> int:
    cap = tariff.window - profile.input_tokens
    for limit in (profile.max_output_tokens, constraints.max_output_tokens, tariff.max_output):
        if limit and limit < cap:
            cap = limit
    return max(0, cap)


class _Tariff:
    """A model's prices as whole nano-USD per token, when they are (vendor prices are multiples of
    $0.001 per 1M tokens): then ``tokens × rate`` is exactly what ``ModelSpec.cost`` returns, with
    no Decimal arithmetic on the hot path.  Other prices go through ``ModelSpec`` itself."""

    __slots__ = ("input", "max_output", "model", "output", "overhead", "ppm", "price", "window", "worst_input")

    def __init__(self, model: ModelSpec) -> None:
        self.model, self.price = model, model.price
        # what ``_natural_cap`` and ``ModelSpec.input_bound`` read, kept here for the 30 scores per request
        self.window, self.max_output = model.context_window, model.max_output_tokens
        self.ppm, self.overhead = model.tokenizer.margin_ppm, model.tokenizer.overhead_tokens
        fast = model.price.nanos_per_token
        self.input = fast[0] if fast else None
        self.output = fast[1] if fast else None
        # the worst case prices every prompt token at the dearest input-side rate (cache writes)
        self.worst_input = max(fast[0], fast[3], fast[4]) if fast else None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """``ModelSpec.cost`` of an uncached usage (same exact result)."""
        if self.input is None or self.output is None:
            return self.model.cost(Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
        return prompt_tokens * self.input + completion_tokens * self.output

    def worst_case(self, prompt_tokens: int, max_output_tokens: int) -> int:
        """``ModelSpec.worst_case_cost`` (same exact result)."""
        if self.worst_input is None or self.output is None:
            return self.model.worst_case_cost(prompt_tokens, max_output_tokens)
        bound = prompt_tokens + -(-prompt_tokens * self.ppm // MARGIN_SCALE) + self.overhead  # input_bound
        return bound * self.worst_input + max_output_tokens * self.output

    def cap_that_fits(self, input_tokens: int, limit: int) -> int:
        """The largest output cap whose worst case fits ``limit`` nano-USD (0 if none)."""
        left = limit - self.worst_case(input_tokens, 0)
        if left < 0:
            return 0
        price = self.model.price.output
        if price <= 0:
            return 1 << 30
        if self.output is not None:
            return left // self.output
        cap = int(Decimal(left) / (price * NANOS_PER_USD / TOKENS_PER_PRICE_UNIT))
        # money.tokens_cost rounds the whole sum up once: the estimate may be a token off either way
        while cap > 0 and self.worst_case(input_tokens, cap) > limit:
            cap -= 1
        while self.worst_case(input_tokens, cap + 1) <= limit:
            cap += 1
        return cap


_TARIFFS: dict[str, _Tariff] = {}  # memo by model id, checked against the price object


def _tariff(model: ModelSpec) -> _Tariff:
    tariff = _TARIFFS.get(model.id)
    if tariff is None or tariff.price is not model.price or tariff.model is not model:
        if len(_TARIFFS) > 4_096:
            _TARIFFS.clear()
        tariff = _TARIFFS[model.id] = _Tariff(model)
    return tariff


def cap_that_fits(model: ModelSpec, input_tokens: int, limit: int) -> int:
    """The most output tokens ``model`` may produce for a prompt of ``input_tokens`` with its worst
    case within ``limit`` nano-USD (0: not even the prompt fits)."""
    return _tariff(model).cap_that_fits(input_tokens, limit)


def _worst_case(
    tariff: _Tariff, profile: RequestProfile, constraints: Constraints, limit: int | None
) -> tuple[int, int, str | None]:
    """(output cap, worst-case nanos, reason excluded)."""
    cap = _natural_cap(tariff, profile, constraints)
    worst = tariff.worst_case(profile.input_tokens, cap)
    if limit is None or worst <= limit:
        return cap, worst, None
    fitted = min(cap, tariff.cap_that_fits(profile.input_tokens, limit))
    if fitted >= profile.expected_output_tokens and fitted > 0:
        return fitted, tariff.worst_case(profile.input_tokens, fitted), None
    return cap, worst, f"worst case ${format_usd(worst)} exceeds the limit ${format_usd(limit)}"


def _limit(constraints: Constraints, pressure: BudgetPressure) -> int | None:
    limits = [x for x in (constraints.max_cost_nanos, pressure.remaining_nanos) if x is not None]
    return min(limits) if limits else None


def _scores(candidates: Sequence[ModelSpec], profile: RequestProfile, quality: QualityProfiles, bucket: int,
            ctx: _Context) -> list[CandidateScore]:
    """One ``CandidateScore`` per candidate (steps 1 and 2 of the module docstring).

    One loop with the fit checks, ``_natural_cap`` and ``_Tariff.worst_case`` inlined: it runs
    for some 30 models on every ``auto`` request, where a function call per check is a third of the time."""
    task, features, ngrams = profile.task_type, profile.features, profile.ngrams
    tokens, needed = profile.input_tokens, profile.expected_output_tokens
    required, estimates, constraints, limit = ctx.required, ctx.estimates, ctx.constraints, ctx.limit
    output_limit, policy, min_quality = ctx.output_limit, ctx.policy, ctx.constraints.min_quality
    min_samples = ctx.min_samples
    # without predictors and a text model a model's estimate depends only on task and bucket
    table = quality.table(task, bucket) if not quality.predictors and quality.text is None else None
    scores = []
    for model in candidates:
        model_id = model.id
        if table is not None:
            cell = table.get(model_id)
            if cell is None or cell.tier != model.tier:
                cell = quality.cell(model_id, model.tier, task, bucket)
            expected_q, source, support = cell.value, cell.level, cell.support
        else:
            expected_q, source = quality.estimate(model_id, model.tier, task, bucket, features, ngrams)
            support = quality.support(model_id, task)
        if not min_samples:
            support = None
        learned, proven, by_feedback = None, True, False
        if support is None or support >= min_samples:
            if estimates is not None:
                learned = estimates.lookup(task, bucket, model_id, expected_q)
                if learned is not None:
                    expected_q, source = learned.conservative, "online"
        else:  # unproven on this task: only feedback can prove it, its prior counts for no more rows than it has
            if estimates is not None:
                learned = estimates.lookup(task, bucket, model_id, expected_q, strength=support)
            if learned is not None:
                expected_q, source, by_feedback = learned.lower, "online", True
            else:
                proven = False
        tariff = _TARIFFS.get(model_id)
        if tariff is None or tariff.model is not model or tariff.price is not model.price:
            tariff = _tariff(model)
        reason = None
        if model.kind != "chat":
            reason = f"{model.kind} model"
        elif required and not required <= model.capabilities:
            reason = "lacks " + ", ".join(sorted(required - model.capabilities))
        elif tariff.max_output and needed > tariff.max_output:
            reason = f"max output {tariff.max_output} < expected {needed}"
        elif tokens + needed > tariff.window:
            reason = f"context window {tariff.window} < {tokens} in + {needed} out"
        elif policy:
            reason = _policy_exclusion(model, constraints)
        inp, out, worst_input = tariff.input, tariff.output, tariff.worst_input
        if inp is not None and out is not None and worst_input is not None:
            cap = tariff.window - tokens
            if output_limit and output_limit < cap:
                cap = output_limit
            if tariff.max_output and tariff.max_output < cap:
                cap = tariff.max_output
            if cap < 0:
                cap = 0
            expected_cost = tokens * inp + needed * out
            worst = (tokens + -(-tokens * tariff.ppm // MARGIN_SCALE) + tariff.overhead) * worst_input + cap * out
            if limit is not None and worst > limit:
                cap, worst, budget_reason = _worst_case(tariff, profile, constraints, limit)
                reason = reason or budget_reason
        else:
            expected_cost = tariff.cost(tokens, needed)
            cap, worst, budget_reason = _worst_case(tariff, profile, constraints, limit)
            reason = reason or budget_reason
        if reason is None and min_quality is not None and expected_q + _EPSILON < min_quality:
            reason = f"expected quality {expected_q:.3f} < min_quality {min_quality:.3f}"
        # positional: keywords cost a third more in the generated __init__
        scores.append(CandidateScore(model_id, model.provider, model.tier, expected_q, source, expected_cost,
                                     worst, cap, reason is None, reason, learned, proven, by_feedback))
    return scores


@frozen
class _Context:
    constraints: Constraints
    required: frozenset[str]
    limit: int | None
    estimates: OnlineEstimates | None = None
    policy: bool = True  # whether ``constraints`` restricts models at all (``_policy_exclusion``)
    output_limit: int | None = None  # the lower of the request's and the constraints' output caps
    min_samples: int = 0  # SelectionConfig.min_task_samples (0: every model counts as proven)


# --- choice -------------------------------------------------------------------------------------


def _reference(best: CandidateScore, mode: str, scores: Sequence[CandidateScore], baseline: str | None,
               config: SelectionConfig) -> tuple[float, str, CandidateScore]:
    """(reference quality, what it is, its score) — see step 3 of the module docstring."""
    if config.target_reference == "baseline" and mode != "quality" and baseline is not None:
        score = next((s for s in scores if s.model == baseline), None)
        if score is not None:
            return score.reference_quality, f"baseline {baseline}", score
    return best.reference_quality, "best eligible", best


def _target(reference: float, mode: str, level: float, constraints: Constraints,
            config: SelectionConfig) -> float:
    """The target before it is capped at the best eligible quality (step 3 of the module docstring)."""
    gap = config.max_gap if constraints.downgrade else config.gap(mode) + level * config.pressure_gap
    gap = min(gap, config.max_gap)
    return max(reference - gap, config.quality_floor, constraints.min_quality or 0.0)


def _by_quality(s: CandidateScore) -> float:
    return s.expected_quality


def _by_reference_quality(s: CandidateScore) -> float:
    return s.reference_quality


def _preference(quality_per_usd: float | None) -> Callable[[CandidateScore], tuple[float, int, float, str]]:
    """Sort key of the sufficient models: cheapest first, or best quality-for-money first."""
    rate = 0.0 if quality_per_usd is None else quality_per_usd / NANOS_PER_USD

    def key(s: CandidateScore) -> tuple[float, int, float, str]:
        value = -(s.expected_quality - rate * s.expected_cost_nanos) if quality_per_usd is not None else 0.0
        return (value, s.expected_cost_nanos, -s.expected_quality, s.model)

    return key


def _fallbacks(chosen: CandidateScore, sufficient: list[CandidateScore], eligible: list[CandidateScore],
               limit: int, first: CandidateScore | None = None) -> tuple[str, ...]:
    """Up to ``limit`` fallbacks (module docstring, step 4); ``first``, the model a mixed-in one
    stands in for, leads them."""
    if first is not None:
        chain = _fallbacks(chosen, sufficient, eligible, limit)
        return (first.model, *(m for m in chain if m != first.model))[:limit]
    provider = chosen.provider
    others = heapq.nsmallest(limit, (s for s in sufficient if s is not chosen),
                             key=lambda s: (s.provider == provider, s.expected_cost_nanos, s.model))
    if len(others) >= limit:  # the usual case: the rest of the eligible models are not needed
        return tuple(s.model for s in others)
    seen = {chosen.model, *(s.model for s in sufficient)}
    rest = sorted((s for s in eligible if s.model not in seen),
                  key=lambda s: (-s.expected_quality, s.expected_cost_nanos, s.model))
    return tuple(s.model for s in [*others, *rest][:limit])


@frozen
class _Mix:
    base: CandidateScore  # serves the rest of the traffic; meets the target on its own
    partner: CandidateScore  # cheaper, below the target, measured by feedback
    share: float  # of the traffic the partner takes
    partner_quality: float  # what the partner is credited with: the lower bound of its evidence
    expected_cost: float  # nano-USD per request, in expectation over the draw


def _frontier(scored: Sequence[tuple[CandidateScore, float]]) -> list[tuple[CandidateScore, float]]:
    """The (score, quality) pairs no other beats on both cost and quality, cheapest first."""
    kept: list[tuple[CandidateScore, float]] = []
    for s, q in sorted(scored, key=lambda x: (x[0].expected_cost_nanos, -x[1], x[0].model)):
        if not kept or q > kept[-1][1] + _EPSILON:
            kept.append((s, q))
    return kept


def _mix(sufficient: Sequence[CandidateScore], reference: CandidateScore, wanted: float, floor: float,
         eligible: Sequence[CandidateScore], estimates: OnlineEstimates, task: str,
         bucket: int) -> _Mix | None:
    """The mix of a sufficient model (*base*) and a cheaper measured one (*partner*) with the lowest
    expected cost per request, when it costs less than the cheapest sufficient model alone (module
    docstring, "Mixing"); None otherwise.

    The base counts with the quality it meets the target with (the reference: its optimistic
    quality).  The partner counts with the lower confidence bound of its posterior, its prior
    weighing no more observations than the evidence has — one lucky answer proves little, and a
    failure never raises its share — and takes part only when that posterior's mean reaches
    ``floor`` and its bound misses ``wanted`` (a model meeting the target is a sufficient model, not
    a partner).  Its share keeps the mix's expected quality at ``wanted``.  Every base and partner is
    considered (their cost–quality frontiers), so a wider gap — more budget pressure — never makes
    the expected cost higher."""
    bases = _frontier([(s, s.reference_quality if s is reference else s.expected_quality) for s in sufficient])
    dearest = bases[-1][0].expected_cost_nanos if bases else 0
    partners = []
    for s in eligible:
        learned = s.learned
        # cheap checks first: a partner saves against some base, and one meeting the target is sufficient
        if learned is None or s.expected_cost_nanos >= dearest or s.expected_quality + _EPSILON >= wanted:
            continue
        # an unproven model's posterior already weighs its prior as no more than its calibration rows
        rated = learned if s.by_feedback else estimates.lookup(task, bucket, s.model, learned.prior,
                                                               strength=min(estimates.strength, learned.evidence))
        if rated is None or rated.mean + _EPSILON < floor:
            continue
        q = min(s.expected_quality, rated.lower)
        if q + _EPSILON < wanted:
            partners.append((s, q))
    if not partners:
        return None
    best: _Mix | None = None
    alone = min(s.expected_cost_nanos for s in sufficient)
    for partner, q_partner in _frontier(partners):
        for base, q_base in bases:
            gain = base.expected_cost_nanos - partner.expected_cost_nanos
            if gain <= 0 or q_base - wanted <= _EPSILON:
                continue
            share = min(1.0, (q_base - wanted) / (q_base - q_partner))
            cost = base.expected_cost_nanos - share * gain
            if cost < alone - 0.5 and (best is None or cost < best.expected_cost):
                best = _Mix(base, partner, share, q_partner, cost)
    return best


def _no_model_message(scores: Sequence[CandidateScore], profile: RequestProfile) -> str:
    shown = "; ".join(f"{s.model}: {s.reason_excluded}" for s in scores[:8])
    more = f"; and {len(scores) - 8} more" if len(scores) > 8 else ""
    needs = ", ".join(sorted(profile.required_capabilities)) or "no special capabilities"
    return (f"No model can serve this request ({profile.input_tokens} input tokens, "
            f"task {profile.task_type}, needs {needs}): {shown}{more}" if scores
            else "No model can serve this request: the candidate list is empty")


def select(
    profile: RequestProfile,
    candidates: Sequence[ModelSpec],
    quality: QualityProfiles,
    constraints: Constraints,
    pressure: BudgetPressure,
    config: SelectionConfig,
    *,
    decision_id: str | None = None,
    baseline: str | None = None,
    estimates: OnlineEstimates | None = None,
    draw: float | None = None,
) -> Decision:
    """Choose the cheapest sufficient model; raise ``NoEligibleModel`` when none can serve.

    ``baseline`` is the model the caller would otherwise have used (the registry's
    ``baseline_model`` for ``auto``): the quality reference when ``config.target_reference`` is
    ``baseline``.  ``estimates``: what feedback taught (module docstring), read without I/O.
    ``draw``: a uniform number in [0, 1) for this request, which lets a measured cheaper model take
    a share of the traffic (module docstring, "Mixing"); None: no mixing."""
    ctx = _Context(constraints, profile.required_capabilities | constraints.required_capabilities,
                   _limit(constraints, pressure), estimates if estimates is not None and estimates.cells else None,
                   _restricts(constraints), _output_limit(profile, constraints), config.min_task_samples)
    bucket = quality.bucket(profile.task_type, profile.difficulty)
    scores = _scores(candidates, profile, quality, bucket, ctx)
    eligible = [s for s in scores if s.eligible]
    if not eligible:
        raise NoEligibleModel(_no_model_message(scores, profile),
                              details={"excluded": {s.model: s.reason_excluded for s in scores}})
    mode = constraints.quality_mode if constraints.quality_mode in QUALITY_MODES else config.default_mode
    level = config.pressure(pressure)
    top = max(eligible, key=_by_quality)
    best = top.expected_quality
    # the reference is credited optimistically once there is evidence (module docstring)
    top_reference = max(eligible, key=_by_reference_quality) if ctx.estimates is not None else top
    reference, reference_name, reference_score = _reference(top_reference, str(mode), scores, baseline, config)
    wanted = _target(reference, str(mode), level, constraints, config)
    target = min(wanted, best)
    if ctx.estimates is not None and reference_score.eligible and wanted > target:
        # With evidence the cap would let the best lower bound set the bar, and a handful of lucky
        # answers would tie a cheap model with the reference: another model must clear the uncapped
        # target, and the reference itself may always serve.
        sufficient = [s for s in eligible if s is reference_score or s.expected_quality + _EPSILON >= wanted]
    else:
        sufficient = [s for s in eligible if s.expected_quality + _EPSILON >= target]
    unproven = () if constraints.downgrade else [s for s in sufficient if not s.proven and s is not reference_score]
    if unproven:
        kept = any(s is reference_score for s in sufficient)
        sufficient = [s for s in sufficient if s.proven or s is reference_score] or [
            reference_score if kept else top]
    chosen = min(sufficient, key=_preference(config.quality_per_usd))
    mixed: tuple[str, ...] = ()
    share, stand_in, why = None, None, ""
    if draw is not None and ctx.estimates is not None and config.quality_per_usd is None:
        floor = max(reference - config.max_gap, config.quality_floor, constraints.min_quality or 0.0)
        mix = _mix(sufficient, reference_score, wanted, floor, eligible, ctx.estimates, profile.task_type, bucket)
        if mix is not None:
            share, base, partner = mix.share, mix.base, mix.partner
            # no per-request number in the reason: decisions alike keep sharing one copy (router)
            mixed = (f"mix: {partner.model} (lower bound {mix.partner_quality:.3f}, est. "
                     f"${format_usd(partner.expected_cost_nanos)}) takes {100 * share:.1f} % of this traffic and "
                     f"{base.model} the rest, which keeps the mix's expected quality at the target for an expected "
                     f"${format_usd(round(mix.expected_cost))} a request",)
            if draw < share:  # the model it stands in for is its first fallback
                chosen, stand_in, why = partner, base, f"drawn for its share of the mix with {base.model}"
            else:
                chosen, why = base, f"drawn for the mix's other share (with {partner.model})"
    reasons = (
        f"task {profile.task_type}, difficulty {profile.difficulty:.2f} (bucket {bucket})",
        f"mode {mode}, pressure {level:.2f}: target {target:.3f} "
        f"({reference_name} {reference:.3f}, best eligible {best:.3f})",
        f"{len(eligible)} of {len(scores)} models eligible, {len(sufficient)} meet the target",
        *((f"{len(unproven)} more unproven on {profile.task_type} (fewer than {config.min_task_samples} "
           f"calibration rows, no feedback yet): {', '.join(s.model for s in unproven[:5])}"
           f"{' …' if len(unproven) > 5 else ''}",) if unproven else ()),
        f"chose {chosen.model}: "
        + (why or f"{'cheapest' if config.quality_per_usd is None else 'best value'} meeting the target")
        + f", expected quality {chosen.expected_quality:.3f}, est. ${format_usd(chosen.expected_cost_nanos)}",
        *mixed,
        *constraints.reasons,
    )
    return Decision(
        id=decision_id or _decision_id(), model=chosen.model, scores=tuple(scores), reasons=reasons,
        fallback_chain=_fallbacks(chosen, sufficient, eligible, config.max_fallbacks, stand_in),
        quality_target=target, expected_quality=chosen.expected_quality,
        estimated_cost_nanos=chosen.expected_cost_nanos, worst_case_nanos=chosen.worst_case_nanos,
        output_cap=chosen.output_cap, task_type=profile.task_type, difficulty=profile.difficulty,
        mode=str(mode), pressure=level, mix_share=share,
    )
