"""Fit the text quality model (``routing/text_model.py``) on labelled prompts, and score it (AUC).

Per model, a logistic regression of the model's score (in [0, 1]) on the query's hashed n-grams
(``analyzer.ngrams``; each present n-gram is 1/sqrt(number of n-grams of the row), so every row
has unit norm), with the logit of the profile's own estimate as a fixed offset: the weights only
learn what the words add to task, difficulty bucket and features.  No bias term (the offset is
already calibrated).  Objective: mean log-loss + ``l2``/2 · ‖w‖², convex; minimised by Nesterov's
accelerated gradient with the fixed step 1 / (1/4 + l2) — the loss's gradient is (1/4 + l2)-Lipschitz
because every row has unit norm — for ``iterations`` steps, deterministic.
The sparse products are ``numpy.bincount`` over the (row, bucket) pairs, so a fit over a few
thousand prompts takes well under a second per model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from costproxy.analyzer.ngrams import NGRAM_BUCKETS
from costproxy.routing.text_model import TextModel
from costproxy.tools.dataset import FloatArray

IntArray = npt.NDArray[np.intp]
_EDGE = 1e-4


class SparseRows:
    """Rows of hashed n-grams as (row, column, value) triplets, unit norm per row."""

    def __init__(self, ngrams: Sequence[Sequence[int]]) -> None:
        lengths = np.asarray([len(g) for g in ngrams], dtype=np.intp)
        self.n = len(ngrams)
        self.rows: IntArray = np.repeat(np.arange(self.n, dtype=np.intp), lengths)
        self.cols: IntArray = np.asarray([i for g in ngrams for i in g], dtype=np.intp)
        scale = 1.0 / np.sqrt(np.maximum(lengths, 1))
        self.values: FloatArray = np.repeat(scale, lengths)

    def dot(self, weights: FloatArray) -> FloatArray:
        return np.asarray(np.bincount(self.rows, weights=self.values * weights[self.cols], minlength=self.n),
                          dtype=np.float64)

    def transpose_dot(self, residual: FloatArray) -> FloatArray:
        return np.asarray(np.bincount(self.cols, weights=self.values * residual[self.rows],
                                      minlength=NGRAM_BUCKETS), dtype=np.float64)


def logit(p: FloatArray) -> FloatArray:
    clipped = np.clip(p, _EDGE, 1.0 - _EDGE)
    return np.asarray(np.log(clipped / (1.0 - clipped)))


def _sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0))))


def fit_weights(x: SparseRows, scores: FloatArray, offset: FloatArray, l2: float,
                iterations: int = 300) -> FloatArray:
    """Weights minimising mean log-loss of ``scores`` given ``offset`` + x·w, plus l2/2·‖w‖²."""
    step = 1.0 / (0.25 + l2)
    weights = np.zeros(NGRAM_BUCKETS)
    ahead = weights.copy()
    momentum = 1.0
    for _ in range(iterations):
        p = _sigmoid(offset + x.dot(ahead))
        gradient = x.transpose_dot(p - scores) / max(x.n, 1) + l2 * ahead
        updated = ahead - step * gradient
        next_momentum = (1.0 + np.sqrt(1.0 + 4.0 * momentum * momentum)) / 2.0
        ahead = updated + ((momentum - 1.0) / next_momentum) * (updated - weights)
        weights, momentum = updated, next_momentum
    return weights


def fit_text_model(ngrams: Sequence[Sequence[int]], perf: FloatArray, base: FloatArray,
                   models: Sequence[str], l2: float) -> TextModel:
    """Per-model weights; ``perf`` and ``base`` (the profiles' estimates) are (rows × models)."""
    x = SparseRows(ngrams)
    weights = {}
    for j, model in enumerate(models):
        fitted = fit_weights(x, perf[:, j], logit(base[:, j]), l2)
        weights[model] = tuple(float(w) for w in fitted)
    return TextModel(weights=weights)


def auc(scores: FloatArray, labels: FloatArray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` >= 0.5 (ties count half); ``None``
    when one class is absent."""
    positive = labels >= 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
