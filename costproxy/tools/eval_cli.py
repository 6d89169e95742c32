"""``costproxy calibrate`` and ``costproxy eval``: argument parsing, files in and out.

    costproxy calibrate --data ../shared/data/routerbench_subset_arc_mbpp_winogrande.csv.gz \\
        --out build/quality.routerbench.yaml
    costproxy eval --data ../shared/data/routerbench_subset_arc_mbpp_winogrande.csv.gz \\
        --profiles build/quality.routerbench.yaml --out build/eval/

``eval`` writes ``report.md`` (summary with 95 % intervals, the operating point chosen on train,
model usage, the curve), ``summary.csv``, ``curve.csv`` and the cost–quality picture
``curve.png`` / ``curve.svg`` into ``--out``.  Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from costproxy.errors import ConfigError
from costproxy.routing.quality import QualityProfiles, parse_quality
from costproxy.tools.calibrate import CalibrationOptions, TokenCount, approx_tokens, calibrate
from costproxy.tools.dataset import DatasetError, EvalSet, load_dataset
from costproxy.tools.replay import EvalOptions, EvalReport, StrategyResult, frontier, run_eval

TOKENIZERS = ("cl100k_base", "o200k_base", "approx")
_QUALITY_HEADER = """\
# Quality profiles CALIBRATED by `costproxy calibrate` (format: costproxy/routing/quality.py).
# Command: {command}
# Fitted on the train split only; the `registry` section prices the data set's models from
# their train-split costs (they are not in config/models.yaml). Check with `costproxy eval`.
"""


def token_counter(name: str) -> TokenCount:
    """``approx`` (4 characters per token) or a tiktoken encoding's chat count."""
    if name == "approx":
        return approx_tokens
    from costproxy.analyzer.encodings import load_encodings
    from costproxy.analyzer.tokens import TokenCounter

    counter = TokenCounter(load_encodings([name]))

    def count(messages: Sequence[Mapping[str, Any]]) -> int:
        return counter.count_chat(list(messages), name)

    return count


def _optional_number(text: str) -> float | None:
    return None if text == "auto" else float(text)


def _calibrate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costproxy calibrate",
                                     description="Fit quality profiles on the train split of a data set.")
    parser.add_argument("--data", type=Path, required=True, help="CSV or CSV.gz data set (see evaluation/dataset.py)")
    parser.add_argument("--out", type=Path, required=True, help="quality YAML to write")
    parser.add_argument("--buckets", default="auto", help="difficulty buckets per task, or auto (cross-validated)")
    parser.add_argument("--prior-strength", default="auto", help="shrinkage pseudo-rows, or auto (cross-validated)")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="cl100k_base", help="how prompt tokens are counted")
    parser.add_argument("--no-text-model", action="store_true", help="skip the n-gram text model")
    parser.add_argument("--text-l2", type=float, default=CalibrationOptions().text_l2,
                        help="L2 penalty of the text model (mean log-loss + l2/2 |w|^2)")
    parser.add_argument("--as-of", type=date.fromisoformat, default=None, help="price date for the registry section")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def calibrate_main(argv: list[str]) -> int:
    args = _calibrate_parser().parse_args(argv)
    try:
        data = load_dataset(args.data)
        buckets = _optional_number(args.buckets)
        options = CalibrationOptions(
            buckets=None if buckets is None else int(buckets), prior_strength=_optional_number(args.prior_strength),
            tokenizer=args.tokenizer, as_of=args.as_of, seed=args.seed,
            text_model=not args.no_text_model, text_l2=args.text_l2,
        )
        result = calibrate(data, token_counter(args.tokenizer), options)
    except (DatasetError, ConfigError, ValueError) as exc:
        print(f"costproxy calibrate: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = _QUALITY_HEADER.format(command="costproxy calibrate " + shlex.join(argv))
    args.out.write_text(header + yaml.safe_dump(result.document, sort_keys=False, allow_unicode=True), "utf-8")
    settings = result.profiles.calibration
    print(f"wrote {args.out}: {settings['train_rows']} train rows, {len(data.models)} models, "
          f"{settings['buckets']} difficulty bucket(s) per task, prior strength {settings['prior_strength']:g}")
    return 0


# --- eval -------------------------------------------------------------------------------------------


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costproxy eval",
                                     description="Replay a data set's test split through analyze + select.")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--profiles", type=Path, default=None,
                        help="quality YAML from costproxy calibrate (default: calibrate on the train split now)")
    parser.add_argument("--out", type=Path, required=True, help="directory for report.md, CSVs and the picture")
    parser.add_argument("--target-retention", type=float, default=0.98)
    parser.add_argument("--select-by", choices=("lower", "point"), default="lower",
                        help="admit a point when the lower bound (or point) of its train retention clears the target")
    parser.add_argument("--buckets-grid", default="", help="e.g. 1,3,5: also choose the bucket count on train")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="cl100k_base")
    return parser


def _load_profiles(path: Path | None, data: EvalSet, count: TokenCount, tokenizer: str) -> QualityProfiles:
    if path is None:
        return calibrate(data, count, CalibrationOptions(tokenizer=tokenizer)).profiles
    try:
        document = yaml.safe_load(path.read_text("utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_quality(document, str(path))


def eval_main(argv: list[str]) -> int:
    args = _eval_parser().parse_args(argv)
    try:
        grid = tuple(int(x) for x in args.buckets_grid.split(",") if x.strip())
        data = load_dataset(args.data)
        count = token_counter(args.tokenizer)
        profiles = _load_profiles(args.profiles, data, count, args.tokenizer)
        options = EvalOptions(target_retention=args.target_retention, select_by=args.select_by, folds=args.folds,
                              bootstrap=args.bootstrap, seed=args.seed, buckets_grid=grid)
        report = run_eval(data, profiles, count, options)
    except (DatasetError, ConfigError, ValueError) as exc:
        print(f"costproxy eval: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    command = "costproxy eval " + shlex.join(argv)
    write_outputs(report, args.out, command)
    print(summary_table(report))
    print(f"\nwrote {args.out / 'report.md'}, summary.csv, curve.csv, curve.png, curve.svg")
    return 0


# --- outputs ----------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _ci(result: StrategyResult, what: str) -> str:
    interval = result.saving if what == "saving" else result.retention
    return f"{_pct(interval.point)} [{_pct(interval.low)}, {_pct(interval.high)}]"


def summary_table(report: EvalReport) -> str:
    lines = ["| strategy | saving vs always-strongest (95% CI) | quality retained (95% CI) | $ per 1k prompts | note |",
             "|---|---|---|---|---|"]
    for s in report.strategies:
        lines.append(f"| {s.name} | {_ci(s, 'saving')} | {_ci(s, 'retention')} | {s.cost_per_1k_usd:.3f} | {s.note} |")
    a = report.advantage_vs_mix
    lines.append(f"\nRouter saving minus query-blind mix saving at the same quality: {100 * a.point:.1f} points "
                 f"[{100 * a.low:.1f}, {100 * a.high:.1f}]")
    return "\n".join(lines)


def _goals(report: EvalReport, target: float) -> list[str]:
    router = report.strategies[0]
    saving_ok = router.saving.point >= 0.30 and router.retention.low >= target
    advantage_ok = report.advantage_vs_mix.point >= 0.10
    return [
        f"- saving >= 30% with the lower bound of quality retained >= {_pct(target)}: "
        f"**{'met' if saving_ok else 'not met'}** (saving {_pct(router.saving.point)}, retention lower bound "
        f"{_pct(router.retention.low)})",
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


def report_markdown(report: EvalReport, command: str) -> str:
    o = report.options
    lines = [
        f"# costproxy eval: {Path(report.source).name}", "",
        f"Command: `{command}`", "",
        f"Train {report.n_train} prompts, test {report.n_test} prompts. Strongest model (best train score): "
        f"`{report.strongest}`; cheapest (lowest train cost): `{report.cheapest}`.",
        f"Operating point chosen on train only ({o.folds}-fold cross-fitted, admitted when the "
        f"{'lower 95% bound' if o.select_by == 'lower' else 'point estimate'} of train retention >= "
        f"{_pct(o.target_retention)}, then the largest train saving): profiles {report.profiles}, "
        f"`{report.chosen.label}`.", "",
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
