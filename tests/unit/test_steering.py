"""Steering rules: parsing, validation errors, evaluation semantics, rollout, loader, CLI check."""

from __future__ import annotations

import io
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.errors import RuleRejected
from costproxy.steering import (
    ACTION_TYPES,
    FIELDS,
    OPERATORS,
    BudgetState,
    RuleError,
    RuleSet,
    RulesHolder,
    budget_fields,
    build_ruleset,
    evaluate,
    in_rollout,
    load_rules,
    parse_rules_text,
)
from costproxy.steering.commands import rules_check_main, rules_main

REPO = Path(__file__).resolve().parents[2]


# --- factories ---------------------------------------------------------------------------------
def rule(rule_id: str = "r1", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": rule_id,
        "name": f"rule {rule_id}",
        "priority": 100,
        "conditions": [{"field": "request.task_type", "operator": "equals", "value": "classification"}],
        "actions": [{"type": "cap-output-tokens", "params": {"max_tokens": 100}}],
    }
    base.update(overrides)
    return base


def doc(*rules: dict[str, Any]) -> str:
    return yaml.safe_dump({"version": 1, "rules": list(rules)}, sort_keys=False)


def ruleset(*rules: dict[str, Any]) -> RuleSet:
    result, errors = build_ruleset([("rules/test.yaml", doc(*rules))])
    assert errors == [], [str(e) for e in errors]
    return result


def only_error(text: str, file: str = "rules/test.yaml") -> RuleError:
    _, errors = parse_rules_text(text, file)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def cond(field: str, operator: str, value: Any = None) -> dict[str, Any]:
    item: dict[str, Any] = {"field": field, "operator": operator}
    if operator not in ("exists", "not_exists"):
        item["value"] = value
    return item


def action(action_type: str, **params: Any) -> dict[str, Any]:
    return {"type": action_type, "params": params}


# --- actions -----------------------------------------------------------------------------------
def constraints_of(*actions: dict[str, Any]) -> Any:
    rs = ruleset(rule(conditions=[], actions=list(actions)))
    return evaluate(rs, {}, "req").constraints


def test_route_model_and_tier() -> None:
    assert constraints_of(action("route", model="gpt-4o")).pinned_model == "gpt-4o"
    assert constraints_of(action("route", tier="premium")).pinned_tier == "premium"


def test_select_model_all_params() -> None:
    c = constraints_of(
        action(
            "select-model",
            quality="economy",
            min_quality=0.7,
            allowed_models=["a", "b"],
            excluded_models=["c"],
            max_cost_usd="0.25",
        )
    )
    assert c.quality_mode == "economy"
    assert c.min_quality == 0.7
    assert c.allowed_models == frozenset({"a", "b"})
    assert c.excluded_models == frozenset({"c"})
    assert c.max_cost_nanos == 250_000_000


def test_downgrade_with_and_without_tier() -> None:
    plain = constraints_of(action("downgrade"))
    assert plain.downgrade and plain.allowed_tiers is None
    capped = constraints_of(action("downgrade", to_tier="standard"))
    assert capped.downgrade and capped.allowed_tiers == frozenset({"economy", "standard"})


def test_cost_limit_and_output_cap_and_reasons() -> None:
    c = constraints_of(action("set-cost-limit", max_cost_usd="0.000001"), action("cap-output-tokens", max_tokens=64))
    assert c.max_cost_nanos == 1_000
    assert c.max_output_tokens == 64
    assert all(reason.startswith("rule r1: ") for reason in c.reasons)


def test_reject_and_log_actions() -> None:
    rs = ruleset(
        rule(
            conditions=[],
            actions=[
                action("log", message="hello", level="warning"),
                action("reject", message="no", status=429),
            ],
        )
    )
    outcome = evaluate(rs, {}, "req")
    assert outcome.rejected is not None and tuple(outcome.rejected) == ("r1", "no", 429)
    assert [tuple(line) for line in outcome.logs] == [("r1", "warning", "hello", "enforce")]
    with pytest.raises(RuleRejected) as info:
        outcome.raise_if_rejected()
    assert info.value.status == 429 and info.value.body()["error"]["rule_id"] == "r1"
    assert info.value.headers["x-should-retry"] == "false"
    default = evaluate(ruleset(rule(conditions=[], actions=[action("reject", message="x")])), {}, "r")
    assert default.rejected is not None and default.rejected.status == 403


def test_every_action_type_is_covered_by_the_default_rules() -> None:
    rs, errors = load_rules(REPO / "rules")
    assert errors == []
    used_actions = {a.type for r in rs.rules for a in r.actions}
    used_operators = {c.operator for r in rs.rules for c in r.conditions}
    assert used_actions == set(ACTION_TYPES)
    assert used_operators == set(OPERATORS)
    assert any(r.mode == "shadow" for r in rs.rules) and any(r.rollout < 100 for r in rs.rules)


# --- operators ---------------------------------------------------------------------------------
CTX: dict[str, Any] = {
    "request.model": "gpt-4o-mini",
    "request.tokens.input": 1200,
    "request.capabilities": ["tools", "json_schema"],
    "request.stream": True,
    "principal.team": "research",
    "budget.team.remaining_usd": Decimal("4.50"),
    "time.date": "2026-03-01",
    "request.metadata.tier": 2,
}

OPERATOR_CASES = [
    (cond("request.model", "equals", "gpt-4o-mini"), True),
    (cond("request.model", "equals", "gpt-4o"), False),
    (cond("request.model", "not_equals", "gpt-4o"), True),
    (cond("request.model", "contains", "4o"), True),
    (cond("request.model", "not_contains", "claude"), True),
    (cond("request.capabilities", "contains", "tools"), True),
    (cond("request.capabilities", "not_contains", "vision"), True),
    (cond("request.model", "regex", "^gpt-4o(-mini)?$"), True),
    (cond("request.model", "regex", "^claude"), False),
    (cond("request.tokens.input", "gt", 1000), True),
    (cond("request.tokens.input", "lt", 1000), False),
    (cond("request.tokens.input", "gte", 1200), True),
    (cond("request.tokens.input", "lte", 1199.5), False),
    (cond("budget.team.remaining_usd", "lt", "5.00"), True),
    (cond("time.date", "gte", "2026-03-01"), True),
    (cond("principal.team", "in", ["research", "ml"]), True),
    (cond("principal.team", "not_in", ["research"]), False),
    (cond("request.capabilities", "in", ["vision", "tools"]), True),
    (cond("request.capabilities", "not_in", ["vision"]), True),
    (cond("request.stream", "equals", True), True),
    (cond("principal.team", "exists"), True),
    (cond("principal.user", "not_exists"), True),
    (cond("principal.user", "exists"), False),
    (cond("request.metadata.tier", "equals", 2), True),
    (cond("request.metadata.tier", "gt", 1), True),
]


@pytest.mark.parametrize(("condition", "expected"), OPERATOR_CASES)
def test_operators(condition: dict[str, Any], expected: bool) -> None:
    rs = ruleset(rule(conditions=[condition]))
    assert bool(evaluate(rs, CTX, "req").fired) is expected


def test_every_operator_has_a_case() -> None:
    assert {case[0]["operator"] for case in OPERATOR_CASES} == set(OPERATORS)


@pytest.mark.parametrize(
    "condition",
    [
        cond("request.metadata.tier", "contains", "x"),  # number tested as text
        cond("request.metadata.tier", "regex", "2"),
        cond("request.metadata.tier", "not_equals", "2"),  # different type is no match, not "differs"
        cond("request.metadata.tier", "not_in", ["a"]),
        cond("request.metadata.tier", "gt", "1"),
        cond("request.metadata.tier", "equals", True),
        cond("principal.user", "not_equals", "bob"),  # absent field
        cond("principal.user", "not_in", ["bob"]),
        cond("principal.user", "not_contains", "bob"),
    ],
)
def test_type_mismatch_and_absent_fields_never_match(condition: dict[str, Any]) -> None:
    rs = ruleset(rule(conditions=[condition]))
    assert evaluate(rs, CTX, "req").fired == ()


def test_evaluation_tolerates_garbage_context_values() -> None:
    rs = ruleset(
        rule(
            conditions=[cond("request.tokens.input", "gt", 5), cond("request.model", "regex", "x")],
            operator="or",
        )
    )
    assert evaluate(rs, {"request.tokens.input": object(), "request.model": ["x"]}, "r").fired == ()
    assert evaluate(rs, {"request.tokens.input": float("nan")}, "r").fired == ()


def test_header_field_names_are_case_insensitive() -> None:
    rs = ruleset(rule(conditions=[cond("request.headers.X-Tenant-ID", "equals", "acme")]))
    assert rs.rules[0].conditions[0].field == "request.headers.x-tenant-id"
    assert evaluate(rs, {"request.headers.x-tenant-id": "acme"}, "r").fired


# --- errors name file, rule id and field -------------------------------------------------------
def on(condition: dict[str, Any]) -> dict[str, Any]:
    return {"conditions": [condition]}


def do(*actions: dict[str, Any]) -> dict[str, Any]:
    return {"actions": list(actions)}


act = action

ERROR_CASES = [
    # (rule overrides, expected field, message fragment)
    (on(cond("request.modle", "equals", "x")), "conditions[0].field", "did you mean request.model"),
    (on(cond("request.model", "eq", "x")), "conditions[0].operator", "must be one of"),
    (on(cond("request.model", "gt", 3)), "conditions[0].operator", "does not apply"),
    (on(cond("request.model", "regex", "([a-z")), "conditions[0].value", "invalid regular expression"),
    (on(cond("request.tokens.input", "gt", "many")), "conditions[0].value", "must be a number"),
    (on(cond("request.quality_mode", "equals", "premium")), "conditions[0].value", "must be one of"),
    (on(cond("request.task_type", "in", ["classification", "clasification"])), "conditions[0].value[1]", "one of"),
    (on(cond("request.model", "in", "gpt-4o")), "conditions[0].value", "non-empty list"),
    (on({**cond("principal.team", "exists"), "value": 1}), "conditions[0].value", "takes no value"),
    (on(cond("budget.galaxy.used_pct", "gt", 1)), "conditions[0].field", "unknown field"),
    (on(cond("time.date", "gt", "yesterday")), "conditions[0].value", "YYYY-MM-DD"),
    (on({**cond("request.model", "equals", "x"), "valeu": 1}), "conditions[0].valeu", "unknown key"),
    (do(act("teleport")), "actions[0].type", "must be one of"),
    ({"actions": []}, "actions", "at least one action"),
    (do(act("route", model="a", tier="premium")), "actions[0].params", "exactly one of"),
    (do(act("route", tier="gold")), "actions[0].params.tier", "must be one of"),
    (do(act("reject", message="x", status=500)), "actions[0].params.status", "<= 499"),
    (do(act("reject")), "actions[0].params.message", "is required"),
    (do(act("select-model", quality="cheap")), "actions[0].params.quality", "must be one of"),
    (do(act("select-model", quality="economy", min_quality=2)), "actions[0].params.min_quality", "<= 1"),
    (do(act("set-cost-limit", max_cost_usd="0.0000000001")), "actions[0].params.max_cost_usd", "1e-9"),
    (do(act("set-cost-limit", max_cost_usd="0")), "actions[0].params.max_cost_usd", "greater than 0"),
    (do(act("cap-output-tokens", max_tokens=0)), "actions[0].params.max_tokens", ">= 1"),
    (do(act("cap-output-tokens", max_tokens=5, tokens=1)), "actions[0].params.tokens", "unknown key"),
    (do(act("log", message="x", level="loud")), "actions[0].params.level", "must be one of"),
    (do(act("reject", message="a"), act("reject", message="b")), "actions[1].type", "at most one"),
    ({"mode": "dry-run"}, "mode", "must be one of"),
    ({"rollout": 150}, "rollout", "<= 100"),
    ({"operator": "xor"}, "operator", "must be one of"),
    ({"priority": "high"}, "priority", "must be an integer"),
    ({"enabled": "yes please"}, "enabled", "true or false"),
    ({"prority": 1}, "prority", "unknown key"),
    ({"id": "has space"}, "id", "letters, digits"),
]


@pytest.mark.parametrize(("overrides", "field", "fragment"), ERROR_CASES)
def test_errors_name_file_rule_and_field(overrides: dict[str, Any], field: str, fragment: str) -> None:
    error = only_error(doc(rule("bad-rule", **overrides)), "rules/team.yaml")
    expected_id = "bad-rule" if "id" not in overrides else "has space"
    assert (error.file, error.rule_id, error.field) == ("rules/team.yaml", expected_id, field)
    assert fragment in error.message
    assert str(error).startswith(f"rules/team.yaml: {expected_id}: {field}: ")


def test_a_rule_without_id_is_named_by_position_and_others_still_parse() -> None:
    broken = rule()
    del broken["id"]
    rules, errors = parse_rules_text(doc(rule("ok"), broken), "f.yaml")
    assert [r.id for r in rules] == ["ok"]
    assert [(e.rule_id, e.field, e.message) for e in errors] == [("rules[1]", "id", "is required")]


def test_every_broken_rule_is_reported() -> None:
    text = doc(rule("a", mode="x"), rule("b"), rule("c", rollout=-1))
    _, errors = parse_rules_text(text, "f.yaml")
    assert [(e.rule_id, e.field) for e in errors] == [("a", "mode"), ("c", "rollout")]


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("rules: [\n  - id: x\n   name: y", "line 2, column 3", "invalid YAML"),
        ("version: 1\nversion: 1\nrules: []\n", "line 2, column 1", "duplicate key 'version'"),
        ("version: 2\nrules: []\n", "version", "unsupported version"),
        ("", "", "file is empty"),
        ("version: 1\n", "rules", "is required"),
        ("rules: []\nextra: 1\n", "extra", "unknown key"),
        ("rules: {id: x}\n", "rules", "must be a list"),
    ],
)
def test_file_level_errors(text: str, field: str, fragment: str) -> None:
    error = only_error(text, "rules/x.yaml")
    assert (error.file, error.rule_id, error.field) == ("rules/x.yaml", "-", field)
    assert fragment in error.message


def test_duplicate_key_inside_a_rule_is_an_error() -> None:
    text = "rules:\n  - id: a\n    name: n\n    priority: 1\n    priority: 2\n    actions: []\n"
    assert "duplicate key 'priority'" in only_error(text).message


def test_duplicate_ids_across_files_and_unknown_models() -> None:
    _, errors = build_ruleset(
        [
            ("rules/a.yaml", doc(rule("same"))),
            ("rules/b.yaml", doc(rule("same"), rule("pin", actions=[action("route", model="gpt-9")]))),
        ],
        known_models={"gpt-4o"},
    )
    assert [(e.file, e.rule_id, e.field) for e in errors] == [
        ("rules/b.yaml", "same", "id"),
        ("rules/b.yaml", "pin", "actions[0].params.model"),
    ]
    assert "also in rules/a.yaml" in errors[0].message


def test_unknown_models_in_lists_name_the_element() -> None:
    sel = action("select-model", quality="balanced", allowed_models=["gpt-4o", "nope"])
    _, errors = build_ruleset([("f.yaml", doc(rule("s", actions=[sel])))], known_models={"gpt-4o"})
    assert [e.field for e in errors] == ["actions[0].params.allowed_models[1]"]


# --- evaluation order --------------------------------------------------------------------------
def cap(tokens: int) -> dict[str, Any]:
    return action("cap-output-tokens", max_tokens=tokens)


def test_priority_order_and_stop_at_first_match() -> None:
    rs = ruleset(rule("late", priority=50, actions=[cap(10)]), rule("early", priority=5, actions=[cap(20)]))
    assert [r.id for r in rs.rules] == ["early", "late"]
    outcome = evaluate(rs, {"request.task_type": "classification"}, "req")
    assert [f.rule_id for f in outcome.fired] == ["early"]
    assert outcome.constraints.max_output_tokens == 20


def test_equal_priorities_keep_file_then_position_order() -> None:
    rs, errors = build_ruleset(
        [
            ("a.yaml", doc(rule("a1", priority=1), rule("a2", priority=1))),
            ("b.yaml", doc(rule("b1", priority=1))),
        ]
    )
    assert errors == [] and [r.id for r in rs.rules] == ["a1", "a2", "b1"]


def test_continue_accumulates_and_keeps_the_stricter_demand() -> None:
    rs = ruleset(
        rule("a", priority=1, actions=[cap(50)], **{"continue": True}),
        rule(
            "b",
            priority=2,
            actions=[cap(80), action("set-cost-limit", max_cost_usd="1")],
            **{"continue": True},
        ),
        rule("c", priority=3, actions=[cap(5)]),
        rule("d", priority=4, actions=[cap(1)]),
    )
    outcome = evaluate(rs, {"request.task_type": "classification"}, "req")
    assert [f.rule_id for f in outcome.fired] == ["a", "b", "c"]
    assert outcome.constraints.max_output_tokens == 5
    assert outcome.constraints.max_cost_nanos == 1_000_000_000


def test_and_or_and_empty_conditions() -> None:
    conditions = [cond("principal.team", "equals", "ml"), cond("request.stream", "equals", True)]
    both = ruleset(rule(conditions=conditions))
    either = ruleset(rule(conditions=conditions, operator="or"))
    ctx = {"principal.team": "ml", "request.stream": False}
    assert evaluate(both, ctx, "r").fired == ()
    assert evaluate(either, ctx, "r").fired
    assert evaluate(ruleset(rule(conditions=[], operator="or")), {}, "r").fired


def test_disabled_rules_are_validated_but_never_run() -> None:
    rs = ruleset(rule("off", enabled=False, conditions=[]))
    assert [r.id for r in rs.rules] == ["off"] and rs.active == ()
    assert evaluate(rs, {}, "r").fired == ()
    _, errors = parse_rules_text(doc(rule("off", enabled=False, mode="bad")), "f.yaml")
    assert errors


def test_reject_stops_evaluation() -> None:
    rs = ruleset(
        rule("no", priority=1, conditions=[], actions=[action("reject", message="nope")], **{"continue": True}),
        rule("later", priority=2, conditions=[]),
    )
    outcome = evaluate(rs, {}, "r")
    assert outcome.rejected is not None and outcome.rejected.rule_id == "no"
    assert [f.rule_id for f in outcome.fired] == ["no"]


# --- shadow ------------------------------------------------------------------------------------
def test_shadow_rules_never_apply_and_never_stop_evaluation() -> None:
    rs = ruleset(
        rule("s-cap", priority=1, conditions=[], mode="shadow", actions=[cap(7), action("log", message="m")]),
        rule("s-rej", priority=2, conditions=[], mode="shadow", actions=[action("reject", message="would")]),
        rule("real", priority=3, conditions=[], actions=[cap(100)]),
    )
    outcome = evaluate(rs, {}, "r")
    assert outcome.rejected is None
    assert outcome.constraints.max_output_tokens == 100
    assert outcome.shadow_constraints.max_output_tokens == 7
    assert outcome.shadow_rejected is not None and outcome.shadow_rejected.rule_id == "s-rej"
    assert [tuple(f) for f in outcome.fired] == [
        ("s-cap", "shadow", False),
        ("s-rej", "shadow", False),
        ("real", "enforce", True),
    ]
    assert [line.mode for line in outcome.logs] == ["shadow"]
    outcome.raise_if_rejected()  # a shadow reject never raises


# --- rollout -----------------------------------------------------------------------------------
def test_rollout_is_deterministic_and_proportional() -> None:
    rs = ruleset(rule("half", rollout=30, conditions=[]))
    ids = [f"req-{i}" for i in range(10_000)]
    applied = [bool(evaluate(rs, {}, rid).fired) for rid in ids]
    assert 0.28 <= sum(applied) / len(ids) <= 0.32
    assert applied == [bool(evaluate(rs, {}, rid).fired) for rid in ids]  # sticky per request
    outside = evaluate(rs, {}, ids[applied.index(False)])
    assert outside.outside_rollout == ("half",) and outside.fired == ()


def test_rollout_bounds_and_independence_between_rules() -> None:
    ids = [f"r{i}" for i in range(2_000)]
    assert not any(in_rollout("x", rid, 0) for rid in ids)
    assert all(in_rollout("x", rid, 100) for rid in ids)
    a = [in_rollout("a", rid, 50) for rid in ids]
    b = [in_rollout("b", rid, 50) for rid in ids]
    assert 0.4 < sum(x == y for x, y in zip(a, b, strict=True)) / len(ids) < 0.6


def test_rollout_outside_does_not_stop_later_rules() -> None:
    rs = ruleset(
        rule("never", priority=1, rollout=0, conditions=[], actions=[cap(1)]),
        rule("next", priority=2, conditions=[], actions=[cap(9)]),
    )
    outcome = evaluate(rs, {}, "r")
    assert outcome.constraints.max_output_tokens == 9 and outcome.outside_rollout == ("never",)


# --- budget fields -----------------------------------------------------------------------------
def test_budget_fields_take_the_worst_per_scope_and_over_the_chain() -> None:
    fields = budget_fields(
        [
            ("team", BudgetState(85.0, "warning", Decimal("10"))),
            ("team", BudgetState(40.0, "normal", Decimal("3"))),
            ("user", BudgetState(100.0, "exhausted", None)),
        ]
    )
    assert fields["budget.team.used_pct"] == 85.0 and fields["budget.team.status"] == "warning"
    assert fields["budget.team.remaining_usd"] == Decimal("3")
    assert fields["budget.any.status"] == "exhausted" and fields["budget.any.used_pct"] == 100.0
    assert "budget.user.remaining_usd" not in fields and "budget.org.status" not in fields
    with pytest.raises(ValueError):
        budget_fields([("any", BudgetState(1.0, "normal"))])


# --- loader ------------------------------------------------------------------------------------
def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    stat = path.stat()  # make the change visible even on coarse-mtime filesystems
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_loader_keeps_the_last_good_set_and_swaps_on_fix(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", doc(rule("a")))
    holder = RulesHolder(tmp_path)
    first = holder.reload()
    assert first.ok and first.swapped and [r.id for r in holder.current.rules] == ["a"]
    good = holder.current

    write(tmp_path / "b.yaml", doc(rule("b", mode="sideways")))
    write(tmp_path / "a.yaml", doc(rule("a"), rule("a2")))  # valid edit next to the broken file
    bad = holder.reload()
    assert not bad.ok and not bad.swapped
    assert holder.current is good and bad.ruleset is good
    assert [(Path(e.file).name, e.rule_id, e.field) for e in bad.errors] == [("b.yaml", "b", "mode")]
    assert "kept the last good rule set" in bad.summary()

    write(tmp_path / "b.yaml", doc(rule("b")))
    fixed = holder.reload()
    assert fixed.ok and fixed.swapped
    assert [r.id for r in holder.current.rules] == ["a", "a2", "b"]
    assert holder.current.digest != good.digest


def test_changed_detects_new_modified_and_deleted_files(tmp_path: Path) -> None:
    holder = RulesHolder(tmp_path)
    assert holder.changed()  # never loaded
    holder.reload()
    assert not holder.changed()
    write(tmp_path / "a.yaml", doc(rule("a")))
    assert holder.changed()
    assert holder.reload_if_changed() is not None
    assert not holder.changed() and holder.reload_if_changed() is None
    write(tmp_path / "a.yaml", doc(rule("a", priority=3)))
    assert holder.changed()
    holder.reload()
    (tmp_path / "a.yaml").unlink()
    assert holder.changed()
    assert holder.reload().ok and holder.current.rules == ()


def test_changed_is_false_after_a_failed_reload_until_the_next_edit(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "rules: [")
    holder = RulesHolder(tmp_path)
    assert not holder.reload().ok
    assert not holder.changed()
    write(tmp_path / "a.yaml", doc(rule("a")))
    assert holder.changed() and holder.reload().ok


def test_loader_ignores_hidden_and_other_files_and_reads_yml(tmp_path: Path) -> None:
    write(tmp_path / ".swap.yaml", "garbage: [")
    write(tmp_path / "notes.txt", "garbage: [")
    write(tmp_path / "x.yml", doc(rule("x")))
    rs, errors = load_rules(tmp_path)
    assert errors == [] and [r.id for r in rs.rules] == ["x"]


def test_missing_directory_is_an_error_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    write(folder / "a.yaml", doc(rule("a")))
    holder = RulesHolder(folder)
    holder.reload()
    (folder / "a.yaml").unlink()
    folder.rmdir()
    assert holder.changed()
    result = holder.reload()
    assert not result.ok and "not found" in result.errors[0].message
    assert [r.id for r in holder.current.rules] == ["a"]


# --- rules check command -----------------------------------------------------------------------
def test_rules_check_reports_errors_one_per_line(tmp_path: Path) -> None:
    write(
        tmp_path / "a.yaml",
        doc(rule("a", conditions=[cond("request.model", "regex", "(")]), rule("b", mode="x")),
    )
    out, err = io.StringIO(), io.StringIO()
    assert rules_check_main(["--dir", str(tmp_path)], out=out, err=err) == 1
    lines = err.getvalue().splitlines()
    file = str(tmp_path / "a.yaml")
    assert lines[0].startswith(f"{file}: a: conditions[0].value: invalid regular expression")
    assert lines[1].startswith(f"{file}: b: mode: must be one of")
    assert "2 error(s)" in lines[2]


def test_rules_check_summarises_the_repository_rules() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert rules_check_main(["--dir", str(REPO / "rules")], out=out, err=err) == 0, err.getvalue()
    assert re.search(r"ok: \d+ rules in 1 files; \d+ enabled", out.getvalue())


def test_rules_check_against_the_model_registry(tmp_path: Path) -> None:
    models = str(REPO / "config" / "models.yaml")
    out, err = io.StringIO(), io.StringIO()
    assert rules_check_main(["--dir", str(REPO / "rules"), "--models", models], out=out, err=err) == 0, err.getvalue()
    write(tmp_path / "a.yaml", doc(rule("pin", actions=[action("route", model="gpt-0-imaginary")])))
    assert rules_check_main(["--dir", str(tmp_path), "--models", models], out=out, err=err) == 1
    assert "pin: actions[0].params.model: names no model in the registry" in err.getvalue()


def test_rules_main_dispatches_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert rules_main(["check", "--dir", str(REPO / "rules")]) == 0
    assert "ok:" in capsys.readouterr().out
    assert rules_main(["lint"]) == 2
    assert "usage: costproxy rules check" in capsys.readouterr().err


def test_digest_depends_on_content_not_on_how_the_directory_is_named(tmp_path: Path) -> None:
    text = doc(rule("a"))
    one, _ = build_ruleset([("rules/a.yaml", text)])
    two, _ = build_ruleset([(str(tmp_path / "a.yaml"), text)])
    three, _ = build_ruleset([("rules/a.yaml", doc(rule("a", priority=1)))])
    assert one.digest == two.digest != three.digest


# --- documentation and many rules ---------------------------------------------------------------------
def test_readme_documents_every_field_operator_and_action() -> None:
    readme = (REPO / "rules" / "README.md").read_text(encoding="utf-8")
    for name in FIELDS:
        short = name.rsplit(".", 1)[-1]
        assert f"`{name}`" in readme or f"`.{short}`" in readme, name
    for word in (*OPERATORS, *ACTION_TYPES):
        assert f"`{word}`" in readme, word


def test_twenty_continuing_rules_each_fire_or_fall_outside_their_rollout() -> None:
    """What bench/core_bench.py times: every rule matches and continues, so each one either fires
    (shadow rules record, enforced ones apply) or is left out by its 50 % rollout."""
    rules = [
        rule(
            f"r{i}",
            priority=i,
            conditions=[
                cond("principal.team", "in", ["a", "b", f"t{i}"]),
                cond("request.tokens.input", "gt", 10),
            ],
            actions=[cap(100 + i)],
            rollout=50 if i % 4 == 0 else 100,
            mode="shadow" if i % 5 == 0 else "enforce",
            **{"continue": True},
        )
        for i in range(20)
    ]
    rs = ruleset(*rules)
    ctx = {"principal.team": "a", "request.tokens.input": 500, "request.model": "auto"}
    partial = {f"r{i}" for i in range(0, 20, 4)}
    left_out: set[str] = set()
    for n in range(40):
        outcome = evaluate(rs, ctx, f"req-{n}")
        fired = {f.rule_id: f for f in outcome.fired}
        outside = set(outcome.outside_rollout)
        assert fired.keys().isdisjoint(outside) and fired.keys() | outside == {f"r{i}" for i in range(20)}
        assert outside <= partial
        for rule_id, fired_rule in fired.items():
            shadow = int(rule_id[1:]) % 5 == 0
            assert (fired_rule.mode, fired_rule.applied) == (("shadow", False) if shadow else ("enforce", True))
        enforced = [100 + int(r[1:]) for r, f in fired.items() if f.applied]
        assert outcome.constraints.max_output_tokens == min(enforced)
        left_out |= outside
    assert left_out == partial  # over 40 requests, every 50 % rule sat out at least once


def _worse_reference(a: BudgetState, b: BudgetState) -> BudgetState:
    """What ``budget_fields`` did per comparison before it kept plain lists (the reference)."""
    order = ("normal", "warning", "critical", "exhausted")
    remaining = [r for r in (a.remaining_usd, b.remaining_usd) if r is not None]
    return BudgetState(used_pct=max(a.used_pct, b.used_pct),
                       status=max(a.status, b.status, key=lambda s: order.index(s) if s in order else 0),
                       remaining_usd=min(remaining) if remaining else None)


def test_budget_fields_match_the_pairwise_worst_of_every_chain() -> None:
    import itertools
    import random

    rng = random.Random(13)
    statuses = ("normal", "warning", "critical", "exhausted", "odd")
    for _ in range(500):
        states = [(rng.choice(("org", "team", "user", "project", "key")),
                   BudgetState(rng.choice((0.0, 12.5, 50.0, 99.9, 100.0, 140.0)), rng.choice(statuses),
                               rng.choice((None, Decimal("0"), Decimal("1.500000000"), Decimal("7")))))
                  for _ in range(rng.randint(1, 5))]
        worst: dict[str, BudgetState] = {}
        for scope, state in states:
            for key in (scope, "any"):
                worst[key] = _worse_reference(worst[key], state) if key in worst else state
        expected: dict[str, object] = {}
        for scope, state in worst.items():
            expected[f"budget.{scope}.used_pct"] = state.used_pct
            expected[f"budget.{scope}.status"] = state.status
            if state.remaining_usd is not None:
                expected[f"budget.{scope}.remaining_usd"] = state.remaining_usd
        got = budget_fields(states)
        assert got == expected and list(got) == list(expected)
        assert all(type(got[k]) is type(expected[k]) for k in got)
    assert list(itertools.islice(budget_fields([("team", BudgetState(1.0, "normal"))]), 2)) == [
        "budget.team.used_pct", "budget.team.status"]
