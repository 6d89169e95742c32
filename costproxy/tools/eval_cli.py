"""``costproxy calibrate`` and ``costproxy eval``: argument parsing, files in and out.

    costproxy calibrate --data ../shared/data/routerbench_subset_arc_mbpp_winogrande.csv.gz \\
        --out build/quality.routerbench.yaml
    costproxy eval --data ../shared/data/routerbench_subset_arc_mbpp_winogrande.csv.gz \\
        --profiles build/quality.routerbench.yaml --out build/eval/

Other ways to evaluate (``tools/crosseval.py``)::

    costproxy eval --train A.csv --test B.csv --out build/ab/         # fit on every row of A, report on B
    costproxy eval --data F.csv --leave-one-out --out build/loo/      # per benchmark (eval_name) of F
    costproxy eval --data test_only.csv --profiles P.yaml --balanced-gap 0.03 --out build/t/
    costproxy eval --data F.csv --profiles config/quality.yaml [--model-map data_model=profile_model,...]

``eval`` writes ``report.md`` (summary with 95 % intervals, the operating point chosen on train,
model usage, the curve), ``summary.csv``, ``curve.csv`` and the cost–quality picture
``curve.png`` / ``curve.svg`` into ``--out`` (see ``tools/eval_report.py``; for ``--leave-one-out``
also one directory per benchmark and ``auc.csv``).  Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from costproxy.errors import ConfigError
from costproxy.routing.quality import QualityProfiles, parse_quality
from costproxy.tools.calibrate import CalibrationOptions, TokenCount, approx_tokens, calibrate
from costproxy.tools.crosseval import (
    attach_registry,
    leave_one_out,
    parse_model_map,
    relabel,
    train_test,
)
from costproxy.tools.dataset import DatasetError, EvalSet, load_dataset
from costproxy.tools.eval_report import loo_markdown, summary_table, write_leave_one_out, write_outputs
from costproxy.tools.replay import EvalOptions, OperatingPoint, run_eval

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
    parser.add_argument("--text-model", action=argparse.BooleanOptionalAction, default=False,
                        help="also fit the n-gram text model (off by default: see docs/evaluation.md)")
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
            text_model=args.text_model, text_l2=args.text_l2,
        )
        result = calibrate(data, token_counter(args.tokenizer), options)
    except (DatasetError, ConfigError, ValueError) as exc:
        print(f"costproxy calibrate: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "costproxy calibrate " + shlex.join(argv)
    document = dict(result.document)
    document["fitted_on"] = {**document.get("fitted_on", {}), "command": command}
    args.out.write_text(_QUALITY_HEADER.format(command=command)
                        + yaml.safe_dump(document, sort_keys=False, allow_unicode=True), "utf-8")
    settings = result.profiles.calibration
    print(f"wrote {args.out}: {settings['train_rows']} train rows, {len(data.models)} models, "
          f"{settings['buckets']} difficulty bucket(s) per task, prior strength {settings['prior_strength']:g}")
    return 0


# --- eval -------------------------------------------------------------------------------------------


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costproxy eval",
                                     description="Replay a data set's test rows through analyze + select.")
    source = parser.add_argument_group("data (one of)")
    source.add_argument("--data", type=Path, default=None, help="a file with train and/or test rows")
    source.add_argument("--train", type=Path, default=None, help="with --test: fit on every row of this file")
    source.add_argument("--test", type=Path, default=None, help="with --train: report on every row of this file")
    parser.add_argument("--leave-one-out", action="store_true",
                        help="with --data: per benchmark (eval_name), calibrate on the others, report on it")
    parser.add_argument("--profiles", type=Path, default=None,
                        help="quality YAML, any (default: calibrate on the train rows now)")
    parser.add_argument("--model-map", default="", help="data_model=profile_model,... for a file without registry")
    parser.add_argument("--out", type=Path, required=True, help="directory for report.md, CSVs and the picture")
    parser.add_argument("--target-retention", type=float, default=0.98)
    parser.add_argument("--select-by", choices=("lower", "point"), default="lower",
                        help="admit a point when the lower bound (or point) of its train retention clears the target")
    parser.add_argument("--balanced-gap", type=float, default=None,
                        help="fix the operating point instead of choosing it on train (needed without train rows)")
    parser.add_argument("--quality-per-usd", type=float, default=None, help="with a fixed point: the value family")
    parser.add_argument("--buckets-grid", default="", help="e.g. 1,3,5: also choose the bucket count on train")
    parser.add_argument("--buckets", default="auto", help="when calibrating here: as costproxy calibrate")
    parser.add_argument("--prior-strength", default="auto", help="when calibrating here: as costproxy calibrate")
    parser.add_argument("--text-model", action=argparse.BooleanOptionalAction, default=False,
                        help="when calibrating here: also fit the n-gram text model")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="cl100k_base")
    parser.add_argument("--online", action="store_true",
                        help="replay each benchmark in order, learning from a sample of labels (tools/online_eval.py)")
    parser.add_argument("--label-rate", type=float, default=0.05,
                        help="--online: share of rows whose label is revealed")
    parser.add_argument("--replay-split", default=None, metavar="SPLIT",
                        help="--online: replay only this split's rows (e.g. test, with --profiles calibrated on train)")
    parser.add_argument("--no-mixing", action="store_true",
                        help="--online: no share of traffic for a measured cheaper model (learning.mixing: false)")
    parser.add_argument("--horizon", type=int, default=500, help="--online: requests after which the goal is checked")
    parser.add_argument("--online-prior-strength", type=float, default=20.0,
                        help="--online: observations the profile's estimate is worth (learning.prior_strength)")
    parser.add_argument("--online-confidence", type=float, default=0.95,
                        help="--online: level of the lower bound (learning.confidence)")
    return parser


def _load_profiles(path: Path | None, data: EvalSet, count: TokenCount,
                   calibration: CalibrationOptions, model_map: str) -> QualityProfiles:
    if path is None:
        return calibrate(data, count, calibration).profiles
    try:
        document = yaml.safe_load(path.read_text("utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return attach_registry(parse_quality(document, str(path)), data, count, parse_model_map(model_map))


def _eval_data(args: argparse.Namespace) -> EvalSet:
    if (args.train is None) != (args.test is None):
        raise ValueError("--train and --test go together")
    if (args.data is None) == (args.train is None):
        raise ValueError("give either --data or --train with --test")
    if args.leave_one_out and args.data is None:
        raise ValueError("--leave-one-out reads the benchmarks of one --data file")
    if args.data is not None:
        return load_dataset(args.data)
    return train_test(relabel(load_dataset(args.train), "train"), relabel(load_dataset(args.test), "test"))


def _eval_options(args: argparse.Namespace) -> EvalOptions:
    grid = tuple(int(x) for x in args.buckets_grid.split(",") if x.strip())
    point = None
    if args.balanced_gap is not None or args.quality_per_usd is not None:
        point = OperatingPoint(1.0 if args.balanced_gap is None else args.balanced_gap, args.quality_per_usd)
    return EvalOptions(target_retention=args.target_retention, select_by=args.select_by, folds=args.folds,
                       bootstrap=args.bootstrap, seed=args.seed, buckets_grid=grid, point=point)


def eval_main(argv: list[str]) -> int:
    args = _eval_parser().parse_args(argv)
    if args.online:
        return _online(args, argv)
    command = "costproxy eval " + shlex.join(argv)
    try:
        data = _eval_data(args)
        count = token_counter(args.tokenizer)
        buckets = _optional_number(args.buckets)
        calibration = CalibrationOptions(buckets=None if buckets is None else int(buckets),
                                         prior_strength=_optional_number(args.prior_strength),
                                         tokenizer=args.tokenizer, text_model=args.text_model)
        options = _eval_options(args)
        if args.leave_one_out:
            loo = leave_one_out(data, count, calibration, options)
        else:
            profiles = _load_profiles(args.profiles, data, count, calibration, args.model_map)
            report = run_eval(data, profiles, count, options)
    except (DatasetError, ConfigError, ValueError) as exc:
        print(f"costproxy eval: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.leave_one_out:
        write_leave_one_out(loo, args.out, command)
        print(loo_markdown(loo, command))
        print(f"\nwrote {args.out / 'report.md'} and one directory per left-out benchmark")
        return 0
    write_outputs(report, args.out, command)
    print(summary_table(report))
    print(f"\nwrote {args.out / 'report.md'}, summary.csv, curve.csv, curve.png, curve.svg")
    return 0


def _online(args: argparse.Namespace, argv: list[str]) -> int:
    from costproxy.tools.online_eval import OnlineOptions, run_online, summary_markdown, write_online

    try:
        if not 0.0 <= args.label_rate <= 1.0 or args.horizon < 1:
            raise ValueError("--label-rate must be in [0, 1] and --horizon at least 1")
        if not 0.5 <= args.online_confidence < 1.0 or args.online_prior_strength < 0:
            raise ValueError("--online-confidence must be in [0.5, 1) and --online-prior-strength >= 0")
        if args.data is None:
            raise ValueError("--online replays one --data file")
        data = load_dataset(args.data)
        if args.quality_per_usd is not None:
            raise ValueError("--online replays the balanced cost mode: --quality-per-usd is not supported there")
        if args.replay_split is not None:
            if args.profiles is None:
                raise ValueError("--replay-split needs --profiles (calibrated on another split)")
            if args.replay_split not in data.splits:
                raise ValueError(f"--replay-split {args.replay_split!r}: the file has splits "
                                 f"{', '.join(sorted(set(data.splits)))}")
            data = data.split(args.replay_split)
        count = token_counter(args.tokenizer)
        calibration = CalibrationOptions(buckets=None, prior_strength=None, tokenizer=args.tokenizer,
                                         text_model=args.text_model)
        profiles = (None if args.profiles is None
                    else _load_profiles(args.profiles, data, count, calibration, args.model_map))
        if args.balanced_gap is not None and not 0.0 <= args.balanced_gap <= 1.0:
            raise ValueError("--balanced-gap must be in [0, 1]")
        options = OnlineOptions(label_rate=args.label_rate, horizon=args.horizon,
                                target_retention=args.target_retention, seed=args.seed,
                                prior_strength=args.online_prior_strength, confidence=args.online_confidence,
                                mixing=not args.no_mixing,
                                **({} if args.balanced_gap is None else {"balanced_gap": args.balanced_gap}))
        results = run_online(data, profiles, count, options)
    except (DatasetError, ConfigError, ValueError) as exc:
        print(f"costproxy eval: error: {exc}", file=sys.stderr)
        return 2
    command = "costproxy eval " + shlex.join(argv)
    write_online(results, options, args.out, command)
    print(summary_markdown(results, options, command))
    print(f"wrote {args.out / 'online.md'}, online_summary.csv, online_stream.csv, online.png")
    return 0
