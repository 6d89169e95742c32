"""The decisions the router remembers (``GET /api/v1/decisions``), packed small.

The router keeps its last ``DECISIONS_KEPT`` decisions, every candidate's score for the newest
``SCORES_KEPT`` of them.  Held as the frozen ``Decision`` objects ``select`` returns, that ring was
the one thing in a worker that grew with traffic: ~7 KB a decision with every score (31 candidates:
a ``CandidateScore`` object, two boxed integers and a boxed float each) and ~0.6 KB one without:
14.1 MB for a full ring on a repeated request, 23.3 MB on all-different ones (tracemalloc, 11,000
``auto`` decisions; 6.7 and 15.2 MB packed; since 2026-11-30 one ``bytes`` per decision: 6.8 → 4.8 MB
for the bench config's repeated ``auto`` request with fresh request ids, tracemalloc, 11,000 decisions).
A ``DecisionRecord`` keeps the same values in shapes that cost less:

- numbers (qualities, costs, caps, times, the counts) and the request id in one ``bytes``: the numbers
  with ``struct`` — ``d`` for floats and ``q`` for integers, both exact, so the ``Decision`` rebuilt
  from them equals the original — the request id in UTF-8 after them;
- words (model, provider, tier, quality source, reason, fallback chain) as tuples shared,
  through an ``Interner``, with the decisions before that had the same ones — traffic repeats itself;
- the reasons, which quote the request's numbers and so are rarely shared, as one string;
- the requested model (a new string per request, parsed from its body) shared through the ``Interner``.

A decision whose values do not fit (an integer past 64 bits, a float field holding an int, a request
id that UTF-8 would not give back as it was) is kept as it is: packing never changes what the API
shows.  ``record.decision`` rebuilds the ``Decision`` on each read (a few µs; read only by the admin
API).
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
# models scored, of them eligible, every score kept
_COUNTS = struct.Struct("<2I?")


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
    """One remembered decision: the ``Decision`` (rebuilt on read), who asked, which rules fired.

    Every number, the request id and the chosen (or every) score's numbers live in one ``bytes``
    (``_packed``: ``_HEAD``, ``_COUNTS``, ``_SCORE`` per row of ``_rows``, then the request id in
    UTF-8); the words are shared tuples.  Seven slots and one ``bytes`` instead of twelve slots, three
    ``bytes`` and a string: ~190 bytes less per decision."""

    __slots__ = ("_packed", "_raw", "_rows", "_words", "decision_id", "fired", "requested_model")

    decision_id: str
    requested_model: str
    fired: tuple[Any, ...]
    _packed: bytes
    _words: tuple[Any, ...]  # model, task type, mode, fallback chain, reasons (``_joined``)
    _rows: tuple[tuple[Any, ...], ...]  # per score: model, provider, tier, quality source, reason, learned
    # a decision that does not pack, kept as it is: (decision, created_at, request_id, candidates,
    # eligible, scores_kept)
    _raw: tuple[Decision, float, str, int, int, bool] | None

    def __init__(self, decision: Decision, request_id: str, requested_model: str, fired: tuple[Any, ...],
                 created_at: float, intern: Interner, *, candidates: int = 0, eligible: int = 0,
                 scores_kept: bool = True) -> None:
        self.decision_id = decision.id
        self.requested_model = intern(requested_model)  # "auto", or one of a few model names
        self.fired = intern(fired) if fired else fired  # the rules that fired: the same ones request after request
        self._raw = None
        d = decision
        try:
            scores, self._rows = _pack_scores(d.scores, intern)
            self._packed = b"".join((_pack_head(d, created_at), _pack_counts(candidates, eligible, scores_kept),
                                     scores, _text_bytes(request_id)))
            self._words = intern((d.model, d.task_type, d.mode, intern(d.fallback_chain), _joined(d.reasons)))
        except (struct.error, TypeError):  # TypeError: a field of another type, or an unhashable value
            self._raw = (d, created_at, request_id, candidates, eligible, scores_kept)
            self._packed, self._rows, self._words = b"", (), ()

    @property
    def created_at(self) -> float:
        if self._raw is not None:
            return self._raw[1]
        return float(_HEAD.unpack_from(self._packed)[4])

    @property
    def request_id(self) -> str:
        if self._raw is not None:
            return self._raw[2]
        return self._packed[_SCORES_AT + len(self._rows) * _SCORE.size:].decode("utf-8", "surrogatepass")

    @property
    def candidates(self) -> int:
        """Models scored."""
        return self._raw[3] if self._raw is not None else int(_COUNTS.unpack_from(self._packed, _HEAD.size)[0])

    @property
    def eligible(self) -> int:
        """Of them eligible."""
        return self._raw[4] if self._raw is not None else int(_COUNTS.unpack_from(self._packed, _HEAD.size)[1])

    @property
    def scores_kept(self) -> bool:
        """False: ``decision.scores`` holds only the chosen model's (router.SCORES_KEPT)."""
        return self._raw[5] if self._raw is not None else bool(_COUNTS.unpack_from(self._packed, _HEAD.size)[2])

    @property
    def decision(self) -> Decision:
        if self._raw is not None:
            return self._raw[0]
        packed = self._packed
        target, quality, difficulty, pressure, _created, share, estimated, worst, cap = _HEAD.unpack_from(packed)
        model, task_type, mode, fallback_chain, joined = self._words
        reasons = tuple(joined.split(_SEPARATOR)) if joined else ()
        scores = packed[_SCORES_AT:_SCORES_AT + len(self._rows) * _SCORE.size]
        return Decision(id=self.decision_id, model=model, scores=_unpack_scores(scores, self._rows),
                        reasons=reasons, fallback_chain=fallback_chain, quality_target=target,
                        expected_quality=quality, estimated_cost_nanos=estimated, worst_case_nanos=worst,
                        output_cap=cap, task_type=task_type, difficulty=difficulty, mode=mode, pressure=pressure,
                        mix_share=None if math.isnan(share) else share)

    def stripped(self, intern: Interner) -> DecisionRecord:
        """The same record keeping only the chosen model's score (``scores_kept`` False)."""
        if self._raw is not None:
            d, created_at, request_id, candidates, eligible, _kept = self._raw
            d = replace(d, scores=tuple(s for s in d.scores if s.model == d.model))
            return DecisionRecord(d, request_id, self.requested_model, self.fired, created_at, intern,
                                  candidates=candidates, eligible=eligible, scores_kept=False)
        record = DecisionRecord.__new__(DecisionRecord)
        record.decision_id, record.requested_model, record.fired = self.decision_id, self.requested_model, self.fired
        record._words, record._raw = self._words, None
        packed, rows = self._packed, self._rows
        candidates, eligible, _kept = _COUNTS.unpack_from(packed, _HEAD.size)
        models = [row[0] for row in rows]
        end = _SCORES_AT + len(rows) * _SCORE.size
        if self._words[0] in models:
            i = models.index(self._words[0])
            score, record._rows = packed[_SCORES_AT + i * _SCORE.size:_SCORES_AT + (i + 1) * _SCORE.size], \
                intern((rows[i],))
        else:
            score, record._rows = b"", ()
        record._packed = b"".join((packed[:_HEAD.size], _COUNTS.pack(candidates, eligible, False), score,
                                   packed[end:]))
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


def _pack_counts(candidates: int, eligible: int, scores_kept: bool) -> bytes:
    _ints(candidates, eligible)
    if type(scores_kept) is not bool:
        raise TypeError("not a bool")
    return _COUNTS.pack(candidates, eligible, scores_kept)


def _text_bytes(text: str) -> bytes:
    """``text`` in UTF-8, surrogates (an undecodable header byte, as aiohttp decodes them) passed
    through; a string that would not decode back the same raises ``TypeError``."""
    if type(text) is not str:
        raise TypeError("not a str")
    if text.isascii():
        return text.encode("ascii")
    encoded = text.encode("utf-8", "surrogatepass")
    if encoded.decode("utf-8", "surrogatepass") != text:
        raise TypeError("a string that does not decode back the same")
    return encoded


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
_SCORES_AT = _HEAD.size + _COUNTS.size  # where a record's scores start in ``_packed``
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
