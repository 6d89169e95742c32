"""docs/rules.md against the steering parser: operators, fields, actions and their params, rule and
condition keys; every YAML example loads without an error against the shipped registry."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from costproxy.registry import parse_registry
from costproxy.steering import ACTION_TYPES, FIELDS, OPERATORS, build_ruleset, parse_rules_document
from costproxy.steering.fields import BUDGET_METRICS, BUDGET_SCOPES
from tests.docs_support import DOCS, ROOT, code_spans, fenced_blocks, markdown_tables, recording

DOC = DOCS / "rules.md"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def first_column(header: str, containing: str) -> list[str]:
    """The first code span of each row of the table whose first column is ``header`` and which
    lists ``containing``."""
    for rows in markdown_tables(doc_text()):
        names = [code_spans(row[header])[0] for row in rows if header in row and code_spans(row[header])]
        if containing in names:
            return names
    raise AssertionError(f"no {header} table lists {containing!r}")


def known_models() -> set[str]:
    registry = parse_registry(yaml.safe_load((ROOT / "config" / "models.yaml").read_text()), "models.yaml")
    return set(registry.models) | set(registry.aliases)


def test_every_operator_is_documented_and_only_those() -> None:
    assert first_column("operator", "equals") == list(OPERATORS)


def test_every_field_is_documented_and_only_those() -> None:
    documented = set(first_column("field", "request.model"))
    families = {"request.headers.<name>", "request.metadata.<name>"}
    families |= {f"budget.<scope>.{metric}" for metric in BUDGET_METRICS}
    assert documented == set(FIELDS) | families
    assert set(BUDGET_SCOPES) <= set(re.findall(r"`(\w+)`", doc_text().split("`<scope>` is", 1)[1][:200]))


def actions_table() -> dict[str, str]:
    for rows in markdown_tables(doc_text()):
        if rows and "type" in rows[0] and "params" in rows[0]:
            return {code_spans(row["type"])[0]: row["params"] for row in rows}
    raise AssertionError("no actions table")


def test_every_action_is_documented_and_only_those() -> None:
    assert list(actions_table()) == list(ACTION_TYPES)


def examples() -> list[str]:
    blocks = fenced_blocks(doc_text(), "yaml")
    assert len(blocks) >= 4
    return blocks


@pytest.mark.parametrize("index", range(4))
def test_each_example_loads_without_errors(index: int) -> None:
    ruleset, errors = build_ruleset([(f"docs/rules.md#example-{index}", examples()[index])],
                                    known_models=known_models())
    assert errors == []
    assert ruleset.rules


def _parsed_keys(document: Any) -> dict[str, Any]:
    with recording() as recorder:
        _rules, errors = parse_rules_document(document, "example.yaml")
    assert errors == [], errors
    return {path: record.default for path, record in recorder.keys("example.yaml").items()}


def test_every_param_an_action_reads_is_documented_and_the_examples_use_every_action() -> None:
    documented = actions_table()
    used: dict[str, set[str]] = {name: set() for name in ACTION_TYPES}
    for block in examples():
        for rule in yaml.safe_load(block)["rules"]:
            for action in rule["actions"]:
                one = {"rules": [{"id": "x", "name": "x", "priority": 1, "actions": [action]}]}
                params = {path.split("params.", 1)[1] for path in _parsed_keys(one) if ".params." in path}
                used[action["type"]] |= params
    for name, params in used.items():
        assert params, f"no example uses the {name} action"
        listed = set(code_spans(documented[name]))
        assert params <= listed, f"{name}: params read by the parser but not documented: {params - listed}"


def test_rule_and_condition_keys_match_the_parser() -> None:
    everything = [rule for block in examples() for rule in yaml.safe_load(block)["rules"]]
    keys = _parsed_keys({"version": 1, "rules": everything})
    file_keys = set(_parsed_keys({"rules": []}))  # rules are parsed at the root of their own Node too
    rule_keys = {p for p in keys if "." not in p and "[" not in p} - file_keys
    condition_keys = {p.split(".", 1)[1] for p in keys if p.startswith("conditions[].")}
    documented_rule = first_column("key", "priority")
    documented_condition = first_column("key", "field")
    documented_file = first_column("key", "version")
    assert set(documented_rule) == rule_keys
    assert set(documented_condition) == condition_keys
    assert set(documented_file) == file_keys


def test_the_shipped_rules_use_only_documented_actions() -> None:
    shipped = yaml.safe_load((ROOT / "rules" / "default.yaml").read_text())["rules"]
    assert {action["type"] for rule in shipped for action in rule["actions"]} <= set(actions_table())
