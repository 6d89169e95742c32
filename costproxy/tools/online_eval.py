"""``costproxy eval --online``: replay a data set in order while the router learns from feedback.

For each benchmark of the file (``eval_name``; the whole file when it has one), left out in turn:

1. quality profiles come from ``--profiles``, or are calibrated now on the train split of the
   *other* benchmarks (nothing is fitted on the replayed one);
2. its rows, every split, in file order, are routed one by one by the real analyzer and
   ``select`` (balanced mode, ``--balanced-gap``, reference: the strongest model, as the server's
   ``target_reference: baseline`` aims at its ``baseline_model``) with the
   online estimates learned so far (``learning/estimates.py``, the server's code) and, unless
   ``--no-mixing``, a seeded uniform draw per row (``learning.mixing``: a measured cheaper model may
   take a share of the traffic);
3. after each row, with probability ``--label-rate`` (seeded), its label is revealed: every model's
   score on that row is added to the estimates as one observation of ``source: eval`` — what an
   evaluation system that scores a sample of prompts on every model would send to
   ``POST /api/v1/feedback``.

Drawn over the stream: cumulative saving (1 − cost / cost of always-strongest, the model with the
best calibration score) and retention (score / score of always-strongest), for the learning router
and for the same router without learning.  The goal of issue 10: after the first ``--horizon``
(500) requests, at least 80 % of the saving the best *fixed* policy reaches at 98 % retention over
those requests in hindsight — the best of every operating point of the eval grid (no learning),
every single model, and every fixed random mix of the strongest model with one cheaper model (its
share as large as the target retention allows; expected saving and retention).  Beside it, the
*ceiling* (``certifiable_ceiling``): the most any router that only moves traffic on a lower bound
learned from the stream's own labels could save over the horizon, in the best case.  Writes
``online.md``, ``online_summary.csv``, ``online_stream.csv`` and ``online.png`` into ``--out``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from costproxy.analyzer.profile import RequestProfile
from costproxy.errors import NoEligibleModel
from costproxy.learning.estimates import OnlineEstimates, z_score
from costproxy.records import frozen
from costproxy.registry import ModelSpec
from costproxy.routing.policy import Constraints
from costproxy.routing.quality import QualityProfiles
from costproxy.routing.selection import BudgetPressure, SelectionConfig, select
from costproxy.tools.calibrate import CalibrationOptions, TokenCount, analyze_rows, calibrate
from costproxy.tools.dataset import EvalSet, FloatArray
from costproxy.tools.replay import IntArray, OperatingPoint, default_points, pick, route

CONSTRAINTS, PRESSURE = Constraints(quality_mode="balanced"), BudgetPressure()


@frozen
class OnlineOptions:
    label_rate: float = 0.05
    balanced_gap: float = 0.03
    prior_strength: float = 20.0
    confidence: float = 0.95
    horizon: int = 500
    target_retention: float = 0.98
    seed: int = 0
    mixing: bool = True  # learning.mixing: a measured cheaper model may take a share of the traffic


@dataclass(frozen=True)
class StreamResult:
    benchmark: str
    rows: int
    labels: int
    strongest: str
    learned: IntArray  # column chosen per row, with learning
    static: IntArray  # column chosen per row, without learning
    saving: FloatArray  # cumulative, learning router
    retention: FloatArray
    static_saving: FloatArray
    static_retention: FloatArray
    best_fixed: str  # the best fixed policy over the horizon at the target retention
    best_fixed_saving: float
    best_fixed_retention: float
    ceiling: float | None  # the most a lower-bound router could save over the horizon (``certifiable_ceiling``)
    ceiling_model: str

    def at(self, horizon: int) -> int:
        return min(horizon, self.rows) - 1

    def share(self, horizon: int) -> float | None:
        if self.best_fixed_saving <= 0:
            return None
        return float(self.saving[self.at(horizon)] / self.best_fixed_saving)

    def ceiling_share(self) -> float | None:
        """The ceiling as a share of the best fixed saving (below 0.8: the goal is out of reach of any
        router that obeys the lower-bound rule on this stream)."""
        if self.ceiling is None or self.best_fixed_saving <= 0:
            return None
        return self.ceiling / self.best_fixed_saving

    def goal_met(self, horizon: int, target_retention: float) -> bool | None:
        """The issue's goal: at least 80 % of the best fixed saving, at the target retention (None: no fixed
        policy saves anything at the target, so there is no saving to reach)."""
        share = self.share(horizon)
        if share is None:
            return None
        return share >= 0.8 and bool(self.retention[self.at(horizon)] >= target_retention)


def _cumulative(cost: FloatArray, perf: FloatArray, data: EvalSet, strongest: int) -> tuple[FloatArray, FloatArray]:
    base_cost, base_perf = np.cumsum(data.cost[:, strongest]), np.cumsum(data.perf[:, strongest])
    saving = 1.0 - np.cumsum(cost) / np.where(base_cost == 0, np.nan, base_cost)
    retention = np.cumsum(perf) / np.where(base_perf == 0, np.nan, base_perf)
    return saving, retention


def _candidates(quality: QualityProfiles, models: Sequence[str]) -> list[ModelSpec]:
    registry = quality.registry
    missing = [m for m in models if registry is None or m not in registry.models]
    if registry is None or missing:
        raise ValueError("the quality profiles must price the data set's models (a registry section, as "
                         f"costproxy calibrate writes): missing {', '.join(missing) or 'the registry section'}")
    return [registry.models[m] for m in models]


def schedule(rows: int, options: OnlineOptions) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    """The seeded draws of a replay: which rows reveal their label, and each row's mixing draw."""
    rng = np.random.default_rng(options.seed)
    reveal = rng.random(rows) < options.label_rate
    return reveal, rng.random(rows)


def certifiable_ceiling(data: EvalSet, reveal: npt.NDArray[np.bool_], strongest: int,
                        options: OnlineOptions) -> tuple[float | None, str]:
    """The most any router that moves traffic only on a lower confidence bound learned from this
    stream's labels could save over the first ``horizon`` rows, in the best case; (saving, model).

    Before row ``i`` the router has seen ``t`` labels (the replay's own schedule).  If the cheaper
    model ``m`` lost to the reference on none of them, the smallest loss rate a one-sided bound at
    ``confidence`` can certify is ``1 − (1 − confidence) ** (1 / t)`` (the exact binomial bound: at
    that rate, ``t`` clean labels happen with probability ``1 − confidence``, so no valid bound can
    claim less).  Crediting ``m`` with its true rate of wins over the reference ``w`` and the
    reference's true mean score ``q`` (both in hindsight over the horizon, favourable), ``m``'s
    retention bound is ``1 − (bound − w) / q``, and a mix of ``m`` with the reference keeps the target
    retention for a share of ``(1 − target) · q / (bound − w)`` of the traffic (all of it once that
    reaches 1; none before the first label).  The ceiling is the largest saving of such a mix over
    the cheaper models, each row's cost difference counted where ``m`` is cheaper.  It is loose when
    labels are many (it assumes clean labels); it ignores priors from other data (unseen traffic), so
    only a router that trusted those could exceed it.  ``None``: the reference scores 0 or costs
    nothing over the horizon."""
    n = min(options.horizon, len(data))
    seen = np.concatenate(([0], np.cumsum(reveal[:n])[:-1]))
    loss_bound = 1.0 - (1.0 - options.confidence) ** (1.0 / np.maximum(seen, 1))
    base_cost, base_perf = data.cost[:n, strongest], data.perf[:n, strongest]
    q = float(base_perf.mean())
    if q <= 0 or base_cost.sum() <= 0:
        return None, ""
    best: tuple[float, str] = (0.0, "")
    for j, model in enumerate(data.models):
        if j == strongest:
            continue
        wins = float(np.maximum(0.0, data.perf[:n, j] - base_perf).mean())
        net = np.maximum(loss_bound - wins, 1e-12)
        share = np.where(seen > 0, np.minimum(1.0, (1.0 - options.target_retention) * q / net), 0.0)
        saving = float((share * np.maximum(0.0, base_cost - data.cost[:n, j])).sum() / base_cost.sum())
        if saving > best[0]:
            best = (saving, model)
    return best


def replay_online(data: EvalSet, profiles: Sequence[RequestProfile], quality: QualityProfiles,
                  candidates: Sequence[ModelSpec], options: OnlineOptions,
                  baseline: str | None = None) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Route every row in order, learning from the labels revealed; (columns chosen, rows revealed).
    ``baseline``: the reference of the target (``select``), as ``target_reference: baseline`` does."""
    column = {m: j for j, m in enumerate(data.models)}
    # the server's max_gap (0.2), unless the gap asked for is wider
    config = SelectionConfig(balanced_gap=options.balanced_gap,
                             max_gap=max(SelectionConfig().max_gap, options.balanced_gap))
    estimates = OnlineEstimates({}, options.prior_strength, z_score(options.confidence))
    reveal, mix_draws = schedule(len(data), options)
    draws: list[float | None] = mix_draws.tolist() if options.mixing else [None] * len(data)
    chosen = np.empty(len(data), dtype=np.intp)
    for i, profile in enumerate(profiles):
        try:
            chosen[i] = column[select(profile, candidates, quality, CONSTRAINTS, PRESSURE, config,
                                      estimates=estimates, baseline=baseline, draw=draws[i]).model]
        except NoEligibleModel:
            chosen[i] = -1
        if reveal[i]:
            bucket = quality.bucket(profile.task_type, profile.difficulty)
            for j, model in enumerate(data.models):
                estimates = estimates.with_observation((profile.task_type, bucket, model), 1.0,
                                                       float(data.perf[i, j]))
    return chosen, reveal


def best_fixed(data: EvalSet, profiles: Sequence[RequestProfile], quality: QualityProfiles,
               candidates: Sequence[ModelSpec], strongest: int, options: OnlineOptions) -> tuple[str, float, float]:
    """The fixed policy (an operating point without learning, or one model) saving most over the
    first ``horizon`` rows while retaining ``target_retention`` there, in hindsight: the router's
    operating points are taken without the guard for unseen tasks, which hindsight does not need."""
    n = min(options.horizon, len(data))
    head = data.subset(range(n))
    policies: list[tuple[str, FloatArray, FloatArray]] = [
        (f"always {m}", head.cost[:, j], head.perf[:, j]) for j, m in enumerate(data.models)]
    for point in default_points():  # hindsight needs no guard for unseen tasks (selection.min_task_samples)
        chosen = route(profiles[:n], candidates, quality, point, data.models, min_task_samples=0)
        policies.append((f"router {point.label}", pick(head.cost, chosen, strongest),
                         pick(head.perf, chosen, strongest)))
    base_cost, base_perf = head.cost[:, strongest].sum(), head.perf[:, strongest].sum()
    best = ("always " + data.models[strongest], 0.0, 1.0)
    for name, cost, perf in policies:
        saving, retention = 1.0 - cost.sum() / base_cost, perf.sum() / base_perf if base_perf else 1.0
        if retention >= options.target_retention and saving > best[1]:
            best = (name, float(saving), float(retention))
    # a fixed random mix: a share of the requests to one cheaper model, the rest to the strongest,
    # as large as the target retention allows (its expected saving and retention)
    for j, m in enumerate(data.models):
        retained = head.perf[:, j].sum() / base_perf if base_perf else 1.0
        cheaper = 1.0 - head.cost[:, j].sum() / base_cost
        if j == strongest or cheaper <= 0 or retained >= 1.0:
            continue
        share = min(1.0, (1.0 - options.target_retention) / (1.0 - retained))
        if share * cheaper > best[1]:
            best = (f"mix {100 * share:.0f} % {m}", float(share * cheaper), float(1.0 - share * (1.0 - retained)))
    return best


def _stream(data: EvalSet, name: str, quality: QualityProfiles, count: TokenCount, strongest: int,
            options: OnlineOptions) -> StreamResult:
    candidates = _candidates(quality, data.models)
    profiles = analyze_rows(data, count)
    learned, revealed = replay_online(data, profiles, quality, candidates, options, data.models[strongest])
    static = route(profiles, candidates, quality, OperatingPoint(options.balanced_gap), data.models)
    saving, retention = _cumulative(pick(data.cost, learned, strongest), pick(data.perf, learned, strongest),
                                    data, strongest)
    s_saving, s_retention = _cumulative(pick(data.cost, static, strongest), pick(data.perf, static, strongest),
                                        data, strongest)
    fixed, fixed_saving, fixed_retention = best_fixed(data, profiles, quality, candidates, strongest, options)
    ceiling, ceiling_model = certifiable_ceiling(data, revealed, strongest, options)
    return StreamResult(name, len(data), int(revealed.sum()), data.models[strongest], learned, static, saving,
                        retention, s_saving, s_retention, fixed, fixed_saving, fixed_retention, ceiling, ceiling_model)


def run_online(data: EvalSet, quality: QualityProfiles | None, count: TokenCount,
               options: OnlineOptions) -> list[StreamResult]:
    """Each benchmark left out in turn (module docstring)."""
    names = sorted(set(data.eval_names))
    results = []
    for name in names:
        rows = [i for i, n in enumerate(data.eval_names) if n == name]
        others = [i for i, n in enumerate(data.eval_names) if n != name]
        calibration = data.subset(others) if others else data
        fitted = quality or calibrate(calibration, count, CalibrationOptions()).profiles
        strongest = int(calibration.split("train").perf.mean(axis=0).argmax()) \
            if "train" in calibration.splits else int(calibration.perf.mean(axis=0).argmax())
        results.append(_stream(data.subset(rows), name, fitted, count, strongest, options))
    return results


# --- outputs ------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


_GOAL = {True: "met", False: "**not met**", None: "n/a (nothing to save)"}


def summary_markdown(results: Sequence[StreamResult], options: OnlineOptions, command: str) -> str:
    h = options.horizon
    lines = [f"Command: `{command}`", "",
             f"Label rate {options.label_rate:g}, balanced_gap {options.balanced_gap:g}, prior strength "
             f"{options.prior_strength:g}, lower bound at {options.confidence:g}, mixing "
             f"{'on' if options.mixing else 'off'}, seed {options.seed}.", "",
             f"| left-out benchmark | rows | labels | learning: saving / retention after {h} | without learning "
             f"after {h} | best fixed policy at {_pct(options.target_retention)} after {h} (hindsight) | share of "
             "its saving | goal: >= 80 % of it at the target retention | ceiling of a lower-bound router after "
             f"{h} (share of the best fixed) | learning: saving / retention, whole stream |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        k = r.at(h)
        lines.append(
            f"| {r.benchmark} | {r.rows} | {r.labels} | {_pct(r.saving[k])} / {_pct(r.retention[k])} | "
            f"{_pct(r.static_saving[k])} / {_pct(r.static_retention[k])} | {r.best_fixed}: "
            f"{_pct(r.best_fixed_saving)} / {_pct(r.best_fixed_retention)} | {_pct(r.share(h))} | "
            f"{_GOAL[r.goal_met(h, options.target_retention)]} | {_pct(r.ceiling)} with {r.ceiling_model or '-'} "
            f"({_pct(r.ceiling_share())}) | {_pct(r.saving[-1])} / {_pct(r.retention[-1])} |")
    lines += ["", f"The ceiling is the most any router that moves traffic to a cheaper model only when a "
              f"{_pct(options.confidence)} lower bound learned from this stream's labels clears the target could "
              f"save over the first {h} requests, in the best case: none of the cheaper model's labelled answers "
              "worse than the reference's, and its wins over the reference known exactly "
              "(`certifiable_ceiling`). Where it is below 80 % of the best fixed saving, the goal cannot be met "
              "under that rule at this label rate."]
    return "\n".join(lines) + "\n"


def _write_csvs(results: Sequence[StreamResult], options: OnlineOptions, out: Path) -> None:
    with (out / "online_summary.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["benchmark", "rows", "labels", "horizon", "saving", "retention", "static_saving",
                         "static_retention", "best_fixed", "best_fixed_saving", "best_fixed_retention", "share",
                         "goal_met", "ceiling", "ceiling_model"])
        for r in results:
            k = r.at(options.horizon)
            writer.writerow([r.benchmark, r.rows, r.labels, k + 1, r.saving[k], r.retention[k], r.static_saving[k],
                             r.static_retention[k], r.best_fixed, r.best_fixed_saving, r.best_fixed_retention,
                             r.share(options.horizon), r.goal_met(options.horizon, options.target_retention),
                             r.ceiling, r.ceiling_model])
    with (out / "online_stream.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["benchmark", "requests", "saving", "retention", "static_saving", "static_retention"])
        for r in results:
            for i in range(r.rows):
                writer.writerow([r.benchmark, i + 1, r.saving[i], r.retention[i], r.static_saving[i],
                                 r.static_retention[i]])


def _plot(results: Sequence[StreamResult], options: OnlineOptions, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for r, color in zip(results, ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"), strict=False):
        x = np.arange(1, r.rows + 1)
        top.plot(x, 100 * r.saving, color=color, label=f"{r.benchmark}: learning")
        top.plot(x, 100 * r.static_saving, color=color, linestyle=":", label=f"{r.benchmark}: no learning")
        top.axhline(100 * r.best_fixed_saving, color=color, linewidth=0.6, linestyle="--")
        bottom.plot(x, 100 * r.retention, color=color)
        bottom.plot(x, 100 * r.static_retention, color=color, linestyle=":")
    for ax in (top, bottom):
        ax.axvline(options.horizon, color="gray", linewidth=0.6)
        ax.grid(alpha=0.3)
    bottom.axhline(100 * options.target_retention, color="red", linewidth=0.6, linestyle=":")
    top.set_ylabel("cumulative saving, %  (dashed: best fixed, hindsight)")
    bottom.set_ylabel("cumulative retention, %")
    bottom.set_xlabel("requests replayed")
    top.set_title(f"online replay, label rate {options.label_rate:g}", fontsize=9)
    top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "online.png", dpi=140)
    plt.close(fig)


def write_online(results: Sequence[StreamResult], options: OnlineOptions, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "online.md").write_text("# costproxy eval --online\n\n" + summary_markdown(results, options, command),
                                   "utf-8")
    _write_csvs(results, options, out)
    _plot(results, options, out)
