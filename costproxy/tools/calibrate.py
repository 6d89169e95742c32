"""Fit quality profiles (and prices) from the train split of an evaluation data set.

Every train prompt goes through the real analyzer (``costproxy.analyzer.profile.analyze``), so
the task types and difficulty buckets the profiles are keyed by are exactly the ones the proxy
computes at run time.  Then, per model:

- *model overall*: mean score over all train rows;
- *task*: mean score over the task's rows, shrunk toward the model's overall mean with
  ``prior_strength`` pseudo-rows (``(sum + k·parent) / (n + k)``), so a task seen on a handful of
  prompts does not swing to 0 or 1;
- *bucket*: the same, shrunk toward the task's estimate.

With ``predictors`` (the default), calibration also fits, per task with at least ``min_task_rows``
rows and per model, a logistic regression of the model's score on the analyzer's query features
(``analyzer.tasks.FEATURE_NAMES``): Newton's method on the L2-penalised log-likelihood
(``predictor_l2`` on the weights, a light 0.01 on the bias), and writes the weights to the
``predictors`` section, which the selection engine evaluates per request (``quality.py``).

With ``text_model`` (off by default; ``--text-model``), calibration then fits the n-gram text model
(``routing/text_model.py``, fitted by ``tools/text_fit.py``): per model, the residual of its score
on the hashed word n-grams of the query, with the profiles' estimate as offset, written to the
``text_model`` section.

Difficulty buckets are per task: the ``buckets``-quantiles of the analyzer's difficulty over that
task's train rows (equal-mass buckets; tasks with fewer than ``min_task_rows`` rows use the
default edges).  Tier priors are the mean overall quality of the models of each tier.

The number of buckets and the prior strength, unless given, are chosen on train by K-fold
cross-validation: the pair whose profiles best predict the held-out rows' scores (lowest Brier
score, mean squared error of the expected quality over every row and model) — a calibration
criterion, blind to routing and to the test split.

The data set's models are not in ``models.yaml``, so calibration also writes a ``registry``
section for them: input and output prices per 1M tokens fitted by least squares on the train rows
(cost ≈ input_tokens·p_in + output_tokens·p_out, output tokens ≈ ``resp_chars``/4; one blended
price when answer lengths are missing or the fit is degenerate), and tiers by mean cost per prompt
(the cheapest third economy, the dearest third premium).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from costproxy.analyzer.profile import RequestProfile, analyze
from costproxy.records import frozen
from costproxy.registry import TIERS, Registry, parse_registry
from costproxy.routing.quality import DEFAULT_BUCKET_EDGES, ModelQuality, QualityProfiles, TaskQuality, quality_document
from costproxy.tools.dataset import EvalSet, FloatArray
from costproxy.tools.text_fit import fit_text_model

TokenCount = Callable[[Sequence[Mapping[str, Any]]], int]
CHARS_PER_TOKEN = 4


def approx_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Chat tokens without a tokenizer: 4 characters per token plus OpenAI's per-message overhead."""
    return 3 + sum(3 + len(str(m.get("content") or "")) // CHARS_PER_TOKEN for m in messages)


BUCKET_CHOICES = (1, 2, 3, 4, 5, 6, 8)
STRENGTH_CHOICES = (2.0, 5.0, 10.0, 20.0, 50.0)


@frozen
class CalibrationOptions:
    buckets: int | None = None  # None: chosen by cross-validation (BUCKET_CHOICES)
    prior_strength: float | None = None  # None: chosen by cross-validation (STRENGTH_CHOICES)
    min_task_rows: int = 30
    folds: int = 5
    seed: int = 0
    tokenizer: str = "approx"  # recorded in the output; the caller passes the matching counter
    as_of: date | None = None  # price date written to the registry section (default: today)
    predictors: bool = True  # fit per-request logistic predictors over the query features
    predictor_l2: float = 10.0  # L2 penalty on the predictor weights (features are in [0, 1])
    text_model: bool = False  # fit the n-gram text model on top of the profiles (tools/text_fit.py)
    text_l2: float = 1e-3  # its L2 penalty (mean log-loss + l2/2·‖w‖²)


@dataclass(frozen=True)
class Calibration:
    profiles: QualityProfiles  # with ``registry`` set
    document: dict[str, Any]  # the YAML document to write


def analyze_rows(data: EvalSet, count: TokenCount = approx_tokens) -> list[RequestProfile]:
    """The real analyzer's profile of every row (the body is a plain chat request)."""
    profiles = []
    for row in range(len(data)):
        messages = data.messages(row)
        profiles.append(analyze({"model": "auto", "messages": messages}, count(messages)))
    return profiles


def _edges(difficulties: FloatArray, buckets: int) -> tuple[float, ...]:
    quantiles = np.quantile(difficulties, [i / buckets for i in range(1, buckets)])
    edges: list[float] = []
    for q in (round(float(x), 4) for x in quantiles):
        if q > float(difficulties.min()) and (not edges or q > edges[-1]) and 0.0 < q < 1.0:
            edges.append(q)
    return tuple(edges)


def fit_bucket_edges(
    profiles: Sequence[RequestProfile], buckets: int, min_task_rows: int
) -> dict[str, tuple[float, ...]]:
    edges: dict[str, tuple[float, ...]] = {"default": DEFAULT_BUCKET_EDGES}
    for task in sorted({p.task_type for p in profiles}):
        values = np.asarray([p.difficulty for p in profiles if p.task_type == task], dtype=np.float64)
        if len(values) >= min_task_rows:
            edges[task] = _edges(values, buckets) if buckets > 1 else ()
    return edges


def _shrunk(scores: FloatArray, parent: float, strength: float) -> float:
    return float((scores.sum() + strength * parent) / (len(scores) + strength))


def _fit_model(column: FloatArray, tasks: npt.NDArray[np.str_], buckets: FloatArray,
               edges: Mapping[str, tuple[float, ...]], strength: float) -> ModelQuality:
    overall = float(column.mean())
    fitted: dict[str, TaskQuality] = {}
    for task in sorted(set(tasks.tolist())):
        in_task = tasks == task
        task_q = _shrunk(column[in_task], overall, strength)
        n_buckets = len(edges.get(task, edges["default"])) + 1
        values: list[float | None] = []
        for b in range(n_buckets):
            in_bucket = in_task & (buckets == b)
            values.append(_shrunk(column[in_bucket], task_q, strength) if in_bucket.any() else None)
        fitted[task] = TaskQuality(overall=task_q, buckets=tuple(values), samples=int(in_task.sum()))
    return ModelQuality(overall=overall, tasks=fitted)


def fit_logistic(features: FloatArray, scores: FloatArray, l2: float, iterations: int = 25) -> FloatArray:
    """(bias, *weights) maximising the L2-penalised Bernoulli likelihood of ``scores`` in [0, 1]."""
    design = np.column_stack([np.ones(len(features)), features])
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.01
    weights = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -30.0, 30.0)))
        gradient = design.T @ (p - scores) + penalty * weights
        hessian = (design.T * (p * (1.0 - p))) @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return np.asarray(weights, dtype=np.float64)


def fit_predictors(profiles: Sequence[RequestProfile], perf: FloatArray, models: Sequence[str],
                   options: CalibrationOptions) -> dict[tuple[str, str], tuple[float, ...]]:
    """Per (model, task) logistic predictors over the query features (tasks with enough rows)."""
    predictors: dict[tuple[str, str], tuple[float, ...]] = {}
    tasks = np.asarray([p.task_type for p in profiles])
    for task in sorted(set(tasks.tolist())):
        rows = np.flatnonzero(tasks == task)
        if len(rows) < options.min_task_rows or any(not profiles[int(i)].features for i in rows):
            continue
        features = np.asarray([profiles[int(i)].features for i in rows], dtype=np.float64)
        for j, model in enumerate(models):
            weights = fit_logistic(features, perf[rows, j], options.predictor_l2)
            predictors[(model, task)] = tuple(float(w) for w in weights)
    return predictors


def fit_quality(
    profiles: Sequence[RequestProfile],
    perf: FloatArray,
    models: Sequence[str],
    tiers: Mapping[str, str],
    options: CalibrationOptions,
) -> QualityProfiles:
    """Quality profiles from analyzed rows and their (rows × models) scores.

    ``options.buckets`` and ``options.prior_strength`` must be set (``choose_granularity``).
    """
    if options.buckets is None or options.prior_strength is None:
        raise ValueError("fit_quality needs buckets and prior_strength (see choose_granularity)")
    edges = fit_bucket_edges(profiles, options.buckets, options.min_task_rows)
    template = QualityProfiles(models={}, tier_priors={}, bucket_edges=edges)
    tasks = np.asarray([p.task_type for p in profiles])
    buckets = np.asarray([template.bucket(p.task_type, p.difficulty) for p in profiles], dtype=np.float64)
    fitted = {m: _fit_model(perf[:, j], tasks, buckets, edges, options.prior_strength) for j, m in enumerate(models)}
    priors = {}
    for tier in TIERS:
        members = [fitted[m].overall for m in models if tiers.get(m) == tier]
        if members:
            priors[tier] = float(np.mean([x for x in members if x is not None]))
    predictors = fit_predictors(profiles, perf, models, options) if options.predictors else {}
    quality = QualityProfiles(models=fitted, tier_priors=priors, bucket_edges=edges,
                              default_prior=float(perf.mean()), predictors=predictors)
    if not options.text_model:
        return quality
    base = predict(quality, profiles, models, tiers)
    text = fit_text_model([p.ngrams for p in profiles], perf, base, models, options.text_l2)
    return replace(quality, text=text)


def predict(quality: QualityProfiles, profiles: Sequence[RequestProfile], models: Sequence[str],
            tiers: Mapping[str, str]) -> FloatArray:
    """(rows × models) expected quality of each row under ``quality``."""
    return np.asarray([[quality.estimate(m, tiers.get(m, ""), p.task_type, quality.bucket(p.task_type, p.difficulty),
                                         p.features, p.ngrams)[0] for m in models]
                       for p in profiles], dtype=np.float64)


def choose_granularity(profiles: Sequence[RequestProfile], perf: FloatArray, models: Sequence[str],
                       tiers: Mapping[str, str], options: CalibrationOptions) -> tuple[int, float, dict[str, float]]:
    """(buckets, prior strength, Brier score of every pair tried) by K-fold cross-validation."""
    bucket_grid = BUCKET_CHOICES if options.buckets is None else (options.buckets,)
    strength_grid = STRENGTH_CHOICES if options.prior_strength is None else (options.prior_strength,)
    folds = np.random.default_rng(options.seed).permutation(len(profiles)) % max(2, options.folds)
    scores: dict[str, float] = {}
    best: tuple[float, int, float] | None = None
    for buckets in bucket_grid:
        for strength in strength_grid:
            trial = replace(options, buckets=buckets, prior_strength=strength)
            error = 0.0
            for fold in np.unique(folds):
                fit_idx, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
                fitted = fit_quality([profiles[int(i)] for i in fit_idx], perf[fit_idx], models, tiers, trial)
                predicted = predict(fitted, [profiles[int(i)] for i in held], models, tiers)
                error += float(((predicted - perf[held]) ** 2).sum())
            brier = error / perf.size
            scores[f"buckets={buckets} prior_strength={strength:g}"] = round(brier, 6)
            if best is None or brier < best[0] - 1e-12:
                best = (brier, buckets, strength)
    assert best is not None
    return best[1], best[2], scores


# --- prices ---------------------------------------------------------------------------------------


def _per_million(per_token: float) -> str:
    value = Decimal(repr(max(per_token, 0.0) * 1_000_000)).quantize(Decimal("0.001"), ROUND_HALF_UP)
    if value == 0 and per_token > 0:
        value = Decimal("0.001")
    return format(value, "f")


def _fit_prices(cost: FloatArray, tokens_in: FloatArray, tokens_out: FloatArray | None) -> tuple[str, str]:
    if tokens_out is not None:
        design = np.column_stack([tokens_in, tokens_out])
        (p_in, p_out), *_ = np.linalg.lstsq(design, cost, rcond=None)
        if p_in >= 0 and p_out >= 0:
            return _per_million(float(p_in)), _per_million(float(p_out))
        blended = float(cost.sum() / (tokens_in + tokens_out).sum())
    else:
        blended = float(cost.sum() / max(tokens_in.sum(), 1.0))
    price = _per_million(blended)
    return price, price


def _provider(model: str) -> str:
    if "/" in model:
        return model.split("/", 1)[0].lower()
    for prefix, provider in (("gpt", "openai"), ("claude", "anthropic"), ("gemini", "google")):
        if model.startswith(prefix):
            return provider
    return "dataset"


def registry_document(
    data: EvalSet, profiles: Sequence[RequestProfile], options: CalibrationOptions
) -> dict[str, Any]:
    """A models.yaml-format document for the data set's models, priced from the train rows."""
    tokens_in = np.asarray([p.input_tokens for p in profiles], dtype=np.float64)
    tokens_out = None if data.out_chars is None else data.out_chars / CHARS_PER_TOKEN
    mean_cost = data.cost.mean(axis=0)
    rank = {m: int(r) for m, r in zip(data.models, np.argsort(np.argsort(mean_cost)), strict=True)}
    n = len(data.models)
    as_of = (options.as_of or date.today()).isoformat()
    models: dict[str, Any] = {}
    for j, model in enumerate(data.models):
        p_in, p_out = _fit_prices(data.cost[:, j], tokens_in, None if tokens_out is None else tokens_out[:, j])
        models[model] = {
            "provider": _provider(model),
            "kind": "chat",
            "tier": TIERS[min(len(TIERS) - 1, rank[model] * len(TIERS) // n)],
            "context_window": 128_000,
            "max_output_tokens": 4_096,
            "capabilities": ["streaming"],
            "price": {"input": p_in, "output": p_out, "as_of": as_of,
                      "source": f"fitted by costproxy calibrate on {len(data)} train rows of {data.source}"},
        }
    return {"models": models}


def calibrate(data: EvalSet, count: TokenCount = approx_tokens,
              options: CalibrationOptions | None = None) -> Calibration:
    """Fit profiles and prices on the train split of ``data``."""
    options = options or CalibrationOptions()
    train = data.split("train")
    if len(train) == 0:
        raise ValueError(f"{data.source}: the train split is empty")
    analyzed = analyze_rows(train, count)
    registry_doc = registry_document(train, analyzed, options)
    registry: Registry = parse_registry(registry_doc, f"{data.source} (fitted registry)")
    tiers = {m.id: m.tier for m in registry.models.values()}
    buckets, strength, tried = choose_granularity(analyzed, train.perf, train.models, tiers,
                                                replace(options, predictors=False, text_model=False))
    chosen = replace(options, buckets=buckets, prior_strength=strength)
    fitted = fit_quality(analyzed, train.perf, train.models, tiers, chosen)
    settings = {"data": data.source, "train_rows": len(train), "buckets": buckets,
                "prior_strength": strength, "min_task_rows": options.min_task_rows,
                "tokenizer": options.tokenizer, "predictors": options.predictors,
                "predictor_l2": options.predictor_l2, "text_model": options.text_model,
                "text_l2": options.text_l2, "cross_validated_brier": tried}
    profiles = replace(
        fitted,
        source=f"calibrated by costproxy calibrate on the train split of {data.source} ({len(train)} rows)",
        registry=registry,
        calibration=settings,
        fitted_on={"data": data.source, "split": f"train ({len(train)} rows)",
                   "date": (options.as_of or date.today()).isoformat()},
    )
    return Calibration(profiles=profiles, document=quality_document(profiles, registry_doc))
