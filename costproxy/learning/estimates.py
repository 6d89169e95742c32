"""Online estimates of answer quality, learned from feedback (sans-IO, pure).

Per cell — (task type, difficulty bucket, model) — the store keeps two weighted sums: ``n``, the
observations, and ``successes``, the sum of their scores in [0, 1] (a thumbs up is 1, down is 0).
The quality profile's estimate for a request (``routing/quality.py``) is the prior mean ``p0`` and
counts as ``prior_strength`` pseudo-observations ``k``, so the posterior is the Beta

    alpha = p0·k + successes,  beta = (1 − p0)·k + (n − successes)
    mean  = (p0·k + successes) / (k + n)            (shrinkage toward the prior)
    lower, upper = the Wilson score interval of ``mean`` over k + n observations (z from ``confidence``):
                   about mean ∓ z·sqrt(mean·(1 − mean) / (k + n)), and honest near 0 and 1

Selection reads two numbers per candidate (``Posterior.conservative`` and ``optimistic``):

- a candidate must clear the quality target with its *conservative* quality: the prior while there
  is no evidence (selection behaves exactly as without learning); bad news counts at once (the
  posterior mean when it is below the prior); good news counts only as far as the lower bound has
  risen above the prior — it tightens as evidence accumulates, so traffic moves to a cheaper model
  only once the lower bound of its quality (hence of its retention) clears the target;
- the reference the target is measured from uses the *optimistic* side (mirror image), so the
  retention bound ``conservative(cheap) / optimistic(reference)`` errs on the safe side too;
- mixing (``routing/selection.py``) lets a measured cheaper model that misses the target take a
  share of the traffic; it credits that model with its ``lower`` bound, its prior weighing no more
  observations than the evidence has, so the mix's expected quality meets the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

from costproxy.records import frozen

Cell = tuple[str, int, str]  # (task type, difficulty bucket, model id)
MEMO_LIMIT = 65_536  # posteriors kept per snapshot


@frozen
class Evidence:
    n: float = 0.0  # weighted observations
    successes: float = 0.0  # weighted sum of their scores

    def plus(self, n: float, successes: float) -> Evidence:
        return Evidence(self.n + n, self.successes + successes)


@frozen
class Posterior:
    prior: float
    evidence: float  # weighted observations behind it
    mean: float
    lower: float
    upper: float

    @property
    def conservative(self) -> float:
        """What a candidate is credited with when it must clear a target (module docstring)."""
        if self.evidence <= 0:
            return self.prior
        return min(self.mean, max(self.prior, self.lower))

    @property
    def optimistic(self) -> float:
        """What the reference is credited with (the mirror image of ``conservative``)."""
        if self.evidence <= 0:
            return self.prior
        return max(self.mean, min(self.prior, self.upper))


def z_score(confidence: float) -> float:
    """One-sided normal quantile for ``confidence`` in (0.5, 1)."""
    return NormalDist().inv_cdf(confidence)


def posterior(prior: float, evidence: Evidence, strength: float, z: float) -> Posterior:
    """The Beta posterior of ``prior`` (worth ``strength`` observations) after ``evidence``.

    Its bounds are the Wilson score interval of the posterior mean over ``strength + n``
    observations: unlike mean ± z·sd, it stays honest at the edges — three successes out of three,
    with a weak prior, bound the quality below by about 0.5, not by 1."""
    p0 = min(1.0, max(0.0, prior))
    n = max(0.0, evidence.n)
    successes = min(n, max(0.0, evidence.successes))
    total = strength + n
    if total <= 0:
        return Posterior(p0, 0.0, p0, p0, p0)
    mean = (p0 * strength + successes) / total
    z2 = z * z
    scale = 1.0 + z2 / total
    center = (mean + z2 / (2.0 * total)) / scale
    half = z * math.sqrt(mean * (1.0 - mean) / total + z2 / (4.0 * total * total)) / scale
    return Posterior(prior=p0, evidence=n, mean=mean, lower=max(0.0, center - half),
                     upper=min(1.0, center + half))


@dataclass(frozen=True)
class OnlineEstimates:
    """A snapshot of every cell's evidence, read by selection without any I/O.

    ``lookup`` answers ``None`` for a cell without evidence, the common case, at the cost of one
    dictionary lookup; posteriors are memoised per (cell, prior) — a snapshot never changes, and
    without per-request predictors a cell always has the same prior."""

    cells: Mapping[Cell, Evidence] = field(default_factory=dict)
    strength: float = 20.0
    z: float = 1.6448536269514722  # 95 % one-sided
    _memo: dict[tuple[Cell, float, float], Posterior] = field(default_factory=dict, compare=False, repr=False)

    def lookup(self, task_type: str, bucket: int, model: str, prior: float,
               strength: float | None = None) -> Posterior | None:
        """The cell's posterior around ``prior``, worth ``strength`` observations (default: the
        snapshot's ``strength``; never more) — ``None`` without evidence."""
        cell = (task_type, bucket, model)
        evidence = self.cells.get(cell)
        if evidence is None or evidence.n <= 0:
            return None
        k = self.strength if strength is None else min(self.strength, max(0.0, strength))
        key = (cell, prior, k)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) > MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[key] = posterior(prior, evidence, k, self.z)
        return found

    def evidence(self, task_type: str, bucket: int, model: str) -> Evidence:
        return self.cells.get((task_type, bucket, model), Evidence())

    def with_observation(self, cell: Cell, n: float, successes: float) -> OnlineEstimates:
        """A copy with one (weighted) observation added: what this replica learned just now."""
        cells = dict(self.cells)
        cells[cell] = cells.get(cell, Evidence()).plus(n, successes)
        return OnlineEstimates(cells, self.strength, self.z)


NO_ESTIMATES = OnlineEstimates()


def cell_field(cell: Cell) -> str:
    """The cell as one string (a Redis hash field, a log value): ``task|bucket|model``."""
    return f"{cell[0]}|{cell[1]}|{cell[2]}"


def parse_cell_field(text: str) -> Cell | None:
    task, _, rest = text.partition("|")
    bucket, _, model = rest.partition("|")
    if not task or not model or not bucket.isdigit():
        return None
    return task, int(bucket), model
