"""The router's remembered decisions (``routing/decisions.py``): packed small, read back equal."""

from __future__ import annotations

from dataclasses import replace

import pytest

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


def test_who_asked_and_the_counts_read_back_packed_and_stripped() -> None:
    d = decision(score("a"), score("b", eligible=False), score("c"), model="c")
    for request_id in ("req-1", "", "idé-東京", "bad\udcff-byte"):  # aiohttp decodes a bad header byte to a surrogate
        r = DecisionRecord(d, request_id, "auto", (), 1_700_000_000.5, Interner(8), candidates=3, eligible=2)
        assert r._raw is None
        for kept in (r, r.stripped(Interner(8))):
            assert (kept.request_id, kept.requested_model, kept.candidates, kept.eligible) == (request_id, "auto", 3, 2)
            assert kept.created_at == 1_700_000_000.5 and kept.decision.scores[-1] == d.scores[2]
        assert r.scores_kept and not r.stripped(Interner(8)).scores_kept


def test_a_request_id_that_would_not_read_back_keeps_the_decision_as_it_is() -> None:
    pair = "\ud83d\ude00"  # two surrogates that UTF-8 would join into one character
    d = decision(score("a"))
    r = DecisionRecord(d, pair, "auto", (), 1.5, Interner(8), candidates=2**40, eligible=1)
    assert r._raw is not None and r.request_id == pair and r.candidates == 2**40 and r.decision is d
    stripped = r.stripped(Interner(8))
    assert stripped.request_id == pair and not stripped.scores_kept and stripped.created_at == 1.5


def test_the_requested_model_is_shared_between_decisions() -> None:
    intern = Interner(64)
    one = DecisionRecord(decision(score("a")), "r1", "".join(["au", "to"]), (), 1.0, intern)
    two = DecisionRecord(decision(score("a")), "r2", "".join(["au", "to"]), (), 2.0, intern)
    assert one.requested_model is two.requested_model


def test_the_router_keeps_the_newest_decisions_in_order(write_config: ConfigFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("costproxy.routing.router.DECISIONS_KEPT", 5)
    r = router(write_config)
    made = []
    for i in range(12):
        explanation = r.explain(ask("auto", max_tokens=16 + i))
        assert explanation.decision is not None
        made.append(explanation.decision.id)
    assert list(r.decisions) == made[-5:] and list(r._order) == made[-5:]
    assert [record.decision_id for record in reversed(r.decisions.values())] == made[::-1][:5]
