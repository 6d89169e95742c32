"""Learning from feedback, the pure parts: posterior math, the config section, feedback bodies,
selection with and without evidence, and the online replay on a synthetic data set."""

from __future__ import annotations

import csv
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest

from costproxy.errors import ConfigError, InvalidRequest
from costproxy.learning.config import LearningSettings, parse_learning_settings
from costproxy.learning.estimates import Evidence, OnlineEstimates, cell_field, parse_cell_field, posterior, z_score
from costproxy.learning.feedback import parse_feedback
from costproxy.routing.policy import Constraints
from costproxy.routing.quality import ModelQuality, QualityProfiles, TaskQuality
from costproxy.routing.selection import BudgetPressure, Decision, SelectionConfig, select
from costproxy.tools.calibrate import approx_tokens
from costproxy.tools.dataset import EvalSet, load_dataset
from costproxy.tools.eval_cli import calibrate_main, eval_main
from costproxy.tools.online_eval import OnlineOptions, certifiable_ceiling, run_online, schedule
from tests.unit.test_evaluation import synthetic_rows, write_csv
from tests.unit.test_selection import models, profile, quality

Z95 = z_score(0.95)


# --- the posterior --------------------------------------------------------------------------------


def test_without_evidence_the_posterior_is_the_prior() -> None:
    p = posterior(0.8, Evidence(), 20.0, Z95)
    assert p.mean == p.conservative == p.optimistic == 0.8
    assert p.evidence == 0


def test_evidence_shrinks_toward_the_prior_by_its_strength() -> None:
    p = posterior(0.5, Evidence(n=20, successes=20), 20.0, Z95)
    assert p.mean == pytest.approx(0.75)  # (0.5·20 + 20) / 40: halfway, the prior is worth 20 observations
    weak = posterior(0.5, Evidence(n=20, successes=20), 5.0, Z95)
    assert weak.mean == pytest.approx((2.5 + 20) / 25)  # a weaker prior moves further
    assert posterior(0.5, Evidence(n=20, successes=20), 0.0, Z95).mean == pytest.approx(1.0)


def test_the_lower_bound_tightens_with_evidence() -> None:
    widths = [(p.mean - p.lower) for n in (5, 50, 500)
              for p in [posterior(0.7, Evidence(n=n, successes=0.9 * n), 20.0, Z95)]]
    assert widths[0] > widths[1] > widths[2] > 0
    p = posterior(0.7, Evidence(n=50, successes=45), 20.0, Z95)
    m, t, z2 = p.mean, 70.0, Z95 * Z95  # Wilson's interval of the posterior mean over 70 observations
    center, half = (m + z2 / (2 * t)) / (1 + z2 / t), Z95 * ((m * (1 - m) + z2 / (4 * t)) / t) ** 0.5 / (1 + z2 / t)
    assert p.lower == pytest.approx(center - half) and p.upper == pytest.approx(center + half)
    assert abs(p.lower - (m - Z95 * (m * (1 - m) / t) ** 0.5)) < 0.02  # near mean − z·sd away from the edges


def test_the_bounds_stay_honest_at_the_edges() -> None:
    # three successes out of three with no prior: the normal approximation would say "certainly 1.0"
    p = posterior(0.9, Evidence(n=3, successes=3), 0.0, Z95)
    assert p.mean == 1.0 and 0.4 < p.lower < 0.6 and p.upper == 1.0
    none = posterior(0.9, Evidence(n=3, successes=0), 0.0, Z95)
    assert none.lower == 0.0 and 0.4 < none.upper < 0.6


def test_good_news_counts_only_past_the_lower_bound_and_bad_news_at_once() -> None:
    little = posterior(0.8, Evidence(n=3, successes=3), 20.0, Z95)
    assert little.mean > 0.8 and little.lower < 0.8
    assert little.conservative == 0.8  # not enough to trust: the prior stands
    much = posterior(0.8, Evidence(n=400, successes=392), 20.0, Z95)
    assert much.conservative == pytest.approx(much.lower) and much.lower > 0.8
    bad = posterior(0.8, Evidence(n=10, successes=4), 20.0, Z95)
    assert bad.conservative == pytest.approx(bad.mean) and bad.mean < 0.8
    assert bad.optimistic == pytest.approx(min(0.8, bad.upper))  # the reference side errs the other way


def test_cells_round_trip_and_snapshots_are_not_mutated() -> None:
    cell = ("code_generation", 2, "meta/llama-2-70b-chat")
    assert parse_cell_field(cell_field(cell)) == cell
    assert parse_cell_field("garbage") is None
    empty = OnlineEstimates()
    one = empty.with_observation(cell, 1.0, 1.0).with_observation(cell, 1.0, 0.0)
    assert empty.cells == {} and one.evidence(*cell) == Evidence(2.0, 1.0)
    assert empty.lookup(*cell, prior=0.5) is None
    found = one.lookup(*cell, prior=0.5)
    assert found is not None and found.evidence == 2.0


# --- the config section ------------------------------------------------------------------------


def test_learning_settings_defaults_and_errors() -> None:
    assert parse_learning_settings(None, "c.yaml") == LearningSettings()
    settings = parse_learning_settings({"prior_strength": 5, "source_weights": {"judge": 0.5},
                                        "judge": {"enabled": True, "daily_budget_usd": "0.25"}}, "c.yaml")
    assert settings.prior_strength == 5 and settings.source_weights["judge"] == 0.5
    assert settings.source_weights["user"] == 1.0 and settings.judge.daily_budget_nanos == 250_000_000
    assert settings.mixing and not parse_learning_settings({"mixing": False}, "c.yaml").mixing
    for bad, where in (({"prior_strenght": 5}, "prior_strenght"), ({"confidence": 1.5}, "confidence"),
                       ({"source_weights": {"robot": 1}}, "robot"), ({"judge": {"sample_rate": 2}}, "sample_rate"),
                       ({"judge": {"daily_budget_usd": "-1"}}, "daily_budget_usd"), ({"mixing": "yes"}, "mixing")):
        with pytest.raises(ConfigError) as caught:
            parse_learning_settings(bad, "c.yaml")
        assert where in str(caught.value)
    with pytest.raises(ConfigError, match="names no model"):
        parse_learning_settings({"judge": {"reference_model": "nope"}}, "c.yaml",
                                check_model=lambda m: None if m == "big" else "names no model in the registry")


# --- feedback bodies -------------------------------------------------------------------------------


def test_feedback_bodies() -> None:
    given = parse_feedback({"request_id": "req_1", "thumbs": "down", "source": "agent"})
    assert (given.request_id, given.score, given.source, given.comment) == ("req_1", 0.0, "agent", None)
    assert parse_feedback({"requestId": "r", "score": 1, "source": "eval", "comment": "ok"}).score == 1.0


@pytest.mark.parametrize(("body", "param"), [
    ({"score": 1, "source": "user"}, "requestId"),
    ({"requestId": "", "score": 1, "source": "user"}, "requestId"),
    ({"requestId": 7, "score": 1, "source": "user"}, "requestId"),
    ({"requestId": "r", "score": 1.5, "source": "user"}, "score"),
    ({"requestId": "r", "score": "1", "source": "user"}, "score"),
    ({"requestId": "r", "score": True, "source": "user"}, "score"),
    ({"requestId": "r", "source": "user"}, "score"),
    ({"requestId": "r", "score": 1, "thumbs": "up", "source": "user"}, "score"),
    ({"requestId": "r", "thumbs": "sideways", "source": "user"}, "thumbs"),
    ({"requestId": "r", "score": 1, "source": "robot"}, "source"),
    ({"requestId": "r", "score": 1, "source": "user", "comment": 3}, "comment"),
    ({"requestId": "r", "score": 1, "source": "user", "rating": 3}, "rating"),
])
def test_feedback_bodies_refused_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_feedback(body)
    assert caught.value.param == param


# --- selection -------------------------------------------------------------------------------------


def _choose(estimates: OnlineEstimates | None) -> str:
    return select(profile(), models(), quality(), Constraints(), BudgetPressure(), SelectionConfig(),
                  estimates=estimates).model


def test_selection_without_evidence_is_unchanged() -> None:
    assert _choose(None) == _choose(OnlineEstimates()) == "huge"  # big's 0.88 misses the target 0.89
    unrelated = OnlineEstimates().with_observation(("classification", 0, "big"), 50, 50)
    assert _choose(unrelated) == "huge"


def test_selection_moves_to_a_cheaper_model_only_once_its_lower_bound_clears_the_target() -> None:
    cell = ("code_generation", 1, "big")  # difficulty 0.45: bucket 1
    assert _choose(OnlineEstimates().with_observation(cell, 5, 5)) == "huge"  # five successes: too few
    assert _choose(OnlineEstimates().with_observation(cell, 200, 196)) == "big"
    decision = select(profile(), models(), quality(), Constraints(), BudgetPressure(), SelectionConfig(),
                      estimates=OnlineEstimates().with_observation(cell, 200, 196))
    score = decision.score("big")
    assert score is not None and score.quality_source == "online" and score.learned is not None
    assert score.learned.prior == 0.88 and score.learned.evidence == 200
    assert score.expected_quality == pytest.approx(score.learned.lower)


def test_bad_news_moves_traffic_away_at_once() -> None:
    cell = ("code_generation", 1, "huge")
    estimates = OnlineEstimates().with_observation(cell, 30, 12)
    decision = select(profile(), models(), quality(), Constraints(), BudgetPressure(), SelectionConfig(),
                      estimates=estimates)
    huge = decision.score("huge")
    assert huge is not None and huge.expected_quality < 0.88 and decision.model == "big"


# --- mixing: a measured cheaper model takes a share of the traffic -------------------------------


def _mixed(estimates: OnlineEstimates, draw: float | None, q: QualityProfiles | None = None) -> Decision:
    return select(profile(), models(), q or quality(), Constraints(), BudgetPressure(), SelectionConfig(),
                  baseline="huge", estimates=estimates, draw=draw)


def _rated(n: float, successes: float, prior: float) -> float:
    """What a partner is credited with: the lower bound, its prior weighing at most n observations."""
    return posterior(prior, Evidence(n, successes), min(20.0, n), z_score(0.95)).lower


def _cost(decision: Decision, name: str) -> int:
    score = decision.score(name)
    assert score is not None
    return score.expected_cost_nanos


def _expected_cost(estimates: OnlineEstimates, **kw: object) -> float:
    """Expected cost per request over the draw: share × partner + (1 − share) × the other model."""
    low, high = (select(profile(), models(), quality(), Constraints(), kw.get("pressure", BudgetPressure()),  # type: ignore[arg-type]
                        kw.get("config", SelectionConfig()), baseline="huge", estimates=estimates,  # type: ignore[arg-type]
                        draw=d) for d in (0.0, 1.0 - 1e-12))
    share = low.mix_share or 0.0
    return share * _cost(low, low.model) + (1 - share) * _cost(high, high.model)


def test_the_gap_is_spent_on_a_share_of_the_traffic_when_no_cheaper_model_meets_the_target() -> None:
    # bucket 1: target huge 0.92 − 0.03 = 0.89; big's prior 0.88 misses it, and so does what feedback measured
    big, mid = ("code_generation", 1, "big"), ("code_generation", 1, "mid")
    estimates = OnlineEstimates().with_observation(big, 40, 34).with_observation(mid, 40, 30)
    assert _mixed(estimates, None).model == "huge" and _mixed(estimates, None).mix_share is None
    stays, goes = _mixed(estimates, 0.999), _mixed(estimates, 0.0)
    assert stays.model == "huge" and goes.model != "huge" and stays.mix_share == goes.mix_share
    assert goes.fallback_chain[0] == "huge" and any(f"chose {goes.model}: drawn for its share" in r
                                                     for r in goes.reasons)
    assert len(set(goes.fallback_chain)) == len(goes.fallback_chain) == SelectionConfig().max_fallbacks
    no_fallbacks = select(profile(), models(), quality(), Constraints(), BudgetPressure(),
                          SelectionConfig(max_fallbacks=0), baseline="huge", estimates=estimates, draw=0.0)
    assert no_fallbacks.model == goes.model and no_fallbacks.fallback_chain == ()
    assert any("chose huge: drawn for the mix's other share" in r for r in stays.reasons)
    share = goes.mix_share
    assert share is not None and 0 < share < 1
    # the partner counts with its lower bound, and the mix's expected quality is the target
    rated = {"big": _rated(40, 34, 0.88), "mid": _rated(40, 30, 0.80)}
    assert share * rated[goes.model] + (1 - share) * 0.92 == pytest.approx(0.89)
    # the partner is the one with the lowest expected cost; unmeasured models never take part
    huge_cost = _cost(stays, "huge")

    def expected(name: str) -> float:
        p = 0.03 / (0.92 - rated[name])
        return huge_cost - p * (huge_cost - _cost(stays, name))

    assert goes.model in {"big", "mid"} and expected(goes.model) == min(expected("big"), expected("mid"))
    assert _expected_cost(estimates) == pytest.approx(expected(goes.model))
    # nor does a model the evidence puts below the reference less max_gap (0.92 − 0.2): its mean is 0.46
    hopeless = _mixed(OnlineEstimates().with_observation(big, 40, 10), 0.0)
    assert hopeless.model == "huge" and hopeless.mix_share is None
    unproven = _counted({"huge": 500})
    only_mid = _mixed(OnlineEstimates().with_observation(mid, 40, 30), 0.0, unproven)
    assert only_mid.model == "mid" and only_mid.mix_share is not None
    assert _mixed(OnlineEstimates().with_observation(("code_generation", 1, "huge"), 40, 40), 0.0,
                  unproven).model == "huge"  # evidence on the reference only: nobody to mix with


def test_one_answer_proves_little_and_a_failure_never_raises_a_share() -> None:
    big = ("code_generation", 1, "big")

    def share(n: int, successes: int) -> float:
        """big's share of the traffic (1: it meets the target on its own)."""
        decision = _mixed(OnlineEstimates().with_observation(big, n, successes), 0.0)
        if decision.mix_share is None:
            return 1.0 if decision.model == "big" else 0.0
        return decision.mix_share if decision.model == "big" else 0.0

    assert share(1, 0) == 0.0  # one thumbs down: its mean (0.44) is far below the floor
    assert 0 < share(1, 1) < 0.1  # one thumbs up: the prior counts as one observation, not twenty
    for n in (5, 20, 40, 200):
        for k in range(n // 2, n):
            assert share(n + 1, k) <= share(n, k) + 1e-12  # one more failure
            assert share(n + 1, k + 1) >= share(n, k) - 1e-12  # one more success
    assert share(200, 180) > share(20, 18)  # the same rate, more evidence: a tighter bound, a larger share


def test_mixing_keeps_the_value_choice_the_floor_and_the_pressure_order() -> None:
    big, mid = ("code_generation", 1, "big"), ("code_generation", 1, "mid")
    estimates = OnlineEstimates().with_observation(big, 40, 36).with_observation(mid, 200, 170)
    # quality_per_usd chooses by value: no mix
    value = SelectionConfig(balanced_gap=0.10, quality_per_usd=1.0)
    assert all(select(profile(), models(), quality(), Constraints(), BudgetPressure(), value, baseline="huge",
                      estimates=estimates, draw=d).mix_share is None for d in (0.0, 0.5))
    # a partner's mean must reach quality_floor too
    floored = select(profile(), models(), quality(), Constraints(), BudgetPressure(),
                     SelectionConfig(quality_floor=0.86), baseline="huge", estimates=estimates, draw=0.0)
    assert floored.model != "mid" and (floored.mix_share is None or floored.model in {"big", "huge"})
    # more pressure never raises the expected cost, mixes included
    levels = [BudgetPressure(used_fraction=u) for u in (0.0, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)]
    for evidence in (estimates, OnlineEstimates().with_observation(big, 400, 350),
                     OnlineEstimates().with_observation(mid, 30, 27).with_observation(big, 10, 9)):
        costs = [_expected_cost(evidence, pressure=p) for p in levels]
        assert all(b <= a + 1e-6 for a, b in itertools.pairwise(costs)), costs


# --- tasks the calibration never saw start safe ---------------------------------------------------


def _counted(samples: dict[str, int]) -> QualityProfiles:
    """``quality()`` as a calibrated file: code rows per model as given; classification calibrated on
    100 rows for every model (so the file counts), where the cheap models look as good as huge."""
    base = quality()
    counted = {}
    for name, mq in base.models.items():
        code = mq.tasks["code_generation"]
        counted[name] = ModelQuality(mq.overall, {
            "code_generation": TaskQuality(code.overall, code.buckets, samples.get(name, 0)),
            "classification": TaskQuality(0.95, (), 100)})
    return dataclasses.replace(base, models=counted)


def _decide(q: QualityProfiles, *, estimates: OnlineEstimates | None = None, baseline: str | None = "huge",
            config: SelectionConfig | None = None, c: Constraints | None = None) -> Decision:
    return select(profile(difficulty=0.2), models(), q, c or Constraints(), BudgetPressure(),
                  config or SelectionConfig(), baseline=baseline, estimates=estimates)


def test_a_model_with_too_few_calibration_rows_on_the_task_does_not_replace_the_reference() -> None:
    trusted = _decide(_counted(dict.fromkeys(["tiny", "small", "mid", "mid2", "big", "huge"], 500)))
    assert trusted.model == "big"  # bucket 0: target huge 0.94 − 0.03; big 0.92 is the cheapest meeting it
    unseen = _decide(_counted({"huge": 500}))  # only the reference has code rows
    assert unseen.model == "huge"
    assert any("unproven on code_generation" in r for r in unseen.reasons)
    score = unseen.score("big")
    assert score is not None and score.eligible and not score.proven
    assert _decide(_counted({}), baseline=None).model == "huge"  # nobody has rows: the best by its prior
    # written priors (no counts at all) are taken as written, and 0 switches the guard off
    assert _decide(quality()).model == trusted.model
    assert _decide(_counted({}), config=SelectionConfig(min_task_samples=0)).model == trusted.model
    # a budget that downgrades asks for the cheapest model that meets the floor, proven or not
    assert _decide(_counted({}), c=Constraints(downgrade=True)).model in {"tiny", "small", "mid", "mid2"}


def test_feedback_proves_an_unseen_model_by_its_lower_bound_alone() -> None:
    q = _counted({"huge": 500, "mid": 3})
    cell = ("code_generation", 0, "mid")
    few = _decide(q, estimates=OnlineEstimates().with_observation(cell, 10, 10))
    assert few.model == "huge"  # ten successes: the lower bound is still far below the target
    many = _decide(q, estimates=OnlineEstimates().with_observation(cell, 400, 398))
    mid = many.score("mid")
    assert many.model == "mid" and mid is not None and mid.proven and mid.quality_source == "online"
    assert mid.learned is not None and mid.expected_quality == pytest.approx(mid.learned.lower)
    # its three calibration rows weigh three observations, not learning.prior_strength's twenty
    assert mid.learned.mean == pytest.approx((0.88 * 3 + 398) / 403)


# --- online replay ---------------------------------------------------------------------------------


def test_online_replay_learns_what_the_other_benchmark_could_not_teach(tmp_path: Path) -> None:
    rows = synthetic_rows(n=400)
    for row in rows:  # on code, the cheap coder is always right (and the strong model right 90% of the time)
        if row["eval_name"] == "code":
            row["perf::coder"] = "1.0"
    data = load_dataset(write_csv(tmp_path / "s.csv", rows))
    options = OnlineOptions(label_rate=0.5, horizon=100, prior_strength=5.0)
    results = {r.benchmark: r for r in run_online(data, None, approx_tokens, options)}
    assert set(results) == {"code", "qa"}
    code = results["code"]
    assert code.rows == 200 and 0 < code.labels < 200 and len(code.saving) == 200
    # calibrated on qa only, the coder looks weak; the labels show it is as good as strong on code
    assert code.static_saving[-1] < code.saving[-1]
    assert code.retention[-1] > 0.9
    assert code.best_fixed_saving > 0 and code.share(100) is not None


def test_eval_online_writes_the_stream_and_its_picture(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv.gz", synthetic_rows(n=200))
    out = tmp_path / "out"
    assert eval_main(["--data", str(path), "--online", "--label-rate", "0.1", "--horizon", "50",
                      "--tokenizer", "approx", "--out", str(out)]) == 0
    for name in ("online.md", "online_summary.csv", "online_stream.csv", "online.png"):
        assert (out / name).stat().st_size > 0
    table = [line for line in (out / "online.md").read_text().splitlines() if line.startswith("|")]
    assert any(line.startswith("| code |") for line in table)
    assert len({line.count("|") for line in table}) == 1  # header, rule and rows have the same columns
    assert "mixing on" in (out / "online.md").read_text()
    assert eval_main(["--data", str(path), "--online", "--no-mixing", "--balanced-gap", "0.05", "--horizon", "50",
                      "--tokenizer", "approx", "--out", str(out)]) == 0
    assert "balanced_gap 0.05, prior strength 20, lower bound at 0.95, mixing off" in (out / "online.md").read_text()
    # a split replayed alone needs profiles from elsewhere; the value mode is not what --online replays
    assert eval_main(["--data", str(path), "--online", "--replay-split", "test", "--out", str(out)]) == 2
    assert eval_main(["--data", str(path), "--online", "--quality-per-usd", "5", "--out", str(out)]) == 2
    profiles = tmp_path / "train.yaml"
    assert calibrate_main(["--data", str(path), "--out", str(profiles), "--tokenizer", "approx"]) == 0
    assert eval_main(["--data", str(path), "--online", "--replay-split", "test", "--profiles", str(profiles),
                      "--tokenizer", "approx", "--out", str(out)]) == 0
    rows = {r["benchmark"]: int(r["rows"]) for r in csv.DictReader((out / "online_summary.csv").open())}
    data = load_dataset(path)
    assert rows == {n: sum(1 for e, sp in zip(data.eval_names, data.splits, strict=True) if e == n and sp == "test")
                    for n in set(data.eval_names)}
    assert eval_main(["--data", str(path), "--online", "--label-rate", "2", "--out", str(out)]) == 2


def _pair(ref_perf: list[float], cheap_perf: list[float], cheap_cost: float) -> EvalSet:
    n = len(ref_perf)
    return EvalSet(source="t", models=("ref", "cheap"), prompts=tuple(("q",) for _ in range(n)),
                   splits=("test",) * n, eval_names=("b",) * n,
                   perf=np.array([ref_perf, cheap_perf], dtype=float).T,
                   cost=np.array([[1.0] * n, [cheap_cost] * n], dtype=float).T)


def test_the_certifiable_ceiling_is_the_exact_binomial_bound_on_clean_labels() -> None:
    options = OnlineOptions(horizon=4, confidence=0.95, target_retention=0.98)
    reveal = np.array([True, False, True, False, True])
    # labels seen before each of the 4 rows: 0, 1, 1, 2; the bound on the loss rate after t clean labels
    # is 1 - 0.05 ** (1 / t); the reference is always right (q = 1), the cheap model never wins
    data = _pair([1.0] * 5, [0.0] * 5, cheap_cost=0.5)
    shares = [0.0, 0.02 / 0.95, 0.02 / 0.95, 0.02 / (1 - 0.05 ** 0.5)]
    saving, model = certifiable_ceiling(data, reveal, 0, options)
    assert model == "cheap" and saving == pytest.approx(sum(0.5 * s for s in shares) / 4)
    # its wins over the reference (true rate w = 1/4 over the horizon) offset the loss bound; q = 3/4
    wins = _pair([1.0, 0.0, 1.0, 1.0, 1.0], [1.0] * 5, cheap_cost=0.5)
    shares = [0.0, 0.015 / 0.7, 0.015 / 0.7, 0.015 / (1 - 0.05 ** 0.5 - 0.25)]
    assert certifiable_ceiling(wins, reveal, 0, options)[0] == pytest.approx(sum(0.5 * s for s in shares) / 4)
    # a share never exceeds the whole traffic (no retention to keep: every labelled row mixes fully)
    loose = dataclasses.replace(options, target_retention=0.0)
    assert certifiable_ceiling(wins, reveal, 0, loose)[0] == pytest.approx(0.5 * 3 / 4)
    # a dearer model saves nothing; a reference that is never right leaves nothing to keep
    assert certifiable_ceiling(_pair([1.0] * 5, [1.0] * 5, cheap_cost=2.0), reveal, 0, options) == (0.0, "")
    assert certifiable_ceiling(_pair([0.0] * 5, [0.0] * 5, cheap_cost=0.5), reveal, 0, options) == (None, "")
    # more labels never lower the ceiling
    rates = [certifiable_ceiling(data, schedule(5, OnlineOptions(label_rate=r, horizon=4))[0], 0,
                                 OnlineOptions(label_rate=r, horizon=4))[0] for r in (0.05, 0.5, 1.0)]
    assert rates == sorted(rates)
