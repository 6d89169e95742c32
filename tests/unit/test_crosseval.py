"""``costproxy eval`` across distributions, on small synthetic files the tests write themselves."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from costproxy.errors import ConfigError
from costproxy.routing.quality import parse_quality
from costproxy.tools.crosseval import parse_model_map, train_test
from costproxy.tools.dataset import load_dataset
from costproxy.tools.eval_cli import calibrate_main, eval_main
from costproxy.tools.eval_report import _range
from costproxy.tools.replay import Interval, RowOutcomes, random_at_quality
from tests.unit.test_evaluation import synthetic_rows, write_csv

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--tokenizer", "approx", "--bootstrap", "200", "--buckets", "2", "--prior-strength", "5"]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rows = synthetic_rows()
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    return {
        "all": write_csv(tmp_path / "all.csv.gz", rows),
        "a": write_csv(tmp_path / "a.csv", train),
        "b": write_csv(tmp_path / "b.csv", test),
    }


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open(encoding="utf-8") as handle:
        return {row["strategy"]: row for row in csv.DictReader(handle)}


def test_train_on_one_file_report_on_another(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ab"
    assert eval_main(["--train", str(files["a"]), "--test", str(files["b"]), "--target-retention", "0.9",
                      "--out", str(out), *FAST]) == 0
    report = (out / "report.md").read_text()
    a, b = load_dataset(files["a"]), load_dataset(files["b"])
    assert f"Train {len(a)} prompts, test {len(b)} prompts" in report
    summary = _summary(out)
    router = summary["router (analyze + select)"]
    assert float(router["saving"]) > 0.2  # code prompts go to the cheap coder
    assert "random at router quality" in summary
    assert "Router saving minus random routing's saving at the same quality" in report


def test_train_test_combines_rows_and_reorders_columns(files: dict[str, Path]) -> None:
    a, b = load_dataset(files["a"]), load_dataset(files["b"])
    b_reordered = type(b)(source=b.source, models=b.models[::-1], prompts=b.prompts, splits=b.splits,
                          eval_names=b.eval_names, perf=b.perf[:, ::-1], cost=b.cost[:, ::-1])
    both = train_test(a, b_reordered)
    assert both.splits.count("train") == len(a) and both.splits.count("test") == len(b)
    assert np.array_equal(both.perf[len(a):], b.perf) and both.out_chars is None
    with pytest.raises(ValueError, match="lacks the models"):
        train_test(a, type(b)(source="x", models=("strong",), prompts=b.prompts, splits=b.splits,
                              eval_names=b.eval_names, perf=b.perf[:, :1], cost=b.cost[:, :1]))


def test_leave_one_out_reports_each_benchmark_and_pooled(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "loo"
    assert eval_main(["--data", str(files["all"]), "--leave-one-out", "--text-model", "--out", str(out), *FAST]) == 0
    report = (out / "report.md").read_text()
    assert "| code | 120 |" in report and "| qa | 120 |" in report and "| **pooled** | 240 |" in report
    assert (out / "code" / "report.md").exists() and (out / "qa" / "curve.png").exists()
    with (out / "auc.csv").open(encoding="utf-8") as handle:
        aucs = list(csv.DictReader(handle))
    assert {row["left_out"] for row in aucs} == {"code", "qa"}
    assert {row["model"] for row in aucs} == {"strong", "coder", "weak"}
    # the left-out benchmark is one task: profiles alone cannot rank its prompts, the AUC is 0.5
    all_rows = [row for row in aucs if row["task"] == "all"]
    assert all(float(row["auc_profiles"]) == pytest.approx(0.5) for row in all_rows if row["auc_profiles"])


def test_a_test_only_file_needs_a_fixed_point(files: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    profiles = tmp_path / "q.yaml"
    assert calibrate_main(["--data", str(files["all"]), "--out", str(profiles), "--tokenizer", "approx",
                           "--buckets", "2", "--prior-strength", "5"]) == 0
    fitted_on = yaml.safe_load(profiles.read_text())["fitted_on"]
    assert fitted_on["data"] == str(files["all"]) and fitted_on["split"] == "train (144 rows)"
    assert fitted_on["command"].startswith("costproxy calibrate --data ") and fitted_on["date"]
    assert parse_quality(yaml.safe_load(profiles.read_text()), "q").fitted_on == fitted_on
    test_only = write_csv(tmp_path / "t.csv", [r for r in synthetic_rows() if r["split"] == "test"])
    args = ["--data", str(test_only), "--profiles", str(profiles), "--tokenizer", "approx", "--bootstrap", "200"]
    assert eval_main([*args, "--out", str(tmp_path / "x")]) == 2
    assert "no train rows to choose the operating point on" in capsys.readouterr().err
    out = tmp_path / "fixed"
    assert eval_main([*args, "--balanced-gap", "0.05", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "hindsight" in report and "balanced_gap=0.05, fixed" in report
    assert "Operating point fixed by the command" in report
    assert "Train 0 prompts" in report


def test_the_shipped_priors_can_be_evaluated(files: dict[str, Path], tmp_path: Path) -> None:
    shipped = str(ROOT / "config" / "quality.yaml")
    out = tmp_path / "shipped"
    mapping = "strong=gpt-4o,coder=gpt-4o-mini,weak=gpt-4.1-mini"
    assert eval_main(["--data", str(files["all"]), "--profiles", shipped, "--model-map", mapping,
                      "--out", str(out), "--tokenizer", "approx", "--bootstrap", "200"]) == 0
    assert "router (analyze + select)" in _summary(out)
    assert eval_main(["--data", str(files["all"]), "--profiles", shipped, "--out", str(tmp_path / "tiers"),
                      "--tokenizer", "approx", "--bootstrap", "200"]) == 0  # unmapped: tier priors


@pytest.mark.parametrize(("argv", "message"), [
    (["--train", "{a}"], "--train and --test go together"),
    (["--train", "{a}", "--test", "{b}", "--leave-one-out"], "--leave-one-out reads the benchmarks"),
    (["--data", "{all}", "--train", "{a}", "--test", "{b}"], "either --data or --train"),
    (["--data", "{a}", "--leave-one-out"], "at least two benchmarks"),
    (["--data", "{all}", "--profiles", "{shipped}", "--model-map", "strong=nope"], "lacks: nope"),
    (["--data", "{all}", "--profiles", "{shipped}", "--model-map", "strong"], "data_model=profile_model"),
])
def test_bad_combinations_are_errors(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     argv: list[str], message: str) -> None:
    names = {k: str(v) for k, v in files.items()} | {"shipped": str(ROOT / "config" / "quality.yaml")}
    only_qa = write_csv(tmp_path / "qa.csv", [r for r in synthetic_rows() if r["eval_name"] == "qa"])
    names["a"] = str(only_qa) if "--leave-one-out" in argv and "--data" in argv else names["a"]
    assert eval_main([a.format(**names) for a in argv] + ["--out", str(tmp_path / "o"), *FAST]) == 2
    assert message in capsys.readouterr().err


def test_bounds_print_with_two_decimals() -> None:
    assert _range(Interval(0.993, 0.9797, 1.006)) == "99.3% [97.97%, 100.60%]"


def test_random_at_quality() -> None:
    ones, halves = np.ones(4), np.full(4, 0.5)
    idx = np.asarray([[0, 1, 2, 3], [0, 0, 1, 1]])
    # the router scores like the strongest model at the cheapest model's cost
    rows = RowOutcomes(router_cost=np.full(4, 0.1), router_perf=ones, strongest_cost=ones, strongest_perf=ones,
                    cheapest_cost=np.full(4, 0.1), cheapest_perf=halves)
    point, random_b, advantage_b = random_at_quality(rows, idx)
    assert random_b == pytest.approx([0.0, 0.0])
    assert point == pytest.approx(0.0)  # random needs the strongest on every prompt to score as well
    assert advantage_b == pytest.approx([0.9, 0.9])
    halfway = RowOutcomes(router_cost=ones, router_perf=np.full(4, 0.75), strongest_cost=ones, strongest_perf=ones,
                       cheapest_cost=np.zeros(4), cheapest_perf=halves)
    assert random_at_quality(halfway, idx)[0] == pytest.approx(0.5)
    assert parse_model_map(" a=b , c=d ") == {"a": "b", "c": "d"}


def test_fitted_on_is_checked() -> None:
    document = {"version": 1, "fitted_on": {"data": "x.csv", "when": "today"}}
    with pytest.raises(ConfigError, match=r"fitted_on\.when"):
        parse_quality(document, "q.yaml")
