"""Steering rules (sans-IO core, plus a small file loader): YAML rules ops maintain in ``rules/``.

Modules:
    fields      the context field catalogue rules may test, and ``budget_fields``
    conditions  ``{field, operator, value}``: parse-time checks, compiled closures
    actions     ``{type, params}``: parse-time checks, precomputed ``Constraints``
    rules       ``Rule``, ``RuleSet``, ``RuleError`` and the document parser
    evaluate    ``evaluate(ruleset, context, request_id) -> SteeringOutcome``
    loader      ``RulesHolder``: all-or-nothing reload of a directory, ``changed()`` polling
    commands    ``rules_check_main`` for ``costproxy rules check``

The format reference for ops is ``rules/README.md``.
"""

from costproxy.steering.actions import ACTION_TYPES, Action
from costproxy.steering.conditions import OPERATORS, Condition
from costproxy.steering.evaluate import (
    FiredRule,
    LogLine,
    Rejection,
    SteeringOutcome,
    evaluate,
    in_rollout,
)
from costproxy.steering.fields import FIELDS, BudgetState, FieldSpec, budget_fields, lookup_field
from costproxy.steering.loader import ReloadResult, RulesHolder, load_rules
from costproxy.steering.rules import (
    EMPTY_RULESET,
    Rule,
    RuleError,
    RuleSet,
    build_ruleset,
    parse_rules_document,
    parse_rules_text,
)

__all__ = [
    "ACTION_TYPES",
    "EMPTY_RULESET",
    "FIELDS",
    "OPERATORS",
    "Action",
    "BudgetState",
    "Condition",
    "FieldSpec",
    "FiredRule",
    "LogLine",
    "Rejection",
    "ReloadResult",
    "Rule",
    "RuleError",
    "RuleSet",
    "RulesHolder",
    "SteeringOutcome",
    "budget_fields",
    "build_ruleset",
    "evaluate",
    "in_rollout",
    "load_rules",
    "lookup_field",
    "parse_rules_document",
    "parse_rules_text",
]
