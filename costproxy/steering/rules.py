"""Steering rules: the frozen values and the parser of one ``rules/*.yaml`` document.

A document is ``{version?: 1, rules: [rule, ...]}``; see ``rules/README.md`` for the format.
Parsing is pure (text in, values out): ``parse_rules_text`` reads one file's text,
``build_ruleset`` reads several and checks what spans files (unique ids, known models).

Errors are ``RuleError`` (a ``ConfigError``) naming file, rule id and field, e.g.
``rules/team.yaml: cap-classify: conditions[0].operator: must be one of equals, ... (got 'eq')``.
A broken rule does not hide the others: every rule of every file is checked and every error is
reported; a rule set with any error must not be used (the loader keeps the last good one).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import field
from typing import Any

import yaml

from costproxy import yamlfile
from costproxy.cache.policy import CacheDirective
from costproxy.config_schema import Node
from costproxy.errors import ConfigError
from costproxy.records import frozen
from costproxy.routing.policy import Constraints
from costproxy.steering.actions import Action, parse_action
from costproxy.steering.conditions import Check, Condition, parse_condition
from costproxy.steering.fields import HEADER_PREFIX

MODES = ("enforce", "shadow")
JOINS = ("and", "or")
FORMAT_VERSION = 1
NO_RULE = "-"  # rule id shown for errors that belong to the file, not to one rule
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_ALWAYS: tuple[Check, ...] = ()


class RuleError(ConfigError):
    """A rule file problem: ``file: rule id: field: message``."""

    def __init__(self, file: str, rule_id: str, field: str, message: str) -> None:
        super().__init__(file, field, message)
        self.rule_id = rule_id
        self.field = field
        self.message = message
        self.args = (f"{file}: {rule_id}: {field or NO_RULE}: {message}",)

    @classmethod
    def from_config_error(cls, exc: ConfigError, rule_id: str) -> RuleError:
        text = str(exc)
        where = f"{exc.file}: {exc.path}" if exc.path else exc.file
        message = text[len(where) + 2 :] if text.startswith(f"{where}: ") else text
        return cls(exc.file, rule_id, exc.path, message)


@frozen
class Rule:
    id: str
    name: str
    priority: int
    actions: tuple[Action, ...]
    conditions: tuple[Condition, ...] = ()
    operator: str = "and"  # joins the conditions; no conditions means "every request"
    description: str = ""
    enabled: bool = True
    continue_: bool = False  # YAML ``continue``: keep evaluating later rules after this one
    mode: str = "enforce"  # or "shadow": decide and record, change nothing
    rollout: float = 100.0  # percent of requests (by request id) this rule applies to
    file: str = ""
    # derived once, so evaluation only reads them
    constraints: Constraints | None = field(init=False, compare=False, repr=False)
    rejection: tuple[str, int] | None = field(init=False, compare=False, repr=False)  # message, status
    log_lines: tuple[tuple[str, str], ...] = field(init=False, compare=False, repr=False)  # level, msg
    cache: CacheDirective | None = field(init=False, compare=False, repr=False)  # its cache action, if any
    rollout_threshold: int = field(init=False, compare=False, repr=False)  # basis points, 0..10000
    _checks: tuple[Check, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        merged: Constraints | None = None
        for action in self.actions:
            if action.constraints is not None:
                merged = action.constraints if merged is None else merged.merge(action.constraints)
        rejects = [a.params for a in self.actions if a.type == "reject"]
        rejection = (str(rejects[0]["message"]), int(rejects[0]["status"])) if rejects else None
        logs = tuple((str(a.params["level"]), str(a.params["message"])) for a in self.actions if a.type == "log")
        object.__setattr__(self, "constraints", merged)
        object.__setattr__(self, "rejection", rejection)
        object.__setattr__(self, "log_lines", logs)
        object.__setattr__(self, "cache", next((a.cache for a in reversed(self.actions) if a.cache), None))
        object.__setattr__(self, "rollout_threshold", round(self.rollout * 100))
        object.__setattr__(self, "_checks", tuple(c.check for c in self.conditions) or _ALWAYS)

    def matches(self, context: Mapping[str, Any]) -> bool:
        """Whether the conditions hold; an empty condition list matches every request."""
        checks = self._checks
        if not checks:
            return True
        if self.operator == "and":
            for check in checks:
                if not check(context):
                    return False
            return True
        for check in checks:
            if check(context):
                return True
        return False

    def model_refs(self) -> tuple[tuple[str, str], ...]:
        """``(field, model)`` for every model name the rule's actions mention."""
        return tuple(ref for action in self.actions for ref in action.model_refs)


@frozen
class RuleSet:
    """Every rule of a rules directory, ordered by priority (then file name, then position)."""

    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()
    digest: str = ""  # short sha256 of file base names and contents: which rule set decided
    active: tuple[Rule, ...] = field(init=False, compare=False, repr=False)  # enabled, in order
    # Merged constraints by the positions (in ``active``) of the rules applied together: the
    # same few combinations recur on every request, and merging is the slow part of evaluation.
    merge_cache: dict[tuple[int, ...], Constraints] = field(init=False, compare=False, repr=False)
    # the request headers the enabled rules test (``request.headers.<name>``, lower-cased names)
    header_names: tuple[str, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        active = tuple(rule for rule in self.rules if rule.enabled)
        object.__setattr__(self, "active", active)
        object.__setattr__(self, "merge_cache", {})
        object.__setattr__(self, "header_names", tuple(dict.fromkeys(
            c.field[len(HEADER_PREFIX):] for rule in active for c in rule.conditions
            if c.field.startswith(HEADER_PREFIX))))

    def get(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


EMPTY_RULESET = RuleSet()


# --- parsing ----------------------------------------------------------------------------------
def load_yaml(text: str, file: str) -> Any:
    """Parse one YAML document; syntax errors become a ``RuleError`` with line and column."""
    try:
        return yamlfile.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RuleError(file, NO_RULE, where, f"invalid YAML: {problem}") from None


def parse_rules_text(text: str, file: str) -> tuple[list[Rule], list[RuleError]]:
    """Parse one file's text; returns the valid rules and every error found."""
    try:
        document = load_yaml(text, file)
    except RuleError as exc:
        return [], [exc]
    return parse_rules_document(document, file)


def parse_rules_document(document: Any, file: str) -> tuple[list[Rule], list[RuleError]]:
    """Parse one already-loaded YAML document (``{version?, rules}``)."""
    root = Node(document, file)
    try:
        if document is None:
            raise root.error("file is empty; write `rules: []` for a file without rules")
        version = root.child("version", FORMAT_VERSION).int()
        if version != FORMAT_VERSION:
            raise root.child("version").error(f"unsupported version; this costproxy reads {FORMAT_VERSION}", version)
        elements = root.child("rules").elements()
        root.done()
    except ConfigError as exc:
        return [], [RuleError.from_config_error(exc, NO_RULE)]
    rules: list[Rule] = []
    errors: list[RuleError] = []
    for index, element in enumerate(elements):
        rule_id = _guess_id(element.value, index)
        try:
            rules.append(parse_rule(Node(element.value, file), file))
        except ConfigError as exc:
            errors.append(RuleError.from_config_error(exc, rule_id))
    return rules, errors


def _guess_id(value: Any, index: int) -> str:
    if isinstance(value, dict):
        rule_id = value.get("id")
        if isinstance(rule_id, str) and rule_id.strip():
            return rule_id
    return f"rules[{index}]"


def parse_rule(node: Node, file: str) -> Rule:
    """One rule from its mapping node (paths inside it are relative to the rule)."""
    id_node = node.child("id")
    rule_id = id_node.str()
    if not _ID.fullmatch(rule_id):
        raise id_node.error(
            "must be 1-100 letters, digits, '_', '.', ':' or '-', starting with a letter or digit", rule_id
        )
    name = node.child("name").str()
    description = node.child("description", "").str(allow_empty=True)
    priority = node.child("priority").int()
    enabled = node.child("enabled", True).bool()
    conditions = tuple(parse_condition(c) for c in node.child("conditions", []).elements())
    operator = node.child("operator", "and").str(choices=JOINS)
    actions = _parse_actions(node.child("actions"), rule_id)
    continue_ = node.child("continue", False).bool()
    mode = node.child("mode", "enforce").str(choices=MODES)
    rollout = node.child("rollout", 100).number(minimum=0, maximum=100)
    node.done()
    return Rule(
        id=rule_id,
        name=name,
        priority=priority,
        actions=actions,
        conditions=conditions,
        operator=operator,
        description=description,
        enabled=enabled,
        continue_=continue_,
        mode=mode,
        rollout=rollout,
        file=file,
    )


def _parse_actions(node: Node, rule_id: str) -> tuple[Action, ...]:
    elements = node.elements()
    if not elements:
        raise node.error("must list at least one action", node.value)
    actions = tuple(parse_action(element, rule_id) for element in elements)
    rejects = [i for i, action in enumerate(actions) if action.type == "reject"]
    if len(rejects) > 1:
        raise elements[rejects[1]].child("type").error("a rule has at most one reject action", "reject")
    return actions


def build_ruleset(
    sources: Iterable[tuple[str, str]], *, known_models: Collection[str] | None = None
) -> tuple[RuleSet, list[RuleError]]:
    """Parse ``(file, text)`` pairs into one ``RuleSet``; use it only if the error list is empty.

    ``known_models`` (registry ids and aliases), when given, makes every model a rule names an
    error unless it is known, so a typo fails at load instead of at request time.
    """
    rules: list[Rule] = []
    errors: list[RuleError] = []
    files: list[str] = []
    digest = hashlib.sha256()
    first_seen: dict[str, str] = {}
    for file, text in sources:
        files.append(file)
        digest.update(f"{os.path.basename(file)}\0{text}\0".encode())  # same however the dir is named
        parsed, file_errors = parse_rules_text(text, file)
        errors.extend(file_errors)
        for rule in parsed:
            if rule.id in first_seen:
                message = f"duplicate rule id (also in {first_seen[rule.id]})"
                errors.append(RuleError(file, rule.id, "id", message))
                continue
            first_seen[rule.id] = file
            errors.extend(_unknown_models(rule, known_models))
            rules.append(rule)
    rules.sort(key=lambda rule: rule.priority)  # stable: ties keep file and position order
    return RuleSet(tuple(rules), tuple(files), digest.hexdigest()[:16]), errors


def _unknown_models(rule: Rule, known_models: Collection[str] | None) -> list[RuleError]:
    if known_models is None:
        return []
    return [
        RuleError(rule.file, rule.id, path, f"names no model in the registry (got {model!r})")
        for path, model in rule.model_refs()
        if model not in known_models
    ]
