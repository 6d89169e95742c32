"""The router (``routing/router.py``) as the pipeline calls it: ``route(RouteInput) -> Route``.
Built by ``build_router`` from the test registry of ``tests/conftest.py``; pure, no I/O past the
config and rules files."""

from __future__ import annotations

from typing import Any

import pytest

from costproxy.budgets.accounts import BudgetView
from costproxy.errors import BudgetExceeded, InvalidRequest, ModelNotAllowed, ProviderNotConfigured, RuleRejected
from costproxy.learning.estimates import Evidence, OnlineEstimates, posterior, z_score
from costproxy.request import RequestContext
from costproxy.routing.policy import Constraints
from costproxy.routing.route import RouteInput
from costproxy.routing.router import SelectionRouter, build_router
from tests.conftest import ConfigFactory, load_test_settings
from tests.unit.fakes import ALICE

CHAT = [{"role": "user", "content": "Classify this review as positive or negative: great phone."}]
CHAT_MODELS = {"big", "small", "backup"}


def router(write_config: ConfigFactory, **config: Any) -> SelectionRouter:
    env = config.pop("env", {})
    return build_router(load_test_settings(write_config("http://upstream.invalid/v1", **config), **env))


def ask(model: str, *, endpoint: str = "chat/completions", budget: BudgetView | None = None,
        headers: dict[str, str] | None = None, **body: Any) -> RouteInput:
    ctx = RequestContext("req-1", ALICE, endpoint, headers=headers or {})
    return RouteInput(ctx, {"model": model, "messages": CHAT, **body}, model, 20, budget or BudgetView())


def rule(rule_id: str, action: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"rules.yaml": {"rules": [{"id": rule_id, "name": rule_id, "priority": 1, "conditions": [],
                                      "actions": [action], **extra}]}}


def ids(route: Any) -> list[str]:
    return [m.id for m in route.chain]


# --- named and virtual models --------------------------------------------------------------------


def test_a_named_model_serves_itself(write_config: ConfigFactory) -> None:
    route = router(write_config).route(ask("big"))
    assert ids(route) == ["big"] and route.decision_id is None and route.baseline is not None
    assert route.baseline.id == "big" and route.max_output_tokens is None


def test_auto_selects_with_a_decision_and_a_fallback_chain(write_config: ConfigFactory) -> None:
    r = router(write_config)
    route = r.route(ask("auto"))
    chain = ids(route)
    assert route.decision_id is not None and route.decision_id in r.decisions
    assert len(chain) == len(set(chain)) >= 2 and set(chain) <= CHAT_MODELS
    assert route.task_type == "classification" and route.reasons


def test_every_score_is_kept_for_the_newest_decisions_and_the_chosen_one_before(
        write_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("costproxy.routing.router.SCORES_KEPT", 3)
    r = router(write_config)
    ids_ = [r.route(ask("auto")).decision_id for _ in range(5)]
    records = [r.decisions[i] for i in ids_ if i is not None]
    assert [x.scores_kept for x in records] == [False, False, True, True, True]
    assert list(r.decisions) == ids_  # stripping keeps each decision in its place
    for record in records:
        d = record.decision
        assert record.candidates == len(CHAT_MODELS) and 1 <= record.eligible <= record.candidates
        if record.scores_kept:
            assert {s.model for s in d.scores} == CHAT_MODELS
        else:
            assert [s.model for s in d.scores] == [d.model] and d.score(d.model) is not None


@pytest.mark.parametrize(("model", "tiers"), [("auto:economy", {"economy"}), ("premium", {"premium"}),
                                              ("economy", {"economy"})])
def test_quality_modes_and_tier_names_steer_the_choice(write_config: ConfigFactory, model: str,
                                                       tiers: set[str]) -> None:
    route = router(write_config).route(ask(model))
    assert route.chain[0].tier in tiers


@pytest.mark.parametrize(("model", "endpoint", "says"), [
    ("auto:cheapest", "chat/completions", "unknown routing mode"),
    ("auto", "embeddings", "automatic model selection is available for chat completions"),
])
def test_virtual_names_that_cannot_be_served_are_invalid(write_config: ConfigFactory, model: str, endpoint: str,
                                                         says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as info:
        router(write_config).route(ask(model, endpoint=endpoint))
    assert info.value.param == "model"


def test_configured_fallbacks_follow_a_named_model(write_config: ConfigFactory) -> None:
    r = router(write_config, extra={"fallback": {"chains": {"small": ["backup"]}}})
    assert ids(r.route(ask("small"))) == ["small", "backup"]


# --- rules ---------------------------------------------------------------------------------------


def test_a_rejecting_rule_refuses_the_request(write_config: ConfigFactory) -> None:
    r = router(write_config, rules=rule("closed", {"type": "reject", "params": {"message": "closed"}}))
    with pytest.raises(RuleRejected, match="closed"):
        r.route(ask("small"))


def test_a_routing_rule_switches_a_named_model_and_says_why(write_config: ConfigFactory) -> None:
    r = router(write_config, rules=rule("to-small", {"type": "route", "params": {"model": "small"}}))
    route = r.route(ask("big"))
    assert ids(route)[0] == "small" and route.rules == ("to-small",)
    assert route.reasons[0] == "switched from big: routed to small" and route.baseline is not None
    assert route.baseline.id == "big"  # savings are counted against what was asked for


def test_a_named_model_excluded_without_leave_to_switch_is_refused(write_config: ConfigFactory) -> None:
    excluded = Constraints(excluded_models=frozenset({"big"}), reasons=("budget: no premium",))
    with pytest.raises(ModelNotAllowed, match="'big' cannot serve this request: excluded"):
        router(write_config).route(ask("big", budget=BudgetView(restrictions=excluded)))


# --- budgets -------------------------------------------------------------------------------------


def test_a_named_model_is_capped_to_fit_what_the_budget_has_left(write_config: ConfigFactory) -> None:
    # big: $2.50 / $10 per 1M; 20 input tokens cost 50,000 nanos, each output token 10,000
    route = router(write_config).route(ask("big", budget=BudgetView(remaining_nanos=50_000 + 100 * 10_000)))
    assert route.max_output_tokens == 100 and ids(route) == ["big"]


def test_a_named_model_that_cannot_say_anything_useful_is_a_budget_refusal(write_config: ConfigFactory) -> None:
    tight = BudgetView(remaining_nanos=50_000 + 15 * 10_000, tightest_budget="team (team-core)")
    with pytest.raises(BudgetExceeded, match="team-core"):
        router(write_config).route(ask("big", budget=tight))


def test_auto_under_a_tight_budget_picks_a_model_that_fits(write_config: ConfigFactory) -> None:
    route = router(write_config).route(ask("auto", budget=BudgetView(remaining_nanos=200_000)))
    worst = route.chain[0].worst_case_cost(20, route.max_output_tokens or 0)
    assert route.max_output_tokens is not None and worst <= 200_000


# --- breakers and credentials --------------------------------------------------------------------


def test_a_model_whose_breaker_opened_moves_to_the_back_of_the_chain(write_config: ConfigFactory) -> None:
    r = router(write_config, extra={"fallback": {"chains": {"small": ["backup"]}}})
    small = r.registry.models["small"]
    for _ in range(3):  # the default failure threshold
        r.record_result(small, ok=False)
    assert ids(r.route(ask("small"))) == ["backup", "small"]
    assert "small" not in ids(r.route(ask("auto")))[:1]


def test_a_model_without_provider_credentials_is_not_served(write_config: ConfigFactory) -> None:
    r = router(write_config, provider_overrides={"api_key_env": "NOT_SET_ANYWHERE"})
    with pytest.raises(ProviderNotConfigured, match="has no API key"):
        r.route(ask("big"))


def test_trusted_headers_set_the_quality_mode_and_are_checked(write_config: ConfigFactory) -> None:
    r = router(write_config)
    assert r.route(ask("auto", headers={"x-costproxy-quality": "economy"})).chain[0].tier == "economy"
    with pytest.raises(InvalidRequest, match="X-Costproxy-Quality"):
        r.route(ask("auto", headers={"x-costproxy-quality": "best"}))


# --- mixing (learning.mixing) ----------------------------------------------------------------------


def test_a_measured_cheaper_model_takes_its_share_of_auto_traffic(write_config: ConfigFactory,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """backup, cheapest, is measured at 0.81 by feedback: below the target 0.92 on its own, so small
    (0.94) is chosen — but a share (0.94 − 0.92) / (0.94 − its lower bound) of the traffic may still go to it."""
    r = router(write_config)
    r.estimates = OnlineEstimates().with_observation(("classification", 0, "backup"), 40, 30)
    draws: list[float] = []
    monkeypatch.setattr("costproxy.routing.router.random.random", lambda: draws.pop(0))

    def served(draw: float) -> tuple[str, float | None, tuple[str, ...]]:
        draws.append(draw)
        route = r.route(ask("auto"))
        decision = r.decisions[str(route.decision_id)].decision
        assert not draws  # one draw per auto request
        return ids(route)[0], decision.mix_share, ids(route)

    model, share, chain = served(0.0)
    backup = r.decisions[next(reversed(r.decisions))].decision.score("backup")
    assert backup is not None and backup.expected_quality == pytest.approx((0.93 * 20 + 30) / 60)
    assert model == "backup" and chain[1] == "small"  # the mix's other model is the first fallback
    # backup counts with the lower bound of its posterior (its prior worth 20 observations, 40 made)
    lower = posterior(0.93, Evidence(40, 30), 20, z_score(0.95)).lower
    assert share == pytest.approx((0.94 - 0.92) / (0.94 - lower))
    assert served(share - 1e-6)[0] == "backup" and served(share)[0] == "small"
    assert served(0.99)[:2] == ("small", share)
    # a named model is never mixed away, and no draw is taken for it
    assert ids(r.route(ask("big")))[0] == "big" and not draws
    r.mixing = False
    route = r.route(ask("auto"))
    assert ids(route)[0] == "small" and r.decisions[str(route.decision_id)].decision.mix_share is None
    # switched off in the settings
    assert not router(write_config, extra={"learning": {"mixing": False}}).mixing
