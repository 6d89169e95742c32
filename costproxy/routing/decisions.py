"""The decisions the router remembers (``GET /api/v1/decisions``), packed small.

The router keeps its last ``DECISIONS_KEPT`` decisions, every candidate's score for the newest
``SCORES_KEPT`` of them.  Held as the frozen ``Decision`` objects ``select`` returns, that ring was
the one thing in a worker that grew with traffic: ~7 KB a decision with every score (31 candidates:
a ``CandidateScore`` object, two boxed integers and a boxed float each) and ~0.6 KB one without:
14.1 MB for a full ring on a repeated request, 23.3 MB on all-different ones (tracemalloc, 11,000
``auto`` decisions; 6.7 and 15.2 MB packed).  A ``DecisionRecord`` keeps the same values in shapes
that cost less:

- numbers (qualities, costs, caps, times) packed in a ``bytes`` with ``struct`` — ``d`` for floats
  and ``q`` for integers, both exact, so the ``Decision`` rebuilt from them equals the original;
- words (model, provider, tier, quality source, reason, fallback chain) as tuples shared,
  through an ``Interner``, with the decisions before that had the same ones — traffic repeats itself;
- the reasons, which quote the request's numbers and so are rarely shared, as one string.

A decision whose values do not fit (an integer past 64 bits, a float field holding an int) is kept
as it is: packing never changes what the API shows.  ``record.decision`` rebuilds the ``Decision``
on each read (a few µs; read only by the admin API).
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, replace
from itertools import chain, starmap
from operator import attrgetter
from typing import Any, TypeVar

from costproxy.routing.selection import CandidateScore, Decision

_T = TypeVar("_T")

# quality_target, expected_quality, difficulty, pressure, created_at, mix share (NaN: None); estimated cost,
# worst case, output cap
_HEAD = struct.Struct("<6d3q")


class Interner:
    """Hands back an earlier equal value instead of a new one, remembering at most ``bound``.

    Equal is ``==``, under which ``1 == 1.0 == True``: give it values whose equal ones are alike
    (strings, tuples of strings, the bools of fired rules, the floats of posteriors)."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.seen: dict[Any, Any] = {}

    def __call__(self, value: _T) -> _T:
        known = self.seen.get(value)
        if known is not None:
            return known  # type: ignore[no-any-return]
        if len(self.seen) >= self.bound:
            self.seen.clear()
        self.seen[value] = value
        return value


class DecisionRecord:
    """One remembered decision: the ``Decision`` (rebuilt on read), who asked, which rules fired."""

    __slots__ = ("_head", "_raw", "_rows", "_scores", "_words", "candidates", "decision_id", "eligible", "fired",
                 "request_id", "requested_model", "scores_kept")

    decision_id: str
    request_id: str
    requested_model: str
    fired: tuple[Any, ...]
    candidates: int  # models scored
    eligible: int  # of them eligible
    scores_kept: bool  # False: ``decision.scores`` holds only the chosen model's (router.SCORES_KEPT)
    _head: bytes
    _words: tuple[Any, ...]  # model, task type, mode, fallback chain, reasons (``_joined``)
    _scores: bytes
    _rows: tuple[tuple[Any, ...], ...]  # per score: model, provider, tier, quality source, reason, learned
    _raw: tuple[Decision, float] | None  # a decision that does not pack, kept as it is (and created_at)

    def __init__(self, decision: Decision, request_id: str, requested_model: str, fired: tuple[Any, ...],
                 created_at: float, intern: Interner, *, candidates: int = 0, eligible: int = 0,
                 scores_kept: bool = True) -> None:
        self.decision_id = decision.id
        self.request_id = request_id
        self.requested_model = requested_model
        self.fired = intern(fired) if fired else fired  # the rules that fired: the same ones request after request
        self.candidates = candidates
        self.eligible = eligible
        self.scores_kept = scores_kept
        self._raw = None
        d = decision
        try:
            self._head = _pack_head(d, created_at)
            self._scores, self._rows = _pack_scores(d.scores, intern)
            self._words = intern((d.model, d.task_type, d.mode, intern(d.fallback_chain), _joined(d.reasons)))
        except (struct.error, TypeError):  # TypeError: a field of another type, or an unhashable value
            self._raw = (d, created_at)
            self._head, self._scores, self._rows, self._words = b"", b"", (), ()

    @property
    def created_at(self) -> float:
        if self._raw is not None:
            return self._raw[1]
        return float(_HEAD.unpack(self._head)[4])

    @property
    def decision(self) -> Decision:
        if self._raw is not None:
            return self._raw[0]
        target, quality, difficulty, pressure, _created, share, estimated, worst, cap = _HEAD.unpack(self._head)
        model, task_type, mode, fallback_chain, joined = self._words
        reasons = tuple(joined.split(_SEPARATOR)) if joined else ()
        return Decision(id=self.decision_id, model=model, scores=_unpack_scores(self._scores, self._rows),
                        reasons=reasons, fallback_chain=fallback_chain, quality_target=target,
                        expected_quality=quality, estimated_cost_nanos=estimated, worst_case_nanos=worst,
                        output_cap=cap, task_type=task_type, difficulty=difficulty, mode=mode, pressure=pressure,
                        mix_share=None if math.isnan(share) else share)

    def stripped(self, intern: Interner) -> DecisionRecord:
        """The same record keeping only the chosen model's score (``scores_kept`` False)."""
        if self._raw is not None:
            d, created_at = self._raw
            d = replace(d, scores=tuple(s for s in d.scores if s.model == d.model))
            return DecisionRecord(d, self.request_id, self.requested_model, self.fired, created_at, intern,
                                  candidates=self.candidates, eligible=self.eligible, scores_kept=False)
        record = DecisionRecord.__new__(DecisionRecord)
        record.decision_id, record.request_id, record.requested_model = (
            self.decision_id, self.request_id, self.requested_model)
        record.fired, record.candidates, record.eligible, record.scores_kept = (
            self.fired, self.candidates, self.eligible, False)
        record._head, record._words, record._raw = self._head, self._words, None
        models = [row[0] for row in self._rows]
        if self._words[0] in models:
            record._scores, record._rows = _one_score(self._scores, self._rows, models.index(self._words[0]),
                                                      intern)
        else:
            record._scores, record._rows = b"", ()
        return record

    def public(self) -> dict[str, Any]:
        return {"decision": asdict(self.decision), "requestId": self.request_id,
                "requestedModel": self.requested_model, "rulesFired": [f._asdict() for f in self.fired],
                "createdAt": self.created_at}


_SEPARATOR = "\x00"


def _joined(reasons: tuple[str, ...]) -> str:
    """The reasons as one string: they hold the request's numbers (costs, tokens), so they are rarely
    shared, and one string costs ~250 bytes less than four strings in a tuple."""
    if not reasons:
        return ""
    joined = _SEPARATOR.join(reasons)
    if "" in reasons or joined.count(_SEPARATOR) != len(reasons) - 1:
        raise TypeError("a reason that does not split back")  # an empty one, or one holding the separator
    return joined


def _floats(*values: Any) -> None:
    for value in values:
        if type(value) is not float:
            raise TypeError("not a float")


def _ints(*values: Any) -> None:
    for value in values:
        if type(value) is not int:
            raise TypeError("not an int")


def _pack_head(d: Decision, created_at: float) -> bytes:
    share = math.nan if d.mix_share is None else d.mix_share
    _floats(d.quality_target, d.expected_quality, d.difficulty, d.pressure, created_at, share)
    _ints(d.estimated_cost_nanos, d.worst_case_nanos, d.output_cap)
    return _HEAD.pack(d.quality_target, d.expected_quality, d.difficulty, d.pressure, created_at, share,
                      d.estimated_cost_nanos, d.worst_case_nanos, d.output_cap)


# One score's numbers: quality; cost, worst case, cap; eligible, proven, by feedback (``?`` packs and
# unpacks a bool as a bool; ``q`` refuses anything but an integer).
_SCORE = struct.Struct("<d3q3?")
_NUMBERS = attrgetter("expected_quality", "expected_cost_nanos", "worst_case_nanos", "output_cap", "eligible",
                      "proven", "by_feedback")
_WORDS = attrgetter("model", "provider", "tier", "quality_source", "reason_excluded", "learned")
_QUALITY = attrgetter("expected_quality")
_FLAGS = attrgetter("eligible", "proven", "by_feedback")


def _pack_scores(scores: tuple[CandidateScore, ...], intern: Interner) -> tuple[bytes, tuple[tuple[Any, ...], ...]]:
    """Scores as (numbers, words): ``_SCORE`` after ``_SCORE`` for the numbers, a row of words per
    score shared with the earlier decisions that had the same one.  C loops only (``map``,
    ``starmap``): this runs on every ``auto`` request."""
    if not set(map(type, map(_QUALITY, scores))) <= {float} or \
            not set(map(type, chain.from_iterable(map(_FLAGS, scores)))) <= {bool}:
        raise TypeError("a score field of an unexpected type")  # kept as it is: ``d`` and ``?`` would convert it
    packed = b"".join(starmap(_SCORE.pack, map(_NUMBERS, scores)))
    rows = tuple(map(_WORDS, scores))
    known = intern.seen.get(rows)
    return packed, known if known is not None else intern(tuple(map(intern, rows)))


def _unpack_scores(packed: bytes, rows: tuple[tuple[Any, ...], ...]) -> tuple[CandidateScore, ...]:
    return tuple(
        CandidateScore(model, provider, tier, quality, source, cost, worst, cap, eligible, reason, learned, proven,
                       by_feedback)
        for (model, provider, tier, source, reason, learned), (quality, cost, worst, cap, eligible, proven, by_feedback)
        in zip(rows, _SCORE.iter_unpack(packed), strict=True))


def _one_score(packed: bytes, rows: tuple[tuple[Any, ...], ...], i: int,
               intern: Interner) -> tuple[bytes, tuple[tuple[Any, ...], ...]]:
    """The ``i``-th score alone, packed as ``_pack_scores`` packs one."""
    return packed[i * _SCORE.size:(i + 1) * _SCORE.size], intern((rows[i],))
