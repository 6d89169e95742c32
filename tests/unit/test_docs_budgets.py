"""docs/budgets.md: its constants are the code's, its margin table is the shipped registry's, and
the statuses, periods, actions and exhaustion modes it names are the model's."""

from __future__ import annotations

import importlib
from decimal import Decimal

import yaml

from costproxy.budgets.config import BudgetSettings
from costproxy.budgets.model import ACTION_TYPES, EXHAUSTION_ACTIONS, PERIODS
from costproxy.budgets.status import status_of
from costproxy.money import MAX_AMOUNT_NANOS
from tests.docs_support import DOCS, ROOT, code_spans, markdown_tables

DOC = DOCS / "budgets.md"


def tables() -> list[list[dict[str, str]]]:
    return list(markdown_tables(DOC.read_text(encoding="utf-8")))


def rows_with(column: str) -> list[dict[str, str]]:
    found = [rows for rows in tables() if rows and column in rows[0]]
    assert found, column
    return found[0]


def resolve(dotted: str) -> object:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        owner, _, cls = module.rpartition(".")
        return getattr(getattr(importlib.import_module(owner), cls)(), name)


def test_every_constant_in_the_doc_is_the_codes() -> None:
    rows = rows_with("constant")
    assert len(rows) >= 8
    for row in rows:
        name, value = code_spans(row["constant"])[0], code_spans(row["value"])[0]
        assert resolve(name) == int(value), f"{name}: doc {value}, code {resolve(name)}"


def test_the_prose_numbers_follow_the_code() -> None:
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    ttl = BudgetSettings().reservation_ttl_s
    assert f"(`{ttl:.0f}` s by default)" in text and f"(`{ttl / 3:.0f}` s by default)" in text
    assert f"**${MAX_AMOUNT_NANOS // 10**9:,}**" in text


def test_the_margin_table_is_the_shipped_registry() -> None:
    models = yaml.safe_load((ROOT / "config" / "models.yaml").read_text(encoding="utf-8"))["models"]
    rows = {code_spans(row["provider"])[0]: row for row in rows_with("input_margin")}
    assert set(rows) == {m["provider"] for m in models.values()}
    for model_id, model in models.items():
        row, tokenizer = rows[model["provider"]], model.get("tokenizer")
        if tokenizer is None:
            assert row["input_margin"].startswith("none"), model_id
            continue
        margins = {Decimal(v) for v in code_spans(row["input_margin"])}
        assert Decimal(tokenizer["input_margin"]) in margins, model_id
        assert f"`{str(tokenizer.get('byte_level', False)).lower()}`" in row["byte_level"], model_id
        assert f"`{tokenizer.get('overhead_tokens', 0)}`" in row["overhead_tokens"], model_id


def test_statuses_periods_actions_and_exhaustion_modes_are_the_models() -> None:
    text = DOC.read_text(encoding="utf-8")
    statuses = [code_spans(row["status"])[0] for row in rows_with("status")]
    assert statuses == ["normal", "warning", "critical", "exhausted"]
    assert [code_spans(row["action"])[0] for row in rows_with("action")] == list(ACTION_TYPES)
    assert [code_spans(row["value"])[0] for row in rows_with("kind")] == list(EXHAUSTION_ACTIONS)
    assert all(f"`{period}`" in text for period in PERIODS)


def test_the_status_boundaries_described_are_the_codes() -> None:
    from costproxy.budgets.model import BudgetSpec

    spec = BudgetSpec(id="b", scope_type="team", scope_id="t", limit_nanos=100)  # thresholds 50, 80, 100
    assert [status_of(spec, spent, 100) for spent in (49, 50, 80, 100)] == ["normal", "warning", "critical",
                                                                             "exhausted"]
