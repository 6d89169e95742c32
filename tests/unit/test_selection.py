"""Selection invariants: capabilities, context, constraints, cheapest-sufficient, budget pressure."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from costproxy.analyzer.profile import RequestProfile
from costproxy.analyzer.tasks import FEATURE_NAMES
from costproxy.errors import ConfigError, NoEligibleModel
from costproxy.registry import ModelPrice, ModelSpec, Usage, parse_registry
from costproxy.routing.config import parse_selection_config
from costproxy.routing.policy import Constraints
from costproxy.routing.quality import ModelQuality, QualityProfiles, TaskQuality, parse_quality, quality_document
from costproxy.routing.selection import BudgetPressure, Decision, SelectionConfig, select

ROOT = Path(__file__).resolve().parents[2]
ALL_CAPS = frozenset({"tools", "vision", "json_schema", "json_mode", "streaming"})


def model(model_id: str, tier: str, price_in: str, price_out: str, *, provider: str = "p1",
          context: int = 128_000, max_output: int = 8_192, caps: frozenset[str] = ALL_CAPS,
          kind: str = "chat") -> ModelSpec:
    return ModelSpec(
        id=model_id, provider=provider, upstream_model=model_id, kind=kind, tier=tier,
        context_window=context, max_output_tokens=max_output, capabilities=caps,
        price=ModelPrice(input=Decimal(price_in), output=Decimal(price_out)),
    )


def models() -> list[ModelSpec]:
    return [
        model("tiny", "economy", "0.05", "0.10", provider="p1", caps=frozenset({"streaming"})),
        model("small", "economy", "0.15", "0.60", provider="p2", context=16_000),
        model("mid", "standard", "0.50", "2.00", provider="p1"),
        model("mid2", "standard", "0.60", "2.40", provider="p3"),
        model("big", "premium", "2.50", "10.00", provider="p2"),
        model("huge", "premium", "10.00", "40.00", provider="p3", caps=frozenset({"streaming", "tools"})),
        model("embed", "economy", "0.01", "0", kind="embedding", caps=frozenset({"embeddings"})),
    ]


def quality() -> QualityProfiles:
    def mq(overall: float, code: tuple[float, float, float]) -> ModelQuality:
        return ModelQuality(overall=overall, tasks={"code_generation": TaskQuality(overall=code[1], buckets=code)})

    return QualityProfiles(
        models={
            "tiny": mq(0.55, (0.60, 0.45, 0.30)),
            "small": mq(0.70, (0.80, 0.66, 0.50)),
            "mid": mq(0.80, (0.88, 0.80, 0.70)),
            "mid2": mq(0.81, (0.88, 0.81, 0.72)),
            "big": mq(0.88, (0.92, 0.88, 0.84)),
            "huge": mq(0.92, (0.94, 0.92, 0.91)),
        },
        tier_priors={"economy": 0.6, "standard": 0.75, "premium": 0.85},
        bucket_edges={"default": (0.35, 0.55)},
    )


def profile(**changes: object) -> RequestProfile:
    base = RequestProfile(
        input_tokens=1_000, expected_output_tokens=400, max_output_tokens=None,
        task_type="code_generation", difficulty=0.45, required_capabilities=frozenset(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run(p: RequestProfile | None = None, c: Constraints | None = None, pressure: BudgetPressure | None = None,
        config: SelectionConfig | None = None, candidates: list[ModelSpec] | None = None) -> str:
    return decide(p, c, pressure, config, candidates).model


def decide(p: RequestProfile | None = None, c: Constraints | None = None, pressure: BudgetPressure | None = None,
           config: SelectionConfig | None = None, candidates: list[ModelSpec] | None = None) -> Decision:
    return select(p or profile(), models() if candidates is None else candidates, quality(),
                  c or Constraints(), pressure or BudgetPressure(), config or SelectionConfig())


def cost_of(model_id: str, p: RequestProfile | None = None) -> int:
    spec = next(m for m in models() if m.id == model_id)
    p = p or profile()
    return spec.cost(Usage(prompt_tokens=p.input_tokens, completion_tokens=p.expected_output_tokens))


# --- cheapest sufficient -------------------------------------------------------------------------


def test_chooses_cheapest_model_meeting_the_target() -> None:
    decision = decide(config=SelectionConfig(balanced_gap=0.05))
    # medium bucket: best huge 0.92, target 0.87 → big (0.88) is the cheapest that meets it
    assert decision.model == "big"
    assert decision.quality_target == pytest.approx(0.87)
    assert decision.estimated_cost_nanos == cost_of("big")
    for score in decision.scores:
        if score.eligible and score.expected_quality >= decision.quality_target - 1e-9:
            assert score.expected_cost_nanos >= decision.estimated_cost_nanos


def test_modes_order_cost() -> None:
    costs = [cost_of(run(c=Constraints(quality_mode=m))) for m in ("quality", "balanced", "economy")]
    assert costs == sorted(costs, reverse=True)
    assert run(c=Constraints(quality_mode="quality")) == "huge"


def test_difficulty_bucket_changes_choice() -> None:
    config = SelectionConfig(balanced_gap=0.08)
    easy = run(profile(difficulty=0.1), config=config)
    hard = run(profile(difficulty=0.9), config=config)
    assert cost_of(easy) < cost_of(hard)


def test_unknown_model_falls_back_to_tier_prior() -> None:
    extra = model("newcomer", "standard", "0.30", "1.00", provider="p4")
    decision = decide(candidates=[*models(), extra])
    score = decision.score("newcomer")
    assert score is not None and score.quality_source == "tier" and score.expected_quality == 0.75


# --- eligibility ----------------------------------------------------------------------------------


def test_capabilities_respected() -> None:
    p = profile(required_capabilities=frozenset({"vision"}))
    decision = decide(p, c=Constraints(quality_mode="quality"))
    assert decision.model == "big"  # huge lacks vision
    huge = decision.score("huge")
    assert huge is not None and not huge.eligible and "vision" in (huge.reason_excluded or "")
    for score in decision.scores:
        if score.eligible:
            spec = next(m for m in models() if m.id == score.model)
            assert "vision" in spec.capabilities
    assert run(c=Constraints(required_capabilities=frozenset({"tools"}), quality_mode="economy")) != "tiny"


def test_embedding_models_never_chosen() -> None:
    decision = decide(c=Constraints(quality_mode="economy"))
    embed = decision.score("embed")
    assert embed is not None and not embed.eligible and embed.reason_excluded == "embedding model"


def test_context_window_respected() -> None:
    p = profile(input_tokens=15_800, difficulty=0.1)
    decision = decide(p, c=Constraints(quality_mode="economy"))
    small = decision.score("small")
    assert small is not None and not small.eligible and "context window" in (small.reason_excluded or "")
    for score in decision.scores:
        if score.eligible:
            spec = next(m for m in models() if m.id == score.model)
            assert spec.context_window >= p.input_tokens + p.expected_output_tokens


def test_output_cap_bounded_by_request_and_context() -> None:
    decision = decide(profile(max_output_tokens=500))
    assert decision.output_cap == 500
    assert decision.worst_case_nanos == next(m for m in models() if m.id == decision.model).worst_case_cost(1_000, 500)


def test_no_eligible_model_raises_with_reasons() -> None:
    with pytest.raises(NoEligibleModel) as info:
        decide(profile(input_tokens=500_000))
    assert "context window" in info.value.message
    assert info.value.status == 422
    with pytest.raises(NoEligibleModel):
        decide(candidates=[])
    with pytest.raises(NoEligibleModel):
        decide(c=Constraints(pinned_model="tiny", required_capabilities=frozenset({"vision"})))


# --- constraints ----------------------------------------------------------------------------------


def test_constraints_respected() -> None:
    assert run(c=Constraints(pinned_model="mid")) == "mid"
    assert run(c=Constraints(pinned_tier="economy", quality_mode="quality")) == "small"
    assert run(c=Constraints(excluded_models=frozenset({"huge"}), quality_mode="quality")) == "big"
    assert run(c=Constraints(allowed_models=frozenset({"tiny", "mid"}), quality_mode="quality")) == "mid"
    assert run(c=Constraints(allowed_tiers=frozenset({"standard"}), quality_mode="quality")) == "mid2"
    assert run(c=Constraints(max_price_per_mtok_output="2.00", quality_mode="quality")) == "mid"
    with pytest.raises(NoEligibleModel):
        run(c=Constraints(min_quality=0.99))
    decision = decide(c=Constraints(min_quality=0.85, quality_mode="economy"))
    assert decision.model == "big" and decision.quality_target >= 0.85


def test_max_cost_excludes_models_whose_worst_case_does_not_fit() -> None:
    limit = 2_000_000  # $0.002: the premium models' input alone costs more
    decision = decide(c=Constraints(max_cost_nanos=limit, quality_mode="quality"))
    assert decision.worst_case_nanos <= limit
    for score in decision.scores:
        if score.eligible:
            assert score.worst_case_nanos <= limit
    huge = decision.score("huge")
    assert huge is not None and not huge.eligible and "exceeds" in (huge.reason_excluded or "")


def test_budget_fitting_output_cap_is_injected() -> None:
    spec = next(m for m in models() if m.id == "big")
    natural = spec.worst_case_cost(1_000, 8_192)
    limit = spec.worst_case_cost(1_000, 2_000)
    decision = decide(c=Constraints(pinned_model="big"), pressure=BudgetPressure(remaining_nanos=limit))
    assert natural > limit
    assert decision.output_cap == 2_000 and decision.worst_case_nanos <= limit


def test_downgrade_uses_the_floor() -> None:
    config = SelectionConfig(max_gap=0.15)
    decision = decide(c=Constraints(downgrade=True), config=config)
    assert decision.quality_target == pytest.approx(0.92 - 0.15)
    assert decision.model == "mid"


def test_quality_per_usd_prefers_value_among_sufficient_models() -> None:
    generous = SelectionConfig(balanced_gap=0.5, max_gap=1.0)
    assert run(config=generous) == "tiny"  # cheapest within the (wide) gap
    # 1 quality point is worth a lot of money: the best model wins
    assert run(config=replace(generous, quality_per_usd=0.001)) == "huge"
    # a moderate rate trades: more quality for a little more money
    chosen = run(config=replace(generous, quality_per_usd=50.0))
    assert chosen not in ("tiny", "huge")
    # the gap still bounds the choice from below
    decision = decide(config=replace(generous, balanced_gap=0.0, quality_per_usd=10**9))
    assert decision.model == "huge"


@pytest.mark.parametrize("rate", [None, 5.0, 50.0, 500.0])
def test_monotone_under_pressure_with_quality_per_usd(rate: float | None) -> None:
    config = SelectionConfig(quality_per_usd=rate, pressure_gap=0.3)
    ordered = sorted(PRESSURES, key=config.pressure)
    costs = [decide(profile(), Constraints(), pr, config).estimated_cost_nanos for pr in ordered]
    assert all(b <= a for a, b in pairwise(costs))


# --- budget pressure ------------------------------------------------------------------------------


PRESSURES = [
    BudgetPressure(used_fraction=u, burn_ratio=b) for u in (0.0, 0.4, 0.6, 0.8, 0.95, 1.0) for b in (0.0, 1.5, 3.0)
]


@pytest.mark.parametrize("difficulty", [0.1, 0.45, 0.9])
@pytest.mark.parametrize("mode", ["economy", "balanced", "quality"])
def test_monotone_under_budget_pressure(difficulty: float, mode: str) -> None:
    config = SelectionConfig()
    p = profile(difficulty=difficulty)
    ordered = sorted(PRESSURES, key=config.pressure)
    costs = [decide(p, Constraints(quality_mode=mode), pr, config).estimated_cost_nanos for pr in ordered]
    assert all(b <= a for a, b in pairwise(costs))


def test_monotone_as_remaining_budget_shrinks() -> None:
    costs = []
    for remaining in (None, 10**9, 10**7, 3 * 10**6, 10**6, 2 * 10**5):
        pressure = BudgetPressure(used_fraction=0.9, remaining_nanos=remaining)
        costs.append(decide(profile(), Constraints(quality_mode="quality"), pressure).estimated_cost_nanos)
    assert all(b <= a for a, b in pairwise(costs))


def test_pressure_lowers_target_but_never_below_floor() -> None:
    config = SelectionConfig(balanced_gap=0.03, pressure_gap=0.5, max_gap=0.12, quality_floor=0.82)
    calm = decide(pressure=BudgetPressure(), config=config)
    stressed = decide(pressure=BudgetPressure(used_fraction=1.0, burn_ratio=5.0), config=config)
    assert stressed.pressure == 1.0 and calm.pressure == 0.0
    assert stressed.quality_target < calm.quality_target
    assert stressed.quality_target >= 0.92 - 0.12 - 1e-9
    assert stressed.quality_target >= 0.82
    assert stressed.expected_quality >= 0.82


def test_pressure_ramp() -> None:
    config = SelectionConfig(pressure_start=0.5, burn_start=1.0, burn_full=2.0)
    assert config.pressure(BudgetPressure(used_fraction=0.5)) == 0.0
    assert config.pressure(BudgetPressure(used_fraction=0.75)) == pytest.approx(0.5)
    assert config.pressure(BudgetPressure(burn_ratio=1.5)) == pytest.approx(0.5)
    assert config.pressure(BudgetPressure(used_fraction=2.0)) == 1.0


# --- decision contents ------------------------------------------------------------------------------


def test_decision_has_id_scores_reasons_and_fallbacks() -> None:
    decision = select(profile(), models(), quality(), Constraints(), BudgetPressure(), SelectionConfig(),
                      decision_id="abc")
    assert decision.id == "abc"
    assert len(decision.scores) == len(models())
    assert decision.reasons and decision.model in decision.reasons[3]
    auto_id = decide().id
    assert len(auto_id) == 32 and int(auto_id, 16) >= 0
    assert decision.model not in decision.fallback_chain
    assert len(decision.fallback_chain) <= SelectionConfig().max_fallbacks
    eligible = {s.model for s in decision.scores if s.eligible}
    assert set(decision.fallback_chain) <= eligible


def test_fallbacks_prefer_other_providers() -> None:
    decision = decide(c=Constraints(quality_mode="economy"), config=SelectionConfig(economy_gap=0.3))
    chosen = decision.score(decision.model)
    first = decision.score(decision.fallback_chain[0])
    assert chosen is not None and first is not None
    assert first.provider != chosen.provider


def test_thirty_candidates_choose_as_their_six_originals_do() -> None:
    """Copies of a model score as the model does, so five copies of six models change no choice
    (bench/core_bench.py reports what selection over thirty candidates costs)."""
    candidates = [replace(m, id=f"{m.id}-{i}") for i in range(5) for m in models()[:6]]
    pressure = BudgetPressure(remaining_nanos=10**9)
    many = select(profile(), candidates, quality(), Constraints(), pressure, SelectionConfig())
    few = select(profile(), candidates[:6], quality(), Constraints(), pressure, SelectionConfig())
    assert sorted(s.model for s in many.scores) == sorted(m.id for m in candidates)
    assert many.model == few.model
    assert many.model not in many.fallback_chain
    assert set(many.fallback_chain) <= {s.model for s in many.scores if s.eligible}


def test_expected_and_worst_case_costs_equal_model_spec() -> None:
    from costproxy.routing.selection import _Tariff

    registry = parse_registry(yaml.safe_load((ROOT / "config/models.yaml").read_text()), "models.yaml")
    odd = model("odd", "economy", "0.0000005", "1.2345678")  # sub-nano per-token prices: Decimal path
    for spec in [*registry.models.values(), odd]:
        tariff = _Tariff(spec)
        for prompt, completion in ((0, 0), (1, 1), (1_234, 567), (99_999, 16_384)):
            assert tariff.cost(prompt, completion) == spec.cost(Usage(prompt, completion)), spec.id
            assert tariff.worst_case(prompt, completion) == spec.worst_case_cost(prompt, completion), spec.id
        limit = spec.worst_case_cost(1_000, 700)
        cap = tariff.cap_that_fits(1_000, limit)
        if spec.price.output > 0:
            assert spec.worst_case_cost(1_000, cap) <= limit < spec.worst_case_cost(1_000, cap + 1)
    decision = select(profile(), [odd], quality(), Constraints(), BudgetPressure(), SelectionConfig())
    assert decision.estimated_cost_nanos == odd.cost(Usage(1_000, 400))
    # the candidate loop inlines the natural cap and the worst case: every model agrees with ModelSpec
    for spec in [m for m in registry.models.values() if m.kind == "chat"]:
        score = select(profile(max_output_tokens=900), [spec], quality(), Constraints(), BudgetPressure(),
                       SelectionConfig()).scores[0]
        natural = min(900, spec.context_window - 1_000, spec.max_output_tokens or 900)
        assert score.output_cap == natural, spec.id
        assert score.worst_case_nanos == spec.worst_case_cost(1_000, natural), spec.id
        assert score.expected_cost_nanos == spec.cost(Usage(1_000, 400)), spec.id


# --- configuration files ---------------------------------------------------------------------------


def test_parse_selection_config() -> None:
    config = parse_selection_config({"balanced_gap": 0.05, "max_fallbacks": 2, "quality_per_usd": 8.9},
                                    "costproxy.yaml")
    assert config.balanced_gap == 0.05 and config.max_fallbacks == 2 and config.quality_per_usd == 8.9
    assert parse_selection_config(None, "x.yaml") == SelectionConfig()
    with pytest.raises(ConfigError, match=r"selection\.balanced_gapp: unknown key"):
        parse_selection_config({"balanced_gapp": 0.05}, "costproxy.yaml")
    with pytest.raises(ConfigError, match=r"selection\.max_gap"):
        parse_selection_config({"max_gap": 2}, "costproxy.yaml")


def test_repository_quality_priors_cover_every_chat_model() -> None:
    registry = parse_registry(yaml.safe_load((ROOT / "config/models.yaml").read_text()), "models.yaml")
    profiles = parse_quality(yaml.safe_load((ROOT / "config/quality.yaml").read_text()), "quality.yaml")
    for spec in registry.models.values():
        if spec.kind != "embedding":
            assert spec.id in profiles.models, spec.id
    assert "calibrate" in profiles.source


def test_quality_document_round_trips() -> None:
    original = quality()
    again = parse_quality(yaml.safe_load(yaml.safe_dump(quality_document(original))), "q.yaml")
    for model_id in original.models:
        for bucket in range(3):
            assert again.lookup(model_id, "economy", "code_generation", bucket) == original.lookup(
                model_id, "economy", "code_generation", bucket)


def test_quality_file_errors_name_the_path() -> None:
    with pytest.raises(ConfigError, match=r"models\.m\.tasks\.coding"):
        parse_quality({"models": {"m": {"tasks": {"coding": 0.5}}}}, "q.yaml")
    with pytest.raises(ConfigError, match=r"models\.m\.tasks\.math\.buckets"):
        parse_quality({"models": {"m": {"tasks": {"math": {"buckets": [0.5]}}}}}, "q.yaml")
    with pytest.raises(ConfigError, match=r"models\.m\.overall"):
        parse_quality({"models": {"m": {"overall": 1.5}}}, "q.yaml")
    with pytest.raises(ConfigError, match="strictly increasing"):
        parse_quality({"difficulty_buckets": {"default": [0.5, 0.2]}}, "q.yaml")


# --- quality target relative to the baseline model -----------------------------------------------


def _with_baseline(baseline: str | None, **config: object) -> Decision:
    return select(profile(), models(), quality(), Constraints(quality_mode="balanced"), BudgetPressure(),
                  SelectionConfig(**config), baseline=baseline)  # type: ignore[arg-type]


def test_target_is_relative_to_the_baseline_by_default() -> None:
    # medium code: big 0.88, huge 0.92; balanced gap 0.03
    assert _with_baseline(None).model == "huge"  # no baseline: best eligible (0.92) - 0.03
    assert _with_baseline("big").model == "big"  # target 0.85: nothing cheaper reaches it
    decision = _with_baseline("mid")  # target 0.77: mid itself (0.80) is the cheapest reaching it
    assert decision.model == "mid"
    assert abs(decision.quality_target - 0.77) < 1e-9
    assert any("baseline mid" in r for r in decision.reasons)


def test_best_reference_ignores_the_baseline() -> None:
    assert _with_baseline("big", target_reference="best").model == "huge"


def test_quality_mode_always_aims_at_the_best() -> None:
    decision = select(profile(), models(), quality(), Constraints(quality_mode="quality"), BudgetPressure(),
                      SelectionConfig(), baseline="mid")
    assert decision.model == "huge"


def test_unknown_baseline_falls_back_to_best() -> None:
    assert _with_baseline("not-a-candidate").model == "huge"


def test_baseline_reference_is_monotone_under_pressure() -> None:
    costs = []
    for used in (0.0, 0.6, 0.8, 0.95, 1.0):
        decision = select(profile(), models(), quality(), Constraints(), BudgetPressure(used_fraction=used),
                          SelectionConfig(), baseline="big")
        costs.append(decision.estimated_cost_nanos)
    assert all(b <= a for a, b in pairwise(costs))


def test_target_reference_is_parsed_and_validated() -> None:
    assert parse_selection_config({"target_reference": "best"}, "c.yaml").target_reference == "best"
    assert parse_selection_config({}, "c.yaml").target_reference == "baseline"
    with pytest.raises(ConfigError, match="target_reference"):
        parse_selection_config({"target_reference": "strongest"}, "c.yaml")


# --- per-request predictors ------------------------------------------------------------------------


def _predicting(weights_by_model: dict[str, list[float]]) -> QualityProfiles:
    document = quality_document(quality())
    document["predictors"] = {"features": list(FEATURE_NAMES),
                              "models": {m: {"code_generation": w} for m, w in weights_by_model.items()}}
    return parse_quality(document, "q.yaml")


def test_predictors_give_each_request_its_own_estimate() -> None:
    n = len(FEATURE_NAMES)
    code = FEATURE_NAMES.index("code")
    tiny = [0.0] * (n + 1)
    tiny[0], tiny[1 + code] = -3.0, 6.0  # tiny is good exactly when the query shows code
    profiles = _predicting({"tiny": tiny, "huge": [2.0] + [0.0] * n})
    with_code = [0.0] * n
    with_code[code] = 1.0
    cfg = SelectionConfig(target_reference="best")
    chosen = select(profile(features=tuple(with_code)), models(), profiles, Constraints(), BudgetPressure(), cfg)
    assert chosen.model == "tiny" and chosen.score("tiny").quality_source == "predictor"  # type: ignore[union-attr]
    plain = select(profile(features=(0.0,) * n), models(), profiles, Constraints(), BudgetPressure(), cfg)
    assert plain.model != "tiny"
    assert plain.score("mid").quality_source == "bucket"  # type: ignore[union-attr]  # no predictor: lookup
    no_features = select(profile(), models(), profiles, Constraints(), BudgetPressure(), cfg)
    assert no_features.score("tiny").quality_source == "bucket"  # type: ignore[union-attr]


def test_predictors_round_trip_and_reject_stale_feature_lists() -> None:
    n = len(FEATURE_NAMES)
    profiles = _predicting({"tiny": [0.5] * (n + 1)})
    again = parse_quality(quality_document(profiles), "q.yaml")
    assert again.predictors == profiles.predictors
    document = quality_document(profiles)
    document["predictors"]["features"] = ["words", "length"]
    with pytest.raises(ConfigError, match=r"predictors\.features"):
        parse_quality(document, "q.yaml")
    document = quality_document(profiles)
    document["predictors"]["models"]["tiny"]["code_generation"] = [1.0, 2.0]
    with pytest.raises(ConfigError, match="needs"):
        parse_quality(document, "q.yaml")
