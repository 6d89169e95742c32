"""The router's remembered decisions (``routing/decisions.py``): packed small, read back equal."""

from __future__ import annotations

from dataclasses import replace

from costproxy.learning.estimates import Posterior
from costproxy.routing.decisions import DecisionRecord, Interner
from costproxy.routing.selection import CandidateScore, Decision
from tests.conftest import ConfigFactory
from tests.unit.test_router import ask, router


def score(model: str, **changes: object) -> CandidateScore:
    base = CandidateScore(model, "openai", "economy", 0.71, "tier", 123_456_789, 987_654_321, 512, True, None)
    return replace(base, **changes)


def decision(*scores: CandidateScore, **changes: object) -> Decision:
    base = Decision(id="d-1", model=scores[0].model if scores else "a", scores=scores, reasons=("cheapest",),
                    fallback_chain=("b", "c"), quality_target=0.7, expected_quality=0.71,
                    estimated_cost_nanos=1_234, worst_case_nanos=56_789, output_cap=512, task_type="qa",
                    difficulty=0.25, mode="balanced", pressure=0.0)
    return replace(base, **changes)


def record(d: Decision, intern: Interner | None = None) -> DecisionRecord:
    return DecisionRecord(d, "req-1", "auto", (), 1_700_000_000.5, intern or Interner(64),
                          candidates=len(d.scores), eligible=sum(s.eligible for s in d.scores))


def test_a_packed_decision_reads_back_equal_field_for_field() -> None:
    d = decision(score("a"), score("b", eligible=False, reason_excluded="lacks vision", proven=False),
                 score("c", learned=Posterior(0.7, 3.0, 0.75, 0.6, 0.85), quality_source="online",
                      by_feedback=True, expected_quality=0.6, output_cap=0, expected_cost_nanos=0))
    r = record(d)
    assert r._raw is None  # packed
    back = r.decision
    assert back == d and [type(getattr(s, f)) for s in back.scores for f in ("eligible", "proven", "by_feedback")] \
        == [bool] * 9
    assert r.created_at == 1_700_000_000.5 and r.decision_id == "d-1" and r.scores_kept
    mixed = replace(d, mix_share=0.1875)  # learning.mixing: the share reads back, and None stays None
    assert record(mixed).decision == mixed and record(mixed)._raw is None
    assert back.mix_share is None and record(mixed).stripped(Interner(8)).decision.mix_share == 0.1875


def test_stripping_keeps_the_chosen_score_only() -> None:
    d = decision(score("a"), score("b"), score("c"), model="b")
    stripped = record(d).stripped(Interner(64))
    assert not stripped.scores_kept and stripped.candidates == 3
    assert stripped.decision == replace(d, scores=(d.scores[1],))
    assert record(decision(score("x"), model="gone")).stripped(Interner(8)).decision.scores == ()


def test_values_that_would_not_read_back_the_same_are_kept_as_they_are() -> None:
    for d in (decision(score("a", expected_quality=1)),  # an int where a float is expected
              decision(score("a", eligible=1)),  # type: ignore[arg-type]
              decision(score("a", expected_cost_nanos=2**70)),  # past 64 bits
              decision(score("a"), difficulty=1),
              decision(score("a"), reasons=("a\x00b",)),  # a reason holding the separator
              decision(score("a"), reasons=("",))):
        r = record(d)
        assert r._raw is not None and r.decision is d
        assert r.stripped(Interner(8)).decision == replace(d, scores=d.scores[:1])


def test_reasons_read_back_as_they_were() -> None:
    for reasons in ((), ("one",), ("one", "two", "thrée — 東京"), ("x" * 5000, "y")):
        d = decision(score("a"), reasons=reasons)
        r = record(d)
        assert r._raw is None and r.decision == d and r.decision.reasons == reasons


def test_alike_decisions_share_their_words() -> None:
    intern = Interner(64)
    one, two = record(decision(score("a"), score("b")), intern), record(decision(score("a"), score("b")), intern)
    assert one._rows is two._rows and one._words is two._words


def test_every_decision_the_router_keeps_equals_the_one_it_made(write_config: ConfigFactory) -> None:
    r = router(write_config)
    made = {}
    for i in range(40):
        explanation = r.explain(ask("auto", max_tokens=16 + i * 37))
        assert explanation.decision is not None
        made[explanation.decision.id] = explanation.decision
    assert {k: v.decision for k, v in r.decisions.items()} == made
