"""Evaluate a rule set against one request's context: pure, fast, never raises.

Rules run in priority order (lower first; ties by file name, then position).  For each enabled
rule whose conditions hold:

- ``rollout`` below 100: a hash of ``rule id + request id`` puts the request in or out; out
  means the rule is recorded in ``outside_rollout`` and otherwise skipped (evaluation goes on),
  and a given request always lands on the same side;
- ``mode: shadow``: recorded in ``fired`` with ``applied=False``; its constraints go to
  ``shadow_constraints``, a reject to ``shadow_rejected``; nothing is applied and evaluation goes
  on as if the rule did not exist;
- ``mode: enforce``: recorded with ``applied=True``; a ``reject`` ends evaluation with
  ``rejected`` set; other actions merge into ``constraints`` (stricter demand wins; for ``route``
  and the ``select-model`` quality, the last rule applied wins; so does a ``cache`` action, into
  ``cache``); evaluation stops after this rule unless it says ``continue: true``.

``log`` actions produce ``logs`` for every fired rule, tagged with the rule's mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from costproxy.cache.policy import CacheDirective
from costproxy.errors import RuleRejected
from costproxy.records import frozen
from costproxy.routing.policy import EMPTY, Constraints
from costproxy.steering.rules import Rule, RuleSet

ROLLOUT_BUCKETS = 10_000  # rollout resolution: 0.01 %
_NO_CONSTRAINTS = EMPTY
_SHADOW = -1  # marks the shadow key in the merge cache
_MERGE_CACHE_LIMIT = 4096  # distinct combinations of applied rules kept per rule set


class FiredRule(NamedTuple):
    rule_id: str
    mode: str  # enforce | shadow
    applied: bool  # True only for an enforced rule inside its rollout


class Rejection(NamedTuple):
    rule_id: str
    message: str
    status: int  # HTTP status, 4xx (403 by default)


class LogLine(NamedTuple):
    rule_id: str
    level: str  # debug | info | warning | error
    message: str
    mode: str  # enforce | shadow


@frozen
class SteeringOutcome:
    constraints: Constraints = _NO_CONSTRAINTS  # merge of every applied rule's actions
    rejected: Rejection | None = None
    fired: tuple[FiredRule, ...] = ()  # matched rules in evaluation order, shadow ones included
    logs: tuple[LogLine, ...] = ()
    shadow_constraints: Constraints = _NO_CONSTRAINTS  # what shadow rules would have demanded
    shadow_rejected: Rejection | None = None  # the first reject a shadow rule would have made
    outside_rollout: tuple[str, ...] = ()  # matched, but this request is outside their rollout
    ruleset_digest: str = ""
    cache: CacheDirective | None = None  # the cache action of the last applied rule that has one

    def raise_if_rejected(self) -> None:
        """Raise ``RuleRejected`` (with the rule's status and id) when a rule rejected the request."""
        if self.rejected is None:
            return
        error = RuleRejected(
            self.rejected.message,
            details={"rule_id": self.rejected.rule_id},
            headers={"x-should-retry": "false"},  # a rule says the same on retry; even for a 429
        )
        error.status = self.rejected.status
        raise error


def in_rollout(rule_id: str, request_id: str, percent: float) -> bool:
    """Deterministic: the same request id and rule id always give the same answer."""
    return rollout_bucket(rule_id, request_id) < round(percent * 100)


def rollout_bucket(rule_id: str, request_id: str) -> int:
    digest = hashlib.blake2b(f"{rule_id}\0{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % ROLLOUT_BUCKETS


class _Acc:
    """Mutable accumulator local to one ``evaluate`` call."""

    __slots__ = ("applied", "cache", "fired", "logs", "outside", "rejected", "shadow", "shadow_rejected")

    def __init__(self) -> None:
        self.applied: list[int] = []  # positions in ruleset.active of applied rules with constraints
        self.shadow: list[int] = [_SHADOW]  # the same for shadow rules, after a marker
        self.rejected: Rejection | None = None
        self.shadow_rejected: Rejection | None = None
        self.fired: list[FiredRule] = []
        self.logs: list[LogLine] = []
        self.outside: list[str] = []
        self.cache: CacheDirective | None = None


def evaluate(ruleset: RuleSet, context: Mapping[str, Any], request_id: str) -> SteeringOutcome:
    """Run the enabled rules of ``ruleset`` against ``context`` (see the module docstring)."""
    acc = _Acc()
    for position, rule in enumerate(ruleset.active):
        if not rule.matches(context):
            continue
        if rule.rollout_threshold < ROLLOUT_BUCKETS and rollout_bucket(rule.id, request_id) >= rule.rollout_threshold:
            acc.outside.append(rule.id)
            continue
        if rule.mode == "shadow":
            _record_shadow(acc, rule, position)
            continue
        if _apply(acc, rule, position) or not rule.continue_:
            break
    return SteeringOutcome(
        constraints=_merged(ruleset, tuple(acc.applied)),
        rejected=acc.rejected,
        fired=tuple(acc.fired),
        logs=tuple(acc.logs),
        shadow_constraints=_merged(ruleset, tuple(acc.shadow)),
        shadow_rejected=acc.shadow_rejected,
        outside_rollout=tuple(acc.outside),
        ruleset_digest=ruleset.digest,
        cache=acc.cache,
    )


def _record_shadow(acc: _Acc, rule: Rule, position: int) -> None:
    acc.fired.append(FiredRule(rule.id, "shadow", False))
    for level, message in rule.log_lines:
        acc.logs.append(LogLine(rule.id, level, message, "shadow"))
    if rule.rejection is not None and acc.shadow_rejected is None:
        acc.shadow_rejected = Rejection(rule.id, *rule.rejection)
    if rule.constraints is not None:
        acc.shadow.append(position)


def _apply(acc: _Acc, rule: Rule, position: int) -> bool:
    """Apply an enforced rule; returns True when it rejected the request (evaluation ends)."""
    acc.fired.append(FiredRule(rule.id, "enforce", True))
    for level, message in rule.log_lines:
        acc.logs.append(LogLine(rule.id, level, message, "enforce"))
    if rule.rejection is not None:
        acc.rejected = Rejection(rule.id, *rule.rejection)
        return True
    if rule.constraints is not None:
        acc.applied.append(position)
    if rule.cache is not None:
        acc.cache = rule.cache
    return False


def _merged(ruleset: RuleSet, key: tuple[int, ...]) -> Constraints:
    """The merge of the listed rules' constraints, in order; memoised on the rule set."""
    cache = ruleset.merge_cache
    merged = cache.get(key)
    if merged is not None:
        return merged
    merged = _NO_CONSTRAINTS
    for position in key:
        if position == _SHADOW:
            continue
        constraints = ruleset.active[position].constraints
        if constraints is not None:
            merged = constraints if merged is _NO_CONSTRAINTS else merged.merge(constraints)
    if len(cache) < _MERGE_CACHE_LIMIT:
        cache[key] = merged  # a benign race: two threads may compute the same value
    return merged
