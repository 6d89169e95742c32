"""``costproxy eval``: replay a data set's test split through the real analyzer and selection engine.

Protocol (nothing is tuned on test):

1. Every row is profiled by ``analyze`` (task type, difficulty, tokens) and routed by ``select``
   over the data set's models (the calibrated file's ``registry`` section gives their prices) with
   the calibrated quality profiles, in ``balanced`` mode, at every *operating point* of a grid:
   the ``gap`` family (cheapest model within ``balanced_gap`` of the best; the engine's default
   rule) and the ``value`` family (no gap floor, best ``quality − quality_per_usd × cost``).
2. The operating point is chosen on train only, by K-fold cross-fitting: profiles are refitted
   without each fold and the fold is routed with them, so every train row is routed by profiles
   that never saw it.  The chosen point is the one with the largest train saving whose retention
   clears ``target_retention`` — by the lower bound of its bootstrap interval (``select_by=lower``,
   the default) or by its point estimate (``point``).
   With ``buckets_grid`` the number of difficulty buckets is part of the choice: profiles are
   refitted on train for each count (prior strength and prices from the file), with and without the
   per-request predictors when the file has them, and the variant whose best admissible point saves
   most on train wins.
3. The test split is routed with the profiles fitted on all of train at that point.

Reported on test, each with a 95 % percentile bootstrap interval over prompts (numpy, seeded; the
same resamples for every strategy, so differences are paired): *saving* = 1 − cost / cost of
always-strongest, *retention* = score / score of always-strongest.  Strategies: the router;
always-strongest (best train score); always-cheapest (lowest train cost); random routing between
those two at the router's test cost (in expectation); the best query-blind mix of models — the
train cost–score frontier, mixed to reach on train the retention the router reaches on test; and
the oracle (the cheapest model with the row's best score).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from costproxy.analyzer.profile import RequestProfile
from costproxy.errors import NoEligibleModel
from costproxy.records import frozen
from costproxy.registry import ModelSpec
from costproxy.routing.policy import Constraints
from costproxy.routing.quality import QualityProfiles
from costproxy.routing.selection import BudgetPressure, SelectionConfig, select
from costproxy.tools.calibrate import (
    CalibrationOptions,
    TokenCount,
    analyze_rows,
    approx_tokens,
    fit_quality,
)
from costproxy.tools.dataset import EvalSet, FloatArray

IntArray = npt.NDArray[np.intp]


@frozen
class OperatingPoint:
    """One setting of the selection engine: ``balanced_gap`` and, optionally, ``quality_per_usd``."""

    gap: float
    quality_per_usd: float | None = None

    @property
    def family(self) -> str:
        return "gap" if self.quality_per_usd is None else "value"

    @property
    def label(self) -> str:
        if self.quality_per_usd is None:
            return f"balanced_gap={self.gap:g}"
        return f"quality_per_usd={self.quality_per_usd:.4g}" + (f", balanced_gap={self.gap:g}" if self.gap < 1 else "")

    def config(self) -> SelectionConfig:
        return SelectionConfig(balanced_gap=self.gap, max_gap=1.0, quality_per_usd=self.quality_per_usd)


def default_points() -> tuple[OperatingPoint, ...]:
    gaps = [OperatingPoint(round(0.005 * i, 3)) for i in range(61)]  # 0 … 0.30
    rates = [OperatingPoint(1.0, round(float(r), 4)) for r in np.geomspace(0.5, 500.0, 61)]
    return (*gaps, *rates)


@frozen
class EvalOptions:
    target_retention: float = 0.98
    select_by: str = "lower"  # lower | point
    points: tuple[OperatingPoint, ...] = field(default_factory=default_points)
    folds: int = 5
    bootstrap: int = 2_000
    seed: int = 0
    buckets_grid: tuple[int, ...] = ()  # empty: the profiles file as it is
    point: OperatingPoint | None = None  # fixed operating point (required without train rows)


@frozen
class Interval:
    point: float
    low: float
    high: float


@frozen
class StrategyResult:
    name: str
    saving: Interval
    retention: Interval
    score: Interval  # mean per-prompt score (accuracy)
    cost_per_1k_usd: float
    note: str = ""


@frozen
class CurvePoint:
    point: OperatingPoint
    train_saving: float
    train_retention: float
    test_saving: float
    test_retention: float


@dataclass(frozen=True)
class EvalReport:
    source: str
    n_train: int
    n_test: int
    strongest: str
    cheapest: str
    chosen: OperatingPoint
    strategies: tuple[StrategyResult, ...]
    advantage_vs_mix: Interval  # router saving − query-blind mix saving, same prompts
    curve: tuple[CurvePoint, ...]
    single_models: tuple[tuple[str, float, float], ...]  # (model, test saving, test retention)
    usage: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # eval_name → model → rows
    tasks: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # eval_name → task → rows
    options: EvalOptions = EvalOptions()
    profiles: str = "file"  # which profiles routed the test split
    variants: tuple[tuple[str, str, float, float], ...] = ()  # (profiles, point, train saving, retention)
    rows: RowOutcomes | None = None  # per-row outcomes on test (pooling across runs)
    advantage_vs_random: Interval | None = None  # router saving − random saving at the router's quality
    hindsight: bool = False  # no train rows: strongest, cheapest and the mixes were read off test


@dataclass(frozen=True)
class RowOutcomes:
    """Per-row cost and score on test of the router, always-strongest and always-cheapest."""

    router_cost: FloatArray
    router_perf: FloatArray
    strongest_cost: FloatArray
    strongest_perf: FloatArray
    cheapest_cost: FloatArray
    cheapest_perf: FloatArray


def random_at_quality(rows: RowOutcomes, idx: IntArray) -> tuple[float, FloatArray, FloatArray]:
    """Saving of random strongest/cheapest routing at the router's score: the point, and per bootstrap
    resample (``idx``, B × rows) that saving and the router's minus it."""
    def saving(i: IntArray | slice) -> tuple[FloatArray, FloatArray]:
        s_cost, c_cost = rows.strongest_cost[i].sum(axis=-1), rows.cheapest_cost[i].sum(axis=-1)
        s_perf, c_perf = rows.strongest_perf[i].sum(axis=-1), rows.cheapest_perf[i].sum(axis=-1)
        share = np.clip((rows.router_perf[i].sum(axis=-1) - c_perf) / np.where(s_perf == c_perf, np.nan,
                                                                               s_perf - c_perf), 0.0, 1.0)
        random_saving = 1.0 - (share * s_cost + (1.0 - share) * c_cost) / s_cost
        return np.asarray(random_saving), np.asarray(1.0 - rows.router_cost[i].sum(axis=-1) / s_cost)

    point_random, _ = saving(slice(None))
    random_b, router_b = saving(idx)
    return float(point_random), random_b, router_b - random_b


# --- routing ------------------------------------------------------------------------------------


def route(profiles: Sequence[RequestProfile], candidates: Sequence[ModelSpec], quality: QualityProfiles,
          point: OperatingPoint, models: Sequence[str], *, min_task_samples: int | None = None) -> IntArray:
    """Column index (into ``models``) of the model ``select`` picks for each profile
    (``min_task_samples``: override ``SelectionConfig.min_task_samples``)."""
    column = {m: j for j, m in enumerate(models)}
    config = point.config()
    if min_task_samples is not None:
        config = replace(config, min_task_samples=min_task_samples)
    constraints, pressure = Constraints(quality_mode="balanced"), BudgetPressure()
    chosen = np.empty(len(profiles), dtype=np.intp)
    for i, profile in enumerate(profiles):
        try:
            chosen[i] = column[select(profile, candidates, quality, constraints, pressure, config).model]
        except NoEligibleModel:  # nothing fits (e.g. context): count it as the strongest model's job
            chosen[i] = -1
    return chosen


def pick(values: FloatArray, chosen: IntArray, fallback: int) -> FloatArray:
    """Each row's value in its chosen column (``fallback``'s where nothing was chosen, -1)."""
    cols = np.where(chosen < 0, fallback, chosen)
    return values[np.arange(len(cols)), cols]


def _candidates(quality: QualityProfiles, models: Sequence[str]) -> list[ModelSpec]:
    if quality.registry is None:
        raise ValueError("the quality profiles have no registry section: run costproxy calibrate on this data")
    missing = [m for m in models if m not in quality.registry.models]
    if missing:
        raise ValueError(f"the profiles' registry lacks the data set's models: {', '.join(missing)}")
    return [quality.registry.models[m] for m in models]


def _calibration_options(quality: QualityProfiles) -> CalibrationOptions:
    """The settings the profiles were calibrated with (3 buckets, strength 10 if unrecorded)."""
    settings = quality.calibration
    return CalibrationOptions(
        buckets=int(settings.get("buckets", 3)),
        prior_strength=float(settings.get("prior_strength", 10.0)),
        min_task_rows=int(settings.get("min_task_rows", CalibrationOptions().min_task_rows)),
        predictors=bool(settings.get("predictors", bool(quality.predictors))),
        predictor_l2=float(settings.get("predictor_l2", CalibrationOptions().predictor_l2)),
        text_model=bool(settings.get("text_model", quality.text is not None)),
        text_l2=float(settings.get("text_l2", CalibrationOptions().text_l2)),
    )


def cross_fitted_routes(train: EvalSet, profiles: Sequence[RequestProfile], quality: QualityProfiles,
                        options: EvalOptions) -> IntArray:
    """(points × rows) choices on train, each fold routed by profiles fitted without it."""
    candidates = _candidates(quality, train.models)
    chosen = np.empty((len(options.points), len(train)), dtype=np.intp)
    if not quality.calibration:  # not costproxy calibrate output (priors): nothing to refit, route as is
        for k, point in enumerate(options.points):
            chosen[k] = route(profiles, candidates, quality, point, train.models)
        return chosen
    tiers = {m.id: m.tier for m in candidates}
    settings = _calibration_options(quality)
    folds = np.random.default_rng(options.seed).permutation(len(train)) % max(2, options.folds)
    for fold in np.unique(folds):
        fit_idx, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        fitted = fit_quality([profiles[int(i)] for i in fit_idx], train.perf[fit_idx], train.models, tiers, settings)
        held_profiles = [profiles[int(i)] for i in held]
        for k, point in enumerate(options.points):
            chosen[k, held] = route(held_profiles, candidates, fitted, point, train.models)
    return chosen


# --- statistics ---------------------------------------------------------------------------------


def _ratios(values: FloatArray, base: FloatArray, idx: IntArray) -> FloatArray:
    denominator = base[idx].sum(axis=1)
    return np.asarray(values[idx].sum(axis=1) / np.where(denominator == 0, np.nan, denominator))


def _saving_retention(cost: FloatArray, perf: FloatArray, strongest: int, data: EvalSet) -> tuple[float, float]:
    return (1.0 - float(cost.sum() / data.cost[:, strongest].sum()),
            float(perf.sum() / data.perf[:, strongest].sum()))


def _interval(point: float, samples: FloatArray) -> Interval:
    low, high = np.nanpercentile(samples, [2.5, 97.5])
    return Interval(point=point, low=float(low), high=float(high))


@dataclass(frozen=True)
class _Baseline:
    cost: FloatArray
    perf: FloatArray
    idx: IntArray  # bootstrap resamples (B × rows)

    def result(self, name: str, cost: FloatArray, perf: FloatArray, note: str = "") -> StrategyResult:
        saving_point = 1.0 - float(cost.sum() / self.cost.sum())
        retention_point = float(perf.sum() / self.perf.sum())
        return StrategyResult(
            name=name,
            saving=_interval(saving_point, 1.0 - _ratios(cost, self.cost, self.idx)),
            retention=_interval(retention_point, _ratios(perf, self.perf, self.idx)),
            score=_interval(float(perf.mean()), perf[self.idx].mean(axis=1)),
            cost_per_1k_usd=float(cost.mean() * 1_000),
            note=note,
        )

    def savings(self, cost: FloatArray) -> FloatArray:
        return 1.0 - _ratios(cost, self.cost, self.idx)


def _choose(train: EvalSet, chosen: IntArray, strongest: int,
            options: EvalOptions) -> tuple[int, float, FloatArray]:
    """Index and train saving of the chosen point (-inf: none admissible, index 0), and the
    (points × 2) train saving/retention of every point."""
    idx = np.random.default_rng(options.seed + 1).integers(0, len(train), (options.bootstrap, len(train)))
    base_perf = train.perf[:, strongest]
    points = np.empty((len(options.points), 2))
    best, best_saving = 0, -np.inf
    for k in range(len(options.points)):
        perf = pick(train.perf, chosen[k], strongest)
        points[k] = _saving_retention(pick(train.cost, chosen[k], strongest), perf, strongest, train)
        if points[k, 0] <= best_saving:
            continue
        bound = points[k, 1]
        if options.select_by == "lower":
            bound = float(np.nanpercentile(_ratios(perf, base_perf, idx), 2.5))
        if bound >= options.target_retention:
            best, best_saving = k, float(points[k, 0])
    return best, best_saving, points


def _refit(quality: QualityProfiles, train: EvalSet, profiles: Sequence[RequestProfile],
           buckets: int, predictors: bool) -> QualityProfiles:
    """The file's profiles refitted on train with ``buckets`` difficulty buckets, with or without
    the per-request predictors."""
    candidates = _candidates(quality, train.models)
    settings = replace(_calibration_options(quality), buckets=buckets, predictors=predictors)
    fitted = fit_quality(profiles, train.perf, train.models, {m.id: m.tier for m in candidates}, settings)
    calibration = {**quality.calibration, "buckets": buckets, "predictors": predictors}
    return replace(fitted, source=quality.source, registry=quality.registry, calibration=calibration)


@dataclass(frozen=True)
class _Choice:
    label: str
    quality: QualityProfiles
    index: int
    train_saving: float
    train_points: FloatArray


def _choose_profiles(quality: QualityProfiles, train: EvalSet, profiles: Sequence[RequestProfile],
                     strongest: int, options: EvalOptions) -> tuple[_Choice, list[_Choice]]:
    """The profiles (file, or refitted per bucket count) and point with the best admissible train saving."""
    settings = _calibration_options(quality)
    if options.buckets_grid:
        with_predictors = (True, False) if settings.predictors else (False,)
        variants = [(f"refitted, {b} bucket(s){', predictors' if p else ''}", _refit(quality, train, profiles, b, p))
                    for p in with_predictors for b in options.buckets_grid]
    else:
        variants = [(f"file ({settings.buckets} bucket(s){', predictors' if settings.predictors else ''})", quality)]
    choices = []
    for label, variant in variants:
        routes = cross_fitted_routes(train, profiles, variant, options)
        index, saving, points = _choose(train, routes, strongest, options)
        choices.append(_Choice(label, variant, index, saving, points))
    return max(choices, key=lambda c: c.train_saving), choices


# --- query-blind baselines ----------------------------------------------------------------------


def frontier(cost: FloatArray, score: FloatArray) -> list[int]:
    """Models on the upper-left convex hull of (mean cost, mean score), cheapest first."""
    order = sorted(range(len(cost)), key=lambda j: (cost[j], -score[j]))
    hull: list[int] = []
    for j in order:
        if hull and score[j] <= score[hull[-1]]:
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (cost[b] - cost[a]) * (score[j] - score[a]) - (score[b] - score[a]) * (cost[j] - cost[a])
            if cross < 0:
                break
            hull.pop()
        hull.append(j)
    return hull


def mix_weights(train: EvalSet, target_score: float) -> dict[int, float]:
    """The cheapest query-blind mix of models reaching ``target_score`` on train."""
    cost, score = train.cost.mean(axis=0), train.perf.mean(axis=0)
    hull = frontier(cost, score)
    if target_score <= score[hull[0]]:
        return {hull[0]: 1.0}
    for a, b in pairwise(hull):
        if score[a] < target_score <= score[b]:
            w = float((target_score - score[a]) / (score[b] - score[a]))
            return {a: 1.0 - w, b: w}
    return {hull[-1]: 1.0}


def _blend(values: FloatArray, weights: Mapping[int, float]) -> FloatArray:
    return np.asarray(sum(w * values[:, j] for j, w in weights.items()), dtype=np.float64)


def _oracle(data: EvalSet) -> IntArray:
    best = data.perf.max(axis=1, keepdims=True)
    masked = np.where(data.perf >= best, data.cost, np.inf)
    return np.asarray(masked.argmin(axis=1), dtype=np.intp)


# --- the whole evaluation -----------------------------------------------------------------------


def _counts(names: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for name, label in zip(names, labels, strict=True):
        row = table.setdefault(name, {})
        row[label] = row.get(label, 0) + 1
    return table


@dataclass(frozen=True)
class _Splits:
    train: EvalSet
    test: EvalSet
    base: _Baseline  # always-strongest on test, with the bootstrap resamples
    strongest: int
    cheapest: int

    def mix(self, name: str, retention: float) -> tuple[StrategyResult, FloatArray]:
        """The query-blind mix fitted on train to ``retention``, evaluated on test (and its row costs)."""
        weights = mix_weights(self.train, retention * float(self.train.perf[:, self.strongest].mean()))
        note = " + ".join(f"{w:.0%} {self.train.models[j]}" for j, w in weights.items() if w > 0)
        cost = _blend(self.test.cost, weights)
        return self.base.result(name, cost, _blend(self.test.perf, weights), note), cost


def _baselines(s: _Splits, router: StrategyResult, target: float) -> tuple[list[StrategyResult], FloatArray]:
    """The baseline strategies on test, and the per-row cost of the mix at the router's quality."""
    test, strongest, cheapest = s.test, s.strongest, s.cheapest
    s_cost, c_cost = test.cost[:, strongest], test.cost[:, cheapest]
    router_cost = (1.0 - router.saving.point) * s_cost.sum()
    p = float(np.clip((router_cost - c_cost.sum()) / max(s_cost.sum() - c_cost.sum(), 1e-12), 0.0, 1.0))
    fitted = "hindsight: fitted on test" if s.train is s.test else "train-fitted"
    mix, mix_cost = s.mix(f"query-blind mix at router quality ({fitted})", router.retention.point)
    mix_target, _ = s.mix(f"query-blind mix at {target:.0%} ({fitted})", target)
    oracle = _oracle(test)
    return [
        s.base.result("always-strongest", s_cost, test.perf[:, strongest], test.models[strongest]),
        s.base.result("always-cheapest", c_cost, test.perf[:, cheapest], test.models[cheapest]),
        s.base.result("random at router cost", p * s_cost + (1 - p) * c_cost,
                      p * test.perf[:, strongest] + (1 - p) * test.perf[:, cheapest],
                      f"{p:.0%} strongest, {1 - p:.0%} cheapest, in expectation"),
        mix,
        mix_target,
        s.base.result("oracle", pick(test.cost, oracle, strongest), pick(test.perf, oracle, strongest),
                      "cheapest model with the row's best score"),
    ], mix_cost


def _curve(test: EvalSet, routes: IntArray, train_points: FloatArray, strongest: int,
           points: Sequence[OperatingPoint]) -> tuple[CurvePoint, ...]:
    curve = []
    for k, point in enumerate(points):
        saving, retention = _saving_retention(pick(test.cost, routes[k], strongest),
                                              pick(test.perf, routes[k], strongest), strongest, test)
        curve.append(CurvePoint(point, float(train_points[k, 0]), float(train_points[k, 1]), saving, retention))
    return tuple(curve)


def _fixed_point(options: EvalOptions) -> tuple[EvalOptions, int | None]:
    """Options whose points include the fixed point, and its index (``None`` when there is none)."""
    if options.point is None:
        return options, None
    points = options.points if options.point in options.points else (*options.points, options.point)
    return replace(options, points=points), points.index(options.point)


def _choose_on_train(quality: QualityProfiles, train: EvalSet, count: TokenCount, strongest: int,
                     options: EvalOptions) -> tuple[_Choice, list[_Choice]]:
    if len(train) == 0:  # nothing to choose on: the file as it is, at the fixed point
        empty = np.full((len(options.points), 2), np.nan)
        choice = _Choice("file, fixed point (no train rows)", quality, 0, float("nan"), empty)
        return choice, []
    return _choose_profiles(quality, train, analyze_rows(train, count), strongest, options)


def run_eval(data: EvalSet, quality: QualityProfiles, count: TokenCount = approx_tokens,
             options: EvalOptions | None = None) -> EvalReport:
    """Choose the operating point on train (cross-fitted), then report every strategy on test.

    Without train rows (a test-only file) ``options.point`` must be given; always-strongest,
    always-cheapest and the query-blind mixes are then read off the test rows (hindsight)."""
    options, fixed = _fixed_point(options or EvalOptions())
    train, test = data.split("train"), data.split("test")
    if len(test) == 0:
        raise ValueError(f"{data.source}: no test rows to report on")
    if len(train) == 0 and fixed is None:
        raise ValueError(f"{data.source}: no train rows to choose the operating point on: give one "
                         "(--balanced-gap or --quality-per-usd)")
    reference = train if len(train) else test
    strongest = int(reference.perf.mean(axis=0).argmax())
    cheapest = int(reference.cost.mean(axis=0).argmin())
    test_profiles = analyze_rows(test, count)
    best, tried = _choose_on_train(quality, train, count, strongest, options)
    quality, g, train_points = best.quality, best.index if fixed is None else fixed, best.train_points
    candidates = _candidates(quality, data.models)
    test_routes = np.stack([route(test_profiles, candidates, quality, p, data.models) for p in options.points])
    idx = np.random.default_rng(options.seed).integers(0, len(test), (options.bootstrap, len(test)))
    base = _Baseline(test.cost[:, strongest], test.perf[:, strongest], idx)
    router_cost = pick(test.cost, test_routes[g], strongest)
    router_perf = pick(test.perf, test_routes[g], strongest)
    how = "fixed" if fixed is not None else "chosen on train"
    router = base.result("router (analyze + select)", router_cost, router_perf, f"{options.points[g].label}, {how}")
    splits = _Splits(reference, test, base, strongest, cheapest)
    others, mix_cost = _baselines(splits, router, options.target_retention)
    rows = RowOutcomes(router_cost, router_perf, test.cost[:, strongest], test.perf[:, strongest],
                    test.cost[:, cheapest], test.perf[:, cheapest])
    random_saving, random_b, advantage_b = random_at_quality(rows, idx)
    random_q = StrategyResult("random at router quality", _interval(random_saving, random_b), router.retention,
                              router.score, float((1 - random_saving) * base.cost.mean() * 1_000),
                              "strongest/cheapest mixed to the router's score, in expectation")
    others.insert(len(others) - 1, random_q)  # the oracle stays last
    singles = tuple((m, *_saving_retention(test.cost[:, j], test.perf[:, j], strongest, test))
                    for j, m in enumerate(data.models))
    chosen_names = [data.models[j] if j >= 0 else data.models[strongest] for j in test_routes[g]]
    return EvalReport(
        source=data.source, n_train=len(train), n_test=len(test), strongest=data.models[strongest],
        cheapest=data.models[cheapest], chosen=options.points[g], strategies=(router, *others),
        advantage_vs_mix=_interval(router.saving.point - others[3].saving.point,
                                   base.savings(router_cost) - base.savings(mix_cost)),
        curve=_curve(test, test_routes, train_points, strongest, options.points), single_models=singles,
        usage=_counts(test.eval_names, chosen_names),
        tasks=_counts(test.eval_names, [p.task_type for p in test_profiles]), options=options,
        profiles=best.label,
        variants=tuple((c.label, options.points[c.index].label, float(c.train_points[c.index, 0]),
                        float(c.train_points[c.index, 1])) for c in tried),
        rows=rows, advantage_vs_random=_interval(router.saving.point - random_saving, advantage_b),
        hindsight=len(train) == 0,
    )
