"""Evaluation across distributions: train on one data set and test on another, leave one benchmark
out, and evaluate quality files that were not fitted on the data (the shipped priors included).

- ``train_test(a, b)``: every row of ``a`` becomes train, every row of ``b`` test, so profiles and
  the operating point come from ``a`` only and the report is on ``b``.
- ``leave_one_out(data, …)``: for each benchmark (``eval_name``) of one file, calibrate on all rows
  of the others and report on all rows of the left-out one; then pool the left-out rows of every
  fold (each routed by its own fold's profiles) for one pooled figure with bootstrap intervals.
  It also scores the per-prompt signals on each left-out benchmark: the AUC, per model and
  detected task, of the profiles' estimate without and with the n-gram text model.
- ``attach_registry(quality, data, model_map)``: a quality file without a ``registry`` section
  (``config/quality.yaml``) gets prices for the data set's models fitted from its cost columns
  (as ``costproxy calibrate`` does; prices are not labels), and ``model_map`` names which profile
  entry stands for which data-set model; unmapped models fall back to their tier prior.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from costproxy.analyzer.profile import RequestProfile
from costproxy.registry import parse_registry
from costproxy.routing.quality import QualityProfiles
from costproxy.routing.text_model import TextModel
from costproxy.tools.calibrate import (
    CalibrationOptions,
    TokenCount,
    analyze_rows,
    calibrate,
    predict,
    registry_document,
)
from costproxy.tools.dataset import EvalSet, FloatArray
from costproxy.tools.replay import (
    EvalOptions,
    EvalReport,
    Interval,
    RowOutcomes,
    random_at_quality,
    run_eval,
)
from costproxy.tools.text_fit import auc

MIN_AUC_ROWS = 20


def relabel(data: EvalSet, split: str) -> EvalSet:
    return replace(data, splits=tuple(split for _ in data.splits))


def train_test(train: EvalSet, test: EvalSet) -> EvalSet:
    """One data set: all rows of ``train`` as train, all rows of ``test`` as test (same models)."""
    missing = [m for m in train.models if m not in test.models]
    if missing:
        raise ValueError(f"{test.source} lacks the models of {train.source}: {', '.join(missing)}")
    columns = [test.models.index(m) for m in train.models]
    chars = None
    if train.out_chars is not None and test.out_chars is not None:
        chars = np.vstack([train.out_chars, test.out_chars[:, columns]])
    return EvalSet(
        source=f"{train.source} -> {test.source}", models=train.models,
        prompts=train.prompts + test.prompts,
        splits=("train",) * len(train) + ("test",) * len(test),
        eval_names=train.eval_names + test.eval_names,
        perf=np.vstack([train.perf, test.perf[:, columns]]), cost=np.vstack([train.cost, test.cost[:, columns]]),
        out_chars=chars,
    )


def parse_model_map(text: str) -> dict[str, str]:
    """``data_model=profile_model,...`` → mapping."""
    result: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        data_model, sep, profile_model = item.partition("=")
        if not sep or not data_model.strip() or not profile_model.strip():
            raise ValueError(f"--model-map: expected data_model=profile_model, got {item!r}")
        result[data_model.strip()] = profile_model.strip()
    return result


def _renamed(quality: QualityProfiles, model_map: Mapping[str, str]) -> QualityProfiles:
    unknown = [p for p in model_map.values() if p not in quality.models]
    if unknown:
        raise ValueError(f"--model-map names models the quality file lacks: {', '.join(unknown)}")
    models = {**quality.models, **{d: quality.models[p] for d, p in model_map.items()}}
    predictors = {**quality.predictors, **{(d, t): w for (m, t), w in quality.predictors.items()
                                            for d, p in model_map.items() if m == p}}
    text = quality.text
    if text is not None:
        text = TextModel({**text.weights, **{d: text.weights[p] for d, p in model_map.items() if p in text.weights}},
                         text.scheme)
    return replace(quality, models=models, predictors=predictors, text=text)


def attach_registry(quality: QualityProfiles, data: EvalSet, count: TokenCount,
                    model_map: Mapping[str, str]) -> QualityProfiles:
    """``quality`` with a registry for ``data``'s models when it has none (see the module docstring)."""
    if model_map:
        quality = _renamed(quality, model_map)
    if quality.registry is not None:
        return quality
    document = registry_document(data, analyze_rows(data, count), CalibrationOptions())
    return replace(quality, registry=parse_registry(document, f"{data.source} (prices fitted from its costs)"))


# --- leave one benchmark out ---------------------------------------------------------------------


@dataclass(frozen=True)
class SignalAuc:
    model: str
    task: str  # detected task type, or "all"
    rows: int
    without_text: float | None
    with_text: float | None


@dataclass(frozen=True)
class Fold:
    benchmark: str
    report: EvalReport
    aucs: tuple[SignalAuc, ...]


@dataclass(frozen=True)
class Pooled:
    rows: int
    saving: Interval
    retention: Interval
    random_saving: Interval  # random strongest/cheapest at the router's pooled score
    advantage_vs_random: Interval


@dataclass(frozen=True)
class LeaveOneOut:
    source: str
    folds: tuple[Fold, ...]
    pooled: Pooled
    options: EvalOptions


def signal_aucs(quality: QualityProfiles, test: EvalSet, profiles: Sequence[RequestProfile]) -> tuple[SignalAuc, ...]:
    """AUC of each model's estimated quality for its actual score, per detected task and overall."""
    tiers = {} if quality.registry is None else {m.id: m.tier for m in quality.registry.models.values()}
    with_text = predict(quality, profiles, test.models, tiers)
    without = predict(replace(quality, text=None), profiles, test.models, tiers)
    tasks = np.asarray([p.task_type for p in profiles])
    groups = [("all", np.ones(len(tasks), dtype=bool))]
    groups += [(t, tasks == t) for t in sorted(set(tasks.tolist())) if (tasks == t).sum() >= MIN_AUC_ROWS]
    result = []
    for j, model in enumerate(test.models):
        for task, mask in groups:
            labels = test.perf[mask, j]
            result.append(SignalAuc(model, task, int(mask.sum()), auc(without[mask, j], labels),
                                    auc(with_text[mask, j], labels)))
    return tuple(result)


def _pooled(reports: Sequence[EvalReport], options: EvalOptions) -> Pooled:
    parts = [r.rows for r in reports if r.rows is not None]

    def cat(name: str) -> FloatArray:
        return np.concatenate([getattr(p, name) for p in parts])

    rows = RowOutcomes(*(cat(n) for n in ("router_cost", "router_perf", "strongest_cost", "strongest_perf",
                                       "cheapest_cost", "cheapest_perf")))
    n = len(rows.router_cost)
    idx = np.random.default_rng(options.seed).integers(0, n, (options.bootstrap, n))

    def ratio(values: FloatArray, base: FloatArray) -> tuple[float, FloatArray]:
        return float(values.sum() / base.sum()), values[idx].sum(axis=1) / base[idx].sum(axis=1)

    cost_point, cost_b = ratio(rows.router_cost, rows.strongest_cost)
    perf_point, perf_b = ratio(rows.router_perf, rows.strongest_perf)
    random_point, random_b, advantage_b = random_at_quality(rows, idx)

    def interval(point: float, samples: FloatArray) -> Interval:
        low, high = np.nanpercentile(samples, [2.5, 97.5])
        return Interval(point, float(low), float(high))

    return Pooled(rows=n, saving=interval(1 - cost_point, 1 - cost_b), retention=interval(perf_point, perf_b),
                  random_saving=interval(random_point, random_b),
                  advantage_vs_random=interval(1 - cost_point - random_point, advantage_b))


def leave_one_out(data: EvalSet, count: TokenCount, calibration: CalibrationOptions,
                  options: EvalOptions) -> LeaveOneOut:
    """Calibrate on all rows of the other benchmarks, report on every row of the left-out one."""
    benchmarks = sorted(set(data.eval_names))
    if len(benchmarks) < 2:
        raise ValueError(f"{data.source}: leave-one-out needs at least two benchmarks (eval_name), "
                         f"found {', '.join(benchmarks)}")
    folds = []
    for benchmark in benchmarks:
        fold = replace(data, splits=tuple("test" if name == benchmark else "train" for name in data.eval_names))
        quality = calibrate(fold, count, calibration).profiles
        report = run_eval(fold, quality, count, options)
        test = fold.split("test")
        folds.append(Fold(benchmark, report, signal_aucs(quality, test, analyze_rows(test, count))))
    return LeaveOneOut(data.source, tuple(folds), _pooled([f.report for f in folds], options), options)
