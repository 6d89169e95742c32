"""Calibration and replay on a small synthetic data set the test writes itself."""

from __future__ import annotations

import csv
import gzip
import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from costproxy.analyzer.profile import analyze
from costproxy.analyzer.tasks import FEATURE_NAMES
from costproxy.routing.quality import parse_quality
from costproxy.tools.calibrate import CalibrationOptions, analyze_rows, approx_tokens, calibrate
from costproxy.tools.dataset import DatasetError, decode_prompt, load_dataset, read_dataset
from costproxy.tools.eval_cli import calibrate_main, eval_main
from costproxy.tools.replay import EvalOptions, OperatingPoint, frontier, mix_weights, run_eval

MODELS = ("strong", "coder", "weak")
COST = {"strong": 0.010, "coder": 0.001, "weak": 0.0004}
CODE = ["Write a python function to reverse a string.", "Write a python function to count vowels in a word.",
        "Write a function to merge two sorted lists in Java.", "Implement a binary search in Rust."]
QA = ["What is the capital of {}?", "Who was the first president of {}?", "Which river flows through {}?"]
PLACES = ["France", "Peru", "Kenya", "Japan", "Chile", "Norway", "Egypt", "Canada", "India", "Spain"]


def synthetic_rows(n: int = 240, seed: int = 7) -> list[dict[str, str]]:
    """Code prompts: the cheap coder is as good as the strong model.  QA: only strong is good."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        is_code = i % 2 == 0
        prompt = CODE[i % len(CODE)] if is_code else QA[i % len(QA)].format(PLACES[i % len(PLACES)])
        p_correct = {"strong": 0.9, "coder": 0.9 if is_code else 0.3, "weak": 0.5}
        row = {"sample_id": str(i), "eval_name": "code" if is_code else "qa",
               "prompt": repr([prompt]) if i % 3 else prompt,
               "split": "train" if i % 5 < 3 else "test", "dup_sample_id": "False"}
        for m in MODELS:
            row[f"perf::{m}"] = str(float(rng.random() < p_correct[m]))
            row[f"cost_usd::{m}"] = f"{COST[m] * (1.5 if is_code else 1.0):.6f}"
            row[f"resp_chars::{m}"] = "400" if is_code else "40"
        rows.append(row)
    rows.append({**rows[0], "sample_id": "dup", "dup_sample_id": "True"})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def dataset_path(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "synthetic.csv.gz", synthetic_rows())


# --- data set ----------------------------------------------------------------------------------


def test_reads_the_documented_format(dataset_path: Path) -> None:
    data = load_dataset(dataset_path)
    assert data.models == MODELS
    assert len(data) == 240  # the duplicate row is dropped
    assert data.perf.shape == (240, 3) and data.cost.shape == (240, 3)
    assert data.out_chars is not None
    assert len(data.split("train")) + len(data.split("test")) == 240
    assert data.messages(1) == [{"role": "user", "content": QA[1].format(PLACES[1])}]
    assert set(data.eval_names) == {"code", "qa"}


def test_decode_prompt() -> None:
    assert decode_prompt("['a', 'b']") == ("a", "b")
    assert decode_prompt('["x"]') == ("x",)
    assert decode_prompt("[not a list") == ("[not a list",)
    assert decode_prompt("[1, 2]") == ("[1, 2]",)
    assert decode_prompt("plain") == ("plain",)


def test_dataset_errors_name_file_and_place(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing column 'split'"):
        read_dataset(["prompt,perf::a,cost_usd::a", "hi,1,0.1"], "x.csv")
    with pytest.raises(DatasetError, match="no cost_usd::a"):
        read_dataset(["prompt,split,perf::a", "hi,train,1"], "x.csv")
    with pytest.raises(DatasetError, match=r"x\.csv: line 2, column perf::a"):
        read_dataset(["prompt,split,perf::a,cost_usd::a", "hi,train,oops,0.1"], "x.csv")
    with pytest.raises(DatasetError, match="no rows"):
        read_dataset(["prompt,split,perf::a,cost_usd::a", "hi,dev,1,0.1"], "x.csv")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "missing.csv")


# --- calibration -------------------------------------------------------------------------------


def test_analyzer_detects_the_synthetic_tasks(dataset_path: Path) -> None:
    data = load_dataset(dataset_path)
    profiles = analyze_rows(data)
    for name, profile in zip(data.eval_names, profiles, strict=True):
        assert profile.task_type == ("code_generation" if name == "code" else "question_answering")
    assert profiles[0].input_tokens == approx_tokens(data.messages(0))


def test_calibrate_fits_task_profiles_and_prices(dataset_path: Path) -> None:
    result = calibrate(load_dataset(dataset_path), options=CalibrationOptions(buckets=2, prior_strength=5))
    quality = result.profiles
    coder_code = quality.lookup("coder", "economy", "code_generation", 0)[0]
    coder_qa = quality.lookup("coder", "economy", "question_answering", 0)[0]
    assert coder_code > 0.7 > 0.5 > coder_qa
    assert quality.registry is not None
    registry = quality.registry.models
    assert registry["strong"].tier == "premium" and registry["weak"].tier == "economy"
    assert registry["strong"].price.input > registry["coder"].price.input > 0
    assert quality.calibration["buckets"] == 2
    again = parse_quality(yaml.safe_load(yaml.safe_dump(result.document)), "q.yaml")
    assert again.expected("coder", "economy", "code_generation", 0.0) == pytest.approx(
        quality.expected("coder", "economy", "code_generation", 0.0), abs=1e-4)
    assert again.registry is not None and set(again.registry.models) == set(MODELS)


def test_calibrate_chooses_granularity_by_cross_validation(dataset_path: Path) -> None:
    result = calibrate(load_dataset(dataset_path))
    settings = result.profiles.calibration
    assert settings["buckets"] in (1, 2, 3, 4, 5, 6, 8)
    assert len(settings["cross_validated_brier"]) == 35


# --- replay ------------------------------------------------------------------------------------


def small_options(**changes: object) -> EvalOptions:
    points = (*(OperatingPoint(g) for g in (0.0, 0.05, 0.1, 0.3, 0.6)),
              *(OperatingPoint(1.0, r) for r in (1.0, 10.0, 100.0)))
    return replace(EvalOptions(points=points, bootstrap=300, folds=3), **changes)  # type: ignore[arg-type]


def test_router_beats_query_blind_baselines(dataset_path: Path) -> None:
    data = load_dataset(dataset_path)
    quality = calibrate(data, options=CalibrationOptions(buckets=1, prior_strength=5)).profiles
    report = run_eval(data, quality, options=small_options(target_retention=0.9))
    names = [s.name for s in report.strategies]
    assert names[0].startswith("router") and "oracle" in names and "always-cheapest" in names
    router = report.strategies[0]
    assert report.strongest == "strong" and report.cheapest == "weak"
    assert router.saving.point > 0.3  # code goes to the coder
    assert report.usage["code"].get("coder", 0) > 0 and report.usage["qa"].get("strong", 0) > 0
    for s in report.strategies:
        assert s.saving.low <= s.saving.point + 1e-9 and s.saving.point <= s.saving.high + 1e-9
        assert s.retention.low <= s.retention.point + 1e-9 <= s.retention.high + 2e-9
    oracle = report.strategies[-1]
    assert oracle.saving.point >= router.saving.point
    assert report.advantage_vs_mix.point > 0.1
    assert len(report.curve) == len(small_options().points)


def test_operating_point_is_chosen_on_train_only(dataset_path: Path) -> None:
    data = load_dataset(dataset_path)
    quality = calibrate(data, options=CalibrationOptions(buckets=1, prior_strength=5)).profiles
    report = run_eval(data, quality, options=small_options(target_retention=0.9))
    # Scramble the test scores: the choice must not change.
    test_rows = np.array([s == "test" for s in data.splits])
    scrambled_perf = data.perf.copy()
    scrambled_perf[test_rows] = 1.0 - scrambled_perf[test_rows]
    scrambled = replace(data, perf=scrambled_perf)
    assert run_eval(scrambled, quality, options=small_options(target_retention=0.9)).chosen == report.chosen


def test_buckets_grid_refits_profiles(dataset_path: Path) -> None:
    data = load_dataset(dataset_path)
    quality = calibrate(data, options=CalibrationOptions(buckets=1, prior_strength=5)).profiles
    report = run_eval(data, quality, options=small_options(target_retention=0.9, buckets_grid=(1, 2)))
    assert [v[0] for v in report.variants] == [
        "refitted, 1 bucket(s), predictors", "refitted, 2 bucket(s), predictors",
        "refitted, 1 bucket(s)", "refitted, 2 bucket(s)"]


def which_rows(n: int = 300, seed: int = 3) -> list[dict[str, str]]:
    """QA only: the cheap coder is right exactly on "Which …" questions, the strong model always."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        which = i % 2 == 0
        template = QA[2] if which else QA[i % 2]
        prompt = template.format(PLACES[i % len(PLACES)]) + " " + "very " * int(rng.integers(0, 4))
        p_correct = {"strong": 0.95, "coder": 0.95 if which else 0.2, "weak": 0.4}
        row = {"sample_id": str(i), "eval_name": "qa", "prompt": prompt,
               "split": "train" if i % 5 < 3 else "test", "dup_sample_id": "False"}
        for m in MODELS:
            row[f"perf::{m}"] = str(float(rng.random() < p_correct[m]))
            row[f"cost_usd::{m}"] = f"{COST[m]:.6f}"
        rows.append(row)
    return rows


def test_calibrate_fits_per_request_predictors(tmp_path: Path) -> None:
    data = load_dataset(write_csv(tmp_path / "which.csv", which_rows()))
    result = calibrate(data, options=CalibrationOptions(buckets=1, prior_strength=5))
    quality = result.profiles
    assert ("coder", "question_answering") in quality.predictors
    which, what = (analyze({"messages": [{"role": "user", "content": q.format("Peru")}]}, 20).features
                   for q in (QA[2], QA[0]))
    assert len(which) == len(FEATURE_NAMES)
    p_which, source = quality.estimate("coder", "economy", "question_answering", 0, which)
    p_what, _ = quality.estimate("coder", "economy", "question_answering", 0, what)
    assert source == "predictor" and p_which > 0.7 and p_what < 0.45
    again = parse_quality(yaml.safe_load(yaml.safe_dump(result.document)), "q.yaml")
    assert again.estimate("coder", "economy", "question_answering", 0, which)[0] == pytest.approx(p_which, abs=1e-3)
    without = calibrate(data, options=CalibrationOptions(buckets=1, prior_strength=5, predictors=False))
    assert not without.profiles.predictors and without.profiles.calibration["predictors"] is False


def test_predictors_route_each_prompt(tmp_path: Path) -> None:
    data = load_dataset(write_csv(tmp_path / "which.csv", which_rows()))
    quality = calibrate(data, options=CalibrationOptions(buckets=1, prior_strength=5)).profiles
    report = run_eval(data, quality, options=small_options(target_retention=0.95))
    router = report.strategies[0]
    assert report.usage["qa"].get("coder", 0) > 0 and report.usage["qa"].get("strong", 0) > 0
    assert router.saving.point > 0.3 and router.retention.point > 0.9


def test_frontier_and_mix() -> None:
    cost = np.array([1.0, 2.0, 10.0, 3.0])
    score = np.array([0.5, 0.8, 0.9, 0.6])
    assert frontier(cost, score) == [0, 1, 2]


def test_mix_weights_reach_the_target(dataset_path: Path) -> None:
    train = load_dataset(dataset_path).split("train")
    scores = train.perf.mean(axis=0)
    target = float(scores.max() - 0.05)
    weights = mix_weights(train, target)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert sum(w * scores[j] for j, w in weights.items()) == pytest.approx(target)


# --- command line ------------------------------------------------------------------------------


def test_commands_write_profiles_report_and_picture(dataset_path: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "build" / "quality.yaml"
    assert calibrate_main(["--data", str(dataset_path), "--out", str(profiles), "--tokenizer", "approx",
                           "--buckets", "2", "--prior-strength", "5", "--as-of", "2026-01-01"]) == 0
    text = profiles.read_text()
    assert text.startswith("# Quality profiles CALIBRATED") and "as_of: '2026-01-01'" in text
    out = tmp_path / "eval"
    assert eval_main(["--data", str(dataset_path), "--profiles", str(profiles), "--out", str(out),
                      "--tokenizer", "approx", "--bootstrap", "200", "--folds", "3"]) == 0
    for name in ("report.md", "summary.csv", "curve.csv", "curve.png", "curve.svg"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "costproxy eval --data" in report and "query-blind mix" in report and "oracle" in report
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_commands_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,perf::a\nx,1\n")
    assert calibrate_main(["--data", str(bad), "--out", str(tmp_path / "q.yaml"), "--tokenizer", "approx"]) == 2
    assert "missing column 'split'" in capsys.readouterr().err
    assert eval_main(["--data", str(bad), "--out", str(tmp_path / "e"), "--tokenizer", "approx"]) == 2


def test_evaluation_imports_no_network_stack() -> None:
    code = ("import sys, costproxy.tools.eval_cli, costproxy.tools.replay;"
            "bad = [m for m in ('aiohttp', 'redis') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
