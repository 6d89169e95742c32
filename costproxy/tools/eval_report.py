"""What ``costproxy eval`` writes: ``report.md``, ``summary.csv``, ``curve.csv`` and the cost–quality
picture ``curve.png`` / ``curve.svg`` of one evaluation; for ``--leave-one-out`` the same per left-out
benchmark (one directory each) plus a top-level ``report.md`` with the pooled figures, the goals and
the per-prompt signal AUCs, and ``auc.csv``.

Percentages print with one decimal, interval bounds with two: a bound of 97.97 % must never read
"98.0 %" next to "not met".
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from costproxy.tools.crosseval import LeaveOneOut, Pooled
from costproxy.tools.replay import EvalReport, Interval, StrategyResult, frontier

# --- outputs ----------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _bound(value: float) -> str:
    return f"{100 * value:.2f}%"


def _range(interval: Interval) -> str:
    return f"{_pct(interval.point)} [{_bound(interval.low)}, {_bound(interval.high)}]"


def _ci(result: StrategyResult, what: str) -> str:
    return _range(result.saving if what == "saving" else result.retention)


def summary_table(report: EvalReport) -> str:
    lines = ["| strategy | saving vs always-strongest (95% CI) | quality retained (95% CI) | $ per 1k prompts | note |",
             "|---|---|---|---|---|"]
    for s in report.strategies:
        lines.append(f"| {s.name} | {_ci(s, 'saving')} | {_ci(s, 'retention')} | {s.cost_per_1k_usd:.3f} | {s.note} |")
    a = report.advantage_vs_mix
    lines.append(f"\nRouter saving minus query-blind mix saving at the same quality: {_points(a)}")
    if report.advantage_vs_random is not None:
        lines.append(f"Router saving minus random routing's saving at the same quality: "
                     f"{_points(report.advantage_vs_random)}")
    if report.hindsight:
        lines.append("No train rows: always-strongest, always-cheapest and the mixes are read off the test rows "
                     "(hindsight); the operating point was fixed, not chosen.")
    return "\n".join(lines)


def _points(interval: Interval) -> str:
    return f"{100 * interval.point:.1f} points [{100 * interval.low:.2f}, {100 * interval.high:.2f}]"


def _goals(report: EvalReport, target: float) -> list[str]:
    router = report.strategies[0]
    saving_ok = router.saving.point >= 0.30 and router.retention.low >= target
    advantage_ok = report.advantage_vs_mix.point >= 0.10
    return [
        f"- saving >= 30% with the lower bound of quality retained >= {_pct(target)}: "
        f"**{'met' if saving_ok else 'not met'}** (saving {_pct(router.saving.point)}, retention lower bound "
        f"{_bound(router.retention.low)})",
        f"- at least 10 points more saving than the best query-blind mix at the same quality: "
        f"**{'met' if advantage_ok else 'not met'}** ({100 * report.advantage_vs_mix.point:.1f} points)",
    ]


def _usage_lines(report: EvalReport) -> list[str]:
    lines = ["| benchmark | detected task types | models chosen by the router |", "|---|---|---|"]
    for name in sorted(report.usage):
        tasks = ", ".join(f"{t} {n}" for t, n in sorted(report.tasks.get(name, {}).items(), key=lambda x: -x[1]))
        models = ", ".join(f"{m} {n}" for m, n in sorted(report.usage[name].items(), key=lambda x: -x[1]))
        lines.append(f"| {name} | {tasks} | {models} |")
    return lines


def _point_sentence(report: EvalReport) -> str:
    o = report.options
    if o.point is not None:
        return f"Operating point fixed by the command: `{report.chosen.label}`; profiles {report.profiles}."
    return (f"Operating point chosen on train only ({o.folds}-fold cross-fitted when the profiles were calibrated, "
            f"admitted when the {'lower 95% bound' if o.select_by == 'lower' else 'point estimate'} of train "
            f"retention >= {_pct(o.target_retention)}, then the largest train saving): profiles {report.profiles}, "
            f"`{report.chosen.label}`.")


def report_markdown(report: EvalReport, command: str) -> str:
    o = report.options
    lines = [
        f"# costproxy eval: {Path(report.source).name}", "",
        f"Command: `{command}`", "",
        f"Train {report.n_train} prompts, test {report.n_test} prompts. Strongest model (best train score): "
        f"`{report.strongest}`; cheapest (lowest train cost): `{report.cheapest}`.",
        _point_sentence(report), "",
        "## Test split, 95% bootstrap intervals (" + f"{o.bootstrap} resamples, seed {o.seed})", "",
        summary_table(report), "", "## Goals (issue 4)", "", *_goals(report, o.target_retention), "",
        "## Profiles tried on train", "", "| profiles | chosen point | train saving | train retention |",
        "|---|---|---|---|",
        *(f"| {label} | `{point}` | {_pct(sv)} | {_pct(rt)} |" for label, point, sv, rt in report.variants), "",
        "## What the router did on test", "", *_usage_lines(report), "",
        "## Cost–quality curve (test; see curve.csv for every point, curve.png / curve.svg)", "",
        "| operating point | train saving | train retention | test saving | test retention |", "|---|---|---|---|---|",
    ]
    for p in report.curve[::3]:
        lines.append(f"| `{p.point.label}` | {_pct(p.train_saving)} | {_pct(p.train_retention)} | "
                     f"{_pct(p.test_saving)} | {_pct(p.test_retention)} |")
    return "\n".join(lines) + "\n"


def _write_csvs(report: EvalReport, out: Path) -> None:
    with (out / "summary.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["strategy", "saving", "saving_low", "saving_high", "retention", "retention_low",
                         "retention_high", "score", "cost_per_1k_usd", "note"])
        for s in report.strategies:
            writer.writerow([s.name, s.saving.point, s.saving.low, s.saving.high, s.retention.point, s.retention.low,
                             s.retention.high, s.score.point, s.cost_per_1k_usd, s.note])
    with (out / "curve.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["family", "balanced_gap", "quality_per_usd", "train_saving", "train_retention",
                         "test_saving", "test_retention"])
        for p in report.curve:
            writer.writerow([p.point.family, p.point.gap, "" if p.point.quality_per_usd is None else
                             p.point.quality_per_usd, p.train_saving, p.train_retention, p.test_saving,
                             p.test_retention])


def _plot(report: EvalReport, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for family, style in (("gap", "-"), ("value", "--")):
        pts = sorted((1 - p.test_saving, p.test_retention) for p in report.curve if p.point.family == family)
        ax.plot([100 * x for x, _ in pts], [100 * y for _, y in pts], style, label=f"router, {family} family (test)")
    xs = [100 * (1 - sv) for _, sv, _ in report.single_models]
    hull = frontier(np.asarray([1 - sv for _, sv, _ in report.single_models]),
                    np.asarray([rt for _, _, rt in report.single_models]))
    ax.plot([xs[j] for j in hull], [100 * report.single_models[j][2] for j in hull], ":", color="gray",
            label="query-blind frontier (test, hindsight)")
    ax.scatter(xs, [100 * rt for _, _, rt in report.single_models], s=14, color="gray", label="single models")
    for (name, sv, rt) in report.single_models:
        ax.annotate(name.split("/")[-1], (100 * (1 - sv), 100 * rt), fontsize=6, color="gray")
    for s, marker in zip(report.strategies[2:], ("x", "s", "^", "v", "*"), strict=False):
        ax.scatter([100 * (1 - s.saving.point)], [100 * s.retention.point], marker=marker, label=s.name)
    r = report.strategies[0]
    ax.errorbar([100 * (1 - r.saving.point)], [100 * r.retention.point],
                xerr=[[100 * (r.saving.high - r.saving.point)], [100 * (r.saving.point - r.saving.low)]],
                yerr=[[100 * (r.retention.point - r.retention.low)], [100 * (r.retention.high - r.retention.point)]],
                fmt="o", color="black", capsize=3, label=f"chosen on train: {report.chosen.label}")
    ax.axhline(100 * report.options.target_retention, color="red", linewidth=0.6, linestyle=":")
    ax.set_xlabel("cost, % of always-strongest")
    ax.set_ylabel("quality, % of always-strongest")
    ax.set_title(f"{Path(report.source).name}: test split ({report.n_test} prompts)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=140)
    fig.savefig(out / "curve.svg")
    plt.close(fig)


def write_outputs(report: EvalReport, out: Path, command: str) -> None:
    (out / "report.md").write_text(report_markdown(report, command), "utf-8")
    _write_csvs(report, out)
    _plot(report, out)


# --- leave one benchmark out -------------------------------------------------------------------------


def _fold_line(name: str, report: EvalReport, target: float) -> str:
    router = report.strategies[0]
    random_q = next(s for s in report.strategies if s.name == "random at router quality")
    adv = report.advantage_vs_random
    assert adv is not None
    ok = router.retention.low >= target and adv.point >= 0.05
    return (f"| {name} | {report.n_test} | {_range(router.saving)} | {_range(router.retention)} | "
            f"{_range(random_q.saving)} | {_points(adv)} | `{report.chosen.label}` | {'met' if ok else 'not met'} |")


def _pooled_line(pooled: Pooled, target: float) -> str:
    ok = pooled.retention.low >= target and pooled.advantage_vs_random.point >= 0.05
    return (f"| **pooled** | {pooled.rows} | {_range(pooled.saving)} | {_range(pooled.retention)} | "
            f"{_range(pooled.random_saving)} | {_points(pooled.advantage_vs_random)} | (per fold) | "
            f"{'met' if ok else 'not met'} |")


def _auc(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def auc_lines(loo: LeaveOneOut) -> list[str]:
    lines = ["| left-out benchmark | model | detected task | rows | AUC profiles only | AUC with text model |",
             "|---|---|---|---|---|---|"]
    for fold in loo.folds:
        for a in fold.aucs:
            lines.append(f"| {fold.benchmark} | {a.model} | {a.task} | {a.rows} | {_auc(a.without_text)} | "
                         f"{_auc(a.with_text)} |")
    return lines


def loo_markdown(loo: LeaveOneOut, command: str) -> str:
    target = loo.options.target_retention
    lines = [
        f"# costproxy eval --leave-one-out: {Path(loo.source).name}", "", f"Command: `{command}`", "",
        "Each benchmark in turn is left out: profiles (and the text model) are calibrated on every row of the "
        "others, the operating point is chosen on them (cross-fitted), and every row of the left-out benchmark "
        "is routed and scored. Pooled: the left-out rows of all folds together, each routed by its own fold.", "",
        f"Goal: retention lower bound >= {_pct(target)} and saving at least 5 points above random routing at the "
        "same retention, on every left-out benchmark.", "",
        "| left out | rows | saving (95% CI) | retention (95% CI) | random at same retention: saving | "
        "router minus random | operating point | goal |", "|---|---|---|---|---|---|---|---|",
        *(_fold_line(f.benchmark, f.report, target) for f in loo.folds),
        _pooled_line(loo.pooled, target), "",
        "## Per-prompt signals on the left-out benchmark (AUC of the estimated quality for the actual score)", "",
        *auc_lines(loo), "",
        "Per-fold details (baselines, curve, model usage): the `<benchmark>/report.md` beside this file.",
    ]
    return "\n".join(lines) + "\n"


def write_leave_one_out(loo: LeaveOneOut, out: Path, command: str) -> None:
    (out / "report.md").write_text(loo_markdown(loo, command), "utf-8")
    with (out / "auc.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["left_out", "model", "task", "rows", "auc_profiles", "auc_text"])
        for fold in loo.folds:
            for a in fold.aucs:
                writer.writerow([fold.benchmark, a.model, a.task, a.rows, a.without_text, a.with_text])
    for fold in loo.folds:
        directory = out / fold.benchmark.replace("/", "_")
        directory.mkdir(parents=True, exist_ok=True)
        write_outputs(fold.report, directory, f"{command}  (fold: {fold.benchmark} left out)")
